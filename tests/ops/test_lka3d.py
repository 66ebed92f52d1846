"""lka3d and lsta: every backend present against the eager reference (forward and the gradients of
the input and all six weights/biases), opcheck, float64 gradcheck of the C++ kernels, argument errors.

Tolerances (reduced precision): a backend's error against the float64 reference may be at most twice
the error of eager PyTorch in the same dtype (plus a floor of a few ulps of the output's scale)."""
import os

import pytest
import torch

import mgnet.ops as ops
from mgnet.ops import _dispatch
from mgnet.ops.lka3d import lka3d_reference, lsta_reference

CPU = torch.device("cpu")
SKIP_EXT = os.environ.get("MGNET_SKIP_EXT", "0") == "1"
CUDA = torch.cuda.is_available()


def _triton_ok(device):
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return _dispatch.triton_usable(device)


@pytest.mark.parametrize("op", ["lka3d", "lsta"])
def test_cpu_backend_is_built(op):
    """CI builds mgnet._C: a missing C++ kernel must fail here, not skip silently."""
    if SKIP_EXT:
        pytest.skip("MGNET_SKIP_EXT=1: pure Python install, no C++ kernels")
    assert "cpu" in ops.available_backends(op, CPU), _dispatch.extension_error()
    assert ops.resolve(op, CPU) == "cpu"


CPU_BACKENDS = ["cpu"] if not SKIP_EXT else []
TRITON_CPU = _triton_ok(CPU)


# ----------------------------------------------------------------------------- inputs
def lka_args(B, C, D, H, W, k0, k1, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * sc).to(device, dtype)  # noqa: E731
    return [r(B, C, D, H, W), r(C, 1, k0, k0, k0, sc=k0 ** -1.5), r(C, sc=0.1),
            r(C, 1, k1, k1, k1, sc=k1 ** -1.5), r(C, sc=0.1), r(C, C, 1, 1, 1, sc=C ** -0.5), r(C, sc=0.1)]


def lsta_args(B, t, c, h, w, k0, k1, dtype=torch.float64, device="cpu", seed=0):
    e = lka_args(B, c, t, h, w, 1, 1, dtype, device, seed)[0].view(B, t, c, h, w)
    return [e] + lka_args(1, 1, 1, 1, 1, k0, k1, dtype, device, seed + 1)[1:]


def run(op, args, dilation, backend, grad_out):
    """Forward and the gradients of every input through the custom op on `backend`."""
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    fn = torch.ops.mgnet.lka3d.default if op == "lka3d" else torch.ops.mgnet.lsta.default
    y = fn(*leaves, dilation, backend)
    grads = torch.autograd.grad(y, leaves, grad_out)
    return [y.detach()] + list(grads)


def run_reference(op, args, dilation, grad_out):
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    ref = lka3d_reference if op == "lka3d" else lsta_reference
    y = ref(*leaves, dilation=dilation)
    return [y.detach()] + list(torch.autograd.grad(y, leaves, grad_out))


NAMES = ["out", "x", "w0", "b0", "w1", "b1", "wp", "bp"]


def assert_within_twice_eager(got, eager, exact, what):
    """|got - exact| <= 2 * |eager - exact| (max-norm) + a floor of 8 ulps of the scale."""
    for name, g, e, x in zip(NAMES, got, eager, exact):
        x = x.double()
        err = (g.double() - x).abs().max().item()
        ref_err = (e.double() - x).abs().max().item()
        floor = 8 * torch.finfo(g.dtype).eps * max(x.abs().max().item(), 1e-3)
        assert err <= 2 * ref_err + floor, f"{what} {name}: error {err:.3g} vs eager {ref_err:.3g} (floor {floor:.2g})"


# ----------------------------------------------------------------------------- cases
# (B, C, D, H, W): odd sizes, a volume smaller than the dilated kernel, batch 1, W over one SIMD block
LKA_SHAPES = [(2, 3, 5, 6, 7), (1, 2, 3, 4, 5), (1, 4, 6, 9, 35)]
KERNELS = [(k0, k1, d) for k0 in (3, 5) for k1 in (5, 7) for d in (1, 2, 3)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("k0,k1,d", KERNELS, ids=[f"k{a}-{b}-d{c}" for a, b, c in KERNELS])
@pytest.mark.parametrize("shape", LKA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_lka3d_float64_matches_reference(backend, shape, k0, k1, d):
    args = lka_args(*shape, k0, k1)
    g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got, ref = run("lka3d", args, d, backend, g), run_reference("lka3d", args, d, g)
    for name, a, b in zip(NAMES, got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


LKA32_CASES = [((2, 8, 8, 16, 16), 5, 7, 3), ((1, 5, 7, 11, 37), 3, 5, 2), ((3, 1, 4, 5, 6), 5, 7, 1)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape,k0,k1,d", LKA32_CASES, ids=lambda v: str(v))
def test_lka3d_float32_within_twice_eager_error(backend, shape, k0, k1, d):
    args64 = lka_args(*shape, k0, k1)
    g64 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    exact = run_reference("lka3d", args64, d, g64)
    args32, g32 = [a.float() for a in args64], g64.float()
    eager = run_reference("lka3d", args32, d, g32)
    got = run("lka3d", args32, d, backend, g32)
    assert all(t.dtype == torch.float32 for t in got)
    assert_within_twice_eager(got, eager, exact, f"lka3d[{backend}]")


# The C++ kernel's register blocks and their tails: C = 7 and 13 (a whole 6-channel pointwise block and
# a partial one; channel-pair blocks of 4 x 3 with partial rows and columns), N = D*H*W no multiple of
# the 64-element pointwise panel, W = 13 and 20 (16- and 32-lane row blocks, partly past the row), a
# kernel size outside the compile-time ones (k1 = 9: run-time taps, corr groups 4 + 4 + 1), k1 = 7
# (corr groups 4 + 3) and k0 = 5 (one group of 5), and more (batch, channel) chunks than threads.
TAIL_CASES = [((2, 7, 4, 12, 13), 3, 9, 1), ((1, 13, 3, 10, 20), 5, 7, 2), ((3, 6, 5, 6, 9), 5, 3, 3)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("shape,k0,k1,d", TAIL_CASES, ids=lambda v: str(v))
def test_lka3d_register_block_tails(backend, shape, k0, k1, d, dtype):
    args64 = lka_args(*shape, k0, k1)
    g64 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    exact = run_reference("lka3d", args64, d, g64)
    if dtype == torch.float64:
        got = run("lka3d", args64, d, backend, g64)
        for name, a, b in zip(NAMES, got, exact):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")
        return
    args32, g32 = [a.float() for a in args64], g64.float()
    got = run("lka3d", args32, d, backend, g32)
    assert_within_twice_eager(got, run_reference("lka3d", args32, d, g32), exact, f"lka3d[{backend}]")


# (B, t, c, h, w): the small config's head (c = 64 on an 8x8x8 grid) shrunk, odd sizes, batch 1
LSTA_CASES = [((2, 4, 6, 5, 5), 3, 5, 2), ((1, 8, 16, 8, 8), 5, 7, 3), ((2, 3, 5, 7, 9), 5, 5, 1),
              ((1, 5, 3, 4, 6), 3, 7, 3)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape,k0,k1,d", LSTA_CASES, ids=lambda v: str(v))
def test_lsta_matches_reference(backend, shape, k0, k1, d):
    args = lsta_args(*shape, k0, k1)
    g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got, ref = run("lsta", args, d, backend, g), run_reference("lsta", args, d, g)
    for name, a, b in zip(NAMES, got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")
    # float32 against twice eager float32's error
    exact = ref
    args32, g32 = [a.float() for a in args], g.float()
    assert_within_twice_eager(run("lsta", args32, d, backend, g32), run_reference("lsta", args32, d, g32),
                              exact, f"lsta[{backend}]")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_public_functions_non_contiguous(backend):
    """Non-contiguous inputs through the public functions equal the reference."""
    base = torch.randn(2, 7, 4, 6, 5, dtype=torch.float64)
    x = base.permute(0, 1, 2, 4, 3)[:, 1:6]            # (2, 5, 4, 5, 6), strided
    assert not x.is_contiguous()
    w = lka_args(1, 5, 1, 1, 1, 3, 5)[1:]
    w[4] = w[4].transpose(0, 1)                           # non-contiguous wp
    with ops.backend(backend):
        y = ops.lka3d(x, *w, dilation=2)
    torch.testing.assert_close(y, lka3d_reference(x, *w, dilation=2), rtol=1e-10, atol=1e-10)
    e = torch.randn(2, 6, 9, 5, 4, dtype=torch.float64).transpose(2, 1)   # (2, 9, 6, 5, 4)
    lw = lsta_args(1, 1, 1, 1, 1, 3, 5)[1:]
    with ops.backend(backend):
        out = ops.lsta(e, *lw, dilation=3)
    torch.testing.assert_close(out, lsta_reference(e, *lw, dilation=3), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lsta_module_drop_in(backend):
    """The model's LSTA module goes through mgnet.ops: its output and parameter gradients on the fused
    backend match the eager backend."""
    from mgnet.models.lsta import LSTA
    torch.manual_seed(0)
    m = LSTA(5, 7, 3).double()
    e = torch.randn(3, 8, 16, 8, 8, dtype=torch.float64)
    res = {}
    for be in ("eager", backend):
        with ops.backend(be):
            assert ops.resolve("lsta", CPU) == be
            ei = e.clone().requires_grad_(True)
            out = m(ei)
            grads = torch.autograd.grad(out.square().sum(), [ei, *m.parameters()])
        res[be] = (out.detach(), grads)
    torch.testing.assert_close(res[backend][0], res["eager"][0], rtol=1e-10, atol=1e-10)
    for a, b in zip(res[backend][1], res["eager"][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_half_types_run_in_float32(backend):
    args = lka_args(1, 3, 4, 5, 6, 3, 5)
    exact = lka3d_reference(*args, dilation=2)
    for dt in (torch.bfloat16, torch.float16):
        y = torch.ops.mgnet.lka3d.default(*[a.to(dt) for a in args], 2, backend)
        assert y.dtype == dt
        # inputs rounded to dt, fp32 math, output rounded to dt
        ref = lka3d_reference(*[a.to(dt).double() for a in args], dilation=2).to(dt)
        torch.testing.assert_close(y, ref, rtol=0, atol=2 * torch.finfo(dt).eps * exact.abs().max().item())


@pytest.mark.skipif(SKIP_EXT, reason="MGNET_SKIP_EXT=1: no C++ kernels")
def test_cpu_results_do_not_depend_on_thread_count():
    args = lka_args(3, 4, 5, 6, 7, 3, 5, dtype=torch.float32)
    g = torch.randn(3, 4, 5, 6, 7, generator=torch.Generator().manual_seed(7))
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run("lka3d", args, 2, "cpu", g)
        torch.set_num_threads(max(2, n))
        many = run("lka3d", args, 2, "cpu", g)
    finally:
        torch.set_num_threads(n)
    for name, a, b in zip(NAMES, one, many):
        assert torch.equal(a, b), name


@pytest.mark.skipif(SKIP_EXT, reason="MGNET_SKIP_EXT=1: no C++ kernels")
def test_gradcheck_cpu_kernels_float64():
    for op, args, d in (("lka3d", lka_args(1, 2, 3, 4, 5, 3, 5), 2), ("lsta", lsta_args(1, 3, 2, 4, 3, 3, 5), 1)):
        fn = torch.ops.mgnet.lka3d.default if op == "lka3d" else torch.ops.mgnet.lsta.default
        leaves = [a.requires_grad_(True) for a in args]
        assert torch.autograd.gradcheck(lambda *a: fn(*a, d, "cpu"), leaves, eps=1e-6, atol=1e-7), op


@pytest.mark.skipif(SKIP_EXT, reason="MGNET_SKIP_EXT=1: no C++ kernels")
@pytest.mark.parametrize("op", ["lka3d", "lsta"])
def test_opcheck_cpu(op):
    args = lka_args(2, 3, 4, 5, 6, 3, 5) if op == "lka3d" else lsta_args(2, 3, 4, 5, 6, 3, 5)
    fn = torch.ops.mgnet.lka3d.default if op == "lka3d" else torch.ops.mgnet.lsta.default
    torch.library.opcheck(fn, (*[a.requires_grad_(True) for a in args], 2, "cpu"))


@pytest.mark.skipif(SKIP_EXT, reason="MGNET_SKIP_EXT=1: no C++ kernels")
def test_cpu_kernel_rejects_bad_input_by_name():
    args = lka_args(1, 2, 3, 4, 5, 3, 5, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="w1"):
        torch.ops.mgnet_C.lka3d_forward_cpu(args[0], args[1], args[2], args[3].double(), *args[4:], 2)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        torch.ops.mgnet_C.lka3d_forward_cpu(args[0].transpose(3, 4), *args[1:], 2)
    with pytest.raises(RuntimeError, match="w0"):
        torch.ops.mgnet_C.lka3d_forward_cpu(args[0], args[1][:, :, :2].contiguous(), *args[2:], 2)


# ----------------------------------------------------------------------------- argument errors
def test_argument_errors_name_the_argument():
    a = lka_args(1, 2, 3, 4, 5, 3, 5, dtype=torch.float32)
    cases = [
        ((a[0][0],) + tuple(a[1:]), {}, ValueError, "x must have 5 dimensions"),
        ((a[0], a[1][:, :, :2]) + tuple(a[2:]), {}, ValueError, "w0"),
        (tuple(a[:3]) + (torch.randn(2, 1, 4, 4, 4),) + tuple(a[4:]), {}, ValueError, "odd"),
        (tuple(a[:5]) + (torch.randn(3, 2, 1, 1, 1),) + tuple(a[6:]), {}, ValueError, "wp"),
        (tuple(a[:2]) + (torch.randn(3),) + tuple(a[3:]), {}, ValueError, "b0"),
        (tuple(a[:6]) + (a[6].double(),), {}, TypeError, "bp"),
        (tuple(a), {"dilation": 0}, ValueError, "dilation"),
        ((a[0].int(),) + tuple(a[1:]), {}, TypeError, "x must have dtype"),
    ]
    for args, kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            ops.lka3d(*args, **kw)
    la = lsta_args(1, 2, 3, 4, 5, 3, 5, dtype=torch.float32)
    with pytest.raises(ValueError, match="w0"):
        ops.lsta(la[0], *lka_args(1, 2, 1, 1, 1, 3, 5, dtype=torch.float32)[1:])
    with pytest.raises(ValueError, match="e must have 5 dimensions"):
        ops.lsta(la[0][0], *la[1:])


# ----------------------------------------------------------------------------- triton (interpreter)
# tiny shapes (the interpreter is slow): k0 3/5, k1 5/7, d 1-3, odd sizes, C > 16 (two GEMM channel blocks)
TRITON_CASES = [("lka3d", (1, 2, 3, 4, 5), 3, 5, 2), ("lka3d", (2, 1, 4, 5, 6), 5, 7, 3), ("lka3d", (1, 17, 3, 3, 4), 3, 5, 1),
                ("lsta", (2, 3, 5, 4, 5), 3, 5, 3)]


@pytest.mark.triton
@pytest.mark.skipif(not TRITON_CPU, reason="triton not installed")
@pytest.mark.parametrize("op,shape,k0,k1,d", TRITON_CASES, ids=lambda v: str(v))
def test_triton_interpreter_matches_reference(op, shape, k0, k1, d):
    mk = lka_args if op == "lka3d" else lsta_args
    args = [a.float() for a in mk(*shape, k0, k1)]
    g = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    got, ref = run(op, args, d, "triton", g), run_reference(op, [a.double() for a in args], d, g.double())
    for name, a, b in zip(NAMES, got, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.triton
@pytest.mark.skipif(not TRITON_CPU, reason="triton not installed")
def test_opcheck_triton():
    args = [a.float().requires_grad_(True) for a in lka_args(1, 2, 2, 3, 3, 3, 3)]
    torch.library.opcheck(torch.ops.mgnet.lka3d.default, (*args, 2, "triton"))


# ----------------------------------------------------------------------------- CUDA (when a GPU is present)
GPU_BACKENDS = [b for b in ("cuda", "triton") if CUDA and b in ops.available_backends("lka3d", torch.device("cuda"))]


@pytest.mark.skipif(not CUDA, reason="no GPU")
def test_cuda_backend_is_built():
    assert "cuda" in ops.available_backends("lka3d", torch.device("cuda")), _dispatch.extension_error()
    assert "cuda" in ops.available_backends("lsta", torch.device("cuda"))


@pytest.mark.skipif(not CUDA, reason="no GPU")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op,shape,k0,k1,d", [("lka3d", (2, 8, 8, 16, 16), 5, 7, 3), ("lka3d", (1, 5, 3, 7, 9), 3, 5, 2),
                                              ("lka3d", (2, 40, 4, 8, 8), 5, 7, 3), ("lsta", (2, 8, 64, 8, 8), 5, 7, 3),
                                              ("lsta", (1, 3, 5, 7, 9), 3, 5, 1)], ids=lambda v: str(v))
def test_gpu_within_twice_eager_error(backend, dtype, op, shape, k0, k1, d):
    mk = lka_args if op == "lka3d" else lsta_args
    args64 = mk(*shape, k0, k1, device="cuda")
    g64 = torch.randn(shape, dtype=torch.float64, device="cuda")
    exact = run_reference(op, args64, d, g64)
    args, g = [a.to(dtype) for a in args64], g64.to(dtype)
    eager = run_reference(op, args, d, g)
    assert_within_twice_eager(run(op, args, d, backend, g), eager, exact, f"{op}[{backend},{dtype}]")


@pytest.mark.skipif(not CUDA, reason="no GPU")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_opcheck_gpu(backend):
    args = [a.float().requires_grad_(True) for a in lka_args(1, 2, 3, 4, 5, 3, 5, device="cuda")]
    torch.library.opcheck(torch.ops.mgnet.lka3d.default, (*args, 2, backend))
