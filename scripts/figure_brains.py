"""Figure of brain-like training samples (dlqsm.simulation.brains): chi, local field, labels.

Rows: a whole brain (176 x 208 x 176 mm at 1 mm, central slices), the same brain's local field
after PDF background removal of a total field with skull and air (``--no-background`` skips
it: about a minute more), and random 64^3 patches at random voxel sizes and B0 tilts.

    python scripts/figure_brains.py --out docs/figures/brains_samples.png
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="brains_samples.png", help="PNG to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patches", type=int, default=3)
    p.add_argument("--no-background", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dlqsm.simulation.brains import BrainDataset

    whole = {"fov_mm": (176, 208, 176), "centre": "brain", "voxel_size": 1.0}
    rows = [("whole brain", BrainDataset(1, args.seed, **whole)[0])]
    if not args.no_background:
        bg = BrainDataset(1, args.seed, background="pdf", **whole)[0]
        rows.append(("same, PDF background removal", bg))
    patches = BrainDataset(args.patches, args.seed + 1, shape=(64, 64, 64))
    rows += [(f"64^3 patch {i}", patches[i]) for i in range(args.patches)]
    fig, ax = plt.subplots(len(rows), 4, figsize=(13, 3.1 * len(rows)))
    for r, (name, s) in enumerate(rows):
        chi, fld, lab = s["chi"][0], s["field"][0], s["labels"][0]
        z = int(chi.shape[2] * (0.45 if chi.shape[2] > 100 else 0.5))
        x = chi.shape[0] // 2 + (8 if chi.shape[0] > 100 else 0)
        vox = [round(float(v), 2) for v in s["voxel_size"]]
        panels = [
            (chi[:, :, z], "gray", (-0.1, 0.2), f"{name}: chi (ppm), axial"),
            (chi[x], "gray", (-0.1, 0.2), f"chi, sagittal; voxel {vox} mm"),
            (fld[:, :, z], "RdBu_r", (-0.05, 0.05), "local field (ppm)"),
            (lab[:, :, z], "tab20", (0, 19), "labels"),
        ]
        for c, (img, cmap, (lo, hi), title) in enumerate(panels):
            ax[r, c].imshow(
                img.T, origin="lower", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest"
            )
            ax[r, c].set_title(title, fontsize=8)
            ax[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
