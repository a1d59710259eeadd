"""dlqsm networks: call convention, normalisation, geometry handling, building from configs."""

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from dlqsm.models import NormalizedNet, TKDResidualNet, UnrolledQSM, build_from_config
from dlqsm.models.batched_dipole import batch_dipole, tkd

SHAPE = (14, 16, 18)


def _sample(batch=2, shape=SHAPE):
    chi = torch.zeros(batch, 1, *shape)
    chi[:, :, 4:9, 5:10, 6:12] = 0.1
    chi[:, :, 2:4, 10:13, 3:6] = -0.05
    mask = torch.zeros_like(chi)
    mask[:, :, 1:-1, 1:-1, 1:-1] = 1
    b0 = torch.tensor([[0.0, 0.0, 1.0], [0.4, 0.1, 1.0]])[:batch]
    vox = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])[:batch]
    field = batch_dipole(chi, vox, b0).forward(chi) * mask
    return chi, field, mask, b0, vox


class Zero(nn.Module):
    """A backbone that predicts zero (the wrappers must then reduce to their physics part)."""

    def forward(self, x):
        return torch.zeros_like(x[:, :1])


def test_normalized_net_scales_pads_and_masks():
    _, field, mask, _, _ = _sample()
    net = NormalizedNet(nn.Identity(), field_scale=10.0, chi_scale=0.5, pad_multiple=8)
    out = net(field, mask)
    torch.testing.assert_close(out, field * mask * 5.0)  # identity backbone: chi = 10*0.5*field
    assert out.shape == field.shape  # 14x16x18 padded to 16x16x24 and cropped back
    assert set(net.state_dict()) >= {"field_scale", "chi_scale"}
    assert net.input_normalization()["chi_scale"] == 0.5


def test_normalized_unet_any_shape_and_geometry_ignored():
    _, field, mask, b0, vox = _sample()
    net = NormalizedNet(UNet(3, 1, 1, (4, 8, 16), (2, 2), norm="batch"), pad_multiple=4).eval()
    out = net(field, mask, b0, vox)
    assert out.shape == field.shape
    assert torch.all(out[mask == 0] == 0)
    torch.testing.assert_close(out, net(field, mask))


def test_tkd_residual_with_zero_backbone_is_tkd():
    chi, field, mask, b0, vox = _sample()
    net = TKDResidualNet(Zero(), threshold=0.2)
    expected = tkd(field, batch_dipole(field, vox, b0), 0.2) * mask
    torch.testing.assert_close(net(field, mask, b0, vox), expected)
    # the B0 direction matters: the wrong one gives a worse reconstruction
    err_right = (net(field, mask, b0, vox) - chi)[mask > 0].norm()
    err_wrong = (net(field, mask, b0.flip(0), vox) - chi)[mask > 0].norm()
    assert err_right < err_wrong


def test_unrolled_data_steps_reduce_the_data_misfit():
    """Zero-initialised priors: the network is K gradient steps, which must lower the misfit."""
    chi, field, mask, b0, vox = _sample()
    op = batch_dipole(field, vox, b0)
    start = UnrolledQSM(iterations=0, features=4, layers=2)(field, mask, b0, vox)  # TKD alone
    out = UnrolledQSM(iterations=5, features=4, layers=2, step_init=2.0)(field, mask, b0, vox)

    def misfit(x):
        return ((op.forward(x) - field) * mask).norm()

    assert misfit(out) < 0.9 * misfit(start)


def test_unrolled_uses_the_b0_direction_consistently():
    """Swapping the x and z axes of the data and of B0 must swap the axes of the output."""
    chi, _, mask, _, vox = _sample(batch=1, shape=(12, 12, 12))
    b0 = torch.tensor([[0.2, 0.1, 1.0]])
    field = batch_dipole(chi, vox, b0).forward(chi) * mask
    net = UnrolledQSM(iterations=3, features=4, layers=2)
    out = net(field, mask, b0, vox)
    swap = (0, 1, 4, 3, 2)
    out_swapped = net(field.permute(swap), mask.permute(swap), b0[:, [2, 1, 0]], vox)
    torch.testing.assert_close(out_swapped, out.permute(swap), rtol=1e-4, atol=1e-6)


def test_unrolled_trains_all_parameters():
    _, field, mask, b0, vox = _sample()
    net = UnrolledQSM(iterations=2, features=4, layers=3)
    net(field, mask, b0, vox).square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net.steps.grad.abs().sum() > 0


def test_unrolled_rejects_unknown_init():
    with pytest.raises(ValueError, match="init"):
        UnrolledQSM(init="magic")


def test_build_from_config_nested():
    cfg = {"_target_": "dlqsm.models.NormalizedNet", "_convert_": "all",
           "backbone": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3,
                        "in_channels": 1, "out_channels": 1, "channels": [4, 8],
                        "strides": [2]},
           "chi_scale": 0.2, "pad_multiple": 2}
    net = build_from_config(cfg)
    assert isinstance(net, NormalizedNet) and isinstance(net.backbone, UNet)
    assert net.input_normalization()["chi_scale"] == 0.2
    with pytest.raises(ValueError, match="cannot import"):
        build_from_config({"_target_": "dlqsm.models.NoSuchNet"})


@pytest.mark.parametrize("kind", ["unet", "resunet", "unrolled"])
def test_models_run_under_bfloat16_autocast(kind):
    """Mixed precision: the physics (FFTs) is upcast to float32, gradients reach every weight."""
    _, field, mask, b0, vox = _sample()
    net = {"unet": lambda: NormalizedNet(UNet(3, 1, 1, (4, 8), (2,), norm="batch"), pad_multiple=2),
           "resunet": lambda: TKDResidualNet(UNet(3, 2, 1, (4, 8), (2,), norm="batch"),
                                             pad_multiple=2),
           "unrolled": lambda: UnrolledQSM(iterations=2, features=4, layers=2)}[kind]()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(field, mask, b0, vox)
        loss = (batch_dipole(out, vox, b0).forward(out) - field).abs().mean()
    loss.backward()
    assert torch.isfinite(out.float()).all() and torch.isfinite(loss)
    assert all(p.grad is not None for p in net.parameters())
