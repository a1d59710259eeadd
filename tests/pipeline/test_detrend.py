"""Susceptibility trends that background removal cannot see (dlqsm.pipeline.detrend).

Physics first: the eight trends have harmonic fields (the field's Laplacian vanishes inside the
source region) for any B0 direction and voxel size, while a quadratic outside the family does
not; then the fit: it recovers a trend added to a piecewise-constant map and leaves a map
without one alone; then the mechanism it exists for: PDF run on a *local* field (no background
at all) removes part of it, and TV returns the map with a trend of the eight modes.
"""

import math

import pytest
import torch

from dlqsm.errors import InputError
from dlqsm.io.scan import Scan
from dlqsm.metrics.functional import nrmse
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.fft import kspace_grid
from dlqsm.physics.operators import laplacian_interior
from dlqsm.pipeline.detrend import (
    MODE_NAMES,
    fit_background_modes,
    invisible_quadratics,
    mode_values,
    remove_background_modes,
    subtract_trend,
)
from dlqsm.pipeline.reconstruct import reconstruct
from tests.pipeline.test_reconstruct import ellipsoid_head

OBLIQUE = (0.3, 0.2, 0.93)


def _unit(b):
    b = torch.tensor(b, dtype=torch.float64)
    return b / b.norm()


@pytest.mark.parametrize("b0", [(0.0, 0.0, 1.0), OBLIQUE, (1.0, 0.0, 0.0)])
def test_quadratic_family_is_the_constrained_plane(b0):
    quads = invisible_quadratics(b0)
    b = _unit(b0)
    assert quads.shape == (5, 3, 3)
    for a in quads:
        assert torch.allclose(a, a.T)
        assert abs(float(b @ a @ b - torch.trace(a) / 3)) < 1e-12
    gram = quads.reshape(5, 9) @ quads.reshape(5, 9).T
    assert torch.allclose(gram, torch.eye(5, dtype=torch.float64), atol=1e-12)
    # the isotropic bowl x^2 + y^2 + z^2 is in the family whatever B0 is
    eye = torch.eye(3, dtype=torch.float64) / math.sqrt(3)
    coef = (quads * eye).sum((1, 2))
    assert torch.allclose((coef[:, None, None] * quads).sum(0), eye, atol=1e-12)


def _smooth_field(chi, vox, b0, n):
    """Field (ppm) of a chi band-limited by a Gaussian (sigma 0.7 voxel): physical fields."""
    op = DipoleOperator((n, n, n), vox, b0, padding=n // 2)
    k2 = sum((k * h) ** 2 for k, h in zip(kspace_grid(op.padded_shape, vox), vox, strict=True))
    return op.apply_kspace(chi, op.kernel * torch.exp(-2 * math.pi ** 2 * 0.7 ** 2 * k2))


@pytest.mark.parametrize("b0,vox", [((0.0, 0.0, 1.0), (1.0, 1.0, 1.0)),
                                    (OBLIQUE, (1.0, 1.25, 1.5))])
def test_the_eight_trends_have_harmonic_fields(b0, vox):
    n = 48
    c = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * h for h in vox]
    grid = torch.stack(torch.meshgrid(*c, indexing="ij"), -1)
    radius = 0.35 * n * min(vox)
    # a smooth cut-off from radius to radius + 6 mm (a sharp one rings through the FFT into the
    # interior), flat inside: there the field's Laplacian is Lap chi / 3 - d^2 chi / db^2
    edge = ((grid.norm(dim=-1) - radius) / 6.0).clamp(0, 1)
    ball = torch.cos(edge * math.pi / 2) ** 2
    p = grid.reshape(-1, 3) / radius
    values = mode_values(p, invisible_quadratics(b0)).T.reshape(8, n, n, n)
    b = _unit(b0)
    outside_family = (p @ b) ** 2  # b^T A b = 1 but tr(A) / 3 = 1/3
    deep = (grid.norm(dim=-1) <= 0.6 * radius)[1:-1, 1:-1, 1:-1]

    def interior_laplacian_rms(chi):
        f = _smooth_field((chi * ball).float(), vox, b0, n).double()
        return float(laplacian_interior(f, vox)[deep].square().mean().sqrt())

    reference = interior_laplacian_rms(outside_family.reshape(n, n, n))
    # Lap B = Lap chi / 3 - d^2 chi / db^2 = 2/3 - 2 (per radius^2) for (p.b)^2: not harmonic
    assert reference == pytest.approx(4 / 3 / radius ** 2, rel=0.01)
    for name, mode in zip(MODE_NAMES, values, strict=True):
        scale = float(mode[grid.norm(dim=-1) <= radius].abs().max())
        rms = interior_laplacian_rms(mode / scale)
        assert rms < 0.01 * reference, (name, rms / reference)  # measured <= 0.002


def _brain(n=40, vox=(1.0, 1.0, 1.0), seed=0):
    """Piecewise-constant map in an ellipsoidal brain: grey/white regions and iron-rich nuclei."""
    g = torch.Generator().manual_seed(seed)
    c = [(torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * h for h in vox]
    x, y, z = torch.meshgrid(*c, indexing="ij")
    r = ((x / (0.42 * n)) ** 2 + (y / (0.45 * n)) ** 2 + (z / (0.38 * n)) ** 2).sqrt()
    mask = r <= 1
    chi = torch.where(r > 0.8, torch.tensor(0.02), torch.tensor(-0.015))  # cortex / white matter
    for _ in range(6):
        ctr = (torch.rand(3, generator=g) - 0.5) * 0.7 * n
        rad = 2.5 + 2.5 * float(torch.rand(1, generator=g))
        d = ((x - ctr[0]) ** 2 + (y - ctr[1]) ** 2 + (z - ctr[2]) ** 2).sqrt()
        chi[d <= rad] = 0.05 + 0.1 * float(torch.rand(1, generator=g))
    chi = chi * mask
    return chi - chi[mask].mean() * mask, mask


def _rel(a, b, m):
    return float((a - b)[m].norm() / b[m].norm())


@pytest.mark.parametrize("b0,vox", [((0.0, 0.0, 1.0), (1.0, 1.0, 1.0)), (OBLIQUE, (1.0, 1.0, 2.0))])
def test_fit_recovers_an_added_trend_and_leaves_a_clean_map(b0, vox):
    chi, mask = _brain(vox=vox)
    g = torch.Generator().manual_seed(3)
    clean, clean_info = remove_background_modes(chi, mask, voxel_size=vox, b0_dir=b0)
    assert clean_info["converged"]
    assert _rel(clean, chi, mask) < 0.02  # no trend: (almost) nothing taken out
    # a trend of 0.06 ppm peak to peak from all eight modes, and noise (without noise the fit
    # is exact; with 0.001 ppm, half the trend's step between neighbours, measured 10-15 %)
    idx = torch.nonzero(mask).double() * torch.tensor(vox, dtype=torch.float64)
    centre = idx.mean(0)
    radius = float((idx - centre).norm(dim=1).max())
    q = torch.randn(8, generator=g, dtype=torch.float64)
    tvals = mode_values((idx - centre) / radius, invisible_quadratics(b0)) @ q
    tvals = 0.06 * (tvals - tvals.mean()) / float(tvals.max() - tvals.min())
    trend = torch.zeros_like(chi)
    trend[mask] = tvals.float()
    noisy = (chi + trend + 0.001 * torch.randn(chi.shape, generator=g)) * mask
    before = _rel(noisy - noisy[mask].mean() * mask, chi, mask)
    fitted, info = fit_background_modes(noisy, mask, voxel_size=vox, b0_dir=b0)
    assert info["trend_range_ppm"] == pytest.approx(0.06, rel=0.1)
    assert _rel(fitted, trend, mask) < 0.2
    out = subtract_trend(noisy, fitted, mask)
    assert _rel(out, chi, mask) < before / 3, (before, _rel(out, chi, mask))
    assert float(out[~mask].abs().max()) == 0.0
    assert abs(float(out[mask].mean())) < 1e-6


def test_pdf_on_a_pure_local_field_leaves_a_trend_of_the_eight_modes():
    """The mechanism, on the head-like phantom of the chain tests: PDF run on the *true local
    field* (no background at all) removes part of it, and TV then returns a map whose extra
    error is largely a trend of the eight modes (least squares against the truth); the chain's
    detrending (fit, give the trend's field back, invert again, fit again: it does not know the
    truth) takes part of it out. Measured: 7.0 % NRMSE from the local field, 37.8 % after PDF,
    25.6 % with the oracle trend removed, 35.0 % detrended."""
    ph = ellipsoid_head()
    mask = torch.as_tensor(ph["mask"])
    chi = torch.as_tensor(ph["chi"])
    truth = (chi - chi[mask].mean()) * mask
    scan = Scan(total_field=ph["local_field"], mask=ph["mask"])
    kept = reconstruct(scan, progress=False, detrend=False)
    fitted = reconstruct(scan, progress=False)  # auto: on, since the chain removed a background
    direct = reconstruct(Scan(local_field=ph["local_field"], mask=ph["mask"]), progress=False)
    assert direct.info["inversion"]["detrend"] == {"applied": False}
    info = fitted.info["inversion"]["detrend"]
    assert info["applied"] and info["converged"] and info["reinverted"]
    assert kept.info["inversion"]["detrend"] == {"applied": False}
    s_direct, s_kept, s_fit = (float(nrmse(r.chimap, chi, mask)) for r in (direct, kept, fitted))
    assert s_kept > s_direct + 20, (s_direct, s_kept)  # PDF costs although nothing was there
    idx = torch.nonzero(mask).double()
    centre = idx.mean(0)
    modes = mode_values((idx - centre) / float((idx - centre).norm(dim=1).max()),
                        invisible_quadratics((0, 0, 1)))
    err = (kept.chimap - truth)[mask].double()
    coef = torch.linalg.lstsq(modes, err[:, None]).solution
    oracle = kept.chimap.clone()
    oracle[mask] -= (modes @ coef)[:, 0].float()
    s_oracle = float(nrmse(oracle, chi, mask))
    assert s_oracle < s_kept - 8, (s_kept, s_oracle)  # the modes hold much of the loss
    assert s_fit < s_kept - 1.5, (s_kept, s_fit)  # the fit finds some of it


def test_thin_slab_stays_finite_and_close():
    """A slab a few voxels thick (e.g. a midbrain acquisition): trends that look alike inside
    it are not determined one by one, but the fitted values are, and a clean map stays close."""
    chi, mask = _brain(40)
    slab = mask.clone()
    slab[:, :, :17] = False
    slab[:, :, 22:] = False
    chi = (chi - chi[slab].mean()) * slab
    out, info = remove_background_modes(chi, slab, voxel_size=(1, 1, 2), b0_dir=OBLIQUE)
    assert torch.isfinite(out).all() and info["converged"]
    assert _rel(out, chi, slab) < 0.05, _rel(out, chi, slab)


def test_bad_input_is_refused():
    chi, mask = _brain(16)
    with pytest.raises(InputError, match="one grid"):
        fit_background_modes(chi[:-1], mask)
    bad = chi.clone()
    bad[mask.nonzero()[0].tolist()] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        fit_background_modes(bad, mask)
    thin = torch.zeros_like(mask)
    thin[8, 8, :] = True
    with pytest.raises(InputError, match="too thin"):
        fit_background_modes(chi, thin)
    with pytest.raises(InputError, match="scale"):
        fit_background_modes(chi, mask, scale=0)
