"""Benchmark background field removal: time, peak memory and accuracy of every method.

The phantom is ``dlqsm.simulation.head.simulate_head_case`` (procedural head: brain, skull,
air in the sinuses and around the head, total field from every source; the true local field
is the field of the brain's own susceptibility) or, with ``--phantom ellipsoid`` (or when the
head simulator cannot be imported), this script's ellipsoidal brain with interior spheres, a
skull shell, air around the head and a sinus-like air block.

Each method of ``dlqsm.pipeline.background.METHODS`` runs with its defaults. Reported per
method and device: median wall time over ``--repeats`` runs, process CPU time (all threads; on
a shared machine the CPU time with ``--threads 1`` measures the work better than a wall time
inflated by other processes), peak memory above the starting point (CUDA:
``max_memory_allocated``; CPU: resident set size sampled every 2 ms), solver iterations, the
brain-mask voxels the method erodes, and two errors of the local field (demeaned, relative to
the RMS of the demeaned true local field):

* ``valid``: over the method's valid mask;
* ``full mask``: over the whole brain mask with the eroded voxels counted as 0, the way the
  QSM-CI scorer treats voxels a method drops.

    python scripts/benchmark_background.py                    # 164x205x205, head phantom
    python scripts/benchmark_background.py --shapes 64x80x80 --repeats 1 --out bench.md
    python scripts/benchmark_background.py --invert --methods pdf lbv --seed 1  # + chi NRMSE
"""

from __future__ import annotations

import argparse
import math
import platform
import sys

import torch

from dlqsm.benchmarking import (
    add_common_arguments,
    common_setup,
    fixed_mmap_threshold,
    measure,
    report,
)
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.fft import kspace_grid
from dlqsm.pipeline.background import DEFAULT_METHOD, METHODS, remove_background


def ellipsoid_phantom(shape, b0_dir, seed=0):
    """(total field, true local field, brain mask, voxel size, None): ppm, 1 mm voxels.

    chi is band-limited (Gaussian, sigma 0.7 voxel) so that fields stay physical for oblique
    B0 (see the module docstring of the background tests).
    """
    g = torch.Generator().manual_seed(seed)
    x, y, z = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) - (n - 1) / 2
                               for n in shape], indexing="ij")
    ax = torch.tensor([0.34, 0.4, 0.3]) * torch.tensor(shape, dtype=torch.float32) * 0.95
    r = ((x / ax[0]) ** 2 + (y / ax[1]) ** 2 + (z / ax[2]) ** 2).sqrt()
    mask = r <= 1
    s = min(shape) / 64
    inner = torch.where((r <= 0.6), -0.03, 0.0) + torch.where(mask & (r > 0.85), 0.02, 0.0)
    for _ in range(int(40 * s)):
        ctr = (torch.rand(3, generator=g) - 0.5) * 1.6 * ax
        rad = (1.5 + 2.5 * float(torch.rand(1, generator=g))) * s
        val = float(torch.rand(1, generator=g)) * 0.3 - 0.05
        inner[((x - ctr[0]) ** 2 + (y - ctr[1]) ** 2 + (z - ctr[2]) ** 2) <= rad ** 2] = val
    inner = inner * mask
    outer = torch.zeros(shape)
    outer[(r > 1.15) & (r <= 1.3)] = -2.0
    outer[r > 1.3] = 9.4
    outer[(x.abs() < 0.08 * shape[0]) & (y > 0.3 * shape[1]) & (z < -0.2 * shape[2])
          & (r > 1.1)] = 9.4
    op = DipoleOperator(shape, (1, 1, 1), b0_dir, padding=16)
    k2 = sum(k ** 2 for k in kspace_grid(op.padded_shape))
    kernel = op.kernel * torch.exp(-2 * math.pi ** 2 * 0.7 ** 2 * k2)
    total = op.apply_kspace(inner + outer, kernel)
    return total, op.apply_kspace(inner, kernel) * mask, mask, (1.0, 1.0, 1.0), None


def head_phantom(shape, b0_dir, seed=0):
    from dlqsm.simulation.head import simulate_head_case

    case = simulate_head_case(shape, b0_dir=b0_dir, seed=seed, signal=False)
    return (case.total_field, case.local_field, case.mask, tuple(map(float, case.voxel_size)),
            case.chi)


def errors(res, local, mask):
    """(error over the valid mask, error over the brain mask with eroded voxels = 0)."""
    v = res.mask
    est = res.local_field - res.local_field[v].mean()
    truth = local - local[v].mean()
    valid = float((est - truth)[v].norm() / truth[v].norm())
    truth_full = local - local[mask].mean()
    est_full = torch.where(v, est + local[v].mean() - local[mask].mean(), 0.0)
    return valid, float((est_full - truth_full)[mask].norm() / truth_full[mask].norm())


def chi_error(res, chi, mask, vox, b0_dir):
    """chi NRMSE over the brain mask after TV inversion on the valid mask (dropped voxels = 0)."""
    from dlqsm.pipeline.inversion import invert

    est = invert(res.local_field, res.mask, method="tv", voxel_size=vox, b0_dir=b0_dir).chi
    est = torch.where(res.mask, est, 0.0)
    return float((est - chi)[mask].norm() / chi[mask].norm())


def run(shape, device, args):
    maker = ellipsoid_phantom if args.phantom == "ellipsoid" else head_phantom
    total, local, mask, vox, chi = maker(shape, args.b0_dir, seed=args.seed)
    total, local, mask = total.to(device), local.to(device), mask.to(device)
    bg = (total - local)[mask]
    print(f"{shape} {device}: mask {int(mask.sum())} voxels, local RMS "
          f"{float(local[mask].std()):.4f} ppm, background RMS {float(bg.std()):.4f} ppm",
          file=sys.stderr, flush=True)
    rows = []
    for name in args.methods:
        res, t, c, mem = measure(
            lambda name=name: remove_background(total, mask, method=name, voxel_size=vox,
                                                b0_dir=args.b0_dir), device, args.repeats)
        valid, full = errors(res, local, mask)
        chi_err = (chi_error(res, chi.to(device), mask, vox, args.b0_dir)
                   if args.invert and chi is not None else float("nan"))
        rows.append({"shape": "x".join(map(str, shape)), "device": str(device), "method": name,
                     "time_s": t, "cpu_s": c, "peak_mb": mem,
                     "iterations": res.info["iterations"],
                     "eroded_pct": 100 * res.info["eroded_voxels"] / int(mask.sum()),
                     "err_valid": valid, "err_full": full, "chi_nrmse": chi_err})
        print(f"  {name}: {t:.2f} s (CPU {c:.2f} s), {mem:.0f} MiB, {res.info['iterations']} it,"
              f" error {100 * valid:.1f}% valid / {100 * full:.1f}% full mask, chi NRMSE "
              f"{100 * chi_err:.1f}%",
              file=sys.stderr, flush=True)
    return rows


def table(rows):
    lines = ["| shape | device | method | median time (s) | CPU time (s) | peak memory (MiB) | "
             "iterations | eroded (% of mask) | error, valid mask (%) | error, full mask (%) | "
             "chi NRMSE after TV (%) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["method"] + (" (default)" if r["method"] == DEFAULT_METHOD else "")
        lines.append(f"| {r['shape']} | {r['device']} | {name} | {r['time_s']:.2f} | "
                     f"{r['cpu_s']:.2f} | {r['peak_mb']:.0f} | {r['iterations']} | "
                     f"{r['eroded_pct']:.1f} | {100 * r['err_valid']:.1f} | "
                     f"{100 * r['err_full']:.1f} | {100 * r['chi_nrmse']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(p)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--phantom", choices=["head", "ellipsoid"], default="head",
                   help="head: dlqsm.simulation.head (falls back to ellipsoid if missing)")
    p.add_argument("--b0-dir", type=float, nargs=3, default=(0.0, 0.0, 1.0))
    p.add_argument("--seed", type=int, default=0, help="phantom seed")
    p.add_argument("--invert", action="store_true",
                   help="also report chi NRMSE (head phantom) after TV inversion of each result")
    args = p.parse_args(argv)
    shapes, devices = common_setup(args)
    fixed_mmap_threshold()
    if args.phantom == "head":
        try:
            import dlqsm.simulation.head  # noqa: F401
        except ImportError:
            print("dlqsm.simulation.head not importable: using the ellipsoid phantom",
                  file=sys.stderr)
            args.phantom = "ellipsoid"
    rows = []
    for dev in devices:
        for shape in shapes:
            rows += run(shape, torch.device(dev), args)
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    gpu = f"; {torch.cuda.get_device_name()}" if "cuda" in devices else ""
    text = "\n".join([
        f"Background removal benchmark: {cpu}{gpu}; torch {torch.__version__}; {args.phantom} "
        f"phantom, B0 {tuple(args.b0_dir)}; median of {args.repeats}. Errors: RMS of the "
        "demeaned local-field error relative to the RMS of the demeaned true local field, over "
        "the valid mask and over the full brain mask with eroded voxels counted as 0.", "",
        table(rows)])
    report(text, args.out)


if __name__ == "__main__":
    main()
