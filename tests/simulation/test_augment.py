"""Augmentations keep the physics: forward(T chi, T b0) == T forward(chi, b0)."""

import itertools

import pytest
import torch

from dlqsm.physics.dipole import DipoleOperator
from dlqsm.simulation.augment import (
    Augment,
    AugmentedDataset,
    apply_axis_transform,
    random_axis_transform,
    random_crop,
    rot90_transform,
    scale_intensity,
    transform_vector,
    transform_volume,
)
from dlqsm.simulation.datasets import SimulatedQSMDataset
from dlqsm.simulation.rng import make_generator

ALL = [(p, f) for p in itertools.permutations(range(3))
       for f in itertools.product([False, True], repeat=3)]


def test_rot90_equals_torch():
    x = torch.arange(4 * 5 * 6.0).view(4, 5, 6)
    for k in range(4):
        for axes in [(0, 1), (1, 2), (0, 2), (1, 0)]:
            perm, flips = rot90_transform(k, axes)
            assert torch.equal(transform_volume(x, perm, flips), torch.rot90(x, k, axes))


def test_all_signed_permutations_commute_with_the_dipole_operator():
    g = torch.Generator().manual_seed(0)
    chi = torch.randn(14, 12, 10, generator=g)
    b0 = torch.tensor([0.3, -0.5, 0.8])
    b0 = b0 / b0.norm()
    vox = torch.tensor([0.7, 1.1, 1.9])
    field = DipoleOperator(chi.shape, vox.tolist(), b0).forward(chi)
    for perm, flips in ALL:
        tchi = transform_volume(chi, perm, flips)
        tb0 = transform_vector(b0, perm, flips)
        tvox = vox[list(perm)]
        got = DipoleOperator(tchi.shape, tvox.tolist(), tb0).forward(tchi)
        assert torch.allclose(got, transform_volume(field, perm, flips), atol=1e-5)
    # negative control: rotating chi without rotating B0 changes the field
    perm, flips = rot90_transform(1, (1, 2))
    tchi = transform_volume(chi, perm, flips)
    wrong = DipoleOperator(tchi.shape, vox[list(perm)].tolist(), b0).forward(tchi)
    assert (wrong - transform_volume(field, perm, flips)).abs().max() > 0.05


@pytest.fixture(scope="module")
def sample():
    ds = SimulatedQSMDataset(2, (20, 16, 12), seed=1, voxel_size_range=(0.7, 1.8),
                             max_tilt_deg=45, shape_mask="blob")
    return ds[0]


def test_sample_transform_keeps_field_consistent(sample):
    g = make_generator(0)
    for _ in range(4):
        perm, flips = random_axis_transform(g)
        t = apply_axis_transform(sample, perm, flips)
        op = DipoleOperator(t["chi"].shape[-3:], t["voxel_size"].tolist(), t["b0_dir"])
        m = t["mask"][0]
        assert torch.allclose(m * op.forward(t["chi"][0] * m), t["field"][0], atol=1e-5)
        assert torch.allclose(t["b0_dir"].norm(), torch.tensor(1.0))


def test_rotations_only():
    g = make_generator(1)
    for _ in range(20):
        perm, flips = random_axis_transform(g, rotations_only=True)
        mat = torch.zeros(3, 3)
        for a in range(3):
            mat[a, perm[a]] = -1.0 if flips[a] else 1.0
        assert torch.det(mat).item() == pytest.approx(1.0)


def test_scale_and_crop(sample):
    s = scale_intensity(sample, 1.7)
    assert torch.allclose(s["chi"], 1.7 * sample["chi"])
    assert torch.allclose(s["field"], 1.7 * sample["field"])
    assert torch.equal(s["mask"], sample["mask"])
    with pytest.raises(ValueError):
        scale_intensity(dict(sample, phase=torch.zeros(1)), 2.0)
    c = random_crop(sample, (8, 8, 8), make_generator(0))
    assert c["chi"].shape == (1, 8, 8, 8) and c["labels"].shape == (1, 8, 8, 8)
    # all volumes cropped at the same place: locate the chi patch, compare the field patch
    X, Y, Z = sample["chi"].shape[-3:]
    hits = [(i, j, k) for i in range(X - 7) for j in range(Y - 7) for k in range(Z - 7)
            if torch.equal(sample["chi"][0, i:i + 8, j:j + 8, k:k + 8], c["chi"][0])]
    assert len(hits) == 1
    i, j, k = hits[0]
    assert torch.equal(sample["field"][0, i:i + 8, j:j + 8, k:k + 8], c["field"][0])
    with pytest.raises(ValueError):
        random_crop(sample, (40, 8, 8), make_generator(0))


def test_augmented_dataset_deterministic():
    ds = SimulatedQSMDataset(3, (12, 12, 12), seed=0)
    aug = AugmentedDataset(ds, Augment(scale=(0.5, 2.0), crop=(8, 8, 8)), seed=5)
    a, b = aug[1], aug[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["chi"].shape == (1, 8, 8, 8) and a["chi"].is_contiguous()
