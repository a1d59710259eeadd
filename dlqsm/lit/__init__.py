"""Lightning training of dlqsm networks (the only package level that imports Lightning/Hydra).

* :class:`~dlqsm.lit.module.QSMLitModule` -- LightningModule with an injected network;
* :class:`~dlqsm.lit.datamodule.QSMDataModule` -- loaders over simulated/disk/mixed datasets;
* :mod:`~dlqsm.lit.losses` -- L1, L2, gradient difference and physics terms, weighted;
* :mod:`~dlqsm.lit.callbacks` -- slice panels and ``metadata.json`` export;
* :func:`~dlqsm.lit.train.train` -- the Hydra job behind ``dlqsm train`` and scripts/train.py.

Trained networks are loaded without Lightning by :func:`dlqsm.models.load_model`.
"""

from dlqsm.lit.datamodule import QSMDataModule
from dlqsm.lit.losses import CompositeLoss
from dlqsm.lit.module import QSMLitModule
from dlqsm.lit.train import train
from dlqsm.models.loading import export_model, load_model
from dlqsm.simulation.wrappers import MixtureDataset

__all__ = ["QSMLitModule", "QSMDataModule", "MixtureDataset", "CompositeLoss", "train",
           "load_model", "export_model"]
