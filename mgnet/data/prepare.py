"""`mgnet prepare`: decode each video once into the prepared-clip store of a split.

``prepare_split(data_cfg, split)`` validates the whole split first (every file exists, pose JSON
in the schema with 51 keypoint numbers, ground truth as long as the video, videos open and decode,
pose frames inside the video), then decodes each video once (decord batch reads / JPEG folders),
cuts human-centric crops for every (track segment, frame) row and scene images for the windows'
centre frames, and writes one shard per video (to a temporary folder, renamed when complete).
An interrupted run resumes from the finished shards. The store records the config that produced
it (and its hash); a different config rebuilds it. Layout: `mgnet.data.cache`.

CLI: ``mgnet prepare [hydra overrides]``, e.g. ``mgnet prepare data=shanghaitech data.root=/data/sht``;
prepares the splits in ``data.splits`` (default: train and test).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np

from .. import faults
from . import datasets, foreground
from .cache import FORMAT_VERSION, ClipStore
from .crops import crop_squares, person_boxes, scene_images
from .errors import DataError
from .synthetic import VERSION as SYNTH_VERSION
from .poses import coco17_to_openpose18, read_pose_json
from .video import open_frames
from .windows import MAX_JUMP, split_track, window_labels, window_starts

REQUIRED = ("kind", "root", "seg_len", "train_stride", "test_stride", "crop_size", "scene_size")
DEFAULTS = dict(cache_dir=None, max_gap=2, max_jump=MAX_JUMP, box_expand=0.2, box_min_conf=0.1, decode_chunk=64,
                splits=["train", "test"], pose_estimator="files", pose_model=None, det_model=None, pose_options=None)
# the fields that change what a store holds (others, e.g. decode_chunk, do not)
HASHED = ("kind", "root", "seg_len", "crop_size", "scene_size", "max_gap", "max_jump", "box_expand", "box_min_conf")


def data_config(data_cfg) -> dict:
    """The data config as a plain, resolved dict with defaults filled in; DataError for bad fields."""
    if data_cfg is None:
        raise DataError(None, "data config is None")
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(data_cfg, DictConfig):
            data_cfg = OmegaConf.to_container(data_cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    cfg = {**DEFAULTS, **dict(data_cfg)}
    missing = [k for k in REQUIRED if cfg.get(k) is None]
    if missing:
        raise DataError(None, f"data config lacks {', '.join('data.' + m for m in missing)}")
    if cfg["kind"] not in datasets.KINDS:
        raise DataError(None, f"data.kind must be one of {datasets.KINDS}, got {cfg['kind']!r}")
    for k in ("seg_len", "train_stride", "test_stride", "crop_size", "scene_size", "decode_chunk"):
        if not isinstance(cfg[k], int) or cfg[k] < 1:
            raise DataError(None, f"data.{k} must be a positive integer, got {cfg[k]!r}")
    if not isinstance(cfg["max_gap"], int) or cfg["max_gap"] < 0:
        raise DataError(None, f"data.max_gap must be an integer >= 0, got {cfg['max_gap']!r}")
    if isinstance(cfg["max_jump"], bool) or not isinstance(cfg["max_jump"], (int, float)) or not cfg["max_jump"] >= 0:
        raise DataError(None, f"data.max_jump must be a number >= 0 (0 keeps tracks whole), got {cfg['max_jump']!r}")
    cfg["max_jump"] = float(cfg["max_jump"])
    cfg["root"] = os.path.abspath(os.path.expanduser(str(cfg["root"])))
    if cfg["cache_dir"] is None:
        cfg["cache_dir"] = os.path.join(cfg["root"], "prepared")
    cfg["cache_dir"] = os.path.abspath(os.path.expanduser(str(cfg["cache_dir"])))
    from .pose_estimation.jobs import data_settings
    cfg["poses"] = data_settings(cfg)  # None: pose files; else the estimator's settings (checked here)
    if cfg["kind"] == "synthetic":
        synth = dict(cfg.get("synth") or {})
        cfg["synth"] = {"size": synth.get("size", "small"), "seed": int(synth.get("seed", 0))}
        variant = str(synth.get("variant") or "default")
        if variant != "default":  # absent for the default variant: its stores keep their hash
            from .synth_variants import get
            get(variant)
            cfg["synth"]["variant"] = variant
    return cfg


def stride_for(cfg: dict, split: str) -> int:
    """Training splits (name containing "train") use data.train_stride, all others data.test_stride."""
    return cfg["train_stride"] if "train" in split else cfg["test_stride"]


def config_hash(cfg: dict, split: str) -> str:
    key = {k: cfg.get(k) for k in HASHED}
    key.update(split=split, stride=stride_for(cfg, split), format=FORMAT_VERSION, synth=cfg.get("synth"),
               foreground=foreground.VERSION)
    if cfg["kind"] == "synthetic":
        key["synth_version"] = SYNTH_VERSION  # regenerated content invalidates the store
        if "variant" in (cfg.get("synth") or {}):
            from .synth_variants import VERSION as VARIANT_VERSION
            key["variant_version"] = VARIANT_VERSION
    if cfg.get("poses"):
        key["poses"] = cfg["poses"]  # extracted poses: another estimator means another store
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class _Plan:
    item: datasets.VideoItem
    n_frames: int
    size: tuple
    gt: np.ndarray | None
    types: np.ndarray | None
    row_frame: np.ndarray    # (R,) frame of each row
    row_kps: np.ndarray      # (R, 18, 3)
    windows: np.ndarray      # (Nw, 6): person, start, frame, label, row, scene_row
    scene_frames: np.ndarray  # (Q,) frames whose scene image is stored
    row_person: np.ndarray   # (R,) track id of each row
    people: dict             # {frame: (ids (m,), kps (m, 17, 3))} every raw detection (foreground.others_mask)


def plan_video(item: datasets.VideoItem, cfg: dict, split: str) -> _Plan:
    """Validate one video (files, JSON, gt length, decodes, pose frames in range) and lay out its rows."""
    tracks = read_pose_json(item.pose)
    src = open_frames(item.frames)
    n = len(src)
    gt = datasets.load_gt(item, n)
    types = datasets.load_types(item, n)
    for tr in tracks:
        if tr.frames[-1] >= n:
            raise DataError(item.pose, f"person {tr.person} has a pose at frame {int(tr.frames[-1])}, past the "
                                       f"end of {item.frames} ({n} frames)")
    T, stride = cfg["seg_len"], stride_for(cfg, split)
    row_frame, row_kps, row_person, windows = [], [], [], []
    r = 0
    for tr in tracks:
        for seg in split_track(tr, cfg["max_gap"], cfg["max_jump"], cfg["box_min_conf"]):
            starts = window_starts(len(seg), T, stride)
            if len(starts) == 0:
                continue
            f0 = seg.frames[starts]
            labels = window_labels(gt, f0, T)
            w = np.stack([np.full(len(starts), tr.person), f0, f0 + T // 2, labels, r + starts,
                          np.zeros(len(starts), np.int64)], 1)
            windows.append(w)
            row_frame.append(seg.frames)
            row_kps.append(coco17_to_openpose18(seg.kps))
            row_person.append(np.full(len(seg), tr.person, np.int64))
            r += len(seg)
    if windows:
        windows = np.concatenate(windows).astype(np.int64)
        row_frame = np.concatenate(row_frame)
        row_kps = np.concatenate(row_kps).astype(np.float32)
        row_person = np.concatenate(row_person)
    else:
        windows = np.zeros((0, 6), np.int64)
        row_frame = np.zeros(0, np.int64)
        row_kps = np.zeros((0, 18, 3), np.float32)
        row_person = np.zeros(0, np.int64)
    scene_frames = np.unique(windows[:, 2])
    windows[:, 5] = np.searchsorted(scene_frames, windows[:, 2])
    return _Plan(item, n, src.size, gt, types, row_frame, row_kps, windows, scene_frames, row_person,
                 people_by_frame(tracks))


NOBODY = (np.zeros(0, np.int64), np.zeros((0, 17, 3), np.float32))   # a frame without detections


def people_by_frame(tracks) -> dict:
    """``{frame: (ids (m,) int64, kps (m, J, 3) float32)}``: every raw detection of a video's tracks
    (objects with ``person``, ``frames``, ``kps``), the "other people" of foreground.others_mask."""
    by: dict = {}
    for tr in tracks:
        for f, k in zip(np.asarray(tr.frames).tolist(), np.asarray(tr.kps, np.float32)):
            by.setdefault(f, []).append((int(tr.person), k))
    return {f: (np.array([p for p, _ in v], np.int64), np.stack([k for _, k in v])) for f, v in by.items()}


def _atomic_save(path, arr):
    tmp = path + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


def build_shard(plan: _Plan, cfg: dict, shard_dir: str, chash: str, pbar=None) -> None:
    """Decode the video once and write its shard into `shard_dir` (via a temporary folder that is
    removed if anything, an interruption included, stops the build)."""
    tmp = shard_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        _write_shard(plan, cfg, tmp, chash, pbar)
        faults.point("prepare.shard")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(shard_dir, ignore_errors=True)
    os.replace(tmp, shard_dir)


def _write_shard(plan: _Plan, cfg: dict, tmp: str, chash: str, pbar) -> None:
    C, S = cfg["crop_size"], cfg["scene_size"]
    R = len(plan.row_frame)
    rgb = np.lib.format.open_memmap(os.path.join(tmp, "rgb.npy"), "w+", np.uint8, (R, 3, C, C))
    fg = np.zeros((R, foreground.GRID, foreground.GRID), np.uint8)   # foreground occupancy of each crop
    scene = np.zeros((len(plan.scene_frames), 3, S, S), np.uint8)
    boxes = person_boxes(plan.row_kps, cfg["box_expand"], cfg["box_min_conf"]) if R else np.zeros((0, 3), np.float32)
    order = np.argsort(plan.row_frame, kind="stable")
    sorted_frames = plan.row_frame[order]
    needed = np.unique(plan.row_frame)
    if len(needed):
        src = open_frames(plan.item.frames)
        bg, tau = foreground.source_background(src)
        chunk = cfg["decode_chunk"]
        contiguous = not os.path.isdir(plan.item.frames)  # video files: read consecutive runs
        i = 0
        while i < len(needed):
            if contiguous:
                lo = needed[i]
                idx = np.arange(lo, min(lo + chunk, plan.n_frames))
                j = np.searchsorted(needed, idx[-1], side="right")
            else:
                j = min(i + chunk, len(needed))
                idx = needed[i:j]
            frames = src.get(idx)
            for k, f in enumerate(idx):
                a, b = np.searchsorted(sorted_frames, [f, f + 1])
                if b > a:
                    rows = order[a:b]
                    rgb[rows] = crop_squares(frames[k], boxes[rows], C)
                    ids, kps = plan.people.get(int(f), NOBODY)
                    others = foreground.others_mask(boxes[rows], plan.row_person[rows], ids, kps, C, cfg["box_min_conf"])
                    fg[rows] = foreground.occupancy(rgb[rows], crop_squares(bg, boxes[rows], C), tau, exclude=others)
            sel = np.nonzero(np.isin(idx, plan.scene_frames))[0]
            if len(sel):
                scene[np.searchsorted(plan.scene_frames, idx[sel])] = scene_images(frames[sel], S)
            if pbar is not None:
                pbar.update(j - i)
            i = j
    rgb.flush()
    del rgb
    np.save(os.path.join(tmp, "kps.npy"), plan.row_kps)
    np.save(os.path.join(tmp, "fg.npy"), fg)
    np.save(os.path.join(tmp, "scene.npy"), scene)
    np.save(os.path.join(tmp, "windows.npy"), plan.windows)
    if plan.gt is not None:
        np.save(os.path.join(tmp, "gt.npy"), plan.gt)
    if plan.types is not None:
        np.save(os.path.join(tmp, "types.npy"), plan.types)
    with open(os.path.join(tmp, "shard.json"), "w") as f:
        json.dump(dict(hash=chash, num_frames=plan.n_frames, frame_size=list(plan.size),
                       scene=plan.item.scene, rows=R, windows=len(plan.windows)), f)


def _shard_ok(shard_dir, chash):
    p = os.path.join(shard_dir, "shard.json")
    if not os.path.isfile(p):
        return None
    try:
        with open(p) as f:
            info = json.load(f)
    except ValueError:
        return None
    return info if info.get("hash") == chash else None


def _ensure_synthetic(cfg, progress):
    from .synthetic import current_identity, generate, identity
    s = cfg["synth"]
    variant = s.get("variant", "default")
    meta = os.path.join(cfg["root"], "synth.json")
    vtext = "" if variant == "default" else f", variant {variant}"
    if os.path.isfile(meta):
        with open(meta) as f:
            m = json.load(f)
        if identity(m) == current_identity(s["size"], s["seed"], variant):
            return
        mv = m.get("variant", "default")
        # said even without progress output: the folder's content (and its prepared clips) is replaced
        print(f"mgnet prepare: {cfg['root']} holds the synthetic benchmark {m.get('size')}, seed {m.get('seed')}"
              f"{'' if mv == 'default' else ', variant ' + str(mv)}, generator version {m.get('version')}; "
              f"replacing it with {s['size']}, seed {s['seed']}{vtext}, version {SYNTH_VERSION}", file=sys.stderr)
    if progress:
        print(f"mgnet prepare: generating the synthetic benchmark ({s['size']}, seed {s['seed']}{vtext}) into "
              f"{cfg['root']}", file=sys.stderr)
    generate(cfg["root"], s["size"], s["seed"], force=os.path.isfile(meta), variant=variant)


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock file, so concurrent `mgnet prepare` runs on one store take turns."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: no locking
            pass
        yield


def prepare_split(data_cfg, split: str, progress: bool = True) -> ClipStore:
    """Build the store of `split` if missing or stale (config hash), else open it. Returns the ClipStore."""
    cfg = data_config(data_cfg)
    if not isinstance(split, str) or not split:
        raise DataError(None, f"split must be a non-empty string, got {split!r}")
    if cfg["kind"] == "synthetic":
        with _locked(cfg["root"].rstrip(os.sep) + ".lock"):
            _ensure_synthetic(cfg, progress)
    if not os.path.isdir(cfg["root"]):  # checked before the lock file creates any folder
        raise DataError(cfg["root"], "dataset root folder not found")
    with _locked(os.path.join(cfg["cache_dir"], f".{split}.lock")):
        return _prepare_locked(cfg, split, progress)


def _prepare_locked(cfg: dict, split: str, progress: bool) -> ClipStore:
    chash = config_hash(cfg, split)
    store_dir = os.path.join(cfg["cache_dir"], split)
    meta_path = os.path.join(store_dir, "store.json")
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                if json.load(f).get("hash") == chash:
                    return ClipStore(store_dir)
        except ValueError:
            pass
        os.remove(meta_path)  # stale: rebuilt below (shards of another config are replaced)
    t0 = time.time()
    items = datasets.list_videos(cfg["kind"], cfg["root"], split, need_pose=not cfg.get("poses"))
    if cfg.get("poses"):
        from .pose_estimation.jobs import prepare_poses
        items = prepare_poses(items, cfg, split, progress)
    shard_root = os.path.join(store_dir, "shards")
    os.makedirs(shard_root, exist_ok=True)
    names = {it.name for it in items}
    for d in os.listdir(shard_root):  # other configs' or vanished videos' shards, temp leftovers
        if d not in names or not _shard_ok(os.path.join(shard_root, d), chash):
            shutil.rmtree(os.path.join(shard_root, d), ignore_errors=True)
    todo = [it for it in items if not _shard_ok(os.path.join(shard_root, it.name), chash)]
    # validate everything before decoding anything
    plans = [plan_video(it, cfg, split) for it in todo]
    from tqdm import tqdm
    total = sum(len(np.unique(p.row_frame)) for p in plans)
    with tqdm(total=total, unit="frame", desc=f"prepare {split}", disable=not progress or not plans,
              file=sys.stderr) as pbar:
        for p in plans:
            build_shard(p, cfg, os.path.join(shard_root, p.item.name), chash, pbar)
    _finalize(cfg, split, chash, items, store_dir, decoded_frames=total, seconds=time.time() - t0)
    return ClipStore(store_dir)


def _finalize(cfg, split, chash, items, store_dir, decoded_frames, seconds):
    index, num_frames, frame_size, scenes = [], {}, {}, {}
    for v, it in enumerate(items):
        d = os.path.join(store_dir, "shards", it.name)
        info = _shard_ok(d, chash)
        w = np.load(os.path.join(d, "windows.npy"))
        index.append(np.concatenate([np.full((len(w), 1), v, np.int64), w], 1))
        num_frames[it.name] = info["num_frames"]
        frame_size[it.name] = info["frame_size"]
        scenes[it.name] = info["scene"]
    index = np.concatenate(index) if index else np.zeros((0, 7), np.int64)
    _atomic_save(os.path.join(store_dir, "index.npy"), index)
    faults.point("prepare.index")
    meta = dict(format=FORMAT_VERSION, hash=chash, split=split, config=cfg, seg_len=cfg["seg_len"],
                stride=stride_for(cfg, split), videos=[it.name for it in items], num_frames=num_frames,
                frame_size=frame_size, scenes=scenes,
                type_names={str(k): v for k, v in datasets.type_names(cfg["kind"], cfg["root"]).items()},
                clips=int(len(index)), build=dict(decoded_frames=int(decoded_frames), seconds=round(seconds, 2)))
    tmp = os.path.join(store_dir, "store.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(store_dir, "store.json"))


def compose_data_config(overrides: list[str]):
    """The `data` node of mgnet/conf composed with hydra overrides (the data group alone if the
    top-level config.yaml is absent)."""
    from hydra import compose, initialize_config_dir
    conf_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        if os.path.isfile(os.path.join(conf_dir, "config.yaml")):
            return compose(config_name="config", overrides=list(overrides)).data
        ov = [("+" + o if o.startswith("data=") else o) for o in overrides]
        if not any(o.startswith("+data=") for o in ov):
            ov.insert(0, "+data=synthetic")
        return compose(overrides=ov).data
