"""Networks as plain ``nn.Module``s (no Lightning here).

Every model is called as ``net(field, mask=None, b0_dir=None, voxel_size=None) -> chi`` with
fields and susceptibility in ppm (see :mod:`dlqsm.models.base`).
"""

from dlqsm.models.base import QSMModel
from dlqsm.models.batched_dipole import BatchDipole, batch_dipole, tkd
from dlqsm.models.loading import build_from_config, export_model, load_model
from dlqsm.models.residual import InversionResidualNet, classical_estimate
from dlqsm.models.unrolled import ConvPrior, UnrolledQSM
from dlqsm.models.wrappers import NormalizedNet, TKDResidualNet

__all__ = [
    "QSMModel",
    "NormalizedNet",
    "TKDResidualNet",
    "InversionResidualNet",
    "classical_estimate",
    "UnrolledQSM",
    "ConvPrior",
    "BatchDipole",
    "batch_dipole",
    "tkd",
    "build_from_config",
    "load_model",
    "export_model",
]


def __getattr__(name: str):
    """Deprecated: ``WithInitialEstimate`` is a dataset (:mod:`dlqsm.simulation.wrappers`)."""
    if name == "WithInitialEstimate":
        from dlqsm.models import residual

        return residual.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
