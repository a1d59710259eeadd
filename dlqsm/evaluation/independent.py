"""Independent test data: dlqsm's head phantoms written by qsm-forward, scored by qsm-ci.

dlqsm's own benchmarks use heads from dlqsm's own simulator. This module makes test cases with
a forward model dlqsm did not write: **qsm-forward** (PyPI ``qsm-forward``, the forward model
behind the QSM-CI leaderboard) turns a dlqsm head phantom (susceptibility, tissue labels, M0,
R2*) into a BIDS multi-echo GRE dataset (magnitude and wrapped phase per echo with qsm-forward's
2nd-order Legendre shim residual, its smooth phase offset and complex noise; skull, scalp and
air outside the brain mask), plus its derivatives (resampled chi, mask, segmentation, field
maps). Reconstructions are scored with **qsm-ci**'s scorer (``qsm_ci.qsm_eval.score_arrays``),
so the numbers read like the leaderboard's. Both packages are in dlqsm's ``eval`` extra.

Three kinds of case (:func:`make_qsmforward_case`), scored the same way:

* ``kind="fine"``: the phantom is built on a grid ``fine_factor`` times finer than the scan and
  qsm-forward brings it to the scan grid (signal: k-space truncation, i.e. an ideal low-pass
  average with realistic partial volumes; truth maps: its image-space resampling). This is how
  QSM-CI builds its simulated head.
* ``kind="sharp"``: the phantom is built at scan resolution (voxel-sharp 9.4 ppm air and
  -2 ppm bone edges whose fields ring): a stress case, not a realistic one.
* ``kind="dlqsm"``: the same phantom through dlqsm's *own* simulator
  (:func:`dlqsm.simulation.head.simulate_head_case`: partial-volume edges, SNR 50, smooth phase
  offset, no shim residual, as in ``scripts/benchmark_pipeline.py``), written as a QSM-CI
  artifact folder (``qsmci/``): the own-simulator column beside the independent ones.

Oblique B0: qsm-forward 0.32 encodes a B0 direction by rotating the affine and its ``resize``
then rescales only the affine's diagonal, which shears an oblique head and moves the resampled
truth relative to the signal. Here qsm-forward always sees a grid whose final affine is
diagonal (the phantom file's affine is pre-rotated so that qsm-forward's own rotation cancels),
while the field is computed with the oblique B0 vector in voxel coordinates; afterwards every
written image gets the oblique affine of :func:`dlqsm.simulation.acquisition.affine_for`, from
which ``b0_dir_from_affine`` reads the B0 vector back. qsm-forward 0.32's dipole kernel pairs
the first array axis's voxel size with the second axis's frequencies, so phantom grids must
have equal voxel sizes along the first two axes (anisotropic slices are fine).

A case folder (cached under a name that hashes its parameters) holds:

==========================  ==================================================================
``bids/`` (or ``qsmci/``)   qsm-forward's BIDS dataset: ``sub-1/anat/sub-1_echo-N_part-
                             {mag,phase}_MEGRE.nii`` + JSON sidecars (EchoTime in s,
                             MagneticFieldStrength in T), ``derivatives/qsm-forward/...``;
                             ``kind="dlqsm"``: QSM-CI artifacts (4D phase/magnitude, mask,
                             params.json)
``chi.nii.gz``               truth susceptibility (ppm relative to CSF; qsm-forward's resampled
                             Chimap; score after demeaning inside the mask)
``mask.nii.gz``              brain mask (what QSM-CI gives a method and scores inside)
``labels.nii.gz``            segmentation in QSM-CI's label scheme (:data:`QSMCI_LABELS`)
``localfield.nii.gz``        field of the brain's sources alone (ppm), qsm-forward's
                             ``fieldmap-local``
``totalfield.nii.gz``        qsm-forward's unshimmed total field (ppm; mean zero in the mask)
``evaluation.json``          layout for ``dlqsm evaluate --data`` (dipole-inversion track)
``case.json``                parameters, cache key, B0 vector, affine, versions, timings
==========================  ==================================================================
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dlqsm.errors import InputError
from dlqsm.evaluation.cases import EVAL_SEED_BASE, b0_at_tilt

KINDS = ("fine", "sharp", "dlqsm")

CASE_FORMAT = 1
"""Version of the case generator; part of the cache key (bump it when the output changes)."""

QSMCI_LABELS: dict[int, str] = {
    1: "caudate", 2: "globus_pallidus", 3: "putamen", 4: "red_nucleus", 5: "dentate",
    6: "substantia_nigra", 7: "thalamus", 8: "white_matter", 9: "grey_matter", 10: "csf",
    11: "blood", 12: "haemorrhage", 13: "bone", 14: "air", 15: "soft_tissue",
    16: "calcification",
}
"""Segmentation labels of the cases: QSM-CI's head-phantom scheme (its scorer takes labels 1-6
as the deep grey matter nuclei, 7-9 as tissue, 11 as blood, 16 as calcification); 12, unused
there, holds dlqsm's haemorrhages."""

QSMCI_DGM = (1, 2, 3, 4, 5, 6)

_FROM_DLQSM = {  # dlqsm.simulation.head.LABELS name -> QSMCI_LABELS value
    "background": 0, "csf": 10, "ventricles": 10, "gm": 9, "wm": 8, "brainstem": 8,
    "caudate": 1, "putamen": 3, "globus_pallidus": 2, "thalamus": 7, "red_nucleus": 4,
    "substantia_nigra": 6, "dentate": 5, "veins": 11, "calcification": 16, "haemorrhage": 12,
    "skull": 13, "soft_tissue": 15, "air": 14,
}

DEFAULT_TE = (0.004, 0.012, 0.020, 0.028)
"""Echo times (s): qsm-forward's defaults (also used by QSM-CI's simulated head)."""

DLQSM_SNR = 50.0
"""SNR of the own-simulator cases (mean M0 / noise std), as in scripts/benchmark_pipeline.py."""

R1_PER_S = 1.0
"""Longitudinal relaxation rate given to qsm-forward everywhere (1/s): it only scales the
magnitude (dlqsm's phantom has no R1 map)."""


def default_cache_dir() -> Path:
    """Where generated cases live: ``$DLQSM_CACHE/qsmforward`` or ``~/.cache/dlqsm/qsmforward``."""
    root = os.environ.get("DLQSM_CACHE") or Path.home() / ".cache" / "dlqsm"
    return Path(root) / "qsmforward"


def require_eval_extra():
    """Import qsm-forward and qsm-ci's scorer, or stop with the install command."""
    try:
        import qsm_forward
        from qsm_ci import qsm_eval
    except ImportError as exc:
        raise InputError(f"the independent-data suite needs qsm-forward and qsm-ci ({exc}).",
                         fix='pip install "dlqsm[eval]" (qsm-forward==0.32, qsm-ci==0.6.2).') \
            from exc
    return qsm_forward, qsm_eval


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


@dataclass(frozen=True)
class CaseSpec:
    """Parameters of one qsm-forward case (everything that changes its files).

    Attributes:
        kind: "fine" (built ``fine_factor`` times finer, brought to the scan grid by
            qsm-forward), "sharp" (built at scan resolution) or "dlqsm" (dlqsm's own
            simulator, for comparison).
        field_strength: B0 in tesla.
        tilt_deg: angle between B0 and the voxel z axis; the azimuth is drawn from ``seed``.
        voxel_size: scan voxel size (mm); the first two must be equal (see the module notes).
        shape: scan matrix (X, Y, Z); the head is fitted into the field of view.
        seed: phantom seed (>= :data:`EVAL_SEED_BASE`, held out from training); also seeds the
            noise.
        fine_factor: phantom grid refinement for ``kind="fine"`` (integer >= 2).
        te: echo times (s).
        peak_snr: qsm-forward's peak SNR (noise std = max |signal| / peak_snr per part);
            ``inf`` gives no noise.
        lesion_prob: chance of haemorrhages / calcifications in the phantom.
    """

    kind: str = "fine"
    field_strength: float = 3.0
    tilt_deg: float = 0.0
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shape: tuple[int, int, int] = (164, 205, 205)
    seed: int = EVAL_SEED_BASE
    fine_factor: int = 2
    te: tuple[float, ...] = DEFAULT_TE
    peak_snr: float = 100.0
    lesion_prob: float = 0.0

    def __post_init__(self):
        norm = {"kind": str(self.kind), "field_strength": float(self.field_strength),
                "tilt_deg": float(self.tilt_deg),
                "voxel_size": tuple(float(v) for v in np.broadcast_to(self.voxel_size, 3)),
                "shape": tuple(int(s) for s in np.broadcast_to(self.shape, 3)),
                "seed": int(self.seed), "fine_factor": int(self.fine_factor),
                "te": tuple(float(t) for t in np.atleast_1d(self.te)),
                "peak_snr": float(self.peak_snr), "lesion_prob": float(self.lesion_prob)}
        for k, v in norm.items():
            object.__setattr__(self, k, v)
        self.check()

    def check(self) -> None:
        """Refuse parameters qsm-forward or the scorer cannot use, with the fix."""
        if self.kind not in KINDS:
            raise InputError(f"unknown case kind {self.kind!r}.",
                             fix=f"use one of {', '.join(KINDS)}.")
        if self.seed < EVAL_SEED_BASE:
            raise InputError(f"case seed {self.seed} is in the training range.",
                             fix=f"use seeds >= {EVAL_SEED_BASE} (held out from training).")
        vx, vy, vz = self.voxel_size
        if min(self.voxel_size) <= 0 or (self.kind != "dlqsm" and not np.isclose(vx, vy)):
            raise InputError(f"voxel size {self.voxel_size}: qsm-forward 0.32 needs equal, "
                             "positive in-plane voxel sizes (its kernel swaps the first two).",
                             fix="use e.g. (0.8, 0.8, 2.0).")
        if min(self.shape) < 16:
            raise InputError(f"matrix {self.shape} is too small for a head (>= 16 voxels).")
        if self.kind == "fine" and self.fine_factor < 2:
            raise InputError("a fine-grid case needs fine_factor >= 2.")
        if not self.te or min(self.te) <= 0 or self.field_strength <= 0:
            raise InputError("echo times and the field strength must be positive (s, T).")
        if not 0 <= self.tilt_deg <= 90:
            raise InputError(f"B0 tilt {self.tilt_deg} deg is outside 0..90.")

    @property
    def phantom_factor(self) -> int:
        return self.fine_factor if self.kind == "fine" else 1

    @property
    def b0_dir(self) -> np.ndarray:
        """B0 unit vector in voxel coordinates (azimuth drawn from the seed)."""
        return b0_at_tilt(self.tilt_deg, self.seed)

    def key(self) -> str:
        """Hash of the parameters, the generator format and qsm-forward's version."""
        blob = json.dumps({**asdict(self), "format": CASE_FORMAT,
                           "qsm_forward": package_version("qsm-forward")}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        """Readable case name, e.g. ``fine-3T-tilt0-1x1x1``."""
        vox = "x".join(f"{v:g}" for v in self.voxel_size)
        return f"{self.kind}-{self.field_strength:g}T-tilt{self.tilt_deg:g}-{vox}"

    def folder_name(self) -> str:
        shape = "x".join(str(s) for s in self.shape)
        return f"{self.name}-{shape}-s{self.seed}-{self.key()}"


@dataclass
class QsmForwardCase:
    """A generated case folder (see the module docstring) with its metadata."""

    path: Path
    spec: CaseSpec
    b0_dir: np.ndarray
    affine: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def raw_input(self) -> Path:
        """The raw multi-echo input: ``bids/`` (qsm-forward) or ``qsmci/`` (dlqsm)."""
        return self.path / self.meta.get("raw_input", "bids")

    def file(self, name: str) -> Path:
        return self.path / name


def make_qsmforward_case(kind: str = "fine", field_strength: float = 3.0,
                         tilt_deg: float = 0.0, voxel_size=(1.0, 1.0, 1.0),
                         shape=(164, 205, 205), seed: int = EVAL_SEED_BASE, *,
                         cache_dir=None, force: bool = False, progress: bool = False,
                         **spec_kwargs) -> Path:
    """Generate (or find in the cache) one qsm-forward case and return its folder.

    Args:
        kind: "fine" or "sharp" (see the module docstring).
        field_strength: B0 (T). tilt_deg: B0 angle to the voxel z axis (deg).
        voxel_size: scan voxel size (mm, equal in-plane). shape: scan matrix.
        seed: phantom and noise seed (>= 10**6).
        cache_dir: folder of cached cases (default :func:`default_cache_dir`).
        force: regenerate even if the case is cached.
        progress: print what is happening.
        **spec_kwargs: ``fine_factor``, ``te``, ``peak_snr``, ``lesion_prob`` of
            :class:`CaseSpec`.

    Returns:
        The case folder (``bids/``, ``chi.nii.gz``, ``mask.nii.gz``, ``labels.nii.gz``,
        ``localfield.nii.gz``, ``totalfield.nii.gz``, ``evaluation.json``, ``case.json``).
    """
    spec = CaseSpec(kind=kind, field_strength=field_strength, tilt_deg=tilt_deg,
                    voxel_size=voxel_size, shape=shape, seed=seed, **spec_kwargs)
    return generate_case(spec, cache_dir=cache_dir, force=force, progress=progress).path


def load_case_folder(path) -> QsmForwardCase:
    """A generated case from its folder (reads ``case.json``)."""
    p = Path(path)
    meta_file = p / "case.json"
    if not meta_file.is_file():
        raise InputError("not a qsm-forward case folder (no case.json).", path=p,
                         fix="generate it with make_qsmforward_case.")
    meta = json.loads(meta_file.read_text())
    spec = CaseSpec(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in meta["spec"].items()})
    return QsmForwardCase(path=p, spec=spec, b0_dir=np.asarray(meta["b0_dir"]),
                          affine=np.asarray(meta["affine"]), meta=meta)


def generate_case(spec: CaseSpec, *, cache_dir=None, force: bool = False,
                  progress: bool = False) -> QsmForwardCase:
    """Generate ``spec`` into the cache (or return the cached case). See
    :func:`make_qsmforward_case`. The folder appears in one rename when complete, so an
    interrupted run leaves no half-written case behind."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / spec.folder_name()
    if (final / "case.json").is_file() and not force:
        return load_case_folder(final)
    root.mkdir(parents=True, exist_ok=True)
    work = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        meta = _generate_into(spec, work, progress)
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return QsmForwardCase(path=final, spec=spec, b0_dir=np.asarray(meta["b0_dir"]),
                          affine=np.asarray(meta["affine"]), meta=meta)


def qsmci_labels(labels: np.ndarray) -> np.ndarray:
    """dlqsm head labels (:data:`dlqsm.simulation.head.LABELS`) -> :data:`QSMCI_LABELS`."""
    from dlqsm.simulation.anatomy import LABELS

    lut = np.zeros(max(LABELS.values()) + 1, dtype=np.int16)
    for name, code in LABELS.items():
        lut[code] = _FROM_DLQSM[name]
    return lut[np.asarray(labels, dtype=np.int64)]


def _rotation_z_to(b: np.ndarray) -> np.ndarray:
    """The 4x4 rotation qsm-forward applies for B0 direction ``b`` (z -> b, Rodrigues)."""
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(z, b)
    s, c = np.linalg.norm(v), float(z @ b)
    r = np.eye(4)
    if not np.isclose(s, 0):
        k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
        r[:3, :3] = np.eye(3) + k + k @ k * ((1 - c) / s**2)
    return r


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"dlqsm qsm-forward case: {text}", flush=True)


def _phantom_maps(spec: CaseSpec):
    """The dlqsm head phantom on the phantom grid: chi, mask, labels, M0, R2*, R1 (numpy)."""
    import torch

    from dlqsm.simulation.anatomy import tissue_parameters
    from dlqsm.simulation.phantom import head_phantom

    f = spec.phantom_factor
    shape = tuple(n * f for n in spec.shape)
    vox = tuple(v / f for v in spec.voxel_size)
    ph = head_phantom(shape, vox, seed=spec.seed, lesion_prob=spec.lesion_prob)
    m0, r2s = tissue_parameters(ph.labels, spec.field_strength)
    with torch.no_grad():
        maps = {"chi": ph.chi.numpy().astype(np.float32),
                "mask": ph.brain_mask.numpy().astype(np.uint8),
                "seg": qsmci_labels(ph.labels.numpy()),
                "M0": m0.numpy().astype(np.float32),
                "R2star": r2s.numpy().astype(np.float32)}
    maps["R1"] = np.full(shape, R1_PER_S, dtype=np.float32)
    return maps, vox, ph


def _generate_into(spec: CaseSpec, work: Path, progress: bool) -> dict:
    import nibabel as nib

    from dlqsm.io.nifti import save_nifti
    from dlqsm.io.outputs import write_json_atomic
    from dlqsm.simulation.acquisition import affine_for

    if spec.kind == "dlqsm":
        return _generate_dlqsm_into(spec, work, progress)
    qsm_forward, _ = require_eval_extra()
    t0 = time.perf_counter()
    b0 = spec.b0_dir
    _say(progress, f"{spec.name}: phantom on the {'fine' if spec.kind == 'fine' else 'scan'} "
                   "grid ...")
    maps, vox_ph, ph = _phantom_maps(spec)
    t_phantom = time.perf_counter() - t0
    # qsm-forward rotates the phantom's affine by R(z -> b0); pre-rotating by R makes its final
    # affine diagonal, so its resize neither shears nor moves anything.
    pre = np.diag([*vox_ph, 1.0]) @ _rotation_z_to(b0)
    src = work / "phantom"
    src.mkdir(parents=True)
    files = {}
    for name, vol in maps.items():
        files[name] = str(src / f"{name}.nii")
        nib.save(nib.Nifti1Image(vol, pre), files[name])
    del maps
    tissue = qsm_forward.TissueParams(chi=files["chi"], M0=files["M0"], R1=files["R1"],
                                      R2star=files["R2star"], mask=files["mask"],
                                      seg=files["seg"])
    recon = qsm_forward.ReconParams(
        subject="1", TEs=np.asarray(spec.te), B0=spec.field_strength, B0_dir=b0,
        voxel_size=np.asarray(spec.voxel_size), peak_snr=spec.peak_snr,
        random_seed=spec.seed, suffix="MEGRE")
    bids = work / "bids"
    _say(progress, "qsm-forward generate_bids ...")
    t1 = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        qsm_forward.generate_bids(tissue, recon, str(bids), save_field=True,
                                  save_shimmed_field=True)
    t_qsmforward = time.perf_counter() - t1
    shutil.rmtree(src)
    affine = affine_for(spec.shape, spec.voxel_size, b0)
    _say(progress, "writing the oblique affine and the truth maps ...")
    written = _set_affines(bids, affine, spec.shape)
    deriv = bids / "derivatives" / "qsm-forward" / "sub-1" / "anat"
    truth = {"chi.nii.gz": ("sub-1_Chimap.nii", np.float32),
             "mask.nii.gz": ("sub-1_mask.nii", np.uint8),
             "labels.nii.gz": ("sub-1_dseg.nii", np.int16),
             "localfield.nii.gz": ("sub-1_fieldmap-local.nii", np.float32),
             "totalfield.nii.gz": ("sub-1_fieldmap.nii", np.float32)}
    for out, (src_name, dtype) in truth.items():
        data = np.asanyarray(nib.load(str(deriv / src_name)).dataobj)
        if dtype is not np.float32:
            data = np.rint(data)
        save_nifti(work / out, data, affine, dtype=dtype)
    _write_layout(work)
    meta = {"spec": asdict(spec), "key": spec.key(), "format": CASE_FORMAT,
            "name": spec.name, "raw_input": "bids", "b0_dir": b0.tolist(),
            "affine": affine.tolist(),
            "phantom_voxel_size": list(vox_ph), "head_scale": ph.scale,
            "has_lesions": bool(ph.has_lesions),
            "versions": {"qsm-forward": package_version("qsm-forward"),
                         "dlqsm": package_version("dlqsm")},
            "timings_s": {"phantom": t_phantom, "qsm_forward": t_qsmforward,
                          "total": time.perf_counter() - t0},
            "files": sorted([*truth, "evaluation.json", *written]),
            "qsm_forward_log": log.getvalue().splitlines()[-3:]}
    write_json_atomic(work / "case.json", meta)
    _say(progress, f"done in {meta['timings_s']['total']:.1f} s")
    return meta


def _write_layout(work: Path) -> None:
    from dlqsm.io.outputs import write_json_atomic

    write_json_atomic(work / "evaluation.json", {
        "local_field": "localfield.nii.gz", "mask": "mask.nii.gz", "reference": "chi.nii.gz",
        "labels": "labels.nii.gz", "roi_ids": list(QSMCI_DGM),
        "roi_names": {k: QSMCI_LABELS[k] for k in QSMCI_DGM}})


def _generate_dlqsm_into(spec: CaseSpec, work: Path, progress: bool) -> dict:
    """The own-simulator case: :func:`simulate_head_case` as QSM-CI artifacts + truth."""
    from dlqsm.io.nifti import save_nifti
    from dlqsm.io.outputs import write_json_atomic
    from dlqsm.io.qsmci import write_params
    from dlqsm.simulation.head import simulate_head_case

    t0 = time.perf_counter()
    b0 = spec.b0_dir
    _say(progress, f"{spec.name}: dlqsm's simulator ...")
    case = simulate_head_case(spec.shape, spec.voxel_size, b0, seed=spec.seed, signal=True,
                              b0_tesla=spec.field_strength, te=spec.te, snr=DLQSM_SNR,
                              lesion_prob=spec.lesion_prob)
    aff = case.affine
    raw = work / "qsmci"
    raw.mkdir(parents=True)
    # QSM-CI artifacts are 4D with echoes last.
    save_nifti(raw / "phase.nii.gz", case.phase.permute(1, 2, 3, 0), aff)
    save_nifti(raw / "magnitude.nii.gz", case.magnitude.permute(1, 2, 3, 0), aff)
    save_nifti(raw / "mask.nii.gz", case.mask, aff, dtype=np.uint8)
    write_params(raw / "params.json", te=spec.te, b0=spec.field_strength, b0_dir=b0,
                 voxel_size=spec.voxel_size)
    truth = {"chi.nii.gz": (case.chi, np.float32), "mask.nii.gz": (case.mask, np.uint8),
             "labels.nii.gz": (qsmci_labels(case.labels.numpy()), np.int16),
             "localfield.nii.gz": (case.local_field, np.float32),
             "totalfield.nii.gz": (case.total_field * case.head_mask, np.float32)}
    for name, (vol, dtype) in truth.items():
        save_nifti(work / name, vol, aff, dtype=dtype)
    _write_layout(work)
    meta = {"spec": asdict(spec), "key": spec.key(), "format": CASE_FORMAT, "name": spec.name,
            "raw_input": "qsmci", "b0_dir": b0.tolist(), "affine": np.asarray(aff).tolist(),
            "head_scale": case.phantom.scale, "has_lesions": bool(case.phantom.has_lesions),
            "simulator": {"snr": DLQSM_SNR, "partial_volume": True, "shim_ppm": 0.0,
                          "phase_offset": True},
            "versions": {"dlqsm": package_version("dlqsm")},
            "timings_s": {"total": time.perf_counter() - t0},
            "files": sorted([*truth, "evaluation.json", "qsmci/phase.nii.gz",
                             "qsmci/magnitude.nii.gz", "qsmci/mask.nii.gz",
                             "qsmci/params.json"])}
    write_json_atomic(work / "case.json", meta)
    return meta


def _set_affines(bids: Path, affine: np.ndarray, shape) -> list[str]:
    """Give every image of the BIDS folder ``affine`` (float32 data; labels stay integer)."""
    import nibabel as nib

    from dlqsm.io.nifti import save_nifti

    out = []
    for p in sorted(bids.rglob("*.nii")):
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
        if tuple(data.shape[:3]) != tuple(shape):
            raise RuntimeError(f"{p}: qsm-forward wrote a {data.shape} grid, expected {shape}.")
        integer = p.name.endswith(("_mask.nii", "_dseg.nii"))
        save_nifti(p, np.rint(data) if integer else data, affine,
                   dtype=np.int16 if integer else np.float32)
        out.append(str(p.relative_to(bids.parent)))
    return out


def score_qsmci(chi, folder, *, labels: bool = True) -> dict:
    """Score a susceptibility map against a case's truth with qsm-ci's scorer.

    ``qsm_ci.qsm_eval.score_arrays`` over the whole brain mask (voxels a method left at 0 or
    non-finite count as 0 against the truth): NRMSE and detrended NRMSE (%), XSIM, HFEN (%),
    correlation, DGM linearity |1 - slope| over labels 1-6, per-class NRMSEs, coverage.

    Args:
        chi: (X, Y, Z) ppm, or a NIfTI path, on the case's grid.
        folder: the case folder (``chi.nii.gz``, ``mask.nii.gz``, ``labels.nii.gz``).
        labels: pass the segmentation (the full simulated-head suite); False scores like
            QSM-CI's in vivo track.
    """
    from dlqsm.io.nifti import load_nifti

    _, qsm_eval = require_eval_extra()
    folder = Path(folder)
    if not isinstance(chi, np.ndarray):
        chi = load_nifti(chi, ndim=3, what="susceptibility map", finite=False).data
    truth = load_nifti(folder / "chi.nii.gz", ndim=3, what="truth").data
    mask = load_nifti(folder / "mask.nii.gz", ndim=3, what="mask").data > 0.5
    seg = (load_nifti(folder / "labels.nii.gz", ndim=3, what="labels").data.round()
           .astype(np.int64) if labels else None)
    if chi.shape != truth.shape:
        raise InputError(f"map grid {chi.shape} differs from the case's {truth.shape}.",
                         path=folder, fix="reconstruct on the case's grid.")
    metrics, _ = qsm_eval.score_arrays(np.asarray(chi, dtype=np.float64),
                                       truth.astype(np.float64), mask, kind="chi", seg=seg)
    return {k: float(v) for k, v in metrics.items()}
