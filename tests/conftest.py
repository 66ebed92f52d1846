"""Test-session setup shared by every test module.

Without a GPU, Triton kernels run through the interpreter: TRITON_INTERPRET=1 must be in the
environment before triton is first imported, so it is set here, before any test module loads.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Deterministic, modest threading for reproducible numerics on the 2-core CI machine.
torch.manual_seed(0)
