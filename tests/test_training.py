"""The training loop (mgnet.training) on a tiny stand-in model and store: stage order, checkpoints that
load with weights_only=True, resume == uninterrupted, bad-input errors.

The stand-ins honour the model and data interfaces (MGNet.set_stage/stage_parameters/losses/
bsmm_write/scores, ClipStore items and attributes) with a few hundred parameters, so these tests
check the loop itself in seconds; tests/test_e2e.py runs the real model on the real pipeline.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mgnet import cli, engine, runs, training as T
from mgnet.runs import RunDir, RunError

T_LEN, J = 4, 18


class FakeStore(torch.utils.data.Dataset):
    """A ClipStore look-alike: 3 videos of 24 frames, 2 persons each, stride-1 windows."""

    type_names = {0: "normal", 1: "motion"}

    def __init__(self, split="train", seed=0):
        g = np.random.default_rng(seed + (split == "test"))
        self.videos = ["v0", "v1", "v2"]
        self.num_frames = {v: 24 for v in self.videos}
        self._gt = {v: np.zeros(24, np.uint8) for v in self.videos}
        if split == "test":
            self._gt["v1"][8:16] = 1
            self._gt["v2"][4:10] = 1
        rows = [(vi, p, s) for vi in range(3) for p in range(2) for s in range(0, 24 - T_LEN + 1)]
        self.rows = rows
        self.pose = torch.from_numpy(g.normal(size=(len(rows), 2, T_LEN, J)).astype(np.float32))
        self.rgb = torch.from_numpy(g.integers(0, 255, size=(len(rows), 3, T_LEN, 8, 8), dtype=np.uint8))
        for i, (vi, p, s) in enumerate(rows):  # abnormal clips: larger poses
            if self._gt[self.videos[vi]][s + T_LEN // 2]:
                self.pose[i] *= 3.0
        self.split = split

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        vi, p, s = self.rows[i]
        lab = int(self._gt[self.videos[vi]][s + T_LEN // 2]) if self.split == "test" else -1
        return {"rgb": self.rgb[i], "pose": self.pose[i], "pose_conf": torch.ones(T_LEN, J),
                "scene": self.rgb[i, :, 0], "fg": self.rgb[i, 0, :, :8, :8].contiguous(),
                "video": torch.tensor(vi), "person": torch.tensor(p),
                "start": torch.tensor(s), "frame": torch.tensor(s + T_LEN // 2), "label": torch.tensor(lab)}

    def gt(self, name):
        return self._gt[name] if self.split == "test" else None

    def anomaly_types(self, name):
        return self._gt[name].astype(np.int64) if self.split == "test" else None


class FakeModel(nn.Module):
    """Three trainable parts (one per stage), a written buffer (stage 4), random draws in every stage."""

    def __init__(self, cfg=None):
        super().__init__()
        self.flow = nn.Linear(2 * J, 2 * J)
        self.enc = nn.Linear(3, 2 * J)
        self.mask = nn.Linear(3, 2 * J)
        self.register_buffer("bsmm", torch.zeros(3))
        self.register_buffer("writes", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(False))
        self.parts = {1: [self.flow], 2: [self.enc], 3: [self.mask]}

    def set_stage(self, stage):
        for k, mods in self.parts.items():
            for m in mods:
                m.requires_grad_(k == stage)
        self.train(stage < 4)

    def stage_parameters(self, stage):
        return [p for m in self.parts.get(stage, []) for p in m.parameters()]

    def _feats(self, batch):
        x = batch["pose"].mean(2).flatten(1)                     # (B, 36)
        rgb = batch["rgb"].float().mean((2, 3, 4)) / 255.0      # (B, 3)
        return x, rgb

    def losses(self, batch, stage):
        x, rgb = self._feats(batch)
        noise = torch.rand_like(x)                               # makes RNG state matter for resume
        if stage == 1:
            if self.training and not bool(self.initialized):  # data-dependent init, like STG-NF's ActNorm
                with torch.no_grad():
                    self.flow.bias.copy_(-self.flow(x).mean(0) + self.flow.bias)
                self.initialized.fill_(True)
            z = self.flow(x)
            loss = ((z - 3.0) ** 2).mean() + 0.01 * (z * noise).mean()
        elif stage == 2:
            loss = ((self.enc(rgb) - self.flow(x).detach()) ** 2).mean()
        else:
            keep = (torch.rand_like(rgb) > 0.5).float()
            loss = 1 - torch.cosine_similarity(self.mask(rgb * keep), self.enc(rgb).detach(), dim=1).mean()
        return {"loss": loss, "aux": loss.detach() * 2}

    @torch.no_grad()
    def bsmm_write(self, batch):
        _, rgb = self._feats(batch)
        self.bsmm += rgb.sum(0)
        self.writes += rgb.shape[0]

    def bsmm_finish(self):
        return {"sep_r": 0.0, "filled": float(self.writes)}

    def scores(self, batch):
        x, rgb = self._feats(batch)
        z = self.flow(x)
        return {"mo": (z - self.enc(rgb)).norm(dim=1), "app": 1 - torch.cosine_similarity(self.mask(rgb), self.enc(rgb), dim=1),
                "mm": (rgb - self.bsmm / self.writes.clamp(min=1)).norm(dim=1), "nll": ((z - 3.0) ** 2).sum(1)}


def fake_cfg(out, *extra):
    overrides = ["data=synthetic", f"train.out={out}", "train.batch_size=8", "train.log_every=2",
                 "train.ckpt_every=3", "train.stage1.steps=7", "train.stage2.steps=5", "train.stage3.steps=6",
                 "train.stage1.warmup=2", "train.stage4.batch_size=16", "eval.batch_size=32", "eval.max_plots=2",
                 *extra]
    return runs.compose_config(overrides)


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setattr(engine, "build_model", lambda model_cfg: FakeModel())
    monkeypatch.setattr(engine, "open_split", lambda data_cfg, split, ctx: FakeStore(split))


def _weights(path):
    return runs.load_checkpoint(path)["model"]


def test_all_stages_write_checkpoints_and_stats(tmp_path, fakes):
    res = T.train(fake_cfg(tmp_path / "run"))
    run = res["run"]
    assert not res["stopped"] and res["steps"] == 7 + 5 + 6
    for k in (1, 2, 3, 4):
        ck = torch.load(run.stage(k), weights_only=True)  # no pickled code
        assert ck["stage"] == k
        assert not run.snapshot(k).exists()
    s1, s2, s3, s4 = (_weights(run.stage(k)) for k in (1, 2, 3, 4))
    # each stage changes only its own part
    assert not torch.equal(s1["enc.weight"], s2["enc.weight"]) and torch.equal(s1["flow.weight"], s2["flow.weight"])
    assert torch.equal(s2["enc.weight"], s3["enc.weight"]) and not torch.equal(s2["mask.weight"], s3["mask.weight"])
    assert int(s4["writes"]) == len(FakeStore()) and torch.equal(s3["mask.weight"], s4["mask.weight"])
    hist = runs.load_checkpoint(run.stage(1))["history"]
    assert [p["step"] for p in hist] == [2, 4, 6, 7] and set(hist[0]) == {"step", "loss", "aux"}
    stats = runs.read_json(run.score_stats)
    assert set(stats) >= {"mo", "app", "mm", "nll", "fused", "lambdas"}
    assert stats["mo"]["min"] <= stats["mo"]["p50"] <= stats["mo"]["p99"] <= stats["mo"]["max"]
    assert (run.plots / "loss.png").stat().st_size > 0
    assert runs.load_config(run.config).train.stage1.steps == 7


@pytest.mark.parametrize("stop_after", [2, 7])
def test_resume_equals_uninterrupted(tmp_path, fakes, stop_after):
    full = T.train(fake_cfg(tmp_path / "full"))["run"]
    part = fake_cfg(tmp_path / "part", f"train.stop_after_steps={stop_after}")
    res = T.train(part)
    assert res["stopped"] and res["steps"] == stop_after
    assert not res["run"].stage(4).exists()
    while True:  # keep interrupting every `stop_after` steps until done
        res = T.train(fake_cfg(tmp_path / "part", f"train.stop_after_steps={stop_after}", "train.resume=true"))
        if not res["stopped"]:
            break
    for k in (1, 2, 3, 4):
        a, b = _weights(full.stage(k)), _weights(res["run"].stage(k))
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=f"stage {k} {name}")
    assert runs.load_checkpoint(full.stage(3))["history"] == runs.load_checkpoint(res["run"].stage(3))["history"]
    assert runs.read_json(full.score_stats) == runs.read_json(res["run"].score_stats)


def test_bad_runs(tmp_path, fakes):
    run_dir = tmp_path / "run"
    T.train(fake_cfg(run_dir, "train.stages=[1]"))
    # the folder has checkpoints: neither resume nor overwrite -> refuse
    with pytest.raises(RunError, match="already holds checkpoints"):
        T.train(fake_cfg(run_dir, "train.stages=[1,2]"))
    # resuming with another config -> refuse, naming the keys
    with pytest.raises(RunError, match="train.stage1.steps"):
        T.train(fake_cfg(run_dir, "train.stage1.steps=9", "train.resume=true"))
    # a stage whose prerequisite is missing
    with pytest.raises(RunError, match="stage2.pt"):
        T.train(fake_cfg(tmp_path / "other", "train.stages=[3]"))
    # a truncated checkpoint: clear error naming the file, nothing else touched
    ck = RunDir(run_dir).stage(1)
    ck.write_bytes(ck.read_bytes()[:100])
    with pytest.raises(RunError, match="stage1.pt cannot be read"):
        T.train(fake_cfg(run_dir, "train.stages=[2]", "train.resume=true"))
    # a checkpoint made with another model config
    T.train(fake_cfg(tmp_path / "m", "train.stages=[1]"))
    with pytest.raises(RunError, match="model.n_b"):
        T.load_model_state(FakeModel(), runs.load_checkpoint(RunDir(tmp_path / "m").stage(1)),
                           RunDir(tmp_path / "m").stage(1), fake_cfg(tmp_path / "m", "model.n_b=3"))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.pt"
    runs.save_checkpoint(target, {"a": torch.ones(2)})

    def boom(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.atomic_write(target, boom)
    assert torch.equal(runs.load_checkpoint(target)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_cli_errors(tmp_path, capsys):
    assert cli.main(["train", f"train.out={tmp_path}/r", "train.stages=[2]", "data=synthetic"]) == 2
    assert "stage1.pt" in capsys.readouterr().err
    assert cli.main(["train", "--bogus"]) == 2
    assert cli.main(["train", "nosuchgroup=1"]) == 2
    assert "nosuchgroup: unknown key; known keys: seed, data" in capsys.readouterr().err


def test_lr_schedule():
    lrs = [T._lr(s, 10, 1.0, 2) for s in range(10)]
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[-1] >= 0.1 and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def _count_host_reads(monkeypatch, filename):
    """Count tensor -> host reads (each one waits for the device on CUDA) made directly by code in
    `filename`: bool()/float()/int() of a tensor, .item(), .tolist(), .cpu(), .numpy()."""
    import sys
    calls = []
    for name in ("__bool__", "__float__", "__int__", "item", "tolist", "cpu", "numpy"):
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, _orig=orig, _name=name, **k):
            f = sys._getframe(1)
            if f.f_code.co_filename == filename:
                calls.append((_name, f.f_lineno))
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return calls


@pytest.mark.parametrize("log_every", [4, 24])
def test_no_per_step_host_sync(tmp_path, fakes, monkeypatch, log_every):
    """The loop reads the loss terms from the device once per history point / snapshot, not once
    per step: 24 steps cost as many reads as there are flushes (x the two terms), whatever the
    number of steps in between."""
    steps, ckpt_every = 24, 12
    calls = _count_host_reads(monkeypatch, T.__file__)
    res = T.train(fake_cfg(tmp_path / "run", "train.stages=[1]", f"train.stage1.steps={steps}",
                           f"train.log_every={log_every}", f"train.ckpt_every={ckpt_every}"))
    monkeypatch.undo()
    hist = runs.load_checkpoint(res["run"].stage(1))["history"]
    assert [p["step"] for p in hist] == list(range(log_every, steps + 1, log_every))
    flushes = len(hist) + len([s for s in range(ckpt_every, steps, ckpt_every) if s % log_every])
    assert 0 < len(calls) <= 2 * flushes, calls  # FakeModel returns two terms: loss, aux
    assert len(calls) < steps, calls


def test_loss_history_matches_per_step_floats():
    """_LossLog's batched reads give the same sums, bit for bit, as float(v) per step, across a
    resume from its (acc, n_acc) state; a non-finite loss names its step."""
    g = torch.Generator().manual_seed(0)
    outs = [{"loss": torch.rand((), generator=g) * 10 ** i, "aux": torch.rand((), generator=g).to(torch.bfloat16)}
            for i in range(-3, 4)]
    ref = {}
    for o in outs:
        for k, v in o.items():
            ref[k] = ref.get(k, 0.0) + float(v)
    log = T._LossLog()
    for s, o in enumerate(outs[:3]):
        log.add(s, o)
    log.flush(1)
    log = T._LossLog(log.acc, log.n_acc)  # what a resume restores
    for s, o in enumerate(outs[3:], start=3):
        log.add(s, o)
    log.flush(1)
    assert log.point(7) == {"step": 7, **{k: v / 7 for k, v in ref.items()}}
    log.add(0, outs[0])
    log.add(1, {"loss": torch.tensor(float("nan")), "aux": torch.tensor(1.0)})
    with pytest.raises(FloatingPointError, match="stage 2 step 1: loss is nan"):
        log.flush(2)
