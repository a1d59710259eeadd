"""Approximate white-matter fibre directions from a tissue probability map (no diffusion data).

The simulator needs a fibre direction per white-matter voxel for the anisotropic susceptibility
of :mod:`dlqsm.physics.anisotropy`. Without diffusion MRI, dlqsm takes the direction along
which the smoothed white-matter probability changes least: the eigenvector of the smallest
eigenvalue of its structure tensor (the outer product of the gradient, smoothed over a few mm;
the tool of orientation analysis in images, e.g. Bigun and Granlund, ICCV 1987). In a sheet-
or tube-like tract this follows the tract: left-right in the corpus callosum, inferior-superior
in the internal capsule and the corticospinal tract. It is an approximation: where white matter
is thick and uniform (centrum semiovale) the structure tensor is nearly isotropic and the
direction is poorly defined, crossing fibres are not represented, and a tract that runs along
a flat sheet of white matter gets the sheet's in-plane direction of least change, not
necessarily its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fibre_directions(
    wm: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    smooth_mm: float = 1.0,
    tensor_mm: float = 3.0,
    min_fraction: float = 0.05,
) -> np.ndarray:
    """Unit fibre directions (3, X, Y, Z) float32 (voxel axes) from a WM probability map.

    Args:
        wm: (X, Y, Z) white-matter probability (fraction) in [0, 1].
        voxel_size: mm per axis.
        smooth_mm: Gaussian sigma (mm) applied to ``wm`` before its gradient.
        tensor_mm: Gaussian sigma (mm) over which the structure tensor grad w grad w^T is
            averaged (the scale of the tracts followed).
        min_fraction: directions are computed where ``wm`` > this; zero vectors elsewhere.

    Returns:
        Eigenvector of the smallest eigenvalue of the structure tensor per voxel (sign
        arbitrary: only n n^T matters for the susceptibility tensor).
    """
    from scipy import ndimage

    vox = [float(h) for h in voxel_size]
    w = ndimage.gaussian_filter(np.asarray(wm, dtype=np.float32), [smooth_mm / h for h in vox])
    grads = np.gradient(w, *vox)
    sel = np.asarray(wm) > min_fraction
    tensor = np.empty((int(sel.sum()), 3, 3), dtype=np.float64)
    for i in range(3):
        for j in range(i, 3):
            s = ndimage.gaussian_filter(grads[i] * grads[j], [tensor_mm / h for h in vox])[sel]
            tensor[:, i, j] = tensor[:, j, i] = s
    del grads
    _, vecs = np.linalg.eigh(tensor)  # eigenvalues ascending
    out = np.zeros((3, *w.shape), dtype=np.float32)
    out[:, sel] = vecs[:, :, 0].T
    return out
