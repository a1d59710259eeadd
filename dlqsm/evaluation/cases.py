"""Test cases with ground truth: held-out simulated heads and folders of scans with references.

Every case is a local field (ppm) with its mask, a reference susceptibility map (ppm) on the same
grid and its geometry; optionally an integer ROI label map for per-ROI errors and ROI linearity.

Simulated heads (:func:`simulated_heads`): head ``i`` is ``head_phantom(seed=seed + i)`` with
``seed >= EVAL_SEED_BASE`` (10**6). Training datasets (:mod:`dlqsm.simulation.datasets`) draw
sample ``i`` from a 63-bit seed hashed from (dataset seed, i), so a training sample equals an
evaluation head only by a 2**-63 coincidence; seeds below 10**6 are refused here so that the
small seeds of examples and ad-hoc phantoms (0, 1, 42, ...) never become test heads.

Folders (:func:`folder_cases`) follow a *layout*: which file holds what. A folder may hold one
case or one case per subfolder. The layout comes from (first found) the ``layout`` argument (a
preset name, a JSON/YAML file or a dict), an ``evaluation.json`` file in the folder, or the first
preset whose required files are all present. Layout keys (file names relative to the case
folder; a list means "the first that exists"):

==============  ========================================================================
``local_field``  local (tissue) field NIfTI, required
``mask``         brain mask NIfTI, required (metrics are computed inside it)
``reference``    ground-truth susceptibility NIfTI (ppm), required
``labels``       integer ROI label NIfTI, optional
``magnitude``    magnitude NIfTI, optional (for magnitude-weighted classical methods)
``roi_ids``      labels used for per-ROI errors and ROI linearity (default: all non-zero)
``roi_names``    {label: name} for tables and figures (default: ``roi_<label>``)
``field_scale``  factor that turns the stored field into ppm (default 1)
``b0_dir``       B0 unit vector in voxel coordinates (default: from the affine)
``voxel_size``   mm (default: from the affine)
``reference_name``  what the reference is, for figures (default ``truth``; ``COSMOS`` in vivo)
==============  ========================================================================
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dlqsm.errors import InputError
from dlqsm.io.nifti import load_nifti
from dlqsm.io.scan import mask_from_values
from dlqsm.physics.geometry import (
    as_b0_dir,
    as_voxel_size,
    b0_dir_from_affine,
    rotation_matrix,
)

EVAL_SEED_BASE = 1_000_000
"""Simulated evaluation heads use phantom seeds >= this (see the module docstring)."""

CHALLENGE2016_ROI_NAMES: dict[int, str] = {
    1: "caudate", 2: "putamen", 3: "globus_pallidus", 4: "red_nucleus", 5: "substantia_nigra",
    6: "dentate", 7: "genu_corpus_callosum", 8: "splenium_corpus_callosum",
    9: "internal_capsule", 10: "frontal_white_matter", 11: "optic_radiation"}
"""Names of the 2016 challenge's ``evaluation_mask`` labels. The challenge's evaluation script
scores labels 1-6 as grey and 7-11 as white matter; the individual names were read off where
each bilateral label lies on the COSMOS map (shape, position relative to the ventricles and
nuclei, susceptibility sign): e.g. 3 is the brightest nucleus medial to 2, 4/5 the midbrain
pair with 5 anterolateral, 6 in the cerebellum, 9 the diamagnetic band beside the pallidum.
An ``evaluation.json`` with ``roi_names`` overrides them."""

LAYOUTS: dict[str, dict] = {
    "dlqsm": {"local_field": ["localfield.nii.gz", "localfield.nii"],
              "mask": ["mask.nii.gz", "mask.nii"],
              "reference": ["chi.nii.gz", "reference.nii.gz", "chi.nii"],
              "labels": ["labels.nii.gz", "labels.nii"],
              "magnitude": ["magnitude.nii.gz", "magnitude.nii"]},
    "challenge2016": {"local_field": "phs_tissue.nii.gz", "mask": "msk.nii.gz",
                      "reference": "chi_cosmos.nii.gz", "labels": "evaluation_mask.nii.gz",
                      "magnitude": "magn.nii.gz", "roi_names": CHALLENGE2016_ROI_NAMES,
                      "reference_name": "COSMOS"},
    "dlqsm-simulated": {"local_field": ["field.nii.gz", "field.nii"],
                        "mask": ["mask.nii.gz", "mask.nii"],
                        "reference": ["chi.nii.gz", "chi.nii"],
                        "labels": ["labels.nii.gz", "labels.nii"]},
}
"""Built-in layouts. ``challenge2016``: the 2016 QSM reconstruction challenge files (local field
already in ppm, COSMOS reference, ROI labels 1..11 named by :data:`CHALLENGE2016_ROI_NAMES`).
``dlqsm-simulated``: a sample folder written by ``dlqsm simulate`` (``sample_*/``), so that a
held-out simulated set on disk (another seed than training) is evaluated as it is stored."""

LAYOUT_FILE = "evaluation.json"
OPTIONAL = ("labels", "magnitude")


@dataclass
class EvalCase:
    """One volume with ground truth.

    Attributes:
        name: identifier used in tables and file names.
        local_field: (X, Y, Z) float32, ppm.
        mask: (X, Y, Z) bool.
        reference: (X, Y, Z) float32 true susceptibility, ppm.
        voxel_size: mm. b0_dir: unit vector in voxel coordinates. affine: (4, 4).
        labels: (X, Y, Z) int64 ROI labels, or None.
        roi_ids: labels used for per-ROI errors and ROI linearity.
        roi_names: {label: name}.
        magnitude: (X, Y, Z) float32 or None.
        source: where the case came from (for the record).
        reference_name: what ``reference`` is, for figures ("truth", "COSMOS", ...).
    """

    name: str
    local_field: np.ndarray
    mask: np.ndarray
    reference: np.ndarray
    voxel_size: tuple[float, float, float]
    b0_dir: tuple[float, float, float]
    affine: np.ndarray
    labels: np.ndarray | None = None
    roi_ids: list[int] = field(default_factory=list)
    roi_names: dict[int, str] = field(default_factory=dict)
    magnitude: np.ndarray | None = None
    source: dict = field(default_factory=dict)
    reference_name: str = "truth"

    def roi_name(self, label: int) -> str:
        return self.roi_names.get(int(label), f"roi_{int(label)}")


# --------------------------------------------------------------------------------------------
# Simulated heads
# --------------------------------------------------------------------------------------------

def b0_at_tilt(tilt_deg: float, seed: int) -> np.ndarray:
    """A B0 unit vector at ``tilt_deg`` from the voxel z axis, azimuth drawn from ``seed``."""
    if tilt_deg == 0:
        return np.array([0.0, 0.0, 1.0])
    phi = np.random.default_rng(seed).uniform(0, 2 * math.pi)
    axis = np.array([math.cos(phi), math.sin(phi), 0.0])
    return rotation_matrix(axis, math.radians(tilt_deg)) @ np.array([0.0, 0.0, 1.0])


def simulated_heads(count: int, shape=(164, 205, 205), voxel_size=(1.0, 1.0, 1.0), *,
                    seed: int = EVAL_SEED_BASE, b0_tilt_deg: float = 0.0,
                    noise_std: float = 0.0, device="cpu", **phantom_kwargs) -> list[EvalCase]:
    """Held-out head phantoms with their local fields (the dipole-inversion track).

    Case ``i`` is :func:`dlqsm.simulation.head.simulate_head_case` with seed ``seed + i``
    (no signal). The local field is ``mask * D(mask * chi)`` (ppm): the field of the
    susceptibility inside the brain mask (sources outside the brain taken as perfectly
    removed), with zero padding of a quarter of the matrix on each side, plus optional Gaussian
    noise of ``noise_std`` ppm inside the mask. The reference is the phantom's susceptibility
    (ppm) referenced to its mean inside the mask; the affine encodes the B0 direction.

    Args:
        count: number of heads.
        shape, voxel_size: grid (voxels, mm).
        seed: first seed, at least :data:`EVAL_SEED_BASE`.
        b0_tilt_deg: angle between B0 and the voxel z axis; the azimuth is drawn per case.
        noise_std: field noise (ppm) inside the mask.
        phantom_kwargs: passed to :func:`dlqsm.simulation.head.head_phantom`.

    Raises:
        InputError: a seed below :data:`EVAL_SEED_BASE` or a non-positive count.
    """
    from dlqsm.simulation.head import DGM_LABELS, simulate_head_case

    if int(count) < 0:
        raise InputError(f"the number of heads must be >= 0, got {count}.")
    if int(seed) < EVAL_SEED_BASE:
        raise InputError(f"evaluation seed {seed} is in the training range.",
                         fix=f"use seeds >= {EVAL_SEED_BASE} (held out from training).")
    shape = tuple(int(s) for s in shape)
    vox = as_voxel_size(voxel_size)  # checked once; the methods trust the case's geometry
    cases = []
    for i in range(int(count)):
        s = int(seed) + i
        b0 = b0_at_tilt(b0_tilt_deg, s)
        head = simulate_head_case(shape, vox, b0, seed=s, signal=False,
                                  padding=tuple(n // 4 for n in shape), device=device,
                                  **phantom_kwargs)
        mask = head.mask.bool()
        fld = head.local_field.float()
        if noise_std > 0:
            g = torch.Generator(device="cpu").manual_seed(s)
            fld = (fld + noise_std * torch.randn(shape, generator=g).to(fld.device)) * mask
        cases.append(EvalCase(
            name=f"head{s}", local_field=fld.cpu().numpy().astype(np.float32),
            mask=mask.cpu().numpy(), reference=head.chi.float().cpu().numpy(),
            voxel_size=vox, b0_dir=as_b0_dir(b0),
            affine=np.asarray(head.affine, dtype=np.float64),
            labels=head.labels.cpu().numpy().astype(np.int64),
            roi_ids=list(DGM_LABELS.values()),
            roi_names={v: k for k, v in DGM_LABELS.items()},
            source={"kind": "simulated head", "seed": s, "shape": list(shape),
                    "voxel_size": list(vox), "b0_tilt_deg": float(b0_tilt_deg),
                    "noise_std_ppm": float(noise_std),
                    "has_lesions": bool(head.phantom.has_lesions)}))
    return cases


# --------------------------------------------------------------------------------------------
# Folders with reference maps
# --------------------------------------------------------------------------------------------

def read_layout(layout) -> dict:
    """A layout dict from a preset name, a JSON/YAML file or a dict (validated)."""
    if isinstance(layout, dict):
        out = dict(layout)
    elif isinstance(layout, str) and layout in LAYOUTS:
        out = dict(LAYOUTS[layout])
    else:
        p = Path(layout)
        if not p.is_file():
            raise InputError(f"unknown layout {layout!r}.", fix=f"use a preset "
                             f"({', '.join(LAYOUTS)}) or a JSON/YAML layout file.")
        text = p.read_text()
        try:
            out = json.loads(text) if p.suffix == ".json" else _yaml(text)
        except ValueError as exc:
            raise InputError(f"cannot parse the layout file ({exc}).", path=p) from exc
        if not isinstance(out, dict):
            raise InputError("a layout file must hold a mapping.", path=p)
    missing = [k for k in ("local_field", "mask", "reference") if not out.get(k)]
    if missing:
        raise InputError(f"the layout lacks {', '.join(missing)}.",
                         fix="name the local field, mask and reference files.")
    return out


def _yaml(text: str):
    import yaml

    return yaml.safe_load(text)


def _find(folder: Path, names) -> Path | None:
    for n in [names] if isinstance(names, str) else list(names):
        if (folder / n).is_file():
            return folder / n
    return None


def _detect_layout(folder: Path) -> dict | None:
    if (folder / LAYOUT_FILE).is_file():
        return read_layout(str(folder / LAYOUT_FILE))
    for preset in LAYOUTS.values():
        if all(_find(folder, preset[k]) for k in ("local_field", "mask", "reference")):
            return dict(preset)
    return None


def folder_cases(root, layout=None) -> list[EvalCase]:
    """Cases from a folder holding one case, or one case per subfolder.

    Args:
        root: the folder.
        layout: preset name, layout file or dict; None detects it (see the module docstring).

    Raises:
        InputError: no case found, missing ground truth or mask, grids that differ.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("data folder does not exist.", path=root, fix="check the path.")
    fixed = read_layout(layout) if layout is not None else None
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    cases = []
    for folder in folders:
        lay = fixed or _detect_layout(folder)
        if lay is None or _find(folder, lay["local_field"]) is None:
            continue
        cases.append(load_case(folder, lay, name=_case_name(root, folder)))
        if folder == root:
            break
    if not cases:
        want = "; ".join(f"{k}: {v['local_field']} + {v['mask']} + {v['reference']}"
                         for k, v in LAYOUTS.items())
        raise InputError("no evaluation case found (a local field, mask and reference map).",
                         path=root, fix=f"use a known layout ({want}) or write "
                         f"{LAYOUT_FILE} naming the files (see docs/evaluation.md).")
    return cases


def _case_name(root: Path, folder: Path) -> str:
    return root.name if folder == root else f"{root.name}-{folder.name}"


def load_case(folder, layout: dict, *, name: str | None = None) -> EvalCase:
    """Load one case from ``folder`` with a layout dict (see the module docstring)."""
    folder = Path(folder)
    paths = {}
    for key in ("local_field", "mask", "reference", *OPTIONAL):
        spec = layout.get(key)
        paths[key] = _find(folder, spec) if spec else None
        if paths[key] is None and key not in OPTIONAL:
            what = {"reference": "ground-truth susceptibility map"}.get(key, key.replace("_", " "))
            raise InputError(f"no {what} ({spec}) in this case folder.", path=folder,
                             fix="add the file or fix the layout (evaluation.json).")
    vols = {k: load_nifti(p, ndim=3, what=k.replace("_", " ")) for k, p in paths.items() if p}
    grid = vols["local_field"]
    for key, vol in vols.items():
        if vol.shape != grid.shape or not np.allclose(vol.affine, grid.affine, atol=1e-3):
            raise InputError(f"{key.replace('_', ' ')} grid {vol.shape} does not match the "
                             f"local field's {grid.shape} (shape or affine).", path=vol.path,
                             fix="resample it onto the local field's grid.")
    mask = mask_from_values(vols["mask"].data, path=vols["mask"].path)  # the loaders' rule
    labels = vols["labels"].data.round().astype(np.int64) if "labels" in vols else None
    roi_ids = [int(i) for i in layout.get("roi_ids") or
               (np.unique(labels[labels > 0]).tolist() if labels is not None else [])]
    vox = as_voxel_size(layout.get("voxel_size") or grid.voxel_size)  # checked once, here
    b0 = as_b0_dir(layout["b0_dir"] if layout.get("b0_dir") else b0_dir_from_affine(grid.affine))
    scale = float(layout.get("field_scale", 1.0))
    return EvalCase(
        name=name or folder.name, local_field=(grid.data * scale * mask).astype(np.float32),
        mask=mask, reference=vols["reference"].data.astype(np.float32),
        voxel_size=vox, b0_dir=b0,
        affine=grid.affine, labels=labels, roi_ids=roi_ids,
        roi_names={int(k): str(v) for k, v in (layout.get("roi_names") or {}).items()},
        magnitude=vols["magnitude"].data if "magnitude" in vols else None,
        source={"kind": "folder", "folder": str(folder),
                "files": {k: str(p) for k, p in paths.items() if p}, "field_scale": scale},
        reference_name=str(layout.get("reference_name") or "truth"))
