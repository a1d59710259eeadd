"""Data consistency at inference (dlqsm.inference.consistency, Predictor, dlqsm infer)."""

import json

import numpy as np
import pytest
import torch

from dlqsm.errors import InputError
from dlqsm.inference import Predictor
from dlqsm.inference.consistency import DC_METHODS, data_consistency, field_residual
from dlqsm.physics.dipole import DipoleOperator

SHAPE = (24, 26, 22)
VOX = (1.0, 1.0, 1.5)
B0 = (0.2, 0.0, 0.98)


@pytest.fixture(scope="module")
def phantom():
    idx = torch.stack(
        torch.meshgrid(*[torch.arange(n).float() - (n - 1) / 2 for n in SHAPE], indexing="ij")
    )
    r = torch.sqrt((idx**2).sum(0))
    mask = r < 10
    chi = torch.zeros(SHAPE)
    chi[torch.sqrt(((idx - torch.tensor([3.0, 0, 0]).view(3, 1, 1, 1)) ** 2).sum(0)) < 3] = 0.1
    chi[torch.sqrt(((idx + torch.tensor([0, 4.0, 2]).view(3, 1, 1, 1)) ** 2).sum(0)) < 2] = -0.05
    chi = (chi - chi[mask].mean()) * mask
    op = DipoleOperator(SHAPE, VOX, B0)
    field = mask * op.forward(mask * chi)
    return chi, field, mask


def _err(x, ref, mask):
    return float(torch.linalg.vector_norm((x - ref)[mask]) / torch.linalg.vector_norm(ref[mask]))


@pytest.mark.parametrize("method", ["l2", "tv"])
def test_dc_pulls_a_wrong_estimate_towards_the_data(phantom, method):
    chi, field, mask = phantom
    start = 0.5 * chi  # a network that underestimates by half
    res0 = field_residual(start, field, mask, voxel_size=VOX, b0_dir=B0)
    out, info = data_consistency(
        start,
        field,
        mask,
        voxel_size=VOX,
        b0_dir=B0,
        method=method,
        iterations=15,
        **({"lam": 1e-3} if method == "l2" else {}),
    )
    assert info["residual_before"] == pytest.approx(
        float(res0.norm() / (field * mask).norm()), rel=1e-4
    )
    assert info["residual_after"] < 0.5 * info["residual_before"]
    assert _err(out, chi, mask) < 0.7 * _err(start, chi, mask)
    assert torch.all(out[~mask] == 0) and abs(float(out[mask].mean())) < 1e-6


def test_more_l2_iterations_fit_the_field_better(phantom):
    chi, field, mask = phantom
    start = torch.zeros_like(chi)
    res = [
        data_consistency(
            start, field, mask, voxel_size=VOX, b0_dir=B0, method="l2", iterations=n, lam=0.0
        )[1]["residual_after"]
        for n in (1, 3, 10)
    ]
    assert res[0] > res[1] > res[2]


def test_the_true_chi_is_a_fixed_point(phantom):
    chi, field, mask = phantom
    for method in ("l2", "tv"):
        out, info = data_consistency(
            chi, field, mask, voxel_size=VOX, b0_dir=B0, method=method, iterations=5
        )
        assert info["residual_before"] < 1e-5
        assert _err(out, chi, mask) < 1e-3


def test_none_and_bad_arguments(phantom):
    chi, field, mask = phantom
    out, info = data_consistency(chi, field, mask, voxel_size=VOX, b0_dir=B0, method="none")
    assert out is chi and info["method"] == "none"
    with pytest.raises(InputError, match="unknown data-consistency"):
        data_consistency(chi, field, mask, voxel_size=VOX, b0_dir=B0, method="fine")
    with pytest.raises(InputError, match="iterations"):
        data_consistency(chi, field, mask, voxel_size=VOX, b0_dir=B0, method="l2", iterations=0)


def _tiny_predictor(**kwargs):
    """An untrained tiny network (the timing and the weights do not matter here)."""
    from dlqsm.models import build_from_config

    cfg = {
        "_target_": "dlqsm.models.NormalizedNet",
        "pad_multiple": 2,
        "backbone": {
            "_target_": "monai.networks.nets.UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 1,
            "channels": [4, 8],
            "strides": [2],
            "num_res_units": 0,
        },
    }
    net = build_from_config(cfg)
    meta = {"input_normalization": net.input_normalization()}
    return Predictor.from_module(net, meta, device="cpu", **kwargs)


def test_predictor_applies_and_records_data_consistency(phantom):
    chi, field, mask = phantom
    plain = _tiny_predictor().run(field, mask, voxel_size=VOX, b0_dir=B0)
    assert plain.info["data_consistency"] == {"method": "none"}
    pred = _tiny_predictor(data_consistency="l2", dc_iters=8, dc_params={"lam": 1e-3}).run(
        field, mask, voxel_size=VOX, b0_dir=B0
    )
    dc = pred.info["data_consistency"]
    assert dc["method"] == "l2" and dc["iterations"] == 8 and dc["params"]["lam"] == 1e-3
    assert dc["residual_after"] < 0.5 * dc["residual_before"]
    assert _err(pred.chi, chi, mask) < _err(plain.chi, chi, mask)
    assert pred.info["timings_s"]["data_consistency"] > 0
    with pytest.raises(InputError):
        _tiny_predictor(data_consistency="bogus")


def test_infer_cli_flag(tmp_path, phantom):
    import nibabel as nib

    from dlqsm.cli.main import build_parser, main
    from tests.cli.test_infer_cli import save_tiny_checkpoint

    chi, field, mask = phantom
    aff = np.diag([*VOX, 1.0])
    nib.save(nib.Nifti1Image(field.numpy(), aff), str(tmp_path / "lf.nii.gz"))
    nib.save(nib.Nifti1Image(mask.numpy().astype(np.uint8), aff), str(tmp_path / "m.nii.gz"))
    save_tiny_checkpoint(tmp_path / "tiny.ckpt")
    out = tmp_path / "out"
    assert (
        main(
            [
                "infer",
                "--local-field",
                str(tmp_path / "lf.nii.gz"),
                "--mask",
                str(tmp_path / "m.nii.gz"),
                "-o",
                str(out),
                "--checkpoint",
                str(tmp_path / "tiny.ckpt"),
                "--device",
                "cpu",
                "-q",
                "--data-consistency",
                "tv",
                "--dc-iters",
                "3",
            ]
        )
        == 0
    )
    rec = json.loads((out / "record.json").read_text())
    assert rec["inference"]["data_consistency"]["method"] == "tv"
    assert rec["inference"]["data_consistency"]["iterations"] == 3
    assert rec["timings_s"]["data_consistency"] > 0
    # The parser offers exactly the library's methods.
    parser = build_parser()
    sub = next(a for a in parser._actions if getattr(a, "choices", None) and "infer" in a.choices)
    flag = next(
        a for a in sub.choices["infer"]._actions if "--data-consistency" in a.option_strings
    )
    assert tuple(flag.choices) == DC_METHODS
