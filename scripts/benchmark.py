"""Run dlqsm's benchmarks and collect their markdown tables.

    python scripts/benchmark.py                      # every suite, default (full) sizes
    python scripts/benchmark.py inversion pipeline   # some suites
    python scripts/benchmark.py --quick              # reduced sizes, a smoke test
    python scripts/benchmark.py inversion -- --methods tkd tv --device cuda   # pass flags on

Each suite is a script of its own (scripts/benchmark_<suite>.py, runnable alone); this runner
executes them one after the other in fresh processes and writes each table to
``docs/benchmarks/<suite>.md`` (``--out-dir``), with the hardware and the command on top.
Numbers belong in docs/benchmarks.md, quoted with the hardware they came from.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

from dlqsm.benchmarking import hardware

HERE = Path(__file__).resolve().parent
SUITES = {
    "inversion": ["--shapes", "164x205x205", "256x256x176", "--repeats", "3"],
    "background": ["--shapes", "164x205x205", "--repeats", "3"],
    "fieldmap": ["--shapes", "164x205x205", "--echoes", "4", "--repeats", "3"],
    "pipeline": ["--shapes", "164x205x205", "--echoes", "4"],
    "simulation": ["--shapes", "64", "96", "160", "--repeats", "5"],
    "training": ["--shapes", "64:8", "128:2", "--steps", "3", "--warmup", "1"],
    "inference": ["--shapes", "164x205x205", "--repeats", "3"],
    "dataset": ["--shapes", "164x205x205", "--subjects", "10", "--jobs", "1", "2"],
}
QUICK = {
    "inversion": ["--shapes", "48x56x56", "--repeats", "1"],
    "background": ["--shapes", "48x56x56", "--repeats", "1"],
    "fieldmap": ["--shapes", "48x56x56", "--repeats", "1"],
    "pipeline": ["--shapes", "48x60x60"],
    "simulation": ["--shapes", "32", "--repeats", "1"],
    "training": ["--shapes", "32", "--steps", "2"],
    "inference": ["--shapes", "48x56x56", "--repeats", "1"],
    "dataset": ["--shapes", "32x40x40", "--subjects", "2", "--jobs", "1", "2", "--flags",
                "--method tkd --bfr vsharp --unwrap laplacian"],
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suites", nargs="*", metavar="SUITE",
                    help=f"some of {', '.join(SUITES)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (smoke test)")
    ap.add_argument("--out-dir", default="docs/benchmarks", help="where the tables go")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        ap.error(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for suite in args.suites or list(SUITES):
        flags = (QUICK if args.quick else SUITES)[suite] + extra
        out = out_dir / f"{suite}.md"
        cmd = [sys.executable, str(HERE / f"benchmark_{suite}.py"), *flags, "--out", str(out)]
        print(f"== {suite}: {' '.join(cmd[1:])}", flush=True)
        if subprocess.call(cmd) != 0:
            failed.append(suite)
            continue
        head = (f"<!-- {datetime.date.today()} | {hardware()} -->\n"
                f"<!-- python {' '.join(cmd[1:])} -->\n\n")
        out.write_text(head + out.read_text())
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
