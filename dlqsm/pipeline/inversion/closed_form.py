"""Closed-form inversions: TKD, truncated SVD and Tikhonov (one k-space division each).

Their data terms cover the whole grid unweighted, so a weight map is ignored with a warning.
"""

from __future__ import annotations

import time

import torch

from dlqsm.physics.dipole import tkd_filter
from dlqsm.physics.fft import irfft3, rfft3
from dlqsm.pipeline.inversion.problem import (
    InversionResult,
    Problem,
    finish,
    warn_ignored_weight,
)


def tkd(field, mask, *, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), weight=None,
        magnitude=None, padding=0, progress=False, threshold=0.19) -> InversionResult:
    """Truncated k-space division.

    chi = F^-1[F f / D] where |D| > threshold; below it 1/D is replaced by sign(D)/threshold
    (sign-preserving truncation, :func:`dlqsm.physics.dipole.tkd_filter`, shared with the
    networks' TKD initialisation; 0 where D = 0, so chi has zero mean). Values are not rescaled.

    Args:
        field: local field (ppm), (X, Y, Z). mask: brain mask, (X, Y, Z) (unused here).
        threshold: truncation level of |D| (0 < threshold <= 2/3).

    Returns:
        InversionResult with chi (ppm), (X, Y, Z).
    """
    t0 = time.perf_counter()
    warn_ignored_weight("tkd", weight)
    prob = Problem(field, mask, voxel_size=voxel_size, b0_dir=b0_dir, weight=None,
                   magnitude=None, padding=padding)
    chi = irfft3(rfft3(prob.f) * tkd_filter(prob.D, threshold), prob.shape)
    return finish(prob, chi, "tkd", {"threshold": threshold}, t0)


def tsvd(field, mask, *, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), weight=None,
         magnitude=None, padding=0, progress=False, threshold=0.1) -> InversionResult:
    """Truncated SVD: chi = F^-1[F f / D] where |D| >= threshold, and 0 elsewhere.

    The dipole convolution is diagonal in k-space, so its singular values are |D(k)|; the
    truncated components (the cone near the magic angle) are left at zero.
    """
    t0 = time.perf_counter()
    warn_ignored_weight("tsvd", weight)
    prob = Problem(field, mask, voxel_size=voxel_size, b0_dir=b0_dir, weight=None,
                   magnitude=None, padding=padding)
    d = prob.D
    keep = d.abs() >= threshold
    inv = torch.where(keep, 1 / torch.where(keep, d, 1.0), 0.0)
    chi = irfft3(rfft3(prob.f) * inv, prob.shape)
    return finish(prob, chi, "tsvd", {"threshold": threshold}, t0)


def tikhonov(field, mask, *, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), weight=None,
             magnitude=None, padding=0, progress=False, lam=0.01,
             regularizer="gradient") -> InversionResult:
    """Closed-form Tikhonov: argmin ||D chi - f||^2 + lam ||R chi||^2 over the whole grid.

    chi = F^-1[D F f / (D^2 + lam |R(k)|^2)], R = identity (|R|^2 = 1) or the periodic
    gradient (|R|^2 = sum |E_i|^2, 1/mm^2). The k = 0 component (undetermined) is set to 0.

    Args:
        lam: regularisation weight (dimensionless for identity, mm^2 for gradient).
        regularizer: "identity" or "gradient".
    """
    t0 = time.perf_counter()
    warn_ignored_weight("tikhonov", weight)
    prob = Problem(field, mask, voxel_size=voxel_size, b0_dir=b0_dir, weight=None,
                   magnitude=None, padding=padding)
    r2 = _regularizer_k(prob, regularizer)
    d = prob.D
    den = d.square() + lam * r2
    filt = torch.where(den > 0, d / torch.where(den > 0, den, 1.0), 0.0)
    chi = irfft3(rfft3(prob.f) * filt, prob.shape)
    params = {"lam": lam, "regularizer": regularizer}
    return finish(prob, chi, "tikhonov", params, t0)


def _regularizer_k(prob: Problem, regularizer: str) -> torch.Tensor:
    if regularizer == "identity":
        return torch.ones_like(prob.D)
    if regularizer == "gradient":
        return prob.e2()
    raise ValueError(f"regularizer must be 'identity' or 'gradient', got {regularizer!r}")
