"""The registration table of the fused kernels: one row per (op, backend).

Adding an op is: its eager reference and custom op (mgnet/ops/<op>.py), its kernels (csrc/<op>/,
kernels/<op>.py), and its rows here. Columns of a row:

  op, backend   the op and one of cpu (mgnet._C, C++), cuda (mgnet._C, CUDA), triton (mgnet.kernels)
  forward       the forward entry point: for cpu/cuda the name of a torch.ops.mgnet_C function
  backward      (csrc/<op>/*.cpp), for triton "module:function" in mgnet.kernels (imported on first use,
                so `import mgnet` never needs triton)
  native        the floating dtypes the kernel takes as they are; for any other input dtype the one
                half-precision policy applies (`in_float32`): float tensors are computed in float32
                and the floating outputs cast back to the input's dtype. None: every float dtype.
  adapt         where the kernel's arguments differ from the op's eager forward/backward:
                ``adapt(forward, backward) -> (forward, backward)`` in the op's signatures

Entry points take exactly the arguments of the op's eager forward and backward (see the op's
module) once adapted. A compiled row whose functions this build of mgnet._C lacks is not registered,
so that backend stays unavailable for the op (``auto`` skips it); the reason a row failed to
register is kept in ``load_errors`` (printed by bench/gpu_check.sh).
`auto` prefers cpu on CPU tensors and cuda, then triton, on CUDA tensors (mgnet.ops._dispatch).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from . import _dispatch
from .buffer_cache import check_env

F32_F64 = (torch.float32, torch.float64)


def _cube_embed_compiled(forward, backward):
    """The compiled masked_cube_embed backward takes no bias and always returns a pos grad."""
    def adapted_backward(grad, frames, visible, weight, bias, pos, mean, std):
        gw, gb, gp = backward(grad, frames, visible, weight, pos, mean, std)
        return gw, gb, (gp if pos is not None else None)
    return forward, adapted_backward


@dataclass(frozen=True)
class Row:
    op: str
    backend: str
    forward: str
    backward: str
    native: Optional[Tuple[torch.dtype, ...]] = None
    adapt: Optional[Callable] = None


KERNELS = (
    Row("lka3d", "cpu", "lka3d_forward_cpu", "lka3d_backward_cpu", native=F32_F64),
    Row("lka3d", "cuda", "lka3d_forward_cuda", "lka3d_backward_cuda"),
    Row("lka3d", "triton", "lka3d:lka3d_forward", "lka3d:lka3d_backward"),
    Row("lsta", "cpu", "lsta_forward_cpu", "lsta_backward_cpu", native=F32_F64),
    Row("lsta", "cuda", "lsta_forward_cuda", "lsta_backward_cuda"),
    Row("lsta", "triton", "lka3d:lsta_forward", "lka3d:lsta_backward"),
    Row("memory_address", "cpu", "memory_address_forward_cpu", "memory_address_backward_cpu", native=F32_F64),
    Row("memory_address", "cuda", "memory_address_forward_cuda", "memory_address_backward_cuda"),
    Row("memory_address", "triton", "memory:forward", "memory:backward"),
    Row("masked_cube_embed", "cpu", "masked_cube_embed_forward_cpu", "masked_cube_embed_backward_cpu",
        adapt=_cube_embed_compiled),
    Row("masked_cube_embed", "cuda", "masked_cube_embed_forward_cuda", "masked_cube_embed_backward_cuda",
        adapt=_cube_embed_compiled),
    Row("masked_cube_embed", "triton", "cube_embed:forward", "cube_embed:backward"),
)


# ---------------------------------------------------------------- the half-precision policy
def _cast(out, dtype):
    if isinstance(out, torch.Tensor):
        return out.to(dtype) if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_cast(o, dtype) for o in out)
    return out


def in_float32(fn: Callable, native: Optional[Tuple[torch.dtype, ...]]) -> Callable:
    """``fn`` for a kernel that takes only the ``native`` float dtypes: inputs of another dtype (the
    dtype of the first float tensor argument) run in float32 and the float outputs are cast back."""
    if native is None:
        return fn

    def run(*args):
        dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
        if dtype in native:
            return fn(*args)
        up = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        return _cast(fn(*up), dtype)
    return run


# ---------------------------------------------------------------- registration
def _entry_point(backend: str, name: str) -> Callable:
    if backend == "triton":
        module, function = name.split(":")

        def triton_call(*args):
            return getattr(importlib.import_module(f"mgnet.kernels.{module}"), function)(*args)
        return triton_call

    def compiled_call(*args):
        if backend == "cpu":
            check_env()   # MGNET_CPU_BUFFER_CACHE_MB, read by the kernels' output buffer cache
        return getattr(torch.ops.mgnet_C, name)(*args)
    return compiled_call


def _same_device_type(backend: str) -> Callable[[torch.device], bool]:
    return lambda device: device.type == backend


def register(row: Row) -> bool:
    """Register one row; False (and nothing registered) when a compiled entry point is not built."""
    if row.backend == "triton":
        available = _dispatch.triton_usable
    elif _dispatch.ext_has(row.forward) and _dispatch.ext_has(row.backward):
        available = _same_device_type(row.backend)
    else:
        return False
    forward, backward = _entry_point(row.backend, row.forward), _entry_point(row.backend, row.backward)
    if row.adapt is not None:
        forward, backward = row.adapt(forward, backward)
    _dispatch.register_kernel(row.op, row.backend, in_float32(forward, row.native), in_float32(backward, row.native),
                              available=available)
    return True


load_errors = {}  # "op/backend" -> why that row is not registered

for _row in KERNELS:
    if not register(_row):
        _why = _dispatch.extension_error()
        load_errors[f"{_row.op}/{_row.backend}"] = (f"torch.ops.mgnet_C.{_row.forward}/{_row.backward} not in this "
                                                    f"build of mgnet._C" + (f" ({_why})" if _why else ""))
