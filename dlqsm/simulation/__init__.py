"""Simulation of QSM training and test data.

* :mod:`~dlqsm.simulation.shapes`: random geometric sources (ellipsoids, boxes, cylinders,
  tubes, capsules), rasterised in a vectorised pass over a batch;
* :mod:`~dlqsm.simulation.anatomy`: the head phantom's anatomy tables (labels, susceptibility
  ranges, M0/R2*, positions of nuclei, ventricles and air spaces);
* :mod:`~dlqsm.simulation.phantom`: the procedural head phantom (labelled anatomy, veins,
  lesions, skull and air) drawn on any grid;
* :mod:`~dlqsm.simulation.head`: :func:`~dlqsm.simulation.head.simulate_head_case`, a complete
  simulated scan (fields, multi-echo GRE data) of a head phantom;
* :mod:`~dlqsm.simulation.rng`: seeded random draws shared by the generators;
* :mod:`~dlqsm.simulation.acquisition`: B0 direction, voxel size, local and total fields;
* :mod:`~dlqsm.simulation.signal`: multi-echo GRE signal, noise, phase wrapping, coils;
* :mod:`~dlqsm.simulation.augment`: flips/rotations that rotate B0 too, scaling, crops;
* :mod:`~dlqsm.simulation.datasets`: torch datasets and the batched generator;
* :mod:`~dlqsm.simulation.disk`: resumable NIfTI datasets on disk and their reader.

Every generator takes a seed or a ``torch.Generator``; nothing uses the global RNG.
"""

from dlqsm.simulation.anatomy import DGM_LABELS, LABELS
from dlqsm.simulation.datasets import (
    DiskQSMDataset,
    SimulatedQSMDataset,
    SimulatedQSMIterableDataset,
    SimulationConfig,
    generate_batch,
)
from dlqsm.simulation.head import HeadCase, simulate_head_case
from dlqsm.simulation.phantom import HeadPhantom, head_phantom
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
