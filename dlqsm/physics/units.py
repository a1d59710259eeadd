"""Unit conversions between phase (rad), frequency (Hz) and field / susceptibility (ppm).

field_ppm = phase_rad / (2*pi * gamma * B0 * TE) * 1e6, gamma = 42.57747892 MHz/T.
Functions accept floats, numpy arrays or torch tensors (TE may broadcast over echoes).
"""

import math

GAMMA_HZ_PER_T = 42.57747892e6
"""Proton gyromagnetic ratio over 2*pi, in Hz/T."""


def larmor_hz(b0_tesla: float) -> float:
    """Larmor frequency gamma * B0 in Hz for a field strength in tesla."""
    return GAMMA_HZ_PER_T * b0_tesla


def hz_to_ppm(freq_hz, b0_tesla: float):
    """Frequency offset (Hz) -> field (ppm of B0)."""
    return freq_hz / larmor_hz(b0_tesla) * 1e6


def ppm_to_hz(field_ppm, b0_tesla: float):
    """Field (ppm of B0) -> frequency offset (Hz)."""
    return field_ppm * larmor_hz(b0_tesla) * 1e-6


def phase_to_hz(phase_rad, te_s):
    """Phase (rad) accumulated at echo time ``te_s`` (s) -> frequency (Hz)."""
    return phase_rad / (2 * math.pi * te_s)


def hz_to_phase(freq_hz, te_s):
    """Frequency (Hz) -> phase (rad, not wrapped) at echo time ``te_s`` (s)."""
    return freq_hz * (2 * math.pi * te_s)


def phase_to_ppm(phase_rad, te_s, b0_tesla: float):
    """Phase (rad) at echo time ``te_s`` (s) and field strength ``b0_tesla`` (T) -> ppm."""
    return hz_to_ppm(phase_to_hz(phase_rad, te_s), b0_tesla)


def ppm_to_phase(field_ppm, te_s, b0_tesla: float):
    """Field (ppm) -> unwrapped phase (rad) at echo time ``te_s`` (s), field ``b0_tesla`` (T)."""
    return hz_to_phase(ppm_to_hz(field_ppm, b0_tesla), te_s)


def wrap_phase(phase):
    """Wrap a phase (rad) to [-pi, pi); numpy arrays or torch tensors (floor modulo in both)."""
    return (phase + math.pi) % (2 * math.pi) - math.pi
