"""Masked cube embedding: the 2x8x8 Conv3d patchify evaluated at visible cubes only.

masked_cube_embed(frames, visible, weight, bias, pos=None, mean=None, std=None) -> tokens
    frames  (B, 3, T, H, W) uint8 or float; T % 2 == H % 8 == W % 8 == 0
    visible (B, Pv) int64 indices into the cube grid p = (ti * h + hi) * w + wi,
            t = T/2, h = H/8, w = W/8, P = t*h*w; no duplicates within a sample, any order
    weight  (D, 3, 2, 8, 8), bias (D,), pos (P, D) optional, mean/std (3,) optional
    pixels: uint8 -> value / 255; then (x - mean[c]) / std[c] when mean/std are given (any dtype)
    tokens  (B, Pv, D) = patch(x)[b, visible[b]] @ weight.view(D, 384).T + bias + pos[visible[b]]
Gradients flow to weight, bias and pos; frames take none. The reference below is the definition.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from . import _dispatch
from ._checks import FLOAT_DTYPES, check_tensor
from ._eager import autograd_backward

CUBE = (2, 8, 8)


def normalize_frames(frames, mean=None, std=None, dtype=torch.float32):
    x = frames.to(dtype)
    if frames.dtype == torch.uint8:
        x = x / 255.0
    if mean is not None:
        x = x - mean.to(dtype).view(1, -1, 1, 1, 1)
    if std is not None:
        x = x / std.to(dtype).view(1, -1, 1, 1, 1)
    return x


def masked_cube_embed_reference(frames, visible, weight, bias, pos=None, mean=None, std=None):
    x = normalize_frames(frames, mean, std, weight.dtype)
    tok = F.conv3d(x, weight, bias, stride=CUBE)                # (B, D, t, h, w)
    tok = tok.flatten(2).transpose(1, 2)                        # (B, P, D)
    idx = visible.unsqueeze(-1).expand(-1, -1, tok.shape[-1])
    out = torch.gather(tok, 1, idx)
    if pos is not None:
        out = out + pos[visible]
    return out


def _eager_fwd(frames, visible, weight, bias, pos, mean, std):
    return masked_cube_embed_reference(frames, visible, weight, bias, pos, mean, std)


def _eager_bwd(grad, frames, visible, weight, bias, pos, mean, std):
    gs = autograd_backward(masked_cube_embed_reference, (frames, visible, weight, bias, pos, mean, std),
                           (grad,), (False, False, True, True, pos is not None, False, False))
    return gs[2], gs[3], gs[4]


_dispatch.register_kernel("masked_cube_embed", "eager", _eager_fwd, _eager_bwd)


@torch.library.custom_op("mgnet::masked_cube_embed", mutates_args=())
def _cube_op(frames: torch.Tensor, visible: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
             pos: Optional[torch.Tensor], mean: Optional[torch.Tensor], std: Optional[torch.Tensor],
             backend: str) -> torch.Tensor:
    return _dispatch.get_kernel("masked_cube_embed", backend).forward(
        frames, visible, weight, bias, pos, mean, std).contiguous()


@_cube_op.register_fake
def _(frames, visible, weight, bias, pos, mean, std, backend):
    return weight.new_empty(frames.shape[0], visible.shape[1], weight.shape[0])


@torch.library.custom_op("mgnet::masked_cube_embed_backward", mutates_args=())
def _cube_bwd_op(grad: torch.Tensor, frames: torch.Tensor, visible: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor, pos: Optional[torch.Tensor], mean: Optional[torch.Tensor],
                 std: Optional[torch.Tensor], backend: str) -> List[torch.Tensor]:
    gw, gb, gp = _dispatch.get_kernel("masked_cube_embed", backend).backward(
        grad.contiguous(), frames, visible, weight, bias, pos, mean, std)
    if gp is None:
        gp = weight.new_empty(0)
    return [gw.contiguous(), gb.contiguous(), gp.contiguous()]


@_cube_bwd_op.register_fake
def _(grad, frames, visible, weight, bias, pos, mean, std, backend):
    return [torch.empty_like(weight), torch.empty_like(bias),
            torch.empty_like(pos) if pos is not None else weight.new_empty(0)]


def _setup(ctx, inputs, output):
    frames, visible, weight, bias, pos, mean, std, backend = inputs
    ctx.save_for_backward(frames, visible, weight, bias, pos, mean, std)
    ctx.backend = backend
    ctx.has_pos = pos is not None


def _backward(ctx, grad):
    frames, visible, weight, bias, pos, mean, std = ctx.saved_tensors
    gw, gb, gp = _cube_bwd_op(grad, frames, visible, weight, bias, pos, mean, std, ctx.backend)
    return None, None, gw, gb, (gp if ctx.has_pos else None), None, None, None


_cube_op.register_autograd(_backward, setup_context=_setup)


def check_visible(visible: torch.Tensor, P: int) -> None:
    """Raise if any index is outside [0, P) or repeats within a sample (one host sync)."""
    if visible.numel() == 0:
        return
    bad = (visible < 0) | (visible >= P)
    if bool(bad.any()):
        b, j = [int(v) for v in bad.nonzero()[0]]
        raise ValueError(f"visible[{b}, {j}] = {int(visible[b, j])} is out of range for a cube grid "
                         f"of P = {P} cubes (valid: 0..{P - 1})")
    s = visible.sort(dim=1).values
    dup = s[:, 1:] == s[:, :-1]
    if bool(dup.any()):
        b, j = [int(v) for v in dup.nonzero()[0]]
        raise ValueError(f"visible[{b}] lists cube {int(s[b, j])} more than once; indices must be unique per sample")


def masked_cube_embed(frames, visible, weight, bias, pos=None, mean=None, std=None, *, validate: bool = True):
    """Embed the visible 2x8x8 cubes of `frames` (module docstring). `validate=False` skips the
    index range/duplicate check (one host sync) when the caller built the indices itself."""
    check_tensor("frames", frames, ndim=5, dtypes=(torch.uint8,) + FLOAT_DTYPES, shape_doc="(B, 3, T, H, W)")
    if frames.requires_grad:
        raise ValueError("frames must not require grad: masked_cube_embed gives gradients to "
                         "weight, bias and pos only (detach the frames)")
    B, C, T, H, W = frames.shape
    if C != 3 or T % 2 or H % 8 or W % 8:
        raise ValueError(f"frames must have shape (B, 3, T, H, W) with T % 2 == 0 and H, W multiples of 8, "
                         f"got {tuple(frames.shape)}")
    dev = frames.device
    P = (T // 2) * (H // 8) * (W // 8)
    check_tensor("visible", visible, ndim=2, dtypes=(torch.int64,), device=dev, shape_doc="(B, Pv) cube indices")
    if visible.shape[0] != B:
        raise ValueError(f"visible must have shape ({B}, Pv) to match frames' batch, got {tuple(visible.shape)}")
    if visible.shape[1] > P:
        raise ValueError(f"visible has {visible.shape[1]} indices per sample but the grid has only P = {P} cubes")
    check_tensor("weight", weight, ndim=5, dtypes=FLOAT_DTYPES, device=dev, shape_doc="(D, 3, 2, 8, 8)")
    D = weight.shape[0]
    check_tensor("weight", weight, shape=(D, 3, 2, 8, 8), shape_doc="(D, 3, 2, 8, 8)")
    check_tensor("bias", bias, shape=(D,), dtypes=(weight.dtype,), device=dev, shape_doc="(D,)")
    if pos is not None:
        check_tensor("pos", pos, shape=(P, D), dtypes=(weight.dtype,), device=dev, shape_doc=f"(P={P}, D={D})")
    for n, v in (("mean", mean), ("std", std)):
        if v is not None:
            check_tensor(n, v, shape=(3,), dtypes=FLOAT_DTYPES, device=dev, shape_doc="(3,) per channel")
    if frames.is_floating_point() and frames.dtype != weight.dtype:
        raise TypeError(f"float frames must have weight's dtype {weight.dtype}, got {frames.dtype}")
    if validate and not torch.compiler.is_compiling():
        # a host sync: inside a compiled graph it would break the graph, so compiled callers
        # (the model passes validate=False anyway) rely on the eager check of a first call
        check_visible(visible, P)
    be = _dispatch.resolve("masked_cube_embed", dev)
    opt = lambda t: None if t is None else t.contiguous()  # noqa: E731
    return _cube_op(frames.contiguous(), visible.contiguous(), weight.contiguous(), bias.contiguous(),
                    opt(pos), opt(mean), opt(std), be)
