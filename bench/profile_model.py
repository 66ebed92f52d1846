"""Where the time of a whole-model step goes, and how much the fused ops can give (issue #8).

    taskset -c 1 .venv/bin/python bench/profile_model.py --what train-s2 --threads 1
    python bench/profile_model.py --what infer --backend eager       # one backend only

For each backend asked for (default: both, `eager` = every mgnet op on its reference, `auto` = the
fused kernels; one model, the backends alternating step by step so that both see the same load of
a shared machine), the script
  1. times --time-steps steps without the profiler (best step, after --warmup warm steps; wall
     time and the thread's CPU time, which a preempting process on a shared core does not inflate);
  2. runs torch.profiler over --steps more steps and prints, for the fastest (least disturbed)
     profiled step, (a) the top ops by self CPU time and
     (b) the share of the step in each part: the mgnet custom ops (everything under an `mgnet::*`
     op, their `*_backward` ops included; on the eager backend that is the reference's aten ops),
     STG-NF (a record_function range put around `model.stgnf.nll` here), the optimizer, SDPA,
     linear/matmul, layernorm/gelu, python (time in the step outside any op), and the rest.
Each profiled op's self time goes to the first part, in that order, that the op or one of its
ancestors (forward ops, autograd nodes `autograd::engine::evaluate_function: XBackward0`, ranges)
belongs to. With both backends it then prints Amdahl's bound from the eager share f of the mgnet
ops: 1 / (1 - f (1 - 1/s)) with s the ops' speed-up measured inside this step (their eager ms /
fused ms), 1 / (1 - f) for infinitely fast ops, next to the measured step ratio eager / fused.

Batches come from `mgnet.models.example.example_batch` (what bench/test_model.py uses). For
`infer`, the Behavior-Scene Matching Memory is written once from the batch first (stage 4), so
that scoring runs its matching branch as a trained model does.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import mgnet.ops as ops
from mgnet.models.config import ModelConfig
from mgnet.models.example import example_batch
from mgnet.models.mgnet import MGNet

STEP = "profile_model.step"
STGNF = "profile_model.stgnf"
# parts in priority order: an op's self time goes to the first part it or an ancestor matches
PARTS = ("STG-NF", "mgnet ops", "optimizer", "SDPA", "linear/matmul", "layernorm/gelu", "python", "rest")
_MGNET_NODE = "GeneratedBackwardFor_mgnet_"   # a custom op's autograd node, e.g. ..._lsta_defaultBackward
_SDPA = ("scaled_dot_product", "flash_attention", "ScaledDotProduct")
_LINEAR = {"aten::linear", "aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::baddbmm",
           "AddmmBackward0", "MmBackward0", "BmmBackward0", "LinearBackward0", "BaddbmmBackward0"}
_NORM = {"aten::layer_norm", "aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::gelu",
         "aten::gelu_backward", "NativeLayerNormBackward0", "GeluBackward0"}


def _part_of(name: str):
    """The part a single event name marks, or None."""
    node = name.split(": ", 1)[-1]            # "autograd::engine::evaluate_function: AddmmBackward0"
    if name == STGNF:
        return "STG-NF"
    if name.startswith("mgnet::") or node.startswith(_MGNET_NODE):
        return "mgnet ops"
    if name.startswith("Optimizer."):         # Optimizer.step#AdamW.step, Optimizer.zero_grad#...
        return "optimizer"
    if any(s in name for s in _SDPA):
        return "SDPA"
    if name in _LINEAR or node in _LINEAR:
        return "linear/matmul"
    if name in _NORM or node in _NORM:
        return "layernorm/gelu"
    return None


def classify_step(root):
    """ms of each part, of each mgnet op, of each op (self time) and in total, for one step range."""
    parts, per_op, top, rest = (collections.Counter() for _ in range(4))
    stack = [(root, frozenset(), None)]
    while stack:
        ev, marks, mop = stack.pop()
        part = _part_of(ev.name)
        if part:
            marks = marks | {part}
        if mop is None and ev.name.startswith("mgnet::"):
            mop = ev.name[len("mgnet::"):].removesuffix("_backward")
        elif mop is None and ev.name.split(": ", 1)[-1].startswith(_MGNET_NODE):
            mop = ev.name.split(": ", 1)[-1][len(_MGNET_NODE):].removesuffix("Backward").removesuffix("_default")
        self_ms = ev.self_cpu_time_total * 1e-3
        top[ev.name] += self_ms
        if ev is root:
            part = "python"                     # the step's own time: Python between the ops
        else:
            part = next((q for q in PARTS if q in marks), "rest")
        parts[part] += self_ms
        if part == "mgnet ops":
            per_op[mop] += self_ms
        elif part == "rest":
            rest[ev.name] += self_ms
        stack.extend((c, marks, mop) for c in ev.cpu_children)
    return {"total": root.cpu_time_total * 1e-3, "parts": parts, "per_op": per_op, "top": top, "rest": rest}


def build(args):
    torch.manual_seed(0)
    # train-s3: the paper's stage 3 (model.app_target=memory); by default stage 3 trains nothing
    cfg = getattr(ModelConfig, args.config)(**({"app_target": "memory"} if args.what == "train-s3" else {}))
    model = MGNet(cfg)
    batch = example_batch(cfg, args.batch, seed=0, num_videos=4)
    nll = model.stgnf.nll

    def nll_ranged(x):                         # an STG-NF range for the classification
        with record_function(STGNF):
            return nll(x)
    model.stgnf.nll = nll_ranged
    if args.what == "infer":
        model.set_stage(4)
        model.bsmm_write(batch)
        model.eval()

        def step():
            with torch.inference_mode():
                model.scores(batch)
        return step
    stage = int(args.what[-1])
    model.set_stage(stage)
    opt = torch.optim.AdamW(model.stage_parameters(stage), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        model.losses(batch, stage)["loss"].backward()
        opt.step()
    return step


def run(args, backends):
    """Time and profile the step on each backend, the backends alternating step by step so that
    both see the same machine load; per backend the least disturbed step (the fastest) counts."""
    step = build(args)
    for _ in range(args.warmup):
        for b in backends:
            with ops.backend(b):
                step()
    best = {b: float("inf") for b in backends}
    best_cpu = dict(best)
    for _ in range(args.time_steps):
        for b in backends:
            with ops.backend(b):
                t, c = time.perf_counter(), time.thread_time()
                step()
                best[b] = min(best[b], time.perf_counter() - t)
                best_cpu[b] = min(best_cpu[b], time.thread_time() - c)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            for b in backends:
                with ops.backend(b), record_function(f"{STEP}:{b}"):
                    step()
    res = {}
    for b in backends:
        roots = [ev for ev in prof.events() if ev.name == f"{STEP}:{b}" and ev.cpu_parent is None]
        steps = sorted((classify_step(r) for r in roots), key=lambda r: r["total"])
        res[b] = dict(steps[0], step_ms=best[b] * 1e3, step_cpu_ms=best_cpu[b] * 1e3,
                      profiled_ms=[r["total"] for r in steps])
    return res


def report(name, res, top_n):
    tot = res["total"]
    print(f"\n== backend {name}: step {res['step_ms']:.1f} ms unprofiled (best; thread CPU time "
          f"{res['step_cpu_ms']:.1f} ms), profiled "
          f"{tot:.1f} ms (best; all: {', '.join(f'{t:.0f}' for t in res['profiled_ms'])}) ==")
    print(f"top {top_n} ops by self CPU time (ms/step, % of the profiled step):")
    for op, v in sorted(res["top"].items(), key=lambda kv: -kv[1])[:top_n]:
        print(f"  {v:8.2f} {100 * v / tot:5.1f}%  {op}")
    print("share of the step:")
    for p in PARTS:
        v = res["parts"].get(p, 0.0)
        print(f"  {p:15s} {v:8.2f} ms {100 * v / tot:5.1f}%")
    if res["per_op"]:
        print("  mgnet ops: " + ", ".join(f"{k} {v:.2f} ms" for k, v in
                                           sorted(res["per_op"].items(), key=lambda kv: -kv[1])))
    print("  largest in rest: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                             sorted(res["rest"].items(), key=lambda kv: -kv[1])[:6]))


def amdahl(e, f_res):
    te, tf = e["total"], f_res["total"]
    me, mf = e["parts"].get("mgnet ops", 0.0), f_res["parts"].get("mgnet ops", 0.0)
    f = me / te
    s = me / mf if mf > 0 else float("inf")
    bound = 1.0 / (1.0 - f * (1.0 - 1.0 / s))
    print("\n== Amdahl ==")
    print(f"eager share of the mgnet ops f = {me:.2f} / {te:.2f} ms = {100 * f:.1f} %")
    print(f"their speed-up inside the step s = {me:.2f} / {mf:.2f} ms = {s:.1f}x")
    print(f"bound 1/(1 - f(1 - 1/s)) = {bound:.2f}x;  ops for free 1/(1 - f) = {1 / (1 - f):.2f}x")
    print(f"measured step eager / fused: unprofiled {e['step_ms']:.1f} / {f_res['step_ms']:.1f} ms = "
          f"{e['step_ms'] / f_res['step_ms']:.2f}x (thread CPU time {e['step_cpu_ms']:.1f} / "
          f"{f_res['step_cpu_ms']:.1f} ms = {e['step_cpu_ms'] / f_res['step_cpu_ms']:.2f}x), "
          f"profiled {te:.1f} / {tf:.1f} ms = {te / tf:.2f}x")
    for target in (1.5, 2.0):
        print(f"  {target}x would need f >= {100 * (1 - 1 / target):.0f} % with infinitely fast ops")
    return {"f": f, "s": s, "bound": bound, "bound_inf": 1 / (1 - f)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=("small", "vits"), default="small")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--what", choices=("train-s2", "train-s3", "infer"), default="train-s2")
    ap.add_argument("--backend", choices=("eager", "auto", "both"), default="both")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--time-steps", type=int, default=5, help="unprofiled steps timed per backend (best is reported)")
    ap.add_argument("--steps", type=int, default=5, help="profiled steps per backend")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.what}, config {args.config}, batch {args.batch}, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    backends = ("eager", "auto") if args.backend == "both" else (args.backend,)
    res = run(args, backends)
    for b in backends:
        report(b, res[b], args.top)
    if len(res) == 2:
        amdahl(res["eager"], res["auto"])
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
