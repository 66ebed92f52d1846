"""A made-up collated batch with exactly the keys, shapes and dtypes the model takes from a
ClipStore through the default collate — for smoke runs, tests and benchmarks."""
from __future__ import annotations

import torch

from ..data.foreground import GRID as FG_GRID
from .config import ModelConfig


def example_batch(cfg: ModelConfig, B: int, seed: int = 0, device="cpu", num_videos: int = 3) -> dict:
    """uint8 rgb (B, 3, T, crop, crop), float pose (B, 2, T, V), pose_conf (B, T, V), uint8 scene
    (B, 3, S, S), uint8 fg (B, T, 8, 8) foreground occupancy, and the index entries (video, person,
    start, frame, label) of a ClipStore item."""
    g = torch.Generator().manual_seed(seed)
    T, V, S = cfg.seg_len, cfg.joints, cfg.scene_size
    b = {
        "rgb": torch.randint(0, 256, (B, 3, T, cfg.crop, cfg.crop), generator=g, dtype=torch.uint8),
        "pose": torch.randn(B, 2, T, V, generator=g),
        "pose_conf": torch.rand(B, T, V, generator=g),
        "scene": torch.randint(0, 256, (B, 3, S, S), generator=g, dtype=torch.uint8),
        "video": torch.randint(0, num_videos, (B,), generator=g),
        "person": torch.arange(B),
        "start": torch.zeros(B, dtype=torch.int64),
        "frame": torch.full((B,), T // 2, dtype=torch.int64),
        "label": torch.full((B,), -1, dtype=torch.int64),
    }
    b["fg"] = torch.randint(0, 256, (B, T, FG_GRID, FG_GRID), generator=g, dtype=torch.uint8)   # drawn last
    return {k: v.to(device) for k, v in b.items()}
