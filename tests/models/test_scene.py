"""F_S: deterministic, frozen, and it separates static camera views."""
import pytest
import torch

from mgnet.models.scene import SceneCNN, SceneFeatures


def _views(n_views=4, per_view=5, S=64, seed=0):
    """Static backgrounds (random smooth layouts + texture) with a small 'person' box moving."""
    g = torch.Generator().manual_seed(seed)
    out, label = [], []
    for v in range(n_views):
        base = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(S, S),
                                               mode="bilinear", align_corners=False)
        base = base + 0.1 * torch.rand(1, 3, S, S, generator=g)
        for k in range(per_view):
            img = base.clone()
            y, x = torch.randint(0, S - 16, (2,), generator=g).tolist()
            img[:, :, y:y + 16, x:x + 8] = torch.rand(3, 1, 1, generator=g)
            out.append(img)
            label.append(v)
    imgs = (torch.cat(out).clamp(0, 1) * 255).to(torch.uint8)
    return imgs, torch.tensor(label)


def test_shape_norm_determinism_and_frozen():
    f = SceneFeatures(grid=8, conv_channels=16, seed=0)
    imgs, _ = _views(2, 2)
    e = f(imgs)
    assert e.shape == (4, f.dim) and f.dim == 3 * 64 + 6 + 64
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(SceneFeatures(seed=0)(imgs), e)
    assert not any(p.requires_grad for p in f.parameters())


def test_separates_static_views():
    f = SceneFeatures()
    imgs, lab = _views(4, 6)
    e = f(imgs)
    cos = e @ e.t()
    same = lab[:, None] == lab[None, :]
    off = ~torch.eye(len(lab), dtype=torch.bool)
    worst_same = cos[same & off].min()
    best_other = cos[~same].max()
    assert worst_same > best_other + 0.1, (float(worst_same), float(best_other))


def test_local_weights(tmp_path):
    cnn = SceneCNN(16, seed=5)
    p = tmp_path / "scene.pt"
    torch.save(cnn.state_dict(), p)
    f = SceneFeatures(weights=str(p))
    torch.testing.assert_close(f.cnn.conv1.weight, cnn.conv1.weight)
    with pytest.raises(FileNotFoundError, match="model.scene_weights"):
        SceneFeatures(weights=str(tmp_path / "missing.pt"))
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a SceneCNN state_dict"):
        SceneFeatures(weights=str(tmp_path / "bad.pt"))


def test_bad_scene_shape():
    with pytest.raises(ValueError, match=r"scene must have shape \(B, 3, S, S\)"):
        SceneFeatures()(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
