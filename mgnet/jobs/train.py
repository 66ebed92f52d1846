"""`mgnet train`: the four training stages (mgnet.training), resumable, single process or torchrun.

    mgnet train data=synthetic model=small train.out=runs/x        # hydra overrides
    mgnet train train.out=runs/x --resume                          # continue after an interruption
    torchrun --nproc_per_node=4 -m mgnet.cli train train.out=runs/x   # DDP, one process per GPU
"""
from __future__ import annotations

import sys
from typing import List

from mgnet import config_schema
from mgnet.training import train

USAGE = """usage: mgnet train [--resume] [key=value ...]

Hydra overrides of mgnet/conf/config.yaml, e.g.
  mgnet train data=synthetic data.synth.size=tiny model=small train.out=runs/x
  mgnet train experiment=demo train.stage2.steps=500
  mgnet train train.out=runs/x --resume
Multi-GPU: torchrun --nproc_per_node=N -m mgnet.cli train ...
"""


def usage() -> str:
    return USAGE


def parse_argv(argv: List[str]) -> List[str]:
    """Hydra overrides from the command line; ``--resume`` -> ``train.resume=true``."""
    overrides = []
    for a in argv:
        if a == "--resume":
            overrides.append("train.resume=true")
        elif a.startswith("-"):
            raise ValueError(f"unknown option {a!r}; `mgnet train` takes hydra overrides (key=value) and --resume")
        else:
            overrides.append(a)
    return overrides


def main(argv) -> int:
    result = train(config_schema.compose(parse_argv(argv)))  # checked before any data or folder
    if result["stopped"]:
        print(f"mgnet train: stopped early in {result['run'].root}; continue with --resume", file=sys.stderr)
    return 0
