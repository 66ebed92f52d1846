"""`mgnet score`: score your own videos with a trained run.

    mgnet score --video V.mp4 --poses V.json --run runs/demo [--out scores] [--online]
    mgnet score --video videos/ --poses poses/ --run runs/demo      # every video of a folder
    mgnet score --video V.mp4 --run runs/demo                       # poses estimated from the video
    mgnet score --video V.mp4 --poses V.json --engine onnx --model deploy/demo   # `mgnet export` output

Without --poses the poses are estimated (mgnet.data.pose_estimation: --pose-estimator builtin|onnx,
default the run's own), tracked and cached as ``<out>/<video name>/poses.json``.

For each video, ``<out>/<video name>/`` receives:

    frame_scores.csv   frame, time, score (fused, training-normalised), score_minmax (offline only:
                       the paper's per-video min-max protocol, smoothed as `mgnet eval` does),
                       the components of the top person, the persons scored at the frame
    person_scores.csv  frame, person, score and components of each person's clip centred there
    scores.json        the same, plus the threshold, the events (start, end, peak, persons) and meta
    timeline.png       the score curve with the threshold and the events shaded
    annotated.mp4      H.264 video: skeletons/boxes coloured by score, running curve under the frame
    report.html        the plot, the events table and the video; opens offline

Scores: each component normalised with the normal training clips' statistics (``score_stats.json``;
by default a z-score) and fused as the run was trained to (``mgnet.scoring.fuse``; the outputs'
metadata says how), so scores of different videos and the threshold share one scale (a per-video
min-max would give every video a frame scoring 1). Frames where nobody is scored are empty (NaN).
Threshold: ``--threshold p99`` (default; a percentile of the training-set fused scores), a number,
or ``best-f1`` (best frame F1 on the run's labelled test split). ``--online`` scores frame by frame,
printing ``frame,score`` lines as soon as each frame is final (latency: see mgnet.inference);
it computes only the components the fused score reads unless ``--components all``.

Poses: any format of mgnet.data.pose_formats (auto-detected). For a folder of videos, the poses of
``<name>.<ext>`` are ``<poses>/<name>.json``, ``<name>_alphapose_tracked_person.json``,
``<name>_alphapose-results.json``, ``results_<name>.json`` (MMPose demo) or the OpenPose folder
``<name>/``. Every input is checked before anything is scored; bad input stops with one message
naming the file and a non-zero exit, and no output folder is left behind.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch

from mgnet import config_schema, faults, scoring
from mgnet.data.pose_estimation.jobs import add_pose_estimator_args, extracted_poses, keep_cached_poses
from mgnet.data.pose_formats import FORMATS
from mgnet.engine import compile_model, load_run
from mgnet.inference import (ClipSpec, choose_threshold, load_score_stats, open_video_inputs, score_offline,
                             score_online)
from mgnet.report.outputs import format_score, publish, write_outputs
from mgnet.runs import RunError


def build_parser() -> argparse.ArgumentParser:
    p = config_schema.ArgumentParser(prog="mgnet score", description="Score your own videos with a trained run.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", required=True, type=Path, help="a video file, a folder of frame images, or a folder of videos")
    p.add_argument("--poses", type=Path, default=None,
                   help="the pose file/folder (or a folder of them, one per video); without it poses are extracted "
                        "from the video (--pose-estimator) and cached as <out>/<video>/poses.json")
    add_pose_estimator_args(p)
    p.add_argument("--run", type=Path, help="a finished training run folder (--engine torch)")
    p.add_argument("--engine", default="torch", choices=("torch", "onnx"),
                   help="torch: the run's checkpoint; onnx: an `mgnet export --format onnx` folder (--model), "
                        "through onnxruntime without training code")
    p.add_argument("--model", type=Path, help="the exported folder (--engine onnx)")
    p.add_argument("--out", type=Path, default=Path("scores"), help="output folder (default: ./scores)")
    p.add_argument("--online", action="store_true", help="score frame by frame, printing frame,score lines as they become final")
    p.add_argument("--components", default=None, choices=("fused", "all"),
                   help="--online: compute only the score components the fused score reads (fused, the "
                        "default: with the default weights S_pose and S_app, the RGB ViT, STG-NF and BSMM "
                        "do not run; the other component columns stay empty) or all of them (all); "
                        "offline scoring computes all")
    p.add_argument("--threshold", default="p99", help="p50|p90|p95|p99 of training scores, a number, or best-f1 (default p99)")
    p.add_argument("--pose-format", default="auto", choices=("auto",) + FORMATS)
    p.add_argument("--merge-gap", type=int, default=0, help="merge events separated by at most this many frames")
    p.add_argument("--min-event", type=int, default=1, help="drop events shorter than this many frames")
    p.add_argument("--no-video", action="store_true", help="skip the annotated video")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate when the input does not say (frame folders)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (--engine torch; two graphs: the first batch size's, and one for "
                        "every other size; "
                        "falls back to eager with a message where compile is unavailable)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); on a busy shared CPU 1 can be much faster")
    return p


def usage() -> str:
    return build_parser().format_help()


def _load_engine(args):
    """(model, cfg or None, stats, spec, lambdas, sigma, source) of --engine torch (the run folder) or
    --engine onnx (an exported folder; mgnet.deploy.runtime, no model or training code imported)."""
    if args.engine == "onnx":
        if args.compile:
            raise ValueError("--compile applies to --engine torch (an exported model is already compiled)")
        if args.model is None:
            raise ValueError("--engine onnx needs --model (an `mgnet export --format onnx` folder)")
        from mgnet.deploy.runtime import load_exported
        m = load_exported(args.model, args.threads, expect_format="onnx")
        return m, None, m.stats, m.spec, m.lambdas, m.sigma, args.model
    if args.run is None:
        raise ValueError("--run is required with --engine torch (or give --engine onnx --model DIR)")
    if not (args.run / "config.yaml").is_file():
        raise RunError(f"{args.run}: not a run folder (no config.yaml)")
    model, cfg = load_run(args.run, device=args.device)
    if args.compile:
        compile_model(model)
    stats = load_score_stats(args.run)
    lambdas = scoring.fusion_lambdas(cfg.model)
    return model, cfg, stats, ClipSpec.from_config(cfg), lambdas, float(cfg.eval.sigma), args.run


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    config_schema.check_args(config_schema.Score, args)  # first: the options, then the run's config
    if args.components is not None and not args.online:
        raise ValueError("--components applies to --online (offline scoring computes every component)")
    if args.threads:
        torch.set_num_threads(args.threads)
    staged: list[Path] = []
    try:
        # everything is checked before any scoring or output
        model, cfg, stats, spec, lambdas, sigma, source = _load_engine(args)
        if cfg is None and str(args.threshold).lower() == "best-f1":
            raise ValueError("--threshold best-f1 scores the run's labelled test split with the torch model; "
                             "with --engine onnx give p50|p90|p95|p99 or a number")
        extract = extracted_poses(args, cfg) if args.poses is None else None  # poses from the video itself
        inputs = open_video_inputs(args.video, args.poses, args.pose_format,
                                   extract and (lambda v, name, src: extract(v, args.out / name, src)))
        threshold, thr_source = choose_threshold(args.threshold, model, cfg, stats, lambdas, args.device,
                                                 args.batch_size)
        args.out.mkdir(parents=True, exist_ok=True)
        for vpath, ppath, src, tracks, name in inputs:
            fps = src.fps or args.fps  # JPEG folders state no frame rate
            meta = {"video": str(vpath), "poses": str(ppath), "run": str(source),
                    "mode": "online" if args.online else "offline",
                    "normalisation": scoring.describe_fusion(stats, lambdas),
                    "seg_len": spec.seg_len, "latency_frames": spec.latency if args.online else None}
            if args.online:
                print(f"# {name}: frame,score (each printed {spec.latency} frames after the frame arrives)", flush=True)
                res = score_online(model, src, tracks, spec, stats, lambdas, args.batch_size, args.device,
                                   on_frame=lambda fs: print(f"{fs.frame},{format_score(fs.score)}", flush=True),
                                   components=args.components or "fused")
            else:
                res = score_offline(model, src, tracks, spec, stats, lambdas, sigma,
                                    args.batch_size, args.device, progress=True)
            meta["frames_per_second"] = round(len(src) / max(res.seconds, 1e-9), 2)
            tmp = args.out / f".{name}.partial{os.getpid()}"
            for stale in (*args.out.glob(f".{name}.partial*"), *args.out.glob(f".{name}.old*")):
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed run for this video
            tmp.mkdir()
            staged.append(tmp)
            out = write_outputs(tmp, name, res, src, tracks, threshold, thr_source, fps, meta,
                                {"merge_gap": args.merge_gap, "min_length": args.min_event},
                                video=not args.no_video)
            keep_cached_poses(ppath, args.out / name, tmp)
            faults.point("score.publish")
            publish(tmp, args.out / name)
            staged.remove(tmp)
            print(f"{name}: {len(src)} frames, {meta['frames_per_second']} frames/s ({meta['mode']}), "
                  f"{len(out['events'])} events above {threshold:.4g} -> {args.out / name}/report.html",
                  file=sys.stderr)
    finally:
        for tmp in staged:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0

