"""Dataset mode: every MEGRE run of a BIDS dataset through one single-run command.

:func:`run_dataset` lists the runs (:func:`dlqsm.io.bids.discover_megre_runs`, filtered by
participant and session labels as BIDS apps do), skips runs whose derivatives exist (resume),
runs the others in ``jobs`` processes (torch threads split between them; one progress bar over
runs), and moves each run's outputs into a BIDS-derivatives tree
(:mod:`dlqsm.study.derivatives`). A failing run is recorded and the others go on. One table per
invocation, ``OUT/logs/dlqsm-<command>_<UTC time>_runs.tsv`` (run, status, seconds, error),
says what happened.

The single-run work is the command's own function (``dlqsm.cli.reconstruct.run`` or
``dlqsm.cli.infer.run``), passed in by the command line: dataset mode runs exactly what a
single-subject call runs, into a staging folder beside the run's derivatives, then renames the
files into place. Nothing here imports the command line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dlqsm.errors import DlqsmError, InputError
from dlqsm.io.atomic import write_text_atomic
from dlqsm.io.bids import MegreRun, discover_megre_runs, find_megre_files
from dlqsm.study import derivatives

DATASET_FLAGS = ("participant_label", "session", "jobs", "labels")
"""Flags that switch a BIDS input to dataset mode."""
RUN_CONTROL = {
    "input",
    "out",
    "force",
    "quiet",
    "device",
    "func",
    "overrides",
    "command",
    "subject",
    "select",
    "participant_label",
    "session",
    "jobs",
    "labels",
    "label_names",
    "reference",
    "participants",
}
"""Arguments that do not change a run's result (everything else must match to resume)."""
STATUSES = ("done", "skipped", "failed")


@dataclass
class RunOutcome:
    """What happened to one run: status ``done``/``skipped``/``failed``, wall seconds, error."""

    key: str
    status: str
    seconds: float = 0.0
    error: str = ""


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    """The dataset-mode flags of ``dlqsm reconstruct`` and ``dlqsm infer``."""
    g = p.add_argument_group(
        "dataset mode (INPUT a BIDS dataset: every run -> BIDS derivatives in OUT)",
        "Used when INPUT holds several MEGRE runs and neither --subject nor --select picks\n"
        "one, or when any of these flags is given. Runs already in OUT are skipped (resume);\n"
        "see docs/datasets.md.",
    )
    g.add_argument(
        "--participant-label",
        nargs="+",
        metavar="LABEL",
        help="only these participants (01 or sub-01)",
    )
    g.add_argument("--session", nargs="+", metavar="LABEL", help="only these sessions (1 or ses-1)")
    g.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        default=None,
        help="runs processed at once, in separate processes (default 1); torch "
        "threads are split between them",
    )
    g.add_argument(
        "--labels",
        metavar="PATTERN",
        help="segmentation per run for the study "
        "table: a path template such as 'seg/sub-{sub}/ses-{ses}/aseg.nii.gz' or a "
        "BIDS-derivatives folder with *_dseg.nii.gz (see dlqsm study --help)",
    )
    g.add_argument(
        "--label-names",
        metavar="TSV",
        help="label index -> name table "
        "(BIDS dseg.tsv or FreeSurfer LUT); default: FreeSurfer aseg / FSL FIRST",
    )


def is_dataset_mode(args) -> bool:
    """True when a per-scan command should process a whole BIDS dataset.

    Dataset mode needs a BIDS folder as INPUT and no explicit images; it is on when a dataset
    flag is given, or when INPUT holds several runs and neither --subject nor --select picks
    one (which was an error before dataset mode). A single-run call is unchanged.
    """
    if getattr(args, "dataset_run", False) or not getattr(args, "input", None):
        return False
    flags = [f for f in DATASET_FLAGS if getattr(args, f, None) is not None]
    folder = Path(args.input)
    if not folder.is_dir() or not find_megre_files(folder):
        if flags:
            raise InputError(
                "dataset mode needs a BIDS dataset with *_MEGRE images as INPUT.",
                path=folder,
                fix="give the dataset's root folder.",
            )
        return False
    explicit = [
        k
        for k in ("phase", "magnitude", "local_field", "total_field", "mask")
        if getattr(args, k, None)
    ]
    if flags:
        single = [k for k in ("subject", "select") if getattr(args, k, None)] + explicit
        if single:
            raise InputError(
                f"--{flags[0].replace('_', '-')} (dataset mode) cannot be combined"
                f" with --{single[0].replace('_', '-')} (one scan).",
                fix="use --participant-label/--session to choose runs of a "
                "dataset, or --subject/--select for one run.",
            )
        return True
    if explicit or getattr(args, "subject", None) or getattr(args, "select", None):
        return False
    runs, failures = discover_megre_runs(folder)
    return len(runs) + len(failures) > 1


def settings_of(args) -> dict:
    """The arguments that shape a run's result, JSON-normalised (resume compares them)."""
    keep = {k: v for k, v in sorted(vars(args).items()) if k not in RUN_CONTROL and not callable(v)}
    return json.loads(json.dumps(keep, default=str))


def describe(command: str, args) -> str:
    """One line on what the command computes, for dataset_description.json GeneratedBy."""
    fieldmap = f"unwrapping {args.unwrap}, echo fit {args.echo_fit}, background removal {args.bfr}"
    if command == "reconstruct":
        return f"classical QSM ({fieldmap}, dipole inversion {args.method})"
    model = getattr(args, "checkpoint", None) or "dlqsm's default model"
    return f"learned QSM ({fieldmap}, then the network: {model})"


def run_dataset(args, *, command: str, run_one: Callable) -> int:
    """Process every selected run of the BIDS dataset ``args.input`` into ``args.out``.

    Args:
        args: the command's parsed arguments (dataset flags included).
        command: ``"reconstruct"`` or ``"infer"`` (names the log, the sidecar's settings).
        run_one: the single-run function, ``run_one(args) -> int``; module-level (it is sent
            to worker processes by reference).

    Returns:
        0 when every run is done or skipped, 1 when some failed (the log says why).

    Raises:
        InputError: no runs match the filters, ``--jobs`` < 1, OUT is not a dlqsm
            derivative, or existing derivatives were made with other settings.
    """
    root, out = Path(args.input), Path(args.out)
    jobs = 1 if args.jobs is None else int(args.jobs)
    if jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {jobs}.")
    runs, bad = discover_megre_runs(root, subjects=args.participant_label, sessions=args.session)
    if not runs and not bad:
        raise InputError(
            "no *_MEGRE runs match" + _filters_text(args) + ".",
            path=root,
            fix="check --participant-label/--session and the dataset.",
        )
    derivatives.prepare_tree(
        out, root, command=command, description=describe(command, args), force=args.force
    )
    settings = {"command": command, **settings_of(args)}
    outcomes: dict[str, RunOutcome] = {
        key: RunOutcome(key, "failed", 0.0, _one_line(exc)) for key, exc in bad
    }
    todo = []
    for run in runs:
        if not args.force and _is_done(out, run.key, settings):
            outcomes[run.key] = RunOutcome(run.key, "skipped")
        else:
            todo.append(run)
    _say(
        args,
        command,
        f"{len(runs) + len(bad)} runs in {root}: {len(todo)} to process, "
        f"{sum(o.status == 'skipped' for o in outcomes.values())} already done"
        + (f", {len(bad)} unreadable" if bad else "")
        + (f" ({jobs} jobs)" if jobs > 1 else ""),
    )
    for outcome in _execute(args, todo, command, run_one, settings, jobs):
        outcomes[outcome.key] = outcome
    ordered = [outcomes[k] for k in sorted(outcomes)]
    log = write_summary(out, command, ordered)
    counts = {s: sum(o.status == s for o in ordered) for s in STATUSES}
    _say(
        args,
        command,
        ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; table: {log}",
        force=bool(counts["failed"]),
    )
    for o in ordered:
        if o.status == "failed":
            print(f"dlqsm {command}: {o.key} failed: {o.error}", file=sys.stderr)
    if getattr(args, "labels", None):
        from dlqsm.study.table import write_study

        write_study(
            out,
            labels=args.labels,
            label_names=args.label_names,
            participants=root / "participants.tsv",
            force=True,
            quiet=args.quiet,
        )
    return 1 if counts["failed"] else 0


def _filters_text(args) -> str:
    parts = []
    if args.participant_label:
        parts.append(f" participants {', '.join(args.participant_label)}")
    if args.session:
        parts.append(f" sessions {', '.join(args.session)}")
    return (" (" + ";".join(parts).strip() + ")") if parts else ""


def _is_done(out: Path, key: str, settings: dict) -> bool:
    chimap, sidecar = derivatives.chimap_paths(out, key)
    if not (chimap.exists() and sidecar.exists()):
        return False
    try:
        old = json.loads(sidecar.read_text()).get("DlqsmSettings")
    except (OSError, ValueError):
        return False  # a damaged sidecar: redo the run
    if old != settings:
        diff = sorted(
            k for k in set(old or {}) | set(settings) if (old or {}).get(k) != settings.get(k)
        )
        shown = ", ".join(
            f"{k}: {(old or {}).get(k)!r} there, {settings.get(k)!r} now" for k in diff[:3]
        )
        raise InputError(
            f"run {key} was made with other settings ({shown}).",
            path=sidecar,
            fix="write to another output folder, or pass --force to redo it.",
        )
    return True


def _execute(args, todo: list[MegreRun], command, run_one, settings, jobs):
    """Yield a :class:`RunOutcome` per run as runs finish (one progress bar over runs)."""
    from tqdm.auto import tqdm

    if not todo:
        return
    bar = tqdm(
        total=len(todo), unit="run", disable=args.quiet, file=sys.stderr, desc=f"dlqsm {command}"
    )
    base = _run_args(args)
    try:
        if jobs == 1:
            for run in todo:
                outcome = process_run(base, run, run_one, settings)
                _report(bar, outcome)
                yield outcome
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        import torch

        threads = max(1, torch.get_num_threads() // jobs)
        ctx = multiprocessing.get_context("spawn")  # safe with torch/CUDA state in the parent
        with ProcessPoolExecutor(
            max_workers=min(jobs, len(todo)),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(threads,),
        ) as pool:
            futures = {pool.submit(process_run, base, run, run_one, settings): run for run in todo}
            for fut in as_completed(futures):
                try:
                    outcome = fut.result()
                except Exception as exc:  # a worker died (e.g. out of memory)
                    outcome = RunOutcome(futures[fut].key, "failed", 0.0, _one_line(exc))
                _report(bar, outcome)
                yield outcome
    finally:
        bar.close()


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _report(bar, outcome: RunOutcome) -> None:
    bar.update(1)
    if not bar.disable:
        text = f"{outcome.key}: {outcome.status} ({outcome.seconds:.1f} s)"
        bar.write(text + (f": {outcome.error}" if outcome.error else ""), file=sys.stderr)


def _run_args(args) -> argparse.Namespace:
    """The single-run arguments shared by every run (quiet, no dataset flags)."""
    base = argparse.Namespace(**vars(args))
    for key in DATASET_FLAGS + ("label_names",):
        setattr(base, key, None)
    base.quiet, base.dataset_run, base.force = True, True, False
    return base


def process_run(base, run: MegreRun, run_one: Callable, settings: dict) -> RunOutcome:
    """Run one MEGRE run with the single-run command into a staging folder, then publish it.

    Never raises for a failing run: the outcome carries the one-line error (the traceback too
    when DLQSM_DEBUG is set). The staging folder is removed in every case.
    """
    t0 = time.perf_counter()
    out = Path(base.out)
    staging = None
    try:
        folder = derivatives.run_folder(out, run.key)
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".dlqsm-staging-", dir=folder))
        args = argparse.Namespace(**vars(base))
        args.subject, args.select, args.out = run.entities["sub"], run.key, str(staging)
        run_one(args)
        root = Path(base.input)
        derivatives.publish_run(
            staging,
            out,
            run.key,
            {"Sources": derivatives.source_names(root, run), "DlqsmSettings": settings},
        )
        return RunOutcome(run.key, "done", time.perf_counter() - t0)
    except (Exception, SystemExit) as exc:  # one run's failure must not stop the others
        if os.environ.get("DLQSM_DEBUG"):
            traceback.print_exc()
        return RunOutcome(run.key, "failed", time.perf_counter() - t0, _one_line(exc))
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, DlqsmError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()).replace("\t", " ")


def write_summary(out: Path, command: str, outcomes: list[RunOutcome]) -> Path:
    """Write ``OUT/logs/dlqsm-<command>_<UTC time>_runs.tsv`` (a new file per invocation)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = out / "logs" / f"dlqsm-{command}_{stamp}_runs.tsv"
    lines = ["run\tstatus\tseconds\terror"]
    lines += [f"{o.key}\t{o.status}\t{o.seconds:.2f}\t{o.error}" for o in outcomes]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def read_summary(path) -> list[dict]:
    """The rows of a runs table as dicts (for scripts and tests)."""
    rows = Path(path).read_text().splitlines()
    head = rows[0].split("\t")
    return [dict(zip(head, r.split("\t"), strict=True)) for r in rows[1:]]


def _say(args, command: str, text: str, *, force: bool = False) -> None:
    if force or not args.quiet:
        print(f"dlqsm {command}: {text}", file=sys.stderr, flush=True)
