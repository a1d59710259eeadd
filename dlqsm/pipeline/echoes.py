"""Field mapping over echoes: weighted least-squares fit of the phase evolution, an optional
nonlinear complex refinement, and a noise map usable as an inversion weight.

Model (monopolar multi-echo GRE): ``phase_n = phi0 + 2 pi f TE_n`` in every voxel, with f the
frequency offset (Hz) and phi0 the phase at TE = 0 (rad, transmit/receive phase). The total
field is ``field_ppm = f / (gamma B0) * 1e6`` (:func:`dlqsm.physics.units.hz_to_ppm`).

Shapes and units: phase and magnitude (E, X, Y, Z) in rad and any positive scale; ``te`` (E,)
in s; ``b0`` in T; masks bool (X, Y, Z). Results are (X, Y, Z), zero outside the mask.

Weights and noise. The phase noise of echo n has std ``sigma / |S_n|`` for complex noise of std
``sigma`` per channel, so the fit weights are ``|S_n|^2`` (magnitude^2, i.e. SNR^2). The field
std follows from the weighted normal equations: var(f) = sigma^2 * sum(w) / det / (2 pi)^2,
det = sum(w) sum(w TE^2) - sum(w TE)^2. ``sigma`` is the given ``noise_std`` or, with more
echoes than unknowns, estimated from the pooled weighted residual over the mask (its median,
scaled by the median of the chi-square distribution, so unwrapping errors do not inflate it).
Without either (one or two echoes with an offset), sigma = 1: the noise map is then relative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.stats import chi2

from dlqsm.errors import InputError
from dlqsm.physics.units import hz_to_ppm, wrap_phase

__all__ = ["EchoFit", "data_weight", "fit_echoes"]

TWO_PI = 2 * math.pi


@dataclass
class EchoFit:
    """Result of :func:`fit_echoes`; every map (X, Y, Z), zero outside the mask.

    Attributes:
        field_ppm: total field (ppm of B0).
        phase_offset: phase at TE = 0, phi0 (rad; unwrapped consistently with the input phase,
            zero when the offset is not fitted).
        noise_ppm: standard deviation of the field estimate (ppm); relative when
            ``noise_std`` is nan.
        residual: magnitude^2-weighted RMS phase residual of the fit (rad).
        noise_std: complex noise std used (magnitude units), nan when unknown (relative map).
    """

    field_ppm: torch.Tensor
    phase_offset: torch.Tensor
    noise_ppm: torch.Tensor
    residual: torch.Tensor
    noise_std: float


def _weighted_line(y, w, t, fit_offset: bool):
    """Per-voxel WLS of y (E, ...) on [1, t] (or t alone): returns (offset, slope, var_slope)
    with var_slope the slope's variance for unit-variance-weighted data."""
    t = t.view(-1, *([1] * (y.dim() - 1)))
    s, st, stt = w.sum(0), (w * t).sum(0), (w * t * t).sum(0)
    sy, sty = (w * y).sum(0), (w * t * y).sum(0)
    if not fit_offset:
        stt = stt.clamp_min(1e-30)
        return torch.zeros_like(sy), sty / stt, 1 / stt
    det = (s * stt - st * st).clamp_min(1e-30)
    return (stt * sy - st * sty) / det, (s * sty - st * sy) / det, s / det


def _check(phase, te, magnitude, mask):
    if phase.dim() == 3:
        phase = phase[None]
        magnitude = magnitude[None] if magnitude is not None else None
    if phase.dim() != 4:
        raise InputError(f"phase must be (E, X, Y, Z), got {tuple(phase.shape)}.")
    te = torch.as_tensor(te, dtype=torch.float64).flatten()
    if te.numel() != phase.shape[0] or not bool(torch.all(te > 0)):
        raise InputError(f"need one positive TE (s) per echo, got {te.tolist()} for "
                         f"{phase.shape[0]} echoes.")
    if magnitude is not None and tuple(magnitude.shape) != tuple(phase.shape):
        raise InputError(f"magnitude {tuple(magnitude.shape)} and phase {tuple(phase.shape)} "
                         "differ in shape.")
    if mask is not None and not bool(mask.any()):
        raise InputError("the echo-fit mask is empty.", fix="give a non-empty mask.")
    return phase, te, magnitude


def _pooled_sigma(chi, dof: int) -> float:
    """Noise std from per-voxel weighted residual sums ``chi`` (N,), chi-square with ``dof``."""
    med = float(chi[:: max(1, chi.numel() // 1_000_000)].median())
    return math.sqrt(max(med, 0.0) / chi2.ppf(0.5, dof))


def fit_echoes(phase: torch.Tensor, te, b0: float, magnitude: torch.Tensor | None = None,
               mask: torch.Tensor | None = None, *, fit_offset: bool = True,
               noise_std: float | None = None, nonlinear: bool = False,
               iterations: int = 20, tol: float = 1e-5) -> EchoFit:
    """Fit the total field over echoes.

    Args:
        phase: (E, X, Y, Z) phase in rad, unwrapped consistently over echoes (e.g. by
            :func:`dlqsm.pipeline.unwrap.unwrap_multi_echo`), or (X, Y, Z) for one echo.
            With ``nonlinear=True`` wrapped phase also works when the linear fit of it is a
            good enough start (the refinement sees only the complex signal).
        te: (E,) echo times in s. b0: field strength in T.
        magnitude: (E, X, Y, Z), weights |S_n|^2; uniform weights when None.
        mask: bool (X, Y, Z); results are zero outside.
        fit_offset: fit phi0 (needs two echoes). Off: the phase is assumed zero at TE = 0
            (e.g. after ASPIRE / MCPC-3D-S coil combination).
        noise_std: complex noise std (magnitude units), when known.
        nonlinear: refine by Gauss-Newton on the complex signal
            ``S_n = |S_n| exp(i (phi0 + 2 pi f TE_n))`` (Liu et al. 2013), starting from the
            linear fit. Each step solves the same weighted line fit for ``sin(wrap(phase -
            model))``, so it is insensitive to 2 pi errors.
        iterations, tol: Gauss-Newton limits (tol on the largest phase update in rad).

    Single echo: ``field = phase / (2 pi gamma B0 TE)``, no offset (a transmit/receive phase
    then ends up in the field: remove it beforehand, e.g. by coil combination).

    Returns:
        :class:`EchoFit`.
    """
    phase, te, magnitude = _check(phase, te, magnitude, mask)
    E = phase.shape[0]
    fit_offset = fit_offset and E >= 2
    sel = mask.bool() if mask is not None else torch.ones(phase.shape[1:], dtype=torch.bool,
                                                           device=phase.device)
    y = phase[:, sel].float()  # (E, N): only the voxels that matter
    w = magnitude[:, sel].float() ** 2 if magnitude is not None else torch.ones_like(y)
    t = (te / te.max()).to(device=phase.device, dtype=torch.float32)  # O(1) for float32
    tt = t.view(-1, 1)
    phi0, slope, var = _weighted_line(y, w, t, fit_offset)
    if nonlinear:
        phi0, slope = _gauss_newton(y, w, t, phi0, slope, fit_offset, iterations, tol)
        r = wrap_phase(y - phi0 - slope * tt)
    else:
        r = y - phi0 - slope * tt
    chi = (w * r * r).sum(0)
    residual = torch.sqrt(chi / w.sum(0).clamp_min(1e-30))
    dof = E - (2 if fit_offset else 1)
    sigma = noise_std if noise_std is not None else (
        _pooled_sigma(chi, dof) if dof > 0 else float("nan"))
    scale = 1.0 if math.isnan(sigma) else sigma
    tmax = float(te.max())
    field = hz_to_ppm(slope / (TWO_PI * tmax), b0)
    noise = hz_to_ppm(scale * torch.sqrt(var) / (TWO_PI * tmax), b0)
    maps = []
    for v in (field, phi0, noise, residual):
        out = torch.zeros(phase.shape[1:], dtype=torch.float32, device=phase.device)
        out[sel] = v
        maps.append(out)
    return EchoFit(*maps, noise_std=float(sigma))


def _gauss_newton(y, w, t, phi0, slope, fit_offset, iterations, tol):
    """Gauss-Newton on sum_n w_n |exp(i y_n) - exp(i (phi0 + slope t_n))|^2 for y, w (E, N).

    Each step is the weighted line fit of sin(y - model); voxels whose update falls below
    ``tol`` (rad) stop iterating."""
    phi0, slope = phi0.clone(), slope.clone()
    tt = t.view(-1, 1)
    idx = torch.arange(y.shape[1], device=y.device)
    for _ in range(iterations):
        delta = torch.sin(y[:, idx] - phi0[idx] - slope[idx] * tt)
        d0, d1, _ = _weighted_line(delta, w[:, idx], t, fit_offset)
        phi0[idx] += d0
        slope[idx] += d1
        idx = idx[(d0.abs() + d1.abs()) >= tol]
        if idx.numel() == 0:
            break
    return phi0, slope


def data_weight(noise_ppm: torch.Tensor, mask: torch.Tensor | None = None, *,
                power: int = 1, floor: float = 0.01) -> torch.Tensor:
    """Inversion data weight from a field noise map (X, Y, Z, ppm).

    ``1 / noise**power`` (power 1: inverse std, the usual MEDI-style weight; 2: inverse
    variance), normalised to mean 1 inside the mask, zero outside. Noise below ``floor`` times
    the masked median is raised to it (no infinite weights); an all-zero noise map (noiseless
    data) gives uniform weights.
    """
    m = mask.bool() if mask is not None else torch.ones_like(noise_ppm, dtype=torch.bool)
    if not bool(m.any()):
        raise InputError("the data-weight mask is empty.", fix="give a non-empty mask.")
    vals = noise_ppm[m].float()
    med = float(vals.median())
    if not math.isfinite(med) or med <= 0:
        return m.float()
    n = noise_ppm.float().clamp_min(floor * med)
    n = torch.where(torch.isfinite(n), n, torch.full_like(n, float("inf")))
    wgt = torch.where(m, n.pow(-power), torch.zeros_like(n))
    return wgt / wgt[m].mean()
