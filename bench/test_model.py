"""Whole-model speed: clips per second of a training step and of scoring, eager vs fused vs compile.

Cases (one pytest-benchmark group each, the summary table reports clips/s per impl):
  train-s2  forward + backward + optimizer step of the stage-2 loss (L_mo + beta * separateness)
  train-s3  the same for the stage-3 loss (alpha * L_app; RGB encoder frozen; model.app_target=memory,
            the paper's S_app: with the default appearance memory stage 3 trains nothing)
  infer     model.scores(batch) under torch.inference_mode (all four raw scores)
Configs: `small` on CPU (batch 16), `vits` (the paper's ViT-S width) on CUDA (batch 64) when a GPU is present.
Impls:    eager   every mgnet op on its reference (`mgnet.ops.backend("eager")`)
          fused   `auto`: the compiled C++ / CUDA / Triton kernels
          compile torch.compile of the eager model (the step's loss / the scores function), with the
                  ops' references inlined so that inductor sees plain PyTorch (see _inline_references)
          fused+compile  the fast path of `train.compile` / `--compile`: mgnet.engine.compile_model, the
                  fused kernels as opaque mgnet:: custom ops inside the inductor graph
          fused+bf16, fused+compile+bf16  the same two under bf16 autocast (mgnet.engine.autocast, what
                  train.precision=bf16 opens; fp32 weights and optimizer): native on CPUs with AVX512-BF16
                  or AMX, emulated through fp32 elsewhere (the machine line says which)
Batches are what ClipStore + default collate give (uint8 rgb and scene), made up here so that the
benchmark does not depend on a prepared dataset.
"""
from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from _common import BF16_IMPLS, IMPLS, bench_pedantic, record

models = pytest.importorskip("mgnet.models.mgnet", reason="mgnet.models.mgnet (the model) is not importable")
from mgnet.models.config import ModelConfig  # noqa: E402
from mgnet.models.example import example_batch  # noqa: E402
import mgnet.ops as ops  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
# (config name, device, batch); CUDA cases carry "cuda" in their id (MGNET_BENCH_DEVICE filter)
CASES = [pytest.param("small", "cpu", 16, id="small-cpu-b16"),
         pytest.param("vits", "cuda", 64, id="vits-cuda-b64",
                      marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]
ROUNDS = {"cpu": 5, "cuda": 10}  # best of 5 on CPU: this VM's rate drifts by 20-30 % between minutes


def synthetic_batch(cfg: ModelConfig, B: int, device, seed: int = 0) -> dict:
    """A collated ClipStore batch: uint8 rgb (B,3,T,crop,crop), pose (B,2,T,V), scene uint8 (B,3,S,S)."""
    return example_batch(cfg, B, seed=seed, device=device, num_videos=4)


@contextlib.contextmanager
def _inline_references():
    """Make mgnet.ops' public functions call their eager references directly (no custom op), so
    that torch.compile of the eager model traces plain PyTorch and may fuse through the ops: the
    strongest torch.compile baseline, which is what the fused kernels should beat. The model
    modules may have imported the functions by name, so every loaded mgnet.models module is
    patched too."""
    import sys

    def cube(frames, visible, weight, bias, pos=None, mean=None, std=None, *, validate=True):
        return ops.masked_cube_embed_reference(frames, visible, weight, bias, pos, mean, std)
    repl = {"lka3d": ops.lka3d_reference, "lsta": ops.lsta_reference,
            "memory_address": ops.memory_address_reference, "masked_cube_embed": cube}
    current = {name: getattr(ops, name) for name in repl}
    originals = {}
    targets = [ops] + [m for n, m in list(sys.modules.items()) if n.startswith("mgnet.models") and m]
    for mod in targets:
        for name, fn in repl.items():
            if getattr(mod, name, None) is current[name]:
                originals[(mod, name)] = current[name]
                setattr(mod, name, fn)
    try:
        yield
    finally:
        for (mod, name), fn in originals.items():
            setattr(mod, name, fn)


@functools.lru_cache(maxsize=None)
def model_flops(cfg_name: str, device: str, B: int, what: str) -> float:
    """Useful FLOPs of one call of a whole-model case (``what``: "train-s2", "train-s3", "infer"),
    counted once, here, by torch's FlopCounterMode on the eager model with the ops' references
    inlined (so their GEMMs and convolutions are visible): matmuls, convolutions and attention,
    forward and (training) backward. Every impl of a case is rated against this one count."""
    from torch.utils.flop_counter import FlopCounterMode
    stage = 4 if what == "infer" else int(what[-1])
    cfg, model = _model(cfg_name, device, stage)
    batch = synthetic_batch(cfg, B, device)
    counter = FlopCounterMode(display=False)
    with _inline_references(), ops.backend("eager"), counter:
        if what == "infer":
            model.eval()
            with torch.inference_mode():
                model.scores(batch)
        else:
            model.losses(batch, stage)["loss"].backward()
    return float(counter.get_total_flops())


def _backend_ctx(impl):
    return ops.backend("eager" if impl in ("eager", "compile") else "auto")


def _precision_ctx(impl, device):
    from mgnet.engine import autocast
    return autocast(torch.device(device), "bf16" if impl in BF16_IMPLS else False)


def _compiled(model, impl, reset=True):
    """The model with losses/scores compiled for the compile impls (a fresh dynamo cache each unless
    ``reset`` is False: model_interleaved.py keeps every impl's graphs alive side by side)."""
    if impl in ("compile", "fused+compile", "fused+compile+bf16"):
        if reset:
            torch._dynamo.reset()
        if impl == "compile":
            model.losses, model.scores = torch.compile(model.losses), torch.compile(model.scores)
        else:
            from mgnet.engine import compile_model
            compile_model(model)
    return model


def _train_step(loss_fn, opt, batch, stage, impl, device):
    """One training step of ``impl``: the stage's loss (under bf16 autocast for the bf16 impls),
    backward and the optimizer step."""
    def step():
        opt.zero_grad(set_to_none=True)
        with _precision_ctx(impl, device):
            loss = loss_fn(batch, stage)["loss"]
        loss.backward()
        opt.step()
    return step


def _score_call(score_fn, batch, impl, device):
    """One scoring call of ``impl`` (under bf16 autocast for the bf16 impls)."""
    def run():
        with _precision_ctx(impl, device):
            return score_fn(batch)
    return run


def _model(cfg_name, device, stage):
    torch.manual_seed(0)
    # stage 3 trains the mask encoder only with the paper's S_app (model.app_target=memory); the
    # default S_app reads the appearance memory and stage 3 has nothing to train
    cfg = getattr(ModelConfig, cfg_name)(**({"app_target": "memory"} if stage == 3 else {}))
    model = models.MGNet(cfg).to(device)
    model.set_stage(stage)
    return cfg, model


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("cfg_name,device,B", CASES)
def test_train_step(benchmark, cfg_name, device, B, stage, impl):
    cfg, model = _model(cfg_name, device, stage)
    batch = synthetic_batch(cfg, B, device)
    opt = torch.optim.AdamW(model.stage_parameters(stage), lr=1e-4)
    patch = _inline_references() if impl == "compile" else contextlib.nullcontext()
    with patch, _backend_ctx(impl):
        step = _train_step(_compiled(model, impl).losses, opt, batch, stage, impl, device)
        step()  # compile / first-touch outside the timed rounds
        record(benchmark, op="model", shape=f"{cfg_name} B={B}", impl=impl, pass_=f"train-s{stage}",
               device=device, clips=B, flops=model_flops(cfg_name, device, B, f"train-s{stage}"))
        bench_pedantic(benchmark, step, device=device, rounds=ROUNDS[device], warmup_rounds=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cfg_name,device,B", CASES)
def test_inference(benchmark, cfg_name, device, B, impl):
    cfg, model = _model(cfg_name, device, 4)
    model.eval()
    batch = synthetic_batch(cfg, B, device)
    patch = _inline_references() if impl == "compile" else contextlib.nullcontext()
    with patch, _backend_ctx(impl), torch.inference_mode():
        run = _score_call(_compiled(model, impl).scores, batch, impl, device)
        out = run()
        assert set(out) >= {"mo", "app", "mm", "nll"} and all(v.shape == (B,) for v in out.values())
        record(benchmark, op="model", shape=f"{cfg_name} B={B}", impl=impl, pass_="infer",
               device=device, clips=B, flops=model_flops(cfg_name, device, B, "infer"))
        bench_pedantic(benchmark, run, device=device, rounds=ROUNDS[device], warmup_rounds=0)

