"""Stage 0 (masked cube reconstruction) and the pre-extracted embedding of the RGB encoder."""
import pytest
import torch

from mgnet.models import MGNet, ModelConfig
from mgnet.models.pretrain import MaskedCubeDecoder, cube_targets, mae_loss, tube_mask

TINY = dict(seg_len=4, crop=16, scene_size=16, embed_dim=16, depth=1, heads=2, head_hidden=16, c_app=8,
            n_r=4, flow_steps=2, flow_hidden=4, scene_grid=2, scene_conv_channels=2,
            lsta_k0=3, lsta_k1=3, lsta_dilation=1, n_p=3, n_a=5, pretrain_decoder_dim=16)


def _rgb(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, 3, 4, 16, 16), dtype=torch.uint8, generator=g)


def test_cube_targets_by_loops():
    rgb = _rgb(2)
    got = cube_targets(rgb)                                        # (2, 2*2*2, 384)
    assert got.shape == (2, 8, 384)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
    for b in range(2):
        p = 0
        for ti in range(2):
            for hi in range(2):
                for wi in range(2):                                # cube index p = (ti*h + hi)*w + wi
                    cube = rgb[b, :, 2 * ti:2 * ti + 2, 8 * hi:8 * hi + 8, 8 * wi:8 * wi + 8].float() / 255
                    v = ((cube - mean) / std).reshape(-1)           # channel, time, row, column
                    v = (v - v.mean()) / (v.var() + 1e-6).sqrt()
                    torch.testing.assert_close(got[b, p], v, rtol=1e-4, atol=1e-4)
                    p += 1


def test_tube_mask_counts():
    torch.manual_seed(0)
    m = tube_mask(5, (2, 4, 4), 0.75)
    assert m.shape == (5, 16) and m.dtype == torch.bool
    assert (m.sum(1) == 12).all()
    assert len({tuple(r.tolist()) for r in m}) > 1                 # one random mask per clip


def test_mae_loss_counts_only_hidden_cubes():
    torch.manual_seed(0)
    cfg = ModelConfig.small(**TINY, rgb_pretrain="mae")
    model = MGNet(cfg)
    rgb = _rgb()
    seen = {}

    class Spy(MaskedCubeDecoder):
        def forward(self, tokens, visible):
            seen["visible"] = visible
            out = super().forward(tokens, visible)
            seen["out"] = out
            return out

    dec = Spy(16, 16, 1, 2, cfg.num_tokens)
    torch.manual_seed(1)
    loss = mae_loss(model.app_encoder, dec, rgb, cfg.grid, 0.75)
    vis = seen["visible"]
    t, h, w = cfg.grid
    assert vis.shape == (3, t * 1)                                 # one visible cell of 4 per slice, on every slice
    hidden = torch.ones(3, cfg.num_tokens, dtype=torch.bool)
    hidden.scatter_(1, vis, False)
    err = (seen["out"] - cube_targets(rgb)).pow(2).mean(-1)
    torch.testing.assert_close(loss, err[hidden].mean())


def test_stage0_trains_the_appearance_encoder_and_stage2_keeps_it_frozen():
    torch.manual_seed(0)
    cfg = ModelConfig.small(**TINY, rgb_pretrain="mae")
    model = MGNet(cfg)
    rgb = _rgb(4)
    model.set_stage(0)
    assert set(n for n, c in model.named_children() if c.training) == {"app_encoder", "mae_decoder"}
    opt = torch.optim.AdamW(model.stage_parameters(0), lr=3e-3)
    losses = []
    for _ in range(30):
        out = model.losses({"rgb": rgb}, 0)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["mae"]))
    assert losses[-1] < 0.8 * losses[0]                             # it learns the clips
    before = {k: v.clone() for k, v in model.app_encoder.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    batch = {"rgb": rgb, "pose": torch.randn(4, 2, 4, 18, generator=g),
             "scene": torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g)}
    model.set_stage(2)
    model.zero_grad(set_to_none=True)
    model.losses(batch, 2)["loss"].backward()
    assert all(p.grad is None for p in model.app_encoder.parameters())
    assert model.rgb_encoder.embed.proj.weight.grad is not None     # the map from the features is trained
    assert all(torch.equal(before[k], v) for k, v in model.app_encoder.state_dict().items())
    # the RGB encoder reads the appearance encoder: other features, other tokens
    e1 = model.rgb_encoder(rgb)
    with torch.no_grad():
        for p in model.app_encoder.parameters():
            p.mul_(0.5)
    assert not torch.allclose(e1, model.rgb_encoder(rgb))
    assert not any(k.startswith("rgb_encoder.embed.") and "app_encoder" in k for k in model.state_dict())


def test_stage0_config_errors():
    with pytest.raises(ValueError, match="model.rgb_pretrain"):
        ModelConfig.small(rgb_pretrain="beit")
    with pytest.raises(ValueError, match="model.pretrain_mask_ratio"):
        ModelConfig.small(**TINY, rgb_pretrain="mae", pretrain_mask_ratio=0.3)   # 0.3 * 4 cells: not whole
    model = MGNet(ModelConfig.small(**TINY))
    assert model.stage_modules(0) == ()
    with pytest.raises(ValueError, match="model.rgb_pretrain=mae"):
        model.losses({"rgb": _rgb()}, 0)
