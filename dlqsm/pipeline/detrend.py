"""Susceptibility trends that background field removal cannot see, and their removal.

The field of a susceptibility distribution obeys, in k-space, k^2 B = (k^2 / 3 - k_b^2) chi
(k_b: the component along B0), i.e. Lap B = Lap chi / 3 - d^2 chi / db^2. For the eight trends

* linear:    x, y, z
* quadratic: p^T A p with b^T A b = tr(A) / 3 (b: the unit B0 vector; a 5-dimensional family,
  e.g. with b = z: x^2 - y^2, xy, xz, yz and x^2 + y^2 + z^2)

the right-hand side vanishes, so inside the brain their fields are harmonic: exactly what every
background removal method (PDF, SHARP, LBV, ...) takes out as "background". The part of the
true local field that is such a harmonic field is removed with the background, and the
inversion then returns the susceptibility map with one of these trends added. On qsm-forward's
1 mm heads such a trend held about 40 % of the error energy of the default chain (PDF + TV):
the true local field run through PDF alone gives 55 % NRMSE, the true local field itself 35 %
(docs/benchmarks/independent.md, "Susceptibility trends background removal cannot see").

:func:`remove_background_modes` fits the eight trends to a susceptibility map by least absolute
gradient (the trend that leaves the map with the least total variation: a smooth ramp adds
gradient everywhere, tissue boundaries are sparse), by iteratively reweighted least squares
with a Huber threshold of ``scale`` times the median gradient residual, and subtracts it. The
coefficients are those of polynomials in the voxel's position (mm) from the mask's centroid
divided by the mask's largest radius; ``info`` records them and the trend's size in ppm.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dlqsm.errors import InputError
from dlqsm.physics.geometry import as_b0_dir, as_voxel_size

MODE_NAMES = ("x", "y", "z", "q1", "q2", "q3", "q4", "q5")
"""The eight trends: the three linear ones (voxel axes), then an orthonormal basis of the
five quadratic forms p^T A p with b^T A b = tr(A) / 3 (see :func:`invisible_quadratics`)."""
DEFAULT_SCALE = 0.25
"""Huber threshold of the fit, in multiples of the median gradient residual (0.25 and 0.5 within
0.8 NRMSE points of each other on each of four qsm-forward and own heads, summed 241.4 / 242.0;
1 and above approach least squares, which tissue boundaries pull off: 247.8-267.4;
docs/benchmarks/independent.md)."""
MAX_VOXELS = 300_000
"""Voxels used for the fit at most (an even stride over the mask beyond that): the trend is
smooth (on two 1 mm heads 250 000 of 1.47 million voxels gave the same NRMSE within 0.1
points), and the fit's time and memory (about 400 bytes per voxel) grow with them."""


def invisible_quadratics(b0_dir) -> torch.Tensor:
    """(5, 3, 3) float64: an orthonormal basis (Frobenius) of the symmetric A with
    b^T A b = tr(A) / 3, whose quadratic forms p^T A p have harmonic fields (module docstring)."""
    b = torch.as_tensor(np.asarray(as_b0_dir(b0_dir), dtype=np.float64))
    normal = torch.outer(b, b) - torch.eye(3, dtype=torch.float64) / 3
    sym = []
    for i in range(3):
        for j in range(i, 3):
            e = torch.zeros(3, 3, dtype=torch.float64)
            e[i, j] = e[j, i] = 1.0
            sym.append(e)
    sym = torch.stack(sym)  # (6, 3, 3)
    n = normal / torch.linalg.norm(normal)
    proj = sym - (sym * n).sum((1, 2))[:, None, None] * n  # onto the constraint plane
    u, s, _ = torch.linalg.svd(proj.reshape(6, 9).T, full_matrices=False)
    return u[:, :5].T.reshape(5, 3, 3)  # s[5] is 0: the plane is 5-dimensional


def mode_values(points: torch.Tensor, quads: torch.Tensor) -> torch.Tensor:
    """(N, 3) scaled positions -> (N, 8) values of the eight trends (float64)."""
    p = points.to(torch.float64)
    quad = torch.einsum("ni,kij,nj->nk", p, quads, p)
    return torch.cat([p, quad], dim=1)


def _frame(mask: torch.Tensor, vox) -> tuple[torch.Tensor, float]:
    """Centroid (mm) and largest radius (mm) of the mask."""
    idx = torch.nonzero(mask).to(torch.float64) * torch.tensor(vox, dtype=torch.float64,
                                                              device=mask.device)
    centre = idx.mean(0)
    radius = float(torch.linalg.vector_norm(idx - centre, dim=1).max())
    return centre, max(radius, min(vox))


def _check(chi: torch.Tensor, mask: torch.Tensor) -> None:
    if chi.dim() != 3 or tuple(chi.shape) != tuple(mask.shape):
        raise InputError(f"susceptibility map {tuple(chi.shape)} and mask {tuple(mask.shape)} "
                         "must be 3D volumes on one grid.")
    if not bool(torch.isfinite(chi[mask]).all()):
        raise InputError("the susceptibility map has NaN/inf values inside the mask.",
                         fix="set them to 0 or leave them out of the mask.")


def remove_background_modes(chi, mask, *, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                            scale: float = DEFAULT_SCALE, max_iter: int = 50,
                            tol: float = 1e-4) -> tuple[torch.Tensor, dict]:
    """Subtract from ``chi`` the trends background removal cannot see (module docstring).

    Returns (chi minus :func:`fit_background_modes`' trend, referenced to its mean inside the
    mask and 0 outside; the fit's info). Arguments and errors as there.
    """
    trend, info = fit_background_modes(chi, mask, voxel_size=voxel_size, b0_dir=b0_dir,
                                       scale=scale, max_iter=max_iter, tol=tol)
    return subtract_trend(chi, trend, mask), info


def subtract_trend(chi: torch.Tensor, trend: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``chi - trend`` referenced to its mean inside ``mask``, 0 outside."""
    mask = mask.bool()
    out = torch.zeros_like(chi)
    vals = chi[mask] - trend[mask].to(chi.dtype)
    out[mask] = vals - vals.mean()
    return out


def fit_background_modes(chi, mask, *, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                         scale: float = DEFAULT_SCALE, max_iter: int = 50,
                         tol: float = 1e-4) -> tuple[torch.Tensor, dict]:
    """Fit the eight trends background removal cannot see to ``chi`` (module docstring).

    Args:
        chi: (X, Y, Z) susceptibility (ppm). mask: (X, Y, Z) bool, where chi is defined.
        voxel_size: mm. b0_dir: unit B0 vector in voxel coordinates.
        scale: Huber threshold in multiples of the median gradient residual (> 0).
        max_iter, tol: IRLS iterations; stop when the coefficients change by less than
            ``tol`` of their size.

    Returns:
        (the trend: (X, Y, Z) ppm, mean 0 inside the mask and 0 outside, in ``chi``'s dtype;
        info: ``coefficients_ppm`` by :data:`MODE_NAMES`, ``trend_rms_ppm``,
        ``trend_range_ppm``, ``radius_mm``, ``voxels``, ``iterations``, ``converged``,
        ``scale``, ``time_s``).

    Raises:
        InputError: mismatched shapes, non-finite values in the mask, a mask with no voxel
            whose three forward neighbours are in it, or a bad ``scale``.
    """
    t0 = time.perf_counter()
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise InputError(f"the trend fit's scale must be a number > 0, got {scale!r}.")
    vox = tuple(float(v) for v in as_voxel_size(voxel_size))
    mask = mask.bool()
    _check(chi, mask)
    dev = chi.device
    inner = mask.clone()  # voxels whose +x, +y, +z neighbours are in the mask
    for axis in range(3):
        nb = torch.zeros_like(mask)
        nb.narrow(axis, 0, mask.shape[axis] - 1).copy_(mask.narrow(axis, 1, mask.shape[axis] - 1))
        inner &= nb
    idx = torch.nonzero(inner)
    if idx.shape[0] < len(MODE_NAMES):
        raise InputError("the mask is too thin to fit susceptibility trends (fewer than 8 "
                         "voxels with their three forward neighbours inside it).",
                         fix="give a brain mask, or turn the trend removal off (--detrend off).")
    if idx.shape[0] > MAX_VOXELS:
        idx = idx[:: -(-idx.shape[0] // MAX_VOXELS)]
    centre, radius = _frame(mask, vox)
    quads = invisible_quadratics(b0_dir).to(dev)
    h = torch.tensor(vox, dtype=torch.float64, device=dev)

    def at(ii):
        return mode_values((ii.to(torch.float64) * h - centre) / radius, quads)

    base = at(idx)
    here = chi[tuple(idx.T)].to(torch.float64)  # gathered once, not a float64 volume copy
    rows, grads = [], []
    for axis in range(3):
        step = idx.clone()
        step[:, axis] += 1
        rows.append((at(step) - base) / h[axis])
        grads.append((chi[tuple(step.T)].to(torch.float64) - here) / h[axis])
    a = torch.stack(rows, 1)  # (N, 3, 8): the trends' forward differences
    g = torch.stack(grads, 1)  # (N, 3): the map's
    del rows, grads, base, here
    flat = a.reshape(-1, a.shape[-1])
    q = torch.zeros(a.shape[-1], dtype=torch.float64, device=dev)
    converged, iterations = False, 0
    while iterations < int(max_iter) and not converged:
        iterations += 1
        r = torch.linalg.vector_norm(g - a @ q, dim=1)
        eps = max(float(scale) * float(r.median()), 1e-12)
        w = 1.0 / r.clamp_min(eps)
        wa = (a * w[:, None, None]).reshape(-1, a.shape[-1])
        # pinv: on a thin slab some trends look alike inside it (their values there, which
        # are all that is subtracted, stay well determined)
        q_new = torch.linalg.pinv(wa.T @ flat, rtol=1e-10) @ (wa.T @ g.reshape(-1))
        change = float(torch.linalg.vector_norm(q_new - q))
        q = q_new
        converged = change <= tol * max(float(torch.linalg.vector_norm(q)), 1e-12)
    trend_m = at(torch.nonzero(mask)) @ q
    trend_m = trend_m - trend_m.mean()
    trend = torch.zeros_like(chi)
    trend[mask] = trend_m.to(chi.dtype)
    info = {"modes": list(MODE_NAMES),
            "coefficients_ppm": [float(v) for v in q.cpu()],
            "trend_rms_ppm": float(trend_m.square().mean().sqrt()),
            "trend_range_ppm": float(trend_m.max() - trend_m.min()),
            "radius_mm": radius, "voxels": int(idx.shape[0]), "iterations": iterations,
            "converged": converged, "scale": float(scale),
            "time_s": time.perf_counter() - t0}
    return trend, info
