"""A small IoU + keypoint tracker for pose files that carry no track ids.

Pose estimators run per frame; MGNet scores a *person* over T consecutive frames, so detections
must be linked into tracks first. This is the simplest tracker that works for fixed surveillance
cameras: each detection is matched to the live track whose last pose is most similar, where the
similarity is the mean of the IoU of the keypoint boxes and an OKS-like keypoint similarity
(keypoint distances scaled by the box size). Matching is greedy over pairs sorted by similarity,
which for the handful of people in a surveillance frame is as good as Hungarian matching and
fully deterministic (ties break by track id, then by detection order).

A track that goes unmatched for more than ``max_gap`` frames ends; a detection that matches no
live track starts a new one. Ids are assigned 1, 2, ... in order of first appearance, which is
also how AlphaPose's tracked JSON numbers its people.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["keypoint_box", "box_iou", "keypoint_similarity", "Tracker", "track_detections"]


def keypoint_box(kps: np.ndarray, min_conf: float = 0.0) -> np.ndarray:
    """(x1, y1, x2, y2) of the keypoints of one pose (K, 3) whose confidence is > ``min_conf``.

    A pose with no confident keypoint gets a degenerate box at the mean of all keypoints.
    """
    ok = kps[:, 2] > min_conf
    pts = kps[ok, :2] if ok.any() else kps[:, :2]
    x1, y1 = pts.min(axis=0)
    x2, y2 = pts.max(axis=0)
    return np.array([x1, y1, x2, y2], dtype=np.float64)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (0 for disjoint or empty boxes)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def keypoint_similarity(a: np.ndarray, b: np.ndarray, kappa: float = 0.1) -> float:
    """OKS-like similarity in [0, 1] of two poses (K, 3): mean over joints confident in both of
    exp(-d^2 / (2 s^2 kappa^2)), s^2 = the mean area of the two keypoint boxes (at least 1 px^2)."""
    both = (a[:, 2] > 0) & (b[:, 2] > 0)
    if not both.any():
        return 0.0
    ba, bb = keypoint_box(a), keypoint_box(b)
    area = 0.5 * ((ba[2] - ba[0]) * (ba[3] - ba[1]) + (bb[2] - bb[0]) * (bb[3] - bb[1]))
    s2 = max(float(area), 1.0)
    d2 = ((a[both, :2] - b[both, :2]) ** 2).sum(axis=1)
    return float(np.exp(-d2 / (2.0 * s2 * kappa**2)).mean())


class Tracker:
    """The tracker as a stream: ``update(frame, poses)`` returns the track id of each pose.

    Frames must come in increasing order. ``track_detections`` runs the same logic over a whole
    file, so offline and online scoring see the same ids.
    """

    def __init__(self, max_gap: int = 8, min_similarity: float = 0.2):
        self.max_gap, self.min_similarity = int(max_gap), float(min_similarity)
        self._last_pose: dict[int, np.ndarray] = {}
        self._last_seen: dict[int, int] = {}
        self._next_id = 1
        self._frame = None

    def update(self, frame: int, poses) -> list[int]:
        """Track ids (one per row of ``poses`` (N, K, 3)) for the detections of ``frame``."""
        frame = int(frame)
        if self._frame is not None and frame <= self._frame:
            raise ValueError(f"Tracker.update: frame {frame} after frame {self._frame}; frames must increase")
        self._frame = frame
        poses = [np.asarray(p, dtype=np.float32) for p in poses]
        live = [t for t, f in self._last_seen.items() if frame - f <= self.max_gap + 1]
        pairs = []
        for t in live:
            prev = self._last_pose[t]
            pbox = keypoint_box(prev)
            for j, p in enumerate(poses):
                sim = 0.5 * box_iou(pbox, keypoint_box(p)) + 0.5 * keypoint_similarity(prev, p)
                if sim >= self.min_similarity:
                    pairs.append((-sim, t, j))
        pairs.sort()
        used_t, assign = set(), {}
        for _, t, j in pairs:
            if t in used_t or j in assign:
                continue
            used_t.add(t)
            assign[j] = t
        ids = []
        for j, p in enumerate(poses):
            t = assign.get(j)
            if t is None:
                t = self._next_id
                self._next_id += 1
            self._last_pose[t] = p
            self._last_seen[t] = frame
            ids.append(t)
        return ids


def track_detections(
    detections: Iterable[tuple[int, np.ndarray]],
    max_gap: int = 8,
    min_similarity: float = 0.2,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Link per-frame detections into tracks.

    Args:
        detections: ``(frame, poses)`` pairs, poses a (N, K, 3) array of (x, y, score) keypoints;
            frames may come in any order and repeat (their poses are concatenated).
        max_gap: a track not matched for more than this many frames ends.
        min_similarity: pairs less similar than this are never linked.

    Returns:
        ``{track_id: (frames int64 (F,), keypoints float32 (F, K, 3))}``, ids 1, 2, ... in order
        of first appearance, frames strictly increasing within a track.
    """
    per_frame: dict[int, list[np.ndarray]] = {}
    for frame, poses in detections:
        poses = np.asarray(poses, dtype=np.float32)
        if poses.ndim != 3 or poses.shape[-1] != 3:
            raise ValueError(f"track_detections: poses of frame {frame} must be (N, K, 3), got {poses.shape}")
        per_frame.setdefault(int(frame), []).extend(list(poses))
    tracker = Tracker(max_gap, min_similarity)
    tracks: dict[int, tuple[list[int], list[np.ndarray]]] = {}
    for frame in sorted(per_frame):
        for t, p in zip(tracker.update(frame, per_frame[frame]), per_frame[frame]):
            tracks.setdefault(t, ([], []))
            tracks[t][0].append(frame)
            tracks[t][1].append(p)
    return {
        t: (np.asarray(fr, dtype=np.int64), np.stack(kp).astype(np.float32))
        for t, (fr, kp) in sorted(tracks.items())
    }
