"""dlqsm's default chain and model on data it did not make: the table of docs/benchmarks.md.

Runs the independent-data suite (:func:`dlqsm.evaluation.independent_suite.run_suite`, the
same as ``dlqsm evaluate --suite independent``): dlqsm's own simulated heads and qsm-forward
heads (fine-grid and voxel-sharp; 3 T, 7 T, oblique B0, anisotropic voxels) from raw phase
through ``reconstruct`` (classical default chain) and ``infer`` (shipped default model), and
the default inversion given the true local field; the 2016 challenge subject vs COSMOS; the real
3-echo crop. Scored with qsm-ci's scorer. Prints (and with ``--markdown`` writes) a table with
the git revision and the hardware, ready for docs/benchmarks.md; rerun it after changing the
chain. Generated cases are cached (``--cache``), so a rerun only reconstructs.

    python scripts/benchmark_independent.py -o bench_independent            # full size
    python scripts/benchmark_independent.py -o /tmp/bi --size reduced --force
    nice -n 10 python scripts/benchmark_independent.py -o bi --force --markdown bi.md
    python scripts/benchmark_independent.py -o bi_tfi --methods reconstruct-tfi   # TFI rows

Memory: qsm-forward 0.32 needs ~750 bytes per phantom voxel; the full suite peaks at ~6 GB
(fine-grid cases at 2 mm are built at 1 mm; voxel-sharp cases at 1 mm).
"""

from __future__ import annotations

import argparse
import time

from dlqsm.benchmarking import hardware, report
from dlqsm.evaluation.independent_suite import METHODS, run_suite


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", required=True, help="suite output folder")
    p.add_argument("--size", choices=("full", "reduced"), default="full")
    p.add_argument("--real-data", default="auto", help="folder with challenge2016/ and "
                   "multiecho_small/ (default ../shared/data beside the repository)")
    p.add_argument("--cache", help="cache of generated cases")
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   help="suite methods (default: reconstruct infer local-tv; reconstruct-tfi "
                   "is opt-in)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="overwrite the suite's tables")
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    res = run_suite(args.out, size=args.size, real_data=args.real_data, cache_dir=args.cache,
                    device=args.device, force=args.force, methods=tuple(args.methods))
    summary = (res.out_dir / "summary.md").read_text()
    text = (f"{summary}\nHardware: {hardware()}; device {args.device}; suite wall time "
            f"{(time.perf_counter() - t0) / 60:.1f} min (cases cached before: see record.json).\n")
    report(text, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
