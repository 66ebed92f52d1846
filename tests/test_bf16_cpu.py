"""train.precision=bf16 on CPU: the config switch, the autocast it opens, the mgnet ops on bf16
inputs (fp32 inside where the kernel has no bf16) and the model's losses / scores within bf16
tolerance of fp32. Correctness only: this CPU's speed with bf16 depends on AVX512-BF16 / AMX
(mgnet.engine.cpu_features; bench/ reports which it found)."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import mgnet.ops as ops
from mgnet import engine
from tests.test_compile import _op_cases, _tiny_model_and_batch


def _cfg(**train):
    return OmegaConf.create({"train": {"amp": True, **train}})


def test_precision_switch_and_cpu_autocast():
    assert engine.precision(_cfg()) is True and engine.precision(_cfg(precision="fp32")) is False
    assert engine.precision(_cfg(precision="bf16")) == "bf16"
    with pytest.raises(ValueError, match="train.precision='fp16'"):
        engine.precision(_cfg(precision="fp16"))
    lin, x, cpu = torch.nn.Linear(4, 4), torch.randn(2, 4), torch.device("cpu")
    with engine.autocast(cpu, engine.precision(_cfg())):        # auto: CUDA only
        assert lin(x).dtype == torch.float32
    with engine.autocast(cpu, engine.precision(_cfg(precision="bf16"))):
        assert lin(x).dtype == torch.bfloat16
    feats = engine.cpu_features()
    assert feats["capability"] == torch.backends.cpu.get_cpu_capability()
    assert feats["bf16_native"] == bool({"avx512_bf16", "amx_bf16"} & set(feats["flags"]))


@pytest.mark.parametrize("name", sorted(_op_cases()))
def test_ops_take_bf16_inputs(name):
    """Each op on bf16 inputs (its CPU kernel) vs the fp32 reference on the same rounded inputs."""
    fn, inputs, _ = _op_cases()[name]
    low = [t.bfloat16() if t.is_floating_point() else t for t in inputs]
    with ops.backend("auto"):
        out = fn(*low)
    with ops.backend("eager"):
        ref = fn(*[t.float() if t.is_floating_point() else t for t in low])
    for a, b in zip(out if isinstance(out, (tuple, list)) else [out], ref if isinstance(ref, (tuple, list)) else [ref]):
        if b.is_floating_point():
            assert a.dtype == torch.bfloat16
            torch.testing.assert_close(a.float(), b, rtol=2e-2, atol=2e-2 * float(b.abs().max()))
        else:
            assert torch.equal(a, b)


def test_model_bf16_autocast_matches_fp32():
    """Scores (paper's S_app) and the stage-2 loss and its gradients under CPU bf16 autocast."""
    model, batch = _tiny_model_and_batch(app_target="memory")
    model.eval()
    cpu = torch.device("cpu")
    with torch.inference_mode():
        ref = model.scores(batch)
        with engine.autocast(cpu, "bf16"):
            out = model.scores(batch)
    for k in ref:
        torch.testing.assert_close(out[k].float(), ref[k], rtol=2e-2, atol=2e-2 * float(ref[k].abs().max()))
    model.set_stage(2)
    model.train()
    params = [p for p in model.stage_parameters(2)]
    torch.manual_seed(0)
    loss = model.losses(batch, 2)["loss"]
    g = torch.autograd.grad(loss, params, allow_unused=True)
    torch.manual_seed(0)
    with engine.autocast(cpu, "bf16"):
        loss_b = model.losses(batch, 2)["loss"]
    g_b = torch.autograd.grad(loss_b, params, allow_unused=True)
    torch.testing.assert_close(loss_b.float(), loss, rtol=1e-2, atol=1e-3)
    # bf16 keeps 8 mantissa bits: through the encoder the gradient's relative error is ~8 % (measured),
    # its direction (what the optimiser follows) is kept
    pairs = [(a.float().flatten(), b.flatten()) for a, b in zip(g_b, g) if b is not None]
    a, b = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    rel = float((a - b).norm() / b.norm())
    assert b.norm() > 0 and rel < 0.15, f"bf16 gradient relative error {rel:.3f}"
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.99
