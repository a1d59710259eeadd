"""A single-node SLURM cluster on this machine, in one folder: for trying dlqsm's cluster configs.

Starts ``munged``, ``slurmctld`` and ``slurmd`` with every file they write (munge key and
socket, slurm.conf, state, spool, logs, PID files) under ``FOLDER``, on free TCP ports, with one
node that has this machine's CPUs and memory (from ``slurmd -C``) in one partition ``debug``.
Nothing under /etc is read or changed, so it runs beside a system SLURM without touching it.

    python scripts/local_slurm.py up /tmp/dlqsm-slurm     # prints: export SLURM_CONF=...
    export SLURM_CONF=/tmp/dlqsm-slurm/slurm.conf         # then sbatch, srun, squeue work
    srun -n2 hostname
    python scripts/local_slurm.py down /tmp/dlqsm-slurm   # cancels the jobs, stops the daemons

Needs the SLURM and MUNGE programs (Debian/Ubuntu: ``apt-get install slurm-wlm munge``).
Tested as root (as CI runs); as another user the daemons run as that user and can run only that
user's jobs. The test-suite uses :class:`LocalSlurm` directly (tests/slurm/conftest.py).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
PARTITION = "debug"
# A seconds-long CPU training (32^3 DeepQSM-style volumes, a small U-Net, CSV logs, checkpoints
# and metadata only, one thread) and launcher settings that let two such jobs share a 2-CPU
# node: what tests/slurm and scripts/benchmark_slurm.py submit with `dlqsm train -m`.
TINY_TRAINING = [
    "simulation=deepqsm",
    "simulation.shape=[32,32,32]",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.train_dataset.length=4",
    "data.val_dataset.length=2",
    "model.backbone.channels=[4,8]",
    "model.backbone.strides=[2]",
    "model.backbone.num_res_units=0",
    "model.pad_multiple=2",
    "logger=csv",
    "callbacks=minimal",
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
    "cpu_threads=1",
]
CPU_LAUNCHER = [
    "hydra/launcher=slurm_cpu",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=15",
]


class SlurmError(RuntimeError):
    """The local cluster could not be started (the message says why and what to do)."""


def find_program(name: str) -> str | None:
    """Full path of a SLURM/MUNGE program on PATH or in the usual sbin folders, else None."""
    return shutil.which(name, path=SEARCH)


def unavailable_reason() -> str | None:
    """Why a local cluster cannot be started here (missing programs), or None when it can."""
    missing = [p for p in DAEMONS + CLIENTS if find_program(p) is None]
    if missing:
        return (
            f"SLURM/MUNGE programs not found: {', '.join(missing)} "
            "(Debian/Ubuntu: apt-get install slurm-wlm munge)"
        )
    return None


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_line(slurmd: str) -> str:
    """``NodeName=... CPUs=... RealMemory=...`` of this machine, as ``slurmd -C`` reports it."""
    out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, check=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("NodeName=")), None)
    if line is None:
        raise SlurmError(f"'slurmd -C' printed no NodeName line: {out.strip()!r}")
    return line.strip()


class LocalSlurm:
    """A one-node SLURM cluster whose daemons and files live in ``root``.

    ``start()`` launches munged, slurmctld and slurmd (in that order, each in its own session),
    waits until the node is ``idle`` and records their PIDs in ``root/cluster.json``; ``stop()``
    cancels every job, then stops exactly those PIDs. ``env`` is the environment for clients
    (``SLURM_CONF`` set, SLURM variables of an enclosing job removed).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"
        self.pids: dict[str, int] = {}
        self.node = ""
        self._procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` with ``SLURM_CONF`` pointing at this cluster and no ``SLURM_*`` job
        variables inherited from an enclosing allocation."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def _folders(self) -> None:
        for sub in ("munge", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.root / sub, 0o700)  # munged refuses group/other-writable folders
        os.chmod(self.root, 0o755)
        if len(str(self.socket)) > 100:
            raise SlurmError(
                f"folder path too long for a unix socket: {self.root} "
                "(choose a shorter folder, e.g. /tmp/dlqsm-slurm)"
            )

    def _munge_key(self) -> Path:
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(1024))
        return key

    def write_conf(self) -> None:
        """Write ``slurm.conf`` (one node = this machine, one partition, no cgroups)."""
        user = getpass.getuser()
        line = node_line(find_program("slurmd"))
        self.node = line.split()[0].split("=", 1)[1]
        r = self.root
        # cred_expire: a requeued job waits cred_expire + 1 s before it may start again (120 s
        # by default); 30 s keeps the requeue tests short and still leaves steps time to launch.
        text = f"""# Written by dlqsm scripts/local_slurm.py: a one-node cluster in {r}
ClusterName=dlqsm
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire=30
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
{line.split(" UpTime=")[0]} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(text)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.console", "ab")  # noqa: SIM115 (child keeps it)
        proc = subprocess.Popen(
            [find_program(name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=self.env,
        )
        log.close()
        self._procs[name] = proc
        self.pids[name] = proc.pid
        self._save()

    def _save(self) -> None:
        (self.root / "cluster.json").write_text(
            json.dumps({"pids": self.pids, "conf": str(self.conf), "node": self.node}, indent=1)
        )

    def _check_alive(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is not None:
            tail = self._tail(name)
            raise SlurmError(f"{name} exited with code {proc.returncode}: {tail}")

    def _tail(self, name: str, n: int = 600) -> str:
        texts = []
        for f in (self.root / "log" / f"{name}.console", self.root / "log" / f"{name}.log"):
            if f.exists():
                texts.append(f.read_text(errors="replace")[-n:].strip())
        return " | ".join(t for t in texts if t) or "(no log)"

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Run a SLURM client (``squeue``, ``scontrol`` ...) against this cluster; its stdout."""
        res = subprocess.run(
            [find_program(args[0]), *args[1:]],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and res.returncode:
            raise SlurmError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def start(self, timeout: float = 60) -> LocalSlurm:
        """Start the three daemons and wait until the node is idle.

        Raises:
            SlurmError: programs missing, a daemon exiting, or no idle node within ``timeout`` s
                (the message quotes the daemon's log); the daemons started so far are stopped.
        """
        reason = unavailable_reason()
        if reason:
            raise SlurmError(reason)
        self._folders()
        try:
            key = self._munge_key()
            m = self.root / "munge"
            self._spawn(
                "munged",
                [
                    "--foreground",
                    "--force",
                    f"--socket={self.socket}",
                    f"--key-file={key}",
                    f"--pid-file={m}/munged.pid",
                    f"--log-file={self.root}/log/munged.log",
                    f"--seed-file={m}/munged.seed",
                ],
            )
            self._wait(lambda: self.socket.exists(), "munged", timeout)
            self.write_conf()
            self._spawn("slurmctld", ["-D", "-i", "-f", str(self.conf)])
            self._wait(
                lambda: self.run("scontrol", "ping", check=False).count("UP") > 0,
                "slurmctld",
                timeout,
            )
            self._spawn("slurmd", ["-D", "-f", str(self.conf), "-N", self.node])
            self._wait(self.node_idle, "slurmd", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def node_idle(self) -> bool:
        """True when the node reports state ``idle``."""
        return self.run("sinfo", "-h", "-N", "-o", "%T", check=False).strip() == "idle"

    def _wait(self, ready, name: str, timeout: float) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self._check_alive(name)
            if ready():
                return
            time.sleep(0.2)
        raise SlurmError(f"{name} not ready after {timeout:.0f} s: {self._tail(name)}")

    def jobs(self) -> list[str]:
        """Ids of the jobs slurmctld knows that are not finished."""
        out = self.run("squeue", "-h", "-o", "%i", check=False)
        return [j for j in out.split() if j]

    def stop(self, timeout: float = 20) -> None:
        """Cancel every job, then stop the daemons this object started (by PID), newest first."""
        if self.pids.get("slurmctld"):
            try:
                if self.jobs():
                    self.run("scancel", "--user", getpass.getuser(), check=False)
                    t0 = time.monotonic()
                    while self.jobs() and time.monotonic() - t0 < timeout:
                        time.sleep(0.3)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for name in reversed(DAEMONS):
            pid = self.pids.pop(name, None)
            if pid is not None:
                stop_pid(pid, self._procs.pop(name, None), timeout)
        self._save()

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_pid(pid: int, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` s, then SIGKILL it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None:
            if proc.poll() is not None:
                return
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
        if proc is not None:
            proc.wait(5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("folder", help="folder for the cluster's files (created; short path)")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for an idle node")
    a = p.parse_args(argv)
    cluster = LocalSlurm(a.folder)
    if a.action == "up":
        try:
            cluster.start(a.timeout)
        except SlurmError as e:
            print(f"local_slurm: {e}", file=sys.stderr)
            return 1
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    state = cluster.root / "cluster.json"
    if not state.exists():
        print(f"local_slurm: no cluster.json in {cluster.root} (nothing to stop)", file=sys.stderr)
        return 1
    info = json.loads(state.read_text())
    cluster.pids = {k: int(v) for k, v in info["pids"].items()}
    cluster.node = info.get("node", "")
    cluster.stop()
    print(f"stopped the cluster in {cluster.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
