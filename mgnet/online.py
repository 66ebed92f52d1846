"""Online scoring: frame scores emitted as soon as every window centred on the frame is complete.

Offline evaluation min-max normalises each score component over the evaluated set, which needs
the whole video. Online, each component is normalised with the minimum and maximum recorded on
the training set (the run's ``score_stats.json``) and fused by eq. 16 (``mgnet.scoring.fuse`` with
``stats``), so a clip's score depends on that clip alone and can be emitted immediately.

A person's clip covers frames ``start .. start + T - 1`` and scores its centre frame
``start + T // 2``. Short detector gaps (up to ``max_gap`` frames) are filled by interpolation
once the person reappears, as ``mgnet.data.windows.split_track`` does offline. So frame ``t`` is
final once frame ``t + latency`` has arrived, with

    latency = (T - 1 - T // 2) + max_gap       # 7 + 2 = 9 frames for T = 16, max_gap = 2

which is below T: a frame's score comes at most T frames after the frame itself.

A frame score is the maximum over the persons scored at that frame; frames where nobody is scored
(no track long enough yet, nobody present) are NaN -- "no score", not "normal". No temporal
smoothing is applied (a centred Gaussian would need future frames).

Python API::

    from mgnet.online import iter_scores
    for fs in iter_scores("video.mp4", "poses.json", "runs/demo"):
        print(fs.frame, fs.score, fs.persons)     # FrameScore, in frame order

or, for a live stream, ``OnlineScorer.push(frame_index, image, poses)`` frame by frame, then
``flush()`` at the end; both return the FrameScores that became final.
"""
from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional

import numpy as np
import torch

from mgnet import scoring
from mgnet.data.crops import crop_squares, person_boxes, scene_images
from mgnet.data.poses import coco17_to_openpose18, normalize_pose

__all__ = ["ClipSpec", "FrameScore", "OnlineScorer", "clip_batch", "fused_scores", "load_score_stats",
           "iter_scores"]

RAW_KEYS = ("mo", "app", "mm", "nll")


@dataclass(frozen=True)
class ClipSpec:
    """How a clip is cut from frames and poses (from the run's data config)."""
    seg_len: int = 16
    crop_size: int = 64
    scene_size: int = 64
    max_gap: int = 2
    box_expand: float = 0.2
    box_min_conf: float = 0.1

    @classmethod
    def from_config(cls, cfg) -> "ClipSpec":
        """From a run config (``cfg.data`` node; missing keys keep the defaults)."""
        data = cfg.data if hasattr(cfg, "data") else cfg["data"]
        get = (lambda k, d: data.get(k, d)) if hasattr(data, "get") else (lambda k, d: getattr(data, k, d))
        return cls(seg_len=int(get("seg_len", 16)), crop_size=int(get("crop_size", 64)),
                   scene_size=int(get("scene_size", 64)), max_gap=int(get("max_gap", 2)),
                   box_expand=float(get("box_expand", 0.2)), box_min_conf=float(get("box_min_conf", 0.1)))

    @property
    def centre(self) -> int:
        return self.seg_len // 2

    @property
    def latency(self) -> int:
        """Frames between a frame's arrival and its final score."""
        return self.seg_len - 1 - self.seg_len // 2 + self.max_gap


@dataclass
class FrameScore:
    """One frame's result: ``score`` (fused, training-normalised; NaN when nobody is scored),
    ``persons`` {track id: fused score of that person's clip centred here}, ``components``
    {mo, app, mm: training-normalised; nll: raw} of the highest-scoring person."""
    frame: int
    score: float
    persons: dict = field(default_factory=dict)
    components: dict = field(default_factory=dict)


def load_score_stats(run_dir) -> dict:
    """The run's ``score_stats.json``; DataError naming the file when missing, not JSON, or without
    finite min <= max (and finite percentiles) for each of mo, app, mm and fused."""
    from mgnet.data.errors import DataError
    path = Path(run_dir) / "score_stats.json"
    if not path.is_file():
        raise DataError(path, "missing; the run has no training-set score statistics (train it to the "
                              "end with train.score_stats=true)")
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e.msg})") from None
    except (UnicodeDecodeError, RecursionError):
        raise DataError(path, "not a UTF-8 JSON text") from None
    if not isinstance(stats, dict):
        raise DataError(path, f"expected a JSON object of statistics, got {type(stats).__name__}")
    missing = [k for k in ("mo", "app", "mm", "fused") if not isinstance(stats.get(k), dict) or "min" not in stats[k]]
    if missing:
        raise DataError(path, f"lacks statistics for {missing}")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    for k in ("mo", "app", "mm", "fused"):
        st = stats[k]
        bad = [f for f in ("min", "max") if not number(st.get(f))]
        bad += [f for f in st if f.startswith("p") and not number(st[f])]
        if bad:
            raise DataError(path, f"{k}: {', '.join(bad)} must be finite numbers")
        if st["min"] > st["max"]:
            raise DataError(path, f"{k}: min {st['min']} > max {st['max']}")
    return stats


def fused_scores(raw: Mapping[str, np.ndarray], stats: Mapping, lambdas: Mapping) -> dict:
    """Training-normalised components and their eq. 16 fusion, per clip:
    ``{"score", "mo", "app", "mm", "nll"}`` (nll stays raw)."""
    out = {"score": scoring.fuse(raw, lambdas, stats=stats)}
    for k in scoring.COMPONENTS:
        out[k] = scoring.minmax(raw[k], stats[k]["min"], stats[k]["max"])
    out["nll"] = np.asarray(raw["nll"], dtype=np.float64)
    return out


def clip_batch(kps17: np.ndarray, crops: np.ndarray, scenes: np.ndarray, frame_size,
               persons=None, starts=None, spec: ClipSpec = ClipSpec()) -> dict:
    """A model batch (ClipStore layout) from B windows.

    kps17 (B, T, 17, 3) pixel keypoints; crops (B, T, 3, c, c) uint8; scenes (B, 3, S, S) uint8 of
    the centre frames; frame_size (W, H).
    """
    kps17 = np.asarray(kps17, dtype=np.float32)
    b = len(kps17)
    k18 = coco17_to_openpose18(kps17)
    pose = normalize_pose(k18[..., :2], frame_size)  # (B, T, 18, 2)
    starts = np.zeros(b, np.int64) if starts is None else np.asarray(starts, np.int64)
    return {
        "rgb": torch.from_numpy(np.ascontiguousarray(np.asarray(crops).transpose(0, 2, 1, 3, 4))),
        "pose": torch.from_numpy(np.ascontiguousarray(pose.transpose(0, 3, 1, 2))),
        "pose_conf": torch.from_numpy(np.ascontiguousarray(k18[..., 2].astype(np.float32))),
        "scene": torch.from_numpy(np.ascontiguousarray(scenes)),
        "video": torch.zeros(b, dtype=torch.int64),
        "person": torch.from_numpy(np.zeros(b, np.int64) if persons is None else np.asarray(persons, np.int64)),
        "start": torch.from_numpy(starts),
        "frame": torch.from_numpy(starts + spec.centre),
        "label": torch.full((b,), -1, dtype=torch.int64),
    }


def run_model(model, batch: dict, device="cpu") -> dict:
    """Raw per-clip scores {mo, app, mm, nll} as float64 numpy arrays."""
    with torch.inference_mode():
        out = model.scores({k: v.to(device) for k, v in batch.items()})
    return {k: out[k].float().cpu().numpy().astype(np.float64) for k in RAW_KEYS}


class _Track:
    """One person's current gap-free segment: the last T frames' keypoints and crops."""

    def __init__(self, maxlen: int):
        self.frames: deque = deque(maxlen=maxlen)
        self.kps: deque = deque(maxlen=maxlen)
        self.crops: deque = deque(maxlen=maxlen)
        self.length = 0  # frames in the segment so far (not capped)

    def reset(self):
        for q in (self.frames, self.kps, self.crops):
            q.clear()
        self.length = 0


class OnlineScorer:
    """Push frames one at a time; get each frame's score once it is final (see module docstring).

    model: a trained MGNet in eval mode; stats: the run's score_stats.json; lambdas {"app", "mm"};
    frame_size (W, H) of the stream; batch_size: windows scored per model call at most.
    """

    def __init__(self, model, stats: Mapping, lambdas: Mapping, frame_size, spec: ClipSpec = ClipSpec(),
                 device="cpu", batch_size: int = 64):
        self.model, self.stats, self.lambdas = model, stats, dict(lambdas)
        self.frame_size = tuple(int(v) for v in frame_size)
        self.spec, self.device, self.batch_size = spec, device, int(batch_size)
        self._tracks: dict[int, _Track] = {}
        self._images: dict[int, np.ndarray] = {}  # recent frames, for gap-filled crops and scenes
        self._pending: dict[int, dict] = {}  # frame -> {person: (score, components)}
        self._next_emit = None
        self._last = None

    @property
    def latency(self) -> int:
        return self.spec.latency

    def _crop(self, frame: int, kps: np.ndarray) -> np.ndarray:
        box = person_boxes(coco17_to_openpose18(kps[None]), self.spec.box_expand, self.spec.box_min_conf)
        return crop_squares(self._images[frame], box, self.spec.crop_size)[0]

    def _append(self, tr: _Track, pid: int, frame: int, kps: np.ndarray, windows: list):
        tr.frames.append(frame)
        tr.kps.append(kps)
        tr.crops.append(self._crop(frame, kps))
        tr.length += 1
        if tr.length >= self.spec.seg_len:
            windows.append((pid, np.stack(tr.kps), np.stack(tr.crops), tr.frames[0]))

    def push(self, frame: int, image: np.ndarray, poses: Mapping[int, np.ndarray]) -> list[FrameScore]:
        """Add frame ``frame`` (its RGB image (H, W, 3) uint8 and ``{track_id: (17, 3) keypoints}``);
        returns the frames that became final, in order. Frames must be pushed in order, every
        frame of the stream once (frames with nobody too)."""
        frame = int(frame)
        if self._last is not None and frame != self._last + 1:
            raise ValueError(f"OnlineScorer.push: frame {frame} after {self._last}; push every frame in order")
        if self._next_emit is None:
            self._next_emit = frame
        self._last = frame
        self._images[frame] = np.asarray(image)
        T, gap = self.spec.seg_len, self.spec.max_gap
        windows: list = []
        for pid, kps in poses.items():
            kps = np.asarray(kps, dtype=np.float32)
            tr = self._tracks.setdefault(int(pid), _Track(T))
            if tr.length and frame - tr.frames[-1] - 1 > gap:
                tr.reset()
            if tr.length:
                lf, lk = tr.frames[-1], tr.kps[-1]
                for f in range(lf + 1, frame):  # linear interpolation across a short gap
                    self._append(tr, int(pid), f, _lerp(lk, kps, lf, frame, f), windows)
            self._append(tr, int(pid), frame, kps, windows)
        self._score(windows)
        # forget what no future window can need: old frames, and tracks that can only restart
        for f in [f for f in self._images if f < frame - T - gap]:
            del self._images[f]
        for pid in [p for p, tr in self._tracks.items() if not tr.length or frame - tr.frames[-1] - 1 > gap]:
            del self._tracks[pid]
        return self._emit(upto=frame - self.latency)

    def flush(self) -> list[FrameScore]:
        """End of stream: every remaining frame is final."""
        return [] if self._last is None else self._emit(upto=self._last)

    def _score(self, windows: list):
        c = self.spec.centre
        for i in range(0, len(windows), self.batch_size):
            chunk = windows[i:i + self.batch_size]
            scenes = scene_images(np.stack([self._images[w[3] + c] for w in chunk]), self.spec.scene_size)
            batch = clip_batch(np.stack([w[1] for w in chunk]), np.stack([w[2] for w in chunk]), scenes,
                               self.frame_size, [w[0] for w in chunk], [w[3] for w in chunk], self.spec)
            fused = fused_scores(run_model(self.model, batch, self.device), self.stats, self.lambdas)
            for j, (pid, _, _, start) in enumerate(chunk):
                comps = {k: float(fused[k][j]) for k in ("mo", "app", "mm", "nll")}
                self._pending.setdefault(start + c, {})[pid] = (float(fused["score"][j]), comps)

    def _emit(self, upto: int) -> list[FrameScore]:
        out = []
        while self._next_emit is not None and self._next_emit <= upto:
            f = self._next_emit
            per = self._pending.pop(f, {})
            if per:
                best = max(per, key=lambda p: (per[p][0], -p))
                out.append(FrameScore(f, per[best][0], {p: v[0] for p, v in sorted(per.items())}, per[best][1]))
            else:
                out.append(FrameScore(f, math.nan))
            self._next_emit += 1
        return out


def _lerp(k0: np.ndarray, k1: np.ndarray, f0: int, f1: int, f: int) -> np.ndarray:
    """np.interp's value at ``f`` between (f0, k0) and (f1, k1), as split_track computes it."""
    flat0, flat1 = k0.reshape(-1), k1.reshape(-1)
    out = np.empty_like(flat0)
    for c in range(flat0.size):
        out[c] = np.interp(f, [f0, f1], [flat0[c], flat1[c]])
    return out.reshape(k0.shape)


def iter_scores(video, poses, run_dir, pose_format: str = "auto", device="cpu",
                batch_size: int = 64) -> Iterator[FrameScore]:
    """Score a video file (or frame folder) with its pose file online, yielding FrameScores in frame
    order as they become final (``latency`` frames after each frame is read)."""
    from mgnet.data.pose_formats import check_frame_range, load_poses
    from mgnet.data.video import open_frames
    from mgnet.evaluate import load_run

    stats = load_score_stats(run_dir)
    model, cfg = load_run(run_dir, device=device)
    spec = ClipSpec.from_config(cfg)
    lambdas = {"app": float(cfg.model.lambda_app), "mm": float(cfg.model.lambda_mm)}
    src = open_frames(video)
    tracks = load_poses(poses, pose_format)
    check_frame_range(tracks, len(src), poses, video)
    by_frame: dict[int, dict] = {}
    for pid, (fr, kp) in tracks.items():
        for f, k in zip(fr.tolist(), kp):
            by_frame.setdefault(f, {})[pid] = k
    scorer = OnlineScorer(model, stats, lambdas, src.size, spec, device, batch_size)
    for start, chunk in src.iter_chunks(16):
        for i, image in enumerate(chunk):
            yield from scorer.push(start + i, image, by_frame.get(start + i, {}))
    yield from scorer.flush()
