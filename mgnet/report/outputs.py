"""The files `mgnet score` writes for one video (frame_scores.csv, person_scores.csv, scores.json,
timeline.png, annotated.mp4, report.html; see mgnet.jobs.score) from its mgnet.inference.VideoScores.

``write_outputs`` fills a fresh temporary folder; ``publish`` renames it into place, so a failed
run never leaves a half-written result under the final name.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from mgnet.report.annotated_video import write_annotated_video
from mgnet.report.events import find_events
from mgnet.report.html import write_report
from mgnet.report.timeline import plot_timeline
from mgnet.scoring import COMPONENTS, SCORE_KEYS


def _nan_to_none(a):
    return [None if not np.isfinite(v) else round(float(v), 6) for v in np.asarray(a, dtype=np.float64)]


def _csv_text(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def format_score(v) -> str:
    """A CSV cell: 6 significant digits, empty for NaN/None."""
    return "" if v is None or not np.isfinite(v) else f"{float(v):.6g}"


def write_outputs(folder: Path, name: str, res, src, tracks, threshold: float, thr_source: str,
                  fps: float, meta: dict, events_kw: dict, video: bool = True) -> dict:
    """All outputs of one video into ``folder`` (a fresh temporary folder); ``res`` a VideoScores."""
    n = len(res.score)
    events = find_events(res.score, threshold, res.persons, fps=fps, **events_kw)
    rows = []
    for f in range(n):
        present = [str(p) for p, s in res.persons.items() if np.isfinite(s[f])]
        rows.append([f, f"{f / fps:.3f}", format_score(res.score[f]),
                     format_score(res.score_minmax[f]) if res.score_minmax is not None else "",
                     *(format_score(res.components[k][f]) for k in SCORE_KEYS), ";".join(present)])
    (folder / "frame_scores.csv").write_text(_csv_text(
        ["frame", "time_s", "score", "score_minmax", *SCORE_KEYS, "persons"], rows))
    prow = []
    for p, s in res.persons.items():
        pc = res.person_components.get(p, {})
        for f in np.flatnonzero(np.isfinite(s)):
            prow.append([int(f), p, format_score(s[f]), *(format_score(pc[k][f]) if pc else "" for k in SCORE_KEYS)])
    prow.sort()
    (folder / "person_scores.csv").write_text(_csv_text(["frame", "person", "score", *SCORE_KEYS], prow))
    doc = dict(meta)
    doc.update({"num_frames": n, "fps": fps, "threshold": {"value": threshold, "source": thr_source},
                "events": events, "frames": {"score": _nan_to_none(res.score)},
                "persons": {str(p): {"frames": np.flatnonzero(np.isfinite(s)).tolist(),
                                     "score": [round(float(v), 6) for v in s[np.isfinite(s)]]}
                            for p, s in res.persons.items()}})
    if res.score_minmax is not None:
        doc["frames"]["score_minmax"] = _nan_to_none(res.score_minmax)
    for k in SCORE_KEYS:
        doc["frames"][k] = _nan_to_none(res.components[k])
    (folder / "scores.json").write_text(json.dumps(doc, indent=1))
    comps = {k: res.components[k] for k in COMPONENTS}
    png = plot_timeline(folder / "timeline.png", res.score, threshold, events, comps, fps=fps,
                        title=f"{name}: fused score (training-normalised)")
    mp4 = None
    if video:
        people = [[] for _ in range(n)]
        for p, (fr, kp) in tracks.items():
            ps = res.persons.get(p)
            for f, k in zip(fr.tolist(), kp):
                people[f].append((p, k, float(ps[f]) if ps is not None else math.nan))
        frames = (img for _, chunk in src.iter_chunks(32) for img in chunk)
        mp4 = write_annotated_video(folder / "annotated.mp4", frames, people, res.score, threshold, fps=fps)
    info = {"video": meta["video"], "frames": n, "threshold": f"{threshold:.4g} ({thr_source})",
            "mode": meta["mode"], "run": meta["run"], "events": len(events)}
    if meta["mode"] == "online":
        info["latency"] = f"{meta['latency_frames']} frames"
    write_report(folder / "report.html", f"mgnet score: {name}", png, mp4, events, info,
                 links=("frame_scores.csv", "person_scores.csv", "scores.json"))
    return {"events": events}


def publish(tmp: Path, dest: Path) -> None:
    """Rename the finished temporary folder into place (replacing an older result)."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
