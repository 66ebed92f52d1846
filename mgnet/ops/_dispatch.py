"""Backend selection for the fused ops.

Every op in mgnet.ops has an eager reference (plain PyTorch, the definition) and optional fused
kernels per backend:

  eager   the reference, always available
  cpu     C++ kernels in mgnet._C (CPU tensors)
  cuda    CUDA kernels in mgnet._C (CUDA tensors; built when torch has CUDA and nvcc is found)
  triton  Triton kernels in mgnet.kernels (CUDA tensors; CPU tensors only with TRITON_INTERPRET=1)

The backend asked for comes from, in order: the innermost ``with mgnet.ops.backend(name):``, the
environment variable ``MGNET_BACKEND``, else ``auto``. ``auto`` takes the first backend of the op's
preference list for the tensor's device that is registered and available. A backend that was asked
for by name but is not available falls back to ``auto`` with one warning (per backend and reason).
"""
from __future__ import annotations

import importlib
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

BACKENDS = ("auto", "eager", "cpu", "cuda", "triton")

# default preference of `auto` per device type; an op may set its own with set_auto_order()
_DEFAULT_AUTO = {"cpu": ["cpu", "eager"], "cuda": ["cuda", "triton", "eager"]}


@dataclass
class Kernel:
    forward: Callable
    backward: Callable


_REGISTRY: Dict[str, Dict[str, Kernel]] = {}
_AUTO: Dict[str, Dict[str, List[str]]] = {}
_stack: List[str] = []
_warned: set = set()
_lock = threading.Lock()

# ---------------------------------------------------------------- extension loading
_ext_state: Dict[str, object] = {"loaded": None, "error": None}


def load_extension() -> Optional[object]:
    """Import mgnet._C once (it registers torch.ops.mgnet_C.*). Returns the module or None.

    ``MGNET_EXT_PATH`` (os.pathsep-separated .so files) loads development builds instead, with
    torch.ops.load_library; kernel authors use it to iterate on one op without rebuilding _C.
    """
    if _ext_state["loaded"] is not None or _ext_state["error"] is not None:
        return _ext_state["loaded"]
    dev = os.environ.get("MGNET_EXT_PATH")
    try:
        if dev:
            for path in dev.split(os.pathsep):
                if path:
                    torch.ops.load_library(path)
            _ext_state["loaded"] = "dev"
        else:
            _ext_state["loaded"] = importlib.import_module("mgnet._C")
    except (ImportError, OSError, RuntimeError) as exc:  # missing build or ABI mismatch
        _ext_state["error"] = f"{type(exc).__name__}: {exc}"
    return _ext_state["loaded"]


def extension_error() -> Optional[str]:
    load_extension()
    return _ext_state["error"]  # type: ignore[return-value]


def ext_has(name: str) -> bool:
    """True if the compiled library registered torch.ops.mgnet_C.<name>."""
    if load_extension() is None:
        return False
    try:
        getattr(torch.ops.mgnet_C, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def cuda_built() -> bool:
    mod = load_extension()
    return bool(getattr(mod, "with_cuda", False)) if mod not in (None, "dev") else ext_has_any_cuda()


def ext_has_any_cuda() -> bool:
    return any(ext_has(f"{op}_forward_cuda") for op in _REGISTRY)


def triton_usable(device: torch.device) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------- registry
def register_kernel(op: str, backend: str, forward: Callable, backward: Callable,
                    available: Optional[Callable[[torch.device], bool]] = None) -> None:
    """Register a backend's forward and backward for `op`.

    `forward`/`backward` take exactly the arguments of the op's eager forward/backward (see the
    op's module). `available(device)` says whether this backend can run on tensors of `device`.
    """
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS[1:]}")
    k = Kernel(forward, backward)
    k.available = available or (lambda device: True)  # type: ignore[attr-defined]
    _REGISTRY.setdefault(op, {})[backend] = k


def set_auto_order(op: str, device_type: str, order: List[str]) -> None:
    _AUTO.setdefault(op, {})[device_type] = list(order)


def registered(op: str) -> List[str]:
    return sorted(_REGISTRY.get(op, {}))


def get_kernel(op: str, backend: str) -> Kernel:
    try:
        return _REGISTRY[op][backend]
    except KeyError:
        raise RuntimeError(f"mgnet.ops: no {backend!r} kernel registered for op {op!r}") from None


def _why_unavailable(op: str, backend: str, device: torch.device) -> Optional[str]:
    k = _REGISTRY.get(op, {}).get(backend)
    if backend in ("cpu", "cuda") and load_extension() is None:
        return f"mgnet._C is not built ({extension_error()}); reinstall with `pip install -e . --no-build-isolation`"
    if k is None:
        return f"op {op!r} has no {backend!r} kernel in this build"
    if not k.available(device):  # type: ignore[attr-defined]
        return f"the {backend!r} backend cannot run {op!r} on {device.type} tensors"
    return None


def requested() -> str:
    """The backend asked for right now (context manager, else MGNET_BACKEND, else 'auto')."""
    if _stack:
        return _stack[-1]
    name = os.environ.get("MGNET_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"MGNET_BACKEND={name!r} is not a backend; expected one of {BACKENDS}")
    return name


def resolve(op: str, device: torch.device, name: Optional[str] = None) -> str:
    """The backend that will run `op` on tensors of `device`."""
    name = requested() if name is None else name
    if name != "auto":
        why = _why_unavailable(op, name, device)
        if why is None:
            return name
        key = (name, why)
        with _lock:
            if key not in _warned:
                _warned.add(key)
                warnings.warn(f"mgnet: backend {name!r} requested but unavailable ({why}); "
                              f"falling back to 'auto'", RuntimeWarning, stacklevel=3)
    order = _AUTO.get(op, {}).get(device.type, _DEFAULT_AUTO.get(device.type, ["eager"]))
    for cand in order:
        if _why_unavailable(op, cand, device) is None:
            return cand
    return "eager"


@contextmanager
def backend(name: str):
    """``with mgnet.ops.backend("eager"):`` runs every op inside on that backend."""
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is not one of {BACKENDS}")
    _stack.append(name)
    try:
        yield
    finally:
        _stack.pop()


def set_backend(name: str) -> None:
    """Set the process-wide default (what a config's model.ops_backend does)."""
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"model.ops_backend={name!r} is not one of {BACKENDS}")
    os.environ["MGNET_BACKEND"] = name


def available_backends(op: str, device: torch.device) -> List[str]:
    return [b for b in BACKENDS[1:] if _why_unavailable(op, b, device) is None]
