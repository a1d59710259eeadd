"""Two tiny held-out heads shared by the evaluation tests (simulated once per session)."""

import pytest

from dlqsm.evaluation import simulated_heads

HEAD_SHAPE = (32, 40, 36)
HEAD_VOXEL = 6.0
HEAD_TILT = 20.0


@pytest.fixture(scope="session")
def tiny_heads():
    """Two 32x40x36 heads at 6 mm with B0 tilted by 20 degrees (seeds 10**6, 10**6 + 1)."""
    return simulated_heads(2, HEAD_SHAPE, HEAD_VOXEL, b0_tilt_deg=HEAD_TILT)
