"""Typed configuration: one dataclass per config group, checked before a job does anything.

Every job (train, eval, demo, score, prepare, synth) calls one function of this module first:
``compose(overrides)`` (hydra jobs: compose mgnet/conf and check it), ``validate(cfg)`` (a config
loaded from a run's config.yaml, plus overrides) or ``check_args(Schema, args)`` (argparse jobs).
A bad value raises `ConfigError` (a ValueError) whose one-line message names the key, the value
and what is allowed; the jobs print it and exit with status 2 before any data is prepared or any
folder is written.

The schema (one dataclass per group; a field's type is its type, ``spec(...)`` adds the range or
the choices)::

    Root     seed, data: Data, model: ModelConfig (+ preset), train: Train, eval: Eval
    Data     kind, root, cache_dir, splits, seg_len, strides, sizes, max_gap, max_jump, box_*, decode_chunk,
             synth: Synth (data=synthetic only)
    Train    out, resume, overwrite, stages, device, ..., stage1..3: Stage, stage4: Stage4
    Eval     sigma, batch_size, plots, max_plots
    Score, SynthArgs  the argparse options of `mgnet score` / `mgnet synth`

**Adding a key is one line**: a field in the group's dataclass, e.g. in `Train`
``deterministic: bool = False`` (a type and a default) or ``logger: str = spec("none",
choices=("none", "tensorboard"))``; plus the key in the group's yaml. The model group's schema is
`mgnet.models.config.ModelConfig` itself (its field types here, its ``__post_init__`` for the
ranges), so a new model field is checked as soon as it exists there. A new group (``method=``) is a
dataclass and one field of `Root`. Cross-group rules ("a batch size divisible by the number of
processes") are functions decorated with ``@rule``.

Unknown keys are rejected with the list of known ones; keys missing from a config (a run folder
written before a key existed) are filled with the field's default.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from mgnet.data.synth_variants import VARIANTS
from mgnet.scoring import COMBINES, NORMS

__all__ = ["ConfigError", "spec", "rule", "Root", "Data", "Synth", "Train", "Stage", "Stage4", "Eval",
           "Score", "SynthArgs", "ArgumentParser", "compose", "validate", "check_args", "check_overrides", "load_run_config"]

REQUIRED = dataclasses.MISSING


class ConfigError(ValueError):
    """A bad configuration value: ``key=value: what is allowed`` on one line."""

    def __init__(self, key: str, value: Any = REQUIRED, allowed: str = ""):
        self.key, self.value, self.allowed = key, value, allowed
        shown = "" if value is REQUIRED else f"={_show(value)}"
        super().__init__(f"{key}{shown}: {allowed}")

    @classmethod
    def from_message(cls, key: str, message: str) -> "ConfigError":
        """Wrap a check's own one-line message (it names the key and the value already)."""
        err = cls(key, REQUIRED, "")
        err.args = (" ".join(message.split()),)
        return err


def _show(value: Any) -> str:
    s = repr(value) if isinstance(value, str) else str(value)
    s = s.replace("\n", "\\n")
    return s if len(s) <= 80 else s[:77] + "..."


def spec(default: Any = REQUIRED, *, ge=None, gt=None, le=None, lt=None, choices=None, nonempty=False,
         doc: str = "") -> Any:
    """A dataclass field with a range (``ge``/``gt``/``le``/``lt``, for numbers and each element of
    a list), ``choices`` (allowed values), or ``nonempty`` (strings and lists)."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices).items() if v is not None}
    meta.update({"nonempty": True} if nonempty else {}, **({"doc": doc} if doc else {}))
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------- the groups
SYNTH_SIZES = ("tiny", "small", "full")
DATA_KINDS = ("synthetic", "shanghaitech", "ubnormal", "folder")
DEVICES = ("auto", "cpu", "cuda")
SYNTH_VARIANTS = tuple(VARIANTS)


@dataclass
class Synth:
    size: str = spec("small", choices=SYNTH_SIZES)
    seed: int = spec(0, ge=0)
    variant: str = spec("default", choices=SYNTH_VARIANTS)


@dataclass
class Data:
    kind: str = spec(REQUIRED, choices=DATA_KINDS)
    root: str = spec(REQUIRED, nonempty=True)
    cache_dir: Optional[str] = spec(None, nonempty=True)
    splits: List[str] = spec(["train", "test"], nonempty=True)
    seg_len: int = spec(16, ge=2)
    train_stride: int = spec(4, ge=1)
    test_stride: int = spec(1, ge=1)
    crop_size: int = spec(64, ge=8)
    scene_size: int = spec(64, ge=8)
    max_gap: int = spec(2, ge=0)
    max_jump: float = spec(0.5, ge=0.0)          # split tracks at identity switches (data/windows.py)
    box_expand: float = spec(0.2, ge=0.0)
    box_min_conf: float = spec(0.1, ge=0.0, le=1.0)
    decode_chunk: int = spec(64, ge=1)
    synth: Optional[Synth] = None
    pose_estimator: str = spec("files", choices=("files", "builtin", "onnx"))
    pose_model: Optional[str] = None
    det_model: Optional[str] = None
    pose_options: Dict[str, Any] = spec({})


@dataclass
class Stage:
    steps: Optional[int] = spec(None, ge=1)       # fixes the optimiser steps; else epochs decide
    epochs: Optional[float] = spec(None, gt=0.0)  # passes over the training clips (mgnet.training)
    lr: float = spec(1e-3, gt=0.0)
    weight_decay: float = spec(0.0, ge=0.0)
    warmup: int = spec(20, ge=0)


@dataclass
class Stage4:
    batch_size: int = spec(64, ge=1)


@dataclass
class Train:
    out: str = spec(REQUIRED, nonempty=True)
    resume: bool = False
    overwrite: bool = False
    stages: List[int] = spec([1, 2, 3, 4], choices=(0, 1, 2, 3, 4), nonempty=True)
    device: str = spec("auto", choices=DEVICES)
    amp: bool = True
    precision: str = spec("auto", choices=("auto", "fp32", "bf16"))   # mgnet.engine.precision
    compile: bool = False         # mgnet.engine.compile_model
    threads: Optional[int] = spec(None, ge=1)
    deterministic: bool = False   # bit-identical runs at any thread count (mgnet/determinism.py)
    num_workers: int = spec(0, ge=0)
    batch_size: int = spec(32, ge=1)
    grad_clip: Optional[float] = spec(1.0, ge=0.0)
    log_every: int = spec(10, ge=1)
    logger: str = spec("none", choices=("none", "tensorboard"))
    ckpt_every: int = spec(100, ge=1)
    stop_after_steps: Optional[int] = spec(None, ge=1)
    score_stats: bool = True
    stage0: Stage = field(default_factory=Stage)
    stage1: Stage = field(default_factory=Stage)
    stage2: Stage = field(default_factory=Stage)
    stage3: Stage = field(default_factory=Stage)
    stage4: Stage4 = field(default_factory=Stage4)


@dataclass
class Eval:
    sigma: float = spec(7.0, ge=0.0)
    batch_size: int = spec(256, ge=1)
    plots: bool = True
    max_plots: int = spec(200, ge=0)
    compile: bool = False         # mgnet.engine.compile_model (`mgnet eval --compile`)
    fusion: str = spec("z", choices=NORMS)
    combine: str = spec("pos_mean", choices=COMBINES)


def _model_schema():
    from mgnet.models.config import ModelConfig
    return ModelConfig


@dataclass
class Root:
    seed: int = spec(0, ge=0)
    data: Data = field(default_factory=Data)
    model: Any = "model"          # mgnet.models.config.ModelConfig: see _check_model
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)


# argparse jobs
THRESHOLD = re.compile(r"^(p(50|90|95|99)|best-f1|[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)$", re.IGNORECASE)


@dataclass
class Score:
    batch_size: int = spec(64, ge=1)
    threads: Optional[int] = spec(None, ge=1)
    fps: float = spec(25.0, gt=0.0)
    merge_gap: int = spec(0, ge=0)
    min_event: int = spec(1, ge=1)
    threshold: str = spec("p99", doc="p50|p90|p95|p99, a number or best-f1")
    device: str = spec("cpu", doc="cpu, cuda or cuda:<index>")


@dataclass
class SynthArgs:
    out: str = spec(REQUIRED, nonempty=True)
    seed: int = spec(0, ge=0)
    variant: str = spec("default", choices=SYNTH_VARIANTS)
    workers: Optional[int] = spec(None, ge=1)


ARG_PATTERNS = {  # argparse option -> (regex, what is allowed)
    "threshold": (THRESHOLD, "p50, p90, p95, p99, a number or best-f1"),
    "device": (re.compile(r"^(cpu|cuda(:\d+)?)$"), "cpu, cuda or cuda:<index>"),
}


# ---------------------------------------------------------------- cross-group rules
RULES: List[Callable[[Dict[str, Any]], None]] = []


def rule(fn):
    """Register a check over the whole (plain, already typed) config; raise ConfigError."""
    RULES.append(fn)
    return fn


@rule
def _batch_divides_world(c):
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    bs = c["train"]["batch_size"]
    if bs % world:
        raise ConfigError("train.batch_size", bs, f"must be divisible by the number of processes "
                                                  f"(WORLD_SIZE={world}): each takes batch_size / {world}")


@rule
def _model_matches_data(c):
    for mkey, dkey in (("seg_len", "seg_len"), ("crop", "crop_size"), ("scene_size", "scene_size")):
        m, d = c["model"].get(mkey), c["data"][dkey]
        if m is not None and m != d:
            raise ConfigError(f"model.{mkey}", m, f"must equal data.{dkey}={d} (the clips the data "
                                                  f"config prepares are what the model reads)")


@rule
def _synth_only_for_synthetic(c):
    if c["data"]["kind"] == "synthetic" and c["data"].get("synth") is None:
        raise ConfigError("data.synth", None, "data=synthetic needs data.synth.size and data.synth.seed")


# ---------------------------------------------------------------- the checker
def _kind(t, plural: bool = False) -> str:
    if plural:
        return {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(t, str(t))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(t, str(t))


def _range_text(meta) -> str:
    parts = [f"{op} {meta[k]}" for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if k in meta]
    return " and ".join(parts)


def _allowed(t, meta) -> str:
    if "doc" in meta:
        return meta["doc"]
    if "choices" in meta and t is not list:
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    rng = _range_text(meta)
    return f"{_kind(t)}{' ' + rng if rng else ''}"


def _scalar(key: str, v: Any, t, meta) -> Any:
    def bad(allowed=None):
        raise ConfigError(key, v, "expected " + (allowed or _allowed(t, meta)))
    if t is bool:
        if not isinstance(v, bool):
            bad()
    elif t is int:
        if isinstance(v, bool) or not isinstance(v, int):
            bad()
    elif t is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            bad()
        if not math.isfinite(v):
            bad(f"a finite number{' ' + _range_text(meta) if _range_text(meta) else ''}")
        v = float(v)
    elif t is str:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)  # hydra reads train.out=2024 as a number
        elif not isinstance(v, str):
            bad()
        if meta.get("nonempty") and not v.strip():
            bad("a non-empty string")
        if v == "???":
            raise ConfigError(key, REQUIRED, f"required, no value given (pass {key}=...)")
    if "choices" in meta and v not in meta["choices"]:
        raise ConfigError(key, v, "expected one of " + ", ".join(str(c) for c in meta["choices"]))
    if t in (int, float):
        for k, ok in (("ge", v >= meta.get("ge", v)), ("gt", "gt" not in meta or v > meta["gt"]),
                      ("le", v <= meta.get("le", v)), ("lt", "lt" not in meta or v < meta["lt"])):
            if not ok:
                bad()
    return v


def _check(key: str, v: Any, t, meta) -> Any:
    origin = typing.get_origin(t)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if v is None:
            return None
        return _check(key, v, args[0], meta)
    if v is None:
        raise ConfigError(key, None, f"expected {_allowed(t if origin is None else list, meta)}, not null")
    if origin is dict:  # free-form options (e.g. data.pose_options): a mapping, checked by its user
        if not isinstance(v, dict):
            raise ConfigError(key, v, "expected a mapping of options")
        return v
    if origin in (list, List, tuple):
        (et,) = typing.get_args(t)[:1]
        if not isinstance(v, (list, tuple)):
            raise ConfigError(key, v, f"expected a list of {_kind(et, plural=True)}"
                              + (f" from {', '.join(map(str, meta['choices']))}" if "choices" in meta else ""))
        if meta.get("nonempty") and not v:
            raise ConfigError(key, v, "expected a non-empty list")
        return [_check(f"{key}[{i}]", x, et, {k: m for k, m in meta.items() if k != "nonempty"})
                for i, x in enumerate(v)]
    if dataclasses.is_dataclass(t):
        return _check_group(key, v, t)
    return _scalar(key, v, t, meta)


def _fields(schema) -> Tuple[Dict[str, dataclasses.Field], Dict[str, Any]]:
    return {f.name: f for f in dataclasses.fields(schema)}, typing.get_type_hints(schema)


def _check_group(prefix: str, node: Any, schema, fill_defaults: bool = True) -> Dict[str, Any]:
    if not isinstance(node, dict):
        raise ConfigError(prefix, node, f"expected a group of keys ({', '.join(_fields(schema)[0])})")
    fields, hints = _fields(schema)
    unknown = [k for k in node if k not in fields]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{prefix}.{k}" if prefix else str(k), REQUIRED,
                          f"unknown key; known keys{' of ' + prefix if prefix else ''}: {', '.join(fields)}")
    out = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in node:
            has_default = f.default is not REQUIRED or f.default_factory is not REQUIRED
            if not has_default:
                raise ConfigError(key, REQUIRED, f"required, no value given (pass {key}=...)")
            if not fill_defaults:
                continue
            if dataclasses.is_dataclass(hints[name]):  # a missing group: its own required keys say what
                out[name] = _check_group(key, {}, hints[name])
                continue
            default = f.default if f.default is not REQUIRED else f.default_factory()
            out[name] = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default
            continue
        out[name] = _check(key, node[name], hints[name], dict(f.metadata))
    return out


def _check_model(node: Any) -> Dict[str, Any]:
    """model: ModelConfig's field types here, then its own range checks (``__post_init__``)."""
    schema = _model_schema()
    if not isinstance(node, dict):
        raise ConfigError("model", node, "expected a group of keys (the fields of ModelConfig)")
    node = dict(node)
    preset = node.pop("preset", None)  # checked by ModelConfig.from_dict
    if preset is not None and not isinstance(preset, str):
        raise ConfigError("model.preset", preset, "expected a preset name")
    fields, hints = _fields(schema)
    unknown = [k for k in node if k not in fields]
    if unknown:
        raise ConfigError(f"model.{unknown[0]}", REQUIRED,
                          f"unknown key; known keys of model: preset, {', '.join(fields)}")
    checked = {k: _check(f"model.{k}", v, hints[k], dict(fields[k].metadata)) for k, v in node.items()}
    try:
        schema.from_dict({**checked, **({"preset": preset} if preset is not None else {})})
    except ValueError as exc:  # "model.<field>=<value>: why"
        raise ConfigError.from_message(str(exc).split("=", 1)[0], str(exc)) from None
    return {**({"preset": preset} if preset is not None else {}), **checked}


def check_plain(c: Dict[str, Any]) -> Dict[str, Any]:
    """Check a plain (resolved) config dict; returns it typed, with missing keys defaulted."""
    if not isinstance(c, dict):
        raise ConfigError("config", c, "expected a mapping of groups")
    node = dict(c)
    model = node.pop("model", REQUIRED)
    if model is REQUIRED:
        raise ConfigError("model", REQUIRED, "required group missing")
    out = _check_group("", {k: v for k, v in node.items()}, _RootNoModel)
    out["model"] = _check_model(model)
    for r in RULES:
        r(out)
    return out


# Root without its model field (which _check_model checks)
_RootNoModel = dataclasses.make_dataclass(
    "_RootNoModel", [(f.name, typing.get_type_hints(Root)[f.name], f) for f in dataclasses.fields(Root)
                     if f.name != "model"])


def validate(cfg):
    """Check a composed or loaded OmegaConf config against the schema; returns the config with
    values normalised (numbers given for strings) and missing defaulted keys filled in."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    if isinstance(cfg, DictConfig):
        try:
            plain = OmegaConf.to_container(cfg, resolve=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(_omegaconf_key(exc), REQUIRED, _one_line(exc)) from None
    else:
        plain = cfg
    checked = check_plain(plain)
    return OmegaConf.create(checked)


def _one_line(exc) -> str:
    return " ".join(str(exc).split("\n")[0].split())


def _omegaconf_key(exc) -> str:
    return str(getattr(exc, "full_key", "") or "config")


def load_run_config(path):
    """A run's config.yaml, read and checked: ConfigError naming the file for YAML that does not
    parse or a config the schema rejects; RunError (runs.load_config) when the file is missing."""
    from mgnet import runs
    path = Path(path)
    try:
        cfg = runs.load_config(path)
    except runs.RunError:
        raise
    except Exception as exc:  # yaml.YAMLError, UnicodeDecodeError, OmegaConf's errors on odd keys
        raise ConfigError.from_message(str(path), f"{path}: not a readable config "
                                                  f"({type(exc).__name__}: {_one_line(exc)[:200]})") from None
    from omegaconf import DictConfig
    if not isinstance(cfg, DictConfig):
        raise ConfigError.from_message(str(path), f"{path}: expected a mapping of config groups")
    try:
        return validate(cfg)
    except ConfigError as exc:
        raise ConfigError.from_message(str(path), f"{path}: {exc}") from None


# ---------------------------------------------------------------- hydra jobs
def _conf_dir() -> Path:
    return Path(__file__).resolve().parent / "conf"


def check_overrides(overrides) -> None:
    """Each ``key=value`` names a known key and each ``group=option`` a known option, before hydra
    composes (whose own messages span several lines)."""
    conf = _conf_dir()
    groups = sorted(p.name for p in conf.iterdir() if p.is_dir())
    for o in overrides:
        if "=" not in o:
            raise ConfigError(o, REQUIRED, "expected key=value (a hydra override)")
        key, value = o.split("=", 1)
        key = key.lstrip("+~")
        if key in groups:
            options = sorted(p.stem for p in (conf / key).glob("*.yaml"))
            if value not in options and value not in ("null", ""):
                raise ConfigError(key, value, f"unknown option; available: {', '.join(options)}")
            continue
        if o.startswith("~"):
            continue
        parts = key.split(".")
        schema: Any = Root
        for i, part in enumerate(parts):
            prefix = ".".join(parts[:i])
            if part == "model" and i == 0:
                schema = _model_schema()
                fields = ["preset"] + [f.name for f in dataclasses.fields(schema)]
                if len(parts) > 1 and parts[1] not in fields:
                    raise ConfigError(key, REQUIRED, f"unknown key; known keys of model: {', '.join(fields)}")
                break
            fields, hints = _fields(schema)
            if part not in fields:
                where = f" of {prefix}" if prefix else ""
                also = "" if prefix else f"; config groups (group=option): {', '.join(groups)}"
                raise ConfigError(key, REQUIRED, f"unknown key; known keys{where}: {', '.join(fields)}{also}")
            t = hints[part]
            if typing.get_origin(t) is typing.Union:
                t = [a for a in typing.get_args(t) if a is not type(None)][0]
            if not dataclasses.is_dataclass(t):
                if i < len(parts) - 1:
                    raise ConfigError(key, REQUIRED, f"unknown key: {'.'.join(parts[:i + 1])} is a value, not a group")
                break
            schema = t


def compose(overrides=()):
    """Compose mgnet/conf with hydra overrides and check the result: the first call of every hydra
    job. ConfigError (one line) for an unknown key or option, a wrong type, a value out of range."""
    from mgnet import runs
    overrides = list(overrides)
    check_overrides(overrides)
    try:
        cfg = runs.compose_config(overrides)
    except ValueError as exc:
        msg = _one_line(exc.__cause__ or exc)
        m = re.match(r"Could not override '([^']+)'", msg)
        if m:  # a key of a group option that the chosen option lacks (data.synth with data=shanghaitech)
            groups = [o for o in overrides if "." not in o.split("=", 1)[0]]
            raise ConfigError(m.group(1), REQUIRED, f"not a key of the chosen config "
                                                    f"({', '.join(groups) or 'the defaults'})") from None
        raise ConfigError("override", REQUIRED, msg) from None
    return validate(cfg)


# ---------------------------------------------------------------- argparse jobs
class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (a wrong type, a missing option) are a one-line ConfigError, printed
    by the job as ``mgnet <job>: error: ...`` with status 2, instead of usage text and SystemExit."""

    def error(self, message):
        raise ConfigError.from_message(self.prog, f"{message} (see `{self.prog} --help`)")


def check_args(schema, args) -> None:
    """Check an argparse namespace's options that ``schema`` (a dataclass) lists."""
    fields, hints = _fields(schema)
    for name, f in fields.items():
        if not hasattr(args, name):
            continue
        v = getattr(args, name)
        opt = "--" + name.replace("_", "-")
        meta = dict(f.metadata)
        if isinstance(v, Path):
            v = str(v)
        checked = _check(opt, v, hints[name], {k: m for k, m in meta.items() if k != "doc"})
        if name in ARG_PATTERNS and checked is not None:
            pattern, allowed = ARG_PATTERNS[name]
            if not pattern.match(str(checked)):
                raise ConfigError(opt, checked, f"expected {allowed}")
