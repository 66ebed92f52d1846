"""Training logs: ``<run>/metrics.jsonl`` always, TensorBoard under ``<run>/tb/`` with
``train.logger=tensorboard``.

metrics.jsonl: one JSON object per logged step (every ``train.log_every`` steps and the last step
of a stage), ``{"stage", "step", <every loss term: means since the previous line>, "lr",
"clips_per_s"}`` (lr: the learning rate of the step; clips/s: global clips per second since the
previous line). A resumed stage first drops the lines of that stage past the step it resumes
from, so the file reads as one uninterrupted run.

TensorBoard (the optional ``tensorboard`` extra): one folder per stage, ``tb/stage<k>/``, holding
the same scalars (tags: the loss terms, ``lr``, ``clips_per_s``) and the stage's hyper-parameters
(the hparams plugin: ``train.stage<k>.*``, batch size, grad clip, world size; metric: the final
``loss``), and ``tb/eval/`` with the frame AUCs of `mgnet eval` (tags ``auc/<row>/micro|macro``).
A resumed stage purges its events past the resumed step (``purge_step``).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

LOGGERS = ("none", "tensorboard")


def metrics_log(run_root) -> Path:
    return Path(run_root) / "metrics.jsonl"


def tb_dir(run_root) -> Path:
    return Path(run_root) / "tb"


def reset(run_root) -> None:
    """Forget the logs of an earlier run in this folder (train.overwrite)."""
    metrics_log(run_root).unlink(missing_ok=True)
    shutil.rmtree(tb_dir(run_root), ignore_errors=True)


def check_logger(name) -> str:
    name = "none" if name is None else str(name).strip().lower()
    if name not in LOGGERS:
        raise ValueError(f"train.logger={name!r}: expected one of {LOGGERS}")
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError("train.logger=tensorboard needs the tensorboard package "
                             "(pip install 'mgnet[tensorboard]')") from None
    return name


def _finite(v):
    return float(v) if v is not None and math.isfinite(float(v)) else None


class StageLog:
    """The logs of one training stage (rank 0 only; on other ranks every call does nothing)."""

    def __init__(self, run_root, stage: int, logger: str = "none", start_step: int = 0,
                 hparams: Optional[Mapping[str, Any]] = None, enabled: bool = True):
        self.stage, self.enabled = int(stage), bool(enabled)
        self.path = metrics_log(run_root)
        self.hparams = dict(hparams or {})
        self.writer = None
        self.last: Dict[str, float] = {}
        if not self.enabled:
            return
        self._truncate(start_step)
        if check_logger(logger) == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(tb_dir(run_root) / f"stage{self.stage}"),
                                        purge_step=start_step + 1 if start_step else None)

    def _truncate(self, start_step: int) -> None:
        """Drop this stage's lines past ``start_step`` (they belong to an interrupted attempt)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue                              # a line cut by a kill: dropped
            if not (d.get("stage") == self.stage and d.get("step", 0) > start_step):
                keep.append(line)
        from mgnet.runs import write_text
        write_text(self.path, "".join(k + "\n" for k in keep))

    def step(self, step: int, terms: Mapping[str, float], lr: float, clips_per_s: float) -> None:
        if not self.enabled:
            return
        row = {"stage": self.stage, "step": int(step),
               **{k: _finite(v) for k, v in terms.items() if k != "step"},
               "lr": float(lr), "clips_per_s": round(float(clips_per_s), 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        self.last = row
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("stage", "step") and v is not None:
                    self.writer.add_scalar(k, v, int(step))
            self.writer.flush()     # a killed run keeps what was logged

    def close(self) -> None:
        """End of the stage: the hyper-parameters with the final loss (TensorBoard)."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams
        metric = {"loss": self.last.get("loss")} if self.last.get("loss") is not None else {}
        exp, ssi, sei = hparams({k: v for k, v in self.hparams.items() if isinstance(v, (int, float, str, bool))},
                                metric)
        fw = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)
        self.writer.close()
        self.writer = None


def stage_hparams(cfg, stage: int, world: int = 1) -> Dict[str, Any]:
    """The hyper-parameters that shape stage ``stage``: its train.stage<k> block and the shared ones."""
    from mgnet.runs import to_container
    scfg = to_container(cfg.train[f"stage{stage}"]) if f"stage{stage}" in cfg.train else {}
    out = {f"stage{stage}.{k}": v for k, v in scfg.items()}
    out.update({"batch_size": int(cfg.train.batch_size), "grad_clip": float(cfg.train.grad_clip or 0.0),
                "amp": bool(cfg.train.amp), "world": int(world), "seed": int(cfg.seed),
                "model.preset": str(cfg.model.get("preset", "")), "model.embed_dim": int(cfg.model.embed_dim)})
    return out


def log_eval(run_root, cfg, metrics: Mapping[str, Any]) -> None:
    """The frame AUCs of an evaluation into ``tb/eval/`` (with train.logger=tensorboard)."""
    logger = cfg.train.get("logger", "none") if hasattr(cfg.train, "get") else "none"
    if check_logger(logger) != "tensorboard":
        return
    from torch.utils.tensorboard import SummaryWriter
    w = SummaryWriter(str(tb_dir(run_root) / "eval"))
    try:
        for row, vals in metrics["auc"].items():
            for kind in ("micro", "macro"):
                v = _finite(vals.get(kind))
                if v is not None:
                    w.add_scalar(f"auc/{row}/{kind}", v, 0)
            for t, v in (vals.get("types") or {}).items():
                if _finite(v) is not None:
                    w.add_scalar(f"auc/{row}/type_{t}", float(v), 0)
    finally:
        w.close()


__all__ = ["LOGGERS", "StageLog", "check_logger", "log_eval", "metrics_log", "reset", "stage_hparams", "tb_dir"]
