"""The prepared-clip store: what training and evaluation read (never the raw videos).

Layout of one split's store (``<cache_dir>/<split>/``), written by `mgnet.data.prepare`::

    store.json                   config + hash, videos, frames per video, frame sizes, scenes, type names
    index.npy                    (N, 7) int64 per window: video, person, start, frame, label, row, scene_row
    shards/<video>/rgb.npy       (R, 3, C, C) uint8 crops, one row per (track segment, frame)
    shards/<video>/kps.npy       (R, 18, 3) float32 pixel x, y, confidence (OpenPose-18 order)
    shards/<video>/fg.npy        (R, 8, 8) uint8 foreground occupancy of each crop (data/foreground.py)
    shards/<video>/scene.npy     (Q, 3, S, S) uint8 scene images of the windows' centre frames
    shards/<video>/gt.npy        per-frame labels (1 = abnormal), if known
    shards/<video>/types.npy     per-frame anomaly type ids, if known
    shards/<video>/shard.json    the config hash, frame count and size

A window's T crops are rows ``row .. row + T - 1`` of its video's shard, so overlapping windows
(test stride 1) share their crops instead of storing each T times. Arrays are memory-mapped; a
worker process opens at most `MAX_OPEN` shards at a time.
"""
from __future__ import annotations

import json
import os
import zlib
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError
from .poses import normalize_pose

FORMAT_VERSION = 2    # 2: shards hold fg.npy (foreground occupancy of every crop)
INDEX_COLUMNS = ("video", "person", "start", "frame", "label", "row", "scene_row")
MAX_OPEN = 64


def scene_code(scene) -> int:
    """A scene name (ShanghaiTech's video prefix, UBnormal's Scene<k>, scenes.json) as a stable
    non-negative int64 (CRC-32), the ``scene_id`` of a store's clips."""
    return zlib.crc32(str(scene).encode("utf-8")) & 0x7FFFFFFF


class ClipStore(Dataset):
    """A torch Dataset over one prepared split. ``store[i]`` is a dict of tensors:

    rgb uint8 (3, T, C, C) crops; pose float32 (2, T, 18) STG-NF-normalised xy; pose_conf float32
    (T, 18); scene uint8 (3, S, S) at the centre frame; fg uint8 (T, 8, 8) the crops' foreground
    occupancy (data/foreground.py, fraction x 255); video, person, start, frame (= start + T//2),
    label (1 abnormal, 0 normal, -1 unknown), scene_id (``scene_code`` of the video's scene) as int64
    scalars.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        meta_path = os.path.join(self.path, "store.json")
        if not os.path.isfile(meta_path):
            raise DataError(self.path, "not a prepared store (no store.json; run `mgnet prepare`)")
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(meta_path, f"store format {meta.get('format')} is not {FORMAT_VERSION}; prepare it again")
        self.meta = meta
        self.config = meta["config"]
        self.hash = meta["hash"]
        self.split = meta["split"]
        self.seg_len = int(meta["seg_len"])
        self.videos = list(meta["videos"])
        self.num_frames = {k: int(v) for k, v in meta["num_frames"].items()}
        self.frame_size = {k: tuple(v) for k, v in meta["frame_size"].items()}
        self.scenes = dict(meta["scenes"])
        self.type_names = {int(k): v for k, v in meta.get("type_names", {}).items()}
        self.index = np.load(os.path.join(self.path, "index.npy"))
        self._open = OrderedDict()

    def __len__(self):
        return len(self.index)

    def __getstate__(self):  # DataLoader workers (spawn) reopen the memory maps themselves
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

    def __repr__(self):
        return f"ClipStore({self.path!r}, split={self.split!r}, videos={len(self.videos)}, clips={len(self)})"

    def _shard(self, v: int) -> dict:
        arrs = self._open.get(v)
        if arrs is None:
            d = os.path.join(self.path, "shards", self.videos[v])
            arrs = {k: np.load(os.path.join(d, k + ".npy"), mmap_mode="r") for k in ("rgb", "kps", "scene", "fg")}
            self._open[v] = arrs
            if len(self._open) > MAX_OPEN:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(v)
        return arrs

    def __getitem__(self, i):
        if i < 0:
            i += len(self)
        v, person, start, frame, label, row, srow = (int(x) for x in self.index[i])
        a = self._shard(v)
        T = self.seg_len
        rgb = np.ascontiguousarray(a["rgb"][row:row + T].transpose(1, 0, 2, 3))
        kps = np.asarray(a["kps"][row:row + T])
        pose = normalize_pose(kps[..., :2], self.frame_size[self.videos[v]]).transpose(2, 0, 1)
        return {
            "rgb": torch.from_numpy(rgb),
            "pose": torch.from_numpy(np.ascontiguousarray(pose)),
            "pose_conf": torch.from_numpy(np.ascontiguousarray(kps[..., 2])),
            "scene": torch.from_numpy(np.array(a["scene"][srow])),
            "fg": torch.from_numpy(np.array(a["fg"][row:row + T])),
            "video": torch.tensor(v), "person": torch.tensor(person), "start": torch.tensor(start),
            "frame": torch.tensor(frame), "label": torch.tensor(label),
            "scene_id": torch.tensor(scene_code(self.scenes[self.videos[v]])),
        }

    def _video_file(self, name, what):
        if name not in self.num_frames:
            raise KeyError(f"video {name!r} is not in this store ({self.path})")
        p = os.path.join(self.path, "shards", name, what + ".npy")
        return np.load(p) if os.path.isfile(p) else None

    def gt(self, name: str):
        """Per-frame labels of a video, uint8 (1 = abnormal), or None if unknown."""
        a = self._video_file(name, "gt")
        return None if a is None else a.astype(np.uint8)

    def anomaly_types(self, name: str):
        """Per-frame anomaly type ids of a video (keys of `type_names`), or None."""
        a = self._video_file(name, "types")
        return None if a is None else a.astype(np.int64)

    def column(self, name: str) -> np.ndarray:
        """One index column for all windows (e.g. "video", "frame", "label", "person")."""
        return self.index[:, INDEX_COLUMNS.index(name)]
