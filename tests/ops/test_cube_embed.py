"""masked_cube_embed: every backend present against the eager reference (forward and the
gradients of weight, bias and pos), opcheck, float64 gradcheck of the C++ kernel, argument errors."""
import pytest
import torch

import mgnet.ops as ops
from mgnet.ops.cube_embed import masked_cube_embed_reference as reference

from ._backends import HAS_CUDA, SKIP_EXT, backends, check_cpu_built, check_cuda_built, device_of

OP = "masked_cube_embed"


def test_cpu_backend_is_built():
    """CI builds mgnet._C: a missing C++ kernel must fail here, not skip silently."""
    check_cpu_built(OP)



@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_backend_is_built():
    check_cuda_built(OP)


BACKENDS = backends(OP)


def to(a, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in a.items()}


# ----------------------------------------------------------------------------- inputs
def make(B=2, T=4, H=16, W=24, D=5, pv=7, frames_dtype=torch.uint8, wdtype=torch.float32, pos=True,
         norm=True, vis="random", seed=0):
    g = torch.Generator().manual_seed(seed)
    P = (T // 2) * (H // 8) * (W // 8)
    if frames_dtype == torch.uint8:
        frames = torch.randint(0, 256, (B, 3, T, H, W), generator=g, dtype=torch.uint8)
    else:
        frames = torch.randn(B, 3, T, H, W, generator=g, dtype=torch.float64).to(frames_dtype)
    if vis == "empty":
        visible = torch.zeros(B, 0, dtype=torch.int64)
    elif vis == "full":      # every cube, in a different permuted order per sample
        visible = torch.stack([torch.randperm(P, generator=g) for _ in range(B)])
    elif vis == "sorted_same":
        visible = torch.arange(0, P, 2)[:pv].repeat(B, 1)
    else:                    # unsorted and different per sample
        visible = torch.stack([torch.randperm(P, generator=g)[:pv] for _ in range(B)])
    r = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * 0.1).to(wdtype)  # noqa: E731
    args = dict(frames=frames, visible=visible, weight=r(D, 3, 2, 8, 8), bias=r(D),
                pos=r(P, D) if pos else None,
                mean=torch.tensor([0.485, 0.456, 0.406]) if norm else None,
                std=torch.tensor([0.229, 0.224, 0.225]) if norm else None)
    return args


def _grads(fn, a, seed=1):
    leaves = {k: a[k].detach().clone().requires_grad_(True) for k in ("weight", "bias", "pos") if a[k] is not None}
    kw = dict(a, **leaves)
    out = fn(**kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    names = list(leaves)
    grads = torch.autograd.grad(out, [leaves[n] for n in names], g, allow_unused=True) if out.numel() else \
        [torch.zeros_like(leaves[n]) for n in names]
    return out, dict(zip(names, grads))


def _tol(dtype):
    return {torch.float64: (1e-10, 1e-10), torch.float32: (2e-4, 2e-4),
            torch.bfloat16: (3e-2, 3e-2), torch.float16: (1e-2, 1e-2)}[dtype]


def _compare(backend, a, wdtype):
    a = to(a, device_of(backend))
    ref_out, ref_g = _grads(reference, a)
    with ops.backend(backend):
        assert ops.resolve(OP, a["frames"].device) == backend
        out, g = _grads(ops.masked_cube_embed, a)
    rtol, atol = _tol(wdtype)
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)
    for n in ref_g:
        # gradients sum over rows: scale the tolerance with the reduction length
        torch.testing.assert_close(g[n], ref_g[n], rtol=rtol * 10, atol=atol * 10, msg=lambda m: f"grad {n}: {m}")


# ----------------------------------------------------------------------------- correctness
CASES = [
    # frames dtype, weight dtype, pos, mean/std, visible set, shape overrides
    (torch.uint8, torch.float32, True, True, "random", {}),
    (torch.uint8, torch.float32, False, False, "random", {}),
    (torch.uint8, torch.float32, True, False, "full", {}),
    (torch.float32, torch.float32, True, True, "random", {}),
    (torch.float32, torch.float32, False, False, "sorted_same", {}),
    (torch.float64, torch.float64, True, True, "random", {}),
    (torch.uint8, torch.float64, True, True, "full", {}),
    (torch.uint8, torch.float32, True, True, "empty", {}),
    (torch.uint8, torch.float32, True, True, "full", dict(B=1, T=2, H=8, W=8, D=16)),       # P = 1
    (torch.uint8, torch.float32, True, True, "random", dict(B=3, T=6, H=8, W=16, D=33, pv=5)),
]


def _id(c):
    return f"{str(c[0])[6:]}-{str(c[1])[6:]}-{'pos' if c[2] else 'nopos'}-{'norm' if c[3] else 'raw'}-{c[4]}" + \
        ("-" + "x".join(f"{k}{v}" for k, v in c[5].items()) if c[5] else "")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_matches_reference(backend, case):
    fdt, wdt, pos, norm, vis, shape = case
    a = make(frames_dtype=fdt, wdtype=wdt, pos=pos, norm=norm, vis=vis, **shape)
    _compare(backend, a, wdt)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_tiles_and_threads(backend):
    """More rows than one CPU tile (128 forward, 512 backward) / Triton block (64), ragged last tiles, D > one block."""
    big = dict(B=12, T=4, H=32, W=64, D=70, pv=61) if backend == "cpu" else dict(B=2, T=2, H=16, W=72, D=70, pv=37)
    a = make(**big, seed=3)
    _compare(backend, a, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16])
def test_half_weights(backend, wdtype):
    a = to(make(wdtype=wdtype, D=16, seed=4), device_of(backend))
    ref = reference(**{k: (v.double() if k in ("weight", "bias", "pos") and v is not None else v)
                       for k, v in a.items()})
    with ops.backend(backend):
        out = ops.masked_cube_embed(**a)
    assert out.dtype == wdtype
    torch.testing.assert_close(out.double(), ref, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs(backend):
    a = make(seed=5)
    a["frames"] = a["frames"].permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
    a["visible"] = a["visible"].t().contiguous().t()
    assert not a["frames"].is_contiguous() and not a["visible"].is_contiguous()
    _compare(backend, a, torch.float32)


# ----------------------------------------------------------------------------- opcheck / gradcheck
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pos", [True, False])
def test_opcheck(backend, pos):
    a = to(make(B=2, T=2, H=8, W=16, D=4, pv=2, pos=pos, wdtype=torch.float64), device_of(backend))
    for k in ("weight", "bias", "pos"):
        if a[k] is not None:
            a[k].requires_grad_(True)
    torch.library.opcheck(torch.ops.mgnet.masked_cube_embed.default,
                          (a["frames"], a["visible"], a["weight"], a["bias"], a["pos"], a["mean"], a["std"], backend))


@pytest.mark.skipif(SKIP_EXT, reason="MGNET_SKIP_EXT=1: no C++ kernels")
def test_gradcheck_cpu_float64():
    a = make(B=2, T=2, H=8, W=16, D=2, pv=2, wdtype=torch.float64, seed=6)
    w, b, p = (a[k].detach().requires_grad_(True) for k in ("weight", "bias", "pos"))

    def f(w, b, p):
        with ops.backend("cpu"):
            return ops.masked_cube_embed(a["frames"], a["visible"], w, b, p, a["mean"], a["std"])
    assert torch.autograd.gradcheck(f, (w, b, p), eps=1e-6, atol=1e-7, fast_mode=True)


def test_pos_rows_shared_across_samples_accumulate():
    """The same cube visible in every sample: grad_pos of that row is the sum over samples."""
    a = make(B=3, vis="sorted_same", pv=4, seed=7)
    g_rows = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(8))
    want = torch.zeros(12, 5)
    want[a["visible"][0]] = g_rows.sum(0)   # rows 0, 2, 4, 6 get the sum over the 3 samples
    for backend in ["eager"] + BACKENDS:
        dev = device_of(backend)
        b = to(a, dev)
        p = b["pos"].clone().requires_grad_(True)
        with ops.backend(backend):
            out = ops.masked_cube_embed(b["frames"], b["visible"], b["weight"], b["bias"], p, b["mean"], b["std"])
        (gp,) = torch.autograd.grad(out, p, g_rows.to(dev))
        torch.testing.assert_close(gp.cpu(), want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{backend}: {m}")


# ----------------------------------------------------------------------------- errors
def test_out_of_range_index_raises():
    a = make()
    a["visible"][1, 3] = 12
    with pytest.raises(ValueError, match=r"visible\[1, 3\] = 12 is out of range.*P = 12"):
        ops.masked_cube_embed(**a)
    a["visible"][1, 3] = -1
    with pytest.raises(ValueError, match="out of range"):
        ops.masked_cube_embed(**a)


def test_duplicate_index_raises():
    a = make()
    a["visible"][0, 2] = a["visible"][0, 5]
    with pytest.raises(ValueError, match=r"visible\[0\] lists cube .* more than once"):
        ops.masked_cube_embed(**a)


@pytest.mark.skipif(SKIP_EXT, reason="MGNET_SKIP_EXT=1: no C++ kernels")
def test_cpu_kernel_range_check_without_validate():
    """validate=False skips the Python check; the C++ kernel still refuses to read out of bounds."""
    a = make()
    a["visible"][0, 0] = 99
    with ops.backend("cpu"), pytest.raises(RuntimeError, match=r"visible indices must lie in \[0, 12\)"):
        ops.masked_cube_embed(**a, validate=False)


def test_frames_requiring_grad_raises():
    a = make(frames_dtype=torch.float32)
    a["frames"].requires_grad_(True)
    with pytest.raises(ValueError, match="frames must not require grad"):
        ops.masked_cube_embed(**a)


@pytest.mark.parametrize("bad,match", [
    (dict(frames=torch.zeros(2, 3, 3, 16, 24, dtype=torch.uint8)), "T % 2 == 0"),
    (dict(frames=torch.zeros(2, 1, 4, 16, 24, dtype=torch.uint8)), r"\(B, 3, T, H, W\)"),
    (dict(frames=torch.zeros(2, 3, 4, 16, 24, dtype=torch.int32)), "frames must have dtype"),
    (dict(visible=torch.zeros(2, 3, dtype=torch.int32)), "visible must have dtype"),
    (dict(visible=torch.zeros(3, 3, dtype=torch.int64)), "match frames' batch"),
    (dict(weight=torch.zeros(5, 3, 2, 4, 4)), r"weight must have shape"),
    (dict(bias=torch.zeros(4)), "bias must have shape"),
    (dict(pos=torch.zeros(11, 5)), r"pos must have shape \(12, 5\)"),
    (dict(mean=torch.zeros(4)), "mean must have shape"),
    (dict(frames=torch.zeros(2, 3, 4, 16, 24, dtype=torch.float64)), "float frames must have weight's dtype"),
])
def test_argument_errors(bad, match):
    a = make()
    a.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        ops.masked_cube_embed(**a)
