"""A real one-node SLURM cluster for the ``slurm`` tests (started once per session).

The cluster is scripts/local_slurm.py (munged, slurmctld, slurmd in a temporary folder). Where it
cannot start, the tests fail with the reason under CI (``CI`` set to true) and skip elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_local_slurm():
    """scripts/local_slurm.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "dlqsm_local_slurm", ROOT / "scripts" / "local_slurm.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def unavailable(reason: str) -> None:
    """Fail under CI, skip elsewhere: SLURM tests never pass silently in CI."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(
            f"SLURM tests cannot run: {reason}. CI installs slurm-wlm and munge "
            "(.ci/run); run it as root.",
            pytrace=False,
        )
    pytest.skip(f"no local SLURM: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A started :class:`LocalSlurm` (idle node, ``cluster.env`` for clients); stopped by the
    PIDs it started at the end of the session, also when tests fail."""
    local_slurm = load_local_slurm()
    reason = local_slurm.unavailable_reason()
    if reason is None and importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        reason = "hydra-submitit-launcher is not installed (pip install -e '.[dev]')"
    if reason:
        unavailable(reason)
    cluster = local_slurm.LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except local_slurm.SlurmError as e:
        unavailable(str(e))
    # SIGTERM (e.g. `timeout`) as Ctrl-C, so that pytest still stops the daemons below
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield cluster
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
