"""Side-by-side evaluation of learned and classical dipole inversion on data with ground truth.

* :mod:`dlqsm.evaluation.cases`: held-out simulated heads and folders of scans with reference
  maps (documented layouts);
* :mod:`dlqsm.evaluation.methods`: classical inversions and trained networks behind one call;
* :mod:`dlqsm.evaluation.report`: metrics, CSV and markdown tables;
* :mod:`dlqsm.evaluation.figures`: slice montages, error maps, ROI scatter (PNG);
* :mod:`dlqsm.evaluation.runner`: :func:`evaluate` and :func:`run_evaluation` (from a config).
"""

from dlqsm.evaluation.cases import (
    EVAL_SEED_BASE,
    LAYOUTS,
    EvalCase,
    folder_cases,
    load_case,
    simulated_heads,
)
from dlqsm.evaluation.methods import MethodRunner, MethodSpec, parse_methods
from dlqsm.evaluation.runner import (
    DEFAULT_CONFIG,
    EvaluationResult,
    build_cases,
    evaluate,
    run_evaluation,
)

__all__ = [
    "EVAL_SEED_BASE",
    "LAYOUTS",
    "EvalCase",
    "folder_cases",
    "load_case",
    "simulated_heads",
    "MethodRunner",
    "MethodSpec",
    "parse_methods",
    "DEFAULT_CONFIG",
    "EvaluationResult",
    "build_cases",
    "evaluate",
    "run_evaluation",
]
