"""`mgnet protocol`: the selection / report split, the mean / min aggregation against hand-computed
values, resume, and (slow) one real tiny cell end to end, reading no clip outside its own cell."""
import json
import math
import os

import pytest

from mgnet import protocol
from mgnet.data import synth_variants as SV

NAN = float("nan")


def _auc(fused_micro, motion=0.5, app=0.5, scene=0.5):
    row = {"micro": fused_micro, "motion": motion, "appearance": app, "scene": scene}
    return {c: dict(row) for c, _ in protocol.COMPONENTS}


def test_sets_are_disjoint_and_selection_never_takes_report_cells():
    assert not set(SV.SELECTION) & set(SV.REPORT) and not set(SV.SELECTION_SEEDS) & set(SV.REPORT_SEEDS)
    assert len(SV.SELECTION) >= 3 and len(SV.SELECTION_SEEDS) >= 2 and "default" not in SV.SELECTION + SV.REPORT
    cells = protocol.cells_of("selection")
    assert cells == [(v, s) for v in SV.SELECTION for s in SV.SELECTION_SEEDS]
    assert protocol.cells_of("report") == [(v, s) for v in SV.REPORT for s in SV.REPORT_SEEDS]
    assert protocol.cells_of("selection", ["scenes"], [5]) == [("scenes", 5)]
    with pytest.raises(ValueError, match="held-apart report set"):
        protocol.cells_of("selection", [SV.REPORT[0]])
    with pytest.raises(ValueError, match="belongs to the report set's seeds"):
        protocol.cells_of("selection", None, [SV.REPORT_SEEDS[0]])
    with pytest.raises(ValueError, match="belongs to the selection set's seeds"):
        protocol.cells_of("report", None, [SV.SELECTION_SEEDS[0]])
    with pytest.raises(ValueError, match="not in the selection set"):
        protocol.cells_of("selection", ["default"])
    with pytest.raises(Exception, match="unknown synthetic benchmark variant"):
        protocol.cells_of("selection", ["nope"])


def test_aggregate_mean_and_min_by_hand():
    cells = [dict(variant="natural", seed=0, auc=_auc(0.9, motion=0.8, scene=NAN)),
             dict(variant="natural", seed=1, auc=_auc(0.7, motion=0.95, scene=0.6)),
             dict(variant="scenes", seed=0, auc=_auc(0.8, motion=0.65, scene=0.9))]
    agg = protocol.aggregate(cells)
    f = agg["fused"]
    assert f["micro"]["mean"] == pytest.approx((0.9 + 0.7 + 0.8) / 3) and f["micro"]["min"] == 0.7
    assert f["micro"]["min_cell"] == "natural/s1" and f["micro"]["n"] == 3
    assert f["motion"]["mean"] == pytest.approx(0.8) and f["motion"]["min_cell"] == "scenes/s0"
    assert f["scene"]["mean"] == pytest.approx(0.75) and f["scene"]["n"] == 2 and f["scene"]["min"] == 0.6
    assert agg["nll"]["appearance"] == {"mean": 0.5, "min": 0.5, "min_cell": "natural/s0", "n": 3}
    empty = protocol.aggregate([dict(variant="x", seed=0, auc=_auc(None))])
    assert math.isnan(empty["mo"]["micro"]["mean"]) and empty["mo"]["micro"]["n"] == 0
    md = protocol.format_markdown(dict(set="selection", size="tiny", variants=["natural", "scenes"], seeds=[0, 1],
                                       overrides=["a=1"], machine="m", cells=cells, aggregate=agg))
    assert "| MGNet fused | 0.800 / 0.700 (natural/s1) | 0.800 / 0.650 (scenes/s0) |" in md
    assert "| natural | 0 | MGNet fused | 0.900 | 0.800 | 0.500 | n/a |" in md and "Overrides: `a=1`" in md


def _metrics(x):
    row = {"micro": x, "macro": x, "types": {"motion": x, "appearance": x, "scene": None}}
    return {"auc": {c: dict(row) for c, _ in protocol.COMPONENTS}}


def test_run_resume_and_overrides(tmp_path):
    calls = []

    def runner(ov):
        calls.append(ov)
        return {"metrics": _metrics(0.5 + 0.1 * len(calls))}
    kw = dict(variants=["natural", "occluded"], seeds=[0], size="tiny", out=str(tmp_path / "p"),
              data_dir=str(tmp_path / "d"), threads=1, log=lambda m: None, runner=runner)
    s = protocol.run_protocol("selection", overrides=["train.stage1.steps=3"], **kw)
    assert len(calls) == 2 and [c["variant"] for c in s["cells"]] == ["natural", "occluded"]
    for ov, v in zip(calls, ["natural", "occluded"]):
        assert f"data.synth.variant={v}" in ov and "data.synth.seed=0" in ov and "seed=0" in ov
        assert ov[-1] == "train.stage1.steps=3" and "train.threads=1" in ov and "train.overwrite=true" in ov
        assert any(o == f"data.root={tmp_path / 'd' / f'{v}-tiny-s0'}" for o in ov)
    saved = json.loads((tmp_path / "p" / "protocol.json").read_text())
    assert saved["aggregate"]["fused"]["micro"]["min"] == pytest.approx(0.6)
    assert saved["aggregate"]["fused"]["scene"]["mean"] is None  # NaN: no scene frames (JSON null)
    assert "| S_mo | 0.650 / 0.600 (natural/s0)" in (tmp_path / "p" / "protocol.md").read_text()
    protocol.run_protocol("selection", overrides=["train.stage1.steps=3"], resume=True, **kw)
    assert len(calls) == 2  # both cells finished with the same overrides: kept
    protocol.run_protocol("selection", overrides=["train.stage1.steps=4"], resume=True, **kw)
    assert len(calls) == 4 and "train.overwrite=true" in calls[-1]  # other overrides: both cells rerun
    os.remove(tmp_path / "p" / "occluded-s0" / "cell.json")  # as if interrupted: its run folder continues
    os.makedirs(tmp_path / "p" / "occluded-s0", exist_ok=True)
    protocol.run_protocol("selection", overrides=["train.stage1.steps=4"], resume=True, **kw)
    assert len(calls) == 5 and "train.resume=true" in calls[-1] and "data.synth.variant=occluded" in calls[-1]
    with pytest.raises(ValueError, match="bad config override"):
        protocol.run_protocol("selection", overrides=["model.no_such_key=1"], **kw)
    assert len(calls) == 5


def _fake_runner(ov):  # module level: picklable for --jobs' spawned processes
    variant = next(o for o in ov if o.startswith("data.synth.variant=")).split("=")[1]
    return {"metrics": _metrics(0.9 if variant == "natural" else 0.7), "pid": os.getpid()}


def test_jobs_run_cells_in_their_own_processes(tmp_path):
    s = protocol.run_protocol("selection", ["natural", "scenes"], [1], "tiny", str(tmp_path / "p"),
                              str(tmp_path / "d"), log=lambda m: None, runner=_fake_runner, jobs=2)
    assert [(c["variant"], c["auc"]["fused"]["micro"]) for c in s["cells"]] == [("natural", 0.9), ("scenes", 0.7)]
    assert s["aggregate"]["fused"]["micro"]["mean"] == pytest.approx(0.8)
    assert all(c["cpu_s"] >= 0 and c["wall_s"] > 0 for c in s["cells"])


def test_cli_errors(capsys):
    assert protocol.main(["--variants", "mixed", "--size", "tiny"]) == 2
    assert "held-apart report set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        protocol.main(["notanoverride"])
    args = protocol.parse(["--variants", "natural", "scenes", "model.x=1", "--seeds", "0", "train.y=2"])
    assert args.variants == ["natural", "scenes"] and args.seeds == [0] and args.overrides == ["model.x=1", "train.y=2"]


@pytest.mark.slow
def test_protocol_tiny_end_to_end_reads_only_its_own_cell(tmp_path, monkeypatch, capsys):
    """One real cell (variant natural, seed 0, tiny, a few steps) through `mgnet protocol`; every
    dataset folder the run lists videos of, or generates, is that cell's: no report-set clip (nor
    any other benchmark's) is read during a selection run."""
    from mgnet.data import datasets, synthetic
    touched = []
    real_list, real_gen = datasets.list_videos, synthetic.generate
    monkeypatch.setattr(datasets, "list_videos", lambda kind, root, split, **kw: touched.append(str(root)) or
                        real_list(kind, root, split, **kw))
    monkeypatch.setattr(synthetic, "generate", lambda out, *a, **k: touched.append(str(out)) or real_gen(out, *a, **k))
    from mgnet.data.cache import ClipStore
    real_init = ClipStore.__init__

    def opened(self, path, *a, **k):  # every prepared store opened: <root>/prepared/<split>
        touched.append(os.path.dirname(os.path.dirname(os.path.abspath(path))))
        return real_init(self, path, *a, **k)
    monkeypatch.setattr(ClipStore, "__init__", opened)
    out, data = tmp_path / "p", tmp_path / "d"
    rc = protocol.main(["--size", "tiny", "--variants", "natural", "--seeds", "0", "--out", str(out), "--data-dir",
                        str(data), "--threads", "1", "experiment=tiny", "train.stage1.steps=4", "train.stage2.steps=4",
                        "train.stage3.steps=4", "eval.batch_size=256"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| MGNet fused |" in printed and "| natural | 0 | STG-NF NLL |" in printed
    own = os.path.abspath(data / "natural-tiny-s0")
    assert touched and all(os.path.abspath(t) == own for t in touched), touched
    cell = json.loads((out / "natural-s0" / "cell.json").read_text())
    assert cell["variant"] == "natural" and cell["seed"] == 0 and cell["set"] == "selection"
    metrics = json.loads((out / "natural-s0" / "metrics.json").read_text())
    assert cell["auc"]["fused"]["micro"] == metrics["auc"]["fused"]["micro"]
    assert cell["auc"]["mm"]["scene"] == metrics["auc"]["mm"]["types"]["scene"]
    assert all(0 <= cell["auc"][c]["micro"] <= 1 for c, _ in protocol.COMPONENTS)
    assert json.loads((data / "natural-tiny-s0" / "synth.json").read_text())["variant"] == "natural"
