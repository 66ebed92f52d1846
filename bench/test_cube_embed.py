"""masked_cube_embed: eager (Conv3d on the whole normalised clip, then gather) vs fused (the public
op on the auto backend) vs torch.compile of the reference.

Shapes: batch 64, T=16 frames of 64x64 (P = 8*8*8 = 512 cubes), uint8 frames with per-channel
mean/std, pos embedding; D=64 (small config) and D=384 (vits config); 50% and 0% of the cubes
masked. FLOPs = 2 * B * Pv * 384 * D (the GEMM on the visible cubes; eager does P/Pv times more).
Forward for every case, forward+backward (grad of weight, bias, pos) at 50% masking.
"""
import pytest
import torch

import mgnet.ops as ops
from mgnet.ops.cube_embed import masked_cube_embed_reference
from _common import bench_pedantic, record

OP = "masked_cube_embed"
B, T, HW, P = 64, 16, 64, 512
HAS_CUDA = torch.cuda.is_available()
ROUNDS = {"cpu": 3, "cuda": 20}

CASES = []
for dev in ("cpu", "cuda"):
    for D, cfg in ((64, "small"), (384, "vits")):
        for masked in (0.5, 0.0):
            for pass_ in ("fwd", "fwd+bwd"):
                if pass_ == "fwd+bwd" and masked == 0.0:
                    continue
                marks = [pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")] if dev == "cuda" else []
                CASES.append(pytest.param(dev, D, masked, pass_, marks=marks,
                                          id=f"{dev}-{cfg}-D{D}-mask{int(masked * 100)}-{pass_}"))

_COMPILED = {}


def _compiled():
    if "f" not in _COMPILED:
        _COMPILED["f"] = torch.compile(masked_cube_embed_reference, dynamic=False)
    return _COMPILED["f"]


def _inputs(device, D, masked):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (B, 3, T, HW, HW), generator=g, dtype=torch.uint8)
    pv = int(round(P * (1 - masked)))
    visible = torch.stack([torch.randperm(P, generator=g)[:pv] for _ in range(B)])
    w = torch.randn(D, 3, 2, 8, 8, generator=g) * 0.02
    b = torch.zeros(D)
    pos = torch.randn(P, D, generator=g) * 0.02
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    t = [x.to(device) for x in (frames, visible, w, b, pos, mean, std)]
    return t, pv


@pytest.mark.parametrize("impl", ["eager", "fused", "compile"])
@pytest.mark.parametrize("device,D,masked,pass_", CASES)
def test_masked_cube_embed(benchmark, device, D, masked, pass_, impl):
    (frames, visible, w, b, pos, mean, std), pv = _inputs(device, D, masked)
    bwd = pass_ == "fwd+bwd"
    if bwd:
        for x in (w, b, pos):
            x.requires_grad_(True)
    if impl == "eager":
        def f():
            with ops.backend("eager"):
                return ops.masked_cube_embed(frames, visible, w, b, pos, mean, std, validate=False)
    elif impl == "fused":
        assert ops.resolve(OP, frames.device) != "eager", "no fused backend available for this device"
        def f():  # noqa: E306
            return ops.masked_cube_embed(frames, visible, w, b, pos, mean, std, validate=False)
    else:
        cf = _compiled()
        def f():  # noqa: E306
            return cf(frames, visible, w, b, pos, mean, std)
    if bwd:
        grad = torch.randn(B, pv, D, device=device) * 0.01
        def run():  # noqa: E306
            out = f()
            torch.autograd.grad(out, (w, b, pos), grad)
    else:
        def run():  # noqa: E306
            with torch.no_grad():
                f()
    run()  # compile / first-touch outside the timed region
    # forward GEMM; the backward adds only grad_weight (frames take no gradient): 2x in all
    flops = 2 * B * pv * 384 * D * (2 if bwd else 1)
    record(benchmark, op=OP, shape=f"B{B} P{P} Pv{pv} D{D} uint8", impl=impl, pass_=pass_, device=device,
           flops=flops)
    bench_pedantic(benchmark, run, device, rounds=ROUNDS[device])
