"""Foreground occupancy (mgnet/data/foreground.py): background, threshold and cell fractions by hand."""
import numpy as np
import pytest

from mgnet.data import foreground as fgm


def test_background_is_the_median_and_tau_follows_the_noise():
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
    frames = np.repeat(scene[None], 5, 0)
    for i in range(5):                       # a 4x4 "person" at a different place in every frame
        frames[i, 2:6, 3 * i:3 * i + 4] = 255
    bg, tau = fgm.video_background(frames)
    np.testing.assert_array_equal(bg, scene)
    assert tau == pytest.approx(fgm.TAU_BASE)          # most pixels equal the background: noise 0
    # sensor noise: frames alternate +-(4, 4, 2) around the scene; the median frame is the scene
    # itself (odd count, 3 frames above), so every pixel of the two lower frames differs by 10
    sign = np.array([1, -1, 1, -1, 0])[:, None, None, None]
    noisy = (scene[None].astype(np.int16) + sign * np.array([4, 4, 2])).clip(0, 255).astype(np.uint8)
    inner = (scene >= 4).all(-1) & (scene <= 251).all(-1)        # pixels the clip did not touch
    bg2, tau2 = fgm.video_background(noisy)
    np.testing.assert_array_equal(bg2[inner], scene[inner])
    # |diff| per pixel and frame: 0 (frame 4), 10 (frames 0-3): the median over all is 10
    assert tau2 == pytest.approx(fgm.TAU_BASE + fgm.TAU_NOISE * 10)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        fgm.video_background(frames[..., :2])


def test_occupancy_cell_fractions_by_hand():
    bg = np.full((1, 3, 16, 16), 100, np.uint8)
    crop = bg.copy()
    crop[0, 0, :8, :8] = 200          # top-left quarter: |diff| = 100 > tau 30 -> foreground
    crop[0, 1, 8:, 8:] = 110          # bottom-right: |diff| = 10 < tau -> background
    crop[0, 2, :4, 8:] = 0            # top-right: 4 x 8 pixels at |diff| 100 -> half of the cell
    occ = fgm.occupancy(crop, bg, 30.0, grid=2)
    np.testing.assert_array_equal(occ[0], [[255, 128], [0, 0]])
    # a crop size the grid does not divide: cells by area (12 px into 8 cells)
    c12 = np.zeros((1, 3, 12, 12), np.uint8)
    c12[0, 0] = 255
    np.testing.assert_array_equal(fgm.occupancy(c12, np.zeros_like(c12), 30.0), np.full((1, 8, 8), 255, np.uint8))
    with pytest.raises(ValueError, match="must both be"):
        fgm.occupancy(crop, bg[:, :, :8], 30.0)


def _person(x0, x1, y0, y1, low=None):
    """17 joints spanning [x0, x1] x [y0, y1] (conf 0.9); joint 16 at ``low`` with conf 0.05 if given."""
    k = np.zeros((17, 3), np.float32)
    k[:, 2] = 0.9
    k[:8, :2], k[8:, :2] = (x0, y0), (x1, y1)
    if low is not None:
        k[16] = (*low, 0.05)
    return k


def test_others_mask_covers_other_people_boxes_only():
    # crop square (cx 32, cy 32, side 64) at size 64: pixel (v, u) has its centre at (u + 0.5, v + 0.5)
    box = np.array([[32.0, 32.0, 64.0]])
    ids = np.array([7, 3])
    kps = np.stack([_person(10, 20, 0, 40, low=(60, 60)),    # another person; a guessed joint outside
                    _person(0, 64, 0, 64)])                 # the crop's own person (id 3): never masked
    m = fgm.others_mask(box, np.array([3]), ids, kps, 64, min_conf=0.1, expand=0.0)
    want = np.zeros((64, 64), bool)
    want[0:40, 10:20] = True           # centres 10.5 .. 19.5 in [10, 20], 0.5 .. 39.5 in [0, 40]
    np.testing.assert_array_equal(m[0], want)
    # widened by 0.2 of its size: x [9, 21], y [-4, 44]
    m = fgm.others_mask(box, np.array([3]), ids, kps, 64, min_conf=0.1, expand=0.2)
    want = np.zeros((64, 64), bool)
    want[0:44, 9:21] = True
    np.testing.assert_array_equal(m[0], want)
    # the same person seen through a crop twice as large (side 128 at size 64: 2 px per crop pixel)
    m = fgm.others_mask(np.array([[64.0, 64.0, 128.0]]), np.array([3]), ids, kps, 64, expand=0.0)
    want = np.zeros((64, 64), bool)
    want[0:20, 5:10] = True            # centres 1, 3, .., 39 in y; 11, 13, .., 19 in x
    np.testing.assert_array_equal(m[0], want)
    assert fgm.others_mask(box, np.array([3]), ids[:0], kps[:0], 64).shape == (1, 64, 64)


def test_occupancy_leaves_out_the_excluded_pixels():
    bg = np.full((1, 3, 16, 16), 100, np.uint8)
    crop = bg.copy()
    crop[0, 0] = 200                              # all foreground
    ex = np.zeros((1, 16, 16), bool)
    ex[0, :8, :8] = True                          # another person's box: the top-left cell
    ex[0, 8:, 8:12] = True                        # half of the bottom-right cell
    occ = fgm.occupancy(crop, bg, 30.0, grid=2, exclude=ex)
    np.testing.assert_array_equal(occ[0], [[0, 255], [255, 128]])
    with pytest.raises(ValueError, match="exclude"):
        fgm.occupancy(crop, bg, 30.0, exclude=ex[:, :8])


def test_sample_indices_spread_over_the_video():
    assert fgm.sample_indices(5).tolist() == [0, 1, 2, 3, 4]
    idx = fgm.sample_indices(1000)
    assert len(idx) == fgm.BG_FRAMES and idx[0] == 0 and idx[-1] == 999
    with pytest.raises(ValueError):
        fgm.sample_indices(0)
