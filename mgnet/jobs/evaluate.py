"""`mgnet eval run=<dir>`: score the test split of a finished run and print the frame-level AUC
table (mgnet.evaluation; it writes metrics.json, eval/frame_scores.npz and the plots).

    mgnet eval run=runs/demo                 # the run's own data config
    mgnet eval run=runs/demo eval.sigma=3    # any override of the run's config.yaml
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from omegaconf import OmegaConf

from mgnet import config_schema
from mgnet.evaluation import evaluate, format_table
from mgnet.runs import RunDir

USAGE = """usage: mgnet eval run=<run dir> [--compile] [key=value ...]

--compile: torch.compile the model (same as eval.compile=true; falls back to eager with a message)

Scores the test split of a finished run; overrides apply to the run's config.yaml, e.g.
  mgnet eval run=runs/demo eval.sigma=3 eval.plots=false
"""


def usage() -> str:
    return USAGE


def parse_argv(argv: List[str]) -> Tuple[Optional[str], List[str]]:
    run, overrides = None, []
    it = iter(argv)
    for a in it:
        if a.startswith("run="):
            run = a[4:]
        elif a == "--run":
            run = next(it, None)
        elif a == "--compile":
            overrides.append("eval.compile=true")
        elif a.startswith("-"):
            raise ValueError(f"unknown option {a!r}; `mgnet eval run=<dir> [key=value ...]`")
        else:
            overrides.append(a)
    return run, overrides


def main(argv) -> int:
    run, overrides = parse_argv(argv)
    if not run:
        raise ValueError("which run? `mgnet eval run=<run dir>`")
    cfg = config_schema.load_run_config(RunDir(run).config)
    if overrides:
        config_schema.check_overrides(overrides)
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    cfg = config_schema.validate(cfg)  # checked before anything is scored or written
    metrics = evaluate(cfg, run)
    if metrics:
        print(format_table(metrics))
    return 0
