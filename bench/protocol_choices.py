"""Choose the scoring defaults on the validation protocol: every candidate S_app, S_pose and fusion
scored on every finished cell of a `mgnet protocol` run, without training again.

    python bench/protocol_choices.py runs/protocol-selection            # -> choices.json, choices.md there

A cell's run folder holds its model (stage 4), score_stats.json and eval/clip_scores.npz (the raw
test clip scores of S_mo, S_app (cube colour memory), S_mm and STG-NF). From the prepared stores
(rebuilt with the foreground occupancy maps when older) the two nearest-neighbour memories are
fitted afresh, as stage 4 fits them (models/memory.SegmentMemory, k=1): pose segments (S_pose) and
foreground occupancy maps (S_app with ``model.app_target=foreground``), each over every training
clip and by scene; test scores, and training scores with each clip's own track left out for the
z-score statistics. Each candidate is then a fusion of raw components (mgnet.scoring.fuse:
normalisation, weights, combine) rated by the frame AUCs of mgnet.scoring's protocol, mean and
minimum over cells. The candidates are few and fixed below, each with a reason that holds on real
footage, not searched: the defaults are the best mean micro AUC among them, and the table shows
how close the others come.
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

# Candidates: which S_app ("run": the run's own, eval/clip_scores.npz, named after its
# model.app_target in the table: cubes, foreground or memory; "fg": the foreground-occupancy memory),
# S_pose and S_app's memory by scene or over every training clip, the normalisation and combine,
# and the weights {component: lambda} (0 drops a component).
ALL = {"mo": 1, "app": 1, "mm": 1, "pose": 1}
CANDIDATES = [("eq.16 minmax sum (paper; S_app {run})", "run", False, "minmax", "sum", {**ALL, "pose": 0}),
              ("z pos_mean all, S_app {run}, S_pose global", "run", False, "z", "pos_mean", ALL),
              ("z pos_mean all, S_app {run}, S_pose by scene", "run", True, "z", "pos_mean", ALL)]
SETS = {"all": ALL, "no S_mo": {**ALL, "mo": 0}, "no S_mm": {**ALL, "mm": 0},
        "S_pose + S_app": {"mo": 0, "app": 1, "mm": 0, "pose": 1}}
CANDIDATES += [(f"z {combine} {name}, S_app fg, {'by scene' if sc else 'global'}", "fg", sc, "z", combine, w)
               for sc in (True, False) for combine in ("pos_mean", "sum", "max") for name, w in SETS.items()]
# the weight of S_pose beside S_app (model.lambda_pose): its normal clips have a heavier tail of
# z-scores (rare normal gaits, clips cut by an occlusion) than S_app's, which costs appearance frames
CANDIDATES += [(f"z pos_mean S_pose x {lp} + S_app, S_app fg, by scene", "fg", True, "z", "pos_mean",
                {"mo": 0, "app": 1, "mm": 0, "pose": lp}) for lp in (0.25, 0.5, 0.75)]


def _knn(slots: int, dim: int, by_scene: bool):
    """A SegmentMemory as stage 4 builds it (k=1): ``slots`` is model.n_seg for pose segments,
    model.n_fg for foreground maps."""
    from mgnet.models.memory import SegmentMemory
    return SegmentMemory(slots, dim, 1, by_scene)


@torch.no_grad()
def knn_scores(mem, desc_tr, tracks, scenes, views, desc_te, views_te) -> tuple:
    """(test scores, training scores with each clip's own track left out) of a freshly fitted memory."""
    mem.fit(torch.from_numpy(desc_tr), torch.from_numpy(tracks), scene=torch.from_numpy(scenes))
    mem.fit_views(torch.from_numpy(views), torch.from_numpy(tracks) >> 32, torch.from_numpy(scenes))
    out = []
    for leave, d, v, tr in ((False, desc_te, views_te, None), (True, desc_tr, views, tracks)):
        mem.exclude_own_track = leave
        s = [mem(torch.from_numpy(d[i:i + 512]), None if tr is None else torch.from_numpy(tr[i:i + 512]),
                 torch.from_numpy(v[i:i + 512])).double().numpy() for i in range(0, len(d), 512)]
        out.append(np.concatenate(s))
    return out[0], out[1]


def store_arrays(store):
    """Per clip of a prepared store, as the model's stage 4 and scores() take them: the foreground
    occupancy map (MGNet._fg_maps), the pose segment, the view descriptor, the track id and the
    scene code."""
    from mgnet.models.mgnet import MGNet
    fg, pose, views, scenes = [], [], [], []
    for b in torch.utils.data.DataLoader(store, batch_size=512):
        fg.append(MGNet._fg_maps(b).numpy())
        pose.append(b["pose"].reshape(len(b["pose"]), -1).numpy())
        views.append(view_descriptor(b["scene"]).numpy())
        scenes.append(b["scene_id"].numpy())
    tracks = store.column("video").astype(np.int64) * (1 << 32) + store.column("person").astype(np.int64)
    return (np.concatenate(fg), np.concatenate(pose), np.concatenate(views), tracks, np.concatenate(scenes))


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
    tr, te = prepare_split(cfg.data, "train"), prepare_split(cfg.data, "test")   # (re)built with fg.npy
    fg_tr, pose_tr, views_tr, tracks_tr, scenes_tr = store_arrays(tr)
    fg_te, pose_te, views_te, _, scenes_te = store_arrays(te)
    comp, stats = {}, {}
    for sc in (False, True):
        for key, slots, d_tr, d_te in (("pose", int(cfg.model.n_seg), pose_tr, pose_te),
                                       ("fg", int(cfg.model.get("n_fg", 16384)), fg_tr, fg_te)):
            mem = _knn(slots, d_tr.shape[1], sc)
            s_te, s_tr = knn_scores(mem, d_tr, tracks_tr, scenes_tr, views_tr, d_te, views_te)
            comp[(key, sc)], stats[(key, sc)] = s_te, scoring.summary_stats(s_tr)
    placed = float((model.seg_mem.scene_of(torch.from_numpy(views_te)).numpy() == scenes_te).mean())
    res = {"_scene_placement": {"micro": placed}}
    sigma = float(cfg.eval.sigma)
    run_app = str(cfg.model.app_target)     # what the run's own S_app (clip_scores "app") is
    for name, app, sc, norm, combine, w in CANDIDATES:
        comps = {"mo": clip["mo"], "mm": clip["mm"], "pose": comp[("pose", sc)],
                 "app": clip["app"] if app == "run" else comp[("fg", sc)]}
        st = dict(stats0, pose=stats[("pose", sc)], **({"app": stats[("fg", sc)]} if app == "fg" else {}))
        if not w.get("pose"):
            comps.pop("pose")
        fused = scoring.fuse(comps, {k: float(v) for k, v in w.items()}, stats=st if norm == "z" else None,
                             norm=norm, combine=combine)
        res[name.format(run=run_app)] = aucs(fused, clip, te, sigma)
    for sc in (False, True):
        tag = "by scene" if sc else "global"
        res[f"S_pose alone ({tag})"] = aucs(comp[("pose", sc)], clip, te, sigma)
        res[f"S_app fg alone ({tag})"] = aucs(comp[("fg", sc)], clip, te, sigma)
    for k in ("mo", "app", "mm", "nll"):
        res[f"S_{k} alone" + (f" ({run_app})" if k == "app" else "")] = aucs(clip[k], clip, te, sigma)
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
