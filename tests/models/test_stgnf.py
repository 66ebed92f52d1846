"""STG-NF: exact inverse, log-det against autograd's Jacobian, prior/NLL against known values."""
import math

import pytest
import torch

from mgnet.models.stgnf import STGNF, openpose_adjacency


def _flow(permutation="permute", T=4, steps=2, hidden=4, seed=0):
    torch.manual_seed(seed)
    f = STGNF(seg_len=T, steps=steps, hidden=hidden, permutation=permutation).double()
    with torch.no_grad():  # leave the zero-init so shift/scale really depend on the input
        for p in f.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return f


@pytest.mark.parametrize("permutation", ["permute", "invconv"])
def test_inverse_of_forward_is_identity(permutation):
    f = _flow(permutation, T=8, steps=3)
    f.train()
    x = torch.randn(3, 2, 8, 18, dtype=torch.float64)
    f(x)                      # data-dependent ActNorm init on the first training batch
    f.eval()
    z, _ = f(x)
    assert not torch.allclose(z, x)
    torch.testing.assert_close(f.inverse(z), x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("permutation", ["permute", "invconv"])
def test_logdet_matches_autograd_jacobian(permutation):
    f = _flow(permutation, T=4, steps=2).eval()
    x = torch.randn(1, 2, 4, 18, dtype=torch.float64)
    _, logdet = f(x)
    J = torch.autograd.functional.jacobian(lambda v: f(v.view(1, 2, 4, 18))[0].flatten(), x.flatten())
    ref = torch.linalg.slogdet(J)[1]
    torch.testing.assert_close(logdet[0], ref, rtol=1e-8, atol=1e-8)


def test_actnorm_initialises_from_first_training_batch_only():
    f = STGNF(seg_len=4, steps=1, hidden=4).train()
    x = 5 + 2 * torch.randn(64, 2, 4, 18)
    f(x)
    an = f.steps[0].actnorm
    y = (x + an.bias) * torch.exp(an.logs)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    before = an.bias.detach().clone()
    f(x + 100)                 # already initialised: no re-init
    torch.testing.assert_close(an.bias.detach(), before)
    assert bool(an.initialized) and "steps.0.actnorm.initialized" in f.state_dict()


def test_nll_bits_per_dim_known_values():
    f = STGNF(seg_len=4, steps=0)          # identity flow: nll is the prior alone
    x = torch.full((2, 2, 4, 18), 3.0)     # at the prior mean R = 3
    x[1] += 1.0                            # one unit away in every dimension
    z, nll = f.nll(x)
    base = 0.5 * math.log(2 * math.pi) / math.log(2)
    torch.testing.assert_close(nll, torch.tensor([base, base + 0.5 / math.log(2)]))
    assert torch.equal(z, x)


def test_features_layout():
    z = torch.arange(2 * 2 * 4 * 18, dtype=torch.float32).view(2, 2, 4, 18)
    f = STGNF.features(z)
    assert f.shape == (2, 4, 36)
    assert torch.equal(f[1, 3, :18], z[1, 0, 3]) and torch.equal(f[1, 3, 18:], z[1, 1, 3])


def test_adjacency():
    A = openpose_adjacency(max_hop=1)
    torch.testing.assert_close(A.sum(0), torch.ones(18))
    assert set(A[:, 1].nonzero().flatten().tolist()) == {0, 1, 2, 5}   # neck: nose, shoulders (hips hang off the shoulders here)
    assert (openpose_adjacency(max_hop=8) > 0).sum() > (A > 0).sum()


def test_bad_pose_shape_names_argument():
    f = STGNF(seg_len=4, steps=1)
    with pytest.raises(ValueError, match=r"pose must have shape \(B, 2, T=4, V=18\)"):
        f(torch.randn(2, 2, 5, 18))
    with pytest.raises(TypeError, match="pose must be a floating-point"):
        f(torch.zeros(2, 2, 4, 18, dtype=torch.int64))


def test_training_separates_normal_from_anomalous_poses():
    torch.manual_seed(0)
    f = STGNF(seg_len=4, steps=2, hidden=8)
    base = torch.randn(1, 2, 4, 18)
    normal = lambda n: base + 0.1 * torch.randn(n, 2, 4, 18)  # noqa: E731
    opt = torch.optim.Adam(f.parameters(), lr=3e-3)
    f.train()
    start = None
    for _ in range(40):
        loss = f.nll(normal(32))[1].mean()
        start = loss.item() if start is None else start
        opt.zero_grad()
        loss.backward()
        opt.step()
    f.eval()
    with torch.no_grad():
        held_out = f.nll(normal(64))[1]
        anomalous = f.nll(normal(64) + torch.randn(64, 2, 4, 18))[1]
    assert float(held_out.mean()) < start - 1.0
    assert float(held_out.max()) < float(anomalous.min())


def test_loaded_actnorm_is_not_reinitialised():
    f = STGNF(seg_len=4, steps=1, hidden=4).train()
    f(torch.randn(8, 2, 4, 18) * 3)
    g = STGNF(seg_len=4, steps=1, hidden=4).train()
    g.load_state_dict(f.state_dict())
    g(torch.randn(8, 2, 4, 18))
    torch.testing.assert_close(g.steps[0].actnorm.logs, f.steps[0].actnorm.logs)
