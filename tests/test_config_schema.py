"""Typed configuration (mgnet.config_schema): every bad value of every job stops with exit status 2
and one line naming the key, the value and what is allowed, before anything is written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mgnet import cli, config_schema, runs

# (argv after `mgnet`, substrings the one-line message must hold: the key, the value, what is allowed)
BAD = [
    # train: wrong types
    (["train", "model.embed_dim=abc"], ["model.embed_dim", "'abc'", "an integer"]),
    (["train", "train.batch_size=1.5"], ["train.batch_size", "1.5", "an integer"]),
    (["train", "train.amp=1"], ["train.amp", "=1", "true or false"]),
    (["train", "train.stages=3"], ["train.stages", "=3", "a list of integers"]),
    (["train", "model.flow_temporal_kernel=x"], ["model.flow_temporal_kernel", "'x'", "an integer"]),
    (["train", "train.grad_clip=[1]"], ["train.grad_clip", "[1]", "a number"]),
    (["train", "data.splits=train"], ["data.splits", "'train'", "a list of strings"]),
    # train: out of range
    (["train", "train.batch_size=0"], ["train.batch_size", "=0", ">= 1"]),
    (["train", "train.threads=0"], ["train.threads", "=0", ">= 1"]),
    (["train", "train.stage1.lr=0"], ["train.stage1.lr", "=0", "> 0"]),
    (["train", "train.stage2.lr=nan"], ["train.stage2.lr", "nan", "finite"]),
    (["train", "train.stage2.warmup=-1"], ["train.stage2.warmup", "-1", ">= 0"]),
    (["train", "train.stage4.batch_size=0"], ["train.stage4.batch_size", "=0", ">= 1"]),
    (["train", "train.stages=[]"], ["train.stages", "[]", "non-empty"]),
    (["train", "seed=-1"], ["seed", "-1", ">= 0"]),
    (["train", "model.heads=0"], ["model.heads", "=0", ">= 1"]),
    (["train", "model.mask_ratio=1.5"], ["model.mask_ratio", "1.5", "(0, 1)"]),
    (["train", "data.box_min_conf=2"], ["data.box_min_conf", "2", "<= 1"]),
    (["train", "data.max_gap=-3"], ["data.max_gap", "-3", ">= 0"]),
    (["train", "data.max_jump=-0.5"], ["data.max_jump", "-0.5", ">= 0"]),
    (["train", "data.seg_len=0"], ["data.seg_len", "=0", ">= 2"]),
    # train: unknown choices and keys
    (["train", "train.stages=[1,5]"], ["train.stages[1]", "5", "one of 0, 1, 2, 3, 4"]),
    (["train", "train.device=tpu"], ["train.device", "'tpu'", "auto, cpu, cuda"]),
    (["train", "data.kind=bogus"], ["data.kind", "'bogus'", "synthetic"]),
    (["train", "data.synth.size=huge"], ["data.synth.size", "'huge'", "tiny, small, full"]),
    (["train", "model.ops_backend=gpu"], ["model.ops_backend", "'gpu'", "triton"]),
    (["train", "model.app_target=pixels"], ["model.app_target", "'pixels'", "'foreground', 'cubes' or 'memory'"]),
    (["train", "model.preset=huge"], ["model.preset", "'huge'", "expected"]),
    (["train", "data=bogus"], ["data", "'bogus'", "synthetic, ubnormal"]),
    (["train", "experiment=nope"], ["experiment", "'nope'", "demo, tiny"]),
    (["train", "train.foo=1"], ["train.foo", "unknown key", "batch_size"]),
    (["train", "+train.foo=1"], ["train.foo", "unknown key", "stage4"]),
    (["train", "model.foo=1"], ["model.foo", "unknown key", "embed_dim"]),
    (["train", "train.stage1.steps.x=1"], ["train.stage1.steps.x", "a value, not a group"]),
    (["train", "data=shanghaitech", "data.synth.size=tiny"], ["data.synth.size", "data=shanghaitech"]),
    (["train", "data=folder"], ["data.root", "required"]),
    # train: inconsistent pairs
    (["train", "model.embed_dim=30"], ["model.embed_dim", "30", "divisible by heads=4"]),
    (["train", "model.seg_len=8"], ["model.seg_len", "8", "data.seg_len=16"]),
    (["train", "model.crop=48"], ["model.crop", "48", "data.crop_size=64"]),
    (["train", "model.joints=17"], ["model.c_mo", "36", "2 * joints = 34"]),
    # the other hydra jobs
    (["prepare", "data.test_stride=0"], ["data.test_stride", "=0", ">= 1"]),
    (["prepare", "data.decode_chunk=many"], ["data.decode_chunk", "'many'", "an integer"]),
    (["demo", "train.batch_size=-8"], ["train.batch_size", "-8", ">= 1"]),
    (["demo", "--seed", "-2"], ["seed", "-2", ">= 0"]),
    (["synth", "--out", "s", "--seed", "-3"], ["--seed", "-3", ">= 0"]),
    (["synth", "--out", "s", "--workers", "0"], ["--workers", "=0", ">= 1"]),
    (["synth", "--out", "s", "--seed", "x"], ["--seed", "invalid int value: 'x'", "mgnet synth --help"]),
    (["demo", "--size", "huge"], ["--size", "invalid choice: 'huge'"]),
    # eval: overrides of a run's config.yaml ({run} is a valid run folder)
    (["eval", "run={run}", "eval.sigma=-1"], ["eval.sigma", "-1", ">= 0"]),
    (["eval", "run={run}", "eval.batch_size=0"], ["eval.batch_size", "=0", ">= 1"]),
    (["eval", "run={run}", "eval.plots=maybe"], ["eval.plots", "'maybe'", "true or false"]),
    (["eval", "run={run}", "eval.max_plots=-1"], ["eval.max_plots", "-1", ">= 0"]),
    (["eval", "run={run}", "eval.simga=3"], ["eval.simga", "unknown key", "sigma"]),
    (["eval", "run={run}", "model.lambda_app=-1"], ["model.lambda_app", "-1", ">= 0"]),
    # score: options, then the run's config
    (["score", "--video", "v.mp4", "--poses", "p.json", "--run", "{run}", "--batch-size", "0"],
     ["--batch-size", "=0", ">= 1"]),
    (["score", "--video", "v.mp4", "--poses", "p.json", "--run", "{run}", "--fps", "0"], ["--fps", "0", "> 0"]),
    (["score", "--video", "v.mp4", "--poses", "p.json", "--run", "{run}", "--threshold", "p98"],
     ["--threshold", "'p98'", "p50, p90, p95, p99"]),
    (["score", "--video", "v.mp4", "--poses", "p.json", "--run", "{run}", "--merge-gap", "-1"],
     ["--merge-gap", "-1", ">= 0"]),
    (["score", "--video", "v.mp4", "--poses", "p.json", "--run", "{run}", "--min-event", "0"],
     ["--min-event", "=0", ">= 1"]),
    (["score", "--video", "v.mp4", "--poses", "p.json", "--run", "{run}", "--threads", "0"],
     ["--threads", "=0", ">= 1"]),
    (["score", "--video", "v.mp4", "--poses", "p.json", "--run", "{run}", "--device", "tpu"],
     ["--device", "'tpu'", "cuda:<index>"]),
    (["score", "--video", "v.mp4", "--poses", "p.json", "--run", "{badrun}"], ["model.embed_dim", "'wide'", "an integer"]),
    (["score", "--video", "v.mp4", "--poses", "p.json", "--run", "{run}", "--batch-size", "many"],
     ["--batch-size", "invalid int value: 'many'"]),
    (["score", "--poses", "p.json", "--run", "{run}"], ["required", "--video"]),
    (["eval", "run={badrun}"], ["model.embed_dim", "'wide'", "an integer"]),
]


def _tree(root: Path):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def run_configs():
    """config.yaml texts: a valid run's and one whose model.embed_dim is not a number."""
    cfg = runs.to_container(runs.compose_config(["experiment=tiny"]))
    good = OmegaConf.to_yaml(OmegaConf.create(cfg))
    cfg["model"]["embed_dim"] = "wide"
    return good, OmegaConf.to_yaml(OmegaConf.create(cfg))


@pytest.fixture
def sandbox(tmp_path, monkeypatch, run_configs):
    """An empty working folder (relative train.out and data roots land in it) and two run folders
    holding only a config.yaml: a valid one and one whose model.embed_dim is not a number."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MGNET_DATA_DIR", str(work / "data"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for name, text in zip(("run", "badrun"), run_configs):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(text)
    return tmp_path


@pytest.mark.parametrize("argv,expect", BAD, ids=[" ".join(a).replace("/", "_") for a, _ in BAD])
def test_bad_value_stops_with_one_line_and_status_2(sandbox, capsys, argv, expect):
    argv = [a.format(run=sandbox / "run", badrun=sandbox / "badrun") for a in argv]
    before = _tree(sandbox)
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mgnet {argv[0]}: error: ")
    for s in expect:
        assert s in lines[0], (s, lines[0])
    assert "Traceback" not in err + out
    assert _tree(sandbox) == before  # nothing written: no run folder, no data, no output folder


def test_batch_size_not_divisible_by_world_size(sandbox, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert cli.main(["train", "train.batch_size=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.batch_size=8" in err and "WORLD_SIZE=3" in err and "\n" not in err
    assert not any((sandbox / "work").iterdir())


def test_bad_overrides_through_a_subprocess(tmp_path):
    """The installed entry point: no traceback, status 2, one line; nothing under the cwd."""
    env = {**os.environ, "MGNET_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(Path(__file__).parents[1])}
    for argv, key in ((["train", "model.embed_dim=abc"], "model.embed_dim='abc'"),
                      (["train", "train.batch_size=0"], "train.batch_size=0"),
                      (["eval", f"run={tmp_path}/none", "eval.sigma=x"], "config.yaml")):
        r = subprocess.run([sys.executable, "-m", "mgnet.cli", *argv], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and key in r.stderr and "Traceback" not in r.stderr
        assert list(tmp_path.iterdir()) == []


CONF = Path(config_schema.__file__).parent / "conf"
OPTIONS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONF.iterdir() if g.is_dir()}


@pytest.mark.parametrize("overrides", [[f"{group}={option}"] for group, options in sorted(OPTIONS.items())
                                       for option in options if group != "data" or option != "folder"])
def test_every_shipped_config_passes(overrides):
    """The yaml files and the schema agree: each group option and experiment validates (a key
    added to a yaml file without its schema field fails here)."""
    cfg = config_schema.compose(overrides)
    assert cfg.data.kind == (overrides[0][5:] if overrides[0].startswith("data=") else "synthetic")
    assert cfg.train.batch_size >= 1 and cfg.model.embed_dim >= 1


def test_folder_config_passes_with_a_root(tmp_path):
    cfg = config_schema.compose(["data=folder", f"data.root={tmp_path}"])
    assert cfg.data.root == str(tmp_path) and cfg.data.synth is None


def test_missing_keys_take_the_defaults_and_numbers_become_strings(tmp_path):
    cfg = runs.to_container(runs.compose_config(["experiment=tiny", "train.out=2024"]))
    del cfg["train"]["score_stats"], cfg["eval"]           # a run written before these keys existed
    out = config_schema.validate(OmegaConf.create(cfg))
    assert out.train.score_stats is True and out.eval.sigma == 7.0 and out.eval.max_plots == 200
    assert out.train.out == "2024"


def test_schema_defaults_match_the_shipped_defaults():
    """The dataclass defaults are the yaml defaults (one truth for what a missing key means)."""
    cfg = runs.to_container(runs.compose_config([]))
    for group, schema in (("train", config_schema.Train), ("eval", config_schema.Eval)):
        d = config_schema.check_plain(cfg)[group]
        for f in schema.__dataclass_fields__.values():
            default = f.default if f.default_factory is config_schema.REQUIRED else f.default_factory()
            if default is config_schema.REQUIRED:
                continue
            if hasattr(default, "__dataclass_fields__"):
                import dataclasses
                default = dataclasses.asdict(default)
                if group == "train" and f.name.startswith("stage") and f.name != "stage4":
                    continue  # stage budgets differ per stage in the yaml
            assert d[f.name] == default, (group, f.name)


def test_a_run_config_without_a_newer_model_key_builds_the_model_it_was_trained_as():
    """config.yaml of a run trained before model.fg_missing_weight existed has no such key: its model
    scores S_app by the Euclidean distance (1.0), as its score_stats.json was made; a new run gets
    the config group's default."""
    from mgnet import engine
    cfg = config_schema.compose([])
    assert cfg.model.fg_missing_weight == 0.25
    model = runs.to_container(cfg.model)
    assert engine.build_model(model).fg_mem.missing_weight == 0.25
    old = {k: v for k, v in model.items() if k != "fg_missing_weight"}
    assert engine.build_model(old).fg_mem.missing_weight == 1.0
