"""What every job shares at run time: device and precision, the process group, building and
loading a model, opening a prepared split, and the one per-batch scoring function.

``score_batch`` is the only place a model's raw clip scores are computed: evaluation and the
training-set statistics (``score_clips``), ``mgnet score`` offline and the online scorer
(mgnet.inference) all call it, so they score a clip identically. ``amp`` (bf16 autocast) acts on
CUDA, and on CPU when it is "bf16" (train.precision=bf16, see ``precision``); the online scorer and ``mgnet score`` run without it, as before.

Layers (docs/architecture.md): jobs -> engine and the library modules -> models, data, ops.
Nothing here imports a job.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import platform
import sys
import time
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from mgnet import config_schema, faults, runs
from mgnet.data.prepare import prepare_split
from mgnet.runs import RunDir, RunError
from mgnet.scoring import OPTIONAL_COMPONENTS, SCORE_KEYS

META_KEYS = ("video", "person", "frame", "label")


# ---------------------------------------------------------------- process group, device, precision
class Dist:
    """Rank/world/device of this process; set up from torchrun's environment variables."""

    def __init__(self, device_pref: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
        if device_pref == "cuda" and not torch.cuda.is_available():
            raise ValueError("train.device=cuda but torch sees no CUDA device")
        if device_pref not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device={device_pref!r}: expected auto, cpu or cuda")
        self.device = torch.device(f"cuda:{self.local_rank}" if want_cuda else "cpu")
        if want_cuda:
            torch.cuda.set_device(self.device)
        self.owns_group = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo")
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> List[Any]:
        """``obj`` of every rank, in rank order (picklable objects of any size).

        dist.all_gather_object has a race that aborted 2-rank gloo runs at exit (one in about six):
        its gloo work object holds Python-visible tensors, and a gloo worker thread may drop the last
        reference to it after the call has returned. Dropping a tensor's Python object needs the GIL;
        once the interpreter is finalizing, that thread is killed inside take_gil and libstdc++
        calls std::terminate (SIGABRT, 'terminate called without an active exception'; native
        stack: ~AsyncAllgatherWork <- ProcessGroupGloo::runLoop <- PyEval_AcquireThread). Here the
        tensors are ours, so we wait (GIL released) until their Python objects are freed, i.e.
        until no gloo thread holds them, before returning.
        """
        if self.world == 1:
            return [obj]
        dev = self.device  # NCCL gathers CUDA tensors, gloo CPU ones
        payload = torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)),
                                   dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.int64, device=dev)
        sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        lengths = [int(n) for n in sizes]
        padded = torch.zeros(max(lengths), dtype=torch.uint8, device=dev)
        padded[:payload.numel()] = payload.to(dev)
        outs = [torch.empty(max(lengths), dtype=torch.uint8, device=dev) for _ in range(self.world)]
        dist.all_gather(outs, padded)
        result = [pickle.loads(o[:n].cpu().numpy().tobytes()) for o, n in zip(outs, lengths)]
        if dev.type == "cpu":  # the race is gloo's worker threads'; NCCL's watchdog may keep works longer
            held = [weakref.ref(t) for t in (size, padded, *sizes, *outs)]
            del size, padded, sizes, outs
            deadline = time.monotonic() + 60.0
            while any(r() is not None for r in held) and time.monotonic() < deadline:
                time.sleep(1e-4)
        return result

    def close(self):
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def cpu_features() -> Dict[str, Any]:
    """The CPU's model, torch's dispatch level and whether it computes bf16 natively:
    ``bf16_native`` needs AVX512-BF16 or AMX-BF16 (/proc/cpuinfo flags); without them torch's bf16
    CPU kernels convert to fp32 and back (correct, usually slower than fp32)."""
    flags, model = set(), platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() == "flags" and not flags:
                    flags = set(val.split())
                elif key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = val.strip()
    except OSError:
        pass
    found = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability(), "flags": found,
            "bf16_native": bool(flags & {"avx512_bf16", "amx_bf16"})}


PRECISIONS = ("auto", "fp32", "bf16")


def precision(cfg):
    """The ``amp`` argument of autocast / score_clips for a config: ``train.precision`` auto (the
    default) -> ``train.amp`` (bf16 autocast on CUDA only), fp32 -> False, bf16 -> "bf16" (bf16
    autocast on CPU too)."""
    mode = str(OmegaConf.select(cfg, "train.precision", default="auto"))
    if mode not in PRECISIONS:
        raise ValueError(f"train.precision={mode!r}: expected one of {', '.join(PRECISIONS)}")
    return {"auto": bool(OmegaConf.select(cfg, "train.amp", default=True)), "fp32": False, "bf16": "bf16"}[mode]


def autocast(device: torch.device, enabled):
    """bf16 autocast: on CUDA when ``enabled``; on CPU as well when ``enabled == "bf16"``
    (train.precision=bf16: native on AVX512-BF16 / AMX CPUs, see cpu_features; emulated through
    fp32 elsewhere). The mgnet ops take bf16 inputs: a kernel without bf16 runs them in fp32
    (ops/backends.in_float32). Otherwise a no-op context."""
    if enabled and (device.type == "cuda" or enabled == "bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


# ---------------------------------------------------------------- torch.compile (the fast path)
COMPILE_FALLBACK = "torch.compile is not available here ({why}); running the model eager (same results, slower)"


def compile_unavailable(device) -> str | None:
    """Why inductor cannot compile for ``device`` here (None when it can): CPU code needs a C++ compiler."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if torch.device(device).type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
            get_cpp_compiler()
        except Exception as exc:  # noqa: BLE001  (any failure to find one means no CPU compile)
            return f"no C++ compiler for inductor's CPU code: {exc}"
    return None


def _batch_tensors(args):
    """The tensors (dim >= 1) of the batch dicts among a compiled method's ``args``."""
    for a in args:
        if isinstance(a, dict):
            yield from (v for v in a.values() if torch.is_tensor(v) and v.dim() >= 1)


def _mark_batch_dynamic(args) -> None:
    """Batch dimension of every tensor of a batch dict dynamic, so that a new batch size reuses the
    compiled graph instead of compiling another one (maybe_: a size 1 may still specialise)."""
    for v in _batch_tensors(args):
        torch._dynamo.maybe_mark_dynamic(v, 0)


def _batch_size(args) -> int | None:
    """Dimension 0 of the first tensor of the first batch dict among ``args`` (None without one)."""
    return next((int(v.shape[0]) for v in _batch_tensors(args)), None)


class _CompiledMethod:
    """A model method run through torch.compile, with two graphs: a static one for the batch size
    of the first call (the full batches of a training or scoring loop) and one with a dynamic batch
    dimension for every other size (a last, partial batch; the people of one online frame), so
    that no batch size compiles a graph of its own. A static graph is the faster one: scoring the
    `small` model (batch 16, Zen 5, 2 threads) took 39-41 ms with it and 44-46 ms with the dynamic
    one (bench/README.md). The dynamic graph is compiled through a wrapper function, so that dynamo
    keeps the two apart. On a compile failure it warns once (to stderr, COMPILE_FALLBACK) and runs the
    eager method from then on. Errors of the model itself (raised eagerly too) are re-raised
    unchanged by the eager rerun."""

    def __init__(self, fn, backend, mode):
        self.eager = fn

        def dynamic_batch(*args, **kwargs):
            return fn(*args, **kwargs)

        # the static graphs live on the method's own code (MGNet.scores / MGNet.losses), the dynamic
        # ones on this wrapper's: two code objects, two caches, each under dynamo's recompile limit
        self.static = torch.compile(fn, backend=backend, mode=mode)
        self.dynamic = torch.compile(dynamic_batch, backend=backend, mode=mode)
        self.batch_size: int | None = None     # of the static graph: the first call's
        self.failed: str | None = None

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            n = _batch_size(args)
            if self.batch_size is None:
                self.batch_size = n
            try:
                if n == self.batch_size:
                    return self.static(*args, **kwargs)
                _mark_batch_dynamic(args)
                return self.dynamic(*args, **kwargs)
            except torch._dynamo.exc.TorchDynamoException as exc:
                inner = getattr(exc, "inner_exception", None) or exc.__cause__ or exc
                text = str(inner).strip()
                self.failed = f"{type(inner).__name__}: {text.splitlines()[0] if text else ''}"
                print("warning: " + COMPILE_FALLBACK.format(why=self.failed), file=sys.stderr, flush=True)
        return self.eager(*args, **kwargs)


def compile_model(model: torch.nn.Module, backend="inductor", mode: str | None = None) -> torch.nn.Module:
    """Compile ``model.scores`` and ``model.losses`` in place (the module, its weights and its
    state_dict are unchanged) and return the model. The ``mgnet::`` custom ops stay in the graph as
    opaque calls (no graph break, tests/test_compile.py), so inductor fuses the ViT, norms and MLPs
    around the project's kernels. The first call's batch size gets a static graph, every other size
    shares one with a dynamic batch dimension (_CompiledMethod). Where
    compile is unavailable (no C++ compiler for CPU code, or the compile fails) it prints
    COMPILE_FALLBACK once and the model runs eager."""
    if isinstance(getattr(model, "scores", None), _CompiledMethod):
        return model
    if backend == "inductor":
        why = compile_unavailable(next(model.parameters()).device)
        if why is not None:
            print("warning: " + COMPILE_FALLBACK.format(why=why), file=sys.stderr, flush=True)
            return model
    for name in ("scores", "losses"):
        if hasattr(model, name):
            setattr(model, name, _CompiledMethod(getattr(model, name), backend, mode))
    return model


# ---------------------------------------------------------------- model and data
# Model keys added after runs were trained without them, with the value that reproduces those runs.
# A run's config.yaml lists every model key of its day; a key it lacks takes this value, not today's
# default (which the config group's yaml gives every new run), so an older run scores as it was
# trained and as its score_stats.json describes.
LEGACY_MODEL_DEFAULTS = {"fg_missing_weight": 1.0}   # before it: S_app by the Euclidean distance


def build_model(model_cfg) -> torch.nn.Module:
    # imported here, not at the top: `mgnet score --engine onnx` uses this module without the model code
    from mgnet.models.config import ModelConfig
    from mgnet.models.mgnet import MGNet
    model = runs.to_container(model_cfg)
    return MGNet(ModelConfig.from_dict({**LEGACY_MODEL_DEFAULTS, **model}))


def model_identity(cfg) -> Dict[str, Any]:
    model = runs.to_container(cfg.model)
    return {"model_config": model, "model_config_hash": runs.config_hash(model)}


def load_model_state(model: torch.nn.Module, ckpt: Dict[str, Any], path: Path, cfg) -> None:
    """Load a checkpoint's weights after checking it was made with this model config."""
    want = model_identity(cfg)
    if ckpt.get("model_config_hash") != want["model_config_hash"]:
        diff = runs.config_diff(ckpt.get("model_config") or {}, want["model_config"])
        raise RunError(f"checkpoint {path} was made with a different model config "
                       f"(differs in: {', '.join('model.' + d for d in diff) or 'unknown keys'}); "
                       f"use the run's own config.yaml or start a new run")
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        raise RunError(f"checkpoint {path} does not fit the model: {exc}") from exc


def load_run(run_dir, device="cpu", stage: int = 4) -> Tuple[torch.nn.Module, Any]:
    """The model of a finished run (its stage-4 checkpoint) and the run's config, in eval mode.

    Raises RunError when the folder is not a run, has no stage-4 checkpoint, or the checkpoint
    was made with another model config.
    """
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise RunError(f"run folder {run.root} does not exist")
    cfg = config_schema.load_run_config(run.config)
    ckpt_path = run.stage(stage)
    if not ckpt_path.exists():
        have = sorted(p.name for p in run.ckpt_dir.glob("stage?.pt")) if run.ckpt_dir.is_dir() else []
        raise RunError(f"run {run.root} has no stage-{stage} checkpoint ({ckpt_path}); finished stages: "
                       f"{have or 'none'} - finish training with `mgnet train train.out={run.root} --resume`")
    model = build_model(cfg.model)
    load_model_state(model, runs.load_checkpoint(ckpt_path), ckpt_path, cfg)
    model.to(device).eval()
    return model, cfg


def open_split(data_cfg, split: str, ctx: Dist):
    """prepare_split on rank 0 first (it may build the store), then on the other ranks."""
    store = prepare_split(data_cfg, split, progress=ctx.main) if ctx.main else None
    ctx.barrier()
    if not ctx.main:
        store = prepare_split(data_cfg, split, progress=False)
    return store


# ---------------------------------------------------------------- scoring
def score_batch(model, batch: Dict[str, Any], device, amp: bool | str = False,
                components=None) -> Dict[str, np.ndarray]:
    """Raw per-clip scores ``{"mo", "app", "mm", "nll"[, "pose"]}`` (scoring.SCORE_KEYS) of one batch in the
    ClipStore layout, as float64 numpy arrays; under inference_mode and autocast(device, amp).
    components: the names to compute (MGNet.scores; the others are NaN), None for all."""
    device = torch.device(device)
    with torch.inference_mode(), autocast(device, amp):
        batch = to_device(batch, device)
        out = model.scores(batch) if components is None else model.scores(batch, components=components)
    keys = SCORE_KEYS + tuple(k for k in OPTIONAL_COMPONENTS if k in out)   # S_pose when the model has one
    return {k: out[k].float().cpu().numpy().astype(np.float64) for k in keys}


def score_clips(model, store, batch_size: int, ctx=None, amp: bool | str = True, desc: str = "scoring",
                num_workers: int = 0) -> Dict[str, np.ndarray]:
    """Raw per-clip scores of every clip of ``store`` (batched, under inference_mode).

    With a distributed context each rank scores a contiguous shard and the shards are gathered
    (all ranks get the full result, in store order). Returns arrays "nll", "mo", "app", "mm" and
    the clips' "video", "person", "frame", "label".
    """
    rank, world = (ctx.rank, ctx.world) if ctx is not None else (0, 1)
    device = ctx.device if ctx is not None else next(model.parameters()).device
    n = len(store)
    per = -(-n // world)
    shard = Subset(store, range(min(n, rank * per), min(n, (rank + 1) * per)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model.eval()
    parts: Dict[str, List[np.ndarray]] = defaultdict(list)
    for batch in tqdm(loader, desc=desc, disable=rank != 0, dynamic_ncols=True, file=sys.stderr):
        for k, v in score_batch(model, batch, device, amp).items():
            parts[k].append(v)
        for k in META_KEYS:
            parts[k].append(batch[k].numpy())
        faults.point("scores.batch")
    res = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}
    for k in SCORE_KEYS + META_KEYS:
        res.setdefault(k, np.zeros(0))
    if world > 1:
        gathered = ctx.all_gather_object(res)
        res = {k: np.concatenate([g[k] for g in gathered]) for k in res}
    return res
