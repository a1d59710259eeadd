"""Dipole inversion: solvers against scipy, closed forms against iterative solutions, round
trips on a piecewise-constant phantom with stated NRMSE tolerances, and the invert() contract."""

import math

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import lsmr as scipy_lsmr
from scipy.sparse.linalg import lsqr as scipy_lsqr

from dlqsm.physics.dipole import DipoleOperator, dipole_kernel
from dlqsm.physics.fft import rfft3
from dlqsm.pipeline import inversion as inv
from dlqsm.pipeline import solvers
from dlqsm.pipeline.inversion import METHODS, InversionResult, invert, method_defaults

SHAPE = (40, 40, 40)
NOISE = 1e-3  # ppm

# (centre, semi-axes) in units of the half extent, chi (ppm), magnitude
BLOBS = [
    ((0.0, 0.0, 0.0), (0.85, 0.8, 0.75), -0.02, 0.9),  # "white matter" = the mask
    ((-0.35, 0.1, 0.1), (0.2, 0.25, 0.2), 0.10, 0.6),
    ((0.35, -0.1, -0.1), (0.15, 0.15, 0.3), 0.05, 0.7),
    ((0.0, 0.4, -0.3), (0.12, 0.12, 0.12), 0.25, 0.4),
    ((0.1, -0.45, 0.3), (0.15, 0.1, 0.1), -0.08, 1.0),
]


def nrmse(chi, truth, mask):
    """Masked, demeaned NRMSE in percent (computed here, independent of dlqsm.metrics)."""
    m = mask.bool()
    p, t = chi[m] - chi[m].mean(), truth[m] - truth[m].mean()
    return float(100 * torch.linalg.norm(p - t) / torch.linalg.norm(t))


def blobs(shape=SHAPE):
    axes = [torch.linspace(-1, 1, n) for n in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    chi, mag = torch.zeros(shape), torch.zeros(shape)
    for c, a, value, m in BLOBS:
        inside = sum(((v - ci) / ai) ** 2 for v, ci, ai in zip((x, y, z), c, a, strict=True)) <= 1
        chi[inside], mag[inside] = value, m
    return chi, mag > 0, mag


@pytest.fixture(scope="module")
def phantom():
    """chi (ppm), mask, magnitude, and the noisy local field (ppm) of chi inside the mask."""
    chi, mask, mag = blobs()
    gen = torch.Generator().manual_seed(0)
    field = DipoleOperator(SHAPE, padding=8).forward(chi)
    field = (field + NOISE * torch.randn(SHAPE, generator=gen)) * mask
    mag = (mag + 0.03 * torch.randn(SHAPE, generator=gen)).abs() * mask
    return {"chi": chi, "mask": mask, "mag": mag, "field": field}


# ------------------------------------------------------------------------------- solvers


def _small_system(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((50, 30))
    b = rng.standard_normal(50)
    return a, b, torch.tensor(a), torch.tensor(b)


@pytest.mark.parametrize("iters", [1, 4, 12])
def test_lsqr_and_lsmr_iterates_match_scipy(iters):
    a, b, at, bt = _small_system()
    ref = scipy_lsqr(a, b, iter_lim=iters, atol=0, btol=0)[0]
    x, info = solvers.lsqr(lambda v: at @ v, lambda v: at.T @ v, bt, max_iter=iters, atol=0,
                           btol=0)
    assert info["iterations"] == iters
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-7, atol=1e-9)
    ref = scipy_lsmr(a, b, maxiter=iters, atol=0, btol=0)[0]
    x, info = solvers.lsmr(lambda v: at @ v, lambda v: at.T @ v, bt, max_iter=iters, tol=0)
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-7, atol=1e-9)


def test_cg_solves_spd_system_and_stops_on_tolerance():
    a, _, at, bt = _small_system()
    m, rhs = at.T @ at + 0.1 * torch.eye(30, dtype=at.dtype), at.T @ bt
    x, info = solvers.cg(lambda v: m @ v, rhs, max_iter=500, tol=1e-10)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(m.numpy(), rhs.numpy()), rtol=1e-8)
    x, info = solvers.cg(lambda v: m @ v, rhs, max_iter=500, tol=1e-2)
    assert info["converged"] and info["relative_residual"] < 1e-2
    assert 0 < info["iterations"] < 30
    assert float(torch.linalg.norm(rhs - m @ x) / torch.linalg.norm(rhs)) < 1e-2
    _, info = solvers.cg(lambda v: m @ v, rhs, max_iter=2, tol=1e-12)
    assert not info["converged"] and info["iterations"] == 2


# ------------------------------------------------------------------------- building blocks


def test_fast_fft_len():
    assert inv.fast_fft_len(164) == 168 and inv.fast_fft_len(205) == 210
    assert inv.fast_fft_len(7) == 7 and inv.fast_fft_len(7, even=True) == 8
    assert inv.fast_fft_len(40) == 40


def test_edge_mask_marks_the_requested_fraction_at_magnitude_edges():
    mag = torch.zeros(20, 20, 20)
    mag[5:15, 5:15, 5:15] = 1.0
    mag += 0.01 * torch.rand(20, 20, 20)
    mask = torch.ones(20, 20, 20, dtype=torch.bool)
    m = inv.edge_mask(mag, mask, edge_fraction=0.1)
    assert m.shape == (3, 20, 20, 20)
    assert abs(float((m == 0).float().mean()) - 0.1) < 0.01
    assert bool((m[0, 4, 5:15, 5:15] == 0).all())  # the cube's faces normal to x are edges
    assert bool((m[:, 9, 9, 9] == 1).all())  # its inside is not


# ------------------------------------------------------------------------ closed forms


def test_tkd_without_noise_recovers_chi_outside_the_truncated_cone():
    chi, mask, _ = blobs()
    field = DipoleOperator(SHAPE).forward(chi)  # periodic, exact
    thr = 1e-3
    res = inv.tkd(field, mask, threshold=thr)
    d = dipole_kernel(SHAPE)
    keep = d.abs() >= 0.05
    err = (rfft3(res.chi) - rfft3(chi))[keep].abs().max()
    assert float(err / rfft3(chi)[keep].abs().max()) < 1e-4
    # in image space only the components with |D| < thr (grid points on the cone surface, where
    # D = 0 exactly, and k = 0) are lost: 8% here
    assert nrmse(res.chi, chi, mask) < 10.0


def test_tkd_truncation_is_sign_preserving():
    # a single k-space component inside the cone: TKD scales it by 1 / (sign(D) * thr * D)
    shape = (16, 16, 16)
    d = dipole_kernel(shape)
    thr = 0.2
    idx = (d.abs() < thr) & (d.abs() > 0.05)
    i, j, k = (int(v[0]) for v in torch.nonzero(idx, as_tuple=True))
    spec = torch.zeros_like(d, dtype=torch.complex64)
    spec[i, j, k] = 1.0
    field = torch.fft.irfftn(spec, s=shape)
    out = rfft3(inv.tkd(field, torch.ones(shape), threshold=thr).chi)[i, j, k]
    assert abs(float(out.real) - float(torch.sign(d[i, j, k]) / thr)) < 1e-3
    out = rfft3(inv.tsvd(field, torch.ones(shape), threshold=thr).chi)[i, j, k]
    assert abs(complex(out)) < 1e-5


@pytest.mark.parametrize("regularizer,lam", [("identity", 0.02), ("gradient", 0.05)])
@pytest.mark.parametrize("solver", ["cg", "lsqr"])
def test_tikhonov_closed_form_equals_iterative_solution(phantom, regularizer, lam, solver):
    field = phantom["field"].double()
    full = torch.ones(SHAPE, dtype=torch.bool)  # W = S = 1: the problem of the closed form
    closed = inv.tikhonov(field, full, lam=lam, regularizer=regularizer).chi
    it = inv.ilsqr(field, full, lam=lam, regularizer=regularizer, solver=solver,
                   max_iter=1000, tol=1e-9)
    assert it.info["converged"]
    rel = torch.linalg.norm(it.chi - closed) / torch.linalg.norm(closed)
    assert float(rel) < 1e-5


# ----------------------------------------------------------------------------- round trips

# NRMSE (%) each method must reach with its defaults on the 40^3 phantom with 1e-3 ppm noise;
# measured (float32, CPU): tkd 37.2, tsvd 39.1, tikhonov 39.4, ilsqr 35.0, tv 8.4, medi 4.1
# (its edge mask is nearly an oracle here), ndi 38.6, rts 15.8.
TOLERANCE = {"tkd": 42, "tsvd": 45, "tikhonov": 45, "ilsqr": 40, "tv": 14, "medi": 10, "ndi": 45,
             "rts": 21}


@pytest.fixture(scope="module")
def results(phantom):
    return {m: invert(phantom["field"], phantom["mask"], method=m, magnitude=phantom["mag"])
            for m in METHODS if m not in inv.TOTAL_FIELD_METHODS}  # tfi: tests/pipeline/test_tfi.py


@pytest.mark.parametrize("method", sorted(TOLERANCE))
def test_round_trip_reaches_stated_nrmse(phantom, results, method):
    res = results[method]
    assert isinstance(res, InversionResult)
    assert res.chi.shape == SHAPE and res.chi.dtype == torch.float32
    assert bool(torch.isfinite(res.chi).all())
    assert float(res.chi[~phantom["mask"]].abs().max()) == 0.0
    assert nrmse(res.chi, phantom["chi"], phantom["mask"]) < TOLERANCE[method]
    info = res.info
    for key in ("method", "parameters", "iterations", "converged", "relative_change", "time_s",
                "reference"):
        assert key in info
    assert info["method"] == method and set(method_defaults(method)) <= set(info["parameters"])


def test_tv_beats_tkd(phantom, results):
    e_tv = nrmse(results["tv"].chi, phantom["chi"], phantom["mask"])
    e_tkd = nrmse(results["tkd"].chi, phantom["chi"], phantom["mask"])
    assert e_tv < 0.5 * e_tkd


def test_iterative_methods_report_convergence(phantom):
    f, m = phantom["field"], phantom["mask"]
    capped = invert(f, m, method="tv", max_iter=3, tol=0.0)
    assert capped.info["iterations"] == 3 and not capped.info["converged"]
    loose = invert(f, m, method="tv", max_iter=100, tol=0.05)
    assert loose.info["converged"] and loose.info["iterations"] < 100
    assert loose.info["relative_change"] < 0.05
    strict = invert(f, m, method="tv", max_iter=100, tol=1e-3)
    assert strict.info["iterations"] > loose.info["iterations"]
    cg = invert(f, m, method="ilsqr", tol=1e-2)
    assert cg.info["converged"] and cg.info["solver_info"]["relative_residual"] < 1e-2
    for method in ("ndi", "rts", "medi"):
        res = invert(f, m, method=method, max_iter=2, tol=0.0, magnitude=phantom["mag"])
        assert res.info["iterations"] == 2 and not res.info["converged"]


@pytest.mark.parametrize("method", ["ilsqr", "tv", "ndi", "rts"])
def test_weighting_down_weights_noisy_voxels(phantom, method):
    """Strong noise in one half of the brain: the inverse-noise weight lowers the error."""
    chi, mask = phantom["chi"], phantom["mask"]
    sigma = torch.full(SHAPE, NOISE)
    sigma[: SHAPE[0] // 2] = 0.02
    gen = torch.Generator().manual_seed(3)
    field = (DipoleOperator(SHAPE, padding=8).forward(chi)
             + sigma * torch.randn(SHAPE, generator=gen)) * mask
    plain = invert(field, mask, method=method)
    weighted = invert(field, mask, method=method, weight=1 / sigma)
    assert nrmse(weighted.chi, chi, mask) < 0.8 * nrmse(plain.chi, chi, mask)


def test_closed_forms_warn_that_they_ignore_a_weight(phantom):
    with pytest.warns(UserWarning, match="ignores the weight"):
        invert(phantom["field"], phantom["mask"], method="tkd", weight=phantom["mag"])


def test_tv_data_terms(phantom):
    """The masked data term (default) leaves the field outside the mask free; "full" fits 0."""
    f, m, chi = phantom["field"], phantom["mask"], phantom["chi"]
    masked = invert(f, m, method="tv")
    full = invert(f, m, method="tv", data_term="full")
    assert masked.info["parameters"]["data_term"] == "mask"
    assert full.info["parameters"]["data_term"] == "full"
    assert nrmse(masked.chi, chi, m) < nrmse(full.chi, chi, m)
    with pytest.warns(UserWarning, match="ignores the weight"):
        invert(f, m, method="tv", data_term="full", weight=phantom["mag"])


def test_anisotropic_voxels_oblique_b0_and_padding(phantom):
    chi, mask = phantom["chi"], phantom["mask"]
    vox, b0 = (1.0, 1.0, 2.0), (0.3, 0.0, 1.0)
    field = DipoleOperator(SHAPE, vox, b0, padding=8).forward(chi) * mask
    good = invert(field, mask, method="tv", voxel_size=vox, b0_dir=b0, padding=4)
    wrong = invert(field, mask, method="tv")  # default geometry: must be worse
    assert good.chi.shape == SHAPE and good.info["padding"] == 4
    assert nrmse(good.chi, chi, mask) < 30
    assert nrmse(good.chi, chi, mask) < 0.8 * nrmse(wrong.chi, chi, mask)


@pytest.mark.parametrize("method", sorted(TOLERANCE))
def test_odd_shapes_with_padding_and_all_inputs(phantom, method):
    """A grid that must be extended to fast FFT lengths, padding, weight and magnitude."""
    crop = (slice(1, 38), slice(0, 40), slice(0, 39))  # 37 x 40 x 39
    f, m, mag = (phantom[k][crop] for k in ("field", "mask", "mag"))
    res = invert(f, m, method=method, padding=2, magnitude=mag, max_iter=3) if (
        "max_iter" in method_defaults(method)) else invert(f, m, method=method, padding=2)
    assert res.chi.shape == (37, 40, 39) and bool(torch.isfinite(res.chi).all())
    if method not in ("tkd", "tsvd", "tikhonov"):
        res = invert(f, m, method=method, weight=mag + 0.1, magnitude=mag, max_iter=3)
        assert res.chi.shape == (37, 40, 39) and bool(torch.isfinite(res.chi).all())


def test_medi_without_magnitude_runs_without_edges(phantom):
    res = invert(phantom["field"], phantom["mask"], method="medi")
    assert res.info["edges"].startswith("none")
    assert nrmse(res.chi, phantom["chi"], phantom["mask"]) < 35  # plain anisotropic TV (25%)


def test_float64_input_stays_float64(phantom):
    res = invert(phantom["field"].double(), phantom["mask"], method="tkd")
    assert res.chi.dtype == torch.float64


def test_progress_bar_runs(phantom):
    res = invert(phantom["field"], phantom["mask"], method="tv", max_iter=2, progress=True)
    assert res.info["iterations"] == 2


# ---------------------------------------------------------------------- invert() contract


def test_registry_and_defaults():
    assert set(METHODS) == {"tkd", "tsvd", "tikhonov", "ilsqr", "tv", "medi", "ndi", "rts", "tfi"}
    for name in METHODS:
        d = method_defaults(name)
        assert d and not set(d) & set(inv.COMMON_ARGS)
    assert method_defaults("tkd") == {"threshold": 0.19}
    with pytest.raises(ValueError, match="unknown inversion method"):
        method_defaults("nope")


def test_register_method_makes_a_method_available_to_invert(phantom, monkeypatch):
    from dlqsm.pipeline.inversion import registry

    monkeypatch.setattr(registry, "METHODS", dict(METHODS))  # leave the real registry alone

    def half_tsvd(field, mask, *, voxel_size, b0_dir, weight=None, magnitude=None, padding=0,
                  progress=False, cut=0.2):
        res = inv.tsvd(field, mask, voxel_size=voxel_size, b0_dir=b0_dir, padding=padding,
                       threshold=cut)
        return InversionResult(0.5 * res.chi, {**res.info, "method": "half_tsvd",
                                               "parameters": {"cut": cut}})

    inv.register_method("half_tsvd", half_tsvd)
    assert registry.method_defaults("half_tsvd") == {"cut": 0.2}
    f, m = phantom["field"], phantom["mask"]
    got = registry.invert(f, m, method="half_tsvd", cut=0.3, voxel_size=(1, 1, 2))
    ref = invert(f, m, method="tsvd", threshold=0.3, voxel_size=(1, 1, 2))
    torch.testing.assert_close(got.chi, 0.5 * ref.chi)
    assert got.info["parameters"] == {"cut": 0.3} and "half_tsvd" not in METHODS
    with pytest.raises(ValueError, match="already registered"):
        inv.register_method("tkd", half_tsvd)
    with pytest.raises(ValueError, match="common argument"):
        inv.register_method("bad", lambda field, mask, *, voxel_size: None)

    def no_default(field, mask, *, voxel_size, b0_dir, weight, magnitude, padding, progress,
                   lam):
        return None

    with pytest.raises(ValueError, match="need a default"):
        inv.register_method("bad", no_default)


def test_reference_mean_gives_zero_mean_in_the_mask(phantom):
    f, m = phantom["field"], phantom["mask"]
    ref = invert(f, m, method="tkd")
    raw = invert(f, m, method="tkd", reference="none")
    assert abs(float(ref.chi[m].mean())) < 1e-7
    assert abs(float(raw.chi[m].mean())) > 1e-5  # tkd's chi has zero mean on the whole grid
    diff = (raw.chi - ref.chi)[m]
    assert float(diff.max() - diff.min()) < 1e-6  # a constant offset, nothing else
    assert ref.info["reference"] == "mean" and raw.info["reference"] == "none"


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "magic"}, "unknown inversion method"),
    ({"method": "tv", "lamda": 1.0}, "unknown parameter"),
    ({"method": "tkd", "reference": "csf"}, "reference"),
    ({"method": "tv", "data_term": "half"}, "data_term"),
    ({"method": "ilsqr", "solver": "qr"}, "solver"),
])
def test_invert_rejects_bad_arguments(phantom, kwargs, match):
    with pytest.raises(ValueError, match=match):
        invert(phantom["field"], phantom["mask"], **kwargs)


def test_invert_rejects_bad_volumes(phantom):
    f, m = phantom["field"], phantom["mask"]
    with pytest.raises(ValueError, match="does not match"):
        invert(f, m[:-1])
    with pytest.raises(ValueError, match="3D"):
        invert(f[0], m[0])
    with pytest.raises(ValueError, match="empty"):
        invert(f, torch.zeros_like(m))
    with pytest.raises(ValueError, match="does not match"):
        invert(f, m, method="medi", magnitude=f[:, :, :-1])
    with pytest.raises(ValueError, match="non-negative"):
        invert(f, m, method="ilsqr", weight=-torch.ones(SHAPE))
    bad = f.clone()
    bad[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="finite"):
        invert(bad, m)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["tkd", "tv", "ilsqr", "rts"])
def test_cuda_matches_cpu(phantom, method):
    cpu = invert(phantom["field"], phantom["mask"], method=method)
    gpu = invert(phantom["field"].cuda(), phantom["mask"].cuda(), method=method)
    assert gpu.chi.device.type == "cuda"
    rel = torch.linalg.norm(gpu.chi.cpu() - cpu.chi) / torch.linalg.norm(cpu.chi)
    assert float(rel) < 1e-3
