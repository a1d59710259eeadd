"""Loading a network and calling it with the keywords it accepts.

:func:`load_network` loads a checkpoint or exported model (the shipped default model when none
is given) with :func:`dlqsm.models.loading.load_model`; :func:`call_network` passes mask, B0
direction, voxel size and an initial estimate only to networks whose ``forward`` takes them.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from dlqsm.models.loading import (
    DEFAULT_MODEL_DIR,
    default_model_installed,
    load_model,
    resolve_checkpoint,
)

__all__ = ["DEFAULT_MODEL_DIR", "call_network", "default_model_installed", "load_network",
           "resolve_checkpoint"]


def _accepted_kwargs(net: nn.Module) -> set[str]:
    try:
        params = inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {"mask", "b0_dir", "voxel_size"}
    return {k for k in ("mask", "b0_dir", "voxel_size") if k in params}


def call_network(net: nn.Module, field: torch.Tensor, mask: torch.Tensor, b0_dir: torch.Tensor,
                 voxel_size: torch.Tensor, chi_init: torch.Tensor | None = None) -> torch.Tensor:
    """``net(field, mask=, b0_dir=, voxel_size=)`` passing only the keywords ``net`` accepts.

    Args:
        field: (B, 1, X, Y, Z) local field, ppm.
        mask: (B, 1, X, Y, Z) float mask.
        b0_dir: (1, 3) or (B, 3) unit vector(s) in the voxel coordinates of this grid.
        voxel_size: (1, 3) or (B, 3) voxel size of this grid, mm.
        chi_init: (B, 1, X, Y, Z) classical estimate (ppm) for networks that refine one
            (:class:`dlqsm.models.InversionResidualNet`), computed on the whole volume.

    Returns:
        (B, 1, X, Y, Z) susceptibility, ppm.
    """
    n = field.shape[0]
    kwargs = {"mask": mask, "b0_dir": b0_dir.expand(n, 3), "voxel_size": voxel_size.expand(n, 3)}
    accepted = _accepted_kwargs(net)
    if chi_init is not None:
        kwargs["chi_init"] = chi_init
        accepted = accepted | {"chi_init"}
    out = net(field, **{k: v for k, v in kwargs.items() if k in accepted})
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = out.get("chi", next(iter(out.values())))
    return out


def load_network(checkpoint=None) -> tuple[nn.Module, dict, Path]:
    """Load (net, metadata, path) with :func:`dlqsm.models.load_model` (default model if None)."""
    path = resolve_checkpoint(checkpoint)
    net, metadata = load_model(path)
    return net, dict(metadata or {}), path
