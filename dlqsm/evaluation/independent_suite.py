"""``dlqsm evaluate --suite independent``: dlqsm's default chain and model on data it did not make.

Rows (each case x method, scored by qsm-ci's scorer, see :mod:`dlqsm.evaluation.independent`):

* simulated heads: dlqsm's own simulator and qsm-forward (fine-grid and voxel-sharp; 3 T and
  7 T; oblique B0 in the affine; anisotropic voxels), each run through
  ``reconstruct`` (raw phase -> chi, the classical default chain, given the brain mask as QSM-CI
  gives it), ``infer`` (raw phase -> chi with the shipped default model) and ``local-tv``
  (``reconstruct --local-field``: the default inversion given the true local field); opt-in
  (``methods=``, ``--suite-methods``): ``reconstruct-tfi`` (raw phase -> ``reconstruct
  --method tfi``, the one-step total field inversion instead of background removal + TV);
* in vivo, the 2016 challenge subject (local field given; vs COSMOS, scored like QSM-CI's in
  vivo track, without segmentation) with per-ROI means from its ``evaluation_mask`` labels;
* in vivo, a real 3-echo crop (no truth): field-map sanity (echo-difference consistency of the
  fitted total field with the measured wrapped phase, mask size) and run time.

The real data come from ``real_data`` (default ``../shared/data`` beside the repository when it
exists); without it those rows are skipped with a note. Methods run through dlqsm's own command
line (in this process), so a row measures what a user runs; their outputs stay in
``OUT/runs/<case>/<method>/`` (the suite owns that folder and overwrites it).

Outputs: ``results.csv`` (all metrics per row), ``roi_means.csv``, ``summary.md`` (side-by-side
tables), ``record.json`` (cases, versions, git revision, notes).
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlqsm.errors import InputError
from dlqsm.evaluation.independent import (
    CaseSpec,
    generate_case,
    package_version,
    require_eval_extra,
    score_qsmci,
)
from dlqsm.io.outputs import git_revision

TABLES = ("results.csv", "roi_means.csv", "summary.md", "record.json")

METHODS = ("reconstruct", "infer", "local-tv")
"""Default methods of the simulated rows: raw phase through the classical default chain, raw
phase through the shipped default model, and the default inversion given the true local field."""

OPTIONAL_METHODS = ("reconstruct-tfi",)
"""Methods run only when asked for: raw phase through ``reconstruct --method tfi`` (total field
inversion: brain and background sources in one fit, no background removal step; 5-10x slower
than the default chain)."""

ALL_METHODS = METHODS + OPTIONAL_METHODS

REPO_ROOT = Path(__file__).resolve().parents[2]

FULL_FINE_VOXEL = 2.0
"""Scan voxel (mm) of the full-size fine-grid cases. qsm-forward 0.32 computes the field in
float64 on a twice-padded phantom grid (~750 bytes per phantom voxel): an adult head built at
0.5 mm for a 1 mm scan needs ~40 GB, one built at 1 mm for a 2 mm scan ~4.5 GB."""


def suite_specs(size: str = "full", seed: int = 1_000_000) -> list[CaseSpec]:
    """The simulated cases of the suite.

    ``full``: adult heads. Own simulator 1 mm and 2 mm; qsm-forward fine-grid (phantom at half
    the scan voxel) at 2 mm, 3 T and 7 T, B0 tilted 25 deg, anisotropic 1.5 x 1.5 x 3 mm;
    qsm-forward voxel-sharp at 1 mm, 3 T axial and 7 T tilted 25 deg.
    ``reduced``: small, fast versions (48^3 at 3.5 mm; a small head) for tests.
    """
    adult_1mm = (164, 205, 205)
    adult_2mm = (84, 104, 92)
    if size == "full":
        return [
            CaseSpec("dlqsm", 3.0, 0.0, (1.0, 1.0, 1.0), adult_1mm, seed),
            CaseSpec("dlqsm", 3.0, 0.0, (2.0, 2.0, 2.0), adult_2mm, seed),
            CaseSpec("fine", 3.0, 0.0, (2.0, 2.0, 2.0), adult_2mm, seed),
            CaseSpec("fine", 7.0, 0.0, (2.0, 2.0, 2.0), adult_2mm, seed),
            CaseSpec("fine", 3.0, 25.0, (2.0, 2.0, 2.0), adult_2mm, seed),
            CaseSpec("fine", 3.0, 0.0, (1.5, 1.5, 3.0), (112, 138, 60), seed),
            CaseSpec("sharp", 3.0, 0.0, (1.0, 1.0, 1.0), adult_1mm, seed),
            CaseSpec("sharp", 7.0, 25.0, (1.0, 1.0, 1.0), adult_1mm, seed),
        ]
    if size == "reduced":
        small = (48, 48, 48)
        return [CaseSpec("dlqsm", 3.0, 0.0, (3.5, 3.5, 3.5), small, seed),
                CaseSpec("fine", 3.0, 20.0, (3.5, 3.5, 3.5), small, seed)]
    raise InputError(f"unknown suite size {size!r}.", fix="use full or reduced.")


def default_real_data() -> Path | None:
    """``../shared/data`` beside the repository, if it exists."""
    p = REPO_ROOT.parent / "shared" / "data"
    return p if p.is_dir() else None


def revision_label() -> str:
    """Short git revision of the repository (``+dirty`` with uncommitted changes to tracked
    files), or "unknown"."""
    rev = git_revision(REPO_ROOT, untracked=False)
    if rev["commit"] is None:
        return "unknown"
    return rev["commit"][:7] + ("+dirty" if rev["dirty"] else "")


@dataclass
class SuiteResult:
    """What :func:`run_suite` computed and wrote."""

    rows: list[dict]
    roi_rows: list[dict]
    notes: list[str]
    files: list[Path] = field(default_factory=list)
    out_dir: Path | None = None


def _cli(argv: list[str]) -> tuple[int, float, str]:
    """Run ``dlqsm ARGV`` in this process; (exit code, wall seconds, error text)."""
    import contextlib
    import io

    from dlqsm.cli.main import main

    err = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stderr(err):
            rc = main(argv)
    except Exception as exc:  # a crash is a result of the suite, not the end of it
        rc, msg = 1, f"{exc.__class__.__name__}: {exc}"
        return rc, time.perf_counter() - t0, msg
    lines = [ln for ln in err.getvalue().splitlines() if "error" in ln.lower()]
    return rc, time.perf_counter() - t0, (lines[-1] if lines else "")


def _method_argv(method: str, case, out: Path, device: str) -> list[str]:
    common = ["-o", str(out), "--force", "-q", "--device", device]
    if method == "reconstruct":
        return ["reconstruct", str(case.raw_input), "--mask", str(case.path / "mask.nii.gz"),
                *common]
    if method == "infer":
        return ["infer", str(case.raw_input), "--mask", str(case.path / "mask.nii.gz"), *common]
    if method == "reconstruct-tfi":
        return ["reconstruct", str(case.raw_input), "--mask", str(case.path / "mask.nii.gz"),
                "--method", "tfi", *common]
    if method == "local-tv":
        return ["reconstruct", "--local-field", str(case.path / "localfield.nii.gz"),
                "--mask", str(case.path / "mask.nii.gz"), *common]
    raise InputError(f"unknown suite method {method!r}.", fix=f"use {', '.join(ALL_METHODS)}.")


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"dlqsm evaluate (independent): {text}", file=sys.stderr, flush=True)


def _source(spec: CaseSpec) -> str:
    return {"dlqsm": "own simulator", "fine": "qsm-forward fine grid",
            "sharp": "qsm-forward voxel-sharp"}[spec.kind]


def simulated_rows(specs, methods, runs: Path, *, cache_dir=None, device="cpu",
                   progress=True) -> tuple[list[dict], list[dict]]:
    """Generate (or reuse) each case, run each method, score with qsm-ci."""
    rows, roi_rows = [], []
    for spec in specs:
        t0 = time.perf_counter()
        case = generate_case(spec, cache_dir=cache_dir, progress=False)
        _say(progress, f"case {spec.name} {spec.shape} ready ({time.perf_counter() - t0:.0f} s; "
                       f"{case.path})")
        for method in methods:
            out = runs / spec.name / method
            rc, seconds, err = _cli(_method_argv(method, case, out, device))
            row = {"case": spec.name, "source": _source(spec), "method": method,
                   "field_strength_t": spec.field_strength, "b0_tilt_deg": spec.tilt_deg,
                   "voxel_size_mm": "x".join(f"{v:g}" for v in spec.voxel_size),
                   "shape": "x".join(str(s) for s in spec.shape), "time_s": seconds,
                   "status": "ok" if rc == 0 else f"failed: {err}"}
            if rc == 0:
                chi_file = out / "chimap.nii.gz"
                row.update(score_qsmci(chi_file, case.path))
                roi_rows += _roi_means(chi_file, case.path / "chi.nii.gz",
                                       case.path / "mask.nii.gz", case.path / "labels.nii.gz",
                                       spec.name, method, range(1, 7))
            rows.append(row)
            _say(progress, f"{spec.name} {method}: " + (
                f"NRMSE {row['nrmse']:.1f}%, {seconds:.1f} s" if rc == 0 else row["status"]))
    return rows, roi_rows


def _roi_means(chi_file, truth_file, mask_file, labels_file, case, method, label_ids,
               names=None) -> list[dict]:
    """Per-label means (ppm) of the map and the truth, both referenced to their mask mean
    (voxels the method left non-finite count as 0, as in qsm-ci's scorer)."""
    import torch

    from dlqsm.evaluation.independent import QSMCI_LABELS
    from dlqsm.io.nifti import load_nifti
    from dlqsm.metrics.functional import roi_means

    mask = load_nifti(mask_file, ndim=3).data > 0.5
    chi = load_nifti(chi_file, ndim=3, finite=False).data
    chi = torch.from_numpy(np.where(mask & np.isfinite(chi), chi, 0.0))
    truth = torch.from_numpy(load_nifti(truth_file, ndim=3).data.astype(np.float64))
    labels = load_nifti(labels_file, ndim=3).data.round().astype(np.int64)
    labels = torch.from_numpy(np.where(mask, labels, 0))
    m = torch.from_numpy(mask)
    ids = [int(i) for i in label_ids if (labels == int(i)).any()]
    ours = roi_means(chi - chi[m].mean(), labels, ids).tolist()
    ref = roi_means(truth - truth[m].mean(), labels, ids).tolist()
    names = names if names is not None else QSMCI_LABELS
    return [{"case": case, "method": method, "label": lab, "name": names.get(lab, f"roi_{lab}"),
             "voxels": int((labels == lab).sum()), "reference_ppm": r, "method_ppm": o,
             "error_ppm": o - r} for lab, o, r in zip(ids, ours, ref, strict=True)]


def _roi_linearity(roi_rows) -> float:
    """|1 - slope| of the ROI means (method vs reference), with qsm-ci's line fit."""
    _, qsm_eval = require_eval_extra()
    if len(roi_rows) < 2:
        return math.nan
    slope, _ = qsm_eval.linear_fit(np.array([r["reference_ppm"] for r in roi_rows]),
                                   np.array([r["method_ppm"] for r in roi_rows]))
    return abs(1.0 - slope)


CHALLENGE_FILES = ("phs_tissue.nii.gz", "msk.nii.gz", "chi_cosmos.nii.gz",
                   "evaluation_mask.nii.gz")


INVIVO_METHODS = {"local-tv": ("local-tv", "reconstruct"), "infer": ("infer-local", "infer")}
"""Suite method -> (row name, command) of the 2016 subject's rows (a local field only: the
raw-phase methods do not apply to it)."""


def invivo_rows(folder: Path, runs: Path, *, device="cpu", progress=True, figures=None,
                methods=METHODS):
    """The 2016 challenge subject: default inversion and default model given its local field,
    vs COSMOS (qsm-ci's scorer without segmentation) and per-ROI means.

    ``methods``: the suite's methods; the subject gets the rows of those among ``local-tv``
    (row ``local-tv``) and ``infer`` (row ``infer-local``), none when neither is asked for.

    ``figures``: a folder for ``invivo-2016_montage.png`` (COSMOS, TV, model on three slices),
    ``invivo-2016_errors.png`` (each minus COSMOS) and ``invivo-2016_rois.png`` (ROI means
    against COSMOS's); None writes none."""
    from dlqsm.evaluation.cases import LAYOUTS
    from dlqsm.io.nifti import load_nifti

    _, qsm_eval = require_eval_extra()
    chosen = [row for m, row in INVIVO_METHODS.items() if m in methods]
    if not chosen:
        return [], [], ["in vivo 2016 skipped: none of its methods (local-tv, infer) asked for."]
    missing = [f for f in CHALLENGE_FILES if not (folder / f).is_file()]
    if missing:
        return [], [], [f"in vivo 2016 skipped: {folder} lacks {', '.join(missing)}."]
    names = {int(k): str(v) for k, v in
             (LAYOUTS.get("challenge2016", {}).get("roi_names") or {}).items()}
    labels = load_nifti(folder / "evaluation_mask.nii.gz", ndim=3).data.round()
    label_ids = sorted(int(v) for v in np.unique(labels) if v > 0)
    cosmos = load_nifti(folder / "chi_cosmos.nii.gz", ndim=3).data.astype(np.float64)
    mask_img = load_nifti(folder / "msk.nii.gz", ndim=3)
    mask = mask_img.data > 0.5
    rows, roi_rows, chis = [], [], {}
    for method, cmd in chosen:
        out = runs / "invivo-2016" / method
        rc, seconds, err = _cli([cmd, "--local-field", str(folder / "phs_tissue.nii.gz"),
                                 "--mask", str(folder / "msk.nii.gz"), "-o", str(out),
                                 "--force", "-q", "--device", device])
        row = {"case": "invivo-2016", "source": "in vivo (2016 challenge, vs COSMOS)",
               "method": method, "field_strength_t": 2.8936, "b0_tilt_deg": 0.0,
               "voxel_size_mm": "1.06x1.06x1.07", "shape": "160x160x160", "time_s": seconds,
               "status": "ok" if rc == 0 else f"failed: {err}"}
        if rc == 0:
            chi = load_nifti(out / "chimap.nii.gz", ndim=3, finite=False).data
            chis[{"local-tv": "TV (reconstruct)", "infer-local": "model (infer)"}[method]] = chi
            metrics, _ = qsm_eval.score_arrays(chi.astype(np.float64), cosmos, mask, kind="chi")
            row.update({k: float(v) for k, v in metrics.items()})
            rois = _roi_means(out / "chimap.nii.gz", folder / "chi_cosmos.nii.gz",
                              folder / "msk.nii.gz", folder / "evaluation_mask.nii.gz",
                              "invivo-2016", method, label_ids, names)
            row["roi_linearity"] = _roi_linearity(rois)
            roi_rows += rois
        rows.append(row)
        _say(progress, f"invivo-2016 {method}: " + (
            f"NRMSE {row['nrmse']:.1f}%, {seconds:.1f} s" if rc == 0 else row["status"]))
    if figures is not None and chis:
        _invivo_figures(Path(figures), cosmos, mask, chis, roi_rows,
                        mask_img.voxel_size)
    return rows, roi_rows, ["In vivo 2016: local field given (ppm), B0 2.8936 T along the "
                            "third axis; qsm-ci's in vivo scoring (no segmentation) vs COSMOS; "
                            "roi_linearity = |1 - slope| of the means of all evaluation_mask "
                            "labels. No method was tuned on this subject."]


def _invivo_figures(out: Path, cosmos, mask, chis: dict, roi_rows: list, voxel_size) -> list:
    """The in vivo figures of :func:`invivo_rows` (PNG, atomically written)."""
    from types import SimpleNamespace

    from dlqsm.evaluation import figures as fig

    case = SimpleNamespace(name="in vivo 2016", reference=cosmos, mask=mask,
                           voxel_size=tuple(float(v) for v in voxel_size))
    out.mkdir(parents=True, exist_ok=True)
    return [fig.montage(case, chis, out / "invivo-2016_montage.png", reference_name="COSMOS"),
            fig.error_maps(case, chis, out / "invivo-2016_errors.png", reference_name="COSMOS"),
            fig.roi_scatter(roi_rows, out / "invivo-2016_rois.png",
                            title="in vivo 2016: ROI means vs COSMOS")]


def multiecho_rows(folder: Path, runs: Path, *, device="cpu", progress=True):
    """The real 3-echo crop (no truth): run time and field-map sanity of the raw chain."""
    import json

    from dlqsm.io.nifti import load_nifti
    from dlqsm.io.scan import normalize_phase
    from dlqsm.physics.units import ppm_to_phase, wrap_phase

    files = [folder / n for n in ("phase.nii.gz", "mag.nii.gz", "params.json")]
    if not all(f.is_file() for f in files):
        return [], [f"multi-echo crop skipped: {folder} lacks phase.nii.gz/mag.nii.gz/params.json."]
    te = [float(t) for t in json.loads(files[2].read_text())["TE"]]
    b0 = 3.0  # not stored with the data; the check below does not depend on it
    out = runs / "multiecho-crop" / "reconstruct"
    rc, seconds, err = _cli(["reconstruct", "--phase", str(files[0]), "--magnitude",
                             str(files[1]), "--te", *map(str, te), "--field-strength", str(b0),
                             "--rescale-phase", "-o", str(out), "--force", "-q",
                             "--device", device])
    row = {"case": "multiecho-crop", "source": "in vivo 3-echo crop (no truth)",
           "method": "reconstruct", "field_strength_t": b0, "b0_tilt_deg": 0.0,
           "voxel_size_mm": "0.47x0.47x1", "shape": "51x51x41", "time_s": seconds,
           "status": "ok" if rc == 0 else f"failed: {err}"}
    if rc == 0:
        phase = normalize_phase(load_nifti(files[0], ndim=4).data, rescale=True)
        field = load_nifti(out / "totalfield.nii.gz", ndim=3).data.astype(np.float64)
        mask = load_nifti(out / "mask.nii.gz", ndim=3).data > 0.5
        res = []
        for e in range(len(te) - 1):
            d_meas = phase[..., e + 1] - phase[..., e]
            d_fit = ppm_to_phase(field, te[e + 1] - te[e], b0)
            res.append(np.abs(wrap_phase(d_meas - d_fit))[mask])
        res = np.concatenate(res)
        row.update({"mask_fraction": float(mask.mean()),
                    "echo_residual_median_rad": float(np.median(res)),
                    "echo_residual_gt_half_pi": float((res > np.pi / 2).mean())})
    _say(progress, f"multiecho-crop reconstruct: {row['status']}, {seconds:.1f} s")
    return [row], ["Multi-echo crop: no truth. echo_residual = |wrap(phase(e+1) - phase(e) - "
                   "2 pi gamma B0 dTE f)| inside dlqsm's mask, f = the fitted total field: the "
                   "temporal consistency of the field map with the measured wrapped phase "
                   "(spatial unwrapping errors or a wrong echo fit raise it); TE 4/8/12 ms as "
                   "its source used (not stored with the data), B0 3 T assumed (cancels)."]


def run_suite(out, *, size: str = "full", specs=None, methods=METHODS, real_data="auto",
              cache_dir=None, device: str = "cpu", force: bool = False,
              progress: bool = True, figures: bool = True) -> SuiteResult:
    """Run the independent-data suite and write its tables to ``out``.

    Args:
        out: output folder.
        size: "full" or "reduced" (see :func:`suite_specs`); ignored when ``specs`` is given.
        specs: :class:`CaseSpec` list to use instead.
        methods: methods of :data:`ALL_METHODS` (default :data:`METHODS`) for the simulated
            cases; the in vivo rows run those that apply (2016 subject: ``local-tv`` and
            ``infer`` given its local field; multi-echo crop: ``reconstruct``).
        real_data: folder with ``challenge2016/`` and ``multiecho_small/``; "auto" uses
            :func:`default_real_data`; None skips the in vivo rows.
        cache_dir: cache of generated cases (default: ``$DLQSM_CACHE/qsmforward`` or
            ``~/.cache/dlqsm/qsmforward``).
        device: where the methods run.
        force: overwrite the tables of an earlier run.
        figures: write the in vivo figures (COSMOS / TV / model slices, error maps, ROI
            means) to ``out/figures``.

    Raises:
        InputError: unknown size or method, qsm-forward/qsm-ci missing.
        OutputExistsError: the tables exist and ``force`` is False.
    """
    from dlqsm.evaluation.report import to_csv
    from dlqsm.io.atomic import write_text_atomic
    from dlqsm.io.outputs import OutputDir, software_versions

    require_eval_extra()
    rev = revision_label()  # of the code that runs (imports happen now, edits later do not count)
    methods = tuple(dict.fromkeys(methods))
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or not methods:
        raise InputError(f"unknown suite methods {bad}." if bad else "no suite method given.",
                         fix=f"use {', '.join(ALL_METHODS)}.")
    specs = list(specs) if specs is not None else suite_specs(size)
    outdir = OutputDir(out, force=force)
    outdir.check(TABLES)
    runs = outdir.path / "runs"
    real = default_real_data() if real_data == "auto" else (
        Path(real_data) if real_data is not None else None)
    rows, roi_rows = simulated_rows(specs, methods, runs, cache_dir=cache_dir, device=device,
                                    progress=progress)
    notes = []
    if real is None:
        notes.append("In vivo rows skipped: no real-data folder (give --real-data DIR with "
                     "challenge2016/ and multiecho_small/).")
    else:
        r, rr, n = invivo_rows(real / "challenge2016", runs, device=device, progress=progress,
                               figures=outdir.path / "figures" if figures else None,
                               methods=methods)
        rows, roi_rows, notes = rows + r, roi_rows + rr, notes + n
        if "reconstruct" in methods:
            r, n = multiecho_rows(real / "multiecho_small", runs, device=device,
                                  progress=progress)
            rows, notes = rows + r, notes + n
        else:
            notes.append("multi-echo crop skipped: its row is the default reconstruct chain, "
                         "not asked for.")
    files = [write_text_atomic(outdir.path / "results.csv", to_csv(rows)),
             write_text_atomic(outdir.path / "roi_means.csv", to_csv(roi_rows)),
             write_text_atomic(outdir.path / "summary.md",
                               summary_markdown(rows, notes=notes, revision=rev))]
    record = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"),
              "git_revision": rev, "device": device, "size": size,
              "cases": [{"name": s.name, **s.__dict__} for s in specs],
              "methods": list(methods), "real_data": str(real) if real else None,
              "software": {**software_versions(),
                           "qsm-forward": package_version("qsm-forward"),
                           "qsm-ci": package_version("qsm-ci")},
              "notes": notes}
    files.append(outdir.json("record.json", record))
    return SuiteResult(rows, roi_rows, notes, files, outdir.path)


def _fmt(v, digits=1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def summary_markdown(rows, *, notes=(), revision: str = "") -> str:
    """Side-by-side NRMSE table (methods x cases) and the full per-row metrics table."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["case"], r["method"]): r for r in rows}
    lines = [f"# dlqsm on independent data (git {revision})", "",
             "NRMSE % (qsm-ci scorer, whole mask, eroded voxels count as 0); - = not run.", "",
             "| method | " + " | ".join(cases) + " |",
             "|---|" + "---|" * len(cases)]
    for m in methods:
        cells = []
        for c in cases:
            r = by.get((c, m))
            cells.append("-" if r is None else (_fmt(r.get("nrmse")) if r["status"] == "ok"
                                                else "failed"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "| case | source | B0 T | tilt | voxel mm | method | NRMSE | dNRMSE | XSIM | "
              "HFEN | DGM lin. | coverage | time s |", "|---|" * 1 + "---|" * 12]
    for r in rows:
        lin = r.get("dgm_linearity", r.get("roi_linearity"))
        lines.append(
            f"| {r['case']} | {r['source']} | {r['field_strength_t']:g} | {r['b0_tilt_deg']:g} | "
            f"{r['voxel_size_mm']} | {r['method']} | {_fmt(r.get('nrmse'))} | "
            f"{_fmt(r.get('nrmse_detrend'))} | {_fmt(r.get('xsim'), 3)} | {_fmt(r.get('hfen'))} | "
            f"{_fmt(lin, 3)} | {_fmt(r.get('coverage'), 3)} | {_fmt(r['time_s'])} |"
            + ("" if r["status"] == "ok" else f" {r['status']}"))
    sanity = [r for r in rows if "echo_residual_median_rad" in r]
    for r in sanity:
        lines += ["", f"Multi-echo crop (no truth): median echo-difference residual "
                      f"{r['echo_residual_median_rad']:.3f} rad, "
                      f"{100 * r['echo_residual_gt_half_pi']:.2f} % of mask voxels above pi/2, "
                      f"mask {100 * r['mask_fraction']:.1f} % of the volume, "
                      f"{r['time_s']:.1f} s."]
    lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"
