"""PNG figures of an evaluation (matplotlib, Agg backend, written atomically).

* :func:`montage`: truth and each method on three orthogonal slices (ppm, shared grey scale).
* :func:`error_maps`: method minus truth on the same slices (ppm, shared diverging scale).
* :func:`chi_preview`: one map on three orthogonal slices (the PNG beside reconstructed maps).
* :func:`roi_scatter`: ROI means of each method against the truth, with the identity line.

All maps are shown referenced to their mean inside the mask and masked. Slices pass through the
centre of the mask's bounding box; in-plane aspect follows the voxel size.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from dlqsm.io.atomic import atomic_path

VIEWS = (("axial", 2), ("coronal", 1), ("sagittal", 0))


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return Path(path)


def centre_of_mask(mask: np.ndarray) -> tuple[int, int, int]:
    """Index of the centre of the mask's bounding box."""
    idx = np.argwhere(mask)
    return tuple(int(v) for v in (idx.min(0) + idx.max(0)) // 2)


def _slice(vol, axis: int, at: int):
    """2D slice with the first remaining axis horizontal (transposed for imshow)."""
    return np.take(vol, at, axis=axis).T


def _aspect(vox, axis: int) -> float:
    rest = [v for i, v in enumerate(vox) if i != axis]
    return rest[1] / rest[0]


def _referenced(vol, mask):
    return np.where(mask, vol - vol[mask].mean(), 0.0)


def _grid(case, maps: dict[str, np.ndarray], *, cmap, vlim, label, title, path):
    plt = _plt()
    c = centre_of_mask(case.mask)
    fig, axes = plt.subplots(len(maps), 3, figsize=(7.5, 2.3 * len(maps) + 0.4), squeeze=False)
    im = None
    for r, (name, vol) in enumerate(maps.items()):
        for col, (view, axis) in enumerate(VIEWS):
            ax = axes[r, col]
            im = ax.imshow(_slice(vol, axis, c[axis]), cmap=cmap, vmin=vlim[0], vmax=vlim[1],
                           origin="lower", aspect=_aspect(case.voxel_size, axis),
                           interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(view, fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    return _save(fig, path)


def montage(case, chis: dict[str, np.ndarray], path, *, reference_name: str = "truth") -> Path:
    """Truth and each method (ppm) on three orthogonal slices; grey scale from the truth
    (``reference_name`` labels its row, e.g. "COSMOS" for an in vivo reference)."""
    m = case.mask
    maps = {reference_name: _referenced(case.reference, m)}
    maps.update({k: _referenced(v, m) for k, v in chis.items()})
    lo, hi = np.percentile(maps[reference_name][m], [1, 99])
    span = max(abs(lo), abs(hi), 1e-6)
    return _grid(case, maps, cmap="gray", vlim=(-span, span), label="chi (ppm)",
                 title=f"{case.name}: susceptibility", path=path)


def chi_preview(chi, mask, voxel_size, path, *, title: str = "chi (ppm)") -> Path:
    """A susceptibility map (ppm, (X, Y, Z)) on three orthogonal slices through the centre of
    ``mask`` (the whole volume if None), grey scale symmetric at the 99th percentile of |chi|
    inside it, with a ppm colour bar; the preview written beside maps by reconstruct/infer."""
    chi = np.asarray(chi, dtype=np.float32)
    m = np.ones(chi.shape, bool) if mask is None else np.asarray(mask, bool)
    if not m.any():
        m = np.ones(chi.shape, bool)
    inside = np.abs(chi[m])
    inside = inside[::max(1, inside.size // 200_000)]  # a regular subsample sets the scale
    span = max(float(np.percentile(inside, 99)), 1e-6)
    view = SimpleNamespace(mask=m, voxel_size=tuple(float(v) for v in voxel_size))
    return _grid(view, {"chi": np.where(m, chi, 0.0)}, cmap="gray", vlim=(-span, span),
                 label="chi (ppm)", title=title, path=path)


def error_maps(case, chis: dict[str, np.ndarray], path, *,
               reference_name: str = "truth") -> Path:
    """Method minus truth (ppm), both referenced to the mask mean, on three slices."""
    m = case.mask
    ref = _referenced(case.reference, m)
    errs = {k: _referenced(v, m) - ref for k, v in chis.items()}
    span = max([float(np.percentile(np.abs(e[m]), 99)) for e in errs.values()] + [1e-6])
    return _grid(case, errs, cmap="RdBu_r", vlim=(-span, span), label="error (ppm)",
                 title=f"{case.name}: method - {reference_name}", path=path)


def roi_scatter(roi_rows: list[dict], path, *, title: str = "ROI means") -> Path:
    """Scatter of each method's ROI means against the true ROI means (ppm), all cases."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    methods = list(dict.fromkeys(r["method"] for r in roi_rows))
    lo = min([min(r["reference_ppm"], r["method_ppm"]) for r in roi_rows] + [0.0])
    hi = max([max(r["reference_ppm"], r["method_ppm"]) for r in roi_rows] + [0.0])
    pad = 0.05 * max(hi - lo, 1e-3)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, ls="--",
            label="identity")
    markers = "osD^v<>px*"
    for i, m in enumerate(methods):
        rows = [r for r in roi_rows if r["method"] == m]
        ax.scatter([r["reference_ppm"] for r in rows], [r["method_ppm"] for r in rows],
                   s=22, marker=markers[i % len(markers)], label=m, alpha=0.8)
    ax.set_xlabel("true ROI mean (ppm)")
    ax.set_ylabel("reconstructed ROI mean (ppm)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.set_aspect("equal", adjustable="datalim")
    return _save(fig, path)
