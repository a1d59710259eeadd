"""Measure what white-matter susceptibility anisotropy does to TV dipole inversion.

Whole brain-like volumes of dlqsm's brain recipe (:class:`dlqsm.simulation.brains.BrainDataset`:
MNI152 anatomy, centred, a 176 x 208 x 176 mm field of view at ``--voxel`` mm, the recipe's
noise, lesions, veins and B0 tilt) are simulated with ``anisotropy_ppm`` fixed to each value of
``--dchi`` (chi_parallel - chi_perpendicular in white matter, ppm). The anisotropy is drawn from
its own random stream, so for one brain index every dchi shares the same anatomy, values,
noise and geometry: only the anisotropic part of the field differs. The local field is then
inverted with TV-ADMM (:func:`dlqsm.pipeline.inversion.invert`, method "tv") at each weight of
``--alphas`` (a number, or "auto": chosen per field by GCV), and scored by NRMSE (%, masked,
demeaned) against the truth, the mean susceptibility ``chi``.

Reported per brain and dchi: the RMS of the anisotropic field over the RMS of the isotropic
local field inside the mask (%), the NRMSE at each weight and the automatic weight; then the
median over brains per dchi. Needs nilearn (the MNI152 maps); nothing else outside the repo.

    nice -n 10 python scripts/benchmark_anisotropy.py --brains 3 --threads 2 \\
        --update-doc docs/benchmarks/anisotropy.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

SECTION = "## White-matter anisotropy"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--brains", type=int, default=3, help="brains (dataset indices 0..N-1)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument(
        "--dchi",
        type=float,
        nargs="+",
        default=[0.0, 0.01, 0.02, 0.03],
        help="anisotropy values, ppm (default 0 0.01 0.02 0.03)",
    )
    p.add_argument(
        "--alphas",
        nargs="+",
        default=["3e-4", "auto"],
        help="TV weights: numbers or 'auto' (default 3e-4 auto)",
    )
    p.add_argument("--voxel", type=float, default=2.0, help="isotropic voxel size, mm (default 2)")
    p.add_argument("--fine-factor", type=int, default=2, help="simulation fine grid (default 2)")
    p.add_argument(
        "--noise",
        nargs="+",
        choices=["recipe", "none"],
        default=["recipe", "none"],
        help="field noise: the recipe's echo-fit noise and/or none (default both)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default=None, help="also write the markdown report to this file")
    p.add_argument(
        "--update-doc",
        default=None,
        help=f"replace (or append) the section '{SECTION}' of this markdown file",
    )
    return p.parse_args(argv)


def _alpha(text: str):
    return "auto" if text == "auto" else float(text)


def run_case(ds, index: int, alphas) -> dict:
    """Simulate item ``index`` of ``ds`` and invert it with TV at each weight."""
    from dlqsm.metrics.functional import nrmse
    from dlqsm.pipeline.inversion import invert

    sample, meta = ds.sample_with_meta(index)
    chi, field, mask = sample["chi"][0], sample["field"][0], sample["mask"][0] > 0
    out = {"meta": meta, "field": field, "mask": mask, "nrmse": {}, "alpha": {}, "seconds": {}}
    for a in alphas:
        t0 = time.perf_counter()
        res = invert(
            field,
            mask,
            method="tv",
            voxel_size=sample["voxel_size"].tolist(),
            b0_dir=sample["b0_dir"].tolist(),
            alpha=_alpha(a),
        )
        out["seconds"][a] = time.perf_counter() - t0
        out["nrmse"][a] = float(nrmse(res.chi, chi, mask))
        out["alpha"][a] = float(res.info["parameters"]["alpha"])  # the weight used
    return out


def update_section(path: str, text: str) -> None:
    """Replace the ``SECTION`` of the markdown file ``path`` (up to the next ``## `` heading)
    by ``text``, or append it; written atomically."""
    from dlqsm.io.atomic import write_text_atomic

    p = Path(path)
    old = p.read_text() if p.exists() else ""
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        nxt = old.find("\n## ", start + len(SECTION))
        tail = "" if nxt < 0 else old[nxt:]
        new = old[:start] + text.rstrip("\n") + "\n" + tail
    write_text_atomic(p, new)


def _row(noise: str, i: int, d: float, r: dict, alphas) -> str:
    cells = " | ".join(f"{r['nrmse'][a]:.1f}" for a in alphas)
    auto = r["alpha"].get("auto")
    snr, sd = r["meta"].get("snr"), r["meta"].get("noise_ppm_median")
    return (
        f"| {noise} | {i} | {'-' if snr is None else f'{snr:.0f}'} | "
        f"{'-' if sd is None else f'{sd:.4f}'} | {d:.3f} | {r['ratio']:.1f} | {cells} | "
        f"{'' if auto is None else f'{auto:.2g}'} |"
    )


def _summary_row(key, rs, isotropic, alphas) -> str:
    """Medians over brains of one (noise, dchi) case, and of the change against dchi = 0."""
    cells = []
    for a in alphas:
        med = statistics.median(r["nrmse"][a] for r in rs)
        up = statistics.median(
            r["nrmse"][a] - r0["nrmse"][a] for r, r0 in zip(rs, isotropic, strict=True)
        )
        cells.append(f"{med:.1f} ({up:+.1f})")
    auto = [r["alpha"]["auto"] for r in rs if "auto" in r["alpha"]]
    rng = f"{min(auto):.2g}-{max(auto):.2g}" if auto else ""
    ratio = statistics.median(r["ratio"] for r in rs)
    return f"| {key[0]} | {key[1]:.3f} | {ratio:.1f} | " + " | ".join(cells) + f" | {rng} |"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from dlqsm.benchmarking import hardware, report
    from dlqsm.io.outputs import git_revision
    from dlqsm.simulation.brains import BrainDataset

    if args.threads:
        torch.set_num_threads(args.threads)
    base = dict(
        fov_mm=(176, 208, 176), centre="brain", voxel_size=args.voxel, fine_factor=args.fine_factor
    )
    dchis = [0.0] + [d for d in dict.fromkeys(args.dchi) if d != 0]  # isotropic reference first
    rows, cases = [], {}
    t_start = time.perf_counter()
    for noise in args.noise:
        snr = {} if noise == "recipe" else {"snr": None}
        for i in range(args.brains):
            for d in dchis:
                ds = BrainDataset(
                    args.brains, seed=args.seed, anisotropy_ppm=d or None, **base, **snr
                )
                r = run_case(ds, i, args.alphas)
                m = r["mask"]
                iso = cases[(noise, 0.0)][i]["iso_rms"] if d else None
                r["iso_rms"] = float(r["field"][m].square().mean().sqrt()) if iso is None else iso
                r["ratio"] = 100 * r["meta"].get("anisotropy_rms_ppm", 0.0) / r["iso_rms"]
                cases.setdefault((noise, d), []).append(r)
                rows.append(_row(noise, i, d, r, args.alphas))
                print(rows[-1], f"({sum(r['seconds'].values()):.1f} s inversion)", flush=True)
    total = time.perf_counter() - t_start
    summary = [
        _summary_row(key, rs, cases[(key[0], 0.0)], args.alphas) for key, rs in cases.items()
    ]
    rev = git_revision()
    head = " | ".join(f"TV {a} NRMSE %" for a in args.alphas)
    lines = [
        SECTION,
        "",
        f"<!-- python scripts/benchmark_anisotropy.py {' '.join(argv or sys.argv[1:])} -->",
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, git "
        f"{(rev.get('commit') or 'unknown')[:10]}{' (dirty tree)' if rev.get('dirty') else ''};"
        f" {hardware()}; {total / 60:.1f} min in all.",
        "",
        f"Whole brains of the brain recipe (`BrainDataset`, {args.brains} brains, seed "
        f"{args.seed}, {args.voxel:g} mm isotropic, fine factor {args.fine_factor}, 176 x 208 x "
        "176 mm, the recipe's lesions and B0 tilt; noise 'recipe': its echo-fit field noise, "
        "'none': noise-free) with white-matter anisotropy dchi = "
        "chi_parallel - chi_perpendicular (`anisotropy_ppm`, fibre directions from the "
        "template's WM structure tensor); each brain keeps its anatomy, noise and geometry "
        "across dchi. TV-ADMM (`invert(method='tv')`, no padding) scored by NRMSE against the "
        "mean susceptibility `chi` (masked, demeaned). 'aniso/iso' is the RMS of the "
        "anisotropic field over that of the local field without anisotropy (noise included) "
        "inside the mask.",
        "",
        "Median over brains; in brackets the median over brains of the change against the "
        "same brain without anisotropy (NRMSE points):",
        "",
        f"| noise | dchi (ppm) | aniso/iso field RMS % | {head} | auto alpha (range) |",
        "|---|---:|---:|" + "---:|" * len(args.alphas) + "---|",
        *summary,
        "",
        "Per brain (SNR: the recipe's magnitude SNR; noise: median echo-fit field noise, ppm):",
        "",
        f"| noise | brain | SNR | noise (ppm) | dchi (ppm) | aniso/iso field RMS % | {head} "
        "| auto alpha |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(args.alphas) + "---:|",
        *rows,
    ]
    text = "\n".join(lines)
    report(text, args.out)
    if args.update_doc:
        update_section(args.update_doc, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
