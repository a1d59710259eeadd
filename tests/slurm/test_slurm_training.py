"""Training through a real SLURM scheduler (``pytest -m slurm``): sweeps, DDP, requeue, Optuna.

Every job is a tiny CPU training (32^3 simulated volumes, a few steps, gloo for DDP) submitted by
``dlqsm train -m hydra/launcher=slurm_cpu`` exactly as docs/training.md tells a user to, against
the one-node cluster of ``slurm_cluster`` (tests/slurm/conftest.py).
"""

from __future__ import annotations

import csv
import json
import math
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from dlqsm.lit.train import train
from tests.lit.helpers import compose_train
from tests.slurm.conftest import load_local_slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

local_slurm = load_local_slurm()
TINY = [*local_slurm.TINY_TRAINING, "trainer.log_every_n_steps=1", "optimized_metric=val/nrmse"]
LAUNCHER = local_slurm.CPU_LAUNCHER


def train_cmd(*overrides: str) -> list[str]:
    """``dlqsm train -m OVERRIDES`` with this interpreter (submitit jobs reuse it)."""
    return [sys.executable, "-m", "dlqsm.cli.main", "train", "-m", *overrides]


def job_logs(folder: Path, n: int = 1500) -> str:
    """The tails of the SLURM/submitit logs under ``folder`` (for failure messages)."""
    out = []
    for f in sorted(folder.rglob(".submitit/*/*_log.*")):
        text = f.read_text(errors="replace").strip()
        if text:
            out.append(f"--- {f.relative_to(folder)}\n{text[-n:]}")
    return "\n".join(out) or "(no job logs)"


def run_train(cluster, cwd: Path, *overrides: str, timeout: float = 240) -> str:
    """Run a multirun to completion in ``cwd``; its output, or a failure with the job logs."""
    env = {**cluster.env, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    try:
        res = subprocess.run(
            train_cmd(*overrides), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"dlqsm train -m timed out after {timeout} s; squeue: "
            f"{cluster.run('squeue', check=False)}\n{job_logs(cwd)}\n{e.stderr}"
        )
    if res.returncode:
        pytest.fail(
            f"dlqsm train -m failed ({res.returncode}):\n{res.stderr[-3000:]}\n{job_logs(cwd)}"
        )
    return res.stdout + res.stderr


def one_dir(pattern: str, cwd: Path) -> Path:
    found = sorted(cwd.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} under {cwd}, found {found}"
    return found[0]


def read_metrics(run: Path) -> list[dict]:
    """Rows of every ``csv/version_*/metrics.csv`` of a run folder (versions in order)."""
    rows = []
    for f in sorted(
        (run / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])
    ):
        with open(f, newline="") as fh:
            rows += [dict(r, version=f.parent.name) for r in csv.DictReader(fh)]
    return rows


def val_epochs(rows: list[dict]) -> list[int]:
    return [int(r["epoch"]) for r in rows if r.get("val/nrmse")]


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def task_results(sweep: Path) -> dict[str, list]:
    """submitit's pickled results: {array job folder: [return value of task 0, task 1, ...]}."""
    out = {}
    for folder in sorted((sweep / ".submitit").iterdir()):
        pkls = sorted(folder.glob("*_result.pkl"), key=lambda p: int(p.stem.split("_")[-2]))
        if pkls:
            out[folder.name] = []
            for p in pkls:
                status, ret = pickle.loads(p.read_bytes())
                assert status == "success", ret
                out[folder.name].append(ret.return_value)
    return out


def test_sweep_of_two_jobs(slurm_cluster, tmp_path):
    """Two learning rates, two SLURM jobs (one array): both finish with checkpoints, metadata
    and metrics in logs/train/multiruns/<date>/<n>/, scheduler logs in .submitit/."""
    run_train(
        slurm_cluster, tmp_path, *LAUNCHER, *TINY, "trainer.max_epochs=1", "optimizer.lr=1e-3,3e-4"
    )
    sweep = one_dir("logs/train/multiruns/*", tmp_path)
    lrs = set()
    for n in (0, 1):
        run = sweep / str(n)
        ckpt = load_ckpt(run / "checkpoints" / "last.ckpt")
        assert ckpt["global_step"] == 2  # 4 samples / batch 2, 1 epoch
        lrs.add(
            ckpt["optimizer_states"][0]["param_groups"][0]["initial_lr"]
            if "initial_lr" in ckpt["optimizer_states"][0]["param_groups"][0]
            else ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
        )
        assert (run / "checkpoints" / "best.ckpt").is_file()
        meta = json.loads((run / "checkpoints" / "metadata.json").read_text())
        assert meta
        assert val_epochs(read_metrics(run)) == [0]
        assert (run / ".hydra" / "overrides.yaml").is_file()
    assert lrs == {1e-3, 3e-4}
    results = task_results(sweep)
    assert len(results) == 2 and all(math.isfinite(v[0]) for v in results.values())
    assert list(sweep.glob(".submitit/*/*_0_log.out"))


def test_ddp_two_tasks_match_one_process(slurm_cluster, tmp_path):
    """A 2-task DDP job (gloo, batch 1 per rank) = one process with batch 2.

    Instance norm and an unmasked loss make the mean of the per-rank losses the loss of the
    global batch; with 2 training samples each epoch is one step on the same global batch
    whatever the order. Both ranks report the same val/nrmse, equal to that of a single process
    (here, in the test process) to 1e-6 relative: only float summation orders differ.
    """
    same = [
        *TINY,
        "data.train_dataset.length=2",
        "model.backbone.norm=instance",
        "loss.masked=false",
        "trainer.max_epochs=3",
        "seed=3",
        "optimizer.lr=1e-2",
    ]
    run_train(
        slurm_cluster,
        tmp_path,
        *LAUNCHER,
        *same,
        "trainer=ddp_cpu",
        "data.batch_size=1",
        "hydra.sweep.dir=sweep",
    )
    sweep = tmp_path / "sweep"
    (ranks,) = task_results(sweep).values()
    assert len(ranks) == 2, f"expected 2 tasks, got {ranks}"
    rank1_log = next(sweep.glob(".submitit/*/*_1_log.err")).read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in rank1_log
    assert ranks[0] == ranks[1]
    assert load_ckpt(sweep / "0/checkpoints/last.ckpt")["global_step"] == 3
    try:
        single = train(compose_train([*same, "trainer=cpu", "data.batch_size=2"], tmp_path / "one"))
    finally:
        GlobalHydra.instance().clear()
    assert single["global_step"] == 3
    assert single["val/nrmse"] == pytest.approx(ranks[0], rel=1e-6)


def wait_for(predicate, what: str, timeout: float, proc=None, where: Path | None = None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                f"driver ended ({proc.returncode}) before {what}: "
                f"{proc.stderr.read()[-2000:]}\n{job_logs(where)}"
            )
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n{job_logs(where) if where else ''}")


@pytest.mark.parametrize("how", ["time-limit signal", "scontrol requeue"])
def test_requeued_job_resumes(slurm_cluster, tmp_path, how):
    """Requeued mid-training, the job resumes at the step it checkpointed: the final global step
    and the validated epochs are those of an uninterrupted run, every file loads.

    "time-limit signal": SIGUSR1 as SLURM sends it signal_delay_s before the limit
    (``scancel --signal=USR1``); "scontrol requeue": requeued from outside (preemption), SIGTERM.
    """
    epochs, steps = 6, 2
    env = {**slurm_cluster.env, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        train_cmd(
            *LAUNCHER,
            *TINY,
            f"trainer.max_epochs={epochs}",
            "optimizer.lr=1e-3",
            "hydra.sweep.dir=sweep",
        ),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = tmp_path / "sweep" / "0"
    try:
        # mid-training: after the first epoch's checkpoint
        wait_for(
            lambda: (run / "checkpoints" / "last.ckpt").is_file(),
            "the first checkpoint",
            180,
            proc,
            tmp_path,
        )
        job = slurm_cluster.jobs()[0]
        if how == "scontrol requeue":
            slurm_cluster.run("scontrol", "requeue", job)
        else:
            slurm_cluster.run("scancel", "--signal=USR1", job)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"{err[-3000:]}\n{job_logs(tmp_path)}"
    logs = job_logs(tmp_path, n=100000)
    hpc = sorted(run.glob("hpc_ckpt_*.ckpt"))
    assert len(hpc) == 1, f"expected one hpc checkpoint, found {hpc}\n{logs}"
    saved_step = load_ckpt(hpc[0])["global_step"]
    assert 0 < saved_step < epochs * steps
    assert f"resuming from {hpc[0]}" in logs, logs
    final = load_ckpt(run / "checkpoints" / "last.ckpt")
    assert final["global_step"] == epochs * steps
    assert final["epoch"] == epochs - 1
    rows = read_metrics(run)
    assert sorted(val_epochs(rows)) == list(range(epochs)), rows  # none lost, none twice
    assert len({r["version"] for r in rows}) == 2  # the run before and after the requeue
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert len(train_steps) == len(set(train_steps)) == epochs * steps  # no step done twice
    for f in run.rglob("*.ckpt"):
        load_ckpt(f)  # nothing written half
    json.loads((run / "checkpoints" / "metadata.json").read_text())


def test_optuna_search_through_slurm(slurm_cluster, tmp_path):
    """hparams_search=optuna with the SLURM launcher: 2 trials run as SLURM jobs and the
    sweeper records the best of the values they returned."""
    out = run_train(
        slurm_cluster,
        tmp_path,
        *LAUNCHER,
        *TINY,
        "hparams_search=optuna",
        "trainer.max_epochs=1",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweep.dir=sweep",
        "data.train_dataset.length=8",
    )
    sweep = tmp_path / "sweep"
    values = [v[0] for v in task_results(sweep).values()]
    assert len(values) == 2 and all(math.isfinite(v) for v in values), out
    best = (sweep / "optimization_results.yaml").read_text()
    assert f"best_value: {min(values)}" in best, best
    for n in (0, 1):
        assert (sweep / str(n) / "checkpoints" / "last.ckpt").is_file()
