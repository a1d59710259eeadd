"""Benchmark the field-mapping stages: coil combination, masking, unwrapping, echo fit.

Simulates uncombined multi-echo GRE data (this script's own simple model, no data needed):
an ellipsoidal head with T2* decay; a total field of an air-tissue-like background (several
ppm near a "sinus" below the frontal lobe), a second-order shim residual and fine tissue
structure; coils with smooth sensitivities and phase offsets; complex Gaussian noise. The
stages then run with their defaults:

    coil combination  dlqsm.pipeline.coil.combine_coils (ASPIRE when TE2 = 2 TE1)
    masking           dlqsm.pipeline.masking.brain_mask (Otsu + morphology in mm)
    unwrapping        dlqsm.pipeline.unwrap.unwrap_multi_echo (romeo; also laplacian)
    echo fit          dlqsm.pipeline.echoes.fit_echoes (linear WLS; also nonlinear)

Reported per stage and device: median wall time over ``--repeats`` runs, the process's CPU
time (all threads; on a shared machine, CPU time with ``--threads 1`` is the better measure of
the work than a wall time inflated by other processes), and the peak memory
above the stage's starting point (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the
process's resident set size sampled every 2 ms by a thread, so short peaks may be missed), and
the accuracy of the result: the fraction of mask voxels whose field is off by more than half a
2 pi wrap of the last echo (unwrapping errors) and the RMS field error in ppm over the mask
(a constant 2 pi k / (2 pi gamma B0 TE) global offset removed).

    python scripts/benchmark_fieldmap.py                       # 164x205x205, 4 echoes, 4 coils
    python scripts/benchmark_fieldmap.py --shapes 48x56x56 --repeats 1 --out bench.md
"""

from __future__ import annotations

import argparse
import math
import platform
import sys

import torch

from dlqsm.benchmarking import add_common_arguments, common_setup, measure, report
from dlqsm.physics.units import GAMMA_HZ_PER_T, ppm_to_phase
from dlqsm.pipeline.coil import combine_coils
from dlqsm.pipeline.echoes import fit_echoes
from dlqsm.pipeline.masking import brain_mask
from dlqsm.pipeline.unwrap import unwrap_multi_echo


def simulate(shape, te, b0, coils, noise, device, seed=0):
    """Uncombined data (C, E, X, Y, Z) complex64 (or (1, E, ...) for coils=0), true field (ppm),
    true head mask."""
    g = torch.Generator(device=device).manual_seed(seed)
    axes = [torch.linspace(-1, 1, n, device=device) for n in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    head = (x / 0.85) ** 2 + (y / 0.85) ** 2 + (z / 0.8) ** 2 <= 1
    sinus = torch.exp(-((x ** 2 + (y - 0.55) ** 2) / 0.02 + (z + 0.45) ** 2 / 0.01))
    field = (3.0 * sinus + 0.4 * x * y - 0.3 * z ** 2 + 0.2 * x
             + 0.03 * torch.sin(25 * x) * torch.cos(21 * y) * torch.sin(17 * z))  # ppm
    m0 = head * (0.8 + 0.2 * torch.cos(6 * x) * torch.cos(5 * y))
    r2s = 25.0 + 10 * (x ** 2 + y ** 2)  # 1/s
    tt = torch.tensor(te, device=device).view(-1, 1, 1, 1)
    sig = torch.polar(m0 * torch.exp(-r2s * tt), ppm_to_phase(field, tt, b0) + 0.5)
    data = []
    for c in range(max(coils, 1)):
        ang = 2 * math.pi * c / max(coils, 1)
        if coils:
            sens = torch.exp(-((x - 1.3 * math.cos(ang)) ** 2 + (y - 1.3 * math.sin(ang)) ** 2
                               + z ** 2) / 2.5)
            offset = 1.5 * c + 0.8 * torch.sin(0.6 * x + 0.4 * c * y) + 0.3 * z
            coil = sig * torch.polar(sens, offset)
        else:
            coil = sig
        n = torch.complex(torch.randn(coil.shape, generator=g, device=device),
                          torch.randn(coil.shape, generator=g, device=device))
        data.append((coil + noise * n).to(torch.complex64))
        del n, coil
    return torch.stack(data), field, head


def accuracy(field_ppm, truth, mask, te_last, b0):
    """(fraction of voxels off by more than half a wrap of the last echo, RMS error in ppm)."""
    wrap_ppm = 1e6 / (GAMMA_HZ_PER_T * b0 * te_last)  # one 2 pi at the last echo, in ppm
    err = (field_ppm - truth)[mask]
    err = err - wrap_ppm * torch.round(err.median() / wrap_ppm)  # free global 2 pi
    bad = (err.abs() > 0.5 * wrap_ppm).float().mean()
    return float(bad), float(err.pow(2).mean().sqrt())


def run(shape, device, args):
    dte = args.dte or args.te1
    te = [args.te1 + i * dte for i in range(args.echoes)]
    data, truth, head = simulate(shape, te, args.b0, args.coils, args.noise, device)
    rows = []

    def add(stage, fn):
        out, t, c, mem = measure(fn, device, args.repeats)
        rows.append({"stage": stage, "time_s": t, "cpu_s": c, "peak_mb": mem})
        print(f"{shape} {device} {stage}: {t:.2f} s (CPU {c:.2f} s), {mem:.0f} MiB",
              file=sys.stderr, flush=True)
        return out

    if args.coils:
        method = "aspire" if abs(args.te1 / dte - round(args.te1 / dte)) < 1e-3 else "mcpc3ds"
        comb = add(f"coil combination ({method})", lambda: combine_coils(data, te))
        mag, phase = comb.magnitude, comb.phase
    else:
        mag, phase = data[0].abs(), torch.angle(data[0])
    data = None  # free the uncombined data
    mask = add("masking (brain_mask)", lambda: brain_mask(mag))
    unwrapped = add("unwrapping (romeo)", lambda: unwrap_multi_echo(phase, te, mag, mask))
    add("unwrapping (laplacian)",
        lambda: unwrap_multi_echo(phase, te, mag, mask, method="laplacian"))
    fit = add("echo fit (linear)", lambda: fit_echoes(unwrapped, te, args.b0, mag, mask))
    nl = add("echo fit (nonlinear)",
             lambda: fit_echoes(unwrapped, te, args.b0, mag, mask, nonlinear=True))
    core = [r for r in rows if "laplacian" not in r["stage"] and "nonlinear" not in r["stage"]]
    rows.append({"stage": "total (coil, mask, romeo, linear fit)",
                 "time_s": sum(r["time_s"] for r in core),
                 "cpu_s": sum(r["cpu_s"] for r in core),
                 "peak_mb": max(r["peak_mb"] for r in core)})
    m = mask & head
    for r in rows:
        r.update(shape="x".join(map(str, shape)), device=str(device))
    acc = {"mask_voxels": int(mask.sum()), "head_voxels": int(head.sum()),
           "linear": accuracy(fit.field_ppm, truth, m, te[-1], args.b0),
           "nonlinear": accuracy(nl.field_ppm, truth, m, te[-1], args.b0)}
    return rows, acc


def table(rows):
    lines = ["| shape | device | stage | median time (s) | CPU time (s) | peak memory (MiB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['device']} | {r['stage']} | {r['time_s']:.2f} | "
                     f"{r['cpu_s']:.2f} | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(p)
    p.add_argument("--echoes", type=int, default=4)
    p.add_argument("--te1", type=float, default=0.004, help="first TE (s)")
    p.add_argument("--dte", type=float, default=None,
                   help="echo spacing (s); default TE1 (TE2 = 2 TE1: ASPIRE, else MCPC-3D-S)")
    p.add_argument("--coils", type=int, default=4, help="0: single-channel (combined) data")
    p.add_argument("--b0", type=float, default=3.0, help="field strength (T)")
    p.add_argument("--noise", type=float, default=0.01, help="complex noise std per coil")
    args = p.parse_args(argv)
    shapes, devices = common_setup(args)
    rows, accs = [], []
    for dev in devices:
        device = torch.device(dev)
        for s, shape in zip(args.shapes, shapes, strict=True):
            r, a = run(shape, device, args)
            rows += r
            accs.append((s, dev, a))
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    gpu = f"; {torch.cuda.get_device_name()}" if "cuda" in devices else ""
    lines = [f"Field-mapping benchmark: {cpu}{gpu}; torch {torch.__version__}; "
             f"{args.echoes} echoes (TE1 {args.te1 * 1e3:g} ms, spacing "
             f"{(args.dte or args.te1) * 1e3:g} ms), "
             f"{args.coils} coils, B0 {args.b0:g} T, noise {args.noise:g}, "
             f"median of {args.repeats}.", "", table(rows), ""]
    for s, dev, a in accs:
        lines.append(f"- {s} on {dev}: mask {a['mask_voxels']} voxels (head {a['head_voxels']});"
                     f" field off by > half a wrap: linear {100 * a['linear'][0]:.3f}%,"
                     f" nonlinear {100 * a['nonlinear'][0]:.3f}%; RMS error"
                     f" {a['linear'][1]:.4f} / {a['nonlinear'][1]:.4f} ppm")
    text = "\n".join(lines)
    report(text, args.out)


if __name__ == "__main__":
    main()
