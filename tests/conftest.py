"""Shared tiny fixtures. W&B is disabled for every test."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny volumes: one intra-op thread is faster than several (thread start-up and contention
# dominate) and keeps timings steady on shared CPUs. DLQSM_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("DLQSM_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def devices():
    """CPU, plus CUDA when available: physics must work on both."""
    out = [torch.device("cpu")]
    if torch.cuda.is_available():
        out.append(torch.device("cuda"))
    return out
