"""Pose tracks: AlphaPose tracked JSON I/O, COCO-17 -> OpenPose-18 joints, STG-NF normalisation.

The JSON schema (as STG-NF ships ShanghaiTech/UBnormal poses):
``{person_id: {frame_id: {"keypoints": [x, y, score] * 17, "scores": float}}}``; ids are strings of
integers, frame ids are 0-based frame indices of the video.

Joint order after `coco17_to_openpose18` (STG-NF's ``keypoints17_to_coco18``):
0 nose, 1 neck (= mean of the shoulders), 2 r-shoulder, 3 r-elbow, 4 r-wrist, 5 l-shoulder,
6 l-elbow, 7 l-wrist, 8 r-hip, 9 r-knee, 10 r-ankle, 11 l-hip, 12 l-knee, 13 l-ankle, 14 r-eye,
15 l-eye, 16 r-ear, 17 l-ear.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .errors import DataError

NUM_COCO = 17
NUM_JOINTS = 18
# index into [coco17..., neck] for each OpenPose-18 joint (STG-NF's order)
OPENPOSE18_FROM_COCO = np.array([0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3])


@dataclass
class Track:
    """One person's detections in one video: frames (N,) int64 ascending, kps (N, 17, 3) float32
    pixel x, y and confidence (COCO-17 order), box_scores (N,) float32."""
    person: int
    frames: np.ndarray
    kps: np.ndarray
    box_scores: np.ndarray


def _as_int(key, path, what):
    try:
        v = int(key)
    except (TypeError, ValueError):
        raise DataError(path, f"{what} {key!r} is not an integer") from None
    if abs(v) >= 2 ** 62:
        raise DataError(path, f"{what} {key!r} is out of range")
    return v


def parse_tracks(data, path="<pose json>") -> list[Track]:
    """Validate a decoded AlphaPose tracked JSON object and return its tracks (sorted by person).

    Raises DataError (naming `path`) when the object is not the schema above: not a dict of dicts,
    a frame entry without "keypoints", keypoints not 17*3 = 51 finite numbers, ids not integers.
    """
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object {{person_id: {{frame_id: {{...}}}}}}, got {type(data).__name__}")
    tracks = []
    for pid_key, frames in data.items():
        pid = _as_int(pid_key, path, "person id")
        if not isinstance(frames, dict):
            raise DataError(path, f"person {pid_key!r}: expected an object of frames, got {type(frames).__name__}")
        fids, kps, scores = [], [], []
        for fkey, det in frames.items():
            fid = _as_int(fkey, path, f"person {pid_key!r}: frame id")
            if fid < 0:
                raise DataError(path, f"person {pid_key!r}: negative frame id {fid}")
            if not isinstance(det, dict) or "keypoints" not in det:
                raise DataError(path, f"person {pid_key!r} frame {fkey!r}: expected an object with \"keypoints\"")
            kp = det["keypoints"]
            if not isinstance(kp, list) or len(kp) != NUM_COCO * 3:
                n = len(kp) if isinstance(kp, list) else type(kp).__name__
                raise DataError(path, f"person {pid_key!r} frame {fkey!r}: \"keypoints\" must be a list of "
                                      f"{NUM_COCO * 3} numbers (17 x [x, y, score]), got {n}")
            try:
                arr = np.asarray(kp, dtype=np.float32).reshape(NUM_COCO, 3)
            except (TypeError, ValueError):
                raise DataError(path, f"person {pid_key!r} frame {fkey!r}: \"keypoints\" holds non-numbers") from None
            if not np.isfinite(arr).all():
                raise DataError(path, f"person {pid_key!r} frame {fkey!r}: \"keypoints\" holds NaN or inf")
            s = det.get("scores", float(arr[:, 2].mean()))
            if isinstance(s, list):  # some AlphaPose versions write a one-element list
                s = s[0] if s else 0.0
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not -1e30 < s < 1e30:
                raise DataError(path, f"person {pid_key!r} frame {fkey!r}: \"scores\" must be a finite number")
            fids.append(fid)
            kps.append(arr)
            scores.append(float(s))
        if not fids:
            continue
        order = np.argsort(fids, kind="stable")
        fr = np.asarray(fids, dtype=np.int64)[order]
        if np.any(np.diff(fr) == 0):
            raise DataError(path, f"person {pid_key!r}: duplicate frame ids")
        tracks.append(Track(pid, fr, np.stack(kps)[order], np.asarray(scores, np.float32)[order]))
    tracks.sort(key=lambda t: t.person)
    return tracks


def read_pose_json(path) -> list[Track]:
    """Read an AlphaPose tracked JSON file into tracks; DataError (naming the file) if missing or malformed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "pose file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e.msg} at line {e.lineno})") from None
    except (UnicodeDecodeError, RecursionError):
        raise DataError(path, "not a text JSON file (or nested too deeply)") from None
    return parse_tracks(data, path)


def write_pose_json(path, tracks: dict) -> None:
    """Write ``{person: {frame: (17, 3) array}}`` as AlphaPose tracked JSON (atomically)."""
    out = {}
    for pid, frames in tracks.items():
        out[str(int(pid))] = {
            str(int(f)): {"keypoints": [round(float(v), 2) for v in np.asarray(k).reshape(-1)],
                          "scores": round(float(np.asarray(k)[:, 2].mean()), 3)}
            for f, k in frames.items()}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    os.replace(tmp, path)


def coco17_to_openpose18(kps: np.ndarray) -> np.ndarray:
    """(..., 17, C) COCO keypoints -> (..., 18, C) OpenPose order; neck = mean of the shoulders
    (all channels, so its confidence is the shoulders' mean too), exactly as STG-NF does."""
    kps = np.asarray(kps)
    if kps.shape[-2] != NUM_COCO:
        raise ValueError(f"kps: expected 17 joints on axis -2, got shape {kps.shape}")
    neck = 0.5 * (kps[..., 5, :] + kps[..., 6, :])
    full = np.concatenate([kps, neck[..., None, :]], axis=-2)
    return full[..., OPENPOSE18_FROM_COCO, :]


def normalize_pose(xy: np.ndarray, frame_size) -> np.ndarray:
    """STG-NF normalisation of segments: xy (..., T, V, 2) pixel coordinates, frame_size (W, H).

    Divide by the frame size, subtract the segment's mean (over T and V, per coordinate), divide
    by the std of the segment's y (over T and V). Returns float32 of the same shape.
    """
    xy = np.asarray(xy, dtype=np.float64)
    w, h = frame_size
    out = xy / np.array([w, h], dtype=np.float64)
    out = out - out.mean(axis=(-3, -2), keepdims=True)
    std = out[..., 1].std(axis=(-2, -1))[..., None, None, None]
    out = out / np.maximum(std, 1e-6)
    return out.astype(np.float32)
