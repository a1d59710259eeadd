"""How much of a local field the dipole model explains: in vivo against simulated heads.

For every case folder given (the 2016 challenge layout, or a case folder of the independent
suite / ``dlqsm simulate`` with ``localfield.nii.gz`` / ``field.nii.gz``, ``mask.nii.gz`` and a
reference ``chi.nii.gz``) it reports

* ``near_cone_ratio``: the field's power near the magic-angle cone over the power far from it at
  matched spatial frequencies (:func:`dlqsm.pipeline.inversion.regularization.gcv_curve`; a
  dipole field has none on the cone, white noise as much as anywhere);
* ``ref_field_residual``: ||f - D chi_ref|| / ||f|| in the mask (demeaned), with chi_ref the
  case's reference (COSMOS for the 2016 subject, the truth for simulated heads) put through
  dlqsm's dipole operator (zero-padded): the part of the measured field that the reference
  map does not explain. ``best_scale`` is the least-squares scale of D chi_ref to f (1 for
  consistent units);
* for the 2016 subject also the NRMSE of its chi_33 (the STI component along B0) against
  COSMOS: how far apart two references of the same brain are;
* TV's automatic weight (GCV) and its noise estimate.

Nothing here is tuned on any case: it is a diagnostic of the data. Usage::

    python scripts/benchmark_field_consistency.py /work/shared/data/challenge2016 \\
        ~/.cache/dlqsm/qsmforward/* -o docs/benchmarks/field_consistency.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from dlqsm.benchmarking import hardware, report
from dlqsm.evaluation.cases import folder_cases
from dlqsm.io.nifti import load_nifti
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.pipeline.inversion import regularization as reg


def _demeaned_nrmse(x: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    a, r = x[mask] - x[mask].mean(), ref[mask] - ref[mask].mean()
    return float(100 * np.linalg.norm(a - r) / np.linalg.norm(r))


def measure(folder: Path) -> dict:
    """The diagnostics of one case folder (see the module docstring)."""
    case = folder_cases(folder)[0]
    f, m = case.local_field.astype(np.float32), case.mask.astype(bool)
    op = DipoleOperator(f.shape, case.voxel_size, case.b0_dir, padding=16)
    pred = op.forward(torch.from_numpy(np.where(m, case.reference, 0).astype(np.float32)))
    pred = pred.numpy()
    r, q = f[m] - f[m].mean(), pred[m] - pred[m].mean()
    scale = float(r @ q / (q @ q))
    alpha, rec = reg.auto_tv_alpha(torch.from_numpy(f), torch.from_numpy(m),
                                   voxel_size=case.voxel_size, b0_dir=case.b0_dir)
    out = {"case": folder.name, "reference": case.reference_name,
           "shape": list(f.shape), "voxel_size_mm": [round(v, 3) for v in case.voxel_size],
           "near_cone_ratio": rec["near_cone_ratio"],
           "ref_field_residual_pct": float(100 * np.linalg.norm(r - q) / np.linalg.norm(r)),
           "best_scale": scale,
           "field_rms_ppm": float(np.sqrt(np.mean(f[m] ** 2))),
           "auto_tv_alpha": alpha, "gcv_noise_ppm": rec["gcv_noise_ppm"]}
    chi33 = folder / "chi_33.nii.gz"
    if chi33.is_file():
        c33 = load_nifti(chi33, ndim=3).data
        out["chi33_vs_reference_nrmse_pct"] = _demeaned_nrmse(c33, case.reference, m)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="case folders")
    p.add_argument("-o", "--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    rows = [measure(f) for f in args.folders]
    lines = ["| case | near-cone ratio | ||f - D chi_ref|| / ||f|| % | best scale | field RMS ppm "
             "| auto TV alpha | GCV noise ppm |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} ({r['reference']}) | {r['near_cone_ratio']:.3f} | "
                     f"{r['ref_field_residual_pct']:.1f} | {r['best_scale']:.2f} | "
                     f"{r['field_rms_ppm']:.4f} | {r['auto_tv_alpha']:.2g} | "
                     f"{r['gcv_noise_ppm']:.2g} |")
    for r in rows:
        if "chi33_vs_reference_nrmse_pct" in r:
            lines.append(f"\n{r['case']}: chi_33 vs {r['reference']} NRMSE "
                         f"{r['chi33_vs_reference_nrmse_pct']:.1f} %")
    lines.append(f"\nHardware: {hardware()}")
    report("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps([{k: (None if isinstance(v, float) and math.isnan(v)
                                             else v) for k, v in r.items()} for r in rows],
                                       indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
