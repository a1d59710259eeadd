"""BIDS multi-echo GRE discovery: ``*_echo-N_part-{mag,phase}_MEGRE.nii[.gz]`` + JSON sidecars.

Files are grouped into *runs* by their entities other than ``echo`` and ``part`` (subject,
session, acquisition, run, ...). Sidecars follow the BIDS inheritance principle: every
``*_MEGRE.json`` from the dataset root down to the image's folder whose entities are a subset of
the image's applies, the more specific overriding the less. ``EchoTime`` is read in seconds and
``MagneticFieldStrength`` in tesla. A file without ``part`` is a magnitude image (BIDS rule).
Folders named ``derivatives``, ``sourcedata`` or starting with a dot are skipped.

Dataset mode (:mod:`dlqsm.study`) lists every run with :func:`discover_megre_runs`, which keeps
going past a malformed run (reported, not raised) and filters by participant and session labels
as BIDS apps do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dlqsm.errors import InputError

SUFFIX = "MEGRE"
_NAME = re.compile(rf"^(?:(?P<stem>.+)_)?{SUFFIX}\.(?P<ext>nii|nii\.gz|json)$")
_SKIP = {"derivatives", "sourcedata", "code"}


def parse_entities(name: str) -> dict[str, str]:
    """Entities of a BIDS file name: ``sub-01_echo-2_part-phase_MEGRE.nii.gz`` ->
    ``{"sub": "01", "echo": "2", "part": "phase"}`` (empty for a non-MEGRE name)."""
    m = _NAME.match(name)
    return run_entities(m.group("stem") or "") if m else {}


def find_megre_files(root) -> list[Path]:
    """All ``*_MEGRE.nii[.gz]`` images under ``root`` (sorted; skips derivatives/hidden)."""
    root = Path(root)
    out = []
    for p in root.rglob(f"*_{SUFFIX}.nii*"):
        rel = p.relative_to(root).parts[:-1]
        if any(part.startswith(".") or part in _SKIP for part in rel):
            continue
        if _NAME.match(p.name) and not p.name.endswith(".json"):
            out.append(p)
    return sorted(out)


@dataclass
class MegreRun:
    """One multi-echo GRE acquisition: per-echo phase and magnitude files with their metadata.

    Attributes:
        key: entities other than echo/part, e.g. ``"sub-01_ses-1_run-2"``.
        echoes: echo indices in increasing order.
        phase / magnitude: one file per echo (magnitude empty when absent).
        echo_times: EchoTime per echo as written in the sidecars (s), None where missing.
        field_strength: MagneticFieldStrength (T) or None when missing.
        sidecars: the most specific sidecar path per echo (None where none exists).
        b0_dir: ``B0_dir`` (a unit vector in voxel coordinates, as qsm-forward writes it) and
            the sidecar it came from, or None; the scan loader weighs it against the affine.
    """

    key: str
    echoes: list[int] = field(default_factory=list)
    phase: list[Path] = field(default_factory=list)
    magnitude: list[Path] = field(default_factory=list)
    echo_times: list[float | None] = field(default_factory=list)
    field_strength: float | None = None
    sidecars: list[Path | None] = field(default_factory=list)
    b0_dir: tuple[list, Path] | None = None

    @property
    def entities(self) -> dict[str, str]:
        """The run's entities in file-name order, e.g. ``{"sub": "01", "ses": "1"}``."""
        return run_entities(self.key)


def run_entities(key: str) -> dict[str, str]:
    """``"sub-01_ses-1_run-2"`` -> ``{"sub": "01", "ses": "1", "run": "2"}`` (tokens without
    a dash are ignored)."""
    out = {}
    for token in key.split("_"):
        name, sep, value = token.partition("-")
        if sep:
            out[name] = value
    return out


def _run_key(ent: dict[str, str]) -> str:
    key = "_".join(f"{k}-{v}" for k, v in ent.items() if k not in ("echo", "part"))
    return key or "(no entities)"


def find_megre_runs(root, *, subject: str | None = None, select: str | None = None
                    ) -> list[MegreRun]:
    """Group the MEGRE images under ``root`` into runs and read their sidecars.

    Args:
        subject: keep only this subject (``"01"`` or ``"sub-01"``).
        select: keep only runs whose file names contain this substring (e.g. ``"run-2"``).

    Raises:
        InputError: duplicate echoes, echoes with phase but no magnitude (or the reverse),
            unreadable sidecars, sidecars that disagree.
    """
    runs, failures = discover_megre_runs(root, subjects=None if subject is None else [subject],
                                         select=select)
    if failures:
        raise failures[0][1]
    return runs


def _label_set(labels, prefix: str) -> set[str] | None:
    if labels is None:
        return None
    return {str(v).removeprefix(f"{prefix}-") for v in labels}


def discover_megre_runs(root, *, subjects=None, sessions=None, select: str | None = None
                        ) -> tuple[list[MegreRun], list[tuple[str, InputError]]]:
    """Every MEGRE run under ``root``, keeping going past malformed runs.

    Args:
        subjects: participant labels to keep (``"01"`` or ``"sub-01"``); None keeps all.
        sessions: session labels to keep (``"1"`` or ``"ses-1"``); None keeps all (a run
            without a session entity is dropped when sessions are given).
        select: keep only files whose names contain this substring.

    Returns:
        (runs sorted by key, [(run key, InputError)] for runs that cannot be assembled).
    """
    root = Path(root)
    want_sub, want_ses = _label_set(subjects, "sub"), _label_set(sessions, "ses")
    groups: dict[str, dict] = {}
    failures: dict[str, InputError] = {}
    for p in find_megre_files(root):
        ent = parse_entities(p.name)
        if want_sub is not None and ent.get("sub") not in want_sub:
            continue
        if want_ses is not None and ent.get("ses") not in want_ses:
            continue
        if select is not None and select not in p.name:
            continue
        part = ent.get("part", "mag")
        if part not in ("mag", "phase"):
            continue  # real/imag parts are not used
        key = _run_key(ent)
        g = groups.setdefault(key, {"mag": {}, "phase": {}})
        try:
            echo = _echo_index(ent, p)
            if echo in g[part]:
                raise InputError(f"echo {echo} ({part}) appears twice: also {g[part][echo]}.",
                                 path=p, fix="keep one file per echo and part.")
        except InputError as exc:
            failures.setdefault(key, exc)
            continue
        g[part][echo] = p
    runs = []
    for key, g in sorted(groups.items()):
        if key in failures:
            continue
        try:
            runs.append(_make_run(root, key, g))
        except InputError as exc:
            failures[key] = exc
    return runs, sorted(failures.items())


def _echo_index(ent, path) -> int:
    try:
        return int(ent.get("echo", "1"))
    except ValueError:
        raise InputError(f"echo entity {ent.get('echo')!r} is not a number.", path=path,
                         fix="name echoes echo-1, echo-2, ...") from None


def _make_run(root: Path, key: str, g: dict) -> MegreRun:
    phase, mag = g["phase"], g["mag"]
    if not phase:
        any_file = next(iter(mag.values()))
        raise InputError(f"run {key} has magnitude images but no part-phase images.",
                         path=any_file.parent, fix="add the *_part-phase_MEGRE files.")
    if mag and set(mag) != set(phase):
        for e in sorted(set(phase) | set(mag)):
            if e not in mag:
                raise InputError(f"echo {e} has a phase image but no magnitude image.",
                                 path=phase[e], fix="add its *_part-mag_MEGRE file or remove "
                                 "the echo.")
            if e not in phase:
                raise InputError(f"echo {e} has a magnitude image but no phase image.",
                                 path=mag[e], fix="add its *_part-phase_MEGRE file.")
    run = MegreRun(key=key, echoes=sorted(phase))
    b0_values = []
    for e in run.echoes:
        run.phase.append(phase[e])
        if mag:
            run.magnitude.append(mag[e])
        meta, sidecar = read_sidecar(root, phase[e])
        if mag:
            mmeta, msidecar = read_sidecar(root, mag[e])
            _check_agree(meta, mmeta, "EchoTime", sidecar, msidecar)
            meta = {**mmeta, **meta}
            sidecar = sidecar or msidecar
        run.sidecars.append(sidecar)
        run.echo_times.append(meta.get("EchoTime"))
        if meta.get("MagneticFieldStrength") is not None:
            b0_values.append((meta["MagneticFieldStrength"], sidecar))
        if meta.get("B0_dir") is not None and run.b0_dir is None:
            run.b0_dir = (_b0_dir(meta["B0_dir"], sidecar), sidecar)
    if b0_values:
        first, where = b0_values[0]
        for value, path in b0_values[1:]:
            if value != first:
                raise InputError(f"MagneticFieldStrength {value} differs from {first} in "
                                 f"{where}.", path=path, fix="give sidecars of one acquisition.")
        run.field_strength = first
    return run


def _b0_dir(value, path) -> list[float]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(x, (int, float)) for x in value)):
        raise InputError(f"B0_dir must be a list of 3 numbers, got {value!r}.", path=path,
                         fix="write e.g. \"B0_dir\": [0, 0, 1] or remove it.")
    return [float(x) for x in value]


def _check_agree(a: dict, b: dict, key: str, pa, pb) -> None:
    if a.get(key) is not None and b.get(key) is not None and a[key] != b[key]:
        raise InputError(f"{key} {b[key]} differs from {a[key]} in {pa}.", path=pb,
                         fix="magnitude and phase of one echo must share their sidecar values.")


def read_sidecar(root: Path, image: Path) -> tuple[dict, Path | None]:
    """Merged sidecar metadata of ``image`` by BIDS inheritance, and its most specific file."""
    ent = parse_entities(image.name)
    found = []
    folder = image.parent
    chain = [folder, *folder.parents]
    for depth, d in enumerate(reversed([c for c in chain if _within(c, root)])):
        for j in d.glob(f"*{SUFFIX}.json"):
            jent = parse_entities(j.name)
            if all(ent.get(k) == v for k, v in jent.items()):
                found.append((depth, len(jent), j))
    meta: dict = {}
    for _, _, j in sorted(found):
        meta.update(_load_json(j))
    return meta, (sorted(found)[-1][2] if found else None)


def _within(d: Path, root: Path) -> bool:
    try:
        d.relative_to(root)
        return True
    except ValueError:
        return False


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read JSON sidecar ({exc}).", path=path,
                         fix="repair the JSON file.") from exc
    if not isinstance(data, dict):
        raise InputError("a JSON sidecar must hold an object.", path=path)
    return data


def select_megre_run(root, *, subject: str | None = None, select: str | None = None
                     ) -> MegreRun:
    """The one MEGRE run under ``root``; InputError listing them when there are several."""
    runs = find_megre_runs(root, subject=subject, select=select)
    if not runs:
        filt = "".join([f" for subject {subject!r}" if subject else "",
                        f" matching {select!r}" if select else ""])
        raise InputError(f"no *_MEGRE images found{filt}.", path=root,
                         fix="check --subject/--select, or the folder.")
    exact = [r for r in runs if r.key == select]
    if len(runs) > 1 and exact:
        return exact[0]  # a whole run key (as dataset mode passes) names one run exactly
    if len(runs) > 1:
        names = ", ".join(r.key for r in runs[:10]) + (" ..." if len(runs) > 10 else "")
        raise InputError(f"found {len(runs)} MEGRE runs: {names}. Reconstruct one at a time.",
                         path=root, fix="pick one with --subject SUB and/or --select TEXT (a "
                         "piece of the file names such as run-2 or ses-02), or point INPUT at "
                         "one subject's folder (without --subject/--select, the command line "
                         "processes every run into BIDS derivatives).")
    return runs[0]


def check_run_echo_times(run: MegreRun) -> list[float]:
    """Echo times of a run in echo order; InputError naming the sidecar of a missing,
    repeated or out-of-order value."""
    out = []
    for i, (e, t, sc) in enumerate(zip(run.echoes, run.echo_times, run.sidecars, strict=True)):
        where = sc if sc is not None else run.phase[i].with_name(
            run.phase[i].name.split(".nii")[0] + ".json")
        if t is None:
            raise InputError(f"EchoTime of echo {e} is missing.", path=where,
                             fix="add \"EchoTime\" (s) to the sidecar or pass --te.")
        try:
            t = float(t)
        except (TypeError, ValueError):
            raise InputError(f"EchoTime {t!r} is not a number.", path=where) from None
        if out and t == out[-1]:
            raise InputError(f"echo {e} has the same EchoTime ({t}) as echo {run.echoes[i - 1]}.",
                             path=where, fix="each echo needs its own EchoTime.")
        if out and t < out[-1]:
            raise InputError(f"echo {e} has EchoTime {t}, before echo {run.echoes[i - 1]}'s "
                             f"{out[-1]}: echo numbering and echo times disagree.", path=where,
                             fix="renumber the echo-N entities in echo-time order.")
        out.append(t)
    return out


def read_into(root, parts, *, subject=None, select=None) -> None:
    """Fill a :class:`dlqsm.io.scan.loader._Parts` from the one MEGRE run under ``root``."""
    run = select_megre_run(root, subject=subject, select=select)
    parts.phase = list(run.phase)
    parts.magnitude = list(run.magnitude) or None
    try:
        parts.te = check_run_echo_times(run)
        parts.where["te"] = run.sidecars[0] or root
    except InputError as exc:
        parts.missing["te"] = exc
    if run.field_strength is None:
        where = next((s for s in run.sidecars if s is not None), root)
        parts.missing["b0"] = InputError("MagneticFieldStrength is missing from the sidecars.",
                                         path=where, fix="add \"MagneticFieldStrength\" (T) or "
                                         "pass --field-strength.")
    else:
        parts.b0 = run.field_strength
        parts.where["b0"] = next((s for s in run.sidecars if s is not None), root)
    if run.b0_dir is not None:
        parts.b0_dir, parts.where["b0_dir"] = run.b0_dir
    parts.notices.append(f"BIDS run {run.key}: {len(run.echoes)} echoes"
                         f"{'' if run.magnitude else ' (no magnitude)'}.")
