"""Evaluate data consistency at inference (dlqsm.inference.consistency) with the default model.

For each case the network runs once (``Predictor.run``, data consistency off); every
data-consistency setting then starts from that output. Cases: held-out simulated heads
(:func:`dlqsm.evaluation.cases.simulated_heads`, seeds >= 10**6) at the given field noise
levels, and, reported but never used to choose, the 2016 challenge subject against COSMOS
(``--challenge-dir``; 160^3 at 1.0625 x 1.0625 x 1.0714 mm, B0 along z, local field in ppm).
Scores: NRMSE (%) and XSIM inside the mask (demeaned), and the relative field residual.

    python scripts/evaluate_consistency.py --heads 3 --noise 0 0.003 \\
        --challenge-dir /work/shared/data/challenge2016 --out docs/benchmarks/consistency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

SETTINGS = [
    ("none", 0, {}),
    ("l2", 5, {"lam": 0.01}),
    ("l2", 10, {"lam": 0.01}),
    ("l2", 10, {"lam": 0.001}),
    ("l2", 20, {"lam": 0.001}),
    ("tv", 10, {}),
]
"""(method, iterations, params) evaluated by default."""

CHALLENGE_VOXEL = (1.0625, 1.0625, 1.0714)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", type=int, default=3, help="held-out heads per noise level")
    p.add_argument("--shape", default="164x205x205", help="head matrix (default 164x205x205)")
    p.add_argument(
        "--noise", type=float, nargs="+", default=[0.0, 0.003], help="field noise std (ppm) levels"
    )
    p.add_argument("--challenge-dir", help="folder with phs_tissue, msk, chi_cosmos (.nii.gz)")
    p.add_argument(
        "--qsmforward",
        nargs="+",
        default=[],
        metavar="DIR",
        help="qsm-forward case folders (dlqsm.evaluation.independent."
        "make_qsmforward_case: localfield, mask, chi .nii.gz)",
    )
    p.add_argument("--checkpoint", help="model (default: the shipped default model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument(
        "--settings",
        nargs="+",
        metavar="METHOD:ITERS[:JSON]",
        help="settings to evaluate instead of the defaults, e.g. none:0 "
        "'l2:10:{\"lam\": 0.001}' tv:10",
    )
    return p.parse_args(argv)


def _scores(chi, ref, mask) -> dict:
    from dlqsm.metrics.functional import nrmse, xsim

    b = [torch.as_tensor(np.asarray(v, dtype=np.float32))[None, None] for v in (chi, ref, mask)]
    return {"nrmse": float(nrmse(b[0], b[1], b[2])), "xsim": float(xsim(b[0], b[1], b[2]))}


def _cases(args):
    from dlqsm.evaluation.cases import simulated_heads

    shape = tuple(int(s) for s in args.shape.split("x"))
    for noise in args.noise:
        for case in simulated_heads(args.heads, shape, noise_std=noise):
            yield (
                f"{case.name}_noise{noise:g}",
                "heads",
                noise,
                case.local_field,
                case.mask,
                case.reference,
                case.voxel_size,
                case.b0_dir,
            )
    for folder in args.qsmforward:
        from dlqsm.io.nifti import load_nifti
        from dlqsm.physics.geometry import b0_dir_from_affine, voxel_size_from_affine

        d = Path(folder)
        lf = load_nifti(d / "localfield.nii.gz")
        m = load_nifti(d / "mask.nii.gz").data > 0
        ref = load_nifti(d / "chi.nii.gz").data
        vox = tuple(float(v) for v in voxel_size_from_affine(lf.affine))
        b0 = tuple(float(v) for v in b0_dir_from_affine(lf.affine))
        yield d.name, "qsm-forward", None, lf.data, m, ref, vox, b0
    if args.challenge_dir:
        from dlqsm.io.nifti import load_nifti

        d = Path(args.challenge_dir)
        f = load_nifti(d / "phs_tissue.nii.gz").data
        m = load_nifti(d / "msk.nii.gz").data > 0
        ref = load_nifti(d / "chi_cosmos.nii.gz").data
        yield (
            "challenge2016",
            "in vivo (report only)",
            None,
            f,
            m,
            ref,
            CHALLENGE_VOXEL,
            (0.0, 0.0, 1.0),
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from dlqsm.inference import Predictor
    from dlqsm.inference.consistency import data_consistency

    settings = SETTINGS
    if args.settings:
        settings = []
        for item in args.settings:
            method, iters, *rest = item.split(":", 2)
            settings.append((method, int(iters), json.loads(rest[0]) if rest else {}))
    pred = Predictor(args.checkpoint, device="cpu")
    rows = []
    for name, kind, noise, f, m, ref, vox, b0 in _cases(args):
        t0 = time.perf_counter()
        out = pred.run(np.asarray(f, np.float32), np.asarray(m), voxel_size=vox, b0_dir=b0)
        t_net = time.perf_counter() - t0
        chi = torch.as_tensor(out.chi)
        ft, mt = torch.as_tensor(np.asarray(f, np.float32)), torch.as_tensor(np.asarray(m))
        for method, iters, params in settings:
            y, info = data_consistency(
                chi,
                ft * mt,
                mt,
                voxel_size=vox,
                b0_dir=b0,
                method=method,
                iterations=max(iters, 1),
                **params,
            )
            row = {
                "case": name,
                "kind": kind,
                "noise_ppm": noise,
                "method": method,
                "iterations": iters,
                "params": params,
                "network_s": t_net,
                "dc_s": info["seconds"],
                "residual_before": info["residual_before"],
                "residual_after": info["residual_after"],
                **_scores(y.numpy(), ref, m),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for r in rows:
        key = f"{r['kind']}|{r['noise_ppm']}|{r['method']}|{r['iterations']}|{r['params']}"
        summary.setdefault(key, []).append(r["nrmse"])
    for key, vals in summary.items():
        print(f"{key}: NRMSE median {statistics.median(vals):.2f} % (n={len(vals)})")
    if args.out:
        from dlqsm.io.outputs import write_json_atomic

        write_json_atomic(
            Path(args.out),
            {"rows": rows, "settings": [list(s) for s in settings], "torch_threads": args.threads},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
