"""Summary of `pytest bench/`: one table (op, shape, pass, eager, fused, compile, fused/eager,
fused/compile, achieved rate and fraction of the ceiling, clips/s for whole-model cases), printed
at the end and saved as JSON and Markdown under bench/results/ (override with MGNET_BENCH_OUT).

MGNET_BENCH_DEVICE=cpu|cuda keeps only the cases of that device (a case is a CUDA case when one of
its parameters is "cuda..." or a CUDA torch.device, or its id says "cuda"); bench/gpu_check.sh
uses it to run the CUDA shapes only. MGNET_BENCH_THREADS=N sets torch's intra-op threads for the
session (on a CPU shared with other jobs, 1 thread avoids OpenMP barrier stalls that otherwise
dominate small ops)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402
from _common import BF16_IMPLS, IMPLS  # noqa: E402
from mgnet.engine import cpu_features  # noqa: E402


if os.environ.get("MGNET_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["MGNET_BENCH_THREADS"]))


def _is_cuda_item(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {}) or {}
    for v in params.values():
        if isinstance(v, torch.device) and v.type == "cuda":
            return True
        if isinstance(v, str) and v.startswith("cuda"):
            return True
    return "cuda" in item.name.lower()


def pytest_collection_modifyitems(config, items):
    want = os.environ.get("MGNET_BENCH_DEVICE", "").strip().lower()
    if not want:
        return
    if want not in ("cpu", "cuda"):
        raise pytest.UsageError(f"MGNET_BENCH_DEVICE={want!r}: expected 'cpu' or 'cuda'")
    keep, drop = [], []
    for item in items:
        (keep if _is_cuda_item(item) == (want == "cuda") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _rows(session):
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None:
        return []
    cases = {}
    for b in bs.benchmarks:
        info = b.extra_info
        if "op" not in info or b.stats is None:
            continue
        key = (info["op"], info["shape"], info["pass_"], info["device"])
        st = b.stats if hasattr(b.stats, "min") else b.stats.stats   # Metadata or its Stats
        if not getattr(st, "data", None):    # interrupted before its first round (gpu_check timeout)
            continue
        cases.setdefault(key, {})[info["impl"]] = (st.min, info)
    rows = []
    for (op, shape, pass_, device), impls in sorted(cases.items()):
        row = {"op": op, "shape": shape, "pass": pass_, "device": device}
        for impl in IMPLS:
            row[f"{impl}_ms"] = impls[impl][0] * 1e3 if impl in impls else None
            if impl in impls and impls[impl][1].get("clips"):
                row[f"{impl}_clips_per_s"] = impls[impl][1]["clips"] / impls[impl][0]
        if row["eager_ms"] and row["fused_ms"]:
            row["fused_vs_eager"] = row["eager_ms"] / row["fused_ms"]
        if row["compile_ms"] and row["fused_ms"]:
            row["fused_vs_compile"] = row["compile_ms"] / row["fused_ms"]
        if row["compile_ms"] and row["fused+compile_ms"]:
            row["fused+compile_vs_compile"] = row["compile_ms"] / row["fused+compile_ms"]
        if row["eager_ms"] and row["fused+compile_ms"]:
            row["fused+compile_vs_eager"] = row["eager_ms"] / row["fused+compile_ms"]
        bf16 = [row[f"{i}_ms"] for i in BF16_IMPLS if row.get(f"{i}_ms")]
        if bf16:  # the issue's bf16 targets: training step vs fp32 fused, scoring vs fp32 eager
            row["best_bf16_ms"] = min(bf16)
            if row["fused_ms"]:
                row["bf16_vs_fused"] = row["fused_ms"] / row["best_bf16_ms"]
            if row["eager_ms"]:
                row["bf16_vs_eager"] = row["eager_ms"] / row["best_bf16_ms"]
        flops_info = next((i for _, i in impls.values() if "peak_gflops_bf16" in i), None)
        if flops_info is not None:       # whole model: useful GFLOP/s of every impl, vs fp32 and bf16 GEMM
            for impl, (t, info) in impls.items():
                row[f"{impl}_gflops"] = info["flops"] / t / 1e9
            best = max(IMPLS, key=lambda i: row.get(f"{i}_gflops", 0.0))
            row["best_impl"] = best
            row["best_of_fp32"] = row[f"{best}_gflops"] / flops_info["peak_gflops"]
            native = flops_info.get("bf16_native", True)
            row["best_of_bf16"] = row[f"{best}_gflops"] / flops_info["peak_gflops_bf16"] if native else None
            row["gflop_per_call"] = flops_info["flops"] / 1e9
            row["ceiling"] = (f"{flops_info['peak_gflops']:.0f} GFLOP/s (fp32 GEMM), "
                              f"{flops_info['peak_gflops_bf16']:.3g} GFLOP/s (bf16 GEMM"
                              + ("" if native else ", emulated: no AVX512-BF16 / AMX") + ")")
        if "fused" in impls and flops_info is None:
            t, info = impls["fused"]
            if "flops" in info:
                row["fused_gflops"] = info["flops"] / t / 1e9
                row["peak_fraction"] = row["fused_gflops"] / info["peak_gflops"]
                row["ceiling"] = f"{info['peak_gflops']:.0f} GFLOP/s (fp32 GEMM)"
            elif "bytes" in info:
                row["fused_gbs"] = info["bytes"] / t / 1e9
                row["peak_fraction"] = row["fused_gbs"] / info["peak_gbs"]
                row["ceiling"] = f"{info['peak_gbs']:.0f} GB/s (copy)"
        rows.append(row)
    return rows


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def pytest_sessionfinish(session, exitstatus):
    rows = _rows(session)
    if not rows:
        return
    head = ("| op | shape | pass | device | eager ms | fused ms | compile ms | fused+compile ms | fused/eager | "
            "fused/compile | fused+compile/compile | fused rate | of ceiling |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        rate = (f"{r['fused_gflops']:.1f} GFLOP/s" if "fused_gflops" in r
                else f"{r['fused_gbs']:.1f} GB/s" if "fused_gbs" in r else "-")
        if "fused_clips_per_s" in r or "eager_clips_per_s" in r:
            rate = "clips/s e/f/c/fc/fb/fcb: " + "/".join(_fmt(r.get(f"{i}_clips_per_s"), ".1f") for i in IMPLS)
        if "best_impl" in r:
            rate += (f"; {r['gflop_per_call']:.2f} GFLOP/call, GFLOP/s e/f/c/fc/fb/fcb: "
                     + "/".join(_fmt(r.get(f"{i}_gflops"), ".1f") for i in IMPLS)
                     + f"; best ({r['best_impl']}) {r['best_of_fp32']:.1%} of fp32 GEMM, "
                     + ("bf16 GEMM emulated on this CPU (no fraction)" if r["best_of_bf16"] is None
                        else f"{r['best_of_bf16']:.1%} of bf16 GEMM"))
        if "best_bf16_ms" in r:
            rate += (f"; bf16 ms f/fc: " + "/".join(_fmt(r.get(f"{i}_ms"), ".1f") for i in BF16_IMPLS)
                     + f", best bf16 vs fp32 fused {_ratio(r.get('bf16_vs_fused'))}, vs fp32 eager "
                     + _ratio(r.get("bf16_vs_eager")))
        lines.append(f"| {r['op']} | {r['shape']} | {r['pass']} | {r['device']} | {_fmt(r['eager_ms'], '.2f')} | "
                     f"{_fmt(r['fused_ms'], '.2f')} | {_fmt(r['compile_ms'], '.2f')} | "
                     f"{_fmt(r['fused+compile_ms'], '.2f')} | "
                     f"{_ratio(r.get('fused_vs_eager'))} | {_ratio(r.get('fused_vs_compile'))} | "
                     f"{_ratio(r.get('fused+compile_vs_compile'))} | "
                     f"{rate} | {_fmt(r.get('peak_fraction'), '.1%')} |")
    machine = {"host": platform.node(), "machine": platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "cpu": cpu_features(),
               "load": os.getloadavg() if hasattr(os, "getloadavg") else None,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "ceilings": sorted({r["ceiling"] for r in rows if "ceiling" in r})}
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.environ.get("MGNET_BENCH_OUT", os.path.join(os.path.dirname(__file__), "results"))
    os.makedirs(out, exist_ok=True)
    kind = "gpu" if machine["gpu"] else "cpu"
    base = os.path.join(out, f"bench-{kind}-{stamp}")
    for path, text in ((base + ".json", json.dumps({"machine": machine, "rows": rows}, indent=1)),
                       (base + ".md", f"# pytest bench/ {stamp}\n\nmachine: {json.dumps(machine)}\n\n"
                                      + "\n".join(lines) + "\n")):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line("")
        tr.write_line(f"mgnet bench summary (saved to {base}.md):")
        for line in lines:
            tr.write_line(line)
