"""An exported folder (`mgnet export`) loaded for scoring: onnxruntime for model.onnx, torch.export
for model.pt2. Imports neither mgnet.models nor any training code.

``load_exported(folder)`` gives an ExportedModel with the run's clip geometry (``spec``), score
statistics, lambdas and eval sigma from metadata.json, ``forward(rgb, pose, scene, fg)`` -> the
export's outputs (``outputs``, from metadata.json "outputs") as numpy arrays, and ``scores(batch)`` ->
the raw {mo, app, mm[, pose], nll} of a model batch as MGNet.scores returns them, so
mgnet.engine.score_batch, OnlineScorer and `mgnet score` use it in place of the torch model and
fuse them through the library (mgnet.inference.fused_scores), as the torch engine does.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mgnet.inference import ClipSpec

SPEC_KEYS = ("seg_len", "crop_size", "scene_size", "max_gap", "max_jump", "box_expand", "box_min_conf")


class ExportError(ValueError):
    """An exported folder that cannot be used (names the file)."""


def _numpy(x, dtype):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


class ExportedModel:
    def __init__(self, folder: Path, meta: dict, run):
        self.folder, self.meta, self._run = folder, meta, run
        self.spec = ClipSpec(**{k: meta["clip"][k] for k in SPEC_KEYS if k in meta["clip"]})
        self.stats, self.lambdas = meta["score_stats"], dict(meta["lambdas"])
        self.sigma = float(meta.get("eval_sigma", 0.0))
        self.format = meta["format"]
        self.outputs = tuple(meta["outputs"])
        self.raw_keys = tuple(k[len("raw_"):] for k in self.outputs if k.startswith("raw_")) + ("nll",)

    def forward(self, rgb, pose, scene, fg) -> tuple:
        """``outputs`` of one batch of clips, numpy arrays (B,) each."""
        return tuple(self._run(_numpy(rgb, np.uint8), _numpy(pose, np.float32), _numpy(scene, np.uint8),
                               _numpy(fg, np.uint8)))

    __call__ = forward

    def scores(self, batch) -> dict:
        """Raw per-clip {mo, app, mm[, pose], nll} of a model batch (mgnet.inference.clip_batch), as torch tensors."""
        import torch
        out = dict(zip(self.outputs, self.forward(batch["rgb"], batch["pose"], batch["scene"], batch["fg"])))
        return {k: torch.from_numpy(np.asarray(out["nll" if k == "nll" else f"raw_{k}"])) for k in self.raw_keys}

    def eval(self):
        return self


def read_metadata(folder) -> dict:
    path = Path(folder) / "metadata.json"
    if not path.is_file():
        raise ExportError(f"{path}: missing; {folder} is not an `mgnet export` folder")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON ({e.msg})") from None
    missing = [k for k in ("format", "file", "clip", "score_stats", "lambdas", "outputs") if k not in meta]
    if missing:
        raise ExportError(f"{path}: lacks {missing}")
    return meta


def load_exported(folder, threads=None, expect_format=None) -> ExportedModel:
    """The exported model of ``folder``; ``expect_format`` ("onnx" / "torch") refuses the other one."""
    folder = Path(folder)
    meta = read_metadata(folder)
    if expect_format is not None and meta["format"] != expect_format:
        raise ExportError(f"{folder}: holds a {meta['format']!r} export ({meta['file']}), not {expect_format!r}; "
                          f"export with `mgnet export --format {expect_format}`")
    path = folder / meta["file"]
    if not path.is_file():
        raise ExportError(f"{path}: missing (named by {folder / 'metadata.json'})")
    if meta["format"] == "onnx":
        import onnxruntime as ort
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = opts.inter_op_num_threads = int(threads)
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        outs = list(meta["outputs"])
        return ExportedModel(folder, meta, lambda *xs: sess.run(outs, dict(zip(names, xs))))
    if meta["format"] == "torch":
        import torch
        module = torch.export.load(str(path)).module()

        def run(*xs):
            with torch.inference_mode():
                return [o.numpy() for o in module(*(torch.from_numpy(x) for x in xs))]
        return ExportedModel(folder, meta, run)
    raise ExportError(f"{folder / 'metadata.json'}: unknown format {meta['format']!r}")
