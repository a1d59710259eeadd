"""Multi-echo gradient-echo signal model: magnitude decay, phase, noise, wrapping, coils.

For echo n at echo time TE_n (s), field strength B0 (T), field f (ppm):

    S_n = M0 exp(-R2* TE_n) exp(i (phi0 + ppm_to_phase(f, TE_n, B0))) + noise

with a smooth phase offset phi0 (rad), complex Gaussian noise of standard deviation
``sigma = mean(M0 in the signal mask) / SNR`` per real/imaginary part, and phase = angle(S_n)
wrapped to [-pi, pi). With coils, S_{c,n} = s_c exp(i theta_c) S_n + noise_c with smooth
complex sensitivities s_c and constant coil phase offsets theta_c.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dlqsm.physics.units import ppm_to_phase, wrap_phase
from dlqsm.simulation.rng import rand, randn, uniform_scalar
from dlqsm.simulation.textures import grid_coords, random_polynomial_field, smooth_noise


def echo_times(generator, n_echoes: int, *, first_te=(0.003, 0.006),
               delta_te=(0.003, 0.008)) -> torch.Tensor:
    """Equally spaced echo times (s): TE_1 drawn in ``first_te``, spacing in ``delta_te``.

    Either may be a number (fixed) or a (low, high) range. Returns (E,) float32.
    """
    te1 = uniform_scalar(generator, first_te)
    dte = uniform_scalar(generator, delta_te)
    return te1 + dte * torch.arange(int(n_echoes), dtype=torch.float32)


def random_phase_offset(shape: Sequence[int], voxel_size, generator, *,
                        amplitude: float = math.pi, device=None) -> torch.Tensor:
    """Smooth random phase offset phi0 (rad), (X, Y, Z): constant + linear + second-order
    terms (coefficients within +-amplitude) plus a smooth random field of std amplitude/4."""
    poly = random_polynomial_field(shape, voxel_size, amplitude, generator, order=2,
                                   device=device)
    fov = max(n * float(h) for n, h in zip(shape, voxel_size, strict=True))
    return poly + amplitude / 4 * smooth_noise(shape, voxel_size, fov / 3, generator,
                                               device=device)


def random_m0_r2star(shape: Sequence[int], voxel_size, generator, *, chi=None,
                     b0_tesla: float = 3.0, device=None):
    """Smooth random proton density M0 in [0.5, 1] and R2* (1/s) for non-anatomical phantoms.

    R2* = (10..30 s^-1 smooth baseline + 100 s^-1/ppm |chi|) * B0 / 3 T (iron-rich sources
    decay faster; R2* grows about linearly with field strength).
    """
    m0 = 0.75 + 0.125 * smooth_noise(shape, voxel_size, 20.0, generator, device=device)
    base = 20.0 + 5.0 * smooth_noise(shape, voxel_size, 15.0, generator, device=device)
    r2 = base.clamp(5.0, 40.0)
    if chi is not None:
        r2 = r2 + 100.0 * chi.abs()
    return m0.clamp(0.5, 1.0), r2 * (b0_tesla / 3.0)


@dataclass
class GreSignal:
    """Simulated multi-echo GRE data.

    Attributes:
        magnitude: (E, X, Y, Z) float32 (or (C, E, X, Y, Z) per coil).
        phase: same shape, wrapped phase in rad.
        te: (E,) s. b0_tesla: T. phi0: (X, Y, Z) rad. noise_std: per real/imag part.
        sensitivities: (C, X, Y, Z) complex64 coil maps (None without coils).
        combined_magnitude / combined_phase: (E, X, Y, Z) single-channel signal (the
            coil-free model, with its own noise) also given with coils.
    """

    magnitude: torch.Tensor
    phase: torch.Tensor
    te: torch.Tensor
    b0_tesla: float
    phi0: torch.Tensor
    noise_std: float
    sensitivities: torch.Tensor | None = None
    combined_magnitude: torch.Tensor | None = None
    combined_phase: torch.Tensor | None = None

    @property
    def complex(self) -> torch.Tensor:
        """magnitude * exp(i phase), complex64."""
        return torch.polar(self.magnitude, self.phase)


def noiseless_signal(field_ppm: torch.Tensor, te: torch.Tensor, b0_tesla: float,
                     m0: torch.Tensor, r2star: torch.Tensor, phi0: torch.Tensor) -> torch.Tensor:
    """Noise-free complex signal (E, X, Y, Z) complex64 from (X, Y, Z) maps and (E,) TEs."""
    te = te.to(field_ppm.device).view(-1, 1, 1, 1)
    mag = m0 * torch.exp(-r2star * te)
    phase = phi0 + ppm_to_phase(field_ppm, te, b0_tesla)
    return torch.polar(mag.to(torch.float32), phase.to(torch.float32))


def complex_noise(generator, shape, std: float, device) -> torch.Tensor:
    """Complex Gaussian noise with standard deviation ``std`` per real/imaginary part."""
    if std <= 0:
        return torch.zeros(shape, dtype=torch.complex64, device=device)
    n = randn(generator, 2, *shape, device=device) * std
    return torch.complex(n[0], n[1])


def multi_echo_signal(field_ppm: torch.Tensor, te: torch.Tensor, b0_tesla: float, *,
                      m0: torch.Tensor, r2star: torch.Tensor, phi0: torch.Tensor | None = None,
                      snr: float | None = None, signal_mask: torch.Tensor | None = None,
                      generator=None, n_coils: int = 0, voxel_size=(1.0, 1.0, 1.0)) -> GreSignal:
    """Simulate multi-echo GRE magnitude and wrapped phase.

    Args:
        field_ppm: (X, Y, Z) total field in ppm (the field the scanner sees).
        te: (E,) echo times in s. b0_tesla: field strength in T.
        m0, r2star: (X, Y, Z) proton density (a.u.) and R2* (1/s); zero M0 gives no signal.
        phi0: (X, Y, Z) phase offset in rad (default 0).
        snr: mean M0 inside ``signal_mask`` divided by the noise std; None or inf: no noise.
        n_coils: 0 for single-channel data; C > 0 adds (C, E, X, Y, Z) coil data with smooth
            sensitivities and coil phase offsets (``combined_*`` keep the single channel).
        voxel_size: mm, for the coil sensitivity geometry.

    Returns:
        :class:`GreSignal` with phase in [-pi, pi]; phase_n = wrap(phi0 + 2 pi gamma B0 f TE_n
        1e-6) exactly when ``snr`` is None.
    """
    dev = field_ppm.device
    shape = tuple(field_ppm.shape)
    if phi0 is None:
        phi0 = torch.zeros(shape, device=dev)
    te = te.to(device=dev, dtype=torch.float32)
    tev = te.view(-1, 1, 1, 1)
    mag = m0 * torch.exp(-r2star * tev)
    phase = phi0 + ppm_to_phase(field_ppm, tev, b0_tesla)
    ref = m0[signal_mask.bool()] if signal_mask is not None else m0[m0 > 0]
    level = float(ref.mean()) if ref.numel() else 1.0
    std = 0.0 if snr is None or not math.isfinite(float(snr)) else level / float(snr)
    if std > 0:
        noise = randn(generator, 2, *mag.shape, device=dev) * std
        re = torch.addcmul(noise[0], mag, torch.cos(phase))
        im = torch.addcmul(noise[1], mag, torch.sin(phase))
        out_mag, out_phase = torch.hypot(re, im), torch.atan2(im, re)
    else:
        out_mag, out_phase = mag, wrap_phase(phase)
    out = GreSignal(magnitude=out_mag, phase=out_phase, te=te.clone(), b0_tesla=float(b0_tesla),
                    phi0=phi0, noise_std=std)
    if n_coils > 0:
        clean = torch.polar(mag, phase)
        sens = coil_sensitivities(n_coils, shape, voxel_size, generator, device=dev)
        coils = sens.unsqueeze(1) * clean.unsqueeze(0)
        coils = coils + complex_noise(generator, coils.shape, std, dev)
        out.combined_magnitude, out.combined_phase = out.magnitude, out.phase
        out.magnitude, out.phase = coils.abs(), torch.angle(coils)
        out.sensitivities = sens
    return out


def coil_sensitivities(n_coils: int, shape: Sequence[int], voxel_size, generator, *,
                       device=None) -> torch.Tensor:
    """Smooth complex coil sensitivities (C, X, Y, Z) complex64.

    Coils sit on two rings around the z axis (radius 0.6 x the field of view); magnitudes fall
    off like a small loop's field, (1 + d^2 / R^2)^(-3/2), and are normalised so that the
    root-sum-of-squares is 1 on average; phases are a smooth field plus a constant coil
    offset uniform in [-pi, pi).
    """
    x, y, z = grid_coords(shape, voxel_size, device=device)
    fov = torch.tensor([n * float(h) for n, h in zip(shape, voxel_size, strict=True)])
    radius = 0.6 * float(fov[:2].max())
    maps = []
    for c in range(n_coils):
        ang = 2 * math.pi * (c + float(rand(generator, 1)[0]) * 0.3) / n_coils
        zc = (0.25 if c % 2 else -0.25) * float(fov[2]) if n_coils > 2 else 0.0
        px, py = radius * math.cos(ang), radius * math.sin(ang)
        d2 = (x - px) ** 2 + (y - py) ** 2 + (z - zc) ** 2
        mag = (1 + d2 / radius ** 2) ** -1.5
        ph = 0.5 * smooth_noise(shape, voxel_size, float(fov.max()) / 2, generator,
                                device=device)
        offset = (2 * float(rand(generator, 1)[0]) - 1) * math.pi
        maps.append(torch.polar(mag.expand(*shape).contiguous(), ph + offset))
    sens = torch.stack(maps)
    rss = torch.sqrt((sens.abs() ** 2).sum(0))
    return (sens / rss.mean()).to(torch.complex64)
