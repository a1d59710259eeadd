"""Masks: a sphere from a noisy sphere image, morphology in mm on anisotropic voxels (against
scipy.ndimage), the user mask wins, clear errors on empty masks, phase-quality masks."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from dlqsm.errors import InputError
from dlqsm.pipeline.masking import (
    brain_mask,
    close_mask,
    dilate_mask,
    erode_mask,
    fill_holes,
    gaussian_smooth,
    largest_component,
    open_mask,
    otsu_threshold,
    phase_quality_mask,
    resolve_mask,
)


def ball_structure(radius_mm, vox):
    """Reference structuring element for scipy: voxels within radius_mm of the centre."""
    r = [int(np.floor(radius_mm / h + 1e-9)) for h in vox]
    g = np.meshgrid(*[np.arange(-k, k + 1) * h for k, h in zip(r, vox, strict=True)],
                    indexing="ij")
    return sum(c ** 2 for c in g) <= radius_mm ** 2 + 1e-9


def sphere(n=40, radius=12.0, centre=None):
    c = np.array(centre if centre is not None else [n / 2 - 0.5] * 3)
    idx = np.indices((n, n, n)).astype(float)
    return torch.from_numpy(((idx - c[:, None, None, None]) ** 2).sum(0) <= radius ** 2)


def dice(a, b):
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_brain_mask_from_noisy_sphere():
    g = torch.Generator().manual_seed(0)
    truth = sphere()
    mag = truth.float() * (1 + 0.1 * torch.cos(torch.arange(40.0) / 5)).view(-1, 1, 1)
    mag[sphere(radius=3, centre=(20, 20, 20))] = 0.05  # a dark hole inside (e.g. a vessel)
    mag[sphere(radius=1.5, centre=(3, 3, 3))] = 1.0  # a bright speck outside
    noisy = torch.complex(mag + 0.12 * torch.randn(mag.shape, generator=g),
                          0.12 * torch.randn(mag.shape, generator=g)).abs()  # Rician
    echoes = torch.stack([noisy, 0.7 * noisy])
    mask = brain_mask(echoes, (1.0, 1.0, 1.0))
    assert mask.dtype == torch.bool and mask.shape == truth.shape
    assert dice(mask, truth) > 0.97
    assert not mask[3, 3, 3]  # the speck is not the largest component
    assert mask[20, 20, 20]  # the hole is filled
    labels, n = ndimage.label(mask.numpy())
    assert n == 1


def test_otsu_threshold_between_modes():
    g = torch.Generator().manual_seed(1)
    v = torch.cat([0.1 + 0.02 * torch.randn(5000, generator=g),
                   1.0 + 0.05 * torch.randn(3000, generator=g)])
    t = otsu_threshold(v)
    assert 0.3 < t < 0.8


@pytest.mark.parametrize("radius_mm", [1.0, 2.6, 3.0])
def test_erode_box_anisotropic_voxels(radius_mm):
    vox = (1.0, 1.25, 2.5)
    box = torch.zeros(30, 30, 20, dtype=torch.bool)
    box[5:25, 6:24, 4:16] = True
    out = erode_mask(box, radius_mm, vox)
    r = [int(np.floor(radius_mm / h)) for h in vox]  # voxels lost per side along each axis
    expected = torch.zeros_like(box)
    expected[5 + r[0]:25 - r[0], 6 + r[1]:24 - r[1], 4 + r[2]:16 - r[2]] = True
    assert torch.equal(out, expected)


def test_morphology_matches_scipy(devices):
    vox = (0.8, 1.0, 2.0)
    g = torch.Generator().manual_seed(2)
    blob = gaussian_smooth(torch.rand(28, 28, 16, generator=g), 2.0, vox) > 0.5
    blob[0] = True  # touches the border: outside the volume is background
    st = ball_structure(2.5, vox)
    b = blob.numpy()
    ref_erode = ndimage.binary_erosion(b, st, border_value=0)
    ref_dilate = ndimage.binary_dilation(b, st)
    for dev in devices:
        assert np.array_equal(erode_mask(blob.to(dev), 2.5, vox).cpu().numpy(), ref_erode)
        assert np.array_equal(dilate_mask(blob.to(dev), 2.5, vox).cpu().numpy(), ref_dilate)
    assert np.array_equal(open_mask(blob, 2.5, vox).numpy(),
                          ndimage.binary_dilation(ref_erode, st) & b)
    padded = np.pad(b, 6)
    ref_close = ndimage.binary_erosion(ndimage.binary_dilation(padded, st), st)[6:-6, 6:-6, 6:-6]
    assert np.array_equal(close_mask(blob, 2.5, vox).numpy(), ref_close | b)
    assert torch.equal(erode_mask(blob, 0.5, vox), blob)  # radius below every voxel size


def test_components_and_holes():
    m = sphere(24, 6) | sphere(24, 2, centre=(2, 2, 2))
    m[12, 12, 12] = False
    big = largest_component(m)
    assert not big[2, 2, 2] and big[11, 11, 11]
    assert fill_holes(big)[12, 12, 12] and not big[12, 12, 12]
    assert not largest_component(torch.zeros(4, 4, 4, dtype=torch.bool)).any()
    g = torch.Generator().manual_seed(4)
    foam = gaussian_smooth(torch.rand(30, 34, 26, generator=g), 1.0) > 0.45  # many pockets
    ref = ndimage.binary_fill_holes(foam.numpy())
    assert ref.sum() > foam.sum()
    assert np.array_equal(fill_holes(foam).numpy(), ref)


def test_resolve_mask_user_wins_and_errors(tmp_path):
    mag = sphere().float()
    user = torch.zeros(40, 40, 40)
    user[:10, :10, :10] = 1.0  # disagrees with the magnitude on purpose
    got = resolve_mask(user, mag)
    assert torch.equal(got, user > 0.5)
    got_np = resolve_mask(user.numpy()[..., None], mag)  # (X, Y, Z, 1) as from a NIfTI file
    assert torch.equal(got_np, got)
    assert dice(resolve_mask(None, mag), sphere()) > 0.99
    path = tmp_path / "mask.nii.gz"
    with pytest.raises(InputError, match="mask.nii.gz.*empty"):
        resolve_mask(torch.zeros(40, 40, 40), mag, path=path)
    with pytest.raises(InputError, match="mask.nii.gz.*shape"):
        resolve_mask(torch.ones(40, 40, 39), mag, path=path)
    with pytest.raises(InputError, match="no mask"):
        resolve_mask(None, None)
    with pytest.raises(InputError, match="empty"):
        brain_mask(torch.zeros(16, 16, 16), threshold=0.5)


def test_phase_quality_mask():
    mask = sphere(32, 12)
    quality = torch.ones(32, 32, 32)
    quality[:10] = 0.2  # unreliable slab (e.g. near a sinus)
    quality[16, 16, 16] = 0.0  # an isolated bad voxel inside: a hole, filled
    q = phase_quality_mask(mask, quality=quality)
    assert not q[:10].any() and q[16, 16, 16] and q[20, 16, 16]
    assert torch.equal(q, q & mask)
    residual = torch.full((32, 32, 32), 0.05) + 0.01 * torch.rand(32, 32, 32)
    residual[25:] = 2.0  # echo-fit residual blows up there
    r = phase_quality_mask(mask, residual=residual)
    assert not r[25:].any() and r[16, 16, 16]
    with pytest.raises(InputError, match="exactly one"):
        phase_quality_mask(mask)
    with pytest.raises(InputError, match="empty"):
        phase_quality_mask(mask, quality=torch.zeros(32, 32, 32))


def test_gaussian_smooth_matches_scipy():
    vox = (1.0, 0.5, 2.0)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(24, 30, 14, generator=g, dtype=torch.float64)
    sigma_mm = 3.0  # >= 1.5 voxels: sampled (scipy) and k-space Gaussians agree
    out = gaussian_smooth(x, sigma_mm, vox)
    ref = ndimage.gaussian_filter(x.numpy(), [sigma_mm / h for h in vox], mode="constant",
                                  truncate=6.0)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-3)
    z = gaussian_smooth(torch.polar(torch.ones(8, 8, 8), torch.full((8, 8, 8), 1.0)), 1.0)
    assert torch.allclose(torch.angle(z), torch.tensor(1.0), atol=1e-5)


def test_field_step_mask_flags_jumps_and_neighbours():
    from dlqsm.pipeline.masking import field_step_mask

    mask = torch.zeros(12, 12, 12, dtype=torch.bool)
    mask[2:10, 2:10, 2:10] = True
    x = torch.arange(12.0)[:, None, None].expand(12, 12, 12)
    field = 0.1 * x  # a smooth ramp: 0.1 per voxel, below the limit
    field = field.clone()
    field[5, 5, 5] += 2.0  # an unwrapping-like error in one voxel
    field[0, 0, 0] = 50.0  # outside the mask: never compared
    bad = field_step_mask(field, mask, 0.5, dilate=False)
    expected = torch.zeros_like(mask)
    expected[5, 5, 5] = True
    for d in range(3):
        for s in (-1, 1):
            idx = [5, 5, 5]
            idx[d] += s
            expected[tuple(idx)] = True
    assert torch.equal(bad, expected)
    grown = field_step_mask(field, mask, 0.5)
    assert int(grown.sum()) == 25 and bool((grown & ~mask).sum() == 0)
    assert not field_step_mask(field, mask, 3.0).any()
    assert field_step_mask(field, mask, 0.05).sum() == mask.sum()  # the ramp itself is too steep
