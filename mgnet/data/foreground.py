"""Foreground occupancy of the person crops: what in each crop is not the camera's empty scene.

A surveillance camera is static, so each video's background is the per-pixel median of frames
spread over the video (people move on; what stays is the scene). A crop's foreground is where
it differs from the same square of that background by more than the video's noise, and its
occupancy is the fraction of foreground pixels in each cell of a GRID x GRID grid over the crop:
a walker fills the cells along the body; a bicycle, a cart or a big box next to the person fills
cells that a walker leaves empty, whatever its colour (the appearance memory of
``model.app_target="foreground"``, models/memory.SegmentMemory over these maps, scores that).

    bg, tau = source_background(open_frames(video))   # or video_background(frames (N, H, W, 3) uint8)
    occ = occupancy(crops, background_crops, tau)     # (R, 3, C, C) uint8 x2 -> (R, GRID, GRID) uint8
    occ = occupancy(crops, bg_crops, tau, exclude=others_mask(boxes, own, people_ids, people_kps, C))

Other people are not the person's appearance: a walker passing beside the person fills the
crop's cells just as a pushed cart does, and in a crowd that is what an occupancy map would mostly
measure. Each crop therefore leaves out the pixels inside any OTHER detected person's keypoint
box (``others_mask``: the box over their joints above the confidence threshold, widened by
OTHERS_EXPAND of its size; the pose detector says where people are, whatever remains is the person
and what they carry or push). The others are every raw detection of the frame but the crop's own
track, the same set offline, in the prepared stores and online.

The threshold ``tau`` is set once per video from the sampled frames themselves: TAU_BASE plus
TAU_NOISE times the median absolute difference of a frame from the background (summed over the
three channels), i.e. the video's sensor and compression noise, so a noisy camera does not light
up everywhere and one video's crops are thresholded alike offline, online and in training.
Occupancy is stored as uint8 (fraction x 255).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .crops import keypoint_bounds, snap_squares

GRID = 8              # occupancy cells per side of a crop
BG_FRAMES = 48        # frames sampled over a video for its background
TAU_BASE = 30.0       # |frame - background| summed over RGB (0..765) counted as foreground above
TAU_NOISE = 3.0       # ... TAU_BASE + TAU_NOISE * the video's median |frame - background|
OTHERS_EXPAND = 0.1   # other people's keypoint boxes, widened by this fraction of their width / height
VERSION = 2           # of the definition above (part of the prepared store's hash); 2: others left out


def sample_indices(num_frames: int, k: int = BG_FRAMES) -> np.ndarray:
    """Up to ``k`` frame indices spread evenly over a video of ``num_frames`` frames."""
    if num_frames < 1:
        raise ValueError("sample_indices: a video without frames has no background")
    return np.unique(np.linspace(0, num_frames - 1, min(num_frames, k)).round().astype(np.int64))


def video_background(frames: np.ndarray) -> tuple:
    """(background (H, W, 3) uint8, tau float) from frames (N, H, W, 3) uint8 spread over one video."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"video_background: frames must be (N, H, W, 3) with N >= 1, got {frames.shape}")
    bg = np.median(frames, axis=0).round().astype(np.uint8)
    noise = float(np.median(np.abs(frames.astype(np.int16) - bg.astype(np.int16)).sum(-1)))
    return bg, TAU_BASE + TAU_NOISE * noise


def source_background(src) -> tuple:
    """(background, tau) of a whole frame source (mgnet.data.video.open_frames): its frames at
    ``sample_indices(len(src))``. What the prepared stores, `mgnet score` and replayed videos use."""
    return video_background(src.get(sample_indices(len(src))))


def others_mask(boxes: np.ndarray, own: np.ndarray, people_ids: np.ndarray, people_kps: np.ndarray, size: int,
                min_conf: float = 0.1, expand: float = OTHERS_EXPAND) -> np.ndarray:
    """(n, size, size) bool: the pixels of each crop that lie inside another person's keypoint box.

    boxes (n, 3) the crops' squares (cx, cy, side) as ``crops.crop_squares`` snaps them to pixels;
    own (n,) the track id of each crop's person; people_ids (m,) and people_kps (m, J, 3) every
    person detected in the frame (pixel x, y, confidence). A person's box spans their joints above
    ``min_conf`` (all joints when none is), widened by ``expand`` of its width and height; a crop
    pixel is covered when its centre lies in the box of a person whose id is not the crop's own."""
    x0, y0, s = snap_squares(boxes)
    n, m = len(s), len(people_ids)
    if n == 0 or m == 0:
        return np.zeros((n, size, size), bool)
    lo, hi = keypoint_bounds(np.asarray(people_kps, np.float64), min_conf)
    pad = (hi - lo) * (expand / 2)
    lo, hi = lo - pad, hi + pad                                              # (m, 2)
    t = (np.arange(size) + 0.5) / size
    xs, ys = x0[:, None] + t[None] * s[:, None], y0[:, None] + t[None] * s[:, None]     # (n, size) pixel centres
    in_x = (xs[:, None] >= lo[None, :, 0, None]) & (xs[:, None] <= hi[None, :, 0, None])   # (n, m, size)
    in_y = (ys[:, None] >= lo[None, :, 1, None]) & (ys[:, None] <= hi[None, :, 1, None])
    other = np.asarray(own).reshape(-1, 1) != np.asarray(people_ids).reshape(1, -1)         # (n, m)
    in_y &= other[..., None]
    return np.einsum("njy,njx->nyx", in_y.astype(np.float32), in_x.astype(np.float32)) > 0


def occupancy(crops: np.ndarray, background_crops: np.ndarray, tau: float, grid: int = GRID,
              exclude: np.ndarray | None = None) -> np.ndarray:
    """Foreground fraction per grid cell (R, grid, grid) uint8 (x 255) of crops (R, 3, C, C) uint8
    against the same squares of the background (R, 3, C, C) uint8; pixels where ``exclude`` (R, C, C)
    bool is set (``others_mask``) are not foreground."""
    crops, background_crops = np.asarray(crops), np.asarray(background_crops)
    if crops.shape != background_crops.shape or crops.ndim != 4 or crops.shape[1] != 3:
        raise ValueError(f"occupancy: crops {crops.shape} and background crops {background_crops.shape} "
                         "must both be (R, 3, C, C)")
    diff = np.abs(crops.astype(np.int16) - background_crops.astype(np.int16)).sum(1)     # (R, C, C)
    mask = diff > tau
    if exclude is not None:
        if exclude.shape != mask.shape:
            raise ValueError(f"occupancy: exclude {exclude.shape} must be (R, C, C) = {mask.shape}")
        mask &= ~exclude
    fg = torch.from_numpy(mask.astype(np.float32))[:, None]
    fg = F.adaptive_avg_pool2d(fg, grid)[:, 0].numpy()     # cell means (exact blocks when grid divides C)
    return np.round(fg * 255.0).astype(np.uint8)


__all__ = ["GRID", "BG_FRAMES", "OTHERS_EXPAND", "VERSION", "sample_indices", "video_background", "source_background",
           "others_mask", "occupancy"]
