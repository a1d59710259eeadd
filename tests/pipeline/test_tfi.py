"""Total field inversion (tfi): chi from the total field, without a background step.

The phantom is an ellipsoidal brain (40^3, 1 mm) with interior spheres (0.05-0.2 ppm) and
strong exterior sources: a -2 ppm skull shell, +9 ppm air around the head and an air block
below the brain (a sinus) two voxels from the mask. Its fields come from the dlqsm
DipoleOperator with padding, chi band-limited by a Gaussian (sigma 0.7 voxel, see
tests/pipeline/test_background.py for why). Errors: NRMSE of chi in the mask after removing
the mean (the reference), relative to the true chi's demeaned norm.
"""

import math

import pytest
import torch

from dlqsm.errors import InputError
from dlqsm.io.scan import Scan
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.fft import kspace_grid
from dlqsm.pipeline.background import remove_background
from dlqsm.pipeline.inversion import METHODS, TOTAL_FIELD_METHODS, invert, method_defaults
from dlqsm.pipeline.reconstruct import reconstruct, stages_for

N = 40
OBLIQUE = (0.3, 0.2, 0.93)


def _phantom(b0, n=N):
    """(total field, true chi inside the brain, brain mask, sinus-side rim mask), ppm."""
    c = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2] * 3
    x, y, z = torch.meshgrid(*c, indexing="ij")
    ax = torch.tensor([0.34, 0.4, 0.3]) * n
    r = ((x / ax[0]) ** 2 + (y / ax[1]) ** 2 + (z / ax[2]) ** 2).sqrt()
    mask = r <= 1
    g = torch.Generator().manual_seed(2)
    inner = torch.zeros(n, n, n)
    for _ in range(7):
        rad = 2 + 2 * float(torch.rand(1, generator=g))
        ctr = (torch.rand(3, generator=g) - 0.5) * 1.2 * ax
        dist = ((x - ctr[0]) ** 2 + (y - ctr[1]) ** 2 + (z - ctr[2]) ** 2).sqrt()
        inner[(dist <= rad) & mask] = 0.05 + 0.15 * float(torch.rand(1, generator=g))
    outer = torch.zeros(n, n, n)
    outer[(r > 1.2) & (r <= 1.35)] = -2.0
    outer[r > 1.35] = 9.0
    sinus = (x.abs() < 0.1 * n) & (y.abs() < 0.12 * n) & (z < -0.3 * n - 2) & ~mask
    outer[sinus] = 9.0
    op = DipoleOperator((n, n, n), (1, 1, 1), b0, padding=n // 4)
    k2 = sum(k ** 2 for k in kspace_grid(op.padded_shape))
    blur = torch.exp(-2 * math.pi ** 2 * 0.7 ** 2 * k2)
    total = op.apply_kspace(inner + outer, op.kernel * blur)
    chi = op.apply_kspace(inner, blur)
    near = mask & (z < -0.3 * n + 3) & (x.abs() < 0.2 * n) & (y.abs() < 0.2 * n)
    return total * mask, chi * mask, mask, near


def _nrmse(chi, truth, mask):
    a = chi[mask] - chi[mask].mean()
    b = truth[mask] - truth[mask].mean()
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=["axial", "oblique"])
def phantom(request):
    b0 = OBLIQUE if request.param == "oblique" else (0.0, 0.0, 1.0)
    return (*_phantom(b0), b0)


def test_registry():
    assert "tfi" in METHODS and TOTAL_FIELD_METHODS == {"tfi"}
    d = method_defaults("tfi")
    assert d["p_out"] == 30.0 and d["alpha"] > 0 and d["max_iter"] >= 1


def test_recovers_chi_under_a_large_background(phantom):
    """TFI from the total field (background ~25x the local field) beats PDF + TV, and its
    convergence is reported. Measured NRMSE 0.47 / 0.51 (axial / oblique) against PDF + TV's
    0.66 / 0.66."""
    total, chi, mask, _, b0 = phantom
    res = invert(total, mask, method="tfi", b0_dir=b0)
    err = _nrmse(res.chi, chi, mask)
    bfr = remove_background(total, mask, method="pdf", b0_dir=b0)
    two_step = invert(bfr.local_field, mask, method="tv", b0_dir=b0)
    err_pdf = _nrmse(two_step.chi, chi, mask)
    assert err < 0.55, err
    assert err < 0.85 * err_pdf, (err, err_pdf)
    info = res.info
    for key in ("iterations", "converged", "relative_change", "cg_iterations",
                "relative_residual", "data_residual", "background_ppm", "background_field"):
        assert key in info
    assert info["data_residual"] < 0.05
    assert info["background_ppm"] > 10 * float(chi[mask].std())
    assert res.chi.shape == total.shape and torch.all(res.chi[~mask] == 0)
    local = (total - info["background_field"]) * mask
    assert torch.isfinite(local).all()


def test_zero_weight_voxels_next_to_a_source(phantom):
    """Voxels the field-step check zeroes (here: the brain next to the sinus, and 5 % at
    random) neither break the solve nor leave the outside sources unbounded. Measured 0.50 /
    0.54 (axial / oblique), 0.03 above the unweighted result."""
    total, chi, mask, near, b0 = phantom
    g = torch.Generator().manual_seed(0)
    weight = (torch.rand(mask.shape, generator=g) > 0.05).float() * ~near
    assert int((weight[mask] == 0).sum()) > 0.07 * int(mask.sum())
    res = invert(total, mask, method="tfi", b0_dir=b0, weight=weight)
    assert torch.isfinite(res.chi).all()
    err = _nrmse(res.chi, chi, mask)
    assert err < 0.6, err
    ref = invert(total, mask, method="tfi", b0_dir=b0)
    assert err < _nrmse(ref.chi, chi, mask) + 0.08


def test_chain_routes_the_total_field_to_tfi():
    """``reconstruct(method="tfi")`` skips background removal (and says so), hands TFI the
    total field and reports its convergence; a local field is refused."""
    total, chi, mask, _ = _phantom((0.0, 0.0, 1.0), n=32)
    scan = Scan(total_field=total.numpy(), mask=mask.numpy())
    res = reconstruct(scan, method="tfi", progress=False,
                      stage_params={"inversion": {"max_iter": 2}})
    assert "bfr" not in res.parameters and res.info["bfr"]["method"] is None
    assert "skipped" in res.info["bfr"] and "bfr" not in res.timings
    inv = res.info["inversion"]
    assert inv["method"] == "tfi" and inv["iterations"] == 2 and "converged" in inv
    assert "background_field" not in inv and len(inv["cg_iterations"]) == 2
    assert res.local_field is not None and torch.isfinite(res.chimap).all()
    assert stages_for("raw", method="tfi") == ("mask", "unwrap", "echo_fit", "inversion")
    assert stages_for("total_field", method="tv") == ("bfr", "inversion")
    with pytest.raises(InputError, match="needs the total field"):
        reconstruct(Scan(local_field=total.numpy(), mask=mask.numpy()), method="tfi",
                    progress=False)


def test_evaluate_refuses_tfi_on_local_fields():
    from dlqsm.evaluation.methods import parse_method

    with pytest.raises(InputError, match="total field"):
        parse_method("tfi")
