"""Benchmark dataset mode: a simulated cohort through ``dlqsm reconstruct`` with --jobs 1 and 2.

A BIDS dataset of ``--subjects`` simulated adult heads (one session each, 4 echoes, 164x205x205
at 1 mm by default; :func:`dlqsm.study.simulated.write_megre_dataset`) is written once to
``--data`` (reused when it is there), then reconstructed into a fresh derivatives folder per
``--jobs`` value with the default classical chain (or ``--flags "..."`` for reconstruct).
Reported: wall time of the whole dataset, seconds per run (wall / runs), the median per-run
time from the runs table, CPU seconds (this process and its worker processes; on a shared
machine the better measure of cost), and the study table over the phantom labels. Markdown
on stdout and in ``--out``.

    nice -n 10 python scripts/benchmark_dataset.py --subjects 10 --data /tmp/cohort
    python scripts/benchmark_dataset.py --subjects 3 --shapes 96x120x120 --flags "--method tkd"
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import time
from pathlib import Path

from dlqsm.benchmarking import add_common_arguments, common_setup, hardware, report
from dlqsm.cli.main import main as dlqsm
from dlqsm.study.dataset import read_summary
from dlqsm.study.simulated import write_megre_dataset


def make_data(folder: Path, n: int, shape) -> float:
    """Write the cohort unless a complete one is there; returns the seconds it took."""
    marker = folder / f".complete-{n}-{'x'.join(map(str, shape))}"
    if marker.exists():
        return 0.0
    if folder.exists():
        shutil.rmtree(folder)
    t0 = time.perf_counter()
    write_megre_dataset(
        folder, [f"{i + 1:02d}" for i in range(n)], None, shape=shape, voxel_size=(1.0, 1.0, 1.0)
    )
    marker.write_text("")
    return time.perf_counter() - t0


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the workers)."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(data: Path, out: Path, jobs: int, extra: list[str]) -> dict:
    """Reconstruct the whole dataset into a fresh ``out``; wall time and the runs table."""
    if out.exists():
        shutil.rmtree(out)
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    code = dlqsm(["reconstruct", str(data), "-o", str(out), "--jobs", str(jobs), "-q", *extra])
    wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - c0
    rows = read_summary(sorted((out / "logs").glob("*_runs.tsv"))[-1])
    per_run = [float(r["seconds"]) for r in rows if r["status"] == "done"]
    return {
        "jobs": jobs,
        "code": code,
        "wall": wall,
        "cpu": cpu,
        "runs": len(rows),
        "done": len(per_run),
        "median_run": statistics.median(per_run) if per_run else 0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p, shapes=("164x205x205",), repeats=1, devices=False)
    p.add_argument("--subjects", type=int, default=10)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--data", default="/tmp/dlqsm_benchmark_cohort", help="cohort folder")
    p.add_argument("--flags", default="", help="flags for dlqsm reconstruct, in one string")
    args = p.parse_args()
    extra = shlex.split(args.flags)
    shapes, _ = common_setup(args)
    shape = shapes[0]
    data = Path(args.data)
    gen = make_data(data, args.subjects, shape)
    results = [run(data, data.parent / f"{data.name}_deriv_jobs{j}", j, extra) for j in args.jobs]
    study = data.parent / f"{data.name}_deriv_jobs{args.jobs[-1]}"
    t0 = time.perf_counter()
    dlqsm(["study", str(study), "--labels", str(data / "derivatives" / "phantom"), "-q", "--force"])
    t_study = time.perf_counter() - t0
    load = os.getloadavg()
    lines = [
        f"Dataset mode: {args.subjects} simulated heads {'x'.join(map(str, shape))}, 4 echoes, "
        f"`dlqsm reconstruct` {' '.join(extra) or '(default chain)'}",
        "",
        f"{hardware()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"(1/5/15 min); cohort written in {gen:.0f} s" + (" (reused)" if gen == 0 else ""),
        "",
        "| --jobs | runs done | wall (s) | s per run (wall / runs) | median run (s) | CPU (s) "
        "| speed-up (wall) |",
        "|---|---|---|---|---|---|---|",
    ]
    base = results[0]["wall"]
    for r in results:
        lines.append(
            f"| {r['jobs']} | {r['done']}/{r['runs']} | {r['wall']:.0f} | "
            f"{r['wall'] / max(r['runs'], 1):.1f} | {r['median_run']:.1f} | {r['cpu']:.0f} | "
            f"{base / r['wall']:.2f} |"
        )
    lines += ["", f"Study table over the phantom labels ({args.subjects} runs): {t_study:.1f} s."]
    report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
