"""The C++ kernels' cache of large CPU output buffers (csrc/common/buffer_cache.h): a freed output's
block is handed to the next output of the same size, results stay those of the eager reference
(gradients included), the idle bytes stay under the limit, 0 turns it off, and the environment
variable is checked."""
import os
import subprocess
import sys

import pytest
import torch

import mgnet.ops as ops
from mgnet.ops.memory import memory_address_reference as reference

from ._backends import SKIP_EXT

pytestmark = pytest.mark.skipif(SKIP_EXT, reason="MGNET_SKIP_EXT=1: pure Python install, no C++ kernels")

MIB = 1 << 20
# 8192 x 160 fp32 = 5 MiB: read and grad_q go through the cache (>= 4 MiB), the weights (320 KiB) do not
N, C, S = 8192, 160, 10


@pytest.fixture(autouse=True)
def fresh_cache():
    ops.set_buffer_cache_limit(512)
    ops.empty_buffer_cache()
    yield
    ops.set_buffer_cache_limit(512)
    ops.empty_buffer_cache()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, C, generator=g), torch.randn(S, C, generator=g)


def fused(q, mem):
    with ops.backend("cpu"), torch.no_grad():
        return ops.memory_address(q, mem)


def test_freed_output_is_reused_by_the_next_call_of_its_size():
    q, mem = inputs()
    _, read, _ = fused(q, mem)
    ptr = read.data_ptr()
    before = ops.buffer_cache_info()
    assert before["idle_blocks"] == 0
    del read
    idle = ops.buffer_cache_info()
    assert idle["idle_blocks"] == 1 and idle["idle_bytes"] == 6 * MIB  # 5 MiB rounded up to 2 MiB pages
    q2, mem2 = inputs(1)
    w, read2, top2 = fused(q2, mem2)
    after = ops.buffer_cache_info()
    assert read2.data_ptr() == ptr
    assert after["hits"] == before["hits"] + 1 and after["idle_blocks"] == 0
    # the reused block holds this call's values, not the last one's
    w_ref, r_ref, t_ref = reference(q2, mem2)
    torch.testing.assert_close(read2, r_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)


def test_gradients_through_cached_buffers_match_the_reference():
    q, mem = inputs(2)
    g = torch.Generator().manual_seed(3)
    gw, gr = torch.randn(N, S, generator=g), torch.randn(N, C, generator=g)

    def grads(f):
        qq, mm = q.clone().requires_grad_(True), mem.clone().requires_grad_(True)
        with ops.backend("cpu"):
            w, r, _ = f(qq, mm)
        return torch.autograd.grad((w, r), (qq, mm), (gw, gr))

    first = grads(ops.memory_address)
    del first  # read died with the graph, grad_q here: two idle blocks
    hits = ops.buffer_cache_info()["hits"]
    gq, gm = grads(ops.memory_address)
    assert ops.buffer_cache_info()["hits"] == hits + 2  # read and grad_q both on reused blocks
    gq_ref, gm_ref = grads(reference)
    torch.testing.assert_close(gq, gq_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gm, gm_ref, rtol=1e-4, atol=1e-4)


def test_idle_bytes_stay_under_the_limit_oldest_freed_first():
    ops.set_buffer_cache_limit(13)  # room for two 6 MiB blocks
    q, mem = inputs()
    outs = [fused(q, mem)[1] for _ in range(3)]
    ptrs = [o.data_ptr() for o in outs]
    while outs:
        outs.pop(0)  # freed in order: 0, 1, 2
    info = ops.buffer_cache_info()
    assert info["idle_blocks"] == 2 and info["idle_bytes"] == 12 * MIB
    # the newest two stay (block 0 was freed to make room), and the newest is handed out first
    assert fused(q, mem)[1].data_ptr() == ptrs[2]
    ops.set_buffer_cache_limit(0)
    assert ops.buffer_cache_info()["idle_bytes"] == 0


def test_limit_zero_turns_the_cache_off():
    ops.set_buffer_cache_limit(0)
    q, mem = inputs()
    before = ops.buffer_cache_info()
    read = fused(q, mem)[1]
    del read
    after = ops.buffer_cache_info()
    assert after["idle_bytes"] == 0 and after["hits"] == before["hits"] and after["misses"] == before["misses"]


def test_cached_output_outlives_emptying_and_can_be_resized():
    q, mem = inputs()
    read = fused(q, mem)[1]
    keep = read.clone()
    ops.empty_buffer_cache()  # a block in use is not idle: untouched
    torch.testing.assert_close(read, keep, rtol=0, atol=0)
    read.resize_(2 * N, C)  # a resizable storage: grows through the same allocator
    torch.testing.assert_close(read[:N], keep, rtol=0, atol=0)


def test_bad_limits_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="mib"):
        ops.set_buffer_cache_limit(-1)
    q, mem = inputs()
    for bad in ("lots", "-5", "1.5", " 64"):
        monkeypatch.setenv("MGNET_CPU_BUFFER_CACHE_MB", bad)
        with pytest.raises(ValueError, match=f"MGNET_CPU_BUFFER_CACHE_MB={bad!r}"):
            fused(q, mem)
    monkeypatch.setenv("MGNET_CPU_BUFFER_CACHE_MB", "64")
    fused(q, mem)   # a good value passes
    code = ("import torch, mgnet.ops as ops\n"
            "q = torch.randn(8192, 160); m = torch.randn(10, 160)\n"
            "with ops.backend('cpu'): ops.memory_address(q, m)\n")
    env = dict(os.environ, MGNET_CPU_BUFFER_CACHE_MB="lots")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "MGNET_CPU_BUFFER_CACHE_MB='lots'" in p.stderr
