"""Memories: behavior / scene Memory (eq. 7 read, eq. 11 separateness), the pose memory that
gives the BSMM its behavior query, the appearance memory behind S_app, and the Behavior-Scene
Matching Memory (eqs. 8-10, 15).

All addressing goes through ``mgnet.ops.memory_address`` (cosine similarity, softmax over slots,
read = weights @ slots, and the two nearest slots).

Separateness (eq. 11), MNAD style: on L2-normalised query q and slots, with m1 / m2 the
nearest and second-nearest slots, [ ||q - m1|| - ||q - m2|| + margin ]_+, averaged over the
queries (the paper sums over P; the mean keeps beta independent of the token count).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


def separateness_loss(q: torch.Tensor, slots: torch.Tensor, top2: torch.Tensor,
                      margin: float = 1.0) -> torch.Tensor:
    """eq. (11): mean over queries of [||q - m_1st|| - ||q - m_2nd|| + margin]_+ (unit vectors)."""
    qn, mn = F.normalize(q, dim=1), F.normalize(slots, dim=1)
    d = lambda a, b: (a - b).pow(2).sum(1).clamp_min(1e-12).sqrt()  # noqa: E731  (finite grad at 0)
    return F.relu(d(qn, mn[top2[:, 0]]) - d(qn, mn[top2[:, 1]]) + margin).mean()


def sharpen(w: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(cos / tau) from softmax(cos) (what memory_address returns): softmax(log(w) / tau).
    With tau = 1 (the paper) a cosine in [-1, 1] gives nearly uniform weights over the slots."""
    if temperature == 1.0:
        return w
    return torch.softmax(torch.log(w.clamp_min(1e-30)) / temperature, dim=1)


class Memory(nn.Module):
    """Learnable slots (S, C) read by cosine addressing. forward(q (N, C)) -> (weights (N, S),
    read (N, C), top2 (N, 2)); ``separateness(q, top2)`` is eq. (11)."""

    def __init__(self, slots: int, dim: int, margin: float = 1.0, temperature: float = 1.0):
        super().__init__()
        self.margin = margin
        self.temperature = float(temperature)
        self.slots = nn.Parameter(F.normalize(torch.randn(slots, dim), dim=1))

    def forward(self, q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        slots = self.slots.to(q.dtype)
        w, read, top2 = ops.memory_address(q, slots)                      # eq. (7)
        if self.temperature != 1.0:
            # with tau = 1 every read is close to the mean slot and W_b / f_b carry almost
            # nothing of the query
            w = sharpen(w, self.temperature)
            read = w @ slots
        return w, read, top2

    def separateness(self, q: torch.Tensor, top2: torch.Tensor) -> torch.Tensor:
        return separateness_loss(q, self.slots.to(q.dtype), top2, self.margin)   # eq. (11)


def farthest_points(x: torch.Tensor, k: int, start: int = 0, spherical: bool = True) -> torch.Tensor:
    """Indices of k rows of x chosen greedily from `start`, each the one farthest from those already
    chosen (k-means++ without the randomness): by cosine for unit-norm rows (spherical), else by
    Euclidean distance. Stops early when every remaining row duplicates a chosen one."""
    if spherical:
        sim, same = (lambda i: x @ x[i]), 1.0 - 1e-6
    else:
        sim, same = (lambda i: -(x - x[i]).pow(2).sum(1)), -1e-12
    idx = [start]
    best = sim(start)                      # similarity of every row to its nearest chosen row
    for _ in range(min(k, x.shape[0]) - 1):
        i = int(best.argmin())
        if best[i] > same:
            break
        idx.append(i)
        best = torch.maximum(best, sim(i))
    return torch.tensor(idx, dtype=torch.long, device=x.device)


class _Written(nn.Module):
    """A memory written in stage 4: a ``filled`` buffer (slots in use) and its host mirror, so
    reads need no device sync (and no graph break under torch.compile)."""

    def _init_filled(self):
        self.register_buffer("filled", torch.tensor(0, dtype=torch.long))
        self._filled = 0

    def _set_filled(self, n: int) -> None:
        self.filled.fill_(n)
        self._filled = int(n)

    @property
    def is_fitted(self) -> bool:
        return self._filled > 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._filled = int(self.filled)

    def _write_slots(self, c: torch.Tensor) -> None:
        self.slots.zero_()
        self.slots[:c.shape[0]] = c
        self._set_filled(c.shape[0])


def _rows(x: torch.Tensor, width: int, dtype, cap: int, seed: int, what: str) -> torch.Tensor:
    """x as (N, width) rows of `dtype`, a seeded random subset of `cap` rows if N > cap; `what`
    names the caller in the error for an empty input."""
    x = x.reshape(-1, width).to(dtype)
    if x.shape[0] == 0:
        raise ValueError(f"{what}: no rows")
    if x.shape[0] > cap:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(x.shape[0], generator=g)[:cap].to(x.device)]
    return x


def _kmeans_once(x: torch.Tensor, k: int, iters: int, spherical: bool, start: int) -> torch.Tensor:
    c = x[farthest_points(x, k, start, spherical)]
    for _ in range(iters):
        a = (x @ c.T).argmax(1) if spherical else torch.cdist(x, c).argmin(1)
        s = torch.zeros_like(c).index_add_(0, a, x)
        n = torch.bincount(a, minlength=c.shape[0])
        upd = F.normalize(s, dim=1) if spherical else s / n.clamp_min(1)[:, None].to(s.dtype)
        c = torch.where((n > 0)[:, None], upd, c)          # an empty cluster keeps its seed
    return c


def _inertia(x: torch.Tensor, c: torch.Tensor, spherical: bool) -> float:
    if spherical:
        return float((1 - (x @ c.T).max(1).values).sum())
    return float(torch.cdist(x, c).min(1).values.pow(2).sum())


def kmeans(x: torch.Tensor, k: int, iters: int = 25, spherical: bool = False, restarts: int = 8,
           seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means of the rows of x (N, C); returns (<= k, C) centroids.

    Each of `restarts` runs seeds the centroids by farthest points from a different first row (the
    row nearest the mean, then seeded random rows); the run with the lowest inertia wins (one
    unlucky seeding of the pose memory cost S_mm 0.07 scene AUC on the synthetic benchmark).
    spherical: unit rows, assignment by cosine, unit-norm centroids."""
    if x.shape[0] == 0:
        raise ValueError("kmeans: no rows")
    g = torch.Generator().manual_seed(seed)
    starts = [int((x - x.mean(0)).pow(2).sum(1).argmin())]
    starts += torch.randint(0, x.shape[0], (max(0, restarts - 1),), generator=g).tolist()
    best = None
    for st in starts:
        c = _kmeans_once(x, k, iters, spherical, st)
        e = _inertia(x, c, spherical)
        if best is None or e < best[0]:
            best = (e, c)
    return best[1]


class PoseMemory(_Written):
    """M^p: N_p prototype poses, the behavior query of the BSMM (``bsmm_behavior="pose"``).

    A frame's pose (2 x V normalised coordinates, as STG-NF sees them) minus the mean training
    pose, L2-normalised, addresses the slots like eq. (7) (cosine, softmax with temperature tau);
    a clip's W_b is the mean of its frames' weights, (B, N_p): how much of the clip is spent in
    each prototype pose. Written, not trained: stage 4 fits mean and slots with spherical k-means
    (farthest-point seeds, Lloyd iterations) over the training frames (``fit``).

    Why not the paper's W_b (e_b's addressing of the behavior memory, P x N_b)? Its per-cube
    weights mostly encode the crop's background, i.e. the scene, and the RGB encoder is trained to
    regress the flow's Gaussianised latent, which by design has no cluster structure per behavior;
    on the synthetic benchmark S_mm from it reaches 0.64 frame AUC on scene anomalies, from
    prototype poses 0.99 (README, "Method notes").
    """

    def __init__(self, slots: int, joints: int, temperature: float = 0.05):
        super().__init__()
        self.temperature = float(temperature)
        self.register_buffer("mean", torch.zeros(2 * joints))
        self.register_buffer("slots", torch.zeros(slots, 2 * joints))
        self._init_filled()

    @staticmethod
    def frames(pose: torch.Tensor) -> torch.Tensor:
        """(B, 2, T, V) -> (B, T, 2V): one row of coordinates per frame."""
        # permute a copy: a view of an input taken under inference_mode breaks an inductor compile
        return pose.clone().permute(0, 2, 1, 3).flatten(2)

    def _queries(self, frames: torch.Tensor) -> torch.Tensor:
        return F.normalize(frames.to(self.mean.dtype) - self.mean, dim=-1)

    @torch.no_grad()
    def fit(self, frames: torch.Tensor, iters: int = 25, max_frames: int = 200_000, seed: int = 0) -> None:
        """Spherical k-means over frames (N, 2V) (a seeded subset of max_frames rows if larger)."""
        frames = _rows(frames, self.mean.shape[0], self.mean.dtype, max_frames, seed, "PoseMemory.fit (frames)")
        self.mean.copy_(frames.mean(0))
        self._write_slots(kmeans(self._queries(frames), self.slots.shape[0], iters, spherical=True))

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """W_b (B, N_p) of poses (B, 2, T, V): mean over frames of softmax(cos / tau) (eq. 7)."""
        return self.weights(self.frames(pose))

    def weights(self, f: torch.Tensor) -> torch.Tensor:
        """W_b (B, N_p) of frames (B, T, 2V)."""
        if not self.is_fitted:
            raise RuntimeError("the pose memory is empty: stage 4 (MGNet.bsmm_write + bsmm_finish) fits it")
        B, T, C = f.shape
        n = self.slots.shape[0]
        m = self.slots if self._filled == n else self.slots.clone()[:self._filled]
        w, _, _ = ops.memory_address(self._queries(f).reshape(B * T, C), m)
        w = sharpen(w, self.temperature).view(B, T, -1).mean(1)
        return w if self._filled == n else F.pad(w, (0, n - self._filled))   # unwritten slots weigh 0


class AppearanceMemory(_Written):
    """M^a: N_a prototype cube appearances, behind S_app (``app_target="cubes"``).

    A cube's appearance is the mean and standard deviation of each colour channel over its
    2 x 8 x 8 pixels (ImageNet-normalised), (B, P, 6). Stage 4 writes the slots with k-means over
    the training cubes (``fit``); a cube's score is its Euclidean distance to the nearest slot, and
    S_app is the mean of the largest ``topk`` fraction of a clip's cube scores (an object the size
    of a few cubes is enough). The paper's S_app compares the mask encoder with H_u(f_b) built on
    the RGB encoder's tokens; that encoder is trained to regress the pose flow, and its tokens carry
    almost no colour: on the synthetic benchmark eq. (14) reaches 0.59 frame AUC on appearance
    anomalies, nearest-neighbour search over those tokens 0.58, over these statistics 1.00
    (README, "Method notes").
    """

    def __init__(self, slots: int, grid, topk: float = 0.1, norm: str = "none"):
        from .config import CUBE
        from .encoder import IMAGENET_MEAN, IMAGENET_STD
        super().__init__()
        if norm not in ("none", "clip"):
            raise ValueError(f"AppearanceMemory norm must be 'none' or 'clip', got {norm!r}")
        self.grid, self.cube, self.topk, self.norm = tuple(grid), CUBE, float(topk), norm
        self.register_buffer("slots", torch.zeros(slots, 6))
        self._init_filled()
        # two held-out memories for the training-set statistics: fold f is fitted on the cubes of
        # the training videos whose index parity is not f (``fit(..., groups)``). Saved with the
        # stage-4 checkpoint, so a run killed while scoring the training set and resumed writes the
        # same score_stats.json as an uninterrupted one (tests/test_kill.py)
        self.register_buffer("fold_slots", torch.zeros(2, slots, 6))
        self.register_buffer("fold_filled", torch.zeros(2, dtype=torch.long))
        self._fold_filled = (0, 0)
        self.exclude_own_track = False
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._fold_filled = tuple(int(v) for v in self.fold_filled)

    def descriptors(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) uint8 (or float in [0, 1]) -> (B, P, 6) per-cube colour mean and std.

        norm="clip": both divided by the clip's mean of that channel (grey world per clip), which
        cancels a per-channel gain of the whole crop (white balance, exposure, brightness) while a
        local object that differs from the person and the background still stands out."""
        # mean and unbiased std per cube from two average pools of the raw values, normalised
        # afterwards (affine): a strided std over the cube's axes, and normalising every pixel,
        # took 17 % and 13 % of a scoring step
        x = rgb.to(self.slots.dtype)
        scale = self.std * (255.0 if rgb.dtype == torch.uint8 else 1.0)
        n = self.cube[0] * self.cube[1] * self.cube[2]
        m1 = F.avg_pool3d(x, self.cube)
        var = (F.avg_pool3d(x * x, self.cube) - m1 * m1).clamp_min(0) * (n / (n - 1))
        if self.norm == "clip":
            mu = m1.mean((2, 3, 4), keepdim=True) + (1.0 if rgb.dtype == torch.uint8 else 1.0 / 255)
            stats = torch.cat([m1 / mu, var.sqrt() / mu], 1)
        else:
            stats = torch.cat([(m1 / scale) - self.mean / self.std, var.sqrt() / scale], 1)   # (B, 6, t, h, w)
        return stats.flatten(2).transpose(1, 2)                            # cube order t, h, w

    @torch.no_grad()
    def fit(self, desc: torch.Tensor, iters: int = 25, max_cubes: int = 200_000, seed: int = 0,
            groups: Optional[torch.Tensor] = None) -> None:
        """k-means of cube descriptors (N, 6) into the slots (a seeded subset of max_cubes rows if
        larger: k-means holds an N x N_a distance matrix).

        groups (N,): the training video of each row (-1 unknown). With two parities of videos
        present, two more memories are fitted, each on the videos of one parity, so that scoring
        the training set (``exclude_own_track``) measures every clip against a memory that never
        saw its video: in-sample distances understate how far NEW normal people lie (synthetic
        small: test normal clips at z = 1.1 +- 2.0 of the in-sample statistics, -0.2 +- 1.2 of
        these held-out ones)."""
        desc = desc.reshape(-1, 6)
        self._write_slots(kmeans(_rows(desc, 6, self.slots.dtype, max_cubes, seed, "AppearanceMemory.fit (cubes)"),
                                 self.slots.shape[0], iters))
        self.fold_slots.zero_()
        self.fold_filled.zero_()
        self._fold_filled = (0, 0)
        if groups is None:
            return
        groups = groups.reshape(-1).to(desc.device)
        known = groups >= 0
        par = groups % 2
        if not (bool((known & (par == 0)).any()) and bool((known & (par == 1)).any())):
            return
        for f in (0, 1):
            c = kmeans(_rows(desc[known & (par != f)], 6, self.slots.dtype, max_cubes, seed, "AppearanceMemory.fit"),
                       self.slots.shape[0], iters)
            self.fold_slots[f, :c.shape[0]] = c
            self.fold_filled[f] = c.shape[0]
        self._fold_filled = tuple(int(v) for v in self.fold_filled)

    def distances(self, desc: torch.Tensor, slots: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, P, 6) -> (B, P): distance of each cube to the nearest slot (of ``slots`` if given)."""
        if not self.is_fitted:
            raise RuntimeError("the appearance memory is empty: stage 4 (MGNet.bsmm_write + bsmm_finish) fits it")
        B, P, C = desc.shape
        m = self.slots.clone()[:self._filled] if slots is None else slots   # a copy: see BehaviorSceneMatching.read
        d2 = (desc.reshape(B * P, C).pow(2).sum(1, keepdim=True) - 2 * desc.reshape(B * P, C) @ m.T
              + m.pow(2).sum(1)[None])
        return d2.min(1).values.clamp_min(0).sqrt().view(B, P)

    def forward(self, rgb: torch.Tensor, video: Optional[torch.Tensor] = None) -> torch.Tensor:
        """S_app (B,): mean of the largest topk fraction of the cube distances. With
        ``exclude_own_track`` and the clips' training ``video`` (B,) given, each clip is measured
        against the held-out memory of its video's parity (when ``fit`` made them)."""
        desc = self.descriptors(rgb)
        if self.exclude_own_track and video is not None and min(self._fold_filled) > 0:
            par = (video.to(desc.device) % 2).clamp_min(0)
            d = torch.empty(desc.shape[:2], dtype=desc.dtype, device=desc.device)
            for f in (0, 1):
                sel = par == f
                if bool(sel.any()):
                    d[sel] = self.distances(desc[sel], self.fold_slots[f, :self._fold_filled[f]].clone())
        else:
            d = self.distances(desc)
        k = max(1, round(self.topk * d.shape[1]))
        return d.topk(k, dim=1).values.mean(1)


def asymmetric_sq_distance(diff: torch.Tensor, missing_weight: float) -> torch.Tensor:
    """Squared distance over the last axis of ``diff`` = q - m: |max(diff, 0)|^2 + w |max(-diff, 0)|^2
    (SegmentMemory's ``missing_weight`` w; w = 1 is the squared Euclidean distance)."""
    if missing_weight == 1.0:
        return diff.pow(2).sum(-1)
    return diff.clamp_min(0).pow(2).sum(-1) + missing_weight * diff.clamp_max(0).pow(2).sum(-1)


class SegmentMemory(_Written):
    """M^seg: normal pose segments, behind S_pose (``model.n_seg`` > 0): a clip's score is the mean
    Euclidean distance of its pose segment to the ``k`` nearest normal training segments.

    A segment is the clip's (2, T, V) coordinates as STG-NF sees them (``normalize_pose``: minus the
    segment's mean, over the std of its y), flattened: translation within the segment, i.e. speed
    relative to body size, and every limb's trajectory are kept. Stage 4 writes a seeded random
    subset of at most ``n_seg`` training segments (``fit``), with the track (video, person) each
    came from, so that scoring the training set (``leave_own_track_out``) can skip the segments of
    the clip's own track: otherwise every training clip would find itself (and its overlapping
    neighbours) at distance ~0, and statistics of training scores (what fusion normalises with)
    would not describe new normal clips.

    Scenes (``by_scene``, ``model.seg_scene``): each kept segment also records the scene of its
    training video, and the memory keeps one view descriptor per training video (``fit_views``:
    the mean ``view_descriptor`` of its clips' scene images). A clip is placed in the scene of the
    training video whose view it matches best (``scene_of``: nearest view by cosine; no label is
    needed when scoring), and with ``by_scene`` its distance is taken to that scene's segments
    only: a behavior normal in another scene but never seen in this one (sitting on a plaza
    where people only walk) is then as far from the memory as an unseen motion, which is the
    paper's definition of a scene-related anomaly (sec. 3.4) in the pose space.

    Asymmetric distance (``missing_weight`` w < 1; S_app's occupancy maps, ``model.fg_missing_weight``):
    d(q, m)^2 = |max(q - m, 0)|^2 + w |max(m - q, 0)|^2, so what the clip has and the normal map
    lacks (a carried or pushed object) counts fully, and what the normal map has and the clip lacks
    (a person half hidden behind a post, cut by the frame edge, or detected a little off) counts w.
    The nearest slot is searched among the ``ASYM_CANDIDATES`` Euclidean-nearest ones (the
    expansion below), then re-ranked by d: within 0.001 frame AUC of an exhaustive search on the
    protocol's cells, for about 20 % more than the Euclidean search with its 5 candidates (README,
    "Validation protocol").

    Why a memory beside STG-NF: the flow's NLL rates how typical the Gaussianised latent is, and
    a flow trained for a few hundred steps on a few thousand segments gives running or flailing
    segments likelihoods close to normal ones; the distance to the nearest normal segment does not
    depend on training and separates what the poses plainly show (README, "Method notes").
    """

    MAX_VIEWS = 1024     # training videos whose view is kept (a seeded subset beyond that)
    ASYM_CANDIDATES = 64  # missing_weight < 1: Euclidean-nearest slots re-ranked by the asymmetric distance

    def __init__(self, slots: int, dim: int, k: int = 1, by_scene: bool = False, missing_weight: float = 1.0):
        super().__init__()
        self.k = int(k)
        if not 0.0 <= float(missing_weight) <= 1.0:
            raise ValueError(f"SegmentMemory: missing_weight must be in [0, 1], got {missing_weight}")
        self.missing_weight = float(missing_weight)
        self.register_buffer("slots", torch.zeros(slots, dim))
        self.register_buffer("track", torch.full((slots,), -1, dtype=torch.long))
        self.register_buffer("scene", torch.full((slots,), -1, dtype=torch.long))
        from .scene import VIEW_DIM
        self.register_buffer("views", torch.zeros(self.MAX_VIEWS, VIEW_DIM))
        self.register_buffer("view_scene", torch.full((self.MAX_VIEWS,), -1, dtype=torch.long))
        self._init_filled()
        self.exclude_own_track = False
        self.by_scene = bool(by_scene)

    @staticmethod
    def features(pose: torch.Tensor) -> torch.Tensor:
        """(B, 2, T, V) normalised poses -> (B, 2 T V) segment vectors."""
        return pose.reshape(pose.shape[0], -1)

    @staticmethod
    def track_ids(video: torch.Tensor, person: torch.Tensor) -> torch.Tensor:
        return video.long() * (1 << 32) + person.long()

    @property
    def num_views(self) -> int:
        return int((self.view_scene >= 0).sum())

    @torch.no_grad()
    def fit(self, seg: torch.Tensor, track: torch.Tensor, seed: int = 0, scene: Optional[torch.Tensor] = None) -> None:
        """Keep (a seeded random subset of ``len(slots)`` of) the segments (N, D), their track ids
        (N,) and scene codes (N,; all 0 when not given)."""
        seg = seg.reshape(seg.shape[0], -1).to(self.slots.dtype)
        if seg.shape[0] == 0:
            raise ValueError("SegmentMemory.fit: no segments")
        scene = torch.zeros_like(track) if scene is None else scene
        n = self.slots.shape[0]
        if seg.shape[0] > n:
            g = torch.Generator().manual_seed(seed)
            pick = torch.randperm(seg.shape[0], generator=g)[:n].to(seg.device)
            seg, track, scene = seg[pick], track[pick], scene[pick]
        self.track.fill_(-1)
        self.track[:seg.shape[0]] = track.to(self.track.device)
        self.scene.fill_(-1)
        self.scene[:seg.shape[0]] = scene.to(self.scene.device)
        self._write_slots(seg)

    @torch.no_grad()
    def fit_views(self, desc: torch.Tensor, video: torch.Tensor, scene: torch.Tensor, seed: int = 0) -> None:
        """One view per training video: the normalised mean of its clips' view descriptors (N, VIEW_DIM)
        grouped by ``video`` (N,), labelled with the video's scene code (``scene`` (N,))."""
        vids, inv = torch.unique(video, return_inverse=True)
        mean = torch.zeros(len(vids), desc.shape[1], dtype=torch.float64, device=desc.device)
        mean.index_add_(0, inv, desc.to(torch.float64))
        code = torch.zeros(len(vids), dtype=torch.long, device=desc.device).scatter_(0, inv, scene.long())
        if len(vids) > self.MAX_VIEWS:
            g = torch.Generator().manual_seed(seed)
            pick = torch.randperm(len(vids), generator=g)[:self.MAX_VIEWS].to(desc.device)
            mean, code = mean[pick], code[pick]
        self.views.zero_()
        self.view_scene.fill_(-1)
        self.views[:len(mean)] = F.normalize(mean, dim=1).to(self.views.dtype)
        self.view_scene[:len(code)] = code.to(self.view_scene.device)

    def scene_of(self, desc: torch.Tensor) -> torch.Tensor:
        """(B,) scene code of the training video whose view is nearest to each descriptor (B, VIEW_DIM);
        -1 when no view was written."""
        sim = desc.to(self.views.dtype) @ self.views.T                       # (B, MAX_VIEWS)
        sim = sim.masked_fill((self.view_scene < 0)[None], float("-inf"))
        return self.view_scene[sim.argmax(1)]

    def forward(self, pose: torch.Tensor, track: Optional[torch.Tensor] = None, view: Optional[torch.Tensor] = None,
                chunk: int = 8192) -> torch.Tensor:
        """S_pose (B,): mean distance to the k nearest kept segments; with ``exclude_own_track`` and
        ``track`` (B,) given, segments of the clip's own track are skipped; with ``by_scene`` and the
        clips' view descriptors ``view`` (B, VIEW_DIM), only segments of the clip's scene count. A clip
        left with fewer than k segments by these masks is measured against every segment."""
        if not self.is_fitted:
            raise RuntimeError("the segment memory is empty: stage 4 (MGNet.bsmm_write + bsmm_finish) fits it")
        q = self.features(pose).to(self.slots.dtype)
        k = min(self.k, self._filled)
        w = self.missing_weight
        # candidates by the fast (Euclidean) expansion, then exact (w < 1: asymmetric) distances
        c = min(k + 4 if w == 1.0 else max(k + 4, self.ASYM_CANDIDATES), self._filled)
        best = best_i = None
        # under torch.compile, views of buffers written under inference_mode break inductor: copy once
        slots, tracks, scenes = ((self.slots.clone(), self.track.clone(), self.scene.clone())
                                 if torch.compiler.is_compiling() else (self.slots, self.track, self.scene))
        own = self.exclude_own_track and track is not None
        q_scene = self.scene_of(view) if self.by_scene and view is not None else None
        for i in range(0, self._filled, chunk):      # running c smallest over chunks of the memory
            m = slots[i:min(i + chunk, self._filled)]
            d2 = (q.pow(2).sum(1, keepdim=True) - 2 * q @ m.T + m.pow(2).sum(1)[None]).clamp_min(0)
            if own:
                d2 = d2.masked_fill(track.to(tracks.device)[:, None] == tracks[i:i + m.shape[0]][None], float("inf"))
            if q_scene is not None:
                d2 = d2.masked_fill(q_scene[:, None] != scenes[i:i + m.shape[0]][None], float("inf"))
            idx = torch.arange(i, i + m.shape[0], device=q.device).expand(q.shape[0], -1)
            cand = d2 if best is None else torch.cat([best, d2], 1)
            cidx = idx if best_i is None else torch.cat([best_i, idx], 1)
            best, pos = cand.topk(min(c, cand.shape[1]), dim=1, largest=False)
            best_i = cidx.gather(1, pos)
        # |q - m| from the difference itself: the expansion's rounding depends on the batch's
        # matmul path, which S_pose's z-score would magnify (online scores must equal offline ones)
        diff = q[:, None, :] - slots[best_i]
        exact = asymmetric_sq_distance(diff, w).sqrt()
        exact = exact.masked_fill(~torch.isfinite(best), float("inf"))
        out = exact.topk(k, dim=1, largest=False).values.mean(1)
        if not (own or q_scene is not None):
            return out       # nothing masked, every distance finite (and no data-dependent branch: torch.export)
        lonely = ~torch.isfinite(out)      # fewer than k segments left by the masks: use every segment
        # only the masks can leave a query lonely; under torch.compile the fallback is computed
        # unconditionally (torch.where picks it) instead of a host sync that would break the graph
        if torch.compiler.is_compiling() or bool(lonely.any()):
            excl, by_scene = self.exclude_own_track, self.by_scene
            self.exclude_own_track = self.by_scene = False
            try:
                out = torch.where(lonely, self.forward(pose, None, None, chunk), out)
            finally:
                self.exclude_own_track, self.by_scene = excl, by_scene
        return out


class BehaviorSceneMatching(_Written):
    """BSMM: N_r slots of width L_b + L_s = P*N_b + N_s, holding behavior-scene patterns of the
    addressing weights (a buffer: written, never trained).

    write (stage 4, eq. 9): the first N_r queries ever written seed the slots (L2-normalised), so
    every slot starts on a real normal pattern; after that each slot i moves by the sum over the
    queries whose nearest slot is i of w[v, i] * W_r[v] (w = eq.-7 matching probability) and is
    L2-normalised. ``fit`` (all queries at once) seeds the slots by farthest points instead, so a
    rare normal pattern (a behavior normal in one scene only) gets a slot of its own. read (eq. 10):
    C_b = softmax over slots of cos(W_b, slots[:, :L_b]) / tau, C_s the same with W_s and
    slots[:, L_b:]. S_mm = ||C_b - C_s|| (eq. 15), with ``normalize`` on C_b / |C_b| and
    C_s / |C_s|: a behavior normal in several scenes spreads C_b over all their slots while C_s
    sits on one scene's, which the plain difference counts as a mismatch.
    """

    def __init__(self, slots: int, len_b: int, len_s: int, temperature: float = 1.0, normalize: bool = False):
        super().__init__()
        self.len_b, self.len_s = len_b, len_s
        self.temperature, self.normalize = float(temperature), bool(normalize)
        self.register_buffer("slots", torch.zeros(slots, len_b + len_s))
        self._init_filled()

    @property
    def num_filled(self) -> int:
        return self._filled

    def queries(self, w_b: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
        """W_r = [flatten(W_b), W_s]   # eq. (8);  w_b (B, P, N_b), w_s (B, N_s) -> (B, L_b + L_s)"""
        w_b = w_b.flatten(1)
        if w_b.shape[1] != self.len_b or w_s.dim() != 2 or w_s.shape[1] != self.len_s:
            raise ValueError(f"BSMM expects W_b with {self.len_b} entries per clip and W_s (B, {self.len_s}), "
                             f"got {tuple(w_b.shape)} and {tuple(w_s.shape)}")
        return torch.cat([w_b, w_s], 1)

    @torch.no_grad()
    def write(self, w_r: torch.Tensor) -> Optional[float]:
        """One update with queries W_r (B, L_b + L_s), eq. (9). Returns the separateness (eq. 11,
        L_sep^r) of the queries that updated slots, or None if they only seeded slots."""
        w_r = w_r.to(self.slots.dtype)
        n = self.slots.shape[0]
        take = min(n - self.num_filled, w_r.shape[0])
        if take > 0:
            f = self.num_filled
            self.slots[f:f + take] = F.normalize(w_r[:take], dim=1)
            self._set_filled(f + take)
            w_r = w_r[take:]
        if w_r.shape[0] == 0:
            return None
        weights, _, top2 = ops.memory_address(w_r, self.slots)
        nearest = top2[:, 0]
        upd = torch.zeros_like(self.slots).index_add_(0, nearest, weights.gather(1, nearest[:, None]) * w_r)
        sep = float(separateness_loss(w_r, self.slots, top2))
        self.slots.copy_(F.normalize(self.slots + upd, dim=1))        # eq. (9)
        return sep

    @torch.no_grad()
    def fit(self, w_r: torch.Tensor, batch: int = 256) -> Optional[float]:
        """Write all queries W_r (N, L_b + L_s) of the training set at once: the slots start on the
        farthest-point subset of the queries (not the first N_r), then eq. (9) updates them with
        every query, `batch` at a time in the given order. Returns the mean L_sep^r of the updates."""
        w_r = w_r.to(self.slots.dtype)
        if w_r.shape[0] == 0:
            raise ValueError("BehaviorSceneMatching.fit: no queries")
        seeds = farthest_points(F.normalize(w_r, dim=1), self.slots.shape[0])
        self.slots.zero_()
        self.slots[:len(seeds)] = F.normalize(w_r[seeds], dim=1)
        self._set_filled(len(seeds))
        seps = []
        for i in range(0, w_r.shape[0], batch):
            q = w_r[i:i + batch]
            m = self.slots[:self._filled]
            weights, _, top2 = ops.memory_address(q, m)
            if self._filled < 2:
                top2 = top2.clamp_max(0)
            nearest = top2[:, 0]
            upd = torch.zeros_like(m).index_add_(0, nearest, weights.gather(1, nearest[:, None]) * q)
            seps.append(float(separateness_loss(q, m, top2)) * q.shape[0])
            self.slots[:self._filled] = F.normalize(m + upd, dim=1)    # eq. (9)
        return sum(seps) / w_r.shape[0]

    def read(self, w_b: torch.Tensor, w_s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(C_b, C_s), each (B, filled slots)   # eq. (10). Raises if nothing was written yet."""
        if self.num_filled == 0:
            raise RuntimeError("the Behavior-Scene Matching Memory is empty: write it (stage 4, "
                               "MGNet.bsmm_write) before reading")
        w_r = self.queries(w_b, w_s).to(self.slots.dtype)
        # slice a copy: a view of a buffer taken under inference_mode breaks an inductor compile
        m = self.slots.clone()[:self.num_filled]
        c_b = ops.memory_address(w_r[:, :self.len_b].contiguous(), m[:, :self.len_b].contiguous())[0]
        c_s = ops.memory_address(w_r[:, self.len_b:].contiguous(), m[:, self.len_b:].contiguous())[0]
        return sharpen(c_b, self.temperature), sharpen(c_s, self.temperature)

    def score(self, c_b: torch.Tensor, c_s: torch.Tensor) -> torch.Tensor:
        """S_mm = ||C_b - C_s||   # eq. (15); on L2-normalised C_b, C_s with ``normalize``"""
        if self.normalize:
            c_b, c_s = F.normalize(c_b, dim=1), F.normalize(c_s, dim=1)
        return (c_b - c_s).norm(dim=1)


__all__ = ["Memory", "PoseMemory", "AppearanceMemory", "SegmentMemory", "kmeans", "BehaviorSceneMatching", "separateness_loss", "sharpen", "farthest_points"]
