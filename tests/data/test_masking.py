"""BEiT block-wise masking: exact ratio, complementary pair, same mask on every temporal slice."""
import pytest
import torch

from mgnet.data.masking import block_mask, complementary_masks, visible_indices


def _same_neighbour_fraction(m):
    """Fraction of horizontally/vertically adjacent cell pairs that agree (1/2 for iid coin flips)."""
    agree = (m[1:] == m[:-1]).float().sum() + (m[:, 1:] == m[:, :-1]).float().sum()
    return float(agree) / (m[1:].numel() + m[:, 1:].numel())


@pytest.mark.parametrize("grid,ratio", [((8, 8), 0.5), ((8, 8), 0.25), ((4, 6), 0.5), ((1, 8), 0.5)])
def test_exact_ratio(grid, ratio):
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        m = block_mask(grid, ratio, g)
        assert m.shape == grid and m.dtype == torch.bool
        assert int(m.sum()) == round(ratio * grid[0] * grid[1])


def test_masks_are_blockwise_not_scattered():
    g = torch.Generator().manual_seed(1)
    block = sum(_same_neighbour_fraction(block_mask((8, 8), 0.5, g)) for _ in range(100)) / 100
    rnd = sum(_same_neighbour_fraction(torch.randperm(64, generator=g).view(8, 8) < 32) for _ in range(100)) / 100
    assert rnd < 0.56 and block > 0.65


def test_complementary_pair_and_visible_indices():
    g = torch.Generator().manual_seed(2)
    m1, m2 = complementary_masks(5, (8, 8), 0.5, g)
    assert torch.equal(m2, ~m1) and int(m1[0].sum()) == 32
    assert not torch.equal(m1[0], m1[1])          # one mask per clip
    t = 8
    v1, v2 = visible_indices(m1, t), visible_indices(m2, t)
    assert v1.shape == (5, 256) and v2.shape == (5, 256)
    for b in range(5):
        both = torch.cat([v1[b], v2[b]]).sort().values
        assert torch.equal(both, torch.arange(t * 64))           # the pair covers every cube once
        assert torch.equal(v1[b], v1[b].sort().values)
        per_slice = v1[b].view(t, 32) - torch.arange(t).view(t, 1) * 64
        assert (per_slice == per_slice[0]).all()                 # same mask on every slice
        hw = per_slice[0]
        assert not m1[b].flatten()[hw].any() and m1[b].flatten().sum() + hw.numel() == 64


def test_seeded_generator_is_reproducible():
    a = complementary_masks(3, generator=torch.Generator().manual_seed(7))[0]
    b = complementary_masks(3, generator=torch.Generator().manual_seed(7))[0]
    assert torch.equal(a, b)


def test_bad_input():
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        visible_indices(torch.zeros(2, 8, 8), 8)
    uneven = torch.zeros(2, 2, 2, dtype=torch.bool)
    uneven[0, 0, 0] = True
    with pytest.raises(ValueError, match="same number of cubes visible"):
        visible_indices(uneven, 1)
    with pytest.raises(ValueError, match="ratio"):
        block_mask((8, 8), 1.5)
