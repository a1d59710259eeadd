"""Simulation tests use tiny volumes: run them single-threaded (restored afterwards), which
is faster for such sizes and far more robust on a shared, loaded CPU."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
