"""The IoU/keypoint tracker links detections into the tracks that produced them."""
import numpy as np
import pytest

from mgnet.data.tracker import box_iou, keypoint_box, keypoint_similarity, track_detections


def _pose(cx, cy, h=60.0, score=0.9):
    ys = np.linspace(-h / 2, h / 2, 17)
    xs = np.tile([-6.0, 6.0], 9)[:17]
    return np.stack([cx + xs, cy + ys, np.full(17, score)], -1).astype(np.float32)


def test_box_iou_and_similarity_known_values():
    a, b = np.array([0, 0, 2, 2.0]), np.array([1, 1, 3, 3.0])
    assert box_iou(a, b) == pytest.approx(1 / 7)
    assert box_iou(a, np.array([5, 5, 6, 6.0])) == 0.0
    p = _pose(50, 50)
    assert keypoint_similarity(p, p) == pytest.approx(1.0)
    assert keypoint_similarity(p, _pose(53, 50)) < 1.0
    assert keypoint_similarity(p, _pose(500, 50)) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(keypoint_box(p), [44, 20, 56, 80])


def test_crossing_free_tracks_with_shuffled_detection_order_and_a_gap():
    rng = np.random.default_rng(0)
    truth = {1: [], 2: [], 3: []}
    dets = []
    for f in range(30):
        people = [(1, _pose(30 + 2 * f, 50)), (2, _pose(200 - 2 * f, 120))]
        if 5 <= f < 25 and f not in (12, 13):  # person 3 enters at 5, is missed on 12-13
            people.append((3, _pose(120, 200 - f)))
        order = rng.permutation(len(people))
        dets.append((f, np.stack([people[i][1] for i in order])))
        for pid, p in people:
            truth[pid].append((f, p))
    out = track_detections(dets, max_gap=3)
    assert sorted(out) == [1, 2, 3]
    for pid, rows in truth.items():  # ids follow first appearance; ties by detection order
        match = [t for t, (fr, kp) in out.items() if np.array_equal(kp, np.stack([p for _, p in rows]))]
        assert len(match) == 1
        np.testing.assert_array_equal(out[match[0]][0], [f for f, _ in rows])


def test_a_long_gap_starts_a_new_track_and_far_jumps_are_not_linked():
    dets = [(f, _pose(50, 50)[None]) for f in range(5)] + [(f, _pose(50, 50)[None]) for f in range(20, 25)]
    out = track_detections(dets, max_gap=8)
    assert [list(v[0]) for v in out.values()] == [list(range(5)), list(range(20, 25))]
    out = track_detections([(0, _pose(10, 10)[None]), (1, _pose(300, 300)[None])])
    assert len(out) == 2


def test_bad_shape_is_named():
    with pytest.raises(ValueError, match="frame 4 must be"):
        track_detections([(4, np.zeros((17, 3)))])


def test_streaming_tracker_gives_the_batch_ids_and_refuses_going_back():
    from mgnet.data.tracker import Tracker
    dets = [(f, np.stack([_pose(30 + 3 * f, 50), _pose(200 - 3 * f, 90)])) for f in range(12)]
    batch = track_detections(dets)
    tr = Tracker()
    for f, poses in dets:
        ids = tr.update(f, poses)
        for i, p in zip(ids, poses):
            assert np.array_equal(batch[i][1][list(batch[i][0]).index(f)], p)
    with pytest.raises(ValueError, match="frames must increase"):
        tr.update(3, dets[3][1])
