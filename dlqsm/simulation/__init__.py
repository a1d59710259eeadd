"""Simulation of QSM training and test data.

* :mod:`~dlqsm.simulation.shapes`: random geometric sources (ellipsoids, boxes, cylinders,
  tubes, capsules), rasterised in a vectorised pass over a batch;
* :mod:`~dlqsm.simulation.head`: a procedural head phantom with labelled anatomy, veins,
  lesions, skull and air; :func:`~dlqsm.simulation.head.simulate_head_case` gives a complete
  simulated scan;
* :mod:`~dlqsm.simulation.acquisition`: B0 direction, voxel size, local and total fields;
* :mod:`~dlqsm.simulation.signal`: multi-echo GRE signal, noise, phase wrapping, coils;
* :mod:`~dlqsm.simulation.augment`: flips/rotations that rotate B0 too, scaling, crops;
* :mod:`~dlqsm.simulation.datasets`: torch datasets and the batched generator;
* :mod:`~dlqsm.simulation.disk`: resumable NIfTI datasets on disk and their reader.

Every generator takes a seed or a ``torch.Generator``; nothing uses the global RNG.
"""

from dlqsm.simulation.datasets import (
    DiskQSMDataset,
    SimulatedQSMDataset,
    SimulatedQSMIterableDataset,
    SimulationConfig,
    generate_batch,
)
from dlqsm.simulation.head import (
    DGM_LABELS,
    LABELS,
    HeadCase,
    HeadPhantom,
    head_phantom,
    simulate_head_case,
)
from dlqsm.simulation.shapes import DEEPQSM_SHAPES, ShapeSpec, random_shapes

__all__ = [
    "DGM_LABELS",
    "DEEPQSM_SHAPES",
    "LABELS",
    "DiskQSMDataset",
    "HeadCase",
    "HeadPhantom",
    "ShapeSpec",
    "SimulatedQSMDataset",
    "SimulatedQSMIterableDataset",
    "SimulationConfig",
    "generate_batch",
    "head_phantom",
    "random_shapes",
    "simulate_head_case",
]
