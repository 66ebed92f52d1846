"""Cube embedding + ViT, LSTA module and the heads, against the op references and by construction."""
import pytest
import torch

from mgnet.data.masking import complementary_masks, visible_indices
from mgnet.models.encoder import CubeEmbed, VideoEncoder
from mgnet.models.heads import ProjectionHead, STHead, pool_per_time
from mgnet.models.lsta import LSTA
from mgnet.ops import lsta_reference, masked_cube_embed_reference

GRID = (2, 2, 2)          # T = 4 frames of 16x16: P = 8 cubes


def _frames(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, 3, 4, 16, 16), dtype=torch.uint8, generator=g)


def test_cube_embed_matches_reference_all_and_visible():
    emb = CubeEmbed(6, GRID)
    x = _frames()
    full = emb(x)
    idx = torch.arange(8).expand(2, -1)
    ref = masked_cube_embed_reference(x, idx, emb.weight, emb.bias, emb.pos, emb.mean, emb.std)
    torch.testing.assert_close(full, ref)
    vis = torch.tensor([[5, 0, 3], [1, 2, 7]])
    torch.testing.assert_close(emb(x, vis), torch.gather(full, 1, vis.unsqueeze(-1).expand(-1, -1, 6)))


def test_vit_attention_is_joint_space_time():
    """One attention over all P = t*h*w cube tokens (joint), computed here from the layer's weights:
    divided attention (time, then space, or either alone) gives a measurably different output."""
    torch.manual_seed(0)
    enc = VideoEncoder(8, 1, 2, GRID).eval()
    with torch.no_grad():
        for p in enc.parameters():           # weights large enough that attention is far from uniform
            p.normal_(0.0, 0.5)
    attn, x = enc.blocks[0].attn, _frames(1)
    h = enc.blocks[0].norm1(enc.embed(x))                         # (1, 8, 8): 2 time steps x 2 x 2
    q, k, v = (h @ attn.qkv.weight.T + attn.qkv.bias).view(1, 8, 3, 2, 4).unbind(2)  # (B, N, heads, 4)

    def attention(allowed):
        w = torch.einsum("bnhd,bmhd->bhnm", q, k) / 2.0           # / sqrt(head dim 4)
        w = w.masked_fill(~allowed, float("-inf")).softmax(-1)
        y = torch.einsum("bhnm,bmhd->bnhd", w, v).reshape(1, 8, 8)
        return y @ attn.proj.weight.T + attn.proj.bias

    t, s = torch.arange(8) // 4, torch.arange(8) % 4              # token = (t, y, x) in t-major order
    joint = attention(torch.ones(8, 8, dtype=torch.bool))
    in_time, in_space = attention(s[:, None] == s[None]), attention(t[:, None] == t[None])
    with torch.no_grad():
        out = attn(h)
        torch.testing.assert_close(out, joint, rtol=1e-5, atol=1e-5)
        for divided in (in_time, in_space):
            assert (out - divided).abs().max() > 0.05
    # and through the whole encoder: the last time step's token sees a change of cube 0 (time 0)
    enc = VideoEncoder(8, 1, 2, GRID).eval()
    x = _frames(1)
    y0 = enc(x)
    x2 = x.clone()
    x2[:, :, :2, :8, :8] = 255 - x2[:, :, :2, :8, :8]   # change cube 0 (time step 0) only
    y1 = enc(x2)
    assert y0.shape == (1, 8, 8)
    assert (y1[0, 7] - y0[0, 7]).abs().max() > 1e-4     # the last time step's token sees it


def test_visible_only_encoder_ignores_masked_pixels():
    enc = VideoEncoder(8, 2, 2, (2, 4, 4)).eval()       # T=4 frames of 32x32: 16 cubes
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8, generator=g)
    m, _ = complementary_masks(2, (4, 4), 0.5, g)
    vis = visible_indices(m, 2)
    y = enc(x, vis)
    assert y.shape == (2, 16, 8)
    x2 = x.clone()
    mask_px = m.repeat_interleave(8, 1).repeat_interleave(8, 2)          # (B, 32, 32)
    x2.masked_fill_(mask_px[:, None, None], 0)                           # wipe every masked cube
    torch.testing.assert_close(enc(x2, vis), y)


def test_lsta_module_matches_reference_and_has_gradients():
    m = LSTA(3, 5, 2)
    e = torch.randn(2, 4, 6, 5, 5, requires_grad=True)
    out = m(e)
    torch.testing.assert_close(out, lsta_reference(e, m.w0, m.b0, m.w1, m.b1, m.wp, m.bp, 2))
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_st_head_shapes_and_pooling():
    head = STHead(8, 5, GRID, layers=0, hidden=16)
    tok = torch.randn(3, 8, 8)
    f = head(tok)
    assert f.shape == (3, 4, 5)
    torch.testing.assert_close(f[:, 0::2], f[:, 1::2])                   # 2 frames per token-time step
    ref = head.mlp(tok.view(3, 2, 4, 8).mean(2))
    torch.testing.assert_close(f[:, 0::2], ref)
    head2 = STHead(8, 5, GRID, layers=2, hidden=16, k0=3, k1=3, dilation=1)
    assert head2(tok).shape == (3, 4, 5)
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, P=8, D\)"):
        head(torch.randn(3, 7, 8))


def test_pool_per_time_with_visible():
    tok = torch.randn(2, 3, 4)
    vis = torch.tensor([[0, 5, 6], [7, 4, 1]])       # h*w = 4: time steps [0,1,1], [1,1,0]
    p = pool_per_time(tok, vis, GRID)
    torch.testing.assert_close(p[0, 0], tok[0, 0])
    torch.testing.assert_close(p[0, 1], tok[0, 1:].mean(0))
    torch.testing.assert_close(p[1, 1], tok[1, :2].mean(0))
    head = ProjectionHead(4, 3, GRID, 8)
    assert head(tok, vis).shape == (2, 4, 3)


def test_bad_rgb_shape_names_argument():
    enc = VideoEncoder(8, 1, 2, GRID)
    with pytest.raises(ValueError, match=r"rgb must have shape \(B, 3, T=4, 16, 16\)"):
        enc(torch.zeros(1, 3, 4, 16, 8, dtype=torch.uint8))


def test_lka3d_module_matches_reference():
    from mgnet.models.lsta import LKA3D
    from mgnet.ops import lka3d_reference
    m = LKA3D(3, 3, 5, 2)
    x = torch.randn(2, 3, 4, 6, 5, requires_grad=True)
    out = m(x)
    torch.testing.assert_close(out, lka3d_reference(x, m.w0, m.b0, m.w1, m.b1, m.wp, m.bp, 2))
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())
