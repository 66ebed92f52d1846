"""The C++ CPU kernels' cache of large output buffers (csrc/common/buffer_cache.h).

A CPU tensor above glibc's mmap threshold is a fresh mapping whose pages the OS zeroes on first touch;
for the memory op's many-query regime (a 100 MB ``read`` per call) that cost more than the kernel.
Outputs of at least 4 MiB therefore come from a cache of freed blocks, reused by the next call of the
same size. Idle blocks are bounded: ``MGNET_CPU_BUFFER_CACHE_MB`` (default 512, 0 turns the cache off,
read when the first such output is made) or :func:`set_buffer_cache_limit`.
"""
from __future__ import annotations

from typing import Dict

import torch

from ._dispatch import ext_has, extension_error

__all__ = ["buffer_cache_info", "empty_buffer_cache", "set_buffer_cache_limit"]


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
