"""Track windowing: gap interpolation, splitting at long gaps and at identity switches (box jumps),
window starts and centre-frame labels."""
import numpy as np
import pytest

from mgnet.data.poses import Track
from mgnet.data.windows import box_jumps, split_track, window_labels, window_starts


def _track(frames, seed=0):
    rng = np.random.default_rng(seed)
    frames = np.asarray(frames)
    return Track(7, frames, rng.uniform(0, 100, (len(frames), 17, 3)).astype(np.float32), np.ones(len(frames), np.float32))


def test_short_gaps_are_interpolated():
    tr = _track([0, 1, 2, 5, 6, 8])  # gaps of 2 (3, 4) and 1 (7)
    (seg,) = split_track(tr, max_gap=2)
    np.testing.assert_array_equal(seg.frames, np.arange(9))
    np.testing.assert_array_equal(seg.interpolated, np.isin(np.arange(9), [3, 4, 7]))
    k2, k5 = tr.kps[2], tr.kps[3]
    np.testing.assert_allclose(seg.kps[3], k2 + (k5 - k2) / 3, rtol=1e-5)
    np.testing.assert_allclose(seg.kps[4], k2 + 2 * (k5 - k2) / 3, rtol=1e-5)
    np.testing.assert_array_equal(seg.kps[[0, 1, 2, 5, 6, 8]], tr.kps)
    assert seg.person == 7


def test_long_gap_splits():
    segs = split_track(_track([0, 1, 2, 6, 7, 20]), max_gap=2)
    assert [s.frames.tolist() for s in segs] == [[0, 1, 2], [6, 7], [20]]
    segs = split_track(_track([0, 1, 2, 6, 7]), max_gap=3)
    assert [s.frames.tolist() for s in segs] == [[0, 1, 2, 3, 4, 5, 6, 7]]


def _box_track(frames, x, side=40.0):
    """A track whose joints span the box [x, x + side / 4] x [0, side] at each frame (all conf 1)."""
    frames = np.asarray(frames)
    kps = np.zeros((len(frames), 17, 3), np.float32)
    kps[:, :, 2] = 1.0
    kps[:, 0, :2] = np.stack([np.asarray(x, np.float32), np.zeros(len(frames))], 1)
    kps[:, 1:, 0] = np.asarray(x, np.float32)[:, None] + side / 4
    kps[:, 1:, 1] = side
    return Track(3, frames, kps, np.ones(len(frames), np.float32))


def test_box_jumps_by_hand():
    a = np.zeros((17, 3), np.float32)
    a[:, 2] = 1.0
    a[:8, :2], a[8:, :2] = (0, 0), (10, 40)          # box centre (5, 20), side 40
    b = a.copy()
    b[:8, :2], b[8:, :2] = (30, 0), (40, 50)         # box centre (35, 25), side 50
    b[16] = (1000, 1000, 0.05)                       # a guessed joint (conf <= min_conf) is not in the box
    got = box_jumps(np.stack([a, b]), np.array([3, 5]), min_conf=0.1)
    np.testing.assert_allclose(got, [np.hypot(30, 5) / 2 / 50], rtol=1e-6)
    assert box_jumps(a[None], np.array([0])).shape == (0,)


def test_identity_switch_splits_the_track():
    x = np.arange(10, dtype=np.float32)               # 1 px per frame: a walker
    x[5:] += 100                                      # frame 5 on: someone else, 2.5 box sides away
    tr = _box_track(np.arange(10), x)
    assert [s.frames.tolist() for s in split_track(tr, 2, max_jump=0.5)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert [len(s) for s in split_track(tr, 2, max_jump=0.0)] == [10]      # 0 keeps tracks whole
    assert [len(s) for s in split_track(tr, 2, max_jump=3.0)] == [10]      # below the threshold


def test_jump_across_a_gap_counts_per_frame():
    # 60 px between frames 2 and 5 with side 40: 0.5 box sides per frame
    tr = _box_track([0, 1, 2, 5, 6], [0, 0, 0, 60, 60])
    assert [s.frames.tolist() for s in split_track(tr, 2, max_jump=0.45)] == [[0, 1, 2], [5, 6]]
    (seg,) = split_track(tr, 2, max_jump=0.55)
    np.testing.assert_array_equal(seg.frames, np.arange(7))
    np.testing.assert_allclose(seg.kps[3, 0, 0], 20.0)                     # interpolated as before


@pytest.mark.parametrize("length,T,stride,want", [(16, 16, 1, [0]), (15, 16, 1, []), (20, 16, 1, [0, 1, 2, 3, 4]),
                                                  (40, 16, 6, [0, 6, 12, 18, 24]), (5, 2, 3, [0, 3])])
def test_window_starts(length, T, stride, want):
    assert window_starts(length, T, stride).tolist() == want


def test_window_starts_rejects_bad_args():
    with pytest.raises(ValueError, match="stride"):
        window_starts(10, 4, 0)


def test_labels_at_centre_frame():
    gt = np.zeros(40, np.uint8)
    gt[20] = 1
    starts = np.array([4, 11, 12, 13])
    assert window_labels(gt, starts, 16).tolist() == [0, 0, 1, 0]  # centre = start + 8
    assert window_labels(gt, np.array([12]), 15).tolist() == [0]  # centre = start + 7 = 19
    assert window_labels(None, starts, 16).tolist() == [-1] * 4
