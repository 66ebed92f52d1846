"""Named progress points of the jobs, for the kill -9 tests (tests/test_kill.py).

``point(name)`` marks a moment of a job: a training step, a batch of scoring, a file written to
its temporary name and about to be renamed into place. It costs one dict lookup unless the
environment variable ``MGNET_HOLD_AT=<name>:<n>`` names it: then its n-th occurrence in this
process prints ``mgnet-hold <name> <n>`` to stderr and the process waits there (sleeps) until it
is killed, so a test can SIGKILL a job at an exact, reproducible moment instead of guessing one
from the clock.

Points (``{k}``: a stage number, ``{file}``: the final file name):
    prepare.shard        a video's shard written to its temporary folder, before the rename
    prepare.index        index.npy written, store.json not yet
    stage{k}.step        after an optimiser step of stage k (1-3); stage4.batch a BSMM write batch
    scores.batch         after a batch of `score_clips` (train statistics, eval)
    write {file}         a file complete under its temporary name, before the rename (atomic_write)
    score.batch          after a batch of `mgnet score` (offline)
    score.publish        a video's output folder complete, before it is renamed into place
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter

_HOLD = os.environ.get("MGNET_HOLD_AT")
_name, _, _nth = (_HOLD or "").rpartition(":")
_counts: Counter = Counter()

__all__ = ["point"]


def point(name: str) -> None:
    """A named moment of the job (see the module docstring); a no-op unless MGNET_HOLD_AT names it."""
    if _HOLD is None or name != _name:
        return
    _counts[name] += 1
    if _counts[name] == int(_nth or 1):
        sys.stderr.write(f"\nmgnet-hold {name} {_counts[name]}\n")
        sys.stderr.flush()
        while True:  # until SIGKILL
            time.sleep(60)
