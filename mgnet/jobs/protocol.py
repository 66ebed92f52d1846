"""`mgnet protocol`: train and evaluate on benchmark variants x seeds (the library is mgnet.protocol).

A job module of its own so that cli.COMMANDS lists only mgnet.jobs.* (tests/test_layers.py); the
protocol's parsing and loop stay in mgnet.protocol (branch qgen's module).
"""
from __future__ import annotations

from mgnet import protocol


def usage() -> str:
    return "usage: mgnet protocol [--set selection|report] [--variants V ...] [--seeds S ...] [--size S] [key=value ...]\n" \
           + (protocol.__doc__ or "")


def main(argv) -> int:
    return protocol.main(list(argv))
