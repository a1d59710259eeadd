"""Anatomy of the procedural head phantom: labels, susceptibility and relaxation tables,
head-frame geometry of the brain, nuclei, ventricles and air spaces.

The tables here are data, usable on their own (e.g. by other phantoms); the generator that
draws them on a voxel grid is :func:`dlqsm.simulation.phantom.head_phantom`, and a complete
simulated scan is :func:`dlqsm.simulation.head.simulate_head_case`.

The anatomy is defined in a *head frame* in millimetres for an adult head (scale 1): x from
left to right, y from posterior to anterior, z from inferior to superior (RAS, like the voxel
axes of an axial NIfTI). Positions of deep grey nuclei and ventricles follow approximate MNI
coordinates shifted by (0, +17, +1) mm (the MNI origin sits 17 mm anterior and 1 mm inferior
of the centre of our cerebrum). The head frame is mapped to the voxel grid by a scale (fitted to
the field of view by default, at most 1 = adult size), a small random rotation and an offset,
so the same anatomy appears at any matrix size and (anisotropic) voxel size.

Structures:

* head (soft tissue) ellipsoid, skull shell (~7 mm), scalp, outside air;
* intracranial cavity: a super-ellipsoidal cerebrum on a sloping anterior cranial floor plus a
  posterior fossa ellipsoid (cerebellum, brainstem); outer CSF of 1.5-3.5 mm;
* cortex (GM) with random sulci (ridges of a smooth random field) and gyral white matter,
  cerebellar folia, interhemispheric fissure, tentorium;
* lateral, third and fourth ventricles;
* bilateral caudate, putamen, globus pallidus, thalamus, red nucleus, substantia nigra and
  dentate nucleus;
* venous sinuses and random cortical / medullary veins (capsule chains);
* optional lesions (haemorrhages and calcifications, in ``lesion_prob`` of the samples);
* air in the paranasal sinuses, nasal cavity, mastoids and ear canals.

Susceptibility values (ppm, relative to CSF = 0; drawn uniformly per sample from the ranges in
:data:`CHI_RANGES`) are rounded literature values:

* deep grey matter, GM and WM relative to CSF: Deistung et al., NeuroImage 2013;65:299-314
  (7 T, e.g. GP ~0.2, SN ~0.15, RN ~0.1, dentate ~0.1 ppm); Lim et al., NeuroImage
  2013;82:449-469 (DGM atlas values at 3 T: GP ~0.15-0.2, putamen ~0.05-0.1, caudate
  ~0.05-0.07, thalamus ~0.0-0.03 ppm); Marques et al., MRM 2021;86:526-542 (QSM challenge 2.0
  phantom: WM ~ -0.03, GM ~ +0.02 ppm);
* veins: deoxygenated blood, dchi = Hct (1 - Y) 3.39 ppm (Spees et al., MRM 2001;45:533-542),
  ~0.3-0.5 ppm for Hct 0.4 and Y 0.6-0.75 (cf. Fan et al., MRM 2014;72:149-159);
* calcifications -0.2..-0.3 ppm and haemorrhages +0.4..+1.2 ppm, in ~40 % of the samples, as
  in the iQSM training recipe (Gao et al., NeuroImage 2022;259:119410; cf. Chen et al.,
  Radiology 2014;270:496-505);
* cortical bone about -2 ppm relative to water/soft tissue (-1.6..-2.4; Buch et al., MRM
  2015;73:2185-2194);
* air +9.4 ppm relative to tissue (air +0.36 ppm, water -9.05 ppm SI; Schenck, Med Phys
  1996;23:815-850).

These are approximate, population-level values for a training/test phantom, not an atlas.
"""

from __future__ import annotations

import torch

__all__ = ["AIR_PPM", "AIR_SPACES", "BILATERAL_STRUCTURES", "BRAINSTEM", "CEREBRUM_AXES",
           "CEREBRUM_CENTER", "CEREBRUM_POWER", "CHI_RANGES", "DGM_LABELS", "FIT_HALF_EXTENT",
           "FOSSA_AXES", "FOSSA_CENTER", "FRAME_SHIFT_Z", "HEAD_AXES", "HEAD_CENTER",
           "INTRACRANIAL_LABELS", "LABELS", "MIDLINE_STRUCTURES", "SKULL_MM",
           "TISSUE_M0_R2STAR_3T", "tissue_parameters"]

LABELS: dict[str, int] = {
    "background": 0,
    "csf": 1,
    "ventricles": 2,
    "gm": 3,
    "wm": 4,
    "brainstem": 5,
    "caudate": 6,
    "putamen": 7,
    "globus_pallidus": 8,
    "thalamus": 9,
    "red_nucleus": 10,
    "substantia_nigra": 11,
    "dentate": 12,
    "veins": 13,
    "calcification": 14,
    "haemorrhage": 15,
    "skull": 16,
    "soft_tissue": 17,
    "air": 18,
}
"""Label values of the head phantom (0 = air outside the head). Left and right share a label."""

DGM_LABELS: dict[str, int] = {k: LABELS[k] for k in (
    "caudate", "putamen", "globus_pallidus", "thalamus", "red_nucleus", "substantia_nigra",
    "dentate")}
"""The deep grey matter nuclei (for DGM linearity metrics)."""

AIR_PPM = 9.4
"""Susceptibility of air relative to tissue water (ppm)."""

CHI_RANGES: dict[str, tuple[float, float]] = {
    "background": (AIR_PPM, AIR_PPM),
    "csf": (0.0, 0.0),
    "ventricles": (0.0, 0.0),
    "gm": (0.01, 0.04),
    "wm": (-0.045, -0.015),
    "brainstem": (-0.04, -0.01),
    "caudate": (0.04, 0.08),
    "putamen": (0.04, 0.10),
    "globus_pallidus": (0.13, 0.22),
    "thalamus": (0.0, 0.03),
    "red_nucleus": (0.08, 0.15),
    "substantia_nigra": (0.10, 0.17),
    "dentate": (0.07, 0.14),
    "veins": (0.3, 0.5),
    "calcification": (-0.3, -0.2),
    "haemorrhage": (0.4, 1.2),
    "skull": (-2.4, -1.6),
    "soft_tissue": (-0.03, 0.03),
    "air": (AIR_PPM, AIR_PPM),
}
"""Per-sample susceptibility ranges in ppm relative to CSF (see the module docstring)."""

# Head-frame geometry (mm, adult, scale 1).
HEAD_CENTER = (0.0, 0.0, -10.0)
HEAD_AXES = (82.0, 100.0, 110.0)
CEREBRUM_CENTER = (0.0, 0.0, 18.0)
CEREBRUM_AXES = (66.0, 84.0, 66.0)
CEREBRUM_POWER = 2.4
FOSSA_CENTER = (0.0, -38.0, -33.0)
FOSSA_AXES = (52.0, 36.0, 26.0)
SKULL_MM = 7.0
FRAME_SHIFT_Z = -12.5
"""World z of the head frame origin: centres the z-range [-75, 100] mm (posterior fossa to
vertex) in the field of view."""
FIT_HALF_EXTENT = (83.0, 101.0, 88.5)
"""Half extents (mm, scale 1) that must fit in the field of view for the automatic scale."""


# Bilateral structures (head frame, mm): (label, centre of the right one (x > 0), semi-axes,
# rotation of the right one as (about_x, about_y, about_z) degrees). Painted in this order
# (later on top); the left one is the mirror image (x -> -x).
BILATERAL_STRUCTURES: list = [
    ("ventricles", (17.0, 5.0, 23.0), (5.0, 21.0, 4.5), (0.0, 0.0, 0.0)),  # body
    ("ventricles", (9.0, 36.0, 14.0), (4.0, 11.0, 7.0), (0.0, 15.0, 0.0)),  # frontal horn
    ("ventricles", (25.0, -25.0, 13.0), (6.0, 14.0, 8.0), (0.0, 0.0, -30.0)),  # atrium
    ("ventricles", (32.0, -3.0, -11.0), (3.0, 14.0, 4.0), (0.0, 0.0, 10.0)),  # temporal horn
    ("caudate", (16.0, 31.0, 9.0), (5.0, 9.0, 8.0), (0.0, 0.0, 0.0)),  # head
    ("caudate", (21.0, 12.0, 19.0), (3.0, 12.0, 3.5), (20.0, 0.0, 0.0)),  # body
    ("putamen", (26.0, 20.0, 3.0), (6.0, 15.0, 10.0), (0.0, 0.0, 10.0)),
    ("globus_pallidus", (19.0, 13.0, 0.0), (4.0, 8.0, 5.5), (0.0, 0.0, 10.0)),
    ("thalamus", (11.0, -1.0, 8.0), (8.0, 15.0, 9.0), (0.0, 0.0, 10.0)),
    ("substantia_nigra", (11.0, 1.0, -11.0), (3.0, 9.0, 3.5), (-15.0, 0.0, 35.0)),
    ("red_nucleus", (5.0, -3.0, -8.0), (3.2, 3.8, 3.8), (0.0, 0.0, 0.0)),
    ("dentate", (15.0, -40.0, -33.0), (8.0, 10.0, 6.0), (0.0, 0.0, 20.0)),
    ("wm", (15.0, -40.0, -33.0), (4.5, 5.5, 3.2), (0.0, 0.0, 20.0)),  # dentate hilum
]
"""Ventricles and deep grey nuclei present on both sides (right one given), as
(label, centre, semi-axes, Euler angles in degrees about x, y, z), head-frame mm."""
MIDLINE_STRUCTURES: list = [
    ("ventricles", (0.0, 3.0, 5.0), (1.5, 14.0, 9.0), (0.0, 0.0, 0.0)),  # third
    ("ventricles", (0.0, -28.0, -29.0), (6.0, 4.0, 7.0), (0.0, 0.0, 0.0)),  # fourth
]
"""Midline structures (third and fourth ventricle), same layout as BILATERAL_STRUCTURES."""
BRAINSTEM: tuple = ("brainstem", (0.0, -11.0, -27.0), (12.0, 13.0, 30.0), (-20.0, 0.0, 0.0))
"""The brainstem ellipsoid, same layout as BILATERAL_STRUCTURES."""
AIR_SPACES: list = [  # (centre, semi-axes), right-side ones mirrored when x != 0
    ((0.0, 86.0, -8.0), (14.0, 5.0, 10.0)),  # frontal sinus
    ((0.0, 30.0, -42.0), (12.0, 11.0, 10.0)),  # sphenoid sinus
    ((28.0, 58.0, -62.0), (13.0, 16.0, 17.0)),  # maxillary sinuses
    ((0.0, 75.0, -55.0), (6.0, 22.0, 18.0)),  # nasal cavity
    ((62.0, -12.0, -40.0), (7.0, 8.0, 7.0)),  # mastoid air cells
    ((74.0, -5.0, -40.0), (4.0, 10.0, 4.0)),  # ear canals
    ((0.0, 55.0, -95.0), (20.0, 20.0, 8.0)),  # oral cavity
]
"""Air spaces (paranasal sinuses, nasal and oral cavity, mastoids, ear canals) as
(centre, semi-axes) in head-frame mm; those with x != 0 are mirrored to the left."""


TISSUE_M0_R2STAR_3T: dict[str, tuple[float, float]] = {
    "background": (0.0, 0.0),
    "csf": (1.0, 4.0),
    "ventricles": (1.0, 4.0),
    "gm": (0.85, 17.0),
    "wm": (0.7, 21.0),
    "brainstem": (0.72, 22.0),
    "caudate": (0.82, 22.0),
    "putamen": (0.82, 27.0),
    "globus_pallidus": (0.78, 40.0),
    "thalamus": (0.8, 21.0),
    "red_nucleus": (0.78, 35.0),
    "substantia_nigra": (0.78, 40.0),
    "dentate": (0.78, 35.0),
    "veins": (0.8, 45.0),
    "calcification": (0.4, 60.0),
    "haemorrhage": (0.7, 80.0),
    "skull": (0.05, 400.0),
    "soft_tissue": (0.8, 30.0),
    "air": (0.0, 0.0),
}
"""Relative proton density M0 and R2* (1/s) at 3 T per label: rounded, typical orders of
magnitude (R2* of iron-rich nuclei 30-40 s^-1, WM ~20, GM ~17, CSF a few), for a plausible
signal model rather than quantitative relaxometry. R2* is scaled linearly with B0."""


def tissue_parameters(labels: torch.Tensor, b0_tesla: float = 3.0):
    """M0 (a.u.) and R2* (1/s) maps, (X, Y, Z) each, for a head label map at ``b0_tesla``."""
    n = max(LABELS.values()) + 1
    m0 = torch.zeros(n, device=labels.device)
    r2 = torch.zeros(n, device=labels.device)
    for name, code in LABELS.items():
        m0[code], r2[code] = TISSUE_M0_R2STAR_3T[name]
    return m0[labels], r2[labels] * (float(b0_tesla) / 3.0)


INTRACRANIAL_LABELS = tuple(range(LABELS["csf"], LABELS["haemorrhage"] + 1))
"""Labels inside the cranial cavity (CSF, brain, nuclei, veins, lesions)."""
