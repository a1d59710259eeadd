"""Background field removal: total field (ppm) + brain mask -> local field (ppm) + valid mask.

The total field inside the brain is the sum of the *local* field (made by susceptibility
sources inside the mask) and the *background* field (sources outside: air, bone, the rest of
the body). Inside the mask the background field is harmonic (its Laplacian is zero), which every
method here exploits in one way:

``vsharp`` / ``sharp``
    Spherical mean value (SMV) filtering: (delta - S_r) kills harmonic fields, so the filtered
    field equals (delta - S_r) applied to the local field wherever the ball of radius r lies
    inside the mask; a truncated (TSVD) deconvolution by (1 - S_rmax), zero where
    |1 - S_rmax| <= ``threshold`` (0.05), recovers the local field but the longest wavelengths.
    V-SHARP uses radii 12, 10, 8, 6, 4, 3, 2, 1 mm (those not above the largest voxel size
    replaced by it), each voxel taking the largest ball that fits; SHARP one radius (5 mm).
    **Erosion:** the valid mask is the brain mask eroded by the smallest radius (the voxels
    whose ball sticks out of the mask are dropped and returned as 0): one voxel for V-SHARP
    at 1 mm, 5 mm for SHARP.
``resharp``
    Tikhonov-regularised SHARP (Sun & Wilman 2014): min_x ||M_r C (x - f)||^2 + reg ||x||^2,
    C = delta - S_r, by conjugate gradients preconditioned with (C^2 + reg)^-1 (exact for a
    mask covering the grid). Defaults r = 4 mm, reg = 1e-3. Valid mask: eroded by r.
``ismv``
    Iterative SMV (Wen et al. 2014): the background equals its own spherical mean inside the
    mask eroded by r and equals the total field on the rim outside it. The published fixed-point
    iteration b <- M_r S b + (1 - M_r) f is slow for low spatial frequencies; here the same fixed
    point is reached with preconditioned conjugate gradients on
    M_r (delta - S) M_r l = M_r (delta - S) f for the local field l. Default r = 5 mm. Valid
    mask: eroded by r.
``pdf`` (the default)
    Projection onto dipole fields (Liu et al. 2011): fit the field inside the mask with the
    dipole fields of sources outside it, min_x ||W M (D (1 - M) x - f)||^2, by CG on the normal
    equations with :class:`dlqsm.physics.dipole.DipoleOperator`; local = f - D (1 - M) x inside
    the mask. Sources may sit anywhere in the crop around the mask at least ``gap_mm`` (4 mm)
    from it (see below); the crop extends ``padding`` (8) voxels plus the gap past the mask's
    bounding box, past the field of view if need be, so sources
    just beyond the edge of the volume are modelled (with the brain cut by the field of view,
    8 voxels were as accurate as 16 or 24 and 0 clearly worse); the FFT's periodic wrap is harmless
    because sources and their periodic images all lie outside the mask, whose field they
    still fit with harmonic functions. CG stops at a relative normal-equation residual ``tol``
    (5e-4) or after ``max_iter`` (40) iterations; it semi-converges, more iterations do not
    help. On qsm-forward's 2 mm fine-grid head (2026-11-29) ``tol`` was *not* reached: the
    residual after 40 iterations was 3.4e-3 given the true total field and 8e-3 for the chain's
    field with its data weight (zero at the field-step check's voxels); 400 iterations reached
    1e-3 / 1.5e-3 and moved chi NRMSE after TV from 79.8 to 75.5 % and from 87.5 to 89.7 %:
    ``max_iter`` is the working stop and ``info["converged"]`` says so. The
    optional weight W (e.g. magnitude or 1 / noise std) is normalised to mean W^2 = 1 in the
    mask. **No erosion**: the whole brain mask stays valid (QSM-CI scores dropped voxels as 0).
    ``info["data_residual"]`` = ||W l|| / ||W f|| in the mask: the part of the field left as
    local field, small once a large background is removed (on the 3 mm qsm-forward head of
    tests/pipeline/test_large_background.py 0.062 unshimmed, where the true local field is
    0.066 of the total field's spread, and 0.118 shimmed; 0.25 / 0.39 after 2 iterations).

    *Source gap.* Dipoles right next to the mask can mimic much of the field that brain sources
    at the rim (cortical veins, the sagittal sinus) make inside it, so PDF with sources allowed
    everywhere outside the mask (``gap_mm=0``, the published form) removes part of the local
    field with the background: given the true *local* field of the simulated head alone, it
    removed ~58% of it (relative error). Real background sources (air, bone) lie a few mm
    beyond the brain surface, past CSF, so sources are kept ``gap_mm`` away from the mask
    (ball dilation). On the simulated head, chi NRMSE after TV inversion fell by 2.5-4 points
    with 4 mm (2 and 1.6 mm voxels, 2 seeds, axial and 20-degree B0; 1 mm: 63.2 -> 60.6%
    axial); 2-3 mm gaps helped less, 6-8 mm (which also exclude true background sources)
    less again. Weighting the rim down, a Tikhonov penalty on the sources or a shell-shaped
    source region did not help. On qsm-forward's 2 mm fine-grid head given its true total
    field, the gap did *not* help: 74.5 % (gap 0, 22 iterations) against 79.0 % (4 mm, 59
    iterations) at the same residual (2e-3); that head's shimmed and unshimmed true total
    fields gave 79.4 and 79.2 % (default PDF, then TV): no blow-up from the larger background
    at 2 mm. At 1 mm (the same head built at 0.5 mm, as issue 10's case;
    ``scripts/benchmark_large_background.py``, tests/pipeline/test_large_background.py) the
    unshimmed and shimmed true total fields gave 56.2 and 56.6 % (true local field -> TV:
    34.7 %; residual after 40 iterations 4.2e-3 / 1.0e-2, one torch thread; with two, float32
    rounding gave 5.3e-3 / 6.7e-3 and 56.7 / 57.2 %): issue 10's 220 % did not recur.
    There, 200 iterations (residual 8e-4 / 1.9e-3) gave 57.0 / 56.8 % and ``gap_mm=0`` 58.1 %
    (unshimmed): neither helps, so the defaults stay. ``--method tfi``
    (:mod:`dlqsm.pipeline.inversion.tfi`) needs no gap: it fits brain and background sources
    together.
``lbv``
    Laplacian boundary value (Zhou et al. 2014): the background is the solution of Laplace's
    equation (7-point stencil) inside the mask with the total field as Dirichlet data on the
    mask's one-voxel rim; solved by conjugate gradients preconditioned with the FFT inverse of
    the periodic Laplacian (~10-20 iterations). **Erosion:** the rim (voxels with a 6-neighbour
    outside the mask) carries the boundary values, so its local field is 0 and it is dropped.

``tfi``
    Background from a preconditioned total field inversion (after Liu et al., Magn Reson Med
    2017-2018): brain and background sources are fitted *together* to the field inside the
    mask, min_y ||W M (D P y - f)||^2 + lam ||E G (M y)||^2, chi = P y, with the
    preconditioner P = 1 in the brain and ``p_out`` (30) outside (background sources are
    large: a few ppm of air and bone against a few 0.01 ppm of brain; the scaling lets CG reach
    them in few iterations), G the forward differences and E keeping the differences between
    two brain voxels (brain sources are smooth, their jump to the outside is free). Sources
    fill the whole crop (``padding`` voxels past the mask's bounding box), no source gap:
    sources next to the mask can no longer absorb the rim of the local field, because brain
    sources compete with them at the same cost. CG on the normal equations stops on the
    relative residual ``tol`` (1e-4; 70-100 iterations on the test phantoms, whose background
    is ~27x the local field) or ``max_iter`` (300); both are reported. local = f - D(P y
    outside) inside the mask; **no erosion**. Dipole inversion of that local field is the next
    stage (e.g. TV): the joint fit uses a quadratic regulariser only to separate the two kinds
    of sources. On the test phantom it left 0.40-0.47 of the local RMS against PDF's 0.56.
    On qsm-forward heads at 1.5 mm (3 T, field-step check on, qsm-ci scorer) TV after it gave
    132 % NRMSE against 162 % after PDF on the voxel-sharp head but 77 % against 72 % on the
    fine-grid one, where the zero-weighted voxels kept CG from reaching ``tol`` in 300
    iterations (relative residual 5-7e-4); it is also 5-10x slower than PDF: not the default.

All methods run in float32 on the device of the input, on a crop of the volume to the mask's
bounding box plus a margin (the largest kernel radius, or PDF's ``padding``), rounded up to
FFT-friendly sizes; the crop is zero-filled where it extends past the volume, so a mask that
touches the volume edge is eroded there as if the volume continued with no brain. Nothing but
the background is subtracted; constants are harmonic, so the SHARP family and LBV assign a
constant offset to the background and PDF only part of it: referencing is the inversion's job.

PDF is the default. On the simulated 164x205x205 head (dlqsm.simulation.head, 1 mm, axial,
seeds 0 and 1), chi NRMSE over the whole brain mask (dropped voxels counted as 0) after TV
inversion was 0.60-0.61 with PDF (0.62-0.64 without the source gap; same with a 20-degree B0)
and 0.65-0.67 with LBV (0.38-0.39 from the true local field);
after TKD LBV was slightly ahead (0.64-0.66 against 0.67-0.68). PDF keeps every voxel; LBV is
about 2-3x faster. V-SHARP, RESHARP, SHARP and iSMV were clearly worse there (chi NRMSE
0.75-0.83 after TKD). ``scripts/benchmark_background.py`` measures time, memory and accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from dlqsm.errors import InputError
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.fft import fft_friendly, irfft3, rfft3
from dlqsm.physics.geometry import as_b0_dir, as_voxel_size
from dlqsm.physics.kernels import laplacian_kernel, smv_kernel, sphere_mask
from dlqsm.physics.operators import Gradient, laplacian_interior
from dlqsm.pipeline.solvers import cg

__all__ = [
    "BackgroundResult",
    "METHODS",
    "DEFAULT_METHOD",
    "method_defaults",
    "remove_background",
    "vsharp",
    "sharp",
    "resharp",
    "ismv",
    "pdf",
    "lbv",
    "tfi",
]

DEFAULT_METHOD = "pdf"


@dataclass
class BackgroundResult:
    """Output of background field removal.

    Attributes:
        local_field: (X, Y, Z) float32 local field in ppm, 0 outside ``mask``.
        mask: (X, Y, Z) bool, the voxels where ``local_field`` is valid (the brain mask, eroded
            by methods that need a rim, see the module docstring).
        info: ``method``, ``params`` (all parameters used), ``iterations``, ``converged``,
            ``eroded_voxels`` (brain-mask voxels dropped from the valid mask), ``residual``
            (final relative residual of iterative solvers, else None) and method extras.
    """

    local_field: torch.Tensor
    mask: torch.Tensor
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# helpers


class CropGrid:
    """Crop to the mask's bounding box plus ``margin`` voxels, with FFT-friendly sizes.

    Args:
        mask: (X, Y, Z) bool, not empty. margin: three non-negative ints (voxels per side).

    Parts of the crop outside the volume are zero-filled on :meth:`crop` (sources just past the
    field of view can live there) and dropped on :meth:`paste`. Used by the background methods
    and by total field inversion.
    """

    def __init__(self, mask: torch.Tensor, margin):
        self.volume_shape = tuple(mask.shape)
        starts, shape = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            idx = torch.nonzero(mask.any(dim=other)).flatten()
            lo, hi = int(idx[0]), int(idx[-1])
            n = hi - lo + 1 + 2 * int(margin[axis])
            m = fft_friendly(n)
            starts.append(lo - int(margin[axis]) - (m - n) // 2)
            shape.append(m)
        self.starts, self.shape = tuple(starts), tuple(shape)

    def _slices(self):
        src, dst = [], []
        for start, n, big in zip(self.starts, self.shape, self.volume_shape, strict=True):
            a, b = max(start, 0), min(start + n, big)
            src.append(slice(a, b))
            dst.append(slice(a - start, b - start))
        return tuple(src), tuple(dst)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=x.dtype, device=x.device)
        src, dst = self._slices()
        out[dst] = x[src]
        return out

    def paste(self, g: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.volume_shape, dtype=g.dtype, device=g.device)
        src, dst = self._slices()
        out[src] = g[dst]
        return out


def _cg(apply_a: Callable, rhs: torch.Tensor, *, tol: float, max_iter: int,
        precond: Callable | None = None, progress: bool = False, desc: str = "CG"):
    """:func:`dlqsm.pipeline.solvers.cg` -> (x, iterations, converged, relative residual)."""
    x, info = cg(apply_a, rhs, tol=tol, max_iter=max_iter, precond=precond, progress=progress,
                 desc=desc)
    return x, info["iterations"], info["converged"], info["relative_residual"]


def _ball_size(voxel_size, radius_mm: float) -> int:
    n = [2 * int(math.ceil(radius_mm / h)) + 1 for h in voxel_size]
    return int(sphere_mask(n, voxel_size, radius_mm).sum())


def _radius_voxels(voxel_size, radius_mm: float):
    return [int(math.ceil(radius_mm / h)) + 1 for h in voxel_size]


def _erode_smv(mask_spec: torch.Tensor, kernel: torch.Tensor, shape, count: int) -> torch.Tensor:
    """Voxels whose whole SMV ball lies inside the mask (``mask_spec`` = rfft of the mask)."""
    return irfft3(mask_spec * kernel, shape) > 1.0 - 0.5 / count


def _check_positive(name: str, value, *, integer: bool = False, upper: float | None = None):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    ok = ok and math.isfinite(value) and (not integer or float(value).is_integer())
    if not ok or (upper is not None and value >= upper):
        rng = f"in (0, {upper})" if upper is not None else "> 0"
        kind = "an integer" if integer else "a number"
        raise InputError(f"parameter {name!r} must be {kind} {rng}, got {value!r}.")


def _check_nonnegative_int(name: str, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"parameter {name!r} must be a non-negative integer, got {value!r}.")


def _empty_after_erosion(method: str, what: str):
    return InputError(f"{method}: the brain mask is empty after eroding it by {what}.",
                      fix="use a smaller radius, a larger mask, or method='pdf' (no erosion).")


def _info(method, params, mask, valid, iterations=0, converged=True, residual=None, **extra):
    info = {"method": method, "params": dict(params), "iterations": int(iterations),
            "converged": bool(converged), "residual": residual,
            "eroded_voxels": int(mask.sum()) - int(valid.sum())}
    info.update(extra)
    return info


# --------------------------------------------------------------------------------------------
# SHARP family


def _sharp_core(f, mask, vox, radii, threshold, method):
    """Shared V-SHARP / SHARP: multi-radius SMV high-pass, TSVD deconvolution (largest radius)."""
    grid = CropGrid(mask, _radius_voxels(vox, radii[0]))
    fg, mg = grid.crop(f), grid.crop(mask)
    mf = mg.to(f.dtype)
    f_spec, m_spec = rfft3(fg * mf), rfft3(mf)
    filtered = torch.zeros_like(fg)
    valid = torch.zeros_like(mg)
    kernel_max, used = None, []
    for r in radii:
        s = smv_kernel(grid.shape, vox, r, device=f.device)
        eroded = _erode_smv(m_spec, s, grid.shape, _ball_size(vox, r))
        if not bool(eroded.any()):
            continue
        new = eroded & ~valid
        filtered = torch.where(new, fg - irfft3(f_spec * s, grid.shape), filtered)
        valid |= eroded
        used.append(float(r))
        if kernel_max is None:
            kernel_max = s
    if kernel_max is None:
        raise _empty_after_erosion(method, f"the smallest radius ({min(radii)} mm)")
    h = 1.0 - kernel_max
    inv = torch.where(h.abs() > threshold, 1.0 / torch.where(h == 0, 1.0, h), 0.0)
    local = irfft3(rfft3(filtered) * inv, grid.shape) * valid
    return grid.paste(local), grid.paste(valid), used


_VSHARP_RADII_MM = (12.0, 10.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.0)


def _default_radii(vox) -> tuple[float, ...]:
    """12, 10, 8, 6, 4, 3, 2, 1 mm, keeping those above the largest voxel size, plus it."""
    h = float(max(vox))
    return tuple(sorted({r for r in _VSHARP_RADII_MM if r > h} | {h}, reverse=True))


def _vsharp(f, mask, vox, b0, weight, progress, *, radii=None, threshold=0.05):
    radii = _default_radii(vox) if radii is None else tuple(float(r) for r in radii)
    if not radii:
        raise InputError("vsharp: 'radii' is empty.", fix="give radii in mm, e.g. (8, 4, 2, 1).")
    for r in radii:
        _check_positive("radii", r)
    _check_positive("threshold", threshold, upper=1.0)
    radii = tuple(sorted(set(radii), reverse=True))
    local, valid, used = _sharp_core(f, mask, vox, radii, threshold, "vsharp")
    params = {"radii": radii, "threshold": threshold}
    return BackgroundResult(local, valid, _info("vsharp", params, mask, valid, radii_used=used))


def _sharp(f, mask, vox, b0, weight, progress, *, radius=5.0, threshold=0.05):
    _check_positive("radius", radius)
    _check_positive("threshold", threshold, upper=1.0)
    local, valid, _ = _sharp_core(f, mask, vox, (float(radius),), threshold, "sharp")
    params = {"radius": radius, "threshold": threshold}
    return BackgroundResult(local, valid, _info("sharp", params, mask, valid))


def _smv_setup(f, mask, vox, radius, method):
    grid = CropGrid(mask, _radius_voxels(vox, radius))
    fg, mg = grid.crop(f), grid.crop(mask)
    mf = mg.to(f.dtype)
    s = smv_kernel(grid.shape, vox, radius, device=f.device)
    valid = _erode_smv(rfft3(mf), s, grid.shape, _ball_size(vox, radius))
    if not bool(valid.any()):
        raise _empty_after_erosion(method, f"the radius ({radius} mm)")
    return grid, fg * mf, valid, 1.0 - s


def _resharp(f, mask, vox, b0, weight, progress, *, radius=4.0, reg=1e-3, tol=1e-3,
             max_iter=100):
    _check_positive("radius", radius)
    _check_positive("reg", reg)
    _check_positive("tol", tol, upper=1.0)
    _check_positive("max_iter", max_iter, integer=True)
    grid, fg, valid, c = _smv_setup(f, mask, vox, float(radius), "resharp")
    vf = valid.to(f.dtype)

    def conv(x):
        return irfft3(rfft3(x) * c, grid.shape)

    def normal(x):
        return conv(vf * conv(x)) + reg * x

    precond_k = 1.0 / (c * c + reg)
    x, it, conv_ok, res = _cg(normal, conv(vf * conv(fg)), tol=tol, max_iter=int(max_iter),
                              precond=lambda r: irfft3(rfft3(r) * precond_k, grid.shape),
                              progress=progress, desc="RESHARP")
    local, valid = grid.paste(x * vf), grid.paste(valid)
    params = {"radius": radius, "reg": reg, "tol": tol, "max_iter": max_iter}
    return BackgroundResult(local, valid, _info("resharp", params, mask, valid, it, conv_ok, res))


def _ismv(f, mask, vox, b0, weight, progress, *, radius=5.0, tol=1e-3, max_iter=100):
    _check_positive("radius", radius)
    _check_positive("tol", tol, upper=1.0)
    _check_positive("max_iter", max_iter, integer=True)
    grid, fg, valid, c = _smv_setup(f, mask, vox, float(radius), "ismv")
    vf = valid.to(f.dtype)
    c_inv = torch.where(c > 1e-3, 1.0 / c.clamp_min(1e-3), 1.0 / 1e-3)

    def apply_a(x):
        return vf * irfft3(rfft3(x) * c, grid.shape)

    def precond(r):
        return vf * irfft3(rfft3(r) * c_inv, grid.shape)

    x, it, ok, res = _cg(apply_a, apply_a(fg), tol=tol, max_iter=int(max_iter), precond=precond,
                         progress=progress, desc="iSMV")
    local, valid = grid.paste(x * vf), grid.paste(valid)
    params = {"radius": radius, "tol": tol, "max_iter": max_iter}
    return BackgroundResult(local, valid, _info("ismv", params, mask, valid, it, ok, res))


# --------------------------------------------------------------------------------------------
# PDF


def _source_region(mg: torch.Tensor, vox, gap_mm: float) -> torch.Tensor:
    """Voxels of the crop farther than ``gap_mm`` from the mask ``mg`` (all outside it if 0)."""
    if gap_mm <= 0:
        return ~mg
    s = smv_kernel(mg.shape, vox, gap_mm, device=mg.device)
    near = irfft3(rfft3(mg.to(s.dtype)) * s, mg.shape) > 0.5 / _ball_size(vox, gap_mm)
    return ~(near | mg)


def _pdf(f, mask, vox, b0, weight, progress, *, padding=8, gap_mm=4.0, tol=5e-4, max_iter=40):
    _check_nonnegative_int("padding", padding)
    if isinstance(gap_mm, bool) or not isinstance(gap_mm, (int, float)) or not gap_mm >= 0 \
            or not math.isfinite(gap_mm):
        raise InputError(f"parameter 'gap_mm' must be a number >= 0, got {gap_mm!r}.")
    _check_positive("tol", tol, upper=1.0)
    _check_positive("max_iter", max_iter, integer=True)
    margin = [int(padding) + int(math.ceil(gap_mm / h)) for h in vox]
    grid = CropGrid(mask, margin)
    mg = grid.crop(mask)
    mf = mg.to(f.dtype)
    fg = grid.crop(f) * mf
    w2 = mf if weight is None else (grid.crop(weight) * mf) ** 2
    w2 = w2 / w2[mg].mean()
    outside = _source_region(mg, vox, float(gap_mm)).to(f.dtype)
    dip = DipoleOperator(grid.shape, vox, b0, padding=0, device=f.device)

    def normal(x):
        return outside * dip.adjoint(w2 * dip.forward(outside * x))

    x, it, ok, res = _cg(normal, outside * dip.adjoint(w2 * fg), tol=tol, max_iter=int(max_iter),
                         progress=progress, desc="PDF")
    local_g = (fg - dip.forward(outside * x)) * mf
    fit = float(torch.sqrt((w2 * local_g**2).sum() / (w2 * fg**2).sum().clamp_min(1e-30)))
    local = grid.paste(local_g)
    params = {"padding": padding, "gap_mm": gap_mm, "tol": tol, "max_iter": max_iter}
    info = _info("pdf", params, mask, mask, it, ok, res, weighted=weight is not None,
                 data_residual=fit)
    return BackgroundResult(local, mask.clone(), info)


def _edge_weights(mg: torch.Tensor) -> torch.Tensor:
    """(3, X, Y, Z) 1 where a forward difference joins two mask voxels (periodic), else 0."""
    mf = mg.to(torch.float32)
    return torch.stack([mf * torch.roll(mf, -1, dim) for dim in range(3)])


def _tfi(f, mask, vox, b0, weight, progress, *, padding=8, lam=1e-2, p_out=30.0, tol=1e-4,
         max_iter=300):
    _check_nonnegative_int("padding", padding)
    _check_positive("lam", lam)
    _check_positive("p_out", p_out)
    _check_positive("tol", tol, upper=1.0)
    _check_positive("max_iter", max_iter, integer=True)
    grid = CropGrid(mask, [int(padding)] * 3)
    mg = grid.crop(mask)
    mf = mg.to(f.dtype)
    fg = grid.crop(f) * mf
    w2 = mf if weight is None else (grid.crop(weight) * mf) ** 2
    w2 = w2 / w2[mg].mean()
    precond = mf + float(p_out) * (1.0 - mf)
    edges = _edge_weights(mg).to(f.dtype)
    dip = DipoleOperator(grid.shape, vox, b0, padding=0, device=f.device)
    grad = Gradient(vox)

    def normal(y):
        x = precond * y
        data = precond * dip.adjoint(w2 * dip.forward(x))
        return data + lam * mf * grad.adjoint(edges * grad.forward(mf * y))

    y, it, ok, res = _cg(normal, precond * dip.adjoint(w2 * fg), tol=tol,
                         max_iter=int(max_iter), progress=progress, desc="TFI")
    outside = (1.0 - mf) * precond * y
    local = grid.paste((fg - dip.forward(outside)) * mf)
    params = {"padding": padding, "lam": lam, "p_out": p_out, "tol": tol, "max_iter": max_iter}
    info = _info("tfi", params, mask, mask, it, ok, res, weighted=weight is not None)
    return BackgroundResult(local, mask.clone(), info)


# --------------------------------------------------------------------------------------------
# LBV


def _laplacian(x: torch.Tensor, vox) -> torch.Tensor:
    """7-point Laplacian (1/mm^2) on the inner voxels of the crop; 0 on its outer faces."""
    out = torch.zeros_like(x)
    out[1:-1, 1:-1, 1:-1] = laplacian_interior(x, vox)
    return out


def _lbv(f, mask, vox, b0, weight, progress, *, tol=1e-3, max_iter=100):
    _check_positive("tol", tol, upper=1.0)
    _check_positive("max_iter", max_iter, integer=True)
    grid = CropGrid(mask, (2, 2, 2))
    mg = grid.crop(mask)
    mf = mg.to(f.dtype)
    fg = grid.crop(f) * mf
    interior = mf.clone()
    for dim in range(3):
        interior *= torch.roll(mf, 1, dim) * torch.roll(mf, -1, dim)
    if not bool(interior.any()):
        raise _empty_after_erosion("lbv", "one voxel")
    lap_k = laplacian_kernel(grid.shape, vox, device=f.device)
    lap_inv = torch.where(lap_k < 0, 1.0 / torch.where(lap_k < 0, lap_k, -1.0), 0.0)

    def apply_a(x):  # -P L P: symmetric positive definite on the interior
        return -interior * _laplacian(x, vox)

    def precond(r):
        return -interior * irfft3(rfft3(r) * lap_inv, grid.shape)

    # local l on the interior solves P L l = P L f (L b = 0 there, b = f on the rim)
    x, it, ok, res = _cg(apply_a, -interior * _laplacian(fg, vox), tol=tol, max_iter=int(max_iter),
                         precond=precond, progress=progress, desc="LBV")
    valid = interior.bool()
    local, valid = grid.paste(x * interior), grid.paste(valid)
    params = {"tol": tol, "max_iter": max_iter}
    return BackgroundResult(local, valid, _info("lbv", params, mask, valid, it, ok, res))


# --------------------------------------------------------------------------------------------
# public API

_IMPLS: dict[str, Callable] = {
    "vsharp": _vsharp,
    "sharp": _sharp,
    "resharp": _resharp,
    "ismv": _ismv,
    "pdf": _pdf,
    "lbv": _lbv,
    "tfi": _tfi,
}


def method_defaults(name: str) -> dict:
    """Default parameters of background removal method ``name`` (a fresh dict).

    ``vsharp``'s ``radii=None`` means (12, 10, 8, 6, 4, 3, 2, 1) mm, with radii not above the
    largest voxel size replaced by it (the smallest ball must reach the neighbours on every
    axis).
    """
    return dict(_impl(name).__kwdefaults__ or {})


def _impl(name: str) -> Callable:
    if name not in _IMPLS:
        raise InputError(f"unknown background removal method {name!r}.",
                         fix=f"use one of {', '.join(sorted(_IMPLS))}.")
    return _IMPLS[name]


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise InputError(f"the {what} is not an array ({type(x).__name__}).") from exc


def _validate(total_field, mask, weight):
    f = _as_tensor(total_field, "total field")
    m = _as_tensor(mask, "mask")
    if f.ndim != 3:
        raise InputError(f"the total field must be one 3D volume (X, Y, Z), got shape "
                         f"{tuple(f.shape)}.", fix="pass a single volume (combine echoes first).")
    if f.is_complex() or f.dtype == torch.bool:
        raise InputError(f"the total field must be real (ppm), got dtype {f.dtype}.")
    if tuple(m.shape) != tuple(f.shape):
        raise InputError(f"the mask shape {tuple(m.shape)} differs from the total field shape "
                         f"{tuple(f.shape)}.", fix="use the mask made on the same grid.")
    if m.device != f.device:
        raise InputError(f"the mask is on {m.device} but the total field on {f.device}.",
                         fix="move both to the same device.")
    m = m if m.dtype == torch.bool else m > 0.5
    if not bool(m.any()):
        raise InputError("the brain mask is empty.", fix="check the mask file or its threshold.")
    f = f.to(torch.float32)
    if not bool(torch.isfinite(f[m]).all()):
        raise InputError("the total field has NaN or infinite values inside the mask.",
                         fix="mask them out or repair the field map.")
    f = torch.where(m, f, torch.zeros((), dtype=f.dtype, device=f.device))
    if weight is not None:
        weight = _as_tensor(weight, "weight")
        if tuple(weight.shape) != tuple(f.shape) or weight.device != f.device:
            raise InputError(f"the weight must match the total field's shape and device, got "
                             f"{tuple(weight.shape)} on {weight.device}.")
        weight = weight.to(torch.float32)
        wm = weight[m]
        if not bool(torch.isfinite(wm).all()) or bool((wm < 0).any()) or not bool((wm > 0).any()):
            raise InputError("the weight must be finite, non-negative and not all zero in the "
                             "mask.", fix="use e.g. the magnitude or 1 / noise std.")
    return f, m, weight


def remove_background(total_field, mask, *, method: str = DEFAULT_METHOD,
                      voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), weight=None,
                      progress: bool = False, **params) -> BackgroundResult:
    """Remove the background field: total field -> local field inside a valid mask.

    Args:
        total_field: (X, Y, Z) total field in ppm (torch tensor on any device, or numpy array).
        mask: (X, Y, Z) brain mask (bool, or numbers > 0.5 meaning inside), same device.
        method: one of :data:`METHODS` (``vsharp``, ``sharp``, ``resharp``, ``ismv``, ``pdf``,
            ``lbv``, ``tfi``); default ``pdf`` (full-mask coverage).
        voxel_size: voxel size in mm, three numbers.
        b0_dir: unit B0 vector in voxel coordinates (used by ``pdf`` and ``tfi``).
        weight: optional (X, Y, Z) data weight for ``pdf`` and ``tfi`` (e.g. magnitude or
            1 / noise std, 0 for voxels to ignore; ignored by the other methods).
        progress: show a progress bar over solver iterations.
        **params: method parameters, see :func:`method_defaults`.

    Returns:
        :class:`BackgroundResult`: local field (ppm, float32, 0 outside its valid mask), the
        valid mask (bool) and an info dict.

    Raises:
        InputError: bad shapes, an empty mask (or one that erosion empties), non-finite values
            in the mask, an unknown method or unknown / invalid parameters.
    """
    impl = _impl(str(method).lower())
    unknown = sorted(set(params) - set(impl.__kwdefaults__ or {}))
    if unknown:
        raise InputError(f"unknown parameter(s) {unknown} for background method {method!r}.",
                         fix=f"valid ones: {sorted(impl.__kwdefaults__ or {})}.")
    f, m, w = _validate(total_field, mask, weight)
    vox = as_voxel_size(voxel_size)  # checked here unless validated already (a Scan's grid)
    b0 = as_b0_dir(b0_dir)
    return impl(f, m, vox, b0, w, progress, **params)


def _public(name: str) -> Callable:
    def run(total_field, mask, **kwargs) -> BackgroundResult:
        return remove_background(total_field, mask, method=name, **kwargs)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = (f"Background removal with method {name!r}: "
                   f"``remove_background(total_field, mask, method={name!r}, **kwargs)``.\n\n"
                   f"Defaults: {method_defaults(name)}. See :func:`remove_background`.")
    return run


vsharp = _public("vsharp")
sharp = _public("sharp")
resharp = _public("resharp")
ismv = _public("ismv")
pdf = _public("pdf")
lbv = _public("lbv")
tfi = _public("tfi")

METHODS: dict[str, Callable[..., BackgroundResult]] = {
    "vsharp": vsharp,
    "sharp": sharp,
    "resharp": resharp,
    "ismv": ismv,
    "pdf": pdf,
    "lbv": lbv,
    "tfi": tfi,
}
