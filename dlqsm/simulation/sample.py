"""The sample contract as types: what datasets return, what ``collate`` stacks into a batch,
and what the LightningModule and the networks read.

A :class:`Sample` is a dict of tensors (see the table in :mod:`dlqsm.simulation.datasets`);
a :class:`Batch` has the same keys with a leading batch dimension. They are ``TypedDict``s:
plain dicts at run time (nothing changes for existing code), typed for readers and checkers.
:func:`check_sample` validates one against the contract (tests, new datasets).
"""

from __future__ import annotations

from typing import TypedDict

import torch

from dlqsm.pipeline.batched import INIT_KEY


class _RequiredSample(TypedDict):
    chi: torch.Tensor  # (1, X, Y, Z) float32 ppm, demeaned inside the mask, 0 outside
    field: torch.Tensor  # (1, X, Y, Z) float32 local field, ppm, 0 outside the mask
    mask: torch.Tensor  # (1, X, Y, Z) float32 {0, 1}
    b0_dir: torch.Tensor  # (3,) float32 unit vector, voxel coordinates
    voxel_size: torch.Tensor  # (3,) float32 mm


class Sample(_RequiredSample, total=False):
    """One training sample; the optional keys come with labels, signal or an estimate."""

    labels: torch.Tensor  # (1, X, Y, Z) int64 head labels, 0 where none
    chi_init: torch.Tensor  # (1, X, Y, Z) float32 classical estimate, ppm (INIT_KEY)
    magnitude: torch.Tensor  # (E, X, Y, Z) float32
    phase: torch.Tensor  # (E, X, Y, Z) float32 wrapped phase, rad
    te: torch.Tensor  # (E,) float32 s
    b0_tesla: torch.Tensor  # () float32 T
    total_field: torch.Tensor  # (1, X, Y, Z) float32 ppm


class Batch(Sample):
    """A collated batch: every tensor of :class:`Sample` with a leading batch dimension B."""


REQUIRED_KEYS = frozenset(_RequiredSample.__annotations__)
VOLUME_KEYS = ("chi", "field", "mask", "labels", INIT_KEY, "total_field")
"""Keys holding one (1, X, Y, Z) volume per sample."""


def check_sample(sample: dict, *, batched: bool = False) -> None:
    """Raise ValueError (naming the key) unless ``sample`` follows the sample contract.

    Checks the required keys, that every volume key is (1, X, Y, Z) on one grid (with a
    leading B when ``batched``), ``b0_dir`` / ``voxel_size`` of shape (3,) (or (B, 3)), a unit
    ``b0_dir``, positive voxel sizes, integer labels and a {0, 1} mask.
    """
    missing = sorted(REQUIRED_KEYS - set(sample))
    if missing:
        raise ValueError(f"sample lacks the key(s) {missing}")
    lead = 1 if batched else 0
    grid = tuple(sample["chi"].shape[lead + 1:])
    for key in VOLUME_KEYS:
        if key in sample:
            t = sample[key]
            if t.ndim != 4 + lead or t.shape[lead] != 1 or tuple(t.shape[lead + 1:]) != grid:
                raise ValueError(f"{key!r} has shape {tuple(t.shape)}; expected "
                                 f"{'(B, ' if batched else '('}1, {', '.join(map(str, grid))})")
    for key in ("b0_dir", "voxel_size"):
        if sample[key].shape[-1:] != (3,) or sample[key].ndim != 1 + lead:
            raise ValueError(f"{key!r} has shape {tuple(sample[key].shape)}; expected "
                             f"{'(B, 3)' if batched else '(3,)'}")
    norm = torch.linalg.norm(sample["b0_dir"].double(), dim=-1)
    if not torch.allclose(norm, torch.ones_like(norm), atol=1e-4):
        raise ValueError("'b0_dir' is not a unit vector")
    if (sample["voxel_size"] <= 0).any():
        raise ValueError("'voxel_size' must be positive (mm)")
    if "labels" in sample and sample["labels"].dtype != torch.int64:
        raise ValueError(f"'labels' must be int64, got {sample['labels'].dtype}")
    if not torch.isin(sample["mask"], torch.tensor([0.0, 1.0], dtype=sample["mask"].dtype)).all():
        raise ValueError("'mask' must hold only 0 and 1")
