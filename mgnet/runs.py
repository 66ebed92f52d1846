"""The run folder: resolved config, atomic checkpoints, JSON results, the log.

Layout of ``<run>/``::

    config.yaml                 the resolved config the run was started with
    train.log                   the log (rank 0)
    checkpoints/stage{k}.pt     a finished stage (model state, loss history)
    checkpoints/stage{k}.last.pt  the latest in-stage snapshot (model, optimizer, step, RNG states);
                                deleted when the stage finishes
    metrics.json  score_stats.json  eval/frame_scores.npz  eval/clip_scores.npz  plots/*.png

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted write never leaves a truncated file under the final name. Checkpoints hold only
tensors, numbers, strings and containers of them: they load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np
import torch

from mgnet import faults


class RunError(RuntimeError):
    """A problem with a run folder (missing/corrupt checkpoint, config mismatch, stage order)."""


# ---------------------------------------------------------------- atomic writes
def _cannot_write(path: Path, exc: OSError) -> RunError:
    return RunError(f"cannot write {path}: {exc.strerror or exc} (the previous file, if any, is unchanged)")


def _write_temp(path: Path, write: Callable[[str], None]) -> str:
    """``write`` into a temporary file beside ``path``; returns its name. On any failure the
    temporary file is removed and an OSError (disk full, read-only folder) becomes a RunError."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        faults.point(f"write {path.name}")
        return tmp
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from exc
        raise


def atomic_write(path: os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename tmp_path to ``path`` (same folder, so the rename is atomic).
    A failed write (disk full, read-only folder: RunError naming the file) leaves ``path`` as it was."""
    return atomic_write_all([(path, write)])[0]


def atomic_write_all(items) -> list:
    """Several files that belong together, e.g. frame_scores.npz and the metrics.json computed
    with it: every ``(path, write)`` is written to its temporary name first (a failure changes
    none of them), then the last path, the one readers check, is removed, the others renamed
    into place and the last renamed last. A kill during the renames leaves the last file absent,
    never claiming files of another write."""
    items = [(Path(p), w) for p, w in items]
    temps = []
    try:
        for path, write in items:
            temps.append(_write_temp(path, write))
        if len(items) > 1 and items[-1][0].exists():
            items[-1][0].unlink()
            faults.point(f"commit {items[-1][0].name}")
        for (path, _), tmp in zip(items, temps):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _cannot_write(path, exc) from exc
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [p for p, _ in items]


def remove_temporaries(root: os.PathLike, recursive: bool = True) -> int:
    """Delete the temporary files (``.<name>.<random>.tmp``) that writes killed before their rename
    left under ``root``; returns how many. Call only where no other process is writing there."""
    n = 0
    root = Path(root)
    if root.is_dir():
        for p in (root.rglob if recursive else root.glob)(".*.tmp"):
            if p.is_file():
                p.unlink()
                n += 1
    return n


def text_writer(text: str) -> Callable[[str], None]:
    def _w(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return _w


def write_text(path, text: str) -> Path:
    return atomic_write(path, text_writer(text))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if not np.isfinite(x) else x
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def json_writer(obj) -> Callable[[str], None]:
    """JSON with NaN/inf written as null (strict JSON), numpy scalars converted."""
    return text_writer(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_json(path, obj) -> Path:
    return atomic_write(path, json_writer(obj))


def read_json(path) -> Any:
    with open(path) as f:
        return json.load(f)


def npz_writer(arrays: Mapping[str, np.ndarray]) -> Callable[[str], None]:
    def _w(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return _w


def save_npz(path, arrays: Mapping[str, np.ndarray]) -> Path:
    return atomic_write(path, npz_writer(arrays))


def save_checkpoint(path, state: Mapping[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_checkpoint(path, map_location="cpu") -> Dict[str, Any]:
    """torch.load with weights_only=True; a missing or unreadable file raises RunError naming it."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, not a checkpoint, pickled code
        raise RunError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                       f"delete it to redo that stage") from exc


# ---------------------------------------------------------------- config identity
def config_hash(section: Any) -> str:
    """A short stable hash of a (nested) config section, to tie checkpoints to their config."""
    blob = json.dumps(_jsonable(section), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_diff(a: Mapping, b: Mapping, prefix: str = "") -> list:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        key = f"{prefix}{k}"
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += config_diff(va, vb, key + ".")
        elif va != vb:
            out.append(key)
    return out


# ---------------------------------------------------------------- RNG state (weights_only-safe)
def rng_state() -> Dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------- paths and logging
class RunDir:
    """Paths of one run folder."""

    def __init__(self, root: os.PathLike):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    log = property(lambda self: self.root / "train.log")
    metrics = property(lambda self: self.root / "metrics.json")
    score_stats = property(lambda self: self.root / "score_stats.json")
    frame_scores = property(lambda self: self.root / "eval" / "frame_scores.npz")
    clip_scores = property(lambda self: self.root / "eval" / "clip_scores.npz")
    plots = property(lambda self: self.root / "plots")
    ckpt_dir = property(lambda self: self.root / "checkpoints")

    def stage(self, k: int) -> Path:
        return self.ckpt_dir / f"stage{k}.pt"

    def snapshot(self, k: int) -> Path:
        return self.ckpt_dir / f"stage{k}.last.pt"

    def has_any_checkpoint(self) -> bool:
        return self.ckpt_dir.is_dir() and any(self.ckpt_dir.glob("stage*.pt"))


def get_logger(run: Optional[RunDir] = None, rank: int = 0, name: str = "mgnet") -> logging.Logger:
    """A logger writing to stderr and ``<run>/train.log`` on rank 0; silent (warnings only) elsewhere."""
    log = logging.getLogger(name)
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    sh = logging.StreamHandler()
    sh.setFormatter(fmt)
    log.addHandler(sh)
    if run is not None and rank == 0:
        run.root.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run.log, mode="a")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


# ---------------------------------------------------------------- hydra composition
CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose_config(overrides=(), config_name: str = "config"):
    """Compose ``mgnet/conf/<config_name>.yaml`` with hydra overrides (``key=value``, ``group=option``)
    through hydra's compose API, and resolve interpolations. Bad overrides raise ValueError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ValueError(f"bad config override(s) {list(overrides)}: {exc}") from exc
    finally:
        GlobalHydra.instance().clear()
    return cfg


def to_container(cfg) -> Dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def save_config(path, cfg) -> Path:
    from omegaconf import OmegaConf
    return write_text(path, OmegaConf.to_yaml(OmegaConf.create(to_container(cfg))))


def load_config(path):
    from omegaconf import OmegaConf
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist: not a run folder (expected the config.yaml `mgnet train` writes)")
    return OmegaConf.load(path)
