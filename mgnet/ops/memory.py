"""Memory cosine addressing (paper eq. 7) with the read and the two nearest slots (for eq. 11).

memory_address(q (N, C), mem (S, C)) -> (weights (N, S), read (N, C), top2 (N, 2) int64):
    score   = normalize(q) @ normalize(mem).T        normalize(v) = v / max(||v||_2, EPS), EPS = 1e-12
    weights = softmax(score, dim=1)
    read    = weights @ mem
    top2    = indices of the two highest scores per row, ties to the lower slot index;
              with S == 1 both columns are 0.
top2 carries no gradient. The reference below is the definition.

Fused backends (rows of the table in backends.py): cpu (csrc/memory/memory_cpu.cpp: float32 and
float64; float16 / bfloat16 are computed in float32), cuda (csrc/memory/memory_kernels.cu: all four
dtypes, float accumulation) and triton (kernels/memory.py: float32 arithmetic). Each does the
forward in one pass over q (slot norms once, query norms on the fly, safe softmax, read, top-2 with
the reference's tie rule) and returns the grads of q and mem from (grad_weights, grad_read, q, mem,
weights) without re-running the reference.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F

from . import _dispatch
from ._checks import FLOAT_DTYPES, check_same_dtype, check_tensor
from ._eager import autograd_backward

EPS = 1e-12


def memory_scores_reference(q, mem):
    return F.normalize(q, dim=1, eps=EPS) @ F.normalize(mem, dim=1, eps=EPS).t()


def top2_from_scores(score):
    """Indices of the two largest scores per row, ties resolved to the lower index."""
    S = score.shape[1]
    if S == 1:
        return torch.zeros(score.shape[0], 2, dtype=torch.int64, device=score.device)
    return torch.sort(score, dim=1, descending=True, stable=True).indices[:, :2].contiguous()


def memory_address_reference(q, mem):
    score = memory_scores_reference(q, mem)
    weights = torch.softmax(score, dim=1)
    read = weights @ mem
    return weights, read, top2_from_scores(score.detach())


def _eager_fwd(q, mem):
    return memory_address_reference(q, mem)


def _eager_bwd(grad_weights, grad_read, q, mem, weights):
    return autograd_backward(memory_address_reference, (q, mem), (grad_weights, grad_read), (True, True))


_dispatch.register_kernel("memory_address", "eager", _eager_fwd, _eager_bwd)


@torch.library.custom_op("mgnet::memory_address", mutates_args=())
def _memory_address_op(q: torch.Tensor, mem: torch.Tensor, backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w, r, t = _dispatch.get_kernel("memory_address", backend).forward(q, mem)
    return w.contiguous(), r.contiguous(), t.contiguous()


@_memory_address_op.register_fake
def _(q, mem, backend):
    N, S = q.shape[0], mem.shape[0]
    return q.new_empty(N, S), q.new_empty(q.shape), q.new_empty(N, 2, dtype=torch.int64)


@torch.library.custom_op("mgnet::memory_address_backward", mutates_args=())
def _memory_address_bwd_op(grad_weights: torch.Tensor, grad_read: torch.Tensor, q: torch.Tensor,
                           mem: torch.Tensor, weights: torch.Tensor, backend: str) -> List[torch.Tensor]:
    gq, gm = _dispatch.get_kernel("memory_address", backend).backward(
        grad_weights.contiguous(), grad_read.contiguous(), q, mem, weights)
    return [gq.contiguous(), gm.contiguous()]


@_memory_address_bwd_op.register_fake
def _(grad_weights, grad_read, q, mem, weights, backend):
    return [torch.empty_like(q), torch.empty_like(mem)]


def _setup(ctx, inputs, output):
    q, mem, backend = inputs
    ctx.save_for_backward(q, mem, output[0])
    ctx.backend = backend


def _backward(ctx, grad_weights, grad_read, grad_top2):
    q, mem, weights = ctx.saved_tensors
    if grad_weights is None:
        grad_weights = torch.zeros_like(weights)
    if grad_read is None:
        grad_read = torch.zeros_like(q)
    gq, gm = _memory_address_bwd_op(grad_weights, grad_read, q, mem, weights, ctx.backend)
    return gq, gm, None


_memory_address_op.register_autograd(_backward, setup_context=_setup)


def memory_address(q, mem):
    """Cosine addressing of `mem` (S, C) by queries `q` (N, C): (weights, read, top2)."""
    check_tensor("q", q, ndim=2, dtypes=FLOAT_DTYPES, shape_doc="(N, C) queries")
    check_tensor("mem", mem, ndim=2, dtypes=FLOAT_DTYPES, device=q.device, shape_doc="(S, C) memory slots")
    if mem.shape[1] != q.shape[1]:
        raise ValueError(f"mem must have shape (S, {q.shape[1]}) to match q's width C={q.shape[1]}, "
                         f"got {tuple(mem.shape)}")
    if mem.shape[0] < 1:
        raise ValueError("mem must have at least one slot (S >= 1)")
    check_same_dtype("q", q, mem=mem)
    be = _dispatch.resolve("memory_address", q.device)
    return _memory_address_op(q.contiguous(), mem.contiguous(), be)
