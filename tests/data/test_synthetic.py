"""The synthetic benchmark: layout read by the ShanghaiTech reader, determinism, and that each
anomaly type is carried by its own signal (appearance: saturated object in the crop; scene: the
behaviour training showed in one scene only)."""
import json
import os
import time

import numpy as np
import pytest

from mgnet import cli
from mgnet.data import datasets, prepare, synthetic
from mgnet.data.errors import DataError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("syn") / "tiny")
    t = time.time()
    meta = synthetic.generate(root, "tiny", seed=3)
    return root, meta, time.time() - t


@pytest.fixture(scope="module")
def stores(tiny):
    root = tiny[0]
    cfg = dict(kind="synthetic", root=root, seg_len=16, train_stride=4, test_stride=1, crop_size=64, scene_size=64,
               synth={"size": "tiny", "seed": 3})
    return prepare.prepare_split(cfg, "train", progress=False), prepare.prepare_split(cfg, "test", progress=False)


def test_tiny_is_fast_and_complete(tiny):
    root, meta, seconds = tiny
    assert seconds < 30
    names = synthetic.video_names("tiny")
    train = datasets.list_videos("shanghaitech", root, "train")
    test = datasets.list_videos("shanghaitech", root, "test")
    assert [v.name for v in train] == names["train"] and [v.name for v in test] == names["test"]
    assert all(v.frames.endswith(".avi") for v in train) and all(os.path.isdir(v.frames) for v in test)
    assert {v.scene for v in train} == {"01", "02"} and all(v.types for v in test)
    assert datasets.type_names("shanghaitech", root) == synthetic.TYPE_NAMES
    kinds = set()
    for v in test:
        gt, types = np.load(v.gt), np.load(v.types)
        np.testing.assert_array_equal(gt, (types > 0).astype(np.uint8))
        kinds |= set(np.unique(types).tolist())
        assert len(gt) == synthetic.SIZES["tiny"]["test_frames"] == len(os.listdir(v.frames))
    assert kinds == {0, 1, 2, 3}


def test_same_seed_same_video(tmp_path):
    outs = []
    for k, seed in enumerate((5, 5, 6)):
        d = tmp_path / str(k)
        for sub in ("testing/frames", "pose/test", "gt/test_frame_mask", "gt/test_frame_types"):
            os.makedirs(d / sub)
        synthetic._make_video((str(d), "tiny", seed, "test", "01_0002"))
        outs.append(((d / "pose/test/01_0002_alphapose_tracked_person.json").read_text(),
                     np.load(d / "gt/test_frame_types/01_0002.npy"), (d / "testing/frames/01_0002/040.jpg").read_bytes()))
    assert outs[0][0] == outs[1][0] and outs[0][2] == outs[1][2]
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert outs[0][0] != outs[2][0]


def test_missed_detections_and_noise(tiny):
    root = tiny[0]
    with open(os.path.join(root, "pose/train/01_001_alphapose_tracked_person.json")) as f:
        data = json.load(f)
    gaps = 0
    for frames in data.values():
        fr = np.array(sorted(int(k) for k in frames))
        gaps += int((np.diff(fr) > 1).sum())
        kp = np.array([frames[str(f)]["keypoints"] for f in fr]).reshape(len(fr), 17, 3)
        assert (kp[..., 2] > 0).all() and (kp[..., 2] < 1).all()
    assert gaps > 0


def _saturated_fraction(rgb):
    x = rgb.numpy().astype(int)
    return float(((x.max(0) - x.min(0)) > 180).mean())


def test_appearance_anomaly_is_a_saturated_object_in_the_crop(tiny, stores):
    _, meta, _ = tiny
    test = stores[1]
    vid, person, label = test.column("video"), test.column("person"), test.column("label")
    carrier, others = [], []
    rng = np.random.default_rng(0)
    for v, name in enumerate(test.videos):
        m = meta["videos"][name]
        if m["event"][0] == "appearance":
            idx = np.nonzero((vid == v) & (person == m["abnormal_people"][0]) & (label == 1))[0]
            carrier += [_saturated_fraction(test[int(i)]["rgb"]) for i in rng.choice(idx, 5)]
        else:
            idx = np.nonzero(vid == v)[0]
            others += [_saturated_fraction(test[int(i)]["rgb"]) for i in rng.choice(idx, 5)]
    assert min(carrier) > 0.03 and max(others) < 0.01


def _behaviour(pose):
    """('sit' | 'wave' | 'other') from a window's normalised pose (2, T, 18), by median over frames."""
    y = pose[1].numpy()
    nose, wrists, hips, ankles = y[:, 0], y[:, [4, 7]].min(1), y[:, [8, 11]].mean(1), y[:, [10, 13]].mean(1)
    if np.median(wrists < nose - 0.2) == 1:
        return "wave"
    if np.median((ankles - hips) / (ankles - nose)) < 0.45:
        return "sit"
    return "other"


def test_scene_specific_behaviours(tiny, stores):
    train, test = stores
    scene = {v: train.scenes[n] for v, n in enumerate(train.videos)}
    seen = {"sit": set(), "wave": set()}
    for i in range(0, len(train), 2):
        x = train[i]
        b = _behaviour(x["pose"])
        if b in seen:
            seen[b].add(scene[int(x["video"])])
    assert seen == {"sit": {"01"}, "wave": {"02"}}
    _, meta, _ = tiny
    types = {n: test.anomaly_types(n) for n in test.videos}
    found = 0
    for v, name in enumerate(test.videos):
        m = meta["videos"][name]
        if m["event"][0] != "scene":
            continue
        idx = np.nonzero((test.column("video") == v) & (test.column("person") == m["abnormal_people"][0]))[0]
        bs = [_behaviour(test[int(i)]["pose"]) for i in idx if types[name][test.column("frame")[i]] == 3]
        assert bs.count(m["event"][1]) > len(bs) / 2
        found += 1
    assert found >= 2


def test_store_labels_follow_gt(stores):
    train, test = stores
    assert (train.column("label") == -1).all()
    for i in range(0, len(test), 97):
        x = test[i]
        name = test.videos[int(x["video"])]
        assert int(x["label"]) == test.gt(name)[int(x["frame"])]
    assert test.type_names[3] == "scene"


def test_cli(tiny, capsys):
    root = tiny[0]
    assert cli.main(["synth", "--out", root, "--size", "tiny", "--seed", "3"]) == 0  # same: kept as is
    assert cli.main(["synth", "--out", root, "--size", "tiny", "--seed", "4"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert cli.main(["prepare", f"data.root={root}", "data.synth.size=tiny", "data.synth.seed=3", "data.splits=[test]"]) == 0
    assert "mgnet prepare: test:" in capsys.readouterr().out
    assert cli.main(["prepare", "data=shanghaitech", f"data.root={root}/nope"]) == 2
    assert "nope: dataset root folder not found" in capsys.readouterr().err


def test_bad_size(tmp_path):
    with pytest.raises(DataError, match="--size must be one of"):
        synthetic.generate(tmp_path / "x", "huge")


def test_stale_synthetic_root_is_regenerated(tmp_path, monkeypatch, capsys):
    root = tmp_path / "syn"
    os.makedirs(root)
    calls = []
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: calls.append((a, k)))
    cfg = prepare.data_config(dict(kind="synthetic", root=str(root), seg_len=16, train_stride=4, test_stride=1,
                                   crop_size=64, scene_size=64, synth={"size": "tiny", "seed": 1}))
    for version, expect in ((synthetic.VERSION, 0), (synthetic.VERSION - 1, 1)):
        (root / "synth.json").write_text(json.dumps({"size": "tiny", "seed": 1, "version": version}))
        prepare._ensure_synthetic(cfg, progress=False)
        assert len(calls) == expect
        err = capsys.readouterr().err
        if expect:  # replacing a folder is said even without progress output
            assert f"generator version {synthetic.VERSION - 1}; replacing it with tiny, seed 1, version " \
                   f"{synthetic.VERSION}" in err and str(root) in err
        else:
            assert err == ""
    assert calls[0][1] == {"force": True, "variant": "default"}
    h = prepare.config_hash(cfg, "train")
    monkeypatch.setattr(prepare, "SYNTH_VERSION", synthetic.VERSION + 1)
    assert prepare.config_hash(cfg, "train") != h


def test_older_version_regenerated_other_size_refused(tmp_path, monkeypatch):
    out = tmp_path / "s"
    os.makedirs(out)
    (out / "synth.json").write_text(json.dumps({"size": "tiny", "seed": 0, "version": synthetic.VERSION - 1}))
    monkeypatch.setattr(synthetic, "video_names", lambda size: {"train": [], "test": []})  # no videos: fast
    meta = synthetic.generate(out, "tiny", 0)
    assert meta["version"] == synthetic.VERSION and json.loads((out / "synth.json").read_text())["version"] == synthetic.VERSION
    with pytest.raises(DataError, match="pass --force"):
        synthetic.generate(out, "tiny", 1)
