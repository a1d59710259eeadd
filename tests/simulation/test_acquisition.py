"""Acquisition geometry and fields: the shared dipole operator, referencing, oracles."""

import math

import numpy as np
import pytest
import torch

from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.geometry import b0_dir_from_affine, voxel_size_from_affine
from dlqsm.simulation.acquisition import (
    affine_for,
    forward_field,
    local_field,
    reference_chi,
    sample_geometry,
    shim_field,
    total_field,
)
from dlqsm.simulation.rng import make_generator
from dlqsm.simulation.shapes import make_primitives, rasterize


def test_forward_field_is_the_dipole_operator():
    g = torch.Generator().manual_seed(0)
    chi = torch.randn(20, 18, 16, generator=g)
    b0, vox = (0.3, -0.2, 0.9), (0.8, 1.1, 1.7)
    for pad in (0, 4):
        op = DipoleOperator(chi.shape, vox, b0, padding=pad)
        assert torch.allclose(forward_field(chi, vox, b0, padding=pad), op.forward(chi),
                              atol=1e-6)


def test_batched_fields_with_per_sample_geometry():
    g = make_generator(1)
    b0, vs = sample_geometry(g, 3, voxel_size=(0.6, 2.0), max_tilt_deg=40)
    chi = torch.randn(3, 1, 16, 14, 12, generator=g)
    mask = (torch.rand(3, 1, 16, 14, 12, generator=g) > 0.3).float()
    out = local_field(chi, mask, vs, b0, padding=2)
    for i in range(3):
        op = DipoleOperator((16, 14, 12), vs[i].tolist(), b0[i].tolist(), padding=2)
        ref = mask[i, 0] * op.forward(mask[i, 0] * chi[i, 0])
        assert torch.allclose(out[i, 0], ref, atol=1e-6)
    assert (out[mask == 0] == 0).all()


def test_reference_chi():
    chi = torch.rand(2, 8, 8, 8) + 3
    mask = torch.zeros(2, 8, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 2:6, 2:6] = True
    ref = reference_chi(chi, mask)
    assert torch.allclose(ref[mask].view(2, -1).mean(1), torch.zeros(2), atol=1e-6)
    assert (ref[~mask] == 0).all()
    assert torch.allclose(ref[mask] - (chi[mask]), (ref - chi)[mask])  # a shift inside


def test_geometry_ranges():
    g = make_generator(2)
    b0, vs = sample_geometry(g, 4000, voxel_size=(0.6, 2.0), max_tilt_deg=30)
    assert torch.allclose(b0.norm(dim=1), torch.ones(4000), atol=1e-6)
    cos_t = b0[:, 2]
    assert cos_t.min() >= math.cos(math.radians(30)) - 1e-6
    # uniform on the spherical cap: cos(theta) uniform in [cos 30, 1]
    assert cos_t.mean().item() == pytest.approx((1 + math.cos(math.radians(30))) / 2, abs=3e-3)
    assert vs.min() >= 0.6 and vs.max() <= 2.0
    assert (vs[:, 0] != vs[:, 1]).float().mean() > 0.99
    _, iso = sample_geometry(g, 10, voxel_size=(0.6, 2.0), isotropic_prob=1.0)
    assert torch.allclose(iso, iso[:, :1].expand(-1, 3))
    fixed_b0, fixed = sample_geometry(g, 2, voxel_size=1.2, max_tilt_deg=0)
    assert torch.allclose(fixed_b0, torch.tensor([[0.0, 0.0, 1.0]] * 2))
    assert torch.allclose(fixed, torch.full((2, 3), 1.2))


def test_affine_encodes_b0_and_voxel_size():
    for b0 in ([0, 0, 1], [0.3, -0.4, 0.8], [0, 1, 0.1], [1, 0, 0]):
        a = affine_for((10, 12, 14), (0.7, 1.0, 2.0), b0)
        assert np.allclose(b0_dir_from_affine(a), np.asarray(b0) / np.linalg.norm(b0))
        assert np.allclose(voxel_size_from_affine(a), (0.7, 1.0, 2.0))
        assert np.linalg.det(a[:3, :3]) > 0
    assert np.allclose(affine_for((4, 4, 4), 1.0)[:3, :3], np.eye(3))


def test_sphere_field_matches_analytic_oracle():
    """Rasterised sphere, padded dipole convolution vs chi/3 (a/r)^3 (3 cos^2 - 1) outside."""
    n, a, chi0 = 48, 5.0, 1.0
    sphere = make_primitives("sphere", [[0.0, 0.0, 0.0]], [[a, a, a]], value=chi0)
    chi = rasterize(sphere, 1, (n, n, n), (1, 1, 1))[0]
    a_eff = (chi.sum().item() * 3 / (4 * math.pi)) ** (1 / 3)  # voxelised radius
    f = forward_field(chi, (1, 1, 1), (0, 0, 1), padding=n // 2)
    c = (n - 1) / 2
    for idx in [(24, 24, 36), (36, 24, 24), (32, 18, 31), (24, 34, 34), (13, 30, 33)]:
        r = np.subtract(idx, c)  # voxel centre relative to the sphere centre (mm)
        rr = np.linalg.norm(r)
        expected = chi0 / 3 * (a_eff / rr) ** 3 * (3 * (r[2] / rr) ** 2 - 1)
        assert abs(f[idx].item() - expected) < 0.02 * abs(expected) + 2e-5, idx
    assert abs(f[24, 24, 24].item()) < 0.02  # ~0 inside (Lorentz sphere)


def test_total_field_outside_medium_and_harmonic_shim():
    uniform = torch.full((16, 16, 16), 9.4)
    assert total_field(uniform, (1, 1, 1), (0, 0, 1), chi_outside=9.4,
                       padding=8).abs().max() < 1e-6
    shim = shim_field((24, 20, 16), (1.0, 1.2, 1.5), 0.5, make_generator(0))
    assert shim.abs().max() > 0.05
    h = (1.0, 1.2, 1.5)
    lap = sum((torch.roll(shim, 1, d) - 2 * shim + torch.roll(shim, -1, d))[1:-1, 1:-1, 1:-1]
              / h[d] ** 2 for d in range(3))
    assert lap.abs().max() < 1e-5  # second-order shim terms are harmonic
