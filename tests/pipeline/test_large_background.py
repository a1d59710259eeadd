"""Issue 10's large-background case: a true *unshimmed* total field through ``reconstruct``.

A small fine-grid qsm-forward head (48x56x48 at 3 mm, built at 1.5 mm and brought to 3 mm by
qsm-forward; 3 T, axial) gives its true total field twice: unshimmed (air, bone and the rest of
the head, ~15x the local field's spread inside the mask) and with qsm-forward's 2nd-order shim
fit removed (~8x). ``dlqsm reconstruct --total-field`` (default PDF -> TV) must give the same
quality from both (issue 10: within 10 points of the shimmed case) and report the background
stage's convergence in record.json.

Measured (qsm-ci scorer, 2026-11-29): NRMSE 111.3 % unshimmed, 110.6 % shimmed with the map
detrended (112.0 / 111.7 before; local-field error 0.786 / 0.784 relative); the true local
field -> TV gives 63.7 %: on a 3 mm head the
background step, not the shim, is what costs. Checked by hand that the test fails when the
background is not removed: with ``bfr.max_iter=2`` the two give 260.3 and 209.3 %.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("qsm_forward")
pytest.importorskip("qsm_ci.qsm_eval")

from dlqsm.cli.main import main  # noqa: E402
from dlqsm.evaluation.independent import CaseSpec, generate_case, score_qsmci  # noqa: E402
from dlqsm.io.nifti import load_nifti  # noqa: E402

SPEC = dict(kind="fine", field_strength=3.0, voxel_size=3.0, shape=(48, 56, 48), seed=1_000_000)
SHIMMED = "bids/derivatives/qsm-forward/sub-1/anat/sub-1_desc-shimmed_fieldmap.nii"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return generate_case(CaseSpec(**SPEC), cache_dir=tmp_path_factory.mktemp("qsmforward"))


def _run(case, field, out):
    rc = main(
        [
            "reconstruct",
            "--total-field",
            str(field),
            "--mask",
            str(case.path / "mask.nii.gz"),
            "-o",
            str(out),
            "-q",
        ]
    )
    assert rc == 0
    record = json.loads((out / "record.json").read_text())
    return score_qsmci(out / "chimap.nii.gz", case.path)["nrmse"], record


@pytest.mark.slow
def test_unshimmed_total_field_within_10_points_of_shimmed(case, tmp_path):
    mask = load_nifti(case.path / "mask.nii.gz", ndim=3).data > 0.5
    spread = {
        name: float(np.std(load_nifti(case.path / f, ndim=3).data[mask]))
        for name, f in (
            ("unshimmed", "totalfield.nii.gz"),
            ("shimmed", SHIMMED),
            ("local", "localfield.nii.gz"),
        )
    }
    assert spread["unshimmed"] > 10 * spread["local"], spread  # a large background
    assert spread["unshimmed"] > 1.5 * spread["shimmed"], spread

    nrmse_unshimmed, record = _run(case, case.path / "totalfield.nii.gz", tmp_path / "u")
    nrmse_shimmed, _ = _run(case, case.path / SHIMMED, tmp_path / "s")
    assert nrmse_unshimmed < 125.0, nrmse_unshimmed  # measured 111.3
    assert nrmse_unshimmed <= nrmse_shimmed + 10.0, (nrmse_unshimmed, nrmse_shimmed)

    bfr = record["stage_info"]["bfr"]
    params = record["parameters"]["bfr"]
    assert bfr["method"] == params["method"] == "pdf"
    assert isinstance(bfr["converged"], bool)
    assert 1 <= bfr["iterations"] <= params["max_iter"]
    assert math.isfinite(bfr["residual"]) and 0 < bfr["residual"] < 0.05
    assert bfr["converged"] == (bfr["residual"] <= params["tol"])
    # the part of the field left as local field: measured 0.062 (0.254 with bfr.max_iter=2);
    # the true local field is ~0.066 of the total field's spread here
    assert 0.02 < bfr["data_residual"] < 0.1, bfr["data_residual"]
    assert record["timings_s"]["bfr"] > 0
