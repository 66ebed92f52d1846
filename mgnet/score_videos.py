"""`mgnet score`: score your own videos with a trained run.

    mgnet score --video V.mp4 --poses V.json --run runs/demo [--out scores] [--online]
    mgnet score --video videos/ --poses poses/ --run runs/demo      # every video of a folder

For each video, ``<out>/<video name>/`` receives:

    frame_scores.csv   frame, time, score (fused, training-normalised), score_minmax (offline only:
                       the paper's per-video min-max protocol, smoothed as `mgnet eval` does),
                       the components of the top person, the persons scored at the frame
    person_scores.csv  frame, person, score and components of each person's clip centred there
    scores.json        the same, plus the threshold, the events (start, end, peak, persons) and meta
    timeline.png       the score curve with the threshold and the events shaded
    annotated.mp4      H.264 video: skeletons/boxes coloured by score, running curve under the frame
    report.html        the plot, the events table and the video; opens offline

Scores: each component normalised with the training set's min/max (``score_stats.json``) and fused
by eq. 16, so scores of different videos and the threshold share one scale (a per-video min-max
would give every video a frame scoring 1). Frames where nobody is scored are empty (NaN).
Threshold: ``--threshold p99`` (default; a percentile of the training-set fused scores), a number,
or ``best-f1`` (best frame F1 on the run's labelled test split). ``--online`` scores frame by frame,
printing ``frame,score`` lines as soon as each frame is final (latency: see mgnet.online).

Poses: any format of mgnet.data.pose_formats (auto-detected). For a folder of videos, the poses of
``<name>.<ext>`` are ``<poses>/<name>.json``, ``<name>_alphapose_tracked_person.json``,
``<name>_alphapose-results.json``, ``results_<name>.json`` (MMPose demo) or the OpenPose folder
``<name>/``. Every input is checked before anything is scored; bad input stops with one message
naming the file and a non-zero exit, and no output folder is left behind.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mgnet import faults, scoring
from mgnet.data.pose_formats import FORMATS, check_frame_range, load_poses
from mgnet.online import ClipSpec, OnlineScorer, clip_batch, fused_scores, load_score_stats, run_model

__all__ = ["VideoScores", "offline_batches", "score_offline", "score_online", "find_pose_file", "main"]

POSE_PATTERNS = ("{}.json", "{}_alphapose_tracked_person.json", "{}_alphapose-results.json", "results_{}.json", "{}")


@dataclass
class VideoScores:
    """Per-frame results of one video. Arrays are (num_frames,), NaN where nobody is scored."""
    score: np.ndarray
    components: dict  # name -> (N,): mo/app/mm training-normalised, nll raw, of the top person
    persons: dict  # track id -> (N,) fused score of that person's clip centred at the frame
    person_components: dict  # track id -> {name: (N,)}
    score_minmax: Optional[np.ndarray] = None  # offline only: the eval protocol's curve
    seconds: float = 0.0  # wall time of scoring (decode + crops + model)


def _per_frame(n: int, centres, pids, fused: dict) -> VideoScores:
    """Max over persons per centre frame (ties: lowest id, as OnlineScorer), NaN elsewhere."""
    score = np.full(n, np.nan)
    top = np.full(n, -1, np.int64)
    comps = {k: np.full(n, np.nan) for k in ("mo", "app", "mm", "nll")}
    persons, pcomps = {}, {}
    for j in range(len(centres)):
        c, p, s = int(centres[j]), int(pids[j]), float(fused["score"][j])
        persons.setdefault(p, np.full(n, np.nan))[c] = s
        pc = pcomps.setdefault(p, {k: np.full(n, np.nan) for k in comps})
        for k in comps:
            pc[k][c] = fused[k][j]
        if math.isnan(score[c]) or s > score[c] or (s == score[c] and p < top[c]):
            score[c], top[c] = s, p
            for k in comps:
                comps[k][c] = fused[k][j]
    return VideoScores(score, comps, dict(sorted(persons.items())), dict(sorted(pcomps.items())))


def offline_batches(src, tracks, spec: ClipSpec, batch_size: int = 64, progress: bool = False):
    """Every window of every track (stride 1, gaps <= max_gap interpolated, as mgnet.data.prepare
    cuts them) as model batches in the ClipStore layout; the video is decoded once."""
    from mgnet.data.crops import crop_squares, person_boxes, scene_images
    from mgnet.data.poses import Track, coco17_to_openpose18
    from mgnet.data.windows import split_track, window_starts

    T, c = spec.seg_len, spec.centre
    segs = []
    for pid, (fr, kp) in tracks.items():
        segs += [s for s in split_track(Track(pid, fr, kp, kp[:, :, 2].mean(1)), spec.max_gap) if len(s) >= T]
    # which (segment, row) needs a crop at each frame, and which frames are window centres
    need: dict[int, list] = {}
    centres = set()
    for si, s in enumerate(segs):
        for r, f in enumerate(s.frames.tolist()):
            need.setdefault(f, []).append((si, r))
        centres.update((s.frames[window_starts(len(s), T, 1)] + c).tolist())
    crops = [np.zeros((len(s), 3, spec.crop_size, spec.crop_size), np.uint8) for s in segs]
    scenes = {}
    for start, chunk in src.iter_chunks(64):
        for i, image in enumerate(chunk):
            f = start + i
            if f in need:
                rows = need[f]
                # boxes from the 18 OpenPose joints, as mgnet.data.prepare computes them for training
                boxes = person_boxes(coco17_to_openpose18(np.stack([segs[si].kps[r] for si, r in rows])),
                                     spec.box_expand, spec.box_min_conf)
                for (si, r), crop in zip(rows, crop_squares(image, boxes, spec.crop_size)):
                    crops[si][r] = crop
            if f in centres:
                scenes[f] = scene_images(image[None], spec.scene_size)[0]
    wins = [(si, int(st)) for si, s in enumerate(segs) for st in window_starts(len(s), T, 1)]
    it = range(0, len(wins), batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="scoring clips", unit="batch", file=sys.stderr, dynamic_ncols=True)
    for b in it:
        chunk = wins[b:b + batch_size]
        yield clip_batch(np.stack([segs[si].kps[st:st + T] for si, st in chunk]),
                         np.stack([crops[si][st:st + T] for si, st in chunk]),
                         np.stack([scenes[int(segs[si].frames[st]) + c] for si, st in chunk]),
                         src.size, [segs[si].person for si, _ in chunk],
                         [int(segs[si].frames[st]) for si, st in chunk], spec)


def score_offline(model, src, tracks, spec: ClipSpec, stats, lambdas, sigma: float = 0.0,
                  batch_size: int = 64, device="cpu", progress: bool = False) -> VideoScores:
    """Every window scored in batches; per-frame curves (training-normalised, and the eval
    protocol's per-video min-max curve smoothed by ``sigma``)."""
    t0 = time.perf_counter()
    n = len(src)
    raw = {k: [] for k in ("mo", "app", "mm", "nll")}
    pids, centre_frames = [], []
    for batch in offline_batches(src, tracks, spec, batch_size, progress):
        for k, v in run_model(model, batch, device).items():
            raw[k].append(v)
        pids.append(batch["person"].numpy())
        centre_frames.append(batch["frame"].numpy())
        faults.point("score.batch")
    raw = {k: np.concatenate(v) if v else np.zeros(0) for k, v in raw.items()}
    pids = np.concatenate(pids) if pids else np.zeros(0, np.int64)
    centre_frames = np.concatenate(centre_frames) if centre_frames else np.zeros(0, np.int64)
    out = _per_frame(n, centre_frames, pids, fused_scores(raw, stats, lambdas))
    if len(pids):
        out.score_minmax = scoring.frame_scores(scoring.fuse(raw, lambdas), np.zeros(len(pids), np.int64),
                                                centre_frames, pids, {"v": n}, sigma, names=["v"])["v"]
    else:
        out.score_minmax = np.full(n, np.nan)
    out.seconds = time.perf_counter() - t0
    return out


def score_online(model, src, tracks, spec: ClipSpec, stats, lambdas, batch_size: int = 64, device="cpu",
                 on_frame=None) -> VideoScores:
    """The video replayed frame by frame through OnlineScorer; ``on_frame(FrameScore)`` is called as
    each frame becomes final."""
    t0 = time.perf_counter()
    n = len(src)
    by_frame: dict[int, dict] = {}
    for pid, (fr, kp) in tracks.items():
        for f, k in zip(fr.tolist(), kp):
            by_frame.setdefault(f, {})[pid] = k
    scorer = OnlineScorer(model, stats, lambdas, src.size, spec, device, batch_size)
    results = []

    def take(frames):
        for fs in frames:
            results.append(fs)
            if on_frame is not None:
                on_frame(fs)

    for start, chunk in src.iter_chunks(16):
        for i, image in enumerate(chunk):
            take(scorer.push(start + i, image, by_frame.get(start + i, {})))
    take(scorer.flush())
    secs = time.perf_counter() - t0
    score = np.full(n, np.nan)
    comps = {k: np.full(n, np.nan) for k in ("mo", "app", "mm", "nll")}
    persons: dict = {}
    for fs in results:
        score[fs.frame] = fs.score
        for k, v in fs.components.items():
            comps[k][fs.frame] = v
        for p, v in fs.persons.items():
            persons.setdefault(p, np.full(n, np.nan))[fs.frame] = v
    out = VideoScores(score, comps, dict(sorted(persons.items())), {}, None, secs)
    return out


# ----------------------------------------------------------------------------- inputs
def find_pose_file(poses_dir: Path, name: str) -> Path:
    found = [poses_dir / p.format(name) for p in POSE_PATTERNS if (poses_dir / p.format(name)).exists()]
    if not found:
        raise ValueError(f"{poses_dir}: no poses for video {name!r} (looked for "
                         + ", ".join(p.format(name) for p in POSE_PATTERNS) + ")")
    if len(found) > 1:
        raise ValueError(f"{poses_dir}: several pose files for video {name!r}: {', '.join(p.name for p in found)}")
    return found[0]


def _pairs(video: Path, poses: Path) -> list[tuple[Path, Path]]:
    from mgnet.data.video import IMAGE_EXTS, VIDEO_EXTS
    if not video.exists():
        raise ValueError(f"{video}: video file or folder does not exist")
    if not poses.exists():
        raise ValueError(f"{poses}: pose file or folder does not exist")
    if video.is_dir() and not any(p.suffix.lower() in IMAGE_EXTS for p in video.iterdir()):
        vids = sorted(p for p in video.iterdir() if p.suffix.lower() in VIDEO_EXTS)
        if not vids:
            raise ValueError(f"{video}: folder holds neither videos ({', '.join(VIDEO_EXTS)}) nor frame images")
        if not poses.is_dir():
            raise ValueError(f"{poses}: with a folder of videos, --poses must be a folder of pose files")
        return [(v, find_pose_file(poses, v.stem)) for v in vids]
    return [(video, poses)]


def _fps(src, default: float) -> float:
    """The source's frame rate, or `default` (--fps) where it states none (JPEG folders)."""
    return src.fps or default


def _nan_to_none(a):
    return [None if not np.isfinite(v) else round(float(v), 6) for v in np.asarray(a, dtype=np.float64)]


# ----------------------------------------------------------------------------- outputs
def _csv_text(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _fmt(v) -> str:
    return "" if v is None or not np.isfinite(v) else f"{float(v):.6g}"


def write_outputs(folder: Path, name: str, res: VideoScores, src, tracks, threshold: float, thr_source: str,
                  fps: float, meta: dict, events_kw: dict, video: bool = True) -> dict:
    """All outputs of one video into ``folder`` (a fresh temporary folder)."""
    from mgnet.report.annotated_video import write_annotated_video
    from mgnet.report.events import find_events
    from mgnet.report.html import write_report
    from mgnet.report.timeline import plot_timeline

    n = len(res.score)
    events = find_events(res.score, threshold, res.persons, fps=fps, **events_kw)
    rows = []
    for f in range(n):
        present = [str(p) for p, s in res.persons.items() if np.isfinite(s[f])]
        rows.append([f, f"{f / fps:.3f}", _fmt(res.score[f]),
                     _fmt(res.score_minmax[f]) if res.score_minmax is not None else "",
                     *(_fmt(res.components[k][f]) for k in ("mo", "app", "mm", "nll")), ";".join(present)])
    (folder / "frame_scores.csv").write_text(_csv_text(
        ["frame", "time_s", "score", "score_minmax", "mo", "app", "mm", "nll", "persons"], rows))
    prow = []
    for p, s in res.persons.items():
        pc = res.person_components.get(p, {})
        for f in np.flatnonzero(np.isfinite(s)):
            prow.append([int(f), p, _fmt(s[f]), *(_fmt(pc[k][f]) if pc else "" for k in ("mo", "app", "mm", "nll"))])
    prow.sort()
    (folder / "person_scores.csv").write_text(_csv_text(["frame", "person", "score", "mo", "app", "mm", "nll"], prow))
    doc = dict(meta)
    doc.update({"num_frames": n, "fps": fps, "threshold": {"value": threshold, "source": thr_source},
                "events": events, "frames": {"score": _nan_to_none(res.score)},
                "persons": {str(p): {"frames": np.flatnonzero(np.isfinite(s)).tolist(),
                                     "score": [round(float(v), 6) for v in s[np.isfinite(s)]]}
                            for p, s in res.persons.items()}})
    if res.score_minmax is not None:
        doc["frames"]["score_minmax"] = _nan_to_none(res.score_minmax)
    for k in ("mo", "app", "mm", "nll"):
        doc["frames"][k] = _nan_to_none(res.components[k])
    (folder / "scores.json").write_text(json.dumps(doc, indent=1))
    comps = {k: res.components[k] for k in ("mo", "app", "mm")}
    png = plot_timeline(folder / "timeline.png", res.score, threshold, events, comps, fps=fps,
                        title=f"{name}: fused score (training-normalised)")
    mp4 = None
    if video:
        people = [[] for _ in range(n)]
        for p, (fr, kp) in tracks.items():
            ps = res.persons.get(p)
            for f, k in zip(fr.tolist(), kp):
                people[f].append((p, k, float(ps[f]) if ps is not None else math.nan))
        frames = (img for _, chunk in src.iter_chunks(32) for img in chunk)
        mp4 = write_annotated_video(folder / "annotated.mp4", frames, people, res.score, threshold, fps=fps)
    info = {"video": meta["video"], "frames": n, "threshold": f"{threshold:.4g} ({thr_source})",
            "mode": meta["mode"], "run": meta["run"], "events": len(events)}
    if meta["mode"] == "online":
        info["latency"] = f"{meta['latency_frames']} frames"
    write_report(folder / "report.html", f"mgnet score: {name}", png, mp4, events, info,
                 links=("frame_scores.csv", "person_scores.csv", "scores.json"))
    return {"events": events}


def _publish(tmp: Path, dest: Path) -> None:
    """Rename the finished temporary folder into place (replacing an older result)."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old{os.getpid()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def best_f1_on_test_split(model, cfg, stats, lambdas, device, batch_size) -> tuple[float, float]:
    """Best-F1 threshold of the training-normalised fused frame score on the run's labelled test split
    (frames nobody is scored at count as below any threshold)."""
    from mgnet.evaluate import score_clips
    from mgnet.report.events import best_f1_threshold
    from mgnet.train import Dist, open_split
    ctx = Dist(str(device))
    try:
        store = open_split(cfg.data, "test", ctx)
        clip = score_clips(model, store, batch_size, ctx, amp=False, desc="test split (best-F1)")
    finally:
        ctx.close()
    fused = fused_scores(clip, stats, lambdas)["score"]
    ys, ss = [], []
    for vi, name in enumerate(store.videos):
        gt = store.gt(name)
        if gt is None:
            continue
        sel = np.asarray(clip["video"]) == vi
        curve = np.full(len(gt), -np.inf)
        np.maximum.at(curve, np.asarray(clip["frame"][sel], np.int64), fused[sel])
        ys.append(np.asarray(gt))
        ss.append(curve)
    if not ys:
        raise ValueError("--threshold best-f1: the run's test split has no ground truth")
    thr, f1 = best_f1_threshold(np.concatenate(ss), np.concatenate(ys))
    return thr, f1


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from mgnet.config_schema import ArgumentParser
    p = ArgumentParser(prog="mgnet score", description="Score your own videos with a trained run.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", required=True, type=Path, help="a video file, a folder of frame images, or a folder of videos")
    p.add_argument("--poses", required=True, type=Path, help="the pose file/folder (or a folder of them, one per video)")
    p.add_argument("--run", required=True, type=Path, help="a finished training run folder")
    p.add_argument("--out", type=Path, default=Path("scores"), help="output folder (default: ./scores)")
    p.add_argument("--online", action="store_true", help="score frame by frame, printing frame,score lines as they become final")
    p.add_argument("--threshold", default="p99", help="p50|p90|p95|p99 of training scores, a number, or best-f1 (default p99)")
    p.add_argument("--pose-format", default="auto", choices=("auto",) + FORMATS)
    p.add_argument("--merge-gap", type=int, default=0, help="merge events separated by at most this many frames")
    p.add_argument("--min-event", type=int, default=1, help="drop events shorter than this many frames")
    p.add_argument("--no-video", action="store_true", help="skip the annotated video")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate when the input does not say (frame folders)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); on a busy shared CPU 1 can be much faster")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from mgnet import config_schema
    from mgnet.data.errors import DataError
    from mgnet.data.video import open_frames
    from mgnet.evaluate import load_run
    from mgnet.report.events import resolve_threshold
    from mgnet.runs import RunError

    staged: list[Path] = []
    try:
        config_schema.check_args(config_schema.Score, args)  # first: options, then the run's config
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        # everything is checked before any scoring or output
        if not (args.run / "config.yaml").is_file():
            raise RunError(f"{args.run}: not a run folder (no config.yaml)")
        model, cfg = load_run(args.run, device=args.device)
        stats = load_score_stats(args.run)
        spec = ClipSpec.from_config(cfg)
        lambdas = {"app": float(cfg.model.lambda_app), "mm": float(cfg.model.lambda_mm)}
        inputs = []
        for vpath, ppath in _pairs(args.video, args.poses):
            src = open_frames(vpath)
            tracks = load_poses(ppath, args.pose_format)
            check_frame_range(tracks, len(src), ppath, vpath)
            inputs.append((vpath, ppath, src, tracks))
        names = [v.stem if v.is_file() else v.name for v, _, _, _ in inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"{args.video}: two inputs share the output name (video names must differ)")
        if str(args.threshold).lower() == "best-f1":
            threshold, f1 = best_f1_on_test_split(model, cfg, stats, lambdas, args.device, args.batch_size)
            thr_source = f"best F1 {f1:.3f} on the run's test split"
        else:
            threshold = resolve_threshold(args.threshold, stats)
            thr_source = (f"{args.threshold} of training-set fused scores" if str(args.threshold).lower().startswith("p")
                          else "given")
        args.out.mkdir(parents=True, exist_ok=True)
        for (vpath, ppath, src, tracks), name in zip(inputs, names):
            fps = _fps(src, args.fps)
            meta = {"video": str(vpath), "poses": str(ppath), "run": str(args.run),
                    "mode": "online" if args.online else "offline",
                    "normalisation": "per component min-max of the training set (score_stats.json), eq. 16",
                    "seg_len": spec.seg_len, "latency_frames": spec.latency if args.online else None}
            if args.online:
                print(f"# {name}: frame,score (each printed {spec.latency} frames after the frame arrives)", flush=True)
                res = score_online(model, src, tracks, spec, stats, lambdas, args.batch_size, args.device,
                                   on_frame=lambda fs: print(f"{fs.frame},{_fmt(fs.score)}", flush=True))
            else:
                res = score_offline(model, src, tracks, spec, stats, lambdas, float(cfg.eval.sigma),
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
            faults.point("score.publish")
            _publish(tmp, args.out / name)
            staged.remove(tmp)
            print(f"{name}: {len(src)} frames, {meta['frames_per_second']} frames/s ({meta['mode']}), "
                  f"{len(out['events'])} events above {threshold:.4g} -> {args.out / name}/report.html",
                  file=sys.stderr)
    except (RunError, DataError, ValueError, FileNotFoundError) as exc:
        print(f"mgnet score: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for tmp in staged:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
