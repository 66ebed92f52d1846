"""Every pose adapter reads the same synthetic skeletons back identically; bad files fail clearly."""
import json

import numpy as np
import pytest

from mgnet.data.pose_formats import (
    BODY25_TO_COCO17, COCO18_TO_COCO17, FORMATS, PoseFormatError, check_frame_range, detect_format,
    load_poses, save_poses,
)

# A COCO-17 standing skeleton, ~60 px tall, in pixel units around (0, 0).
_SKEL = np.array([[0, -28], [-2, -30], [2, -30], [-4, -29], [4, -29], [-8, -20], [8, -20], [-10, -8],
                  [10, -8], [-11, 2], [11, 2], [-5, 4], [5, 4], [-5, 17], [5, 17], [-5, 30], [5, 30]],
                 dtype=np.float32)


def synthetic_tracks(num_frames=40, seed=0):
    """Three people walking apart from each other; person 3 enters late and leaves early.
    Values are float32-exact and keypoint scores < 1, ids in order of first appearance."""
    rng = np.random.default_rng(seed)
    specs = [(1, 0, num_frames, (40, 60), (1.5, 0.0)), (2, 0, num_frames - 5, (200, 70), (-1.0, 0.5)),
             (3, 10, 30, (120, 150), (0.0, -1.0))]
    tracks = {}
    for pid, a, b, (x0, y0), (vx, vy) in specs:
        fr = np.arange(a, b, dtype=np.int64)
        t = (fr - a)[:, None]
        xy = _SKEL[None] + np.stack([x0 + vx * t, y0 + vy * t], -1).astype(np.float32)
        xy = xy + rng.normal(0, 0.5, xy.shape).astype(np.float32)
        sc = rng.uniform(0.3, 0.99, (len(fr), 17, 1)).astype(np.float32)
        tracks[pid] = (fr, np.concatenate([np.round(xy, 2), np.round(sc, 3)], -1).astype(np.float32))
    return tracks


VARIANTS = [
    ("alphapose-tracked", {}),
    ("alphapose-results", {"with_ids": True}),
    ("alphapose-results", {"with_ids": False}),
    ("openpose", {"openpose_layout": "BODY_25", "with_ids": False}),
    ("openpose", {"openpose_layout": "COCO-18", "with_ids": False}),
    ("mmpose", {"with_ids": False}),
    ("mmpose", {"with_ids": True}),
]


def _same(a, b):
    assert sorted(a) == sorted(b)
    for pid in a:
        np.testing.assert_array_equal(a[pid][0], b[pid][0])
        np.testing.assert_array_equal(a[pid][1], b[pid][1])


@pytest.mark.parametrize("fmt,kw", VARIANTS, ids=[f"{f}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for f, kw in VARIANTS])
def test_every_adapter_round_trips_the_same_tracks(tmp_path, fmt, kw):
    tracks = synthetic_tracks()
    path = save_poses(tracks, tmp_path / ("poses" if fmt == "openpose" else "poses.json"), fmt, num_frames=45, **kw)
    assert detect_format(path) == fmt
    _same(load_poses(path), tracks)
    _same(load_poses(path, fmt=fmt), tracks)


def test_index_tables_are_permutations_onto_named_joints():
    # COCO-17 l-shoulder (5) is BODY_25 5 and COCO-18 5; r-hip (12) is BODY_25 9 and COCO-18 8.
    assert BODY25_TO_COCO17[5] == 5 and BODY25_TO_COCO17[12] == 9 and BODY25_TO_COCO17[1] == 16
    assert COCO18_TO_COCO17[5] == 5 and COCO18_TO_COCO17[12] == 8 and COCO18_TO_COCO17[2] == 14
    assert len(set(BODY25_TO_COCO17)) == 17 and 1 not in BODY25_TO_COCO17 and 8 not in BODY25_TO_COCO17
    assert len(set(COCO18_TO_COCO17)) == 17 and 1 not in COCO18_TO_COCO17


def test_mmpose_topdown_demo_frames_count_from_one(tmp_path):
    tracks = synthetic_tracks()
    lst = json.loads(save_poses(tracks, tmp_path / "a.json", "mmpose").read_text())
    demo = {"meta_info": {"dataset_name": "coco"}, "instance_info": [dict(f, frame_id=f["frame_id"] + 1) for f in lst]}
    (tmp_path / "b.json").write_text(json.dumps(demo))
    _same(load_poses(tmp_path / "b.json"), tracks)


def test_halpe26_takes_the_coco_prefix(tmp_path):
    tracks = synthetic_tracks()
    rows = json.loads(save_poses(tracks, tmp_path / "a.json", "alphapose-results").read_text())
    for r in rows:
        r["keypoints"] = r["keypoints"] + [1.0, 2.0, 0.5] * 9
    (tmp_path / "b.json").write_text(json.dumps(rows))
    _same(load_poses(tmp_path / "b.json"), tracks)


@pytest.mark.parametrize("content,needle", [
    ("", "empty pose file"),
    ("[]", "empty pose file"),
    ("{}", "empty pose file"),
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "unknown pose format"),
    ('[{"image_id": "0.jpg", "keypoints": [0, 0, 1]}, {"frame_id": 0, "instances": []}]', "mixed pose formats"),
    ('{"version": 1.3, "people": []}', "single OpenPose frame"),
    ('[{"image_id": "0.jpg", "keypoints": [1, 2, 3, 4]}]', "not a multiple of 3"),
    ('[{"image_id": "0.jpg", "keypoints": [1, 2, 0.5, 3, 4, 0.5]}]', "expected COCO-17"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, content, needle):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(PoseFormatError, match=needle) as e:
        load_poses(p)
    assert str(p) in str(e.value)
    if needle in ("not valid JSON", "unknown pose format", "mixed pose formats"):
        assert "expected one of: AlphaPose tracked JSON" in str(e.value)


def test_wrong_explicit_format_and_missing_path(tmp_path):
    p = save_poses(synthetic_tracks(), tmp_path / "a.json", "alphapose-tracked")
    with pytest.raises(PoseFormatError, match="expected pose format 'mmpose'"):
        load_poses(p, fmt="mmpose")
    with pytest.raises(PoseFormatError, match="does not exist"):
        load_poses(tmp_path / "nope.json")
    assert set(FORMATS) == {"alphapose-tracked", "alphapose-results", "openpose", "mmpose"}


def test_openpose_folder_mixing_layouts_is_refused(tmp_path):
    tracks = synthetic_tracks(num_frames=20)
    a = save_poses(tracks, tmp_path / "a", "openpose", openpose_layout="BODY_25")
    b = save_poses(tracks, tmp_path / "b", "openpose", openpose_layout="COCO-18")
    (b / "b_000000000003_keypoints.json").rename(a / "a_000000000003_keypoints.json")
    with pytest.raises(PoseFormatError, match="mixed pose formats: BODY_25 and COCO-18"):
        load_poses(a)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.json").write_text('{"1": {"0": {"keypoints": [0, 0, 1]}}}')
    with pytest.raises(PoseFormatError, match="only OpenPose per-frame files"):
        load_poses(tmp_path / "c")


def test_frame_range_check_names_both_files(tmp_path):
    tracks = synthetic_tracks(num_frames=40)
    check_frame_range(tracks, 40, "p.json", "v.mp4")
    with pytest.raises(PoseFormatError, match=r"p\.json: poses reach frame 39 but the video v\.mp4 has only 30"):
        check_frame_range(tracks, 30, "p.json", "v.mp4")
