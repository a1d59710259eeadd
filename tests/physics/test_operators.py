"""The linear-operator contract over every physics operator, plus Gradient, padding and the
SMV / Laplacian kernels against image-space computations."""

import numpy as np
import pytest
import torch

from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.fft import crop3, fft_friendly, irfft3, pad3, rfft3
from dlqsm.physics.kernels import laplacian_kernel, smv_kernel, sphere_mask
from dlqsm.physics.operators import Gradient, Identity, LinearOperator, laplacian_interior

F64 = torch.float64
SHAPE = (9, 8, 10)


class _Pad(LinearOperator):
    """pad3 with crop3 as its adjoint, to put the padding helpers under the same contract."""

    def __init__(self, padding):
        self.padding = padding

    def forward(self, x):
        return pad3(x, self.padding)

    def adjoint(self, y):
        return crop3(y, self.padding)


OPERATORS = {
    "identity": lambda: Identity(),
    "gradient": lambda: Gradient((1.0, 1.0, 1.0)),
    "gradient_aniso": lambda: Gradient((0.7, 1.2, 2.0)),
    "dipole": lambda: DipoleOperator(SHAPE, (1, 1, 1), (0, 0, 1), dtype=F64),
    "dipole_oblique_padded": lambda: DipoleOperator(SHAPE, (0.8, 1, 1.4), (0.3, -0.5, 0.8),
                                                    padding=(2, 0, 3), dtype=F64),
    "pad": lambda: _Pad((1, 2, 0)),
}


def _probe_pair(op, batch=(2,)):
    x = torch.randn(*batch, *SHAPE, dtype=F64)
    y = torch.randn_like(op.forward(x))
    return x, y


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_adjointness(name):
    op = OPERATORS[name]()
    x, y = _probe_pair(op)
    assert op.adjointness_error(x, y) < 1e-12
    # linearity
    x2 = torch.randn_like(x)
    assert torch.allclose(op.forward(2 * x - 3 * x2), 2 * op.forward(x) - 3 * op.forward(x2),
                          atol=1e-12)
    # normal operator A^H A is positive semi-definite
    assert float(torch.vdot(x.flatten(), op.normal(x).flatten())) >= -1e-12


def test_adjointness_check_can_fail():
    """A wrong adjoint (the forward differences used as their own adjoint) is caught."""

    class WrongAdjoint(Gradient):
        def adjoint(self, g):
            return g.sum(dim=-4)

    x = torch.randn(*SHAPE, dtype=F64)
    y = torch.randn(3, *SHAPE, dtype=F64)
    assert WrongAdjoint().adjointness_error(x, y) > 1e-2


# ----------------------------------------------------------------------------- gradient
def test_gradient_values():
    vox = (0.5, 1.0, 2.0)
    grad = Gradient(vox)
    i, j, k = torch.meshgrid(*(torch.arange(n, dtype=F64) for n in SHAPE), indexing="ij")
    ramp = 3.0 * i * vox[0] - 2.0 * j * vox[1] + 0.5 * k * vox[2]  # mm coordinates
    g = grad.forward(ramp)
    assert g.shape == (3, *SHAPE)
    # forward differences: exact slopes away from the periodic wrap at the last index
    assert torch.allclose(g[0, :-1], torch.full_like(g[0, :-1], 3.0))
    assert torch.allclose(g[1, :, :-1], torch.full_like(g[1, :, :-1], -2.0))
    assert torch.allclose(g[2, :, :, :-1], torch.full_like(g[2, :, :, :-1], 0.5))
    assert torch.allclose(grad.forward(torch.ones(SHAPE, dtype=F64)), torch.zeros(3, *SHAPE,
                                                                                  dtype=F64))
    # batch dimensions are kept in front of the new gradient axis
    assert grad.forward(torch.randn(2, 1, *SHAPE)).shape == (2, 1, 3, *SHAPE)


@pytest.mark.parametrize("half", [True, False])
def test_gradient_kspace_filters(half):
    vox = (0.7, 1.2, 2.0)
    grad = Gradient(vox)
    x = torch.randn(2, *SHAPE, dtype=F64)
    e = grad.kspace_filters(SHAPE, half=half, dtype=F64)
    zk = SHAPE[2] // 2 + 1 if half else SHAPE[2]
    assert e.shape == (3, *SHAPE[:2], zk)
    if half:
        via_k = irfft3(e * rfft3(x).unsqueeze(-4), SHAPE)
    else:
        via_k = torch.fft.ifftn(e * torch.fft.fftn(x, dim=(-3, -2, -1)).unsqueeze(-4),
                                dim=(-3, -2, -1)).real
    assert torch.allclose(via_k, grad.forward(x), atol=1e-12)
    # the adjoint is the conjugate filter; A^H A is the (negative) Laplacian
    lap = laplacian_kernel(SHAPE, vox, dtype=F64)
    e_half = grad.kspace_filters(SHAPE, half=True, dtype=F64)
    assert torch.allclose((e_half.abs() ** 2).sum(0), -lap, atol=1e-12)


# ----------------------------------------------------------------------------- kernels
def test_laplacian_kernel_matches_seven_point_stencil():
    vox = (0.8, 1.0, 1.5)
    x = torch.randn(*SHAPE, dtype=F64)
    stencil = sum((torch.roll(x, 1, d) - 2 * x + torch.roll(x, -1, d)) / h ** 2
                  for d, h in zip((0, 1, 2), vox, strict=True))
    via_k = irfft3(laplacian_kernel(SHAPE, vox, dtype=F64) * rfft3(x), SHAPE)
    assert torch.allclose(via_k, stencil, atol=1e-12)
    # and it is minus the gradient's normal operator
    grad = Gradient(vox)
    assert torch.allclose(via_k, -grad.normal(x), atol=1e-12)


def test_smv_kernel_is_the_spherical_mean():
    shape, vox, radius = (16, 14, 12), (1.0, 1.2, 1.5), 3.0
    ball = sphere_mask(shape, vox, radius)
    # the ball is centred at voxel 0 with periodic wrap and symmetric under negation
    assert ball[0, 0, 0] and torch.equal(ball, torch.roll(ball.flip(0, 1, 2), (1, 1, 1), (0, 1, 2)))
    offsets = torch.nonzero(ball)
    x = torch.randn(*shape, dtype=F64)
    mean = sum(torch.roll(x, tuple(int(o) for o in off), (0, 1, 2)) for off in offsets)
    mean = mean / len(offsets)
    s = smv_kernel(shape, vox, radius, dtype=F64)
    assert float(s[0, 0, 0]) == pytest.approx(1.0)
    assert torch.allclose(irfft3(s * rfft3(x), shape), mean, atol=1e-12)
    # a harmonic function (here linear in one axis, periodic box aside) keeps its value
    # inside: check at the centre of a linear ramp far from the wrap
    ramp = torch.arange(shape[0], dtype=F64).view(-1, 1, 1).expand(shape).clone()
    smoothed = irfft3(s * rfft3(ramp), shape)
    c = shape[0] // 2
    assert torch.allclose(smoothed[c], ramp[c], atol=1e-10)


# ----------------------------------------------------------------------------- fft helpers
def test_pad_crop_and_fft_friendly():
    x = torch.randn(2, *SHAPE)
    p = pad3(x, (1, 2, 3))
    assert p.shape == (2, SHAPE[0] + 2, SHAPE[1] + 4, SHAPE[2] + 6)
    assert torch.equal(crop3(p, (1, 2, 3)), x)
    assert pad3(x, 0) is x
    with pytest.raises(ValueError):
        pad3(x, (1, 2))
    assert [fft_friendly(n) for n in (1, 7, 11, 97, 128, 164, 205)] == [1, 8, 12, 100, 128,
                                                                        180, 216]
    for n in range(1, 300):
        m = fft_friendly(n)
        assert m >= n and all(q in (2, 3, 5) for q in _prime_factors(m))
        assert not any(set(_prime_factors(k)) <= {2, 3, 5} for k in range(max(n, 2), m))


def _prime_factors(n):
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def test_rfft_round_trip_keeps_device_and_shape():
    x = torch.randn(3, *SHAPE, dtype=F64)
    assert torch.allclose(irfft3(rfft3(x), SHAPE), x, atol=1e-12)
    assert np.allclose(rfft3(x).numpy(), np.fft.rfftn(x.numpy(), axes=(-3, -2, -1)))


@pytest.mark.gpu
def test_gradient_on_cuda():
    grad = Gradient((0.7, 1.2, 2.0))
    x = torch.randn(2, *SHAPE)
    assert torch.allclose(grad.forward(x.cuda()).cpu(), grad.forward(x), atol=1e-6)
    e = grad.kspace_filters(SHAPE, device="cuda")
    assert e.device.type == "cuda"


def test_gradient_buffer_path_equals_autograd_path_and_rolls():
    """The in-place (solver) path, the differentiable path and a torch.roll reference agree."""
    vox = (1.0, 0.8, 1.5)
    grad = Gradient(vox)
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    g = torch.randn(2, 3, 6, 7, 5, dtype=torch.float64)
    ref_fwd = torch.stack([(torch.roll(x, -1, dims=d) - x) / h
                           for d, h in zip((-3, -2, -1), vox, strict=True)], dim=-4)
    ref_adj = sum((torch.roll(g[:, i], 1, dims=d) - g[:, i]) / h
                  for i, (d, h) in enumerate(zip((-3, -2, -1), vox, strict=True)))
    buf = torch.empty_like(g)
    assert grad.forward(x, out=buf) is buf
    torch.testing.assert_close(buf, ref_fwd)
    torch.testing.assert_close(grad.adjoint(g), ref_adj)
    xr, gr = x.clone().requires_grad_(), g.clone().requires_grad_()
    torch.testing.assert_close(grad.forward(xr), ref_fwd)
    torch.testing.assert_close(grad.adjoint(gr), ref_adj)
    assert torch.autograd.gradcheck(grad.forward, (x[0, :3, :3, :3].clone().requires_grad_(),))
    assert torch.autograd.gradcheck(grad.adjoint, (g[0, :, :3, :3, :3].clone().requires_grad_(),))


def test_laplacian_interior_is_exact_for_quadratics_on_anisotropic_voxels():
    """sum_i (x+h e_i - 2x + x-h e_i) / h_i^2 of a x^2 + b y^2 + c z^2 (mm) is 2 (a + b + c)."""
    vox = (0.8, 1.1, 2.0)
    idx = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) * h
                           for n, h in zip((9, 8, 7), vox, strict=True)], indexing="ij")
    a, b, c = 0.3, -1.2, 0.7
    lap = laplacian_interior(a * idx[0] ** 2 + b * idx[1] ** 2 + c * idx[2] ** 2, vox)
    assert lap.shape == (7, 6, 5)
    torch.testing.assert_close(lap, torch.full_like(lap, 2 * (a + b + c)))
    # wrong spacing on one axis breaks it
    wrong = laplacian_interior(a * idx[0] ** 2, (1.0, 1.1, 2.0))
    assert not torch.allclose(wrong, torch.full_like(wrong, 2 * a))
