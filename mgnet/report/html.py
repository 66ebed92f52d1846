"""The per-video HTML report: one self-contained file that opens offline in a browser.

The timeline PNG is embedded as base64; the annotated video is referenced by a relative path in a
``<video>`` element (it sits beside the report), or embedded as a data URI when asked and small.
The events table lists start/end/peak/persons. No network resource is referenced.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px;color:#222}
h1{font-size:1.3em} table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #bbb;padding:3px 8px;
text-align:right} th{background:#eee} .meta td{text-align:left} img,video{max-width:100%;border:1px solid #ccc}
.none{color:#666;font-style:italic}
"""

# Marks the <video> element once the browser has decoded the file's metadata (used by the tests,
# harmless otherwise).
_JS = """
const v = document.getElementById('annotated');
if (v) { v.addEventListener('loadedmetadata', () => { v.dataset.loaded = 'yes';
  v.dataset.duration = v.duration.toFixed(2); }); }
"""


def _table(rows: Sequence[Sequence], header: Sequence[str], cls: str = "") -> str:
    out = [f'<table class="{cls}">' if cls else "<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_report(path, title: str, timeline_png, video_path=None, events: Sequence[Mapping] = (),
                 meta: Optional[Mapping[str, object]] = None, embed_video_max_bytes: int = 0,
                 links: Sequence[str] = ()) -> Path:
    """Write the report HTML at ``path`` (atomically).

    timeline_png: the plot file (embedded). video_path: the annotated .mp4; referenced relative to
    the report's folder, or embedded when its size is <= ``embed_video_max_bytes``. events: as from
    ``find_events``. meta: key/value lines shown at the top (video, run, threshold, latency ...).
    links: files beside the report (e.g. the CSV/JSON scores) listed as relative links.
    """
    path = Path(path)
    png = base64.b64encode(Path(timeline_png).read_bytes()).decode("ascii")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if meta:
        parts.append(_table([(k, v) for k, v in meta.items()], (), cls="meta"))
    parts.append("<h2>Score timeline</h2>")
    parts.append(f'<img id="timeline" alt="anomaly score timeline" src="data:image/png;base64,{png}">')
    parts.append("<h2>Events</h2>")
    if events:
        rows = [(i + 1, e["start"], e["end"], e.get("start_s", ""), e.get("end_s", ""), e["peak_frame"],
                 f'{e["peak_score"]:.3f}', ", ".join(str(p) for p in e.get("persons", ())))
                for i, e in enumerate(events)]
        parts.append(_table(rows, ("#", "start frame", "end frame", "start s", "end s", "peak frame",
                                   "peak score", "persons"), cls="events"))
    else:
        parts.append('<p class="none">No frame reached the threshold.</p>')
    if video_path is not None:
        video_path = Path(video_path)
        if embed_video_max_bytes and video_path.stat().st_size <= embed_video_max_bytes:
            src = "data:video/mp4;base64," + base64.b64encode(video_path.read_bytes()).decode("ascii")
        else:
            src = html.escape(os.path.relpath(video_path, path.parent).replace(os.sep, "/"))
        parts.append("<h2>Annotated video</h2>")
        parts.append('<p>Boxes and skeletons are coloured by each person\'s current score (green: low, '
                     'yellow: at the threshold, red: twice the threshold; grey: not scored yet); the '
                     'strip below the frame is the running score with the threshold in red.</p>')
        parts.append(f'<video id="annotated" controls preload="metadata" muted playsinline>'
                     f'<source src="{src}" type="video/mp4">Your browser cannot play H.264 video.</video>')
    if links:
        parts.append("<h2>Data</h2><p>" + " &middot; ".join(
            f'<a href="{html.escape(str(x))}">{html.escape(str(x))}</a>' for x in links) + "</p>")
    parts.append(f"<script>{_JS}</script></body></html>")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path
