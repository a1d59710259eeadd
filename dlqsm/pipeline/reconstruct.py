"""The classical QSM chain from a :class:`dlqsm.io.scan.Scan` to a susceptibility map.

Stages (each a pure torch function from its own module; this one only composes them):

1. ``coil``: coil combination, only for uncombined data (C, E, X, Y, Z) -> (E, X, Y, Z).
2. ``mask``: the user's mask if given (it always wins, unchanged); otherwise a brain mask from
   the magnitude (:func:`dlqsm.pipeline.masking.brain_mask`), later restricted to voxels whose
   echo fit is reliable (phase-quality mask from the fit residual) and eroded by
   ``mask_erosion_mm``.
3. ``unwrap``: multi-echo unwrapping (``romeo`` exact region growing, or ``laplacian``) after
   removing the phase offset at TE = 0, smoothed over ``unwrap.offset_smoothing_mm`` (2 mm;
   :data:`dlqsm.pipeline.unwrap.OFFSET_SMOOTHING_MM`).
4. ``echo_fit``: weighted least-squares fit of phase against TE (``wls``; ``nonlinear`` refines
   it on the complex signal) -> total field (ppm), the phase offset at TE = 0 and a noise map
   (std of the field, ppm). The data weight is the inverse noise map, set to 0 where the
   field jumps to a 6-neighbour by more than ``mask.max_field_step`` rad of phase at the first
   echo (:data:`MAX_FIELD_STEP_RAD`, and those voxels' neighbours): next to air and bone the
   later echoes alias between voxels and unwrapping can settle on a wrong multiple of 2 pi
   that the echo fit cannot see (consistent over echoes). Those voxels stay in the mask; chi
   there comes from the inversion's regulariser. ``info["mask"]["unreliable_voxels"]`` counts
   them. On qsm-forward heads (1.5 mm, 3 T, qsm-ci scorer) this took the default chain from
   160 % to 72 % NRMSE (fine-grid head) and from 430 % to 162 % (voxel-sharp head).
5. ``bfr``: background field removal -> local field (ppm) and its valid mask. After PDF (the
   default) the data weight is set to 0 within ``bfr.rim_mm`` (:data:`RIM_WEIGHT_MM`, 2 mm) of
   the mask edge, where background removal is least right; the rim stays in the mask and the
   map (``info["bfr"]["rim_voxels"]``).
6. ``inversion``: dipole inversion with the inverse noise map as the data weight; chi (ppm)
   referenced to its mean inside the final mask (whole-brain reference). After the chain's own
   background removal (``detrend=None``, auto) the eight susceptibility trends whose fields
   are harmonic inside the brain, which background removal takes out with the background
   (:mod:`dlqsm.pipeline.detrend`), are fitted to chi; their field is given back to the local
   field, the inversion runs once more and the trend still left is subtracted
   (``info["inversion"]["detrend"]``; issue 10's 1 mm qsm-forward 3 T head 54.8 -> 44.4 %
   NRMSE). A total field
   inversion (``tfi``, :data:`~dlqsm.pipeline.inversion.TOTAL_FIELD_METHODS`) replaces stages
   5 and 6: it takes the total field and fits background and brain sources together (no
   ``bfr`` stage; ``info["bfr"]`` says so; the local field is the total field minus its
   fitted background).

A total-field input starts at ``bfr``; a local-field input goes straight to ``inversion``,
where the default TV's weight is chosen per scan (``alpha="auto"``,
:data:`~dlqsm.pipeline.inversion.regularization.CHAIN_DEFAULTS`: measured better on every kind
of local field; from raw phase, with the rim weight, it had the lower NRMSE too but the lower
XSIM and a worse deep-grey-matter slope, so the fixed weight stays there and
``--param tv.alpha=auto`` asks for it).
Everything runs on ``device`` in float32; per-stage wall times (CUDA synchronised) and each
stage's ``info`` are returned. Progress lines go to stderr when ``progress`` is set.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from dlqsm.errors import InputError, check_parameter_types
from dlqsm.io.scan import Scan
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.units import phase_to_ppm, ppm_to_phase
from dlqsm.pipeline import background, inversion, masking, unwrap
from dlqsm.pipeline.detrend import fit_background_modes, subtract_trend
from dlqsm.pipeline.inversion.regularization import accepts_auto, chain_defaults

STAGES = ("coil", "mask", "unwrap", "echo_fit", "bfr", "inversion")
UNWRAP_METHODS = ("romeo", "laplacian")
ECHO_FIT_METHODS = ("wls", "nonlinear")
DEFAULT_BFR = background.DEFAULT_METHOD
DEFAULT_METHOD = "tv"
DEFAULT_MASK_EROSION_MM = 0.0
_CLOSED_FORMS = ("tkd", "tsvd", "tikhonov")
RIM_WEIGHT_MM = {"pdf": 2.0}
"""Rim of the final mask (mm; voxels within this distance of the first voxel outside it) whose
data weight the inversion sets to 0 after background removal, by background-removal method
(``bfr.rim_mm``; 0 for the methods not listed: the SMV-type ones and LBV drop their unreliable
rim from the mask themselves). PDF keeps the whole mask but is least right at its edge (the
local field of qsm-forward heads is off by ~0.009 ppm median within 2 mm of the edge, about
twice the local field itself). The voxels stay in the mask and in the
map (no erosion; chi there comes from the regulariser and the neighbours' data). On the 8 cases
of the independent suite it took the default chain's NRMSE down by 0.1-3.2 points (XSIM up or equal
on all 8; deep grey matter slope within 0.02), on a second phantom seed by 0.4-9.9
(docs/benchmarks/independent.md, "Rim weight"). ``bfr.rim_mm=0`` turns it off; a local-field
input (no background removal here) keeps its given rim."""
THICK_SLICE_ASPECT = 1.9
"""Largest / smallest voxel size from which PDF adds a notice that V-SHARP may be the safer
background method (measured on two 1.5x1.5x3 mm qsm-forward heads; isotropic heads favour PDF)."""

MAX_FIELD_STEP_RAD = 1.0
"""Largest trusted field step between 6-neighbours, in rad of phase at the first echo (raw
input): steeper voxels (and their neighbours) get zero data weight but stay in the mask
(:func:`dlqsm.pipeline.masking.field_step_mask`). None turns the check off."""


@dataclass
class ReconstructionResult:
    """Output of :func:`reconstruct`; volumes are (X, Y, Z) tensors on the chosen device.

    Attributes:
        chimap: susceptibility (ppm), referenced to its mean inside ``mask``, 0 outside.
        mask: bool, the voxels chimap covers (the brain mask after any background-removal
            erosion).
        total_field: total field (ppm) for raw input, else the given one or None.
        local_field: local field (ppm) (the given one for local-field input).
        noise: std of the total field (ppm) from the echo fit, raw input only.
        weight: the data weight given to the inversion (inverse noise, mean 1 in the mask).
        timings: wall seconds per stage that ran, plus ``"total"``.
        info: per-stage ``info`` dicts of the stage functions.
        parameters: every stage's method and parameters, defaults included.
        notices: remarks for the user (assumptions, fallbacks).
    """

    chimap: torch.Tensor | None
    mask: torch.Tensor
    total_field: torch.Tensor | None = None
    local_field: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    timings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    notices: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# parameters


def _kwonly_defaults(fn, exclude=()) -> dict:
    sig = inspect.signature(fn)
    return {k: p.default for k, p in sig.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in exclude}


def _stage_defaults(stage: str, method: str | None) -> dict:
    if stage == "mask":
        out = _kwonly_defaults(masking.brain_mask)
        out.update(quality=True, quality_threshold=None, max_field_step=MAX_FIELD_STEP_RAD)
        return out
    if stage == "unwrap":
        return _kwonly_defaults(unwrap.unwrap_multi_echo, exclude=("method", "voxel_size"))
    if stage == "echo_fit":
        return _echo_fit_defaults()
    if stage == "coil":
        return _coil_defaults()
    if stage == "bfr":
        return {**background.method_defaults(method), "rim_mm": RIM_WEIGHT_MM.get(method, 0.0)}
    if stage == "inversion":
        return {"padding": 0, **inversion.method_defaults(method)}
    raise InputError(f"unknown stage {stage!r}.", fix=f"use one of {', '.join(STAGES)}.")


def stages_for(kind: str, has_coils: bool = False, *, invert: bool = True,
               method: str | None = None) -> tuple[str, ...]:
    """The stages that run for a scan of ``kind`` ("raw", "total_field", "local_field").

    ``invert=False`` leaves out dipole inversion (field mapping for learned inference). An
    inversion ``method`` of :data:`~dlqsm.pipeline.inversion.TOTAL_FIELD_METHODS` (``tfi``)
    takes the total field itself: no ``bfr`` stage.
    """
    if kind == "local_field":
        stages = ("inversion",)
    elif kind == "total_field":
        stages = ("bfr", "inversion")
    else:
        stages = STAGES if has_coils else STAGES[1:]
    if invert and method in inversion.TOTAL_FIELD_METHODS:
        stages = tuple(s for s in stages if s != "bfr")
    return stages if invert else stages[:-1]


def resolve_parameters(kind: str = "raw", *, has_coils: bool = False, unwrap: str = "romeo",
                       echo_fit: str = "wls", bfr: str = DEFAULT_BFR,
                       method: str | None = DEFAULT_METHOD,
                       stage_params: dict | None = None) -> dict:
    """Every parameter of the stages that will run, defaults filled in.

    Args:
        kind, has_coils: what the scan is (see :func:`stages_for`).
        unwrap, echo_fit, bfr, method: the method of each stage; ``method=None`` stops before
            dipole inversion.
        stage_params: ``{stage: {name: value}}`` overrides; stage names are those of
            :data:`STAGES`.

    Returns:
        ``{stage: {"method": ..., **parameters}}`` for each stage that runs.

    Raises:
        InputError: unknown methods, stages or parameter names (before any work is done).
    """
    if not (isinstance(stage_params, CheckedParameters)
            and stage_params.methods == (unwrap, echo_fit, bfr, method)):
        stage_params = check_parameters(stage_params, unwrap=unwrap, echo_fit=echo_fit, bfr=bfr,
                                        method=method)
    methods = _method_table(unwrap, echo_fit, bfr, method)
    out = {}
    if kind == "local_field" and method in inversion.TOTAL_FIELD_METHODS:
        raise InputError(f"inversion method {method!r} needs the total field (raw phase or "
                         "--total-field), but a local field was given.",
                         fix="give the raw phase or the total field, or use --method tv.")
    for stage in stages_for(kind, has_coils, invert=method is not None, method=method):
        defaults = _stage_defaults(stage, methods[stage])
        if stage == "inversion":  # e.g. TV's weight chosen per scan for a local-field input
            defaults.update(chain_defaults(methods[stage], kind))
        out[stage] = {"method": methods[stage], **defaults, **stage_params.get(stage, {})}
    ignored = sorted(set(stage_params) - set(out))
    if ignored and any(stage_params[s] for s in ignored):
        warnings.warn(f"parameters for stages that do not run on {kind} input are ignored: "
                      f"{ignored}", stacklevel=2)
    return out


class CheckedParameters(dict):
    """``{stage: {name: value}}`` as returned by :func:`check_parameters`: checked for the
    methods in ``methods`` (unwrap, echo_fit, bfr, method). :func:`resolve_parameters` (and so
    :func:`reconstruct`) trusts it for the same methods instead of checking again, so that a
    command that checks its ``--param`` values before loading data checks them once."""

    def __init__(self, params: dict, methods: tuple):
        super().__init__(params)
        self.methods = methods


def _methods(unwrap, echo_fit, bfr, method) -> dict:
    _check_choice("unwrapping method", unwrap, UNWRAP_METHODS)
    _check_choice("echo fit", echo_fit, ECHO_FIT_METHODS)
    _check_choice("background removal method", bfr, tuple(background.METHODS))
    if method is not None:
        _check_choice("inversion method", method, tuple(inversion.METHODS))
    return _method_table(unwrap, echo_fit, bfr, method)


def _method_table(unwrap, echo_fit, bfr, method) -> dict:
    return {"coil": None, "mask": None, "unwrap": unwrap, "echo_fit": echo_fit, "bfr": bfr,
            "inversion": method}


def check_parameters(stage_params: dict | None, *, unwrap: str = "romeo", echo_fit: str = "wls",
                     bfr: str = DEFAULT_BFR, method: str | None = DEFAULT_METHOD) -> dict:
    """Check method names and the *given* stage parameters (cheap; before loading data).

    Returns:
        ``{stage: dict(params)}`` (a copy, a :class:`CheckedParameters` that
        :func:`reconstruct` does not check again). Raises InputError naming the bad stage or
        key.
    """
    methods = _methods(unwrap, echo_fit, bfr, method)
    stage_params = {k: dict(v or {}) for k, v in (stage_params or {}).items()}
    unknown_stages = sorted(set(stage_params) - set(STAGES))
    if unknown_stages:
        raise InputError(f"unknown stage(s) {unknown_stages} in the parameters.",
                         fix=f"use one of {', '.join(STAGES)} (e.g. --param bfr.tol=0.01).")
    for stage, given in stage_params.items():
        if not given:
            continue
        if stage == "inversion" and method is None:
            raise InputError("inversion parameters given, but no dipole inversion runs here.",
                             fix="drop the --param values without a stage prefix.")
        defaults = _stage_defaults(stage, methods[stage])
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            name = f"{stage} ({methods[stage]})" if methods[stage] else stage
            raise InputError(f"unknown parameter(s) {unknown} for {name}.",
                             fix=f"valid ones: {', '.join(sorted(defaults)) or 'none'}.")
        typed = {k: v for k, v in given.items()  # "auto" weights (tv.alpha, medi.lam)
                 if not (stage == "inversion" and accepts_auto(methods[stage], k, v))}
        check_parameter_types(typed, defaults, what=f"{stage} ({methods[stage]})"
                              if methods[stage] else stage)
        for key in NONNEGATIVE_MM.get(stage, ()):
            if key in given:
                _check_nonnegative_mm(stage, key, given[key])
    return CheckedParameters(stage_params, (unwrap, echo_fit, bfr, method))


NONNEGATIVE_MM = {"unwrap": ("offset_smoothing_mm",), "bfr": ("rim_mm",)}
"""Chain parameters that are distances in mm >= 0 (0 turns the step off); checked with the
parameters, before any data is loaded."""


def _check_nonnegative_mm(stage: str, key: str, value) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0):
        raise InputError(f"{stage}.{key} must be a number of mm >= 0, got {value!r}.",
                         fix=f"use e.g. --param {stage}.{key}=2 (0 turns it off).")


def _check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}.", fix=f"use one of {', '.join(choices)}.")


def resolve_device(device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, a torch.device, or ``"auto"``/None (CUDA when
    available, else CPU) -> torch.device, checked."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}.", fix="use cpu or cuda.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but is not available here.",
                         fix="use --device cpu (or install a CUDA build of torch).")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"there is no {dev} here ({torch.cuda.device_count()} CUDA devices).",
                         fix="use --device cuda (the first) or a smaller index.")
    return dev


# --------------------------------------------------------------------------------------------
# progress and timing


class _Clock:
    """Times stages (synchronising CUDA) and prints one progress line per stage to stderr."""

    def __init__(self, device: torch.device, progress: bool, n_stages: int, hook=None):
        self.device, self.progress, self.n, self.hook = device, progress, n_stages, hook
        self.timings: dict[str, float] = {}
        self.i = 0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str, method: str | None = None):
        self.i += 1
        label = f"{name} ({method})" if method else name
        if self.progress:
            print(f"dlqsm: [{self.i}/{self.n}] {label} ...", file=sys.stderr, flush=True)
        self._sync()
        with self.hook(name) if self.hook is not None else nullcontext():
            t0 = time.perf_counter()
            yield
            self._sync()
            dt = time.perf_counter() - t0
        self.timings[name] = dt
        if self.progress:
            print(f"dlqsm: [{self.i}/{self.n}] {label} done in {dt:.2f} s", file=sys.stderr,
                  flush=True)


# --------------------------------------------------------------------------------------------
# the chain


def _tensor(x, device, dtype=torch.float32) -> torch.Tensor | None:
    if x is None:
        return None
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(device=device, dtype=dtype)


def reconstruct(scan: Scan, *, unwrap: str = "romeo", echo_fit: str = "wls",
                bfr: str = DEFAULT_BFR, method: str | None = DEFAULT_METHOD,
                mask_erosion_mm: float = DEFAULT_MASK_EROSION_MM, device="cpu",
                progress: bool = True, stage_params: dict | None = None, stage_hook=None,
                detrend: bool | None = None) -> ReconstructionResult:
    """Run the classical QSM chain on a scan (see the module docstring for the stages).

    Args:
        scan: raw (phase rad (E, X, Y, Z) or (C, E, X, Y, Z), TE s, B0 T), total-field or
            local-field (ppm) input with its geometry (B0 direction in voxel coordinates, mm).
        unwrap: ``"romeo"`` or ``"laplacian"``. echo_fit: ``"wls"``.
        bfr: background removal method (:data:`dlqsm.pipeline.background.METHODS`).
        method: inversion method (:data:`dlqsm.pipeline.inversion.METHODS`), or None to stop
            after background removal (``chimap`` is then None): the field mapping that learned
            inference runs before its network.
        mask_erosion_mm: erosion of a *computed* mask (a user mask is used as given).
        device: where to compute ("cpu", "cuda", ...).
        progress: one line per stage on stderr, and the stages' own progress bars.
        stage_params: ``{stage: {parameter: value}}`` (see :func:`resolve_parameters`).
        stage_hook: optional ``hook(stage_name)`` returning a context manager entered around
            each stage (e.g. to measure memory); called after CUDA synchronisation.
        detrend: subtract from chi the linear and quadratic trends whose fields background
            removal cannot tell from background (:mod:`dlqsm.pipeline.detrend`); None (auto):
            when this chain removed the background (raw or total-field input, not ``tfi``).
            Recorded in ``info["inversion"]["detrend"]``.

    Returns:
        :class:`ReconstructionResult` with chi in ppm (mean 0 inside its mask).

    Raises:
        InputError: bad methods or parameters (before any work), or a stage's input error.
    """
    params = resolve_parameters(scan.kind, has_coils=scan.has_coils, unwrap=unwrap,
                                echo_fit=echo_fit, bfr=bfr, method=method,
                                stage_params=stage_params)
    if "mask" in params:
        params["mask"]["method"] = "user" if scan.mask is not None else "magnitude"
        params["mask"]["erosion_mm"] = 0.0 if scan.mask is not None else float(mask_erosion_mm)
    if mask_erosion_mm < 0:
        raise InputError(f"mask erosion must be >= 0 mm, got {mask_erosion_mm}.")
    if detrend not in (None, True, False):
        raise InputError(f"detrend must be true, false or None (auto), got {detrend!r}.")
    dev = resolve_device(device)
    clock = _Clock(dev, progress, len(params), stage_hook)
    state = _State(scan, dev, params, clock, progress, float(mask_erosion_mm))
    state.given = {k: dict(v or {}) for k, v in (stage_params or {}).items()}
    state.detrend = detrend_by_default(params) if detrend is None else bool(detrend)
    t0 = time.perf_counter()
    if scan.kind == "raw":
        state.field_mapping()
    if "bfr" in params:
        state.background()
    elif scan.kind in ("raw", "total_field"):  # a total-field inversion (tfi)
        state.info["bfr"] = {"method": None, "skipped": f"the inversion ({method}) fits "
                             "background and brain sources to the total field in one step"}
    if method is not None:
        state.invert()
    clock.timings["total"] = time.perf_counter() - t0
    return state.result()


def detrend_by_default(params: dict) -> bool:
    """Whether the chain removes background-invisible trends unless told (``detrend=None``):
    when it ran a background removal itself (``bfr`` among the resolved ``params``)."""
    return "bfr" in params


class _State:
    """The data flowing through the chain, one method per stage."""

    def __init__(self, scan: Scan, dev, params, clock, progress, erosion_mm):
        self.scan, self.dev, self.params, self.clock = scan, dev, params, clock
        self.progress, self.erosion_mm = progress, erosion_mm
        self.vox = scan.grid.voxel_size  # validated once by the Scan; trusted below
        self.b0_dir = scan.grid.b0_dir
        self.info: dict = {}
        self.notices: list[str] = []
        self.mask = _tensor(scan.mask, dev, torch.bool)
        self.user_mask = self.mask is not None
        self.magnitude = _tensor(scan.magnitude, dev)
        self.total_field = _tensor(scan.total_field, dev)
        self.local_field = _tensor(scan.local_field, dev)
        self.noise = self.weight = self.chimap = None
        self.given: dict = {}
        self.detrend = False

    # -- field mapping ---------------------------------------------------------------------
    def field_mapping(self) -> None:
        scan, p = self.scan, self.params
        phase = _tensor(scan.phase, self.dev)
        mag = self.magnitude
        if scan.has_coils:
            with self.clock.stage("coil"):
                mag, phase, self.info["coil"] = _combine_coils(mag, phase, scan, p["coil"])
            self.magnitude = mag
        with self.clock.stage("mask", "user" if self.user_mask else "magnitude"):
            self._brain_mask(mag)
        with self.clock.stage("unwrap", p["unwrap"]["method"]):
            kw = {k: v for k, v in p["unwrap"].items() if k != "method"}
            unwrapped = unwrap.unwrap_multi_echo(phase, scan.te, mag, self.mask,
                                                 method=p["unwrap"]["method"],
                                                 voxel_size=self.vox, **kw)
            self.info["unwrap"] = {"method": p["unwrap"]["method"], "echoes": int(phase.shape[0])}
        del phase
        if unwrapped.shape[0] == 1:
            self.notices.append("single echo: the phase offset at TE = 0 cannot be separated "
                                "from the field; it stays in the total field (background "
                                "removal takes out its smooth part).")
        with self.clock.stage("echo_fit", p["echo_fit"]["method"]):
            fit = _fit_echoes(unwrapped, mag, self.mask, scan, p["echo_fit"])
            self.total_field, self.noise = fit["field"], fit["noise"]
            self.info["echo_fit"] = fit["info"]
            if not self.user_mask:
                self._quality_mask(fit.get("residual"))
        self.weight = _noise_weight(self.noise, self.mask)
        self._field_step_weight()

    def _brain_mask(self, mag) -> None:
        if self.user_mask:
            self.info["mask"] = {"source": "user", "voxels": int(self.mask.sum())}
            return
        if mag is None:
            raise InputError("no mask and no magnitude to compute one from.",
                             path=self.scan.sources.get("phase"),
                             fix="give --mask or the magnitude images.")
        kw = {k: v for k, v in self.params["mask"].items()
              if k not in ("method", "quality", "quality_threshold", "erosion_mm",
                           "max_field_step")}
        self.mask = masking.brain_mask(mag, self.vox, **kw)
        self.info["mask"] = {"source": "magnitude", "voxels": int(self.mask.sum())}

    def _quality_mask(self, residual) -> None:
        p = self.params["mask"]
        if p["quality"] and residual is not None:
            self.mask = masking.phase_quality_mask(self.mask, residual=residual,
                                                   threshold=p["quality_threshold"])
        if self.erosion_mm > 0:
            self.mask = masking.require_nonempty(
                masking.erode_mask(self.mask, self.erosion_mm, self.vox),
                f"the brain mask eroded by {self.erosion_mm} mm",
                fix="use a smaller --mask-erosion.")
        self.info["mask"].update(final_voxels=int(self.mask.sum()),
                                 erosion_mm=self.erosion_mm, quality=bool(p["quality"]))

    def _field_step_weight(self) -> None:
        """Zero the data weight where the field jumps between neighbours (see
        :data:`MAX_FIELD_STEP_RAD`); the voxels stay in the mask."""
        step = self.params["mask"].get("max_field_step")
        if step is None or self.weight is None:
            return
        if not (isinstance(step, (int, float)) and step > 0):
            raise InputError(f"mask.max_field_step must be a positive number of rad or None, "
                             f"got {step!r}.")
        te1 = float(np.min(self.scan.te))
        step_ppm = float(phase_to_ppm(float(step), te1, self.scan.field_strength))
        bad = masking.field_step_mask(self.total_field, self.mask, step_ppm)
        n_bad = int(bad.sum())
        self.info["mask"].update(field_step_ppm=step_ppm, unreliable_voxels=n_bad)
        if n_bad and n_bad < int(self.mask.sum()):
            self._zero_weight(bad)

    def _zero_weight(self, drop: torch.Tensor) -> None:
        """Data weight 0 on ``drop`` (voxels stay in the mask), renormalised to mean 1 in the
        mask; a missing weight starts as the mask. Kept as it was if nothing would be left."""
        w = self.weight if self.weight is not None else self.mask.float()
        w = torch.where(drop, torch.zeros_like(w), w)
        mean = float(w[self.mask].mean())
        if mean > 0:
            self.weight = w / mean

    # -- background removal ----------------------------------------------------------------
    def background(self) -> None:
        p = dict(self.params["bfr"])
        name, rim_mm = p.pop("method"), p.pop("rim_mm")
        with self.clock.stage("bfr", name):
            res = background.remove_background(
                self.total_field, self.mask, method=name, voxel_size=self.vox,
                b0_dir=self.b0_dir, weight=self.weight, progress=self.progress, **p)
        self.local_field, self.info["bfr"] = res.local_field, res.info
        dropped = int(self.mask.sum()) - int(res.mask.sum())
        if dropped > 0:
            self.notices.append(f"background removal ({name}) dropped {dropped} rim voxels of "
                                "the mask; chimap is 0 there (use --bfr pdf for full coverage).")
        self.mask = res.mask
        aspect = max(self.vox) / min(self.vox)
        if name == "pdf" and aspect >= THICK_SLICE_ASPECT:
            self.notices.append(
                f"voxels {'x'.join(f'{v:g}' for v in self.vox)} mm ({aspect:.1f}:1): PDF was "
                "unreliable on such thick-slice heads (qsm-forward, 1.5x1.5x3 mm: 116-170 % "
                "NRMSE against 88-92 % with --bfr vsharp; docs/benchmarks/independent.md, "
                "'Thick slices'); compare with --bfr vsharp.")
        self._rim_weight(rim_mm)

    def _rim_weight(self, rim_mm) -> None:
        """Zero the data weight within ``rim_mm`` of the mask edge (:data:`RIM_WEIGHT_MM`;
        a given value was checked with the parameters, :data:`NONNEGATIVE_MM`)."""
        inner = masking.erode_mask(self.mask, float(rim_mm), self.vox)  # 0 mm: the mask
        n_rim = int(self.mask.sum()) - int(inner.sum())
        if n_rim and not inner.any():
            self.notices.append(f"the mask is thinner than the {rim_mm:g} mm rim: its data "
                                "weight was kept (no voxel would have been left).")
            n_rim = 0
        elif n_rim:
            self._zero_weight(self.mask & ~inner)
        self.info["bfr"].update(rim_mm=float(rim_mm), rim_voxels=n_rim)

    # -- inversion -------------------------------------------------------------------------
    def invert(self) -> None:
        p = dict(self.params["inversion"])
        name, padding = p.pop("method"), p.pop("padding")
        if name in ("medi", "ndi") and self.scan.kind == "raw" and "phase_scale" not in (
                self.given.get("inversion", {})):
            p["phase_scale"] = _phase_scale(self.scan)
            self.params["inversion"]["phase_scale"] = p["phase_scale"]
        weight = None if name in _CLOSED_FORMS else self.weight
        mag = _magnitude_3d(self.magnitude)
        total = name in inversion.TOTAL_FIELD_METHODS
        field_in = self.total_field if total else self.local_field

        def run(f):
            return inversion.invert(f, self.mask, method=name, voxel_size=self.vox,
                                    b0_dir=self.b0_dir, weight=weight, magnitude=mag,
                                    padding=padding, reference="mean", progress=self.progress,
                                    **p)

        with self.clock.stage("inversion", name):
            res = run(field_in)
            chi = res.chi
            res.info["detrend"] = {"applied": False}
            if self.detrend:
                chi, res = self._detrend(chi, res, field_in, padding, run)
        if total:  # its fitted background, as a local field for the outputs
            background_field = res.info.pop("background_field")
            self.local_field = (self.total_field - background_field) * self.mask
        self.chimap, self.info["inversion"] = chi, res.info
        self.params["inversion"].update(
            {k: v for k, v in res.info.get("parameters", {}).items()
             if k in self.params["inversion"]})

    def _detrend(self, chi, res, field_in, padding, run):
        """Fit the background-invisible trend, give its field back to the field the
        inversion explained (background removal took it), invert once more, and subtract the
        trend that is still left (:mod:`dlqsm.pipeline.detrend`)."""
        kw = {"voxel_size": self.vox, "b0_dir": self.b0_dir}
        trend, first = fit_background_modes(chi, self.mask, **kw)
        op = DipoleOperator(tuple(self.mask.shape), self.vox, self.b0_dir, padding=padding,
                            device=chi.device)
        restored = (field_in - op.forward(trend)) * self.mask
        again = run(restored)
        trend2, fit = fit_background_modes(again.chi, self.mask, **kw)
        again.info["detrend"] = {
            "applied": True, "reinverted": True, **fit,
            "first_fit": {k: first[k] for k in ("coefficients_ppm", "trend_rms_ppm",
                                                "trend_range_ppm", "iterations", "converged")},
            "first_inversion": {k: res.info.get(k) for k in ("iterations", "converged",
                                                             "time_s")}}
        return subtract_trend(again.chi, trend2, self.mask), again

    def result(self) -> ReconstructionResult:
        return ReconstructionResult(
            chimap=self.chimap, mask=self.mask, total_field=self.total_field,
            local_field=self.local_field, noise=self.noise, weight=self.weight,
            timings=dict(self.clock.timings), info=self.info, parameters=self.params,
            notices=self.notices)


# --------------------------------------------------------------------------------------------
# adapters to the stage modules


def _coil_defaults() -> dict:
    from dlqsm.pipeline import coil

    return _kwonly_defaults(coil.combine_coils, exclude=("magnitude", "phase", "voxel_size",
                                                          "mask"))


def _combine_coils(mag, phase, scan: Scan, params: dict):
    from dlqsm.pipeline import coil

    if mag is None:
        mag = torch.ones_like(phase)
    out = coil.combine_coils(None, scan.te, magnitude=mag, phase=phase,
                             voxel_size=scan.grid.voxel_size, method=params["method"],
                             smoothing_mm=params["smoothing_mm"])
    return out.magnitude, out.phase, {"method": out.method, "coils": int(phase.shape[0])}


def _echo_fit_defaults() -> dict:
    from dlqsm.pipeline import echoes

    return _kwonly_defaults(echoes.fit_echoes, exclude=("nonlinear",))


def _fit_echoes(unwrapped, mag, mask, scan: Scan, params: dict) -> dict:
    """Total field, noise map (ppm) and fit residual (rad); ``nonlinear`` refines the WLS fit
    on the complex signal."""
    from dlqsm.pipeline import echoes

    kw = {k: v for k, v in params.items() if k != "method"}
    fit = echoes.fit_echoes(unwrapped, scan.te, scan.field_strength, mag, mask,
                            nonlinear=params["method"] == "nonlinear", **kw)
    return {"field": fit.field_ppm, "noise": fit.noise_ppm, "residual": fit.residual,
            "info": {"method": params["method"], "noise_std": fit.noise_std}}


def _noise_weight(noise: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor | None:
    """Inverse noise std, mean 1 inside the mask (:func:`dlqsm.pipeline.echoes.data_weight`)."""
    from dlqsm.pipeline import echoes

    return None if noise is None else echoes.data_weight(noise, mask)


def _magnitude_3d(mag: torch.Tensor | None) -> torch.Tensor | None:
    """(E, X, Y, Z) -> root-sum-of-squares (X, Y, Z); (X, Y, Z) unchanged."""
    if mag is None:
        return None
    return torch.sqrt((mag.float() ** 2).sum(0)) if mag.dim() == 4 else mag.float()


def _phase_scale(scan: Scan) -> float:
    """rad per ppm at the scan's field strength and mean echo time (MEDI/NDI nonlinearity)."""
    return float(ppm_to_phase(1.0, float(np.mean(scan.te)), scan.field_strength))
