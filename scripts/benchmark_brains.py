"""Benchmark brain-like sample generation (dlqsm.simulation.brains): samples/s per size.

Cases: patches at random brain positions (``--shapes``, voxel size ``--voxel``) and, unless
``--no-whole``, whole brains (a 176 x 208 x 176 mm field of view at ``--voxel``, centred on
the brain). Each case is run ``--repeats`` times after one warm-up (the template atlas is
loaded once per process and not timed); the median wall time and samples/s are reported,
with and without the fine grid (``fine_factor`` 2 and 1) and, with ``--background``, with
PDF background removal on the whole brain.

    python scripts/benchmark_brains.py --out docs/benchmarks/brains.md
    python scripts/benchmark_brains.py --shapes 64x64x64 --repeats 2 --no-whole
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from dlqsm.benchmarking import add_common_arguments, common_setup, hardware, report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p, shapes=("64x64x64", "96x96x96"), repeats=3, devices=False)
    p.add_argument("--voxel", type=float, default=1.0, help="voxel size, mm (default 1)")
    p.add_argument("--fine", type=int, nargs="+", default=[2, 1], help="fine factors")
    p.add_argument("--no-whole", action="store_true", help="skip whole brains")
    p.add_argument("--background", action="store_true", help="also whole brains with PDF")
    return p.parse_args(argv)


def _time(ds, repeats: int) -> list[float]:
    ds.sample_with_meta(0)  # warm-up
    out = []
    for i in range(1, repeats + 1):
        t0 = time.perf_counter()
        ds.sample_with_meta(i)
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    shapes, _ = common_setup(args)
    from dlqsm.simulation.brains import BrainDataset, load_atlas

    t0 = time.perf_counter()
    load_atlas()
    atlas_s = time.perf_counter() - t0
    cases = [(f"patch {'x'.join(map(str, s))}", {"shape": s}) for s in shapes]
    whole = {"fov_mm": (176, 208, 176), "centre": "brain"}
    if not args.no_whole:
        cases.append(("whole brain 176x208x176 mm", whole))
    rows = []
    for name, kw in cases:
        for f in args.fine:
            ds = BrainDataset(args.repeats + 1, seed=0, voxel_size=args.voxel, fine_factor=f, **kw)
            t = statistics.median(_time(ds, args.repeats))
            rows.append(f"| {name} | {f} | none | {t:.2f} | {1 / t:.2f} |")
    if args.background and not args.no_whole:
        ds = BrainDataset(
            args.repeats + 1,
            seed=0,
            voxel_size=args.voxel,
            fine_factor=2,
            background="pdf",
            **whole,
        )
        t = statistics.median(_time(ds, args.repeats))
        rows.append(f"| whole brain 176x208x176 mm | 2 | pdf | {t:.2f} | {1 / t:.2f} |")
    text = "\n".join(
        [
            "# Brain-like sample generation (dlqsm.simulation.brains)",
            "",
            f"{hardware()}; voxel {args.voxel} mm; median of {args.repeats} runs after a warm-up;"
            f" template atlas loaded once per process in {atlas_s:.1f} s (not timed).",
            "",
            "| case | fine factor | background | s / sample | samples / s |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
