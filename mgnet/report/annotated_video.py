"""The annotated video: each frame with its people's boxes and skeletons coloured by their current
anomaly score, and the running score curve drawn in a strip under the frame.

Encoded as H.264 (libx264, yuv420p, ``+faststart``) in an .mp4 through imageio-ffmpeg's bundled
ffmpeg, which every current browser plays in a ``<video>`` element.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mgnet.report.colours import score_colour

__all__ = ["COCO17_EDGES", "draw_people", "draw_curve_strip", "render_frame", "write_annotated_video"]

# COCO-17 limbs (pairs of joint indices): legs, hips, torso, arms, head.
COCO17_EDGES = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
                (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))


def _font(px: int):
    """Pillow's bundled font at ``px`` pixels (older Pillow: its fixed bitmap font)."""
    try:
        return ImageFont.load_default(size=px)
    except TypeError:
        return ImageFont.load_default()


def draw_people(img: Image.Image, people: Sequence[tuple[int, np.ndarray, float]], threshold: float,
                min_conf: float = 0.05) -> None:
    """Draw, in place, a box, a skeleton and "id score" for each ``(track_id, kps17 (17, 3), score)``."""
    d = ImageDraw.Draw(img)
    lw = max(1, round(min(img.size) / 180))
    font = _font(max(10, img.size[1] // 28))
    for pid, kps, score in people:
        col = score_colour(score, threshold)
        ok = kps[:, 2] > min_conf
        if not ok.any():
            continue
        for a, b in COCO17_EDGES:
            if ok[a] and ok[b]:
                d.line([tuple(kps[a, :2]), tuple(kps[b, :2])], fill=col, width=lw)
        for x, y in kps[ok, :2]:
            d.ellipse([x - lw, y - lw, x + lw, y + lw], fill=col)
        x1, y1 = kps[ok, :2].min(0) - 4
        x2, y2 = kps[ok, :2].max(0) + 4
        d.rectangle([x1, y1, x2, y2], outline=col, width=lw)
        label = f"{pid}" if not np.isfinite(score) else f"{pid}: {score:.2f}"
        d.text((x1, max(0, y1 - font.size - 2) if hasattr(font, "size") else max(0, y1 - 11)), label,
               fill=col, font=font)


def draw_curve_strip(width: int, height: int, scores: np.ndarray, t: int, threshold: float,
                     vmax: float) -> Image.Image:
    """A (height, width) strip: the score curve up to frame ``t`` over the whole video's time axis,
    the threshold line, and a cursor at ``t``."""
    strip = Image.new("RGB", (width, height), (24, 24, 24))
    d = ImageDraw.Draw(strip)
    n = len(scores)
    pad = 3
    vmax = vmax if vmax > 0 else 1.0

    def xy(i, v):
        x = pad + (width - 2 * pad) * (i / max(n - 1, 1))
        y = height - pad - (height - 2 * pad) * min(max(v / vmax, 0.0), 1.0)
        return x, y

    ty = xy(0, threshold)[1]
    d.line([(pad, ty), (width - pad, ty)], fill=(200, 60, 60), width=1)
    pts = [xy(i, v) for i, v in enumerate(scores[: t + 1]) if np.isfinite(v)]
    if len(pts) > 1:
        d.line(pts, fill=(235, 235, 235), width=max(1, height // 40))
    cx = xy(t, 0)[0]
    d.line([(cx, pad), (cx, height - pad)], fill=score_colour(scores[t] if t < n else np.nan, threshold), width=2)
    cur = scores[t] if t < n else np.nan
    label = f"frame {t}  score {cur:.2f}" if np.isfinite(cur) else f"frame {t}  (no score)"
    font = _font(max(10, height // 7))
    tw = d.textlength(label, font=font)
    d.text((width - tw - pad - 2, pad), label, fill=(235, 235, 235), font=font)
    return strip


def render_frame(frame: np.ndarray, people, scores: np.ndarray, t: int, threshold: float, vmax: float,
                 strip_height: Optional[int] = None, min_height: int = 360) -> np.ndarray:
    """One annotated frame (H' + strip, W', 3) uint8, padded to even sizes for yuv420p. Frames
    lower than ``min_height`` are enlarged by an integer factor so that labels stay legible."""
    img = Image.fromarray(np.ascontiguousarray(frame[..., :3]).astype(np.uint8))
    k = max(1, -(-min_height // img.size[1])) if min_height else 1
    if k > 1:
        img = img.resize((img.size[0] * k, img.size[1] * k), Image.BILINEAR)
        people = [(p, np.concatenate([kp[:, :2] * k, kp[:, 2:]], 1), s) for p, kp, s in people]
    draw_people(img, people, threshold)
    w, h = img.size
    sh = strip_height or max(48, h // 4)
    out = Image.new("RGB", (w + (w % 2), h + sh + ((h + sh) % 2)), (0, 0, 0))
    out.paste(img, (0, 0))
    out.paste(draw_curve_strip(w, sh, scores, t, threshold, vmax), (0, h))
    return np.asarray(out)


def write_annotated_video(path, frames: Iterable[np.ndarray], people_per_frame: Sequence[Sequence],
                          scores: np.ndarray, threshold: float, fps: float = 25.0,
                          vmax: Optional[float] = None, min_height: int = 360) -> Path:
    """Encode the annotated video as H.264 .mp4 (browser-playable); written atomically.

    frames: the video's RGB frames (H, W, 3) uint8; people_per_frame[t]: ``(track_id, kps17, score)``
    for each person at frame t (score NaN when unknown); scores: the per-frame score curve.
    vmax: the curve strip's top (default: max(2 * threshold, max score)); min_height: frames lower
    than this are enlarged (integer factor) before drawing.
    """
    import imageio_ffmpeg

    path = Path(path)
    scores = np.asarray(scores, dtype=np.float64)
    if vmax is None:
        fin = scores[np.isfinite(scores)]
        vmax = max(2 * threshold, float(fin.max()) if fin.size else 1.0, 1e-6)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    writer = None
    try:
        for t, frame in enumerate(frames):
            img = render_frame(frame, people_per_frame[t] if t < len(people_per_frame) else (), scores, t,
                               threshold, vmax, min_height=min_height)
            if writer is None:
                writer = imageio_ffmpeg.write_frames(
                    str(tmp), (img.shape[1], img.shape[0]), fps=float(fps), codec="libx264",
                    pix_fmt_in="rgb24", pix_fmt_out="yuv420p", macro_block_size=2, quality=None,
                    output_params=["-movflags", "+faststart", "-crf", "23", "-preset", "veryfast"],
                    ffmpeg_log_level="error")
                writer.send(None)
            writer.send(np.ascontiguousarray(img))
        if writer is None:
            raise ValueError(f"{path}: no frames to write")
        writer.close()
        writer = None
        os.replace(tmp, path)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    return path

