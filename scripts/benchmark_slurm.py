"""Overhead of training through SLURM: the same tiny run direct and via hydra/launcher=slurm_cpu.

Brings up the one-node cluster of scripts/local_slurm.py in a temporary folder, then times,
``--repeats`` times each, the wall time of

* ``dlqsm train OVERRIDES`` (a plain run), and
* ``dlqsm train -m hydra/launcher=slurm_cpu OVERRIDES`` (submission, scheduling, job start-up,
  the same training, submitit's result hand-back),

where OVERRIDES is a 32^3 U-Net trained for one epoch of 2 steps on CPU. Needs slurm-wlm and
munge (see scripts/local_slurm.py).

Example:
    python scripts/benchmark_slurm.py --repeats 3 --out docs/benchmarks/slurm.md
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from local_slurm import CPU_LAUNCHER, TINY_TRAINING, LocalSlurm

from dlqsm.benchmarking import hardware, report

TINY = [*TINY_TRAINING, "trainer.max_epochs=1"]


def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    """Wall seconds of ``cmd``; raises with its stderr when it fails."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, help="also write the markdown report here")
    a = p.parse_args(argv)
    dlqsm = [sys.executable, "-m", "dlqsm.cli.main", "train"]
    with tempfile.TemporaryDirectory(prefix="dlqsm-bench-slurm-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        with LocalSlurm(tmp / "cluster") as cluster:
            up = time.perf_counter() - t0
            env = {**cluster.env, "WANDB_MODE": "disabled"}
            direct, slurm = [], []
            for i in range(a.repeats):
                direct.append(timed([*dlqsm, *TINY, f"hydra.run.dir={tmp}/direct{i}"], env, tmp))
                slurm.append(
                    timed(
                        [*dlqsm, "-m", *CPU_LAUNCHER, *TINY, f"hydra.sweep.dir={tmp}/slurm{i}"],
                        env,
                        tmp,
                    )
                )
    d, s = statistics.median(direct), statistics.median(slurm)
    report(
        f"""Tiny training (32^3 U-Net, 2 steps, 1 validation batch, CPU, 1 thread), wall time
of the whole command, median of {a.repeats}; {hardware()}.

| path | median s | runs (s) |
|---|---|---|
| `dlqsm train` (direct) | {d:.1f} | {", ".join(f"{v:.1f}" for v in direct)} |
| `dlqsm train -m hydra/launcher=slurm_cpu` | {s:.1f} | {", ".join(f"{v:.1f}" for v in slurm)} |
| overhead of the scheduler path | {s - d:.1f} | |

Local cluster start-up (munged, slurmctld, slurmd, node idle): {up:.1f} s.
""",
        a.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
