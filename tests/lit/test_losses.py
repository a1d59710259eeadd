"""Training losses: exact values on hand-made cases, physics consistency with the operator."""

import pytest
import torch

from dlqsm.lit.datamodule import collate
from dlqsm.lit.losses import CompositeLoss, GradientDifference, MaskedL1, MaskedL2, PhysicsLoss
from dlqsm.models.batched_dipole import batch_dipole
from tests.lit.helpers import TinyQSMDataset


@pytest.fixture
def batch():
    return collate([TinyQSMDataset(shape=(12, 14, 16), seed=3)[i] for i in range(2)])


def test_l1_l2_are_masked_means(batch):
    pred = batch["chi"] + 0.2 * batch["mask"] + 5.0 * (1 - batch["mask"])  # outside: ignored
    assert MaskedL1()(pred, batch).item() == pytest.approx(0.2, rel=1e-5)
    assert MaskedL2()(pred, batch).item() == pytest.approx(0.04, rel=1e-5)
    inside = batch["mask"].mean().item()
    expected = 0.2 * inside + 5.0 * (1 - inside)
    assert MaskedL1(masked=False)(pred, batch).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_difference_ignores_offsets_but_not_edges(batch):
    gdl = GradientDifference(masked=False)
    assert gdl(batch["chi"] + 0.3, batch).item() == pytest.approx(0.0, abs=1e-6)
    assert gdl(batch["chi"] * 2.0, batch).item() > 1e-3


def test_gradient_difference_uses_the_voxel_size(batch):
    pred = batch["chi"] * 2.0
    coarse = dict(batch, voxel_size=batch["voxel_size"] * 2.0)
    gdl = GradientDifference(masked=False)
    assert gdl(pred, coarse).item() == pytest.approx(gdl(pred, batch).item() / 2, rel=1e-5)


def test_physics_loss_is_zero_for_the_truth_and_needs_the_right_b0(batch):
    phys = PhysicsLoss()
    assert phys(batch["chi"], batch).item() < 1e-7
    assert phys(batch["chi"] * 0.5, batch).item() > 1e-4
    wrong = dict(batch, b0_dir=torch.tensor([[1.0, 0.0, 0.0]] * 2))
    assert phys(batch["chi"], wrong).item() > 1e-4


def test_physics_loss_l2_matches_operator(batch):
    pred = batch["chi"] * 0.7
    op = batch_dipole(pred, batch["voxel_size"], batch["b0_dir"])
    r = (op.forward(pred) - batch["field"])[batch["mask"] > 0]
    got = PhysicsLoss(norm="l2")(pred, batch).item()
    assert got == pytest.approx(r.square().mean().item(), rel=1e-4)


def test_composite_weights_and_parts(batch):
    pred = batch["chi"] * 0.5
    loss = CompositeLoss({"l1": 1.0, "physics": 2.0, "gdl": 0.0})
    total, parts = loss(pred, batch)
    assert set(parts) == {"l1", "physics"}  # zero weights are skipped
    assert total.item() == pytest.approx(parts["l1"].item() + 2 * parts["physics"].item())
    with pytest.raises(ValueError, match="unknown"):
        CompositeLoss({"l3": 1.0})
    with pytest.raises(ValueError, match="non-zero"):
        CompositeLoss({"l1": 0.0})
