"""Training callbacks: slice panels of validation predictions, ``metadata.json`` export, and
checkpoint-then-requeue for SLURM jobs (:class:`SlurmRequeue`)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import torch
from lightning import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dlqsm.io.outputs import write_json_atomic
from dlqsm.metrics.functional import nrmse

log = logging.getLogger(__name__)
HPC_CKPT = re.compile(r"hpc_ckpt_(\d+)\.ckpt$")


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


def hpc_checkpoints(folder) -> list[Path]:
    """``hpc_ckpt_N.ckpt`` files of ``folder`` (Lightning's names for SLURM checkpoints), by N."""
    folder = Path(folder)
    found = [(int(m.group(1)), p) for p in folder.glob("hpc_ckpt_*.ckpt")
             if (m := HPC_CKPT.search(p.name))] if folder.is_dir() else []
    return [p for _, p in sorted(found)]


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes for this job (``ARRAYID_TASKID`` in an array), or None."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class JobRequeued(SystemExit):
    """Raised on every rank after the checkpoint is written and the job requeued: the process
    ends without a result, so a submitit launcher keeps waiting for the requeued run."""


class SlurmRequeue(Callback):
    """Checkpoint at a step boundary and requeue the SLURM job when the scheduler asks for it.

    SLURM sends ``signum`` (default SIGUSR1) ``signal_delay_s`` before the time limit (sbatch
    ``--signal=USR1@120``; ``hydra/launcher=slurm`` sets it). The handler only sets a flag; before
    the next training step every rank agrees on it (one all-reduce per step when there are
    several ranks), all write ``hpc_ckpt_N.ckpt`` in ``trainer.default_root_dir`` together, rank 0
    runs ``scontrol requeue``, and the job ends with :class:`JobRequeued`. SIGTERM (preemption,
    ``scontrol requeue`` from outside, ``scancel``) makes Lightning stop after the current step;
    this callback then writes the same checkpoint. The requeued run resumes from the newest
    checkpoint (:func:`dlqsm.lit.train.slurm_resume_path`) with the same global step, so no step
    is repeated or lost. Unlike Lightning's own SIGUSR1 handler, nothing is saved mid-step and no
    step runs after the checkpoint.
    """

    def __init__(self, signum: int = signal.SIGUSR1):
        self.signum = signal.Signals(signum)
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        log.warning("Received %s: checkpoint and requeue after this step",
                    signal.Signals(signum).name)
        self.requested = True

    def on_fit_start(self, trainer, pl_module) -> None:
        # before Lightning's signal connector: it keeps a handler that is already there
        self._previous = signal.signal(self.signum, self._handler)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _agreed(self, trainer, pl_module) -> bool:
        flag = torch.tensor([1.0 if self.requested else 0.0], device=pl_module.device)
        if trainer.world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def save(self, trainer) -> Path:
        """Write the next ``hpc_ckpt_N.ckpt`` (all ranks take part; Lightning writes it)."""
        done = hpc_checkpoints(trainer.default_root_dir)
        n = int(HPC_CKPT.search(done[-1].name).group(1)) + 1 if done else 1
        path = Path(trainer.default_root_dir) / f"hpc_ckpt_{n}.ckpt"
        trainer.save_checkpoint(path)
        log.info("Saved %s at global step %d", path, trainer.global_step)
        return path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # here, not at batch end: the previous step is complete and its metrics are logged
        if not self._agreed(trainer, pl_module):
            return
        self.save(trainer)
        self.requested = False
        ok = True
        if trainer.is_global_zero:
            ok = requeue(slurm_job_id())
        if trainer.world_size > 1:
            flag = torch.tensor([1.0 if ok else 0.0], device=pl_module.device)
            torch.distributed.broadcast(flag, src=0)
            ok = bool(flag.item() > 0)
        if ok:
            flush_loggers(trainer)
            raise JobRequeued(0)
        log.warning("Job not requeued: training continues until the time limit; resume by "
                    "submitting again with the same run folder.")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Lightning raises SIGTERMException between training steps on every rank together
        if type(exception).__name__ == "SIGTERMException" and trainer.training:
            self.save(trainer)
            flush_loggers(trainer)


def flush_loggers(trainer) -> None:
    """Write what the loggers hold (the CSV logger buffers rows) before the process ends."""
    for lg in trainer.loggers:
        lg.save()


def requeue(job_id: str | None) -> bool:
    """``scontrol requeue job_id``; True when SLURM accepted it."""
    if not job_id:
        return False
    res = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if res.returncode:
        log.warning("scontrol requeue %s failed: %s", job_id, res.stderr.strip())
        return False
    log.info("Requeued SLURM job %s", job_id)
    return True
