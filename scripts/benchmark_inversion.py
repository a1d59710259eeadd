"""Benchmark the classical dipole inversions: time, peak memory and round-trip accuracy.

For each shape a head phantom (chi in ppm, brain mask, magnitude) and its local field are
built: ``dlqsm.simulation.head`` when it is importable (``--phantom auto``/``head``), else the
piecewise-constant ellipsoid head below (``--phantom ellipsoid``); both fields come from the
project's dipole operator zero-padded by a quarter of the shape (not periodic, unlike the
inversions). Gaussian noise of ``--noise`` ppm is added inside the mask, and every method
inverts the field with its default parameters.

Reported per method: median wall time over ``--repeats`` runs, peak memory, iterations, and
NRMSE (%, masked and demeaned), HFEN (%) and XSIM from ``dlqsm.metrics.functional`` when
available (NRMSE computed locally otherwise). Peak memory (first run, above the level at its
start) is ``torch.cuda.max_memory_allocated`` on CUDA; on CPU it is the process's resident set
size sampled every 5 ms by a thread (Linux /proc/self/statm) after ``malloc_trim`` (so memory
kept by earlier methods does not hide this one's), so brief spikes may be missed.
The magnitude given to MEDI carries Gaussian noise (std 0.05) so that its edge mask is not an
exact copy of the chi edges.

    python scripts/benchmark_inversion.py --shapes 164x205x205 256x256x176 --repeats 3
    python scripts/benchmark_inversion.py --shapes 64x80x80 --methods tkd tv --out bench.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from dlqsm.benchmarking import PeakMemory, parse_shape, report
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.pipeline.inversion import METHODS, invert

# (centre, semi-axes) in units of the half extent of the grid, chi (ppm), magnitude (a.u.).
# Painted in order: later structures overwrite earlier ones.
_STRUCTURES = [
    ("grey matter", (0, 0, 0), (0.80, 0.82, 0.72), 0.03, 0.75),
    ("white matter", (0, 0.02, 0.04), (0.70, 0.72, 0.60), -0.03, 0.95),
    ("ventricle L", (-0.10, 0.05, 0.12), (0.06, 0.25, 0.10), 0.0, 1.0),
    ("ventricle R", (0.10, 0.05, 0.12), (0.06, 0.25, 0.10), 0.0, 1.0),
    ("caudate L", (-0.18, 0.22, 0.12), (0.05, 0.10, 0.07), 0.07, 0.7),
    ("caudate R", (0.18, 0.22, 0.12), (0.05, 0.10, 0.07), 0.07, 0.7),
    ("putamen L", (-0.30, 0.05, 0.02), (0.06, 0.14, 0.08), 0.06, 0.7),
    ("putamen R", (0.30, 0.05, 0.02), (0.06, 0.14, 0.08), 0.06, 0.7),
    ("pallidus L", (-0.22, 0.02, -0.02), (0.04, 0.08, 0.05), 0.16, 0.5),
    ("pallidus R", (0.22, 0.02, -0.02), (0.04, 0.08, 0.05), 0.16, 0.5),
    ("thalamus L", (-0.10, -0.15, 0.05), (0.07, 0.12, 0.07), 0.03, 0.8),
    ("thalamus R", (0.10, -0.15, 0.05), (0.07, 0.12, 0.07), 0.03, 0.8),
    ("nigra L", (-0.08, -0.12, -0.22), (0.03, 0.06, 0.03), 0.14, 0.5),
    ("nigra R", (0.08, -0.12, -0.22), (0.03, 0.06, 0.03), 0.14, 0.5),
    ("red nucleus L", (-0.05, -0.20, -0.20), (0.025, 0.025, 0.03), 0.12, 0.55),
    ("red nucleus R", (0.05, -0.20, -0.20), (0.025, 0.025, 0.03), 0.12, 0.55),
    ("calcification", (0.35, -0.40, 0.30), (0.03, 0.03, 0.03), -0.20, 0.2),
    ("haemorrhage", (-0.40, -0.35, 0.35), (0.05, 0.05, 0.05), 0.60, 0.3),
]
# veins: (centre, direction, radius) in half-extent units, chi 0.35 ppm, magnitude 0.3
_VEINS = [
    ((0.0, -0.55, 0.30), (0.0, 0.6, 0.8), 0.025),  # straight sinus-like
    ((0.0, 0.10, 0.55), (0.0, 1.0, 0.1), 0.02),  # superior sagittal sinus-like
    ((-0.45, 0.20, 0.20), (1.0, 0.2, 0.3), 0.012),
    ((0.40, -0.10, 0.0), (0.2, 0.3, 1.0), 0.012),
]


def ellipsoid_head(shape, device="cpu"):
    """Piecewise-constant head-like phantom: chi (ppm), brain mask (bool), magnitude (a.u.).

    All structures scale with the grid; at 164x205x205 and 1 mm the brain spans about
    131 x 168 x 148 mm with deep grey matter nuclei of 6-30 mm and veins of 2-5 mm.
    """
    axes = [torch.linspace(-1, 1, n, device=device) for n in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    chi = torch.zeros(shape, device=device)
    mag = torch.zeros(shape, device=device)
    for _, c, a, value, m in _STRUCTURES:
        inside = ((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2
        chi[inside <= 1] = value
        mag[inside <= 1] = m
    brain = mag > 0
    pts = torch.stack([x, y, z], -1)
    for c, d, r in _VEINS:
        d = torch.tensor(d, device=device) / torch.linalg.norm(torch.tensor(d))
        rel = pts - torch.tensor(c, device=device)
        dist = torch.linalg.norm(rel - (rel @ d)[..., None] * d, dim=-1)
        vein = (dist <= r) & brain
        chi[vein], mag[vein] = 0.35, 0.3
    return chi, brain, mag


def head_case(shape, device="cpu"):
    """(chi, mask, magnitude, local field) from ``dlqsm.simulation.head``, or None.

    The project's simulated head (seed 0): chi referenced to the brain mean, the noise-free
    local field ``mask * D(mask * chi)`` (zero-padded by a quarter of the shape), and a
    magnitude M0 exp(-R2* TE) at TE = 20 ms from its tissue parameters.
    """
    try:
        from dlqsm.simulation.head import simulate_head_case, tissue_parameters
    except ImportError:
        return None
    case = simulate_head_case(shape, signal=False, padding=tuple(n // 4 for n in shape),
                              device=device)
    m0, r2star = tissue_parameters(case.labels)
    mag = m0 * torch.exp(-0.020 * r2star) * case.mask
    return case.chi, case.mask, mag.float(), case.local_field


def phantom(shape, device="cpu", kind="auto"):
    """(chi, mask, magnitude, noise-free local field, description) of the test head.

    ``kind``: "head" (dlqsm.simulation.head), "ellipsoid" (this script's piecewise-constant
    ellipsoids) or "auto" (head when importable).
    """
    if kind in ("auto", "head"):
        out = head_case(shape, device)
        if out is not None:
            return (*out, "dlqsm.simulation.head (seed 0)")
        if kind == "head":
            raise ImportError("dlqsm.simulation.head is not available")
    chi, mask, mag = ellipsoid_head(shape, device)
    return chi, mask, mag, simulate_field(chi, mask), "ellipsoid head (this script)"


def simulate_field(chi, mask):
    """Noise-free local field (ppm) of chi, zero-padded by a quarter of the shape, masked."""
    op = DipoleOperator(chi.shape, padding=tuple(n // 4 for n in chi.shape), device=chi.device)
    return op.forward(chi) * mask


def scores(chi, truth, mask):
    """NRMSE (%), and HFEN (%) and XSIM when dlqsm.metrics is available."""
    try:
        from dlqsm.metrics import functional as mf

        return {"nrmse": float(mf.nrmse(chi, truth, mask)),
                "hfen": float(mf.hfen(chi, truth, mask)),
                "xsim": float(mf.xsim(chi, truth, mask))}
    except ImportError:
        m = mask.bool()
        p, t = chi[m] - chi[m].mean(), truth[m] - truth[m].mean()
        return {"nrmse": float(100 * torch.linalg.norm(p - t) / torch.linalg.norm(t))}


def run_method(method, field, mask, magnitude, truth, repeats, device):
    """Median time, peak memory and scores of one method."""
    times, mem, res = [], None, None
    for i in range(repeats):
        with PeakMemory(device) as peak:
            t0 = time.perf_counter()
            res = invert(field, mask, method=method, magnitude=magnitude)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        if i == 0:
            mem = peak.peak_mb
    row = {"method": method, "time_s": statistics.median(times), "peak_mb": mem,
           "iterations": res.info.get("iterations"), "converged": res.info.get("converged")}
    row.update(scores(res.chi, truth, mask))
    return row


def table(rows, header):
    cols = ["shape", "method", "time_s", "peak_mb", "iterations", "converged", "nrmse", "hfen",
            "xsim"]
    cols = [c for c in cols if any(c in r for r in rows)]
    fmt = {"time_s": "{:.2f}", "peak_mb": "{:.0f}", "nrmse": "{:.1f}", "hfen": "{:.1f}",
           "xsim": "{:.3f}"}
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt.get(c, "{}").format(r[c]) if r.get(c) is not None else "" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["164x205x205"], help="e.g. 164x205x205")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--noise", type=float, default=1e-3, help="field noise std in ppm")
    p.add_argument("--phantom", default="auto", choices=["auto", "head", "ellipsoid"],
                   help="dlqsm.simulation.head, this script's ellipsoids, or head if available")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows, sources = [], set()
    for s in args.shapes:
        shape = parse_shape(s)
        truth, mask, mag, field, source = phantom(shape, device, args.phantom)
        sources.add(source)
        gen = torch.Generator(device=device).manual_seed(1)
        field = (field + args.noise * torch.randn(shape, generator=gen, device=device)) * mask
        mag = (mag + 0.05 * torch.randn(shape, generator=gen, device=device)).abs() * mask
        for method in args.methods:
            row = run_method(method, field, mask, mag, truth, args.repeats, device)
            rows.append({"shape": s, **row})
            print(rows[-1], file=sys.stderr, flush=True)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    how = "CUDA max allocated" if device.type == "cuda" else "sampled RSS"
    header = (f"Dipole inversion benchmark on {dev}, torch {torch.__version__}; phantom: "
              f"{', '.join(sorted(sources))}; noise {args.noise} ppm; median of {args.repeats}; "
              f"peak memory above the start level in MiB ({how}).")
    text = table(rows, header)
    report(text, args.out)


if __name__ == "__main__":
    main()
