"""Simulated head scans: a head phantom with its fields and multi-echo GRE data.

:func:`simulate_head_case` draws a phantom (:func:`dlqsm.simulation.phantom.head_phantom`,
anatomy and values in :mod:`dlqsm.simulation.anatomy`), gives its edges partial volumes
(:func:`partial_volume`), computes the local, background and total fields and, optionally, the
multi-echo magnitude and wrapped phase (:mod:`dlqsm.simulation.signal`).

The anatomy tables and the phantom generator used to live here; their names stay importable
from this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dlqsm.simulation.anatomy import *  # noqa: F403  (re-exported: former home of the tables)
from dlqsm.simulation.anatomy import AIR_PPM, INTRACRANIAL_LABELS, tissue_parameters
from dlqsm.simulation.phantom import HeadPhantom, fit_scale, head_phantom  # noqa: F401
from dlqsm.simulation.rng import make_generator


@dataclass
class HeadCase:
    """A simulated head acquisition (all volumes (X, Y, Z) unless stated, on one device).

    Attributes:
        chi: ppm, referenced to the mean inside ``mask`` and zero outside it (ground truth).
        chi_all: ppm relative to CSF over the whole volume (air +9.4, skull ~ -2), with the
            partial-volume edges of :func:`partial_volume` (the source of every field).
        labels: int64 label map (:data:`LABELS`). mask: bool brain mask. head_mask: bool.
        local_field: ppm, ``mask * D(mask * chi)`` (zero outside the mask).
        total_field: ppm over the whole volume: D(chi_all - air) + shim (every source, air
            beyond the field of view); mask it with ``head_mask`` for the region with signal.
        background_field: ppm, ``total_field - D(mask * chi)``: total = local + background
            inside the mask.
        shim: ppm, the second-order shim residual included in ``total_field`` (zeros if none).
        b0_dir: (3,) unit vector (voxel coordinates). voxel_size: (3,) mm.
        affine: (4, 4) NIfTI affine consistent with ``b0_dir`` (world B0 = +z).
        te: (E,) s, b0_tesla: T, magnitude / phase: (E, X, Y, Z) (wrapped phase, rad),
            phi0: rad, m0, r2star: maps, noise_std: per real/imag part; None without signal.
        coil_magnitude / coil_phase: (C, E, X, Y, Z) and sensitivities (C, X, Y, Z) complex
            with ``n_coils > 0``.
        phantom: the :class:`HeadPhantom` (values drawn, scale, lesions).
    """

    chi: torch.Tensor
    chi_all: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    head_mask: torch.Tensor
    local_field: torch.Tensor
    total_field: torch.Tensor
    background_field: torch.Tensor
    shim: torch.Tensor
    b0_dir: np.ndarray
    voxel_size: np.ndarray
    affine: np.ndarray
    phantom: HeadPhantom
    te: torch.Tensor | None = None
    b0_tesla: float | None = None
    magnitude: torch.Tensor | None = None
    phase: torch.Tensor | None = None
    phi0: torch.Tensor | None = None
    m0: torch.Tensor | None = None
    r2star: torch.Tensor | None = None
    noise_std: float | None = None
    coil_magnitude: torch.Tensor | None = None
    coil_phase: torch.Tensor | None = None
    sensitivities: torch.Tensor | None = None


PARTIAL_VOLUME_SIGMA = (0.3, 0.8)
"""Default partial-volume blur (Gaussian sigma in voxels) of the intracranial sources and of
the sources outside the cranial cavity (skull, air, soft tissue); see :func:`partial_volume`.
0.3 voxel is about the std of a one-voxel box average (1 / sqrt(12)); bone and air edges get
0.8 voxel, which makes their background field discretely harmonic in the brain (with sharp
edges its Laplacian there exceeds the local field's; with these, a few percent of it)."""


def partial_volume(chi: torch.Tensor, labels: torch.Tensor,
                   sigma_voxels: tuple[float, float] = PARTIAL_VOLUME_SIGMA) -> torch.Tensor:
    """Partial-volume (anti-aliased) susceptibility edges for a head label map.

    A voxel-sharp phantom has edges far sharper than real anatomy sampled by MRI voxels: its
    spectrum reaches the Nyquist frequency at full strength, where the sampled dipole kernel
    jumps at the k-space border (with an oblique B0 it is discontinuous there), so sharp
    sources ring, and a 9.4 ppm air or -2 ppm bone edge makes a background field that is far
    from discretely harmonic inside the brain (no background removal can then remove it).
    Real tissue boundaries are partial-volume blends over at least a voxel. This blurs the
    sources inside the cranial cavity (:data:`INTRACRANIAL_LABELS`) and outside it
    separately, ``chi' = G_in * (c chi) + G_out * ((1 - c) chi - AIR) + AIR`` with c the cavity
    indicator and zero padding (so air continues beyond the volume, as in the total field);
    the cavity rim is CSF (0 ppm), so the two parts blend without a seam, and bone and air
    edges can be blurred more than the brain's internal anatomy. Before blurring, the outside
    sources within ``max(1, round(1.5 sigma_out))`` voxels of the cavity are set to 0 ppm
    (CSF), so the blurred bone and air stay outside the cavity (a few percent of their value
    reaches its first voxel) and the brain mask holds almost no bone: the CSF layer gets
    about one voxel thicker and the skull one voxel thinner (at 3 mm voxels a thin skull is
    then mostly a partial-volume blend with the scalp and air).

    Args:
        chi: (X, Y, Z) ppm relative to CSF (the :class:`HeadPhantom` ``chi``).
        labels: (X, Y, Z) int64 :data:`LABELS` map.
        sigma_voxels: (inside, outside) Gaussian sigma in voxels (0 leaves that part sharp).

    Returns:
        (X, Y, Z) float32 ppm, equal to ``chi`` where both parts are uniform over a few sigma.
    """
    from dlqsm.pipeline.masking import gaussian_smooth

    s_in, s_out = (float(v) for v in sigma_voxels)
    cav = torch.isin(labels, torch.tensor(INTRACRANIAL_LABELS, device=labels.device))
    inside = torch.where(cav, chi, torch.zeros_like(chi))
    gap = max(1, round(1.5 * s_out)) if s_out > 0 else 0  # keep bone/air out of the cavity
    shell = cav.float()[None, None]
    for _ in range(gap):
        shell = torch.nn.functional.max_pool3d(shell, 3, stride=1, padding=1)
    outside = torch.where(shell[0, 0] > 0, torch.zeros_like(chi), chi) - AIR_PPM
    return (gaussian_smooth(inside, s_in) + gaussian_smooth(outside, s_out) + AIR_PPM).float()


def simulate_head_case(shape: Sequence[int] = (164, 205, 205), voxel_size=(1.0, 1.0, 1.0),
                       b0_dir=(0.0, 0.0, 1.0), seed: int = 0, *, signal: bool = True,
                       b0_tesla: float = 3.0, te=(0.004, 0.010, 0.016, 0.022),
                       snr: float | None = None, phase_offset: bool = True,
                       shim_ppm: float = 0.0, padding=0, n_coils: int = 0,
                       partial_volume_sigma: tuple[float, float] = PARTIAL_VOLUME_SIGMA,
                       device=None, **phantom_kwargs) -> HeadCase:
    """Simulate a head phantom scan: chi, masks, local and total fields, multi-echo GRE data.

    Args:
        shape, voxel_size: matrix and voxel size (mm); the head is fitted to the field of view
            unless ``scale=`` is passed (see :func:`head_phantom`).
        b0_dir: B0 unit vector in voxel coordinates.
        seed: seeds the phantom, the shim, the phase offset and the noise.
        signal: also simulate magnitude and wrapped phase.
        b0_tesla, te: field strength (T) and echo times (s).
        snr: mean M0 in the head / noise std; None: noise-free (phase exactly
            wrap(phi0 + ppm_to_phase(total_field, TE, B0))).
        phase_offset: add a smooth random phase offset phi0 (else phi0 = 0).
        shim_ppm: amplitude of a random second-order shim residual added to the total field.
        padding: zero padding (voxels per side) of the dipole convolutions.
        n_coils: > 0 adds per-coil data with smooth sensitivities.
        partial_volume_sigma: (inside, outside) the cranial cavity, Gaussian sigma in voxels
            of the partial-volume edges (:func:`partial_volume`); (0, 0) keeps the phantom's
            voxel-sharp edges (whose background field no method can remove exactly).
        **phantom_kwargs: passed to :func:`head_phantom` (lesion_prob, scale, variation, ...).
    """
    from dlqsm.simulation.acquisition import (
        affine_for,
        forward_field,
        local_field,
        reference_chi,
        shim_field,
    )
    from dlqsm.simulation.signal import multi_echo_signal, random_phase_offset

    g = make_generator(seed)
    ph = head_phantom(shape, voxel_size, generator=g, device=device, **phantom_kwargs)
    vox = np.asarray(ph.voxel_size)
    b0 = np.asarray(b0_dir, dtype=np.float64) / np.linalg.norm(b0_dir)
    mask = ph.brain_mask
    chi_all = ph.chi
    if max(partial_volume_sigma) > 0:
        chi_all = partial_volume(ph.chi, ph.labels, partial_volume_sigma)
    chi = reference_chi(chi_all, mask)
    local = local_field(chi, mask, vox, b0, padding=padding)
    inside_part = forward_field(chi, vox, b0, padding=padding)
    shim = (shim_field(shape, vox, shim_ppm, g, device=ph.chi.device) if shim_ppm > 0
            else torch.zeros_like(ph.chi))
    total = forward_field(chi_all - AIR_PPM, vox, b0, padding=padding) + shim
    case = HeadCase(chi=chi, chi_all=chi_all, labels=ph.labels, mask=mask,
                    head_mask=ph.head_mask, local_field=local, total_field=total,
                    background_field=total - inside_part, shim=shim, b0_dir=b0, voxel_size=vox,
                    affine=affine_for(shape, vox, b0), phantom=ph)
    if signal:
        te_t = torch.as_tensor(te, dtype=torch.float32).reshape(-1)
        m0, r2 = tissue_parameters(ph.labels, b0_tesla)
        phi0 = (random_phase_offset(shape, vox, g, device=ph.chi.device) if phase_offset
                else torch.zeros_like(ph.chi))
        sig = multi_echo_signal(total, te_t, b0_tesla, m0=m0, r2star=r2, phi0=phi0, snr=snr,
                                signal_mask=ph.head_mask, generator=g, n_coils=n_coils,
                                voxel_size=vox)
        case.te, case.b0_tesla, case.phi0, case.m0, case.r2star = te_t, b0_tesla, phi0, m0, r2
        case.noise_std = sig.noise_std
        if n_coils > 0:
            case.magnitude, case.phase = sig.combined_magnitude, sig.combined_phase
            case.coil_magnitude, case.coil_phase = sig.magnitude, sig.phase
            case.sensitivities = sig.sensitivities
        else:
            case.magnitude, case.phase = sig.magnitude, sig.phase
    return case
