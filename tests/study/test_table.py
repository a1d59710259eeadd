"""The study table: values against a direct numpy computation, references, participants,
FreeSurfer numbering with sides, the figure, and overwrite protection."""

import nibabel as nib
import numpy as np
import pytest

from dlqsm.cli.main import main
from dlqsm.simulation.anatomy import DGM_LABELS, LABELS
from dlqsm.study.labels import NUCLEI
from dlqsm.study.table import read_study

from .conftest import FAST, GROUPS, _save

TOL = dict(rtol=1e-6, atol=1e-9)


def _maps(deriv, key):
    sub, ses = key.split("_")
    anat = deriv / sub / ses / "anat"
    chi = nib.load(str(anat / f"{key}_Chimap.nii.gz")).get_fdata()
    mask = nib.load(str(anat / f"{key}_desc-brain_mask.nii.gz")).get_fdata() > 0.5
    return chi, mask


def _expect(chi, sel):
    vals = chi[sel]
    return dict(voxels=vals.size, mean=vals.mean(), median=np.median(vals), sd=vals.std(ddof=1))


def _check_row(row, exp, ref):
    assert int(row["voxels"]) == exp["voxels"] > 1
    for col, key in (("mean_ppm", "mean"), ("median_ppm", "median"), ("sd_ppm", "sd")):
        np.testing.assert_allclose(float(row[col]), exp[key], **TOL)
    np.testing.assert_allclose(float(row["mean_rel_ppm"]), exp["mean"] - ref, **TOL)
    np.testing.assert_allclose(float(row["median_rel_ppm"]), exp["median"] - ref, **TOL)


def test_study_values_equal_numpy(derived, cohort, tmp_path):
    root, deriv, _ = derived
    _, labels = cohort
    out = tmp_path / "study"
    # labels: the phantom's, stored twice as fine and flipped (resampled through the affines)
    assert (
        main(
            [
                "study",
                str(deriv),
                "--labels",
                str(root / "derivatives" / "phantom"),
                "-o",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    rows = read_study(out / "chi_regions.csv")
    assert len({r["run"] for r in rows}) == 6
    for r in rows:
        chi, mask = _maps(deriv, r["run"])
        lab = labels[r["run"]]
        ref = chi[mask].mean()
        csf = chi[np.isin(lab, [LABELS["csf"], LABELS["ventricles"]]) & mask].mean()
        assert r["side"] == "bilateral" and r["reference"] == "brain"  # phantom: no sides
        _check_row(r, _expect(chi, (lab == DGM_LABELS[r["region"]]) & mask), ref)
        np.testing.assert_allclose(float(r["ref_brain_ppm"]), ref, **TOL)
        np.testing.assert_allclose(float(r["ref_csf_ppm"]), csf, **TOL)
        # participants.tsv joined (found through the derivative's DatasetLinks)
        sub = r["participant_id"].removeprefix("sub-")
        assert r["group"] == GROUPS[sub] and r["age"]
        assert r["session_id"] == r["run"].split("_")[1]
    assert [r["region"] for r in rows if r["run"] == "sub-01_ses-1"] == list(NUCLEI)
    png = (out / "chi_regions.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_csf_reference_and_template(derived, cohort, tmp_path):
    root, deriv, _ = derived
    _, labels = cohort
    tmpl = str(root / "derivatives/phantom/sub-{sub}/ses-{ses}/anat/{key}_desc-phantom_dseg.nii.gz")
    out = tmp_path / "csf"
    assert (
        main(
            [
                "study",
                str(deriv),
                "--labels",
                tmpl,
                "--reference",
                "csf",
                "-o",
                str(out),
                "--participants",
                str(root / "participants.tsv"),
                "-q",
            ]
        )
        == 0
    )
    row = next(
        r
        for r in read_study(out / "chi_regions.csv")
        if r["run"] == "sub-02_ses-2" and r["region"] == "globus_pallidus"
    )
    chi, mask = _maps(deriv, "sub-02_ses-2")
    lab = labels["sub-02_ses-2"]
    csf = chi[np.isin(lab, [LABELS["csf"], LABELS["ventricles"]]) & mask].mean()
    assert row["reference"] == "csf"
    _check_row(row, _expect(chi, (lab == LABELS["globus_pallidus"]) & mask), csf)
    # a second call refuses to overwrite; --force replaces
    assert main(["study", str(deriv), "--labels", tmpl, "-o", str(out), "-q"]) == 2
    assert main(["study", str(deriv), "--labels", tmpl, "-o", str(out), "-q", "--force"]) == 0


def test_freesurfer_numbers_with_sides(derived, cohort, tmp_path):
    """An aseg-numbered segmentation (no name table): left/right from the numbers."""
    _, deriv, _ = derived
    _, labels = cohort
    key = "sub-03_ses-1"
    lab = labels[key]
    aseg = np.zeros_like(lab)
    left = np.zeros(lab.shape, bool)
    left[: lab.shape[0] // 2] = True  # any split will do: the test knows which is which
    for name, (lnum, rnum) in {
        "thalamus": (10, 49),
        "caudate": (11, 50),
        "putamen": (12, 51),
        "globus_pallidus": (13, 52),
    }.items():
        aseg[(lab == LABELS[name]) & left] = lnum
        aseg[(lab == LABELS[name]) & ~left] = rnum
    aseg[lab == LABELS["ventricles"]] = 4
    affine = nib.load(str(deriv / "sub-03/ses-1/anat" / f"{key}_Chimap.nii.gz")).affine
    seg = tmp_path / "fs" / "sub-03" / "aseg.nii.gz"
    _save(seg, aseg.astype(np.int32), affine)
    out = tmp_path / "fs_study"
    code = main(
        [
            "study",
            str(deriv),
            "--labels",
            str(tmp_path / "fs/sub-{sub}/aseg.nii.gz"),
            "-o",
            str(out),
            "-q",
        ]
    )
    assert code == 1  # sub-01/02 have no aseg: reported, the others measured
    rows = [r for r in read_study(out / "chi_regions.csv") if r["run"] == key]
    assert {r["run"] for r in read_study(out / "chi_regions.csv")} == {key, "sub-03_ses-2"}
    assert [(r["region"], r["side"]) for r in rows[:3]] == [
        ("thalamus", "left"),
        ("thalamus", "right"),
        ("thalamus", "bilateral"),
    ]
    assert {r["region"] for r in rows} == {"thalamus", "caudate", "putamen", "globus_pallidus"}
    chi, mask = _maps(deriv, key)
    ref = chi[mask].mean()
    for r in rows:
        sel = lab == LABELS[r["region"]]
        sel = sel & (left if r["side"] == "left" else ~left if r["side"] == "right" else True)
        _check_row(r, _expect(chi, sel & mask), ref)
        assert r["label_names"].startswith("FreeSurfer aseg")
        assert r["ref_csf_ppm"]


def test_study_errors(derived, tmp_path, capsys):
    _, deriv, _ = derived
    assert main(["study", str(tmp_path), "--labels", str(tmp_path), "-q"]) == 2
    assert "no *_Chimap.nii.gz runs found" in capsys.readouterr().err
    names = tmp_path / "names.tsv"
    names.write_text("index\tname\n1\tcortex\n")
    seg = tmp_path / "seg.nii.gz"
    _save(seg, np.ones((4, 4, 4), np.int16), np.eye(4))
    assert (
        main(
            [
                "study",
                str(deriv),
                "--labels",
                str(seg),
                "--label-names",
                str(names),
                "-o",
                str(tmp_path / "o"),
                "-q",
            ]
        )
        == 2
    )
    assert "no deep grey nucleus among the label names" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--help"])
def test_help(flag, capsys):
    with pytest.raises(SystemExit):
        main(["study", flag])
    assert "FreeSurfer aseg" in capsys.readouterr().out


def test_dataset_mode_with_labels_writes_the_study(derived):
    """``--labels`` on a dataset-mode call: runs skipped (done), then the table over them."""
    root, deriv, _ = derived
    seg = str(root / "derivatives" / "phantom")
    argv = ["reconstruct", str(root), "-o", str(deriv), "-q", *FAST, "--labels", seg]
    assert main(argv) == 0
    rows = read_study(deriv / "study" / "chi_regions.csv")
    assert len({r["run"] for r in rows}) == 6 and {r["group"] for r in rows} == {
        "patient",
        "control",
    }
    assert (deriv / "study" / "chi_regions.png").exists()
