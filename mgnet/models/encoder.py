"""RGB / mask encoder: 2x8x8 cube embedding + ViT with joint space-time attention (sec. 3.2).

CubeEmbed calls ``mgnet.ops.masked_cube_embed`` (uint8 frames are normalised in-kernel with
ImageNet mean/std); with ``visible=None`` every cube is embedded (RGB encoder), with visible
indices only those (mask encoder, eq. 5). The ViT blocks are pre-norm, attention runs through
``F.scaled_dot_product_attention`` jointly over all tokens given (P = t*h*w, or the visible ones).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .config import CUBE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CubeEmbed(nn.Module):
    """Conv3d patchify with kernel = stride = 2x8x8, evaluated at the visible cubes, + learned
    position embedding of those cubes. frames (B, 3, T, H, W) uint8 or float -> (B, Pv, D)."""

    def __init__(self, dim: int, grid, channels: int = 3):
        super().__init__()
        self.grid = tuple(grid)
        P = grid[0] * grid[1] * grid[2]
        self.weight = nn.Parameter(torch.empty(dim, channels, *CUBE))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.pos = nn.Parameter(torch.zeros(P, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.xavier_uniform_(self.weight.view(dim, -1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD), persistent=False)

    @property
    def num_tokens(self) -> int:
        return self.pos.shape[0]

    def forward(self, frames: torch.Tensor, visible: Optional[torch.Tensor] = None,
                validate: bool = True) -> torch.Tensor:
        """`validate=False` skips the index check (a host sync) for indices the caller built."""
        t, h, w = self.grid
        want = (3, t * CUBE[0], h * CUBE[1], w * CUBE[2])
        if not isinstance(frames, torch.Tensor) or frames.dim() != 5 or tuple(frames.shape[1:]) != want:
            got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"rgb must have shape (B, 3, T={want[1]}, {want[2]}, {want[3]}), got {got}")
        if visible is None:
            validate = False
            visible = torch.arange(self.num_tokens, device=frames.device).expand(frames.shape[0], -1)
        if frames.is_floating_point() and frames.dtype != self.weight.dtype:
            frames = frames.to(self.weight.dtype)
        return ops.masked_cube_embed(frames, visible, self.weight, self.bias, self.pos,
                                     self.mean.to(self.weight.dtype), self.std.to(self.weight.dtype),
                                     validate=validate)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VideoEncoder(nn.Module):
    """Cube embedding + ViT (joint space-time attention) + final LayerNorm.

    forward(frames (B, 3, T, H, W), visible (B, Pv) or None) -> tokens (B, Pv or P, D)
    """

    def __init__(self, dim: int, depth: int, heads: int, grid, mlp_ratio: float = 4.0):
        super().__init__()
        self.embed = CubeEmbed(dim, grid)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.apply(_init_linear)

    @classmethod
    def from_config(cls, cfg) -> "VideoEncoder":
        return cls(cfg.embed_dim, cfg.depth, cfg.heads, cfg.grid, cfg.mlp_ratio)

    def forward(self, frames, visible=None, validate: bool = True):
        x = self.embed(frames, visible, validate)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def _init_linear(m):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


__all__ = ["CubeEmbed", "Attention", "Block", "VideoEncoder", "IMAGENET_MEAN", "IMAGENET_STD"]
