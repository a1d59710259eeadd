"""An automatic regularisation weight per scan: ``tv.alpha=auto`` and ``medi.lam=auto``.

The weight follows the data by generalised cross-validation (GCV; Golub, Heath and Wahba,
Technometrics 1979) of the closed-form, gradient-regularised dipole inversion of the same
field: for chi_lam = argmin ||D chi - f||^2 + lam ||G chi||^2 on the inversion's periodic grid
(:func:`dlqsm.pipeline.inversion.tikhonov` with ``regularizer="gradient"``), the influence
matrix A_lam = D^2 / (D^2 + lam |E|^2) is diagonal in k-space, so the residual energy
RSS(lam) = ||(1 - A_lam) f||^2 and its trace tr(A_lam) cost one FFT of the field for every
lam (Parseval), and

    GCV(lam) = N RSS(lam) / (N - tr A_lam)^2,   N = voxels of the grid

is minimised over a log grid of lam (mm^2). GCV needs no noise level: whatever part of the field
the dipole model cannot explain (noise, background residuals, non-dipolar sources, the
inconsistency of a resampled phantom with its field) raises lam. The field is taken inside the
mask (0 outside), unweighted.

The TV weight is then ``alpha = TV_ALPHA_REF * (lam_gcv / GCV_LAM_REF) ** TV_POWER``, a relation
calibrated on SIMULATED tuning heads only (dlqsm's own heads, seed 7, 1 mm and 2 mm, with 0 to
1e-2 ppm added field noise, true local field and the raw chain's local field; a qsm-forward
fine-grid head, seed 7, 2 mm), against the oracle-best alpha of each; the 2016 in-vivo subject
was not used (it is reported as a check in docs/benchmarks/independent.md). MEDI's weight is the
reciprocal, scaled as the fixed defaults are (``lam = MEDI_LAM_FIXED * TV_ALPHA_FIXED / alpha``):
not calibrated for MEDI (on a qsm-forward head's true local field it was worse than the fixed
lam, 55.4 vs 49.3 % NRMSE), so it is experimental and never a default.

Everything is recorded in the method's ``info["auto_weight"]``: the chosen value, the criterion
and rule, ``lam_gcv``, a GCV noise estimate, a robust field-noise estimate
(:func:`field_noise_std`), the near-cone power ratio (how much of the field the dipole model
cannot explain; a diagnostic, not used for the weight) and the GCV curve points.
"""

from __future__ import annotations

import math

import torch

from dlqsm.physics.fft import rfft3
from dlqsm.physics.operators import laplacian_interior
from dlqsm.pipeline.inversion.problem import Problem

AUTO = "auto"
"""The parameter value that asks for the automatic weight."""

TV_ALPHA_FIXED = 3e-4
"""The fixed TV weight of earlier releases (tuned on simulated 1 mm heads with 1e-3..3e-3 ppm
field noise); the shipped model's initial estimate was trained with it."""

MEDI_LAM_FIXED = 1000.0
"""The fixed MEDI weight of earlier releases."""

GCV_LAM_REF = 0.02
"""Reference GCV weight (mm^2) of the calibration."""

TV_ALPHA_REF = 7e-4
"""TV weight chosen when lam_gcv = GCV_LAM_REF."""

TV_POWER = 0.65
"""Exponent of the calibrated relation alpha ~ lam_gcv ** TV_POWER."""

ALPHA_BOUNDS = (3e-5, 1e-2)
"""The automatic TV weight is clipped to this range (a GCV minimum at the edge of its grid
hits it)."""

GCV_LAMS = tuple(10 ** (e / 12) for e in range(-60, 13))
"""lam grid of the GCV curve (mm^2): 1e-5 .. 10, 12 points per decade."""

_BINS = 192


def is_auto(value) -> bool:
    """True for the string ``"auto"`` (any case)."""
    return isinstance(value, str) and value.strip().lower() == AUTO


def gcv_curve(field, mask, *, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), padding=0,
              lams=GCV_LAMS) -> dict:
    """GCV curve of the gradient-regularised closed-form inversion of ``field`` (see the module
    docstring).

    The k-space sums are taken over a 2D histogram of (D^2, |E|^2) (192 x 192 bins, exact bin
    means), so each lam costs microseconds whatever the volume; one FFT of the field is the
    whole cost (~0.2 s at 168 x 210 x 210 on 2 CPU cores).

    Args:
        field: local field (ppm), (X, Y, Z). mask: brain mask (X, Y, Z); the field is used
            inside it, 0 outside.
        voxel_size: mm. b0_dir: unit B0 vector in voxel coordinates. padding: voxels per side
            (as the inversion's).
        lams: lam values (mm^2), increasing.

    Returns:
        ``{"lams", "gcv", "rss", "trace", "n", "lam", "index", "near_cone_ratio"}``: lists over
        ``lams`` of GCV, residual energy (ppm^2, whole grid) and tr(A); the grid size; the
        minimiser and its index; the field's power near the magic-angle cone relative to far
        from it (:func:`_near_cone_ratio`, a diagnostic: ~0.02 on dlqsm's simulated heads with
        1e-3 ppm noise, ~0.04 on qsm-forward's fine-grid heads, 0.24 on the 2016 in-vivo local
        field).
    """
    prob = Problem(field, mask, voxel_size=voxel_size, b0_dir=b0_dir, weight=None,
                   magnitude=None, padding=padding)
    power = rfft3(prob.f * prob.mask).abs().square_()
    d2 = prob.D.square()
    e2 = prob.e2()
    mult = torch.full_like(d2, 2.0)  # the half spectrum counts the other half twice
    mult[..., 0] = 1.0
    if prob.shape[-1] % 2 == 0:
        mult[..., -1] = 1.0
    idx = _bin_index(d2, e2)
    nb = _BINS * _BINS

    def per_bin(x):
        return torch.bincount(idx, weights=x.reshape(-1).double(), minlength=nb)

    count = per_bin(mult)
    keep = count > 0
    count = count[keep]
    pw = per_bin(mult * power)[keep]
    d2m = per_bin(mult * d2)[keep] / count
    e2m = per_bin(mult * e2)[keep] / count
    n = float(math.prod(prob.shape))
    gcv, rss, trace = [], [], []
    for lam in lams:
        den = d2m + lam * e2m
        a = torch.where(den > 0, d2m / den.clamp_min(1e-300), torch.zeros_like(den))
        r = float((pw * (1 - a).square()).sum()) / n
        t = float((count * a).sum())
        rss.append(r)
        trace.append(t)
        gcv.append(n * r / max(n - t, 1.0) ** 2)
    i = min(range(len(lams)), key=gcv.__getitem__)
    return {"lams": [float(v) for v in lams], "gcv": gcv, "rss": rss, "trace": trace, "n": n,
            "lam": float(lams[i]), "index": i,
            "near_cone_ratio": _near_cone_ratio(keep, count, pw)}


NEAR_CONE_D = 0.05
"""|D| below which a spatial frequency counts as near the magic-angle cone."""

FAR_CONE_D = 0.4
"""|D| above which a spatial frequency counts as far from the cone."""


def _near_cone_ratio(keep, count, pw, shells: int = 8) -> float:
    """Median over ``shells`` bands of |E|^2 (the k-space radius, log scale) of the mean field
    power per frequency near the cone (|D| < :data:`NEAR_CONE_D`) over the mean power far
    from it (|D| > :data:`FAR_CONE_D`); bands holding either kind of frequency only are
    skipped. A dipole field has no power on the cone, so this is the share of the field that
    the dipole model cannot explain (noise, background residuals, non-dipolar sources) relative
    to the explained part, at matched spatial frequencies; NaN when no band has both."""
    flat = keep.nonzero().squeeze(1)  # bin index = |D| bin * _BINS + |E|^2 bin
    bd, be = torch.div(flat, _BINS, rounding_mode="floor"), flat % _BINS
    near = bd < int(NEAR_CONE_D * 1.5 * _BINS)
    far = bd >= int(FAR_CONE_D * 1.5 * _BINS)
    band = (be * shells) // _BINS
    ratios = []
    for b in range(shells):
        sel_n, sel_f = near & (band == b), far & (band == b)
        if bool(sel_n.any()) and bool(sel_f.any()):
            pn = float(pw[sel_n].sum() / count[sel_n].sum())
            pf = float(pw[sel_f].sum() / count[sel_f].sum())
            if pf > 0:
                ratios.append(pn / pf)
    return float(torch.tensor(ratios).median()) if ratios else float("nan")


def _bin_index(d2: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
    """Bin of each k: |D| in [0, 2/3] linearly (fine near the cone), |E|^2 on a log scale."""
    bd = (d2.sqrt() * (1.5 * _BINS)).long().clamp_(0, _BINS - 1)
    le = torch.log(e2.clamp_min(1e-12))
    pos = le[e2 > 0]
    lo, hi = (float(pos.min()), float(pos.max())) if pos.numel() else (0.0, 1.0)
    be = ((le - lo) / max(hi - lo, 1e-12) * _BINS).long().clamp_(0, _BINS - 1)
    be = torch.where(e2 > 0, be, torch.zeros_like(be))
    return (bd * _BINS + be).reshape(-1)


def field_noise_std(field, mask, voxel_size=(1.0, 1.0, 1.0)) -> float:
    """Robust noise std (ppm) of a field from its 7-point Laplacian inside the mask.

    1.4826 * MAD of the Laplacian over voxels whose 6 neighbours are in the mask, divided by the
    Laplacian's gain for white noise, sqrt(sum_i 2/h_i^4 + (2 sum_i 1/h_i^2)^2) (sqrt(42) at
    1 mm). Fine structure of the field itself raises it (a noise-free simulated 1 mm head reads
    ~6e-4 ppm, 2 mm ~1.5e-3 ppm); it is recorded as a diagnostic, the weight comes from GCV.

    Args:
        field: (X, Y, Z) ppm. mask: (X, Y, Z). voxel_size: mm.
    """
    f = torch.as_tensor(field).float()
    m = torch.as_tensor(mask).bool()
    h = [float(v) for v in voxel_size]
    lap = laplacian_interior(f, h)
    inner = m[1:-1, 1:-1, 1:-1].clone()  # voxels whose 6 neighbours are in the mask too
    for ax in range(3):
        for lo, hi in ((0, -2), (2, None)):
            sl = [slice(1, -1)] * 3
            sl[ax] = slice(lo, hi)
            inner &= m[tuple(sl)]
    v = lap[inner]
    if v.numel() < 10:
        return float("nan")
    gain = math.sqrt(sum(2.0 / x ** 4 for x in h) + (2.0 * sum(1.0 / (x * x) for x in h)) ** 2)
    return float(1.4826 * (v - v.median()).abs().median() / gain)


def auto_tv_alpha(field, mask, *, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                  padding=0, curve_points: int = 25) -> tuple[float, dict]:
    """The automatic TV weight of one field (see the module docstring).

    Args:
        field: local field (ppm), (X, Y, Z). mask: (X, Y, Z). voxel_size: mm. b0_dir: voxel
            coordinates. padding: as the inversion's.
        curve_points: how many (lam, GCV) points to keep in the record (evenly spaced over
            the grid; the minimum is always among them).

    Returns:
        (alpha, record): the TV weight in the ppm scaling of :func:`dlqsm.pipeline.inversion.tv`
        and what ``info["auto_weight"]`` records.
    """
    c = gcv_curve(field, mask, voxel_size=voxel_size, b0_dir=b0_dir, padding=padding)
    lam = c["lam"]
    raw = TV_ALPHA_REF * (lam / GCV_LAM_REF) ** TV_POWER
    alpha = float(min(max(raw, ALPHA_BOUNDS[0]), ALPHA_BOUNDS[1]))
    i = c["index"]
    n_mask = float(torch.as_tensor(mask).bool().sum())
    step = max(1, len(c["lams"]) // max(curve_points, 1))
    keep = sorted(set(range(0, len(c["lams"]), step)) | {i})
    record = {
        "criterion": "gcv",
        "rule": f"alpha = {TV_ALPHA_REF:g} * (lam_gcv / {GCV_LAM_REF:g} mm^2) ** {TV_POWER:g}, "
                f"clipped to [{ALPHA_BOUNDS[0]:g}, {ALPHA_BOUNDS[1]:g}]",
        "lam_gcv_mm2": lam,
        "tv_alpha": alpha,
        "clipped": alpha != raw,
        "at_grid_edge": i in (0, len(c["lams"]) - 1),
        # GCV's variance estimate RSS / (N - tr A), spread over the mask's voxels
        "gcv_noise_ppm": math.sqrt(c["rss"][i] * c["n"] / max(c["n"] - c["trace"][i], 1.0)
                                   / max(n_mask, 1.0)),
        "field_noise_ppm": field_noise_std(field, mask, voxel_size),
        "near_cone_ratio": c["near_cone_ratio"],
        "curve": [[c["lams"][k], c["gcv"][k]] for k in keep],
        "curve_units": "[lam mm^2, GCV ppm^2]",
    }
    return alpha, record


def _check_weight(name: str, value):
    """A given weight unchanged, if it is a positive finite number (numpy/torch scalars too)."""
    try:
        ok = not isinstance(value, (str, bool)) and math.isfinite(float(value)) and (
            float(value) > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive number or 'auto', got {value!r}")
    return value


def resolve_tv_alpha(alpha, field, mask, *, voxel_size=(1.0, 1.0, 1.0),
                     b0_dir=(0.0, 0.0, 1.0), padding=0) -> tuple[float, dict]:
    """TV's ``alpha`` as given (a positive number), or chosen by :func:`auto_tv_alpha` for
    ``"auto"``.

    Returns:
        (alpha, extra info): ``{}`` for a given number, ``{"auto_weight": record}`` for auto.

    Raises:
        ValueError: anything else (a string other than "auto", a non-positive number).
    """
    if is_auto(alpha):
        value, record = auto_tv_alpha(field, mask, voxel_size=voxel_size, b0_dir=b0_dir,
                                      padding=padding)
        return value, {"auto_weight": {"parameter": "alpha", "value": value, **record}}
    return _check_weight("alpha", alpha), {}


def resolve_medi_lam(lam, field, mask, *, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                     padding=0) -> tuple[float, dict]:
    """MEDI's ``lam`` as given, or for ``"auto"`` the reciprocal of the automatic TV weight
    scaled as the fixed defaults are: ``lam = MEDI_LAM_FIXED * TV_ALPHA_FIXED / alpha_auto``
    (lam plays the role of 1/alpha in MEDI's data term).

    Returns:
        (lam, extra info) as :func:`resolve_tv_alpha`.
    """
    if is_auto(lam):
        alpha, record = auto_tv_alpha(field, mask, voxel_size=voxel_size, b0_dir=b0_dir,
                                      padding=padding)
        value = MEDI_LAM_FIXED * TV_ALPHA_FIXED / alpha
        record["rule"] += f"; lam = {MEDI_LAM_FIXED:g} * {TV_ALPHA_FIXED:g} / alpha"
        return value, {"auto_weight": {"parameter": "lam", "value": value, **record}}
    return _check_weight("lam", lam), {}


AUTO_PARAMETERS = {"tv": "alpha", "medi": "lam"}
"""The method parameters that accept ``"auto"``."""


def accepts_auto(method: str | None, name: str, value) -> bool:
    """True when ``value`` is ``"auto"`` for a parameter that accepts it (tv.alpha, medi.lam)."""
    return AUTO_PARAMETERS.get(method or "") == name and is_auto(value)


CHAIN_DEFAULTS: dict[str, dict[str, dict]] = {"local_field": {"tv": {"alpha": AUTO}}}
"""Weights that dlqsm's classical chain (:func:`dlqsm.pipeline.reconstruct.reconstruct`, i.e.
``dlqsm reconstruct``) chooses per scan unless given, by input kind and method: TV's weight for
a local-field input (``--local-field``), where the automatic weight was better than the fixed
one on dlqsm's heads, qsm-forward's heads and the in-vivo check (within 1 NRMSE point where it
was not better). From raw phase and total fields the chain keeps the fixed weight: together
with PDF's rim weight (``bfr.rim_mm``) ``auto`` had the lower NRMSE on 15 of 16 cases (the
independent suite and a second phantom seed; by up to 45 points) but the lower XSIM on all 8
suite cases (0.21 against 0.31 on the fine-grid 3 T head: NRMSE rewards over-smoothing, XSIM
was made to catch it) and a worse deep-grey-matter slope overall (summed |1 - slope| over the
16 cases 2.14 against 1.78; fine-grid suite heads 0.07-0.22 against 0.01-0.12):
docs/benchmarks/independent.md, "Rim weight". The
functions' own defaults stay fixed (``tv(alpha=3e-4)``, ``medi(lam=1000)``): dlqsm's simulated
training data (``chi_init``) and ``dlqsm evaluate``'s classical methods use them. Learned
methods that refine TV take their estimate's weight from
:func:`dlqsm.inference.predictor.estimate_params` (``by-input``: these chain defaults, else the
weight the model was trained with; the default model v2 was trained with ``alpha="auto"``, so
its estimate takes the per-scan weight from raw phase too)."""


def chain_defaults(method: str | None, kind: str = "raw") -> dict:
    """The chain's default overrides of ``method``'s parameters for input ``kind`` ("raw",
    "total_field", "local_field"); ``{}`` for most."""
    return dict(CHAIN_DEFAULTS.get(kind, {}).get(method or "", {}))
