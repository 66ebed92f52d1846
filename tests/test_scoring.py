"""mgnet.scoring: min-max, eq. 16 fusion, z-score fusion against training statistics, STG-NF frame protocol, micro/macro/per-type AUC."""
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score

from mgnet import scoring


def test_minmax_range_and_constant():
    x = np.array([2.0, 4.0, 3.0])
    np.testing.assert_allclose(scoring.minmax(x), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(scoring.minmax(torch.tensor([5.0, 5.0])), [0.0, 0.0])
    # fixed bounds (online): not clipped
    np.testing.assert_allclose(scoring.minmax([0.0, 3.0], lo=1.0, hi=2.0), [-1.0, 2.0])


def test_fuse_eq16_with_lambdas_and_stats():
    comp = {"mo": np.array([0.0, 1.0, 2.0]), "app": np.array([10.0, 30.0, 20.0]),
            "mm": np.array([1.0, 1.0, 3.0]), "nll": np.array([9.0, 9.0, 9.0])}
    got = scoring.fuse(comp, {"app": 2.0, "mm": 0.5})
    want = np.array([0.0, 0.5, 1.0]) + 2.0 * np.array([0.0, 1.0, 0.5]) + 0.5 * np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(scoring.fuse(comp, (2.0, 0.5)), want)
    stats = {"mo": {"min": 0.0, "max": 4.0}, "app": {"min": 10.0, "max": 20.0}, "mm": {"min": 0.0, "max": 1.0}}
    got = scoring.fuse(comp, {"app": 1.0, "mm": 1.0}, stats=stats)
    np.testing.assert_allclose(got, np.array([0, .25, .5]) + np.array([0, 2, 1]) + np.array([1, 1, 3]))
    with pytest.raises(KeyError, match="mm"):
        scoring.fuse({"mo": [1.0], "app": [1.0]})


def test_zscore_fusion_by_hand():
    # training statistics: mo mean 1 std 2, app mean 10 std 5, mm mean 0 std 0.5, pose mean 4 std 1
    stats = {"mo": {"mean": 1.0, "std": 2.0}, "app": {"mean": 10.0, "std": 5.0},
             "mm": {"mean": 0.0, "std": 0.5}, "pose": {"mean": 4.0, "std": 1.0}}
    comp = {"mo": np.array([1.0, 5.0, -1.0]), "app": np.array([10.0, 0.0, 20.0]),
            "mm": np.array([0.5, 0.0, 0.25]), "nll": np.array([7.0, 7.0, 7.0])}
    # z per component:  mo [0, 2, -1]; app [0, -2, 2]; mm [1, 0, 0.5]
    np.testing.assert_allclose(scoring.normalize(comp["mo"], "mo", "z", stats), [0.0, 2.0, -1.0])
    lam = {"app": 2.0, "mm": 1.0}
    np.testing.assert_allclose(scoring.fuse(comp, lam, stats, norm="z", combine="sum"),
                               [0 + 0 + 1, 2 - 4 + 0, -1 + 4 + 0.5])
    # positive parts, weights 1, 2, 1 (sum 4): [1/4, 2/4, 4.5/4]
    np.testing.assert_allclose(scoring.fuse(comp, lam, stats, norm="z", combine="pos_mean"),
                               [0.25, 0.5, 4.5 / 4])
    np.testing.assert_allclose(scoring.fuse(comp, lam, stats, norm="z", combine="max"), [1.0, 2.0, 4.0])
    # an optional component present is fused too: pose z [-4, 0, 3] (raw 0, 4, 7)
    comp["pose"] = np.array([0.0, 4.0, 7.0])
    np.testing.assert_allclose(scoring.fuse(comp, lam, stats, norm="z", combine="sum"), [-3.0, -2.0, 6.5])
    # the run's recorded fusion is the default
    spec = dict(stats, fusion={"norm": "z", "combine": "max"})
    np.testing.assert_allclose(scoring.fuse(comp, lam, spec), [1.0, 2.0, 4.0])
    # a constant training component (std 0) contributes zeros, not inf
    flat = dict(stats, app={"mean": 3.0, "std": 0.0})
    np.testing.assert_allclose(scoring.normalize(comp["app"], "app", "z", flat), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="score_stats"):
        scoring.fuse(comp, lam, None, norm="z")
    with pytest.raises(ValueError, match="combine"):
        scoring.fuse(comp, lam, stats, norm="z", combine="median")
    # statistics without the optional component (a run from before it existed): fused without it
    np.testing.assert_allclose(scoring.fuse(comp, lam, {k: v for k, v in stats.items() if k != "pose"},
                                            norm="z", combine="sum"), [1.0, -2.0, 3.5])


def test_summary_stats():
    x = np.arange(101, dtype=float)
    s = scoring.summary_stats(x)
    assert (s["min"], s["max"], s["p50"], s["p90"], s["p99"], s["count"]) == (0, 100, 50, 90, 99, 101)
    assert s["std"] == pytest.approx(np.std(x))


def test_frame_scores_protocol():
    # video a: 6 frames; person 0 clips at frames 1,2; person 1 at frames 2,3. video b: no clips.
    scores = np.array([0.5, 0.2, 0.9, 0.1])
    videos = np.array([0, 0, 0, 0])
    frames = np.array([1, 2, 2, 3])
    persons = np.array([0, 0, 1, 1])
    out = scoring.frame_scores(scores, videos, frames, persons, {"a": 6, "b": 3}, sigma=0, names=["a", "b"])
    # max over persons at frame 2; empty frames take the video's min (0.1); empty video the global min
    np.testing.assert_allclose(out["a"], [0.1, 0.5, 0.9, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(out["b"], [0.1, 0.1, 0.1])
    smooth = scoring.frame_scores(scores, ["a"] * 4, frames, persons, {"a": 6}, sigma=2.0)
    np.testing.assert_allclose(smooth["a"], gaussian_filter1d(out["a"], 2.0))
    with pytest.raises(ValueError, match="only 2 frames"):
        scoring.frame_scores(scores, ["a"] * 4, frames, persons, {"a": 2})
    with pytest.raises(KeyError, match="not in num_frames"):
        scoring.frame_scores(scores, ["z"] * 4, frames, persons, {"a": 6})


def test_frame_auc_micro_macro_and_types():
    rng = np.random.default_rng(0)
    labels = {"v1": np.array([0, 0, 1, 1, 0]), "v2": np.array([0, 0, 0, 0]), "v3": np.array([1, 0, 1, 0, 0, 1])}
    scores = {k: rng.random(len(v)) for k, v in labels.items()}
    types = {"v1": np.array([0, 0, 1, 1, 0]), "v2": np.zeros(4, int), "v3": np.array([2, 0, 2, 0, 0, 3])}
    got = scoring.frame_auc(scores, labels)
    y = np.concatenate(list(labels.values()))
    s = np.concatenate(list(scores.values()))
    assert got["micro"] == pytest.approx(roc_auc_score(y, s))
    want_macro = np.mean([roc_auc_score(labels[k], scores[k]) for k in ("v1", "v3")])
    assert got["macro"] == pytest.approx(want_macro)
    assert got["videos_in_macro"] == 2
    t = np.concatenate(list(types.values()))
    keep = (y == 0) | (t == 2)
    assert scoring.type_auc(scores, labels, types, 2) == pytest.approx(roc_auc_score(y[keep], s[keep]))
    assert np.isnan(scoring.type_auc(scores, labels, types, 7))


def test_frame_auc_perfect_detector():
    labels = {"v": np.array([0, 0, 1, 1, 0])}
    assert scoring.frame_auc({"v": np.array([0, 0, 1.0, 1.0, 0])}, labels)["micro"] == 1.0
    with pytest.raises(ValueError, match="3 scores but 5 labels"):
        scoring.frame_auc({"v": np.zeros(3)}, labels)


def test_fusion_lambdas_weight_every_component():
    from types import SimpleNamespace
    cfg = SimpleNamespace(lambda_mo=0.0, lambda_app=2.0, lambda_mm=1.0, lambda_pose=3.0)
    lam = scoring.fusion_lambdas(cfg)
    assert lam == {"mo": 0.0, "app": 2.0, "mm": 1.0, "pose": 3.0}
    stats = {k: {"mean": 1.0, "std": 0.5} for k in ("mo", "app", "mm", "pose")}
    comps = {"mo": np.array([9.0]), "app": np.array([2.0]), "mm": np.array([0.0]), "pose": np.array([1.5])}
    # z: mo 16 (weight 0), app 2, mm -2 (clipped to 0 by pos_mean), pose 1 -> (0 + 2*2 + 0 + 3*1) / 6
    got = scoring.fuse(comps, lam, stats=stats, norm="z", combine="pos_mean")
    np.testing.assert_allclose(got, [7.0 / 6.0])


def test_describe_fusion_names_the_runs_normalisation_and_weights():
    stats = {"fusion": {"norm": "z", "combine": "pos_mean"}, "app": {"mean": 0.0, "std": 1.0},
             "pose": {"mean": 0.0, "std": 1.0}}
    text = scoring.describe_fusion(stats, {"mo": 0.0, "app": 1.0, "mm": 0.0, "pose": 0.5})
    assert "z-score against the normal training clips" in text and "pos_mean" in text
    assert text.endswith("weights app 1, pose 0.5 (mgnet.scoring.fuse)")   # zero weights left out
    # no statistics: eq. 16's protocol (min-max over the scored set, sum, every weight 1)
    assert scoring.describe_fusion(None, {"app": 1.0, "mm": 1.0}) == (
        "each component min-max over the scored set (eq. 16's protocol), combined by sum with weights "
        "mo 1, app 1, mm 1 (mgnet.scoring.fuse)")
