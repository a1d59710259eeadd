"""Background field removal: exterior sources suppressed, harmonic fields removed, coverage.

The phantom is an ellipsoidal brain with small interior spheres (the local field) and strong
exterior sources: a -2 ppm skull shell, +9.4 ppm air around the head and an air block below the
brain (a sinus). Fields come from the dlqsm DipoleOperator with padding; chi is band-limited by
a Gaussian (sigma 0.7 voxel) so that the simulated fields are physical: with sharp edges and an
oblique B0 the discretised dipole kernel, discontinuous across the Nyquist boundary, gives the
fields of exterior sources a non-harmonic checkerboard part that no background method can (or
should) remove. Errors are RMS over the method's valid mask after removing the mean (constant
offsets are the inversion's business), relative to the RMS of the true local field there.
"""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from dlqsm.errors import InputError
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.fft import kspace_grid
from dlqsm.physics.kernels import sphere_mask
from dlqsm.pipeline.background import (
    DEFAULT_METHOD,
    METHODS,
    BackgroundResult,
    method_defaults,
    remove_background,
)

N = 48
OBLIQUE = (0.3, 0.2, 0.93)
# parameters suited to a 48^3 phantom (the defaults target whole heads: 12 mm V-SHARP balls
# and TSVD cut wavelengths up to ~10 cm, longer than this brain)
SMALL = {"vsharp": {"radii": (6, 4, 3, 2, 1)}, "sharp": {"radius": 4}, "resharp": {"radius": 3},
         "ismv": {"radius": 3}, "pdf": {}, "lbv": {}, "tfi": {}}
# (max error RMS / local RMS, max error RMS / background RMS), axial and oblique B0;
# measured: vsharp 0.38-0.48, sharp 0.16-0.26, resharp 0.27-0.32, ismv 0.20-0.30, pdf 0.57,
# lbv 0.21-0.34, tfi 0.40-0.47 of the local RMS, and 1.1-2.5 % of the background RMS (which
# is 24x the local)
TOL = {"vsharp": (0.6, 0.04), "sharp": (0.35, 0.04), "resharp": (0.4, 0.04),
       "ismv": (0.4, 0.04), "pdf": (0.65, 0.04), "lbv": (0.45, 0.04), "tfi": (0.55, 0.03)}


def _coords(n, vox=(1.0, 1.0, 1.0), shift=0.0):
    c = [(torch.arange(n, dtype=torch.float32) - (n - 1) / 2 + shift) * h for h in vox]
    return torch.meshgrid(*c, indexing="ij")


def _brain(n):
    """Voxel coordinates, the ellipsoid's semi-axes, its normalised radius r, mask r <= 1."""
    x, y, z = _coords(n)
    ax = torch.tensor([0.34, 0.4, 0.3]) * n
    r = ((x / ax[0]) ** 2 + (y / ax[1]) ** 2 + (z / ax[2]) ** 2).sqrt()
    return x, y, z, ax, r, r <= 1


def _phantom(b0, n=N):
    """(total field, true local field, brain mask), ppm."""
    g = torch.Generator().manual_seed(1)
    x, y, z, ax, r, mask = _brain(n)
    inner = torch.zeros(n, n, n)
    placed = 0
    while placed < 8:  # spheres with 3 voxels of brain around them
        rad = 2 + 2 * float(torch.rand(1, generator=g))
        ctr = (torch.rand(3, generator=g) - 0.5) * 2 * ax
        dist = ((x - ctr[0]) ** 2 + (y - ctr[1]) ** 2 + (z - ctr[2]) ** 2).sqrt()
        if bool(((dist <= rad + 3) & ~mask).any()):
            continue
        inner[dist <= rad] = float(torch.rand(1, generator=g)) * 0.4 - 0.1
        placed += 1
    outer = torch.zeros(n, n, n)
    outer[(r > 1.25) & (r <= 1.4)] = -2.0  # skull
    outer[r > 1.4] = 9.4  # air around the head
    outer[(x.abs() < 0.08 * n) & (y.abs() < 0.1 * n) & (z < -0.32 * n) & (r > 1.25)] = 9.4
    op = DipoleOperator((n, n, n), (1, 1, 1), b0, padding=n // 4)
    k2 = sum(k ** 2 for k in kspace_grid(op.padded_shape))
    kernel = op.kernel * torch.exp(-2 * math.pi ** 2 * 0.7 ** 2 * k2)
    return op.apply_kspace(inner + outer, kernel), op.apply_kspace(inner, kernel), mask


@pytest.fixture(scope="module")
def axial():
    return _phantom((0.0, 0.0, 1.0))


@pytest.fixture(scope="module")
def oblique():
    return _phantom(OBLIQUE)


def _errors(res, total, local):
    v = res.mask
    err = res.local_field[v] - local[v]
    err = err - err.mean()
    loc = local[v] - local[v].mean()
    bg = (total - local)[v]
    bg = bg - bg.mean()
    return float(err.norm() / loc.norm()), float(err.norm() / bg.norm())


def _demeaned_rms(x, m):
    return float((x[m] - x[m].mean()).pow(2).mean().sqrt())


@pytest.mark.parametrize("method", sorted(SMALL))
@pytest.mark.parametrize("geometry", ["axial", "oblique"])
def test_exterior_sources_suppressed(method, geometry, request):
    total, local, mask = request.getfixturevalue(geometry)
    b0 = OBLIQUE if geometry == "oblique" else (0.0, 0.0, 1.0)
    # the task is hard: the background is ~27x the local field in the brain
    assert _demeaned_rms(total - local, mask) > 20 * _demeaned_rms(local, mask)
    res = remove_background(total, mask, method=method, b0_dir=b0, **SMALL[method])
    rel_local, rel_bg = _errors(res, total, local)
    assert rel_local < TOL[method][0], (method, rel_local)
    assert rel_bg < TOL[method][1], (method, rel_bg)
    assert res.local_field.dtype == torch.float32 and res.mask.dtype == torch.bool
    assert torch.all(res.local_field[~res.mask] == 0)
    assert res.mask.sum() <= mask.sum() and not torch.any(res.mask & ~mask)


def test_pdf_deep_interior_and_full_mask(oblique):
    total, local, mask = oblique
    res = remove_background(total, mask, method="pdf", b0_dir=OBLIQUE)
    assert torch.equal(res.mask, mask) and res.info["eroded_voxels"] == 0
    deep = torch.as_tensor(ndimage.distance_transform_edt(mask.numpy()) > 4)
    err = res.local_field - local
    err = err - err[mask].mean()
    loc = local - local[mask].mean()
    assert float(err[deep].norm() / loc[deep].norm()) < 0.3  # measured 0.22 (0.26 gap 0)
    assert res.info["iterations"] > 5



def _rim_phantom(b0, n=N):
    """(total, local, mask): 0.3 ppm balls cut by the mask rim (like veins at the brain surface)
    plus a skull shell and air starting 3.6-4.3 voxels outside the mask, ppm."""
    g = torch.Generator().manual_seed(3)
    x, y, z, ax, r, mask = _brain(n)
    inner = torch.zeros(n, n, n)
    for _ in range(12):
        d = torch.randn(3, generator=g)
        ctr = d / d.norm() * ax * 0.88
        dist = ((x - ctr[0]) ** 2 + (y - ctr[1]) ** 2 + (z - ctr[2]) ** 2).sqrt()
        inner[(dist <= 2.5) & mask] = 0.3
    outer = torch.zeros(n, n, n)
    outer[(r > 1.3) & (r <= 1.45)] = -2.0
    outer[r > 1.45] = 9.4
    op = DipoleOperator((n, n, n), (1, 1, 1), b0, padding=n // 4)
    k2 = sum(k ** 2 for k in kspace_grid(op.padded_shape))
    kernel = op.kernel * torch.exp(-2 * math.pi ** 2 * 0.7 ** 2 * k2)
    return op.apply_kspace(inner + outer, kernel), op.apply_kspace(inner, kernel), mask


@pytest.mark.parametrize("geometry", ["axial", "oblique"])
def test_tfi_converges_on_large_background_and_beats_pdf(geometry, request):
    """The joint (preconditioned) fit stops on its relative residual, well before its
    iteration limit, on a background ~27x the local field, keeps every voxel, and leaves less
    background than PDF (measured: 0.40 / 0.47 against PDF's 0.56 / 0.56 of the local RMS)."""
    total, local, mask = request.getfixturevalue(geometry)
    b0 = OBLIQUE if geometry == "oblique" else (0.0, 0.0, 1.0)
    res = remove_background(total, mask, method="tfi", b0_dir=b0)
    info = res.info
    assert info["converged"] and info["iterations"] < info["params"]["max_iter"]
    assert info["residual"] < info["params"]["tol"]
    assert torch.equal(res.mask, mask) and info["eroded_voxels"] == 0
    pdf = remove_background(total, mask, method="pdf", b0_dir=b0)
    assert _errors(res, total, local)[0] < 0.9 * _errors(pdf, total, local)[0]


def test_tfi_not_converged_is_reported(axial):
    total, _, mask = axial
    info = remove_background(total, mask, method="tfi", max_iter=3).info
    assert info["iterations"] == 3 and not info["converged"] and info["residual"] > 1e-4


@pytest.mark.parametrize("b0", [(0.0, 0.0, 1.0), OBLIQUE])
def test_pdf_gap_keeps_rim_sources(b0):
    """Sources allowed right next to the mask explain part of the field of brain sources at the
    rim; keeping PDF's sources gap_mm (default 4) away leaks less of it into the background."""
    total, local, mask = _rim_phantom(b0)
    assert method_defaults("pdf")["gap_mm"] == 4.0
    res = remove_background(total, mask, method="pdf", b0_dir=b0)
    old = remove_background(total, mask, method="pdf", b0_dir=b0, gap_mm=0)
    err, err_old = _errors(res, total, local)[0], _errors(old, total, local)[0]
    # measured 0.49 vs 0.65 (axial), 0.56 vs 0.66 (oblique)
    assert err < 0.9 * err_old, (err, err_old)
    assert res.info["params"]["gap_mm"] == 4.0 and torch.equal(res.mask, mask)


def test_pdf_gap_larger_than_padding():
    """The crop grows with the gap: a 12 mm gap at padding 0 still leaves sources to fit."""
    total, local, mask = _rim_phantom((0.0, 0.0, 1.0))
    res = remove_background(total, mask, method="pdf", padding=0, gap_mm=12.0, max_iter=5)
    assert res.info["iterations"] > 0 and torch.isfinite(res.local_field).all()

def _harmonic(vox, n=40, quadratic=True):
    x, y, z = _coords(n, vox, shift=0.3)
    mask = (x / 15) ** 2 + (y / 17) ** 2 + (z / 14) ** 2 <= 1
    f = 0.01 * (x * y + y * z - 0.5 * x * z) + 0.02 * x - 0.03 * z + 0.5
    if quadratic:  # x^2 - y^2 is harmonic, but a discrete ball is only symmetric in mm if iso
        f = f + 0.005 * (x ** 2 - y ** 2)
    return f, mask


@pytest.mark.parametrize("vox", [(1.0, 1.0, 1.0), (1.0, 1.2, 1.5)])
@pytest.mark.parametrize("method", ["vsharp", "sharp", "resharp", "ismv", "lbv"])
def test_harmonic_background_removed_exactly(method, vox):
    f, mask = _harmonic(vox, quadratic=vox[0] == vox[1])
    params = {"vsharp": {"radii": (6, 4, 2, max(vox))}}.get(method, SMALL[method])
    res = remove_background(f, mask, method=method, voxel_size=vox, **params)
    scale = float((f[res.mask] - f[res.mask].mean()).abs().max())
    assert float(res.local_field.abs().max()) < 1e-4 * scale  # measured <= 1e-6


def test_pdf_removes_harmonic_background():
    f, mask = _harmonic((1.0, 1.0, 1.0))
    res = remove_background(f, mask, method="pdf")
    assert res.mask.equal(mask)
    # the fit of a harmonic polynomial by exterior dipoles is approximate; measured 0.5 %
    assert _demeaned_rms(res.local_field, mask) < 0.02 * _demeaned_rms(f, mask)


def _ball_erosion(mask, vox, radius):
    n = [2 * int(math.ceil(radius / h)) + 1 for h in vox]
    ball = torch.roll(sphere_mask(n, vox, radius), [k // 2 for k in n], dims=(0, 1, 2))
    padded = np.pad(mask.numpy(), max(n))
    out = ndimage.binary_erosion(padded, structure=ball.numpy())
    return torch.as_tensor(out[(slice(max(n), -max(n)),) * 3])


@pytest.mark.parametrize("method,radius", [("vsharp", 1.0), ("sharp", 4.0), ("resharp", 3.0),
                                           ("ismv", 3.0)])
def test_sharp_family_erodes_by_smallest_radius(method, radius, axial):
    total, _, mask = axial
    res = remove_background(total, mask, method=method, **SMALL[method])
    assert torch.equal(res.mask, _ball_erosion(mask, (1.0, 1.0, 1.0), radius))
    assert res.info["eroded_voxels"] == int(mask.sum() - res.mask.sum()) > 0


def test_lbv_erodes_one_voxel_rim(axial):
    total, _, mask = axial
    res = remove_background(total, mask, method="lbv")
    six = ndimage.generate_binary_structure(3, 1)
    assert torch.equal(res.mask, torch.as_tensor(ndimage.binary_erosion(mask.numpy(), six)))
    assert res.info["converged"] and res.info["residual"] <= method_defaults("lbv")["tol"]


def test_vsharp_default_radii_and_anisotropic_erosion():
    vox = (1.0, 1.0, 1.5)
    f, mask = _harmonic(vox, n=48, quadratic=False)
    res = remove_background(f, mask, method="vsharp", voxel_size=vox)
    assert res.info["params"]["radii"] == (12.0, 10.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.5)
    assert torch.equal(res.mask, _ball_erosion(mask, vox, 1.5))


def test_mask_touching_the_volume_edge():
    f, mask = _harmonic((1.0, 1.0, 1.0), n=32)
    mask[:, :, -1] = mask[:, :, -2]  # brain cut by the field of view
    for method in ("sharp", "lbv", "pdf"):
        res = remove_background(f, mask, method=method, **SMALL[method])
        assert torch.isfinite(res.local_field).all()
        if method != "pdf":
            assert not res.mask[:, :, -1].any()  # no ball fits across the edge


def test_registry_defaults_and_wrappers(axial):
    total, _, mask = axial
    assert set(METHODS) == {"vsharp", "sharp", "resharp", "ismv", "pdf", "lbv", "tfi"}
    assert DEFAULT_METHOD == "pdf"
    for name, fn in METHODS.items():
        d = method_defaults(name)
        assert isinstance(d, dict) and d
        d["x"] = 1
        assert "x" not in method_defaults(name)
        assert name in fn.__doc__
    a = METHODS["sharp"](total, mask, radius=4)
    b = remove_background(total, mask, method="sharp", radius=4)
    assert isinstance(a, BackgroundResult) and torch.equal(a.local_field, b.local_field)
    info = remove_background(total, mask).info
    assert info["method"] == "pdf" and set(info) >= {"params", "iterations", "converged",
                                                     "eroded_voxels"}


def test_numpy_inputs_float_mask_and_weight(axial):
    total, _, mask = axial
    ref = remove_background(total, mask, method="pdf", max_iter=5)
    res = remove_background(total.double().numpy(), mask.float().numpy(), method="pdf",
                            max_iter=5, weight=3 * torch.ones(mask.shape).numpy())
    assert res.local_field.dtype == torch.float32
    assert torch.allclose(res.local_field, ref.local_field, atol=1e-6)
    assert res.info["weighted"] and not ref.info["weighted"]
    w = torch.ones(mask.shape)
    w[: N // 2] = 0.2  # a weight changes the fit
    res_w = remove_background(total, mask, method="pdf", max_iter=5, weight=w)
    assert not torch.allclose(res_w.local_field, ref.local_field, atol=1e-4)


def test_outside_mask_values_ignored(axial):
    total, _, mask = axial
    noisy = total.clone()
    noisy[~mask] = float("nan")
    for method in ("sharp", "lbv", "pdf"):
        params = {**SMALL[method], **({"max_iter": 3} if method == "pdf" else {})}
        res = remove_background(noisy, mask, method=method, **params)
        assert torch.isfinite(res.local_field).all()


def test_progress_bar(axial, capsys):
    total, _, mask = axial
    res = remove_background(total, mask, method="lbv", progress=True)
    assert "LBV" in capsys.readouterr().err and res.info["iterations"] > 0


def test_validation_errors():
    f = torch.zeros(16, 16, 16)
    m = torch.zeros(16, 16, 16, dtype=torch.bool)
    m[4:12, 4:12, 4:12] = True
    with pytest.raises(InputError, match="empty"):
        remove_background(f, torch.zeros_like(m))
    with pytest.raises(InputError, match="shape"):
        remove_background(f, m[:-1])
    with pytest.raises(InputError, match="3D"):
        remove_background(f[None], m)
    with pytest.raises(InputError, match="unknown background removal method"):
        remove_background(f, m, method="magic")
    with pytest.raises(InputError, match="unknown parameter"):
        remove_background(f, m, method="pdf", radius=3)
    with pytest.raises(InputError, match="radius"):
        remove_background(f, m, method="sharp", radius=-1)
    with pytest.raises(InputError, match="padding"):
        remove_background(f, m, method="pdf", padding=2.5)
    with pytest.raises(InputError, match="gap_mm"):
        remove_background(f, m, method="pdf", gap_mm=-1)
    with pytest.raises(InputError, match="p_out"):
        remove_background(f, m, method="tfi", p_out=0)
    with pytest.raises(InputError, match="empty after eroding"):
        remove_background(f, m, method="sharp", radius=6)
    bad = f.clone()
    bad[8, 8, 8] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        remove_background(bad, m)
    with pytest.raises(InputError, match="weight"):
        remove_background(f, m, weight=torch.ones(3, 3, 3))
    with pytest.raises(InputError, match="weight"):
        remove_background(f, m, weight=-torch.ones(16, 16, 16))
    with pytest.raises(InputError, match="voxel size"):
        remove_background(f, m, voxel_size=(1, 0, 1))
    with pytest.raises(ValueError):  # InputError is a ValueError
        remove_background(f, m, method="lbv", tol=2.0)


@pytest.mark.gpu
@pytest.mark.parametrize("method", sorted(SMALL))
def test_cuda_matches_cpu(method, oblique):
    total, local, mask = oblique
    cpu = remove_background(total, mask, method=method, b0_dir=OBLIQUE, **SMALL[method])
    gpu = remove_background(total.cuda(), mask.cuda(), method=method, b0_dir=OBLIQUE,
                            **SMALL[method])
    assert gpu.local_field.is_cuda and gpu.mask.is_cuda
    assert torch.equal(gpu.mask.cpu(), cpu.mask)
    diff = _demeaned_rms(gpu.local_field.cpu() - cpu.local_field, cpu.mask)
    assert diff < 0.02 * _demeaned_rms(local, cpu.mask)
