"""Online scoring: each frame emitted `latency` frames after it arrives, with exactly the scores of
offline scoring under the same (training-statistics) normalisation; clips cut like training's."""
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mgnet.data.pose_formats import save_poses
from mgnet.data.video import open_frames
from mgnet import scoring
from mgnet.engine import score_batch
from mgnet.inference import ClipSpec, OnlineScorer, fused_scores, load_score_stats, offline_batches, score_offline, score_online

W, H = 128, 96
# a COCO-17 standing skeleton ~50 px tall around (0, 0)
SKEL = np.array([[0, -23], [-2, -25], [2, -25], [-4, -24], [4, -24], [-7, -16], [7, -16], [-9, -6], [9, -6],
                 [-10, 2], [10, 2], [-4, 3], [4, 3], [-4, 13], [4, 13], [-4, 24], [4, 24]], np.float32)
STATS = {"mo": {"min": 0.0, "max": 40.0}, "app": {"min": 0.0, "max": 1.0}, "mm": {"min": 0.0, "max": 1e-3}}
LAMBDAS = {"app": 1.0, "mm": 1.0}


def clip_tracks(num_frames=26):
    """Person 1 walks right with a 2-frame gap (interpolated); person 2 walks left with a 4-frame
    gap (splits the track); person 3 is short-lived. Ids in order of first appearance."""
    rng = np.random.default_rng(1)

    def walk(frames, x0, y0, vx):
        t = (np.asarray(frames) - frames[0])[:, None, None]
        xy = SKEL[None] + np.array([x0, y0], np.float32) + np.concatenate([vx * t, 0 * t], -1)
        xy += rng.normal(0, 0.4, xy.shape)
        sc = rng.uniform(0.4, 0.95, (len(frames), 17, 1))
        return np.concatenate([np.round(xy, 2), np.round(sc, 3)], -1).astype(np.float32)

    f1 = np.array([f for f in range(num_frames) if f not in (11, 12)], np.int64)
    f2 = np.array([f for f in range(2, num_frames) if f not in range(20, 24)], np.int64)
    f3 = np.arange(5, 12, dtype=np.int64)
    return {1: (f1, walk(f1, 24, 40, 1.5)), 2: (f2, walk(f2, 104, 52, -1.5)), 3: (f3, walk(f3, 64, 70, 0.0))}


def write_clip_video(path, tracks, num_frames=26, fps=10):
    """An H.264 mp4 of stick figures drawn from the tracks over a textured background."""
    import imageio_ffmpeg
    yy, xx = np.mgrid[0:H, 0:W]
    bg = np.stack([(xx * 2) % 256, (yy * 2) % 256, ((xx + yy) * 3) % 256], -1).astype(np.uint8)
    w = imageio_ffmpeg.write_frames(str(path), (W, H), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                    macro_block_size=2, quality=None, output_params=["-crf", "18"],
                                    ffmpeg_log_level="error")
    w.send(None)
    from mgnet.report.annotated_video import COCO17_EDGES
    for f in range(num_frames):
        img = Image.fromarray(bg.copy())
        d = ImageDraw.Draw(img)
        for pid, (fr, kp) in tracks.items():
            hit = np.flatnonzero(fr == f)
            if hit.size:
                k = kp[hit[0]]
                for a, b in COCO17_EDGES:
                    d.line([tuple(k[a, :2]), tuple(k[b, :2])], fill=(255, 255, 255), width=3)
        w.send(np.asarray(img))
    w.close()
    return path


def tiny_model():
    """A narrow MGNet (these tests check plumbing, not accuracy) whose stage-4 memories are written
    from a made-up batch, so that S_app and S_mm are not identically 0 (an empty memory scores 0
    and would let a comparison of those components pass whatever they were computed from)."""
    from mgnet.models.config import ModelConfig
    from mgnet.models.example import example_batch
    from mgnet.models.mgnet import MGNet
    torch.manual_seed(0)
    cfg = ModelConfig.small()
    cfg.embed_dim, cfg.depth, cfg.heads, cfg.head_hidden, cfg.c_app = 32, 1, 2, 32, 32
    cfg.flow_steps, cfg.flow_hidden = 2, 8
    model = MGNet(cfg)
    model.set_stage(4)
    with torch.no_grad():
        model.bsmm_write(example_batch(cfg, 64, seed=1))
        model.bsmm_finish()
    return model.eval()


def assert_components_live(res):
    """S_app and S_mm of a scored video are finite and not all 0 (see tiny_model)."""
    for k in ("app", "mm"):
        v = res.components[k][np.isfinite(res.components[k])]
        assert v.size and np.abs(v).max() > 0, f"S_{k} is identically 0"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("online")
    tracks = clip_tracks()
    video = write_clip_video(d / "clip.mp4", tracks)
    save_poses(tracks, d / "clip.json", "alphapose-tracked")
    return d, video, tracks


@pytest.fixture(scope="module")
def model():
    import warnings
    warnings.filterwarnings("ignore", message=".*Behavior-Scene Matching Memory is empty.*")
    return tiny_model()


def _raw_of_first_clip(model, src, tracks, spec):
    """Raw scores of person 1's clip centred on frame 8."""
    for batch in offline_batches(src, tracks, spec, 64):
        raw = score_batch(model, batch, "cpu")
        j = np.flatnonzero((batch["person"].numpy() == 1) & (batch["frame"].numpy() == 8))
        if len(j):
            return {k: v[j[0]] for k, v in raw.items()}
    raise AssertionError("no clip of person 1 centred on frame 8")


# z-score fusion (the default since score_stats.json records "fusion"), with the segment memory's S_pose
STATS_Z = {"mo": {"mean": 20.0, "std": 4.0}, "app": {"mean": 0.5, "std": 0.1}, "mm": {"mean": 0.0, "std": 1e-3},
           "pose": {"mean": 30.0, "std": 5.0}, "fusion": {"norm": "z", "combine": "sum"}}


@pytest.mark.parametrize("stats", [STATS, STATS_Z], ids=["train-minmax", "z"])
def test_online_scores_equal_offline_scores_under_training_normalisation(clip, model, stats):
    d, video, tracks = clip
    src = open_frames(video)
    spec = ClipSpec()
    if "pose" in stats and not model.seg_mem.is_fitted:   # normal segments: a person walking right
        g = torch.Generator().manual_seed(0)
        model.seg_mem.fit(torch.randn(64, model.seg_mem.slots.shape[1], generator=g), torch.arange(64))
    off = score_offline(model, src, tracks, spec, stats, LAMBDAS, batch_size=5)
    on = score_online(model, src, tracks, spec, stats, LAMBDAS, batch_size=64)
    assert len(off.score) == len(on.score) == 26
    np.testing.assert_array_equal(np.isnan(off.score), np.isnan(on.score))
    assert np.isfinite(off.score).sum() == 11
    assert_components_live(off)
    np.testing.assert_allclose(on.score, off.score, rtol=1e-6, equal_nan=True)
    assert sorted(on.persons) == sorted(off.persons) == [1, 2]  # person 3 never has 16 frames
    for p in off.persons:
        np.testing.assert_allclose(on.persons[p], off.persons[p], rtol=1e-6, equal_nan=True)
    for k in ("mo", "app", "mm", "nll"):
        np.testing.assert_allclose(on.components[k], off.components[k], rtol=1e-6, equal_nan=True)
    if "pose" in stats:   # the fused score includes S_pose: one person's frame score by hand
        raw = {k: np.array([v]) for k, v in _raw_of_first_clip(model, src, tracks, spec).items()}
        want = sum(float(scoring.zscore(raw[k], stats[k]["mean"], stats[k]["std"])[0]) * LAMBDAS.get(k, 1.0)
                   for k in ("mo", "app", "mm", "pose"))
        assert off.persons[1][8] == pytest.approx(want, rel=1e-5)
    # person 1: frames 0..25 (gap 11-12 filled) -> windows starting 0..10 -> centres 8..18
    np.testing.assert_array_equal(np.flatnonzero(np.isfinite(off.persons[1])), np.arange(8, 19))
    # person 2: 2..19 before its 4-frame gap (split) -> windows starting 2..4 -> centres 10..12
    np.testing.assert_array_equal(np.flatnonzero(np.isfinite(off.persons[2])), np.arange(10, 13))


def test_an_identity_switch_splits_the_track_online_as_offline(clip, model):
    """Person 1's track moves 40 px (0.8 of its ~50 px box) from frame 15 to 16: a tracker identity
    switch. Both paths end its segment at frame 15 (one window, centre 8); with max_jump=0 the
    track stays whole (centres 8..18)."""
    d, video, tracks = clip
    src = open_frames(video)
    fr, kp = tracks[1]
    kp = kp.copy()
    kp[fr >= 16, :, 0] += 40.0
    switched = {**tracks, 1: (fr, kp)}
    for spec, centres in ((ClipSpec(), [8]), (ClipSpec(max_jump=0.0), list(range(8, 19)))):
        off = score_offline(model, src, switched, spec, STATS, LAMBDAS, batch_size=5)
        on = score_online(model, src, switched, spec, STATS, LAMBDAS, batch_size=64)
        assert np.flatnonzero(np.isfinite(off.persons[1])).tolist() == centres
        np.testing.assert_allclose(on.persons[1], off.persons[1], rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(on.score, off.score, rtol=1e-6, equal_nan=True)


def test_frames_are_emitted_exactly_latency_frames_late(clip, model):
    d, video, tracks = clip
    src = open_frames(video)
    spec = ClipSpec()
    assert spec.latency == 16 - 1 - 8 + 2 == 9 and spec.latency < spec.seg_len
    scorer = OnlineScorer(model, STATS, LAMBDAS, src.size, spec)
    frames = src.get(np.arange(len(src)))
    emitted_at = {}
    for f in range(len(src)):
        poses = {p: kp[list(fr).index(f)] for p, (fr, kp) in tracks.items() if f in fr}
        for fs in scorer.push(f, frames[f], poses):
            emitted_at[fs.frame] = f
    tail = [fs.frame for fs in scorer.flush()]
    assert all(emitted_at[t] == t + 9 for t in emitted_at)
    assert sorted(emitted_at) == list(range(len(src) - 9)) and tail == list(range(len(src) - 9, len(src)))
    with pytest.raises(ValueError, match="push every frame in order"):
        scorer.push(len(src) + 3, frames[0], {})


def test_fused_scores_use_the_training_min_max():
    raw = {"mo": np.array([10.0, 50.0]), "app": np.array([0.5, 0.5]), "mm": np.array([0.0, 2e-3]),
           "nll": np.array([3.0, 4.0])}
    out = fused_scores(raw, STATS, LAMBDAS)
    np.testing.assert_allclose(out["mo"], [0.25, 1.25])  # outside the training range: not clipped
    np.testing.assert_allclose(out["score"], [0.25 + 0.5 + 0.0, 1.25 + 0.5 + 2.0])
    np.testing.assert_allclose(out["nll"], [3.0, 4.0])


def test_score_stats_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"score_stats\.json: missing"):
        load_score_stats(tmp_path)
    (tmp_path / "score_stats.json").write_text('{"mo": {"min": 0, "max": 1}}')
    with pytest.raises(ValueError, match=r"lacks statistics for \['app', 'mm', 'fused'\]"):
        load_score_stats(tmp_path)


def test_clips_match_the_prepared_training_store(tmp_path):
    """The windows scored here are bit-identical to the ClipStore items training and eval use."""
    from mgnet.data.prepare import prepare_split
    from mgnet.data.pose_formats import load_poses
    cfg = {"kind": "synthetic", "root": str(tmp_path / "syn"), "cache_dir": str(tmp_path / "prep"), "seg_len": 16,
           "train_stride": 4, "test_stride": 1, "crop_size": 64, "scene_size": 64, "max_gap": 2,
           "box_expand": 0.2, "box_min_conf": 0.1, "decode_chunk": 64, "synth": {"size": "tiny", "seed": 0}}
    store = prepare_split(cfg, "test", progress=False)
    name = store.videos[0]
    vi = 0
    items = {(int(store[i]["person"]), int(store[i]["start"])): store[i]
             for i in np.flatnonzero(store.column("video") == vi)}
    src = open_frames(tmp_path / "syn" / "testing" / "frames" / name)
    tracks = load_poses(tmp_path / "syn" / "pose" / "test" / f"{name}_alphapose_tracked_person.json")
    seen = 0
    for batch in offline_batches(src, tracks, ClipSpec.from_config({"data": cfg}), batch_size=32):
        for j in range(len(batch["person"])):
            ref = items[(int(batch["person"][j]), int(batch["start"][j]))]
            for k in ("rgb", "pose", "pose_conf", "scene", "frame"):
                assert torch.equal(batch[k][j], ref[k]), (k, j)
            seen += 1
    assert seen == len(items) > 0


# the small config's fusion: S_pose and S_app only (model.lambda_mo = lambda_mm = 0)
DEFAULT_LAMBDAS = {"mo": 0.0, "app": 1.0, "mm": 0.0, "pose": 0.5}


def test_fused_components_online_equal_offline_and_skip_the_rest(clip, model):
    """components="fused" (the default) with S_pose and S_app weighted: the fused score, the
    persons' scores and S_app equal offline scoring's (which computes every component), and the
    hand-fused raw scores of one clip; S_mo, S_mm and the NLL are not computed (NaN)."""
    d, video, tracks = clip
    src = open_frames(video)
    spec = ClipSpec()
    if not model.seg_mem.is_fitted:
        g = torch.Generator().manual_seed(0)
        model.seg_mem.fit(torch.randn(64, model.seg_mem.slots.shape[1], generator=g), torch.arange(64))
    off = score_offline(model, src, tracks, spec, STATS_Z, DEFAULT_LAMBDAS, batch_size=5)
    on = score_online(model, src, tracks, spec, STATS_Z, DEFAULT_LAMBDAS, batch_size=64)
    assert np.isfinite(off.score).sum() == 11
    np.testing.assert_allclose(on.score, off.score, rtol=1e-6, equal_nan=True)
    for p in off.persons:
        np.testing.assert_allclose(on.persons[p], off.persons[p], rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(on.components["app"], off.components["app"], rtol=1e-6, equal_nan=True)
    for k in ("mo", "mm", "nll"):
        assert np.isfinite(off.components[k]).sum() == 11 and not np.isfinite(on.components[k]).any()
    raw = _raw_of_first_clip(model, src, tracks, spec)
    want = sum(float(scoring.zscore(np.array([raw[k]]), STATS_Z[k]["mean"], STATS_Z[k]["std"])[0]) * w
               for k, w in (("app", 1.0), ("pose", 0.5)))
    assert on.persons[1][8] == pytest.approx(want, rel=1e-5)
    full = score_online(model, src, tracks, spec, STATS_Z, DEFAULT_LAMBDAS, batch_size=64, components="all")
    np.testing.assert_array_equal(full.score, on.score)
    for k in ("mo", "mm", "nll"):
        np.testing.assert_allclose(full.components[k], off.components[k], rtol=1e-6, equal_nan=True)


def test_scores_of_a_subset_skip_the_rgb_vit_and_stgnf(model, monkeypatch):
    """MGNet.scores(components=...) returns the asked components as a full call does, NaN for the
    others, without running the parts only they need ("nll" comes with "mo")."""
    from mgnet.models.example import example_batch
    batch = example_batch(model.cfg, 6, seed=3)
    full = model.scores(batch)

    def boom(*a, **k):
        raise AssertionError("ran a part of the model that no asked component needs")
    with monkeypatch.context() as m:
        m.setattr(model.rgb_encoder, "forward", boom)
        m.setattr(model.stgnf, "forward", boom)
        m.setattr(model.scene, "forward", boom)
        part = model.scores(batch, components=("app", "pose"))
    for k in ("app", "pose"):
        torch.testing.assert_close(part[k], full[k], rtol=0, atol=0)
    assert all(torch.isnan(part[k]).all() for k in ("mo", "mm", "nll"))
    mo = model.scores(batch, components=["mo"])
    for k in ("mo", "nll"):
        torch.testing.assert_close(mo[k], full[k], rtol=0, atol=0)
    mm = model.scores(batch, components={"mm"})
    torch.testing.assert_close(mm["mm"], full["mm"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="components must be among"):
        model.scores(batch, components=["colour"])


def test_a_zero_weight_component_is_not_read_by_the_fusion():
    """fuse: a weight-0 component counts as 0 whatever it holds (NaN: not computed), as a finite
    value times 0 does; needed_components lists the non-zero weights of what a model produces."""
    rng = np.random.default_rng(0)
    raw = {k: rng.normal(size=7) for k in ("mo", "app", "mm", "pose")}
    for combine in scoring.COMBINES:
        stats = {**STATS_Z, "fusion": {"norm": "z", "combine": combine}}
        want = scoring.fuse(raw, DEFAULT_LAMBDAS, stats=stats)
        got = scoring.fuse({**raw, "mo": np.full(7, np.nan), "mm": np.full(7, np.nan)}, DEFAULT_LAMBDAS, stats=stats)
        np.testing.assert_array_equal(got, want)
    assert scoring.needed_components(DEFAULT_LAMBDAS, STATS_Z) == ("app", "pose")
    assert scoring.needed_components(DEFAULT_LAMBDAS, STATS) == ("app",)          # stats without S_pose
    assert scoring.needed_components(LAMBDAS, STATS_Z) == ("mo", "app", "mm", "pose")   # mo, pose default to 1


def test_online_scorer_components_must_be_fused_or_all(model):
    with pytest.raises(ValueError, match="components must be one of"):
        OnlineScorer(model, STATS, LAMBDAS, (W, H), components="some")
