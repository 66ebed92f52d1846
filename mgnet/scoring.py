"""From per-clip raw scores to per-frame anomaly scores and frame-level AUC.

The evaluation protocol is STG-NF's (Hirschorn & Avidan, ICCV 2023), which MGNet reports with:

1. each score component is normalised, then the components are combined (``fuse``). The paper's
   protocol (``norm="minmax"``, ``combine="sum"``): min-max over the evaluated set, eq. 16,
   ``S = S_mo + lambda_app * S_app + lambda_mm * S_mm``. The default (``norm="z"``): each
   component as a z-score against the NORMAL TRAINING clips' scores (mean and std in the run's
   ``score_stats.json``), so a component is measured in units of its own normal spread, not by
   the extremes of the test set, and one clip's score does not depend on the other test clips
   (offline == online). ``combine`` then takes the weighted sum, the weighted mean of the
   positive parts, or the maximum of the z-scores (``COMBINES``);
2. a clip's score goes to its centre frame, a frame takes the maximum over the persons present,
   frames with nobody take the video's minimum, and the per-video curve is smoothed with a
   Gaussian of width ``sigma`` frames (``frame_scores``);
3. micro AUC over all test frames concatenated (how ShanghaiTech and UBnormal results are
   reported) and macro AUC, the mean of per-video AUCs over videos that have both classes
   (``frame_auc``); per anomaly type, the AUC over normal frames plus the frames of that type
   (``type_auc``).

All scores are "higher = more anomalous". Everything here is numpy; torch tensors are accepted
and converted.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score

COMPONENTS = ("mo", "app", "mm")  # the three terms of eq. 16, in order
OPTIONAL_COMPONENTS = ("pose",)   # fused as well when present (model.n_seg > 0: SegmentMemory)
SCORE_KEYS = COMPONENTS + ("nll",)  # a model's raw clip scores (MGNet.scores): eq. 16's terms and STG-NF's NLL
NORMS = ("z", "minmax")           # eval.fusion: z against training scores, or min-max (eq. 16's protocol)
COMBINES = ("sum", "pos_mean", "max")
STAT_PERCENTILES = (50, 90, 95, 99)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def minmax(x, lo: Optional[float] = None, hi: Optional[float] = None) -> np.ndarray:
    """Scale ``x`` to [0, 1] by its own min and max (or by ``lo``/``hi`` when given).

    A constant input (max == min) maps to zeros rather than dividing by zero. With fixed
    ``lo``/``hi`` (online use) values outside the training range land outside [0, 1]; they are
    not clipped, so an unusually anomalous clip still ranks above everything seen in training.
    """
    x = _np(x)
    if x.size == 0:
        return x.copy()
    lo = float(np.min(x)) if lo is None else float(lo)
    hi = float(np.max(x)) if hi is None else float(hi)
    span = hi - lo
    if not np.isfinite(span) or span <= 0:
        return np.zeros_like(x)
    return (x - lo) / span


def zscore(x, mean: float, std: float) -> np.ndarray:
    """``(x - mean) / std``: a score in units of the normal training clips' spread. A component
    whose training scores are constant (std 0, e.g. a memory that was never written) maps to zeros."""
    x = _np(x)
    std = float(std)
    if not np.isfinite(std) or std <= 0:
        return np.zeros_like(x)
    return (x - float(mean)) / std


def fused_components(components: Mapping[str, object], stats: Optional[Mapping] = None) -> tuple:
    """The names fuse() combines: eq. 16's three, and every optional one present in the components
    (and in ``stats`` when given: a run whose statistics predate a component fuses without it)."""
    missing = [k for k in COMPONENTS if k not in components]
    if missing:
        raise KeyError(f"fuse: components lack {missing} (got {sorted(components)})")
    return COMPONENTS + tuple(k for k in OPTIONAL_COMPONENTS
                              if k in components and (stats is None or k in stats))


def normalize(x, name: str, norm: str = "z", stats: Optional[Mapping[str, Mapping[str, float]]] = None) -> np.ndarray:
    """One component normalised: ``norm="z"`` against ``stats[name]`` (mean, std of the training
    scores; required), ``"minmax"`` by ``stats[name]`` min/max, or over ``x`` itself without stats."""
    if norm not in NORMS:
        raise ValueError(f"fusion normalisation must be one of {NORMS}, got {norm!r}")
    if stats is not None and name not in stats:
        raise KeyError(f"fuse: stats lack component {name!r} (got {sorted(stats)})")
    if norm == "z":
        if stats is None:
            raise ValueError("z-score fusion needs the training-score statistics (score_stats.json)")
        return zscore(x, stats[name]["mean"], stats[name]["std"])
    if stats is None:
        return minmax(x)
    return minmax(x, stats[name]["min"], stats[name]["max"])


def fuse(components: Mapping[str, object], lambdas: Mapping[str, float] | Sequence[float] = (1.0, 1.0),
         stats: Optional[Mapping[str, Mapping[str, float]]] = None, norm: Optional[str] = None,
         combine: Optional[str] = None) -> np.ndarray:
    """Fused clip scores from raw components.

    components: ``{"mo": (N,), "app": (N,), "mm": (N,)[, "pose": (N,)]}`` raw clip scores (other
    keys ignored; "pose" is fused when present). A component of weight 0 counts as 0 (its value,
    NaN included, is not read: ``needed_components`` leaves it uncomputed).
    lambdas: ``{"app": .., "mm": ..[, "pose": ..]}`` (missing weights are 1) or the pair
    ``(lambda_app, lambda_mm)``.
    stats: per-component training statistics (``score_stats.json``); ``stats["fusion"]``, when
    present, gives the default ``norm`` and ``combine`` (what the run was trained with).
    norm: ``"z"`` (needs stats) or ``"minmax"`` (over the given set without stats: eq. 16's
    protocol; by the training min/max with stats). Default: ``stats["fusion"]["norm"]``, else
    ``"minmax"``.
    combine: ``"sum"`` (sum_k lambda_k n_k, eq. 16's form), ``"pos_mean"`` (sum_k lambda_k
    max(n_k, 0) / sum_k lambda_k: a component below its normal mean neither helps nor hurts),
    ``"max"`` (max_k lambda_k n_k). Default: ``stats["fusion"]["combine"]``, else ``"sum"``.
    """
    if not isinstance(lambdas, Mapping):
        lam_app, lam_mm = lambdas
        lambdas = {"app": lam_app, "mm": lam_mm}
    run_norm, run_combine = stats_fusion(stats)
    norm, combine = norm or run_norm, combine or run_combine
    if combine not in COMBINES:
        raise ValueError(f"fusion combine must be one of {COMBINES}, got {combine!r}")
    names = fused_components(components, stats)
    parts = np.stack([normalize(components[k], k, norm, stats) for k in names], -1)   # (N, K)
    weights = fusion_weights(names, lambdas)
    # a weight-0 component adds nothing, whatever its value (NaN: not computed, MGNet.scores(components=))
    parts[..., weights == 0] = 0.0
    return combine_parts(parts, weights, combine)


def stats_fusion(stats: Optional[Mapping]) -> tuple:
    """(norm, combine) a run's statistics were made for (``stats["fusion"]``); without it the
    paper's protocol, ("minmax", "sum")."""
    spec = (stats or {}).get("fusion", {})
    return spec.get("norm", "minmax"), spec.get("combine", "sum")


def describe_fusion(stats: Optional[Mapping], lambdas: Mapping[str, float]) -> str:
    """One line saying how a run's fused score is made (the metadata of `mgnet score` and of an export):
    the normalisation and combination of ``stats["fusion"]`` and the non-zero weights."""
    norm, combine = stats_fusion(stats)
    how = {"z": "z-score against the normal training clips' scores (mean, std in score_stats.json)",
           "minmax": ("min-max by the training clips' scores (score_stats.json)" if stats
                      else "min-max over the scored set (eq. 16's protocol)")}[norm]
    names = needed_components(lambdas, stats or {})   # without stats: eq. 16's three only
    weights = ", ".join(f"{k} {w:g}" for k, w in zip(names, fusion_weights(names, lambdas)))
    return f"each component {how}, combined by {combine} with weights {weights} (mgnet.scoring.fuse)"


def fusion_lambdas(model_cfg) -> Dict[str, float]:
    """The fusion weight of every component from the model config: ``model.lambda_mo``,
    ``lambda_app``, ``lambda_mm`` (eq. 16's) and ``lambda_pose`` (S_pose)."""
    get = (lambda k: model_cfg.get(k, 1.0)) if hasattr(model_cfg, "get") else (lambda k: getattr(model_cfg, k, 1.0))
    return {k: float(get(f"lambda_{k}")) for k in COMPONENTS + OPTIONAL_COMPONENTS}


def needed_components(lambdas: Mapping[str, float], stats: Optional[Mapping] = None,
                      optional: Sequence[str] = OPTIONAL_COMPONENTS) -> tuple:
    """The components ``fuse`` reads under these weights: those of non-zero weight among eq. 16's
    three and the ``optional`` ones a model produces (and ``stats`` has, when given)."""
    names = COMPONENTS + tuple(k for k in optional if stats is None or k in stats)
    return tuple(k for k, w in zip(names, fusion_weights(names, lambdas)) if w != 0)


def fusion_weights(names: Sequence[str], lambdas: Mapping[str, float]) -> np.ndarray:
    """(K,) float64: lambda_k of each fused component (1 where ``lambdas`` has none: mo, pose)."""
    return np.array([float(lambdas.get(k, 1.0)) for k in names], dtype=np.float64)


def combine_parts(parts, weights, how: str):
    """The combine step of ``fuse``: normalised components ``parts`` (..., K) and their weights (K,)
    -> (...,). The same code for numpy arrays and torch tensors (ClipScorer runs it inside the
    exported graph): only ``*``, ``>``, ``@``, ``sum`` and a max over the last axis.

    ``"sum"``: sum_k w_k n_k; ``"pos_mean"``: sum_k w_k max(n_k, 0) / sum_k w_k; ``"max"``: max_k w_k n_k.
    """
    if how == "sum":
        return parts @ weights
    if how == "pos_mean":
        return (parts * (parts > 0)) @ weights / weights.sum()
    if how == "max":
        scaled = parts * weights
        return scaled.amax(-1) if hasattr(scaled, "amax") else scaled.max(-1)   # torch | numpy
    raise ValueError(f"fusion combine must be one of {COMBINES}, got {how!r}")


def fusion_spec(cfg, stats: Optional[Mapping]) -> Dict[str, str]:
    """How "fused" is computed: ``eval.fusion`` (z | minmax) and ``eval.combine``; z-scores need the
    run's training-score statistics, so without them the paper's test-set min-max sum is used."""
    ev = cfg.get("eval", {})
    norm, combine = str(ev.get("fusion", "z")), str(ev.get("combine", "pos_mean"))
    if norm == "z" and stats is None:
        return {"norm": "minmax", "combine": "sum", "note": "no score_stats.json: test-set min-max (eq. 16)"}
    return {"norm": norm, "combine": combine}


def summary_stats(x) -> Dict[str, float]:
    """min, max, mean, std and the 50/90/95/99th percentiles of a score array (for score_stats.json)."""
    x = _np(x)
    if x.size == 0:
        raise ValueError("summary_stats: empty score array")
    out = {"min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()), "std": float(x.std()),
           "count": int(x.size)}
    for p in STAT_PERCENTILES:
        out[f"p{p}"] = float(np.percentile(x, p))
    return out


def frame_scores(clip_scores, videos, frames, persons, num_frames: Mapping, sigma: float = 0.0,
                 names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """Per-frame scores of each video from per-clip scores (STG-NF protocol).

    clip_scores, videos, frames, persons: (N,) arrays, one entry per clip: its score, its video,
    its centre frame and its person (track id). ``videos`` holds names (keys of ``num_frames``), or
    integer indices into ``names`` when ``names`` is given (as ClipStore's ``video`` field is).
    num_frames: video name -> number of frames; every video listed gets a curve, including videos
    with no clip at all.

    A frame takes the max over the persons whose clip is centred on it; frames with nobody take
    the video's minimum (a video without any clip takes the minimum over all clips); then, if
    ``sigma > 0``, a Gaussian filter of that width (frames) smooths each video's curve.
    """
    s = _np(clip_scores)
    fr = np.asarray(_np(frames), dtype=np.int64)
    vids = np.asarray(videos.detach().cpu().numpy() if hasattr(videos, "detach") else videos)
    if names is not None:
        vids = np.asarray([names[int(i)] for i in vids], dtype=object)
    if not (len(s) == len(fr) == len(vids) == len(persons)):
        raise ValueError(f"frame_scores: clip_scores, videos, frames, persons differ in length "
                         f"({len(s)}, {len(vids)}, {len(fr)}, {len(persons)})")
    unknown = sorted({str(v) for v in set(vids.tolist())} - {str(k) for k in num_frames})
    if unknown:
        raise KeyError(f"frame_scores: videos {unknown[:5]} are not in num_frames")
    global_min = float(s.min()) if s.size else 0.0
    out: Dict[str, np.ndarray] = {}
    vid_str = np.asarray([str(v) for v in vids.tolist()], dtype=object)
    for name, n in num_frames.items():
        n = int(n)
        sel = vid_str == str(name)
        curve = np.full(n, -np.inf)
        if sel.any():
            f, v = fr[sel], s[sel]
            if f.min() < 0 or f.max() >= n:
                raise ValueError(f"frame_scores: video {name!r} has clips centred on frame {int(f.max())} "
                                 f"but only {n} frames")
            np.maximum.at(curve, f, v)  # max over persons at each centre frame
            fill = float(v.min())
        else:
            fill = global_min
        curve[~np.isfinite(curve)] = fill
        if sigma and sigma > 0 and n > 1:
            curve = gaussian_filter1d(curve, float(sigma))
        out[str(name)] = curve
    return out


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def frame_auc(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """Micro AUC (all frames of all videos concatenated) and macro AUC (mean over videos with both
    classes) of per-frame scores against per-frame labels (1 = abnormal).

    Returns ``{"micro", "macro", "videos_in_macro"}``; an AUC that is undefined (one class only)
    is NaN. Videos are those of ``labels``; each must have a score curve of the same length.
    """
    ys, ss, per_video = [], [], []
    for name, y in labels.items():
        if name not in scores:
            raise KeyError(f"frame_auc: no scores for video {name!r}")
        y = np.asarray(y).astype(np.int64).ravel()
        s = _np(scores[name]).ravel()
        if y.shape != s.shape:
            raise ValueError(f"frame_auc: video {name!r} has {s.size} scores but {y.size} labels")
        ys.append(y)
        ss.append(s)
        if y.min(initial=0) != y.max(initial=0):
            per_video.append(_auc(y, s))
    if not ys:
        raise ValueError("frame_auc: no videos")
    micro = _auc(np.concatenate(ys), np.concatenate(ss))
    macro = float(np.mean(per_video)) if per_video else float("nan")
    return {"micro": micro, "macro": macro, "videos_in_macro": len(per_video)}


def type_auc(scores: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
             types: Mapping[str, np.ndarray], type_id: int) -> float:
    """Micro AUC restricted to normal frames plus the abnormal frames of one anomaly type.

    types: video name -> per-frame type id (0 = normal). NaN when no frame has that type.
    """
    ys, ss = [], []
    for name, y in labels.items():
        y = np.asarray(y).astype(np.int64).ravel()
        t = np.asarray(types[name]).astype(np.int64).ravel()
        s = _np(scores[name]).ravel()
        if t.shape != y.shape:
            raise ValueError(f"type_auc: video {name!r} has {t.size} type labels but {y.size} labels")
        keep = (y == 0) | ((y == 1) & (t == type_id))
        ys.append(y[keep])
        ss.append(s[keep])
    return _auc(np.concatenate(ys), np.concatenate(ss))
