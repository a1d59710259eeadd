"""The registry of inversion methods and :func:`invert`, which runs any of them.

To add a method: write ``dlqsm/pipeline/inversion/<name>.py`` with a function
``name(field, mask, *, voxel_size, b0_dir, weight, magnitude, padding, progress, **its
parameters) -> InversionResult`` built on ``Problem``, ``Loop`` and ``finish`` of
:mod:`dlqsm.pipeline.inversion.problem` (any of the existing methods is a template), its
parameters keyword-only with defaults; then add one line to :data:`METHODS` below (and export
the function from the package's ``__init__``). Its defaults then show in
:func:`method_defaults`, and ``invert``, ``dlqsm reconstruct --method``, ``dlqsm evaluate``
and the benchmarks accept it.
Code outside dlqsm can use :func:`register_method` instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from dlqsm.physics.geometry import as_voxel_size
from dlqsm.pipeline.inversion.closed_form import tikhonov, tkd, tsvd
from dlqsm.pipeline.inversion.least_squares import ilsqr
from dlqsm.pipeline.inversion.nonlinear import medi, ndi
from dlqsm.pipeline.inversion.problem import COMMON_ARGS, InversionResult
from dlqsm.pipeline.inversion.tfi import tfi
from dlqsm.pipeline.inversion.total_variation import tv
from dlqsm.pipeline.inversion.two_step import rts

METHODS: dict[str, Callable[..., InversionResult]] = {
    "tkd": tkd,
    "tsvd": tsvd,
    "tikhonov": tikhonov,
    "ilsqr": ilsqr,
    "tv": tv,
    "medi": medi,
    "ndi": ndi,
    "rts": rts,
    "tfi": tfi,
}
"""Inversion methods by name: what ``invert(method=...)`` and ``--method`` accept."""

TOTAL_FIELD_METHODS = frozenset({"tfi"})
"""Methods that take the *total* field (no background removal before them); the chain
(:func:`dlqsm.pipeline.reconstruct.reconstruct`) skips its ``bfr`` stage for them."""


def register_method(name: str, fn: Callable[..., InversionResult]) -> None:
    """Add ``fn`` to :data:`METHODS` under ``name`` (for methods defined outside dlqsm).

    ``fn`` must take ``(field, mask)`` and, keyword-only, the common arguments
    (``voxel_size, b0_dir, weight, magnitude, padding, progress``) and its own parameters with
    defaults, and return an :class:`InversionResult` on the input grid.

    Raises:
        ValueError: ``name`` is taken, or ``fn`` lacks a common argument or a default.
    """
    if name in METHODS:
        raise ValueError(f"inversion method {name!r} is already registered")
    params = inspect.signature(fn).parameters
    missing = [a for a in COMMON_ARGS if a not in params]
    if missing:
        raise ValueError(f"{name}: missing the common argument(s) {missing}")
    no_default = [k for k, q in params.items() if q.kind is inspect.Parameter.KEYWORD_ONLY
                  and q.default is inspect.Parameter.empty and k not in COMMON_ARGS]
    if no_default:
        raise ValueError(f"{name}: parameter(s) {no_default} need a default")
    METHODS[name] = fn


def method_defaults(name: str) -> dict:
    """Default parameters of method ``name`` (everything but the common arguments)."""
    if name not in METHODS:
        raise ValueError(f"unknown inversion method {name!r}; choose one of {sorted(METHODS)}")
    sig = inspect.signature(METHODS[name])
    return {k: p.default for k, p in sig.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in COMMON_ARGS}


def _checked_volume(x, what: str, shape=None, device=None) -> torch.Tensor:
    """``x`` as a tensor, checked to be a real, finite (X, Y, Z) volume of ``shape`` if given.

    Raises ValueError naming ``what`` otherwise; the dtype is left as it is.
    """
    t = torch.as_tensor(x, device=device)
    if t.ndim != 3:
        raise ValueError(f"{what} must be a 3D volume (X, Y, Z), got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{what} shape {tuple(t.shape)} does not match the field's {shape}")
    if t.is_complex() or not torch.isfinite(t.float()).all():
        raise ValueError(f"{what} must be real and finite")
    return t


def invert(field, mask, *, method: str = "tv", voxel_size=(1.0, 1.0, 1.0),
           b0_dir=(0.0, 0.0, 1.0), weight=None, magnitude=None, padding=0,
           reference: str = "mean", progress: bool = False, **params) -> InversionResult:
    """Dipole inversion of a local field with any registered method.

    Args:
        field: local field (ppm), (X, Y, Z) tensor (numpy accepted); float32 unless float64.
        mask: brain mask, (X, Y, Z), nonzero inside.
        method: a key of :data:`METHODS`.
        voxel_size: mm, three numbers. b0_dir: unit B0 vector in voxel coordinates.
        weight: data-fidelity weight (e.g. inverse noise std), (X, Y, Z); normalised to mean 1
            in the mask.
        magnitude: magnitude image (X, Y, Z): medi's edges; medi/ndi use it as the data weight
            when ``weight`` is None.
        padding: zero padding per side in voxels (int or three ints).
        reference: "mean" subtracts the mean of chi inside the mask (whole-brain reference);
            "none" leaves it.
        **params: method parameters (see :func:`method_defaults`).

    Returns:
        InversionResult: chi (ppm), (X, Y, Z), zero outside the mask; ``info`` also records
        ``reference``, ``voxel_size``, ``b0_dir`` and ``padding``.

    Raises:
        ValueError: unknown method or parameter, mismatched shapes, non-finite input.
    """
    defaults = method_defaults(method)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {method!r}; "
                         f"allowed: {sorted(defaults)}")
    if reference not in ("mean", "none"):
        raise ValueError(f"reference must be 'mean' or 'none', got {reference!r}")
    field = _checked_volume(field, "field")
    if not field.is_floating_point():
        field = field.float()
    mask = _checked_volume(mask, "mask", field.shape, field.device) != 0
    if not mask.any():
        raise ValueError("the mask is empty")
    extra = {k: None if v is None else _checked_volume(v, k, field.shape, field.device)
             for k, v in (("weight", weight), ("magnitude", magnitude))}
    if extra["weight"] is not None and bool((extra["weight"] < 0).any()):
        raise ValueError("weight must be non-negative")
    vox = as_voxel_size(voxel_size)  # checked here unless validated already (a Scan's grid)
    res = METHODS[method](field, mask, voxel_size=vox, b0_dir=b0_dir, padding=padding,
                          progress=progress, **extra, **params)
    chi = res.chi * mask
    if reference == "mean":
        chi = (chi - chi[mask].mean()) * mask
    res.info["parameters"] = {**defaults, **res.info["parameters"]}
    res.info.update(reference=reference, voxel_size=list(vox), padding=padding,
                    b0_dir=[float(b) for b in torch.as_tensor(b0_dir).reshape(-1)])
    return InversionResult(chi, res.info)
