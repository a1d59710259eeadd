"""Rapid two-step inversion (RTS): LSMR on the well-conditioned k-space, TV for the cone."""

from __future__ import annotations

import time

from dlqsm.physics.fft import irfft3, rfft3
from dlqsm.pipeline import solvers
from dlqsm.pipeline.inversion.problem import (
    InversionResult,
    Loop,
    Problem,
    finish,
    rel_change,
    support_operator,
)
from dlqsm.pipeline.inversion.total_variation import GradSplit


def rts(field, mask, *, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), weight=None,
        magnitude=None, padding=0, progress=False, delta=0.15, lsmr_iter=8, support="mask",
        mu=200.0, rho=10.0, alpha=1.0, tau=0.7, gamma=5.0, max_iter=20,
        tol=0.01) -> InversionResult:
    """Rapid two-step inversion (Kames et al. 2018).

    Step 1: ``lsmr_iter`` LSMR iterations (early stopping regularises) on
    min ||W (D S chi - f)||^2, with W the weight or the mask and S the restriction to the mask
    (``support="mask"``) or min ||D chi - f||^2 on the whole grid (``support="full"``, the
    published form); chi_1 is then masked. Step 2: keep chi_1 on the well-conditioned k-space
    M = [|D| > delta] and fill the cone by TV,
    argmin_chi mu/2 ||M (F chi - F chi_1)||^2 + alpha ||grad chi||_{2,1},
    by ADMM started at chi_1 with a closed-form k-space chi update; the penalty ``rho`` grows by
    ``gamma`` whenever the primal residual falls by less than a factor ``tau`` (the published
    continuation). Stops when the relative update < ``tol`` or after ``max_iter`` iterations.

    Defaults differ from the published ones (mu = 1e5, 4 LSMR iterations), which in this ppm
    scaling make step 2 a hard constraint that keeps the noise of step 1. ``lsmr_iter`` trades
    detail for robustness: 4 / 8 / 20 iterations gave 33 / 21 / 13 % NRMSE on the simulated
    phantoms but 58 / 71 / 94 % against COSMOS on the 2016 challenge's in-vivo field, whose
    model errors early stopping suppresses; 8 is the default.
    """
    t0 = time.perf_counter()
    prob = Problem(field, mask, voxel_size=voxel_size, b0_dir=b0_dir, weight=weight,
                   magnitude=magnitude, padding=padding)
    if support == "full":
        chi1, linfo = solvers.lsmr(prob.dipole, prob.dipole, prob.f, max_iter=lsmr_iter, tol=0.0)
    else:
        w, sup = prob.data_weight(), support_operator(prob, support)
        chi1, linfo = solvers.lsmr(lambda x: w * prob.dipole(sup(x)),
                                   lambda y: sup(prob.dipole(w * y)), w * prob.f,
                                   max_iter=lsmr_iter, tol=0.0)
    chi = chi1.mul_(prob.mask)
    well = (prob.D.abs() > delta).to(prob.dtype)
    xk, e2 = rfft3(chi).mul_(mu * well), prob.e2()
    split = GradSplit(prob, alpha / rho)
    split.update(chi)
    loop, res_prev, rho0 = Loop(max_iter, tol, progress, "rts-admm"), float("inf"), rho
    for _ in loop:
        if loop.iterations == 1 or split.threshold != alpha / rho:
            split.threshold = alpha / rho
            inv_den = (mu * well + rho * e2).reciprocal_().nan_to_num_(posinf=0.0)
        rhs = split.rhs_k().mul_(rho).add_(xk).mul_(inv_den)
        chi_new = irfft3(rhs, prob.shape)
        split.update(chi_new)
        stop, chi = loop.done(rel_change(chi_new, chi)), chi_new
        if stop:
            break
        res = split.primal_residual()
        if res > tau * res_prev:
            rho *= gamma
            split.u.div_(gamma)
        res_prev = res
    params = {"delta": delta, "lsmr_iter": lsmr_iter, "support": support, "mu": mu,
              "rho": rho0, "alpha": alpha, "tau": tau, "gamma": gamma, "max_iter": max_iter,
              "tol": tol}
    return finish(prob, chi, "rts", params, t0, **loop.info(),
                  lsmr_iterations=linfo["iterations"], final_rho=rho)
