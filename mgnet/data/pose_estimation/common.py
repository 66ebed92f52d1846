"""What both pose estimators share: the error type, optional imports, crop geometry, COCO-17 output.

Geometry: a person crop is an axis-aligned box (centre, width, height) warped onto a model input
of ``out_w x out_h`` pixels by one 2x3 affine matrix (scale + shift, no rotation), so keypoints
found in the crop map back to the frame by the inverse of the same matrix.
"""
from __future__ import annotations

import importlib

import numpy as np

from ..errors import DataError

__all__ = ["PoseEstimatorError", "require", "box_matrix", "warp", "to_frame", "fix_aspect", "letterbox",
           "dedup", "outside_to_zero", "NUM_COCO"]

NUM_COCO = 17
POSE_EXTRA = 'pip install -e ".[pose]"  (or: pip install "mgnet[pose]")'


class PoseEstimatorError(DataError):
    """A pose estimator that cannot run: its optional packages are missing, a model file is absent
    or not the expected kind of model. Exits `mgnet score` / `mgnet prepare` with one message."""

    def __init__(self, path, problem: str):
        super().__init__(path, problem)


def require(module: str, what: str):
    """Import an optional dependency of the pose extra, or PoseEstimatorError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PoseEstimatorError(None, f"{what} needs the Python package {module!r}, which is not installed "
                                       f"({e}); install the pose extra: {POSE_EXTRA}") from None


def fix_aspect(w: float, h: float, aspect: float) -> tuple[float, float]:
    """Grow (w, h) to the aspect ratio w / h = ``aspect`` (mmpose's _fix_aspect_ratio)."""
    if w > h * aspect:
        return w, w / aspect
    return h * aspect, h


def box_matrix(cx: float, cy: float, w: float, h: float, out_w: int, out_h: int) -> np.ndarray:
    """The 2x3 affine matrix that maps the box centred at (cx, cy) of size (w, h) onto [0, out_w) x [0, out_h)."""
    sx, sy = out_w / w, out_h / h
    return np.array([[sx, 0.0, out_w / 2.0 - cx * sx], [0.0, sy, out_h / 2.0 - cy * sy]], np.float64)


def warp(image: np.ndarray, m: np.ndarray, out_w: int, out_h: int, fill=(114, 114, 114)) -> np.ndarray:
    """The crop of ``image`` (H, W, 3) uint8 under matrix ``m`` (bilinear; outside the frame: ``fill``)."""
    cv2 = require("cv2", "pose estimation")
    return np.ascontiguousarray(cv2.warpAffine(image, m, (int(out_w), int(out_h)), flags=cv2.INTER_LINEAR,
                                               borderMode=cv2.BORDER_CONSTANT, borderValue=fill))


def to_frame(xy: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Crop coordinates (..., 2) -> frame coordinates under the inverse of ``m`` (a box_matrix)."""
    xy = np.asarray(xy, np.float64)
    return np.stack([(xy[..., 0] - m[0, 2]) / m[0, 0], (xy[..., 1] - m[1, 2]) / m[1, 1]], -1)


def letterbox(image: np.ndarray, out_w: int, out_h: int, fill: int = 114) -> tuple[np.ndarray, float]:
    """The image resized with its aspect ratio kept into the top-left corner of an ``out_h x out_w``
    canvas of ``fill`` (mmdet's YOLOX / RTMO test pipeline); returns (canvas, ratio): canvas
    coordinates / ratio = frame coordinates."""
    cv2 = require("cv2", "pose estimation")
    h, w = image.shape[:2]
    ratio = min(out_h / h, out_w / w)
    nw, nh = max(1, int(round(w * ratio))), max(1, int(round(h * ratio)))
    canvas = np.full((out_h, out_w, 3), fill, np.uint8)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, ratio


def dedup(poses: list[np.ndarray], iou: float = 0.5, min_conf: float = 0.3) -> list[np.ndarray]:
    """Drop a pose whose confident-keypoint box overlaps an earlier (more trusted) one by more than ``iou``."""
    from ..tracker import box_iou, keypoint_box
    kept, boxes = [], []
    for p in poses:
        b = keypoint_box(p, min_conf)
        if all(box_iou(b, o) <= iou for o in boxes):
            kept.append(p)
            boxes.append(b)
    return kept


def outside_to_zero(kps: np.ndarray, width: int, height: int) -> np.ndarray:
    """Keypoints (N, 17, 3) whose (x, y) lies outside the frame get score 0 (extrapolated joints)."""
    kps = np.array(kps, np.float32, copy=True)
    out = (kps[..., 0] < 0) | (kps[..., 1] < 0) | (kps[..., 0] > width - 1) | (kps[..., 1] > height - 1)
    kps[..., 2][out] = 0.0
    return kps
