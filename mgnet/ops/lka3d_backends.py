"""cpu / cuda / triton kernels of `lka3d` and `lsta` (see mgnet/ops/lka3d.py for the contract).

cpu:    torch.ops.mgnet_C.{lka3d,lsta}_{forward,backward}_cpu (csrc/lka3d/lka3d_cpu.cpp); float32 and
        float64 natively, float16/bfloat16 computed in float32 and cast back.
cuda:   torch.ops.mgnet_C.{lka3d,lsta}_{forward,backward}_cuda (csrc/lka3d/lka3d_cuda.cpp + .cu).
triton: mgnet.kernels.lka3d (imported on first use, so `import mgnet` never needs triton).
A backend whose compiled functions are missing is simply unavailable (`available` is False).
"""
from __future__ import annotations

import torch

from . import _dispatch

_NATIVE_CPU = (torch.float32, torch.float64)


def _cpu_available(op):
    def available(device: torch.device) -> bool:
        return device.type == "cpu" and _dispatch.ext_has(f"{op}_forward_cpu") and _dispatch.ext_has(f"{op}_backward_cpu")
    return available


def _cuda_available(op):
    def available(device: torch.device) -> bool:
        return device.type == "cuda" and _dispatch.ext_has(f"{op}_forward_cuda") and _dispatch.ext_has(f"{op}_backward_cuda")
    return available


def _upcast(tensors):
    """The CPU kernels take float32/float64; half types run in float32 and are cast back."""
    dt = tensors[0].dtype
    if dt in _NATIVE_CPU:
        return dt, tensors
    return dt, [t.float() for t in tensors]


def _make_cpu(op):
    fwd_name, bwd_name = f"{op}_forward_cpu", f"{op}_backward_cpu"

    def forward(x, w0, b0, w1, b1, wp, bp, dilation):
        dt, ts = _upcast([x, w0, b0, w1, b1, wp, bp])
        return getattr(torch.ops.mgnet_C, fwd_name)(*ts, dilation).to(dt)

    def backward(grad, x, w0, b0, w1, b1, wp, bp, dilation):
        dt, ts = _upcast([grad, x, w0, b0, w1, b1, wp, bp])
        return [g.to(dt) for g in getattr(torch.ops.mgnet_C, bwd_name)(*ts, dilation)]

    return forward, backward


def _make_cuda(op):
    fwd_name, bwd_name = f"{op}_forward_cuda", f"{op}_backward_cuda"

    def forward(x, w0, b0, w1, b1, wp, bp, dilation):
        return getattr(torch.ops.mgnet_C, fwd_name)(x, w0, b0, w1, b1, wp, bp, dilation)

    def backward(grad, x, w0, b0, w1, b1, wp, bp, dilation):
        return list(getattr(torch.ops.mgnet_C, bwd_name)(grad, x, w0, b0, w1, b1, wp, bp, dilation))

    return forward, backward


def _make_triton(op):
    def forward(*args):
        from mgnet.kernels import lka3d as k
        return getattr(k, f"{op}_forward")(*args)

    def backward(*args):
        from mgnet.kernels import lka3d as k
        return getattr(k, f"{op}_backward")(*args)

    return forward, backward


for _op in ("lka3d", "lsta"):
    _dispatch.register_kernel(_op, "cpu", *_make_cpu(_op), available=_cpu_available(_op))
    _dispatch.register_kernel(_op, "cuda", *_make_cuda(_op), available=_cuda_available(_op))
    _dispatch.register_kernel(_op, "triton", *_make_triton(_op), available=_dispatch.triton_usable)
    _dispatch.set_auto_order(_op, "cpu", ["cpu", "eager"])
    _dispatch.set_auto_order(_op, "cuda", ["cuda", "triton", "eager"])
