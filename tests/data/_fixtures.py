"""Small on-disk fixtures in each dataset format, written by the tests themselves."""
from __future__ import annotations

import os

import numpy as np

from mgnet.data.poses import write_pose_json


def frames_pattern(n, w=64, h=48, seed=0):
    """Smooth, distinct frames (n, h, w, 3) uint8 that survive lossy coding well."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        base = rng.uniform(40, 200, 3)
        out[t] = np.clip(base + 30 * np.sin(xx / 7.0 + t * 0.3)[..., None] + 20 * np.cos(yy / 5.0)[..., None], 0, 255)
    return out


def write_video(path, frames, fps=25):
    import imageio_ffmpeg
    h, w = frames.shape[1:3]
    wr = imageio_ffmpeg.write_frames(path, (w, h), fps=fps, codec="libx264", quality=None, pix_fmt_out="yuv420p",
                                     macro_block_size=1, ffmpeg_log_level="error",
                                     output_params=["-preset", "ultrafast", "-crf", "10"])
    wr.send(None)
    for f in frames:
        wr.send(np.ascontiguousarray(f))
    wr.close()


def write_jpegs(folder, frames):
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    for t, f in enumerate(frames):
        Image.fromarray(f).save(os.path.join(folder, f"{t:03d}.jpg"), quality=95)


def person_kps(t, x0=20.0, y0=10.0, h=30.0, seed=0):
    """A plausible COCO-17 skeleton (17, 3) drifting with t."""
    rng = np.random.default_rng(seed * 1000 + t)
    base = np.array([[0, 0], [-1, -1], [1, -1], [-2, 0], [2, 0], [-4, 6], [4, 6], [-5, 12], [5, 12],
                     [-5, 17], [5, 17], [-3, 17], [3, 17], [-3, 24], [3, 24], [-3, 30], [3, 30]], float)
    xy = base * (h / 30.0) + np.array([x0 + 0.5 * t, y0]) + rng.normal(0, 0.3, base.shape)
    conf = rng.uniform(0.5, 0.9, (17, 1))
    return np.concatenate([xy, conf], 1)


def tracks_for(frames_by_person, seed=0):
    return {pid: {t: person_kps(t, x0=10 + 12 * pid, seed=seed + pid) for t in frames}
            for pid, frames in frames_by_person.items()}


def make_shanghaitech(root, n_train=40, n_test=36, w=64, h=48, train_tracks=None, test_tracks=None, gt=None):
    """ShanghaiTech layout with one train video (01_001) and one test video (01_0001)."""
    os.makedirs(os.path.join(root, "training", "videos"), exist_ok=True)
    for d in ("pose/train", "pose/test", "gt/test_frame_mask"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    write_video(os.path.join(root, "training", "videos", "01_001.avi"), frames_pattern(n_train, w, h, 1))
    write_jpegs(os.path.join(root, "testing", "frames", "01_0001"), frames_pattern(n_test, w, h, 2))
    train_tracks = train_tracks or {1: range(0, n_train), 2: list(range(0, 20)) + list(range(22, n_train))}
    test_tracks = test_tracks or {1: range(0, n_test), 3: range(5, 30)}
    write_pose_json(os.path.join(root, "pose", "train", "01_001_alphapose_tracked_person.json"), tracks_for(train_tracks))
    write_pose_json(os.path.join(root, "pose", "test", "01_0001_alphapose_tracked_person.json"), tracks_for(test_tracks, 7))
    if gt is None:
        gt = np.zeros(n_test, np.uint8)
        gt[20:30] = 1
    np.save(os.path.join(root, "gt", "test_frame_mask", "01_0001.npy"), gt)
    return root


def data_cfg(root, kind="shanghaitech", **kw):
    cfg = dict(kind=kind, root=str(root), cache_dir=os.path.join(str(root), "prepared"), seg_len=8,
               train_stride=2, test_stride=1, crop_size=16, scene_size=8)
    cfg.update(kw)
    return cfg
