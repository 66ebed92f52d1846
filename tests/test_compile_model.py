"""mgnet.engine.compile_model, the fast path of `train.compile` / `mgnet eval|score --compile`:

* scoring batches of six sizes compiles scores() twice (a static graph for the first size, one with a
  dynamic batch dimension for the others), results as eager;
* the compiled training loss backpropagates the same gradients as eager;
* a failing compile (forced) prints the fallback message once and runs eager with eager's results;
* no C++ compiler for inductor: the message names it and the model stays eager.
CompileCounter / aot_eager backends keep these fast; tests/test_compile.py has the graph-break checks
and one real inductor compile.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from mgnet import engine
from tests.test_compile import _tiny_model_and_batch

pytest.importorskip("mgnet.models.mgnet")


def _batch(cfg_model, B, seed):
    from tests.test_dropin import synthetic_batch
    torch.manual_seed(seed)
    return synthetic_batch(cfg_model.cfg, B)


def test_scores_of_any_batch_sizes_compile_two_graphs():
    """The first batch size gets a static graph; every other size shares one dynamic-batch graph."""
    torch._dynamo.reset()
    model, _ = _tiny_model_and_batch()
    model.eval()
    eager = model.scores
    cnt = CompileCounter()
    engine.compile_model(model, backend=cnt)
    assert isinstance(model.scores, engine._CompiledMethod)
    sizes = (3, 5, 2, 3, 4, 7)
    for i, B in enumerate(sizes):
        batch = _batch(model, B, i)
        with torch.inference_mode():
            out, ref = model.scores(batch), eager(batch)
        for k in ref:
            assert out[k].shape == (B,)
            torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-6)
        # after the first size: the static graph; after the second: the dynamic one, never a third
        assert cnt.frame_count == (1 if i == 0 else 2), f"batch sizes {sizes[:i + 1]}: {cnt.frame_count} graphs"
    assert model.scores.batch_size == 3 and model.scores.failed is None
    engine.compile_model(model, backend=cnt)   # idempotent: no second wrapper
    assert model.scores.eager == eager


def test_compiled_losses_give_eager_gradients():
    torch._dynamo.reset()
    model, batch = _tiny_model_and_batch()
    model.set_stage(2)
    params = [p for p in model.stage_parameters(2)]
    torch.manual_seed(5)
    ref = model.losses(batch, 2)["loss"]
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)
    engine.compile_model(model, backend="aot_eager")
    torch.manual_seed(5)
    out = model.losses(batch, 2)["loss"]
    g_out = torch.autograd.grad(out, params, allow_unused=True)
    assert model.losses.failed is None
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_out, g_ref):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_failed_compile_falls_back_to_eager_with_a_message(capsys):
    torch._dynamo.reset()
    model, batch = _tiny_model_and_batch()
    model.eval()
    with torch.inference_mode():
        ref = model.scores(batch)

    def broken(gm, example_inputs):
        raise RuntimeError("forced failure: cannot compile")
    engine.compile_model(model, backend=broken)
    with torch.inference_mode():
        out, again = model.scores(batch), model.scores(batch)
    err = capsys.readouterr().err
    assert err.count("torch.compile is not available here") == 1, err
    assert "running the model eager" in err
    assert "forced failure" in model.scores.failed
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])
        torch.testing.assert_close(again[k], ref[k])


def test_no_cpp_compiler_keeps_the_model_eager(monkeypatch, capsys):
    import torch._inductor.cpp_builder as cpp_builder

    def missing():
        raise RuntimeError("no g++ on PATH")
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    model, _ = _tiny_model_and_batch()
    scores = model.scores
    assert engine.compile_model(model) is model
    assert model.scores == scores and not isinstance(model.scores, engine._CompiledMethod)
    err = capsys.readouterr().err
    assert "no C++ compiler" in err and "no g++ on PATH" in err


def test_cli_compile_switches():
    from mgnet.jobs import evaluate, score
    assert evaluate.parse_argv(["run=r", "--compile", "eval.sigma=3"]) == ("r", ["eval.compile=true", "eval.sigma=3"])
    args = score.build_parser().parse_args(["--video", "v", "--poses", "p", "--engine", "onnx", "--model", "m",
                                            "--compile"])
    with pytest.raises(ValueError, match="--compile applies to --engine torch"):
        score._load_engine(args)
