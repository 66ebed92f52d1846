"""The op registry: custom-op registration, backend dispatch and argument checks (eager path)."""
import warnings

import pytest
import torch

import mgnet.ops as ops
from mgnet.ops import _dispatch


def _lka_args(B=2, C=3, D=5, H=6, W=7, k0=3, k1=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return [r(B, C, D, H, W), r(C, 1, k0, k0, k0), r(C), r(C, 1, k1, k1, k1), r(C), r(C, C, 1, 1, 1), r(C)]


def _lsta_args(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return [r(2, 4, 6, 5, 5), r(1, 1, 3, 3, 3), r(1), r(1, 1, 5, 5, 5), r(1), r(1, 1, 1, 1, 1), r(1)]


OPCHECK_CASES = {
    "lka3d": lambda: (torch.ops.mgnet.lka3d.default, (*_lka_args(), 2, "eager")),
    "lsta": lambda: (torch.ops.mgnet.lsta.default, (*_lsta_args(), 2, "eager")),
    "memory_address": lambda: (torch.ops.mgnet.memory_address.default,
                               (torch.randn(9, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64), "eager")),
    "masked_cube_embed": lambda: (torch.ops.mgnet.masked_cube_embed.default,
                                  (torch.randint(0, 256, (2, 3, 4, 16, 16), dtype=torch.uint8),
                                   torch.tensor([[0, 5, 2], [7, 1, 3]]), torch.randn(5, 3, 2, 8, 8, dtype=torch.float64),
                                   torch.randn(5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64),
                                   torch.rand(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5, "eager")),
}


@pytest.mark.parametrize("name", sorted(OPCHECK_CASES))
def test_opcheck_eager(name):
    op, args = OPCHECK_CASES[name]()
    args = [a.requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point()
            and not (name == "masked_cube_embed" and i >= 5) else a for i, a in enumerate(args)]
    torch.library.opcheck(op, args)


def test_public_functions_match_reference_with_gradients():
    args = [a.requires_grad_(True) for a in _lka_args()]
    y = ops.lka3d(*args, dilation=2)
    ref = ops.lka3d_reference(*args, dilation=2)
    torch.testing.assert_close(y, ref)
    g1 = torch.autograd.grad(y.square().sum(), args)
    g2 = torch.autograd.grad(ref.square().sum(), args)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_backend_context_and_env(monkeypatch):
    monkeypatch.delenv("MGNET_BACKEND", raising=False)
    assert _dispatch.requested() == "auto"
    with ops.backend("eager"):
        assert _dispatch.requested() == "eager"
        assert ops.resolve("lka3d", torch.device("cpu")) == "eager"
        with ops.backend("triton"):
            assert _dispatch.requested() == "triton"
        assert _dispatch.requested() == "eager"
    monkeypatch.setenv("MGNET_BACKEND", "eager")
    assert _dispatch.requested() == "eager"
    monkeypatch.setenv("MGNET_BACKEND", "gpu-please")
    with pytest.raises(ValueError, match="MGNET_BACKEND"):
        _dispatch.requested()
    with pytest.raises(ValueError, match="backend"):
        with ops.backend("nope"):
            pass


def test_unavailable_backend_warns_once_and_falls_back(monkeypatch):
    monkeypatch.delenv("MGNET_BACKEND", raising=False)
    monkeypatch.setattr(_dispatch, "_warned", set())
    with ops.backend("cuda"):  # no CUDA tensors here: never runnable on CPU tensors
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            for _ in range(3):
                be = ops.resolve("memory_address", torch.device("cpu"))
    assert be in ("cpu", "eager")
    assert len([w for w in rec if "cuda" in str(w.message)]) == 1


def test_auto_never_picks_unregistered_backend():
    dev = torch.device("cpu")
    be = ops.resolve("lka3d", dev, "auto")
    assert be in _dispatch.registered("lka3d")


@pytest.mark.parametrize("bad, match", [
    (lambda a: [a[0][0]] + a[1:], "x must have 5 dimensions"),
    (lambda a: [a[0], a[1][:2]] + a[2:], "w0 must have shape"),
    (lambda a: a[:5] + [a[5][:, :2]] + a[6:], "wp must have shape"),
    (lambda a: [a[0].float()] + a[1:], "dtype"),
])
def test_lka3d_bad_arguments_name_the_argument(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.lka3d(*bad(_lka_args()))


def test_memory_bad_arguments():
    with pytest.raises(ValueError, match="mem must have shape"):
        ops.memory_address(torch.randn(4, 5), torch.randn(3, 6))
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        ops.memory_address([1.0], torch.randn(3, 6))


def test_cube_embed_bad_indices():
    fr = torch.zeros(1, 3, 2, 16, 16, dtype=torch.uint8)
    w, b = torch.randn(4, 3, 2, 8, 8), torch.randn(4)
    with pytest.raises(ValueError, match="out of range"):
        ops.masked_cube_embed(fr, torch.tensor([[0, 4]]), w, b)
    with pytest.raises(ValueError, match="more than once"):
        ops.masked_cube_embed(fr, torch.tensor([[1, 1]]), w, b)
    with pytest.raises(ValueError, match="frames must not require grad"):
        ops.masked_cube_embed(fr.float().requires_grad_(), torch.tensor([[0, 1]]), w, b)
