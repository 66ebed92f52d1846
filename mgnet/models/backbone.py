"""A pretrained RGB backbone read from a local weights file (``model.rgb_backbone``, ``model.rgb_weights``).

The paper pre-extracts RGB features of the cube tokens before its joint space-time ViT (sec. 3.2).
``ViTBackbone`` is a plain ViT in timm's ``VisionTransformer`` state-dict layout (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``),
so a timm / DINO / DeiT checkpoint saved with ``torch.save(model.state_dict(), path)`` loads without
timm. timm itself is not used: it imports torchvision, and no torchvision wheel imports beside this
torch build (``pip install timm`` would replace torch). Nothing is ever downloaded.

Features at the cube grid: every frame is resized to (h * patch, w * patch) so the patch grid is
the (h, w) grid of the 2x8x8 cube embedding (no resize for patch 8 on 64x64 crops), the tokens after
``layers`` blocks (final LayerNorm applied) are averaged over each pair of frames (the cube's 2 time
steps): (B, 3, T, H, W) -> (B, t*h*w, D) in the cube order (ti, hi, wi). The checkpoint's position
embedding is interpolated (bicubic) from its grid to (h, w) when they differ.
"""
from __future__ import annotations

import math
import os
import re
from typing import Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import CUBE
from .encoder import IMAGENET_MEAN, IMAGENET_STD, Attention

# name -> (width, depth, heads), timm's vit_<size>_patch<P>[_<res>] family
VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
_NAME = re.compile(r"^vit_(tiny|small|base|large)_patch(\d+)(?:_\d+)?$")


def parse_name(name: str) -> Tuple[int, int, int, int]:
    """``vit_small_patch8`` (or timm's ``vit_small_patch8_224``) -> (width, depth, heads, patch)."""
    m = _NAME.match(str(name))
    if not m:
        raise ValueError(f"model.rgb_backbone={name!r}: expected vit_<{'|'.join(VIT_SIZES)}>_patch<P> "
                         f"(timm's ViT names, e.g. vit_small_patch8 or vit_small_patch16_224)")
    dim, depth, heads = VIT_SIZES[m.group(1)]
    return dim, depth, heads, int(m.group(2))


class _Block(nn.Module):
    """timm's ViT block (pre-norm, LayerNorm eps 1e-6), with timm's parameter names."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class ViTBackbone(nn.Module):
    """Frozen-feature ViT in timm's layout. forward(frames (B, 3, T, H, W) uint8 or float in [0, 1])
    -> tokens (B, t*h*w, width) at the cube grid."""

    def __init__(self, name: str, grid, layers: Optional[int] = None):
        super().__init__()
        dim, depth, heads, patch = parse_name(name)
        if layers is not None and not 1 <= layers <= depth:
            raise ValueError(f"model.rgb_backbone_layers={layers}: {name} has {depth} blocks")
        self.name, self.patch, self.grid, self.dim = name, patch, tuple(grid), dim
        t, h, w = self.grid
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + h * w, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers or depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=1e-6)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ weights
    def load_weights(self, path: os.PathLike) -> None:
        """Load a timm-layout state_dict from ``path`` (a torch.save file; a top-level ``model`` or
        ``state_dict`` entry is unwrapped, ``head.*`` / ``fc_norm.*`` / ``blocks.<i>`` beyond
        ``layers`` are ignored). Errors name model.rgb_weights and what does not fit."""
        if not path:
            raise ValueError(f"model.rgb_backbone={self.name} needs a weights file: set model.rgb_weights=<path> "
                             f"(a state_dict saved with torch.save; nothing is downloaded)")
        if not os.path.isfile(path):
            raise ValueError(f"model.rgb_weights={str(path)!r}: no such file")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise ValueError(f"model.rgb_weights={str(path)!r}: not a readable torch state_dict ({exc})") from exc
        for key in ("model", "state_dict"):
            if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
                sd = sd[key]
        if not isinstance(sd, Mapping):
            raise ValueError(f"model.rgb_weights={str(path)!r}: expected a state_dict, got {type(sd).__name__}")
        n = len(self.blocks)
        keep = {}
        for k, v in sd.items():
            k = k[len("module."):] if k.startswith("module.") else k
            if k.startswith(("head.", "fc_norm.")):
                continue
            m = re.match(r"blocks\.(\d+)\.", k)
            if m and int(m.group(1)) >= n:
                continue
            keep[k] = v
        if "pos_embed" in keep:
            keep["pos_embed"] = self._resize_pos(keep["pos_embed"], path)
        own = self.state_dict()
        missing = sorted(set(own) - set(keep))
        unexpected = sorted(set(keep) - set(own))
        bad = sorted(k for k in set(own) & set(keep) if tuple(own[k].shape) != tuple(keep[k].shape))
        if missing or unexpected or bad:
            why = "; ".join(s for s in (
                f"missing {missing[:6]}" if missing else "", f"unexpected {unexpected[:6]}" if unexpected else "",
                "shape mismatch " + ", ".join(f"{k} {tuple(keep[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:4])
                if bad else "") if s)
            raise ValueError(f"model.rgb_weights={str(path)!r} does not fit model.rgb_backbone={self.name}: {why}")
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in keep.items()})

    def _resize_pos(self, pos: torch.Tensor, path) -> torch.Tensor:
        t, h, w = self.grid
        if pos.dim() != 3 or pos.shape[-1] != self.dim:
            return pos                                   # reported as a shape mismatch
        cls, grid = (pos[:, :1], pos[:, 1:]) if int(math.isqrt(pos.shape[1] - 1)) ** 2 == pos.shape[1] - 1 \
            else (self.cls_token.detach().new_zeros(1, 1, self.dim), pos)
        g = int(math.isqrt(grid.shape[1]))
        if g * g != grid.shape[1]:
            raise ValueError(f"model.rgb_weights={str(path)!r}: pos_embed of {grid.shape[1]} patches is not a square grid")
        if (g, g) != (h, w):
            grid = F.interpolate(grid.reshape(1, g, g, -1).permute(0, 3, 1, 2).float(), size=(h, w),
                                 mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([cls, grid.to(cls.dtype)], 1)

    # ------------------------------------------------------------------ features
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        t, h, w = self.grid
        B, C, T, H, W = frames.shape
        x = frames.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W).to(self.mean.dtype)
        x = (x / 255.0 if frames.dtype == torch.uint8 else x)
        x = (x - self.mean) / self.std
        size = (h * self.patch, w * self.patch)
        if (H, W) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)            # (B*T, h*w, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)[:, 1:]
        x = x.view(B, t, CUBE[0], h * w, self.dim).mean(2)                # the cube's frame pair
        return x.reshape(B, t * h * w, self.dim)


def build_backbone(cfg) -> ViTBackbone:
    """The backbone of ``cfg.rgb_backbone`` with the weights of ``cfg.rgb_weights`` (required)."""
    bb = ViTBackbone(cfg.rgb_backbone, cfg.grid, cfg.rgb_backbone_layers)
    bb.load_weights(cfg.rgb_weights)
    return bb.requires_grad_(False).eval()


__all__ = ["ViTBackbone", "build_backbone", "parse_name", "VIT_SIZES"]
