"""Fused kernels of memory_address: cpu (C++ in mgnet._C, csrc/memory/memory_cpu.cpp), cuda (CUDA in
mgnet._C, csrc/memory/memory_kernels.cu) and triton (mgnet.kernels.memory). A kernel that is not
built leaves its backend unregistered; importing this module never fails for a missing build, and
triton is imported only when the triton backend first runs.

The C++ CPU kernel computes in float32 or float64; float16 / bfloat16 CPU tensors are computed in
float32 and rounded back (the eager reference on CPU does the same inside its matmuls).
"""
from __future__ import annotations

import torch

from . import _dispatch

OP = "memory_address"
_LOW = (torch.float16, torch.bfloat16)


def _cpu_kernels():
    fwd_name, bwd_name = f"{OP}_forward_cpu", f"{OP}_backward_cpu"
    if not (_dispatch.ext_has(fwd_name) and _dispatch.ext_has(bwd_name)):
        return None

    def forward(q, mem):
        if q.dtype in _LOW:
            w, r, t = getattr(torch.ops.mgnet_C, fwd_name)(q.float(), mem.float())
            return w.to(q.dtype), r.to(q.dtype), t
        return getattr(torch.ops.mgnet_C, fwd_name)(q, mem)

    def backward(grad_weights, grad_read, q, mem, weights):
        if q.dtype in _LOW:
            gq, gm = getattr(torch.ops.mgnet_C, bwd_name)(grad_weights.float(), grad_read.float(), q.float(),
                                                         mem.float(), weights.float())
            return gq.to(q.dtype), gm.to(q.dtype)
        return getattr(torch.ops.mgnet_C, bwd_name)(grad_weights, grad_read, q, mem, weights)

    return forward, backward


def _cuda_kernels():
    fwd_name, bwd_name = f"{OP}_forward_cuda", f"{OP}_backward_cuda"
    if not (_dispatch.ext_has(fwd_name) and _dispatch.ext_has(bwd_name)):
        return None

    def forward(q, mem):
        return getattr(torch.ops.mgnet_C, fwd_name)(q, mem)

    def backward(grad_weights, grad_read, q, mem, weights):
        return getattr(torch.ops.mgnet_C, bwd_name)(grad_weights, grad_read, q, mem, weights)

    return forward, backward


def _triton_forward(q, mem):
    from mgnet.kernels import memory as k
    return k.forward(q, mem)


def _triton_backward(grad_weights, grad_read, q, mem, weights):
    from mgnet.kernels import memory as k
    return k.backward(grad_weights, grad_read, q, mem, weights)


def _register() -> None:
    cpu = _cpu_kernels()
    if cpu is not None:
        _dispatch.register_kernel(OP, "cpu", *cpu, available=lambda d: d.type == "cpu")
    cuda = _cuda_kernels()
    if cuda is not None:
        _dispatch.register_kernel(OP, "cuda", *cuda, available=lambda d: d.type == "cuda")
    _dispatch.register_kernel(OP, "triton", _triton_forward, _triton_backward, available=_dispatch.triton_usable)
    _dispatch.set_auto_order(OP, "cpu", ["cpu", "eager"])
    _dispatch.set_auto_order(OP, "cuda", ["cuda", "triton", "eager"])


_register()
