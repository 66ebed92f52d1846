"""Track windowing: gap interpolation, splitting at long gaps, window starts and centre-frame labels."""
import numpy as np
import pytest

from mgnet.data.poses import Track
from mgnet.data.windows import split_track, window_labels, window_starts


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
