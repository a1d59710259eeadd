"""Per-batch dipole operators and TKD used inside networks, against dlqsm.physics."""

import torch

from dlqsm.models.batched_dipole import batch_dipole, tkd, tkd_filter
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.fft import irfft3, rfft3

SHAPE = (12, 14, 16)


def _batch():
    chi = torch.randn(3, 1, *SHAPE)
    b0 = torch.tensor([[0.0, 0.0, 1.0], [0.3, -0.2, 1.0], [1.0, 0.0, 0.0]])
    vox = torch.tensor([[1.0, 1.0, 1.0], [0.8, 0.8, 2.0], [1.0, 1.0, 1.0]])
    return chi, b0, vox


def test_batch_dipole_matches_one_operator_per_sample():
    chi, b0, vox = _batch()
    out = batch_dipole(chi, vox, b0).forward(chi)
    for i in range(3):
        ref = DipoleOperator(SHAPE, vox[i].tolist(), b0[i].tolist()).forward(chi[i])
        torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-6)


def test_batch_dipole_padding_matches_operator():
    chi, b0, vox = _batch()
    out = batch_dipole(chi, vox, b0, padding=4).forward(chi)
    ref = DipoleOperator(SHAPE, vox[1].tolist(), b0[1].tolist(), padding=4).forward(chi[1])
    torch.testing.assert_close(out[1], ref, rtol=1e-5, atol=1e-6)


def test_batch_dipole_defaults_and_adjointness():
    chi, _, _ = _batch()
    op = batch_dipole(chi)  # 1 mm, B0 along z
    torch.testing.assert_close(op.forward(chi)[0], DipoleOperator(SHAPE).forward(chi[0]),
                               rtol=1e-5, atol=1e-6)
    y = torch.randn_like(chi)
    lhs = (op.forward(chi) * y).sum()
    rhs = (chi * op.adjoint(y)).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-5


def test_tkd_inverts_exactly_where_kernel_is_not_truncated():
    chi, b0, _ = _batch()
    vox = torch.tensor([0.9, 1.0, 1.5])
    op = batch_dipole(chi, vox, b0)
    assert len(op.groups) == 1  # one voxel size: one operator with a (B, 1, X, Y, Zk) kernel
    kernel = op.groups[0][1].kernel
    threshold = 0.2
    # keep only the frequencies where |D| > threshold (per sample): TKD must return them exactly
    kept = irfft3(rfft3(chi) * (kernel.abs() > threshold), SHAPE)
    torch.testing.assert_close(tkd(op.forward(kept), op, threshold), kept, rtol=1e-4, atol=1e-5)
    # but not the full-band map (the truncated cone around the magic angle is lost)
    assert (tkd(op.forward(chi), op, threshold) - chi).abs().max() > 1e-2


def test_tkd_filter_values():
    d = torch.tensor([0.0, 0.5, -0.5, 0.1, -0.1])
    torch.testing.assert_close(tkd_filter(d, 0.2), torch.tensor([0.0, 2.0, -2.0, 5.0, -5.0]))
