"""DDP through torchrun's environment: 2 processes, gloo backend, CPU.

Each rank takes half of every global batch (DistributedSampler, drop_last) and DDP averages the
gradients, so a 2-process run optimises on the same global batches as a 1-process run; what can
differ is float summation order and the random draws inside the model (each rank draws its own
masks / noise for its half batch). Tolerances below state that.
"""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mgnet import engine, evaluation as E, runs, training as T
from mgnet.runs import RunDir
from tests.test_training import FakeModel, FakeStore, fake_cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_rank(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives rank ``rank`` of ``world`` processes on this host."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))


def _worker(rank, world, port, out, conf_dir):
    as_rank(rank, world, port)
    torch.set_num_threads(1)
    runs.CONF_DIR = conf_dir
    engine.build_model = lambda model_cfg: FakeModel()
    engine.open_split = lambda data_cfg, split, ctx: FakeStore(split)
    cfg = fake_cfg(out)
    ctx = engine.Dist("cpu")  # one process group for training and evaluation, as `mgnet demo` does
    try:
        T.train(cfg, ctx)
        E.evaluate(cfg, out, ctx=ctx)
    finally:
        ctx.close()


def _gather_worker(rank, world, port, out):
    as_rank(rank, world, port)
    ctx = engine.Dist("cpu")
    try:
        # unequal payload sizes (rank 1 sends 40x more), numpy arrays inside, and an empty object
        mine = {"rank": rank, "a": np.arange(10 + 400 * rank, dtype=np.float64) * (rank + 1)}
        got = ctx.all_gather_object(mine)
        empty = ctx.all_gather_object({})
    finally:
        ctx.close()
    torch.save({"got": got, "empty": empty}, os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
def test_all_gather_object_two_process(tmp_path):
    mp.start_processes(_gather_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        res = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert [g["rank"] for g in res["got"]] == [0, 1]
        for r, g in enumerate(res["got"]):
            np.testing.assert_array_equal(g["a"], np.arange(10 + 400 * r, dtype=np.float64) * (r + 1))
        assert res["empty"] == [{}, {}]


def test_all_gather_object_one_process():
    assert engine.Dist("cpu").all_gather_object({"x": 1}) == [{"x": 1}]


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "build_model", lambda model_cfg: FakeModel())
    monkeypatch.setattr(engine, "open_split", lambda data_cfg, split, ctx: FakeStore(split))
    cfg1 = fake_cfg(tmp_path / "one")
    T.train(cfg1)
    m1 = E.evaluate(cfg1, tmp_path / "one")
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "two"), runs.CONF_DIR), nprocs=2,
                       start_method="spawn")
    one, two = RunDir(tmp_path / "one"), RunDir(tmp_path / "two")
    w1 = runs.load_checkpoint(one.stage(4))["model"]
    w2 = runs.load_checkpoint(two.stage(4))["model"]
    # stage 2 has no random draws: same global batches, averaged gradients -> same weights up to fp order
    torch.testing.assert_close(w1["enc.weight"], w2["enc.weight"], rtol=1e-4, atol=1e-5)
    # stages 1 and 3 draw noise/masks per rank: close, not equal
    torch.testing.assert_close(w1["flow.weight"], w2["flow.weight"], rtol=0, atol=5e-3)
    # stage 4 runs whole on every rank: the written memory is the 1-process one exactly
    torch.testing.assert_close(w1["bsmm"], w2["bsmm"], rtol=1e-6, atol=1e-6)
    assert int(w1["writes"]) == int(w2["writes"]) == len(FakeStore())
    m2 = runs.read_json(two.metrics)
    for key in ("nll", "mo", "app", "mm", "fused"):
        assert abs(m1["auc"][key]["micro"] - m2["auc"][key]["micro"]) <= 0.02, key
    assert m2["num_clips"] == m1["num_clips"]  # the gathered shards cover every test clip once
    assert two.score_stats.exists() and (two.root / "train.log").exists()
