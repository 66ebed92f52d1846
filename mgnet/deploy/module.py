"""ClipScorer: the exportable module, one batch of person clips -> what `mgnet score` computes per clip.

Inputs (the model batch `mgnet score` builds per clip, mgnet.inference.clip_batch):
    rgb   (B, 3, T, crop, crop) uint8   the person's crops over the clip
    pose  (B, 2, T, 18) float32         OpenPose-18 x, y, STG-NF-normalised (mgnet.data.poses)
    scene (B, 3, S, S) uint8            the scene image of the clip's centre frame
Outputs, each (B,), in OUTPUTS order:
    score              the fused score (eq. 16) of the training-normalised components
    mo, app, mm        the components normalised with the run's score_stats.json
    nll                STG-NF's NLL (raw, as `mgnet score` reports it)
    raw_mo, raw_app, raw_mm   the raw components (eqs. 13-15), float32

Normalisation and fusion are not re-implemented here: ``library_affine`` reads them off the
library function `mgnet score` uses (mgnet.inference.fused_scores -> mgnet.scoring.fuse / minmax),
by evaluating it at the origin and at one point per component, and checks on random points around
the training range that it is affine in the raw scores (a per-component min-max and its weighted
sum are). A normalisation that is not affine cannot be represented this way, and export stops
with that message; whatever the library computes, the raw outputs let a runtime apply it itself
(the onnx engine of `mgnet score` does exactly that).
"""
from __future__ import annotations

from typing import Callable, Mapping, Tuple

import numpy as np
import torch
import torch.nn as nn

COMPONENTS = ("mo", "app", "mm")
NORMALISED = ("score", "mo", "app", "mm")
OUTPUTS = NORMALISED + ("nll", "raw_mo", "raw_app", "raw_mm")
INPUTS = ("rgb", "pose", "scene")


class NotAffineError(ValueError):
    """The library's normalisation is not an affine map of the raw scores."""


def library_affine(stats: Mapping, lambdas: Mapping, fused: Callable = None, probes: int = 256,
                   seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(A (4, 3), b (4,)) with ``[score, mo, app, mm] = A @ [raw_mo, raw_app, raw_mm] + b`` exactly as
    ``fused(raw, stats, lambdas)`` (default mgnet.inference.fused_scores) computes them."""
    if fused is None:
        from mgnet.inference import fused_scores as fused
    scale = {k: max(abs(float(stats[k]["max"]) - float(stats[k]["min"])), 1e-6) for k in COMPONENTS}

    def f(raw3: np.ndarray) -> np.ndarray:       # raw3 (N, 3) -> (N, 4)
        raw = {k: raw3[:, i] for i, k in enumerate(COMPONENTS)}
        raw["nll"] = np.zeros(len(raw3))
        out = fused(raw, stats, lambdas)
        return np.stack([np.asarray(out[k], dtype=np.float64) for k in NORMALISED], 1)

    unit = np.diag([scale[k] for k in COMPONENTS])
    vals = f(np.concatenate([np.zeros((1, 3)), unit]))
    b = vals[0]
    A = ((vals[1:] - b) / np.diag(unit)[:, None]).T
    rng = np.random.default_rng(seed)
    lo = np.array([float(stats[k]["min"]) - scale[k] for k in COMPONENTS])
    pts = lo + rng.random((probes, 3)) * 3 * np.array([scale[k] for k in COMPONENTS])
    want, got = f(pts), pts @ A.T + b
    err = float(np.max(np.abs(want - got) / (1.0 + np.abs(want))))
    if not np.isfinite(err) or err > 1e-9:
        raise NotAffineError(f"the score normalisation of mgnet.scoring is not affine in the raw scores "
                             f"(relative deviation {err:.3g} on random raw scores around the training range); "
                             "the exported graph cannot compute it - use its raw_* outputs")
    return A, b


class ClipScorer(nn.Module):
    """A trained MGNet plus the run's normalisation: forward(rgb, pose, scene) -> OUTPUTS (tuple)."""

    def __init__(self, model: nn.Module, stats: Mapping, lambdas: Mapping):
        super().__init__()
        self.model = model.eval()
        A, b = library_affine(stats, lambdas)
        self.register_buffer("norm_weight", torch.from_numpy(A.T.copy()))   # (3, 4) float64
        self.register_buffer("norm_bias", torch.from_numpy(b.copy()))       # (4,) float64

    def forward(self, rgb: torch.Tensor, pose: torch.Tensor, scene: torch.Tensor):
        out = self.model.scores({"rgb": rgb, "pose": pose, "scene": scene})
        raw = torch.stack([out[k] for k in COMPONENTS], 1)                  # (B, 3) float32
        norm = raw.to(torch.float64) @ self.norm_weight + self.norm_bias     # (B, 4)
        return (*norm.unbind(1), out["nll"].to(torch.float64), *raw.unbind(1))


def example_inputs(spec, batch: int = 2) -> tuple:
    """Zero inputs of the shapes and dtypes of INPUTS for a ClipSpec."""
    T, c, s = spec.seg_len, spec.crop_size, spec.scene_size
    return (torch.zeros(batch, 3, T, c, c, dtype=torch.uint8), torch.zeros(batch, 2, T, 18),
            torch.zeros(batch, 3, s, s, dtype=torch.uint8))
