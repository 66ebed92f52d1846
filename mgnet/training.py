"""The four training stages of MGNet, resumable, single process or torchrun (`mgnet train`).

    mgnet train data=synthetic model=small train.out=runs/x        # hydra overrides
    mgnet train train.out=runs/x --resume                          # continue after an interruption
    torchrun --nproc_per_node=4 -m mgnet.cli train train.out=runs/x   # DDP, one process per GPU

Stages (paper sec. 3, eq. 12 split as docs/architecture.md says):
  0  (model.rgb_pretrain=mae only) masked cube reconstruction pre-training of the RGB features
  1  STG-NF on poses (NLL)
  2  RGB encoder + H_B + behavior/scene memories (L_mo + beta * separateness)
  3  mask encoder + heads (alpha * L_app), RGB encoder frozen
  4  one pass over the training set writing the Behavior-Scene Matching Memory (eq. 9)
then the training set is scored once and ``score_stats.json`` records the statistics that online
scoring normalises with.

Determinism and resume: each stage re-seeds from ``seed`` and its number when it starts, draws
its batches from a DistributedSampler seeded by ``seed`` and stage (epoch by epoch), and snapshots
model, optimiser, step, loss history and RNG state every ``train.ckpt_every`` steps. A resumed
run loads the finished stages' checkpoints and the latest snapshot, skips the batches already
seen in that epoch, and so reaches the same weights as an uninterrupted run with the same seed.

Distributed: with WORLD_SIZE > 1 (torchrun) a process group is created (nccl on CUDA, gloo on
CPU), the stage's loss module is wrapped in DistributedDataParallel, each rank takes
``batch_size / world`` clips of every global batch (so the global batches are those of a single
process), and only rank 0 logs and writes files. Stage 4 is run whole on every rank (it is one
no-grad pass), so the memory is identical everywhere without communication.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm
from omegaconf import OmegaConf

from mgnet import engine, faults, runs, scoring, tracking
from mgnet.engine import Dist, autocast, load_model_state, model_identity, score_clips, to_device
from mgnet.runs import RunDir, RunError
from mgnet.scoring import SCORE_KEYS

try:
    import nvtx
    _annotate = nvtx.annotate
except ImportError:  # pragma: no cover - nvtx is a dependency; keep training usable without it
    def _annotate(*a, **k):
        return contextlib.nullcontext()

STAGES = (0, 1, 2, 3, 4)
# train.* keys that may change between an interrupted run and its resumption
VOLATILE_TRAIN_KEYS = ("resume", "overwrite", "stop_after_steps", "num_workers", "threads", "stages",
                       "out", "log_every", "ckpt_every", "score_stats", "device", "logger")


class Stopped(Exception):
    """Raised internally when train.stop_after_steps is reached (a snapshot has been written)."""


# ---------------------------------------------------------------- checkpoints
def save_stage(run: RunDir, stage: int, model, cfg, ctx: Dist, history=(), **extra) -> None:
    """Rank 0 writes stage `stage`'s final checkpoint (weights, loss history, model identity)."""
    if ctx.main:
        runs.save_checkpoint(run.stage(stage), {"model": model.state_dict(), "stage": stage,
                                                "history": list(history), **extra, **model_identity(cfg)})


# ---------------------------------------------------------------- run folder checks
def _comparable(cfg) -> Dict[str, Any]:
    c = runs.to_container(cfg)
    c.pop("eval", None)
    for k in VOLATILE_TRAIN_KEYS:
        c.get("train", {}).pop(k, None)
    return c


def prepare_run_dir(cfg, ctx: Dist) -> RunDir:
    """Create the run folder, or check that resuming in it is consistent with ``cfg``."""
    run = RunDir(cfg.train.out)
    if ctx.main:
        if run.config.exists() and run.has_any_checkpoint():
            if cfg.train.resume:
                old = runs.load_config(run.config)
                diff = runs.config_diff(_comparable(old), _comparable(cfg))
                if diff:
                    raise RunError(f"run folder {run.root} was started with a different config "
                                   f"(differs in: {', '.join(diff)}); resume with the same overrides "
                                   f"or choose another train.out")
            elif cfg.train.overwrite:
                shutil.rmtree(run.ckpt_dir, ignore_errors=True)
                for p in (run.metrics, run.score_stats, run.frame_scores, run.log):
                    if p.exists():
                        p.unlink()
                tracking.reset(run.root)
            else:
                raise RunError(f"run folder {run.root} already holds checkpoints; pass --resume "
                               f"(train.resume=true) to continue it, train.overwrite=true to start over, "
                               f"or choose another train.out")
        run.ckpt_dir.mkdir(parents=True, exist_ok=True)
        runs.remove_temporaries(run.root)  # left by a run killed mid-write (never read: hidden names)
        if not (cfg.train.resume and run.config.exists()):
            runs.save_config(run.config, cfg)
    ctx.barrier()
    return run


# ---------------------------------------------------------------- one optimisation stage
class _LossModule(torch.nn.Module):
    """``forward(batch) = model.losses(batch, stage)``, so DDP can hook the stage's loss."""

    def __init__(self, model: torch.nn.Module, stage: int):
        super().__init__()
        self.model, self.stage = model, stage

    def forward(self, batch):
        return self.model.losses(batch, self.stage)


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of ``base`` (a function of the step: resume-safe)."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def _stage_seed(cfg, stage: int) -> int:
    return int(cfg.seed) * 1009 + stage


def _epoch_indices(store, cfg, stage: int, epoch: int, ctx: Dist) -> List[int]:
    sampler = DistributedSampler(store, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=_stage_seed(cfg, stage), drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def _data_dependent_init(model, store, cfg, stage: int, gbs: int, ctx: Dist) -> None:
    """One forward (no backward) on the whole first global batch, on every rank, before DDP.

    Layers that initialise from their first training batch (STG-NF's ActNorm) would otherwise see
    a different half batch on each rank and the replicas would drift apart (DDP syncs gradients,
    not parameters). The whole global batch is the batch a single process starts with, so the
    initialisation equals the single-process one. RNG state is restored afterwards.
    """
    first = _epoch_indices(store, cfg, stage, 0, _Single())[:gbs]
    batch = to_device(next(iter(DataLoader(store, batch_size=gbs, sampler=first,
                                           generator=torch.Generator().manual_seed(0)))), ctx.device)
    state = runs.rng_state()
    with autocast(ctx.device, engine.precision(cfg)):
        model.losses(batch, stage)
    runs.set_rng_state(state)


class _Single:
    world, rank = 1, 0


class _LossLog:
    """The loss terms of the steps since the last history point, read by the host in batches.

    ``add`` keeps each step's terms as device tensors (no host-device sync); ``flush`` copies the
    pending steps to the host with one transfer per term, checks that every loss was finite, and
    adds them to the float sums ``acc`` in step order. Each value is the exact float of its step,
    summed in Python floats in the same order as a per-step ``float(v)`` would, so the history
    (and a snapshot's ``acc``/``n_acc``, which resume continues from) are bit-identical to per-step
    accumulation, while the device is waited for only at flushes: history points (the progress-bar
    refresh), snapshots and the end of a stage. A non-finite loss is therefore reported at the next
    flush (within ``train.log_every`` steps, and always before a snapshot or checkpoint is written)
    with the step it happened at and its terms, as before.
    """

    def __init__(self, acc: Optional[Dict[str, float]] = None, n_acc: int = 0):
        self.acc: Dict[str, float] = dict(acc or {})  # sums since the last history point
        self.n_acc = n_acc
        self._pending: List[tuple] = []                # (step, {term: 0-dim tensor})

    def add(self, step: int, out: Dict[str, torch.Tensor]) -> None:
        self._pending.append((step, {k: v.detach() for k, v in out.items()}))
        self.n_acc += 1

    def flush(self, stage: int) -> None:
        if not self._pending:
            return
        keys = list(dict.fromkeys(k for _, o in self._pending for k in o))
        host = {k: iter(torch.stack([o[k].reshape(()) for _, o in self._pending if k in o]).tolist())
                for k in keys}                         # one device->host copy per term
        steps = [(s, {k: next(host[k]) for k in o}) for s, o in self._pending]
        self._pending = []
        for s, vals in steps:
            if "loss" in vals and not math.isfinite(vals["loss"]):
                raise FloatingPointError(f"stage {stage} step {s}: loss is {vals['loss']} (terms: {vals})")
        for _, vals in steps:
            for k, v in vals.items():
                self.acc[k] = self.acc.get(k, 0.0) + v

    def point(self, step: int) -> Dict[str, float]:
        """A history point (means since the last one); starts the next interval."""
        point = {"step": step, **{k: v / self.n_acc for k, v in self.acc.items()}}
        self.acc, self.n_acc = {}, 0
        return point


def stage_steps(scfg, num_clips: int, batch_size: int) -> int:
    """A stage's optimiser steps: ``steps`` when set, else ``epochs`` passes over the training clips
    (``ceil(epochs * num_clips / batch_size)``, at least 1), so the budget scales with the data."""
    steps = scfg.get("steps")
    if steps is not None:
        return int(steps)
    epochs = scfg.get("epochs")
    if epochs is None or float(epochs) <= 0:
        raise ValueError(f"a training stage needs train.stageN.steps or train.stageN.epochs > 0 (got {epochs!r})")
    return max(1, math.ceil(float(epochs) * num_clips / batch_size))


def train_stage(stage: int, model, store, cfg, run: RunDir, ctx: Dist, log, budget: Dict[str, int]) -> None:
    scfg = cfg.train[f"stage{stage}"]
    gbs = int(cfg.train.batch_size)
    total = stage_steps(scfg, len(store), gbs)
    if gbs % ctx.world:
        raise ValueError(f"train.batch_size={gbs} must be divisible by the number of processes ({ctx.world})")
    bs = gbs // ctx.world
    per_rank = len(store) // ctx.world
    steps_per_epoch = per_rank // bs
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has {len(store)} clips, fewer than train.batch_size={gbs}")

    runs.seed_everything(_stage_seed(cfg, stage))
    model.set_stage(stage)
    params = model.stage_parameters(stage)
    if not params:
        raise RuntimeError(f"model.stage_parameters({stage}) is empty: nothing to train")
    opt = torch.optim.AdamW(params, lr=float(scfg.lr), weight_decay=float(scfg.weight_decay))
    step, history = 0, []
    losslog = _LossLog()  # loss terms summed since the last history point, read from the device lazily
    snap = run.snapshot(stage)
    if cfg.train.resume and snap.exists():
        st = runs.load_checkpoint(snap)
        load_model_state(model, st, snap, cfg)
        opt.load_state_dict(st["optimizer"])
        step, history = int(st["step"]), list(st["history"])
        losslog = _LossLog(st["acc"], int(st["n_acc"]))
        runs.set_rng_state(st["rng"])
        model.set_stage(stage)
        log.info(f"stage {stage}: resuming at step {step}/{total} from {snap}")
    slog = tracking.StageLog(run.root, stage, cfg.train.get("logger"), step,
                             tracking.stage_hparams(cfg, stage, ctx.world), enabled=ctx.main)

    def snapshot(at_step):
        losslog.flush(stage)
        if ctx.main:
            runs.save_checkpoint(snap, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                        "step": at_step, "stage": stage, "history": history,
                                        "acc": dict(losslog.acc), "n_acc": losslog.n_acc,
                                        "rng": runs.rng_state(), **model_identity(cfg)})

    fwd = _LossModule(model, stage)
    if ctx.world > 1 and step == 0:
        _data_dependent_init(model, store, cfg, stage, gbs, ctx)
    if ctx.world > 1:
        fwd = DDP(fwd, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                  find_unused_parameters=True)
    bar = tqdm(total=total, initial=step, desc=f"stage {stage}", disable=not ctx.main, dynamic_ncols=True,
               file=sys.stderr)
    t0, clips = time.perf_counter(), 0
    t_point, clips_point = t0, 0  # metrics.jsonl's clips/s: since the previous line
    with _annotate(f"stage{stage}", color="blue"):
        while step < total:
            epoch, skip = divmod(step, steps_per_epoch)
            idx = _epoch_indices(store, cfg, stage, epoch, ctx)[skip * bs: steps_per_epoch * bs]
            # own generator: creating the iterator must not draw from the global RNG (resume == uninterrupted)
            loader = DataLoader(store, batch_size=bs, sampler=idx, drop_last=True,
                                num_workers=int(cfg.train.num_workers),
                                generator=torch.Generator().manual_seed(_stage_seed(cfg, stage) + epoch))
            for batch in loader:
                with _annotate(f"stage{stage}/step", color="green"):
                    batch = to_device(batch, ctx.device)
                    for g in opt.param_groups:
                        g["lr"] = _lr(step, total, float(scfg.lr), int(scfg.warmup))
                    with autocast(ctx.device, engine.precision(cfg)):
                        out = fwd(batch)
                    loss = out["loss"]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.train.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, float(cfg.train.grad_clip))
                    opt.step()
                losslog.add(step, out)  # no host sync here: the terms are read at the next flush
                step += 1
                clips += gbs
                if step % int(cfg.train.log_every) == 0 or step == total:
                    losslog.flush(stage)  # the only per-interval sync (raises on a non-finite loss)
                    point = losslog.point(step)
                    history.append(point)
                    rate = clips / max(1e-9, time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{point['loss']:.4f}", clips_s=f"{rate:.0f}")
                    now = time.perf_counter()
                    slog.step(step, point, opt.param_groups[0]["lr"], (clips - clips_point) / max(1e-9, now - t_point))
                    t_point, clips_point = now, clips
                bar.update(1)
                budget["steps"] += 1
                stop = budget["stop_after"] is not None and budget["steps"] >= budget["stop_after"]
                if step < total and (stop or step % int(cfg.train.ckpt_every) == 0):
                    snapshot(step)
                if stop and step < total:
                    bar.close()
                    raise Stopped(f"stage {stage} step {step}")
                faults.point(f"stage{stage}.step")
                if step >= total:
                    break
    bar.close()
    dt = time.perf_counter() - t0
    last = history[-1] if history else {}
    log.info(f"stage {stage}: {total} steps in {dt:.1f}s ({clips / max(dt, 1e-9):.0f} clips/s); final "
             + ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k != "step"))
    save_stage(run, stage, model, cfg, ctx, history, steps=total)
    slog.close()
    if ctx.main and snap.exists():
        snap.unlink()
    ctx.barrier()
    if budget["stop_after"] is not None and budget["steps"] >= budget["stop_after"]:
        raise Stopped(f"end of stage {stage}")


def write_bsmm(model, store, cfg, run: RunDir, ctx: Dist, log) -> None:
    """Stage 4: one pass over the whole training set (same shuffled order on every rank) writing the BSMM."""
    runs.seed_everything(_stage_seed(cfg, 4))
    model.set_stage(4)
    # a seeded permutation, the same on every rank: the first writes seed the memory's slots, so
    # they must come from all over the training set, not from its first video
    order = torch.randperm(len(store), generator=torch.Generator().manual_seed(_stage_seed(cfg, 4))).tolist()
    loader = DataLoader(store, batch_size=int(cfg.train.stage4.batch_size), sampler=order,
                        num_workers=int(cfg.train.num_workers), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    with _annotate("stage4", color="blue"), torch.no_grad():
        for batch in tqdm(loader, desc="stage 4 (BSMM write)", disable=not ctx.main, dynamic_ncols=True,
                          file=sys.stderr):
            with _annotate("stage4/write", color="green"):
                model.bsmm_write(to_device(batch, ctx.device))
            faults.point("stage4.batch")
        with _annotate("stage4/finish", color="green"):
            info = model.bsmm_finish()     # pose mode: fit the pose memory, write the BSMM from all clips
    log.info(f"stage 4: BSMM written from {len(store)} clips in {time.perf_counter() - t0:.1f}s "
             f"({int(info['filled'])} slots, L_sep^r {info['sep_r']:.4f})")
    save_stage(run, 4, model, cfg, ctx)
    ctx.barrier()


def write_score_stats(model, store, cfg, run: RunDir, ctx: Dist, log) -> Optional[Dict[str, Any]]:
    """Score the training set once; per-component and fused statistics to score_stats.json."""
    # S_pose / S_app of a training clip leave its own track / video out (MGNet.leave_own_track_out)
    leave_out = getattr(model, "leave_own_track_out", contextlib.nullcontext)
    with leave_out():
        clip = score_clips(model, store, int(cfg.eval.batch_size), ctx, amp=engine.precision(cfg), desc="train scores")
    if not ctx.main:
        return None
    names = [k for k in SCORE_KEYS + scoring.OPTIONAL_COMPONENTS if k in clip]
    stats: Dict[str, Any] = {name: scoring.summary_stats(clip[name]) for name in names}
    lambdas = scoring.fusion_lambdas(cfg.model)
    # the fusion online scoring applies (scoring.fuse reads it from here): eval.fusion / eval.combine
    stats["fusion"] = {k: v for k, v in scoring.fusion_spec(cfg, stats).items() if k != "note"}
    stats["fused"] = scoring.summary_stats(scoring.fuse(clip, lambdas, stats=stats))
    stats["lambdas"] = lambdas
    stats["split"] = "train"
    runs.write_json(run.score_stats, stats)
    log.info(f"score statistics of {len(clip['mo'])} training clips -> {run.score_stats}")
    return stats


def plot_losses(run: RunDir) -> Optional[Path]:
    """plots/loss.png: each stage's loss terms against its step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    hist = {}
    for k in (0, 1, 2, 3):
        if run.stage(k).exists():
            hist[k] = runs.load_checkpoint(run.stage(k)).get("history", [])
    hist = {k: h for k, h in hist.items() if h}
    if not hist:
        return None
    fig, axes = plt.subplots(1, len(hist), figsize=(4.5 * len(hist), 3.2), squeeze=False)
    for ax, (k, h) in zip(axes[0], hist.items()):
        steps = [p["step"] for p in h]
        for key in h[0]:
            if key != "step":
                ax.plot(steps, [p.get(key, np.nan) for p in h], label=key)
        ax.set_title(f"stage {k}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = run.plots / "loss.png"
    runs.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the whole run
def train(cfg, ctx: Optional[Dist] = None) -> Dict[str, Any]:
    """Run the requested stages of one run. Returns ``{"run": RunDir, "stopped": bool, ...}``."""
    own_ctx = ctx is None
    ctx = ctx or Dist(str(cfg.train.device))
    restore_torch = None
    try:
        if cfg.train.threads and ctx.device.type == "cpu":
            torch.set_num_threads(int(cfg.train.threads))
        stages = sorted({int(s) for s in cfg.train.stages})
        tracking.check_logger(cfg.train.get("logger"))
        if not stages or any(s not in STAGES for s in stages):
            raise ValueError(f"train.stages={list(cfg.train.stages)}: expected a subset of {list(STAGES)}")
        from mgnet.models.config import ModelConfig
        ModelConfig.from_dict(runs.to_container(cfg.model))    # bad model keys fail before anything is written
        mae = str(cfg.model.get("rgb_pretrain", "none")) == "mae"
        if 0 in stages and not mae:
            raise ValueError(f"train.stages={stages} includes 0, which pre-trains the RGB features of "
                             f"model.rgb_pretrain=mae; model.rgb_pretrain is {cfg.model.get('rgb_pretrain')!r}")
        prev_stage = {s: (s - 1 if s > 1 or (s == 1 and mae) else None) for s in stages}
        # stage prerequisites before any data or training time is spent, and before the run folder is made
        for s, p in prev_stage.items():
            if p is not None and p not in stages and not RunDir(cfg.train.out).stage(p).exists():
                raise RunError(f"stage {s} needs {RunDir(cfg.train.out).stage(p)} (stage {p}'s checkpoint), "
                               f"which does not exist; run stage {p} first (train.stages=[{p},{s}])")
        run = prepare_run_dir(cfg, ctx)
        log = runs.get_logger(run, ctx.rank)
        store = engine.open_split(cfg.data, "train", ctx)
        log.info(f"run {run.root}: {len(store)} training clips, stages {stages}, world {ctx.world}, "
                 f"device {ctx.device}")
        torch.manual_seed(int(cfg.seed))
        model = engine.build_model(cfg.model).to(ctx.device)
        if cfg.train.get("deterministic", False):
            from mgnet import determinism
            restore_torch = determinism.enable(model, ctx.device)
        if OmegaConf.select(cfg, "train.compile", default=False):
            engine.compile_model(model)
        budget = {"steps": 0, "stop_after": cfg.train.stop_after_steps}
        loaded = None
        try:
            for s in stages:
                done = run.stage(s)
                if cfg.train.resume and done.exists():
                    log.info(f"stage {s}: finished earlier ({done}), skipped")
                    if ctx.main and run.snapshot(s).exists():  # killed between the checkpoint and this unlink
                        run.snapshot(s).unlink()
                    continue
                if prev_stage[s] is not None and loaded != prev_stage[s]:
                    prev = run.stage(prev_stage[s])
                    load_model_state(model, runs.load_checkpoint(prev, ctx.device), prev, cfg)
                if s < 4 and not model.stage_parameters(s):
                    # model.app_target=cubes: stage 3 has nothing to train (S_app reads the
                    # appearance memory written in stage 4); its checkpoint keeps the chain of stages
                    log.info(f"stage {s}: nothing to train with this model config, checkpoint only")
                    save_stage(run, s, model, cfg, ctx)
                    ctx.barrier()
                elif s < 4:
                    train_stage(s, model, store, cfg, run, ctx, log, budget)
                else:
                    write_bsmm(model, store, cfg, run, ctx, log)
                loaded = s
        except Stopped as stop:
            log.info(f"stopped after {budget['steps']} steps ({stop}; train.stop_after_steps); "
                     f"continue with --resume")
            return {"run": run, "stopped": True, "steps": budget["steps"]}
        if 4 in stages:
            if loaded != 4:
                load_model_state(model, runs.load_checkpoint(run.stage(4), ctx.device), run.stage(4), cfg)
            if cfg.train.score_stats:
                write_score_stats(model, store, cfg, run, ctx, log)
        if ctx.main:
            plot_losses(run)
        ctx.barrier()
        return {"run": run, "stopped": False, "steps": budget["steps"], "model": model}
    finally:
        if restore_torch is not None:
            restore_torch()
        if own_ctx:
            ctx.close()
