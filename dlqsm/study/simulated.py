"""A simulated BIDS MEGRE cohort, for tests, benchmarks and trying dataset mode out.

:func:`write_megre_dataset` writes one dlqsm head phantom per subject
(:func:`dlqsm.simulation.head.simulate_head_case`, multi-echo magnitude and wrapped phase) as
``sub-XX/[ses-Y/]anat/sub-XX[_ses-Y]_echo-N_part-{mag,phase}_MEGRE.nii.gz`` with JSON sidecars
(EchoTime in s, MagneticFieldStrength in T), a ``participants.tsv`` (group, age) and the
phantom's label map as a segmentation derivative (``derivatives/phantom/..._dseg.nii.gz`` with
its ``dseg.tsv`` naming every label). Later sessions of a subject are the same head rescanned:
fresh noise on phase (0.02 rad) and magnitude (1 %).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dlqsm.io.nifti import save_nifti
from dlqsm.io.outputs import write_json_atomic


def write_megre_dataset(
    root,
    subjects: Sequence[str] = ("01", "02", "03"),
    sessions: Sequence[str] | None = ("1", "2"),
    *,
    shape=(48, 48, 48),
    voxel_size=(3.5, 3.5, 3.5),
    te=(0.004, 0.010, 0.016, 0.022),
    b0_tesla: float = 3.0,
    snr: float = 60.0,
    seed: int = 100,
    groups: dict[str, str] | None = None,
    label_storage: Callable | None = None,
) -> dict[str, np.ndarray]:
    """Write a simulated BIDS dataset; returns {run key: label map on the scan grid}.

    Args:
        root: dataset folder (created).
        subjects, sessions: labels (``sessions=None``: no session level).
        shape, voxel_size: matrix and voxel size (mm) of every scan; te (s), b0_tesla (T).
        snr: mean M0 in the head / noise std. seed: subject i uses ``seed + i``.
        groups: participant label -> group for participants.tsv (default alternating
            patient/control).
        label_storage: ``(labels, affine) -> (labels, affine)`` for the stored segmentation
            (e.g. another grid); default: the scan grid.
    """
    from dlqsm.simulation.anatomy import LABELS
    from dlqsm.simulation.head import simulate_head_case

    root = Path(root)
    groups = groups or {s: ("patient", "control")[i % 2] for i, s in enumerate(subjects)}
    write_json_atomic(
        root / "dataset_description.json",
        {"Name": "dlqsm simulated cohort", "BIDSVersion": "1.9.0"},
    )
    (root / "participants.tsv").write_text(
        "participant_id\tgroup\tage\n"
        + "".join(f"sub-{s}\t{groups[s]}\t{30 + 7 * i}\n" for i, s in enumerate(subjects))
    )
    seg_root = root / "derivatives" / "phantom"
    write_json_atomic(
        seg_root / "dataset_description.json",
        {
            "Name": "phantom labels",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "dlqsm", "Description": "simulated head phantom labels"}],
        },
    )
    names = "index\tname\n" + "".join(f"{v}\t{k}\n" for k, v in LABELS.items() if v)
    labels = {}
    for i, sub in enumerate(subjects):
        case = simulate_head_case(
            shape, voxel_size=voxel_size, seed=seed + i, snr=snr, te=te, b0_tesla=b0_tesla
        )
        lab = case.labels.cpu().numpy().astype(np.int16)
        rng = np.random.default_rng(seed + i)
        for j, ses in enumerate(sessions or [None]):
            phase, mag = case.phase.cpu().numpy(), case.magnitude.cpu().numpy()
            if j:
                phase = np.angle(np.exp(1j * (phase + rng.normal(0, 0.02, phase.shape))))
                mag = mag * (1 + rng.normal(0, 0.01, mag.shape))
            key = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "anat"
            for e in range(phase.shape[0]):
                for part, vol in (("mag", mag), ("phase", phase)):
                    stem = root / rel / f"{key}_echo-{e + 1}_part-{part}_MEGRE"
                    save_nifti(stem.with_suffix(".nii.gz"), vol[e], case.affine)
                    stem.with_suffix(".json").write_text(
                        json.dumps({"EchoTime": float(te[e]), "MagneticFieldStrength": b0_tesla})
                    )
            stored, affine = (label_storage or (lambda a, b: (a, b)))(lab, case.affine)
            seg = seg_root / rel / f"{key}_desc-phantom_dseg"
            save_nifti(seg.with_suffix(".nii.gz"), stored, affine, dtype=np.int16)
            seg.with_suffix(".tsv").write_text(names)
            labels[key] = lab
    return labels
