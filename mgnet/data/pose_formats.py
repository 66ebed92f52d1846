"""Pose-file adapters: every common 2D pose output read into one track representation.

All adapters return ``{track_id: (frames, keypoints)}`` with ``frames`` int64 (F,) 0-based video
frame indices, strictly increasing, and ``keypoints`` float32 (F, 17, 3) COCO-17 (x, y, score) --
the representation of AlphaPose's tracked JSON, which ``mgnet.data.poses`` then converts to the 18
OpenPose joints and normalises. Formats without track ids go through ``mgnet.data.tracker``.

Formats (``detect_format`` tells them apart; ``load_poses(path)`` dispatches):

``alphapose-tracked``  one JSON ``{person_id: {frame_id: {"keypoints": [x, y, s] * 17, "scores": f}}}``
                       (STG-NF's ShanghaiTech layout; frame ids are the frame numbers, 0-based).
``alphapose-results``  AlphaPose's default ``alphapose-results.json``: a list of
                       ``{"image_id": "12.jpg", "keypoints": [x, y, s] * K, "score": f, "idx"?}``;
                       the frame is the last number in ``image_id``; ``idx`` (PoseFlow / ``--pose_track``)
                       is used as the track id when every entry has one, else the tracker runs.
``openpose``           a folder of OpenPose per-frame files ``<name>_<frame:012d>_keypoints.json``
                       ``{"people": [{"pose_keypoints_2d": [x, y, c] * 25 or * 18, "person_id": [..]}]}``;
                       BODY_25 (75 values) and COCO-18 (54 values) are mapped to COCO-17 with the index
                       tables below; tracked by the tracker unless every person has a person_id >= 0.
``mmpose``             MMPose / RTMPose predictions: ``topdown_demo_with_mmdet.py --save-predictions``
                       (``{"meta_info", "instance_info": [{"frame_id" (1-based), "instances"}]}``) or
                       ``MMPoseInferencer(pred_out_dir=...)`` on a video (``[{"frame_id" (0-based),
                       "instances"}]``); an instance is ``{"keypoints": [[x, y]] * K, "keypoint_scores":
                       [s] * K, "bbox", "bbox_score", "track_id"?}``.

Keypoint counts: 17 (COCO) as is; 26 (Halpe-26 / body8), 133 (COCO-WholeBody) and 136 (Halpe-136)
begin with the 17 COCO body joints in COCO order, so the first 17 are taken.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from mgnet.data.errors import DataError
from mgnet.data.tracker import track_detections

__all__ = [
    "PoseFormatError",
    "FORMATS",
    "BODY25_TO_COCO17",
    "COCO18_TO_COCO17",
    "detect_format",
    "load_poses",
    "check_frame_range",
    "save_poses",
]

PoseTracks = dict[int, tuple[np.ndarray, np.ndarray]]

FORMATS = ("alphapose-tracked", "alphapose-results", "openpose", "mmpose")

# COCO-17 order: 0 nose, 1 l-eye, 2 r-eye, 3 l-ear, 4 r-ear, 5 l-shoulder, 6 r-shoulder, 7 l-elbow,
# 8 r-elbow, 9 l-wrist, 10 r-wrist, 11 l-hip, 12 r-hip, 13 l-knee, 14 r-knee, 15 l-ankle, 16 r-ankle.
#
# OpenPose BODY_25: 0 nose, 1 neck, 2 r-shoulder, 3 r-elbow, 4 r-wrist, 5 l-shoulder, 6 l-elbow,
# 7 l-wrist, 8 mid-hip, 9 r-hip, 10 r-knee, 11 r-ankle, 12 l-hip, 13 l-knee, 14 l-ankle, 15 r-eye,
# 16 l-eye, 17 r-ear, 18 l-ear, 19-24 feet. COCO-17 joint i is BODY_25 joint BODY25_TO_COCO17[i]:
BODY25_TO_COCO17 = (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11)
# OpenPose COCO-18: 0 nose, 1 neck, 2 r-shoulder, 3 r-elbow, 4 r-wrist, 5 l-shoulder, 6 l-elbow,
# 7 l-wrist, 8 r-hip, 9 r-knee, 10 r-ankle, 11 l-hip, 12 l-knee, 13 l-ankle, 14 r-eye, 15 l-eye,
# 16 r-ear, 17 l-ear. COCO-17 joint i is COCO-18 joint COCO18_TO_COCO17[i]:
COCO18_TO_COCO17 = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)

_COCO_PREFIX_COUNTS = (17, 26, 133, 136)
_OPENPOSE_NAME = re.compile(r"_(\d+)_keypoints\.json$")


class PoseFormatError(DataError):
    """A pose file that is empty, unreadable, of an unknown or mixed format, or inconsistent.
    ``PoseFormatError(path, problem)``, or ``PoseFormatError(message)`` for a message naming the file."""

    def __init__(self, path, problem=None):
        if problem is None:
            ValueError.__init__(self, path)
            self.path, self.problem = None, path
        else:
            super().__init__(path, problem)


def _err(path, msg: str) -> PoseFormatError:
    return PoseFormatError(path, msg)


_INT64 = 2 ** 63 - 1


_EXPECTED = (
    "expected one of: AlphaPose tracked JSON {person_id: {frame_id: {'keypoints', 'scores'}}}; "
    "AlphaPose results list [{'image_id', 'keypoints', 'score', 'idx'?}]; a folder of OpenPose "
    "'*_keypoints.json' files (BODY_25 or COCO-18); MMPose predictions "
    "({'instance_info': [...]} or [{'frame_id', 'instances'}])"
)


def _read_json(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise _err(path, f"cannot read pose file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise _err(path, "not a UTF-8 text (JSON) file") from None
    if not text.strip():
        raise _err(path, "empty pose file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _err(path, f"not valid JSON ({e.msg} at line {e.lineno}); {_EXPECTED}") from None
    except RecursionError:
        raise _err(path, "JSON nested too deeply") from None


def _kind_of_json(obj) -> str | None:
    """The format of one parsed JSON document, or None if it is none of ours."""
    if isinstance(obj, dict):
        if "instance_info" in obj:
            return "mmpose"
        if "people" in obj:
            return "openpose-frame"
        vals = list(obj.values())
        if vals and all(isinstance(v, dict) for v in vals):
            inner = [x for v in vals for x in v.values()]
            if inner and all(isinstance(x, dict) and "keypoints" in x for x in inner):
                return "alphapose-tracked"
        return None
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        kinds = set()
        for x in obj:
            if "image_id" in x and "keypoints" in x:
                kinds.add("alphapose-results")
            elif "frame_id" in x and "instances" in x:
                kinds.add("mmpose")
            else:
                kinds.add(None)
        if len(kinds) == 1:
            return kinds.pop()
        return "mixed"
    return None


def detect_format(path) -> str:
    """The format name of a pose file or folder (one of FORMATS); PoseFormatError otherwise."""
    path = Path(path)
    if not path.exists():
        raise _err(path, "pose file or folder does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".json")
        if not files:
            raise _err(path, f"folder holds no .json pose files; {_EXPECTED}")
        kinds = {}
        for f in files:
            kinds.setdefault(_kind_of_json(_read_json(f)), f)
        if set(kinds) != {"openpose-frame"}:
            found = ", ".join(f"{k or 'unknown'} ({v.name})" for k, v in kinds.items())
            raise _err(path, f"a pose folder must hold only OpenPose per-frame files; found {found}")
        return "openpose"
    obj = _read_json(path)
    kind = _kind_of_json(obj)
    if kind == "openpose-frame":
        raise _err(path, "a single OpenPose frame; pass the folder of per-frame *_keypoints.json files")
    if kind == "mixed":
        raise _err(path, f"mixed pose formats in one list (entries of different schemas); {_EXPECTED}")
    if kind is None:
        if obj in ({}, []):
            raise _err(path, "empty pose file (no people)")
        raise _err(path, f"unknown pose format; {_EXPECTED}")
    return kind


def _coco17(path, kps, where: str) -> np.ndarray:
    """(K, 3) keypoints -> (17, 3) COCO-17, finite numbers."""
    try:
        kps = np.asarray(kps, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise _err(path, f"{where}: keypoints must be numbers") from None
    if kps.ndim not in (1, 2):
        raise _err(path, f"{where}: keypoints must be a flat list [x, y, score] * K or K rows of 3")
    if kps.ndim == 1:
        if kps.size % 3:
            raise _err(path, f"{where}: {kps.size} keypoint values is not a multiple of 3 (x, y, score)")
        kps = kps.reshape(-1, 3)
    if kps.shape[0] not in _COCO_PREFIX_COUNTS or kps.shape[1] != 3:
        raise _err(path, f"{where}: {kps.shape[0]} keypoints; expected COCO-17 (or 26/133/136 starting with it)")
    kps = kps[:17]
    if not np.isfinite(kps).all() or np.abs(kps).max() > 1e7:
        raise _err(path, f"{where}: keypoints hold NaN, inf or values beyond 1e7 pixels")
    return kps.astype(np.float32)


def _frame_number(path, name: str) -> int:
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise _err(path, f"frame/image id {name!r} is not a name or a number")
    m = re.findall(r"[0-9]+", Path(str(name)).stem)
    if not m:
        raise _err(path, f"image_id {name!r} holds no frame number")
    if len(m[-1]) > 18:
        raise _err(path, f"frame number {m[-1]} in {name!r} is out of range")
    return int(m[-1])


def _track_id(path, pid) -> int:
    """A track (or MMPose frame) id as an int64-range integer: an int, an integral float, a digit string."""
    try:
        tid = int(pid) if not isinstance(pid, (bool, float)) else None
    except (TypeError, ValueError):
        tid = None
    if isinstance(pid, float) and pid.is_integer():
        tid = int(pid)
    if tid is None or abs(tid) > _INT64 // 2:
        raise _err(path, f"id {pid!r} is not an integer (or out of range)")
    return tid


def _group(path, entries: list[tuple[int, int, np.ndarray]]) -> PoseTracks:
    """(track id, frame, (17, 3)) triples -> tracks; a track seen twice in one frame is an error."""
    by_id: dict[int, dict[int, np.ndarray]] = {}
    for pid, frame, kp in entries:
        frames = by_id.setdefault(_track_id(path, pid), {})
        if frame in frames:
            raise _err(path, f"track {pid} appears twice in frame {frame}")
        frames[frame] = kp
    out = {}
    for pid in sorted(by_id):
        fr = sorted(by_id[pid])
        out[pid] = (np.asarray(fr, dtype=np.int64), np.stack([by_id[pid][f] for f in fr]).astype(np.float32))
    return out


def _track(path, detections: list[tuple[int, np.ndarray]], **tracker_kw) -> PoseTracks:
    per_frame: dict[int, list[np.ndarray]] = {}
    for frame, kp in detections:
        per_frame.setdefault(frame, []).append(kp)
    if not per_frame:
        raise _err(path, "empty pose file (no people)")
    return track_detections(((f, np.stack(p)) for f, p in sorted(per_frame.items())), **tracker_kw)


def _load_alphapose_tracked(path: Path, obj) -> PoseTracks:
    entries = []
    for pid, frames in obj.items():
        try:
            tid = _track_id(path, pid)
        except PoseFormatError:
            raise _err(path, f"person id {pid!r} is not an integer") from None
        for fid, det in frames.items():
            entries.append((tid, _frame_number(path, fid), _coco17(path, det["keypoints"], f"person {pid} frame {fid}")))
    if not entries:
        raise _err(path, "empty pose file (no people)")
    return _group(path, entries)


def _load_alphapose_results(path: Path, obj, **tracker_kw) -> PoseTracks:
    dets = [(_frame_number(path, d["image_id"]), _coco17(path, d["keypoints"], f"image {d['image_id']}")) for d in obj]
    ids = [d.get("idx") for d in obj]
    if all((isinstance(i, int) and not isinstance(i, bool) and abs(i) <= _INT64)
           or (isinstance(i, float) and i.is_integer() and abs(i) <= _INT64) for i in ids):
        return _group(path, [(int(i), f, k) for i, (f, k) in zip(ids, dets)])
    return _track(path, dets, **tracker_kw)


def _load_openpose(path: Path, **tracker_kw) -> PoseTracks:
    dets, ids, layouts = [], [], {}
    files = sorted(p for p in path.iterdir() if p.suffix == ".json")
    for f in files:
        m = _OPENPOSE_NAME.search(f.name)
        if not m:
            raise _err(f, "OpenPose file name must end in _<frame number>_keypoints.json")
        frame = int(m.group(1))
        for k, person in enumerate(_read_json(f)["people"]):
            try:
                vals = np.asarray(person.get("pose_keypoints_2d", []), dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                raise _err(f, f"person {k}: pose_keypoints_2d must be numbers") from None
            if vals.size == 75:
                table, layout = BODY25_TO_COCO17, "BODY_25"
            elif vals.size == 54:
                table, layout = COCO18_TO_COCO17, "COCO-18"
            else:
                raise _err(f, f"person {k}: {vals.size} pose_keypoints_2d values; expected 75 (BODY_25) or 54 (COCO-18)")
            layouts.setdefault(layout, f)
            dets.append((frame, _coco17(f, vals.reshape(-1, 3)[list(table)], f"person {k}")))
            pid = person.get("person_id", -1)
            ids.append(pid[0] if isinstance(pid, list) and pid else pid)
    if len(layouts) > 1:
        raise _err(path, "mixed pose formats: BODY_25 and COCO-18 files in one folder "
                         f"(e.g. {layouts['BODY_25'].name}, {layouts['COCO-18'].name})")
    if not dets:
        raise _err(path, "empty pose folder (no people in any frame)")
    if all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= _INT64 for i in ids):
        return _group(path, [(i, f, k) for i, (f, k) in zip(ids, dets)])
    return _track(path, dets, **tracker_kw)


def _load_mmpose(path: Path, obj, **tracker_kw) -> PoseTracks:
    if isinstance(obj, dict):
        frames, base = obj["instance_info"], 1  # topdown_demo_with_mmdet counts frames from 1
    else:
        frames, base = obj, 0  # MMPoseInferencer enumerates frames from 0
    dets, ids = [], []
    for fr in frames:
        frame = _track_id(path, fr["frame_id"]) - base  # an integer like a track id (checked >= 0 below)
        for k, inst in enumerate(fr["instances"]):
            try:
                xy = np.asarray(inst["keypoints"], dtype=np.float64)
                sc = np.asarray(inst["keypoint_scores"], dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                raise _err(path, f"frame {fr['frame_id']} instance {k}: keypoints and scores must be numbers") from None
            if xy.ndim != 2 or xy.shape[1] != 2 or sc.shape != (xy.shape[0],):
                raise _err(path, f"frame {fr['frame_id']} instance {k}: keypoints must be [[x, y]] * K with K keypoint_scores")
            dets.append((frame, _coco17(path, np.concatenate([xy, sc[:, None]], 1), f"frame {fr['frame_id']}")))
            ids.append(inst.get("track_id"))
    if not dets:
        raise _err(path, "empty pose file (no people)")
    if all(isinstance(i, int) and not isinstance(i, bool) and abs(i) <= _INT64 for i in ids):
        return _group(path, [(i, f, k) for i, (f, k) in zip(ids, dets)])
    return _track(path, dets, **tracker_kw)


def load_poses(path, fmt: str = "auto", **tracker_kw) -> PoseTracks:
    """Read a pose file or folder in any supported format into ``{track_id: (frames, kps17)}``.

    Args:
        path: the pose JSON (AlphaPose tracked / results, MMPose) or OpenPose folder.
        fmt: "auto" (detect) or one of FORMATS; a file that is not of the named format is an error.
        tracker_kw: passed to ``mgnet.data.tracker.track_detections`` for formats without ids.
    """
    path = Path(path)
    detected = detect_format(path)
    if fmt != "auto":
        if fmt not in FORMATS:
            raise PoseFormatError(f"unknown pose format {fmt!r}; expected one of {', '.join(FORMATS)} or 'auto'")
        if fmt != detected:
            raise _err(path, f"expected pose format {fmt!r} but the file is {detected!r}")
    try:
        if detected == "openpose":
            tracks = _load_openpose(path, **tracker_kw)
        else:
            obj = _read_json(path)
            if detected == "alphapose-tracked":
                tracks = _load_alphapose_tracked(path, obj)
            elif detected == "alphapose-results":
                tracks = _load_alphapose_results(path, obj, **tracker_kw)
            else:
                tracks = _load_mmpose(path, obj, **tracker_kw)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise _err(path, f"malformed {detected} pose file (missing or mistyped field {e})") from None
    for pid, (frames, _) in tracks.items():
        if frames.size and frames.min() < 0:
            raise _err(path, f"track {pid} has a negative frame index {int(frames.min())}")
    return tracks


def check_frame_range(tracks: PoseTracks, num_frames: int, pose_path, video_path) -> None:
    """PoseFormatError if any pose lies beyond the video's last frame (poses of another video)."""
    last = max((int(fr.max()) for fr, _ in tracks.values() if fr.size), default=-1)
    if last >= num_frames:
        raise PoseFormatError(
            f"{pose_path}: poses reach frame {last} but the video {os.fspath(video_path)} has only "
            f"{num_frames} frames (0..{num_frames - 1}); are these the poses of another video?"
        )


def _atomic_write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def save_poses(tracks: PoseTracks, path, fmt: str, num_frames: int | None = None,
               with_ids: bool = True, openpose_layout: str = "BODY_25") -> Path:
    """Write tracks in one of FORMATS (the inverse of ``load_poses``; for conversion and tests).

    ``with_ids=False`` leaves the track ids out where the format allows it (alphapose-results,
    openpose, mmpose), so reading back runs the tracker. ``openpose_layout``: "BODY_25" or "COCO-18"
    (neck = shoulder mean, mid-hip = hip mean, feet zero). ``num_frames``: OpenPose writes one file
    per frame, empty ones included; default: up to the last frame with a pose. ``mmpose`` writes the
    MMPoseInferencer list (0-based frame ids). Written under a temporary name, then renamed.
    """
    path = Path(path)
    rows = sorted((int(f), pid, kp[j]) for pid, (fr, kp) in tracks.items() for j, f in enumerate(fr))
    flat = lambda k: [float(v) for v in np.asarray(k, dtype=np.float32).reshape(-1)]  # noqa: E731
    if fmt == "alphapose-tracked":
        obj: dict = {}
        for f, pid, k in rows:
            obj.setdefault(str(pid), {})[str(f)] = {"keypoints": flat(k), "scores": float(k[:, 2].mean())}
        _atomic_write_json(path, obj)
    elif fmt == "alphapose-results":
        out = []
        for f, pid, k in rows:
            x1, y1 = k[:, :2].min(0)
            x2, y2 = k[:, :2].max(0)
            d = {"image_id": f"{f}.jpg", "category_id": 1, "keypoints": flat(k),
                 "score": float(k[:, 2].mean()), "box": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
            if with_ids:
                d["idx"] = int(pid)
            out.append(d)
        _atomic_write_json(path, out)
    elif fmt == "mmpose":
        last = max((f for f, _, _ in rows), default=-1)
        n = max(last + 1, num_frames or 0)
        frames = [{"frame_id": i, "instances": []} for i in range(n)]
        for f, pid, k in rows:
            inst = {"keypoints": [[float(x), float(y)] for x, y in k[:, :2]],
                    "keypoint_scores": [float(s) for s in k[:, 2]],
                    "bbox": [[float(v) for v in (*k[:, :2].min(0), *k[:, :2].max(0))]],
                    "bbox_score": float(k[:, 2].mean())}
            if with_ids:
                inst["track_id"] = int(pid)
            frames[f]["instances"].append(inst)
        _atomic_write_json(path, frames)
    elif fmt == "openpose":
        if openpose_layout not in ("BODY_25", "COCO-18"):
            raise ValueError(f"openpose_layout must be 'BODY_25' or 'COCO-18', got {openpose_layout!r}")
        table, nj = (BODY25_TO_COCO17, 25) if openpose_layout == "BODY_25" else (COCO18_TO_COCO17, 18)
        last = max((f for f, _, _ in rows), default=-1)
        n = max(last + 1, num_frames or 0)
        people: list[list] = [[] for _ in range(n)]
        for f, pid, k in rows:
            op = np.zeros((nj, 3), dtype=np.float32)
            op[list(table)] = k
            op[1] = (k[5] + k[6]) / 2  # neck
            if nj == 25:
                op[8] = (k[11] + k[12]) / 2  # mid-hip
            people[f].append({"person_id": [int(pid) if with_ids else -1], "pose_keypoints_2d": flat(op)})
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.mkdir(parents=True)
        for f in range(n):
            (tmp / f"{path.name}_{f:012d}_keypoints.json").write_text(json.dumps({"version": 1.3, "people": people[f]}))
        if path.exists():
            raise FileExistsError(f"{path}: already exists")
        os.replace(tmp, path)
    else:
        raise ValueError(f"unknown pose format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return path
