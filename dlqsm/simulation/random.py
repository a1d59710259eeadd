"""Deprecated module path (it shadows the stdlib name): use :mod:`dlqsm.simulation.rng`."""

from __future__ import annotations

import warnings

from dlqsm.simulation.rng import *  # noqa: F401,F403
from dlqsm.simulation.rng import __all__  # noqa: F401

warnings.warn("dlqsm.simulation.random is deprecated; import from dlqsm.simulation.rng.",
              DeprecationWarning, stacklevel=2)
