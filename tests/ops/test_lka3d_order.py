"""The order switch of eq. (2)'s two depthwise convolutions (model.lsta_order)."""
import pytest
import torch
import torch.nn.functional as F

import mgnet.ops as ops
from mgnet.models import MGNet, ModelConfig
from mgnet.models.lsta import LSTA


def _weights(C, k0=3, k1=3, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)    # noqa: E731
    z = (lambda *s: r(*s)) if bias else (lambda *s: torch.zeros(*s, dtype=torch.float64))
    return [r(C, 1, k0, k0, k0), z(C), r(C, 1, k1, k1, k1), z(C), r(C, C, 1, 1, 1), z(C)]


def test_dilated_first_is_the_swapped_composition():
    x = torch.randn(2, 3, 6, 7, 8, dtype=torch.float64)
    w0, b0, w1, b1, wp, bp = _weights(3)
    got = ops.lka3d(x, w0, b0, w1, b1, wp, bp, dilation=2, order="dilated_first")
    a = F.conv3d(x, w1, b1, padding=2, dilation=2, groups=3)         # the dilated 3^3 first (padding d (k1-1)/2)
    a = F.conv3d(a, w0, b0, padding=1, groups=3)                      # then the dense 3^3
    torch.testing.assert_close(got, F.conv3d(a, wp, bp))
    dense_first = ops.lka3d(x, w0, b0, w1, b1, wp, bp, dilation=2)
    assert not torch.allclose(got, dense_first)


def test_orders_agree_away_from_the_borders_without_biases():
    # depthwise convolutions commute on an unbounded volume: with zero biases the two orders differ
    # only where the zero padding reaches (receptive field k0 + d (k1 - 1) = 3 + 2*2 = 7: 3 cells)
    x = torch.randn(1, 2, 14, 14, 14, dtype=torch.float64)
    w = _weights(2, bias=False)
    a = ops.lka3d(x, *w, dilation=2, order="dilated_first")
    b = ops.lka3d(x, *w, dilation=2, order="dense_first")
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    torch.testing.assert_close(a[inner], b[inner])
    assert not torch.allclose(a, b)


def test_dilated_first_gradients_and_the_lsta_module():
    e = torch.randn(1, 4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    w = [t.requires_grad_() for t in _weights(1)]
    assert torch.autograd.gradcheck(lambda e, *w: ops.lsta(e, *w, dilation=2, order="dilated_first"), (e, *w))
    m = LSTA(3, 3, 2, order="dilated_first").double()
    f = e.detach().mean(2).unsqueeze(1)
    fo = F.conv3d(F.conv3d(F.conv3d(f, m.w1, m.b1, padding=2, dilation=2), m.w0, m.b0, padding=1), m.wp, m.bp)
    want = e.detach() + e.detach() * torch.sigmoid(fo[:, 0]).unsqueeze(2)
    torch.testing.assert_close(m(e.detach()), want)


def test_fused_backends_refuse_the_other_order_naming_the_option():
    x = torch.randn(1, 1, 4, 4, 4)
    w = [t.float() for t in _weights(1)]
    with ops.backend("cpu"), pytest.raises(ValueError, match="model.lsta_order"):
        ops.lka3d(x, *w, dilation=1, order="dilated_first")
    with pytest.raises(ValueError, match="model.lsta_order"):
        ops.lka3d(x, *w, dilation=1, order="sideways")
    with pytest.raises(ValueError, match="model.lsta_order"):
        ModelConfig.small(lsta_order="dilated_first", ops_backend="triton")
    cfg = ModelConfig.small(seg_len=4, crop=16, embed_dim=16, depth=1, heads=2, lsta_k0=3, lsta_k1=3,
                            lsta_dilation=1, lsta_order="dilated_first")
    assert MGNet(cfg).head_b.lsta[0].order == "dilated_first"
