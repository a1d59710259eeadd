"""Issue 10's large-background case: a 1 mm qsm-forward head built at 0.5 mm, true total field.

Builds (or finds in its cache) the fine-grid qsm-forward case at 1 mm (phantom on a 0.5 mm
grid, brought to 1 mm by qsm-forward: k-space truncation of the signal, image-space resampling
of the maps) and runs

* ``total-unshimmed``: ``dlqsm reconstruct --total-field`` on qsm-forward's *unshimmed* true
  total field (air and bone fields included; ``totalfield.nii.gz``), the issue's 220 % case;
* ``total-shimmed``: the same on qsm-forward's 2nd-order-shimmed true total field
  (``desc-shimmed_fieldmap``);
* ``local-tv``: ``dlqsm reconstruct --local-field`` on the true local field;
* ``reconstruct`` (with ``--raw``): the default chain from raw phase,

scored with qsm-ci's scorer (:func:`dlqsm.evaluation.independent.score_qsmci`), with the
background stage's convergence (iterations, relative residual, converged) from record.json.
``--param`` passes stage parameters to every run (e.g. ``bfr.max_iter=40`` to compare).

Memory: qsm-forward 0.32's ``generate_field`` builds its dipole kernel and field in float64 on
a twice-padded grid (~750 bytes per phantom voxel, ~40 GB for this head). This script swaps in,
for the case generation only, the same field (same twice-sized zero-phase padding with the
corner value, same kernel, mean removed in the mask) computed in float32 with
:class:`dlqsm.physics.dipole.DipoleOperator`, and evaluates qsm-forward's own shim fit
(its ``_create_model`` and least-squares coefficients) slab by slab; everything else is
qsm-forward's. Peak memory ~10 GB. Because the field differs from qsm-forward's at float32
round-off, the case goes to its own cache (``qsmforward-lowmem`` beside the suite's).

    nice -n 10 python scripts/benchmark_large_background.py -o /tmp/lbg --raw
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from dlqsm.benchmarking import hardware, report
from dlqsm.evaluation.independent import (
    CaseSpec,
    default_cache_dir,
    generate_case,
    require_eval_extra,
    score_qsmci,
)
from dlqsm.evaluation.independent_suite import _cli
from dlqsm.physics.dipole import DipoleOperator

SHIMMED = "bids/derivatives/qsm-forward/sub-1/anat/sub-1_desc-shimmed_fieldmap.nii"


def _field_float32(chi, mask=None, voxel_size=(1, 1, 1), B0_dir=(0, 0, 1)):  # noqa: N803
    """qsm-forward's ``generate_field`` (ppm) in float32 with dlqsm's dipole operator.

    qsm-forward pads chi to twice its size with its corner value and sets D(0) = 1/3, then
    removes the mean inside ``mask``: the same as the zero-padded field of chi - corner plus
    corner / 3. (qsm-forward pairs its first axis's frequencies with the second voxel size;
    the cases use equal in-plane voxels, so that does not matter here.)
    """
    x = torch.from_numpy(np.asarray(chi, dtype=np.float32))
    corner = float(x[-1, -1, -1])
    x -= corner
    pad = [n // 2 for n in x.shape]
    with torch.no_grad():
        op = DipoleOperator(
            x.shape,
            tuple(float(v) for v in voxel_size),
            np.asarray(B0_dir, dtype=np.float64),
            padding=pad,
        )
        field = op.forward(x).numpy() + corner / 3.0
    del x
    if mask is not None:
        field -= field[np.asarray(mask) != 0].mean(dtype=np.float64)
    return field


def _shimmed_slabs(field, mask, order=2):
    """qsm-forward's ``generate_shimmed_field`` with the fit evaluated slab by slab."""
    from qsm_forward import qsm_forward as qf

    dim = field.shape
    x1, y1, z1 = np.nonzero(mask)
    model = qf._create_model(x1, y1, z1, dim, order)
    b = np.linalg.pinv(model) @ field[x1, y1, z1]
    del model, x1, y1, z1
    fit = np.empty(dim, dtype=np.float32)
    ys, zs = np.meshgrid(np.arange(dim[1]), np.arange(dim[2]), indexing="ij")
    for i in range(dim[0]):
        xs = np.full(ys.size, i)
        fit[i] = (qf._create_model(xs, ys.ravel(), zs.ravel(), dim, order) @ b).reshape(dim[1:])
    return fit, field - fit, b


@contextlib.contextmanager
def low_memory_qsm_forward():
    """Patch qsm-forward's field and shim steps with the float32 / slab versions above."""
    require_eval_extra()
    from qsm_forward import qsm_forward as qf

    with (
        mock.patch.object(qf, "generate_field", _field_float32),
        mock.patch.object(qf, "generate_shimmed_field", _shimmed_slabs),
    ):
        yield


def _local_error(local_file, folder) -> float:
    """||l - l_true|| / ||l_true|| in the mask, both demeaned (PDF leaves a constant)."""
    from dlqsm.io.nifti import load_nifti

    mask = load_nifti(folder / "mask.nii.gz", ndim=3).data > 0.5
    est = load_nifti(local_file, ndim=3).data[mask].astype(np.float64)
    ref = load_nifti(folder / "localfield.nii.gz", ndim=3).data[mask].astype(np.float64)
    est, ref = est - est.mean(), ref - ref.mean()
    return float(np.linalg.norm(est - ref) / np.linalg.norm(ref))


def run_case(case, methods, out: Path, params, device: str) -> list[dict]:
    """Run ``methods`` on ``case``; rows with qsm-ci metrics and the bfr stage info."""
    mask = str(case.path / "mask.nii.gz")
    inputs = {
        "total-unshimmed": ["--total-field", str(case.path / "totalfield.nii.gz")],
        "total-shimmed": ["--total-field", str(case.path / SHIMMED)],
        "local-tv": ["--local-field", str(case.path / "localfield.nii.gz")],
        "reconstruct": [str(case.raw_input)],
    }
    extra = [a for p in params for a in ("--param", p)]
    rows = []
    for method in methods:
        dest = out / method
        argv = [
            "reconstruct",
            *inputs[method],
            "--mask",
            mask,
            "-o",
            str(dest),
            "--force",
            "-q",
            "--device",
            device,
            *extra,
        ]
        rc, seconds, err = _cli(argv)
        row = {"method": method, "time_s": seconds, "status": "ok" if rc == 0 else err}
        if rc == 0:
            row.update(score_qsmci(dest / "chimap.nii.gz", case.path))
            rec = json.loads((dest / "record.json").read_text())
            row["bfr"] = rec.get("stage_info", {}).get("bfr")
            if method.startswith("total"):
                row["local_error"] = _local_error(dest / "localfield.nii.gz", case.path)
            row["bfr_s"] = rec.get("timings_s", {}).get("bfr")
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    return rows


def _table(rows) -> str:
    lines = [
        "| input | NRMSE % | dNRMSE % | XSIM | DGM lin. | bfr iterations | bfr residual "
        "| converged | bfr s | total s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | failed: {r['status']} |" + " |" * 8)
            continue
        b = r.get("bfr") or {}
        res = b.get("residual")
        lines.append(
            f"| {r['method']} | {r['nrmse']:.1f} | {r['nrmse_detrend']:.1f} | {r['xsim']:.3f} "
            f"| {r.get('dgm_linearity', float('nan')):.3f} | {b.get('iterations', '-')} "
            f"| {'-' if res is None else f'{res:.1e}'} | {b.get('converged', '-')} "
            f"| {r['bfr_s'] or 0:.1f} | {r['time_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", required=True, help="output folder (overwritten)")
    p.add_argument("--cache", help="case cache (default: qsmforward-lowmem beside the suite's)")
    p.add_argument("--shape", nargs=3, type=int, default=(164, 205, 205))
    p.add_argument("--voxel", type=float, default=1.0, help="scan voxel size (mm)")
    p.add_argument("--fine-factor", type=int, default=2)
    p.add_argument("--field-strength", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=1_000_000)
    p.add_argument("--raw", action="store_true", help="also run the chain from raw phase")
    p.add_argument("--param", action="append", default=[], help="stage parameter for every run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args(argv)
    spec = CaseSpec(
        kind="fine",
        field_strength=args.field_strength,
        voxel_size=args.voxel,
        shape=tuple(args.shape),
        seed=args.seed,
        fine_factor=args.fine_factor,
    )
    cache = Path(args.cache) if args.cache else default_cache_dir().with_name("qsmforward-lowmem")
    t0 = time.perf_counter()
    with low_memory_qsm_forward():
        case = generate_case(spec, cache_dir=cache, progress=True)
    t_case = time.perf_counter() - t0
    methods = ["total-unshimmed", "total-shimmed", "local-tv"] + (
        ["reconstruct"] if args.raw else []
    )
    out = Path(args.out)
    rows = run_case(case, methods, out, args.param, args.device)
    text = (
        f"{spec.name} {spec.shape} (phantom at {args.voxel / args.fine_factor:g} mm), "
        f"case {case.path.name} ready in {t_case:.0f} s; params {args.param or 'defaults'}\n\n"
        f"{_table(rows)}\n\nHardware: {hardware()}; device {args.device}.\n"
    )
    report(text, args.markdown)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
