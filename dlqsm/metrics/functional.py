"""Quality metrics for susceptibility maps, as pure torch functions (CPU and CUDA).

Shapes
    ``pred`` and ``target`` are single volumes (X, Y, Z) or batches (B, X, Y, Z) or
    (B, 1, X, Y, Z). ``mask`` is optional and boolean (any non-zero value counts as inside): the
    same spatial shape as the volumes, either one (X, Y, Z) mask for the whole batch or one per
    volume. A single volume gives a 0-d tensor, a batch gives one score per volume, shape (B,).
    Everything is computed in float64 on the device of ``pred``.

Reference
    Susceptibility maps are relative, so unless ``demean=False`` both maps are referenced to
    their own mean inside the mask before NRMSE, dNRMSE, HFEN, SSIM and XSIM are computed
    (as in the QSM reconstruction challenge 2.0 scoring).

Units
    ``nrmse``, ``nrmse_detrended`` and ``hfen`` are in **percent** (0 is perfect);
    ``ssim``, ``xsim`` and ``pearson`` are dimensionless (1 is perfect);
    ROI means and ROI errors are in the units of the maps (**ppm**);
    ``dgm_linearity`` is the dimensionless |1 - slope| (0 is perfect).

Pinned constants (module attributes, cited in the docstrings below)
    HFEN: Laplacian of Gaussian with sigma 1.5 voxels on a 15 x 15 x 15 support (radius 7).
    XSIM: uniform 5 x 5 x 5 windows, L = 1 ppm, K1 = 0.01, K2 = 0.001, no rescaling and no
    clipping of the ppm values (Milovic et al., MRM 2024, doi:10.1002/mrm.30271). The QSM
    challenge 2.0 script ``compute_xsim.m`` uses a Gaussian window (sigma 1.5, 7 voxels a side)
    instead: ``xsim(..., window="gaussian", radius=3)`` reproduces it.
    SSIM: Wang et al. (2004) constants K1 = 0.01, K2 = 0.03, L = 1, Gaussian window sigma 1.5 on
    an 11 x 11 x 11 support, on data rescaled with the *target's* range to [0, 1].
    Windowed filters extend the volume by replicating edge voxels (scipy ``mode="nearest"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

HFEN_SIGMA = 1.5
HFEN_RADIUS = 7
XSIM_SIGMA, XSIM_RADIUS, XSIM_L, XSIM_K1, XSIM_K2 = 1.5, 2, 1.0, 0.01, 0.001
SSIM_SIGMA, SSIM_RADIUS, SSIM_L, SSIM_K1, SSIM_K2 = 1.5, 5, 1.0, 0.01, 0.03

_DIMS = (1, 2, 3)


# --------------------------------------------------------------------------- shape helpers
def _as_batch(x: torch.Tensor, what: str) -> torch.Tensor:
    """(X,Y,Z) -> (1,X,Y,Z); (B,X,Y,Z) unchanged; (B,1,X,Y,Z) -> (B,X,Y,Z)."""
    if x.ndim == 3:
        return x.unsqueeze(0)
    if x.ndim == 4:
        return x
    if x.ndim == 5 and x.shape[1] == 1:
        return x[:, 0]
    raise ValueError(f"{what} must be (X,Y,Z), (B,X,Y,Z) or (B,1,X,Y,Z); got {tuple(x.shape)}")


def _prep(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None):
    """Validate and reshape to (B, X, Y, Z) float64 maps and a boolean mask of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    p = _as_batch(pred, "pred").to(torch.float64)
    t = _as_batch(target, "target").to(device=p.device, dtype=torch.float64)
    if mask is None:
        m = torch.ones_like(p, dtype=torch.bool)
    else:
        m = _as_batch(mask, "mask").to(p.device) != 0
        if m.shape[-3:] != p.shape[-3:]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match {tuple(pred.shape)}")
        m = m.expand_as(p)
    return p, t, m, pred.ndim > 3


def _out(v: torch.Tensor, batched: bool) -> torch.Tensor:
    return v if batched else v[0]


def _mmean(x: torch.Tensor, m: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Mean of x over the voxels where m is True, per batch element."""
    return (x * m).sum(_DIMS, keepdim=keepdim) / m.sum(_DIMS, keepdim=keepdim)


def _mnorm(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of x over the voxels where m is True, per batch element."""
    return torch.sqrt(((x * m) ** 2).sum(_DIMS))


def _demean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x - _mmean(x, m, keepdim=True)


def _fit(y: torch.Tensor, x: torch.Tensor, m: torch.Tensor):
    """Least-squares y ~ slope * x + intercept inside m; returns (slope, intercept), each (B,)."""
    xm, ym = _mmean(x, m, keepdim=True), _mmean(y, m, keepdim=True)
    cov = _mmean((x - xm) * (y - ym), m)
    var = _mmean((x - xm) ** 2, m)
    slope = cov / var
    return slope, ym.flatten() - slope * xm.flatten()


# --------------------------------------------------------------------------- error norms
def _nrmse(p, t, m):
    return 100.0 * _mnorm(p - t, m) / _mnorm(t, m)


def nrmse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
          demean: bool = True) -> torch.Tensor:
    """Normalised root-mean-square error in **percent**.

    ``100 * ||p - t|| / ||t||`` with both norms over the mask and, if ``demean``, p and t each
    referenced to their own mean inside the mask first.

    Returns:
        0-d tensor for a single volume, (B,) for a batch; 0 for a perfect prediction.
    """
    p, t, m, b = _prep(pred, target, mask)
    if demean:
        p, t = _demean(p, m), _demean(t, m)
    return _out(_nrmse(p, t, m), b)


def nrmse_detrended(pred: torch.Tensor, target: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Detrended NRMSE ("dNRMSE" of the QSM challenge 2.0) in **percent**.

    Inside the mask the target is regressed linearly on the prediction,
    ``min_{a,b} ||a * pred + b - target||``, and the NRMSE of ``a * pred + b`` against the
    demeaned target is returned. It ignores a global scaling error (e.g. the underestimation
    typical of regularised inversions) and an offset, and keeps the structural error.

    Returns:
        0-d tensor for a single volume, (B,) for a batch.
    """
    p, t, m, b = _prep(pred, target, mask)
    slope, intercept = _fit(t, p, m)
    fitted = slope.view(-1, 1, 1, 1) * p + intercept.view(-1, 1, 1, 1)
    return _out(_nrmse(_demean(fitted, m), _demean(t, m), m), b)


# --------------------------------------------------------------------------- filtering
def _gauss1d(sigma: float, radius: int, order: int, device) -> torch.Tensor:
    """Sampled, normalised 1D Gaussian (order 0) or its second derivative (order 2)."""
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    g = torch.exp(-0.5 * x ** 2 / sigma ** 2)
    g = g / g.sum()
    if order == 0:
        return g
    if order == 2:
        return g * (x ** 2 / sigma ** 4 - 1.0 / sigma ** 2)
    raise ValueError("order must be 0 or 2")


def _filter_axis(x: torch.Tensor, k: torch.Tensor, axis: int) -> torch.Tensor:
    """Correlate (N, 1, X, Y, Z) with the odd 1D kernel k along spatial axis 0, 1 or 2,
    extending the edges by replication; the output has the input's shape.

    A sum of shifted slices: exact, and about 3x faster than ``conv3d`` on CPU in float64.
    """
    taps = k.tolist()
    r = (len(taps) - 1) // 2
    pad = [0] * 6
    pad[4 - 2 * axis] = pad[5 - 2 * axis] = r
    xp = F.pad(x, pad, mode="replicate")
    dim, n = 2 + axis, x.shape[2 + axis]
    out = xp.narrow(dim, 0, n) * taps[0]
    for j in range(1, len(taps)):
        out.add_(xp.narrow(dim, j, n), alpha=taps[j])
    return out


def _separable(x: torch.Tensor, kernels: Sequence[torch.Tensor]) -> torch.Tensor:
    """Apply one 1D kernel per spatial axis to (B, X, Y, Z); returns (B, X, Y, Z)."""
    y = x.unsqueeze(1)
    for axis, k in enumerate(kernels):
        y = _filter_axis(y, k, axis)
    return y[:, 0]


def _window(kind: str, size_or_sigma: float, radius: int, device) -> list[torch.Tensor]:
    if kind == "gaussian":
        g = _gauss1d(size_or_sigma, radius, 0, device)
    elif kind == "uniform":
        g = torch.full((2 * radius + 1,), 1.0 / (2 * radius + 1), device=device,
                       dtype=torch.float64)
    else:
        raise ValueError(f"window must be 'gaussian' or 'uniform', got {kind!r}")
    return [g, g, g]


def log_filter(x: torch.Tensor, sigma: float = HFEN_SIGMA, radius: int = HFEN_RADIUS
               ) -> torch.Tensor:
    """Laplacian of Gaussian (1/voxel^2) of (B, X, Y, Z) float64 volumes, same shape out.

    Sum over the three axes of the separable second-derivative-of-Gaussian filters, each 1D
    kernel sampled on ``2 * radius + 1`` voxels, edges replicated (the same definition as
    ``scipy.ndimage.gaussian_laplace(x, sigma, mode="nearest", radius=radius)``).
    """
    g0 = _gauss1d(sigma, radius, 0, "cpu")
    g2 = _gauss1d(sigma, radius, 2, "cpu")
    return sum(_separable(x, [g2 if i == a else g0 for i in range(3)]) for a in range(3))


def hfen(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
         sigma: float = HFEN_SIGMA, radius: int = HFEN_RADIUS,
         demean: bool = True) -> torch.Tensor:
    """High-frequency error norm in **percent**.

    Both maps are (optionally) demeaned inside the mask and set to zero outside it, filtered
    with a Laplacian of Gaussian (sigma 1.5 voxels, 15^3 support, see :func:`log_filter`) over
    the whole volume, and ``100 * ||LoG(p) - LoG(t)|| / ||LoG(t)||`` is taken with both norms
    over the mask.

    Returns:
        0-d tensor for a single volume, (B,) for a batch; 0 for a perfect prediction.
    """
    p, t, m, b = _prep(pred, target, mask)
    if demean:
        p, t = _demean(p, m), _demean(t, m)
    lp, lt = log_filter(p * m, sigma, radius), log_filter(t * m, sigma, radius)
    return _out(_nrmse(lp, lt, m), b)


# --------------------------------------------------------------------------- similarity
def ssim_map(x: torch.Tensor, y: torch.Tensor, kernels: Sequence[torch.Tensor],
             c1: float, c2: float) -> torch.Tensor:
    """Local SSIM index of (B, X, Y, Z) float64 volumes with a separable window, same shape.

    ``(2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` with
    local means and (co)variances from the normalised window ``kernels`` (one per axis).
    """
    mu_x, mu_y = _separable(x, kernels), _separable(y, kernels)
    s_xx = _separable(x * x, kernels) - mu_x ** 2
    s_yy = _separable(y * y, kernels) - mu_y ** 2
    s_xy = _separable(x * y, kernels) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * s_xy + c2)
    return num / ((mu_x ** 2 + mu_y ** 2 + c1) * (s_xx + s_yy + c2))


def _windowed_similarity(p, t, m, window, sigma, radius, L, k1, k2):
    kernels = _window(window, sigma, radius, "cpu")
    smap = ssim_map(p, t, kernels, (k1 * L) ** 2, (k2 * L) ** 2)
    return _mmean(smap, m)


def xsim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
         window: str = "uniform", sigma: float = XSIM_SIGMA, radius: int = XSIM_RADIUS,
         demean: bool = True) -> torch.Tensor:
    """XSIM, the structural similarity adapted to QSM (Milovic et al., MRM 2024).

    The maps stay in ppm: no rescaling, no clipping; L = 1 ppm, K1 = 0.01, K2 = 0.001 (the
    small K2 makes the index sensitive to streaking). Both maps are (optionally) demeaned inside
    the mask and set to zero outside it; the local statistics use a box of ``2 * radius + 1``
    = 5 voxels a side (dlqsm's pinned definition) or, with ``window="gaussian"``, a Gaussian
    window of ``sigma`` voxels (the challenge script's choice with radius 3); the index map is
    averaged over the mask.

    Returns:
        0-d tensor for a single volume, (B,) for a batch; 1 for a perfect prediction.
    """
    p, t, m, b = _prep(pred, target, mask)
    if demean:
        p, t = _demean(p, m), _demean(t, m)
    v = _windowed_similarity(p * m, t * m, m, window, sigma, radius, XSIM_L, XSIM_K1, XSIM_K2)
    return _out(v, b)


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
         window: str = "gaussian", sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS,
         demean: bool = True) -> torch.Tensor:
    """Conventional SSIM (Wang et al. 2004: K1 = 0.01, K2 = 0.03, L = 1) on rescaled maps.

    Both maps are (optionally) demeaned inside the mask and set to zero outside it, then both
    are rescaled with the same affine map that sends the *target's* range over the volume to
    [0, 1] (so a scaling error in the prediction is not hidden; the prediction is not clipped).
    Gaussian window sigma 1.5 voxels, 11 voxels a side (``window="uniform"`` for a box of
    ``2 * radius + 1``); the index map is averaged over the mask.

    Returns:
        0-d tensor for a single volume, (B,) for a batch; 1 for a perfect prediction.
    """
    p, t, m, b = _prep(pred, target, mask)
    if demean:
        p, t = _demean(p, m), _demean(t, m)
    p, t = p * m, t * m
    lo = t.amin(_DIMS, keepdim=True)
    span = (t.amax(_DIMS, keepdim=True) - lo).clamp_min(torch.finfo(t.dtype).tiny)
    p, t = (p - lo) / span, (t - lo) / span
    v = _windowed_similarity(p, t, m, window, sigma, radius, SSIM_L, SSIM_K1, SSIM_K2)
    return _out(v, b)


# --------------------------------------------------------------------------- correlation
def pearson(pred: torch.Tensor, target: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation coefficient of the voxel values inside the mask (1 is perfect).

    Returns:
        0-d tensor for a single volume, (B,) for a batch.
    """
    p, t, m, b = _prep(pred, target, mask)
    p, t = _demean(p, m), _demean(t, m)
    r = _mmean(p * t, m) / torch.sqrt(_mmean(p * p, m) * _mmean(t * t, m))
    return _out(r, b)


def linear_fit(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None):
    """Least-squares line ``pred ~ slope * target + intercept`` over the voxels in the mask.

    A slope below 1 means the prediction underestimates the susceptibility contrast; the
    intercept is in ppm.

    Returns:
        (slope, intercept): 0-d tensors for a single volume, (B,) tensors for a batch.
    """
    p, t, m, b = _prep(pred, target, mask)
    slope, intercept = _fit(p, t, m)
    return _out(slope, b), _out(intercept, b)


# --------------------------------------------------------------------------- regions of interest
def roi_means(chi: torch.Tensor, labels: torch.Tensor, label_ids: Sequence[int]) -> torch.Tensor:
    """Mean of ``chi`` (ppm) in each labelled region.

    Args:
        chi: (X, Y, Z) or a batch (B, X, Y, Z) / (B, 1, X, Y, Z).
        labels: integer label map of the same spatial shape (one for the batch, or one each).
        label_ids: the labels to average over, in order.

    Returns:
        (len(label_ids),) for a single volume, (B, len(label_ids)) for a batch; NaN for a
        label that has no voxel.
    """
    c = _as_batch(chi, "chi").to(torch.float64)
    lab = _as_batch(labels, "labels").to(c.device)
    means = [_mmean(c, (lab == int(i)).expand_as(c)) for i in label_ids]
    out = torch.stack(means, dim=-1) if means else c.new_zeros(c.shape[0], 0)
    return out if chi.ndim > 3 else out[0]


def _reference(chi: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Reference a map to its mean inside ``mask`` (no change when mask is None)."""
    if mask is None:
        return chi
    c = _as_batch(chi, "chi").to(torch.float64)
    m = (_as_batch(mask, "mask").to(c.device) != 0).expand_as(c)
    out = _demean(c, m)
    return out if chi.ndim > 3 else out[0]


def per_roi_error(pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor,
                  label_ids: Sequence[int], mask: torch.Tensor | None = None) -> dict:
    """Mean-value error (ppm) in each region: ``mean_roi(pred) - mean_roi(target)``.

    With ``mask``, both maps are first referenced to their own mean inside it (so the error
    does not depend on an arbitrary offset of the prediction).

    Returns:
        {label_id: error}: floats for a single volume, (B,) tensors for a batch.
    """
    diff = (roi_means(_reference(pred, mask), labels, label_ids)
            - roi_means(_reference(target, mask), labels, label_ids))
    if pred.ndim == 3:
        return {int(i): float(diff[j]) for j, i in enumerate(label_ids)}
    return {int(i): diff[:, j] for j, i in enumerate(label_ids)}


def dgm_linearity(pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor,
                  label_ids: Sequence[int]) -> torch.Tensor:
    """Deviation from linearity of the deep grey matter: ``|1 - slope|`` (0 is perfect).

    ``slope`` is the least-squares slope of the predicted ROI means on the true ROI means over
    the regions ``label_ids`` (QSM challenge 2.0 "DGM slope error"); an offset does not
    change it. Needs at least two regions with different true means.

    Returns:
        0-d tensor for a single volume, (B,) for a batch.
    """
    mp, mt = roi_means(pred, labels, label_ids), roi_means(target, labels, label_ids)
    mp, mt = torch.atleast_2d(mp), torch.atleast_2d(mt)
    xt, yp = mt - mt.mean(-1, keepdim=True), mp - mp.mean(-1, keepdim=True)
    slope = (xt * yp).sum(-1) / (xt * xt).sum(-1)
    out = (1.0 - slope).abs()
    return out if pred.ndim > 3 else out[0]


# --------------------------------------------------------------------------- everything
def compute_all(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                roi_ids: Sequence[int] | None = None) -> dict[str, float]:
    """All metrics as a flat dict of floats (a batch is averaged over its volumes).

    Keys: ``nrmse``, ``dnrmse``, ``hfen`` (percent), ``ssim``, ``xsim``, ``pearson``,
    ``slope``, ``intercept`` (ppm); with ``labels`` and ``roi_ids`` also ``dgm_linearity``,
    ``roi_mae`` (mean absolute ROI error, ppm) and ``roi_error_<id>`` (ppm, maps referenced to
    their mean inside the mask).
    """
    slope, intercept = linear_fit(pred, target, mask)
    scores = {
        "nrmse": nrmse(pred, target, mask),
        "dnrmse": nrmse_detrended(pred, target, mask),
        "hfen": hfen(pred, target, mask),
        "ssim": ssim(pred, target, mask),
        "xsim": xsim(pred, target, mask),
        "pearson": pearson(pred, target, mask),
        "slope": slope,
        "intercept": intercept,
    }
    if labels is not None and roi_ids:
        scores["dgm_linearity"] = dgm_linearity(pred, target, labels, roi_ids)
        errors = per_roi_error(pred, target, labels, roi_ids, mask)
        for i, e in errors.items():
            scores[f"roi_error_{i}"] = torch.as_tensor(e, dtype=torch.float64)
        scores["roi_mae"] = torch.stack([torch.as_tensor(e, dtype=torch.float64).abs()
                                         for e in errors.values()]).mean(0)
    return {k: _to_float(v) for k, v in scores.items()}


def _to_float(v) -> float:
    v = torch.as_tensor(v, dtype=torch.float64)
    return float(v.mean()) if v.numel() else math.nan
