"""The pretrained-backbone switch: a ViT in timm's layout from a local file, its errors, its features."""
import pytest
import torch
import torch.nn.functional as F

from mgnet import cli
from mgnet.models import MGNet, ModelConfig
from mgnet.models.backbone import ViTBackbone, parse_name

TINY = dict(seg_len=4, crop=16, scene_size=16, embed_dim=16, depth=1, heads=2, head_hidden=16, c_app=8,
            n_r=4, flow_steps=2, flow_hidden=4, scene_grid=2, scene_conv_channels=2,
            lsta_k0=3, lsta_k1=3, lsta_dilation=1, n_p=3, n_a=5)
GRID = (2, 2, 2)                       # TINY's cube grid: T=4 frames, 16x16 crops


def _timm_state(dim=192, depth=2, patch=8, grid=14, seed=0):
    """Random weights under timm's VisionTransformer key names (as torch.save(vit.state_dict()) writes
    them, with a classifier head and a 224-pixel position embedding)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.02    # noqa: E731
    sd = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 1 + grid * grid, dim),
          "patch_embed.proj.weight": r(dim, 3, patch, patch), "patch_embed.proj.bias": r(dim),
          "norm.weight": 1 + r(dim), "norm.bias": r(dim), "head.weight": r(1000, dim), "head.bias": r(1000)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(dim), p + "norm1.bias": r(dim),
                   p + "attn.qkv.weight": r(3 * dim, dim), p + "attn.qkv.bias": r(3 * dim),
                   p + "attn.proj.weight": r(dim, dim), p + "attn.proj.bias": r(dim),
                   p + "norm2.weight": 1 + r(dim), p + "norm2.bias": r(dim),
                   p + "mlp.fc1.weight": r(4 * dim, dim), p + "mlp.fc1.bias": r(4 * dim),
                   p + "mlp.fc2.weight": r(dim, 4 * dim), p + "mlp.fc2.bias": r(dim)})
    return sd


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "vit_tiny_patch8.pt"
    torch.save({"model": _timm_state()}, path)              # wrapped, as many training scripts save
    return path


def test_names():
    assert parse_name("vit_small_patch8") == (384, 12, 6, 8)
    assert parse_name("vit_base_patch16_224") == (768, 12, 12, 16)
    with pytest.raises(ValueError, match="model.rgb_backbone='resnet50'"):
        parse_name("resnet50")


def test_features_at_the_cube_grid_match_a_plain_vit(weights):
    bb = ViTBackbone("vit_tiny_patch8", GRID, layers=2)
    bb.load_weights(weights)
    sd = _timm_state()
    g = torch.Generator().manual_seed(1)
    rgb = torch.randint(0, 256, (2, 3, 4, 16, 16), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        got = bb(rgb)
    assert got.shape == (2, 2 * 2 * 2, 192)
    # the same ViT written out with torch.nn.functional, position embedding resized 14x14 -> 2x2
    pos = sd["pos_embed"]
    grid = F.interpolate(pos[:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2), size=(2, 2), mode="bicubic",
                         align_corners=False).permute(0, 2, 3, 1).reshape(1, 4, 192)
    pos = torch.cat([pos[:, :1], grid], 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    frames = rgb.permute(0, 2, 1, 3, 4).reshape(8, 3, 16, 16).float() / 255
    x = F.conv2d((frames - mean) / std, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=8)
    x = torch.cat([sd["cls_token"].expand(8, -1, -1), x.flatten(2).transpose(1, 2)], 1) + pos
    for i in range(2):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (192,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        q, k, v = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).view(8, 5, 3, 3, 64).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / 8.0, -1) @ v
        x = x + F.linear(a.transpose(1, 2).reshape(8, 5, 192), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (192,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + h
    x = F.layer_norm(x, (192,), sd["norm.weight"], sd["norm.bias"], 1e-6)[:, 1:]    # (8 frames, 4 patches, D)
    want = x.view(2, 2, 2, 4, 192).mean(2).reshape(2, 8, 192)                       # mean over each frame pair
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_mgnet_reads_the_backbone_frozen(weights):
    cfg = ModelConfig.small(**TINY, rgb_backbone="vit_tiny_patch8", rgb_weights=str(weights), rgb_backbone_layers=1)
    model = MGNet(cfg)
    assert len(model.app_encoder.blocks) == 1
    torch.testing.assert_close(model.app_encoder.patch_embed.proj.weight, _timm_state()["patch_embed.proj.weight"])
    g = torch.Generator().manual_seed(0)
    batch = {"rgb": torch.randint(0, 256, (2, 3, 4, 16, 16), dtype=torch.uint8, generator=g),
             "pose": torch.randn(2, 2, 4, 18, generator=g),
             "scene": torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=g)}
    model.set_stage(2)
    model.losses(batch, 2)["loss"].backward()
    assert not model.app_encoder.training and all(p.grad is None for p in model.app_encoder.parameters())
    assert model.rgb_encoder.embed.proj.weight.shape == (16, 192)


def test_backbone_errors(weights, tmp_path):
    with pytest.raises(ValueError, match="model.rgb_weights.*nothing is downloaded"):
        ModelConfig.small(**TINY, rgb_backbone="vit_tiny_patch8")
    with pytest.raises(ValueError, match="model.rgb_weights=.*no such file"):
        ModelConfig.small(**TINY, rgb_backbone="vit_tiny_patch8", rgb_weights=str(tmp_path / "none.pt"))
    with pytest.raises(ValueError, match="does not fit model.rgb_backbone=vit_small_patch8: .*shape mismatch"):
        MGNet(ModelConfig.small(**TINY, rgb_backbone="vit_small_patch8", rgb_weights=str(weights), rgb_backbone_layers=2))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch state_dict"):
        MGNet(ModelConfig.small(**TINY, rgb_backbone="vit_tiny_patch8", rgb_weights=str(bad)))
    with pytest.raises(ValueError, match="model.rgb_pretrain"):
        ModelConfig.small(**TINY, rgb_pretrain="mae", rgb_backbone="vit_tiny_patch8", rgb_weights=str(weights))
    with pytest.raises(ValueError, match="model.rgb_backbone_layers=13"):
        MGNet(ModelConfig.small(**TINY, rgb_backbone="vit_tiny_patch8", rgb_weights=str(weights), rgb_backbone_layers=13))


def test_cli_without_weights_exits_2_naming_the_option(tmp_path, capsys):
    rc = cli.main(["train", "experiment=tiny", f"data.root={tmp_path}/d", f"train.out={tmp_path}/r",
                   "model.rgb_backbone=vit_small_patch8"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.rgb_weights" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()     # nothing written
