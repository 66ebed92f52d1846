"""The validation protocol: train and evaluate the method on several synthetic benchmark variants
and seeds, and report the mean and the minimum frame AUC per score component and anomaly type.

    mgnet protocol                                  # selection set, size small, current defaults
    mgnet protocol model.mem_temperature=0.05       # the same cells with a candidate default
    mgnet protocol --variants natural --seeds 0 --size tiny train.stage1.steps=4
    mgnet protocol --set report                     # the held-back report set (never choose on it)

Each cell (variant, seed) generates its benchmark once (cached under ``--data-dir``), then runs the
plain `mgnet train` code path (which prepares the stores) and `mgnet eval` scoring with
``data.synth.variant=<variant> data.synth.seed=<seed> seed=<seed>`` plus the overrides given on the
command line, which apply to every cell. Results: ``<out>/<variant>-s<seed>/cell.json`` per cell,
``<out>/protocol.json`` and ``<out>/protocol.md`` (mean and min per component x type, and every
cell's values). ``--resume`` skips the cells already finished with the same size and overrides and
continues interrupted ones; ``--jobs N`` runs N cells at once (each in its own process).

Model selection: defaults are chosen on the `selection` set (variants synth_variants.SELECTION x
seeds SELECTION_SEEDS, validation data in effect); the `report` set (REPORT x REPORT_SEEDS) is held
back, its clips are generated and read only by ``--set report``, and the two sets share neither a
variant nor a seed (checked here: a selection run refuses report variants or seeds).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Sequence, Tuple

from mgnet.data import synth_variants as SV

COMPONENTS = (("fused", "MGNet fused"), ("fused_minmax", "fused, eq.16 minmax"), ("mo", "S_mo"), ("app", "S_app"),
              ("mm", "S_mm"), ("pose", "S_pose (seg. kNN)"), ("nll", "STG-NF NLL"))
TYPES = ("micro", "motion", "appearance", "scene")
SETS = {"selection": (SV.SELECTION, SV.SELECTION_SEEDS), "report": (SV.REPORT, SV.REPORT_SEEDS)}


def cells_of(set_name: str, variants: Sequence[str] | None = None, seeds: Sequence[int] | None = None
             ) -> List[Tuple[str, int]]:
    """The (variant, seed) cells of a protocol set, optionally narrowed. ValueError for a variant or
    seed of the other set (a selection run never touches the report set, nor the reverse), or for
    the `default` variant (the benchmark the method was developed on)."""
    if set_name not in SETS:
        raise ValueError(f"--set must be one of {list(SETS)}, got {set_name!r}")
    own_v, own_s = SETS[set_name]
    other = "report" if set_name == "selection" else "selection"
    other_v, other_s = SETS[other]
    variants = list(own_v if not variants else variants)
    seeds = [int(s) for s in (own_s if seeds is None or len(seeds) == 0 else seeds)]
    for v in variants:
        SV.get(v)
        if v in other_v or v == "default":
            raise ValueError(f"variant {v!r} is not in the {set_name} set ({', '.join(own_v)})"
                             + (f": it belongs to the held-apart {other} set" if v in other_v else ""))
    for s in seeds:
        if s in other_s:
            raise ValueError(f"seed {s} belongs to the {other} set's seeds {list(other_s)}; "
                             f"the {set_name} set may not use it")
    if len(set(variants)) != len(variants) or len(set(seeds)) != len(seeds):
        raise ValueError("--variants and --seeds must not repeat a value")
    return [(v, s) for v in variants for s in seeds]


def cell_table(metrics: Dict) -> Dict[str, Dict[str, float]]:
    """{component: {micro, motion, appearance, scene}} frame AUCs of one evaluation's metrics."""
    out = {}
    for comp, _ in COMPONENTS:
        row = metrics["auc"].get(comp, {"micro": None})    # a row the run does not have (model.n_seg=0): n/a
        types = row.get("types", {})
        out[comp] = {t: _num(row["micro"] if t == "micro" else types.get(t)) for t in TYPES}
    return out


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def aggregate(cells: Iterable[Dict]) -> Dict[str, Dict[str, Dict]]:
    """Mean and minimum over cells of each (component, type) AUC, with the cell of the minimum.

    cells: dicts with "variant", "seed" and "auc" ({component: {type: AUC}}). A NaN or None (a type
    the cell's test split lacks; JSON writes NaN as null) is left out of that entry; "n" counts the cells that entered it.
    """
    cells = list(cells)
    out = {}
    for comp, _ in COMPONENTS:
        out[comp] = {}
        for t in TYPES:
            vals = [(_num(c["auc"][comp][t]), f"{c['variant']}/s{c['seed']}") for c in cells]
            vals = [x for x in vals if x[0] == x[0]]
            if not vals:
                out[comp][t] = {"mean": float("nan"), "min": float("nan"), "min_cell": None, "n": 0}
                continue
            lo = min(vals, key=lambda x: x[0])
            out[comp][t] = {"mean": sum(v for v, _ in vals) / len(vals), "min": lo[0], "min_cell": lo[1],
                            "n": len(vals)}
    return out


def _f(v: float) -> str:
    v = _num(v)
    return "n/a" if v != v else f"{v:.3f}"


def format_markdown(summary: Dict) -> str:
    """The protocol's tables: mean / min per component x type, then every cell's values."""
    agg, cells = summary["aggregate"], summary["cells"]
    lines = [f"Validation protocol, set `{summary['set']}`, size `{summary['size']}`: "
             f"{len(cells)} cells ({', '.join(summary['variants'])} x seeds "
             f"{', '.join(str(s) for s in summary['seeds'])}); frame AUC, mean / min over cells "
             f"(the cell of the minimum in brackets)."]
    if summary["overrides"]:
        lines.append(f"Overrides: `{' '.join(summary['overrides'])}`.")
    lines += ["", "| score | " + " | ".join(TYPES) + " |", "|---|" + "---|" * len(TYPES)]
    for comp, label in COMPONENTS:
        lines.append(f"| {label} | " + " | ".join(
            f"{_f(agg[comp][t]['mean'])} / {_f(agg[comp][t]['min'])} ({agg[comp][t]['min_cell'] or '-'})"
            for t in TYPES) + " |")
    lines += ["", "| variant | seed | score | " + " | ".join(TYPES) + " |", "|---|---|---|" + "---|" * len(TYPES)]
    for c in cells:
        for comp, label in COMPONENTS:
            lines.append(f"| {c['variant']} | {c['seed']} | {label} | "
                         + " | ".join(_f(c["auc"][comp][t]) for t in TYPES) + " |")
    walls = [c["wall_s"] for c in cells if c.get("wall_s")]
    cpus = [c["cpu_s"] for c in cells if c.get("cpu_s")]
    if walls:
        lines += ["", f"Cell wall time: mean {sum(walls) / len(walls) / 60:.1f} min, max {max(walls) / 60:.1f} min "
                      f"({summary['machine']})"
                  + (f"; CPU time mean {sum(cpus) / len(cpus) / 60:.1f} min, max {max(cpus) / 60:.1f} min "
                     f"(the wall time of a 1-thread cell on a quiet machine)." if cpus else ".")]
    return "\n".join(lines) + "\n"


def _machine() -> str:
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        load = "?"
    return f"{platform.machine()} {os.cpu_count()} cores, load average {load} at start"


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children: about the wall time of a cell run
    with train.threads=1 on a quiet machine, whatever the load was."""
    import resource
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _key(size: str, overrides: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([size, list(overrides)]).encode()).hexdigest()[:12]


def cell_overrides(variant: str, seed: int, size: str, data_dir: str, cell_dir: str, threads, resume: bool,
                   overrides: Sequence[str]) -> List[str]:
    """The hydra overrides of one cell's `mgnet train` run (the user's overrides last)."""
    ov = ["data=synthetic", f"data.root={os.path.join(data_dir, f'{variant}-{size}-s{seed}')}",
          f"data.synth.size={size}", f"data.synth.seed={seed}", f"data.synth.variant={variant}", f"seed={seed}",
          f"train.out={cell_dir}", "eval.plots=false", "train.resume=true" if resume else "train.overwrite=true"]
    if threads:
        ov.append(f"train.threads={int(threads)}")
    return ov + list(overrides)


def run_cell(overrides: List[str]) -> Dict:
    """Train (the `mgnet train` code path: prepare, four stages, score stats) and evaluate one cell."""
    from mgnet import runs
    from mgnet.evaluation import evaluate
    from mgnet.training import train
    cfg = runs.compose_config(overrides)
    t0 = time.perf_counter()
    result = train(cfg)
    if result["stopped"]:
        raise RuntimeError("training stopped early (train.stop_after_steps); rerun with --resume")
    t1 = time.perf_counter()
    metrics = evaluate(cfg, cfg.train.out, model=result.get("model"))
    return {"metrics": metrics, "train_s": t1 - t0, "eval_s": time.perf_counter() - t1}


def _timed(runner, overrides: List[str]) -> Dict:
    """runner(overrides) with its wall and CPU seconds (measured in the process that runs it)."""
    t0, cpu0 = time.perf_counter(), _cpu_s()
    r = dict(runner(overrides))
    r.update(wall_s=time.perf_counter() - t0, cpu_s=_cpu_s() - cpu0)
    return r


def run_protocol(set_name: str = "selection", variants=None, seeds=None, size: str = "small", out=None,
                 data_dir=None, threads=None, resume: bool = False, overrides: Sequence[str] = (),
                 log=print, runner=run_cell, jobs: int = 1) -> Dict:
    """Run (or resume) every cell of the set and write protocol.json / protocol.md; returns the summary.
    jobs > 1 runs that many cells at once, each in its own (spawned) process."""
    from mgnet import runs
    cells = cells_of(set_name, variants, seeds)
    out = os.path.abspath(out or os.path.join("runs", f"protocol-{set_name}"))
    data_dir = os.path.abspath(data_dir or os.path.join(os.environ.get("MGNET_DATA_DIR", "data"), "protocol"))
    overrides = list(overrides)
    key = _key(size, overrides)
    runs.compose_config(cell_overrides(*cells[0], size, data_dir, os.path.join(out, "check"), threads, False,
                                       overrides))  # bad overrides fail before any cell runs
    machine, results, todo = _machine(), {}, []
    for k, (variant, seed) in enumerate(cells):
        cell_dir = os.path.join(out, f"{variant}-s{seed}")
        path = os.path.join(cell_dir, "cell.json")
        if resume and os.path.isfile(path):
            done = runs.read_json(path)
            if done.get("key") == key:
                log(f"mgnet protocol: cell {k + 1}/{len(cells)} {variant} seed {seed}: finished earlier, kept")
                results[(variant, seed)] = done
                continue
        interrupted = resume and os.path.isdir(cell_dir) and not os.path.isfile(path)
        todo.append((variant, seed, path, cell_overrides(variant, seed, size, data_dir, cell_dir, threads,
                                                         interrupted, overrides)))

    def finished(variant, seed, path, r):
        cell = {"variant": variant, "seed": int(seed), "size": size, "set": set_name, "key": key,
                "overrides": overrides, "auc": cell_table(r["metrics"]), "wall_s": r["wall_s"],
                "cpu_s": r["cpu_s"], "train_s": r.get("train_s"), "eval_s": r.get("eval_s"), "machine": machine}
        runs.write_json(path, cell)
        log(f"mgnet protocol: {variant} seed {seed}: fused micro {_f(cell['auc']['fused']['micro'])}, "
            f"{cell['wall_s'] / 60:.1f} min")
        results[(variant, seed)] = cell
    for variant, seed, path, _ in todo:
        log(f"mgnet protocol: cell {variant} seed {seed} (size {size}) -> {os.path.dirname(path)}")
    if jobs > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=mp.get_context("spawn")) as ex:
            futures = [(t, ex.submit(_timed, runner, t[3])) for t in todo]
            for t, fut in futures:
                finished(*t[:3], fut.result())
    else:
        for t in todo:
            finished(*t[:3], _timed(runner, t[3]))
    results = [results[c] for c in cells]
    summary = {"set": set_name, "size": size, "variants": sorted({v for v, _ in cells}, key=[v for v, _ in cells].index),
               "seeds": sorted({s for _, s in cells}), "overrides": overrides, "machine": machine,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cells": results,
               "aggregate": aggregate(results)}
    runs.write_json(os.path.join(out, "protocol.json"), summary)
    runs.write_text(os.path.join(out, "protocol.md"), format_markdown(summary))
    return summary


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        return ""


def parse(argv: List[str]):
    p = argparse.ArgumentParser(prog="mgnet protocol", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--set", default="selection", choices=list(SETS),
                   help="selection (choose defaults on it) or report (held back; default: selection)")
    p.add_argument("--variants", nargs="+", default=None, help="variants of the set to run (default: all of it)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the set's seeds)")
    p.add_argument("--size", default="small", choices=("tiny", "small", "full"),
                   help="benchmark size (small: what defaults are chosen at; tiny: tests)")
    p.add_argument("--out", default=None, help="results folder (default runs/protocol-<set>)")
    p.add_argument("--data-dir", default=None, help="benchmark cache (default $MGNET_DATA_DIR/protocol or data/protocol)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per cell (train.threads)")
    p.add_argument("--resume", action="store_true", help="keep finished cells, continue interrupted ones")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells run at once, each in its own process (2 with --threads 1 on 2 cores)")
    p.add_argument("overrides", nargs="*", help="hydra overrides applied to every cell (key=value)")
    # key=value words are overrides wherever they stand (also right after --variants / --seeds)
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = p.parse_args([a for a in argv if not ("=" in a and not a.startswith("-"))])
    if args.overrides:
        p.error(f"overrides must be key=value, got {args.overrides}")
    args.overrides = overrides
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    from mgnet.data.errors import DataError
    from mgnet.runs import RunError

    def log(msg):
        print(msg, file=sys.stderr, flush=True)
    try:
        summary = run_protocol(args.set, args.variants, args.seeds, args.size, args.out, args.data_dir,
                               args.threads, args.resume, args.overrides, log=log, jobs=max(1, args.jobs))
    except (ValueError, DataError, RunError, FileNotFoundError, RuntimeError) as exc:
        print(f"mgnet protocol: error: {exc}", file=sys.stderr)
        return 2
    if args.set == "report":
        log("mgnet protocol: the report set is held back: report these numbers, never choose a default on them")
    print(format_markdown(summary), end="")
    commit = _commit()
    print(f"\n({summary['date']}, {summary['machine']}{', commit ' + commit if commit else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
