"""End to end on the real pipeline: tiny synthetic benchmark -> prepare -> four stages of the real
MGNet (a few steps each) -> evaluation, through the `mgnet` CLI entry point; then the run folder
contract and the bad-input paths that need a real run."""
import json

import numpy as np
import pytest
import torch

from mgnet import cli, runs
from mgnet.engine import load_run
from mgnet.runs import RunDir

pytestmark = pytest.mark.slow

STEPS = ["train.stage1.steps=200", "train.stage2.steps=4", "train.stage3.steps=4", "train.batch_size=8"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    data = f"data.root={base}/synthetic-tiny"
    out = base / "run"
    rc = cli.main(["train", "experiment=tiny", data, f"train.out={out}", *STEPS])
    assert rc == 0
    rc = cli.main(["eval", f"run={out}", "eval.max_plots=2"])
    assert rc == 0
    return base, data, RunDir(out)


def test_run_folder_contract(tiny_run):
    _, _, run = tiny_run
    for k in (1, 2, 3, 4):
        ck = torch.load(run.stage(k), weights_only=True)
        assert ck["stage"] == k and "model" in ck
    cfg = runs.load_config(run.config)
    assert cfg.model.embed_dim == 32 and cfg.train.stage2.steps == 4
    stats = json.loads(run.score_stats.read_text())
    for name in ("mo", "app", "mm", "nll", "pose", "fused"):
        s = stats[name]
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
    assert stats["fusion"] == {"norm": "z", "combine": "pos_mean"}
    metrics = json.loads(run.metrics.read_text())
    table = metrics["auc"]
    assert set(table) == {"nll", "mo", "app", "mm", "pose", "fused", "fused_minmax"}
    assert set(table["fused"]["types"]) == {"motion", "appearance", "scene"}
    for row in table.values():
        assert 0.0 <= row["micro"] <= 1.0
    # the pose flow, after 200 short steps (a few seconds), separates the tiny set's falls/runs/jumps from walking
    assert table["nll"]["types"]["motion"] > 0.8
    # the appearance memory (written in stage 4, nothing to train) separates the carried objects (1.0 here)
    assert table["app"]["types"]["appearance"] > 0.9
    z = np.load(run.frame_scores)
    videos = [k for k in z.files if "/" not in k]
    assert len(videos) == metrics["num_videos"] and all(f"mm/{v}" in z.files for v in videos)
    assert sum(len(z[v]) for v in videos) == metrics["num_frames"]
    assert len(list((run.plots / "videos").glob("*.png"))) == 2
    assert (run.plots / "loss.png").exists() and (run.root / "train.log").exists()
    model, _ = load_run(run.root)
    assert int(model.bsmm.num_filled) > 0


def test_bad_inputs_with_a_real_run(tiny_run, tmp_path, capsys):
    base, data, run = tiny_run
    # missing dataset root (a kind that is not generated on demand)
    rc = cli.main(["train", "data=shanghaitech", f"data.root={tmp_path}/nope", f"train.out={tmp_path}/r"])
    assert rc == 2 and "nope" in capsys.readouterr().err
    # a run folder whose config does not match the checkpoint
    cfg = run.config.read_text().replace("embed_dim: 32", "embed_dim: 48")
    bad = tmp_path / "bad"
    (bad / "checkpoints").mkdir(parents=True)
    (bad / "config.yaml").write_text(cfg)
    (bad / "checkpoints" / "stage4.pt").write_bytes(run.stage(4).read_bytes())
    assert cli.main(["eval", f"run={bad}"]) == 2
    assert "model.embed_dim" in capsys.readouterr().err
    # resume a finished run: everything skipped, nothing changed
    before = run.stage(3).read_bytes()
    assert cli.main(["train", "experiment=tiny", data, f"train.out={run.root}", *STEPS, "--resume",
                     "train.score_stats=false"]) == 0
    assert run.stage(3).read_bytes() == before


def _cli_rank(rank, world, port, argv):
    """One spawned rank of `torchrun --nproc_per_node=world -m mgnet.cli *argv`."""
    from tests.test_distributed import as_rank
    as_rank(rank, world, port)
    torch.set_num_threads(1)
    assert cli.main(argv) == 0


def test_two_process_eval_of_a_real_run_matches_one_process(tiny_run, tmp_path):
    """`torchrun --nproc_per_node=2 -m mgnet.cli eval` on the real model: each rank scores a shard
    of the test clips and the shards are gathered (Dist.all_gather_object); scoring has no
    randomness, so every clip is scored once and every AUC equals the 1-process one exactly."""
    import shutil
    import torch.multiprocessing as mp
    from tests.test_distributed import _free_port
    _, _, run = tiny_run
    one = json.loads(run.metrics.read_text())
    copy = tmp_path / "run"
    shutil.copytree(run.root, copy)
    (copy / "metrics.json").unlink()
    mp.start_processes(_cli_rank, args=(2, _free_port(), ["eval", f"run={copy}", "eval.max_plots=2"]), nprocs=2,
                       start_method="spawn")
    two = json.loads((copy / "metrics.json").read_text())
    assert two["num_clips"] == one["num_clips"] and two["num_frames"] == one["num_frames"]
    assert two["auc"] == one["auc"]


def test_two_process_train_of_the_real_model(tiny_run, tmp_path):
    """`torchrun --nproc_per_node=2 -m mgnet.cli train` with the real MGNet (DDP with unused-parameter
    search, ActNorm initialised from the whole first global batch, stage 4 whole on each rank):
    every stage completes, rank 0 alone writes the run, and the result detects like the 1-process
    run (stage 1 draws its noise per rank, so the weights are close, not equal; measured: micro AUCs
    within 0.004 of the 1-process run's)."""
    import torch.multiprocessing as mp
    from tests.test_distributed import _free_port
    _, data, run1 = tiny_run
    out = tmp_path / "run2"
    argv = ["train", "experiment=tiny", data, f"train.out={out}", *STEPS]
    mp.start_processes(_cli_rank, args=(2, _free_port(), argv), nprocs=2, start_method="spawn")
    assert cli.main(["eval", f"run={out}", "eval.plots=false"]) == 0
    run2 = RunDir(out)
    for k in (1, 2, 3, 4):
        assert torch.load(run2.stage(k), weights_only=True)["stage"] == k
    log = (run2.root / "train.log").read_text()
    assert "world 2" in log and log.count("stage 4: BSMM written") == 1   # rank 0 alone logs
    one, two = (json.loads(r.metrics.read_text())["auc"] for r in (run1, run2))
    assert two["nll"]["types"]["motion"] > 0.8 and two["app"]["types"]["appearance"] > 0.9
    for key in ("nll", "mo", "app", "mm", "fused"):
        assert abs(one[key]["micro"] - two[key]["micro"]) <= 0.02, (key, one[key]["micro"], two[key]["micro"])
