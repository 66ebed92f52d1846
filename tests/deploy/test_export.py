"""`mgnet export`: a trained tiny run exported as ONNX and as torch.export .pt2 scores every test clip
as the torch model + the library's normalisation do (within 1e-4), with a dynamic batch; the
custom ops are decomposed into their references; bad input stops with one message."""
import contextlib
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch

from mgnet.cli import main as cli
from mgnet import scoring
from mgnet.deploy.module import INPUTS, NotAffineError, component_affine, norm_output

TOL = 1e-4


def _reference_scores(run):
    """Every test clip scored by the torch model (MGNet.scores) and normalised by the library function
    `mgnet score` uses (mgnet.inference.fused_scores): {output: (N,)} plus the clip inputs."""
    from mgnet.engine import load_run
    from mgnet.inference import fused_scores, load_score_stats
    from mgnet.engine import Dist, open_split
    model, cfg = load_run(run)
    stats = load_score_stats(run)
    lambdas = {k: float(cfg.model[f"lambda_{k}"]) for k in ("mo", "app", "mm", "pose")}
    ctx = Dist("cpu")
    store = open_split(cfg.data, "test", ctx)
    ctx.close()
    items = [store[i] for i in range(len(store))]
    inputs = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in INPUTS}
    parts = []
    with torch.inference_mode():
        for lo in range(0, len(items), 128):
            parts.append(model.scores({k: v[lo:lo + 128] for k, v in inputs.items()}))
    raw = {k: torch.cat([p[k] for p in parts]).double().numpy() for k in parts[0]}
    ref = {norm_output(k): v for k, v in fused_scores(raw, stats, lambdas).items()}
    ref.update({f"raw_{k}": raw[k] for k in scoring.fused_components(raw, stats)})
    # a default run: z-scores against the training clips, pos_mean, and S_pose fused
    assert stats["fusion"]["norm"] == "z" and stats["fusion"]["combine"] == "pos_mean" and "s_pose" in ref
    return inputs, ref, stats


@pytest.fixture(scope="module")
def reference(trained_run):
    return _reference_scores(trained_run[1])


def _check_against_reference(model, reference):
    """Score the test clips in batches of 1, 5 and 128 (dynamic batch) and compare."""
    inputs, ref, _ = reference
    n = len(inputs["rgb"])
    assert n > 6
    got = {k: [] for k in ref}
    for lo, hi in [(0, 1), (1, 6)] + [(lo, min(lo + 128, n)) for lo in range(6, n, 128)]:
        out = dict(zip(model.outputs, model.forward(*(inputs[k][lo:hi] for k in INPUTS))))
        for k in got:
            assert out[k].shape == (hi - lo,)
            got[k].append(out[k])
    for k in ref:
        np.testing.assert_allclose(np.concatenate(got[k]), ref[k], rtol=0, atol=TOL, err_msg=k)
    # the components differ between clips (the comparison is not between constants)
    assert np.ptp(ref["score"]) > 1e-3 and np.ptp(ref["mo"]) > 1e-3 and np.ptp(ref["s_pose"]) > 1e-3
    assert sorted(model.outputs) == sorted(ref)
    return {k: float(np.max(np.abs(np.concatenate(got[k]) - ref[k]))) for k in ref}


@pytest.mark.slow
def test_onnx_export_scores_every_test_clip_like_torch(onnx_export, reference):
    import onnx
    from mgnet.deploy.runtime import load_exported
    folder, err = onnx_export
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.onnx"]
    meta = json.loads((folder / "metadata.json").read_text())
    stats = reference[2]
    assert meta["score_stats"] == stats and meta["threshold"]["value"] == stats["fused"]["p99"]
    assert meta["clip"]["seg_len"] == 16 and meta["keypoints"]["layout"] == "openpose18"
    assert len(meta["keypoints"]["joints"]) == 18 and set(meta["lambdas"]) == {"mo", "app", "mm", "pose"}
    assert meta["fusion"]["norm"] == "z" and meta["fusion"]["combine"] == "pos_mean"
    assert meta["outputs"] == ["score", "mo", "app", "mm", "s_pose", "nll", "raw_mo", "raw_app", "raw_mm", "raw_pose"]
    proto = onnx.load(str(folder / "model.onnx"))
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    for key in ("score_stats", "lambdas", "threshold", "clip", "keypoints", "outputs", "fusion"):
        assert props[f"mgnet.{key}"] == meta[key], key
    assert all(not n.domain.startswith("mgnet") for n in proto.graph.node)     # no custom op left
    batch = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][0]
    assert isinstance(batch, str) and batch                                      # dynamic batch
    print("onnx max |diff|", _check_against_reference(load_exported(folder), reference))
    # --verify: the largest difference over the run's test clips, printed and kept in the metadata
    m = re.search(r"verify on (\d+) test clips: largest difference ([0-9.e+-]+)", err)
    assert m and int(m.group(1)) == len(reference[0]["rgb"]) and float(m.group(2)) < TOL
    assert meta["verify"]["largest"] == pytest.approx(float(m.group(2)), rel=1e-2)


@pytest.mark.slow
def test_pt2_export_scores_every_test_clip_like_torch(pt2_export, reference):
    from mgnet.deploy.runtime import load_exported
    folder, err = pt2_export
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.pt2"]
    ep = torch.export.load(str(folder / "model.pt2"))
    assert not [n for n in ep.graph.nodes if n.op == "call_function" and "mgnet" in str(n.target)]
    print("pt2 max |diff|", _check_against_reference(load_exported(folder), reference))
    assert "exported" in err and "model.pt2" in err


def _run_cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli(argv)
    return rc, err.getvalue()


@pytest.mark.slow
def test_export_of_a_run_without_stage_4_fails_with_one_message(trained_run, tmp_path):
    _, run = trained_run
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "score_stats.json"):
        shutil.copy(run / name, part / name)
    for k in (1, 2, 3):
        shutil.copy(run / "checkpoints" / f"stage{k}.pt", part / "checkpoints" / f"stage{k}.pt")
    rc, err = _run_cli(["export", "--run", str(part), "--out", str(tmp_path / "out")])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "stage-4" in lines[0] and str(part) in lines[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    # an --out that is not an earlier export is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    rc, err = _run_cli(["export", "--run", str(run), "--out", str(tmp_path / "mine")])
    assert rc == 2 and "not an earlier mgnet export" in err and (tmp_path / "mine" / "keep.txt").exists()


def test_component_affine_reads_off_the_library_and_refuses_a_non_affine_normaliser():
    stats = {"mo": {"min": 2.0, "max": 7.0, "mean": 4.0, "std": 2.0}, "app": {"min": -1.0, "max": 0.5,
             "mean": 0.0, "std": 0.0}}
    x = np.random.default_rng(1).normal(size=50) * 4
    for norm in scoring.NORMS:
        for k in stats:
            a, b = component_affine(stats, k, norm)
            np.testing.assert_allclose(a * x + b, scoring.normalize(x, k, norm, stats), rtol=1e-12, atol=1e-12)
    # by hand: z of mo is (x - 4) / 2, min-max of mo (x - 2) / 5; a constant training score maps to 0
    assert component_affine(stats, "mo", "z") == pytest.approx((0.5, -2.0))
    assert component_affine(stats, "mo", "minmax") == pytest.approx((0.2, -0.4))
    assert component_affine(stats, "app", "z") == (0.0, 0.0)

    def clipped(x, name, norm, stats):
        return np.clip(scoring.normalize(x, name, norm, stats), -1, 1)
    with pytest.raises(NotAffineError, match="'mo' is not affine"):
        component_affine(stats, "mo", "z", normalize=clipped)


def test_torch_combine_equals_the_numpy_combine():
    rng = np.random.default_rng(0)
    parts, w = rng.normal(size=(40, 4)), rng.random(4) + 0.1
    for how in scoring.COMBINES:
        want = scoring.combine_parts(parts, w, how)
        got = scoring.combine_parts(torch.from_numpy(parts), torch.from_numpy(w), how)
        assert isinstance(got, torch.Tensor) and got.shape == (40,)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12, err_msg=how)
    # by hand: parts (1, -2, 3, 0.5), weights (1, 2, 1, 4)
    p, w = np.array([[1.0, -2.0, 3.0, 0.5]]), np.array([1.0, 2.0, 1.0, 4.0])
    for how, want in (("sum", 1 - 4 + 3 + 2), ("pos_mean", (1 + 3 + 2) / 8), ("max", 3.0)):
        assert float(scoring.combine_parts(torch.from_numpy(p), torch.from_numpy(w), how)[0]) == pytest.approx(want)
        assert float(scoring.combine_parts(p, w, how)[0]) == pytest.approx(want)
    with pytest.raises(ValueError, match="combine"):
        scoring.combine_parts(p, w, "median")


def test_every_forward_op_has_its_reference_as_decomposition():
    import mgnet.ops as ops
    from mgnet.deploy.decompose import OPS, decompositions
    table = decompositions()
    forward_ops = {name for name in dir(torch.ops.mgnet) if not name.endswith("_backward")
                   and isinstance(getattr(torch.ops.mgnet, name, None), torch._ops.OpOverloadPacket)}
    assert forward_ops == set(OPS)
    g = torch.Generator().manual_seed(0)
    q, mem = torch.randn(5, 8, generator=g), torch.randn(4, 8, generator=g)
    w, r, t = table[torch.ops.mgnet.memory_address.default](q, mem, "eager")
    w2, r2, t2 = ops.memory_address(q, mem)
    torch.testing.assert_close(w, w2)
    torch.testing.assert_close(r, r2)
    assert torch.equal(t, t2)
