"""Shared test set-up."""
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: the test models are tiny, and with more threads than free cores
    (CI machines have two) OpenMP barriers stall far longer than the work takes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
