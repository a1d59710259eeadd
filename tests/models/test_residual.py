"""InversionResidualNet: a learned correction of a classical inversion on the whole volume."""

import functools

import pytest
import torch
from torch import nn

from dlqsm.inference import Predictor
from dlqsm.models import InversionResidualNet, classical_estimate
from dlqsm.models.batched_dipole import batch_dipole
from dlqsm.pipeline.inversion import invert
from dlqsm.simulation.wrappers import WithInitialEstimate

SHAPE = (20, 24, 22)


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x[:, :1])


class Shift(nn.Module):
    """Predicts a constant correction (checks the output scaling)."""

    def forward(self, x):
        return torch.ones_like(x[:, :1])


def _case(batch=1, b0=(0.0, 0.0, 1.0)):
    chi = torch.zeros(batch, 1, *SHAPE)
    chi[:, :, 6:12, 7:15, 6:14] = 0.1
    chi[:, :, 13:17, 4:8, 9:13] = -0.05
    mask = torch.zeros_like(chi)
    mask[:, :, 2:-2, 2:-2, 2:-2] = 1
    b0 = torch.tensor([b0] * batch)
    vox = torch.ones(batch, 3)
    field = batch_dipole(chi, vox, b0).forward(chi) * mask
    return chi, field, mask, b0, vox


def test_classical_estimate_is_the_pipeline_inversion():
    _, field, mask, b0, vox = _case(batch=2, b0=(0.2, 0.0, 1.0))
    out = classical_estimate(field, mask, b0, vox, method="tkd", params={"threshold": 0.2})
    ref = invert(field[1, 0], mask[1, 0], method="tkd", b0_dir=b0[1].tolist(), threshold=0.2)
    torch.testing.assert_close(out[1, 0], ref.chi)
    assert out.shape == field.shape


def test_zero_backbone_gives_the_classical_inversion_and_init_can_be_passed():
    _, field, mask, b0, vox = _case()
    net = InversionResidualNet(Zero(), method="tv", params={"max_iter": 20})
    out = net(field, mask, b0, vox)
    ref = invert(field[0, 0], mask[0, 0], method="tv", max_iter=20).chi
    torch.testing.assert_close(out[0, 0], ref, atol=1e-6, rtol=1e-5)
    given = torch.full_like(field, 0.3)
    torch.testing.assert_close(net(field, mask, chi_init=given), given * mask)


def test_backbone_output_is_scaled_and_masked():
    _, field, mask, _, _ = _case()
    net = InversionResidualNet(Shift(), method="tkd", chi_scale=0.05, residual_gain=0.5)
    init = torch.zeros_like(field)
    torch.testing.assert_close(net(field, mask, chi_init=init), 0.025 * mask)
    # the default gain 0 starts from the classical estimate, and the gain is learned
    fresh = InversionResidualNet(Shift(), method="tkd")
    torch.testing.assert_close(fresh(field, mask, chi_init=init), init)
    assert "gain" in dict(fresh.named_parameters())
    norm = net.input_normalization()
    assert norm["initial_estimate"] == {"method": "tkd", "params": {}}
    assert norm["uses_geometry"] is False and net.b0_aware is False


def test_unknown_inversion_parameter_is_refused():
    with pytest.raises(ValueError, match="unknown parameter"):
        InversionResidualNet(Zero(), method="tv", params={"lambda": 1.0})


def test_predictor_computes_the_estimate_once_on_the_whole_volume():
    """Sliding windows must refine the whole-volume estimate, not per-window inversions.

    With a pointwise backbone every window predicts exactly the whole-volume values; an
    inversion per window (a field cut at the window edges) would not.
    """
    _, field, mask, _, _ = _case()
    torch.manual_seed(1)
    backbone = nn.Conv3d(2, 1, 1)
    net = InversionResidualNet(backbone, method="tkd", pad_multiple=1).eval()
    whole = Predictor.from_module(net, {"patch_size": [12, 12, 12]}, tile=False)
    tiled = Predictor.from_module(net, {"patch_size": [12, 12, 12]}, tile=True, overlap=0.5)
    geo = {"voxel_size": (1.0, 1.0, 1.0), "b0_dir": (0.0, 0.0, 1.0)}
    a = whole.predict(field[0, 0], mask[0, 0], **geo)
    b = tiled.predict(field[0, 0], mask[0, 0], **geo)
    assert tiled.describe() is not None
    torch.testing.assert_close(torch.as_tensor(b), torch.as_tensor(a), atol=1e-5, rtol=1e-4)
    # negative control: the estimate of a window alone is different
    win = invert(field[0, 0, :12, :12, :12], mask[0, 0, :12, :12, :12], method="tkd").chi
    full = invert(field[0, 0], mask[0, 0], method="tkd").chi[:12, :12, :12]
    assert (win - full).abs().max() > 1e-3


def test_with_initial_estimate_adds_chi_init():
    from dlqsm.simulation.datasets import HeadCaseDataset

    ds = WithInitialEstimate(functools.partial(HeadCaseDataset, shape=(32, 40, 32)),
                             method="tkd", length=1, seed=3)
    sample, meta = ds.sample_with_meta(0)
    ref = invert(sample["field"][0], sample["mask"][0], method="tkd").chi
    torch.testing.assert_close(sample["chi_init"][0], ref)
    assert meta["initial_estimate"]["method"] == "tkd"
    assert ds.config.as_dict()["initial_estimate"] == {"method": "tkd", "params": {}}
    assert len(ds) == 1 and ds.seed == 3


def test_oblique_scans_keep_the_native_inversion_and_resample_only_the_correction():
    """With B0 oblique and anisotropic voxels the Predictor rotates/resamples for the U-Net, but
    the classical estimate is computed on the scan grid with the scan's geometry: a zero
    correction gives exactly the native inversion (no interpolation blur)."""
    chi, _, mask, _, _ = _case()
    b0 = torch.tensor([[0.3, -0.2, 1.0]]) / torch.tensor([0.3, -0.2, 1.0]).norm()
    vox = torch.tensor([[1.0, 1.0, 1.5]])
    field = batch_dipole(chi, vox, b0).forward(chi) * mask
    net = InversionResidualNet(Zero(), method="tkd", pad_multiple=1).eval()
    pred = Predictor.from_module(net, {}, tile=False)
    out = pred.run(field[0, 0], mask[0, 0], voxel_size=vox[0].tolist(), b0_dir=b0[0].tolist())
    assert out.info["resampled"] and out.info["rotation_deg"] > 10
    ref = invert(field[0, 0], mask[0, 0], method="tkd", voxel_size=vox[0].tolist(),
                 b0_dir=b0[0].tolist()).chi
    torch.testing.assert_close(torch.as_tensor(out.chi), ref, atol=1e-5, rtol=1e-4)


class Spy(nn.Module):
    """Zero correction; keeps the network input (field channel first)."""

    def forward(self, x):
        self.seen = x.detach().clone()
        return torch.zeros_like(x[:, :1])


def test_predictor_passes_the_data_weight_to_the_estimate_and_hides_unreliable_field():
    """A weight (0 at unreliable voxels, as reconstruct's field-step check sets it) reaches the
    classical inversion, and the network sees the field as 0 there instead of the outlier."""
    chi, field, mask, _, _ = _case()
    field = field.clone()
    field[0, 0, 6, 8, 8] = 5.0                     # a mis-unwrapped voxel next to a source
    weight = mask[0, 0].clone()
    weight[5:8, 7:10, 7:10] = 0
    spy = Spy()
    net = InversionResidualNet(spy, method="tv", params={"max_iter": 30},
                               pad_multiple=1).eval()
    pred = Predictor.from_module(net, {}, tile=False)
    out = torch.as_tensor(pred.run(field[0, 0], mask[0, 0], voxel_size=(1, 1, 1),
                                   b0_dir=(0, 0, 1), weight=weight).chi)
    ref = invert(field[0, 0], mask[0, 0], method="tv", weight=weight, max_iter=30).chi
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    unweighted = invert(field[0, 0], mask[0, 0], method="tv", max_iter=30).chi
    assert (out - ref).abs().max() < 0.1 * (unweighted - ref).abs().max()   # the weight matters
    assert spy.seen[0, 0, 6, 8, 8] == 0 and spy.seen[0, 0].abs().max() > 0
    with pytest.raises(Exception, match="different grids"):
        pred.run(field[0, 0], mask[0, 0], voxel_size=(1, 1, 1), b0_dir=(0, 0, 1),
                 weight=weight[:-1])
