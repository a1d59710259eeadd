"""Head phantom: anatomy present, values in the documented ranges, masks, scaling, cases."""

import numpy as np
import pytest
import torch

from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.geometry import b0_dir_from_affine, voxel_size_from_affine
from dlqsm.physics.units import ppm_to_phase
from dlqsm.simulation.head import (
    AIR_PPM,
    CHI_RANGES,
    DGM_LABELS,
    LABELS,
    head_phantom,
    simulate_head_case,
)
from dlqsm.simulation.signal import wrap_phase


@pytest.fixture(scope="module")
def head():
    return head_phantom((72, 88, 80), (1.5, 1.5, 1.5), seed=4, lesion_prob=1.0)


def test_labels_present_and_values_in_range(head):
    present = set(torch.unique(head.labels).tolist())
    required = set(LABELS.values()) - {LABELS["calcification"], LABELS["haemorrhage"]}
    assert required <= present, {k for k, v in LABELS.items() if v in required - present}
    assert head.has_lesions and present & {LABELS["calcification"], LABELS["haemorrhage"]}
    for name, code in LABELS.items():
        lo, hi = CHI_RANGES[name]
        m = head.labels == code
        if m.any() and name not in ("veins", "calcification", "haemorrhage"):
            assert lo - 1e-6 <= head.values[name] <= hi + 1e-6, name
            # label mean equals the drawn value up to the small brain texture
            assert head.chi[m].mean().item() == pytest.approx(head.values[name], abs=0.006), name
    for name in ("veins", "calcification", "haemorrhage"):
        m = head.labels == LABELS[name]
        if m.any():
            lo, hi = CHI_RANGES[name]
            assert lo - 1e-5 <= head.chi[m].min() and head.chi[m].max() <= hi + 1e-5, name
    assert head.chi[head.labels == 0].eq(AIR_PPM).all()
    assert set(DGM_LABELS) <= set(LABELS) and len(DGM_LABELS) == 7


def test_masks_nested(head):
    bm, hm = head.brain_mask, head.head_mask
    assert bm.dtype == torch.bool and hm.dtype == torch.bool
    assert (bm & ~hm).sum() == 0
    dgm = torch.isin(head.labels, torch.tensor(list(DGM_LABELS.values())))
    assert bm[dgm].all()
    assert not bm[head.labels == LABELS["skull"]].any()
    brain_frac = bm.float().mean().item()
    assert 0.1 < brain_frac < 0.6
    wm, gm = ((head.labels == LABELS[k]).sum().item() for k in ("wm", "gm"))
    assert 0.3 < gm / wm < 2.0


def test_deterministic_and_varied():
    a = head_phantom((40, 48, 48), (2, 2, 2), seed=1)
    b = head_phantom((40, 48, 48), (2, 2, 2), seed=1)
    c = head_phantom((40, 48, 48), (2, 2, 2), seed=2)
    assert torch.equal(a.chi, b.chi) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.chi, c.chi)
    assert a.values != c.values


def test_anatomy_scales_with_voxel_size():
    """The same head (fixed scale, no variation) at 1.5 and 3 mm: volumes agree in mm^3."""
    fine = head_phantom((96, 112, 104), 1.5, seed=0, scale=0.8, variation=False,
                        lesion_prob=0.0)
    coarse = head_phantom((48, 56, 52), 3.0, seed=0, scale=0.8, variation=False,
                          lesion_prob=0.0)
    for name in ("wm", "skull", "putamen", "thalamus"):
        v1 = (fine.labels == LABELS[name]).sum().item() * 1.5 ** 3
        v2 = (coarse.labels == LABELS[name]).sum().item() * 3.0 ** 3
        assert v2 == pytest.approx(v1, rel=0.2), name
    b1 = fine.brain_mask.sum().item() * 1.5 ** 3
    b2 = coarse.brain_mask.sum().item() * 3.0 ** 3
    assert b2 == pytest.approx(b1, rel=0.05)
    # anisotropic voxels work too and give a similar brain volume
    aniso = head_phantom((96, 56, 104), (1.5, 3.0, 1.5), seed=0, scale=0.8, variation=False)
    assert aniso.brain_mask.sum().item() * 6.75 == pytest.approx(b1, rel=0.05)


def test_simulate_head_case_physics():
    b0 = np.array([0.2, -0.1, 1.0])
    case = simulate_head_case((40, 48, 44), (2.0, 2.0, 2.0), b0, seed=3, n_coils=3,
                              shim_ppm=0.1, te=(0.004, 0.012))
    mask = case.mask.float()
    assert abs((case.chi * mask).sum() / mask.sum()) < 1e-6
    op = DipoleOperator((40, 48, 44), (2, 2, 2), b0)
    expected = mask * op.forward(case.chi * mask)
    assert torch.allclose(case.local_field, expected, atol=1e-6)
    inside = case.mask
    recon = case.background_field + op.forward(case.chi)
    assert torch.allclose(recon[inside], case.total_field[inside], atol=1e-4)
    hm = case.head_mask
    for n, te in enumerate(case.te.tolist()):
        want = wrap_phase(case.phi0 + ppm_to_phase(case.total_field, te, case.b0_tesla))
        diff = wrap_phase(case.phase[n] - want)[hm]
        assert diff.abs().max() < 1e-3
        m = case.m0 * torch.exp(-case.r2star * te)
        assert torch.allclose(case.magnitude[n], m, atol=1e-5)
    assert case.coil_magnitude.shape == (3, 2, 40, 48, 44)
    assert case.sensitivities.shape == (3, 40, 48, 44)
    assert np.allclose(b0_dir_from_affine(case.affine), b0 / np.linalg.norm(b0), atol=1e-9)
    assert np.allclose(voxel_size_from_affine(case.affine), 2.0)
