"""Online scoring speed: mgnet.inference.OnlineScorer.push frame by frame, the small model (random
weights, memories written from one synthetic batch), 320x240 frames, 1 / 5 / 20 tracked people, eager
(fused ops) and compiled (mgnet.engine.compile_model, once), under two fusions: "default", the small
config's weights (S_pose and S_app: the scorer's default components="fused" runs neither the RGB
ViT, STG-NF nor the BSMM), and "eq16", every component at weight 1 (the whole model runs; the only
fusion of this bench before the components switch). Reports frames/s and the per-frame latency
p50 / p99 of push() after the first full windows (the warm-up, which includes the compile, is not
timed). Target (issue #18): >= 25 frames/s with 5 people, p99 < 200 ms. Appends one JSON line per case
to $MGNET_BENCH_OUT/online.jsonl (default bench/results/) with the machine, load and threads.
"""
from __future__ import annotations

import json
import os
import platform

import numpy as np
import pytest
import torch

models = pytest.importorskip("mgnet.models.mgnet", reason="mgnet.models.mgnet (the model) is not importable")
from mgnet.engine import compile_model, cpu_features  # noqa: E402
from mgnet.inference import ClipSpec, OnlineScorer  # noqa: E402
from mgnet.models.config import ModelConfig  # noqa: E402
from mgnet.models.example import example_batch  # noqa: E402
from mgnet.scoring import COMPONENTS, fusion_lambdas  # noqa: E402

W, H, TIMED = 320, 240, 40


def _model(compiled: bool):
    torch.manual_seed(0)
    cfg = ModelConfig.small()
    model = models.MGNet(cfg)
    model.set_stage(4)
    batch = example_batch(cfg, 16, seed=0)
    model.bsmm_write(batch)
    model.bsmm_finish()
    model.eval()
    if compiled:
        torch._dynamo.reset()
        compile_model(model)
    return cfg, model


def _stream(n_people: int, n_frames: int, seed: int = 0):
    """Frames (H, W, 3) uint8 and {person: (17, 3)} keypoints of people walking across the frame."""
    rng = np.random.default_rng(seed)
    base = rng.uniform([40, 60], [W - 40, H - 60], size=(n_people, 2))
    vel = rng.uniform(-1.5, 1.5, size=(n_people, 2))
    body = rng.normal(0, 12, size=(n_people, 17, 2))
    for t in range(n_frames):
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        poses = {}
        for p in range(n_people):
            xy = np.clip(base[p] + vel[p] * t + body[p] + rng.normal(0, 1, (17, 2)), 0, [W - 1, H - 1])
            poses[p] = np.concatenate([xy, np.full((17, 1), 0.9)], axis=1).astype(np.float32)
        yield t, img, poses


@pytest.mark.parametrize("fusion", ["default", "eq16"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
@pytest.mark.parametrize("people", [1, 5, 20])
def test_online_frames_per_second(people, compiled, fusion):
    cfg, model = _model(compiled)
    spec = ClipSpec(seg_len=cfg.seg_len, crop_size=cfg.crop, scene_size=cfg.scene_size)
    stats = {k: {"min": 0.0, "max": 1.0} for k in COMPONENTS + ("pose",)}
    lambdas = fusion_lambdas(cfg) if fusion == "default" else {"app": 1.0, "mm": 1.0}   # eq16: mo, pose at 1
    scorer = OnlineScorer(model, stats, lambdas, (W, H), spec)
    warm = spec.seg_len + 2            # the first windows (and the compile) before timing
    times, emitted = [], 0
    import time
    for t, img, poses in _stream(people, warm + TIMED):
        t0 = time.perf_counter()
        emitted += len(scorer.push(t, img, poses))
        if t >= warm:
            times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    res = {"people": people, "impl": "compile" if compiled else "eager", "fusion": fusion,
           "components": getattr(scorer, "components", "all"), "frames_per_s": 1e3 / ms.mean(),
           "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "frames": len(ms),
           "failed_compile": getattr(getattr(model, "scores", None), "failed", None),
           "machine": {"cpu": cpu_features(), "host": platform.node(), "threads": torch.get_num_threads(),
                       "load": os.getloadavg(), "torch": torch.__version__}}
    assert emitted > 0
    out = os.environ.get("MGNET_BENCH_OUT", os.path.join(os.path.dirname(__file__), "results"))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "online.jsonl"), "a") as f:
        f.write(json.dumps(res) + "\n")
    print(f"\nonline {people} people {res['impl']} {fusion}: {res['frames_per_s']:.1f} frames/s, "
          f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms (load {os.getloadavg()[0]:.1f})")
