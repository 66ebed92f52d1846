"""`mgnet score`: identical scores through every pose adapter; on a trained tiny run, every output
written (CSV, JSON with events, timeline PNG, H.264 annotated video, HTML report opened in headless
Chromium), online == offline, and bad input stopped with one message and no output."""
import csv
import json
import shutil

import numpy as np
import pytest

from mgnet.cli import main as cli
from mgnet.data.pose_formats import load_poses, save_poses
from mgnet.data.video import open_frames
from mgnet.inference import ClipSpec, find_pose_file, score_offline, video_inputs
from tests.test_inference import LAMBDAS, STATS, assert_components_live, clip_tracks, tiny_model, write_clip_video
from tests.test_report import dump_dom

ONLINE_ATOL = 5e-5   # fused-score units (z); see test_online_cli_prints_final_frames_in_order_and_equals_offline
VARIANTS = [("alphapose-tracked", {}), ("alphapose-results", {"with_ids": False}),
            ("openpose", {"openpose_layout": "BODY_25", "with_ids": False}),
            ("openpose", {"openpose_layout": "COCO-18", "with_ids": False}), ("mmpose", {"with_ids": False})]


@pytest.mark.slow
def test_every_pose_adapter_gives_identical_scores(tmp_path):
    import warnings
    warnings.filterwarnings("ignore", message=".*Behavior-Scene Matching Memory is empty.*")
    tracks = clip_tracks()
    video = write_clip_video(tmp_path / "clip.mp4", tracks)
    src = open_frames(video)
    model = tiny_model()
    results = {}
    for fmt, kw in VARIANTS:
        name = f"{fmt}-{kw.get('openpose_layout', '')}"
        p = save_poses(tracks, tmp_path / (name if fmt == "openpose" else f"{name}.json"), fmt, num_frames=26, **kw)
        results[name] = score_offline(model, src, load_poses(p), ClipSpec(), STATS, LAMBDAS, batch_size=32)
    ref = results["alphapose-tracked-"]
    assert np.isfinite(ref.score).sum() == 11
    assert_components_live(ref)
    for name, res in results.items():
        np.testing.assert_array_equal(res.score, ref.score, err_msg=name)
        np.testing.assert_array_equal(res.score_minmax, ref.score_minmax, err_msg=name)
        for k in ("app", "mm"):
            np.testing.assert_array_equal(res.components[k], ref.components[k], err_msg=f"{name} S_{k}")
        assert sorted(res.persons) == sorted(ref.persons), name
        for p in ref.persons:
            np.testing.assert_array_equal(res.persons[p], ref.persons[p], err_msg=f"{name} person {p}")


def test_pose_files_are_found_by_video_name(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "p").mkdir()
    for n in ("a", "b"):
        (tmp_path / "v" / f"{n}.mp4").write_bytes(b"")
    (tmp_path / "p" / "a_alphapose_tracked_person.json").write_text("{}")
    (tmp_path / "p" / "b").mkdir()  # an OpenPose folder
    assert [(v.name, p.name) for v, p in video_inputs(tmp_path / "v", tmp_path / "p")] == [
        ("a.mp4", "a_alphapose_tracked_person.json"), ("b.mp4", "b")]
    (tmp_path / "p" / "b.json").write_text("{}")
    with pytest.raises(ValueError, match="several pose files for video 'b'"):
        find_pose_file(tmp_path / "p", "b")
    with pytest.raises(ValueError, match="no poses for video 'c'"):
        find_pose_file(tmp_path / "p", "c")
    with pytest.raises(ValueError, match="--poses must be a folder"):
        video_inputs(tmp_path / "v", tmp_path / "p" / "b.json")


# ----------------------------------------------------------------------------- on a trained run
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run: the synthetic tiny benchmark, two steps per stage."""
    import torch
    threads = torch.get_num_threads()
    d = tmp_path_factory.mktemp("scorerun")
    # one thread: on a busy shared CPU OpenMP's second thread costs more than it gives
    rc = cli(["train", "experiment=tiny", f"train.out={d / 'run'}", f"data.root={d / 'syn'}",
              f"data.cache_dir={d / 'prep'}", "data.train_stride=16", "train.stage1.steps=2",
              "train.stage2.steps=2", "train.stage3.steps=2", "train.device=cpu", "train.threads=1"])
    assert rc == 0
    yield d
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scored(run):
    out = run / "out"
    video = run / "syn" / "testing" / "frames" / "01_0001"
    poses = run / "syn" / "pose" / "test" / "01_0001_alphapose_tracked_person.json"
    rc = cli(["score", "--threads", "1", "--video", str(video), "--poses", str(poses), "--run", str(run / "run"),
              "--out", str(out)])
    assert rc == 0
    return out / "01_0001", video, poses


@pytest.mark.slow
def test_score_writes_every_output(run, scored):
    folder, video, poses = scored
    n = len(open_frames(video))
    assert sorted(p.name for p in folder.iterdir()) == ["annotated.mp4", "frame_scores.csv", "person_scores.csv",
                                                        "report.html", "scores.json", "timeline.png"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    doc = json.loads((folder / "scores.json").read_text())
    stats = json.loads((run / "run" / "score_stats.json").read_text())
    assert doc["threshold"]["value"] == pytest.approx(stats["fused"]["p99"]) and doc["num_frames"] == n
    score = np.array([np.nan if v is None else v for v in doc["frames"]["score"]])
    rows = list(csv.DictReader(open(folder / "frame_scores.csv")))
    assert len(rows) == n
    # the CSV keeps 6 significant digits, scores.json 6 decimals: a small score (0.0157) differs by
    # up to 5e-7 between the two, more than rtol alone allows
    np.testing.assert_allclose([float(r["score"]) if r["score"] else np.nan for r in rows], score, rtol=1e-5,
                               atol=1e-6)
    thr = doc["threshold"]["value"]
    inside = np.zeros(n, bool)
    for e in doc["events"]:
        inside[e["start"]:e["end"] + 1] = True
        assert score[e["peak_frame"]] == pytest.approx(np.nanmax(score[e["start"]:e["end"] + 1]))
        assert e["persons"] and all(str(p) in doc["persons"] for p in e["persons"])
    np.testing.assert_array_equal(inside, np.nan_to_num(score, nan=-np.inf) >= thr)
    # each person's frame score is its clip score; the frame takes the max over persons
    per = np.full((len(doc["persons"]), n), -np.inf)
    for i, p in enumerate(doc["persons"].values()):
        per[i, p["frames"]] = p["score"]
    np.testing.assert_allclose(np.where(np.isfinite(score), score, -np.inf), per.max(0), rtol=1e-5)
    prow = list(csv.DictReader(open(folder / "person_scores.csv")))
    assert len(prow) == sum(len(p["frames"]) for p in doc["persons"].values())

    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(folder / "annotated.mp4"))
    info = next(reader)
    frames = [f for f in reader]
    assert info["codec"] == "h264" and info["pix_fmt"].startswith("yuv420p") and len(frames) == n
    w, h = open_frames(video).size
    assert info["size"][0] >= w and info["size"][1] > h

    dom = dump_dom(folder / "report.html")
    assert '<img id="timeline"' in dom and "data:image/png;base64," in dom
    assert '<video id="annotated"' in dom and 'src="annotated.mp4"' in dom
    assert 'data-loaded="yes"' in dom, "Chromium did not decode the annotated video"
    assert dom.count("<tr>") >= 1 + len(doc["events"])


@pytest.mark.slow
def test_online_cli_prints_final_frames_in_order_and_equals_offline(run, scored, capsys):
    folder, video, poses = scored
    capsys.readouterr()
    out = run / "out_online"
    rc = cli(["score", "--online", "--no-video", "--threads", "1", "--video", str(video), "--poses", str(poses),
              "--run", str(run / "run"), "--out", str(out)])
    assert rc == 0
    printed = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")]
    n = len(open_frames(video))
    assert [int(ln.split(",")[0]) for ln in printed] == list(range(n))
    on = json.loads((out / "01_0001" / "scores.json").read_text())
    off = json.loads((folder / "scores.json").read_text())
    assert on["mode"] == "online" and on["latency_frames"] == ClipSpec().latency == 9
    a = np.array([np.nan if v is None else v for v in on["frames"]["score"]])
    b = np.array([np.nan if v is None else v for v in off["frames"]["score"]])
    # online batches hold one frame's people, offline ones 64 clips: the kernels' float32 rounding
    # differs by a few ulps of a raw score, which the z-score against the training spread
    # magnifies (S_mm's spread is ~2 % of its value): ~1e-5 in fused units, nothing more
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=ONLINE_ATOL, equal_nan=True)
    assert len(on["events"]) == len(off["events"])
    for e, f in zip(on["events"], off["events"]):
        assert {k: v for k, v in e.items() if k != "peak_score"} == {k: v for k, v in f.items() if k != "peak_score"}
        assert e["peak_score"] == pytest.approx(f["peak_score"], rel=1e-5, abs=ONLINE_ATOL)
    assert on["frames_per_second"] > 0
    # the Python iterator API yields the same frames, in order
    from mgnet.inference import iter_scores
    it = list(iter_scores(video, poses, run / "run"))
    assert [fs.frame for fs in it] == list(range(n))
    np.testing.assert_allclose([fs.score for fs in it], a, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert all(set(map(str, fs.persons)) <= set(on["persons"]) for fs in it)
    print(f"online frames/s: {on['frames_per_second']}, offline frames/s: {off['frames_per_second']}")


def _bad(run, tmp_path, video, poses, capsys, run_dir=None):
    capsys.readouterr()
    out = tmp_path / "out"
    rc = cli(["score", "--video", str(video), "--poses", str(poses), "--run", str(run_dir or run / "run"),
              "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("mgnet score: error: ") and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir()), "partial outputs left behind"
    return err


@pytest.mark.slow
def test_bad_input_stops_with_one_message_and_no_output(run, tmp_path, capsys):
    video = run / "syn" / "testing" / "frames" / "01_0001"
    good = run / "syn" / "pose" / "test" / "01_0001_alphapose_tracked_person.json"
    n = len(open_frames(video))
    # a run folder without a finished model
    half = tmp_path / "half"
    shutil.copytree(run / "run", half)
    (half / "checkpoints" / "stage4.pt").unlink()
    assert "stage-4" in _bad(run, tmp_path, video, good, capsys, run_dir=half)
    # an empty pose file
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert f"{empty}: empty pose file" in _bad(run, tmp_path, video, empty, capsys)
    # poses whose frame count exceeds the video
    tracks = load_poses(good)
    pid = next(iter(tracks))
    fr, kp = tracks[pid]
    tracks[pid] = (np.r_[fr, n + 5], np.concatenate([kp, kp[-1:]]))
    far = save_poses(tracks, tmp_path / "far.json", "alphapose-tracked")
    assert f"{far}: poses reach frame {n + 5} but the video {video} has only {n} frames" in _bad(
        run, tmp_path, video, far, capsys)
    # mixed pose formats
    mixed = tmp_path / "mixed.json"
    rows = json.loads(save_poses(tracks, tmp_path / "r.json", "alphapose-results").read_text())
    mixed.write_text(json.dumps(rows[:3] + [{"frame_id": 0, "instances": []}]))
    assert f"{mixed}: mixed pose formats" in _bad(run, tmp_path, video, mixed, capsys)
    # an unknown format
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"people": 3}')
    assert f"{unknown}" in _bad(run, tmp_path, video, unknown, capsys)


@pytest.mark.slow
def test_a_folder_of_videos_with_mixed_pose_formats(run, tmp_path):
    tracks = clip_tracks()
    (tmp_path / "videos").mkdir()
    (tmp_path / "poses").mkdir()
    write_clip_video(tmp_path / "videos" / "cam1.mp4", tracks)
    write_clip_video(tmp_path / "videos" / "cam2.mp4", tracks)
    save_poses(tracks, tmp_path / "poses" / "cam1_alphapose_tracked_person.json", "alphapose-tracked")
    save_poses(tracks, tmp_path / "poses" / "cam2", "openpose", num_frames=26, with_ids=False)
    out = tmp_path / "out"
    rc = cli(["score", "--threads", "1", "--no-video", "--video", str(tmp_path / "videos"), "--poses",
              str(tmp_path / "poses"), "--run", str(run / "run"), "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["cam1", "cam2"]
    a, b = (json.loads((out / n / "scores.json").read_text()) for n in ("cam1", "cam2"))
    assert a["frames"]["score"] == b["frames"]["score"] and sum(v is not None for v in a["frames"]["score"]) == 11
    assert "annotated.mp4" not in {p.name for p in (out / "cam1").iterdir()}


@pytest.mark.slow
def test_best_f1_threshold_from_the_labelled_test_split(run, scored, tmp_path):
    folder, video, poses = scored
    out = tmp_path / "out"
    rc = cli(["score", "--threads", "1", "--no-video", "--threshold", "best-f1", "--video", str(video),
              "--poses", str(poses), "--run", str(run / "run"), "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "01_0001" / "scores.json").read_text())
    thr = doc["threshold"]
    assert np.isfinite(thr["value"]) and thr["source"].startswith("best F1 ")
    assert 0.0 < float(thr["source"].split()[2]) <= 1.0
    score = np.array([np.nan if v is None else v for v in doc["frames"]["score"]])
    inside = np.zeros(len(score), bool)
    for e in doc["events"]:
        inside[e["start"]:e["end"] + 1] = True
    np.testing.assert_array_equal(inside, np.nan_to_num(score, nan=-np.inf) >= thr["value"])


# ----------------------------------------------------------------------------- poses from the video itself
@pytest.mark.slow
def test_score_without_poses_extracts_caches_and_writes_every_output(run, tmp_path, monkeypatch):
    pytest.importorskip("mediapipe", reason="the pose extra (pip install -e '.[pose]') is not installed")
    from tests.data._pose_fixtures import walkers_video
    video = tmp_path / "walk.mp4"
    truth = walkers_video(video)
    given = save_poses(truth, tmp_path / "truth.json", "alphapose-tracked")
    base = ["score", "--threads", "1", "--video", str(video), "--run", str(run / "run")]
    assert cli(base + ["--poses", str(given), "--out", str(tmp_path / "a")]) == 0
    assert cli(base + ["--out", str(tmp_path / "b")]) == 0
    a, b = tmp_path / "a" / "walk", tmp_path / "b" / "walk"
    assert {p.name for p in b.iterdir()} == {p.name for p in a.iterdir()} | {"poses.json", "poses.source.json"}
    assert not [p for p in b.parent.iterdir() if p.name.startswith(".")]
    tracks = load_poses(b / "poses.json")
    assert len(tracks) == 2 and all(len(fr) >= 18 for fr, _ in tracks.values())
    doc = json.loads((b / "scores.json").read_text())
    assert doc["poses"] == str(b / "poses.json") and sorted(doc["persons"]) == ["1", "2"]
    assert sum(v is not None for v in doc["frames"]["score"]) > 0
    src = json.loads((b / "poses.source.json").read_text())
    assert src["settings"]["estimator"] == "builtin" and src["extraction"]["frames"] == 20

    # a second run reuses the cached poses (the estimator is never called) and keeps them in place
    from mgnet.data.pose_estimation import builtin

    def boom(self, frame, index=None):
        raise AssertionError("poses extracted again")
    monkeypatch.setattr(builtin.BlazePoseEstimator, "__call__", boom)
    before = (b / "poses.json").read_bytes()
    assert cli(base + ["--out", str(tmp_path / "b"), "--no-video"]) == 0
    assert (b / "poses.json").read_bytes() == before and (b / "poses.source.json").is_file()
    # and the cached file is a pose file like any other
    assert cli(base + ["--poses", str(b / "poses.json"), "--out", str(tmp_path / "c"), "--no-video"]) == 0
    c = json.loads((tmp_path / "c" / "walk" / "scores.json").read_text())
    assert c["frames"]["score"] == json.loads((b / "scores.json").read_text())["frames"]["score"]


def test_score_without_the_pose_extra_says_which_pip_install(run, tmp_path, monkeypatch, capsys):
    import sys
    from mgnet.data.pose_estimation import POSE_EXTRA
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    video = run / "syn" / "testing" / "frames" / "01_0001"
    capsys.readouterr()
    rc = cli(["score", "--video", str(video), "--run", str(run / "run"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("mgnet score: error")]
    assert len(lines) == 1 and POSE_EXTRA in lines[0] and "'mediapipe'" in lines[0]
    assert not (tmp_path / "o").exists()
    # the onnx estimator's model files are checked before anything runs too
    missing = tmp_path / "rtmpose.onnx"
    rc = cli(["score", "--video", str(video), "--run", str(run / "run"), "--out", str(tmp_path / "o"),
              "--pose-model", str(missing)])
    assert rc == 2 and f"{missing}: ONNX model file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_components_is_an_online_option(tmp_path, capsys):
    """--components chooses what online scoring computes; offline scoring computes every component,
    so the option alone stops with one message naming it (before anything is loaded)."""
    rc = cli(["score", "--components", "all", "--video", str(tmp_path / "v.mp4"), "--poses", str(tmp_path / "p.json"),
              "--run", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "--components applies to --online" in err and not (tmp_path / "out").exists()
    assert cli(["score", "--online", "--components", "some", "--video", "v.mp4"]) == 2
    assert "argument --components: invalid choice: 'some'" in capsys.readouterr().err
