"""Triton kernels of lka3d and lsta (mgnet/ops/lka3d.py holds the contract and the reference).

Loop trip counts are constexpr (blocks per volume, channel blocks, channels): the interpreter of
this Triton (with NumPy 2) cannot iterate to a runtime scalar bound, and a model runs fixed shapes.

Forward of lka3d:
  _dw_pair_kernel    one program per (batch, channel) volume: the k0^3 depthwise conv into a1, then
                     (after a barrier) the dilated k1^3 depthwise conv of a1 into a2. a1 goes to a
                     per-program fp32 scratch slab that stays in L2 (the same volume is re-read at
                     once by the same program); nothing else touches it.
  _pointwise_kernel  out = wp @ a2 + bp as a blocked tl.dot GEMM (fp32 accumulation, ieee precision),
                     bias in the epilogue.
Backward of lka3d (Triton kernels plus torch glue for the small reductions):
  a1/a2 recomputed by _dw_pair_kernel; G2 = wp^T g by _pointwise_kernel (transposed strides);
  g_a1 = transposed dilated conv of G2 and g_x = transposed conv of g_a1 by _dwconv_kernel (flipped
  taps); g_w1 / g_w0 by _corr_kernel (one program per (batch, channel, tap), partials per batch);
  torch glue: g_wp = sum_b g_b a2_b^T (einsum), the bias sums and the sum of the per-batch weight
  partials.
lsta: _mean_kernel (one read of e: the channel mean, and in the backward sum_c g*e in the same read),
lka3d on the 1-channel volume, _gate_kernel (one read + one write of e; backward: one read of g, one
write of g_e).

All arithmetic accumulates in fp32; inputs may be fp16 / bf16 / fp32 (fp64 is computed in fp32).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 256


@triton.jit
def _dw_block(src, w_base, bias, offs, mask, D, H, W, DIL, K: tl.constexpr, FLIP: tl.constexpr,
              TB: tl.constexpr):
    """acc[offs] = bias + sum_taps w[tap] * src[pos + (tap - (K-1)/2) * DIL] (zeros outside).
    Taps go TB at a time as a (TB, BLOCK) gather reduced over the tap axis."""
    HW = H * W
    z = offs // HW
    rem = offs % HW
    y = rem // W
    x = rem % W
    P = DIL * (K - 1) // 2
    KK: tl.constexpr = K * K * K
    acc = tl.zeros(offs.shape, dtype=tl.float32) + bias
    for t0 in range(0, KK, TB):
        tap = t0 + tl.arange(0, TB)
        mt = tap < KK
        iz = z[None, :] + ((tap // (K * K)) * DIL - P)[:, None]
        iy = y[None, :] + (((tap // K) % K) * DIL - P)[:, None]
        ix = x[None, :] + ((tap % K) * DIL - P)[:, None]
        m = (mt[:, None] & mask[None, :] & (iz >= 0) & (iz < D) & (iy >= 0) & (iy < H)
             & (ix >= 0) & (ix < W))
        if FLIP:
            wv = tl.load(w_base + (KK - 1 - tap), mask=mt, other=0.0).to(tl.float32)
        else:
            wv = tl.load(w_base + tap, mask=mt, other=0.0).to(tl.float32)
        v = tl.load(src + iz * HW + iy * W + ix, mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(wv[:, None] * v, axis=0)
    return acc


@triton.jit
def _dw_pair_kernel(x_ptr, w0_ptr, b0_ptr, w1_ptr, b1_ptr, a1_ptr, a2_ptr, C, D, H, W, DIL,
                    K0: tl.constexpr, K1: tl.constexpr, BLOCK_N: tl.constexpr, N_BLOCKS: tl.constexpr,
                    TB: tl.constexpr):
    pid = tl.program_id(0)                    # b * C + c
    c = pid % C
    N = D * H * W
    base = pid.to(tl.int64) * N
    b0 = tl.load(b0_ptr + c).to(tl.float32)
    b1 = tl.load(b1_ptr + c).to(tl.float32)
    for nb in range(N_BLOCKS):
        offs = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = offs < N
        a = _dw_block(x_ptr + base, w0_ptr + c * K0 * K0 * K0, b0, offs, mask, D, H, W, 1, K0, False, TB)
        tl.store(a1_ptr + base + offs, a, mask=mask)
    tl.debug_barrier()                        # a1 of this volume complete before the dilated conv
    for nb in range(N_BLOCKS):
        offs = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = offs < N
        a = _dw_block(a1_ptr + base, w1_ptr + c * K1 * K1 * K1, b1, offs, mask, D, H, W, DIL, K1, False, TB)
        tl.store(a2_ptr + base + offs, a, mask=mask)


@triton.jit
def _dwconv_kernel(src_ptr, w_ptr, out_ptr, C, D, H, W, DIL, K: tl.constexpr, FLIP: tl.constexpr,
                   BLOCK_N: tl.constexpr, TB: tl.constexpr):
    pid = tl.program_id(0)
    c = pid % C
    N = D * H * W
    base = pid.to(tl.int64) * N
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    a = _dw_block(src_ptr + base, w_ptr + c * K * K * K, 0.0, offs, mask, D, H, W, DIL, K, FLIP, TB)
    tl.store(out_ptr + base + offs, a, mask=mask)


@triton.jit
def _corr_kernel(g_ptr, in_ptr, out_ptr, D, H, W, DIL, K: tl.constexpr, BLOCK_N: tl.constexpr,
                 TB: tl.constexpr):
    """out[pid, nblk, tap] = sum_{pos in block} g[pos] * in[pos + (tap - (K-1)/2) * DIL]."""
    pid = tl.program_id(0)                    # b * C + c
    nblk = tl.program_id(1)
    N = D * H * W
    HW = H * W
    P = DIL * (K - 1) // 2
    KK: tl.constexpr = K * K * K
    base = pid.to(tl.int64) * N
    offs = nblk * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < N
    z = offs // HW
    rem = offs % HW
    y = rem // W
    x = rem % W
    gv = tl.load(g_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    obase = (pid.to(tl.int64) * tl.num_programs(1) + nblk) * KK
    for t0 in range(0, KK, TB):
        tap = t0 + tl.arange(0, TB)
        mt = tap < KK
        iz = z[None, :] + ((tap // (K * K)) * DIL - P)[:, None]
        iy = y[None, :] + (((tap // K) % K) * DIL - P)[:, None]
        ix = x[None, :] + ((tap % K) * DIL - P)[:, None]
        m = (mt[:, None] & mask[None, :] & (iz >= 0) & (iz < D) & (iy >= 0) & (iy < H)
             & (ix >= 0) & (ix < W))
        v = tl.load(in_ptr + base + iz * HW + iy * W + ix, mask=m, other=0.0).to(tl.float32)
        tl.store(out_ptr + obase + tap, tl.sum(gv[None, :] * v, axis=1), mask=mt)


@triton.jit
def _pointwise_kernel(a_ptr, w_ptr, b_ptr, out_ptr, C, N, sw_o, sw_i, HAS_BIAS: tl.constexpr,
                      BCO: tl.constexpr, BCI: tl.constexpr, BN: tl.constexpr, NCI: tl.constexpr):
    """out[b, co, n] = sum_ci w[co, ci] a[b, ci, n] (+ bias[co]); w element (co, ci) at co*sw_o + ci*sw_i."""
    pid_n = tl.program_id(0)
    pid_co = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    co = pid_co * BCO + tl.arange(0, BCO)
    n = pid_n * BN + tl.arange(0, BN)
    mco = co < C
    mn = n < N
    acc = tl.zeros((BCO, BN), dtype=tl.float32)
    for cb in range(NCI):
        ci = cb * BCI + tl.arange(0, BCI)
        mci = ci < C
        w = tl.load(w_ptr + co[:, None] * sw_o + ci[None, :] * sw_i, mask=mco[:, None] & mci[None, :], other=0.0)
        a = tl.load(a_ptr + b * C * N + ci[:, None] * N + n[None, :], mask=mci[:, None] & mn[None, :], other=0.0)
        acc += tl.dot(w.to(tl.float32), a.to(tl.float32), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=mco, other=0.0).to(tl.float32)[:, None]
    tl.store(out_ptr + b * C * N + co[:, None] * N + n[None, :], acc, mask=mco[:, None] & mn[None, :])


@triton.jit
def _mean_kernel(e_ptr, g_ptr, f_ptr, ge_ptr, c: tl.constexpr, P, WITH_GRAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """f[bz, i] = mean_c e[bz, c, i]; with WITH_GRAD also ge[bz, i] = sum_c g*e (one read of e and g)."""
    bz = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < P
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for ci in range(c):
        ev = tl.load(e_ptr + (bz * c + ci) * P + offs, mask=mask, other=0.0).to(tl.float32)
        acc += ev
        if WITH_GRAD:
            gv = tl.load(g_ptr + (bz * c + ci) * P + offs, mask=mask, other=0.0).to(tl.float32)
            acc2 += gv * ev
    tl.store(f_ptr + bz * P + offs, acc / c, mask=mask)
    if WITH_GRAD:
        tl.store(ge_ptr + bz * P + offs, acc2, mask=mask)


@triton.jit
def _gate_kernel(src_ptr, fo_ptr, gf_ptr, out_ptr, c: tl.constexpr, P, BACKWARD: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """forward: out = e * (1 + sigmoid(fo)); backward: out = g * (1 + sigmoid(fo)) + gf / c."""
    bz = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < P
    fo = tl.load(fo_ptr + bz * P + offs, mask=mask, other=0.0).to(tl.float32)
    s1 = 1.0 + tl.sigmoid(fo)
    add = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if BACKWARD:
        add = tl.load(gf_ptr + bz * P + offs, mask=mask, other=0.0).to(tl.float32) / c
    for ci in range(c):
        v = tl.load(src_ptr + (bz * c + ci) * P + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + (bz * c + ci) * P + offs, v * s1 + add, mask=mask)


# ------------------------------------------------------------------ launchers
def _block_n(n):
    return min(BLOCK, max(16, triton.next_power_of_2(n)))


def _tb(t):
    """Taps per (taps, positions) gather: wide under the interpreter (fewer NumPy calls), narrow on
    a GPU (register pressure)."""
    return 64 if t.device.type == "cpu" else 16


def _pair(x, w0, b0, w1, b1, dilation):
    B, C = x.shape[:2]
    D, H, W = x.shape[2:]
    a1 = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    a2 = torch.empty_like(a1)
    if x.numel():
        bn = _block_n(D * H * W)
        _dw_pair_kernel[(B * C,)](x, w0, b0, w1, b1, a1, a2, C, D, H, W, dilation,
                                  K0=w0.shape[-1], K1=w1.shape[-1], BLOCK_N=bn, N_BLOCKS=triton.cdiv(D * H * W, bn),
                                  TB=_tb(x))
    return a1, a2


def _pointwise(a, w, bias, out_dtype, transpose=False):
    B, C = a.shape[:2]
    N = a[0, 0].numel()
    out = torch.empty(a.shape, device=a.device, dtype=out_dtype)
    if a.numel() == 0:
        return out
    w2 = w.reshape(C, C)
    sw_o, sw_i = (w2.stride(1), w2.stride(0)) if transpose else (w2.stride(0), w2.stride(1))
    bco = 16 if C <= 16 else 32
    bn = 64
    grid = (triton.cdiv(N, bn), triton.cdiv(C, bco), B)
    _pointwise_kernel[grid](a, w2, bias if bias is not None else w2, out, C, N, sw_o, sw_i,
                            HAS_BIAS=bias is not None, BCO=bco, BCI=16, BN=bn, NCI=triton.cdiv(C, 16))
    return out


def _dwconv_t(src, w, dilation):
    """Transposed depthwise conv (= conv with the flipped kernel, same padding), fp32 out."""
    B, C, D, H, W = src.shape
    out = torch.empty(src.shape, device=src.device, dtype=torch.float32)
    N = D * H * W
    if src.numel():
        bn = _block_n(N)
        _dwconv_kernel[(B * C, triton.cdiv(N, bn))](src, w, out, C, D, H, W, dilation,
                                                    K=w.shape[-1], FLIP=True, BLOCK_N=bn, TB=_tb(src))
    return out


def _corr(g, inp, k, dilation):
    """Per-(batch, channel) weight-gradient partials (B, C, k^3), fp32."""
    B, C, D, H, W = g.shape
    bn = _block_n(D * H * W)
    nblk = triton.cdiv(D * H * W, bn)
    out = torch.zeros(B, C, max(nblk, 1), k ** 3, device=g.device, dtype=torch.float32)
    if g.numel():
        _corr_kernel[(B * C, nblk)](g, inp, out, D, H, W, dilation, K=k, BLOCK_N=bn, TB=_tb(g))
    return out.sum(2)


def _prep(*ts):
    """fp64 runs in fp32 (Triton's fp64 is slow or absent); everything contiguous."""
    return [t.float().contiguous() if t.dtype == torch.float64 else t.contiguous() for t in ts]


def lka3d_forward(x, w0, b0, w1, b1, wp, bp, dilation):
    dt = x.dtype
    x, w0, b0, w1, b1, wp, bp = _prep(x, w0, b0, w1, b1, wp, bp)
    _, a2 = _pair(x, w0, b0, w1, b1, dilation)
    return _pointwise(a2, wp, bp, x.dtype).to(dt)


def _lka3d_grads(grad, x, w0, b0, w1, b1, wp, bp, dilation):
    """All seven gradients in fp32 (x's grad first); inputs already prepared."""
    k0, k1 = w0.shape[-1], w1.shape[-1]
    C = x.shape[1]
    a1, a2 = _pair(x, w0, b0, w1, b1, dilation)
    g = grad.float()
    g_wp = torch.einsum("bon,bin->oi", g.flatten(2), a2.flatten(2)).reshape(C, C, 1, 1, 1)
    g_bp = g.sum(dim=(0, 2, 3, 4))
    g2 = _pointwise(grad, wp, None, torch.float32, transpose=True)
    g_b1 = g2.sum(dim=(0, 2, 3, 4))
    g_w1 = _corr(g2, a1, k1, dilation).sum(0).reshape(C, 1, k1, k1, k1)
    g1 = _dwconv_t(g2, w1, dilation)
    g_b0 = g1.sum(dim=(0, 2, 3, 4))
    g_w0 = _corr(g1, x, k0, 1).sum(0).reshape(C, 1, k0, k0, k0)
    g_x = _dwconv_t(g1, w0, 1)
    return [g_x, g_w0, g_b0, g_w1, g_b1, g_wp, g_bp]


def lka3d_backward(grad, x, w0, b0, w1, b1, wp, bp, dilation):
    dts = [t.dtype for t in (x, w0, b0, w1, b1, wp, bp)]
    grad, x, w0, b0, w1, b1, wp, bp = _prep(grad, x, w0, b0, w1, b1, wp, bp)
    gs = _lka3d_grads(grad, x, w0, b0, w1, b1, wp, bp, dilation)
    return [gr.to(d) for gr, d in zip(gs, dts)]


def _mean(e, g=None):
    B, t, c, h, w = e.shape
    P = h * w
    f = torch.empty(B, 1, t, h, w, device=e.device, dtype=torch.float32)
    ge = torch.empty_like(f) if g is not None else f
    if e.numel():
        bn = _block_n(P)
        _mean_kernel[(B * t, triton.cdiv(P, bn))](e, g if g is not None else e, f, ge, c, P,
                                                   WITH_GRAD=g is not None, BLOCK_N=bn)
    return f, ge


def _gate(src, fo, gf, out_dtype):
    B, t, c, h, w = src.shape
    P = h * w
    out = torch.empty(src.shape, device=src.device, dtype=out_dtype)
    if src.numel():
        bn = _block_n(P)
        _gate_kernel[(B * t, triton.cdiv(P, bn))](src, fo, gf if gf is not None else fo, out, c, P,
                                                   BACKWARD=gf is not None, BLOCK_N=bn)
    return out


def lsta_forward(e, w0, b0, w1, b1, wp, bp, dilation):
    dt = e.dtype
    e, w0, b0, w1, b1, wp, bp = _prep(e, w0, b0, w1, b1, wp, bp)
    f, _ = _mean(e)
    _, a2 = _pair(f, w0, b0, w1, b1, dilation)
    fo = _pointwise(a2, wp, bp, torch.float32)
    return _gate(e, fo, None, e.dtype).to(dt)


def lsta_backward(grad, e, w0, b0, w1, b1, wp, bp, dilation):
    dts = [t.dtype for t in (e, w0, b0, w1, b1, wp, bp)]
    grad, e, w0, b0, w1, b1, wp, bp = _prep(grad, e, w0, b0, w1, b1, wp, bp)
    f, ge = _mean(e, grad)
    _, a2 = _pair(f, w0, b0, w1, b1, dilation)
    fo = _pointwise(a2, wp, bp, torch.float32)
    s = torch.sigmoid(fo)
    g_fo = ge * s * (1 - s)                       # small (B, 1, t, h, w) volume: torch glue
    gs = _lka3d_grads(g_fo, f, w0.float(), b0.float(), w1.float(), b1.float(), wp.float(), bp.float(), dilation)
    g_e = _gate(grad, fo, gs[0], e.dtype)
    return [g_e.to(dts[0])] + [gr.to(d) for gr, d in zip(gs[1:], dts[1:])]
