"""Classical dipole inversion: local field (ppm) + brain mask -> susceptibility chi (ppm).

Every method is a pure torch function (CPU or CUDA, float32 by default; float64 input stays
float64) built on the project's dipole kernel (:func:`dlqsm.physics.dipole.dipole_kernel`, the
kernel of :class:`~dlqsm.physics.dipole.DipoleOperator`) and periodic finite differences
(:class:`dlqsm.physics.operators.Gradient`).

Grid: the volume is zero-padded by ``padding`` voxels per side (default 0) and then extended at
the far end of each axis to the next length whose prime factors are 2, 3, 5, 7 (164 x 205 x 205
-> 168 x 210 x 210: FFTs about 3x faster); all operators are periodic on that grid and the
result is cropped back.

Scaling: fields and chi are in ppm, gradients in ppm/mm, and every regularisation weight is in
that scaling (data term ``1/2 ||W (D chi - f)||^2``). Defaults were chosen on simulated 1 mm
heads (``dlqsm.simulation.head`` and a piecewise-constant ellipsoid head; fields of ~0.05 ppm)
with 1e-3..3e-3 ppm field noise, and checked (not tuned) on the 2016 challenge's in-vivo field
against COSMOS; see ``scripts/benchmark_inversion.py``.

Methods (``METHODS``, one line each in :mod:`~dlqsm.pipeline.inversion.registry`):

- ``tkd``: truncated k-space division. Where |D| < threshold, 1/D is replaced by
  sign(D)/threshold (sign-preserving truncation, Shmueli et al. 2009; no correction factor).
- ``tsvd``: truncated SVD: components with |D| < threshold are set to zero.
- ``tikhonov``: closed form of min ||D chi - f||^2 + lam ||R chi||^2, R = identity or gradient.
- ``ilsqr``: weighted least squares min ||W (D S chi - f)||^2 + lam ||R S chi||^2 (S: sources
  restricted to the mask) by CG on the normal equations or LSQR, stopping on a tolerance.
- ``tv``: total variation, min 1/2 ||W (D chi - f)||^2 + alpha TV(chi), by ADMM (FANSI-like;
  closed-form chi update in k-space; a weighted data term by an extra splitting variable).
- ``medi``: morphology-enabled dipole inversion (MEDI-like): TV with magnitude edges excluded,
  nonlinear data term, Gauss-Newton with inner CG.
- ``ndi``: nonlinear dipole inversion (Polak et al. 2020): gradient descent on the nonlinear
  data term plus Tikhonov, early stopping.
- ``rts``: rapid two-step (Kames et al. 2018): LSMR for the well-conditioned k-space, then TV
  by ADMM for the ill-conditioned cone.

Weights: ``weight`` (e.g. inverse noise std) is multiplied by the mask and normalised to mean 1
inside the mask. The data terms of ilsqr, medi, ndi, rts and tv (``data_term="mask"``) cover
the mask only (W = 0 outside); the closed forms (tkd, tsvd, tikhonov) and tv with
``data_term="full"`` use the whole grid and cannot honour a weight (a warning says so).

Nonlinear data terms (medi, ndi): ``phase_scale`` s (rad/ppm) maps the ppm field to a phase,
|e^{i s D chi} - e^{i s f}|^2. The default s = 1 keeps the term nearly linear for brain fields;
an echo's true scale (e.g. :data:`PHASE_PER_PPM_3T_20MS` = 16 rad/ppm) models its phase but
makes the term non-convex where |s f| approaches pi (veins, haemorrhages): on the phantoms above
s = 16 raised medi's and ndi's errors.

The package is split by responsibility (every name stays importable from
``dlqsm.pipeline.inversion``):

* :mod:`~dlqsm.pipeline.inversion.problem`: what all methods share: :class:`InversionResult`,
  the padded FFT grid with weights and dipole kernel (``Problem``), the iteration ``Loop``,
  ``finish`` (crop and record), :func:`fast_fft_len`;
* :mod:`~dlqsm.pipeline.inversion.closed_form`: :func:`tkd`, :func:`tsvd`, :func:`tikhonov`;
* :mod:`~dlqsm.pipeline.inversion.least_squares`: :func:`ilsqr`;
* :mod:`~dlqsm.pipeline.inversion.total_variation`: :func:`tv` (ADMM) and the gradient
  splitting ``GradSplit`` that RTS reuses;
* :mod:`~dlqsm.pipeline.inversion.nonlinear`: :func:`medi` (with :func:`edge_mask`), :func:`ndi`;
* :mod:`~dlqsm.pipeline.inversion.two_step`: :func:`rts`;
* :mod:`~dlqsm.pipeline.inversion.registry`: :data:`METHODS`, :func:`method_defaults`,
  :func:`register_method` and :func:`invert` (validation, dispatch, reference). Adding a
  method is one module plus one line in ``METHODS`` (see that module's docstring).
"""

from dlqsm.pipeline.inversion.closed_form import tikhonov, tkd, tsvd
from dlqsm.pipeline.inversion.least_squares import ilsqr
from dlqsm.pipeline.inversion.nonlinear import PHASE_PER_PPM_3T_20MS, edge_mask, medi, ndi
from dlqsm.pipeline.inversion.problem import COMMON_ARGS, InversionResult, fast_fft_len
from dlqsm.pipeline.inversion.registry import (
    METHODS,
    TOTAL_FIELD_METHODS,
    invert,
    method_defaults,
    register_method,
)
from dlqsm.pipeline.inversion.tfi import tfi
from dlqsm.pipeline.inversion.total_variation import tv
from dlqsm.pipeline.inversion.two_step import rts

__all__ = [
    "COMMON_ARGS",
    "METHODS",
    "TOTAL_FIELD_METHODS",
    "PHASE_PER_PPM_3T_20MS",
    "InversionResult",
    "edge_mask",
    "fast_fft_len",
    "ilsqr",
    "invert",
    "medi",
    "method_defaults",
    "ndi",
    "register_method",
    "rts",
    "tfi",
    "tikhonov",
    "tkd",
    "tsvd",
    "tv",
]
