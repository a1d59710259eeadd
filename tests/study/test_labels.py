"""Segmentations for the study table: label names, finding files, resampling by affines."""

import math

import numpy as np
import pytest

from dlqsm.errors import InputError
from dlqsm.physics.geometry import rotation_matrix
from dlqsm.study.labels import (
    ASEG_NAMES,
    find_labels,
    read_label_names,
    region_of,
    regions_of_table,
    resample_labels,
)

from .conftest import _save, fine_flipped


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Left-Thalamus", ("thalamus", "left")),
        ("Left-Thalamus-Proper", ("thalamus", "left")),  # FreeSurfer < 7
        ("Right-Caudate", ("caudate", "right")),
        ("Left-Putamen", ("putamen", "left")),
        ("Right-Pallidum", ("globus_pallidus", "right")),
        ("L_Thal", ("thalamus", "left")),  # FSL FIRST structure names
        ("R_Puta", ("putamen", "right")),
        ("R_Pall", ("globus_pallidus", "right")),
        ("substantia_nigra", ("substantia_nigra", "")),  # dlqsm phantom names
        ("red_nucleus", ("red_nucleus", "")),
        ("dentate", ("dentate", "")),
        ("SN_left", ("substantia_nigra", "left")),
        ("GPe", ("globus_pallidus", "")),
        ("LeftDentateNucleus", ("dentate", "left")),
        ("Left-Lateral-Ventricle", ("csf", "left")),
        ("Left-Inf-Lat-Vent", ("csf", "left")),
        ("3rd-Ventricle", ("csf", "")),
        ("ventricles", ("csf", "")),
        ("Left-VentralDC", None),
        ("Left-Cerebral-White-Matter", None),
        ("WM-hypointensities", None),
        ("Left-choroid-plexus", None),
        ("STN", None),
        ("Brain-Stem", None),
        ("gm", None),
    ],
)
def test_region_names(name, expected):
    assert region_of(name) == expected


def test_aseg_and_first_numbers():
    regions = regions_of_table(ASEG_NAMES)
    assert regions[("thalamus", "left")] == [10] and regions[("thalamus", "right")] == [49]
    assert regions[("caudate", "left")] == [11] and regions[("caudate", "right")] == [50]
    assert regions[("putamen", "left")] == [12] and regions[("putamen", "right")] == [51]
    assert regions[("globus_pallidus", "left")] == [13]
    assert regions[("globus_pallidus", "right")] == [52]
    assert sorted(regions[("csf", "")]) == [14, 15, 24]
    assert sorted(regions[("csf", "left")]) == [4, 5]


def test_read_label_names(tmp_path):
    tsv = tmp_path / "seg_dseg.tsv"
    tsv.write_text("index\tname\tabbreviation\n1\tLeft-Thalamus\tLT\n7\tred_nucleus\tRN\n")
    assert read_label_names(tsv) == {1: "Left-Thalamus", 7: "red_nucleus"}
    lut = tmp_path / "lut.txt"
    lut.write_text(
        "# FreeSurfer colour table\n10  Left-Thalamus  0 118 14 0\n49 Right-Thalamus 0 118 14 0\n\n"
    )
    assert read_label_names(lut) == {10: "Left-Thalamus", 49: "Right-Thalamus"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tlabel\n1\tx\n")
    with pytest.raises(InputError, match="'index' and 'name'"):
        read_label_names(bad)
    bad.write_text("one\n")
    with pytest.raises(InputError, match="not 'index name"):
        read_label_names(bad)


def _oblique_affine():
    a = np.eye(4)
    a[:3, :3] = rotation_matrix([1, 2, 0.5], math.radians(17)) @ np.diag([1.1, 0.9, 1.6])
    a[:3, 3] = [-12.0, 7.5, 3.25]
    return a


def test_resample_through_affines_is_exact():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 60, (11, 9, 13)).astype(np.int16)
    aff = _oblique_affine()
    # the same labels stored twice as fine and flipped: every scan voxel finds its own label
    fine, faff = fine_flipped(labels, aff)
    np.testing.assert_array_equal(resample_labels(fine, faff, labels.shape, aff, chunk=4), labels)
    # axes permuted in storage (z, x, y) with the matching affine
    perm = np.transpose(labels, (2, 0, 1))
    paff = aff[:, [2, 0, 1, 3]]
    np.testing.assert_array_equal(resample_labels(perm, paff, labels.shape, aff), labels)
    # a label image covering only part of the scan, shifted by whole voxels: 0 elsewhere
    part = labels[3:, :, 2:]
    shift = np.eye(4)
    shift[:3, 3] = [3, 0, 2]
    got = resample_labels(part, aff @ shift, labels.shape, aff)
    want = np.zeros_like(labels)
    want[3:, :, 2:] = part
    np.testing.assert_array_equal(got, want)


def test_find_labels(tmp_path):
    seg = tmp_path / "seg"
    a = seg / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_desc-aseg_dseg.nii.gz"
    _save(a, np.zeros((2, 2, 2), np.int16), np.eye(4))
    assert find_labels(str(seg), "sub-01_ses-1") == a
    tmpl = str(seg / "sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_desc-aseg_dseg.nii.gz")
    assert find_labels(tmpl, "sub-01_ses-1") == a
    assert find_labels(str(a), "sub-09") == a  # one file for every run
    with pytest.raises(InputError, match=r"uses \{acq\}"):
        find_labels(str(seg / "sub-{sub}_acq-{acq}.nii.gz"), "sub-01_ses-1")
    with pytest.raises(InputError, match="no label image for run sub-02_ses-1"):
        find_labels(tmpl, "sub-02_ses-1")
    with pytest.raises(InputError, match="no \\*_dseg"):
        find_labels(str(seg), "sub-01_ses-2")
    _save(
        a.with_name("sub-01_ses-1_desc-first_dseg.nii.gz"), np.zeros((2, 2, 2), np.int16), np.eye(4)
    )
    with pytest.raises(InputError, match="2 segmentations match"):
        find_labels(str(seg), "sub-01_ses-1")
    # a segmentation with another run entity does not match run-2
    b = seg / "sub-02" / "anat" / "sub-02_run-1_dseg.nii.gz"
    _save(b, np.zeros((2, 2, 2), np.int16), np.eye(4))
    assert find_labels(str(seg), "sub-02_run-1") == b
    # a subject-level segmentation serves every session (the session's own one wins)
    assert find_labels(str(seg), "sub-02_ses-3_run-1") == b
    with pytest.raises(InputError, match="no \\*_dseg"):
        find_labels(str(seg), "sub-02_run-2")
