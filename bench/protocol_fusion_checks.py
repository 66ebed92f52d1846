"""Two fusion candidates re-rated on a finished `mgnet protocol` run, without training again:

    python bench/protocol_fusion_checks.py /tmp/proto-selection     # -> fusion_checks.json there

For each cell (its run folder: model, score_stats.json, eval/clip_scores.npz) the default fusion
(z-scores of S_pose and S_app against the training clips' scores, pos_mean, S_pose x 0.5) is
recomputed from the raw clip scores, then
  * rss: the root of the weighted mean of the squared positive z-scores instead of their mean. For
    Gaussian tails -log p ~ z^2 / 2, so this is the shape of Fisher's combination of independent
    evidence: one component far out is diluted less by a silent one than under the mean, and two
    moderate ones still add up (unlike max);
  * per-scene z: each component's mean and std taken over the training clips of the test clip's
    scene (the scene its view is placed in) instead of over every training clip, for cameras
    whose normal scores differ (occlusion, distance, light);
  * S_app abstains for small people: below H px of keypoint height (median over the clip's frames;
    H = 12 / 16 / 24, 1.5 / 2 / 3 px per cell of the 8 x 8 occupancy grid) the occupancy map is
    mostly quantisation and compression noise, so its z counts 0 there.
Frame AUCs as mgnet.scoring's protocol (bench/protocol_choices.aucs), mean and minimum over cells.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

from mgnet import engine, scoring  # noqa: E402
from mgnet.config_schema import load_run_config  # noqa: E402
from mgnet.data.prepare import prepare_split  # noqa: E402
from mgnet.models.scene import view_descriptor  # noqa: E402
from protocol_choices import aucs  # noqa: E402

NAMES = ("pose", "app")
TYPES = ("micro", "motion", "appearance", "scene")


def clip_scores(model, store, training: bool) -> dict:
    """S_pose, S_app, scene code and placed scene per clip (training: own track left out)."""
    out = {k: [] for k in NAMES + ("scene", "placed")}
    ctx = model.leave_own_track_out() if training else torch.no_grad()
    with ctx, torch.inference_mode():
        for b in torch.utils.data.DataLoader(store, batch_size=256):
            s = model.scores(b, components=NAMES)
            for k in NAMES:
                out[k].append(s[k].double().numpy())
            out["scene"].append(b["scene_id"].numpy())
            out["placed"].append(model.seg_mem.scene_of(view_descriptor(b["scene"])).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def heights(store) -> np.ndarray:
    """(N,) each clip's person height in pixels: the median over its frames of the keypoints' y span
    (joints above confidence 0.1)."""
    out = np.zeros(len(store))
    for i in range(len(store)):
        v, _, _, _, _, row, _ = (int(x) for x in store.index[i])
        kps = np.asarray(store._shard(v)["kps"][row:row + store.seg_len])
        hs = [f[f[:, 2] > 0.1, 1].ptp() for f in kps if (f[:, 2] > 0.1).sum() >= 2]
        out[i] = np.median(hs) if hs else 0.0
    return out


def combine(parts: np.ndarray, w: np.ndarray, how: str) -> np.ndarray:
    """mgnet.scoring's combine for "pos_mean" (the default); "rss" is the candidate defined here."""
    if how != "rss":
        return scoring.combine_parts(parts, w, how)
    pos = parts * (parts > 0)
    return np.sqrt((pos ** 2) @ w / w.sum())


def cell_checks(cell_dir: str) -> dict:
    cfg = load_run_config(os.path.join(cell_dir, "config.yaml"))
    model, _ = engine.load_run(cell_dir)
    model.eval()
    clip = dict(np.load(os.path.join(cell_dir, "eval", "clip_scores.npz")))
    stats = json.load(open(os.path.join(cell_dir, "score_stats.json")))
    tr, te = prepare_split(cfg.data, "train"), prepare_split(cfg.data, "test")
    s_tr, s_te = clip_scores(model, tr, True), clip_scores(model, te, False)
    w = np.array([float(cfg.model.lambda_pose), float(cfg.model.lambda_app)])
    glob = np.stack([scoring.normalize(clip[k], k, "z", stats) for k in NAMES], -1)
    per = np.zeros_like(glob)
    for j, k in enumerate(NAMES):
        for s in np.unique(s_tr["scene"]):
            m, t = s_tr["scene"] == s, s_te["placed"] == s
            per[t, j] = (clip[k][t] - s_tr[k][m].mean()) / s_tr[k][m].std()
    sigma = float(cfg.eval.sigma)
    res = {"default (z, pos_mean)": aucs(combine(glob, w, "pos_mean"), clip, te, sigma),
           "rss of positive z": aucs(combine(glob, w, "rss"), clip, te, sigma),
           "per-scene z, pos_mean": aucs(combine(per, w, "pos_mean"), clip, te, sigma)}
    h = heights(te)
    for H in (12, 16, 24):
        abstain = glob.copy()
        abstain[h < H, 1] = 0.0
        res[f"S_app abstains below {H} px"] = aucs(combine(abstain, w, "pos_mean"), clip, te, sigma)
    return res


def main(argv) -> int:
    root = argv[0]
    torch.set_num_threads(1)
    cells = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "cell.json")))
    res = {c: cell_checks(os.path.join(root, c)) for c in cells}
    rows = {}
    for c in cells:
        for cand, a in res[c].items():
            rows.setdefault(cand, {t: [] for t in TYPES})
            for t in TYPES:
                rows[cand][t].append(a[t])
    print("| candidate | " + " | ".join(TYPES) + " |\n|---|" + "---|" * len(TYPES))
    for cand, r in rows.items():
        print(f"| {cand} | " + " | ".join(f"{np.mean(r[t]):.3f} / {np.min(r[t]):.3f}" for t in TYPES) + " |")
    tmp = os.path.join(root, "fusion_checks.json.tmp")
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, os.path.join(root, "fusion_checks.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
