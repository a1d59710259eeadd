"""The methods compared by an evaluation: classical dipole inversions and trained networks.

A method is given as a dict (from ``configs/evaluate.yaml`` or built by ``dlqsm evaluate``)::

    {name: tkd, kind: classical, method: tkd, params: {threshold: 0.19}}
    {name: tv, kind: classical, method: tv, params: {alpha: 3.0e-4}, padding: 16}
    {name: unet, kind: learned, checkpoint: runs/x/checkpoints/best.ckpt,
     options: {tile: null, overlap: 0.5, amp: false}}
    {name: model-trained, kind: learned, checkpoint: null, options: {estimate_weight: trained}}

or as a short string: an inversion name (``"tkd"``) or a checkpoint path (``"best.ckpt"``, or
``"unet=best.ckpt"`` to name it; ``"default"`` is the model shipped with dlqsm). Classical
methods run :func:`dlqsm.pipeline.inversion.invert`; learned ones a
:class:`dlqsm.inference.Predictor`. Both get the case's local field, mask, voxel size and B0
direction and return chi (ppm) referenced to its mean inside the mask.

A learned model that refines a classical inversion (the shipped default model) runs it with the
weight ``dlqsm infer`` would use for a local-field input: ``estimate_weight`` (the evaluation's
``--estimate-weight`` / config key, or a method's own ``options.estimate_weight``) is resolved
by :func:`dlqsm.inference.predictor.estimate_params`, the function behind ``dlqsm infer
--estimate-weight``; ``by-input`` (the default, as infer's) means TV's per-scan ``alpha=auto``
here, since every method gets a local field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlqsm.errors import InputError, check_parameter_types

KINDS = ("classical", "learned")
PREDICTOR_OPTIONS = ("tile", "roi_size", "overlap", "sw_batch_size", "amp", "memory_fraction")
LEARNED_OPTIONS = (*PREDICTOR_OPTIONS, "estimate_weight")
"""Options of a learned method: the :class:`~dlqsm.inference.Predictor`'s, and the weight of
the classical estimate a residual model refines (overrides the evaluation's)."""


@dataclass
class MethodSpec:
    """One method of an evaluation (see the module docstring)."""

    name: str
    kind: str
    method: str | None = None
    params: dict = field(default_factory=dict)
    padding: int = 0
    checkpoint: str | None = None
    options: dict = field(default_factory=dict)
    model_path: Path | None = field(default=None, repr=False, compare=False)
    """The checkpoint as resolved once by :func:`parse_method` (learned methods)."""

    def describe(self) -> dict:
        out = {"name": self.name, "kind": self.kind}
        if self.kind == "classical":
            out.update(method=self.method, params=self.params, padding=self.padding)
        else:
            out.update(checkpoint=self.checkpoint, options=self.options)
        return out


def _from_string(text: str) -> dict:
    from dlqsm.pipeline.inversion import METHODS

    if text in METHODS:
        return {"name": text, "kind": "classical", "method": text}
    looks_like_file = ("=" in text or "/" in text or text == "default" or Path(text).exists()
                       or Path(text).suffix in (".ckpt", ".pt", ".pth"))
    if not looks_like_file:
        raise InputError(f"unknown inversion method {text!r} (and no such checkpoint file).",
                         fix=f"use one of {', '.join(METHODS)}, or a checkpoint path.")
    name, sep, path = text.partition("=")
    if not sep:
        name, path = (Path(text).stem if text != "default" else "default"), text
    return {"name": name, "kind": "learned", "checkpoint": None if path == "default" else path}


def parse_method(item) -> MethodSpec:
    """A :class:`MethodSpec` from a dict or a short string, checked (before any work).

    Raises:
        InputError: unknown kind, inversion method or parameter; a missing checkpoint file;
            unknown predictor options.
    """
    from dlqsm.pipeline.inversion import METHODS, TOTAL_FIELD_METHODS, method_defaults
    from dlqsm.pipeline.inversion.regularization import accepts_auto

    d = _from_string(item) if isinstance(item, str) else dict(item or {})
    kind = d.get("kind") or ("learned" if d.get("checkpoint") else "classical")
    if kind not in KINDS:
        raise InputError(f"method {d.get('name')!r}: unknown kind {kind!r}.",
                         fix=f"use one of {', '.join(KINDS)}.")
    if kind == "classical":
        method = d.get("method") or d.get("name")
        if method not in METHODS:
            raise InputError(f"unknown inversion method {method!r}.",
                             fix=f"use one of {', '.join(METHODS)} (or kind: learned).")
        if method in TOTAL_FIELD_METHODS:
            raise InputError(f"{method} inverts the total field, but dlqsm evaluate gives every "
                             "method the local field.",
                             fix=f"run dlqsm reconstruct --method {method} on raw phase or a "
                             "total field (the independent-data suite does).")
        params = dict(d.get("params") or {})
        unknown = sorted(set(params) - set(method_defaults(method)))
        if unknown:
            raise InputError(f"method {d.get('name', method)!r}: unknown parameter(s) "
                             f"{unknown} for {method}.",
                             fix=f"valid ones: {', '.join(sorted(method_defaults(method)))}.")
        typed = {k: v for k, v in params.items()  # tv.alpha / medi.lam may be "auto"
                 if not accepts_auto(method, k, v)}
        check_parameter_types(typed, method_defaults(method),
                              what=f"method {d.get('name', method)!r} ({method})")
        return MethodSpec(name=str(d.get("name") or method), kind=kind, method=method,
                          params=params, padding=int(d.get("padding") or 0))
    ckpt = d.get("checkpoint")
    from dlqsm.models.loading import resolve_checkpoint

    model_path = resolve_checkpoint(ckpt)  # the one check of this path (None: the default)
    options = dict(d.get("options") or {})
    unknown = sorted(set(options) - set(LEARNED_OPTIONS))
    if unknown:
        raise InputError(f"method {d.get('name')!r}: unknown option(s) {unknown}.",
                         fix=f"valid ones: {', '.join(LEARNED_OPTIONS)}.")
    if "estimate_weight" in options:
        _check_estimate_weight(options["estimate_weight"], f"method {d.get('name')!r}")
    name = d.get("name") or (Path(ckpt).stem if ckpt else "default")
    return MethodSpec(name=str(name), kind=kind, checkpoint=None if ckpt is None else str(ckpt),
                      options=options, model_path=model_path)


def parse_methods(items) -> list[MethodSpec]:
    """Parse a list of methods; names must be unique and the list non-empty."""
    specs = [parse_method(i) for i in (items or [])]
    if not specs:
        raise InputError("no methods to evaluate.",
                         fix="give --methods tkd tv ... and/or --checkpoint PATH, or a config.")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"duplicate method names {dup}.", fix="give each method a name.")
    return specs


def _check_estimate_weight(value, what: str) -> str:
    """``value`` if it is one of :data:`dlqsm.inference.predictor.ESTIMATE_WEIGHTS`."""
    from dlqsm.inference.predictor import ESTIMATE_WEIGHTS

    if value not in ESTIMATE_WEIGHTS:
        raise InputError(f"{what}: unknown estimate_weight {value!r}.",
                         fix=f"use one of {', '.join(ESTIMATE_WEIGHTS)}.")
    return value


class MethodRunner:
    """Runs one method on cases: ``runner(case) -> (chi, seconds, info)``.

    chi is a float32 numpy array (ppm) on the case grid, referenced to its mean inside the
    mask and 0 outside. The time is the wall time of the reconstruction of that volume
    (CUDA synchronised), excluding model loading.

    ``estimate_weight``: for a learned model refining a classical inversion, the weight of
    that inversion ("by-input", "auto", "trained"; see the module docstring); a method's own
    ``options.estimate_weight`` wins. The weight used on each case is kept in
    :attr:`estimates` and reported by :meth:`describe`.
    """

    def __init__(self, spec: MethodSpec, device="cpu", progress: bool = False,
                 estimate_weight: str = "by-input"):
        self.spec = spec
        self.device = torch.device(device)
        self.progress = progress
        self.predictor = None
        self.estimate_weight, self.estimate_params = None, None
        self.estimates: list[dict] = []
        if spec.kind == "learned":
            from dlqsm.inference.predictor import Predictor, estimate_params

            options = dict(spec.options)
            self.estimate_weight = _check_estimate_weight(
                options.pop("estimate_weight", estimate_weight), f"method {spec.name!r}")
            self.predictor = Predictor(spec.model_path or spec.checkpoint, device=self.device,
                                       **options)
            # every case of an evaluation is a local field
            self.estimate_params = estimate_params(self.predictor, self.estimate_weight,
                                                   "local_field")

    def describe(self) -> dict:
        out = self.spec.describe()
        if self.predictor is not None:
            out["model"] = {"checkpoint": self.predictor.checkpoint,
                            "spec": self.predictor.describe()["spec"],
                            "network": self.predictor.metadata.get("network")}
            if getattr(self.predictor.net, "initial_estimate", None) is not None:
                out["initial_estimate"] = {
                    "estimate_weight": self.estimate_weight,
                    "params": self.estimate_params or "as trained",
                    "per_case": list(self.estimates)}
        return out

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, case) -> tuple[np.ndarray, float, dict]:
        field_t = torch.as_tensor(case.local_field, dtype=torch.float32, device=self.device)
        mask_t = torch.as_tensor(case.mask, device=self.device).bool()
        self._sync()
        t0 = time.perf_counter()
        if self.predictor is not None:
            out = self.predictor.run(field_t, mask_t, voxel_size=case.voxel_size,
                                     b0_dir=case.b0_dir, estimate_params=self.estimate_params)
            chi, info = out.chi, {k: v for k, v in out.info.items() if k != "timings_s"}
            self._note_estimate(case.name, info.get("initial_estimate_info"))
        else:
            chi, info = self._classical(field_t, mask_t, case)
        self._sync()
        seconds = time.perf_counter() - t0
        return chi.float().cpu().numpy(), seconds, info

    def _note_estimate(self, case_name: str, est: dict | None) -> None:
        """Keep the weight the model's classical estimate used on a case (for the record)."""
        from dlqsm.inference.predictor import estimate_weight_used

        if not est:
            return
        used = estimate_weight_used(est)
        entry = {"case": case_name, "method": est.get("method"),
                 **({used["parameter"]: used["value"]} if used else {})}
        aw = est.get("auto_weight")
        if aw:
            entry.update(auto=True, lam_gcv_mm2=aw.get("lam_gcv_mm2"),
                         gcv_noise_ppm=aw.get("gcv_noise_ppm"), clipped=aw.get("clipped"))
        self.estimates.append(entry)

    def _classical(self, field_t, mask_t, case):
        from dlqsm.pipeline.inversion import invert

        mag = None
        if case.magnitude is not None:
            mag = torch.as_tensor(case.magnitude, dtype=torch.float32, device=self.device)
        try:
            res = invert(field_t, mask_t, method=self.spec.method, voxel_size=case.voxel_size,
                         b0_dir=case.b0_dir, magnitude=mag, padding=self.spec.padding,
                         reference="mean", progress=self.progress, **self.spec.params)
        except ValueError as exc:
            raise InputError(f"method {self.spec.name!r} failed on {case.name}: {exc}") from exc
        info = {k: v for k, v in res.info.items() if k in ("iterations", "converged",
                                                             "parameters")}
        return res.chi, info
