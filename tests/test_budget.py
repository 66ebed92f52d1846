"""Training budgets in epochs: a stage's steps scale with the number of training clips."""
import pytest
from omegaconf import OmegaConf

from mgnet import runs
from mgnet.training import stage_steps


def test_epochs_scale_with_the_data_and_steps_win_when_set():
    ep = OmegaConf.create({"steps": None, "epochs": 3})
    assert stage_steps(ep, 3237, 32) == 304            # ceil(3 * 3237 / 32) = ceil(303.47)
    assert stage_steps(ep, 32_370, 32) == 3035         # ten times the clips, ten times the steps
    assert stage_steps(OmegaConf.create({"steps": None, "epochs": 0.01}), 100, 32) == 1   # at least one
    assert stage_steps(OmegaConf.create({"steps": 7, "epochs": 3}), 3237, 32) == 7
    with pytest.raises(ValueError, match="epochs"):
        stage_steps(OmegaConf.create({"steps": None, "epochs": None}), 100, 32)


def test_default_and_demo_budgets_are_epochs():
    cfg = runs.compose_config([])
    assert cfg.train.stage1.steps is None and cfg.train.stage1.epochs == 3
    demo = runs.compose_config(["experiment=demo"])
    # the small benchmark's 2186 training clips at batch 32: 103 and 82 steps
    assert stage_steps(demo.train.stage1, 2186, 32) == 103
    assert stage_steps(demo.train.stage2, 2186, 32) == 82
    assert runs.compose_config(["experiment=tiny"]).train.stage1.steps == 6   # fixed steps still work
