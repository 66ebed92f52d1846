"""Dataset layouts on disk -> the list of videos of a split (`VideoItem`s), with their ground truth.

Three kinds (see docs/architecture.md, "Data on disk"):

* ``shanghaitech`` (also what `mgnet synth` writes; kind ``synthetic`` reads the same layout)::

      <root>/pose/{train,test}/<vid>_alphapose_tracked_person.json
      <root>/training/videos/<vid>.avi            (train; .mp4 also accepted)
      <root>/testing/frames/<vid>/000.jpg ...     (test)
      <root>/gt/test_frame_mask/<vid>.npy         (test; uint8 per frame, 1 = abnormal)
      <root>/gt/test_frame_types/<vid>.npy        (optional; per-frame anomaly type ids)
      <root>/gt/anomaly_types.json                (optional; {"0": "normal", ...})

  The scene of a video is its name's prefix (``01_0014`` -> ``01``).

* ``ubnormal``::

      <root>/Scene<k>/<vid>.mp4
      <root>/pose/{train,abnormal_train,validation,test}/<vid>_alphapose_tracked_person.json
      <root>/gt/<vid>_tracks.txt                  numpy-saved per-frame array, 1 = NORMAL (inverted here)
      <root>/[scripts/]abnormal_{training,validation,test}_video_names.txt   (optional split files)

  The pose folder defines the split. Ground truth is required for the validation and test splits,
  except for videos the split files do not list as abnormal (``normal_*`` videos), which are all
  normal. The scene of a video is k of its ``Scene<k>`` folder.

* ``folder`` (one's own videos): ``<root>/[<split>/]<name>.<mp4|avi|...>`` or a frame folder
  ``<name>/``, with ``<name>_alphapose_tracked_person.json`` (or ``<name>.json``) beside it;
  optional ``<name>_gt.npy`` (1 = abnormal) and ``scenes.json`` ({name: scene}).
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError
from .video import IMAGE_EXTS, VIDEO_EXTS

POSE_SUFFIX = "_alphapose_tracked_person.json"
KINDS = ("synthetic", "shanghaitech", "ubnormal", "folder")


@dataclass
class VideoItem:
    name: str
    frames: str                 # video file or frame folder
    pose: str | None            # AlphaPose tracked JSON (None until extracted: data.pose_estimator)
    scene: str = "0"
    gt: str | None = None       # per-frame ground truth file
    gt_normal_is_one: bool = False  # UBnormal convention: 1 = normal
    gt_all_normal: bool = False     # no file, known normal video
    types: str | None = None    # per-frame anomaly types file
    extra: dict = field(default_factory=dict)


def _need_dir(path, what):
    if not os.path.isdir(path):
        raise DataError(path, f"{what} folder not found")
    return path


def _pose_files(d):
    files = sorted(f for f in os.listdir(d) if f.endswith(".json"))
    if not files:
        raise DataError(d, "holds no pose JSON files (*_alphapose_tracked_person.json)")
    return [(f[:-len(POSE_SUFFIX)] if f.endswith(POSE_SUFFIX) else f[:-5], os.path.join(d, f)) for f in files]


def shanghaitech_videos(root, split) -> list[VideoItem]:
    root = _need_dir(os.fspath(root), "dataset root")
    if split not in ("train", "test"):
        raise DataError(None, f"ShanghaiTech split must be 'train' or 'test', got {split!r}")
    pose_dir = _need_dir(os.path.join(root, "pose", split), "pose")
    items = []
    for name, pose in _pose_files(pose_dir):
        scene = name.split("_")[0]
        if split == "train":
            cands = [os.path.join(root, "training", "videos", name + ext) for ext in (".avi", ".mp4")]
            cands += [os.path.join(root, "training", "frames", name)]
            frames = next((c for c in cands if os.path.exists(c)), None)
            if frames is None:
                raise DataError(cands[0], f"training video of pose file {os.path.basename(pose)} not found")
            items.append(VideoItem(name, frames, pose, scene))
        else:
            frames = os.path.join(root, "testing", "frames", name)
            if not os.path.isdir(frames):
                vid = os.path.join(root, "testing", "videos", name + ".avi")
                if not os.path.isfile(vid):
                    raise DataError(frames, f"test frame folder of pose file {os.path.basename(pose)} not found")
                frames = vid
            gt = os.path.join(root, "gt", "test_frame_mask", name + ".npy")
            if not os.path.isfile(gt):
                raise DataError(gt, "ground-truth file of a test video not found")
            types = os.path.join(root, "gt", "test_frame_types", name + ".npy")
            items.append(VideoItem(name, frames, pose, scene, gt=gt,
                                   types=types if os.path.isfile(types) else None))
    return items


def _split_names(root, split):
    fname = {"validation": "abnormal_validation_video_names.txt", "test": "abnormal_test_video_names.txt",
             "abnormal_train": "abnormal_training_video_names.txt", "train": "abnormal_training_video_names.txt"}[split]
    for d in (root, os.path.join(root, "scripts")):
        p = os.path.join(d, fname)
        if os.path.isfile(p):
            with open(p) as f:
                return {os.path.splitext(line.strip())[0] for line in f if line.strip()}
    return None


def ubnormal_videos(root, split) -> list[VideoItem]:
    root = _need_dir(os.fspath(root), "dataset root")
    if split not in ("train", "abnormal_train", "validation", "test"):
        raise DataError(None, f"UBnormal split must be train, abnormal_train, validation or test, got {split!r}")
    pose_dir = _need_dir(os.path.join(root, "pose", split), "pose")
    videos = {}
    for d in glob.glob(os.path.join(root, "Scene*")):
        m = re.fullmatch(r"Scene(\d+)", os.path.basename(d))
        if m and os.path.isdir(d):
            for f in os.listdir(d):
                if f.lower().endswith(VIDEO_EXTS):
                    videos[os.path.splitext(f)[0]] = (os.path.join(d, f), m.group(1))
    if not videos:
        raise DataError(root, "holds no Scene<k>/ folders with videos")
    abnormal = _split_names(root, split)
    items = []
    for name, pose in _pose_files(pose_dir):
        if name not in videos:
            raise DataError(pose, f"no video {name}.mp4 in any {root}/Scene<k>/ folder")
        path, scene = videos[name]
        gt = os.path.join(root, "gt", name + "_tracks.txt")
        item = VideoItem(name, path, pose, scene)
        if os.path.isfile(gt):
            item.gt, item.gt_normal_is_one = gt, True
        elif split in ("validation", "test"):
            known_normal = name.startswith("normal") or (abnormal is not None and name not in abnormal)
            if not known_normal:
                raise DataError(gt, f"ground-truth file of {split} video {name} not found")
            item.gt_all_normal = True
        items.append(item)
    return items


def folder_videos(root, split, need_pose: bool = True) -> list[VideoItem]:
    """``need_pose=False`` (poses extracted from the videos, data.pose_estimator): no pose file needed."""
    root = _need_dir(os.fspath(root), "video")
    d = os.path.join(root, split) if split and os.path.isdir(os.path.join(root, split)) else root
    scenes = {}
    sp = os.path.join(d, "scenes.json")
    if os.path.isfile(sp):
        try:
            with open(sp, encoding="utf-8") as f:
                scenes = json.load(f)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DataError(sp, "not valid JSON") from None
        if not isinstance(scenes, dict):
            raise DataError(sp, "expected a JSON object {video name: scene}")
        bad = [k for k, v in scenes.items() if isinstance(v, bool) or not isinstance(v, (str, int))]
        if bad:
            raise DataError(sp, f"the scene of video {bad[0]!r} must be a name or a number, "
                                f"got {type(scenes[bad[0]]).__name__}")
    items = []
    for entry in sorted(os.listdir(d)):
        p = os.path.join(d, entry)
        name, ext = os.path.splitext(entry)
        is_video = os.path.isfile(p) and ext.lower() in VIDEO_EXTS
        is_frames = os.path.isdir(p) and any(f.lower().endswith(IMAGE_EXTS) for f in os.listdir(p))
        if not (is_video or is_frames):
            continue
        name = entry if is_frames else name
        pose = next((c for c in (os.path.join(d, name + POSE_SUFFIX), os.path.join(d, name + ".json"))
                     if os.path.isfile(c)), None)
        if pose is None and need_pose:
            raise DataError(os.path.join(d, name + POSE_SUFFIX), f"pose file of video {entry} not found")
        gt = os.path.join(d, name + "_gt.npy")
        items.append(VideoItem(name, p, pose, str(scenes.get(name, "0")), gt=gt if os.path.isfile(gt) else None))
    if not items:
        raise DataError(d, "holds no videos (" + ", ".join(VIDEO_EXTS) + ") or frame folders")
    return items


def list_videos(kind: str, root, split: str, need_pose: bool = True) -> list[VideoItem]:
    """The videos of one split of a dataset `kind` at `root`; DataError for anything missing
    (``need_pose=False``: a folder's videos need no pose files, they are extracted)."""
    if kind in ("synthetic", "shanghaitech"):
        return shanghaitech_videos(root, split)
    if kind == "ubnormal":
        return ubnormal_videos(root, split)
    if kind == "folder":
        return folder_videos(root, split, need_pose)
    raise DataError(None, f"data.kind must be one of {KINDS}, got {kind!r}")


def type_names(kind: str, root) -> dict:
    """{type id: name} of per-frame anomaly types, from <root>/gt/anomaly_types.json; {} if none."""
    p = os.path.join(os.fspath(root), "gt", "anomaly_types.json")
    if kind in ("synthetic", "shanghaitech") and os.path.isfile(p):
        try:
            with open(p, encoding="utf-8") as f:
                return {int(k): str(v) for k, v in json.load(f).items()}
        except (ValueError, AttributeError, RecursionError):
            raise DataError(p, "not a JSON object {\"id\": \"name\"}") from None
    return {}


def _load_array(path):
    """A numeric array from an np.save file or a text array; DataError for anything else."""
    try:
        a = np.load(path, allow_pickle=False)
    except Exception:
        try:  # a plain-text array also passes
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "input contained no data": an empty array, checked below
                a = np.loadtxt(path)
        except Exception:
            raise DataError(path, "not a numpy array file (np.save) or a text array") from None
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise DataError(path, f"expected a numeric array, got dtype {a.dtype}")
    return a


def load_gt(item: VideoItem, num_frames: int):
    """Per-frame labels (num_frames,) uint8, 1 = abnormal, or None; DataError if the length differs."""
    if item.gt_all_normal:
        return np.zeros(num_frames, np.uint8)
    if item.gt is None:
        return None
    a = np.asarray(_load_array(item.gt)).reshape(-1)
    if len(a) != num_frames:
        raise DataError(item.gt, f"ground truth has {len(a)} frames but the video {item.frames} has {num_frames}")
    if not np.isin(a, (0, 1)).all():
        raise DataError(item.gt, "ground truth must hold only 0 and 1")
    a = a.astype(np.uint8)
    return 1 - a if item.gt_normal_is_one else a


def load_types(item: VideoItem, num_frames: int):
    """Per-frame anomaly type ids (num_frames,) int64, or None."""
    if item.types is None:
        return None
    a = np.asarray(_load_array(item.types)).reshape(-1)
    if len(a) != num_frames:
        raise DataError(item.types, f"anomaly types have {len(a)} frames but the video has {num_frames}")
    if not (np.isfinite(a).all() and (a == np.round(a)).all() and (a >= 0).all() and (a < 2 ** 31).all()):
        raise DataError(item.types, "anomaly types must be integer ids >= 0")
    return a.astype(np.int64)
