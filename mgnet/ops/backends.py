"""Registers the fused kernels of each op: mgnet/ops/<op>_backends.py holds the cpu / cuda /
triton registrations of one op (see _dispatch.register_kernel). A missing or broken module
leaves that op on the eager backend, with the reason kept for the warning."""
import importlib

BACKEND_MODULES = ("lka3d_backends", "memory_backends", "cube_embed_backends")
load_errors = {}

for _name in BACKEND_MODULES:
    try:
        importlib.import_module(f"mgnet.ops.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"mgnet.ops.{_name}":
            load_errors[_name] = repr(exc)
