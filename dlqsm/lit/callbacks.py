"""Training callbacks: slice panels of validation predictions and ``metadata.json`` export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dlqsm.io.outputs import write_json_atomic
from dlqsm.metrics.functional import nrmse


def _central_slices(vol: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Axial, coronal and sagittal central slices of (X, Y, Z), transposed for imshow."""
    x, y, z = (s // 2 for s in vol.shape)
    return [("axial (z)", vol[:, :, z].T), ("coronal (y)", vol[:, y, :].T),
            ("sagittal (x)", vol[x, :, :].T)]


def slice_panel(truth: np.ndarray, pred: np.ndarray, mask: np.ndarray | None = None,
                title: str | None = None) -> Figure:
    """3 x 3 figure: rows axial/coronal/sagittal; columns truth, prediction, prediction - truth.

    Args:
        truth, pred: (X, Y, Z) susceptibility in ppm.
        mask: (X, Y, Z); sets the grey-level window (2-98th percentile of truth inside it).
    """
    inside = truth[mask > 0] if mask is not None and np.any(mask > 0) else truth.ravel()
    lo, hi = np.percentile(inside, [2, 98]) if inside.size else (-0.1, 0.1)
    if hi <= lo:
        lo, hi = lo - 0.05, hi + 0.05
    err = pred - truth
    emax = max(float(np.percentile(np.abs(err), 99.5)), 1e-6)
    fig = Figure(figsize=(8, 9), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 3)
    columns = [("truth", truth, "gray", lo, hi), ("prediction", pred, "gray", lo, hi),
               ("prediction - truth", err, "RdBu_r", -emax, emax)]
    for c, (name, vol, cmap, vmin, vmax) in enumerate(columns):
        for r, (view, sl) in enumerate(_central_slices(vol)):
            im = axes[r, c].imshow(sl, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name)
            if c == 0:
                axes[r, c].set_ylabel(view)
        fig.colorbar(im, ax=axes[:, c].tolist(), location="bottom", shrink=0.8, label="ppm")
    if title:
        fig.suptitle(title)
    return fig


class SlicePanels(Callback):
    """Each validation epoch: save a PNG panel of the first validation volume and log it.

    PNGs go to ``dirpath`` (default ``<trainer.default_root_dir>/panels``) as
    ``epoch0003.png``; the figure is also sent to W&B or TensorBoard loggers when present.
    """

    def __init__(self, dirpath: str | None = None, every_n_epochs: int = 1):
        self.dirpath = dirpath
        self.every_n_epochs = max(int(every_n_epochs), 1)
        self._sample = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if not isinstance(outputs, dict) or "pred" not in outputs:
            return

        self._sample = tuple(to_numpy(t[0, 0]) for t in (batch["chi"], outputs["pred"],
                                                          batch["mask"]))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        sample, self._sample = self._sample, None
        if sample is None or trainer.current_epoch % self.every_n_epochs:
            return
        truth, pred, mask = sample
        score = float(nrmse(torch.from_numpy(pred), torch.from_numpy(truth),
                            torch.from_numpy(mask > 0)))
        fig = slice_panel(truth, pred, mask, title=f"epoch {trainer.current_epoch}, "
                          f"step {trainer.global_step}: NRMSE {score:.1f}% (first val volume)")
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "panels")
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"epoch{trainer.current_epoch:04d}.png"
        fig.savefig(path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/panel", images=[str(path)], step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("val/panel", fig, trainer.global_step)


class MetadataExport(Callback):
    """Write ``metadata.json`` beside the checkpoints every time one is saved (rank 0).

    The LightningModule must provide ``metadata()`` (see :class:`dlqsm.lit.module.QSMLitModule`).
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if not trainer.is_global_zero or not hasattr(pl_module, "metadata"):
            return
        ckpt_cb = trainer.checkpoint_callback
        where = self.dirpath or (ckpt_cb.dirpath if ckpt_cb is not None else None) \
            or trainer.default_root_dir
        write_json_atomic(Path(where) / "metadata.json", pl_module.metadata())


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Detach a tensor to a float32 numpy array on the CPU."""
    return t.detach().float().cpu().numpy()
