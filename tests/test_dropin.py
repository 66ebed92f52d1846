"""The fused backend is a drop-in: training a tiny MGNet a few steps per stage and scoring with it
gives the eager backend's losses and scores up to floating-point tolerance.

Both runs start from the same seed and see the same batches; stage 1 (STG-NF NLL), stage 2
(L_mo + beta * separateness), stage 3 (alpha * L_app), the stage-4 BSMM write, then scores().
Optimizer: plain SGD, so that a kernel's rounding differences stay rounding differences (Adam's
first step is ~lr * sign(grad), which turns a 1e-9 difference in a near-zero gradient into a full
step). Tolerances (fp32): every loss term at every step rtol 1e-4 / atol 1e-5; the four scores and
the trained parameters rtol 1e-4 / atol 1e-6 (the "mm" scores are ~1e-3, so their atol must be
small). Measured with the C++ kernels: largest relative loss difference 1.3e-7, scores 2e-6 abs on
values ~20, parameters 2e-8 abs. Runtime ~30 s on the shared 2-core machine.
"""
from __future__ import annotations

import pytest
import torch

import mgnet.ops as ops
from mgnet.ops import _dispatch

import mgnet.models.mgnet as models  # noqa: E402  (a broken import is a failure, not a skip)
from mgnet.models.config import ModelConfig  # noqa: E402
from mgnet.models.example import example_batch  # noqa: E402

FUSED_OPS = ("lka3d", "lsta", "memory_address", "masked_cube_embed")
STEPS = ((1, 2), (2, 3), (3, 3))       # (stage, SGD steps)
LOSS_TOL = dict(rtol=1e-4, atol=1e-5)
SCORE_TOL = dict(rtol=1e-4, atol=1e-6)
PARAM_TOL = dict(rtol=1e-4, atol=1e-6)


def tiny_config(**kw) -> ModelConfig:
    """The smallest model that still runs every op: T=8, 32x32 crops (4x4x4 cube grid), 1 block."""
    # app_target=memory: the paper's stage 3 (mask encoder, eq. 6) so every stage trains something
    return ModelConfig.small(**{**dict(seg_len=8, crop=32, scene_size=32, embed_dim=32, depth=1, heads=2,
                                       head_hidden=32, c_app=32, flow_steps=2, flow_hidden=8,
                                       scene_grid=4, scene_conv_channels=4, app_target="memory"), **kw})


def synthetic_batch(cfg: ModelConfig, B: int, seed: int = 0, device="cpu") -> dict:
    """A collated ClipStore batch (uint8 rgb and scene, float pose) of made-up content."""
    return example_batch(cfg, B, seed=seed, device=device)


def train_and_score(cfg: ModelConfig, backend: str, batches, test_batch, lr=0.05):
    """Train every stage a few SGD steps on `batches` and score `test_batch`, all ops on `backend`.
    Returns ({(stage, step, term): loss value}, scores dict, state_dict)."""
    torch.manual_seed(0)
    model = models.MGNet(cfg)
    losses = {}
    with ops.backend(backend):
        for stage, steps in STEPS:
            model.set_stage(stage)
            opt = torch.optim.SGD(model.stage_parameters(stage), lr=lr)
            for i in range(steps):
                out = model.losses(batches[i % len(batches)], stage)
                for k, v in out.items():
                    losses[(stage, i, k)] = v.detach().clone()
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
        model.set_stage(4)
        for b in batches:
            model.bsmm_write(b)
        model.eval()
        with torch.inference_mode():
            scores = {k: v.clone() for k, v in model.scores(test_batch).items()}
    return losses, scores, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fused_cpu_ops():
    return [op for op in FUSED_OPS if ops.resolve(op, torch.device("cpu"), "auto") != "eager"]


def test_fused_backend_is_a_drop_in_for_eager():
    if _dispatch.extension_error() is not None:
        pytest.skip(f"mgnet._C is not built ({_dispatch.extension_error()}): no fused CPU backend to compare")
    fused = _fused_cpu_ops()
    assert fused, "mgnet._C is built but no op has a fused CPU kernel registered: nothing would be compared"
    cfg = tiny_config()
    batches = [synthetic_batch(cfg, 4, seed=s) for s in range(3)]
    test_batch = synthetic_batch(cfg, 5, seed=10)
    l_e, s_e, p_e = train_and_score(cfg, "eager", batches, test_batch)
    l_f, s_f, p_f = train_and_score(cfg, "auto", batches, test_batch)

    assert l_e.keys() == l_f.keys()
    for key in l_e:
        torch.testing.assert_close(l_f[key], l_e[key], **LOSS_TOL, msg=lambda m: f"loss {key}: {m}")
    assert set(s_e) >= {"mo", "app", "mm", "nll"} and s_e.keys() == s_f.keys()
    for k in s_e:
        assert s_e[k].shape == (5,) and torch.isfinite(s_e[k]).all(), k
        torch.testing.assert_close(s_f[k], s_e[k], **SCORE_TOL, msg=lambda m: f"score {k}: {m}")
    for k in p_e:
        torch.testing.assert_close(p_f[k], p_e[k], **PARAM_TOL, msg=lambda m: f"parameter {k}: {m}")
    # training moved the weights: the comparison above is not between two untouched models
    torch.manual_seed(0)
    init = models.MGNet(cfg).state_dict()
    assert any(not torch.equal(init[k], p_e[k]) for k in p_e if p_e[k].is_floating_point())


def test_config_switch_selects_the_backend(monkeypatch):
    """model.ops_backend reaches the dispatcher: with "eager" no fused kernel runs inside the model's
    calls, with "auto" the fused CPU kernels do; set_backend (the process-wide form) too."""
    monkeypatch.delenv("MGNET_BACKEND", raising=False)
    fused = _fused_cpu_ops()
    if not fused:
        pytest.skip("no fused CPU kernel available: nothing to switch between")
    calls = []
    for op in fused:
        k = _dispatch.get_kernel(op, "cpu")
        monkeypatch.setattr(k, "forward", lambda *a, _f=k.forward, _op=op: calls.append(_op) or _f(*a))
    batch = synthetic_batch(tiny_config(), 2)
    for be in ("eager", "auto"):
        calls.clear()
        model = models.MGNet(tiny_config(ops_backend=be))
        model.set_stage(2)
        model.losses(batch, 2)["loss"].backward()
        assert (len(calls) > 0) == (be == "auto"), (be, calls)
    ops.set_backend("eager")
    try:
        assert _dispatch.requested() == "eager"
        assert all(ops.resolve(op, torch.device("cpu")) == "eager" for op in FUSED_OPS)
    finally:
        monkeypatch.delenv("MGNET_BACKEND", raising=False)
    with pytest.raises(ValueError, match="ops_backend"):
        ops.set_backend("fastest")
