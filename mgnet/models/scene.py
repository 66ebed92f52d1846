"""Scene feature extractor F_S (sec. 3.4): scene image (B, 3, S, S) uint8 -> e_s (B, C_s), unit norm.

Deterministic and needs no downloaded weights. Three groups, each standardised and scaled to
unit norm, concatenated and L2-normalised:
  layout  the image average-pooled to a g x g colour grid, standardised per image (where the
          bright / dark / coloured regions of the static camera view are),
  colour  per-channel mean and standard deviation (centred on mid-grey),
  conv    SceneCNN: two fixed conv layers (seeded random, zero-mean filters, ReLU) pooled to 2x2.
A static camera view fixes the layout and texture, while the people in it cover a small part of
the frame, so clips from one view map to nearly the same e_s and different views far apart.
``weights=`` loads a local state_dict into SceneCNN (e.g. filters trained elsewhere); it is
never downloaded. F_S is frozen: it has no trainable parameters.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class SceneCNN(nn.Module):
    """conv 5x5/2 (3 -> c) -> ReLU -> conv 3x3/2 (c -> c) -> ReLU -> 2x2 average pool -> (B, 4c)."""

    def __init__(self, channels: int = 16, seed: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                w = torch.randn(conv.weight.shape, generator=g)
                w -= w.mean(dim=(1, 2, 3), keepdim=True)             # edge / texture detectors
                conv.weight.copy_(w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
                conv.bias.zero_()

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.adaptive_avg_pool2d(x, 2).flatten(1)


VIEW_GRID = 16
VIEW_DIM = 3 * VIEW_GRID ** 2


def view_descriptor(scene: torch.Tensor) -> torch.Tensor:
    """Which camera view a scene image (B, 3, S, S) shows -> (B, VIEW_DIM) unit vectors, for placing
    a clip in the scene of the training video it was filmed like (memory.SegmentMemory.scene_of).

    The image average-pooled to a 16 x 16 grid, each colour channel standardised over the grid:
    a static view's layout survives, while a change of exposure or white balance (a gain and an
    offset per channel, as between training and test days) cancels out."""
    x = scene.float() / 255.0 if scene.dtype == torch.uint8 else scene.float()
    x = F.adaptive_avg_pool2d(x, VIEW_GRID).flatten(2)                     # (B, 3, g*g)
    x = (x - x.mean(2, keepdim=True)) / (x.std(2, keepdim=True) + 1e-3)
    return F.normalize(x.flatten(1), dim=1)


def _unit(x, standardise: bool = True):
    if standardise:
        x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)
    return F.normalize(x, dim=1)


class SceneFeatures(nn.Module):
    def __init__(self, grid: int = 8, conv_channels: int = 16, seed: int = 0,
                 weights: Optional[str] = None):
        super().__init__()
        self.grid = grid
        self.cnn = SceneCNN(conv_channels, seed)
        if weights:
            self.load_cnn_weights(weights)
        self.requires_grad_(False)

    @property
    def dim(self) -> int:
        return 3 * self.grid ** 2 + 6 + 4 * self.cnn.conv2.out_channels

    def load_cnn_weights(self, path: str) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model.scene_weights: no such file {path!r} (a torch state_dict of SceneCNN)")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            self.cnn.load_state_dict(sd)
        except Exception as exc:  # wrong format or keys
            raise ValueError(f"model.scene_weights {path!r} is not a SceneCNN state_dict "
                             f"(keys conv1.weight/bias, conv2.weight/bias): {exc}") from None

    def forward(self, scene: torch.Tensor) -> torch.Tensor:
        if not isinstance(scene, torch.Tensor) or scene.dim() != 4 or scene.shape[1] != 3:
            got = tuple(scene.shape) if isinstance(scene, torch.Tensor) else type(scene).__name__
            raise ValueError(f"scene must have shape (B, 3, S, S), got {got}")
        dtype = self.cnn.conv1.weight.dtype
        x = scene.to(dtype) / 255.0 if scene.dtype == torch.uint8 else scene.to(dtype)
        layout = _unit(F.adaptive_avg_pool2d(x, self.grid).flatten(1))
        colour = _unit(torch.cat([x.mean((2, 3)) - 0.5, x.std((2, 3))], 1), standardise=False)
        conv = _unit(self.cnn(x - 0.5))
        return F.normalize(torch.cat([layout, colour, conv], 1), dim=1)


__all__ = ["SceneFeatures", "SceneCNN", "view_descriptor", "VIEW_DIM"]
