"""``train.deterministic=true``: bit-identical training at any CPU thread count.

By default a training run is reproducible at a fixed thread count (``train.threads``), but torch
splits some reductions by the number of threads, so runs at 1 and at 2 threads differ in the last
bits of a few tensors and then drift apart. Found by replaying every op of a tiny training run
(stages 1-3) recorded at 2 threads on the same inputs at 1 thread:

=================================  ==============================================  ======================
op                                 why it depends on the thread count              what this module does
=================================  ==============================================  ======================
``mgnet.masked_cube_embed``        grad_weight partials were per thread            fixed in the C++ kernel
backward (``rgb_encoder.embed``)                                                   (always, chunked by size)
``aten.convolution`` (+ backward)  oneDNN blocks its reductions by the threads     ``mkldnn.enabled=False``
                                   (STG-NF's 1x1 convolutions)                     (ATen's own convolution)
``aten.native_layer_norm_backward``  weight / bias grads summed in per-thread      LayerNorm as normalise,
                                   buffers                                         then ``* w + b``
``aten.index_put`` (accumulate)    parallel accumulation (indexing's backward)     deterministic algorithms
=================================  ==============================================  ======================

``mgnet.memory_address``'s backward had per-thread partials too (not hit by the tiny run, whose
memories see few queries); its C++ kernel now sums a fixed number of chunks in order, always.

What stays outside: torch's reductions of a whole tensor to one number (``sum()``, ``mean()``,
not ``norm()``) are split over the threads above 32768 elements. In MGNet's training step they make
the losses, means over per-sample or per-token values (far fewer elements at the configs here), and
the gradient of a mean does not depend on its value: the weights are unaffected either way. On CUDA,
``torch.use_deterministic_algorithms`` is set in warn-only mode and the mgnet CUDA kernels
accumulate with atomics: GPU runs are reproducible only to rounding. Shown by
tests/test_determinism.py (ops, LayerNorm) and the slow run of ``experiment=tiny`` at 1 and 2
threads whose checkpoints are compared bit for bit.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class OrderedLayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose weight and bias gradients are column sums (fixed order at any thread
    count): the normalisation without affine, then the broadcast ``* weight + bias``. Same
    parameters and state_dict as nn.LayerNorm; equal to it up to rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


def enable(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Switch torch to its deterministic paths and make ``model``'s LayerNorms ordered (in place).
    Returns a function that restores torch's previous global settings (the model keeps its
    ordered LayerNorms)."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.mkldnn.enabled, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    cuda = torch.device(device).type == "cuda"
    if cuda:  # cuBLAS reads it when its handle is created
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=cuda)
    torch.backends.mkldnn.enabled = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    for m in model.modules():
        if type(m) is nn.LayerNorm:
            m.__class__ = OrderedLayerNorm

    def restore() -> None:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.backends.mkldnn.enabled = prev[2]
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[3], prev[4]

    return restore
