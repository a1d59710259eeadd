"""Coil combination: simulated coils with smooth sensitivities and phase offsets; the combined
phase is the field phase (offsets removed), the magnitude is the root sum of squares."""

import math

import pytest
import torch

from dlqsm.errors import InputError
from dlqsm.pipeline.coil import coil_phase_offsets, combine_coils, sos_magnitude

TWO_PI = 2 * math.pi


def simulate_coils(te, n=32, coils=4, sigma=0.0, seed=0):
    """(C, E, X, Y, Z) complex data, the field phase omega (rad/s) and the object mask.

    Each coil: a smooth positive sensitivity peaking near one face, and a smooth phase offset
    of several rad; common: a field with wraps and T2* decay."""
    g = torch.Generator().manual_seed(seed)
    c = torch.linspace(-1, 1, n)
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    obj = (x ** 2 + y ** 2 + z ** 2 < 0.8).float()
    omega = TWO_PI * (150 * torch.exp(-(x ** 2 + y ** 2) / 0.3) + 40 * z)  # rad/s
    centres = [(1.5, 0, 0), (-1.5, 0, 0), (0, 1.5, 0), (0, -1.5, 0), (0, 0, 1.5), (0, 0, -1.5)]
    tt = torch.tensor(te, dtype=torch.float32).view(-1, 1, 1, 1)
    data = []
    for k in range(coils):
        cx, cy, cz = centres[k]
        sens = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 3.0)
        offset = 2.0 * k + 1.2 * torch.sin(0.5 * x + 0.4 * (k + 1) * y) + 0.3 * k * z
        sig = obj * sens * torch.exp(-tt / 0.04)
        data.append(torch.polar(sig, offset + omega * tt))
    data = torch.stack(data)
    if sigma:
        data = data + sigma * torch.complex(torch.randn(data.shape, generator=g),
                                            torch.randn(data.shape, generator=g))
    return data, omega, obj.bool()


def phase_error(phase, omega, te, mask):
    """Wrapped difference between combined phase and omega * TE inside the mask (E, N)."""
    tt = torch.tensor(te, dtype=torch.float32).view(-1, 1, 1, 1)
    d = torch.remainder(phase - omega * tt + math.pi, TWO_PI) - math.pi
    return d[:, mask]


@pytest.mark.parametrize("te,method", [((0.004, 0.008, 0.012), "aspire"),
                                       ((0.003, 0.0075, 0.012), "mcpc3ds")])
def test_combination_recovers_field_phase(te, method, devices):
    data, omega, mask = simulate_coils(te)
    for dev in devices:
        out = combine_coils(data.to(dev), te, smoothing_mm=0.0)
        assert out.method == method
        err = phase_error(out.phase.cpu(), omega, te, mask)
        assert err.abs().max() < 1e-3  # noiseless, unsmoothed offsets: exact
        torch.testing.assert_close(out.magnitude.cpu(), data.abs().pow(2).sum(0).sqrt())
    # without offset correction the coils cancel: the test can fail
    naive = combine_coils(data, te, method="none")
    assert phase_error(naive.phase, omega, te, mask).abs().max() > 1.0


def test_noisy_combination_with_smoothing():
    te = (0.004, 0.008, 0.012)
    data, omega, mask = simulate_coils(te, sigma=0.01)
    # this 32-voxel phantom's coil phases vary ~10x faster per voxel than in a head: a small
    # sigma keeps the smoothing bias (weights x phase curvature) below the noise it removes
    out = combine_coils(data, te, smoothing_mm=1.0, voxel_size=(1.0, 1.0, 1.0))
    err = phase_error(out.phase, omega, te, mask)
    assert err.pow(2).mean().sqrt() < 0.025
    assert err.abs().quantile(0.99) < 0.08
    raw = combine_coils(data, te, smoothing_mm=0.0)
    err_raw = phase_error(raw.phase, omega, te, mask)
    assert err.pow(2).mean() < err_raw.pow(2).mean()  # smoothing the offsets removes noise


def test_offsets_match_simulated_coil_phases():
    te = (0.004, 0.008, 0.012)
    data, omega, mask = simulate_coils(te, coils=3)
    off = coil_phase_offsets(data, te, smoothing_mm=0.0)
    expected = torch.angle(data[:, 0] * torch.polar(torch.ones_like(omega), -omega * te[0]))
    d = torch.remainder(off - expected + math.pi, TWO_PI) - math.pi
    assert d[:, mask].abs().max() < 1e-3


def test_magnitude_and_phase_input_and_single_coil():
    te = (0.004, 0.008, 0.012)
    data, omega, mask = simulate_coils(te, coils=2)
    a = combine_coils(data, te, smoothing_mm=0.0)
    b = combine_coils(magnitude=data.abs(), phase=torch.angle(data), te=te, smoothing_mm=0.0)
    torch.testing.assert_close(a.phase[:, mask], b.phase[:, mask], atol=1e-4, rtol=0)
    assert torch.equal(sos_magnitude(data), a.magnitude)
    one = combine_coils(data[:1], te, smoothing_mm=0.0)  # one coil: its offset is removed too
    assert phase_error(one.phase, omega, te, mask).abs().max() < 1e-3


def test_input_errors():
    te = (0.004, 0.008, 0.012)
    data, _, _ = simulate_coils(te, n=8, coils=2)
    with pytest.raises(InputError, match="two echoes"):
        combine_coils(data[:, :1], te[:1])
    with pytest.raises(InputError, match="integer"):
        combine_coils(data, (0.003, 0.0075, 0.012), method="aspire")
    with pytest.raises(InputError, match=r"\(C, E, X, Y, Z\)"):
        combine_coils(data[0], te)
    with pytest.raises(InputError, match="echo times"):
        combine_coils(data, te[:2])
    with pytest.raises(InputError, match="method"):
        combine_coils(data, te, method="best")
