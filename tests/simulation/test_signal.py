"""Multi-echo GRE signal: phase equation, decay, noise level, wrapping, coils."""

import math

import pytest
import torch

from dlqsm.physics.units import ppm_to_phase
from dlqsm.simulation.rng import make_generator
from dlqsm.simulation.signal import (
    coil_sensitivities,
    echo_times,
    multi_echo_signal,
    noiseless_signal,
    random_m0_r2star,
    random_phase_offset,
    wrap_phase,
)


def _maps(shape=(16, 14, 12)):
    g = make_generator(0)
    field = 2.0 * torch.randn(shape, generator=g)  # large: the phase wraps
    m0, r2 = random_m0_r2star(shape, (1, 1, 1), g)
    phi0 = random_phase_offset(shape, (1, 1, 1), g)
    return field, m0, r2, phi0


def test_wrap_phase():
    x = torch.linspace(-20, 20, 1001)
    w = wrap_phase(x)
    assert w.min() >= -math.pi and w.max() < math.pi
    assert torch.allclose(torch.cos(w), torch.cos(x), atol=1e-5)
    assert torch.allclose(torch.sin(w), torch.sin(x), atol=1e-5)


def test_noiseless_phase_and_magnitude():
    field, m0, r2, phi0 = _maps()
    te = echo_times(make_generator(1), 5)
    assert torch.allclose(torch.diff(te), torch.full((4,), float(te[1] - te[0])), atol=1e-7)
    sig = multi_echo_signal(field, te, 3.0, m0=m0, r2star=r2, phi0=phi0)
    assert sig.magnitude.shape == (5, 16, 14, 12) and sig.noise_std == 0
    for n, t in enumerate(te.tolist()):
        want = wrap_phase(phi0 + ppm_to_phase(field, t, 3.0))
        assert wrap_phase(sig.phase[n] - want).abs().max() < 2e-4
        assert torch.allclose(sig.magnitude[n], m0 * torch.exp(-r2 * t), atol=1e-6)
    assert sig.phase.min() >= -math.pi and sig.phase.max() <= math.pi
    # the phase does wrap for these fields (so this is a real test of wrapping)
    unwrapped = phi0 + ppm_to_phase(field, te[-1].item(), 3.0)
    assert unwrapped.abs().max() > 4 * math.pi


def test_noise_level_matches_snr():
    field, m0, r2, phi0 = _maps((32, 32, 32))
    te = torch.tensor([0.005, 0.015])
    g = make_generator(3)
    sig = multi_echo_signal(field, te, 7.0, m0=m0, r2star=r2, phi0=phi0, snr=20, generator=g)
    clean = noiseless_signal(field, te, 7.0, m0, r2, phi0)
    noise = sig.complex - clean
    expected = m0.mean().item() / 20
    assert sig.noise_std == pytest.approx(expected, rel=1e-6)
    assert noise.real.std().item() == pytest.approx(expected, rel=0.03)
    assert noise.imag.std().item() == pytest.approx(expected, rel=0.03)
    again = multi_echo_signal(field, te, 7.0, m0=m0, r2star=r2, phi0=phi0, snr=20,
                              generator=make_generator(3))
    assert torch.equal(again.phase, sig.phase)


def test_coils():
    field, m0, r2, phi0 = _maps()
    te = torch.tensor([0.004, 0.008, 0.012])
    sig = multi_echo_signal(field, te, 3.0, m0=m0, r2star=r2, phi0=phi0, n_coils=4,
                            generator=make_generator(0))
    assert sig.magnitude.shape == (4, 3, 16, 14, 12)
    assert sig.combined_phase.shape == (3, 16, 14, 12)
    clean = noiseless_signal(field, te, 3.0, m0, r2, phi0)
    assert torch.allclose(sig.complex, sig.sensitivities[:, None] * clean[None], atol=1e-5)
    sens = coil_sensitivities(8, (16, 16, 16), (1, 1, 1), make_generator(1))
    rss = sens.abs().pow(2).sum(0).sqrt()
    assert rss.mean().item() == pytest.approx(1.0, rel=1e-5)
    # coils differ in magnitude pattern and phase offset
    assert (sens[0].abs() - sens[1].abs()).abs().max() > 0.1
    assert (torch.angle(sens[0] * sens[1].conj())).abs().mean() > 0.1
