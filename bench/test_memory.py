"""memory_address: eager (the reference, plain PyTorch autograd) vs fused (the public op on the auto
backend) vs torch.compile of the reference, forward and forward+backward, in MGNet's two regimes:

  many  behavior memory: every token of every clip queries it, N = 256 clips x 512 tokens = 131072
        queries of width 192 against 10 slots (CUDA: also batch 64 x 512 at the paper width 384)
  wide  Behavior-Scene Matching Memory: 256 queries of width P*N_b + N_s = 512*10 + 10 = 5130 against 50 slots

Minimum bytes moved (b = bytes per element, int64 top2):
  fwd      b * (N*C + S*C)           read q, mem
         + b * (N*S + N*C) + 16*N    write weights, read, top2
  fwd+bwd  fwd
         + b * (N*C + N*S + N*C + S*C + N*S)   read grad_read, grad_weights, q, mem, weights
         + b * (N*C + S*C)                     write grad_q, grad_mem
GB/s = that / time, against bench/_common.memory_bandwidth_gbs (a 256 MiB copy on CPU, 2 GiB on GPU:
bytes read + written / time). The many-query regime is bandwidth-bound (S = 10 slots: 20 FLOP per
element of q); the wide regime does 2*S = 100 FMA per element and is compute-bound on a CPU.

Bound of the wide regime (CPU). Its useful work is GEMM-shaped: the forward is 2 products of N*S*C =
65.7 M multiply-adds (scores, read) = 263 MFLOP, the backward 4 more (grad_read @ mem.T, b @ mem, W.T @
grad_read, b.T @ q) = 525 MFLOP; nothing cheaper computes them. At the fp32 GEMM ceiling of this 2-core
machine (torch.mm 2048^2: 181 GFLOP/s with 2 threads, 84-91 with 1) the forward cannot take less than
1.45 ms (2 threads) / 2.9 ms (1 thread), and eager's forward, two matmuls (alone: 3.3-5.2 ms on 1
thread, 50-80 % of that ceiling) plus normalize/softmax, takes 3.0-3.5 ms / 4.2-5.7 ms: fused/eager <=
2.4x (2 threads) and <= 1.5-1.9x (1 thread) for the forward, so a 3x forward target exceeds the
machine's peak. fwd+bwd: 788 MFLOP -> >= 4.35 ms / 8.7-9.4 ms against eager's 12-14 ms / 19-24 ms, <=
2.8x / 2.4x. The C++ kernel runs the forward at ~80-90 % and the backward at ~75-90 % of that ceiling
(best of 40-50 interleaved calls, 2026-11-29: 2 threads fwd 1.60 ms, bwd 3.31 ms; 1 thread fwd 3.0-3.3
ms, bwd 6.6-6.8 ms), so what is left to gain in this regime is small.

Bound of the many regime (CPU, 1 thread, 2026-12-07, machine shared with another job): copy 15.4-17.2
GB/s and GEMM 82-90 GFLOP/s give 12.1-13.5 ms for the forward's 209 MB and 12 ms for its 1.0 GFLOP
(the two products, N*S*C FMAs each: it is compute-bound as much as bandwidth-bound at 1 thread), and
36-40 ms for fwd+bwd (622 MB, 3.0 GFLOP). The block kernel (rows_forward) runs at that rate on
buffers already touched; a fresh 100 MB output is a fresh mapping whose page zeroing cost more than
the kernel (2026-12-08, Zen 5 EPYC, 2 threads: forward 15 ms on fresh outputs, 5 ms on touched
ones), so the CPU kernels take their large outputs from a cache of freed blocks
(csrc/common/buffer_cache.h): forward 5.2 ms, 91 % of the copy-bandwidth floor; fwd+bwd 26 ms, 53 %.
The eager and compile impls allocate through torch's allocator (fresh mappings) as a user's code does.
"""
import pytest
import torch

import mgnet.ops as ops
from mgnet.ops.memory import memory_address_reference
from _common import bench_pedantic, record

OP = "memory_address"
HAS_CUDA = torch.cuda.is_available()
ROUNDS = {"cpu": 3, "cuda": 20}
SHAPES = {  # name: (N, C, S)
    "many": (131072, 192, 10),
    "wide": (256, 5130, 50),
    "many-paper": (64 * 512, 384, 10),
}

CASES = []
for dev in ("cpu", "cuda"):
    for name in ("many", "wide") + (("many-paper",) if dev == "cuda" else ()):
        for pass_ in ("fwd", "fwd+bwd"):
            marks = [pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")] if dev == "cuda" else []
            CASES.append(pytest.param(dev, name, pass_, marks=marks, id=f"{dev}-{name}-{pass_}"))

_COMPILED = {}


def _compiled():
    if "f" not in _COMPILED:
        _COMPILED["f"] = torch.compile(memory_address_reference, dynamic=False)
    return _COMPILED["f"]


def min_bytes(N, C, S, elem, bwd):
    fwd = elem * (N * C + S * C) + elem * (N * S + N * C) + 16 * N
    if not bwd:
        return fwd
    return fwd + elem * (3 * N * C + 2 * N * S + S * C) + elem * (N * C + S * C)


@pytest.mark.parametrize("impl", ["eager", "fused", "compile"])
@pytest.mark.parametrize("device,name,pass_", CASES)
def test_memory_address(benchmark, device, name, pass_, impl):
    N, C, S = SHAPES[name]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(N, C, generator=g).to(device)
    mem = torch.randn(S, C, generator=g).to(device)
    bwd = pass_ == "fwd+bwd"
    if impl == "eager":
        f = memory_address_reference
    elif impl == "fused":
        assert ops.resolve(OP, q.device) != "eager", "no fused backend available for this device"
        f = ops.memory_address
    else:
        f = _compiled()
    if bwd:
        q.requires_grad_(True)
        mem.requires_grad_(True)
        gw = torch.randn(N, S, generator=g).to(device)
        gr = torch.randn(N, C, generator=g).to(device)

        def run():
            w, r, _ = f(q, mem)
            torch.autograd.grad((w, r), (q, mem), (gw, gr))
    else:
        def run():
            with torch.no_grad():
                f(q, mem)
    run()  # compile / first-touch outside the timed region
    run()
    record(benchmark, op=OP, shape=f"{name} N{N} C{C} S{S} fp32", impl=impl, pass_=pass_, device=device,
           bytes_=min_bytes(N, C, S, 4, bwd))
    # the wide case takes milliseconds: 10x the rounds, so the best round is not one a neighbour disturbed
    bench_pedantic(benchmark, run, device, rounds=ROUNDS[device] * (10 if name == "wide" else 1))
