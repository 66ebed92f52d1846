"""The score-timeline PNG: a video's per-frame anomaly score, the threshold and the events."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_timeline"]


def plot_timeline(path, scores: np.ndarray, threshold: float, events: Sequence[Mapping] = (),
                  components: Optional[Mapping[str, np.ndarray]] = None, fps: float = 0.0,
                  title: str = "", labels: Optional[np.ndarray] = None) -> Path:
    """Write a PNG of the per-frame score curve.

    scores: (N,) per-frame score (NaN where nobody is scored); threshold: horizontal dashed line;
    events: dicts with ``start``/``end`` (inclusive frames) shaded red; components: optional thin
    lines (e.g. the normalised S_mo, S_app, S_mm); fps > 0 adds a seconds axis on top; labels:
    optional per-frame ground truth (1 = abnormal) drawn as a grey band. Written atomically.
    """
    path = Path(path)
    scores = np.asarray(scores, dtype=np.float64)
    x = np.arange(len(scores))
    fig, ax = plt.subplots(figsize=(11, 3.2), dpi=100)
    if labels is not None:
        lab = np.asarray(labels).astype(bool)
        ax.fill_between(x, 0, 1, where=lab, transform=ax.get_xaxis_transform(), color="0.85",
                        step="mid", label="ground truth abnormal")
    for i, ev in enumerate(events):
        ax.axvspan(ev["start"] - 0.5, ev["end"] + 0.5, color="tab:red", alpha=0.18,
                   label="event" if i == 0 else None)
    if components:
        for name, c in components.items():
            ax.plot(x, np.asarray(c, dtype=np.float64), lw=0.8, alpha=0.6, label=f"S_{name}")
    ax.plot(x, scores, color="black", lw=1.6, label="score")
    ax.axhline(threshold, color="tab:red", ls="--", lw=1.0, label=f"threshold {threshold:.3g}")
    ax.set_xlim(-0.5, max(len(scores) - 0.5, 0.5))
    ax.set_xlabel("frame")
    ax.set_ylabel("anomaly score")
    if fps and fps > 0:
        top = ax.secondary_xaxis("top", functions=(lambda f: f / fps, lambda s: s * fps))
        top.set_xlabel("seconds")
    if title:
        fig.suptitle(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False)  # outside: never hides the curve
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
