"""kill -9 at any moment loses nothing: the real jobs (tiny config, one thread) run as subprocesses,
are SIGKILLed at seeded points inside prepare, each training stage, checkpoint writes, eval and
score (mgnet.faults: ``MGNET_HOLD_AT=<point>:<n>`` makes the job stop and wait at the n-th
occurrence of a named point), then rerun (``--resume`` for train) from what the kill left. The
results are bit-identical to an uninterrupted run, and no temporary file is left where a reader
would pick it up."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mgnet import cli
from mgnet.data.synthetic import generate

pytestmark = pytest.mark.slow
SEED = int(os.environ.get("MGNET_KILL_SEED", "19"))
ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["experiment=tiny", "train.threads=1", "train.stage1.steps=8", "train.stage2.steps=6"]
KILLS = {"survived": 0}


def _job(argv, hold=None, timeout=300):
    """Run `mgnet <argv>` in a new process group; with ``hold`` ("point:n") kill -9 the group as
    soon as the job reports it is waiting there. Returns True if killed, else asserts status 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MGNET_HOLD_AT", None)
    if hold:
        env["MGNET_HOLD_AT"] = hold
    p = subprocess.Popen([sys.executable, "-m", "mgnet.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    tail = []
    try:
        for line in p.stderr:
            if hold and line.startswith("mgnet-hold "):
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=60)
                KILLS["survived"] += 1
                return True
            tail = (tail + [line])[-20:]
        rc = p.wait(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert rc == 0, f"mgnet {' '.join(argv)} (hold {hold}) exited {rc}:\n{''.join(tail)}"
    return False


def _chain(argv, holds):
    """Kill the job at each hold in turn (each run resumes what the last one left), then finish it."""
    for hold in holds:
        assert _job(argv, hold), f"point {hold} was never reached"
    assert not _job(argv)


def _no_temporaries(root: Path):
    left = [p for p in root.rglob("*") if p.name.endswith((".tmp", ".tmp.npy")) or ".partial" in p.name
            or ".old" in p.name]
    assert not left, left


def _tensors_equal(a: Path, b: Path):
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert x.keys() == y.keys()
    for k in x["model"]:
        assert torch.equal(x["model"][k], y["model"][k]), (a.name, k)
    assert x.get("history") == y.get("history"), a.name


def _same_store(a: Path, b: Path):
    """Two prepared stores hold the same arrays and metadata (build statistics and paths aside)."""
    def meta(p):
        m = json.loads((p / "store.json").read_text())
        m.pop("build"), m["config"].pop("cache_dir")
        return m
    assert meta(a) == meta(b)
    files = sorted(p.relative_to(a) for p in a.rglob("*.npy"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.npy"))
    for f in files:
        np.testing.assert_array_equal(np.load(a / f), np.load(b / f), err_msg=str(f))


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The uninterrupted reference: tiny benchmark, prepared, trained (one thread), evaluated, and
    one test video scored, all in this process."""
    base = tmp_path_factory.mktemp("kill")
    generate(base / "data", "tiny", 0)
    data = f"data.root={base}/data"
    threads = torch.get_num_threads()
    try:
        assert cli.main(["train", *TRAIN, data, f"train.out={base}/ref"]) == 0
        assert cli.main(["eval", f"run={base}/ref"]) == 0
        video = sorted((base / "data" / "testing" / "frames").iterdir())[0]
        score = ["score", "--video", str(video), "--poses",
                 str(base / "data" / "pose" / "test" / f"{video.name}_alphapose_tracked_person.json"),
                 "--no-video", "--threads", "1"]
        assert cli.main([*score, "--run", f"{base}/ref", "--out", f"{base}/ref-scores"]) == 0
    finally:
        torch.set_num_threads(threads)
    return base, data, score


def test_kill_inside_prepare(ref):
    base, data, _ = ref
    rng = random.Random(SEED)
    cache = base / "prep-kill"
    argv = ["prepare", "experiment=tiny", data, f"data.cache_dir={cache}"]
    n_train = len(list((base / "data" / "pose" / "train").glob("*.json")))
    holds = [f"prepare.shard:{rng.randint(1, n_train)}",   # inside the train split's shards
             f"prepare.index:{rng.randint(1, 2)}"]          # between index.npy and store.json
    _chain(argv, holds)
    for split in ("train", "test"):
        _same_store(cache / split, base / "data" / "prepared" / split)
    _no_temporaries(cache)


def test_kill_inside_every_training_stage_and_checkpoint_write(ref):
    base, data, _ = ref
    rng = random.Random(SEED + 1)
    out = base / "train-kill"
    argv = ["train", *TRAIN, data, f"train.out={out}", "--resume"]
    holds = ["write stage1.last.pt:1",                # inside the first snapshot's write (step 4 of 8)
             f"stage1.step:{rng.randint(5, 7)}",      # after it: the next run resumes from step 4
             "write stage1.pt:1",                     # inside the stage's checkpoint write
             f"stage2.step:{rng.randint(1, 6)}",
             rng.choice(["write stage2.pt:1", "write stage3.pt:1"]),  # stage 3: nothing to train here
             f"stage4.batch:{rng.randint(1, 3)}",
             rng.choice([f"scores.batch:{rng.randint(1, 2)}",         # scoring the training set
                         "write score_stats.json:1"])]
    _chain(argv, holds)
    for k in (1, 2, 3, 4):
        _tensors_equal(out / "checkpoints" / f"stage{k}.pt", base / "ref" / "checkpoints" / f"stage{k}.pt")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"stage{k}.pt" for k in (1, 2, 3, 4)]
    assert (out / "score_stats.json").read_text() == (base / "ref" / "score_stats.json").read_text()
    _no_temporaries(out)


def _videos(base):
    return sorted(p.name for p in (base / "data" / "testing" / "frames").iterdir())


def test_kill_inside_eval(ref):
    """Also: metrics.json never describes another evaluation's frame_scores.npz. The run holds an
    earlier evaluation's pair; after every kill either that pair is intact or metrics.json is absent."""
    base, data, _ = ref
    rng = random.Random(SEED + 2)
    run = base / "eval-kill"
    shutil.copytree(base / "ref" / "checkpoints", run / "checkpoints")
    shutil.copy(base / "ref" / "config.yaml", run / "config.yaml")
    shutil.copy(base / "ref" / "score_stats.json", run / "score_stats.json")   # eval fuses against it
    (run / "eval").mkdir()
    np.savez(run / "eval" / "frame_scores.npz", earlier=np.zeros(3))
    (run / "metrics.json").write_text('{"earlier": true}')
    videos = _videos(base)
    holds = [rng.choice([f"scores.batch:{rng.randint(1, 2)}", f"write {videos[rng.randrange(3)]}.png:1"]),
             rng.choice(["write frame_scores.npz:1", "write metrics.json:1"]),  # temporaries written
             "commit metrics.json:1"]                                           # between the renames
    for hold in holds:
        assert _job(["eval", f"run={run}"], hold)
        if (run / "metrics.json").exists():
            assert json.loads((run / "metrics.json").read_text()) == {"earlier": True}, hold
            assert np.load(run / "eval" / "frame_scores.npz").files == ["earlier"], hold
    assert not (run / "metrics.json").exists()   # the last kill fell between the two renames
    assert not _job(["eval", f"run={run}"])
    assert (run / "metrics.json").read_text() == (base / "ref" / "metrics.json").read_text()
    a, b = np.load(run / "eval" / "frame_scores.npz"), np.load(base / "ref" / "eval" / "frame_scores.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    _no_temporaries(run)


def test_kill_inside_score(ref):
    base, _, score = ref
    rng = random.Random(SEED + 3)
    out = base / "score-kill"
    argv = [*score, "--run", f"{base}/ref", "--out", str(out)]
    _chain(argv, [f"score.batch:{rng.randint(1, 2)}", "score.publish:1"])
    name = Path(score[2]).name
    for f in ("frame_scores.csv", "person_scores.csv"):
        assert (out / name / f).read_text() == (base / "ref-scores" / name / f).read_text(), f
    doc, want = (json.loads((d / name / "scores.json").read_text()) for d in (out, base / "ref-scores"))
    doc.pop("frames_per_second"), want.pop("frames_per_second")
    assert doc == want
    _no_temporaries(out)
    print(f"kill points survived: {KILLS['survived']}")
