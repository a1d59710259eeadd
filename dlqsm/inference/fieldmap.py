"""From a scan on disk to the network's input: the classical stages before dipole inversion."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dlqsm.errors import InputError


@dataclass
class FieldMap:
    """A local field (ppm) and its mask on the scan grid, with how they were obtained."""

    local_field: torch.Tensor
    mask: torch.Tensor
    total_field: torch.Tensor | None = None
    timings: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    notices: list = field(default_factory=list)
    weight: torch.Tensor | None = None
    """Data weight of the local field (raw input: inverse noise, 0 where the field is
    unreliable; see :func:`dlqsm.pipeline.reconstruct.reconstruct`), else None."""


def local_field_from_scan(scan, *, unwrap: str = "romeo", echo_fit: str = "wls",
                          bfr: str | None = None, mask_erosion_mm: float = 0.0, device="cpu",
                          progress: bool = False, stage_params: dict | None = None) -> FieldMap:
    """Run the classical stages that come before dipole inversion on a scan.

    Raw scans go through masking, unwrapping, echo fitting and background removal, total-field
    scans through background removal only, and local-field scans are returned as given (their
    mask is required). Calls :func:`dlqsm.pipeline.reconstruct.reconstruct` with
    ``method=None``, so the stages are exactly those of ``dlqsm reconstruct``.

    Args:
        scan: a :class:`dlqsm.io.scan.Scan`.
        unwrap, echo_fit, bfr, mask_erosion_mm, stage_params: as for
            :func:`dlqsm.pipeline.reconstruct.reconstruct` (no ``inversion`` parameters).
        device: where the stages run.
        progress: one line per stage on stderr.

    Returns:
        :class:`FieldMap` with (X, Y, Z) tensors on ``device``.
    """
    from dlqsm.pipeline import reconstruct as rec

    if scan.kind == "local_field":
        if scan.mask is None:
            raise InputError("a local-field input needs a brain mask.",
                             path=scan.sources.get("local_field"), fix="pass --mask MASK.")
        dev = rec.resolve_device(device)
        lf = torch.as_tensor(np.asarray(scan.local_field), dtype=torch.float32, device=dev)
        mask = torch.as_tensor(np.asarray(scan.mask), device=dev).bool()
        return FieldMap(lf, mask, notices=list(scan.notices))
    res = rec.reconstruct(scan, unwrap=unwrap, echo_fit=echo_fit, bfr=bfr or rec.DEFAULT_BFR,
                          method=None, mask_erosion_mm=mask_erosion_mm, device=device,
                          progress=progress, stage_params=stage_params)
    timings = dict(res.timings)
    timings["field_total"] = timings.pop("total")
    return FieldMap(res.local_field, res.mask.bool(), res.total_field, timings, res.parameters,
                    res.info, list(scan.notices) + list(res.notices), weight=res.weight)
