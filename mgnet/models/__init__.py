"""The MGNet networks (one file each) and their assembly.

``MGNet(ModelConfig.small())``: see mgnet.models.mgnet for stages, losses and scores.
"""
from .config import ModelConfig  # noqa: F401
from .mgnet import MGNet, STAGE_MODULES, count_parameters  # noqa: F401

__all__ = ["ModelConfig", "MGNet", "STAGE_MODULES", "count_parameters"]
