"""Heads that turn encoder tokens into per-frame features (B, T, C).

STHead is H_B (sec. 3.2): tokens (B, P, D) -> (B, t, D, h, w) -> L LSTA modules -> mean over
(h, w) -> MLP -> (B, t, C), each of the t token-time steps repeated for its 2 frames -> (B, T, C).
ProjectionHead is H_u and the mask head (sec. 3.3): tokens of any subset of cubes are averaged
per token-time step (the cube index says which), then the same MLP and repeat.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .config import CUBE
from .lsta import LSTA


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))


def pool_per_time(tokens: torch.Tensor, visible: Optional[torch.Tensor], grid) -> torch.Tensor:
    """Mean of the tokens of each token-time step: (B, Pv, D) -> (B, t, D). `visible` (B, Pv)
    holds each token's cube index (None: all P cubes in order). The block-wise masks of
    mgnet.data.masking leave the same cubes visible on every slice, so no step is empty."""
    t, h, w = grid
    B, N, D = tokens.shape
    if visible is None:
        return tokens.view(B, t, h * w, D).mean(2)
    ti = (visible // (h * w)).unsqueeze(-1)                               # (B, Pv, 1)
    s = tokens.new_zeros(B, t, D).scatter_add_(1, ti.expand(-1, -1, D), tokens)
    n = tokens.new_zeros(B, t, 1).scatter_add_(1, ti, tokens.new_ones(B, N, 1))
    return s / n.clamp_min(1)          # a time step without visible cubes pools to 0 (no host sync)


class STHead(nn.Module):
    """H_B: LSTA on the token volume, spatial pooling, MLP to (B, T, C)."""

    def __init__(self, dim: int, out: int, grid, layers: int = 1, hidden: int = 128,
                 k0: int = 5, k1: int = 7, dilation: int = 3, order: str = "dense_first"):
        super().__init__()
        self.grid = tuple(grid)
        self.lsta = nn.ModuleList(LSTA(k0, k1, dilation, order) for _ in range(layers))
        self.mlp = _mlp(dim, hidden, out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t, h, w = self.grid
        B, P, D = tokens.shape
        if P != t * h * w:
            raise ValueError(f"tokens must have shape (B, P={t * h * w}, D), got {tuple(tokens.shape)}")
        e = tokens.view(B, t, h, w, D).permute(0, 1, 4, 2, 3)             # (B, t, D, h, w)
        for m in self.lsta:
            e = m(e)
        f = self.mlp(e.mean(dim=(3, 4)))                                  # (B, t, C)
        return f.repeat_interleave(CUBE[0], dim=1)                        # (B, T, C)


class ProjectionHead(nn.Module):
    """H_u / mask head: per-time-step token mean, MLP to (B, T, C)."""

    def __init__(self, dim: int, out: int, grid, hidden: int = 128):
        super().__init__()
        self.grid = tuple(grid)
        self.mlp = _mlp(dim, hidden, out)

    def forward(self, tokens: torch.Tensor, visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.mlp(pool_per_time(tokens, visible, self.grid)).repeat_interleave(CUBE[0], dim=1)


__all__ = ["STHead", "ProjectionHead", "pool_per_time"]
