"""torchmetrics wrappers: per-volume QSM scores averaged over batches and processes.

Each metric keeps two states, the sum of the per-volume scores and the number of volumes, both
reduced with ``dist_reduce_fx="sum"``: the mean over a distributed (DDP) validation set is then
exact, whatever the batch sizes on each process. ``update(pred, target, mask=None)`` takes the
shapes of :mod:`dlqsm.metrics.functional` ((X,Y,Z), (B,X,Y,Z) or (B,1,X,Y,Z)); ``compute()``
returns the mean score (percent for NRMSE/dNRMSE/HFEN, dimensionless for the others).

Example:
    >>> metrics = qsm_metric_collection(prefix="val/")
    >>> metrics.update(pred, target, mask)
    >>> metrics.compute()  # {"val/nrmse": ..., "val/xsim": ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric, MetricCollection

from dlqsm.metrics import functional as QF

# name -> per-volume function of dlqsm.metrics.functional
FUNCTIONS = {
    "nrmse": QF.nrmse,
    "dnrmse": QF.nrmse_detrended,
    "hfen": QF.hfen,
    "ssim": QF.ssim,
    "xsim": QF.xsim,
    "pearson": QF.pearson,
}
DEFAULT_METRICS = ("nrmse", "dnrmse", "hfen", "ssim", "xsim", "pearson")


class _MeanOfVolumes(Metric):
    """Sum and count of per-volume scores, summed across processes; compute() is their ratio."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, scores: torch.Tensor) -> None:
        scores = torch.atleast_1d(scores.detach()).to(self.total.device, torch.float64)
        self.total += scores.sum()
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class QSMMetric(_MeanOfVolumes):
    """Mean over volumes of one metric of :mod:`dlqsm.metrics.functional` (see FUNCTIONS).

    The named subclasses (:class:`NRMSE`, :class:`XSIM`, ...) also declare
    ``higher_is_better`` (a class constant in torchmetrics); :func:`make_metric` picks them.

    Args:
        name: one of ``nrmse``, ``dnrmse``, ``hfen``, ``ssim``, ``xsim``, ``pearson``
            (optional in the subclasses).
        **kwargs: torchmetrics ``Metric`` options (e.g. ``sync_on_compute``).
    """

    metric_name: str | None = None

    def __init__(self, name: str | None = None, **kwargs):
        name = name or self.metric_name
        if name not in FUNCTIONS:
            raise ValueError(f"unknown QSM metric {name!r}; choose from {sorted(FUNCTIONS)}")
        super().__init__(**kwargs)
        self.metric_name = name

    def update(self, pred: torch.Tensor, target: torch.Tensor,
               mask: torch.Tensor | None = None) -> None:
        self._accumulate(FUNCTIONS[self.metric_name](pred, target, mask))


class NRMSE(QSMMetric):
    """Mean NRMSE (percent) over volumes."""

    metric_name = "nrmse"
    higher_is_better = False


class DetrendedNRMSE(QSMMetric):
    """Mean detrended NRMSE (percent) over volumes."""

    metric_name = "dnrmse"
    higher_is_better = False


class HFEN(QSMMetric):
    """Mean HFEN (percent) over volumes."""

    metric_name = "hfen"
    higher_is_better = False


class SSIM(QSMMetric):
    """Mean SSIM over volumes."""

    metric_name = "ssim"
    higher_is_better = True


class XSIM(QSMMetric):
    """Mean XSIM over volumes."""

    metric_name = "xsim"
    higher_is_better = True


class Pearson(QSMMetric):
    """Mean Pearson correlation over volumes."""

    metric_name = "pearson"
    higher_is_better = True


class DGMLinearity(_MeanOfVolumes):
    """Mean over volumes of ``|1 - slope|`` of the ROI means (see ``dgm_linearity``).

    ``update(pred, target, mask=None, labels=None)``: volumes without labels are skipped, so
    the metric can sit in a collection used on data without segmentations.
    """

    higher_is_better = False

    def __init__(self, roi_ids: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.roi_ids = [int(i) for i in roi_ids]

    def update(self, pred: torch.Tensor, target: torch.Tensor,
               mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
        if labels is not None:
            self._accumulate(QF.dgm_linearity(pred, target, labels, self.roi_ids))


def make_metric(name: str, **kwargs) -> QSMMetric:
    """The named :class:`QSMMetric` subclass for ``name`` (e.g. ``"xsim"`` -> :class:`XSIM`)."""
    for cls in (NRMSE, DetrendedNRMSE, HFEN, SSIM, XSIM, Pearson):
        if cls.metric_name == name:
            return cls(**kwargs)
    return QSMMetric(name, **kwargs)  # raises ValueError for an unknown name


def qsm_metric_collection(names: Sequence[str] = DEFAULT_METRICS, *, prefix: str | None = None,
                          roi_ids: Sequence[int] | None = None) -> MetricCollection:
    """A ``MetricCollection`` of :class:`QSMMetric` (plus :class:`DGMLinearity` with roi_ids).

    ``collection.update(pred, target, mask)`` (and ``labels=`` for the DGM linearity) updates
    every metric; keys are ``prefix + name``.
    """
    metrics: dict[str, Metric] = {name: make_metric(name) for name in names}
    if roi_ids:
        metrics["dgm_linearity"] = DGMLinearity(roi_ids)
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)
