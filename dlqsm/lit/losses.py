"""Training losses for susceptibility maps, combinable with weights from YAML.

Every term is called as ``term(pred, batch) -> scalar`` with ``pred`` the predicted chi
(B, 1, X, Y, Z) in ppm and ``batch`` the sample dict ("chi", "field", "mask", "b0_dir",
"voxel_size"). Terms average over the voxels inside the mask (``masked=True``) or over the
whole volume. Values are in ppm (L1), ppm^2 (L2), ppm/mm (gradient difference, L1 of the
difference of finite-difference gradients) and ppm (physics: L1 of D chi_hat - field inside the
mask, with D built from each sample's B0 direction and voxel size).

Example (``configs/loss/l1_physics.yaml``)::

    _target_: dlqsm.lit.losses.CompositeLoss
    weights: {l1: 1.0, physics: 0.5}
"""

from __future__ import annotations

import torch
from torch import nn

from dlqsm.models.batched_dipole import batch_dipole
from dlqsm.physics.operators import Gradient


def _reduce(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``err`` over the mask voxels (broadcast over extra channels) or over all."""
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype).expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


class MaskedL1(nn.Module):
    """Mean |chi_hat - chi| (ppm)."""

    def __init__(self, masked: bool = True):
        super().__init__()
        self.masked = masked

    def forward(self, pred, batch):
        return _reduce((pred - batch["chi"]).abs(), batch.get("mask") if self.masked else None)


class MaskedL2(MaskedL1):
    """Mean (chi_hat - chi)^2 (ppm^2)."""

    def forward(self, pred, batch):
        return _reduce((pred - batch["chi"]) ** 2, batch.get("mask") if self.masked else None)


class GradientDifference(MaskedL1):
    """Mean |grad chi_hat - grad chi| over the three axes (ppm/mm), sharpening edges."""

    def forward(self, pred, batch):
        diff = pred - batch["chi"]
        grads = []
        for i in range(diff.shape[0]):
            vox = batch["voxel_size"][i].tolist() if "voxel_size" in batch else (1.0, 1.0, 1.0)
            grads.append(Gradient(vox).forward(diff[i]))
        g = torch.stack(grads)  # (B, C, 3, X, Y, Z)
        mask = batch.get("mask") if self.masked else None
        return _reduce(g.abs(), None if mask is None else mask.unsqueeze(2))


class PhysicsLoss(nn.Module):
    """Mean |D chi_hat - field| inside the mask (ppm): the dipole model consistency.

    Args:
        padding: zero-padding (voxels per side) of the dipole operator.
        norm: "l1" or "l2".
    """

    def __init__(self, padding: int = 0, norm: str = "l1", masked: bool = True):
        super().__init__()
        if norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
        self.padding, self.norm, self.masked = padding, norm, masked

    def forward(self, pred, batch):
        op = batch_dipole(pred, batch.get("voxel_size"), batch.get("b0_dir"), padding=self.padding)
        r = op.forward(pred) - batch["field"]
        err = r.abs() if self.norm == "l1" else r ** 2
        return _reduce(err, batch.get("mask") if self.masked else None)


TERMS = {"l1": MaskedL1, "l2": MaskedL2, "gdl": GradientDifference, "physics": PhysicsLoss}


class CompositeLoss(nn.Module):
    """Weighted sum of named terms; ``forward`` returns (total, {name: value}).

    Args:
        weights: {term name: weight}; names from ``TERMS`` ("l1", "l2", "gdl", "physics").
            Terms with weight 0 are skipped.
        masked: average inside the mask (True) or over the whole volume.
        physics_padding: dipole operator zero-padding for the physics term.
    """

    def __init__(self, weights: dict, masked: bool = True, physics_padding: int = 0):
        super().__init__()
        unknown = set(weights) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; choose from {sorted(TERMS)}")
        self.weights = {k: float(v) for k, v in weights.items() if float(v) != 0.0}
        if not self.weights:
            raise ValueError("CompositeLoss needs at least one term with a non-zero weight")
        self.terms = nn.ModuleDict()
        for name in self.weights:
            kwargs = {"padding": physics_padding} if name == "physics" else {}
            self.terms[name] = TERMS[name](masked=masked, **kwargs)

    def forward(self, pred: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
        parts = {name: term(pred, batch) for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts
