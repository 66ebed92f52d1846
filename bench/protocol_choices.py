"""Choose the scoring defaults on the validation protocol: every candidate fusion (and S_pose with or
without its scene conditioning) scored on every finished cell of a `mgnet protocol` run, without
training again.

    python bench/protocol_choices.py runs/protocol-selection            # -> choices.json, choices.md there

A cell's run folder holds its model (stage 4), score_stats.json and eval/clip_scores.npz (the raw
test clip scores). S_pose is recomputed both ways from the prepared stores (the segment memory
alone, no network): against every kept training segment (``by_scene`` off) and against the
segments of the clip's own scene (on), on the test split and, leaving each clip's own track out,
on the training split for its z-score statistics. Each candidate is then a fusion of the raw
components (mgnet.scoring.fuse: normalisation, weights, combine) and is rated by the frame AUCs of
mgnet.scoring's protocol, mean and minimum over cells. Candidates are few and fixed below, chosen
for a reason that holds on real footage, not searched: the defaults are the best mean micro AUC
among them, and the table shows how close the others come.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List

import numpy as np
import torch

from mgnet import engine, scoring
from mgnet.config_schema import load_run_config
from mgnet.data.prepare import prepare_split
from mgnet.models.scene import view_descriptor
from mgnet.protocol import TYPES

# (name, S_pose scene-conditioned?, norm, combine, weights {component: lambda}; 0 drops a component).
# The component sets: all four, and each one left out, S_pose global vs by scene; three combines.
SETS = {"all": {"mo": 1, "app": 1, "mm": 1, "pose": 1}, "no S_mo": {"mo": 0, "app": 1, "mm": 1, "pose": 1},
        "no S_app": {"mo": 1, "app": 0, "mm": 1, "pose": 1}, "no S_mm": {"mo": 1, "app": 1, "mm": 0, "pose": 1},
        "S_pose + S_app": {"mo": 0, "app": 1, "mm": 0, "pose": 1}}
CANDIDATES = [("eq.16 minmax sum (paper)", False, "minmax", "sum", {"mo": 1, "app": 1, "mm": 1, "pose": 0}),
              ("z pos_mean all, S_pose global", False, "z", "pos_mean", SETS["all"])]
CANDIDATES += [(f"z {combine} {name}, S_pose scene", True, "z", combine, w)
               for combine in ("pos_mean", "sum", "max") for name, w in SETS.items()]


@torch.no_grad()
def s_pose(model, store, by_scene: bool, leave_out: bool, batch_size: int = 256) -> np.ndarray:
    """S_pose of every clip of ``store`` from the model's segment memory alone."""
    seg = model.seg_mem
    old = seg.by_scene, seg.exclude_own_track
    seg.by_scene, seg.exclude_own_track = by_scene, leave_out
    out = []
    try:
        loader = torch.utils.data.DataLoader(store, batch_size=batch_size)
        for b in loader:
            track = model._tracks(b, b["rgb"].shape[0]) if leave_out else None
            out.append(seg(model._pose(b), track, view_descriptor(b["scene"]) if by_scene else None).double().numpy())
    finally:
        seg.by_scene, seg.exclude_own_track = old
    return np.concatenate(out)


def aucs(fused: np.ndarray, clip: Dict[str, np.ndarray], store, sigma: float) -> Dict[str, float]:
    labels = {n: np.asarray(store.gt(n)).astype(np.int64) for n in store.videos if store.gt(n) is not None}
    num_frames = {n: store.num_frames[n] for n in labels}
    curves = scoring.frame_scores(fused, clip["video"], clip["frame"], clip["person"], num_frames, sigma,
                                  names=store.videos)
    out = {"micro": scoring.frame_auc(curves, labels)["micro"]}
    types = {n: (np.zeros_like(labels[n]) if store.anomaly_types(n) is None else store.anomaly_types(n)) for n in labels}
    for tid, tname in sorted(store.type_names.items()):
        if tid and tname in TYPES:
            out[tname] = scoring.type_auc(curves, labels, types, tid)
    return out


def cell_candidates(cell_dir: str) -> Dict[str, Dict[str, float]]:
    cfg = load_run_config(os.path.join(cell_dir, "config.yaml"))
    model, _ = engine.load_run(cell_dir)
    clip = dict(np.load(os.path.join(cell_dir, "eval", "clip_scores.npz")))
    stats0 = json.load(open(os.path.join(cell_dir, "score_stats.json")))
    train_store, test_store = prepare_split(cfg.data, "train"), prepare_split(cfg.data, "test")
    pose, stats = {}, {}
    for by_scene in (False, True):
        pose[by_scene] = s_pose(model, test_store, by_scene, False)
        stats[by_scene] = dict(stats0, pose=scoring.summary_stats(s_pose(model, train_store, by_scene, True)))
    # how often a test clip is placed in its own video's scene (diagnostic of view matching)
    seg, hits = model.seg_mem, []
    for b in torch.utils.data.DataLoader(test_store, batch_size=512):
        hits.append((seg.scene_of(view_descriptor(b["scene"])) == b["scene_id"]).float().numpy())
    placed = float(np.concatenate(hits).mean())
    res = {"_scene_placement": {"micro": placed}}
    sigma = float(cfg.eval.sigma)
    for name, by_scene, norm, combine, w in CANDIDATES:
        comps = {k: clip[k] for k in scoring.COMPONENTS}
        if w.get("pose"):
            comps["pose"] = pose[by_scene]
        fused = scoring.fuse(comps, {k: float(v) for k, v in w.items()}, stats=stats[by_scene] if norm == "z" else None,
                             norm=norm, combine=combine)
        res[name] = aucs(fused, clip, test_store, sigma)
    for by_scene in (False, True):
        res[f"S_pose alone ({'scene' if by_scene else 'global'})"] = aucs(pose[by_scene], clip, test_store, sigma)
    for k in ("mo", "app", "mm", "nll"):
        res[f"S_{k} alone"] = aucs(clip[k], clip, test_store, sigma)
    return res


def main(argv: List[str]) -> int:
    root = argv[0] if argv else "runs/protocol-selection"
    cells = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "cell.json")))
    if not cells:
        print(f"protocol_choices: no finished cell under {root}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    per = {c: cell_candidates(os.path.join(root, c)) for c in cells}
    names = list(next(iter(per.values())))
    lines = [f"Scoring candidates on {len(cells)} protocol cells ({', '.join(cells)}): frame AUC mean / min over cells.",
             "", "| candidate | " + " | ".join(TYPES) + " |", "|---|" + "---|" * len(TYPES)]
    summary = {}
    for n in names:
        row = {}
        for t in TYPES:
            v = [per[c][n].get(t, float("nan")) for c in cells]
            v = [x for x in v if x == x]
            row[t] = (float(np.mean(v)), float(np.min(v))) if v else (float("nan"), float("nan"))
        summary[n] = row
        lines.append(f"| {n} | " + " | ".join("n/a" if row[t][0] != row[t][0] else f"{row[t][0]:.3f} / {row[t][1]:.3f}"
                                            for t in TYPES) + " |")
    lines += ["", "| cell | candidate | " + " | ".join(TYPES) + " |", "|---|---|" + "---|" * len(TYPES)]
    for c in cells:
        for n in names:
            lines.append(f"| {c} | {n} | " + " | ".join(f"{per[c][n][t]:.3f}" if t in per[c][n] else "n/a" for t in TYPES) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(root, "choices.json"), "w") as f:
        json.dump({"cells": per, "summary": summary}, f, indent=1)
    with open(os.path.join(root, "choices.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
