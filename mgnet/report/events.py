"""Thresholds and anomaly events: from a per-frame score curve to (start, end, peak, persons).

A threshold is a number in the units of the scores being thresholded -- for ``mgnet score`` the
fused score normalised with the training run's statistics, so a percentile of the training-set
fused scores (``score_stats.json``, e.g. ``p99``) carries over to new videos. ``best_f1_threshold``
picks the threshold with the best frame-level F1 on labelled frames instead.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Optional

import numpy as np

__all__ = ["resolve_threshold", "best_f1_threshold", "find_events"]


def resolve_threshold(spec, stats: Optional[Mapping] = None, key: str = "fused") -> float:
    """A threshold from ``spec``: a number, or ``"pNN"`` = that percentile of the training-set
    ``stats[key]`` (keys ``p50``, ``p90``, ``p95``, ``p99`` as in score_stats.json)."""
    if isinstance(spec, (int, float)):
        return float(spec)
    s = str(spec).strip().lower()
    m = re.fullmatch(r"p(\d+)", s)
    if m:
        if stats is None or key not in stats:
            raise ValueError(f"threshold {spec!r}: the run's score statistics have no {key!r} entry")
        if s not in stats[key]:
            have = sorted(k for k in stats[key] if re.fullmatch(r"p\d+", k))
            raise ValueError(f"threshold {spec!r}: score statistics hold only percentiles {have}")
        return float(stats[key][s])
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"threshold {spec!r}: expected a number, a training percentile like 'p99', "
                         "or 'best-f1'") from None


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising frame-level F1 of ``score >= threshold`` against labels (1 =
    abnormal), over the observed score values. NaN scores are dropped; -inf (e.g. frames nobody is
    scored at) counts as below every threshold."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"best_f1_threshold: {s.size} scores but {y.size} labels")
    ok = ~np.isnan(s)
    s, y = s[ok], y[ok]
    if not y.any():
        raise ValueError("best_f1_threshold: no abnormal frame among the labels")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[s[1:] != s[:-1], True] & np.isfinite(s)  # cut between distinct finite values only
    if not last.any():
        raise ValueError("best_f1_threshold: no finite score")
    tp, fp, cut = tp[last], fp[last], s[last]
    f1 = 2 * tp / (tp + fp + y.sum())
    i = int(np.argmax(f1))
    return float(cut[i]), float(f1[i])


def find_events(scores: np.ndarray, threshold: float, person_scores: Optional[Mapping[int, np.ndarray]] = None,
                merge_gap: int = 0, min_length: int = 1, fps: float = 0.0) -> list[dict]:
    """Runs of frames whose score is >= threshold, as a list of events.

    Runs separated by at most ``merge_gap`` frames below the threshold are merged; runs shorter
    than ``min_length`` frames are dropped. Each event: ``start``, ``end`` (inclusive frames),
    ``peak_frame``, ``peak_score``, ``persons`` (track ids whose own score reaches the threshold
    inside the event, else the one highest at the peak) and, when fps > 0, ``start_s``/``end_s``.
    """
    s = np.asarray(scores, dtype=np.float64)
    above = np.isfinite(s) & (s >= threshold)
    runs = []
    i, n = 0, len(s)
    while i < n:
        if above[i]:
            j = i
            while j + 1 < n and above[j + 1]:
                j += 1
            if runs and i - runs[-1][1] - 1 <= merge_gap:
                runs[-1][1] = j
            else:
                runs.append([i, j])
            i = j + 1
        else:
            i += 1
    events = []
    for a, b in runs:
        if b - a + 1 < min_length:
            continue
        seg = np.where(np.isfinite(s[a:b + 1]), s[a:b + 1], -np.inf)
        peak = a + int(np.argmax(seg))
        persons = []
        best, best_p = -math.inf, None
        for pid, ps in (person_scores or {}).items():
            ps = np.asarray(ps, dtype=np.float64)[a:b + 1]
            fin = np.isfinite(ps)
            if fin.any() and np.nanmax(ps) >= threshold:
                persons.append(int(pid))
            v = ps[peak - a]
            if np.isfinite(v) and v > best:
                best, best_p = v, int(pid)
        if not persons and best_p is not None:
            persons = [best_p]
        ev = {"start": int(a), "end": int(b), "peak_frame": int(peak), "peak_score": float(s[peak]),
              "persons": sorted(persons)}
        if fps and fps > 0:
            ev["start_s"] = round(a / fps, 3)
            ev["end_s"] = round((b + 1) / fps, 3)
        events.append(ev)
    return events
