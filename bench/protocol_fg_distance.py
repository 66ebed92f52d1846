"""Rate S_app's occupancy-map distance weight ``model.fg_missing_weight`` on finished protocol cells.

    python bench/protocol_fg_distance.py runs/protocol-selection/occluded-s0 1 0.5 0.25 0.1 0

For each weight w, the cell's run is re-scored with d(q, m)^2 = |max(q - m, 0)|^2 + w |max(m - q, 0)|^2
between a clip's occupancy map q and each normal map m of the run's own stage-4 memory, searched
exhaustively (not among the model's ASYM_CANDIDATES Euclidean-nearest, so that the choice does not
depend on that approximation): S_app of the training clips (own track left out, as for
score_stats.json) and of the test clips; then the run's fusion and frame AUCs (mgnet.evaluation),
S_pose, S_mo, S_mm unchanged. Prints one JSON line per weight: fused and S_app, [micro, then per
anomaly type in name order]; for a run trained with w = 1, w = 1 reproduces its own S_app (check_app_maxdiff).
Used for bench/results/protocol-choices-20261207-fgasym.md.
"""
from __future__ import annotations

import copy
import json
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader

from mgnet import config_schema, engine, evaluation, runs, scoring
from mgnet.engine import Dist, score_batch
from mgnet.models.memory import asymmetric_sq_distance
from mgnet.runs import RunDir


def exhaustive_forward(mem, w: float, chunk: int = 2048):
    """SegmentMemory.forward for k = 1 under d with every slot compared (masks as the model's)."""
    def forward(x, track=None, view=None):
        q = mem.features(x).to(mem.slots.dtype)
        n = mem._filled
        slots, tracks, scenes = mem.slots[:n], mem.track[:n], mem.scene[:n]
        own = mem.exclude_own_track and track is not None
        q_scene = mem.scene_of(view) if mem.by_scene and view is not None else None
        best = torch.full((q.shape[0],), float("inf"))
        anywhere = best.clone()
        for i in range(0, n, chunk):
            m = slots[i:i + chunk]
            d2 = asymmetric_sq_distance(q[:, None, :] - m[None], w)
            anywhere = torch.minimum(anywhere, d2.min(1).values)
            if own:
                d2 = d2.masked_fill(track[:, None] == tracks[i:i + m.shape[0]][None], float("inf"))
            if q_scene is not None:
                d2 = d2.masked_fill(q_scene[:, None] != scenes[i:i + m.shape[0]][None], float("inf"))
            best = torch.minimum(best, d2.min(1).values)
        return torch.where(torch.isfinite(best), best, anywhere).sqrt()
    return forward


def app_scores(model, store, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([score_batch(model, b, torch.device("cpu"), False, components=("app",))["app"]
                           for b in DataLoader(store, batch_size=batch_size, shuffle=False)])


def main(run: str, weights) -> dict:
    cfg = config_schema.validate(config_schema.load_run_config(RunDir(run).config))
    ctx = Dist("cpu")
    model, _ = engine.load_run(run)
    train, test = engine.open_split(cfg.data, "train", ctx), engine.open_split(cfg.data, "test", ctx)
    clip0, stats0 = dict(np.load(RunDir(run).clip_scores)), runs.read_json(RunDir(run).score_stats)
    res = {}
    for w in weights:
        model.fg_mem.forward = exhaustive_forward(model.fg_mem, w)
        with model.leave_own_track_out():
            train_app = app_scores(model, train)
        test_app = app_scores(model, test)
        stats = copy.deepcopy(stats0)
        stats["app"] = scoring.summary_stats(train_app)
        met, _ = evaluation.compute_metrics({**clip0, "app": test_app}, test, cfg, stats)
        auc = met["auc"]
        res[w] = {k: [auc[k]["micro"]] + [auc[k]["types"][t] for t in sorted(auc[k]["types"])] for k in ("fused", "app")}
        if w == 1.0:
            res["check_app_maxdiff"] = float(np.abs(test_app - clip0["app"]).max())
        print(json.dumps({"w": w, **res[w]}), flush=True)
    return res


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("RESULT", json.dumps(main(sys.argv[1], [float(x) for x in sys.argv[2:]])))
