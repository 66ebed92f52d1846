"""Triton kernels of mgnet.ops.memory_address (cosine addressing, softmax, read, top-2).

Forward
  _rows_fwd     one program per block of queries: q . mem over width chunks (tl.dot, fp32 "ieee"),
                query norms on the way, cosine scores, softmax over all slots (the whole row is held),
                top-2 by two tie-to-lower-index argmaxes; writes weights and top2.
  _combine      read = weights @ mem, one program per (query block, width block), loop over slots.
Backward
  _rows_bwd     one program per block of queries: grad_read . mem and q . mem in one sweep, softmax
                gradient gs, b = gs / (|q| |m|), beta (grad_q's q term) and gs * score per slot.
  _combine      grad_q = b @ mem + beta * q.
  _gmem         grad_mem partials W.T @ grad_read + b.T @ q over splits of the queries.
Torch glue (small reductions, O(S*C) or O(N*S)): the slot norms, the per-slot sum of gs * score
(gamma), and the sum of the grad_mem partials minus gamma * mem.

S and C are compile-time constants (a memory's shape is fixed for a model; the interpreter's
range() also needs constant bounds); N is a runtime argument.

All arithmetic is in float32 (inputs are upcast on load; tl.dot with input_precision="ieee", so no
TF32); outputs are stored in the input dtype. float64 inputs are computed in float32 too.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

EPS = 1e-12


@triton.jit
def _rows_fwd(q_ptr, m_ptr, inv_mn_ptr, w_ptr, top2_ptr, N, S: tl.constexpr, C: tl.constexpr, eps,
              BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rs = tl.arange(0, BLOCK_S)
    nmask = rn < N
    smask = rs < S
    acc = tl.zeros((BLOCK_N, BLOCK_S), dtype=tl.float32)
    qsq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        cmask = rc < C
        qt = tl.load(q_ptr + rn[:, None] * C + rc[None, :], mask=nmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        mt = tl.load(m_ptr + rs[None, :] * C + rc[:, None], mask=smask[None, :] & cmask[:, None], other=0.0).to(tl.float32)
        acc += tl.dot(qt, mt, input_precision="ieee")
        qsq += tl.sum(qt * qt, axis=1)
    inv_qn = 1.0 / tl.maximum(tl.sqrt(qsq), eps)
    inv_mn = tl.load(inv_mn_ptr + rs, mask=smask, other=0.0)
    score = acc * inv_qn[:, None] * inv_mn[None, :]
    score = tl.where(smask[None, :], score, float("-inf"))
    mx = tl.max(score, axis=1)
    e = tl.where(smask[None, :], tl.exp(score - mx[:, None]), 0.0)
    w = e / tl.sum(e, axis=1)[:, None]
    wmask = nmask[:, None] & smask[None, :]
    tl.store(w_ptr + rn[:, None] * S + rs[None, :], w.to(w_ptr.dtype.element_ty), mask=wmask)
    i1 = tl.argmax(score, axis=1, tie_break_left=True)
    rest = tl.where(rs[None, :] == i1[:, None], float("-inf"), score)
    i2 = tl.argmax(rest, axis=1, tie_break_left=True)
    if S == 1:  # a single slot: both columns are 0
        i2 = i2 * 0
    tl.store(top2_ptr + rn * 2, i1.to(tl.int64), mask=nmask)
    tl.store(top2_ptr + rn * 2 + 1, i2.to(tl.int64), mask=nmask)


@triton.jit
def _combine(a_ptr, m_ptr, x_ptr, beta_ptr, out_ptr, N, S: tl.constexpr, C: tl.constexpr, HAS_X: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[n, c] = sum_s a[n, s] mem[s, c] (+ beta[n] x[n, c])."""
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    nmask = rn < N
    cmask = rc < C
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        rs = s0 + tl.arange(0, BLOCK_S)
        smask = rs < S
        a = tl.load(a_ptr + rn[:, None] * S + rs[None, :], mask=nmask[:, None] & smask[None, :], other=0.0).to(tl.float32)
        m = tl.load(m_ptr + rs[:, None] * C + rc[None, :], mask=smask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        acc += tl.dot(a, m, input_precision="ieee")
    omask = nmask[:, None] & cmask[None, :]
    if HAS_X:
        beta = tl.load(beta_ptr + rn, mask=nmask, other=0.0)
        x = tl.load(x_ptr + rn[:, None] * C + rc[None, :], mask=omask, other=0.0).to(tl.float32)
        acc += beta[:, None] * x
    tl.store(out_ptr + rn[:, None] * C + rc[None, :], acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _rows_bwd(gw_ptr, gr_ptr, q_ptr, m_ptr, w_ptr, inv_mn_ptr, b_ptr, beta_ptr, gsc_ptr, N, S: tl.constexpr,
              C: tl.constexpr, eps,
              BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rs = tl.arange(0, BLOCK_S)
    nmask = rn < N
    smask = rs < S
    accq = tl.zeros((BLOCK_N, BLOCK_S), dtype=tl.float32)
    accg = tl.zeros((BLOCK_N, BLOCK_S), dtype=tl.float32)
    qsq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        cmask = rc < C
        xm = nmask[:, None] & cmask[None, :]
        qt = tl.load(q_ptr + rn[:, None] * C + rc[None, :], mask=xm, other=0.0).to(tl.float32)
        gt = tl.load(gr_ptr + rn[:, None] * C + rc[None, :], mask=xm, other=0.0).to(tl.float32)
        mt = tl.load(m_ptr + rs[None, :] * C + rc[:, None], mask=smask[None, :] & cmask[:, None], other=0.0).to(tl.float32)
        accq += tl.dot(qt, mt, input_precision="ieee")
        accg += tl.dot(gt, mt, input_precision="ieee")
        qsq += tl.sum(qt * qt, axis=1)
    qraw = tl.sqrt(qsq)
    inv_qn = 1.0 / tl.maximum(qraw, eps)
    inv_mn = tl.load(inv_mn_ptr + rs, mask=smask, other=0.0)
    wm = nmask[:, None] & smask[None, :]
    offs = rn[:, None] * S + rs[None, :]
    w = tl.load(w_ptr + offs, mask=wm, other=0.0).to(tl.float32)
    g = accg + tl.load(gw_ptr + offs, mask=wm, other=0.0).to(tl.float32)
    wg = tl.sum(w * g, axis=1)
    gs = w * (g - wg[:, None])
    score = accq * inv_qn[:, None] * inv_mn[None, :]
    gsc = gs * score
    beta = tl.where(qraw >= eps, -tl.sum(gsc, axis=1) * inv_qn * inv_qn, 0.0)
    b = gs * inv_qn[:, None] * inv_mn[None, :]
    tl.store(b_ptr + offs, b, mask=wm)
    tl.store(gsc_ptr + offs, gsc, mask=wm)
    tl.store(beta_ptr + rn, beta, mask=nmask)


@triton.jit
def _gmem(w_ptr, b_ptr, gr_ptr, q_ptr, part_ptr, N, S: tl.constexpr, C: tl.constexpr, n_per_split,
          BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """part[k, s, c] = sum over queries n of split k of W[n, s] gr[n, c] + b[n, s] q[n, c]."""
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_k = tl.program_id(2)
    rs = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    rc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    smask = rs < S
    cmask = rc < C
    acc = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    n_lo = pid_k * n_per_split
    n_hi = tl.minimum(n_lo + n_per_split, N)
    n0 = n_lo
    while n0 < n_hi:  # a runtime trip count: a while loop (the interpreter's range() needs constants)
        rn = n0 + tl.arange(0, BLOCK_N)
        nmask = rn < n_hi
        am = nmask[:, None] & smask[None, :]
        xm = nmask[:, None] & cmask[None, :]
        wt = tl.load(w_ptr + rn[:, None] * S + rs[None, :], mask=am, other=0.0).to(tl.float32)
        bt = tl.load(b_ptr + rn[:, None] * S + rs[None, :], mask=am, other=0.0)
        gt = tl.load(gr_ptr + rn[:, None] * C + rc[None, :], mask=xm, other=0.0).to(tl.float32)
        qt = tl.load(q_ptr + rn[:, None] * C + rc[None, :], mask=xm, other=0.0).to(tl.float32)
        acc += tl.dot(tl.trans(wt), gt, input_precision="ieee")
        acc += tl.dot(tl.trans(bt), qt, input_precision="ieee")
        n0 += BLOCK_N
    tl.store(part_ptr + pid_k * S * C + rs[:, None] * C + rc[None, :], acc, mask=smask[:, None] & cmask[None, :])


def _blocks(device):
    # the interpreter (CPU) runs every program in Python: few, small programs
    if device.type == "cuda":
        return 32, 64
    return 16, 32


def _full_row(S):
    return max(16, triton.next_power_of_2(S))


def _slot_norms(mem):
    raw = mem.float().norm(dim=1)
    return raw, 1.0 / raw.clamp_min(EPS)


def forward(q, mem):
    N, C = q.shape
    S = mem.shape[0]
    q, mem = q.contiguous(), mem.contiguous()
    BN, BC = _blocks(q.device)
    _, inv_mn = _slot_norms(mem)
    w = torch.empty(N, S, device=q.device, dtype=q.dtype)
    read = torch.empty_like(q)
    top2 = torch.empty(N, 2, device=q.device, dtype=torch.int64)
    if N == 0:
        return w, read, top2
    BS = _full_row(S)
    _rows_fwd[(triton.cdiv(N, BN),)](q, mem, inv_mn, w, top2, N, S, C, EPS, BLOCK_N=BN, BLOCK_S=BS, BLOCK_C=BC)
    if C > 0:
        _combine[(triton.cdiv(N, BN), triton.cdiv(C, BC))](w, mem, q, inv_mn, read, N, S, C, HAS_X=False,
                                                          BLOCK_N=BN, BLOCK_S=min(BS, 64), BLOCK_C=BC)
    return w, read, top2


def backward(grad_weights, grad_read, q, mem, weights):
    N, C = q.shape
    S = mem.shape[0]
    q, mem = q.contiguous(), mem.contiguous()
    grad_weights, grad_read, weights = grad_weights.contiguous(), grad_read.contiguous(), weights.contiguous()
    BN, BC = _blocks(q.device)
    mraw, inv_mn = _slot_norms(mem)
    gq = torch.empty_like(q)
    if N == 0 or C == 0:
        return gq.zero_(), torch.zeros_like(mem)
    dev = q.device
    b = torch.empty(N, S, device=dev, dtype=torch.float32)
    gsc = torch.empty(N, S, device=dev, dtype=torch.float32)
    beta = torch.empty(N, device=dev, dtype=torch.float32)
    BS = _full_row(S)
    _rows_bwd[(triton.cdiv(N, BN),)](grad_weights, grad_read, q, mem, weights, inv_mn, b, beta, gsc, N, S, C, EPS,
                                     BLOCK_N=BN, BLOCK_S=BS, BLOCK_C=BC)
    _combine[(triton.cdiv(N, BN), triton.cdiv(C, BC))](b, mem, q, beta, gq, N, S, C, HAS_X=True,
                                                      BLOCK_N=BN, BLOCK_S=min(BS, 64), BLOCK_C=BC)
    BSg = min(BS, 64)
    tiles_n = triton.cdiv(N, BN)
    splits = max(1, min(tiles_n, 64 if dev.type == "cuda" else 2))
    n_per_split = triton.cdiv(tiles_n, splits) * BN
    splits = triton.cdiv(N, n_per_split)
    part = torch.empty(splits, S, C, device=dev, dtype=torch.float32)
    _gmem[(triton.cdiv(S, BSg), triton.cdiv(C, BC), splits)](weights, b, grad_read, q, part, N, S, C, n_per_split,
                                                             BLOCK_N=BN, BLOCK_S=BSg, BLOCK_C=BC)
    gamma = torch.where(mraw >= EPS, gsc.sum(0) * inv_mn * inv_mn, torch.zeros_like(mraw))
    gm = part.sum(0) - gamma[:, None] * mem.float()
    return gq, gm.to(mem.dtype)
