"""Field of an anisotropic (cylindrically symmetric) susceptibility tensor, e.g. white matter.

White matter's susceptibility depends on the fibre orientation (susceptibility tensor imaging:
Liu, Magn Reson Med 2010;63:1471-1477; Li et al., NeuroImage 2012;59:2088-2097 report
chi_parallel - chi_perpendicular of about 0.01-0.03 ppm in major tracts, chi_parallel >
chi_perpendicular relative to water's diamagnetism, i.e. less diamagnetic along the fibres).
dlqsm models it as a cylindrically symmetric tensor per voxel

    chi_ij = chi_mean delta_ij + dchi (n_i n_j - delta_ij / 3),

with ``n`` the unit fibre direction (chi_parallel = chi_mean + 2 dchi / 3, chi_perpendicular =
chi_mean - dchi / 3; the mean susceptibility, trace / 3, is ``chi_mean``). With the B0 unit
vector ``h`` the induced magnetisation is ``chi h`` and the field along B0 (ppm, Lorentz sphere
correction included, as :mod:`dlqsm.physics.dipole`) is

    field = F^-1[ (1/3) h . V(k) - (h . k)(k . V(k)) / |k|^2 ],    V = F[chi h],  0 at k = 0,

which for an isotropic chi (V = chi h) is the dipole kernel D(k) F[chi]. Here the isotropic part
goes through the project's :class:`~dlqsm.physics.dipole.DipoleOperator` (one implementation)
and the anisotropic part ``dchi (n (n . h) - h / 3)`` through the vector kernel above, on the
same padded grid (same ``kspace_grid``, ``pad3``/``crop3``, half-spectrum FFTs) and with the
same treatment of the Nyquist planes as :func:`~dlqsm.physics.dipole.dipole_kernel` (products
of two different frequency components are averaged over the +-1/2 aliases, i.e. zeroed, so the
kernel is even and the field real and independent of the half/full spectrum).
"""

from __future__ import annotations

import torch

from dlqsm.physics.dipole import DipoleOperator, _b0_tensor, _without_nyquist
from dlqsm.physics.fft import crop3, irfft3, kspace_grid, pad3, rfft3


def orientation_tensor(fibre_dir: torch.Tensor) -> torch.Tensor:
    """The fibre orientation tensor n n^T, (..., 3, 3, X, Y, Z), of unit directions
    (..., 3, X, Y, Z). Its voxel average <n n^T> describes orientation dispersion and partial
    volumes (symmetric, trace 1 where there are fibres)."""
    if fibre_dir.ndim < 4 or fibre_dir.shape[-4] != 3:
        raise ValueError(
            f"fibre directions must be (..., 3, X, Y, Z), got {tuple(fibre_dir.shape)}"
        )
    return fibre_dir.unsqueeze(-5) * fibre_dir.unsqueeze(-4)


def anisotropic_source(dchi: torch.Tensor, fibre: torch.Tensor, b0_dir) -> torch.Tensor:
    """The anisotropic part of the induced magnetisation per unit B0: dchi (N h - h / 3).

    Args:
        dchi: (..., X, Y, Z) chi_parallel - chi_perpendicular, ppm.
        fibre: (..., 3, X, Y, Z) unit fibre directions n (voxel coordinates), or
            (..., 3, 3, X, Y, Z) an orientation tensor N = <n n^T> (:func:`orientation_tensor`,
            e.g. averaged over a voxel); told apart by their number of dimensions.
        b0_dir: unit B0 vector in voxel coordinates, (3,).

    Returns:
        (..., 3, X, Y, Z) ppm, components along the voxel axes.
    """
    h = _b0_tensor(b0_dir, dchi.device, dchi.dtype)
    if h.shape[0] != 1:
        raise ValueError("the anisotropic field takes one B0 direction, got a batch")
    h = h[0]
    fibre = fibre.to(dchi.dtype)
    if fibre.ndim == dchi.ndim + 1 and fibre.shape[-4] == 3:
        nh = torch.einsum("i,...ixyz->...xyz", h, fibre)
        vec = fibre * nh.unsqueeze(-4)  # n (n . h)
    elif fibre.ndim == dchi.ndim + 2 and tuple(fibre.shape[-5:-3]) == (3, 3):
        vec = torch.einsum("...ijxyz,j->...ixyz", fibre, h)  # N h
    else:
        raise ValueError(
            f"fibre must be (..., 3, X, Y, Z) directions or (..., 3, 3, X, Y, Z) orientation "
            f"tensors for dchi of shape {tuple(dchi.shape)}, got {tuple(fibre.shape)}"
        )
    return dchi.unsqueeze(-4) * (vec - h.view(3, 1, 1, 1) / 3.0)


def vector_source_kernels(op: DipoleOperator) -> list[torch.Tensor]:
    """Half-spectrum kernels K_j(k) = h_j / 3 - (h . k) k_j / |k|^2 on ``op``'s padded grid.

    The field (ppm) of a magnetisation-per-unit-B0 vector field M (ppm) is F^-1[sum_j K_j
    F[M_j]]. Products of two different frequency components are zeroed on Nyquist planes
    (their average over the +-1/2 aliases), exactly as in
    :func:`~dlqsm.physics.dipole.dipole_kernel`, so that sum_j K_j h_j = D(k). K_j(0) = 0.

    Returns:
        three real (X', Y', Z'//2 + 1) tensors (X', Y', Z' = ``op.padded_shape``).
    """
    if op.kernel.ndim != 3:
        raise ValueError("the anisotropic field needs a DipoleOperator with one B0 direction")
    dtype, device = op.kernel.dtype, op.kernel.device
    ks = kspace_grid(op.padded_shape, op.voxel_size, half=True, device=device, dtype=dtype)
    kt = [_without_nyquist(k, int(n)) for k, n in zip(ks, op.padded_shape, strict=True)]
    h = _b0_tensor(op.b0_dir, device, dtype)[0].tolist()
    k2 = ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2
    k2[0, 0, 0] = 1.0
    hk = kt[0] * h[0] + kt[1] * h[1] + kt[2] * h[2]
    out = []
    for j in range(3):
        # (h.k) k_j averaged over the Nyquist aliases: cross terms vanish, k_j^2 h_j stays
        kk = hk * kt[j] + h[j] * (ks[j] ** 2 - kt[j] ** 2)
        kern = h[j] / 3.0 - kk / k2
        kern[0, 0, 0] = 0.0
        out.append(kern)
    return out


def vector_source_field(source: torch.Tensor, op: DipoleOperator) -> torch.Tensor:
    """Field (ppm) along B0 of a magnetisation-per-unit-B0 vector field (ppm), on ``op``'s grid.

    Args:
        source: (..., 3, X, Y, Z), components along the voxel axes (e.g.
            :func:`anisotropic_source`); zero-padded by ``op.padding`` like ``op.forward``.
        op: the :class:`~dlqsm.physics.dipole.DipoleOperator` of the geometry (one B0 direction).

    Returns:
        (..., X, Y, Z) ppm. For ``source = chi h`` this equals ``op.forward(chi)``.
    """
    if tuple(source.shape[-3:]) != op.shape or source.shape[-4] != 3:
        raise ValueError(f"expected a (..., 3, {op.shape}) source, got {tuple(source.shape)}")
    acc = None
    for j, kern in enumerate(vector_source_kernels(op)):
        term = rfft3(pad3(source[..., j, :, :, :], op.padding)) * kern
        acc = term if acc is None else acc + term
    return crop3(irfft3(acc, op.padded_shape), op.padding)


def anisotropic_field(
    dchi: torch.Tensor, fibre_dir: torch.Tensor, op: DipoleOperator
) -> torch.Tensor:
    """Field (ppm) of the anisotropic part ``dchi (n n^T - I / 3)`` alone (no chi_mean).

    Args:
        dchi: (..., X, Y, Z) chi_parallel - chi_perpendicular in ppm (0 outside white matter).
        fibre_dir: (..., 3, X, Y, Z) unit fibre directions in voxel coordinates, or the
            (..., 3, 3, X, Y, Z) orientation tensor <n n^T>.
        op: :class:`~dlqsm.physics.dipole.DipoleOperator` giving shape, voxel size (mm), the
            B0 direction (voxel coordinates) and the zero padding.

    Returns:
        (..., X, Y, Z) ppm; linear in dchi; zero for dchi = 0.
    """
    return vector_source_field(anisotropic_source(dchi, fibre_dir, op.b0_dir), op)


def tensor_field(
    chi_mean: torch.Tensor, dchi: torch.Tensor, fibre_dir: torch.Tensor, op: DipoleOperator
) -> torch.Tensor:
    """Full field (ppm) of chi_mean I + dchi (n n^T - I / 3): ``op.forward(chi_mean)`` plus
    :func:`anisotropic_field` (which see for the arguments). chi_mean (..., X, Y, Z) ppm.

    With ``dchi == 0`` this is exactly the isotropic ``op.forward(chi_mean)``.
    """
    return op.forward(chi_mean) + anisotropic_field(dchi, fibre_dir, op)
