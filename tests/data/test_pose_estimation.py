"""Pose estimation from raw frames: the built-in MediaPipe estimator on a real photograph and on
two walking figures (two tracks, joints near the truth), the ONNX paths on stand-in models whose
outputs are known (RTMPose + YOLOX, RTMO), the cache, and the message when the extra is missing."""
import json
import sys

import numpy as np
import pytest

from mgnet.data.pose_estimation import (POSE_EXTRA, PoseEstimatorError, ensure_poses, estimator_settings,
                                        extract_tracks, make_estimator, source_path)
from mgnet.data.pose_estimation.builtin import BLAZEPOSE33_TO_COCO17
from mgnet.data.pose_formats import load_poses
from tests.data._pose_fixtures import ArraySource, rtmo_standin, rtmpose_standin, walkers, yolox_standin

COCO = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
        "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
        "left_ankle", "right_ankle")


def test_missing_extra_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import fails as if not installed
    with pytest.raises(PoseEstimatorError) as e:
        make_estimator(estimator_settings("builtin"))
    assert "'mediapipe'" in str(e.value) and POSE_EXTRA in str(e.value)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(PoseEstimatorError, match=r"'onnxruntime'.*pip install -e \"\.\[pose\]\""):
        from mgnet.data.pose_estimation.onnx_models import OnnxEstimator, OnnxSettings
        OnnxEstimator(OnnxSettings(pose_model="x.onnx"))


def test_settings_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(PoseEstimatorError, match="must be one of builtin, onnx"):
        estimator_settings("openpose")
    with pytest.raises(PoseEstimatorError, match="unknown option.*colour"):
        estimator_settings("builtin", colour=1)
    with pytest.raises(PoseEstimatorError, match="tiles must be an integer >= 1"):
        estimator_settings("builtin", tiles=0)
    with pytest.raises(PoseEstimatorError, match="needs a pose model"):
        estimator_settings("onnx")
    with pytest.raises(PoseEstimatorError, match=f"{tmp_path / 'none.onnx'}: ONNX model file not found"):
        estimator_settings("onnx", tmp_path / "none.onnx")
    with pytest.raises(PoseEstimatorError, match="for the onnx estimator"):
        estimator_settings("builtin", pose_model=tmp_path / "x.onnx")


# ----------------------------------------------------------------------------- built-in (MediaPipe)
def test_blazepose_to_coco_table_matches_mediapipe_landmark_names():
    mp = pytest.importorskip("mediapipe", reason="the pose extra (pip install -e '.[pose]') is not installed")
    names = {lm.value: lm.name.lower() for lm in mp.solutions.pose.PoseLandmark}
    assert [names[i] for i in BLAZEPOSE33_TO_COCO17] == list(COCO)


def test_builtin_finds_the_astronaut_in_a_real_photograph():
    pytest.importorskip("mediapipe", reason="the pose extra (pip install -e '.[pose]') is not installed")
    from skimage import data
    img = data.astronaut()  # 512 x 512, the person seen from the waist up, facing the camera
    kps = make_estimator(estimator_settings("builtin"))(img, 0)
    assert kps.shape == (1, 17, 3)
    k = kps[0]
    x1, y1, x2, y2 = 20, 10, 370, 512  # the astronaut's box, read off the photograph by hand
    sure = k[:, 2] >= 0.5
    assert sure[[0, 1, 2, 5, 6]].all()  # face and shoulders are in plain view
    assert ((k[sure, 0] >= x1) & (k[sure, 0] <= x2) & (k[sure, 1] >= y1) & (k[sure, 1] <= y2)).all()
    y = lambda a, b: (k[a, 1] + k[b, 1]) / 2  # noqa: E731
    assert k[0, 1] < y(5, 6) < y(11, 12) < y(13, 14)  # nose above shoulders above hips above knees
    assert k[5, 0] > k[0, 0] > k[6, 0]  # facing the camera: her left shoulder on the image's right
    assert 190 <= k[0, 0] <= 260 and 100 <= k[0, 1] <= 160  # the nose, read by hand at about (223, 128)
    assert (k[sure, 2] <= 1).all() and (k[k[:, 1] > 511, 2] == 0).all()  # joints below the frame: score 0


@pytest.mark.slow
def test_two_walking_figures_give_two_tracks_near_the_truth():
    pytest.importorskip("mediapipe", reason="the pose extra (pip install -e '.[pose]') is not installed")
    frames, truth = walkers(n=12, h=200)
    tracks, info = extract_tracks(ArraySource(frames), make_estimator(estimator_settings("builtin")), progress=False)
    assert info["frames"] == 12
    assert len(tracks) == 2
    matched = set()
    for tid, (fr, kp) in tracks.items():
        assert len(fr) >= 11  # found in (nearly) every frame, one identity throughout
        err = {p: np.abs(kp[:, :, :2] - t[1][fr, :, :2]).mean() for p, t in truth.items()}
        p = min(err, key=err.get)
        assert err[p] < 0.1 * 200, f"track {tid}: mean joint error {err[p]:.1f} px"
        matched.add(p)
    assert matched == {1, 2}


# ----------------------------------------------------------------------------- ONNX
@pytest.fixture
def onnx_models(tmp_path):
    for m in ("onnxruntime", "cv2"):
        pytest.importorskip(m, reason="the pose extra (pip install -e '.[pose]') is not installed")
    pytest.importorskip("onnx", reason="the test extra (onnx) is not installed")
    # a 1280 x 960 frame letterboxes into 640 x 640 at ratio 0.5; the person box is 153.6 x 204.8 frame
    # pixels centred at (300, 200): x 1.25 padding it is exactly RTMPose's 192 x 256 input (a 1:1 crop)
    box = [150 - 38.4, 100 - 51.2, 150 + 38.4, 100 + 51.2]
    yolox_standin(tmp_path / "yolox.onnx", [box + [0.9], [10, 10, 60, 60, 0.95], [400, 300, 500, 400, 0.1]],
                  [0, 2, 0])  # a person, a non-person (class 2), a person below the score threshold
    rtmpose_standin(tmp_path / "rtmpose.onnx", gain=0.25)
    return tmp_path


def red_dot_frames(n, x0=330, y0=250, vx=2):
    frames = np.full((n, 960, 1280, 3), 90, np.uint8)
    for f in range(n):
        frames[f, y0, x0 + vx * f] = (255, 0, 0)  # pure red: found only if the crop is fed as RGB
    return frames


def test_rtmpose_with_yolox_maps_keypoints_back_to_the_frame(onnx_models):
    est = make_estimator(estimator_settings("onnx", onnx_models / "rtmpose.onnx", onnx_models / "yolox.onnx"))
    assert est.kind == "rtmpose"
    kps = est(red_dot_frames(1)[0], 0)
    assert kps.shape == (1, 17, 3)  # the other two detections are dropped (class, score)
    np.testing.assert_array_equal(kps[0, :, :2], np.tile([330.0, 250.0], (17, 1)))
    # score: the lower of the two SimCC maxima = gain x the red channel's ImageNet-normalised 255
    np.testing.assert_allclose(kps[0, :, 2], 0.25 * (255 - 123.675) / 58.395, rtol=1e-6)
    boxes = est.detect(red_dot_frames(1)[0])
    np.testing.assert_allclose(boxes, [[300 - 76.8, 200 - 102.4, 300 + 76.8, 200 + 102.4, 0.9]], rtol=1e-6)


def test_rtmo_one_stage_keypoints_are_scaled_from_the_letterbox(tmp_path):
    for m in ("onnxruntime", "cv2"):
        pytest.importorskip(m, reason="the pose extra (pip install -e '.[pose]') is not installed")
    pytest.importorskip("onnx", reason="the test extra (onnx) is not installed")
    rng = np.random.default_rng(0)
    kp = np.concatenate([rng.uniform(0, 400, (2, 26, 2)), rng.uniform(0.2, 0.9, (2, 26, 1))], -1)
    rtmo_standin(tmp_path / "rtmo.onnx", [[0, 0, 100, 100, 0.8], [0, 0, 50, 50, 0.1]], kp)  # Halpe-26 keypoints
    est = make_estimator(estimator_settings("onnx", tmp_path / "rtmo.onnx"))
    assert est.kind == "rtmo"
    out = est(np.zeros((960, 1280, 3), np.uint8), 0)  # ratio 0.5
    assert out.shape == (1, 17, 3)
    np.testing.assert_allclose(out[0, :, :2], kp[0, :17, :2] * 2, rtol=1e-5)
    np.testing.assert_allclose(out[0, :, 2], kp[0, :17, 2], rtol=1e-6)


def test_onnx_models_of_the_wrong_kind_are_named(onnx_models, tmp_path):
    with pytest.raises(PoseEstimatorError, match="needs a person detector"):
        make_estimator(estimator_settings("onnx", onnx_models / "rtmpose.onnx"))
    with pytest.raises(PoseEstimatorError, match=f"{onnx_models / 'yolox.onnx'}: unknown pose model: outputs"):
        make_estimator(estimator_settings("onnx", onnx_models / "yolox.onnx"))
    with pytest.raises(PoseEstimatorError, match=f"{onnx_models / 'rtmpose.onnx'}: expected a YOLOX"):
        make_estimator(estimator_settings("onnx", onnx_models / "rtmpose.onnx", onnx_models / "rtmpose.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(PoseEstimatorError, match=f"{junk}: not a loadable ONNX model"):
        make_estimator(estimator_settings("onnx", junk))


def test_ensure_poses_tracks_writes_and_reuses_the_cache(onnx_models, tmp_path):
    from mgnet.data.pose_formats import detect_format
    frames = red_dot_frames(6, vx=0)  # all 17 stand-in keypoints on one pixel: a degenerate box that
    video = tmp_path / "frames"        # the tracker links only when it does not move  # a frame folder stands for the video's identity
    video.mkdir()
    from PIL import Image
    for f, im in enumerate(frames):
        Image.fromarray(im).save(video / f"{f:03d}.png")
    settings = estimator_settings("onnx", onnx_models / "rtmpose.onnx", onnx_models / "yolox.onnx")
    out = tmp_path / "out" / "poses.json"
    assert ensure_poses(video, out, settings, progress=False) == out
    assert detect_format(out) == "alphapose-tracked"
    tracks = load_poses(out)
    assert list(tracks) == [1]
    fr, kp = tracks[1]
    np.testing.assert_array_equal(fr, np.arange(6))
    np.testing.assert_array_equal(kp[:, :, :2], np.tile([330.0, 250.0], (6, 17, 1)))
    src = json.loads(source_path(out).read_text())
    assert src["settings"] == settings and src["extraction"]["frames"] == 6 and src["extraction"]["tracks"] == 1

    class Boom:
        def reset(self):
            raise AssertionError("the cache was not used")
    assert ensure_poses(video, out, settings, progress=False, estimator=Boom()) == out
    other = estimator_settings("onnx", onnx_models / "rtmpose.onnx", onnx_models / "yolox.onnx", det_score=0.05)
    with pytest.raises(AssertionError, match="cache was not used"):  # other settings: extracted again
        ensure_poses(video, out, other, progress=False, estimator=Boom())
