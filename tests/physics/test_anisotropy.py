"""Field of a cylindrically symmetric susceptibility tensor (dlqsm.physics.anisotropy).

Oracles:
- dchi = 0 is the isotropic DipoleOperator field, exactly;
- an isotropic magnetisation chi h through the vector kernel is D(k) chi (Nyquist planes too);
- an infinitely long cylinder along z with fibres along its axis, B0 at theta in the x-z plane:
  inside chi_par cos^2(theta) / 3 - chi_perp sin^2(theta) / 6 (demagnetising tensor of a
  cylinder diag(1/2, 1/2, 0), Lorentz sphere correction), outside the 2D dipole field of the
  transverse magnetisation chi_perp sin(theta): chi_perp sin^2(theta) / 2 (a / rho)^2 cos(2 phi);
- an independent numpy computation with the full 3 x 3 tensor;
- linearity in dchi, zero trace (fibres along x, y and z sum to no field), and rotating fibres
  and B0 together by 90 degrees about a grid axis rotates the field.
"""

import numpy as np
import pytest
import torch

from dlqsm.physics.anisotropy import (
    anisotropic_field,
    anisotropic_source,
    orientation_tensor,
    tensor_field,
    vector_source_field,
)
from dlqsm.physics.dipole import DipoleOperator
from tests.physics.test_dipole import centred_coords, disk_cylinder, unit

F64 = torch.float64
OBLIQUE = unit((0.3, -0.5, 0.8))


def random_fibres(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(3, *shape, generator=g, dtype=F64)
    return n / torch.linalg.vector_norm(n, dim=0, keepdim=True)


def random_map(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64)


def test_zero_dchi_is_the_isotropic_field_exactly():
    shape = (12, 10, 14)
    op = DipoleOperator(shape, (1.0, 1.2, 0.9), OBLIQUE, padding=3)
    chi = random_map(shape).float()
    n = random_fibres(shape).float()
    full = tensor_field(chi, torch.zeros(shape), n, op)
    assert torch.equal(full, op.forward(chi))
    assert float(tensor_field(chi, 0.02 * torch.ones(shape), n, op).sub(full).abs().max()) > 1e-4


@pytest.mark.parametrize("shape", [(12, 10, 14), (11, 9, 7)])
def test_isotropic_magnetisation_through_the_vector_kernel_is_the_dipole_field(shape):
    """Even sizes: the Nyquist planes of the vector kernel match dipole_kernel's averaging."""
    op = DipoleOperator(shape, (0.8, 1.0, 1.3), OBLIQUE, padding=(2, 0, 3), dtype=F64)
    chi = random_map(shape)
    h = torch.tensor(OBLIQUE, dtype=F64).view(3, 1, 1, 1)
    assert torch.allclose(vector_source_field(chi * h, op), op.forward(chi), atol=1e-12)


CYLINDER = [
    ((1.0, 1.0, 1.0), 0.0, 0.024),
    ((1.0, 1.0, 1.0), 0.0, -0.024),
    ((1.0, 1.0, 1.0), 35.0, 0.024),
    ((1.0, 1.0, 1.0), 35.0, -0.024),
    ((1.0, 1.0, 1.0), 90.0, 0.024),
    ((1.0, 1.0, 1.0), 90.0, -0.024),
    ((0.8, 1.25, 2.0), 60.0, 0.024),
]


@pytest.mark.parametrize("vox,theta_deg,dchi", CYLINDER)
def test_infinite_cylinder_with_fibres_along_its_axis(vox, theta_deg, dchi):
    """Inside (rho < a - 3 sigma) and outside (1.5 a < rho < box / 2): |field - analytic| <
    2 % of max(|chi_par|, |chi_perp|) / 3, the tolerance of the isotropic cylinder test
    (partial-volume edge smoothed by sigma = 1 mm; the periodic images of the in-plane
    padded box are the main error; measured <= 1.2 %). chi_mean 0.01, dchi +-0.024 ppm: no
    component vanishes (chi_par 0.026 / -0.006, chi_perp 0.002 / 0.018 ppm)."""
    a, extent, chi_mean = 6.0, 48.0, 0.01
    shape = (int(round(extent / vox[0])), int(round(extent / vox[1])), 4)
    profile = torch.tensor(disk_cylinder(shape, vox, a))
    t = np.radians(theta_deg)
    b0 = (np.sin(t), 0.0, np.cos(t))
    op = DipoleOperator(shape, vox, b0, padding=(shape[0], shape[1], 0), dtype=F64)
    n = torch.zeros(3, *shape, dtype=F64)
    n[2] = 1.0
    field = tensor_field(chi_mean * profile, dchi * profile, n, op)[..., 0].numpy()
    chi_par, chi_perp = chi_mean + 2 * dchi / 3, chi_mean - dchi / 3
    gx, gy, _ = centred_coords(shape, vox)
    X, Y = np.meshgrid(gx, gy, indexing="ij")
    rho, phi = np.hypot(X, Y), np.arctan2(Y, X)
    inside_value = chi_par * np.cos(t) ** 2 / 3 - chi_perp * np.sin(t) ** 2 / 6
    outside_value = 0.5 * chi_perp * np.sin(t) ** 2 * (a / np.maximum(rho, 1e-9)) ** 2
    outside_value = outside_value * np.cos(2 * phi)
    inside, outside = rho < a - 3.0, (rho > 1.5 * a) & (rho < extent / 2)
    tol = 0.02 * max(abs(chi_par), abs(chi_perp)) / 3
    assert np.abs(field[inside] - inside_value).max() < tol
    assert np.abs(field[outside] - outside_value[outside]).max() < tol
    centre = field[shape[0] // 2, shape[1] // 2]
    assert abs(centre - inside_value) < tol


def numpy_tensor_field(chi_tensor, vox, b0, pad):
    """Independent reference: full 3 x 3 tensor (3, 3, X, Y, Z), full complex spectrum, odd
    padded sizes (no Nyquist sample): F^-1[h.X(k).h / 3 - (h.k)(k.X(k).h) / |k|^2]."""
    h = np.asarray(b0, float)
    x = np.pad(chi_tensor, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    shape = x.shape[2:]
    xk = np.fft.fftn(x, axes=(2, 3, 4))
    k = np.meshgrid(*[np.fft.fftfreq(n, d) for n, d in zip(shape, vox, strict=True)], indexing="ij")
    k2 = sum(c**2 for c in k)
    k2[0, 0, 0] = 1.0
    xh = np.einsum("ijxyz,j->ixyz", xk, h)
    out = np.einsum("i,ixyz->xyz", h, xh) / 3
    out = out - (
        sum(hi * ki for hi, ki in zip(h, k, strict=True))
        * sum(ki * xh[i] for i, ki in enumerate(k))
        / k2
    )
    out[0, 0, 0] = 0.0
    f = np.fft.ifftn(out).real
    return f[tuple(slice(p, n - p) for p, n in zip(pad, shape, strict=True))]


def test_matches_an_independent_full_tensor_computation():
    shape, vox, pad = (9, 11, 7), (0.9, 1.1, 1.4), (3, 2, 4)
    chi, dchi, n = random_map(shape, 1), 0.3 * random_map(shape, 2), random_fibres(shape)
    op = DipoleOperator(shape, vox, OBLIQUE, padding=pad, dtype=F64)
    eye = torch.eye(3, dtype=F64).view(3, 3, 1, 1, 1)
    tensor = chi * eye + dchi * (orientation_tensor(n) - eye / 3)
    ref = numpy_tensor_field(tensor.numpy(), vox, OBLIQUE, pad)
    got = tensor_field(chi, dchi, n, op).numpy()
    assert np.abs(got - ref).max() < 1e-12 * np.abs(ref).max() * 100
    aniso = anisotropic_field(dchi, n, op).numpy()
    assert np.abs(aniso).max() > 0.05 * np.abs(got).max()  # the anisotropic part matters


def test_linear_in_dchi_and_traceless():
    shape = (10, 12, 8)
    op = DipoleOperator(shape, (1.0, 1.0, 1.2), OBLIQUE, padding=2, dtype=F64)
    n = random_fibres(shape)
    d1, d2 = random_map(shape, 3), random_map(shape, 4)
    f1, f2 = anisotropic_field(d1, n, op), anisotropic_field(d2, n, op)
    assert torch.allclose(
        anisotropic_field(2.0 * d1 - 0.5 * d2, n, op), 2 * f1 - 0.5 * f2, atol=1e-12
    )
    # a batch of dchi maps gives each one's field
    batch = anisotropic_field(torch.stack([d1, d2]), torch.stack([n, n]), op)
    assert torch.allclose(batch, torch.stack([f1, f2]), atol=1e-12)
    # sum over three orthogonal fibre directions: n n^T sums to I, no anisotropic field
    axes = [torch.zeros(3, *shape, dtype=F64) for _ in range(3)]
    for i in range(3):
        axes[i][i] = 1.0
    total = sum(anisotropic_field(d1, a, op) for a in axes)
    assert float(total.abs().max()) < 1e-12 * float(f1.abs().max()) * 100
    # the voxel-averaged orientation tensor is accepted in place of the directions
    assert torch.allclose(anisotropic_field(d1, orientation_tensor(n), op), f1, atol=1e-12)


@pytest.mark.parametrize("dims,vox", [((0, 1), (1.0, 1.0, 1.3)), ((1, 2), (1.3, 1.0, 1.0))])
def test_rotating_fibres_and_b0_together_rotates_the_field(dims, vox):
    """torch.rot90(x, 1, dims) moves the point p to R p, R the +90 degree rotation from axis
    dims[0] towards dims[1]; vectors (fibres, B0) turn with R. Voxel sizes along the two
    axes are equal, so the rotated grid is the same grid."""
    shape = (10, 10, 10)
    i, j = dims
    rot = torch.eye(3, dtype=F64)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = 0.0, -1.0, 1.0, 0.0
    b0 = torch.tensor(OBLIQUE, dtype=F64)
    chi, dchi, n = random_map(shape, 5), random_map(shape, 6), random_fibres(shape, 7)
    op = DipoleOperator(shape, vox, b0, padding=3, dtype=F64)
    field = tensor_field(chi, dchi, n, op)

    def r3(x):  # rotate the last three (spatial) dimensions
        return torch.rot90(x, 1, (i - 3, j - 3))

    n_rot = r3(torch.einsum("ab,bxyz->axyz", rot, n))
    op_rot = DipoleOperator(shape, vox, rot @ b0, padding=3, dtype=F64)
    rotated = tensor_field(r3(chi), r3(dchi), n_rot, op_rot)
    assert torch.allclose(rotated, r3(field), atol=1e-12)
    # the anisotropic part alone follows too, and it is not trivially symmetric
    aniso = anisotropic_field(dchi, n, op)
    assert torch.allclose(anisotropic_field(r3(dchi), n_rot, op_rot), r3(aniso), atol=1e-12)
    assert not torch.allclose(anisotropic_field(r3(dchi), r3(n), op_rot), r3(aniso), atol=1e-6)


def test_bad_shapes_are_refused():
    shape = (6, 6, 6)
    op = DipoleOperator(shape, padding=1)
    with pytest.raises(ValueError, match="fibre"):
        anisotropic_source(torch.zeros(shape), torch.zeros(2, *shape), (0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="source"):
        vector_source_field(torch.zeros(3, 5, 6, 6), op)
    batched = DipoleOperator(shape, b0_dir=torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="one B0 direction"):
        anisotropic_field(torch.zeros(shape), torch.zeros(3, *shape), batched)


@pytest.mark.gpu
def test_anisotropic_field_on_cuda_matches_cpu():
    shape = (12, 10, 14)
    chi, dchi = random_map(shape, 1).float(), random_map(shape, 2).float()
    n = random_fibres(shape).float()
    cpu = tensor_field(chi, dchi, n, DipoleOperator(shape, (1.0, 1.2, 0.9), OBLIQUE, padding=3))
    op = DipoleOperator(shape, (1.0, 1.2, 0.9), OBLIQUE, padding=3).to("cuda")
    gpu = tensor_field(chi.cuda(), dchi.cuda(), n.cuda(), op)
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5 * float(cpu.abs().max()))
