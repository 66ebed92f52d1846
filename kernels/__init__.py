"""Triton kernels of mgnet, installed as ``mgnet.kernels`` (one module per fused op).

Importing this package does not import triton; each op module does, so that ``import mgnet``
works where triton is absent. On CPU tensors the kernels run only with TRITON_INTERPRET=1
(set before triton is imported), which the tests use for correctness.
"""
