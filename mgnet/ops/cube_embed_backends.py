"""Fused kernels of masked_cube_embed: cpu (C++ in mgnet._C), cuda (CUDA in mgnet._C), triton
(mgnet.kernels.cube_embed). A kernel that is not built leaves its backend unregistered; importing
this module never fails for a missing build, and triton is imported only when first used."""
from __future__ import annotations

import torch

from . import _dispatch

OP = "masked_cube_embed"


def _compiled(device_type: str):
    fwd_name, bwd_name = f"{OP}_forward_{device_type}", f"{OP}_backward_{device_type}"
    if not (_dispatch.ext_has(fwd_name) and _dispatch.ext_has(bwd_name)):
        return None

    def forward(frames, visible, weight, bias, pos, mean, std):
        return getattr(torch.ops.mgnet_C, fwd_name)(frames, visible, weight, bias, pos, mean, std)

    def backward(grad, frames, visible, weight, bias, pos, mean, std):
        gw, gb, gp = getattr(torch.ops.mgnet_C, bwd_name)(grad, frames, visible, weight, pos, mean, std)
        return gw, gb, (gp if pos is not None else None)

    return forward, backward


def _triton_forward(frames, visible, weight, bias, pos, mean, std):
    from mgnet.kernels import cube_embed as k
    return k.forward(frames, visible, weight, bias, pos, mean, std)


def _triton_backward(grad, frames, visible, weight, bias, pos, mean, std):
    from mgnet.kernels import cube_embed as k
    return k.backward(grad, frames, visible, weight, bias, pos, mean, std)


def _register() -> None:
    cpu = _compiled("cpu")
    if cpu is not None:
        _dispatch.register_kernel(OP, "cpu", *cpu, available=lambda d: d.type == "cpu")
    cuda = _compiled("cuda")
    if cuda is not None:
        _dispatch.register_kernel(OP, "cuda", *cuda, available=lambda d: d.type == "cuda")
    _dispatch.register_kernel(OP, "triton", _triton_forward, _triton_backward,
                              available=_dispatch.triton_usable)
    _dispatch.set_auto_order(OP, "cpu", ["cpu", "eager"])
    _dispatch.set_auto_order(OP, "cuda", ["cuda", "triton", "eager"])


_register()
