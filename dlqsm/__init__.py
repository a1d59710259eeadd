"""dlqsm: deep-learning quantitative susceptibility mapping.

Conventions used throughout (see docs and ARCHITECTURE):

* tensors are ``(B, C, X, Y, Z)`` in the voxel order of the NIfTI file, single volumes
  ``(X, Y, Z)``;
* susceptibility and fields in ppm, phase in radians, TE in seconds, B0 in tesla, voxels in mm;
* the B0 direction is a unit vector in voxel coordinates (derived from the NIfTI affine).
"""

__version__ = "0.1.0"
