"""Deprecated module path (it reads like :mod:`dlqsm.physics`): use
:mod:`dlqsm.models.batched_dipole` (kept for one release)."""

from __future__ import annotations

import warnings

from dlqsm.models.batched_dipole import *  # noqa: F401,F403
from dlqsm.models.batched_dipole import __all__  # noqa: F401

warnings.warn("dlqsm.models.physics is deprecated; import from dlqsm.models.batched_dipole.",
              DeprecationWarning, stacklevel=2)
