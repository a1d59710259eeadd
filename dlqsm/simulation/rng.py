"""Seeded random draws shared by the simulation modules.

Every generator in :mod:`dlqsm.simulation` takes a ``torch.Generator``; nothing uses the global
RNG. Draws happen on the generator's device and are then moved to the requested device, so a
CPU generator gives the same numbers whatever device the volumes live on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["bernoulli", "derive_seed", "int_scalar", "make_generator", "quaternion_to_matrix",
           "rand", "randint", "randn", "random_b0_dirs", "random_rotations",
           "random_voxel_sizes", "small_rotation", "uniform", "uniform_scalar"]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends only on the integers ``keys`` (e.g. (seed, index)).

    Uses numpy's SeedSequence, so nearby keys give unrelated streams.
    """
    ss = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def make_generator(seed: int, device="cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


def rand(generator, *shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` from ``generator``, returned on ``device``."""
    x = torch.rand(*shape, generator=generator, device=_gen_device(generator), dtype=dtype)
    return x if device is None else x.to(device)


def randn(generator, *shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal draws of ``shape`` from ``generator``, returned on ``device``."""
    x = torch.randn(*shape, generator=generator, device=_gen_device(generator), dtype=dtype)
    return x if device is None else x.to(device)


def uniform(generator, low, high, *shape, device=None) -> torch.Tensor:
    """Uniform draws in [low, high) (broadcastable bounds)."""
    u = rand(generator, *shape, device=device)
    return low + (high - low) * u


def randint(generator, low: int, high: int, *shape, device=None) -> torch.Tensor:
    """Integers uniform in [low, high] (both inclusive)."""
    x = torch.randint(int(low), int(high) + 1, shape, generator=generator,
                      device=_gen_device(generator))
    return x if device is None else x.to(device)


def uniform_scalar(generator, rng) -> float:
    """One float: ``rng`` is a number (returned as is) or a (low, high) range."""
    if isinstance(rng, (int, float)):
        return float(rng)
    lo, hi = (float(v) for v in rng)
    return lo + (hi - lo) * float(rand(generator, 1)[0])


def int_scalar(generator, rng) -> int:
    """One int: ``rng`` is an int or an inclusive (low, high) range."""
    if isinstance(rng, (int, np.integer)):
        return int(rng)
    lo, hi = (int(v) for v in rng)
    return int(randint(generator, lo, hi, 1)[0])


def bernoulli(generator, p: float) -> bool:
    """True with probability ``p``."""
    if p <= 0:
        return False
    if p >= 1:
        return True
    return bool(rand(generator, 1)[0] < p)


def random_rotations(generator, n: int, *, device=None) -> torch.Tensor:
    """``n`` rotation matrices (n, 3, 3), uniform over SO(3) (from random unit quaternions)."""
    q = randn(generator, n, 4, device=device)
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    return quaternion_to_matrix(q)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) as (w, x, y, z) -> rotation matrices (..., 3, 3)."""
    w, x, y, z = q.unbind(-1)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def small_rotation(generator, max_deg: float | Sequence[float]) -> torch.Tensor:
    """A (3, 3) rotation with Euler angles about x, y, z uniform in +-max_deg (degrees)."""
    m = torch.as_tensor(max_deg, dtype=torch.float32).expand(3)
    ang = (2 * rand(generator, 3).cpu() - 1) * m * math.pi / 180
    out = torch.eye(3)
    for axis in range(3):
        c, s = math.cos(float(ang[axis])), math.sin(float(ang[axis]))
        i, j = [a for a in range(3) if a != axis]
        r = torch.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def random_b0_dirs(generator, n: int, max_tilt_deg: float, *, device=None) -> torch.Tensor:
    """``n`` unit B0 vectors (n, 3), uniform over the spherical cap within ``max_tilt_deg`` of +z.

    The tilt angle theta has cos(theta) uniform in [cos(max_tilt), 1] (uniform on the cap), the
    azimuth is uniform in [0, 2 pi). ``max_tilt_deg = 0`` gives (0, 0, 1).
    """
    cmin = math.cos(math.radians(min(max(float(max_tilt_deg), 0.0), 180.0)))
    u = rand(generator, n, 2, device=device)
    cos_t = 1 - u[:, 0] * (1 - cmin)
    sin_t = torch.sqrt(torch.clamp(1 - cos_t ** 2, min=0))
    phi = 2 * math.pi * u[:, 1]
    return torch.stack([sin_t * torch.cos(phi), sin_t * torch.sin(phi), cos_t], dim=-1)


def random_voxel_sizes(generator, n: int, voxel_size, *, isotropic_prob: float = 0.0,
                       device=None) -> torch.Tensor:
    """``n`` voxel sizes (n, 3) in mm.

    Args:
        voxel_size: a number (isotropic, fixed), three numbers (fixed), or a (low, high) range
            from which each axis is drawn independently (anisotropic voxels).
        isotropic_prob: with a range, the probability that one value is used for all axes.
    """
    v = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
    if v.size == 1:
        return torch.full((n, 3), float(v[0]), device=device)
    if v.size == 3:
        return torch.as_tensor(v, dtype=torch.float32, device=device).expand(n, 3).clone()
    if v.size != 2 or v[0] <= 0 or v[1] < v[0]:
        raise ValueError(f"voxel_size must be a number, three numbers or a (low, high) range; "
                         f"got {voxel_size!r}")
    out = uniform(generator, float(v[0]), float(v[1]), n, 3)
    iso = rand(generator, n) < isotropic_prob
    out[iso] = out[iso, :1].expand(-1, 3)
    return out.to(device) if device is not None else out
