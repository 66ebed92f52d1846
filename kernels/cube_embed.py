"""Triton kernels of masked_cube_embed (mgnet.ops.cube_embed holds the definition).

forward: one program per (BLOCK_M visible cubes, BLOCK_N output channels). The A operand of the
    tl.dot is gathered straight from the frames (uint8 or float), normalised in registers with the
    per-channel affine (x * scale[c] + shift[c]), and multiplied with the weight tile; bias and
    pos[visible] are added in the epilogue. fp16/bf16 weights run the dot on tensor cores with fp32
    accumulation; fp32 uses IEEE fp32 (no TF32) so results match the reference; fp64 accumulates in fp64.
backward: grad_weight is a Triton kernel too (split over rows: each program sums
    G_chunk^T @ A_chunk for a (BLOCK_N x BLOCK_K) tile of grad_weight, re-gathering the patches; the
    per-split partials are summed by torch). grad_bias (column sums of grad) and grad_pos (index_add of
    grad rows by cube index) are torch glue: plain reductions that torch already does at bandwidth.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

K = 384


@triton.jit
def _patch_block(frames_ptr, scale_ptr, shift_ptr, base, row_mask, k0, T, H, W,
                 BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """(BLOCK_M, BLOCK_K) block of normalised patch values for columns k0 .. k0 + BLOCK_K."""
    rk = k0 + tl.arange(0, BLOCK_K)
    c = rk // 128
    dt = (rk // 64) % 2
    dy = (rk // 8) % 8
    dx = rk % 8
    HW = H * W
    koff = c.to(tl.int64) * T * HW + dt * HW + dy * W + dx
    x = tl.load(frames_ptr + base[:, None] + koff[None, :], mask=row_mask[:, None], other=0).to(ACC)
    sc = tl.load(scale_ptr + c).to(ACC)
    sh = tl.load(shift_ptr + c).to(ACC)
    return x * sc[None, :] + sh[None, :]


@triton.jit
def _row_base(vis_ptr, rm, N, Pv, T, H, W, hgrid, wgrid):
    row_mask = rm < N
    p = tl.load(vis_ptr + rm, mask=row_mask, other=0)
    b = (rm // Pv).to(tl.int64)
    wi = p % wgrid
    hi = (p // wgrid) % hgrid
    ti = p // (wgrid * hgrid)
    base = b * 3 * T * H * W + 2 * ti * H * W + 8 * hi * W + 8 * wi
    return p, base, row_mask


@triton.jit
def _fwd_kernel(frames_ptr, vis_ptr, w_ptr, bias_ptr, pos_ptr, out_ptr, scale_ptr, shift_ptr,
                N, Pv, D, T, H, W, hgrid, wgrid,
                HAS_POS: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < D
    p, base, row_mask = _row_base(vis_ptr, rm, N, Pv, T, H, W, hgrid, wgrid)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, 384, BLOCK_K):
        x = _patch_block(frames_ptr, scale_ptr, shift_ptr, base, row_mask, k0, T, H, W, BLOCK_K, ACC)
        rk = k0 + tl.arange(0, BLOCK_K)
        wt = tl.load(w_ptr + rn[None, :] * 384 + rk[:, None], mask=n_mask[None, :], other=0)
        acc += tl.dot(x.to(DOT), wt.to(DOT), input_precision=PREC, out_dtype=ACC)
    acc += tl.load(bias_ptr + rn, mask=n_mask, other=0).to(ACC)[None, :]
    mask2 = row_mask[:, None] & n_mask[None, :]
    if HAS_POS:
        acc += tl.load(pos_ptr + p[:, None] * D + rn[None, :], mask=mask2, other=0).to(ACC)
    tl.store(out_ptr + rm[:, None].to(tl.int64) * D + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask2)


@triton.jit
def _gw_kernel(frames_ptr, vis_ptr, grad_ptr, part_ptr, scale_ptr, shift_ptr,
               N, Pv, D, T, H, W, hgrid, wgrid, ROWS_PER_SPLIT: tl.constexpr,
               ACC: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """part[s, n, k] = sum over rows r of split s of grad[r, n] * A[r, k]."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < D
    k0 = pid_k * BLOCK_K
    rk = k0 + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    r_start = pid_s * ROWS_PER_SPLIT  # splits are disjoint multiples of BLOCK_M rows
    for m0 in range(0, ROWS_PER_SPLIT, BLOCK_M):
        rm = r_start + m0 + tl.arange(0, BLOCK_M)
        p, base, row_mask = _row_base(vis_ptr, rm, N, Pv, T, H, W, hgrid, wgrid)
        x = _patch_block(frames_ptr, scale_ptr, shift_ptr, base, row_mask, k0, T, H, W, BLOCK_K, ACC)
        g = tl.load(grad_ptr + rm[:, None].to(tl.int64) * D + rn[None, :],
                    mask=row_mask[:, None] & n_mask[None, :], other=0)
        acc += tl.dot(tl.trans(g.to(DOT)), x.to(DOT), input_precision=PREC, out_dtype=ACC)
    tl.store(part_ptr + pid_s.to(tl.int64) * D * 384 + rn[:, None] * 384 + rk[None, :], acc,
             mask=n_mask[:, None])


_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
       torch.float64: tl.float64}


def _types(dtype, device):
    """(accumulator, dot operand dtype, input precision) for a weight dtype. The interpreter
    (CPU tensors) computes bf16 tl.dot wrongly (numpy has no bf16), so there bf16 operands are
    upcast to fp32 (exact: bf16 values are fp32 values); on GPUs bf16 uses tensor cores."""
    if dtype == torch.float64:
        return tl.float64, tl.float64, None
    if dtype == torch.float32 or (dtype == torch.bfloat16 and device.type == "cpu"):
        return tl.float32, tl.float32, "ieee"  # no TF32: match the fp32 reference
    return tl.float32, _TL[dtype], None


def _affine(frames, mean, std, dtype):
    """Per-channel scale/shift with x_norm = x * scale + shift (uint8 -> /255, then (x - mean)/std)."""
    dev = frames.device
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    m = mean.to(torch.float64) if mean is not None else torch.zeros(3, dtype=torch.float64, device=dev)
    s = std.to(torch.float64) if std is not None else torch.ones(3, dtype=torch.float64, device=dev)
    a = (1.0 / 255.0 if frames.dtype == torch.uint8 else 1.0) / s
    return a.to(acc).contiguous(), (-m / s).to(acc).contiguous()


def _geometry(frames, visible):
    B, _, T, H, W = frames.shape
    return B, T, H, W, H // 8, W // 8, visible.shape[1], B * visible.shape[1]


def _blocks(D, dtype):
    bn = 64 if D >= 64 else max(16, triton.next_power_of_2(D))
    return 64, bn, 64  # BLOCK_M, BLOCK_N, BLOCK_K (384 % BLOCK_K == 0)


def forward(frames, visible, weight, bias, pos, mean, std):
    frames, visible = frames.contiguous(), visible.contiguous()
    B, T, H, W, hg, wg, Pv, N = _geometry(frames, visible)
    D = weight.shape[0]
    out = torch.empty(B, Pv, D, dtype=weight.dtype, device=weight.device)
    if N == 0:
        return out
    scale, shift = _affine(frames, mean, std, weight.dtype)
    ACC, DOT, PREC = _types(weight.dtype, weight.device)
    BM, BN, BK = _blocks(D, weight.dtype)
    w2d = weight.reshape(D, K).contiguous()
    grid = (triton.cdiv(N, BM), triton.cdiv(D, BN))
    _fwd_kernel[grid](frames, visible, w2d, bias.contiguous(), pos.contiguous() if pos is not None else w2d,
                      out, scale, shift, N, Pv, D, T, H, W, hg, wg,
                      HAS_POS=pos is not None, ACC=ACC, DOT=DOT, PREC=PREC,
                      BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)
    return out


def backward(grad, frames, visible, weight, bias, pos, mean, std):
    frames, visible, grad = frames.contiguous(), visible.contiguous(), grad.contiguous()
    B, T, H, W, hg, wg, Pv, N = _geometry(frames, visible)
    D = weight.shape[0]
    acc_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    g2 = grad.reshape(N, D)
    gb = g2.to(acc_dtype).sum(0).to(weight.dtype)
    gp = None
    if pos is not None:
        gp = torch.zeros(pos.shape, dtype=acc_dtype, device=pos.device)
        gp.index_add_(0, visible.reshape(-1), g2.to(acc_dtype))
        gp = gp.to(pos.dtype)
    if N == 0:
        return torch.zeros_like(weight), gb, gp
    scale, shift = _affine(frames, mean, std, weight.dtype)
    ACC, DOT, PREC = _types(weight.dtype, weight.device)
    BM, BN, BK = _blocks(D, weight.dtype)
    # split the rows so that the grid fills the device (interpreter: one split is fastest)
    tiles_nk = triton.cdiv(D, BN) * (K // BK)
    want = 1 if frames.device.type == "cpu" else max(1, 4 * 132 // tiles_nk)
    splits = max(1, min(want, triton.cdiv(N, BM)))
    rows = triton.cdiv(triton.cdiv(N, splits), BM) * BM
    splits = triton.cdiv(N, rows)
    part = torch.empty(splits, D, K, dtype=acc_dtype, device=weight.device)
    _gw_kernel[(triton.cdiv(D, BN), K // BK, splits)](
        frames, visible, g2, part, scale, shift, N, Pv, D, T, H, W, hg, wg, ROWS_PER_SPLIT=rows,
        ACC=ACC, DOT=DOT, PREC=PREC, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)
    gw = part.sum(0).reshape(weight.shape).to(weight.dtype)
    return gw, gb, gp
