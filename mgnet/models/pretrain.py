"""Stage 0: self-supervised pre-training of the RGB features (``model.rgb_pretrain="mae"``), and the
embedding through which the RGB encoder reads pre-extracted features.

The paper pre-extracts RGB features of the cube tokens before its joint space-time ViT (sec. 3.2)
and cites BEiT / VideoMAE for masked modelling. Stage 0 trains an appearance encoder (a
``VideoEncoder`` like the RGB encoder) as VideoMAE does: a random tube mask hides
``pretrain_mask_ratio`` of each slice's cubes (the same cubes on every slice, so a hidden cube cannot
be copied from the next frame), the encoder sees only the visible cubes, a light decoder
(``pretrain_decoder_depth`` blocks of width ``pretrain_decoder_dim``) gets the encoded visible tokens
plus a learned mask token at every hidden cube, and predicts each hidden cube's pixels, normalised
per cube (VideoMAE's target: the 3x2x8x8 ImageNet-normalised values minus their mean, over their
standard deviation). Loss: mean squared error over the hidden cubes.

After stage 0 the appearance encoder is frozen; ``PreExtractedEmbed`` replaces the RGB encoder's
cube embedding: the frozen features of all cubes, a linear map to the encoder's width, and the
encoder's own position embedding. A pretrained backbone (models/backbone.py) plugs in the same way.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import CUBE
from .encoder import IMAGENET_MEAN, IMAGENET_STD, Block, _init_linear


def tube_mask(batch: int, grid, ratio: float, device=None) -> torch.Tensor:
    """(B, h*w) bool, True = hidden: round(ratio * h * w) random cells per clip (global torch RNG,
    so a resumed stage draws the same masks)."""
    t, h, w = grid
    k = int(round(ratio * h * w))
    hidden = torch.rand(batch, h * w).argsort(1) < k      # a random permutation: k entries below k
    return hidden if device is None else hidden.to(device)


def cube_targets(frames: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, 3, T, H, W) uint8 (or float in [0, 1]) -> (B, t*h*w, 3*2*8*8): each cube's pixels,
    ImageNet-normalised, then normalised per cube (zero mean, unit variance), VideoMAE's target."""
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    x = (x - mean) / std
    B, C, T, H, W = x.shape
    ct, ch, cw = CUBE
    x = x.view(B, C, T // ct, ct, H // ch, ch, W // cw, cw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    x = x.reshape(B, (T // ct) * (H // ch) * (W // cw), C * ct * ch * cw)    # cube order (ti, hi, wi)
    return (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=True) + eps).sqrt()


class MaskedCubeDecoder(nn.Module):
    """VideoMAE's light decoder: visible tokens (B, Pv, D_enc) at cube indices ``visible`` ->
    predicted normalised pixels of every cube (B, P, 3*2*8*8)."""

    def __init__(self, enc_dim: int, dim: int, depth: int, heads: int, num_tokens: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(num_tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, 3 * CUBE[0] * CUBE[1] * CUBE[2])
        self.apply(_init_linear)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        B, Pv, _ = tokens.shape
        P, D = self.pos.shape
        x = self.mask_token.to(tokens.dtype).expand(B, P, D).clone()
        x = x.scatter(1, visible.unsqueeze(-1).expand(-1, -1, D), self.embed(tokens))
        x = x + self.pos.to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))


def mae_loss(encoder: nn.Module, decoder: MaskedCubeDecoder, rgb: torch.Tensor, grid, ratio: float) -> torch.Tensor:
    """Stage 0's loss: mean squared error of the decoder's prediction on the hidden cubes."""
    t, h, w = grid
    B = rgb.shape[0]
    hidden = tube_mask(B, grid, ratio, rgb.device)                          # (B, h*w)
    n_vis = h * w - int(hidden[0].sum())
    spatial = (~hidden).nonzero()[:, 1].view(B, n_vis)                      # sorted visible cells
    offs = torch.arange(t, device=rgb.device).view(1, t, 1) * (h * w)
    visible = (offs + spatial.unsqueeze(1)).reshape(B, t * n_vis)
    pred = decoder(encoder(rgb, visible, validate=False), visible)          # (B, P, 384)
    target = cube_targets(rgb)
    err = (pred.float() - target).pow(2).mean(-1)                           # (B, P)
    hid = hidden.repeat(1, t).to(err.dtype)                                 # (B, P), cube order t, h, w
    return (err * hid).sum() / hid.sum()


class PreExtractedEmbed(nn.Module):
    """Drop-in for the RGB encoder's CubeEmbed: frozen features of a source (the stage-0 encoder or a
    backbone; held by reference, not as a submodule) -> linear map -> + the position embedding.
    forward(frames, visible=None, validate=True) -> (B, P or Pv, D)."""

    def __init__(self, source: Callable[[torch.Tensor], torch.Tensor], src_dim: int, dim: int,
                 num_tokens: int):
        super().__init__()
        self._source = [source]          # a list: keeps the source out of this module's state_dict
        self.proj = nn.Linear(src_dim, dim)
        self.norm = nn.LayerNorm(src_dim)
        self.pos = nn.Parameter(torch.zeros(num_tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        _init_linear(self.proj)

    @property
    def num_tokens(self) -> int:
        return self.pos.shape[0]

    def forward(self, frames: torch.Tensor, visible: Optional[torch.Tensor] = None,
                validate: bool = True) -> torch.Tensor:
        with torch.no_grad():
            feats = self._source[0](frames)                                  # (B, P, src_dim), frozen
        x = self.proj(self.norm(feats.to(self.proj.weight.dtype))) + self.pos
        if visible is not None:
            x = x.gather(1, visible.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return x


__all__ = ["tube_mask", "cube_targets", "MaskedCubeDecoder", "mae_loss", "PreExtractedEmbed"]
