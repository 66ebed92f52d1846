"""The C++ CPU kernels' cache of large output buffers (csrc/common/buffer_cache.h).

A CPU tensor above glibc's mmap threshold is a fresh mapping whose pages the OS zeroes on first touch;
for the memory op's many-query regime (a 100 MB ``read`` per call) that cost more than the kernel.
Outputs of at least 4 MiB therefore come from a cache of freed blocks, reused by the next call of the
same size. Idle blocks are bounded: ``MGNET_CPU_BUFFER_CACHE_MB`` (default 512, 0 turns the cache off,
read when the first such output is made) or :func:`set_buffer_cache_limit`.
"""
from __future__ import annotations

import os
import re
from typing import Dict

import torch

from ._dispatch import ext_has, extension_error

__all__ = ["buffer_cache_info", "empty_buffer_cache", "set_buffer_cache_limit", "check_env"]

ENV = "MGNET_CPU_BUFFER_CACHE_MB"
_env_ok = []   # the value already checked, so that the check costs nothing on later calls


def check_env() -> None:
    """Raise ValueError (naming the variable) when MGNET_CPU_BUFFER_CACHE_MB is set but not a whole
    number of MiB: called before the C++ kernels run, so that a bad value is the one-line error of
    any other bad argument (exit status 2 from the CLI) rather than an error from inside a kernel."""
    value = os.environ.get(ENV, "")
    if _env_ok and _env_ok[0] == value:
        return
    if value != "" and not re.fullmatch(r"[0-9]+", value):
        raise ValueError(f"{ENV}={value!r}: expected a whole number of MiB >= 0 "
                         f"(idle CPU output buffers kept for reuse; 0 turns the cache off)")
    _env_ok[:] = [value]


def _op(name: str):
    if not ext_has(name):
        raise RuntimeError(f"mgnet._C has no {name}: the C++ kernels are not built "
                           f"({extension_error() or 'an older build'})")
    return getattr(torch.ops.mgnet_C, name)


def buffer_cache_info() -> Dict[str, int]:
    """limit_bytes, idle_bytes, idle_blocks, and the hits / misses of allocations through the cache."""
    limit, idle, blocks, hits, misses = _op("buffer_cache_info")()
    return {"limit_bytes": limit, "idle_bytes": idle, "idle_blocks": blocks, "hits": hits, "misses": misses}


def empty_buffer_cache() -> None:
    """Return every idle block to the OS (blocks in use are returned when their tensors die)."""
    _op("empty_buffer_cache")()


def set_buffer_cache_limit(mib: float) -> None:
    """Keep at most ``mib`` MiB of idle blocks (0 turns the cache off); frees idle blocks above it."""
    if not isinstance(mib, (int, float)) or isinstance(mib, bool) or mib < 0:
        raise ValueError(f"set_buffer_cache_limit: mib must be a number >= 0, got {mib!r}")
    _op("set_buffer_cache_limit")(int(mib * (1 << 20)))
