"""Pose JSON reading, COCO-17 -> OpenPose-18 conversion and STG-NF normalisation."""
import json

import numpy as np
import pytest

from mgnet.data.errors import DataError
from mgnet.data.poses import coco17_to_openpose18, normalize_pose, read_pose_json, write_pose_json

COCO = ["nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_sho", "r_sho", "l_elb", "r_elb", "l_wri", "r_wri",
        "l_hip", "r_hip", "l_knee", "r_knee", "l_ank", "r_ank"]
OPENPOSE18 = ["nose", "neck", "r_sho", "r_elb", "r_wri", "l_sho", "l_elb", "l_wri", "r_hip", "r_knee", "r_ank",
              "l_hip", "l_knee", "l_ank", "r_eye", "l_eye", "r_ear", "l_ear"]


def test_openpose18_order_and_neck():
    rng = np.random.default_rng(0)
    kps = rng.normal(size=(4, 5, 17, 3))
    out = coco17_to_openpose18(kps)
    assert out.shape == (4, 5, 18, 3)
    for j, name in enumerate(OPENPOSE18):
        want = 0.5 * (kps[..., 5, :] + kps[..., 6, :]) if name == "neck" else kps[..., COCO.index(name), :]
        np.testing.assert_allclose(out[..., j, :], want, err_msg=name)


def test_openpose18_rejects_wrong_joint_count():
    with pytest.raises(ValueError, match="17 joints"):
        coco17_to_openpose18(np.zeros((3, 18, 3)))


def _stgnf_reference(pose, w, h):
    # STG-NF normalize_pose with sub_mean and scale_proportional on (N, T, V, 2)
    p = pose / np.array([w, h])
    p = p - p.mean(axis=(1, 2))[:, None, None, :]
    return p / p[..., 1].std(axis=(1, 2))[:, None, None, None]


@pytest.mark.parametrize("shape", [(3, 16, 18), (1, 5, 18), (2, 16, 17)])
def test_normalize_matches_stgnf(shape):
    rng = np.random.default_rng(1)
    pose = rng.uniform(0, 300, shape + (2,))
    got = normalize_pose(pose, (856, 480))
    np.testing.assert_allclose(got, _stgnf_reference(pose, 856, 480), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(got[..., 1].std(axis=(1, 2)), 1, rtol=1e-5)


def test_normalize_invariant_to_translation_and_scale():
    rng = np.random.default_rng(2)
    pose = rng.uniform(0, 100, (16, 18, 2))
    a = normalize_pose(pose, (200, 100))
    b = normalize_pose(pose * 2.5 + np.array([40.0, -7.0]), (200, 100))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_json_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    tracks = {2: {5: rng.uniform(0, 50, (17, 3)), 3: rng.uniform(0, 50, (17, 3))}, 1: {0: rng.uniform(0, 50, (17, 3))}}
    p = tmp_path / "v_alphapose_tracked_person.json"
    write_pose_json(p, tracks)
    got = read_pose_json(p)
    assert [t.person for t in got] == [1, 2]
    np.testing.assert_array_equal(got[1].frames, [3, 5])
    np.testing.assert_allclose(got[1].kps[1], tracks[2][5], atol=0.01)
    assert got[1].kps.dtype == np.float32 and got[1].kps.shape == (2, 17, 3)


@pytest.mark.parametrize("content,problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"1": [1, 2]}', "expected an object of frames"),
    ('{"x": {"0": {"keypoints": []}}}', "person id 'x' is not an integer"),
    ('{"1": {"a": {"keypoints": []}}}', "frame id 'a' is not an integer"),
    ('{"1": {"0": {"kp": []}}}', 'with "keypoints"'),
    ('{"1": {"0": {"keypoints": [' + ",".join(["1"] * 50) + ']}}}', "51 numbers .* got 50"),
    ('{"1": {"0": {"keypoints": [' + ",".join(['"a"'] * 51) + ']}}}', "non-numbers"),
])
def test_bad_json_names_file(tmp_path, content, problem):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(DataError, match=problem) as e:
        read_pose_json(p)
    assert str(p) in str(e.value)


def test_missing_json(tmp_path):
    with pytest.raises(DataError, match="pose file not found"):
        read_pose_json(tmp_path / "nope.json")


def test_scores_as_list_accepted(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"0": {"4": {"keypoints": [1.0] * 51, "scores": [0.7]}}}))
    (t,) = read_pose_json(p)
    assert t.person == 0 and t.frames.tolist() == [4] and t.box_scores[0] == pytest.approx(0.7)
