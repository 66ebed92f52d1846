"""The hooks of the jobs into pose estimation: `mgnet score` without ``--poses`` and `mgnet prepare`
on ``data=folder`` with ``data.pose_estimator=builtin|onnx`` (kept here so the job modules only
call three functions)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from . import ESTIMATORS, PoseEstimatorError, cached, ensure_poses, estimator_settings, make_estimator, source_path

__all__ = ["add_pose_estimator_args", "extracted_poses", "keep_cached_poses", "data_settings", "prepare_poses"]

POSE_FILE = "poses.json"


def add_pose_estimator_args(p) -> None:
    g = p.add_argument_group("poses from the video (when --poses is not given)")
    g.add_argument("--pose-estimator", choices=ESTIMATORS, default=None,
                   help="builtin (MediaPipe BlazePose, pip install -e '.[pose]') or onnx (--pose-model); "
                        "default: the estimator the run was trained with, else builtin (onnx if --pose-model)")
    g.add_argument("--pose-model", default=None, help="RTMPose (with --det-model) or RTMO .onnx file")
    g.add_argument("--det-model", default=None, help="YOLOX end2end .onnx person detector (for RTMPose)")
    g.add_argument("--pose-detector", choices=("blazepose", "hog"), default=None,
                   help="builtin: where people are found (default blazepose; hog adds OpenCV's HOG boxes)")
    g.add_argument("--pose-tiles", type=int, default=None, help="builtin: also search an n x n grid of tiles (small people)")
    g.add_argument("--pose-every", type=int, default=None, help="builtin: look for new people every n-th frame (default 1)")


def data_settings(data_cfg) -> dict | None:
    """The estimator settings a data config asks for (None for data.pose_estimator=files / absent)."""
    get = data_cfg.get if hasattr(data_cfg, "get") else (lambda k, d=None: d)
    kind = get("pose_estimator", "files") or "files"
    if kind == "files":
        return None
    if kind not in ESTIMATORS:
        raise PoseEstimatorError(None, f"data.pose_estimator must be files, {' or '.join(ESTIMATORS)}, got {kind!r}")
    opts = dict(get("pose_options", None) or {})
    return estimator_settings(kind, get("pose_model", None), get("det_model", None), **opts)


def _cli_settings(args, run_data_cfg) -> dict:
    trained = data_settings(run_data_cfg) if run_data_cfg is not None else None
    opts = {"detector": args.pose_detector, "tiles": args.pose_tiles, "detect_every": args.pose_every}
    kind = args.pose_estimator or ("onnx" if args.pose_model else None)
    if kind is None and trained is not None and not any(v is not None for v in opts.values()):
        return trained  # the run's own estimator: training and scoring poses alike
    kind = kind or "builtin"
    if kind == "onnx":
        opts = {}
    settings = estimator_settings(kind, args.pose_model, args.det_model, **opts)
    if trained is not None and trained != settings:
        print(f"mgnet score: warning: the run was trained on poses from the {trained['estimator']} estimator "
              f"with other settings; scores are most reliable with the same poses (README: 'Poses from raw video')",
              file=sys.stderr)
    elif trained is None:
        print(f"mgnet score: note: extracting poses with the {settings['estimator']} estimator; the run was trained on "
              "pose files from elsewhere, and a different estimator's poses shift the scores "
              "(README: 'Poses from raw video')", file=sys.stderr)
    return settings


def extracted_poses(args, run_cfg):
    """A function ``(video, out_folder, src) -> pose file`` extracting (or reusing the cache at)
    ``out_folder/poses.json``; the estimator is built now, so a missing extra stops before any work."""
    settings = _cli_settings(args, run_cfg.get("data") if hasattr(run_cfg, "get") else None)
    est = make_estimator(settings)

    def extract(video: Path, folder: Path, src) -> Path:
        return ensure_poses(video, Path(folder) / POSE_FILE, settings, progress=True, estimator=est, src=src)
    return extract


def keep_cached_poses(pose_path, dest: Path, staged: Path) -> None:
    """A pose file inside the output folder ``dest`` (the extraction cache) is copied into the staged
    folder that replaces ``dest``, with its source sidecar, so publishing keeps it."""
    pose_path = Path(pose_path)
    try:
        inside = pose_path.resolve().parent == Path(dest).resolve()
    except OSError:
        inside = False
    if not inside:
        return
    for p in (pose_path, source_path(pose_path)):
        if p.exists():
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, Path(staged) / p.name)


def prepare_poses(items, cfg: dict, split: str, progress: bool = True):
    """For ``data.pose_estimator=builtin|onnx``: every video's poses extracted (cached under
    ``<cache_dir>/poses/``) and set as its pose file; the items unchanged for ``files``."""
    settings = data_settings(cfg)
    if settings is None:
        return items
    est = None
    out = Path(cfg["cache_dir"]) / "poses"
    for it in items:
        dest = out / f"{it.name}.json"
        if not cached(dest, it.frames, settings):
            est = est or make_estimator(settings)
            ensure_poses(it.frames, dest, settings, progress=progress, estimator=est, allow_empty=True)
        it.pose = os.fspath(dest)
    return items
