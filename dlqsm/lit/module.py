"""LightningModule for supervised (and physics-regularised) training of QSM networks.

The network is injected (``net``, any :class:`dlqsm.models.QSMModel`), the loss is a
:class:`dlqsm.lit.losses.CompositeLoss`, optimizer and scheduler are partials (Hydra
``_partial_: true``). Every checkpoint carries ``checkpoint["dlqsm"]``: the resolved network
config (so :func:`dlqsm.models.load_model` rebuilds the network alone), the full run config and
the metadata of :func:`dlqsm.lit.metadata.build_metadata`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence

import torch
from lightning import LightningModule
from torch import nn

from dlqsm.io.outputs import git_revision
from dlqsm.lit.metadata import GeometryTracker, build_metadata
from dlqsm.metrics.wrappers import qsm_metric_collection
from dlqsm.models.loading import CHECKPOINT_KEY
from dlqsm.pipeline.batched import INIT_KEY
from dlqsm.simulation.sample import Batch

BATCH_KEYS = ("field", "mask", "b0_dir", "voxel_size")
# on_before_batch_transfer below is meant to run (it records the training geometry on the CPU)
warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer`")


class QSMLitModule(LightningModule):
    """Train ``net`` to map local fields (ppm) to susceptibility maps (ppm).

    Args:
        net: the network, called as ``net(field, mask, b0_dir, voxel_size)``.
        loss: module returning ``(total, {term: value})`` from ``(pred, batch)``.
        optimizer: partial taking the parameters (e.g. ``functools.partial(torch.optim.AdamW,
            lr=1e-3)``).
        scheduler: optional partial taking the optimizer.
        val_metrics: names from :mod:`dlqsm.metrics.wrappers` computed on the validation set.
        monitor: metric the scheduler (ReduceLROnPlateau) and checkpoints follow.
        scheduler_interval: "epoch" or "step".
        net_config: the resolved ``_target_`` config of ``net`` (stored in checkpoints).
        compile: compile the network (``nn.Module.compile``) at fit start.
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable,
                 scheduler: Callable | None = None,
                 val_metrics: Sequence[str] = ("nrmse", "hfen", "xsim"),
                 monitor: str = "val/loss", scheduler_interval: str = "epoch",
                 net_config: dict | None = None, compile: bool = False):
        super().__init__()
        val_metrics = [str(m) for m in val_metrics]  # plain list (not a Hydra ListConfig)
        # net and loss are modules (their weights are in the state dict), optimizer and scheduler
        # are partials: keeping them out of the hyper-parameters keeps checkpoints loadable with
        # torch.load(weights_only=True). The full config is stored by on_save_checkpoint.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        self.net = net
        # networks refining a classical estimate take it precomputed from the batch when the
        # data provides it (dlqsm.models.InversionResidualNet)
        self._takes_init = INIT_KEY in inspect.signature(net.forward).parameters
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_metrics = qsm_metric_collection(list(val_metrics), prefix="val/")
        self.geometry = GeometryTracker()
        self.run_config: dict | None = None  # the resolved Hydra config, set by dlqsm.lit.train
        self._git = None

    def forward(self, batch: dict) -> torch.Tensor:
        """Predicted chi (B, 1, X, Y, Z) in ppm for a batch dict."""
        extra = {INIT_KEY: batch[INIT_KEY]} if self._takes_init and INIT_KEY in batch else {}
        return self.net(*(batch.get(k) for k in BATCH_KEYS), **extra)

    def setup(self, stage: str) -> None:
        if self.hparams.compile and stage == "fit":
            self.net.compile()  # in place: parameter names (and checkpoints) stay the same

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.training:
            self.geometry.update(batch)  # still on the CPU here: no device synchronisation
        return batch

    def _step(self, batch: Batch, stage: str):
        pred = self(batch)
        total, parts = self.loss(pred, batch)
        bs = batch["field"].shape[0]
        sync = stage == "val"
        self.log(f"{stage}/loss", total, prog_bar=True, batch_size=bs, sync_dist=sync,
                 on_step=stage == "train", on_epoch=True)
        if len(parts) > 1:
            self.log_dict({f"{stage}/{k}": v for k, v in parts.items()}, batch_size=bs,
                          sync_dist=sync, on_step=False, on_epoch=True)
        return total, pred

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        total, _ = self._step(batch, "train")
        return total

    def validation_step(self, batch: Batch, batch_idx: int) -> dict:
        total, pred = self._step(batch, "val")
        kwargs = {"labels": batch["labels"]} if "labels" in batch else {}
        self.val_metrics.update(pred.float(), batch["chi"], batch["mask"] > 0, **kwargs)
        return {"loss": total, "pred": pred.detach()}

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), sync_dist=False)
        self.val_metrics.reset()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.monitor,
                                 "interval": self.hparams.scheduler_interval, "frequency": 1}}

    def metadata(self) -> dict:
        """Units, training geometry, normalisation, config, git revision and metrics so far."""
        if self._git is None:
            self._git = git_revision()
        trainer = self._trainer  # None outside a Trainer
        return build_metadata(self.net, trainer, config=self.run_config,
                              net_config=self.hparams.net_config,
                              geometry=self.geometry.state, git=self._git)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "net_config": self.hparams.net_config,
            "state_dict_prefix": "net.",
            "config": self.run_config,
            "geometry": self.geometry.state,
            "metadata": self.metadata(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get(CHECKPOINT_KEY) or {}
        if info.get("geometry"):
            self.geometry.state = info["geometry"]
