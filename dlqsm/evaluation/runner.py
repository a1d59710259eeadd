"""Run methods on test cases and write the comparison.

:func:`evaluate` runs every method on every case and writes to the output folder:

* ``metrics.csv``: one row per case and method (all metrics, time per volume);
* ``summary.csv``: per method, mean and standard deviation over the cases;
* ``roi_means.csv``: per case, method and ROI, the referenced ROI means (ppm) and their error;
* ``summary.md``: the summary and per-ROI error tables in markdown;
* ``figures/<case>_montage.png``, ``figures/<case>_error.png``, ``figures/roi_scatter.png``;
* ``maps/<case>/<method>.nii.gz`` when ``save_maps`` (chi in ppm, the case's affine);
* ``record.json``: the configuration, methods, cases, software versions and device.

Nothing is overwritten without ``force``; every file is written atomically.
:func:`run_evaluation` does the same from one configuration dict (``configs/evaluate.yaml``).
"""

from __future__ import annotations

import datetime
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlqsm.errors import InputError
from dlqsm.evaluation import figures as figs
from dlqsm.evaluation.cases import EVAL_SEED_BASE, EvalCase, folder_cases, simulated_heads
from dlqsm.evaluation.methods import MethodRunner, MethodSpec, parse_methods
from dlqsm.evaluation.report import markdown, score, summarize, to_csv
from dlqsm.io.atomic import write_text_atomic

TABLES = ("metrics.csv", "summary.csv", "roi_means.csv", "summary.md", "record.json")


@dataclass
class EvaluationResult:
    """What :func:`evaluate` computed and wrote."""

    rows: list[dict]
    summary: list[dict]
    roi_rows: list[dict]
    files: list[Path] = field(default_factory=list)
    out_dir: Path | None = None


def _planned_files(cases, methods, figures: bool, save_maps: bool) -> list[str]:
    names = list(TABLES)
    if figures:
        names += [f"figures/{c.name}_{k}.png" for c in cases for k in ("montage", "error")]
        names.append("figures/roi_scatter.png")
    if save_maps:
        names += [f"maps/{c.name}/{m.name}.nii.gz" for c in cases for m in methods]
    return names


def _check_case(case: EvalCase) -> None:
    for what, vol in (("reference", case.reference), ("mask", case.mask)):
        if vol is None:
            raise InputError(f"case {case.name}: no {what} map (ground truth is required).")
        if tuple(vol.shape) != tuple(case.local_field.shape):
            raise InputError(f"case {case.name}: {what} grid {tuple(vol.shape)} differs from "
                             f"the local field's {tuple(case.local_field.shape)}.",
                             fix="resample it onto the field's grid.")
    if case.labels is not None and case.labels.shape != case.local_field.shape:
        raise InputError(f"case {case.name}: label grid differs from the local field's.")


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"dlqsm evaluate: {text}", file=sys.stderr, flush=True)


def evaluate(methods, cases: list[EvalCase], out, *, device="cpu", force: bool = False,
             figures: bool = True, save_maps: bool = False, progress: bool = True,
             title: str = "dlqsm evaluation", config: dict | None = None,
             runners: list | None = None,
             estimate_weight: str = "by-input") -> EvaluationResult:
    """Run ``methods`` on ``cases`` and write tables and figures to ``out``.

    Args:
        methods: :class:`MethodSpec` objects, dicts or short strings (see
            :mod:`dlqsm.evaluation.methods`).
        cases: :class:`EvalCase` objects (ground truth included).
        out: output folder.
        device: where methods run ("cpu", "cuda", ...).
        force: overwrite existing outputs.
        figures: write the PNG figures.
        save_maps: also write every reconstruction as NIfTI.
        progress: one line per reconstruction on stderr.
        config: the configuration to store in ``record.json``.
        runners: :class:`MethodRunner` objects already built for ``methods`` (models loaded),
            else built here.
        estimate_weight: weight of the classical estimate a learned residual model refines
            ("by-input", as ``dlqsm infer``: the per-scan weight for these local fields;
            "auto"; "trained"); used when the runners are built here.

    Raises:
        InputError: no cases, bad methods or cases (checked before any reconstruction).
        OutputExistsError: outputs exist and ``force`` is False.
    """
    from dlqsm.io.outputs import OutputDir, software_versions

    specs = [m if isinstance(m, MethodSpec) else None for m in methods]
    if any(s is None for s in specs):
        specs = parse_methods(methods)
    if not cases:
        raise InputError("no test cases.", fix="give --heads N and/or --data DIR.")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise InputError(f"duplicate case names {names}.")
    for c in cases:
        _check_case(c)
    outdir = OutputDir(out, force=force)
    outdir.check(_planned_files(cases, specs, figures, save_maps))
    runners = runners or [MethodRunner(s, device=device, estimate_weight=estimate_weight)
                          for s in specs]
    rows, roi_rows, files = [], [], []
    for ci, case in enumerate(cases, 1):
        chis = {}
        for runner in runners:
            chi, seconds, info = runner(case)
            metrics, rois = score(chi, case)
            row = {"case": case.name, "method": runner.spec.name, "kind": runner.spec.kind,
                   "time_s": seconds, **metrics}
            rows.append(row)
            roi_rows += [{"case": case.name, "method": runner.spec.name, **r} for r in rois]
            chis[runner.spec.name] = chi
            _say(progress, f"[{ci}/{len(cases)}] {case.name} {runner.spec.name}: "
                           f"NRMSE {metrics['nrmse']:.1f}%, {seconds:.2f} s")
            if save_maps:
                files.append(outdir.nifti(f"maps/{case.name}/{runner.spec.name}.nii.gz",
                                          chi, case.affine))
        if figures:
            fig_dir = outdir.path / "figures"
            ref = getattr(case, "reference_name", "truth")
            files.append(figs.montage(case, chis, fig_dir / f"{case.name}_montage.png",
                                      reference_name=ref))
            files.append(figs.error_maps(case, chis, fig_dir / f"{case.name}_error.png",
                                         reference_name=ref))
    summary = summarize(rows)
    if figures:
        files.append(_scatter(roi_rows, outdir.path / "figures/roi_scatter.png"))
    roi_names = list(dict.fromkeys(r["name"] for r in roi_rows))
    notes = _notes(cases, device)
    files += [write_text_atomic(outdir.path / "metrics.csv", to_csv(rows)),
              write_text_atomic(outdir.path / "summary.csv", to_csv(summary)),
              write_text_atomic(outdir.path / "roi_means.csv", to_csv(roi_rows)),
              write_text_atomic(outdir.path / "summary.md",
                                markdown(summary, roi_names, title=title, notes=notes))]
    record = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"),
              "config": config, "device": str(device),
              "methods": [r.describe() for r in runners],
              "cases": [{"name": c.name, "shape": list(c.local_field.shape),
                         "voxel_size": list(c.voxel_size), "b0_dir": list(c.b0_dir),
                         "roi_ids": c.roi_ids, **c.source} for c in cases],
              "software": software_versions(), "notes": notes}
    files.append(outdir.json("record.json", record))
    return EvaluationResult(rows, summary, roi_rows, files, outdir.path)


def _scatter(roi_rows, path):
    if not roi_rows:  # no labels: an empty placeholder figure keeps the file list stable
        return figs.roi_scatter([{"method": "-", "reference_ppm": 0.0, "method_ppm": 0.0}],
                                path, title="ROI means (no ROI labels in the test data)")
    return figs.roi_scatter(roi_rows, path)


def _notes(cases, device) -> list[str]:
    notes = ["Metrics inside each case's mask; both maps referenced to their mask mean. "
             "NRMSE, dNRMSE, HFEN in percent (0 best); SSIM, XSIM (1 best); DGM linearity "
             "|1 - slope| of ROI means (0 best); time = wall time per volume on "
             f"{device}, model loading excluded.",
             "Values are mean ± standard deviation over cases."]
    if any(c.source.get("kind") == "simulated head" for c in cases):
        notes.append(f"Simulated heads: phantom seeds >= {EVAL_SEED_BASE}, held out from "
                     "training (whose samples use hashed 63-bit seeds); local field = dipole "
                     "field of the brain's susceptibility (dipole-inversion track); ROIs are "
                     "the deep grey matter nuclei.")
    return notes


# --------------------------------------------------------------------------------------------
# From a configuration (configs/evaluate.yaml, or dlqsm evaluate's flags)
# --------------------------------------------------------------------------------------------

DEFAULT_CONFIG = {
    "methods": ["tkd", "tv"],
    "data": {"heads": {"count": 3, "shape": [164, 205, 205], "voxel_size": [1.0, 1.0, 1.0],
                       "seed": EVAL_SEED_BASE, "b0_tilt_deg": 0.0, "noise_std": 0.0},
             "folders": []},
    "out_dir": "evaluation",
    "device": "cpu",
    "figures": True,
    "save_maps": False,
    "force": False,
    "progress": True,
    "title": "dlqsm evaluation",
    "estimate_weight": "by-input",
}


RENAMED_KEYS = {"output": "out_dir"}
"""Configuration keys renamed (old -> new); the old names are accepted, with a warning, for one
release."""


def renamed_config_keys(config: dict) -> dict:
    """``config`` with the deprecated keys of :data:`RENAMED_KEYS` under their new names.

    Each old key that is set (not None) gives a ``DeprecationWarning`` and a line on stderr,
    and its value replaces the new key's (``configs/evaluate.yaml`` sets ``out_dir`` and
    ``output: null``, so a Hydra override ``output=DIR`` must win over the file's ``out_dir``).
    Old keys set to None are dropped.
    """
    cfg = dict(config)
    for old, new in RENAMED_KEYS.items():
        if old not in cfg:
            continue
        value = cfg.pop(old)
        if value is None:
            continue
        message = f"the evaluation setting {old!r} is deprecated; use {new!r}"
        if cfg.get(new) is not None and cfg[new] != value:
            message += f" ({old}={value!r} replaces {new}={cfg[new]!r})"
        message += "."
        warnings.warn(message, DeprecationWarning, stacklevel=3)
        print(f"dlqsm evaluate: warning: {message}", file=sys.stderr, flush=True)
        cfg[new] = value
    return cfg


def build_cases(data: dict, device="cpu", progress: bool = True) -> list[EvalCase]:
    """Cases from the ``data`` section: ``heads`` (simulated) and ``folders`` (with layouts)."""
    data = dict(data or {})
    unknown = sorted(set(data) - {"heads", "folders"})
    if unknown:
        raise InputError(f"unknown data entries {unknown}.", fix="use heads and folders.")
    cases = []
    for f in data.get("folders") or []:
        f = {"path": f} if isinstance(f, str) else dict(f)
        cases += folder_cases(f["path"], f.get("layout"))
    heads = data.get("heads")
    if heads and int(heads.get("count", 0)) > 0:
        h = dict(heads)
        t0 = time.perf_counter()
        cases += simulated_heads(int(h.pop("count")), tuple(h.pop("shape", (164, 205, 205))),
                                 tuple(np.broadcast_to(h.pop("voxel_size", 1.0), 3)),
                                 device=device, **h)
        _say(progress, f"simulated {heads['count']} held-out heads in "
                       f"{time.perf_counter() - t0:.1f} s")
    return cases


def method_runners(methods, device="cpu", estimate_weight: str = "by-input"
                   ) -> list[MethodRunner]:
    """Parse ``methods`` (each checkpoint resolved once) and load their models: one
    :class:`MethodRunner` per method, to run on many cases (``estimate_weight``: see
    :func:`evaluate`).

    Raises:
        InputError: a bad method, a missing, foreign or unsafe checkpoint.
    """
    from dlqsm.evaluation.methods import _check_estimate_weight

    _check_estimate_weight(estimate_weight, "the evaluation")  # also with no learned method
    return [MethodRunner(s, device=device, estimate_weight=estimate_weight)
            for s in parse_methods(methods)]


def run_evaluation(config: dict, *, runners: list | None = None) -> EvaluationResult:
    """Evaluate from a configuration dict (keys of :data:`DEFAULT_CONFIG`; missing keys take
    its values). Methods are checked, and their models loaded, before the test cases are built;
    ``runners`` (from :func:`method_runners` on ``config["methods"]``) skips doing it again."""
    config = renamed_config_keys(config)
    cfg = {**DEFAULT_CONFIG, **{k: v for k, v in config.items() if v is not None}}
    unknown = sorted(set(cfg) - set(DEFAULT_CONFIG) - {"hydra"})
    if unknown:
        raise InputError(f"unknown configuration keys {unknown}.",
                         fix=f"use {', '.join(DEFAULT_CONFIG)}.")
    from dlqsm.io.outputs import OutputDir

    # models load once, before the (slow) test cases are built: a missing, foreign or unsafe
    # checkpoint is refused at once
    runners = runners or method_runners(cfg["methods"], device=cfg["device"],
                                        estimate_weight=cfg["estimate_weight"])
    specs = [r.spec for r in runners]
    OutputDir(cfg["out_dir"], force=bool(cfg["force"])).check(TABLES)  # before slow work
    progress = bool(cfg["progress"])
    cases = build_cases(cfg["data"], device=cfg["device"], progress=progress)
    return evaluate(specs, cases, cfg["out_dir"], device=cfg["device"], force=bool(cfg["force"]),
                    figures=bool(cfg["figures"]), save_maps=bool(cfg["save_maps"]),
                    progress=progress, title=str(cfg["title"]),
                    config={k: v for k, v in cfg.items() if k != "hydra"}, runners=runners,
                    estimate_weight=cfg["estimate_weight"])
