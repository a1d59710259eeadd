"""Scores of one reconstruction, and the CSV and markdown tables of an evaluation.

Metrics come from :func:`dlqsm.metrics.functional.compute_all` (both maps referenced to their
mean inside the mask): NRMSE, detrended NRMSE and HFEN in percent, SSIM, XSIM and Pearson
correlation, the slope of the prediction against the truth, ROI linearity ``|1 - slope|`` of
the ROI means (``dgm_linearity``; deep grey matter nuclei for simulated heads), the mean error
of each ROI (ppm) and their mean absolute value (``roi_mae``), and the time per volume (s).
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import torch

MAIN_COLUMNS = [("nrmse", "NRMSE (%)", 1), ("dnrmse", "dNRMSE (%)", 1), ("hfen", "HFEN (%)", 1),
                ("ssim", "SSIM", 3), ("xsim", "XSIM", 3), ("dgm_linearity", "DGM linearity", 3),
                ("roi_mae", "ROI MAE (ppm)", 4), ("time_s", "Time / volume (s)", 2)]
"""(key, markdown header, decimals) of the summary table."""


def score(chi: np.ndarray, case) -> tuple[dict, list[dict]]:
    """Metrics of ``chi`` against ``case.reference`` and the ROI means behind them.

    Returns:
        (metrics, roi_rows): ``metrics`` is a flat dict of floats (``roi_error_<name>`` per
        ROI); ``roi_rows`` one dict per ROI with the referenced means (ppm) of truth and chi.
    """
    from dlqsm.metrics.functional import compute_all, roi_means

    pred, ref = torch.as_tensor(chi).double(), torch.as_tensor(case.reference).double()
    mask = torch.as_tensor(case.mask).bool()
    labels = None if case.labels is None else torch.as_tensor(case.labels)
    ids = [i for i in case.roi_ids if labels is not None and bool((labels == i).any())]
    raw = compute_all(pred, ref, mask, labels=labels if ids else None, roi_ids=ids or None)
    metrics = {}
    for k, v in raw.items():
        if k.startswith("roi_error_"):
            k = "roi_error_" + case.roi_name(int(k[len("roi_error_"):]))
        metrics[k] = v
    rows = []
    if ids:
        p = roi_means(pred - pred[mask].mean(), labels, ids)
        t = roi_means(ref - ref[mask].mean(), labels, ids)
        rows = [{"roi": int(i), "name": case.roi_name(i), "reference_ppm": float(t[j]),
                 "method_ppm": float(p[j]), "error_ppm": float(p[j] - t[j]),
                 "voxels": int((labels == i).sum())} for j, i in enumerate(ids)]
    return metrics, rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per-method mean (and ``<key>_std``) of every numeric column over the cases."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        s = {"method": method, "kind": mine[0].get("kind", ""), "cases": len(mine)}
        keys = [k for k in mine[0] if isinstance(mine[0][k], (int, float))
                and not isinstance(mine[0][k], bool)]
        for k in keys:
            vals = np.array([r.get(k, math.nan) for r in mine], dtype=float)
            s[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
            s[f"{k}_std"] = float(np.nanstd(vals)) if np.isfinite(vals).any() else math.nan
        out.append(s)
    return out


def to_csv(rows: list[dict]) -> str:
    """CSV text with the union of the rows' keys as columns (first-seen order)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt_csv(r.get(k, "")) for k in cols})
    return buf.getvalue()


def _fmt_csv(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def _cell(s: dict, key: str, decimals: int) -> str:
    v = s.get(key, math.nan)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    sd = s.get(f"{key}_std", math.nan)
    if s.get("cases", 1) > 1 and isinstance(sd, float) and not math.isnan(sd):
        return f"{v:.{decimals}f} ± {sd:.{decimals}f}"
    return f"{v:.{decimals}f}"


def markdown(summary: list[dict], roi_names: list[str], *, title: str, notes: list[str]) -> str:
    """The markdown report: summary table, per-ROI mean errors, notes."""
    lines = [f"# {title}", ""]
    head = ["Method", "Kind", "Cases"] + [h for _, h, _ in MAIN_COLUMNS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["method"], s["kind"], str(s["cases"])]
        cells += [_cell(s, k, d) for k, _, d in MAIN_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if roi_names:
        lines += ["", "Mean error per ROI (ppm; method minus truth, both referenced to the "
                  "mask mean):", ""]
        lines += ["| Method | " + " | ".join(roi_names) + " |", "|" + "---|" * (1 + len(roi_names))]
        for s in summary:
            cells = [_cell(s, f"roi_error_{n}", 4) for n in roi_names]
            lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    lines += [""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


