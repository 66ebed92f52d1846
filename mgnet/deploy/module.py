"""ClipScorer: the exportable module, one batch of person clips -> what `mgnet score` computes per clip.

Inputs (the model batch `mgnet score` builds per clip, mgnet.inference.clip_batch):
    rgb   (B, 3, T, crop, crop) uint8   the person's crops over the clip
    pose  (B, 2, T, 18) float32         OpenPose-18 x, y, STG-NF-normalised (mgnet.data.poses)
    scene (B, 3, S, S) uint8            the scene image of the clip's centre frame
    fg    (B, T, 8, 8) uint8            the crops' foreground occupancy (mgnet.data.foreground)
Outputs, each (B,), in the order ``outputs(components)`` gives (per export: the run's fused
components, written into metadata.json and the ONNX metadata as "outputs"):
    score              the fused score, as mgnet.inference.fused_scores computes it
    <k> per component  the component normalised with the run's score_stats.json: mo, app, mm[, s_pose]
                       (norm_output: S_pose is "s_pose", the input being "pose")
    nll                STG-NF's NLL (raw, as `mgnet score` reports it)
    raw_<k>            the raw components (eqs. 13-15, S_pose), float32 values

The run's fusion (``stats["fusion"]``: z-scores against the training clips or min-max by the
training range, then sum | pos_mean | max) is not re-implemented here. Each component's
normalisation is affine in that component: ``component_affine`` reads a_k, b_k off the library's
``mgnet.scoring.normalize`` (at 0 and at one point) and checks on random points around the
training range that it is affine; a normaliser that is not stops export with NotAffineError. The
combine step is the library's own function, ``mgnet.scoring.combine_parts``, which runs on torch
tensors as on numpy arrays.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from mgnet import scoring

INPUTS = ("rgb", "pose", "scene", "fg")


class NotAffineError(ValueError):
    """The library's normalisation of a component is not an affine map of its raw score."""


def norm_output(component: str) -> str:
    """The output name of a normalised component: its own name, or ``s_<name>`` where that is an
    input's name (ONNX names are unique: the normalised S_pose is ``s_pose``, the input ``pose``)."""
    return f"s_{component}" if component in INPUTS else component


def outputs(components: Sequence[str]) -> tuple:
    """The output names of a ClipScorer fusing ``components``, in order."""
    return ("score", *map(norm_output, components), "nll", *(f"raw_{k}" for k in components))


def model_components(model: nn.Module, stats: Mapping) -> tuple:
    """The components `mgnet score` fuses for this model and run (scoring.fused_components of the
    keys MGNet.scores returns: "pose" with a segment memory, model.n_seg > 0)."""
    keys = scoring.SCORE_KEYS + (("pose",) if int(getattr(model.cfg, "n_seg", 0) or 0) else ())
    return scoring.fused_components(dict.fromkeys(keys), stats)


def component_affine(stats: Mapping, name: str, norm: str, normalize: Callable = None, probes: int = 256,
                     seed: int = 0) -> Tuple[float, float]:
    """(a, b) with ``normalize(x, name, norm, stats) == a * x + b`` (default mgnet.scoring.normalize),
    checked on random raw scores around the component's training range."""
    normalize = normalize or scoring.normalize
    st = stats[name]
    lo, hi = float(st.get("min", 0.0)), float(st.get("max", 1.0))
    scale = max(abs(hi - lo), abs(float(st.get("std", 0.0))), 1e-6)

    def f(x: np.ndarray) -> np.ndarray:
        return np.asarray(normalize(x, name, norm, stats), dtype=np.float64)

    v = f(np.array([0.0, scale]))
    b, a = float(v[0]), float((v[1] - v[0]) / scale)
    pts = lo - scale + np.random.default_rng(seed).random(probes) * 3 * scale
    want = f(pts)
    err = float(np.max(np.abs(want - (a * pts + b)) / (1.0 + np.abs(want))))
    if not np.isfinite(err) or err > 1e-9:
        raise NotAffineError(f"the {norm!r} normalisation of component {name!r} is not affine in its raw score "
                             f"(relative deviation {err:.3g} on random raw scores around the training range); "
                             "the exported graph cannot compute it - use its raw_* outputs")
    return a, b


class ClipScorer(nn.Module):
    """A trained MGNet plus the run's fusion: forward(rgb, pose, scene, fg) -> ``self.outputs`` (tuple)."""

    def __init__(self, model: nn.Module, stats: Mapping, lambdas: Mapping):
        super().__init__()
        self.model = model.eval()
        self.norm, self.combine = scoring.stats_fusion(stats)
        if self.combine not in scoring.COMBINES:
            raise ValueError(f"score_stats.json: fusion combine must be one of {scoring.COMBINES}, "
                             f"got {self.combine!r}")
        self.components = model_components(model, stats)
        self.outputs = outputs(self.components)
        ab = np.array([component_affine(stats, k, self.norm) for k in self.components])   # (K, 2)
        self.register_buffer("norm_scale", torch.from_numpy(ab[:, 0].copy()))          # (K,) float64
        self.register_buffer("norm_shift", torch.from_numpy(ab[:, 1].copy()))          # (K,) float64
        self.register_buffer("weights", torch.from_numpy(scoring.fusion_weights(self.components, lambdas)))

    def forward(self, rgb: torch.Tensor, pose: torch.Tensor, scene: torch.Tensor, fg: torch.Tensor):
        out = self.model.scores({"rgb": rgb, "pose": pose, "scene": scene, "fg": fg})
        raw = torch.stack([out[k] for k in self.components], 1)                 # (B, K) float32
        norm = raw.to(torch.float64) * self.norm_scale + self.norm_shift          # (B, K)
        score = scoring.combine_parts(norm, self.weights, self.combine)
        return (score, *norm.unbind(1), out["nll"].to(torch.float64), *raw.unbind(1))


def example_inputs(spec, batch: int = 2) -> tuple:
    """Zero inputs of the shapes and dtypes of INPUTS for a ClipSpec."""
    from mgnet.data.foreground import GRID
    T, c, s = spec.seg_len, spec.crop_size, spec.scene_size
    return (torch.zeros(batch, 3, T, c, c, dtype=torch.uint8), torch.zeros(batch, 2, T, 18),
            torch.zeros(batch, 3, s, s, dtype=torch.uint8), torch.zeros(batch, T, GRID, GRID, dtype=torch.uint8))
