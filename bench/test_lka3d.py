"""lka3d and lsta: eager vs fused vs torch.compile, forward and forward+backward.

Cases
  lka3d (8, 64, 8, 32, 32), k0=5, k1=7, d=3 (the issue's CPU shape).
  lsta on the LSTA head input e (B=64, t=8, c=D, h=8, w=8) of the small (D=64) and paper (D=384)
  configs, k0=5, k1=7, d=3.
  CUDA: the same cases (and lka3d at (8, 384, 8, 32, 32)) when a GPU is present.

Rates
  lka3d is compute-bound. FLOPs count the useful multiply-adds only (one FMA = 2 FLOPs):
  2 * B*C * (V0 + V1 + D*H*W*C) for the forward, where V0 and V1 are the numbers of (output, tap)
  pairs of the two depthwise convolutions whose input lies inside the volume (taps that land in the
  zero padding do no work: with d=3, k1=7 on D=8 most depth taps do), and D*H*W*C the pointwise conv;
  forward+backward counts 3x the forward (grad of the input and of the weights, each as costly).
  The nominal count 2*B*C*D*H*W*(k0^3 + k1^3 + C) is about 2x larger on the CPU case. The fraction in the table is of the machine's measured fp32 FMA ceiling: the throughput of
  a large fp32 torch.mm on all threads (bench/_common.compute_peak_gflops). On a shared machine that
  measurement drops with the load, so compare also with the nominal FMA peak: cores x clock x fp32
  FMA lanes per cycle x 2, e.g. 2 Zen 4 cores x 2.6 GHz x 16 (two 256-bit FMA pipes) x 2 = 166 GFLOP/s.
  lsta is memory-bound (its lka3d runs on a 1-channel volume): bytes = 3 * e.nbytes for the forward
  (one read of e for the channel mean, one read + one write for the gate) and 7 * e.nbytes for
  forward+backward (forward, then e and g read once for the mean and sum_c g*e, g read and g_e
  written once); the fraction is of the measured copy bandwidth.

The eager reference is very slow on this CPU (PyTorch's dilated depthwise Conv3d takes the
slow_conv_dilated3d path: ~30 s for the forward of the lka3d case), so the CPU eager and compile
cases of lka3d run one timed round; everything else runs several.
"""
import pytest
import torch

import mgnet.ops as ops
from mgnet.ops.lka3d import lka3d_reference, lsta_reference
from _common import bench_pedantic, record

K0, K1, DIL = 5, 7, 3
CUDA = torch.cuda.is_available()

# (op, shape, device, eager/compile rounds, fused rounds)
CASES = [("lka3d", (8, 64, 8, 32, 32), "cpu", 1, 3),
         ("lsta", (64, 8, 64, 8, 8), "cpu", 3, 5),
         ("lsta", (64, 8, 384, 8, 8), "cpu", 3, 5),
         ("lka3d", (8, 64, 8, 32, 32), "cuda", 10, 20),
         ("lka3d", (8, 384, 8, 32, 32), "cuda", 5, 20),
         ("lsta", (64, 8, 64, 8, 8), "cuda", 10, 20),
         ("lsta", (64, 8, 384, 8, 8), "cuda", 10, 20)]
IMPLS = ("eager", "fused", "compile")
PASSES = ("fwd", "fwd+bwd")


def _args(op, shape, device):
    g = torch.Generator().manual_seed(0)
    C = shape[1] if op == "lka3d" else 1
    r = lambda *s, sc=1.0: (torch.randn(*s, generator=g) * sc).to(device)  # noqa: E731
    x = r(*shape)
    return [x, r(C, 1, K0, K0, K0, sc=K0 ** -1.5), r(C, sc=0.1), r(C, 1, K1, K1, K1, sc=K1 ** -1.5),
            r(C, sc=0.1), r(C, C, 1, 1, 1, sc=C ** -0.5), r(C, sc=0.1)]


def _valid_taps(n, k, d):
    """(output, tap) pairs of a 1-D same-padded conv of size n, kernel k, dilation d whose input
    index falls inside [0, n)."""
    p = d * (k - 1) // 2
    return sum(1 for o in range(n) for j in range(k) if 0 <= o - p + j * d < n)


def _useful_taps(dims, k, d):
    out = 1
    for n in dims:
        out *= _valid_taps(n, k, d)
    return out


def _rate(op, shape, pass_, x):
    if op == "lka3d":
        B, C, D, H, W = shape
        v0, v1 = _useful_taps((D, H, W), K0, 1), _useful_taps((D, H, W), K1, DIL)
        fwd = 2.0 * B * C * (v0 + v1 + D * H * W * C)
        return {"flops": fwd if pass_ == "fwd" else 3 * fwd}
    return {"bytes_": (3 if pass_ == "fwd" else 7) * x.numel() * x.element_size()}


def _fn(op, impl):
    ref = lka3d_reference if op == "lka3d" else lsta_reference
    if impl == "eager":
        return lambda *a: ref(*a, dilation=DIL)
    if impl == "compile":
        return torch.compile(lambda *a: ref(*a, dilation=DIL))
    pub = ops.lka3d if op == "lka3d" else ops.lsta
    return lambda *a: pub(*a, dilation=DIL)


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,shape,device,slow_rounds,fast_rounds", CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}-{c[2]}" for c in CASES])
def test_lka3d_bench(benchmark, op, shape, device, slow_rounds, fast_rounds, impl, pass_):
    if device == "cuda" and not CUDA:
        pytest.skip("no GPU")
    args = _args(op, shape, device)
    fn = _fn(op, impl)
    if pass_ == "fwd":
        def step():
            with torch.no_grad():
                return fn(*args)
    else:
        leaves = [a.requires_grad_(True) for a in args]
        gout = torch.randn_like(args[0])

        def step():
            y = fn(*leaves)
            return torch.autograd.grad(y, leaves, gout)
    if impl == "fused":
        be = ops.resolve(op, torch.device(device))
        assert be != "eager", f"no fused {op} backend available on {device}"
        rounds, warm = fast_rounds, 1
    else:
        rounds, warm = slow_rounds, (1 if slow_rounds > 1 else 0)
    if impl == "compile":
        step()  # compile (and run once) outside the timed region
    record(benchmark, op=op, shape="x".join(map(str, shape)), impl=impl, pass_=pass_, device=device,
           **_rate(op, shape, pass_, args[0]))
    bench_pedantic(benchmark, step, device=device, rounds=rounds, warmup_rounds=warm)
