"""Shared helpers of the `pytest bench/` suites: machine ceilings and result recording.

Ceilings (measured once per run, on the device the benchmark uses):
  * compute peak: fp32 GEMM throughput of torch.mm (4096^2 on GPU with TF32 off, 2048^2 on CPU with
    all threads) - the FMA rate this machine actually sustains, the ceiling a convolution could reach;
    the bf16 GEMM beside it for the whole-model cases (the units built for lower precision).
  * memory bandwidth: a large device copy (256 MiB on CPU, 2 GiB on GPU), bytes read + written / time.
Each benchmark calls `record(...)` with the FLOPs or the minimum bytes it must move; the suite's
conftest turns the timings into GFLOP/s or GB/s, the fraction of the ceiling, and the summary table.
"""
from __future__ import annotations

import functools
import time

import torch

IMPLS = ("eager", "fused", "compile", "fused+compile", "fused+bf16", "fused+compile+bf16")
# the bf16 impls (bf16 autocast around the fused model, as train.precision=bf16) exist for whole-model cases
BF16_IMPLS = ("fused+bf16", "fused+compile+bf16")


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device, reps=5, warmup=1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


@functools.lru_cache(maxsize=None)
def compute_peak_gflops(device: str = "cpu", dtype: str = "fp32") -> float:
    """GEMM GFLOP/s of torch.mm on ``device`` in ``dtype`` ("fp32" or "bf16": on CPUs without
    AVX512-BF16 / AMX, torch emulates bf16 through fp32 and this ceiling is below the fp32 one)."""
    dev = torch.device(device)
    n = 4096 if dev.type == "cuda" else 2048
    dt_ = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(n, n, device=dev).to(dt_)
    b = torch.randn(n, n, device=dev).to(dt_)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    dt = time_fn(lambda: torch.mm(a, b), device, reps=5)
    return 2 * n ** 3 / dt / 1e9


@functools.lru_cache(maxsize=None)
def _cpu_bf16_native() -> bool:
    from mgnet.engine import cpu_features
    return bool(cpu_features()["bf16_native"])


@functools.lru_cache(maxsize=None)
def memory_bandwidth_gbs(device: str = "cpu") -> float:
    dev = torch.device(device)
    n = (2 << 30 if dev.type == "cuda" else 256 << 20) // 4
    x = torch.empty(n, device=dev).fill_(1.0)
    y = torch.empty_like(x)
    dt = time_fn(lambda: y.copy_(x), device, reps=5)
    return 2 * n * 4 / dt / 1e9


def record(benchmark, *, op: str, shape: str, impl: str, pass_: str = "fwd", device: str = "cpu",
           flops: float | None = None, bytes_: float | None = None, clips: int | None = None) -> None:
    """Attach what the summary table needs to a pytest-benchmark result.

    op/shape/pass_ group the eager, fused and compile runs of one case; impl is one of IMPLS;
    flops (for compute-bound ops) or bytes_ (minimum bytes moved, for memory-bound ops) per call;
    clips (whole-model benches): clips processed per call, reported as clips/s per impl.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    info = benchmark.extra_info
    info.update(op=op, shape=shape, impl=impl, pass_=pass_, device=device)
    if flops is not None:
        info["flops"] = float(flops)
        info["peak_gflops"] = compute_peak_gflops(device)
        if clips is not None:      # whole-model cases: the bf16 ceiling as well
            info["peak_gflops_bf16"] = compute_peak_gflops(device, "bf16")
            # without AVX512-BF16 / AMX torch emulates bf16 GEMMs through fp32 at a fraction of its
            # rate: a "fraction of that ceiling" would read as thousands of percent, so none is given
            info["bf16_native"] = device != "cpu" or bool(_cpu_bf16_native())
    if bytes_ is not None:
        info["bytes"] = float(bytes_)
        info["peak_gbs"] = memory_bandwidth_gbs(device)
    if clips is not None:
        info["clips"] = int(clips)
    benchmark.group = f"{op} {pass_} {shape} [{device}]"


def bench_pedantic(benchmark, fn, device="cpu", rounds=5, warmup_rounds=1):
    """Run `fn` under pytest-benchmark with explicit rounds (the ops are too slow for calibration).
    Where record() was given `clips`, the best round's clips/s lands in extra_info["clips_per_s"]."""
    def run():
        fn()
        _sync(device)
    out = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
    stats = getattr(benchmark, "stats", None)
    clips = benchmark.extra_info.get("clips")
    if clips and stats is not None and stats.stats.min > 0:
        benchmark.extra_info["clips_per_s"] = clips / stats.stats.min
    return out
