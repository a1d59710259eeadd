"""Benchmark learned inference: time per volume, whole volume and sliding window, CPU and CUDA.

The network is a checkpoint (``--checkpoint``), else the default model shipped with dlqsm when
installed, else a freshly initialised network of ``configs/model/<--model>.yaml`` (untrained:
the timing does not depend on the weights). The input is a smooth random local field (ppm) in
an ellipsoidal brain mask, B0 tilted by ``--b0-tilt`` degrees (0: no resampling; otherwise the
timing includes the rotation to the network's B0 axis and back).

Reported per device, shape and mode: median and minimum wall time of
:meth:`dlqsm.inference.Predictor.run` over ``--repeats`` runs after ``--warmup`` runs, the
window size, and the peak memory of the first run above its start
(:class:`dlqsm.benchmarking.PeakMemory`: ``torch.cuda.max_memory_allocated`` on CUDA, the sampled
resident set size on the CPU).

    python scripts/benchmark_inference.py --out docs/bench_inference.md
    python scripts/benchmark_inference.py --shapes 64x80x80 --repeats 1 --devices cpu
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from dlqsm.benchmarking import PeakMemory, add_common_arguments, common_setup, hardware
from dlqsm.inference import Predictor, default_model_installed

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="trained model (default: shipped model, else fresh)")
    p.add_argument("--model", default="unet", help="configs/model/<MODEL>.yaml for a fresh "
                   "network (default unet)")
    add_common_arguments(p)
    p.add_argument("--modes", nargs="+", default=["whole", "sliding"],
                   choices=["whole", "sliding"])
    p.add_argument("--roi", type=int, default=96, help="sliding-window size (default 96)")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap (default 0.5)")
    p.add_argument("--b0-tilt", type=float, default=0.0, help="B0 tilt in degrees")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    p.add_argument("--data-consistency", nargs="+", default=["none"],
                   choices=("none", "l2", "tv"), metavar="DC",
                   help="data-consistency steps to time after the network (none, l2, tv; "
                   "dlqsm infer --data-consistency, default iterations)")
    return p.parse_args(argv)


def load_network(args):
    """(net, metadata, description) following the order in the module docstring."""
    if args.checkpoint or default_model_installed():
        from dlqsm.inference import load_network as load

        net, meta, path = load(args.checkpoint)
        return net, meta, f"checkpoint {path}"
    from omegaconf import OmegaConf

    from dlqsm.models import build_from_config

    cfg_path = ROOT / "configs" / "model" / f"{args.model}.yaml"
    cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    net = build_from_config(cfg)
    return net, {"network": type(net).__name__}, f"fresh {cfg_path.relative_to(ROOT)}"


def make_input(shape, tilt_deg: float):
    """Smooth random field (ppm) in an ellipsoid mask, and a B0 direction."""
    g = torch.Generator().manual_seed(0)
    idx = [torch.linspace(-1, 1, n) for n in shape]
    x, y, z = torch.meshgrid(*idx, indexing="ij")
    mask = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.8) ** 2 < 1
    noise = torch.randn((1, 1, *shape), generator=g)
    smooth = torch.nn.functional.avg_pool3d(noise, 5, stride=1, padding=2)[0, 0]
    t = math.radians(tilt_deg)
    return (0.05 * smooth * mask).float(), mask, (math.sin(t), 0.0, math.cos(t))


def bench_one(pred: Predictor, field, mask, b0, repeats: int, warmup: int) -> dict:
    dev = pred.device
    f, m = field.to(dev), mask.to(dev)
    times, info, peak = [], {}, 0.0
    for i in range(warmup + repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        with PeakMemory(dev) as mem:
            t0 = time.perf_counter()
            out = pred.run(f, m, voxel_size=(1.0, 1.0, 1.0), b0_dir=b0)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            elapsed = time.perf_counter() - t0
        if i >= warmup:
            times.append(elapsed)
        info = out.info
        if i == 0:
            peak = mem.peak_mb / 2 ** 10
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_gib": peak,
            "mode": info.get("mode"), "roi": info.get("roi_size")}


def main(argv=None) -> int:
    args = parse_args(argv)
    shapes, devices = common_setup(args)
    net, meta, source = load_network(args)
    n_params = sum(p.numel() for p in net.parameters())
    lines = ["# Learned inference benchmark", "",
             f"Model: {meta.get('network', type(net).__name__)} ({n_params / 1e6:.2f} M "
             f"parameters), {source}. {hardware()}. B0 tilt {args.b0_tilt} deg, "
             f"median of {args.repeats} after {args.warmup} warm-up.", "",
             "| Device | Shape | Mode | Window | Data consistency | Median (s) | Min (s) | "
             "Peak memory (GiB) |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for dev in devices:
        for shape_text, shape in zip(args.shapes, shapes, strict=True):
            field, mask, b0 = make_input(shape, args.b0_tilt)
            for mode, dc in ((m, d) for m in args.modes for d in args.data_consistency):
                pred = Predictor.from_module(net, meta, device=dev, tile=(mode == "sliding"),
                                             roi_size=args.roi if mode == "sliding" else None,
                                             overlap=args.overlap, amp=args.amp,
                                             data_consistency=dc)
                try:
                    r = bench_one(pred, field, mask, b0, args.repeats, args.warmup)
                except torch.OutOfMemoryError:
                    r = {"median_s": math.nan, "min_s": math.nan, "peak_gib": math.nan,
                         "mode": f"{mode} (out of memory)", "roi": None}
                    torch.cuda.empty_cache()
                roi = "x".join(map(str, r["roi"])) + f" ({args.overlap})" if r["roi"] else "-"
                line = (f"| {dev} | {shape_text} | {r['mode']} | {roi} | {dc} | "
                        f"{r['median_s']:.2f} | "
                        f"{r['min_s']:.2f} | {r['peak_gib']:.2f} |")
                lines.append(line)
                print(line, flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
