"""`mgnet score --engine onnx`: the outputs of the torch engine (frame scores within 1e-4, the same
events, every file), offline and online, through onnxruntime with no training code imported."""
import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mgnet.cli import main as cli

pytestmark = pytest.mark.slow
VIDEO = ("syn", "testing", "frames", "01_0001")
POSES = ("syn", "pose", "test", "01_0001_alphapose_tracked_person.json")
NUMERIC = ("score", "score_minmax", "mo", "app", "mm", "nll")


def _paths(d):
    return d.joinpath(*VIDEO), d.joinpath(*POSES)


def _csv(path):
    rows = list(csv.DictReader(open(path)))
    cols = {k: np.array([float(r[k]) if r[k] else np.nan for r in rows]) for k in NUMERIC}
    return rows, cols


@pytest.fixture(scope="module")
def torch_scored(trained_run):
    d, run = trained_run
    video, poses = _paths(d)
    out = d / "score-torch"
    rc = cli(["score", "--threads", "1", "--video", str(video), "--poses", str(poses), "--run", str(run),
              "--out", str(out)])
    assert rc == 0
    return out / video.name


def test_onnx_engine_gives_the_torch_engine_outputs(trained_run, onnx_export, torch_scored, tmp_path):
    d, _ = trained_run
    video, poses = _paths(d)
    # in a fresh interpreter: offline and online scoring, then which mgnet modules were imported
    script = textwrap.dedent(f"""
        import json, sys
        from mgnet.cli import main
        common = ["--threads", "1", "--video", {str(video)!r}, "--poses", {str(poses)!r},
                  "--engine", "onnx", "--model", {str(onnx_export[0])!r}]
        assert main(["score", *common, "--out", {str(tmp_path / "off")!r}]) == 0
        assert main(["score", *common, "--online", "--no-video", "--out", {str(tmp_path / "on")!r}]) == 0
        print("MODULES " + json.dumps(sorted(m for m in sys.modules if m.startswith("mgnet"))))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = json.loads(proc.stdout.split("MODULES ", 1)[1])
    assert "mgnet.deploy.runtime" in modules and "mgnet.inference" in modules
    # the shared run-time layer (mgnet.engine) may load; the model code and the training, evaluation
    # and demo code may not
    training = [m for m in modules if m.split(".")[1:2] and m.split(".")[1] in
                ("train", "training", "models", "evaluate", "evaluation", "demo")]
    training += [m for m in modules if m in ("mgnet.jobs.train", "mgnet.jobs.evaluate", "mgnet.jobs.demo")]
    assert not training, training

    got = tmp_path / "off" / video.name
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in torch_scored.iterdir())
    rows_t, ref = _csv(torch_scored / "frame_scores.csv")
    rows_o, res = _csv(got / "frame_scores.csv")
    assert [r["frame"] for r in rows_o] == [r["frame"] for r in rows_t]
    assert [r["persons"] for r in rows_o] == [r["persons"] for r in rows_t]
    for k in NUMERIC:
        assert np.array_equal(np.isnan(res[k]), np.isnan(ref[k])), k
        np.testing.assert_allclose(res[k], ref[k], rtol=0, atol=1e-4, equal_nan=True, err_msg=k)
    assert np.isfinite(ref["score"]).sum() > 10 and np.nanstd(ref["score"]) > 1e-3
    doc_t = json.loads((torch_scored / "scores.json").read_text())
    doc_o = json.loads((got / "scores.json").read_text())
    assert doc_o["threshold"] == doc_t["threshold"]
    assert [(e["start"], e["end"]) for e in doc_o["events"]] == [(e["start"], e["end"]) for e in doc_t["events"]]
    # online: the printed frame,score lines and the written curve equal the offline training-normalised one
    lines = [ln for ln in proc.stdout.splitlines() if ln and ln[0].isdigit()]
    online = {int(f): (float(s) if s else np.nan) for f, s in (ln.split(",") for ln in lines)}
    assert sorted(online) == list(range(len(ref["score"])))
    np.testing.assert_allclose([online[f] for f in sorted(online)], ref["score"], atol=1e-4, equal_nan=True)
    _, on = _csv(tmp_path / "on" / video.name / "frame_scores.csv")
    np.testing.assert_allclose(on["score"], ref["score"], atol=1e-4, equal_nan=True)


def test_onnx_engine_bad_input_stops_with_one_message(trained_run, onnx_export, pt2_export, tmp_path, capsys):
    d, run = trained_run
    video, poses = _paths(d)
    base = ["score", "--video", str(video), "--poses", str(poses), "--out", str(tmp_path / "o"), "--engine", "onnx"]
    for extra, needle in (([], "needs --model"),
                          (["--model", str(pt2_export[0])], "not 'onnx'"),
                          (["--model", str(run)], "metadata.json"),
                          (["--model", str(onnx_export[0]), "--threshold", "best-f1"], "best-f1")):
        capsys.readouterr()
        assert cli(base + extra) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("error:") == 1, err
        assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
