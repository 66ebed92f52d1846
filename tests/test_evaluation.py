"""mgnet.evaluation on the stand-in model/store of test_training: the AUC table, the files it writes,
load_run's errors. Metric values are checked against scores constructed to have known AUCs."""
import numpy as np
import pytest
import torch

from mgnet import cli, engine, evaluation as E, runs, training as T
from mgnet.runs import RunDir, RunError
from tests.test_training import FakeModel, FakeStore, fake_cfg, fakes  # noqa: F401  (fixture)


def test_compute_metrics_known_values(tmp_path):
    store = FakeStore("test")
    cfg = fake_cfg(tmp_path / "r", "eval.sigma=0")
    items = [store[i] for i in range(len(store))]
    clip = {k: np.array([int(it[k]) for it in items]) for k in ("video", "person", "frame", "label")}
    lab = clip["label"].astype(float)
    rng = np.random.default_rng(0)
    clip["mo"] = lab + 0.1 * rng.random(len(lab))      # perfect detector
    clip["app"] = 1 - lab                             # perfectly wrong
    clip["mm"] = rng.random(len(lab))                 # noise
    clip["nll"] = np.zeros(len(lab))                  # constant
    metrics, curves = E.compute_metrics(clip, store, cfg)
    auc = metrics["auc"]
    assert auc["mo"]["micro"] == 1.0 and auc["mo"]["macro"] == 1.0 and auc["mo"]["types"]["motion"] == 1.0
    assert auc["app"]["micro"] < 0.1  # inverted (not exactly 0: frames with nobody take the video minimum)
    assert auc["nll"]["micro"] == 0.5
    assert 0.2 < auc["mm"]["micro"] < 0.8
    assert auc["mo"]["videos_in_macro"] == 2 and metrics["abnormal_frames"] == 14
    assert set(curves["fused"]) == {"v0", "v1", "v2"} and curves["fused"]["v1"].shape == (24,)
    table = E.format_table(metrics)
    assert "S_mo" in table and "motion" in table and "STG-NF" in table


def test_evaluate_writes_metrics_scores_plots(tmp_path, fakes):  # noqa: F811
    cfg = fake_cfg(tmp_path / "run")
    run = T.train(cfg)["run"]
    metrics = E.evaluate(cfg, run.root)
    on_disk = runs.read_json(run.metrics)
    assert on_disk["auc"]["fused"]["micro"] == pytest.approx(metrics["auc"]["fused"]["micro"])
    # the stand-in's abnormal clips have 3x larger poses: its NLL must find them
    assert metrics["auc"]["nll"]["micro"] > 0.9
    z = np.load(run.frame_scores)
    assert {"v0", "v1", "mo/v1", "app/v2", "mm/v0", "nll/v1", "gt/v1"} <= set(z.files)
    assert z["v1"].shape == (24,) and z["gt/v1"].sum() == 8
    assert len(list((run.plots / "videos").glob("*.png"))) == 2  # eval.max_plots=2
    model, cfg2 = engine.load_run(run.root)
    assert cfg2.train.stage1.steps == 7 and not model.training


def test_load_run_errors(tmp_path, fakes):  # noqa: F811
    with pytest.raises(RunError, match="does not exist"):
        engine.load_run(tmp_path / "nope")
    cfg = fake_cfg(tmp_path / "run", "train.stages=[1,2]")
    T.train(cfg)
    with pytest.raises(RunError, match="no stage-4 checkpoint"):
        engine.load_run(tmp_path / "run")
    assert cli.main(["eval", f"run={tmp_path}/run"]) == 2
    assert cli.main(["eval"]) == 2
