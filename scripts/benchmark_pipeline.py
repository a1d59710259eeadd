"""Benchmark the classical QSM chain end to end on a simulated head.

Per stage: wall time and peak memory (CPU: resident set size above the pre-stage level, sampled
every 5 ms from /proc; CUDA: ``torch.cuda.max_memory_allocated`` above the pre-stage level);
end to end: NRMSE (%), XSIM and DGM linearity |1 - slope| of chi against the simulated truth
(:mod:`dlqsm.metrics.functional`, masked and demeaned). Markdown on stdout and in ``--out``.

    python scripts/benchmark_pipeline.py                          # 164x205x205, 4 echoes
    python scripts/benchmark_pipeline.py --shapes 64x80x80 --devices cpu --out /tmp/b.md

The same case is also reconstructed from the simulator's true total field and true local field
(first device only; ``--no-references`` skips them). The simulation itself is not timed. Each
(shape, device) runs ``--repeat`` times after one untimed warm-up on a small volume (CUDA
kernels, FFT plans); the fastest run is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from contextlib import contextmanager

import torch

from dlqsm.benchmarking import PeakMemory, add_common_arguments, common_setup, report
from dlqsm.io.scan import Scan
from dlqsm.metrics.functional import dgm_linearity, nrmse, xsim
from dlqsm.pipeline.reconstruct import STAGES, reconstruct
from dlqsm.simulation.head import DGM_LABELS, simulate_head_case

TARGET_S = 30.0


class MemoryProbe:
    """``hook(stage)`` for :func:`reconstruct`: peak memory (MiB) above the level at entry."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peaks: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        with PeakMemory(self.device) as peak:
            yield
        self.peaks[stage] = max(peak.peak_mb, 0.0)


def simulate(shape, n_echoes: int, seed: int):
    """A head case with ``n_echoes`` echoes (4 ms spacing from 4 ms), and its Scan."""
    te = tuple(0.004 + 0.006 * i for i in range(n_echoes))
    case = simulate_head_case(shape, (1.0, 1.0, 1.0), seed=seed, snr=50.0, te=te,
                              lesion_prob=0.0)
    scan = Scan(phase=case.phase.numpy(), magnitude=case.magnitude.numpy(),
                te=case.te.numpy(), field_strength=case.b0_tesla, affine=case.affine,
                mask=case.mask.numpy())
    return case, scan


def score(chi: torch.Tensor, case) -> dict:
    """NRMSE (%), XSIM and DGM linearity of chi against the case's truth."""
    chi = chi.detach().cpu()
    ids = list(DGM_LABELS.values())
    return {"nrmse": float(nrmse(chi, case.chi, case.mask)),
            "xsim": float(xsim(chi, case.chi, case.mask)),
            "dgm_linearity": float(dgm_linearity(chi, case.chi, case.labels, ids))}


def reference_scans(case) -> dict:
    """The same case entered later in the chain: the true total field, the true local field."""
    common = {"mask": case.mask.numpy(), "affine": case.affine}
    return {"true total field": Scan(total_field=case.total_field.numpy(), **common),
            "true local field": Scan(local_field=case.local_field.numpy(), **common)}


def run_one(scan, case, device, args) -> dict:
    """Best of ``args.repeats`` runs: stage timings, peak memory and scores."""
    best = None
    for _ in range(args.repeats):
        probe = MemoryProbe(torch.device(device))
        res = reconstruct(scan, bfr=args.bfr, method=args.method, unwrap=args.unwrap,
                          device=device, progress=args.progress, stage_hook=probe)
        row = {"timings": dict(res.timings), "memory": dict(probe.peaks),
               "scores": score(res.chimap, case)}
        if best is None or row["timings"]["total"] < best["timings"]["total"]:
            best = row
        del res
    return best


def warm_up(device, args) -> None:
    _, scan = simulate((32, 40, 40), args.echoes, seed=99)
    reconstruct(scan, bfr=args.bfr, method=args.method, unwrap=args.unwrap, device=device,
                progress=False)


def markdown(rows, args) -> str:
    lines = [
        "# Classical pipeline benchmark (`scripts/benchmark_pipeline.py`)", "",
        f"Simulated head (`simulate_head_case`, 1 mm, SNR 50, {args.echoes} echoes, 3 T), "
        f"unwrap `{args.unwrap}`, echo fit `wls`, background `{args.bfr}`, inversion "
        f"`{args.method}`, given brain mask. Best of {args.repeats} run(s) after a warm-up.",
        f"Host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. Target: whole chain "
        f"< {TARGET_S:.0f} s on a 2-core CPU.", "",
        "| shape | device | input | " + " | ".join(f"{s} s" for s in STAGES[1:]) +
        " | total s | peak MiB (stage) | NRMSE % | XSIM | DGM \\|1-slope\\| |",
        "|" + "---|" * (len(STAGES) + 7),
    ]
    for r in rows:
        t, mem, sc = r["timings"], r["memory"], r["scores"]
        peak_stage = max(mem, key=mem.get) if mem else "-"
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} | {r['device']} | {r['input']} | "
            + " | ".join(f"{t[s]:.2f}" if s in t else "-" for s in STAGES[1:])
            + f" | {t['total']:.2f} | {mem.get(peak_stage, 0):.0f} ({peak_stage}) | "
            f"{sc['nrmse']:.1f} | {sc['xsim']:.3f} | {sc['dgm_linearity']:.3f} |")
    lines += ["", "Rows 'true total field' / 'true local field' enter the same case later in "
              "the chain (the simulator's fields), showing what each part of the chain loses.",
              "Peak memory is per stage above the level at the stage's start (CPU: RSS "
              "sampled every 5 ms; CUDA: allocated tensors); the largest stage is shown.",
              "Times measured on a shared machine vary with its load."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p, repeats=1)
    p.add_argument("--echoes", type=int, default=4)
    p.add_argument("--method", default="tv")
    p.add_argument("--bfr", default="pdf")
    p.add_argument("--unwrap", default="romeo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="stage lines on stderr")
    p.add_argument("--no-references", dest="references", action="store_false",
                   help="skip the runs from the true total / local field")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    shapes, devices = common_setup(args)
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    rows = []
    for device in devices:
        warm_up(device, args)
        for shape_text, shape in zip(args.shapes, shapes, strict=True):
            t0 = time.perf_counter()
            case, scan = simulate(shape, args.echoes, args.seed)
            print(f"simulated {shape_text} in {time.perf_counter() - t0:.1f} s; "
                  f"reconstructing on {device}", file=sys.stderr)
            rows.append({"shape": shape, "device": device, "input": "raw phase",
                         **run_one(scan, case, device, args)})
            if args.references and device == devices[0]:
                for name, ref in reference_scans(case).items():
                    rows.append({"shape": shape, "device": device, "input": name,
                                 **run_one(ref, case, device, args)})
            del case, scan
    text = markdown(rows, args)
    report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
