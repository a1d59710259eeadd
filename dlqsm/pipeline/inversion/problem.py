"""What every dipole inversion shares: the padded FFT grid, weights, iteration loop, result.

:class:`Problem` holds a field, its mask and weights on the inversion grid (the volume padded by
``padding`` voxels per side and extended to fast FFT lengths) with the dipole kernel there;
:class:`Loop` counts iterations with a relative-change stopping rule and optional progress;
:func:`finish` crops chi back to the input grid and records what was done in an
:class:`InversionResult`. Methods build on these (see :mod:`dlqsm.pipeline.inversion`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

from dlqsm.physics.dipole import dipole_kernel
from dlqsm.physics.fft import as_triple, irfft3, rfft3
from dlqsm.physics.geometry import as_voxel_size
from dlqsm.physics.operators import Gradient

COMMON_ARGS = ("voxel_size", "b0_dir", "weight", "magnitude", "padding", "progress")


@dataclass
class InversionResult:
    """Output of a dipole inversion.

    Attributes:
        chi: susceptibility (ppm), shape (X, Y, Z), same device as the input field.
        info: ``method``, ``parameters`` (all values used), ``iterations``, ``converged``,
            ``relative_change`` (last relative update of chi, None for closed forms),
            ``time_s`` and method-specific entries.
    """

    chi: torch.Tensor
    info: dict


def fast_fft_len(n: int, even: bool = False) -> int:
    """Smallest m >= n with prime factors 2, 3, 5, 7 only (and even if ``even``).

    FFTs of such lengths are several times faster than of lengths with a large prime factor
    (164 x 205 x 205 has 41); the inversions extend their grid to these lengths.
    """
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1 and (m % 2 == 0 or not even):
            return m
        m += 1


class Problem:
    """A field, its mask and weights on the FFT grid of the inversion, with D(k) there.

    The grid is the volume zero-padded by ``padding`` voxels per side, then extended at the far
    end of each axis to a fast FFT length (:func:`fast_fft_len`). All operators are periodic on
    that grid. ``crop`` returns to the input grid.
    """

    def __init__(self, field, mask, *, voxel_size, b0_dir, weight, magnitude, padding):
        self.dtype = field.dtype if field.dtype in (torch.float32, torch.float64) else (
            torch.float32)
        self.in_shape = tuple(field.shape)
        self.voxel_size = as_voxel_size(voxel_size)  # trusted when validated already
        pad = as_triple(padding)
        self.shape = tuple(fast_fft_len(n + 2 * p, even=(i == 2))
                           for i, (n, p) in enumerate(zip(self.in_shape, pad, strict=True)))
        self._pad = [(p, m - n - p) for n, p, m in zip(self.in_shape, pad, self.shape,
                                                        strict=True)]
        self.D = dipole_kernel(self.shape, self.voxel_size, b0_dir, half=True,
                               device=field.device, dtype=self.dtype)
        self.f = self.pad(field)
        self.mask = self.pad(mask)
        self.weight = None if weight is None else self.pad_weight(weight)
        self.magnitude = None if magnitude is None else self.pad(magnitude)
        self.grad = Gradient(self.voxel_size)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(X, Y, Z) input grid -> inversion grid, zero filled, in the working dtype."""
        flat = [v for pair in reversed(self._pad) for v in pair]
        return torch.nn.functional.pad(x.to(self.dtype), flat)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Inversion grid -> (X, Y, Z) input grid."""
        for axis, ((before, _), n) in enumerate(zip(self._pad, self.in_shape, strict=True)):
            x = x.narrow(axis - 3, before, n)
        return x

    def pad_weight(self, w: torch.Tensor) -> torch.Tensor:
        """Pad a weight of the input grid, mask it and normalise it to mean 1 in the mask."""
        return self._normalise(self.pad(w))

    def _normalise(self, w: torch.Tensor) -> torch.Tensor:
        w = w * self.mask
        mean = w.sum() / self.mask.sum().clamp_min(1)
        if float(mean) <= 0:
            raise ValueError("the weight map is zero everywhere inside the mask")
        return w / mean

    def data_weight(self, use_magnitude: bool = False) -> torch.Tensor:
        """W: the given weight, else the normalised magnitude (if asked), else the mask."""
        if self.weight is not None:
            return self.weight
        if use_magnitude and self.magnitude is not None:
            return self._normalise(self.magnitude.abs())
        return self.mask

    def dipole(self, x: torch.Tensor) -> torch.Tensor:
        """D x on the inversion grid (periodic convolution)."""
        return irfft3(rfft3(x) * self.D, self.shape)

    def e2(self) -> torch.Tensor:
        """sum_i |E_i(k)|^2 of the periodic gradient: the k-space form of G^T G (1/mm^2)."""
        e = self.grad.kspace_filters(self.shape, device=self.D.device, dtype=self.dtype)
        return (e.real.square() + e.imag.square()).sum(0)

    def gradient(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``Gradient(voxel_size).forward(x)`` for (X, Y, Z) x, written into ``out``."""
        return self.grad.forward(x, out)

    def gradient_adjoint(self, g: torch.Tensor, out: torch.Tensor | None = None):
        """``Gradient(voxel_size).adjoint(g)`` for (3, X, Y, Z) g, written into ``out``."""
        return self.grad.adjoint(g, out)


class Loop:
    """Iteration counter with a relative-change stopping rule and optional tqdm progress."""

    def __init__(self, max_iter: int, tol: float, progress: bool, desc: str):
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.progress, self.desc = progress, desc
        self.iterations, self.converged, self.change = 0, False, float("inf")
        self._bar = None

    def __iter__(self):
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.max_iter, desc=self.desc, leave=False)
        try:
            for it in range(1, self.max_iter + 1):
                self.iterations = it
                yield it
        finally:
            if self._bar is not None:
                self._bar.close()

    def done(self, change: float) -> bool:
        """Record the relative change of this iteration; True when it is below ``tol``."""
        self.change = float(change)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(change=f"{self.change:.2e}")
        self.converged = self.change < self.tol
        return self.converged

    def info(self) -> dict:
        """``iterations``, ``converged`` and ``relative_change`` for :func:`finish`."""
        return {"iterations": self.iterations, "converged": self.converged,
                "relative_change": self.change}


def rel_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """||new - old|| / ||new|| (0 when new is 0): the stopping measure of the iterations."""
    den = float(torch.linalg.vector_norm(new))
    return float(torch.linalg.vector_norm(new - old)) / den if den > 0 else 0.0


def shrink_iso(v: torch.Tensor, thr: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Isotropic soft threshold of a (3, ...) gradient field: v * max(1 - thr/|v|, 0)."""
    n = torch.mul(v[0], v[0]).addcmul_(v[1], v[1]).addcmul_(v[2], v[2]).sqrt_()
    n.clamp_min_(max(thr, 1e-30)).reciprocal_().mul_(-thr).add_(1.0)
    return torch.mul(v, n, out=out)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def finish(prob: Problem, chi, method, params, t0, **info) -> InversionResult:
    """Crop chi (inversion grid) to the input grid and record the run.

    Args:
        prob: the problem chi was solved on. chi: (X', Y', Z') on ``prob``'s grid (ppm).
        method: registry name. params: the parameters used. t0: ``time.perf_counter()`` at
            the start. **info: ``iterations``, ``converged``, ``relative_change`` (defaults 0,
            True, None: a closed form) and method-specific entries.
    """
    _sync(chi.device)
    base = {"method": method, "parameters": dict(params), "iterations": 0, "converged": True,
            "relative_change": None}
    base.update(info)
    base["time_s"] = time.perf_counter() - t0
    return InversionResult(prob.crop(chi).contiguous(), base)


def warn_ignored_weight(method: str, weight) -> None:
    """Warn (at the caller's caller) that ``method`` cannot use the given weight map."""
    if weight is not None:
        warnings.warn(f"{method} ignores the weight map (its data term covers the whole grid "
                      "unweighted); use ilsqr, tv (data_term='mask'), medi, ndi or rts for a "
                      "weighted data term.", stacklevel=3)


def support_operator(prob: Problem, support: str):
    """chi -> S chi: restriction of the sources to the mask, or the identity."""
    if support == "mask":
        m = prob.mask
        return lambda x: x * m
    if support == "full":
        return lambda x: x
    raise ValueError(f"support must be 'mask' or 'full', got {support!r}")
