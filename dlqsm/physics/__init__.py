"""Physics core: dipole and other k-space kernels, linear operators, units and B0 geometry.

Nothing here imports lightning, hydra or wandb.
"""

from dlqsm.physics.dipole import DipoleOperator, dipole_kernel
from dlqsm.physics.geometry import b0_dir_from_affine, voxel_size_from_affine
from dlqsm.physics.units import GAMMA_HZ_PER_T, hz_to_ppm, phase_to_ppm, ppm_to_hz, ppm_to_phase

__all__ = [
    "DipoleOperator",
    "dipole_kernel",
    "b0_dir_from_affine",
    "voxel_size_from_affine",
    "GAMMA_HZ_PER_T",
    "hz_to_ppm",
    "phase_to_ppm",
    "ppm_to_hz",
    "ppm_to_phase",
]
