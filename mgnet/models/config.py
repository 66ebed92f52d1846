"""ModelConfig: every size and weight of the MGNet model in one dataclass.

``ModelConfig.small()`` is the CPU default (narrow ViT), ``ModelConfig.vits()`` the ViT-S scale of
the paper (a scale only: the paper's method is the ``method=paper`` config group, conf/method/). ``ModelConfig.from_dict(d)`` (or ``ModelConfig(**d)``) builds one from the hydra
``model`` node; unknown keys are an error that names them.

Numbers the paper does not give are the defaults of docs/architecture.md (T=16, 64x64 crops,
C_mo = 2*18, C_app = 128, N_b = N_s = 10, N_r = 50, K = 8 flow steps, R = 3, margin 1.0).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

CUBE = (2, 8, 8)            # cube embedding size (time, height, width), paper sec. 3.2
_BACKENDS = ("auto", "eager", "cpu", "cuda", "triton")
PRESETS = ("small", "vits")   # scales (conf/model/); the method is conf/method/


@dataclass
class ModelConfig:
    # input
    seg_len: int = 16                  # T frames per clip
    crop: int = 64                     # human-centric crop H = W
    joints: int = 18                   # OpenPose-18 graph
    scene_size: int = 64               # S of the downscaled scene image
    # ViT encoders (RGB encoder and mask encoder share the structure)
    embed_dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    # LSTA head H_B (eqs. 2-3)
    lsta_layers: int = 1               # L
    lsta_k0: int = 5
    lsta_k1: int = 7
    lsta_dilation: int = 3
    lsta_order: str = "dense_first"    # eq. (2): "dense_first" (VAN's, every backend) or "dilated_first" (eager only)
    head_hidden: int = 128             # hidden width of the heads' MLPs
    # feature widths
    c_mo: int = 36                     # = 2 * joints (f_sk is the flow output reshaped)
    c_app: int = 128
    # memories
    n_b: int = 10
    n_s: int = 10
    n_r: int = 50
    sep_margin: float = 1.0
    mem_temperature: float = 1.0       # softmax temperature of behavior/scene memory addressing (eq. 7); 1 = paper
    # Behavior-Scene Matching (sec. 3.4; see memory.py and README "Method notes")
    bsmm_behavior: str = "pose"        # W_b from the pose memory ("pose") or from e_b's behavior memory ("tokens", the paper)
    n_p: int = 20                      # pose-memory slots (prototype poses), bsmm_behavior="pose"
    bsmm_temperature: float = 0.05     # softmax temperature of pose-memory addressing and of the BSMM read (eq. 10)
    bsmm_normalize: bool = True        # eq. (15) on L2-normalised C_b, C_s (False: the plain difference, the paper)
    # STG-NF
    flow_steps: int = 8                # K
    flow_hidden: int = 32              # ST-GCN width inside each coupling
    flow_permutation: str = "permute"  # "permute" (reverse channels, as STG-NF) or "invconv" (LU 1x1)
    flow_temporal_kernel: Optional[int] = None   # None: T // 2 + 1 (STG-NF's choice)
    graph_max_hop: int = 8             # uniform adjacency over joints within this many hops (STG-NF)
    prior_mean: float = 3.0            # R: prior N(R*1, I)
    # scene feature extractor F_S
    scene_grid: int = 8                # colour layout grid g x g
    scene_conv_channels: int = 16      # fixed random conv features
    scene_seed: int = 0
    scene_weights: Optional[str] = None  # path to a local state_dict for the conv branch (SceneCNN)
    # losses and scores (eqs. 12, 16)
    alpha: float = 1.0
    beta: float = 0.1
    lambda_app: float = 1.0
    lambda_mm: float = 0.0
    # the project's fusion weighs S_pose and S_app: the validation protocol's choice (README
    # "Validation protocol"); S_mo and S_mm are computed and reported, fused with weight > 0
    lambda_mo: float = 0.0             # weight of S_mo in the project's fusion (eq. 16 has it at 1)
    lambda_pose: float = 0.5           # weight of S_pose (model.n_seg > 0) in the project's fusion (protocol: 0.5)
    app_target_stopgrad: bool = False  # True: H_u gets no gradient from L_app (guards against collapse); app_target="memory"
    app_target: str = "foreground"          # S_app from the foreground-occupancy memory ("foreground"), the cube colour memory ("cubes") or eq. 14's H_u(f_b) vs mask encoder ("memory", the paper)
    n_fg: int = 16384                  # app_target="foreground": normal occupancy maps kept (a seeded subset if more)
    fg_missing_weight: float = 0.25    # app_target="foreground": weight of foreground a normal map has and the clip lacks (occlusion) against foreground the clip adds (protocol: 0.25; 1 = Euclidean)
    n_a: int = 256                     # appearance-memory slots (cube colour statistics), app_target="cubes"
    app_topk: float = 0.1              # app_target="cubes": S_app = mean of the largest fraction of the per-cube distances
    app_target_norm: bool = False      # f_u standardised over the batch (BatchNorm, no affine): no constant target (README "Method notes")
    # an RGB encoder that carries appearance (models/pretrain.py, models/backbone.py): a frozen
    # feature extractor whose tokens the RGB encoder takes instead of its own cube embedding
    rgb_pretrain: str = "none"         # "mae": stage 0 trains the extractor by masked cube reconstruction
    pretrain_mask_ratio: float = 0.75  # stage 0: fraction of each slice's cubes hidden (tube masking)
    pretrain_decoder_dim: int = 64     # stage 0: width of the light decoder (one block per decoder_depth)
    pretrain_decoder_depth: int = 1
    rgb_backbone: Optional[str] = None  # "vit_<tiny|small|base>_patch<P>": a ViT in timm's layout read from rgb_weights
    rgb_weights: Optional[str] = None  # path of the backbone's state_dict (torch.save file); nothing is downloaded
    rgb_backbone_layers: Optional[int] = None   # features after this many blocks (None: all)
    app_norm: str = "none"             # app_target="cubes": "clip" divides cube colour statistics by the clip's channel means
    # pose-segment memory behind S_pose (memory.SegmentMemory); 0 = off (no "pose" score)
    n_seg: int = 16384                 # normal training segments kept (a seeded random subset if more)
    seg_k: int = 1                     # S_pose = mean distance to the seg_k nearest kept segments
    seg_scene: bool = True             # S_pose against the segments of the clip's own scene only (memory.SegmentMemory)
    # masking (eq. 5)
    mask_ratio: float = 0.5
    mask_seed: int = 0                 # the fixed complementary pair used by scores()
    # kernels
    ops_backend: str = "auto"

    # ------------------------------------------------------------------ derived sizes
    @property
    def grid(self):
        """(t, h, w) cube grid."""
        return self.seg_len // CUBE[0], self.crop // CUBE[1], self.crop // CUBE[2]

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def scene_dim(self) -> int:
        """C_s: colour layout grid + colour statistics + conv features (see scene.py)."""
        return 3 * self.scene_grid ** 2 + 6 + 4 * self.scene_conv_channels

    # ------------------------------------------------------------------ checks
    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"model.{name}={getattr(self, name)!r}: {why}")
        # sizes first: the checks below divide by them
        for name in ("depth", "heads", "n_b", "n_s", "n_r", "flow_steps", "flow_hidden", "c_app",
                     "head_hidden", "scene_grid", "scene_conv_channels", "joints", "n_p", "n_a",
                     "embed_dim", "lsta_k0", "lsta_k1", "lsta_dilation", "graph_max_hop"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if self.flow_temporal_kernel is not None and self.flow_temporal_kernel < 1:
            bad("flow_temporal_kernel", "must be null or >= 1")
        if self.mlp_ratio <= 0:
            bad("mlp_ratio", "must be > 0")
        for name in ("alpha", "beta", "lambda_app", "lambda_mm", "lambda_mo", "lambda_pose", "sep_margin"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.seg_len <= 0 or self.seg_len % CUBE[0]:
            bad("seg_len", f"must be a positive multiple of {CUBE[0]} (cube time size)")
        if self.crop <= 0 or self.crop % CUBE[1]:
            bad("crop", f"must be a positive multiple of {CUBE[1]} (cube size)")
        if self.embed_dim % self.heads:
            bad("embed_dim", f"must be divisible by heads={self.heads}")
        if self.c_mo != 2 * self.joints:
            bad("c_mo", f"must equal 2 * joints = {2 * self.joints}: f_sk is the flow output (2, T, V) reshaped")
        if self.flow_permutation not in ("permute", "invconv"):
            bad("flow_permutation", "must be 'permute' or 'invconv'")
        if not 0.0 < self.mask_ratio < 1.0:
            bad("mask_ratio", "must be in (0, 1)")
        hw = self.grid[1] * self.grid[2]
        if abs(self.mask_ratio * hw - round(self.mask_ratio * hw)) > 1e-9:
            bad("mask_ratio", f"times the {hw} cubes of a slice must be a whole number")
        if self.ops_backend not in _BACKENDS:
            bad("ops_backend", f"must be one of {_BACKENDS}")
        if self.lsta_order not in ("dense_first", "dilated_first"):
            bad("lsta_order", "must be 'dense_first' (VAN's order) or 'dilated_first' (eq. 2's where-clause)")
        if self.lsta_order != "dense_first" and self.ops_backend not in ("auto", "eager"):
            bad("lsta_order", f"runs on the eager backend only; model.ops_backend={self.ops_backend!r} has dense_first")
        if self.lsta_k0 % 2 == 0 or self.lsta_k1 % 2 == 0:
            bad("lsta_k0", "LSTA kernel sizes k0 and k1 must be odd")
        for name in ("mem_temperature", "bsmm_temperature"):
            if getattr(self, name) <= 0:
                bad(name, "must be > 0")
        if self.bsmm_behavior not in ("pose", "tokens"):
            bad("bsmm_behavior", "must be 'pose' or 'tokens'")
        if self.app_target not in ("foreground", "cubes", "memory"):
            bad("app_target", "must be 'foreground', 'cubes' or 'memory'")
        if not 0.0 < self.app_topk <= 1.0:
            bad("app_topk", "must be in (0, 1]")
        if self.lsta_layers < 0:
            bad("lsta_layers", "must be >= 0")
        if self.app_norm not in ("none", "clip"):
            bad("app_norm", "must be 'none' or 'clip'")
        if self.n_fg < 1:
            bad("n_fg", "must be >= 1")
        if not 0.0 <= self.fg_missing_weight <= 1.0:
            bad("fg_missing_weight", "must be in [0, 1] (1: Euclidean distance)")
        if self.n_seg < 0:
            bad("n_seg", "must be >= 0 (0: no segment memory)")
        if self.seg_k < 1:
            bad("seg_k", "must be >= 1")
        if self.rgb_pretrain not in ("none", "mae"):
            bad("rgb_pretrain", "must be 'none' or 'mae'")
        if self.rgb_pretrain != "none" and self.rgb_backbone:
            bad("rgb_pretrain", "and model.rgb_backbone are two ways to the same encoder: set one")
        if not 0.0 < self.pretrain_mask_ratio < 1.0:
            bad("pretrain_mask_ratio", "must be in (0, 1)")
        if self.rgb_pretrain == "mae" and (abs(self.pretrain_mask_ratio * hw - round(self.pretrain_mask_ratio * hw)) > 1e-9
                                           or round(self.pretrain_mask_ratio * hw) in (0, hw)):
            bad("pretrain_mask_ratio", f"times the {hw} cubes of a slice must be a whole number in [1, {hw - 1}]")
        for name in ("pretrain_decoder_dim", "pretrain_decoder_depth"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if self.rgb_backbone:
            from .backbone import parse_name
            parse_name(self.rgb_backbone)                  # names model.rgb_backbone when unknown
            if not self.rgb_weights:
                bad("rgb_weights", f"model.rgb_backbone={self.rgb_backbone} needs a local weights file: "
                                   f"set model.rgb_weights=<path> (a torch.save state_dict; nothing is downloaded)")
            if not os.path.isfile(self.rgb_weights):
                bad("rgb_weights", "no such file (the backbone's weights are read from it; nothing is downloaded)")
        elif self.rgb_weights:
            bad("rgb_weights", "is set but model.rgb_backbone is not: name the architecture "
                               "(e.g. model.rgb_backbone=vit_small_patch8)")
        if self.rgb_backbone_layers is not None and self.rgb_backbone_layers < 1:
            bad("rgb_backbone_layers", "must be >= 1 (or null: all blocks)")

    @property
    def has_app_encoder(self) -> bool:
        """True with stage 0 (rgb_pretrain) or a backbone file (rgb_backbone)."""
        return self.rgb_pretrain != "none" or bool(self.rgb_backbone)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def small(cls, **overrides) -> "ModelConfig":
        """CPU default: embed 64, depth 2, 4 heads, one LSTA module."""
        return cls(**{**dict(embed_dim=64, depth=2, heads=4, lsta_layers=1), **overrides})

    @classmethod
    def vits(cls, **overrides) -> "ModelConfig":
        """ViT-S scale (the paper's width): embed 384, depth 12, 6 heads, two LSTA modules."""
        return cls(**{**dict(embed_dim=384, depth=12, heads=6, lsta_layers=2, head_hidden=512,
                             flow_hidden=64), **overrides})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """From a dict / OmegaConf node. A ``preset: small|vits`` key picks the base."""
        try:  # OmegaConf nodes: resolve to plain containers
            from omegaconf import DictConfig, OmegaConf
            if isinstance(d, DictConfig):
                d = OmegaConf.to_container(d, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        d = dict(d)
        preset = d.pop("preset", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(names)}")
        if preset is None:
            return cls(**d)
        if preset not in PRESETS:
            hint = " (model=paper is now model=vits; the paper's method is method=paper)" if preset == "paper" else ""
            raise ValueError(f"model.preset={preset!r}: expected one of {PRESETS}{hint}")
        return getattr(cls, preset)(**d)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["ModelConfig", "CUBE"]
