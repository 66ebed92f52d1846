"""Prepared-clip store from small fixtures: contents against direct computation, label alignment,
resume after an interruption, rebuild when the config changes, and every bad input."""
import json
import os
import zlib

import numpy as np
import pytest
import torch

from mgnet.data import prepare as prep
from mgnet.data.cache import ClipStore
from mgnet.data.crops import crop_squares, person_boxes, scene_images
from mgnet.data.errors import DataError
from mgnet.data.poses import coco17_to_openpose18, normalize_pose, read_pose_json, write_pose_json
from mgnet.data.video import open_frames

from ._fixtures import data_cfg, frames_pattern, make_shanghaitech, tracks_for, write_jpegs, write_video

T = 8


@pytest.fixture(scope="module")
def sht(tmp_path_factory):
    return make_shanghaitech(str(tmp_path_factory.mktemp("sht")))


def test_test_split_contents(sht, tmp_path):
    store = prep.prepare_split(data_cfg(sht, cache_dir=str(tmp_path)), "test", progress=False)
    assert store.videos == ["01_0001"] and store.num_frames == {"01_0001": 36}
    # person 1: frames 0..35 -> 29 windows; person 3: frames 5..29 -> 18 windows (stride 1)
    assert len(store) == 29 + 18
    tracks = {t.person: t for t in read_pose_json(os.path.join(sht, "pose/test/01_0001_alphapose_tracked_person.json"))}
    gt = np.load(os.path.join(sht, "gt/test_frame_mask/01_0001.npy"))
    np.testing.assert_array_equal(store.gt("01_0001"), gt)
    assert store.anomaly_types("01_0001") is None and store.type_names == {}
    frames = open_frames(os.path.join(sht, "testing/frames/01_0001")).get(np.arange(36))
    for i in (0, 7, 30, len(store) - 1):
        x = store[i]
        p, s = int(x["person"]), int(x["start"])
        assert int(x["frame"]) == s + T // 2
        assert int(x["label"]) == gt[s + T // 2]
        assert int(x["scene_id"]) == zlib.crc32(b"01") & 0x7FFFFFFF       # video 01_0001: scene "01"
        tr = tracks[p]
        k = np.searchsorted(tr.frames, s)
        kps18 = coco17_to_openpose18(tr.kps[k:k + T])
        np.testing.assert_allclose(x["pose"].numpy(), normalize_pose(kps18[..., :2], (64, 48)).transpose(2, 0, 1), atol=1e-4)
        np.testing.assert_allclose(x["pose_conf"].numpy(), kps18[..., 2])
        assert x["rgb"].shape == (3, T, 16, 16) and x["rgb"].dtype == torch.uint8
        boxes = person_boxes(kps18, 0.2, 0.1)
        for t in (0, T - 1):
            want = crop_squares(frames[s + t], boxes[t:t + 1], 16)[0]
            np.testing.assert_array_equal(x["rgb"][:, t].numpy(), want)
        np.testing.assert_array_equal(x["scene"].numpy(), scene_images(frames[[s + T // 2]], 8)[0])


def test_train_split_gap_and_stride(sht, tmp_path):
    store = prep.prepare_split(data_cfg(sht, cache_dir=str(tmp_path)), "train", progress=False)
    # person 1: 40 frames -> starts 0,2,..,32 (17); person 2: 0..19, gap of 2 filled, 22..39 -> one track of 40 (17)
    assert len(store) == 34
    assert set(store.column("label").tolist()) == {-1} and store.gt("01_001") is None
    x = store[len(store) - 1]
    assert x["pose"].shape == (2, T, 18) and x["scene"].shape == (3, 8, 8)
    batch = next(iter(torch.utils.data.DataLoader(store, batch_size=5)))
    assert batch["rgb"].shape == (5, 3, T, 16, 16) and batch["label"].shape == (5,)


def test_cached_store_reused_and_rebuilt_on_config_change(sht, tmp_path, monkeypatch):
    cfg = data_cfg(sht, cache_dir=str(tmp_path))
    calls = []
    real = prep.build_shard
    monkeypatch.setattr(prep, "build_shard", lambda *a, **k: (calls.append(a[0].item.name), real(*a, **k)))
    s1 = prep.prepare_split(cfg, "test", progress=False)
    s2 = prep.prepare_split(cfg, "test", progress=False)
    assert calls == ["01_0001"] and s1.hash == s2.hash
    s3 = prep.prepare_split({**cfg, "crop_size": 12}, "test", progress=False)
    assert calls == ["01_0001", "01_0001"] and s3.hash != s1.hash
    assert s3[0]["rgb"].shape == (3, T, 12, 12) and s3.config["crop_size"] == 12
    s4 = prep.prepare_split({**cfg, "test_stride": 2, "crop_size": 12}, "test", progress=False)
    assert len(s4) == 15 + 9


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    root = make_shanghaitech(str(tmp_path / "d"), n_test=20, test_tracks={1: range(0, 20)})
    for v in ("01_0002", "01_0003"):
        write_jpegs(os.path.join(root, "testing/frames", v), frames_pattern(20, 64, 48, 5))
        write_pose_json(os.path.join(root, "pose/test", v + "_alphapose_tracked_person.json"), tracks_for({1: range(20)}))
        np.save(os.path.join(root, "gt/test_frame_mask", v + ".npy"), np.zeros(20, np.uint8))
    cfg = data_cfg(root)
    real, calls = prep.build_shard, []

    def flaky(plan, *a, **k):
        calls.append(plan.item.name)
        if plan.item.name == "01_0002":
            raise KeyboardInterrupt
        return real(plan, *a, **k)
    monkeypatch.setattr(prep, "build_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_split(cfg, "test", progress=False)
    store_dir = os.path.join(root, "prepared", "test")
    assert not os.path.exists(os.path.join(store_dir, "store.json"))
    assert sorted(os.listdir(os.path.join(store_dir, "shards"))) == ["01_0001"]
    calls.clear()
    monkeypatch.setattr(prep, "build_shard", lambda plan, *a, **k: (calls.append(plan.item.name), real(plan, *a, **k)))
    store = prep.prepare_split(cfg, "test", progress=False)
    assert calls == ["01_0002", "01_0003"] and len(store) == 3 * 13


def test_interrupted_shard_leaves_nothing(tmp_path, monkeypatch):
    root = make_shanghaitech(str(tmp_path / "d"))
    monkeypatch.setattr(prep, "crop_squares", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        prep.prepare_split(data_cfg(root), "test", progress=False)
    monkeypatch.undo()
    shards = os.path.join(root, "prepared", "test", "shards")
    assert os.listdir(shards) == []
    store = prep.prepare_split(data_cfg(root), "test", progress=False)
    assert os.listdir(shards) == ["01_0001"] and len(store) == 47


# ----------------------------------------------------------------------------- bad input
def _corrupt(root, what):
    pose = os.path.join(root, "pose/test/01_0001_alphapose_tracked_person.json")
    if what == "missing_pose_dir":
        os.rename(os.path.join(root, "pose/test"), os.path.join(root, "pose/x"))
        return os.path.join(root, "pose/test"), "pose folder not found"
    if what == "missing_frames":
        os.rename(os.path.join(root, "testing/frames/01_0001"), os.path.join(root, "testing/frames/zz"))
        return os.path.join(root, "testing/frames/01_0001"), "test frame folder .* not found"
    if what == "missing_gt":
        os.remove(os.path.join(root, "gt/test_frame_mask/01_0001.npy"))
        return os.path.join(root, "gt/test_frame_mask/01_0001.npy"), "ground-truth file .* not found"
    if what == "json_schema":
        with open(pose, "w") as f:
            json.dump({"1": {"0": {"keypoints": [1] * 51}, "1": "oops"}}, f)
        return pose, 'person \'1\' frame \'1\': expected an object with "keypoints"'
    if what == "kps_length":
        with open(pose, "w") as f:
            json.dump({"1": {"0": {"keypoints": [1.0] * 54, "scores": 1.0}}}, f)
        return pose, "51 numbers .* got 54"
    if what == "gt_length":
        np.save(os.path.join(root, "gt/test_frame_mask/01_0001.npy"), np.zeros(35, np.uint8))
        return os.path.join(root, "gt/test_frame_mask/01_0001.npy"), "ground truth has 35 frames but .* has 36"
    if what == "pose_past_end":
        write_pose_json(pose, tracks_for({1: range(20, 40)}))
        return pose, "person 1 has a pose at frame 39, past the end of .* \\(36 frames\\)"
    if what == "video_decode":
        with open(os.path.join(root, "training/videos/01_001.avi"), "wb") as f:
            f.write(b"RIFF" + os.urandom(3000))
        return os.path.join(root, "training/videos/01_001.avi"), "video does not decode"
    raise ValueError(what)


@pytest.mark.parametrize("what", ["missing_pose_dir", "missing_frames", "missing_gt", "json_schema", "kps_length",
                                  "gt_length", "pose_past_end", "video_decode"])
def test_bad_input_stops_with_one_message(tmp_path, what):
    root = make_shanghaitech(str(tmp_path / "d"), n_train=10)
    path, msg = _corrupt(root, what)
    split = "train" if what == "video_decode" else "test"
    with pytest.raises(DataError, match=msg) as e:
        prep.prepare_split(data_cfg(root), split, progress=False)
    assert str(e.value).startswith(path + ": ")
    store = os.path.join(root, "prepared", split)
    assert not os.path.exists(os.path.join(store, "store.json"))
    assert not os.path.isdir(os.path.join(store, "shards")) or os.listdir(os.path.join(store, "shards")) == []


def test_validation_precedes_decoding(tmp_path, monkeypatch):
    """A bad second video stops the run before the first is decoded."""
    root = make_shanghaitech(str(tmp_path / "d"))
    write_jpegs(os.path.join(root, "testing/frames/01_0002"), frames_pattern(10, 64, 48))
    write_pose_json(os.path.join(root, "pose/test/01_0002_alphapose_tracked_person.json"), tracks_for({1: range(10)}))
    np.save(os.path.join(root, "gt/test_frame_mask/01_0002.npy"), np.zeros(11, np.uint8))
    called = []
    monkeypatch.setattr(prep, "build_shard", lambda *a, **k: called.append(1))
    with pytest.raises(DataError, match="01_0002.npy: ground truth has 11 frames"):
        prep.prepare_split(data_cfg(root), "test", progress=False)
    assert called == []


@pytest.mark.parametrize("cfg,msg", [({"kind": "avi"}, "data.kind must be one of"), ({"seg_len": 0}, "data.seg_len"),
                                     ({"crop_size": None}, "lacks data.crop_size")])
def test_bad_config(tmp_path, cfg, msg):
    with pytest.raises(DataError, match=msg):
        prep.prepare_split({**data_cfg(tmp_path), **cfg}, "test", progress=False)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="dataset root folder not found"):
        prep.prepare_split(data_cfg(tmp_path / "absent"), "test", progress=False)


# ----------------------------------------------------------------------------- other layouts
def test_ubnormal_layout(tmp_path):
    root = str(tmp_path / "ub")
    os.makedirs(os.path.join(root, "Scene3"))
    os.makedirs(os.path.join(root, "pose/test"))
    os.makedirs(os.path.join(root, "gt"))
    for name, gt_normal in (("abnormal_scene_3_scenario_1", True), ("normal_scene_3_scenario_2", False)):
        write_video(os.path.join(root, "Scene3", name + ".mp4"), frames_pattern(24, 64, 48))
        write_pose_json(os.path.join(root, "pose/test", name + "_alphapose_tracked_person.json"), tracks_for({1: range(24)}))
        if gt_normal:
            g = np.ones(24, np.int64)
            g[10:] = 0  # UBnormal convention: 1 = normal
            with open(os.path.join(root, "gt", name + "_tracks.txt"), "wb") as f:
                np.save(f, g)
    store = prep.prepare_split(data_cfg(root, kind="ubnormal"), "test", progress=False)
    assert store.videos == ["abnormal_scene_3_scenario_1", "normal_scene_3_scenario_2"]
    assert store.scenes["abnormal_scene_3_scenario_1"] == "3"
    np.testing.assert_array_equal(store.gt("abnormal_scene_3_scenario_1"), (np.arange(24) >= 10).astype(np.uint8))
    assert store.gt("normal_scene_3_scenario_2").sum() == 0
    lab, fr, vid = store.column("label"), store.column("frame"), store.column("video")
    np.testing.assert_array_equal(lab[vid == 0], (fr[vid == 0] >= 10).astype(int))
    os.remove(os.path.join(root, "gt", "abnormal_scene_3_scenario_1_tracks.txt"))
    with pytest.raises(DataError, match="abnormal_scene_3_scenario_1_tracks.txt: ground-truth file"):
        prep.prepare_split(data_cfg(root, kind="ubnormal", seg_len=4), "test", progress=False)


def test_folder_of_own_videos(tmp_path):
    root = str(tmp_path / "mine")
    os.makedirs(root)
    write_video(os.path.join(root, "cam1.mp4"), frames_pattern(16, 64, 48))
    write_pose_json(os.path.join(root, "cam1.json"), tracks_for({4: range(16)}))
    write_jpegs(os.path.join(root, "cam2"), frames_pattern(12, 64, 48))
    write_pose_json(os.path.join(root, "cam2_alphapose_tracked_person.json"), tracks_for({1: range(12)}))
    np.save(os.path.join(root, "cam2_gt.npy"), np.r_[np.zeros(6), np.ones(6)].astype(np.uint8))
    store = prep.prepare_split(data_cfg(root, kind="folder"), "test", progress=False)
    assert store.videos == ["cam1", "cam2"] and len(store) == 9 + 5
    assert set(store.column("person")[store.column("video") == 0].tolist()) == {4}
    assert store.gt("cam1") is None and store.gt("cam2").sum() == 6
    assert set(store.column("label")[store.column("video") == 0].tolist()) == {-1}
    os.remove(os.path.join(root, "cam1.json"))
    with pytest.raises(DataError, match="cam1_alphapose_tracked_person.json: pose file of video cam1.mp4 not found"):
        prep.prepare_split(data_cfg(root, kind="folder", seg_len=4), "test", progress=False)


def test_video_without_long_enough_tracks(tmp_path):
    root = str(tmp_path / "mine")
    os.makedirs(root)
    write_jpegs(os.path.join(root, "a"), frames_pattern(12, 32, 24))
    write_pose_json(os.path.join(root, "a.json"), tracks_for({1: range(0, 5), 2: range(7, 12)}))
    write_jpegs(os.path.join(root, "b"), frames_pattern(10, 32, 24))
    write_pose_json(os.path.join(root, "b.json"), tracks_for({1: range(10)}))
    store = prep.prepare_split(data_cfg(root, kind="folder"), "test", progress=False)
    assert store.videos == ["a", "b"] and store.num_frames == {"a": 12, "b": 10}
    assert len(store) == 3 and set(store.column("video").tolist()) == {1}
    with open(os.path.join(root, "scenes.json"), "w") as f:
        f.write("[1, 2")
    with pytest.raises(DataError, match="scenes.json: not valid JSON"):
        prep.prepare_split(data_cfg(root, kind="folder", seg_len=4), "test", progress=False)


@pytest.mark.slow
def test_folder_of_videos_without_pose_files_extracts_them(tmp_path):
    pytest.importorskip("mediapipe", reason="the pose extra (pip install -e '.[pose]') is not installed")
    from mgnet.data.pose_estimation import source_path
    from mgnet.data.pose_formats import load_poses
    from tests.data._pose_fixtures import walkers_video
    root = tmp_path / "mine"
    root.mkdir()
    walkers_video(root / "walk.mp4", n=12)
    with pytest.raises(DataError, match="walk_alphapose_tracked_person.json: pose file of video walk.mp4 not found"):
        prep.prepare_split(data_cfg(root, kind="folder"), "test", progress=False)
    cfg = data_cfg(root, kind="folder", pose_estimator="builtin")
    store = prep.prepare_split(cfg, "test", progress=False)
    poses = root / "prepared" / "poses" / "walk.json"
    assert json.loads(source_path(poses).read_text())["settings"]["estimator"] == "builtin"
    tracks = load_poses(poses)
    assert sorted(tracks) == [1, 2]
    # every window of every track of the extracted poses (stride 1, T = 8), its joints in the store
    assert len(store) == sum(len(fr) - T + 1 for fr, _ in tracks.values())
    assert set(store.column("person").tolist()) == {1, 2}
    for i in (0, len(store) - 1):
        x = store[i]
        fr, kp = tracks[int(x["person"])]
        assert (np.diff(fr) == 1).all()  # found in every frame: rows are the track's own frames
        k18 = coco17_to_openpose18(kp[int(x["start"]) - fr[0]:][:T])
        np.testing.assert_allclose(x["pose_conf"].numpy(), k18[..., 2], rtol=1e-6)
        np.testing.assert_allclose(x["pose"].numpy(), normalize_pose(k18[..., :2], (480, 272)).transpose(2, 0, 1),
                                   rtol=1e-5, atol=1e-6)
    # another estimator (or other settings) is another store; the file-based one is unchanged
    files_hash = prep.config_hash(prep.data_config(data_cfg(root, kind="folder")), "test")
    assert prep.config_hash(prep.data_config(cfg), "test") != files_hash
    other = data_cfg(root, kind="folder", pose_estimator="builtin", pose_options={"tiles": 2})
    assert prep.config_hash(prep.data_config(other), "test") != prep.config_hash(prep.data_config(cfg), "test")
    with pytest.raises(DataError, match="data.pose_estimator must be files, builtin or onnx"):
        prep.data_config(data_cfg(root, kind="folder", pose_estimator="alphapose"))
