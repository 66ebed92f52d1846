"""Training logs: metrics.jsonl (a line per logged step with every loss term, lr and clips/s) and,
with train.logger=tensorboard, event files under <run>/tb/ that TensorBoard's own reader reads back
with the same scalars, the stage's hyper-parameters and the eval AUCs."""
import json

import pytest

from mgnet import tracking
from mgnet.cli import main as cli


def _jsonl(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


@pytest.mark.slow
def test_metrics_jsonl_has_a_line_per_logged_step(trained_run):
    _, run = trained_run
    rows = _jsonl(run)
    # train.log_every=1: stage 1 three steps, stage 2 two; stage 3 trains nothing with app_target=cubes
    assert [(r["stage"], r["step"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    for r in rows:
        terms = {"loss", "nll"} if r["stage"] == 1 else {"loss", "mo", "sep_b", "sep_s"}
        assert set(r) == {"stage", "step", "lr", "clips_per_s"} | terms, r
        assert r["lr"] > 0 and r["clips_per_s"] > 0
    # stage 2's loss is L_mo + beta (L_sep^b + L_sep^s) (eq. 12), each line the step's own terms
    for r in rows[3:]:
        assert r["loss"] == pytest.approx(r["mo"] + 0.1 * (r["sep_b"] + r["sep_s"]), rel=1e-5)
    # the same values as the checkpoint's loss history
    import torch
    hist = torch.load(run / "checkpoints" / "stage1.pt", weights_only=True)["history"]
    assert [h["loss"] for h in hist] == [r["loss"] for r in rows[:3]]


@pytest.mark.slow
def test_tensorboard_events_read_back(trained_run):
    _, run = trained_run
    rows = _jsonl(run)
    for stage in (1, 2):
        ea = _events(run / "tb" / f"stage{stage}")
        mine = [r for r in rows if r["stage"] == stage]
        for tag in ("loss", "lr", "clips_per_s") + (("nll",) if stage == 1 else ("mo", "sep_s")):
            got = ea.Scalars(tag)
            assert [e.step for e in got] == [r["step"] for r in mine], tag
            assert [e.value for e in got] == pytest.approx([r[tag] for r in mine], rel=1e-6), tag
        # the stage's hyper-parameters (hparams plugin)
        from tensorboard.plugins.hparams import plugin_data_pb2
        content = ea.PluginTagToContent("hparams")
        session = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()]
        start = [s.session_start_info for s in session if s.HasField("session_start_info")]
        assert start, "no hparams session"
        hp = start[0].hparams
        assert hp[f"stage{stage}.lr"].number_value == pytest.approx(1e-3)
        assert hp[f"stage{stage}.steps"].number_value == (3 if stage == 1 else 2)
        assert hp["batch_size"].number_value == 8
    # `mgnet eval` of the run adds its frame AUCs
    assert cli(["eval", f"run={run}", "eval.plots=false"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    ea = _events(run / "tb" / "eval")
    for row in ("nll", "mo", "app", "mm", "fused"):
        assert ea.Scalars(f"auc/{row}/micro")[0].value == pytest.approx(metrics["auc"][row]["micro"], rel=1e-6)
    assert ea.Scalars("auc/fused/type_motion")[0].value == pytest.approx(metrics["auc"]["fused"]["types"]["motion"])


def test_a_resumed_stage_drops_the_lines_of_the_interrupted_attempt(tmp_path):
    lines = [{"stage": 1, "step": s, "loss": 1.0} for s in (1, 2, 3)] + [{"stage": 2, "step": s, "loss": 2.0}
                                                                          for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"stage": 2, "st')
    log = tracking.StageLog(tmp_path, 2, "none", start_step=2)
    log.step(3, {"loss": 0.5, "step": 3}, 1e-3, 10.0)
    got = [(r["stage"], r["step"], r["loss"]) for r in _jsonl(tmp_path)]
    assert got == [(1, 1, 1.0), (1, 2, 1.0), (1, 3, 1.0), (2, 1, 2.0), (2, 2, 2.0), (2, 3, 0.5)]
    # another rank logs nothing
    tracking.StageLog(tmp_path, 2, "none", 0, enabled=False).step(9, {"loss": 1.0}, 1e-3, 1.0)
    assert len(_jsonl(tmp_path)) == 6


def test_unknown_logger_is_refused_by_name():
    with pytest.raises(ValueError, match="train.logger='wandb'"):
        tracking.check_logger("wandb")
    assert tracking.check_logger(None) == "none"
