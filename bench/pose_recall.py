"""Recall and speed of the pose estimators on people of known size (not a pytest file).

    python bench/pose_recall.py [--frames 6] [--configs default,tiles2,hog] [--out bench/results/pose_recall.json]

Two sources of people whose true positions are known:

* ``walkers``: two figures of the synthetic benchmark's renderer walking in a 640 x 360 frame, at
  heights 24 ... 192 px (true COCO-17 joints); a person-frame counts as found when a detected pose's
  mean joint error is below 0.15 x the figure's height;
* ``astronaut``: scikit-image's photograph (a real person, waist up) scaled to 48 ... 256 px and
  pasted twice into a 640 x 360 grey frame; found when a detected nose lies within 0.1 x the
  pasted size of the true nose.

Recall = found / present; frames/s = frames / wall time of the estimator alone (decode excluded).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mgnet.data.pose_estimation import estimator_settings, make_estimator  # noqa: E402
from tests.data._pose_fixtures import walkers  # noqa: E402

CONFIGS = {"default": {}, "tiles2": {"tiles": 2}, "tiles3": {"tiles": 3}, "hog": {"detector": "hog"}}


def astronaut_frames(size, n, W=640, H=360):
    from PIL import Image
    from skimage import data
    im = Image.fromarray(data.astronaut()).resize((size, size), Image.BILINEAR)
    nose = np.array([223.0, 128.0]) * size / 512
    frames, truth = [], []
    for f in range(n):
        canvas = np.full((H, W, 3), 128, np.uint8)
        noses = []
        for x0 in (int(0.15 * W) + 2 * f, int(0.6 * W) - 2 * f):
            x0 = min(x0, W - size)
            y0 = max(0, (H - size) // 2)
            crop = np.asarray(im)[: H - y0, : W - x0]
            canvas[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
            noses.append(nose + [x0, y0])
        frames.append(canvas)
        truth.append(noses)
    return np.stack(frames), truth


def run(est, frames):
    est.reset()
    t = time.perf_counter()
    out = [est(f, i) for i, f in enumerate(frames)]
    return out, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--configs", default="default,tiles2,hog")
    ap.add_argument("--heights", default="24,32,48,64,96,128,192")
    ap.add_argument("--sizes", default="48,64,96,128,192,256")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = []
    for name in a.configs.split(","):
        est = make_estimator(estimator_settings("builtin", **CONFIGS[name]))
        for h in [int(x) for x in a.heights.split(",")]:
            frames, truth = walkers(n=a.frames, W=640, H=360, h=h, starts=((160, 1), (480, -1)), speed=2.0)
            dets, secs = run(est, frames)
            found = present = 0
            for f, k in enumerate(dets):
                for fr, kp in truth.values():
                    present += 1
                    if len(k) and np.abs(k[:, :, :2] - kp[f][None, :, :2]).mean((1, 2)).min() < 0.15 * h:
                        found += 1
            rows.append(dict(config=name, source="walkers", size=h, recall=round(found / present, 3),
                             fps=round(len(frames) / secs, 2)))
            print(rows[-1], flush=True)
        for s in [int(x) for x in a.sizes.split(",")]:
            frames, noses = astronaut_frames(s, a.frames)
            dets, secs = run(est, frames)
            found = present = 0
            for f, k in enumerate(dets):
                for nose in noses[f]:
                    present += 1
                    if len(k) and np.linalg.norm(k[:, 0, :2] - nose, axis=1).min() < 0.1 * s:
                        found += 1
            rows.append(dict(config=name, source="astronaut", size=s, recall=round(found / present, 3),
                             fps=round(len(frames) / secs, 2)))
            print(rows[-1], flush=True)
        est.close()
    meta = dict(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                load_average=os.getloadavg(), frames_per_case=a.frames)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
