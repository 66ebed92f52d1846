"""MGNet assembly: stage switches, losses, scores (eqs. 13-15), BSMM write, checkpoints, shapes."""
import io

import pytest
import torch

from mgnet.models import STAGE_MODULES, MGNet, ModelConfig, count_parameters
from mgnet.models.mgnet import cosine_dissimilarity
from mgnet.models.stgnf import STGNF

TINY = dict(seg_len=4, crop=16, scene_size=16, embed_dim=16, depth=1, heads=2, head_hidden=16, c_app=8,
            n_r=4, flow_steps=2, flow_hidden=4, scene_grid=2, scene_conv_channels=2,
            lsta_k0=3, lsta_k1=3, lsta_dilation=1, n_p=3, n_a=5)
PAPER = dict(app_target="memory", bsmm_behavior="tokens", bsmm_temperature=1.0, bsmm_normalize=False)


def _batch(cfg, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    T, c, S = cfg.seg_len, cfg.crop, cfg.scene_size
    return {"rgb": torch.randint(0, 256, (B, 3, T, c, c), dtype=torch.uint8, generator=g),
            "pose": torch.randn(B, 2, T, 18, generator=g),
            "scene": torch.randint(0, 256, (B, 3, S, S), dtype=torch.uint8, generator=g),
            "label": torch.zeros(B, dtype=torch.int64),
            "fg": torch.randint(0, 256, (B, T, 8, 8), dtype=torch.uint8, generator=g)}


@pytest.fixture
def tiny():
    """The paper's S_app and BSMM query (app_target=memory, bsmm_behavior=tokens)."""
    torch.manual_seed(0)
    cfg = ModelConfig.small(**TINY, **PAPER)
    return MGNet(cfg), cfg


@pytest.fixture
def tiny_default():
    """The cube colour appearance memory (app_target=cubes) and the pose memory (bsmm_behavior=pose)."""
    torch.manual_seed(0)
    cfg = ModelConfig.small(**TINY, app_target="cubes")
    return MGNet(cfg), cfg


def _grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_trains_only_its_networks(tiny, stage):
    model, cfg = tiny
    model.set_stage(stage)
    trained = set(STAGE_MODULES[stage])
    for name, child in model.named_children():
        assert child.training == (name in trained), name
        assert all(p.requires_grad == (name in trained) for p in child.parameters()), name
    out = model.losses(_batch(cfg), stage)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, child in model.named_children():
        gs = _grads(child)
        if name in trained:
            assert any(g is not None and g.abs().sum() > 0 for g in gs), f"{name} got no gradient"
        else:
            assert all(g is None for g in gs), f"{name} must be frozen in stage {stage}"
    ids = {id(p) for p in model.stage_parameters(stage)}
    assert ids == {id(p) for n in trained for p in getattr(model, n).parameters()}


def test_stage3_rgb_encoder_gets_no_gradient(tiny):
    model, cfg = tiny
    model.set_stage(3)
    model.losses(_batch(cfg), 3)["loss"].backward()
    assert all(p.grad is None for p in model.rgb_encoder.parameters())
    assert all(p.grad is None for p in model.mem_b.parameters())
    assert any(p.grad is not None for p in model.mask_encoder.parameters())
    assert any(p.grad is not None for p in model.head_u.parameters())


def test_default_stage3_trains_nothing(tiny_default):
    model, cfg = tiny_default
    assert model.stage_modules(3) == () and model.stage_parameters(3) == []
    assert not hasattr(model, "predictor") and model.app_mem.slots.shape == (cfg.n_a, 6)
    model.set_stage(3)
    with pytest.raises(ValueError, match="stage 3 trains nothing with model.app_target='cubes'"):
        model.losses(_batch(cfg), 3)


def test_default_scores_match_equations(tiny_default):
    """S_app from the appearance memory, S_mm from the pose memory's W_b (README "Method notes")."""
    model, cfg = tiny_default
    model.set_stage(4)
    b = _batch(cfg, B=4)
    with pytest.warns(RuntimeWarning, match="and so are 'app' scores"):
        s0 = model.scores(b)
    assert torch.equal(s0["mm"], torch.zeros(4)) and torch.equal(s0["app"], torch.zeros(4))
    w1, w2 = _batch(cfg, B=6, seed=1), _batch(cfg, B=5, seed=2)
    assert model.bsmm_write(w1)["pending"] == 1 and model.bsmm_write(w2)["pending"] == 2
    assert model.bsmm.num_filled == 0                      # written at bsmm_finish
    info = model.bsmm_finish()
    assert info["filled"] == cfg.n_r and info["sep_r"] >= 0
    assert model.pose_mem.is_fitted and model.app_mem.is_fitted and model.bsmm_finish()["filled"] == cfg.n_r
    # pose memory: k-means of the 11 clips x 4 frames around their mean pose
    frames = torch.cat([w["pose"].permute(0, 2, 1, 3).flatten(2).reshape(-1, 36) for w in (w1, w2)])
    torch.testing.assert_close(model.pose_mem.mean, frames.mean(0))
    s = model.scores(b)
    with torch.no_grad():
        # S_app: per-cube colour mean / std, distance to the nearest slot, mean of the top 10% (k = 1 of 8)
        x = (b["rgb"].float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)) \
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
        cubes = x.view(4, 3, 2, 2, 2, 8, 2, 8).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(4, 8, 3, 128)
        desc = torch.cat([cubes.mean(-1), cubes.std(-1)], -1)                        # (4, 8 cubes, 6)
        dist = torch.cdist(desc, model.app_mem.slots[None].expand(4, -1, -1)).min(-1).values
        app = dist.topk(max(1, round(0.1 * 8)), dim=1).values.mean(1)
        # S_mm: W_b = mean over frames of softmax(cos(pose - mean, slots) / 0.05), eq. (10) with /0.05
        q = torch.nn.functional.normalize(b["pose"].permute(0, 2, 1, 3).flatten(2) - model.pose_mem.mean, dim=-1)
        cos_p = q @ torch.nn.functional.normalize(model.pose_mem.slots, dim=1).T
        w_b = torch.softmax(cos_p / 0.05, -1).mean(1)
        w_s = _addressing(model.scene(b["scene"]), model.mem_s)[0]
        m = model.bsmm.slots
        nrm = torch.nn.functional.normalize
        c_b = torch.softmax(nrm(w_b, dim=1) @ nrm(m[:, :cfg.n_p], dim=1).T / 0.05, 1)
        c_s = torch.softmax(nrm(w_s, dim=1) @ nrm(m[:, cfg.n_p:], dim=1).T / 0.05, 1)
        mm_ = (nrm(c_b, dim=1) - nrm(c_s, dim=1)).norm(dim=1)                       # eq. (15), normalised
    torch.testing.assert_close(s["app"], app)
    torch.testing.assert_close(s["mm"], mm_, rtol=1e-4, atol=1e-5)
    assert s["mm"].abs().sum() > 0 and s["app"].abs().sum() > 0


def test_pending_stage4_is_finished_by_scores(tiny_default):
    model, cfg = tiny_default
    model.set_stage(4)
    b = _batch(cfg, B=5, seed=2)
    model.bsmm_write(b)
    s = model.scores(b)                                   # finishes the pending write first
    assert model.bsmm.num_filled > 0 and not model._pending
    torch.testing.assert_close(model.scores(b)["mm"], s["mm"])


def test_train_keeps_stage_modes_and_stage4(tiny):
    model, cfg = tiny
    model.set_stage(2)
    model.eval().train()
    assert model.rgb_encoder.training and not model.stgnf.training and not model.mask_encoder.training
    model.set_stage(4)
    assert model.stage_parameters(4) == [] and not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="stage 4 trains nothing"):
        model.losses(_batch(cfg), 4)
    with pytest.raises(ValueError, match="stage must be 0, 1, 2, 3 or 4"):
        model.set_stage(5)


def test_stage2_loss_terms(tiny):
    model, cfg = tiny
    model.set_stage(2)
    b = _batch(cfg)
    out = model.losses(b, 2)
    torch.testing.assert_close(out["loss"].detach(), out["mo"] + cfg.beta * (out["sep_b"] + out["sep_s"]))
    with torch.no_grad():
        f_sk = STGNF.features(model.stgnf(b["pose"])[0])
        f_rgb = model.head_b(model.rgb_encoder(b["rgb"]))
    torch.testing.assert_close(out["mo"], ((f_sk - f_rgb) ** 2).mean())             # eq. (4)


def _addressing(q, memory):
    """eq. (7) written out: w = softmax over slots of cos(q, slot) / tau, read = w @ slots."""
    slots = memory.slots.detach()
    cos = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(slots, dim=-1).T
    w = torch.softmax(cos / memory.temperature, dim=-1)
    return w, w @ slots


def test_scores_match_equations(tiny):
    model, cfg = tiny
    model.set_stage(4)
    b = _batch(cfg, B=4)
    with pytest.warns(RuntimeWarning, match="Behavior-Scene Matching Memory is empty"):
        s0 = model.scores(b)
    assert torch.equal(s0["mm"], torch.zeros(4))
    written = _batch(cfg, B=6, seed=1)
    info = model.bsmm_write(written)                              # seeds 4 slots, updates with 2
    assert info["filled"] == 4 and info["sep_r"] >= 0
    s = model.scores(b)
    assert set(s) == {"mo", "app", "mm", "nll", "pose"}
    # S_pose: distance to the nearest of the 6 written pose segments (SegmentMemory)
    near = torch.cdist(b["pose"].flatten(1), written["pose"].flatten(1)).min(1).values
    torch.testing.assert_close(s["pose"], near, rtol=1e-4, atol=1e-4)
    assert all(v.shape == (4,) and v.dtype == torch.float32 and torch.isfinite(v).all() for v in s.values())
    with torch.no_grad():
        z, nll = model.stgnf.nll(b["pose"])
        e_b = model.rgb_encoder(b["rgb"])
        mo = (STGNF.features(z) - model.head_b(e_b)).flatten(1).norm(dim=1)         # eq. (13)
        w_b, f_b = _addressing(e_b, model.mem_b)                                      # eq. (7)
        f_u = model.head_u(f_b)
        m = model.score_mask.expand(4, -1, -1)
        app = sum(0.5 * cosine_dissimilarity(f_u, model._f_m(b["rgb"], model._visible(mm, "cpu")))
                  for mm in (m, ~m))                                                   # eq. (14)
        w_s = _addressing(model.scene(b["scene"]), model.mem_s)[0]
        c_b, c_s = model.bsmm.read(w_b, w_s)
        mm_ = (c_b - c_s).norm(dim=1)                                                  # eq. (15)
    torch.testing.assert_close(s["mo"], mo)
    torch.testing.assert_close(s["app"], app)
    torch.testing.assert_close(s["mm"], mm_)
    torch.testing.assert_close(s["nll"], nll)
    assert s["mm"].abs().sum() > 0
    assert int(model.score_mask.sum()) == int(cfg.mask_ratio * cfg.grid[1] * cfg.grid[2])
    allv = torch.cat([model.score_visible1, model.score_visible2], 1).flatten().sort().values
    assert torch.equal(allv, torch.arange(cfg.num_tokens))            # the pair covers every cube once


@pytest.mark.parametrize("mode", ["paper", "default"])
def test_checkpoint_roundtrip_weights_only(tiny, tiny_default, mode):
    model, cfg = tiny if mode == "paper" else tiny_default
    model.set_stage(1)
    model.losses(_batch(cfg), 1)                    # ActNorm data init
    model.bsmm_write(_batch(cfg, B=5, seed=2))
    model.bsmm_finish()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = MGNet(cfg)
    other.load_state_dict(torch.load(buf, weights_only=True))
    b = _batch(cfg, seed=3)
    a, c = model.scores(b), other.scores(b)
    for k in a:
        torch.testing.assert_close(a[k], c[k])


def test_bad_batches_name_the_key(tiny):
    model, cfg = tiny
    b = _batch(cfg)
    with pytest.raises(KeyError, match="batch has no 'scene'"):
        model.scores({k: v for k, v in b.items() if k != "scene"})
    with pytest.raises(ValueError, match=r"batch\['rgb'\] must have shape \(B, 3, T=4, 16, 16\)"):
        model.scores({**b, "rgb": b["rgb"][:, :, :2]})
    with pytest.raises(TypeError, match=r"batch\['pose'\] must be floating point"):
        model.scores({**b, "pose": b["pose"].long()})
    with pytest.raises(ValueError, match="batch size"):
        model.scores({**b, "scene": b["scene"][:1]})


def test_config_errors_and_dict():
    with pytest.raises(ValueError, match="unknown model config key"):
        ModelConfig.from_dict({"embed_dimm": 3})
    with pytest.raises(ValueError, match="model.c_mo"):
        ModelConfig(c_mo=30)
    cfg = ModelConfig.from_dict({"preset": "vits", "n_r": 7})
    assert cfg.embed_dim == 384 and cfg.n_r == 7 and cfg.grid == (8, 8, 8)
    assert MGNet({"preset": "small", **TINY}).cfg.embed_dim == 16


@pytest.mark.filterwarnings("ignore:MGNet.scores")
def test_ops_backend_from_config_is_scoped():
    import mgnet.ops as ops
    cfg = ModelConfig.small(**{**TINY, "ops_backend": "eager"})
    model = MGNet(cfg)
    seen = []
    orig = ops.masked_cube_embed

    def spy(*a, **k):
        seen.append(ops.requested())
        return orig(*a, **k)
    import mgnet.models.encoder as enc
    enc.ops.masked_cube_embed = spy
    try:
        model.scores(_batch(cfg))
    finally:
        enc.ops.masked_cube_embed = orig
    assert seen and set(seen) == {"eager"}


def test_small_config_forward_backward_real_shapes():
    torch.manual_seed(0)
    cfg = ModelConfig.small()
    model = MGNet(cfg)
    b = _batch(cfg, B=2)
    assert b["rgb"].shape == (2, 3, 16, 64, 64)
    for stage in (1, 2):
        model.set_stage(stage)
        out = model.losses(b)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
    model.set_stage(4)
    model.bsmm_write(b)
    s = model.scores(b)
    assert all(v.shape == (2,) for v in s.values())
    assert model.bsmm.slots.shape == (cfg.n_r, cfg.n_p + cfg.n_s)
    paper = MGNet(ModelConfig.small(**PAPER))
    assert paper.bsmm.slots.shape == (cfg.n_r, 512 * cfg.n_b + cfg.n_s)


def test_vits_config_shapes():
    torch.manual_seed(0)
    full = MGNet(ModelConfig.vits())
    assert 40e6 < count_parameters(full) < 50e6           # two ViT-S encoders (~21.6M each) + heads
    assert count_parameters(full.rgb_encoder) == count_parameters(full.mask_encoder)
    del full
    cfg = ModelConfig.vits(depth=1)                       # ViT-S widths; depth does not change shapes
    model = MGNet(cfg)
    b = _batch(cfg, B=1)
    with torch.no_grad():
        e_b = model.rgb_encoder(b["rgb"])
        assert e_b.shape == (1, 512, 384)
        assert model.head_b(e_b).shape == (1, 16, 36)
        assert model.head_u(model._behavior_memory(e_b)[1]).shape == (1, 16, 128)
        vis = model._visible(model.score_mask[None], "cpu")
        assert vis.shape == (1, 256)
        assert model._f_m(b["rgb"], vis).shape == (1, 16, 128)


def test_losses_and_scores_under_bf16_autocast(tiny):
    model, cfg = tiny
    b = _batch(cfg)
    for stage in (1, 2, 3):
        model.set_stage(stage)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.losses(b, stage)
        assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
        out["loss"].backward()
    model.set_stage(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.bsmm_write(b)
        s = model.scores(b)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in s.values())
    ref = model.scores(b)
    torch.testing.assert_close(s["nll"], ref["nll"])           # STG-NF stays in float32
    torch.testing.assert_close(s["mo"], ref["mo"], rtol=0.05, atol=0.05)


def test_foreground_s_app_is_the_nearest_normal_occupancy_map():
    """app_target=foreground (the default): S_app = distance of the clip's mean 8x8 occupancy map
    (fg / 255 averaged over T) to the nearest one written in stage 4, within the clip's scene; the
    distance weighs foreground the written map has and the clip lacks by model.fg_missing_weight."""
    torch.manual_seed(0)
    cfg = ModelConfig.small(**TINY)
    assert cfg.app_target == "foreground" and cfg.seg_scene
    model = MGNet(cfg).eval()
    assert model.stage_modules(3) == ()
    model.set_stage(4)
    written = _batch(cfg, B=5, seed=1)
    written["scene_id"] = torch.tensor([3, 3, 3, 7, 7])
    written["video"], written["person"] = torch.arange(5), torch.zeros(5, dtype=torch.long)   # one view per video
    written["scene"][3:] = 255 - written["scene"][3:]      # scene 7 looks different from scene 3
    model.bsmm_write(written)
    b = _batch(cfg, B=2, seed=2)
    b["scene"] = written["scene"][[0, 4]]                  # clip 0 filmed like scene 3, clip 1 like scene 7
    with torch.no_grad():
        s = model.scores(b)
    maps = lambda x: x["fg"].double().mean(1).reshape(len(x["fg"]), -1) / 255.0   # noqa: E731
    diff = maps(b)[:, None] - maps(written)[None]           # (2, 5, 64)
    w = cfg.fg_missing_weight
    assert w == 0.25
    d = ((diff.clamp_min(0) ** 2).sum(-1) + w * (diff.clamp_max(0) ** 2).sum(-1)).sqrt()
    want = torch.stack([d[0, :3].min(), d[1, 3:].min()]).float()
    torch.testing.assert_close(s["app"], want, rtol=1e-5, atol=1e-5)
    model.set_stage(3)
    with pytest.raises(ValueError, match="stage 3 trains nothing with model.app_target='foreground'"):
        model.losses(_batch(cfg), 3)
