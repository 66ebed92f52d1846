"""Which backends of an op exist in this test process, shared by the per-op test files.

CI builds mgnet._C, so a missing C++ kernel must fail (`check_cpu_built`), never skip; only an
explicit MGNET_SKIP_EXT=1 install runs without it. Triton runs on the GPU when there is one, else
on CPU tensors through the interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""
import os

import pytest
import torch

import mgnet.ops as ops
from mgnet.ops import _dispatch

CPU = torch.device("cpu")
SKIP_EXT = os.environ.get("MGNET_SKIP_EXT", "0") == "1"
HAS_CUDA = torch.cuda.is_available()


def triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return _dispatch.triton_usable(CPU)


def backends(op: str) -> list:
    """The fused backends of `op` to compare with the reference in this process."""
    return ((["cpu"] if not SKIP_EXT else []) + (["triton"] if triton_ok() or HAS_CUDA else [])
            + (["cuda"] if HAS_CUDA and "cuda" in ops.available_backends(op, torch.device("cuda")) else []))


def device_of(backend: str) -> torch.device:
    return torch.device("cuda") if backend == "cuda" or (backend == "triton" and HAS_CUDA) else CPU


def check_cpu_built(op: str) -> None:
    if SKIP_EXT:
        pytest.skip("MGNET_SKIP_EXT=1: pure Python install, no C++ kernels")
    assert "cpu" in ops.available_backends(op, CPU), _dispatch.extension_error()
    assert ops.resolve(op, CPU) == "cpu"


def check_cuda_built(op: str) -> None:
    """On a GPU machine the CUDA kernels are built (gpu_check.sh builds with MGNET_BUILD_CUDA=1)."""
    if SKIP_EXT or os.environ.get("MGNET_BUILD_CUDA") == "0":
        pytest.skip("extension or its CUDA kernels deliberately not built")
    assert "cuda" in ops.available_backends(op, torch.device("cuda")), _dispatch.extension_error()
