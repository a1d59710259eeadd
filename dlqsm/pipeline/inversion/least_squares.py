"""Weighted least squares (iLSQR-like) by conjugate gradients or LSQR."""

from __future__ import annotations

import math
import time

import torch

from dlqsm.pipeline import solvers
from dlqsm.pipeline.inversion.problem import InversionResult, Problem, finish, support_operator


def ilsqr(field, mask, *, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), weight=None,
          magnitude=None, padding=0, progress=False, lam=0.01, regularizer="gradient",
          support="mask", solver="cg", max_iter=100, tol=1e-3) -> InversionResult:
    """Weighted least squares: argmin ||W (D S chi - f)||^2 + lam ||R S chi||^2, iteratively.

    W is ``weight`` (normalised to mean 1 in the mask) or the mask: only voxels inside the mask
    constrain chi. S restricts the sources to the mask (``support="mask"``, the model of a
    local field: its sources lie inside the mask; on simulated heads this more than halves the
    error) or is the identity (``support="full"``). ``solver="cg"`` runs conjugate gradients
    on the normal equations S (D W^2 D + lam R^T R) S chi = S D W^2 f, stopping when the
    relative residual < ``tol``; ``solver="lsqr"`` runs LSQR on [W D S; sqrt(lam) R S] chi =
    [W f; 0], stopping when ||r||/||b|| < tol or its normal-equation test < tol. With a full
    mask (W = S = 1) the solution is that of :func:`tikhonov` with the same ``lam`` and
    ``regularizer``.

    Args:
        lam: regularisation weight; regularizer: "gradient" or "identity".
        support: "mask" or "full". solver: "cg" or "lsqr".
        max_iter: iteration limit; tol: stopping tolerance (CG converges in ~40 iterations).
    """
    t0 = time.perf_counter()
    prob = Problem(field, mask, voxel_size=voxel_size, b0_dir=b0_dir, weight=weight,
                   magnitude=magnitude, padding=padding)
    w, sup = prob.data_weight(), support_operator(prob, support)
    reg, reg_t = _regularizer_ops(prob, regularizer)
    params = {"lam": lam, "regularizer": regularizer, "support": support, "solver": solver,
              "max_iter": max_iter, "tol": tol}
    if solver == "cg":
        w2 = w.square()

        def normal(x):
            x = sup(x)
            return sup(prob.dipole(w2 * prob.dipole(x)) + lam * reg_t(reg(x)))

        chi, sinfo = solvers.cg(normal, sup(prob.dipole(w2 * prob.f)), max_iter=max_iter,
                                tol=tol, progress=progress, desc="ilsqr-cg")
    elif solver == "lsqr":
        chi, sinfo = _ilsqr_lsqr(prob, w, sup, lam, reg, reg_t, max_iter, tol, progress)
    else:
        raise ValueError(f"solver must be 'cg' or 'lsqr', got {solver!r}")
    change = sinfo["relative_residual"] if solver == "cg" else sinfo["optimality"]
    return finish(prob, chi, "ilsqr", params, t0, iterations=sinfo["iterations"],
                  converged=sinfo["converged"], relative_change=change, solver_info=sinfo)


def _ilsqr_lsqr(prob: Problem, w, sup, lam, reg, reg_t, max_iter, tol, progress):
    """LSQR on [W D S; sqrt(lam) R S] chi = [W f; 0], stacked along a leading channel axis."""
    sq, n = math.sqrt(lam), len(prob.shape)

    def fwd(x):
        x = sup(x)
        r = reg(x)
        r = r.unsqueeze(0) if r.ndim == n else r
        return torch.cat([(w * prob.dipole(x)).unsqueeze(0), sq * r])

    def adj(y):
        r = y[1:].squeeze(0) if y.shape[0] == 2 else y[1:]
        return sup(prob.dipole(w * y[0]) + sq * reg_t(r))

    rhs = fwd(torch.zeros_like(prob.f))
    rhs[0] = w * prob.f
    return solvers.lsqr(fwd, adj, rhs, max_iter=max_iter, atol=tol, btol=tol,
                        progress=progress, desc="ilsqr-lsqr")


def _regularizer_ops(prob: Problem, regularizer: str):
    if regularizer == "identity":
        return (lambda x: x), (lambda y: y)
    if regularizer == "gradient":
        return prob.gradient, prob.gradient_adjoint
    raise ValueError(f"regularizer must be 'identity' or 'gradient', got {regularizer!r}")
