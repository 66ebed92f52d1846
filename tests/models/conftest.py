"""The model tests use tiny tensors: one intra-op thread. On the shared 2-core machine two OpenMP
threads on tiny ops spin against other processes (measured: 40 STG-NF steps took 30 s with 2
threads under load, 1.3 s with 1)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
