"""Training throughput of dlqsm networks, with data production timed separately.

For each device (CPU, and CUDA when available), model (configs/model/<name>.yaml) and volume
size, times full optimisation steps (forward, loss, backward, AdamW step) on one fixed batch
already on the device, so the numbers are pure compute. Separately, times how fast batches are
produced: the on-the-fly simulator through a DataLoader (0 and N worker processes), and on
CUDA the batched GPU simulator. Data loading keeps up when its samples/s exceed the step's.

Examples:
    python scripts/benchmark_training.py --out docs/benchmark_training.md
    python scripts/benchmark_training.py --shapes 32:2 --models unet --steps 3   # quick check
    python scripts/benchmark_training.py --devices cuda --precision bf16 --shapes 128:4
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from dlqsm.lit.datamodule import collate
from dlqsm.lit.train import config_dir
from dlqsm.simulation.datasets import SimulatedQSMDataset


def parse_shape(text: str) -> tuple[tuple[int, int, int], int]:
    """'64:8' -> ((64, 64, 64), 8); '96x112x80:2' -> ((96, 112, 80), 2)."""
    size, _, batch = text.partition(":")
    dims = [int(v) for v in size.lower().split("x")]
    dims = dims * 3 if len(dims) == 1 else dims
    return tuple(dims), int(batch or 1)


def build(model: str, loss: str):
    """(net, loss) from the training configs."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"loss={loss}"])
    return instantiate(cfg.model), instantiate(cfg.loss)


def simulated(shape, length, seed, source):
    return SimulatedQSMDataset(length, shape=shape, seed=seed, source=source,
                               voxel_size=(1.0, 1.0, 1.0), max_tilt_deg=20.0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(net, loss_fn, batch, device, steps: int, warmup: int, precision: str) -> dict:
    """Seconds per optimisation step (mean over ``steps`` after ``warmup``) and peak memory."""
    net = net.to(device).train()
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = net(batch["field"], batch["mask"], batch["b0_dir"], batch["voxel_size"])
            total, _ = loss_fn(pred, batch)
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"step_s": dt, "peak_gb": peak}


def time_loader(dataset, batch: int, workers: int, n_batches: int) -> float:
    """Seconds per batch produced by a DataLoader (first batch excluded: worker start-up)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers,
                                         collate_fn=collate, shuffle=False)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(n_batches):
        try:
            next(it)
        except StopIteration:
            break
        n += 1
    return (time.perf_counter() - t0) / max(n, 1)


def time_gpu_simulator(dataset, batch: int, device, n_batches: int) -> float:
    dataset.generate_batch(batch, device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        dataset.generate_batch(batch, device)
    sync(device)
    return (time.perf_counter() - t0) / n_batches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["unet", "unrolled"])
    p.add_argument("--shapes", nargs="+", default=["64:8", "128:2"],
                   help="SIZE[:BATCH] with SIZE = N or XxYxZ (default: 64:8 128:2)")
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: all)")
    p.add_argument("--precision", default="32", choices=["32", "bf16", "fp16"],
                   help="autocast precision on CUDA (CPU always runs float32)")
    p.add_argument("--loss", default="l1_physics")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--source", default="hybrid", help="simulation source for data timing")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--data-batches", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    devices = [torch.device(d) for d in devices if d != "cuda" or torch.cuda.is_available()]
    shapes = [parse_shape(s) for s in args.shapes]

    rows, data_rows = [], []
    for shape, batch in shapes:
        sample_batch = collate([simulated(shape, batch, 0, args.source)[i] for i in range(batch)])
        for device in devices:
            prec = args.precision if device.type == "cuda" else "32"
            for model in args.models:
                net, loss_fn = build(model, args.loss)
                n_params = sum(q.numel() for q in net.parameters())
                r = time_steps(net, loss_fn, sample_batch, device, args.steps, args.warmup, prec)
                rows.append((device.type, model, n_params, shape, batch, prec, r))
                print(f"{device.type} {model} {shape} b{batch}: {1000 * r['step_s']:.1f} ms/step",
                      flush=True)
        ds = simulated(shape, (args.data_batches + 1) * batch, 1, args.source)
        for workers in sorted({0, args.workers}):
            dt = time_loader(ds, batch, workers, args.data_batches)
            data_rows.append((shape, batch, f"DataLoader, {workers} workers", dt))
        for device in devices:
            if device.type == "cuda":
                dt = time_gpu_simulator(ds, batch, device, args.data_batches)
                data_rows.append((shape, batch, "generate_batch on GPU", dt))
    report = render(rows, data_rows, args)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


def render(rows, data_rows, args) -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = ["# Training throughput", "",
             f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"torch threads {torch.get_num_threads()}; GPU: {gpu}; torch {torch.__version__}.",
             f"Loss `{args.loss}`, AdamW; {args.steps} timed steps after {args.warmup} warm-up "
             "steps on one fixed batch (compute only; data production timed separately).", "",
             "| device | model | parameters | volume | batch | precision | ms/step | steps/s "
             "| samples/s | peak GPU memory (GiB) |",
             "|---|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for dev, model, n, shape, batch, prec, r in rows:
        mem = f"{r['peak_gb']:.2f}" if r["peak_gb"] is not None else "-"
        lines.append(f"| {dev} | {model} | {n / 1e6:.2f} M | {'x'.join(map(str, shape))} | "
                     f"{batch} | {prec} | {1000 * r['step_s']:.1f} | {1 / r['step_s']:.2f} | "
                     f"{batch / r['step_s']:.2f} | {mem} |")
    lines += ["", f"Data production (simulation source `{args.source}`):", "",
              "| volume | batch | producer | s/batch | samples/s |", "|---|---:|---|---:|---:|"]
    for shape, batch, producer, dt in data_rows:
        lines.append(f"| {'x'.join(map(str, shape))} | {batch} | {producer} | {dt:.3f} | "
                     f"{batch / dt:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
