"""Track windowing: split a person's track into gap-free segments and cut windows of T frames.

A detector misses people now and then. Gaps of up to `max_gap` missing frames are filled by linear
interpolation of the keypoints (and their confidences); a longer gap splits the track into two
segments. Windows are T consecutive frames of one segment, taken every `stride` frames; a window's
label is the ground truth at its centre frame ``start + T // 2`` (the STG-NF protocol).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .poses import Track


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


def split_track(track: Track, max_gap: int = 2) -> list[Segment]:
    """Fill gaps of up to `max_gap` missing frames by linear interpolation; split at longer gaps."""
    fr, kps = np.asarray(track.frames, np.int64), np.asarray(track.kps, np.float32)
    if len(fr) == 0:
        return []
    breaks = np.nonzero(np.diff(fr) - 1 > max_gap)[0] + 1
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
