"""Benchmark the simulator: samples per second for (chi, local field) pairs and for (chi, field,
multi-echo GRE signal) samples, per source, matrix size and device, with the batched generator
(``SimulatedQSMDataset.generate_batch``). Median over repeats, after one warm-up batch.

Examples:
    python scripts/benchmark_simulation.py            # 64^3, 96^3, 160^3 on CPU (+CUDA)
    python scripts/benchmark_simulation.py --shapes 64 --repeats 3 --out docs/sim_bench.md
    python scripts/benchmark_simulation.py --sources shapes head hybrid --devices cuda --batch 32

The batch size given is the one for 64^3; larger matrices use proportionally fewer samples per
batch (at least one), so every batch holds about the same number of voxels.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dlqsm.benchmarking import hardware
from dlqsm.simulation.datasets import SimulatedQSMDataset
from dlqsm.simulation.rng import make_generator


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_one(size: int, source: str, signal: bool, device: str, batch: int, repeats: int,
              voxel_size=(1.0, 1.0, 1.0), seed: int = 0) -> dict:
    """Median samples/s (wall clock) and CPU ms/sample of ``generate_batch(batch)``."""
    ds = SimulatedQSMDataset(1, (size,) * 3, seed=seed, source=source, signal=signal,
                             voxel_size=voxel_size, max_tilt_deg=30, noise_std=(0.0, 0.01))
    gen_device = device if device.startswith("cuda") else "cpu"
    ds.generate_batch(batch, device, make_generator(seed, gen_device))  # warm-up
    _sync(device)
    rates, cpu = [], []
    for r in range(repeats):
        g = make_generator(seed + 1 + r, gen_device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = ds.generate_batch(batch, device, g)
        _sync(device)
        rates.append(batch / (time.perf_counter() - t0))
        cpu.append((time.process_time() - c0) / batch * 1000.0)
        del out
    rate = statistics.median(rates)
    return {"device": device, "size": size, "source": source,
            "output": "chi+field+signal" if signal else "chi+field", "batch": batch,
            "samples_per_s": rate, "ms_per_sample": 1000.0 / rate,
            "cpu_ms_per_sample": statistics.median(cpu)}


def to_markdown(rows, devices, voxel_size) -> str:
    lines = ["# Simulation throughput", "",
             f"{time.strftime('%Y-%m-%d %H:%M')} - {hardware()}", "",
             "Batched generation (`SimulatedQSMDataset.generate_batch`), voxel size "
             f"{voxel_size} mm, B0 tilt up to 30 degrees, median over repeats after a warm-up "
             "batch. CPU ms/sample is process CPU time (all threads) per sample.",
             "", "| device | matrix | source | output | batch | samples/s | ms/sample | "
             "CPU ms/sample |", "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['size']}^3 | {r['source']} | {r['output']} | "
                     f"{r['batch']} | {r['samples_per_s']:.1f} | {r['ms_per_sample']:.1f} | "
                     f"{r['cpu_ms_per_sample']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=int, nargs="+", default=[64, 96, 160],
                   help="cubic matrix sizes (default: 64 96 160)")
    p.add_argument("--sources", nargs="+", default=["shapes", "head"],
                   choices=["shapes", "head", "hybrid"])
    p.add_argument("--outputs", nargs="+", default=["field", "signal"],
                   choices=["field", "signal"])
    p.add_argument("--devices", nargs="+", default=None,
                   help="cpu and/or cuda (default: cpu, plus cuda when available)")
    p.add_argument("--batch", type=int, default=16, help="batch size at 64^3 (default 16)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--voxel-size", type=float, nargs="+", default=[1.0, 1.0, 1.0],
                   help="three numbers (fixed, mm) or a low high range per axis (default 1 1 1)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        p.error("CUDA was requested but is not available")
    rows = []
    for device in devices:
        for size in args.shapes:
            batch = max(1, round(args.batch * (64 / size) ** 3))
            for source in args.sources:
                for output in args.outputs:
                    row = bench_one(size, source, output == "signal", device, batch,
                                    args.repeats, voxel_size=tuple(args.voxel_size))
                    rows.append(row)
                    print(f"{device:5s} {size:4d}^3 {source:7s} {row['output']:17s} "
                          f"batch {batch:3d}: {row['samples_per_s']:8.1f} samples/s "
                          f"({row['ms_per_sample']:.1f} ms/sample, CPU "
                          f"{row['cpu_ms_per_sample']:.1f} ms/sample)", flush=True)
    text = to_markdown(rows, devices, args.voxel_size)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print()
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
