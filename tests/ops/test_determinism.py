"""The C++ CPU kernels give bit-identical outputs and gradients (inputs and weights) at any thread
count: their reductions over rows, queries or batches sum partials of a fixed number of chunks in a
fixed order (csrc/*/_cpu.cpp). The shapes reach the multi-chunk paths (several tiles per chunk,
several chunks; the memory's narrow, fused and wide regimes). Before the fixed chunks, the memory's
and the cube embedding's backward differed at 1 and 2 threads in the last bits."""
import pytest
import torch

import mgnet.ops as ops

from ._backends import check_cpu_built

THREADS = (1, 2, 3)


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _at_threads(fn):
    """fn() -> list of tensors, evaluated at each thread count of THREADS."""
    out = {}
    for t in THREADS:
        torch.set_num_threads(t)
        with ops.backend("cpu"):
            out[t] = [x.detach().clone() for x in fn()]
    return out


def _assert_bit_identical(out, names):
    for t in THREADS[1:]:
        for name, a, b in zip(names, out[THREADS[0]], out[t]):
            assert torch.equal(a, b), (f"{name} differs between {THREADS[0]} and {t} threads "
                                       f"(max |diff| {(a - b).abs().max().item():.3g})")


def _grads(y, inputs, seed=1):
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return [y, *torch.autograd.grad(y, inputs, g)]


@pytest.mark.parametrize("N,C,S", [(64, 32, 10), (4096, 192, 10), (256, 5130, 50), (40, 5130, 50)],
                         ids=["small", "many-fused", "wide", "wide-few"])
def test_memory_address_is_thread_count_independent(N, C, S):
    check_cpu_built("memory_address")
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(N, C, generator=gen).requires_grad_()
    mem = torch.randn(S, C, generator=gen).requires_grad_()

    def step():
        w, read, top2 = ops.memory_address(q, mem)
        loss_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(2))
        y = (w * loss_w).sum(1, keepdim=True) + read
        return [w, read, top2, *_grads(y, [q, mem])[1:]]

    _assert_bit_identical(_at_threads(step), ["weights", "read", "top2", "grad_q", "grad_mem"])


@pytest.mark.parametrize("B,Pv,D", [(2, 20, 32), (16, 400, 32), (4, 512, 64)])
def test_masked_cube_embed_is_thread_count_independent(B, Pv, D):
    check_cpu_built("masked_cube_embed")
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (B, 3, 16, 64, 64), generator=gen, dtype=torch.uint8)
    visible = torch.stack([torch.randperm(512, generator=gen)[:Pv] for _ in range(B)])
    weight = (torch.randn(D, 3, 2, 8, 8, generator=gen) * 0.02).requires_grad_()
    bias = torch.zeros(D, requires_grad=True)
    pos = (torch.randn(512, D, generator=gen) * 0.02).requires_grad_()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])

    def step():
        return _grads(ops.masked_cube_embed(frames, visible, weight, bias, pos, mean, std), [weight, bias, pos])

    _assert_bit_identical(_at_threads(step), ["tokens", "grad_weight", "grad_bias", "grad_pos"])


@pytest.mark.parametrize("op,shape", [("lka3d", (4, 8, 6, 12, 20)), ("lsta", (6, 4, 16, 8, 8))])
def test_lka3d_lsta_are_thread_count_independent(op, shape):
    check_cpu_built(op)
    gen = torch.Generator().manual_seed(0)
    C = shape[1] if op == "lka3d" else 1
    r = lambda *s, sc=1.0: (torch.randn(*s, generator=gen) * sc).requires_grad_()  # noqa: E731
    args = [r(*shape), r(C, 1, 5, 5, 5, sc=0.1), r(C, sc=0.1), r(C, 1, 7, 7, 7, sc=0.05), r(C, sc=0.1),
            r(C, C, 1, 1, 1, sc=C ** -0.5), r(C, sc=0.1)]
    fn = ops.lka3d if op == "lka3d" else ops.lsta

    def step():
        return _grads(fn(*args, dilation=3), args)

    _assert_bit_identical(_at_threads(step), ["out", "grad_x", "grad_w0", "grad_b0", "grad_w1", "grad_b1",
                                              "grad_wp", "grad_bp"])
