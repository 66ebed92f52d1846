"""Whole-model speed with the implementations interleaved round by round (robust ratios on a VM).

    python bench/model_interleaved.py --what infer train-s2 --rounds 10 --threads 2

bench/test_model.py times each implementation's rounds back to back, so a minute in which the
machine runs slower (this VM's rate drifts by 20-30 % between minutes) falls on one implementation
and moves the ratios. Here every implementation of a case is built first (compiled, warmed up),
then round r runs each of them once, in turn, and the table gives the best and the median round
per implementation and the ratios of the medians, printed and written as JSON (--out). The
implementations and the batches are bench/test_model.py's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

import test_model as tm  # noqa: E402
from mgnet.engine import cpu_features  # noqa: E402


def build(what: str, impl: str, B: int = 16, device: str = "cpu"):
    """A zero-argument callable running one call of ``what`` with ``impl`` (warmed up): the model,
    batch, compile and step of bench/test_model.py, with the impl's op backend (and for compile the
    inlined references) entered around each call, since the impls alternate."""
    stage = 4 if what == "infer" else int(what[-1])
    cfg, model = tm._model("small", device, stage)
    batch = tm.synthetic_batch(cfg, B, device)
    model = tm._compiled(model, impl, reset=False)
    if what == "infer":
        model.eval()
        inner = tm._score_call(model.scores, batch, impl, device)
        grad = torch.inference_mode
    else:
        opt = torch.optim.AdamW(model.stage_parameters(stage), lr=1e-4)
        inner = tm._train_step(model.losses, opt, batch, stage, impl, device)
        grad = contextlib.nullcontext
    patch = tm._inline_references if impl == "compile" else contextlib.nullcontext

    def call():
        with patch(), tm._backend_ctx(impl), grad():
            inner()
    call()
    call()
    return call


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", nargs="+", default=["infer", "train-s2"], choices=["infer", "train-s2", "train-s3"])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = {"machine": {"cpu": cpu_features(), "threads": a.threads, "torch": torch.__version__}, "cases": {}}
    for what in a.what:
        calls = {impl: build(what, impl) for impl in tm.IMPLS}
        times = {impl: [] for impl in calls}
        for _ in range(a.rounds):
            for impl, call in calls.items():
                t = time.perf_counter()
                call()
                times[impl].append((time.perf_counter() - t) * 1e3)
        med = {i: statistics.median(v) for i, v in times.items()}
        case = {"ms": {i: {"best": min(v), "median": med[i]} for i, v in times.items()},
                "fused+compile / compile": med["compile"] / med["fused+compile"],
                "fused / eager": med["eager"] / med["fused"],
                "best bf16 / fp32 fused": med["fused"] / min(med["fused+bf16"], med["fused+compile+bf16"]),
                "best bf16 / fp32 eager": med["eager"] / min(med["fused+bf16"], med["fused+compile+bf16"])}
        res["cases"][what] = case
        print(what, "median ms:", " ".join(f"{i} {m:.1f}" for i, m in med.items()))
        print("   ", " ".join(f"{k} {v:.2f}x" for k, v in case.items() if k != "ms"), flush=True)
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
