"""Classical inversion over a batch, and per-sample geometry of a batch.

A training batch holds volumes ``(B, 1, X, Y, Z)`` with one B0 direction and one voxel size per
sample. :func:`per_sample` reads those as ``(B, 3)``; :func:`classical_estimate` runs
:func:`dlqsm.pipeline.inversion.invert` on each sample with its own geometry. Used by networks
that refine a classical estimate (:class:`dlqsm.models.InversionResidualNet`), the datasets
that precompute it (:class:`dlqsm.simulation.wrappers.WithInitialEstimate`) and the
:class:`dlqsm.inference.Predictor`.
"""

from __future__ import annotations

import torch

DEFAULT_B0 = (0.0, 0.0, 1.0)
"""B0 direction (voxel coordinates) assumed when a batch gives none."""

DEFAULT_VOXEL = (1.0, 1.0, 1.0)
"""Voxel size (mm) assumed when a batch gives none."""

INIT_KEY = "chi_init"
"""Name of a precomputed classical estimate (ppm, (1, X, Y, Z)) in samples and batches, and of
the ``forward`` argument of networks that take one."""


def per_sample(value, batch: int, default, device) -> torch.Tensor:
    """``value`` as a float64 tensor (B, 3) on CPU (None -> ``default`` for every sample)."""
    if value is None:
        value = default
    v = torch.as_tensor(value, dtype=torch.float64).detach().to("cpu")
    if v.ndim == 1:
        v = v.expand(batch, 3)
    if v.shape != (batch, 3):
        raise ValueError(f"expected a (3,) or ({batch}, 3) tensor, got shape {tuple(v.shape)}")
    return v


def classical_estimate(field: torch.Tensor, mask: torch.Tensor | None = None, b0_dir=None,
                       voxel_size=None, *, method: str = "tv",
                       params: dict | None = None,
                       weight: torch.Tensor | None = None,
                       infos: list | None = None) -> torch.Tensor:
    """Classical inversion of each sample of a batch ``(B, 1, X, Y, Z)`` (ppm in, ppm out).

    Calls :func:`dlqsm.pipeline.inversion.invert` per sample (with ``reference="mean"``) on
    the field's device, without gradients. ``mask`` None means the whole grid; ``b0_dir`` and
    ``voxel_size`` are (3,) or (B, 3) (None: z and 1 mm); ``weight`` (B, 1, X, Y, Z) or None is
    the data weight of each sample (e.g. inverse noise, 0 where the field is unreliable), for
    the methods that take one. ``infos``: a list that receives each sample's inversion record
    (:attr:`InversionResult.info`: resolved parameters, iterations, the automatic weight's
    ``auto_weight`` for ``alpha="auto"``; None for an empty mask), so that a caller can record
    what was chosen without inverting again.
    """
    from dlqsm.pipeline.inversion import invert
    from dlqsm.pipeline.reconstruct import _CLOSED_FORMS

    params = dict(params or {})
    if method in _CLOSED_FORMS:  # unweighted by construction (as in reconstruct)
        weight = None
    batch = field.shape[0]
    b0 = per_sample(b0_dir, batch, DEFAULT_B0, None).tolist()
    vox = per_sample(voxel_size, batch, DEFAULT_VOXEL, None).tolist()
    out = torch.zeros_like(field, dtype=torch.float32)
    with torch.no_grad():
        for i in range(batch):
            f = field[i, 0].float()
            m = torch.ones_like(f, dtype=torch.bool) if mask is None else mask[i, 0] > 0
            if not m.any():
                if infos is not None:
                    infos.append(None)
                continue
            w = None if weight is None else weight[i, 0].float()
            res = invert(f, m, method=method, voxel_size=vox[i], b0_dir=b0[i], weight=w,
                         **params)
            out[i, 0] = res.chi.to(out.dtype)
            if infos is not None:
                infos.append(res.info)
    return out
