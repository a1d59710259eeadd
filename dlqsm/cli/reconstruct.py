"""``dlqsm reconstruct``: classical QSM of one scan, from raw phase or from a field map.

A thin layer: parse flags, check the output folder, :func:`dlqsm.io.scan.load_scan`,
:func:`dlqsm.pipeline.reconstruct.reconstruct`, write NIfTI (ppm, the input's affine) and a
JSON record. Heavy imports happen inside :func:`run` so ``dlqsm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from dlqsm.cli.common import (
    HelpFormatter,
    add_output,
    add_param,
    add_run_options,
    parse_value,
    split_params,
)
from dlqsm.errors import DlqsmError, InputError

__all__ = ["add_input_arguments", "add_stage_arguments", "add_run_arguments", "stage_params",
           "parse_value", "outputs_for", "run", "write_map", "build_record"]

# Static copies of the registries (checked against them by the tests) keep --help light.
UNWRAP = ("romeo", "laplacian")
ECHO_FIT = ("wls", "nonlinear")
BFR = ("pdf", "vsharp", "sharp", "resharp", "ismv", "lbv", "tfi")
METHODS = ("tv", "tkd", "tsvd", "tikhonov", "ilsqr", "medi", "ndi", "rts", "tfi")

EXAMPLES = """\
examples:
  dlqsm reconstruct bids/ --subject 01 -o out/                 # BIDS MEGRE run
  dlqsm reconstruct bids/ -o bids/derivatives/dlqsm --jobs 2   # every run: BIDS derivatives
  dlqsm reconstruct qsmci_input/ -o out/ --method tv           # QSM-CI artifact folder
  dlqsm reconstruct --phase ph.nii.gz --magnitude mag.nii.gz --te 0.004 0.008 0.012 \\
      --field-strength 3 -o out/
  dlqsm reconstruct --local-field lf.nii.gz --mask mask.nii.gz --b0-dir 0 0 1 -o out/ \\
      --method tkd --param threshold=0.15
  dlqsm reconstruct --local-field lf_hz.nii.gz --field-unit hz --field-strength 3 \\
      --mask mask.nii.gz -o out/
  --param without a prefix applies to the inversion; prefix a stage or the chosen method for
  others: --param bfr.tol=0.005 (or pdf.tol=...), --param tv.alpha=1e-3, --param
  unwrap.template=1, --param mask.threshold_scale=0.8, --param echo_fit.<name>=...

outputs (in OUT/): chimap.nii.gz (ppm, referenced to the mean inside the mask) and its preview
chimap.png (three orthogonal slices), and for raw input totalfield.nii.gz, localfield.nii.gz,
mask.nii.gz (total-field input: localfield and mask); record.json with inputs, parameters
(defaults included), B0 geometry, timings, versions and the sha256 of every map written.
A run owns OUT while it writes: a second run into the same folder is refused.

B0 direction: --b0-dir wins; else a B0_dir from params.json or the BIDS sidecar wins over the
NIfTI affine (--b0-source affine|sidecar forces one). A sheared affine or a disagreement above
1 degree is reported, and both directions are kept in record.json.
"""


def add_input_arguments(p: argparse.ArgumentParser, *, after_field: str = "inversion") -> None:
    """The input flags (INPUT and explicit files) of ``dlqsm reconstruct`` and ``dlqsm infer``.

    ``after_field`` names what follows a given field map in the help (inversion or network).
    """
    p.add_argument("input", nargs="?", metavar="INPUT",
                   help="BIDS dataset/subject folder or QSM-CI artifact folder")
    g = p.add_argument_group("explicit inputs (override what INPUT provides)")
    g.add_argument("--phase", nargs="+", metavar="P", help="phase NIfTI (4D over echoes) or "
                   "one 3D file per echo")
    g.add_argument("--magnitude", nargs="+", metavar="M", help="magnitude NIfTI like --phase")
    g.add_argument("--te", nargs="+", type=float, metavar="T", help="echo times in s (ms if "
                   "above 1)")
    g.add_argument("--field-strength", type=float, metavar="B0", help="tesla")
    g.add_argument("--mask", metavar="M", help="brain mask NIfTI (used as given)")
    g.add_argument("--local-field", metavar="LF", help="local field NIfTI (ppm): "
                   f"{after_field} only")
    g.add_argument("--total-field", metavar="TF", help="total field NIfTI (ppm): background "
                   f"removal + {after_field}")
    g.add_argument("--field-unit", choices=("ppm", "hz", "rad"), default=None,
                   help="unit of --local-field/--total-field: hz needs --field-strength, rad "
                   "--te (one value) and --field-strength (default: ppm, refused when "
                   "implausibly large; give ppm to take the values as they are)")
    g.add_argument("--b0-dir", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="B0 direction in voxel coordinates (default: params.json/sidecar "
                   "B0_dir, else from the affine)")
    g.add_argument("--b0-source", choices=("auto", "affine", "sidecar"), default="auto",
                   help="where the B0 direction comes from without --b0-dir: auto = a "
                   "B0_dir in params.json/the sidecar, else the affine")
    g.add_argument("--voxel-size", nargs="+", type=float, metavar="MM",
                   help="voxel size in mm (default: from the affine)")
    g.add_argument("--phase-sign", type=int, choices=(1, -1), default=1,
                   help="-1 flips the phase (e.g. GE)")
    g.add_argument("--rescale-phase", action="store_const", const=True, default=None,
                   help="map a phase that is not in radians linearly onto [-pi, pi)")
    g.add_argument("--coil-axis", type=int, choices=(3, 4), help="NIfTI axis of uncombined "
                   "coils (default 4 for 5D images)")
    g.add_argument("--subject", help="BIDS subject to use when INPUT holds several")
    g.add_argument("--select", metavar="TEXT", help="use the BIDS run whose file names "
                   "contain TEXT (e.g. run-2, ses-02)")


def add_stage_arguments(g, *, inversion: bool) -> None:
    """Method flags of the classical stages (``inversion=False``: field mapping only, for infer)."""
    g.add_argument("--unwrap", choices=UNWRAP, default="romeo", help="phase unwrapping")
    g.add_argument("--echo-fit", choices=ECHO_FIT, default="wls",
                   help="multi-echo field fit")
    g.add_argument("--bfr", choices=BFR, default="pdf", help="background field removal (pdf "
                   "covers the whole mask)")
    if inversion:
        g.add_argument("--method", choices=METHODS, default="tv", help="dipole inversion "
                       "(tfi: from the total field, no background removal step)")
    g.add_argument("--mask-erosion", type=float, default=0.0, metavar="MM",
                   help="erode a computed mask by MM (a given mask is never eroded)")
    g.add_argument("--detrend", choices=tuple(DETREND), default="auto",
                   help="subtract the linear and quadratic susceptibility trends whose fields "
                   "background removal cannot tell from background (auto: when dlqsm removed "
                   "the background, i.e. raw or total-field input)")
    add_param(g, help="parameter of a stage (coil, mask, unwrap, echo_fit, bfr, inversion) "
              "or of a chosen method (e.g. tv.alpha=1e-3, pdf.tol=0.01); without TARGET the "
              "inversion's" + ("" if inversion else " (infer runs none: prefix a stage)")
              + "; repeatable")


DETREND = {"auto": None, "on": True, "off": False}
"""``--detrend`` -> the ``detrend`` argument of :func:`dlqsm.pipeline.reconstruct.reconstruct`."""


def add_run_arguments(p):
    """``--device``, ``--force`` and ``-q`` (:func:`dlqsm.cli.common.add_run_options`)."""
    return add_run_options(p)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``reconstruct`` on the dispatcher's subparsers."""
    p = subparsers.add_parser(
        "reconstruct", help="classical QSM of one scan (raw phase or field map -> chi, ppm)",
        description="Classical QSM: coil combination, masking, unwrapping, echo fit, "
        "background removal and dipole inversion of one scan.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    add_input_arguments(p)
    add_output(p)
    add_stage_arguments(p.add_argument_group("methods"), inversion=True)
    add_run_arguments(p)
    from dlqsm.study.dataset import add_dataset_arguments

    add_dataset_arguments(p)  # dataset mode (dlqsm.study)
    p.set_defaults(func=run)
    return p


def stage_params(items, methods: dict) -> dict:
    """``--param`` items -> ``{stage: {key: value}}`` for :func:`dlqsm.pipeline.reconstruct`.

    TARGET (the part before the first dot) is a stage name or the method chosen for a stage
    (``methods``: ``{"unwrap": "romeo", "echo_fit": "wls", "bfr": "pdf", "inversion": "tv"}``,
    None for a stage that does not run); no TARGET means the inversion.
    ``["alpha=1e-3", "bfr.tol=0.01"]`` -> ``{"inversion": {"alpha": 0.001}, "bfr": {"tol": 0.01}}``.
    """
    from dlqsm.pipeline.reconstruct import STAGES

    out: dict = {}
    for target, key, value, item in split_params(items):
        if target is None:
            stage = "inversion"
        elif target in STAGES:
            stage = target
        else:
            stage = next((st for st, m in methods.items() if m == target), None)
            if stage is None:
                chosen = ", ".join(f"{m} ({st})" for st, m in methods.items() if m)
                raise InputError(f"--param {item!r}: {target!r} is neither a stage nor a method "
                                 f"chosen for this run ({chosen}).",
                                 fix=f"prefix one of {', '.join(STAGES)} or a chosen method.")
        out.setdefault(stage, {})[key] = value
    return out


def outputs_for(kind: str) -> list[str]:
    """Files written for a scan of ``kind`` ("raw", "total_field", "local_field")."""
    names = ["chimap.nii.gz", "chimap.png"]
    if kind == "raw":
        names.append("totalfield.nii.gz")
    if kind in ("raw", "total_field"):
        names += ["localfield.nii.gz", "mask.nii.gz"]
    return names + ["record.json"]


def scan_arguments(args) -> dict:
    """Keyword arguments of :func:`dlqsm.io.scan.load_scan` from the input flags."""
    return dict(phase=args.phase, magnitude=args.magnitude, te=args.te,
                field_strength=args.field_strength, mask=args.mask,
                local_field=args.local_field, total_field=args.total_field, b0_dir=args.b0_dir,
                voxel_size=args.voxel_size, phase_sign=args.phase_sign,
                coil_axis=args.coil_axis, rescale_phase=args.rescale_phase,
                subject=args.subject, select=args.select, field_unit=args.field_unit,
                b0_source=args.b0_source)


def run(args) -> int:
    """Load, reconstruct, write. Returns 0; raises DlqsmError on bad input."""
    from dlqsm.study.dataset import is_dataset_mode, run_dataset

    if is_dataset_mode(args):  # a BIDS dataset: every run -> derivatives
        return run_dataset(args, command="reconstruct", run_one=run)
    from dlqsm.io.outputs import OutputDir
    from dlqsm.io.scan import load_scan
    from dlqsm.pipeline.reconstruct import check_parameters, resolve_device

    out = OutputDir(args.out, force=args.force)
    out.check(["chimap.nii.gz", "chimap.png", "record.json"])  # before any work
    methods = dict(unwrap=args.unwrap, echo_fit=args.echo_fit, bfr=args.bfr, method=args.method)
    params = stage_params(args.param, {"unwrap": args.unwrap, "echo_fit": args.echo_fit,
                                       "bfr": args.bfr, "inversion": args.method})
    params = check_parameters(params, **methods)  # once: reconstruct() trusts the result
    args.device = str(resolve_device(args.device))
    with out.lock():
        scan = load_scan(args.input, **scan_arguments(args))
        scan.check_maskable()
        names = outputs_for(scan.kind)
        out.check(names)
        for note in scan.notices:
            if not args.quiet:
                print(f"dlqsm reconstruct: note: {note}", file=sys.stderr)
        result = _reconstruct(scan, args, params, methods)
        _write(out, scan, result, args, names)
    if not args.quiet:
        for note in result.notices:
            print(f"dlqsm reconstruct: note: {note}", file=sys.stderr)
        print(f"dlqsm reconstruct: wrote {', '.join(names)} to {out.path} "
              f"({result.timings['total']:.1f} s)", file=sys.stderr)
    return 0


def _reconstruct(scan, args, stage_params, methods):
    from dlqsm.pipeline.reconstruct import reconstruct

    try:
        return reconstruct(scan, mask_erosion_mm=args.mask_erosion, device=args.device,
                           progress=not args.quiet, stage_params=stage_params,
                           detrend=DETREND[args.detrend], **methods)
    except DlqsmError:
        raise
    except (ValueError, TypeError) as exc:  # a stage refusing a parameter value
        if os.environ.get("DLQSM_DEBUG"):
            raise
        raise InputError(f"{exc.__class__.__name__}: {exc}",
                         fix="check the --param values (DLQSM_DEBUG=1 shows a traceback).") \
            from exc


def _write(out, scan, result, args, names) -> None:
    vols = {"chimap.nii.gz": result.chimap, "totalfield.nii.gz": result.total_field,
            "localfield.nii.gz": result.local_field, "mask.nii.gz": result.mask}
    hashes = write_maps(out, scan, vols, names, mask=result.mask)
    out.json("record.json", {**build_record(scan, result, args, names), "sha256": hashes})


def write_maps(out, scan, vols: dict, names, *, mask) -> dict:
    """Write the NIfTI maps among ``names`` (ppm, the scan's affine) and ``chimap.png``; returns
    ``{file: sha256}`` of the NIfTI files, for the record."""
    from dlqsm.io.outputs import sha256_file

    hashes = {}
    for name in names:
        if name.endswith(".nii.gz") and vols.get(name) is not None:
            hashes[name] = sha256_file(out.nifti(name, vols[name].float(), scan.affine))
    if "chimap.png" in names:
        write_map(out, "chimap.png", vols["chimap.nii.gz"], mask, scan.voxel_size)
    return hashes


def write_map(out, name, chi, mask, voxel_size) -> None:
    """The PNG preview of a chi map (three orthogonal slices, ppm colour bar), atomically."""
    import numpy as np

    from dlqsm.evaluation.figures import chi_preview

    def arr(x):
        return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)

    chi_preview(arr(chi), arr(mask).astype(bool), voxel_size, out.target(name),
                title=f"{out.path.name}/{name.replace('.png', '.nii.gz')} (ppm)")


def geometry_record(scan) -> dict:
    """B0 direction used and where it came from, the affine's and the sidecar's directions,
    their disagreement, the affine's shear, voxel size and affine (for record.json)."""
    from dlqsm.physics.geometry import angle_to_b0

    b0 = [float(b) for b in scan.grid.b0_dir]
    return {"b0_dir_voxel": b0, "b0_angle_to_voxel_z_deg": angle_to_b0(scan.grid.b0_dir),
            **scan.geometry, "voxel_size_mm": [float(v) for v in scan.voxel_size],
            "affine": scan.affine}


def build_record(scan, result, args, names) -> dict:
    """The JSON record of a reconstruction: inputs, geometry, parameters, timings, versions."""
    from dlqsm.io.outputs import software_versions

    return {
        "command": (" ".join(["dlqsm", *sys.argv[1:]])
                    if len(sys.argv) > 1 and sys.argv[1] == "reconstruct" else None),
        "arguments": {k: v for k, v in vars(args).items() if k not in ("func", "overrides")},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "input": {"kind": scan.kind, "sources": scan.sources, "shape": list(scan.shape),
                  "echo_times_s": None if scan.te is None else [float(t) for t in scan.te],
                  "field_strength_t": scan.field_strength, "echoes": scan.n_echoes,
                  "coils": int(scan.phase.shape[0]) if scan.has_coils else None,
                  "phase_sign": args.phase_sign},
        "geometry": geometry_record(scan),
        "units": {"chimap": "ppm, referenced to its mean inside the mask (whole brain)",
                  "fields": "ppm", "phase": "rad"},
        "methods": {k: v.get("method") for k, v in result.parameters.items()},
        "parameters": result.parameters,
        "mask": {"voxels": int(result.mask.sum()),
                 "source": "user" if scan.mask is not None else "computed"},
        "device": str(args.device),
        "timings_s": result.timings,
        "stage_info": result.info,
        "software": software_versions(),
        "notices": list(scan.notices) + list(result.notices),
        "outputs": names,
    }
