"""Fuzzed readers: every reader of a file a user (or a killed job) can hand us meets random
truncations, wrong types, NaN and inf, huge and negative values, wrong keypoint counts and
unicode names. The only exception that may leave it is the project's own error (DataError; a
run's config.yaml: ConfigError), and its message names the file. A valid document still reads.

``MGNET_FUZZ_EXAMPLES`` (default 200) sets the examples per reader; runs are derandomised (the
same examples every run) unless ``MGNET_FUZZ_RANDOM=1``.
"""
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from mgnet import config_schema, runs
from mgnet.data import datasets
from mgnet.data.errors import DataError
from mgnet.data.pose_formats import load_poses
from mgnet.data.poses import read_pose_json
from mgnet.inference import load_score_stats

EXAMPLES = int(os.environ.get("MGNET_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=os.environ.get("MGNET_FUZZ_RANDOM") != "1",
                suppress_health_check=list(HealthCheck))

# ---------------------------------------------------------------- values and mutations
SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, -1, -(2 ** 63), 2 ** 64, 10 ** 30, 1e308, -1e308,
                           0, "", "ü名🙂", "12", [], {}, None, True, [0.0] * 50, [1.0] * 52, [[1.0, 2.0]] * 16])
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))
ANY_JSON = st.recursive(SCALAR, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                        max_leaves=10)
NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\:"), min_size=1,
               max_size=8).filter(lambda s: s not in (".", "..") and len(s.encode()) < 100)
COORD = st.floats(0.0, 500.0, width=32)


def _mutate(data, doc):
    """Replace or delete one random node of a copy of a JSON tree (or keep it, one draw in six)."""
    doc = json.loads(json.dumps(doc))
    op = data.draw(st.sampled_from(["keep", "replace", "replace", "special", "special", "delete"]))
    if op == "keep":
        return doc
    path, node = [], doc
    while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 3)) > 0:
        key = data.draw(st.sampled_from(sorted(node, key=str) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    if not path:
        return data.draw(ANY_JSON if op != "special" else SPECIAL)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if op == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(ANY_JSON if op == "replace" else SPECIAL)
    return doc


def _serialise(data, obj) -> bytes:
    """JSON (NaN/Infinity tokens allowed), then maybe truncated or spoiled by non-UTF-8 bytes."""
    raw = json.dumps(obj, allow_nan=True).encode()
    how = data.draw(st.sampled_from(["whole", "whole", "whole", "truncate", "bytes"]))
    if how == "truncate":
        return raw[:data.draw(st.integers(0, max(0, len(raw) - 1)))]
    if how == "bytes":
        at = data.draw(st.integers(0, len(raw)))
        return raw[:at] + data.draw(st.sampled_from([b"\xff\xfe", b"\x00", b"\xc3"])) + raw[at:]
    return raw


def _expect_project_error(read, path, errors=(DataError,)):
    """``read()`` returns, or raises one of ``errors`` whose message names ``path``."""
    try:
        return read(), None
    except errors as e:
        assert os.fspath(path) in str(e), f"message does not name {path}: {e}"
        assert "\n" not in str(e)
        return None, e


def _check_tracks(tracks):
    for pid, (frames, kps) in tracks.items():
        assert isinstance(pid, int)
        assert frames.dtype == np.int64 and (frames >= 0).all() and (np.diff(frames) > 0).all()
        assert kps.dtype == np.float32 and kps.shape == (len(frames), 17, 3) and np.isfinite(kps).all()


# ---------------------------------------------------------------- valid documents
@st.composite
def detections(draw, max_people=3, max_frames=4):
    """[(person id, frame, 17 x [x, y, s])]: distinct (person, frame) pairs."""
    people = draw(st.lists(st.integers(0, 50), min_size=1, max_size=max_people, unique=True))
    out = []
    for p in people:
        for f in draw(st.lists(st.integers(0, 300), min_size=1, max_size=max_frames, unique=True)):
            out.append((p, f, [[draw(COORD), draw(COORD), draw(st.floats(0, 1, width=32))]] * 17))
    return out


def _alphapose_tracked(dets):
    doc = {}
    for p, f, kp in dets:
        doc.setdefault(str(p), {})[str(f)] = {"keypoints": [v for j in kp for v in j], "scores": 0.9}
    return doc


def _alphapose_results(dets):
    return [{"image_id": f"{f}.jpg", "keypoints": [v for j in kp for v in j], "score": 0.9, "idx": p}
            for p, f, kp in dets]


def _mmpose(dets, wrapped):
    frames = {}
    for p, f, kp in dets:
        frames.setdefault(f, []).append({"keypoints": [j[:2] for j in kp], "keypoint_scores": [j[2] for j in kp],
                                         "bbox": [[0, 0, 10, 10]], "bbox_score": 0.9, "track_id": p})
    if wrapped:
        return {"meta_info": {}, "instance_info": [{"frame_id": f + 1, "instances": v} for f, v in sorted(frames.items())]}
    return [{"frame_id": f, "instances": v} for f, v in sorted(frames.items())]


def _tmp():
    return tempfile.TemporaryDirectory(prefix="mgnet-fuzz-")


# ---------------------------------------------------------------- pose readers
@pytest.mark.parametrize("fmt", ["alphapose-tracked", "alphapose-results", "mmpose", "mmpose-wrapped"])
@FUZZ
@given(data=st.data(), dets=detections(), name=NAME)
def test_json_pose_readers(fmt, data, dets, name):
    doc = {"alphapose-tracked": _alphapose_tracked, "alphapose-results": _alphapose_results,
           "mmpose": lambda d: _mmpose(d, False), "mmpose-wrapped": lambda d: _mmpose(d, True)}[fmt](dets)
    with _tmp() as d:
        path = Path(d) / f"{name}.json"
        raw = _serialise(data, _mutate(data, doc))
        path.write_bytes(raw)
        want = "auto" if data.draw(st.booleans()) else fmt.replace("-wrapped", "")
        tracks, err = _expect_project_error(lambda: load_poses(path, want), path)
        if tracks is not None:
            _check_tracks(tracks)
        if raw == json.dumps(doc).encode():   # untouched: it must read
            assert err is None, err
            assert sum(len(fr) for fr, _ in tracks.values()) == len(dets)


@FUZZ
@given(data=st.data(), dets=detections(), body25=st.booleans(), name=NAME)
def test_openpose_folder_reader(data, dets, body25, name):
    n = 25 if body25 else 18
    with _tmp() as d:
        folder = Path(d) / name
        folder.mkdir()
        frames = {}
        for p, f, kp in dets:
            vals = [v for j in (kp + kp)[:n] for v in j]
            frames.setdefault(f, []).append({"pose_keypoints_2d": vals, "person_id": [p]})
        docs = {f: {"version": 1.3, "people": people} for f, people in frames.items()}
        victim = data.draw(st.sampled_from(sorted(docs)))
        mutated = False
        for f, doc in docs.items():
            raw = json.dumps(doc).encode()
            if f == victim:
                spoiled = _serialise(data, _mutate(data, doc))
                mutated = spoiled != raw
                raw = spoiled
            (folder / f"{name}_{f:012d}_keypoints.json").write_bytes(raw)
        tracks, err = _expect_project_error(lambda: load_poses(folder), folder)
        if tracks is not None:
            _check_tracks(tracks)
        if not mutated:
            assert err is None, err


@FUZZ
@given(data=st.data(), dets=detections(), name=NAME)
def test_alphapose_tracked_reader_of_prepare(data, dets, name):
    """mgnet.data.poses.read_pose_json: what `mgnet prepare` reads."""
    with _tmp() as d:
        path = Path(d) / f"{name}_alphapose_tracked_person.json"
        doc = _alphapose_tracked(dets)
        raw = _serialise(data, _mutate(data, doc))
        path.write_bytes(raw)
        tracks, err = _expect_project_error(lambda: read_pose_json(path), path)
        for t in tracks or []:
            assert t.kps.shape == (len(t.frames), 17, 3) and np.isfinite(t.kps).all() and (t.frames >= 0).all()
        if raw == json.dumps(doc).encode():
            assert err is None, err


# ---------------------------------------------------------------- ground truth
ARRAYS = st.one_of(
    st.lists(st.integers(0, 1), min_size=0, max_size=40).map(lambda v: np.asarray(v, np.uint8)),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=40).map(np.asarray),
    st.lists(st.integers(-2 ** 62, 2 ** 62), max_size=40).map(lambda v: np.asarray(v, np.int64)),
    st.lists(st.text(max_size=3), max_size=10).map(lambda v: np.asarray(v, dtype=str)),
    st.lists(st.booleans(), max_size=20).map(np.asarray),
    st.lists(st.integers(0, 1), min_size=4, max_size=40).map(lambda v: np.asarray(v, np.float32).reshape(-1, 2)
                                                             if len(v) % 2 == 0 else np.asarray(v)),
)


def _array_bytes(data, a) -> bytes:
    import io
    how = data.draw(st.sampled_from(["npy", "npy", "text", "truncate", "junk"]))
    if how == "text":
        return "\n".join(str(x) for x in a.reshape(-1)).encode()
    buf = io.BytesIO()
    np.save(buf, a)
    raw = buf.getvalue()
    if how == "truncate":
        return raw[:data.draw(st.integers(0, max(0, len(raw) - 1)))]
    if how == "junk":
        return data.draw(st.binary(max_size=64))
    return raw


@pytest.mark.parametrize("ubnormal", [False, True], ids=["shanghaitech-npy", "ubnormal-tracks-txt"])
@FUZZ
@given(data=st.data(), arr=ARRAYS, n=st.integers(0, 40), name=NAME)
def test_ground_truth_readers(ubnormal, data, arr, n, name):
    """ShanghaiTech test_frame_mask/<vid>.npy and UBnormal gt/<vid>_tracks.txt (1 = normal)."""
    with _tmp() as d:
        path = Path(d) / (f"{name}_tracks.txt" if ubnormal else f"{name}.npy")
        path.write_bytes(_array_bytes(data, arr))
        item = datasets.VideoItem(name, "frames", "pose.json", gt=str(path), gt_normal_is_one=ubnormal)
        gt, _ = _expect_project_error(lambda: datasets.load_gt(item, n), path)
        if gt is not None:
            assert gt.dtype == np.uint8 and gt.shape == (n,) and np.isin(gt, (0, 1)).all()
        types_item = datasets.VideoItem(name, "frames", "pose.json", types=str(path))
        types, _ = _expect_project_error(lambda: datasets.load_types(types_item, n), path)
        if types is not None:
            assert types.dtype == np.int64 and types.shape == (n,) and (types >= 0).all()


def test_ground_truth_reader_accepts_valid_files(tmp_path):
    np.save(tmp_path / "a.npy", np.array([0, 1, 1], np.uint8))
    np.savetxt(tmp_path / "a_tracks.txt", np.array([1, 0, 1]))
    assert datasets.load_gt(datasets.VideoItem("a", "", "", gt=str(tmp_path / "a.npy")), 3).tolist() == [0, 1, 1]
    item = datasets.VideoItem("a", "", "", gt=str(tmp_path / "a_tracks.txt"), gt_normal_is_one=True)
    assert datasets.load_gt(item, 3).tolist() == [0, 1, 0]


# ---------------------------------------------------------------- scenes.json, score_stats.json
@FUZZ
@given(data=st.data(), scenes=st.dictionaries(NAME, st.one_of(st.text(max_size=4), st.integers(0, 9)), max_size=3))
def test_scenes_json_reader(data, scenes):
    with _tmp() as d:
        root = Path(d)
        (root / "clip.mp4").write_bytes(b"")
        (root / "clip_alphapose_tracked_person.json").write_text("{}")
        doc = {"clip": "7", **scenes}
        raw = _serialise(data, _mutate(data, doc))
        (root / "scenes.json").write_bytes(raw)
        items, err = _expect_project_error(lambda: datasets.folder_videos(root, "test"), root / "scenes.json")
        if items is not None:
            assert [it.name for it in items] == ["clip"] and isinstance(items[0].scene, str)
        if raw == json.dumps(doc).encode():
            assert err is None and items[0].scene == "7"


@FUZZ
@given(data=st.data(), lo=st.floats(-10, 10), span=st.floats(0, 10))
def test_score_stats_reader(data, lo, span):
    st_ = {"min": lo, "max": lo + span, "mean": lo, "std": 1.0, "p50": lo, "p90": lo, "p95": lo, "p99": lo + span}
    doc = {k: dict(st_) for k in ("mo", "app", "mm", "nll", "fused")}
    doc.update(lambdas={"app": 1.0, "mm": 1.0}, split="train")
    with _tmp() as d:
        path = Path(d) / "score_stats.json"
        raw = _serialise(data, _mutate(data, doc))
        path.write_bytes(raw)
        stats, err = _expect_project_error(lambda: load_score_stats(d), path)
        if stats is not None:
            for k in ("mo", "app", "mm", "fused"):
                assert math.isfinite(stats[k]["min"]) and stats[k]["min"] <= stats[k]["max"]
        if raw == json.dumps(doc).encode():
            assert err is None, err


# ---------------------------------------------------------------- a run's config.yaml
@pytest.fixture(scope="module")
def run_config():
    return runs.to_container(runs.compose_config(["experiment=tiny", "train.out=runs/x"]))


def test_config_yaml_reader(run_config):
    @FUZZ
    @given(data=st.data())
    def fuzz(data):
        doc = json.loads(json.dumps(run_config))
        doc = _mutate(data, doc)
        with _tmp() as d:
            path = Path(d) / "config.yaml"
            if data.draw(st.booleans()):
                text = OmegaConf.to_yaml(OmegaConf.create(doc)) if isinstance(doc, dict) else json.dumps(doc)
            else:
                text = json.dumps(doc, allow_nan=True)   # JSON is YAML too
            raw = text.encode()
            how = data.draw(st.sampled_from(["whole", "whole", "truncate", "bytes"]))
            if how == "truncate":
                raw = raw[:data.draw(st.integers(0, max(0, len(raw) - 1)))]
            elif how == "bytes":
                raw = raw[:len(raw) // 2] + b"\xff" + raw[len(raw) // 2:]
            path.write_bytes(raw)
            cfg, err = _expect_project_error(lambda: config_schema.load_run_config(path), path,
                                             (config_schema.ConfigError,))
            if doc == run_config and how == "whole":
                assert err is None, err
    fuzz()
