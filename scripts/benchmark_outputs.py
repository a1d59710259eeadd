"""Benchmark what every reconstruct/infer run adds around the reconstruction itself: the
output-folder checks and lock, writing chimap.nii.gz atomically, its sha256 for record.json and
the chimap.png preview.

A random chi map (ppm) and a full mask of each shape stand in for a result (the cost does not
depend on the values). Reported per shape: median wall and CPU time over ``--repeats`` runs of
each step, in a fresh temporary folder each time.

    python scripts/benchmark_outputs.py                          # 164x205x205
    python scripts/benchmark_outputs.py --shapes 96x96x96 --repeats 5 --out bench.md
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from dlqsm.benchmarking import add_common_arguments, common_setup, hardware, measure, report
from dlqsm.evaluation.figures import chi_preview
from dlqsm.io.outputs import OutputDir, sha256_file


def _steps(shape, folder: Path) -> dict:
    rng = np.random.default_rng(0)
    chi = rng.normal(0, 0.05, shape).astype(np.float32)
    mask = np.ones(shape, bool)
    out = OutputDir(folder / "out", force=True)

    def lock():
        out.check(["chimap.nii.gz", "chimap.png", "record.json"])
        with out.lock():
            pass

    return {"check + lock": lock,
            "chimap.nii.gz (atomic)": lambda: out.nifti("chimap.nii.gz", chi, np.eye(4)),
            "sha256": lambda: sha256_file(out.path / "chimap.nii.gz"),
            "chimap.png preview": lambda: chi_preview(chi, mask, (1, 1, 1),
                                                      out.path / "chimap.png")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, devices=False)
    args = p.parse_args(argv)
    shapes, _ = common_setup(args)
    lines = ["# Output overhead of a reconstruct/infer run", "", hardware(), "",
             "| shape | step | wall s (median) | CPU s |", "|---|---|---|---|"]
    for shape in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            steps = _steps(shape, Path(tmp))
            (Path(tmp) / "out").mkdir()
            for name, fn in steps.items():
                _, wall, cpu, _ = measure(fn, "cpu", args.repeats)
                lines.append(f"| {'x'.join(map(str, shape))} | {name} | {wall:.3f} | "
                             f"{cpu:.3f} |")
    report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
