"""Poses from raw video: a built-in estimator (MediaPipe BlazePose, offline) and an ONNX one
(RTMPose + YOLOX, or RTMO), both giving COCO-17 keypoints per frame, linked into tracks by
``mgnet.data.tracker`` and written as AlphaPose tracked JSON (a format every part of mgnet reads).

    settings = estimator_settings("builtin")              # or ("onnx", pose_model=..., det_model=...)
    path = ensure_poses("street.mp4", "out/street/poses.json", settings)   # cached: reruns reuse it

``ensure_poses`` writes ``poses.json`` and, beside it, ``poses.source.json`` (the estimator settings,
the video's identity, the time taken); a later call with the same settings and an unchanged video
returns the cached file without decoding anything. `mgnet score` without ``--poses`` and `mgnet
prepare` with ``data.pose_estimator=builtin|onnx`` both go through here, so a run's training and
scoring poses come from one estimator.

builtin      mgnet.data.pose_estimation.builtin      (pip install -e ".[pose]")
onnx         mgnet.data.pose_estimation.onnx_models  (onnxruntime; model files of one's own)
common       the error type, optional imports, crop geometry
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from .common import POSE_EXTRA, PoseEstimatorError

__all__ = ["ESTIMATORS", "PoseEstimatorError", "POSE_EXTRA", "estimator_settings", "make_estimator",
           "extract_tracks", "ensure_poses", "cached", "source_path"]

ESTIMATORS = ("builtin", "onnx")
SOURCE_VERSION = 1  # bump when the extraction changes what a cached poses.json would hold


def _model_id(path):
    if not path:
        return None
    p = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isfile(p):
        raise PoseEstimatorError(p, "ONNX model file not found")
    return {"path": p, "bytes": os.path.getsize(p)}


def estimator_settings(kind: str, pose_model=None, det_model=None, **options) -> dict:
    """The plain, JSON-able settings of an estimator (what the cache is keyed on); PoseEstimatorError
    for an unknown kind, an unknown option or a missing model file."""
    from .builtin import BuiltinSettings
    from .onnx_models import OnnxSettings
    if kind not in ESTIMATORS:
        raise PoseEstimatorError(None, f"pose estimator must be one of {', '.join(ESTIMATORS)}, got {kind!r}")
    cls = BuiltinSettings if kind == "builtin" else OnnxSettings
    names = {f.name for f in dataclasses.fields(cls)} - {"pose_model", "det_model", "threads"}
    bad = sorted(k for k, v in options.items() if v is not None and k not in names)
    if bad:
        raise PoseEstimatorError(None, f"{kind} pose estimator: unknown option(s) {', '.join(bad)}; known: {', '.join(sorted(names))}")
    opts = {k: v for k, v in options.items() if v is not None}
    if kind == "builtin":
        if pose_model or det_model:
            raise PoseEstimatorError(None, "pose/detector model files are for the onnx estimator "
                                           "(--pose-estimator onnx / data.pose_estimator=onnx)")
        return {"estimator": "builtin", **dataclasses.asdict(BuiltinSettings(**opts).check())}
    pm, dm = _model_id(pose_model), _model_id(det_model)
    if pm is None:
        raise PoseEstimatorError(None, "the onnx pose estimator needs a pose model (--pose-model / data.pose_model)")
    base = dataclasses.asdict(OnnxSettings(**opts))
    base.pop("threads")
    return {"estimator": "onnx", **base, "pose_model": pm, "det_model": dm}


def make_estimator(settings: dict, threads: int = 1):
    """The estimator object of ``settings`` (imports its optional packages: the error says what to install)."""
    if settings["estimator"] == "builtin":
        from .builtin import BlazePoseEstimator, BuiltinSettings
        return BlazePoseEstimator(BuiltinSettings(**{k: v for k, v in settings.items() if k != "estimator"}))
    from .onnx_models import OnnxEstimator, OnnxSettings
    s = dict(settings)
    s.pop("estimator")
    s["pose_model"] = s["pose_model"]["path"]
    s["det_model"] = s["det_model"]["path"] if s.get("det_model") else None
    return OnnxEstimator(OnnxSettings(**s, threads=threads))


def extract_tracks(src, estimator, progress: bool = True, desc: str = "poses", chunk: int = 32):
    """Run ``estimator`` on every frame of ``src`` (a FrameSource) and link the detections into tracks.

    Returns ``({track_id: (frames, kps17)}, info)``, info = frames, detections, seconds.
    """
    from tqdm import tqdm

    from ..tracker import track_detections
    t0 = time.perf_counter()
    estimator.reset()
    dets = []
    with tqdm(total=len(src), unit="frame", desc=desc, file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
        for start, frames in src.iter_chunks(chunk):
            for i, frame in enumerate(frames):
                kps = estimator(frame, start + i)
                if len(kps):
                    dets.append((start + i, kps))
            bar.update(len(frames))
    tracks = track_detections(dets) if dets else {}
    secs = time.perf_counter() - t0
    return tracks, {"frames": len(src), "detections": int(sum(len(k) for _, k in dets)), "seconds": round(secs, 3)}


def source_path(pose_path) -> Path:
    """The sidecar that records where a cached pose file came from."""
    pose_path = Path(pose_path)
    return pose_path.with_name(pose_path.stem + ".source.json")


def _video_id(video) -> dict:
    video = os.path.abspath(os.fspath(video))
    st = os.stat(video)
    if os.path.isdir(video):  # a frame folder: its listing stands for its content
        names = sorted(os.listdir(video))
        return {"path": video, "files": len(names), "last": names[-1] if names else None}
    return {"path": video, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def cached(pose_path, video, settings: dict) -> bool:
    """True when ``pose_path`` was extracted from this (unchanged) video with these settings."""
    sp = source_path(pose_path)
    if not (Path(pose_path).is_file() and sp.is_file()):
        return False
    try:
        src = json.loads(sp.read_text())
    except (OSError, ValueError):
        return False
    return (src.get("version") == SOURCE_VERSION and src.get("settings") == settings
            and src.get("video") == _video_id(video))


def ensure_poses(video, pose_path, settings: dict, progress: bool = True, estimator=None,
                 src=None, allow_empty: bool = False) -> Path:
    """Extract, track and write the poses of ``video`` to ``pose_path`` (AlphaPose tracked JSON) unless
    a cached file from the same settings and video is there. ``estimator``: reuse one across videos.
    No person at all: PoseEstimatorError, unless ``allow_empty`` (then an empty ``{}`` file)."""
    from ..pose_formats import save_poses
    from ..video import open_frames
    pose_path = Path(pose_path)
    if cached(pose_path, video, settings):
        return pose_path
    src = src if src is not None else open_frames(video)
    est = estimator if estimator is not None else make_estimator(settings)
    tracks, info = extract_tracks(src, est, progress, desc=f"poses {Path(video).name} ({settings['estimator']})")
    if not tracks and not allow_empty:
        raise PoseEstimatorError(video, f"the {settings['estimator']} pose estimator found nobody in any of its "
                                        f"{len(src)} frames (see the README, 'Poses from raw video', for its limits)")
    pose_path.parent.mkdir(parents=True, exist_ok=True)
    if tracks:
        save_poses(tracks, pose_path, "alphapose-tracked")
    else:
        tmp = pose_path.with_name(f".{pose_path.name}.tmp{os.getpid()}")
        tmp.write_text("{}")
        os.replace(tmp, pose_path)
    info.update(tracks=len(tracks), frames_per_second=round(info["frames"] / max(info["seconds"], 1e-9), 2))
    doc = {"version": SOURCE_VERSION, "settings": settings, "video": _video_id(video), "extraction": info,
           "frame_size": list(src.size), "format": "alphapose-tracked"}
    sp = source_path(pose_path)
    tmp = sp.with_name(f".{sp.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, sp)
    return pose_path
