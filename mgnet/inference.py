"""Scoring videos with a trained run: online (frame by frame) and offline (every window in batches).

Library code behind `mgnet score` and the Python API; both paths cut clips as mgnet.data.prepare does
and score them with mgnet.engine.score_batch, the one per-batch scoring function.

Online scoring: frame scores emitted as soon as every window centred on the frame is complete.

Both paths normalise each score component with the normal training clips' statistics (the run's
``score_stats.json``; by default a z-score) and fuse them as the run was trained to
(``mgnet.scoring.fuse`` with ``stats``: ``stats["fusion"]`` names the normalisation and the
combination), so a clip's score depends on that clip alone and online scoring can emit it at once;
offline and online scores of the same video are equal. (`mgnet eval` also reports eq. 16 with
min-max over the test set, the paper's protocol, which needs the whole set.)

A person's clip covers frames ``start .. start + T - 1`` and scores its centre frame
``start + T // 2``. Short detector gaps (up to ``max_gap`` frames) are filled by interpolation
once the person reappears, and a track whose box jumps by more than ``max_jump`` body sizes per
frame (an identity switch) starts a new segment, as ``mgnet.data.windows.split_track`` does
offline. So frame ``t`` is
final once frame ``t + latency`` has arrived, with

    latency = (T - 1 - T // 2) + max_gap       # 7 + 2 = 9 frames for T = 16, max_gap = 2

which is below T: a frame's score comes at most T frames after the frame itself.

A frame score is the maximum over the persons scored at that frame; frames where nobody is scored
(no track long enough yet, nobody present) are NaN -- "no score", not "normal". No temporal
smoothing is applied (a centred Gaussian would need future frames).

Python API::

    from mgnet.inference import iter_scores
    for fs in iter_scores("video.mp4", "poses.json", "runs/demo"):
        print(fs.frame, fs.score, fs.persons)     # FrameScore, in frame order

or, for a live stream, ``OnlineScorer.push(frame_index, image, poses)`` frame by frame, then
``flush()`` at the end; both return the FrameScores that became final.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional

import numpy as np
import torch
from tqdm import tqdm

from mgnet import faults, scoring
from mgnet.data import foreground
from mgnet.data.crops import crop_squares, person_boxes, scene_images
from mgnet.data.pose_formats import check_frame_range, load_poses
from mgnet.data.poses import Track, coco17_to_openpose18, normalize_pose
from mgnet.data.video import IMAGE_EXTS, VIDEO_EXTS, open_frames
from mgnet.data.prepare import NOBODY, people_by_frame
from mgnet.data.windows import MAX_JUMP, box_steps, jump_boxes, split_track, window_starts
from mgnet.engine import Dist, load_run, open_split, score_batch, score_clips
from mgnet.report.events import best_f1_threshold, resolve_threshold
from mgnet.scoring import SCORE_KEYS

__all__ = ["ClipSpec", "FrameScore", "OnlineScorer", "clip_batch", "fused_scores", "load_score_stats",
           "iter_scores", "VideoScores", "offline_batches", "score_offline", "score_online", "find_pose_file",
           "video_inputs", "open_video_inputs", "choose_threshold", "best_f1_on_test_split"]

POSE_PATTERNS = ("{}.json", "{}_alphapose_tracked_person.json", "{}_alphapose-results.json", "results_{}.json", "{}")


@dataclass(frozen=True)
class ClipSpec:
    """How a clip is cut from frames and poses (from the run's data config)."""
    seg_len: int = 16
    crop_size: int = 64
    scene_size: int = 64
    max_gap: int = 2
    max_jump: float = MAX_JUMP
    box_expand: float = 0.2
    box_min_conf: float = 0.1

    @classmethod
    def from_config(cls, cfg) -> "ClipSpec":
        """From a run config (``cfg.data`` node; missing keys keep the defaults)."""
        data = cfg.data if hasattr(cfg, "data") else cfg["data"]
        get = (lambda k, d: data.get(k, d)) if hasattr(data, "get") else (lambda k, d: getattr(data, k, d))
        return cls(seg_len=int(get("seg_len", 16)), crop_size=int(get("crop_size", 64)),
                   scene_size=int(get("scene_size", 64)), max_gap=int(get("max_gap", 2)),
                   max_jump=float(get("max_jump", MAX_JUMP)),
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
    names = scoring.COMPONENTS + ("fused",)
    missing = [k for k in names if not isinstance(stats.get(k), dict) or "min" not in stats[k]]
    if missing:
        raise DataError(path, f"lacks statistics for {missing}")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    for k in names:
        st = stats[k]
        bad = [f for f in ("min", "max") if not number(st.get(f))]
        bad += [f for f in st if f.startswith("p") and not number(st[f])]
        if bad:
            raise DataError(path, f"{k}: {', '.join(bad)} must be finite numbers")
        if st["min"] > st["max"]:
            raise DataError(path, f"{k}: min {st['min']} > max {st['max']}")
    return stats


def fused_scores(raw: Mapping[str, np.ndarray], stats: Mapping, lambdas: Mapping) -> dict:
    """Training-normalised components and their fusion (the run's ``stats["fusion"]``: z-scores
    against the training clips by default, eq. 16 by the training min/max in runs without it), per
    clip: ``{"score", "mo", "app", "mm"[, "pose"], "nll"}`` (nll stays raw)."""
    out = {"score": scoring.fuse(raw, lambdas, stats=stats)}
    norm = scoring.stats_fusion(stats)[0]
    for k in scoring.fused_components(raw, stats):
        out[k] = scoring.normalize(raw[k], k, norm, stats)
    out["nll"] = np.asarray(raw["nll"], dtype=np.float64)
    return out


def clip_batch(kps17: np.ndarray, crops: np.ndarray, scenes: np.ndarray, frame_size,
               persons=None, starts=None, spec: ClipSpec = ClipSpec(), *, fg: np.ndarray) -> dict:
    """A model batch (ClipStore layout) from B windows.

    kps17 (B, T, 17, 3) pixel keypoints; crops (B, T, 3, c, c) uint8; scenes (B, 3, S, S) uint8 of
    the centre frames; frame_size (W, H); fg (B, T, g, g) uint8 the crops' foreground occupancy
    (mgnet.data.foreground).
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
        "fg": torch.from_numpy(np.ascontiguousarray(fg, dtype=np.uint8)),
        "video": torch.zeros(b, dtype=torch.int64),
        "person": torch.from_numpy(np.zeros(b, np.int64) if persons is None else np.asarray(persons, np.int64)),
        "start": torch.from_numpy(starts),
        "frame": torch.from_numpy(starts + spec.centre),
        "label": torch.full((b,), -1, dtype=torch.int64),
    }


class _Track:
    """One person's current gap-free segment: the last T frames' keypoints and crops."""

    def __init__(self, maxlen: int):
        self.frames: deque = deque(maxlen=maxlen)
        self.kps: deque = deque(maxlen=maxlen)
        self.crops: deque = deque(maxlen=maxlen)
        self.fg: deque = deque(maxlen=maxlen)
        self.length = 0  # frames in the segment so far (not capped)
        self.jump_box = None  # windows.jump_boxes of the last detection (frames[-1])

    def reset(self):
        for q in (self.frames, self.kps, self.crops, self.fg):
            q.clear()
        self.length = 0


class OnlineScorer:
    """Push frames one at a time; get each frame's score once it is final (see module docstring).

    model: a trained MGNet in eval mode; stats: the run's score_stats.json; lambdas: the fusion
    weights (scoring.fusion_lambdas); frame_size (W, H) of the stream; batch_size: windows scored
    per model call at most; background: the camera's empty scene and noise threshold
    ``(image (H, W, 3) uint8, tau)`` (mgnet.data.foreground.video_background), when known. Without
    it the scorer estimates one from the stream: the median of every ``BG_EVERY``-th frame pushed so
    far, up to foreground.BG_FRAMES of them, so S_app (foreground occupancy) settles once the
    people of the first frames have moved on.

    components: ``"fused"`` (default) computes only the score components the fused score reads
    (non-zero fusion weight, ``scoring.needed_components``): with the default weights S_pose and
    S_app, so the RGB ViT, STG-NF and the BSMM do not run; the other components of FrameScore are
    NaN ("nll" comes with "mo"). ``"all"`` computes every component. The fused score and every
    computed component are the same either way (and equal offline scoring's). Models whose
    ``scores`` take no ``components`` (an exported ONNX model) always compute all.
    """
    BG_EVERY = 10
    COMPONENTS = ("fused", "all")

    def __init__(self, model, stats: Mapping, lambdas: Mapping, frame_size, spec: ClipSpec = ClipSpec(),
                 device="cpu", batch_size: int = 64, background: tuple | None = None, components: str = "fused"):
        if components not in self.COMPONENTS:
            raise ValueError(f"OnlineScorer: components must be one of {self.COMPONENTS}, got {components!r}")
        self.model, self.stats, self.lambdas = model, stats, dict(lambdas)
        self.components = components
        self._wanted = (scoring.needed_components(self.lambdas, stats)
                        if components == "fused" and _takes_components(model) else None)
        self._background = background
        self._bg_samples: list = [] if background is None else None
        self.frame_size = tuple(int(v) for v in frame_size)
        self.spec, self.device, self.batch_size = spec, device, int(batch_size)
        self._tracks: dict[int, _Track] = {}
        self._images: dict[int, np.ndarray] = {}  # recent frames, for gap-filled crops and scenes
        self._people: dict[int, tuple] = {}       # recent frames' detections (ids, kps): others_mask
        self._pending: dict[int, dict] = {}  # frame -> {person: (score, components)}
        self._next_emit = None
        self._last = None

    @property
    def latency(self) -> int:
        return self.spec.latency

    def _add_frames(self, frame: int, rows: list, windows: list) -> None:
        """Append ``frame`` to the tracks of ``rows`` [(order, track, id, keypoints (17, 3))], the crops
        and foreground maps of all rows cut in one call each (each row's crop on its own, as
        offline_batches cuts them); ``windows`` gets (order, frame, window) of each track whose
        window is complete."""
        kps = np.stack([k for _, _, _, k in rows])
        boxes = person_boxes(coco17_to_openpose18(kps), self.spec.box_expand, self.spec.box_min_conf)
        crops = crop_squares(self._images[frame], boxes, self.spec.crop_size)
        bg, tau = self._background
        ids, people = self._people[frame]
        others = foreground.others_mask(boxes, np.array([pid for _, _, pid, _ in rows]), ids, people,
                                        self.spec.crop_size, self.spec.box_min_conf)
        fg = foreground.occupancy(crops, crop_squares(bg, boxes, self.spec.crop_size), tau, exclude=others)
        for (order, tr, pid, k), crop, occ in zip(rows, crops, fg):
            tr.frames.append(frame)
            tr.kps.append(k)
            tr.crops.append(crop)
            tr.fg.append(occ)
            tr.length += 1
            if tr.length >= self.spec.seg_len:
                windows.append((order, frame, (pid, np.stack(tr.kps), np.stack(tr.crops), tr.frames[0],
                                               np.stack(tr.fg))))

    def _update_background(self, frame: int, image: np.ndarray) -> None:
        """The running background estimate (no background given): every BG_EVERY-th frame joins
        the sample until it holds foreground.BG_FRAMES frames."""
        if self._bg_samples is None or len(self._bg_samples) >= foreground.BG_FRAMES:
            return
        if not self._bg_samples or frame % self.BG_EVERY == 0:
            self._bg_samples.append(image)
            self._background = foreground.video_background(np.stack(self._bg_samples))

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
        self._people[frame] = _people(poses)
        self._update_background(frame, self._images[frame])
        T, gap = self.spec.seg_len, self.spec.max_gap
        pids = [int(p) for p in poses]
        kps = [np.asarray(poses[p], dtype=np.float32) for p in poses]
        tracks = [self._tracks.setdefault(p, _Track(T)) for p in pids]
        for tr in tracks:
            if tr.length and frame - tr.frames[-1] - 1 > gap:
                tr.reset()
        if pids:
            self._split_jumps(frame, tracks, kps)
        # the frames each track gains: a short gap linearly interpolated, then this frame
        adds: dict[int, list] = {}
        for order, (pid, k, tr) in enumerate(zip(pids, kps, tracks)):
            if tr.length:
                lf, lk = tr.frames[-1], tr.kps[-1]
                for f in range(lf + 1, frame):
                    adds.setdefault(f, []).append((order, tr, pid, _lerp(lk, k, lf, frame, f)))
            adds.setdefault(frame, []).append((order, tr, pid, k))
        windows: list = []
        for f in sorted(adds):
            self._add_frames(f, adds[f], windows)
        # the completed windows by person (in the order of ``poses``), then frame
        self._score([w for _, _, w in sorted(windows, key=lambda w: w[:2])])
        # forget what no future window can need: old frames, and tracks that can only restart
        for f in [f for f in self._images if f < frame - T - gap]:
            del self._images[f]
            self._people.pop(f, None)
        for pid in [p for p, tr in self._tracks.items() if not tr.length or frame - tr.frames[-1] - 1 > gap]:
            del self._tracks[pid]
        return self._emit(upto=frame - self.latency)

    def _split_jumps(self, frame: int, tracks: list, kps: list) -> None:
        """Reset the tracks whose person box jumps from their last detection to ``kps`` by more
        than max_jump body sizes per frame (split_track's rule, an identity switch); every track
        keeps this detection's box for the next frame's test."""
        boxes = jump_boxes(np.stack(kps), self.spec.box_min_conf)
        if self.spec.max_jump > 0:
            live = [i for i, tr in enumerate(tracks) if tr.length]
            if live:
                steps = box_steps(np.stack([tracks[i].jump_box for i in live]), boxes[live],
                                  np.array([frame - tracks[i].frames[-1] for i in live]))
                for i, step in zip(live, steps):
                    if step > self.spec.max_jump:
                        tracks[i].reset()
        for tr, box in zip(tracks, boxes):
            tr.jump_box = box

    def flush(self) -> list[FrameScore]:
        """End of stream: every remaining frame is final."""
        return [] if self._last is None else self._emit(upto=self._last)

    def _score(self, windows: list):
        c = self.spec.centre
        for i in range(0, len(windows), self.batch_size):
            chunk = windows[i:i + self.batch_size]
            scenes = scene_images(np.stack([self._images[w[3] + c] for w in chunk]), self.spec.scene_size)
            batch = clip_batch(np.stack([w[1] for w in chunk]), np.stack([w[2] for w in chunk]), scenes,
                               self.frame_size, [w[0] for w in chunk], [w[3] for w in chunk], self.spec,
                               fg=np.stack([w[4] for w in chunk]))
            fused = fused_scores(score_batch(self.model, batch, self.device, components=self._wanted),
                                 self.stats, self.lambdas)
            for j, (pid, _, _, start, _) in enumerate(chunk):
                comps = {k: float(fused[k][j]) for k in SCORE_KEYS}
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


def _takes_components(model) -> bool:
    """Whether ``model.scores`` computes a subset of the components on request (MGNet.scores)."""
    import inspect
    fn = getattr(type(model), "scores", None)
    try:
        return fn is not None and "components" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _people(poses: Mapping[int, np.ndarray]) -> tuple:
    """(ids (m,) int64, kps (m, 17, 3) float32) of one frame's detections ``{track id: keypoints}``."""
    ids = sorted(int(p) for p in poses)
    if not ids:
        return NOBODY
    return np.array(ids, np.int64), np.stack([np.asarray(poses[p], np.float32) for p in ids])


def _lerp(k0: np.ndarray, k1: np.ndarray, f0: int, f1: int, f: int) -> np.ndarray:
    """np.interp's value at ``f`` between (f0, k0) and (f1, k1), as split_track computes it."""
    flat0, flat1 = k0.reshape(-1), k1.reshape(-1)
    out = np.empty_like(flat0)
    for c in range(flat0.size):
        out[c] = np.interp(f, [f0, f1], [flat0[c], flat1[c]])
    return out.reshape(k0.shape)


def _poses_by_frame(tracks) -> dict:
    """``{frame: {track id: (17, 3) keypoints}}`` from load_poses' ``{track id: (frames, keypoints)}``."""
    by_frame: dict[int, dict] = {}
    for pid, (fr, kp) in tracks.items():
        for f, k in zip(fr.tolist(), kp):
            by_frame.setdefault(f, {})[pid] = k
    return by_frame


def _replay(scorer: OnlineScorer, src, tracks) -> Iterator[FrameScore]:
    """Push every frame of ``src`` with its poses through ``scorer``; the FrameScores as they become final."""
    by_frame = _poses_by_frame(tracks)
    for start, chunk in src.iter_chunks(16):
        for i, image in enumerate(chunk):
            yield from scorer.push(start + i, image, by_frame.get(start + i, {}))
    yield from scorer.flush()


def iter_scores(video, poses, run_dir, pose_format: str = "auto", device="cpu",
                batch_size: int = 64, components: str = "fused") -> Iterator[FrameScore]:
    """Score a video file (or frame folder) with its pose file online, yielding FrameScores in frame
    order as they become final (``latency`` frames after each frame is read); ``components`` as
    OnlineScorer's."""
    stats = load_score_stats(run_dir)
    model, cfg = load_run(run_dir, device=device)
    spec = ClipSpec.from_config(cfg)
    lambdas = scoring.fusion_lambdas(cfg.model)
    src = open_frames(video)
    tracks = load_poses(poses, pose_format)
    check_frame_range(tracks, len(src), poses, video)
    # a recorded video: its background from the whole file, as offline scoring (and training) use
    scorer = OnlineScorer(model, stats, lambdas, src.size, spec, device, batch_size,
                          background=foreground.source_background(src), components=components)
    yield from _replay(scorer, src, tracks)


# ----------------------------------------------------------------------------- offline
@dataclass
class VideoScores:
    """Per-frame results of one video. Arrays are (num_frames,), NaN where nobody is scored."""
    score: np.ndarray
    components: dict  # name -> (N,): mo/app/mm training-normalised, nll raw, of the top person
    persons: dict  # track id -> (N,) fused score of that person's clip centred at the frame
    person_components: dict  # track id -> {name: (N,)}
    score_minmax: Optional[np.ndarray] = None  # offline only: the eval protocol's curve
    seconds: float = 0.0  # wall time of scoring (decode + crops + model)


def _per_frame(n: int, centres, pids, fused: dict) -> VideoScores:
    """Max over persons per centre frame (ties: lowest id, as OnlineScorer), NaN elsewhere."""
    score = np.full(n, np.nan)
    top = np.full(n, -1, np.int64)
    comps = {k: np.full(n, np.nan) for k in SCORE_KEYS}
    persons, pcomps = {}, {}
    for j in range(len(centres)):
        c, p, s = int(centres[j]), int(pids[j]), float(fused["score"][j])
        persons.setdefault(p, np.full(n, np.nan))[c] = s
        pc = pcomps.setdefault(p, {k: np.full(n, np.nan) for k in comps})
        for k in comps:
            pc[k][c] = fused[k][j]
        if math.isnan(score[c]) or s > score[c] or (s == score[c] and p < top[c]):
            score[c], top[c] = s, p
            for k in comps:
                comps[k][c] = fused[k][j]
    return VideoScores(score, comps, dict(sorted(persons.items())), dict(sorted(pcomps.items())))


def offline_batches(src, tracks, spec: ClipSpec, batch_size: int = 64, progress: bool = False):
    """Every window of every track (stride 1, gaps <= max_gap interpolated, as mgnet.data.prepare
    cuts them) as model batches in the ClipStore layout; the video is decoded once."""

    T, c = spec.seg_len, spec.centre
    segs = []
    for pid, (fr, kp) in tracks.items():
        segs += [s for s in split_track(Track(pid, fr, kp, kp[:, :, 2].mean(1)), spec.max_gap, spec.max_jump,
                                         spec.box_min_conf) if len(s) >= T]
    # which (segment, row) needs a crop at each frame, and which frames are window centres
    need: dict[int, list] = {}
    centres = set()
    for si, s in enumerate(segs):
        for r, f in enumerate(s.frames.tolist()):
            need.setdefault(f, []).append((si, r))
        centres.update((s.frames[window_starts(len(s), T, 1)] + c).tolist())
    crops = [np.zeros((len(s), 3, spec.crop_size, spec.crop_size), np.uint8) for s in segs]
    fgs = [np.zeros((len(s), foreground.GRID, foreground.GRID), np.uint8) for s in segs]
    bg, tau = foreground.source_background(src) if need else (None, 0.0)
    frame_people = people_by_frame(Track(pid, fr, kp, kp[:, :, 2].mean(1)) for pid, (fr, kp) in tracks.items())
    scenes = {}
    for start, chunk in src.iter_chunks(64):
        for i, image in enumerate(chunk):
            f = start + i
            if f in need:
                rows = need[f]
                # boxes from the 18 OpenPose joints, as mgnet.data.prepare computes them for training
                boxes = person_boxes(coco17_to_openpose18(np.stack([segs[si].kps[r] for si, r in rows])),
                                     spec.box_expand, spec.box_min_conf)
                cut = crop_squares(image, boxes, spec.crop_size)
                ids, people = frame_people.get(f, NOBODY)
                others = foreground.others_mask(boxes, np.array([segs[si].person for si, _ in rows]), ids, people,
                                                spec.crop_size, spec.box_min_conf)
                occ = foreground.occupancy(cut, crop_squares(bg, boxes, spec.crop_size), tau, exclude=others)
                for (si, r), crop, o in zip(rows, cut, occ):
                    crops[si][r] = crop
                    fgs[si][r] = o
            if f in centres:
                scenes[f] = scene_images(image[None], spec.scene_size)[0]
    wins = [(si, int(st)) for si, s in enumerate(segs) for st in window_starts(len(s), T, 1)]
    it = range(0, len(wins), batch_size)
    if progress:
        it = tqdm(it, desc="scoring clips", unit="batch", file=sys.stderr, dynamic_ncols=True)
    for b in it:
        chunk = wins[b:b + batch_size]
        yield clip_batch(np.stack([segs[si].kps[st:st + T] for si, st in chunk]),
                         np.stack([crops[si][st:st + T] for si, st in chunk]),
                         np.stack([scenes[int(segs[si].frames[st]) + c] for si, st in chunk]),
                         src.size, [segs[si].person for si, _ in chunk],
                         [int(segs[si].frames[st]) for si, st in chunk], spec,
                         fg=np.stack([fgs[si][st:st + T] for si, st in chunk]))


def score_offline(model, src, tracks, spec: ClipSpec, stats, lambdas, sigma: float = 0.0,
                  batch_size: int = 64, device="cpu", progress: bool = False) -> VideoScores:
    """Every window scored in batches; per-frame curves (training-normalised, and the eval
    protocol's per-video min-max curve smoothed by ``sigma``)."""
    t0 = time.perf_counter()
    n = len(src)
    raw = {k: [] for k in SCORE_KEYS}
    pids, centre_frames = [], []
    for batch in offline_batches(src, tracks, spec, batch_size, progress):
        for k, v in score_batch(model, batch, device).items():
            raw.setdefault(k, []).append(v)
        pids.append(batch["person"].numpy())
        centre_frames.append(batch["frame"].numpy())
        faults.point("score.batch")
    raw = {k: np.concatenate(v) if v else np.zeros(0) for k, v in raw.items()}
    pids = np.concatenate(pids) if pids else np.zeros(0, np.int64)
    centre_frames = np.concatenate(centre_frames) if centre_frames else np.zeros(0, np.int64)
    out = _per_frame(n, centre_frames, pids, fused_scores(raw, stats, lambdas))
    if len(pids):
        out.score_minmax = scoring.frame_scores(scoring.fuse(raw, lambdas), np.zeros(len(pids), np.int64),
                                                centre_frames, pids, {"v": n}, sigma, names=["v"])["v"]
    else:
        out.score_minmax = np.full(n, np.nan)
    out.seconds = time.perf_counter() - t0
    return out


def score_online(model, src, tracks, spec: ClipSpec, stats, lambdas, batch_size: int = 64, device="cpu",
                 on_frame=None, components: str = "fused") -> VideoScores:
    """The video replayed frame by frame through OnlineScorer; ``on_frame(FrameScore)`` is called as
    each frame becomes final; ``components`` as OnlineScorer's (the others' curves are NaN)."""
    t0 = time.perf_counter()
    n = len(src)
    results = []
    scorer = OnlineScorer(model, stats, lambdas, src.size, spec, device, batch_size,
                          background=foreground.source_background(src), components=components)
    for fs in _replay(scorer, src, tracks):
        results.append(fs)
        if on_frame is not None:
            on_frame(fs)
    secs = time.perf_counter() - t0
    score = np.full(n, np.nan)
    comps = {k: np.full(n, np.nan) for k in SCORE_KEYS}
    persons: dict = {}
    for fs in results:
        score[fs.frame] = fs.score
        for k, v in fs.components.items():
            comps[k][fs.frame] = v
        for p, v in fs.persons.items():
            persons.setdefault(p, np.full(n, np.nan))[fs.frame] = v
    out = VideoScores(score, comps, dict(sorted(persons.items())), {}, None, secs)
    return out


# ----------------------------------------------------------------------------- inputs
def find_pose_file(poses_dir: Path, name: str) -> Path:
    found = [poses_dir / p.format(name) for p in POSE_PATTERNS if (poses_dir / p.format(name)).exists()]
    if not found:
        raise ValueError(f"{poses_dir}: no poses for video {name!r} (looked for "
                         + ", ".join(p.format(name) for p in POSE_PATTERNS) + ")")
    if len(found) > 1:
        raise ValueError(f"{poses_dir}: several pose files for video {name!r}: {', '.join(p.name for p in found)}")
    return found[0]


def video_inputs(video: Path, poses: Path | None) -> list[tuple[Path, Path | None]]:
    """(video, pose file) pairs: the one given, or every video of a folder with its pose file
    (None for every video when ``poses`` is None: they are estimated from the video)."""
    if not video.exists():
        raise ValueError(f"{video}: video file or folder does not exist")
    if poses is not None and not poses.exists():
        raise ValueError(f"{poses}: pose file or folder does not exist")
    if video.is_dir() and not any(p.suffix.lower() in IMAGE_EXTS for p in video.iterdir()):
        vids = sorted(p for p in video.iterdir() if p.suffix.lower() in VIDEO_EXTS)
        if not vids:
            raise ValueError(f"{video}: folder holds neither videos ({', '.join(VIDEO_EXTS)}) nor frame images")
        if poses is not None and not poses.is_dir():
            raise ValueError(f"{poses}: with a folder of videos, --poses must be a folder of pose files")
        return [(v, find_pose_file(poses, v.stem) if poses is not None else None) for v in vids]
    return [(video, poses)]


def open_video_inputs(video: Path, poses: Path | None, pose_format: str = "auto", extract=None) -> list:
    """Every input of `mgnet score`, opened and checked before anything is scored:
    ``[(video path, pose path, frame source, tracks, output name)]``. Without ``poses``,
    ``extract(video path, output name, frame source) -> pose path`` estimates them
    (mgnet.data.pose_estimation.jobs.extracted_poses)."""
    inputs = []
    for vpath, ppath in video_inputs(video, poses):
        src = open_frames(vpath)
        if ppath is None:
            ppath = extract(vpath, vpath.stem if vpath.is_file() else vpath.name, src)
        tracks = load_poses(ppath, pose_format)
        check_frame_range(tracks, len(src), ppath, vpath)
        inputs.append((vpath, ppath, src, tracks, vpath.stem if vpath.is_file() else vpath.name))
    names = [i[-1] for i in inputs]
    if len(set(names)) != len(names):
        raise ValueError(f"{video}: two inputs share the output name (video names must differ)")
    return inputs


def choose_threshold(spec: str, model, cfg, stats, lambdas, device, batch_size: int) -> tuple[float, str]:
    """The event threshold of `mgnet score --threshold` and where it came from: ``best-f1`` (on the
    run's labelled test split), a percentile of the training-set fused scores (``p99``) or a number."""
    if str(spec).lower() == "best-f1":
        threshold, f1 = best_f1_on_test_split(model, cfg, stats, lambdas, device, batch_size)
        return threshold, f"best F1 {f1:.3f} on the run's test split"
    threshold = resolve_threshold(spec, stats)
    return threshold, (f"{spec} of training-set fused scores" if str(spec).lower().startswith("p") else "given")


def best_f1_on_test_split(model, cfg, stats, lambdas, device, batch_size) -> tuple[float, float]:
    """Best-F1 threshold of the training-normalised fused frame score on the run's labelled test split
    (frames nobody is scored at count as below any threshold)."""
    ctx = Dist(str(device))
    try:
        store = open_split(cfg.data, "test", ctx)
        clip = score_clips(model, store, batch_size, ctx, amp=False, desc="test split (best-F1)")
    finally:
        ctx.close()
    fused = fused_scores(clip, stats, lambdas)["score"]
    ys, ss = [], []
    for vi, name in enumerate(store.videos):
        gt = store.gt(name)
        if gt is None:
            continue
        sel = np.asarray(clip["video"]) == vi
        curve = np.full(len(gt), -np.inf)
        np.maximum.at(curve, np.asarray(clip["frame"][sel], np.int64), fused[sel])
        ys.append(np.asarray(gt))
        ss.append(curve)
    if not ys:
        raise ValueError("--threshold best-f1: the run's test split has no ground truth")
    thr, f1 = best_f1_threshold(np.concatenate(ss), np.concatenate(ys))
    return thr, f1
