"""QSM metrics against independent numpy/scipy references, identities, scalings and masks."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from dlqsm.metrics import functional as QF
from dlqsm.metrics import wrappers as QW

SHAPE = (22, 20, 18)
ROI_IDS = (1, 2, 3, 4)


# ----------------------------------------------------------------------------- fixtures
def _smooth(rng, shape=SHAPE, sigma=1.5, scale=0.1):
    return ndi.gaussian_filter(rng.standard_normal(shape), sigma) * scale / 0.1


@pytest.fixture
def data():
    """A smooth 'truth', a degraded prediction (scaled, noisy, offset), a mask and labels."""
    rng = np.random.default_rng(1)
    t = _smooth(rng) + 0.05
    p = 0.8 * t + 0.3 * _smooth(rng, sigma=0.7) + 0.02
    mask = np.zeros(SHAPE, bool)
    mask[2:20, 3:17, 1:16] = True
    mask[8:12, 8:12, 6:10] = False  # a hole: the mask need not be convex
    labels = np.zeros(SHAPE, np.int64)
    for i, sl in enumerate([np.s_[3:7, 4:8, 2:6], np.s_[12:16, 4:8, 2:6],
                            np.s_[3:7, 10:15, 9:14], np.s_[14:19, 11:16, 10:15]]):
        labels[sl] = i + 1
        t[sl] += 0.05 * (i + 1)  # distinct ROI means
        p[sl] += 0.04 * (i + 1)
    return p, t, mask, labels


def _tt(*arrays):
    return [torch.as_tensor(a) for a in arrays]


# ----------------------------------------------------------------------------- numpy references
def _np_demean(x, m):
    return (x - x[m].mean()) * m


def np_nrmse(p, t, m):
    p, t = p[m] - p[m].mean(), t[m] - t[m].mean()
    return 100 * np.linalg.norm(p - t) / np.linalg.norm(t)


def np_dnrmse(p, t, m):
    a, b = np.polyfit(p[m], t[m], 1)  # target ~ a * pred + b
    fitted = a * p[m] + b
    tm = t[m] - t[m].mean()
    return 100 * np.linalg.norm(fitted - fitted.mean() - tm) / np.linalg.norm(tm)


def np_hfen(p, t, m):
    lp = ndi.gaussian_laplace(_np_demean(p, m), 1.5, mode="nearest", radius=7)
    lt = ndi.gaussian_laplace(_np_demean(t, m), 1.5, mode="nearest", radius=7)
    return 100 * np.linalg.norm((lp - lt)[m]) / np.linalg.norm(lt[m])


def _np_ssim_map(x, y, filt, c1, c2):
    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
    return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))


def np_xsim(p, t, m, filt):
    smap = _np_ssim_map(_np_demean(p, m), _np_demean(t, m), filt, 0.01 ** 2, 0.001 ** 2)
    return smap[m].mean()


def np_ssim(p, t, m, filt):
    p, t = _np_demean(p, m), _np_demean(t, m)
    lo, hi = t.min(), t.max()
    smap = _np_ssim_map((p - lo) / (hi - lo), (t - lo) / (hi - lo), filt, 0.01 ** 2, 0.03 ** 2)
    return smap[m].mean()


def gauss(radius):
    return lambda x: ndi.gaussian_filter(x, 1.5, mode="nearest", radius=radius)


def box(size):
    return lambda x: ndi.uniform_filter(x, size, mode="nearest")


# ----------------------------------------------------------------------------- against references
def test_error_norms_match_numpy(data):
    p, t, m, _ = data
    tp, tt, tm = _tt(p, t, m)
    assert float(QF.nrmse(tp, tt, tm)) == pytest.approx(np_nrmse(p, t, m), rel=1e-10)
    assert float(QF.nrmse_detrended(tp, tt, tm)) == pytest.approx(np_dnrmse(p, t, m), rel=1e-8)
    assert float(QF.hfen(tp, tt, tm)) == pytest.approx(np_hfen(p, t, m), rel=1e-8)
    # the degraded prediction is neither perfect nor useless
    assert 20 < float(QF.nrmse(tp, tt, tm)) < 100
    assert float(QF.nrmse_detrended(tp, tt, tm)) < float(QF.nrmse(tp, tt, tm))


def test_similarity_matches_scipy_windows(data):
    p, t, m, _ = data
    tp, tt, tm = _tt(p, t, m)
    assert float(QF.xsim(tp, tt, tm)) == pytest.approx(np_xsim(p, t, m, box(5)), rel=1e-8)
    assert float(QF.xsim(tp, tt, tm, window="gaussian", radius=3)) == pytest.approx(
        np_xsim(p, t, m, gauss(3)), rel=1e-8)
    assert float(QF.ssim(tp, tt, tm)) == pytest.approx(np_ssim(p, t, m, gauss(5)), rel=1e-8)
    assert float(QF.ssim(tp, tt, tm, window="uniform", radius=2)) == pytest.approx(
        np_ssim(p, t, m, box(5)), rel=1e-8)
    assert 0.2 < float(QF.xsim(tp, tt, tm)) < 0.99


def test_correlation_and_fit_match_numpy(data):
    p, t, m, _ = data
    tp, tt, tm = _tt(p, t, m)
    assert float(QF.pearson(tp, tt, tm)) == pytest.approx(np.corrcoef(p[m], t[m])[0, 1], rel=1e-10)
    slope, intercept = QF.linear_fit(tp, tt, tm)
    ref_slope, ref_intercept = np.polyfit(t[m], p[m], 1)
    assert float(slope) == pytest.approx(ref_slope, rel=1e-9)
    assert float(intercept) == pytest.approx(ref_intercept, rel=1e-8, abs=1e-12)


def test_roi_metrics_match_numpy(data):
    p, t, m, lab = data
    tp, tt, tm, tl = _tt(p, t, m, lab)
    means = QF.roi_means(tt, tl, ROI_IDS)
    np.testing.assert_allclose(means.numpy(), [t[lab == i].mean() for i in ROI_IDS], rtol=1e-12)
    err = QF.per_roi_error(tp, tt, tl, ROI_IDS, mask=tm)
    pr, tr = p - p[m].mean(), t - t[m].mean()
    for i in ROI_IDS:
        assert err[i] == pytest.approx(pr[lab == i].mean() - tr[lab == i].mean(), abs=1e-12)
    slope = np.polyfit([t[lab == i].mean() for i in ROI_IDS],
                       [p[lab == i].mean() for i in ROI_IDS], 1)[0]
    assert float(QF.dgm_linearity(tp, tt, tl, ROI_IDS)) == pytest.approx(abs(1 - slope), rel=1e-9)
    assert torch.isnan(QF.roi_means(tt, tl, [99])).all()  # empty region -> NaN, not 0


# ----------------------------------------------------------------------------- identities, scalings
def test_identity_is_perfect(data):
    _, t, m, lab = data
    tt, tm, tl = _tt(t, m, lab)
    s = QF.compute_all(tt, tt.clone(), tm, tl, ROI_IDS)
    for key in ("nrmse", "dnrmse", "hfen", "dgm_linearity", "roi_mae", "intercept"):
        assert s[key] == pytest.approx(0.0, abs=1e-9), key
    for key in ("ssim", "xsim", "pearson", "slope"):
        assert s[key] == pytest.approx(1.0, abs=1e-9), key


def test_known_scaling_and_offset(data):
    _, t, m, lab = data
    tt, tm, tl = _tt(t, m, lab)
    for a in (0.5, 2.0):
        s = QF.compute_all(a * tt + 0.3, tt, tm, tl, ROI_IDS)  # scaled, with an offset
        assert s["nrmse"] == pytest.approx(100 * abs(a - 1), rel=1e-9)
        assert s["hfen"] == pytest.approx(100 * abs(a - 1), rel=1e-9)  # LoG is linear
        assert s["dnrmse"] == pytest.approx(0.0, abs=1e-8)
        assert s["slope"] == pytest.approx(a, rel=1e-9)
        assert s["dgm_linearity"] == pytest.approx(abs(1 - a), rel=1e-9)
        assert s["pearson"] == pytest.approx(1.0, abs=1e-12)
        assert s["xsim"] < 0.999 and s["ssim"] < 0.999
    # an offset alone is invisible after demeaning
    s = QF.compute_all(tt - 0.2, tt, tm, tl, ROI_IDS)
    assert s["nrmse"] == pytest.approx(0.0, abs=1e-9)
    assert s["xsim"] == pytest.approx(1.0, abs=1e-9)
    assert s["roi_mae"] == pytest.approx(0.0, abs=1e-12)
    assert float(QF.xsim(tt - 0.2, tt, tm, demean=False)) < 0.99  # but not without it


def test_voxels_outside_mask_do_not_matter(data):
    p, t, m, _ = data
    tp, tt, tm = _tt(p, t, m)
    junk = torch.as_tensor(np.random.default_rng(5).standard_normal(SHAPE) * 10)
    p2 = torch.where(tm, tp, junk)
    t2 = torch.where(tm, tt, -junk)
    for fn in (QF.nrmse, QF.nrmse_detrended, QF.hfen, QF.ssim, QF.xsim, QF.pearson):
        assert float(fn(p2, t2, tm)) == pytest.approx(float(fn(tp, tt, tm)), rel=1e-10)
        assert float(fn(p2, t2, tm)) != pytest.approx(float(fn(p2, t2)), rel=1e-3)


# ----------------------------------------------------------------------------- shapes and devices
def test_batched_equals_per_volume(data):
    p, t, m, _ = data
    tp, tt, tm = _tt(p, t, m)
    pb = torch.stack([tp, 0.5 * tp + tt, tt]).unsqueeze(1)  # (3, 1, X, Y, Z)
    tb = torch.stack([tt, tt, tt + 0.1 * tp]).unsqueeze(1)
    for fn in (QF.nrmse, QF.nrmse_detrended, QF.hfen, QF.ssim, QF.xsim, QF.pearson):
        batch = fn(pb, tb, tm)
        assert batch.shape == (3,)
        single = [float(fn(pb[i, 0], tb[i, 0], tm)) for i in range(3)]
        np.testing.assert_allclose(batch.numpy(), single, rtol=1e-10)
        # a per-volume mask (B, 1, X, Y, Z) gives the same as one broadcast mask
        np.testing.assert_allclose(fn(pb, tb, tm.expand_as(pb)).numpy(), single, rtol=1e-10)
    assert QF.linear_fit(pb[:, 0], tb[:, 0], tm)[0].shape == (3,)


def test_bad_shapes_raise(data):
    p, t, m, _ = data
    tp, tt, tm = _tt(p, t, m)
    with pytest.raises(ValueError):
        QF.nrmse(tp, tt[:-1])
    with pytest.raises(ValueError):
        QF.nrmse(tp, tt, tm[:-1])
    with pytest.raises(ValueError):
        QF.nrmse(tp[None, None].expand(1, 2, *SHAPE), tt[None, None].expand(1, 2, *SHAPE))


@pytest.mark.gpu
def test_metrics_on_cuda_match_cpu(data):
    p, t, m, lab = data
    tp, tt, tm, tl = _tt(p, t, m, lab)
    cpu = QF.compute_all(tp.float(), tt.float(), tm, tl, ROI_IDS)
    gpu = QF.compute_all(tp.float().cuda(), tt.float().cuda(), tm.cuda(), tl.cuda(), ROI_IDS)
    for k, v in cpu.items():
        assert gpu[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


# ----------------------------------------------------------------------------- torchmetrics
def _batches(data):
    p, t, m, _ = data
    tp, tt, tm = _tt(p, t, m)
    b1 = (torch.stack([tp, 0.7 * tt]).unsqueeze(1), torch.stack([tt, tt]).unsqueeze(1))
    b2 = ((tp + 0.1 * tt)[None, None], tt[None, None])
    return b1, b2, tm


def test_wrapper_accumulates_two_batches(data):
    (p1, t1), (p2, t2), m = _batches(data)
    for name, fn in [("nrmse", QF.nrmse), ("hfen", QF.hfen), ("xsim", QF.xsim),
                     ("dnrmse", QF.nrmse_detrended), ("ssim", QF.ssim)]:
        metric = QW.QSMMetric(name)
        metric.update(p1, t1, m)
        metric.update(p2, t2, m)
        scores = torch.cat([fn(p1, t1, m), fn(p2, t2, m)])
        assert float(metric.compute()) == pytest.approx(float(scores.mean()), rel=1e-10)
        # the mean over volumes, not the mean of the two batch means
        batch_means = (fn(p1, t1, m).mean() + fn(p2, t2, m).mean()) / 2
        assert float(metric.compute()) != pytest.approx(float(batch_means), rel=1e-6)
        metric.reset()
        assert int(metric.count) == 0


def test_wrapper_states_merge_like_ddp(data):
    (p1, t1), (p2, t2), m = _batches(data)
    rank0, rank1 = QW.XSIM(), QW.XSIM()
    assert rank0._reductions["total"] is not None and rank0._reductions["count"] is not None
    rank0.update(p1, t1, m)
    rank1.update(p2, t2, m)
    rank0.merge_state(rank1)  # what the sum all-reduce does across processes
    expected = torch.cat([QF.xsim(p1, t1, m), QF.xsim(p2, t2, m)]).mean()
    assert float(rank0.compute()) == pytest.approx(float(expected), rel=1e-10)


def test_collection_factory(data):
    (p1, t1), (p2, t2), m = _batches(data)
    _, _, _, lab = data
    labels = torch.as_tensor(lab)
    coll = QW.qsm_metric_collection(prefix="val/", roi_ids=ROI_IDS)
    coll.update(p1, t1, m, labels=labels)
    coll.update(p2, t2, m, labels=labels)
    out = coll.compute()
    assert set(out) == {f"val/{k}" for k in (*QW.DEFAULT_METRICS, "dgm_linearity")}
    ref = torch.cat([QF.pearson(p1, t1, m), QF.pearson(p2, t2, m)]).mean()
    assert float(out["val/pearson"]) == pytest.approx(float(ref), rel=1e-10)
    lin = torch.cat([QF.dgm_linearity(p1, t1, labels, ROI_IDS),
                     QF.dgm_linearity(p2, t2, labels, ROI_IDS)]).mean()
    assert float(out["val/dgm_linearity"]) == pytest.approx(float(lin), rel=1e-10)
    assert isinstance(coll["nrmse"], QW.NRMSE) and coll["nrmse"].higher_is_better is False
    assert coll["xsim"].higher_is_better is True
    with pytest.raises(ValueError):
        QW.QSMMetric("psnr")
    with pytest.raises(ValueError):
        QW.make_metric("psnr")
