"""Fused ops of MGNet as torch.library custom ops (namespace ``mgnet``).

Public functions: lka3d, lsta, memory_address, masked_cube_embed. Each has an eager reference
(``*_reference``, the definition tests compare against) and kernels per backend; see
mgnet.ops._dispatch for how a backend is chosen (``MGNET_BACKEND``, ``with backend(...)``).
"""
from .buffer_cache import buffer_cache_info, empty_buffer_cache, set_buffer_cache_limit  # noqa: F401
from ._dispatch import available_backends, backend, requested, resolve, set_backend  # noqa: F401
from .cube_embed import masked_cube_embed, masked_cube_embed_reference  # noqa: F401
from .lka3d import lka3d, lka3d_reference, lsta, lsta_reference  # noqa: F401
from .memory import memory_address, memory_address_reference  # noqa: F401
from . import backends as _backends  # noqa: F401  (registers the compiled and Triton kernels)

__all__ = ["lka3d", "lsta", "memory_address", "masked_cube_embed", "backend", "set_backend",
           "resolve", "requested", "available_backends", "lka3d_reference", "lsta_reference",
           "memory_address_reference", "masked_cube_embed_reference", "buffer_cache_info",
           "empty_buffer_cache", "set_buffer_cache_limit"]
