"""Evaluation of a finished run (`mgnet eval run=<dir>`): score the test split, report frame-level AUCs.

    mgnet eval run=runs/demo                 # the run's own data config
    mgnet eval run=runs/demo eval.sigma=3    # any override of the run's config.yaml

For each score component alone (STG-NF's NLL as the baseline, S_mo, S_app, S_mm) and for the
fused score (eq. 16, each component min-max normalised over the test set): micro AUC (all test
frames concatenated), macro AUC (mean over videos with both classes) and, where the dataset
provides anomaly types, the AUC over normal frames plus the frames of each type. Clip scores map to
frames by STG-NF's protocol (mgnet.scoring.frame_scores). Writes ``<run>/metrics.json``,
``<run>/eval/frame_scores.npz`` (one fused array per test video keyed by its name, plus
``<component>/<video>`` arrays and ``gt/<video>``), ``<run>/eval/clip_scores.npz`` (the raw clip
scores of each component with the clips' video index, centre frame and person) and ``<run>/plots/videos/<video>.png``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from omegaconf import OmegaConf

from mgnet import engine, runs, scoring, tracking
from mgnet.engine import Dist
from mgnet.runs import RunDir, RunError
from mgnet.scoring import SCORE_KEYS

OPTIONAL_KEYS = scoring.OPTIONAL_COMPONENTS   # S_pose, when the model has a segment memory (model.n_seg > 0)
ROWS = (("nll", "STG-NF alone (NLL)"), ("mo", "S_mo"), ("app", "S_app"), ("mm", "S_mm"),
        ("pose", "S_pose (seg. kNN)"), ("fused_minmax", "fused, eq.16 minmax"), ("fused", "MGNet fused"))
ROW_KEYS = tuple(k for k, _ in ROWS if k in SCORE_KEYS)  # the raw components, in the table's order


def compute_metrics(clip: Dict[str, np.ndarray], store, cfg, stats: Optional[Dict[str, Any]] = None
                    ) -> Tuple[Dict[str, Any], Dict[str, Dict[str, np.ndarray]]]:
    """AUC table from raw clip scores: per component and fused, micro/macro/per type.

    stats: the run's training-score statistics (score_stats.json) for z-score fusion. Two fused
    rows: "fused" (``eval.fusion``/``eval.combine``, default z-scores against the training
    clips) and "fused_minmax" (eq. 16 with test-set min-max, the paper's protocol).
    Returns (metrics, frame curves ``{component: {video: (F,)}}``).
    """
    lambdas = scoring.fusion_lambdas(cfg.model)
    keys = SCORE_KEYS + tuple(k for k in OPTIONAL_KEYS if k in clip)
    comps = {k: clip[k] for k in keys}
    spec = scoring.fusion_spec(cfg, stats)
    comps["fused"] = scoring.fuse(comps, lambdas, stats=stats if spec["norm"] == "z" else None,
                                  norm=spec["norm"], combine=spec["combine"])
    # eq. 16 as the paper reports it: S_mo + S_app + S_mm (lambda_app = lambda_mm = 1), test-set min-max
    comps["fused_minmax"] = scoring.fuse({k: clip[k] for k in scoring.COMPONENTS}, {"app": 1.0, "mm": 1.0},
                                         norm="minmax", combine="sum")
    labels = {}
    for name in store.videos:
        gt = store.gt(name)
        if gt is not None:
            labels[name] = np.asarray(gt).astype(np.int64)
    if not labels:
        raise RunError("the test split has no ground truth: nothing to evaluate")
    num_frames = {name: int(store.num_frames[name]) for name in labels}
    types = {}
    if store.type_names:
        for name in labels:
            t = store.anomaly_types(name)
            types[name] = np.zeros_like(labels[name]) if t is None else np.asarray(t).astype(np.int64)
    sigma = float(cfg.eval.sigma)
    keep = np.isin(np.asarray([store.videos[int(v)] for v in clip["video"]], dtype=object), list(labels))
    curves, table = {}, {}
    for key in (k for k, _ in ROWS if k in comps):
        curves[key] = scoring.frame_scores(comps[key][keep], clip["video"][keep], clip["frame"][keep],
                                           clip["person"][keep], num_frames, sigma, names=store.videos)
        row = scoring.frame_auc(curves[key], labels)
        if types:
            row["types"] = {tname: scoring.type_auc(curves[key], labels, types, tid)
                            for tid, tname in sorted(store.type_names.items()) if tid != 0}
        table[key] = row
    metrics = {"auc": table, "lambdas": lambdas, "fusion": spec, "sigma": sigma, "num_clips": int(len(clip["mo"])),
               "num_videos": len(labels), "num_frames": int(sum(num_frames.values())),
               "abnormal_frames": int(sum(int(v.sum()) for v in labels.values()))}
    curves["gt"] = labels
    if types:
        curves["types"] = types
    return metrics, curves


def format_table(metrics: Dict[str, Any]) -> str:
    """The component x (micro, macro, per type) AUC table as text."""
    table = metrics["auc"]
    tnames = list(next(iter(table.values())).get("types", {}).keys())
    cols = ["micro", "macro"] + tnames
    head = f"{'score':<20}" + "".join(f"{c:>12}" for c in cols)
    lines = [head, "-" * len(head)]
    for key, label in ((k, lab) for k, lab in ROWS if k in table):
        row = table[key]
        vals = [row["micro"], row["macro"]] + [row["types"][t] for t in tnames]
        lines.append(f"{label:<20}" + "".join(f"{v:>12.4f}" if v == v else f"{'n/a':>12}" for v in vals))
    return "\n".join(lines)


def plot_videos(run: RunDir, curves, max_plots: int) -> int:
    """One PNG per test video: fused and component curves, ground-truth anomalies shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = run.plots / "videos"
    n = 0
    for name in list(curves["gt"])[:max_plots]:
        gt = curves["gt"][name]
        fig, ax = plt.subplots(figsize=(8, 2.6))
        x = np.arange(len(gt))
        for key, label in ((k, lab) for k, lab in ROWS if k in curves and k != "fused_minmax"):
            y = scoring.minmax(curves[key][name])
            ax.plot(x, y, lw=2.0 if key == "fused" else 0.9, label=label, alpha=1.0 if key == "fused" else 0.7)
        ab = np.flatnonzero(np.diff(np.concatenate([[0], gt, [0]])))
        for a, b in zip(ab[::2], ab[1::2]):
            ax.axvspan(a - 0.5, b - 0.5, color="red", alpha=0.15, lw=0)
        ax.set_xlim(0, max(1, len(gt) - 1))
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{name} (shaded: ground-truth anomaly; curves min-max scaled per video)", fontsize=9)
        ax.set_xlabel("frame")
        ax.legend(fontsize=6, loc="upper right", ncol=5)
        fig.tight_layout()
        runs.atomic_write(out / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=90))
        plt.close(fig)
        n += 1
    return n


def evaluate(cfg, run_dir, model=None, ctx=None, log=None) -> Dict[str, Any]:
    """Score the test split with the run's model; write metrics.json, frame_scores.npz, plots."""
    run = RunDir(run_dir)
    own_ctx = ctx is None
    ctx = ctx or Dist(str(cfg.train.device))
    try:
        log = log or runs.get_logger(None, ctx.rank)
        if model is None:
            model, _ = engine.load_run(run.root, device=ctx.device)
        if OmegaConf.select(cfg, "eval.compile", default=False):
            engine.compile_model(model)
        store = engine.open_split(cfg.data, "test", ctx)
        clip = engine.score_clips(model, store, int(cfg.eval.batch_size), ctx, amp=engine.precision(cfg),
                           desc="test scores")
        if not ctx.main:
            return {}
        stats = runs.read_json(run.score_stats) if run.score_stats.exists() else None
        metrics, curves = compute_metrics(clip, store, cfg, stats)
        for d in (run.root / "eval", run.plots / "videos"):  # left by an evaluation killed mid-write
            runs.remove_temporaries(d)
        runs.remove_temporaries(run.root, recursive=False)
        arrays = {}
        for name, fused in curves["fused"].items():
            arrays[name] = fused.astype(np.float32)
            for key in ROW_KEYS + tuple(k for k in OPTIONAL_KEYS + ("fused_minmax",) if k in curves):
                arrays[f"{key}/{name}"] = curves[key][name].astype(np.float32)
            arrays[f"gt/{name}"] = curves["gt"][name].astype(np.uint8)
        if cfg.eval.plots:
            metrics["plots"] = plot_videos(run, curves, int(cfg.eval.max_plots))
        # together: metrics.json never describes another evaluation's frame_scores.npz
        # the raw clip scores too, so other fusions can be computed without scoring again
        raw = {k: np.asarray(clip[k]) for k in ROW_KEYS + OPTIONAL_KEYS + ("video", "frame", "person") if k in clip}
        runs.atomic_write_all([(run.frame_scores, runs.npz_writer(arrays)),
                               (run.clip_scores, runs.npz_writer(raw)),
                               (run.metrics, runs.json_writer(metrics))])
        tracking.log_eval(run.root, cfg, metrics)
        log.info("evaluated %d test videos (%d frames, sigma %g): fused micro AUC %.4f -> %s",
                 metrics["num_videos"], metrics["num_frames"], metrics["sigma"],
                 metrics["auc"]["fused"]["micro"], run.metrics)
        return metrics
    finally:
        if own_ctx:
            ctx.close()
