"""Quality metrics for susceptibility maps.

:mod:`dlqsm.metrics.functional` holds pure torch functions (NRMSE, dNRMSE, HFEN, SSIM, XSIM,
Pearson, linear fit, ROI means and errors, DGM linearity, :func:`compute_all`);
:mod:`dlqsm.metrics.wrappers` holds torchmetrics ``Metric`` classes that accumulate them over
batches and processes (imported on demand, so the functions need only torch).
"""

from dlqsm.metrics.functional import (
    compute_all,
    dgm_linearity,
    hfen,
    linear_fit,
    nrmse,
    nrmse_detrended,
    pearson,
    per_roi_error,
    roi_means,
    ssim,
    xsim,
)

__all__ = [
    "compute_all",
    "dgm_linearity",
    "hfen",
    "linear_fit",
    "nrmse",
    "nrmse_detrended",
    "pearson",
    "per_roi_error",
    "roi_means",
    "ssim",
    "xsim",
]
