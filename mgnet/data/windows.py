"""Track windowing: split a person's track into gap-free segments and cut windows of T frames.

A detector misses people now and then. Gaps of up to `max_gap` missing frames are filled by linear
interpolation of the keypoints (and their confidences); a longer gap splits the track into two
segments. Windows are T consecutive frames of one segment, taken every `stride` frames; a window's
label is the ground truth at its centre frame ``start + T // 2`` (the STG-NF protocol).

A tracker also swaps identities now and then (two people cross, one is hidden and the track
resumes on someone else): the "track" then jumps across the frame in one step. A window over such
a jump is a pose sequence no person made, and its pose scores are the largest of all, normal
videos included (on the validation protocol, every normal clip above the 95th percentile of S_pose
in the occluded variant held one). So a track is also split where its person box moves more than
`max_jump` body sizes per frame between consecutive detections (``box_jumps``: the box centre's
displacement over the larger of the two boxes' sides, per frame of the gap between them). The rule
looks at two consecutive detections only, so online scoring applies it as frames arrive. The
default 0.5 is more than twice a sprint's displacement (8 m/s at 25 frames/s is 0.18 of a 1.75 m
body per frame), so no real motion splits a track.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .crops import person_boxes
from .poses import Track

MAX_JUMP = 0.5      # default data.max_jump: person box displacement per frame, in body sizes


@dataclass
class Segment:
    """A gap-free run of one person: frames (N,) consecutive int64, kps (N, J, 3) float32 pixel
    x, y, confidence; interpolated (N,) bool marks frames filled in across a short gap."""
    person: int
    frames: np.ndarray
    kps: np.ndarray
    interpolated: np.ndarray

    def __len__(self):
        return len(self.frames)


def box_jumps(kps: np.ndarray, frames: np.ndarray, min_conf: float = 0.1) -> np.ndarray:
    """(N - 1,) displacement per frame of the person box between consecutive detections kps (N, J, 3)
    at frames (N,), in body sizes: |centre_i+1 - centre_i| / (frames_i+1 - frames_i) / max(side_i,
    side_i+1), the box and its side (the larger of width and height) over the joints above
    ``min_conf`` as crops.person_boxes takes them."""
    kps = np.asarray(kps, np.float32)
    if len(kps) < 2:
        return np.zeros(0, np.float64)
    box = jump_boxes(kps, min_conf)
    return box_steps(box[:-1], box[1:], np.diff(np.asarray(frames, np.int64)))


def jump_boxes(kps: np.ndarray, min_conf: float = 0.1) -> np.ndarray:
    """(N, 3) float64 the boxes ``box_jumps`` compares: (cx, cy, side) over the joints above ``min_conf``."""
    return person_boxes(np.asarray(kps, np.float32), expand=0.0, min_conf=min_conf).astype(np.float64)


def box_steps(before: np.ndarray, after: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """(n,) ``box_jumps``' displacement per frame, in body sizes, from boxes ``before`` (n, 3) to
    ``after`` (n, 3) (``jump_boxes``) ``dt`` (n,) frames later."""
    step = np.linalg.norm(after[:, :2] - before[:, :2], axis=1)
    return step / np.maximum(dt, 1) / np.maximum(after[:, 2], before[:, 2])


def split_track(track: Track, max_gap: int = 2, max_jump: float = 0.0, min_conf: float = 0.1) -> list[Segment]:
    """Fill gaps of up to `max_gap` missing frames by linear interpolation; split at longer gaps and,
    when `max_jump` > 0, where the person box jumps by more than `max_jump` body sizes per frame
    (``box_jumps`` over joints above `min_conf`; an identity switch of the tracker)."""
    fr, kps = np.asarray(track.frames, np.int64), np.asarray(track.kps, np.float32)
    if len(fr) == 0:
        return []
    cut = np.diff(fr) - 1 > max_gap
    if max_jump > 0:
        cut |= box_jumps(kps, fr, min_conf) > max_jump
    breaks = np.nonzero(cut)[0] + 1
    segments = []
    for idx in np.split(np.arange(len(fr)), breaks):
        f, k = fr[idx], kps[idx]
        full = np.arange(f[0], f[-1] + 1, dtype=np.int64)
        if len(full) == len(f):
            segments.append(Segment(track.person, full, k.copy(), np.zeros(len(full), bool)))
            continue
        flat = k.reshape(len(f), -1)
        filled = np.empty((len(full), flat.shape[1]), np.float32)
        for c in range(flat.shape[1]):
            filled[:, c] = np.interp(full, f, flat[:, c])
        segments.append(Segment(track.person, full, filled.reshape((len(full),) + k.shape[1:]),
                                ~np.isin(full, f)))
    return segments


def window_starts(length: int, seg_len: int, stride: int) -> np.ndarray:
    """Offsets (within a segment of `length` frames) of its windows of `seg_len` frames every `stride`."""
    if seg_len < 1 or stride < 1:
        raise ValueError(f"seg_len and stride must be >= 1, got seg_len={seg_len}, stride={stride}")
    if length < seg_len:
        return np.zeros(0, np.int64)
    return np.arange(0, length - seg_len + 1, stride, dtype=np.int64)


def window_labels(gt, starts_frames: np.ndarray, seg_len: int) -> np.ndarray:
    """Label of each window (first frames `starts_frames`): gt at the centre frame, -1 if gt is None."""
    starts_frames = np.asarray(starts_frames, np.int64)
    if gt is None:
        return np.full(len(starts_frames), -1, np.int64)
    return np.asarray(gt, np.int64)[starts_frames + seg_len // 2]
