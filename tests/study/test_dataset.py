"""Dataset mode of ``dlqsm reconstruct``/``infer``: discovery, derivative names, resume, jobs,
failures, and the BIDS validator on the result."""

import argparse
import json
import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from dlqsm.cli.main import main
from dlqsm.errors import InputError
from dlqsm.io.bids import discover_megre_runs
from dlqsm.study.dataset import is_dataset_mode, read_summary

from .conftest import FAST, SESSIONS, SUBJECTS, copy_dataset

KEYS = [f"sub-{s}_ses-{e}" for s in SUBJECTS for e in SESSIONS]


def _anat(deriv, key):
    sub, ses = key.split("_")
    return deriv / sub / ses / "anat"


def _chi(deriv, key):
    return nib.load(str(_anat(deriv, key) / f"{key}_Chimap.nii.gz")).get_fdata()


def _recon(root, out, *extra):
    """``dlqsm reconstruct ROOT -o OUT -q`` with the fast test methods; the exit code."""
    return main(["reconstruct", str(root), "-o", str(out), "-q", *FAST, *extra])


def _latest_log(deriv, command="reconstruct"):
    logs = sorted((deriv / "logs").glob(f"dlqsm-{command}_*_runs.tsv"))
    return {r["run"]: r for r in read_summary(logs[-1])}


def test_discovery_and_filters(cohort):
    root, _ = cohort
    runs, bad = discover_megre_runs(root)
    assert [r.key for r in runs] == KEYS and bad == []
    assert runs[0].entities == {"sub": "01", "ses": "1"} and len(runs[0].echoes) == 4
    runs, _ = discover_megre_runs(root, subjects=["sub-01", "03"], sessions=["ses-2"])
    assert [r.key for r in runs] == ["sub-01_ses-2", "sub-03_ses-2"]
    assert discover_megre_runs(root, subjects=["04"])[0] == []


def _ns(**kw):
    base = dict(
        input=None,
        subject=None,
        select=None,
        phase=None,
        magnitude=None,
        local_field=None,
        total_field=None,
        mask=None,
        participant_label=None,
        session=None,
        jobs=None,
        labels=None,
    )
    return argparse.Namespace(**{**base, **kw})


def test_dataset_mode_is_chosen_as_documented(cohort, tmp_path):
    root, _ = cohort
    assert is_dataset_mode(_ns(input=str(root)))  # several runs, none picked
    assert not is_dataset_mode(_ns(input=str(root), subject="01", select="ses-1"))
    assert not is_dataset_mode(_ns(input=str(root / "sub-01" / "ses-1")))  # one run
    assert is_dataset_mode(_ns(input=str(root / "sub-01" / "ses-1"), jobs=1))
    assert not is_dataset_mode(_ns(input=str(root), phase=["p.nii"]))
    with pytest.raises(InputError, match="cannot be combined with --subject"):
        is_dataset_mode(_ns(input=str(root), participant_label=["01"], subject="01"))
    with pytest.raises(InputError, match="needs a BIDS dataset"):
        is_dataset_mode(_ns(input=str(tmp_path), jobs=2))


def test_derivatives_tree(derived):
    root, deriv, code = derived
    assert code == 0
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    gen = desc["GeneratedBy"][0]
    assert gen["Name"] == "dlqsm" and gen["Version"] and "tkd" in gen["Description"]
    for key in KEYS:
        anat = _anat(deriv, key)
        names = {p.name for p in anat.iterdir()}
        for suffix in (
            "Chimap.nii.gz",
            "Chimap.json",
            "desc-brain_mask.nii.gz",
            "desc-brain_mask.json",
            "localfield.nii.gz",
            "totalfield.nii.gz",
        ):
            assert f"{key}_{suffix}" in names, (key, suffix, names)
        assert not [n for n in names if n.startswith(".")]  # no staging left behind
        text = (anat / f"{key}_Chimap.json").read_text()
        assert ".dlqsm-staging" not in text  # the record names the derivative folder
        side = json.loads(text)
        assert side["Units"] == "ppm"
        assert (
            side["Sources"][0] == f"bids:raw:{key.replace('_', '/')}/anat/{key}_echo-1_"
            "part-phase_MEGRE.nii.gz"
        )
        assert side["DlqsmSettings"]["method"] == "tkd" and side["methods"]["inversion"] == "tkd"
        img = nib.load(str(anat / f"{key}_Chimap.nii.gz"))
        raw = nib.load(
            str(root / key.replace("_", "/") / "anat" / f"{key}_echo-1_part-phase_MEGRE.nii.gz")
        )
        np.testing.assert_allclose(img.affine, raw.affine)
    log = _latest_log(deriv)
    assert sorted(log) == KEYS and {r["status"] for r in log.values()} == {"done"}
    assert all(float(r["seconds"]) > 0 for r in log.values())


def test_single_run_call_keeps_flat_names_and_equals_dataset_mode(derived, tmp_path):
    root, deriv, _ = derived
    out = tmp_path / "one"
    assert _recon(root, str(out), "--subject", "01", "--select", "ses-2") == 0
    assert (out / "chimap.nii.gz").exists() and (out / "record.json").exists()
    assert not (out / "dataset_description.json").exists()
    chi = nib.load(str(out / "chimap.nii.gz")).get_fdata()
    np.testing.assert_allclose(chi, _chi(deriv, "sub-01_ses-2"), rtol=0, atol=1e-6)


def _snapshot(folder):
    return {
        p: (p.stat().st_mtime_ns, p.stat().st_size)
        for p in folder.rglob("*")
        if p.is_file() and "logs" not in p.parts
    }


def test_resume_skips_and_touches_nothing(derived):
    root, deriv, _ = derived
    before = _snapshot(deriv)
    assert _recon(root, deriv) == 0
    assert _snapshot(deriv) == before
    log = _latest_log(deriv)
    assert sorted(log) == KEYS and {r["status"] for r in log.values()} == {"skipped"}


def test_resume_refuses_other_settings(derived, capsys):
    root, deriv, _ = derived
    before = _snapshot(deriv)
    assert _recon(root, deriv, "--method", "tsvd") == 2
    err = capsys.readouterr().err
    assert "made with other settings" in err and "method" in err and "--force" in err
    assert _snapshot(deriv) == before


def test_jobs_2_equals_jobs_1(derived, tmp_path):
    root, deriv, _ = derived
    out = tmp_path / "par"
    assert _recon(root, str(out), "--participant-label", "01", "--jobs", "2") == 0
    log = _latest_log(out)
    assert sorted(log) == ["sub-01_ses-1", "sub-01_ses-2"]
    for key in log:
        np.testing.assert_allclose(_chi(out, key), _chi(deriv, key), rtol=0, atol=1e-6)
        m1 = nib.load(str(_anat(out, key) / f"{key}_desc-brain_mask.nii.gz")).get_fdata()
        m0 = nib.load(str(_anat(deriv, key) / f"{key}_desc-brain_mask.nii.gz")).get_fdata()
        np.testing.assert_array_equal(m1, m0)
    assert not (out / "sub-02").exists()


def test_failing_runs_do_not_stop_the_others(cohort, tmp_path, capsys):
    root, _ = cohort
    bids = copy_dataset(root, tmp_path / "bids")
    bad = bids / "sub-01/ses-2/anat/sub-01_ses-2_echo-2_part-phase_MEGRE.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated download
    (bids / "sub-02/ses-2/anat/sub-02_ses-2_echo-3_part-mag_MEGRE.nii.gz").unlink()
    out = tmp_path / "deriv"
    assert _recon(bids, out, "--participant-label", "01", "02") == 1
    log = _latest_log(out)
    assert {k: r["status"] for k, r in log.items()} == {
        "sub-01_ses-1": "done",
        "sub-01_ses-2": "failed",
        "sub-02_ses-1": "done",
        "sub-02_ses-2": "failed",
    }
    assert bad.name in log["sub-01_ses-2"]["error"]
    assert "echo 3 has a phase image but no magnitude image" in log["sub-02_ses-2"]["error"]
    err = capsys.readouterr().err
    assert "sub-01_ses-2 failed" in err and "2 failed" in err
    assert not (out / "sub-01/ses-2/anat/sub-01_ses-2_Chimap.nii.gz").exists()
    assert not [p for p in out.rglob(".dlqsm-staging-*")]
    # the next call retries only what failed
    assert _recon(bids, out, "--participant-label", "01", "02") == 1
    log = _latest_log(out)
    assert log["sub-01_ses-1"]["status"] == "skipped"
    assert log["sub-01_ses-2"]["status"] == "failed"


def test_infer_dataset_mode(cohort, tmp_path):
    from tests.cli.test_infer_cli import save_tiny_checkpoint

    root, _ = cohort
    save_tiny_checkpoint(tmp_path / "tiny.ckpt", voxel_mm=3.5)
    out = tmp_path / "inf"
    assert (
        main(
            [
                "infer",
                str(root),
                "-o",
                str(out),
                "--participant-label",
                "03",
                "--session",
                "1",
                "--checkpoint",
                str(tmp_path / "tiny.ckpt"),
                "--bfr",
                "vsharp",
                "--unwrap",
                "laplacian",
                "-q",
            ]
        )
        == 0
    )
    anat = _anat(out, "sub-03_ses-1")
    side = json.loads((anat / "sub-03_ses-1_Chimap.json").read_text())
    assert side["DlqsmSettings"]["command"] == "infer" and side["model"]
    assert (anat / "sub-03_ses-1_desc-brain_mask.nii.gz").exists()
    desc = json.loads((out / "dataset_description.json").read_text())
    assert "tiny.ckpt" in desc["GeneratedBy"][0]["Description"]
    assert _latest_log(out, "infer")["sub-03_ses-1"]["status"] == "done"


def test_output_folder_checks(cohort, tmp_path, capsys):
    root, _ = cohort
    assert _recon(root, root) == 2
    assert "is the input dataset" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset_description.json").write_text('{"Name": "x", "DatasetType": "raw"}')
    assert _recon(root, other) == 2
    assert "dlqsm did not write" in capsys.readouterr().err
    assert _recon(root, tmp_path / "d", "--participant-label", "07") == 2
    assert "no *_MEGRE runs match (participants 07)" in capsys.readouterr().err


def test_bids_validator_accepts_the_derivatives(derived):
    exe = shutil.which("bids-validator")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "bids-validator is not installed (CI installs it: npm install -g "
                "bids-validator@1.15)"
            )
        pytest.skip("bids-validator (npm, 1.15) is not installed here")
    _, deriv, _ = derived
    res = subprocess.run([exe, "--json", str(deriv)], capture_output=True, text=True, timeout=300)
    report = json.loads(res.stdout)
    assert report["issues"]["errors"] == [], report["issues"]["errors"]
    assert "Chimap" in report["summary"]["dataTypes"]  # the maps were validated, not ignored
    assert report["summary"]["subjects"] == list(SUBJECTS)
