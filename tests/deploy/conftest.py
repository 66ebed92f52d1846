"""One trained tiny run per test session (TensorBoard logging on, a history line every step) and
its two exports, shared by the deploy and tracking tests."""
import contextlib
import io

import pytest

from mgnet.cli import main as cli

STEPS = ["train.stage1.steps=3", "train.stage2.steps=2", "train.stage3.steps=2", "train.log_every=1"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(base folder, run folder) of a finished tiny run: synthetic tiny benchmark, a few steps per stage."""
    import torch
    threads = torch.get_num_threads()
    d = tmp_path_factory.mktemp("deployrun")
    rc = cli(["train", "experiment=tiny", f"train.out={d / 'run'}", f"data.root={d / 'syn'}",
              f"data.cache_dir={d / 'prep'}", "data.train_stride=16", "data.test_stride=4", *STEPS, "train.device=cpu",
              "train.threads=1", "train.logger=tensorboard"])
    assert rc == 0
    yield d, d / "run"
    torch.set_num_threads(threads)


def _export(trained_run, fmt, *extra):
    """(folder, stderr) of `mgnet export --format fmt`."""
    d, run = trained_run
    out = d / f"export-{fmt}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli(["export", "--run", str(run), "--format", fmt, "--out", str(out), "--threads", "1", *extra])
    assert rc == 0, err.getvalue()
    return out, err.getvalue()


@pytest.fixture(scope="session")
def onnx_export(trained_run):
    return _export(trained_run, "onnx", "--verify")


@pytest.fixture(scope="session")
def pt2_export(trained_run):
    return _export(trained_run, "torch")
