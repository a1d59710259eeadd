"""Echo fitting: exact recovery without noise, unbiased with noise, a noise map that matches
the empirical error and scales with the noise, nonlinear refinement, data weights."""

import math

import pytest
import torch

from dlqsm.errors import InputError
from dlqsm.physics.units import hz_to_ppm
from dlqsm.pipeline.echoes import EchoFit, data_weight, fit_echoes

TWO_PI = 2 * math.pi
B0 = 3.0
TE = (0.004, 0.008, 0.012)


def simulate(n=32, te=TE, sigma=0.0, seed=0):
    """Complex multi-echo signal with a smooth field (Hz) spanning wraps and a phase offset.

    Returns (unwrapped noisy phase, magnitude |S|, field_hz, phi0, mask)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.linspace(-1, 1, n)
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    f = 250 * torch.exp(-(x ** 2 + y ** 2 + z ** 2) / 0.2) + 60 * x - 40 * z  # Hz
    phi0 = 1.5 * torch.sin(x + 2 * y)
    m0 = 1.0 + 0.5 * torch.cos(2 * z)
    mask = x ** 2 + y ** 2 + z ** 2 < 0.8
    tt = torch.tensor(te).view(-1, 1, 1, 1)
    true = phi0 + TWO_PI * f * tt
    mag = m0 * torch.exp(-tt / 0.03)
    noise = sigma * torch.complex(torch.randn(true.shape, generator=g),
                                  torch.randn(true.shape, generator=g))
    s = torch.polar(mag, true) + noise
    phase = true + torch.angle(s * torch.polar(torch.ones_like(true), -true))  # unwrapped
    return phase, s.abs(), f, phi0, mask


def test_noiseless_fit_is_exact(devices):
    phase, mag, f, phi0, mask = simulate()
    assert (phase.max() - phase.min()) > 4 * TWO_PI  # the data span several wraps
    for dev in devices:
        fit = fit_echoes(phase.to(dev), TE, B0, mag.to(dev), mask.to(dev))
        assert isinstance(fit, EchoFit)
        expected = hz_to_ppm(f, B0) * mask
        torch.testing.assert_close(fit.field_ppm.cpu(), expected, atol=2e-6, rtol=1e-4)
        torch.testing.assert_close(fit.phase_offset.cpu(), phi0 * mask, atol=2e-4, rtol=0)
        assert fit.residual[mask].max() < 1e-4
        assert torch.all(fit.field_ppm.cpu()[~mask] == 0)


def test_noisy_fit_unbiased_and_noise_map_matches_error():
    sigma = 0.03
    phase, mag, f, phi0, mask = simulate(sigma=sigma)
    fit = fit_echoes(phase, TE, B0, mag, mask)
    err = (fit.field_ppm - hz_to_ppm(f, B0))[mask]
    predicted = fit.noise_ppm[mask]
    assert abs(float(err.mean())) < 0.1 * float(predicted.mean())
    ratio = float(err.std() / predicted.pow(2).mean().sqrt())
    assert 0.85 < ratio < 1.15  # the noise map is the field's actual std
    assert fit.noise_std == pytest.approx(sigma, rel=0.1)  # pooled from the residual
    # the phase noise of echo 1 is about sigma / |S|: the residual has that size
    assert float(fit.residual[mask].median()) < 3 * sigma / float(mag[0][mask].min())


def test_noise_map_scales_with_noise():
    phase, mag, _, _, mask = simulate(sigma=0.02)
    a = fit_echoes(phase, TE, B0, mag, mask)
    phase, mag, _, _, mask = simulate(sigma=0.04, seed=1)
    b = fit_echoes(phase, TE, B0, mag, mask)
    r = float(b.noise_ppm[mask].median() / a.noise_ppm[mask].median())
    assert 1.8 < r < 2.2
    # a given noise_std is used as is
    c = fit_echoes(phase, TE, B0, mag, mask, noise_std=0.08)
    r = float(c.noise_ppm[mask].median() / b.noise_ppm[mask].median())
    assert r == pytest.approx(0.08 / b.noise_std, rel=1e-4)


def test_noise_map_follows_magnitude():
    phase, mag, _, _, mask = simulate(sigma=0.02)
    fit = fit_echoes(phase, TE, B0, mag, mask)
    # noise std ~ 1 / magnitude: compare the brightest and darkest planes of m0
    lo = mask & (mag[0] < mag[0][mask].quantile(0.1))
    hi = mask & (mag[0] > mag[0][mask].quantile(0.9))
    r = float(fit.noise_ppm[lo].mean() / fit.noise_ppm[hi].mean())
    expected = float(mag[0][hi].mean() / mag[0][lo].mean())
    assert r == pytest.approx(expected, rel=0.1)


def test_without_offset_and_single_echo():
    phase, mag, f, phi0, mask = simulate()
    free = phase - phi0
    fit = fit_echoes(free, TE, B0, mag, mask, fit_offset=False)
    torch.testing.assert_close(fit.field_ppm, hz_to_ppm(f, B0) * mask, atol=2e-6, rtol=1e-4)
    assert torch.all(fit.phase_offset == 0)
    one = fit_echoes(free[1], TE[1:2], B0, mag[1], mask)
    expected = free[1] / (TWO_PI * 42.57747892e6 * B0 * TE[1]) * 1e6 * mask
    torch.testing.assert_close(one.field_ppm, expected, atol=2e-6, rtol=1e-4)
    assert math.isnan(one.noise_std)  # no residual degrees of freedom: relative noise map
    assert torch.all(one.noise_ppm[mask] > 0)


def test_nonlinear_fit():
    phase, mag, f, phi0, mask = simulate()
    fit = fit_echoes(phase, TE, B0, mag, mask, nonlinear=True)
    torch.testing.assert_close(fit.field_ppm, hz_to_ppm(f, B0) * mask, atol=2e-6, rtol=1e-4)
    phase, mag, f, phi0, mask = simulate(sigma=0.05)
    lin = fit_echoes(phase, TE, B0, mag, mask)
    nl = fit_echoes(phase, TE, B0, mag, mask, nonlinear=True)
    truth = hz_to_ppm(f, B0)[mask]
    e_lin = (lin.field_ppm[mask] - truth).pow(2).mean().sqrt()
    e_nl = (nl.field_ppm[mask] - truth).pow(2).mean().sqrt()
    assert e_nl < 1.05 * e_lin  # both are near the ML estimate at this SNR
    assert (nl.field_ppm - lin.field_ppm)[mask].abs().max() < 5 * float(lin.noise_ppm[mask].max())
    # it minimises the complex misfit sum_n |S_n|^2 |exp(i phase_n) - exp(i model_n)|^2
    cost_lin, cost_nl = (complex_misfit(r, phase, mag)[mask] for r in (lin, nl))
    assert torch.all(cost_nl <= cost_lin * (1 + 1e-4) + 1e-7)
    assert cost_nl.mean() < cost_lin.mean()


def complex_misfit(fit, phase, mag):
    tt = torch.tensor(TE).view(-1, 1, 1, 1)
    slope = fit.field_ppm * 1e-6 * 42.57747892e6 * B0 * TWO_PI  # rad/s
    model = fit.phase_offset + slope * tt
    return (mag ** 2 * (torch.polar(torch.ones_like(phase), phase)
                        - torch.polar(torch.ones_like(model), model)).abs() ** 2).sum(0)


def test_data_weight():
    noise = torch.tensor([1.0, 2.0, 4.0, 0.0]).view(4, 1, 1)
    mask = torch.tensor([True, True, True, False]).view(4, 1, 1)
    w = data_weight(noise, mask)
    assert float(w[mask].mean()) == pytest.approx(1.0)
    assert float(w[0] / w[1]) == pytest.approx(2.0) and float(w[1] / w[2]) == pytest.approx(2.0)
    assert float(w[3]) == 0
    w2 = data_weight(noise, mask, power=2)
    assert float(w2[0] / w2[2]) == pytest.approx(16.0)
    flat = data_weight(torch.zeros(4, 1, 1), mask)  # noiseless data: uniform weights
    assert torch.equal(flat, mask.float())
    with_zero = data_weight(torch.tensor([0.0, 1.0, 1.0]).view(3, 1, 1))
    assert torch.isfinite(with_zero).all()


def test_input_errors():
    phase, mag, _, _, mask = simulate(8)
    with pytest.raises(InputError, match="TE"):
        fit_echoes(phase, TE[:2], B0, mag, mask)
    with pytest.raises(InputError, match="empty"):
        fit_echoes(phase, TE, B0, mag, torch.zeros_like(mask))
    with pytest.raises(InputError, match="shape"):
        fit_echoes(phase, TE, B0, mag[:2], mask)


def test_real_multi_echo_crop():
    """Real 3-echo crop (skipped when absent): the fit explains the unwrapped phase to within
    its noise, and the nonlinear refinement stays at the linear solution."""
    nib = pytest.importorskip("nibabel")
    import numpy as np

    from dlqsm.pipeline.unwrap import unwrap_multi_echo

    folder = "/work/shared/data/multiecho_small"
    try:
        raw = np.asarray(nib.load(f"{folder}/phase.nii.gz").dataobj, dtype=np.float64)
        mag = np.asarray(nib.load(f"{folder}/mag.nii.gz").dataobj, dtype=np.float64)
    except FileNotFoundError:
        pytest.skip("real multi-echo crop not present")
    phase = (raw - raw.min()) / (raw.max() - raw.min()) * TWO_PI - math.pi
    phase, mag = (torch.from_numpy(a).permute(3, 0, 1, 2).float() for a in (phase, mag))
    u = unwrap_multi_echo(phase, TE, mag)
    fit = fit_echoes(u, TE, B0, mag)
    assert math.isfinite(fit.noise_std) and fit.noise_std > 0
    assert float(fit.residual.median()) < 0.1  # rad: no 2 pi errors left in the echoes
    ratio = fit.residual.median() * mag[0].median() / fit.noise_std
    assert 0.2 < float(ratio) < 2  # the residual is noise-sized
    nl = fit_echoes(u, TE, B0, mag, nonlinear=True)
    close = (nl.field_ppm - fit.field_ppm).abs() < 3 * fit.noise_ppm
    assert close.float().mean() > 0.99
