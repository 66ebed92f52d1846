"""The ``mgnet::`` custom ops as their eager references, for torch.export / ONNX.

``torch.onnx.export(..., dynamo=True)`` cannot translate a custom op that has no decomposition, and
a ``.pt2`` holding ``mgnet::`` ops only loads where mgnet is installed. Each op's eager reference
(mgnet.ops.<op>_reference, the definition its kernels are tested against) is its decomposition:
``ExportedProgram.run_decompositions(DECOMPOSITIONS)`` replaces every custom-op node by the aten
graph of the reference, so no math is written twice. The ops' last argument, the backend name,
is dropped (the references have none).
"""
from __future__ import annotations

from typing import Callable, Dict

import torch

from mgnet import ops

OPS = ("lka3d", "lsta", "memory_address", "masked_cube_embed")


def _without_backend(reference: Callable) -> Callable:
    def decomposition(*args):
        return reference(*args[:-1])
    decomposition.__name__ = f"{reference.__name__}_decomposition"
    return decomposition


def decompositions() -> Dict[object, Callable]:
    """{torch.ops.mgnet.<op>.default: reference without the backend argument} for every forward op."""
    return {getattr(torch.ops.mgnet, name).default: _without_backend(getattr(ops, f"{name}_reference"))
            for name in OPS}


def custom_ops_in(graph) -> set:
    """Names of the ``mgnet::`` ops still called in an fx graph (empty after decomposition)."""
    return {str(n.target) for n in graph.nodes
            if n.op == "call_function" and str(getattr(n.target, "namespace", "")) == "mgnet"}
