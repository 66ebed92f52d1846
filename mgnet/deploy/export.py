"""A finished run as one model file (`mgnet export`, mgnet/jobs/export.py) that scores person clips, plus metadata.json.

    mgnet export --run runs/demo --format onnx --out deploy/demo-onnx [--verify]
    mgnet export --run runs/demo --format torch --out deploy/demo-pt2 [--verify]

``<out>/`` receives ``model.onnx`` (ONNX, dynamic batch; the metadata also in its metadata_props as
``mgnet.<key>`` JSON strings) or ``model.pt2`` (torch.export.save; loads with
``torch.export.load(path).module()`` and needs no mgnet), and ``metadata.json``: the inputs and
outputs (mgnet.deploy.module; the outputs depend on the run's components), the fusion, the clip geometry, the keypoint layout, the run's score statistics,
the lambdas and the default threshold. The model computes exactly what ``mgnet score`` computes
per clip; the ``mgnet::`` fused ops are replaced by their eager references (mgnet.deploy.decompose).

``--verify`` scores the run's own test clips with the torch model and with the exported file, and
prints the largest difference of each output and both throughputs (clips/s). Bad input (no
stage-4 checkpoint, no score statistics, an --out that is not an earlier export) stops with one
message and exit status 2; the folder appears only when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

FORMATS = {"onnx": "model.onnx", "torch": "model.pt2"}
JOINTS18 = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
            "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")


def metadata(run_dir: Path, cfg, spec, stats, lambdas, fmt: str, scorer) -> dict:
    import torch
    from mgnet import runs, scoring
    from mgnet.data.foreground import GRID
    from mgnet.deploy.module import INPUTS
    T, c, s = spec.seg_len, spec.crop_size, spec.scene_size
    model_cfg = runs.to_container(cfg.model)
    return {
        "format": fmt, "file": FORMATS[fmt], "run": str(run_dir), "torch": torch.__version__,
        "model_config_hash": runs.config_hash(model_cfg),
        "inputs": {"rgb": {"shape": ["batch", 3, T, c, c], "dtype": "uint8"},
                   "pose": {"shape": ["batch", 2, T, 18], "dtype": "float32"},
                   "scene": {"shape": ["batch", 3, s, s], "dtype": "uint8"},
                   "fg": {"shape": ["batch", T, GRID, GRID], "dtype": "uint8"}},
        "input_order": list(INPUTS), "outputs": list(scorer.outputs),
        "clip": {**asdict(spec), "centre": spec.centre, "latency_frames": spec.latency},
        "keypoints": {"layout": "openpose18", "joints": list(JOINTS18),
                      "from": "COCO-17 detections (x, y, confidence) via mgnet.data.poses.coco17_to_openpose18",
                      "pose_input": "x, y divided by the frame size (W, H), minus the clip's mean, divided by the "
                                    "std of the clip's y (mgnet.data.poses.normalize_pose)"},
        "score_stats": stats, "lambdas": lambdas,
        "fusion": {"norm": scorer.norm, "combine": scorer.combine, "components": list(scorer.components),
                   "weights": scorer.weights.tolist()},
        "normalisation": scoring.describe_fusion(stats, lambdas),
        "threshold": {"default": "p99", "value": float(stats["fused"]["p99"]),
                      "percentiles": {k: v for k, v in stats["fused"].items() if k.startswith("p")}},
        "eval_sigma": float(cfg.eval.sigma),
    }


def export_program(scorer, spec):
    """torch.export of ClipScorer with a dynamic batch, custom ops decomposed into their references."""
    import torch
    from mgnet.deploy.decompose import custom_ops_in, decompositions
    from mgnet.deploy.module import example_inputs
    batch = torch.export.Dim("batch", min=1)
    args = example_inputs(spec, 2)
    ep = torch.export.export(scorer, args, dynamic_shapes=tuple({0: batch} for _ in args), strict=False)
    ep = ep.run_decompositions(decompositions())
    left = custom_ops_in(ep.graph)
    if left:
        raise RuntimeError(f"mgnet export: custom ops without a decomposition remain: {sorted(left)}")
    return ep, args


def write_onnx(ep, args, path: Path, meta: dict) -> None:
    import onnx
    import torch
    from mgnet.deploy.module import INPUTS
    prog = torch.onnx.export(ep, args, dynamo=True, input_names=list(INPUTS), output_names=list(meta["outputs"]),
                             optimize=True, verbose=False)
    prog.save(str(path))
    proto = onnx.load(str(path))
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"mgnet.{k}", json.dumps(v)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def verify(scorer, exported, cfg, batch_size: int) -> dict:
    """Largest |torch - exported| per output over the run's test clips, and both clips/s (each batch
    run by both in turn, so a change of machine load affects both alike)."""
    import torch
    from torch.utils.data import DataLoader
    from mgnet.engine import Dist, open_split
    ctx = Dist("cpu")
    try:
        store = open_split(cfg.data, "test", ctx)
    finally:
        ctx.close()
    names = scorer.outputs
    ref = {k: [] for k in names}
    got = {k: [] for k in names}
    secs = {"torch": 0.0, "exported": 0.0}
    for b in DataLoader(store, batch_size=batch_size, shuffle=False):
        args = (b["rgb"], b["pose"], b["scene"], b["fg"])
        t0 = time.perf_counter()
        with torch.inference_mode():
            r = [v.numpy() for v in scorer(*args)]
        t1 = time.perf_counter()
        e = [np.asarray(v) for v in exported(*args)]
        t2 = time.perf_counter()
        secs["torch"] += t1 - t0
        secs["exported"] += t2 - t1
        for k, a, c in zip(names, r, e):
            ref[k].append(a)
            got[k].append(c)
    diff = {k: float(np.max(np.abs(np.concatenate(ref[k]).astype(np.float64) - np.concatenate(got[k]))))
            for k in names}
    n = len(store)
    return {"clips": n, "batch_size": batch_size, "max_abs_diff": diff, "largest": max(diff.values()),
            "torch_clips_per_s": n / max(secs["torch"], 1e-9), "exported_clips_per_s": n / max(secs["exported"], 1e-9)}


def run_export(run_dir: Path, fmt: str, out: Path, do_verify: bool = False, batch_size: int = 64,
               threads=None, log=print) -> dict:
    """Export ``run_dir`` into ``out``; returns the metadata (with timings, and the check with verify)."""
    import torch
    from mgnet import scoring
    from mgnet.deploy.module import ClipScorer
    from mgnet.engine import load_run
    from mgnet.inference import ClipSpec, load_score_stats
    from mgnet.runs import RunError
    from mgnet.report.outputs import publish

    if out.exists() and not (out.is_dir() and (out / "metadata.json").is_file()):
        raise RunError(f"--out {out}: exists and is not an earlier mgnet export (no metadata.json); "
                       "choose another folder")
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir}: not a run folder (no config.yaml)")
    model, cfg = load_run(run_dir)
    stats = load_score_stats(run_dir)
    spec = ClipSpec.from_config(cfg)
    lambdas = scoring.fusion_lambdas(cfg.model)
    if threads:
        torch.set_num_threads(threads)
    scorer = ClipScorer(model, stats, lambdas).eval()
    meta = metadata(run_dir, cfg, spec, stats, lambdas, fmt, scorer)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        ep, args = export_program(scorer, spec)
        path = tmp / FORMATS[fmt]
        if fmt == "torch":
            torch.export.save(ep, str(path))
        if fmt == "onnx":
            write_onnx(ep, args, path, meta)      # metadata_props: everything but the timings and sizes below
        meta["export_seconds"] = round(time.perf_counter() - t0, 1)
        meta["size_bytes"] = path.stat().st_size
        log(f"exported {run_dir} -> {out / FORMATS[fmt]} ({meta['size_bytes'] / 1e6:.2f} MB) in "
            f"{meta['export_seconds']:.1f}s")
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
        if do_verify:
            from mgnet.deploy.runtime import load_exported
            check = verify(scorer, load_exported(tmp, threads=threads).forward, cfg, batch_size)
            meta["verify"] = check
            log(f"verify on {check['clips']} test clips: largest difference {check['largest']:.3g} ("
                + ", ".join(f"{k} {v:.2g}" for k, v in check["max_abs_diff"].items()) + "); "
                f"{check['torch_clips_per_s']:.1f} clips/s (torch, the run's checkpoint), "
                f"{check['exported_clips_per_s']:.1f} clips/s ({FORMATS[fmt]})")
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta
