"""Eager backward shared by the ops: recompute the reference under autograd and differentiate.

The eager backend is the definition of each op; its backward is exactly autograd through the
reference, so a fused kernel's gradients are tested against the same thing users would get from
plain PyTorch.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional, Sequence

import torch

_K = torch._C.DispatchKey
_AUTOGRAD_KEYS = (_K.AutogradFunctionality, _K.AutogradOther, _K.AutogradNestedTensor, _K.ADInplaceOrView)


@contextmanager
def _autograd_reenabled():
    """A custom op's implementation runs below the autograd dispatch keys (they are excluded in
    thread-local state), so the reference could not record a graph there. Re-admit them for the
    duration of the recomputation and restore the exclusion afterwards."""
    excluded = [k for k in _AUTOGRAD_KEYS if torch._C._dispatch_tls_is_dispatch_key_excluded(k)]
    for k in excluded:
        torch._C._dispatch_tls_set_dispatch_key_excluded(k, False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for k in excluded:
            torch._C._dispatch_tls_set_dispatch_key_excluded(k, True)


def autograd_backward(reference: Callable, inputs: Sequence[Optional[torch.Tensor]],
                      grads: Sequence[Optional[torch.Tensor]], needs: Sequence[bool], **kwargs):
    """Gradients of `reference(*inputs, **kwargs)` w.r.t. the inputs flagged in `needs`.

    Returns one entry per input: a tensor, or None where not needed / not a tensor / unused.
    """
    with _autograd_reenabled():
        leaves = []
        for t, need in zip(inputs, needs):
            if t is not None and need and t.is_floating_point():
                leaves.append(t.detach().requires_grad_(True))
            else:
                leaves.append(t.detach() if isinstance(t, torch.Tensor) else t)
        outs = reference(*leaves, **kwargs)
        if isinstance(outs, torch.Tensor):
            outs = (outs,)
        pairs = [(o, g) for o, g in zip(outs, grads)
                 if g is not None and isinstance(o, torch.Tensor) and o.requires_grad]
        wrt = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
        if not pairs or not wrt:
            return [None] * len(inputs)
        got = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
    it = iter(got)
    res = []
    for t in leaves:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            g = next(it)
            res.append(torch.zeros_like(t) if g is None else g)
        else:
            res.append(None)
    return res
