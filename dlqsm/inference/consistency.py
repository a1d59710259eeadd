"""Data consistency at inference: make a network's chi obey the measured field.

A network trained on simulated data can return a map whose field ``mask * D(mask * chi)``
disagrees with the scan's local field (a domain gap the network cannot see). Data-consistency
steps started from the network output fix part of that disagreement with the project's
classical solvers (:mod:`dlqsm.pipeline.inversion`, one implementation of each): with the
residual field ``r = f - mask * D(mask * chi_net)`` they solve for a correction ``delta``

* ``"l2"``: ``min ||W (D delta - r)||^2 + lam ||delta||^2`` over sources in the mask, by a few
  conjugate-gradient iterations started at 0, i.e. at the network output
  (``ilsqr`` with the identity regulariser: a proximal step towards the data that stays near
  the network output; the CG iteration count is a second regulariser);
* ``"tv"``: ``min 1/2 ||W (D delta - r)||^2 + alpha TV(delta)`` by a few TV-ADMM iterations
  (``tv``, weighted data term inside the mask): an edge-preserving correction;

and return ``chi_net + delta``, referenced to its mean inside the mask. ``W`` is the mask or
a given weight (e.g. the inverse echo-fit noise). Other routes to the same goal (not here):
test-time fine-tuning of the network with the dipole loss (FINE; Jung et al., NeuroImage
2020;211:116579) and networks that unroll the dipole operator (LPCNN, MoDL-QSM).
"""

from __future__ import annotations

import time

import torch

from dlqsm.errors import InputError
from dlqsm.physics.dipole import DipoleOperator

DC_METHODS = ("none", "l2", "tv")
"""Data-consistency methods of :func:`data_consistency` (``none`` returns chi unchanged)."""

DC_DEFAULTS: dict[str, dict] = {
    "l2": {"lam": 0.01, "regularizer": "identity"},
    "tv": {"alpha": 3e-4},
}
"""Default parameters per method (ppm scaling of :mod:`dlqsm.pipeline.inversion`)."""

DEFAULT_DC_ITERATIONS = 10
"""Default number of solver iterations of a data-consistency step."""


def field_residual(
    chi: torch.Tensor, field: torch.Tensor, mask: torch.Tensor, *, voxel_size, b0_dir, padding=0
) -> torch.Tensor:
    """``mask * (field - D(mask * chi))`` (ppm), (X, Y, Z): what chi leaves unexplained."""
    m = mask.to(chi.dtype)
    op = DipoleOperator(tuple(chi.shape), voxel_size, b0_dir, padding=padding, device=chi.device)
    return m * (field - op.forward(m * chi))


def _relative(r: torch.Tensor, f: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(r) / torch.linalg.vector_norm(f).clamp_min(1e-12))


def data_consistency(
    chi,
    field,
    mask,
    *,
    voxel_size,
    b0_dir,
    method: str = "l2",
    iterations: int = DEFAULT_DC_ITERATIONS,
    weight=None,
    padding=0,
    **params,
) -> tuple[torch.Tensor, dict]:
    """A few data-consistency iterations started from a network's chi (see the module doc).

    Args:
        chi: (X, Y, Z) network output, ppm. field: (X, Y, Z) local field, ppm.
        mask: (X, Y, Z) brain mask (non-zero inside). All on one device.
        voxel_size: mm, three numbers. b0_dir: unit B0 vector in voxel coordinates.
        method: one of :data:`DC_METHODS`.
        iterations: solver iterations (CG for "l2", ADMM for "tv"); >= 1.
        weight: optional (X, Y, Z) data weight (e.g. 1 / noise std), normalised in the mask.
        padding: zero padding (voxels per side) of the dipole convolutions.
        **params: method parameters overriding :data:`DC_DEFAULTS` (``lam``, ``regularizer``
            for "l2"; ``alpha`` and the other ``tv`` parameters for "tv").

    Returns:
        (chi, info): chi (X, Y, Z) ppm, zero outside the mask with zero mean inside it; info
        with the method, iterations, parameters, the relative field residual
        ``||mask (f - D chi)|| / ||mask f||`` before and after, and the time (s).

    Raises:
        InputError: an unknown method or an iteration count below 1.
    """
    from dlqsm.pipeline.inversion import invert

    method = str(method).lower()
    if method not in DC_METHODS:
        raise InputError(
            f"unknown data-consistency method {method!r}.",
            fix=f"use one of {', '.join(DC_METHODS)}.",
        )
    t0 = time.perf_counter()
    m = mask != 0
    mf = m.to(chi.dtype)
    geo = {"voxel_size": voxel_size, "b0_dir": b0_dir, "padding": padding}
    before = field_residual(chi, field, m, **geo)
    info = {"method": method, "residual_before": _relative(before, field * mf)}
    if method == "none":
        return chi, dict(info, residual_after=info["residual_before"], seconds=0.0)
    if int(iterations) < 1:
        raise InputError(
            f"data-consistency iterations must be >= 1, got {iterations}.",
            fix="pass --dc-iters 1 or more (or --data-consistency none).",
        )
    p = dict(DC_DEFAULTS[method], **params)
    if method == "l2":
        p.update(max_iter=int(iterations), tol=1e-8, support="mask", solver="cg")
        res = invert(before, m, method="ilsqr", weight=weight, reference="none", **geo, **p)
    else:
        p.update(max_iter=int(iterations), tol=0.0)
        res = invert(before, m, method="tv", weight=weight, reference="none", **geo, **p)
    out = (chi + res.chi.to(chi.dtype)) * mf
    out = (out - out[m].mean()) * mf
    after = field_residual(out, field, m, **geo)
    info.update(
        iterations=int(iterations),
        params={k: v for k, v in p.items() if k not in ("max_iter", "tol")},
        residual_after=_relative(after, field * mf),
        seconds=time.perf_counter() - t0,
    )
    return out, info
