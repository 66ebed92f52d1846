"""MGNet assembly: the networks, the stage switches, the losses (eqs. 4, 6, 11, 12) and the
per-clip raw scores (eqs. 13-15). Normalisation and fusion (eq. 16 and the default z-score
fusion) live in mgnet.scoring, not here.

Batches are dicts as produced by mgnet.data.cache.ClipStore + default collate:
  rgb (B, 3, T, crop, crop) uint8, pose (B, 2, T, 18) float, scene (B, 3, S, S) uint8
(other keys, pose_conf included, are ignored). uint8 images go to the ops as uint8 and are
normalised in-kernel (ImageNet mean/std); float images are taken to be in [0, 1] already.

Stages (set_stage):
  0  appearance encoder + decoder (rgb_pretrain="mae", models/pretrain.py): masked cube
     reconstruction; afterwards frozen, its features feed the RGB encoder (also a backbone file)
  1  STG-NF                                   loss = NLL (bits/dim)
  2  RGB encoder + H_B + behavior/scene memory loss = L_mo + beta (L_sep^b + L_sep^s)
  3  mask encoder + mask head + H_u           loss = alpha L_app   (RGB encoder, memories frozen)
     (app_target="memory", the paper's S_app; with "foreground" or "cubes" stage 3 trains nothing)
  4  nothing trained; bsmm_write(batch) for every training batch, then bsmm_finish(), writes the
     pose and appearance memories and the Behavior-Scene Matching Memory (eq. 9)
L_sep^r of eq. (12) belongs to the BSMM, which is written, not trained: bsmm_finish reports it.

Two places differ from the paper by default, each behind a config switch that restores it
(README "Method notes" has the measurements):
  app_target="foreground"  S_app is the distance of the clip's foreground occupancy map (what in
      the person's crop differs from the camera's empty scene, data/foreground.py) to the nearest
      normal one of its scene (SegmentMemory) - "cubes" (AppearanceMemory: distance of each cube's
      colour statistics to the nearest normal prototype, mean of the largest app_topk fraction) is
      the other option - instead of eq. (14)'s H_u(f_b) vs mask encoder ("memory", the paper).
  bsmm_behavior="pose" W_b of eq. (8) is the clip's addressing of the pose memory (PoseMemory),
      not e_b's addressing of the behavior memory ("tokens", the paper).

Kernel backend: ``cfg.ops_backend`` other than "auto" is applied with ``mgnet.ops.backend(...)``
around each losses / bsmm_write / scores call (no process-wide side effect; the backward pass
uses the backend its forward recorded). With "auto" nothing is pushed, so ``MGNET_BACKEND``
still decides.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Dict, List, Mapping, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..data.foreground import GRID as FG_GRID
from ..data.masking import complementary_masks, visible_indices
from .config import ModelConfig
from .encoder import VideoEncoder
from .heads import ProjectionHead, STHead
from .memory import AppearanceMemory, BehaviorSceneMatching, Memory, PoseMemory, SegmentMemory
from .pretrain import MaskedCubeDecoder, PreExtractedEmbed, mae_loss
from .scene import SceneFeatures, view_descriptor
from .stgnf import STGNF

try:
    import nvtx as _nvtx

    def _range(name):
        if torch.compiler.is_compiling():   # dynamo cannot enter nvtx.annotate: it would skip the frame
            return contextlib.nullcontext()
        return _nvtx.annotate(name, domain="mgnet")
except ImportError:  # pragma: no cover
    def _range(name):
        return contextlib.nullcontext()

STAGE_MODULES = {              # with app_target="memory" (the paper); see MGNet.stage_modules
    0: ("app_encoder", "mae_decoder"),      # rgb_pretrain="mae" only
    1: ("stgnf",),
    2: ("rgb_encoder", "head_b", "mem_b", "mem_s"),
    3: ("mask_encoder", "head_m", "head_u"),
    4: (),
}


def cosine_dissimilarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - a.b / (|a| |b|) per time step, averaged over time: (B, T, C) x2 -> (B,), in float32
    (under autocast the heads give half-precision features)."""
    return (1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)).mean(1)


class MGNet(nn.Module):
    def __init__(self, cfg: Union[ModelConfig, Mapping, None] = None):
        super().__init__()
        if cfg is None:
            cfg = ModelConfig.small()
        elif not isinstance(cfg, ModelConfig):
            cfg = ModelConfig.from_dict(cfg)
        self.cfg = cfg
        t, h, w = cfg.grid
        D = cfg.embed_dim
        self.stgnf = STGNF.from_config(cfg)
        self.rgb_encoder = VideoEncoder.from_config(cfg)
        self.head_b = STHead(D, cfg.c_mo, cfg.grid, cfg.lsta_layers, cfg.head_hidden,
                             cfg.lsta_k0, cfg.lsta_k1, cfg.lsta_dilation, cfg.lsta_order)
        if cfg.has_app_encoder:
            self._build_app_encoder(cfg)
        self.mem_b = Memory(cfg.n_b, D, cfg.sep_margin, cfg.mem_temperature)
        self.scene = SceneFeatures(cfg.scene_grid, cfg.scene_conv_channels, cfg.scene_seed, cfg.scene_weights)
        self.mem_s = Memory(cfg.n_s, cfg.scene_dim, cfg.sep_margin, cfg.mem_temperature)
        self.mask_encoder = VideoEncoder.from_config(cfg)
        self.head_m = ProjectionHead(D, cfg.c_app, cfg.grid, cfg.head_hidden)
        self.head_u = ProjectionHead(D, cfg.c_app, cfg.grid, cfg.head_hidden)
        if cfg.app_target_norm:
            # f_u standardised per channel over the batch (running statistics when scoring): a
            # constant f_u, the trivial minimiser of eq. (6) with H_u trained, has no variance to keep
            self.app_norm = nn.BatchNorm1d(cfg.c_app, affine=False)
        if cfg.app_target == "cubes":
            self.app_mem = AppearanceMemory(cfg.n_a, cfg.grid, cfg.app_topk, cfg.app_norm)
        if cfg.app_target == "foreground":
            # normal foreground-occupancy maps of the person crops (data/foreground.py), by scene
            self.fg_mem = SegmentMemory(cfg.n_fg, FG_GRID * FG_GRID, 1, cfg.seg_scene,
                                        missing_weight=cfg.fg_missing_weight)
        if cfg.bsmm_behavior == "pose":
            self.pose_mem = PoseMemory(cfg.n_p, cfg.joints, cfg.bsmm_temperature)
            len_b = cfg.n_p
        else:
            len_b = cfg.num_tokens * cfg.n_b
        self.bsmm = BehaviorSceneMatching(cfg.n_r, len_b, cfg.n_s, cfg.bsmm_temperature, cfg.bsmm_normalize)
        if cfg.n_seg:
            self.seg_mem = SegmentMemory(cfg.n_seg, 2 * cfg.seg_len * cfg.joints, cfg.seg_k, cfg.seg_scene)
        self._pending: List[tuple] = []     # stage 4: (frames, W_s, cubes, segments, tracks, views, scenes) until bsmm_finish
        self._pending_gen = torch.Generator().manual_seed(cfg.mask_seed)
        self._sep_r = [0.0, 0]             # stage 4, tokens mode: sum and count of the writes' L_sep^r
        # the fixed complementary pair S_app uses at scoring (derived from cfg.mask_seed)
        g = torch.Generator().manual_seed(cfg.mask_seed)
        m, _ = complementary_masks(1, (h, w), cfg.mask_ratio, g)
        self.register_buffer("score_mask", m[0], persistent=False)
        # visible cubes of MASK and of its complement, (1, Pv) each (two buffers, not one indexed:
        # a view of a buffer taken inside inference_mode breaks an inductor compile of scores())
        self.register_buffer("score_visible1", visible_indices(m, t), persistent=False)
        self.register_buffer("score_visible2", visible_indices(~m, t), persistent=False)
        self.stage: Optional[int] = None
        self._warned_empty_bsmm = False

    def _build_app_encoder(self, cfg: ModelConfig) -> None:
        """The frozen appearance features the RGB encoder reads (paper sec. 3.2, "pre-extract"):
        trained in stage 0 (rgb_pretrain="mae") or a backbone from cfg.rgb_weights."""
        D = cfg.embed_dim
        if cfg.rgb_pretrain == "mae":
            self.app_encoder = VideoEncoder.from_config(cfg)
            heads = math.gcd(cfg.pretrain_decoder_dim, cfg.heads)     # 64 wide: 4 heads (small), 2 (vits)
            self.mae_decoder = MaskedCubeDecoder(D, cfg.pretrain_decoder_dim, cfg.pretrain_decoder_depth,
                                                 heads, cfg.num_tokens, cfg.mlp_ratio)
            src = D
        else:
            from .backbone import build_backbone
            self.app_encoder = build_backbone(cfg)
            src = self.app_encoder.dim
        self.rgb_encoder.embed = PreExtractedEmbed(self._app_features, src, D, cfg.num_tokens)

    def _app_features(self, frames: torch.Tensor) -> torch.Tensor:
        return self.app_encoder(frames)

    # ------------------------------------------------------------------ stages
    def stage_modules(self, stage: int):
        """Names of the submodules `stage` trains."""
        _check_stage(stage)
        if stage == 0 and self.cfg.rgb_pretrain != "mae":
            return ()                                   # no stage 0 without model.rgb_pretrain=mae
        if stage == 3 and self.cfg.app_target != "memory":
            return ()                                   # S_app reads an appearance memory (stage 4)
        if stage == 3 and self.cfg.app_target_norm:
            return STAGE_MODULES[3] + ("app_norm",)     # batch statistics while training
        return STAGE_MODULES[stage]

    def set_stage(self, stage: int) -> "MGNet":
        """Freeze everything but what `stage` trains and set train/eval modes accordingly."""
        names = self.stage_modules(stage)
        self.stage = stage
        self.requires_grad_(False)
        for name in names:
            getattr(self, name).requires_grad_(True)
        return self.train(True)

    def stage_parameters(self, stage: int) -> List[nn.Parameter]:
        """The parameters the optimizer of `stage` gets (empty for stage 4)."""
        return [p for name in self.stage_modules(stage) for p in getattr(self, name).parameters()]

    def train(self, mode: bool = True) -> "MGNet":
        """With a stage set, train(True) puts only that stage's networks in training mode."""
        super().train(mode)
        if mode and self.stage is not None:
            for name, child in self.named_children():
                if name not in self.stage_modules(self.stage):
                    child.eval()
        return self

    # ------------------------------------------------------------------ pieces
    def _backend(self):
        be = self.cfg.ops_backend
        return contextlib.nullcontext() if be == "auto" else ops.backend(be)

    def _check_batch(self, batch: Mapping, keys) -> None:
        if not isinstance(batch, Mapping):
            raise TypeError(f"batch must be a dict of tensors (ClipStore + default collate), got {type(batch).__name__}")
        cfg = self.cfg
        T, c = cfg.seg_len, cfg.crop
        spec = {"rgb": ((3, T, c, c), f"(B, 3, T={T}, {c}, {c}) uint8"),
                "pose": ((2, T, cfg.joints), f"(B, 2, T={T}, {cfg.joints}) float"),
                "scene": ((3, None, None), "(B, 3, S, S) uint8"),
                "fg": ((T, FG_GRID, FG_GRID), f"(B, T={T}, {FG_GRID}, {FG_GRID}) uint8 foreground occupancy")}
        dev = self.bsmm.slots.device
        B = None
        for k in keys:
            if k not in batch:
                raise KeyError(f"batch has no {k!r} (keys: {sorted(batch)}); expected {spec[k][1]}")
            x = batch[k]
            shape, doc = spec[k]
            if (not isinstance(x, torch.Tensor) or x.dim() != 1 + len(shape)
                    or any(s is not None and s != d for s, d in zip(shape, x.shape[1:]))):
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"batch[{k!r}] must have shape {doc}, got {got}")
            if k == "pose" and not x.is_floating_point():
                raise TypeError(f"batch['pose'] must be floating point, got {x.dtype}")
            if k != "pose" and x.dtype != torch.uint8 and not x.is_floating_point():
                raise TypeError(f"batch[{k!r}] must be uint8 (or float), got {x.dtype}")
            if x.device != dev:
                raise ValueError(f"batch[{k!r}] is on {x.device} but the model is on {dev}; move the batch first")
            if B is None:
                B = x.shape[0]
            elif x.shape[0] != B:
                raise ValueError(f"batch[{k!r}] has batch size {x.shape[0]}, other entries have {B}")

    def _pose(self, batch):
        return batch["pose"].to(self.stgnf.A.dtype)

    def _f_sk(self, pose):
        z, nll = self.stgnf.nll(pose)
        return STGNF.features(z), nll                                      # eq. (1)

    def _behavior_memory(self, e_b):
        B, P, D = e_b.shape
        w, read, top2 = self.mem_b(e_b.reshape(B * P, D))                  # eq. (7)
        return w.view(B, P, -1), read.view(B, P, D), top2

    def _visible(self, mask_bhw, device):
        return visible_indices(mask_bhw, self.cfg.grid[0]).to(device)

    def _f_u(self, f_b):
        """f_u = H_u(f_b) (sec. 3.3), standardised over the batch with model.app_target_norm."""
        f_u = self.head_u(f_b)
        if self.cfg.app_target_norm:
            B, T, C = f_u.shape
            f_u = self.app_norm(f_u.reshape(B * T, C).float()).view(B, T, C)
        return f_u

    def _f_m(self, rgb, visible):
        # indices built here (masking.visible_indices): skip the op's host-side index check
        return self.head_m(self.mask_encoder(rgb, visible, validate=False), visible)

    # ------------------------------------------------------------------ losses
    def losses(self, batch: Mapping, stage: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Scalar loss terms of `stage` (default: the one set); "loss" is the total to backprop."""
        stage = self.stage if stage is None else stage
        _check_stage(stage)
        with self._backend(), _range(f"mgnet.losses.stage{stage}"):
            if stage == 0:
                if self.cfg.rgb_pretrain != "mae":
                    raise ValueError("stage 0 trains the appearance encoder of model.rgb_pretrain=mae; "
                                     f"model.rgb_pretrain={self.cfg.rgb_pretrain!r}")
                self._check_batch(batch, ("rgb",))
                l_mae = mae_loss(self.app_encoder, self.mae_decoder, batch["rgb"], self.cfg.grid,
                                 self.cfg.pretrain_mask_ratio)
                return {"loss": l_mae, "mae": l_mae.detach()}
            if stage == 1:
                self._check_batch(batch, ("pose",))
                _, nll = self.stgnf.nll(self._pose(batch))
                return {"loss": nll.mean(), "nll": nll.mean().detach()}
            if stage == 2:
                return self._losses_stage2(batch)
            if stage == 3:
                return self._losses_stage3(batch)
        raise ValueError("stage 4 trains nothing: call bsmm_write(batch) once per training batch")

    def _losses_stage2(self, batch):
        self._check_batch(batch, ("rgb", "pose", "scene"))
        cfg = self.cfg
        with torch.no_grad():
            f_sk, _ = self._f_sk(self._pose(batch))                       # guidance, frozen
        e_b = self.rgb_encoder(batch["rgb"])
        f_rgb = self.head_b(e_b)
        l_mo = F.mse_loss(f_rgb.float(), f_sk.float())                     # eq. (4), mean over T, C_mo, B
        q_b = e_b.reshape(-1, e_b.shape[-1])
        _, _, top2_b = self.mem_b(q_b)
        sep_b = self.mem_b.separateness(q_b, top2_b)                       # eq. (11), behavior
        q_s = self.scene(batch["scene"]).to(e_b.dtype)
        _, _, top2_s = self.mem_s(q_s)
        sep_s = self.mem_s.separateness(q_s, top2_s)                       # eq. (11), scene
        loss = l_mo + cfg.beta * (sep_b + sep_s)                           # eq. (12), stage-2 terms
        return {"loss": loss, "mo": l_mo.detach(), "sep_b": sep_b.detach(), "sep_s": sep_s.detach()}

    def _losses_stage3(self, batch):
        self._check_batch(batch, ("rgb",))
        cfg = self.cfg
        rgb = batch["rgb"]
        if cfg.app_target != "memory":
            raise ValueError(f"stage 3 trains nothing with model.app_target={cfg.app_target!r} (S_app reads "
                             "an appearance memory written in stage 4); use app_target='memory' for eq. (6)")
        with torch.no_grad():                                              # RGB encoder + memory frozen
            _, f_b, _ = self._behavior_memory(self.rgb_encoder(rgb))
        f_u = self._f_u(f_b)
        if cfg.app_target_stopgrad:
            f_u = f_u.detach()
        m1, m2 = complementary_masks(rgb.shape[0], cfg.grid[1:], cfg.mask_ratio)   # one pair per clip
        l1 = cosine_dissimilarity(f_u, self._f_m(rgb, self._visible(m1, rgb.device))).mean()
        l2 = cosine_dissimilarity(f_u, self._f_m(rgb, self._visible(m2, rgb.device))).mean()
        l_app = 0.5 * (l1 + l2)                                            # eq. (6), both masks
        return {"loss": cfg.alpha * l_app, "app": l_app.detach()}          # eq. (12), stage-3 term

    # ------------------------------------------------------------------ stage 4
    CUBES_PER_CLIP = 32      # cube statistics kept per training clip for the appearance memory

    @torch.no_grad()
    def bsmm_write(self, batch: Mapping) -> Dict[str, float]:
        """Stage 4, once per training batch; then bsmm_finish() once.

        bsmm_behavior="tokens": one update of the Behavior-Scene Matching Memory (eq. 9).
        "pose": keeps the batch's poses and W_s; bsmm_finish() (or the next scores()) fits the pose
        memory on all of them and writes the BSMM with all queries (BehaviorSceneMatching.fit).
        app_target="cubes": also keeps the colour statistics of CUBES_PER_CLIP random cubes of
        each clip, for the appearance memory. Kept on the batch's device until bsmm_finish: about
        2.3 KB per clip for the poses (T=16) and 0.8 KB for the cubes, ~1 GB for 330k clips.
        """
        cfg = self.cfg
        keys = ((("pose",) if cfg.bsmm_behavior == "pose" or cfg.n_seg else ()) + ("rgb", "scene")
                + (("fg",) if cfg.app_target == "foreground" else ()))
        self._check_batch(batch, keys)
        sep_r = None
        frames = w_s = cubes = segs = tracks = views = scenes = fgs = None
        with self._backend(), _range("mgnet.bsmm_write"):
            if cfg.bsmm_behavior == "pose":
                pose = self._pose(batch)
                w_s, _, _ = self.mem_s(self.scene(batch["scene"]).to(pose.dtype))
                frames = PoseMemory.frames(pose)
            else:
                w_b, _, _ = self._behavior_memory(self.rgb_encoder(batch["rgb"]))
                w_s, _, _ = self.mem_s(self.scene(batch["scene"]).to(w_b.dtype))
                before = self.bsmm.num_filled
                sep_r = self.bsmm.write(self.bsmm.queries(w_b, w_s))       # eqs. (8)-(9)
                if sep_r is not None:      # mean over the queries that updated slots (not seeded them)
                    n = w_b.shape[0] - (self.bsmm.num_filled - before)
                    self._sep_r[0] += sep_r * n
                    self._sep_r[1] += n
                w_s = None
            if cfg.app_target == "cubes":
                d = self.app_mem.descriptors(batch["rgb"])                   # (B, P, 6)
                B, P, _ = d.shape
                k = min(self.CUBES_PER_CLIP, P)
                pick = torch.rand(B, P, generator=self._pending_gen).argsort(1)[:, :k].to(d.device)
                cubes = d.gather(1, pick.unsqueeze(-1).expand(-1, -1, d.shape[-1])).reshape(-1, d.shape[-1])
            tracks = self._tracks(batch, batch["rgb"].shape[0])
            if cfg.app_target == "cubes":
                cubes = (cubes, (tracks >> 32).repeat_interleave(k))   # each cube row's training video
            if cfg.n_seg:
                segs = SegmentMemory.features(self._pose(batch)).float()
            if cfg.app_target == "foreground":
                fgs = self._fg_maps(batch)
            if segs is not None or fgs is not None:
                views = view_descriptor(batch["scene"])
                scenes = self._scene_codes(batch, tracks.shape[0])
        if frames is not None or cubes is not None or segs is not None or fgs is not None:
            self._pending.append((frames, w_s, cubes, segs, tracks, views, scenes, fgs))
        return {"sep_r": float("nan") if sep_r is None else sep_r, "filled": float(self.bsmm.num_filled),
                "pending": float(len(self._pending))}

    @torch.no_grad()
    def bsmm_finish(self) -> Dict[str, float]:
        """End of stage 4: fit the appearance memory on the kept cube statistics; in pose mode fit
        the pose memory on every kept frame, then write the BSMM with every clip's
        W_r = [W_b, W_s] (eq. 8). A no-op when nothing is pending."""
        pending, self._pending = self._pending, []
        (total, n), self._sep_r = self._sep_r, [0.0, 0]
        sep_r = total / n if n else float("nan")      # tokens mode: the writes' L_sep^r (eq. 11)
        if not pending:
            return {"sep_r": sep_r, "filled": float(self.bsmm.num_filled)}
        with self._backend(), _range("mgnet.bsmm_finish"):
            if self.cfg.app_target == "cubes":
                self.app_mem.fit(torch.cat([p[2][0] for p in pending]), groups=torch.cat([p[2][1] for p in pending]))
            knn = [(m, i) for m, i in ((getattr(self, "seg_mem", None), 3), (getattr(self, "fg_mem", None), 7))
                   if m is not None]
            if knn:   # the pose-segment and foreground memories: descriptors, tracks, scenes and views
                tracks, scenes = torch.cat([p[4] for p in pending]), torch.cat([p[6] for p in pending])
                views = torch.cat([p[5] for p in pending])
                for mem, i in knn:
                    mem.fit(torch.cat([p[i] for p in pending]), tracks, scene=scenes)
                    mem.fit_views(views, tracks >> 32, scenes)
            if self.cfg.bsmm_behavior == "pose":
                frames = torch.cat([p[0] for p in pending])
                w_s = torch.cat([p[1] for p in pending])
                self.pose_mem.fit(frames)
                w_b = torch.cat([self.pose_mem.weights(frames[i:i + 4096]) for i in range(0, frames.shape[0], 4096)])
                sep_r = self.bsmm.fit(self.bsmm.queries(w_b, w_s))          # eqs. (8)-(9)
        return {"sep_r": sep_r, "filled": float(self.bsmm.num_filled)}

    @staticmethod
    def _tracks(batch: Mapping, n: int) -> torch.Tensor:
        """(n,) track ids (video << 32 | person) of a batch's clips; -1 where the batch does not say."""
        dev = batch["rgb"].device
        if "video" in batch and "person" in batch:
            return SegmentMemory.track_ids(batch["video"], batch["person"]).to(dev)
        return torch.full((n,), -1, dtype=torch.long, device=dev)

    @staticmethod
    def _fg_maps(batch: Mapping) -> torch.Tensor:
        """(B, GRID^2) a clip's foreground occupancy map: the mean over its T frames, in [0, 1]."""
        return batch["fg"].float().mean(1).flatten(1) / 255.0

    @staticmethod
    def _scene_codes(batch: Mapping, n: int) -> torch.Tensor:
        """(n,) scene codes of a batch's clips (ClipStore's ``scene_id``: its video's scene); 0 where
        the batch does not say (every clip then counts as one scene)."""
        dev = batch["rgb"].device
        if "scene_id" in batch:
            return batch["scene_id"].long().to(dev)
        return torch.zeros(n, dtype=torch.long, device=dev)

    @contextlib.contextmanager
    def leave_own_track_out(self):
        """While scoring the TRAINING set (for score_stats.json): S_pose skips the memory's
        segments of the clip's own track (otherwise each training clip finds itself at distance
        0) and S_app uses the appearance memory fitted without the clip's video's parity; so the
        statistics describe new normal clips, which is what fusion normalises against."""
        mems = [m for m in (getattr(self, "seg_mem", None), getattr(self, "app_mem", None),
                            getattr(self, "fg_mem", None)) if m is not None]
        old = [m.exclude_own_track for m in mems]
        for m in mems:
            m.exclude_own_track = True
        try:
            yield self
        finally:
            for m, o in zip(mems, old):
                m.exclude_own_track = o

    # ------------------------------------------------------------------ scores
    @torch.inference_mode()
    def scores(self, batch: Mapping, components=None) -> Dict[str, torch.Tensor]:
        """Per-clip raw scores, each (B,), higher = more anomalous: "mo" (eq. 13), "app" (eq. 14),
        "mm" (eq. 15; zeros with a warning while the BSMM is empty), "nll" (STG-NF alone) and, with
        ``model.n_seg`` > 0, "pose" (distance to the nearest normal pose segments, SegmentMemory).

        components: the names to compute (None: all). The others are NaN and their parts of the
        model do not run: S_pose and S_app (foreground) need no RGB ViT, STG-NF or BSMM. "nll" comes
        with "mo" (both from STG-NF). A computed component equals the one of a full call."""
        want = self._wanted(components)
        self._check_batch(batch, ("rgb", "pose", "scene"))
        rgb = batch["rgb"]
        B = rgb.shape[0]
        with self._backend(), _range("mgnet.scores"):
            nan = torch.full((B,), math.nan, device=rgb.device)
            s_mo = s_app = s_mm = nll = nan
            e_b = None
            # the clips' view descriptors, once for S_app (foreground) and S_pose
            fg_view = "app" in want and self.cfg.app_target == "foreground" and self.fg_mem.by_scene
            seg_view = "pose" in want and bool(self.cfg.n_seg) and self.seg_mem.by_scene
            view = view_descriptor(batch["scene"]) if fg_view or seg_view else None
            if want & {"mo", "nll"}:
                f_sk, nll = self._f_sk(self._pose(batch))
            if "mo" in want or ("mm" in want and self.cfg.bsmm_behavior != "pose") or (
                    "app" in want and self.cfg.app_target == "memory"):
                e_b = self.rgb_encoder(rgb)
            if "mo" in want:
                f_rgb = self.head_b(e_b)
                s_mo = (f_sk.float() - f_rgb.float()).flatten(1).norm(dim=1)   # eq. (13)

            if self._pending:
                self.bsmm_finish()
            w_b = None
            if "app" not in want:
                pass
            elif self.cfg.app_target == "cubes":
                video = (self._tracks(batch, B) >> 32) if self.app_mem.exclude_own_track else None
                s_app = self.app_mem(rgb, video) if self.app_mem.is_fitted else rgb.new_zeros(B, dtype=torch.float)
            elif self.cfg.app_target == "foreground":
                self._check_batch(batch, ("fg",))
                fm = self.fg_mem
                s_app = (fm(self._fg_maps(batch), self._tracks(batch, B) if fm.exclude_own_track else None,
                            view if fm.by_scene else None)
                         if fm.is_fitted else rgb.new_zeros(B, dtype=torch.float))
            else:
                v1, v2 = self.score_visible1.repeat(B, 1), self.score_visible2.repeat(B, 1)   # copies: see __init__
                w_b, f_b, _ = self._behavior_memory(e_b)
                f_u = self._f_u(f_b)
                s_app = (0.5 * cosine_dissimilarity(f_u, self._f_m(rgb, v1))
                         + 0.5 * cosine_dissimilarity(f_u, self._f_m(rgb, v2)))   # eq. (14)
            if "mm" in want:
                s_mm = self._s_mm(batch, e_b, w_b, B)
        out = {"mo": s_mo.float(), "app": s_app.float(), "mm": s_mm.float(), "nll": nll.float()}
        if self.cfg.n_seg:
            seg = self.seg_mem
            out["pose"] = ((seg(self._pose(batch), self._tracks(batch, B) if seg.exclude_own_track else None,
                                view if seg.by_scene else None).float()
                            if seg.is_fitted else rgb.new_zeros(B, dtype=torch.float)) if "pose" in want else nan)
        return out

    def _wanted(self, components) -> frozenset:
        """The component names scores() computes: all (None), or the given ones ("mo" adds "nll")."""
        names = ("mo", "app", "mm", "nll") + (("pose",) if self.cfg.n_seg else ())
        if components is None:
            return frozenset(names)
        want = frozenset(components) if not isinstance(components, str) else frozenset([components])
        bad = sorted(want - set(names))
        if bad:
            raise ValueError(f"MGNet.scores: components must be among {names}, got {bad}")
        return want | ({"nll"} if "mo" in want else set())

    def _s_mm(self, batch, e_b, w_b, B):
        """S_mm (eq. 15) of a batch; e_b the RGB tokens (bsmm_behavior="tokens"), w_b the behavior
        weights when already read (app_target="memory")."""
        if self.cfg.bsmm_behavior == "pose":
            w_b = self.pose_mem(self._pose(batch)) if self.pose_mem.is_fitted else None
        elif w_b is None:
            w_b, _, _ = self._behavior_memory(e_b)
        dev = batch["scene"].device.type   # e_b's dtype: the autocast one, when the ViT did not run
        dtype = e_b.dtype if e_b is not None else (
            torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.float32)
        w_s, _, _ = self.mem_s(self.scene(batch["scene"]).to(dtype))
        if self.bsmm.num_filled:
            c_b, c_s = self.bsmm.read(w_b, w_s)                        # eq. (10)
            return self.bsmm.score(c_b, c_s)                           # eq. (15)
        if not self._warned_empty_bsmm:
            warnings.warn("MGNet.scores: the Behavior-Scene Matching Memory is empty (stage 4 "
                          "not run); 'mm' scores are 0" + (" and so are 'app' scores (appearance memory)"
                          if self.cfg.app_target != "memory" else ""), RuntimeWarning, stacklevel=3)
            self._warned_empty_bsmm = True
        return batch["pose"].new_zeros(B, dtype=torch.float)

    def forward(self, batch: Mapping) -> Dict[str, torch.Tensor]:
        """Same as scores(batch)."""
        return self.scores(batch)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _check_stage(stage) -> None:
    if stage not in STAGE_MODULES:
        raise ValueError(f"stage must be 0, 1, 2, 3 or 4, got {stage!r}")


__all__ = ["MGNet", "STAGE_MODULES", "count_parameters", "cosine_dissimilarity"]
