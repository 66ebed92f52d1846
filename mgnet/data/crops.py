"""Human-centric crops and scene images from frames.

The crop box comes from a person's keypoints: their bounding box, expanded by `expand` (20%) about
its centre, made square (side = the longer side), padded with zeros where it leaves the image,
and resized (bilinear, antialiased) to `size` x `size`. The scene image is the whole frame
resized to `size` x `size`. Everything returns channel-first uint8 RGB.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MIN_SIDE = 4.0


def keypoint_bounds(kps: np.ndarray, min_conf: float = 0.0) -> tuple:
    """(lo (N, 2), hi (N, 2)): the corners of each row's keypoint box, keypoints (N, J, 3) in their
    own dtype. Joints with confidence <= `min_conf` are ignored (all joints are used if a row has
    none above)."""
    xy, conf = kps[..., :2], kps[..., 2]
    valid = conf > min_conf
    valid[~valid.any(axis=1)] = True
    lo = np.where(valid[..., None], xy, np.inf).min(axis=1)
    hi = np.where(valid[..., None], xy, -np.inf).max(axis=1)
    return lo, hi


def snap_squares(boxes: np.ndarray) -> tuple:
    """(x0, y0, s) int64 (n,) each: square boxes (n, 3) = (cx, cy, side) snapped to whole pixels, the
    pixels ``crop_squares`` cuts (side at least 1)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 3)
    s = np.maximum(np.round(boxes[:, 2]), 1)
    return (np.round(boxes[:, 0] - s / 2).astype(np.int64), np.round(boxes[:, 1] - s / 2).astype(np.int64),
            s.astype(np.int64))


def person_boxes(kps: np.ndarray, expand: float = 0.2, min_conf: float = 0.0) -> np.ndarray:
    """Square crop boxes (N, 3) = (centre x, centre y, side) in pixels from keypoints (N, J, 3).

    Joints with confidence <= `min_conf` are ignored (all joints are used if a row has none above).
    """
    lo, hi = keypoint_bounds(np.asarray(kps, np.float32), min_conf)
    centre = 0.5 * (lo + hi)
    side = (hi - lo).max(axis=1) * (1.0 + expand)
    side = np.maximum(side, MIN_SIDE)
    return np.concatenate([centre, side[:, None]], axis=1).astype(np.float32)


def _resize(hwc_uint8: torch.Tensor, size) -> torch.Tensor:
    # a (1, 3, h, w) view of HWC data is channels-last: torch's fast uint8 antialiased path
    x = hwc_uint8.unsqueeze(0).permute(0, 3, 1, 2)
    big = x.shape[-1] > size[1] or x.shape[-2] > size[0]
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=big)
    return y[0]


def crop_squares(frame: np.ndarray, boxes: np.ndarray, size: int = 64) -> np.ndarray:
    """Crops (n, 3, size, size) uint8 of one frame (H, W, 3) uint8 at square boxes (n, 3) = (cx, cy, side).

    The box is snapped to whole pixels; the part outside the image is zeros.
    """
    h, w = frame.shape[:2]
    src = torch.from_numpy(np.ascontiguousarray(frame))  # (H, W, 3)
    out = np.zeros((len(boxes), 3, size, size), np.uint8)
    for i, (x0, y0, s) in enumerate(zip(*(a.tolist() for a in snap_squares(boxes)))):
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
        if ix1 <= ix0 or iy1 <= iy0:
            continue  # box entirely outside the image: all padding
        if (ix0, iy0, ix1, iy1) == (x0, y0, x0 + s, y0 + s):
            canvas = src[y0:y0 + s, x0:x0 + s]
        else:
            canvas = torch.zeros((s, s, 3), dtype=torch.uint8)
            canvas[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = src[iy0:iy1, ix0:ix1]
        out[i] = _resize(canvas, (size, size)).numpy()
    return out


def scene_images(frames: np.ndarray, size: int = 64) -> np.ndarray:
    """Whole frames (n, H, W, 3) uint8 -> (n, 3, size, size) uint8 (aspect ratio not kept)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # channels-last view
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=x.shape[-1] > size or x.shape[-2] > size)
    return y.contiguous().numpy()
