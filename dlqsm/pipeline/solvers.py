"""Generic matrix-free Krylov solvers on torch tensors: CG, LSQR and LSMR.

Operators are plain callables ``x -> A x`` (and ``y -> A^T y``) on real tensors of any shape;
vectors never leave their device. Each solver returns ``(x, info)`` where ``info`` is a dict
with ``iterations``, ``converged`` and the final value of its stopping quantity, so that callers
can report convergence honestly. Inner products sum blocks in the tensors' dtype (float32 by
default, which limits attainable relative tolerances to about 1e-6) and the block sums in
float64, in an order that does not depend on the number of threads (:func:`_dot`).

References for the algorithms (re-derived here, not copied): Hestenes & Stiefel 1952 (CG);
Paige & Saunders, ACM TOMS 8:43 (1982) (LSQR); Fong & Saunders, SIAM J Sci Comput 33:2950
(2011) (LSMR).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Op = Callable[[torch.Tensor], torch.Tensor]


_DOT_BLOCK = 4096
"""Inner products sum blocks of this many elements in the tensors' dtype, then the block sums
in float64, always in the same order."""


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """<a, b> that does not depend on the number of threads.

    ``torch.dot`` lets BLAS split a long float32 sum across threads, so its rounding (and with it
    every CG step after it) changed with ``torch.set_num_threads``: PDF's field after 40
    iterations differed by up to a 1.6x residual between one and two threads. Here each block of
    :data:`_DOT_BLOCK` elements is summed on its own (a per-row reduction, whose order does not
    depend on threads) and the block sums are added in float64.
    """
    a, b = a.reshape(-1), b.reshape(-1)
    whole = a.numel() // _DOT_BLOCK * _DOT_BLOCK
    total = 0.0
    if whole:
        rows = torch.einsum("ij,ij->i", a[:whole].view(-1, _DOT_BLOCK),
                            b[:whole].view(-1, _DOT_BLOCK))
        total = float(rows.double().sum())
    if whole < a.numel():
        total += float(torch.dot(a[whole:].double(), b[whole:].double()))
    return total


def _norm(a: torch.Tensor) -> float:
    return math.sqrt(max(_dot(a, a), 0.0))


def _iterations(max_iter: int, progress: bool, desc: str):
    if not progress:
        return range(1, max_iter + 1)
    from tqdm.auto import tqdm

    return tqdm(range(1, max_iter + 1), desc=desc, leave=False)


def cg(apply_a: Op, b: torch.Tensor, x0: torch.Tensor | None = None, *, max_iter: int = 100,
       tol: float = 1e-3, precond: Op | None = None, progress: bool = False, desc: str = "cg"):
    """(Preconditioned) conjugate gradients for ``A x = b`` with A symmetric positive
    (semi-)definite.

    Args:
        apply_a: callable computing A x for a tensor shaped like ``b``.
        b: right-hand side, any shape.
        x0: starting point (default zeros); not modified.
        max_iter: iteration limit.
        tol: stop when ||b - A x|| / ||b|| < tol.
        precond: optional callable r -> M^-1 r with M symmetric positive definite.

    Returns:
        (x, info) with info keys ``iterations``, ``converged``, ``relative_residual``.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b.clone() if x0 is None else b - apply_a(x)
    bnorm = _norm(b)
    rs = _dot(r, r)
    info = {"iterations": 0, "converged": True, "relative_residual": 0.0}
    if bnorm == 0.0 or math.sqrt(rs) <= tol * bnorm:
        info["relative_residual"] = math.sqrt(rs) / bnorm if bnorm else 0.0
        return x, info
    z = r if precond is None else precond(r)
    rz = rs if precond is None else _dot(r, z)
    p = z.clone()
    info["converged"] = False
    for it in _iterations(max_iter, progress, desc):
        ap = apply_a(p)
        pap = _dot(p, ap)
        if pap <= 0.0:  # breakdown: p in the null space (semi-definite A) or loss of precision
            break
        alpha = rz / pap
        x.add_(p, alpha=alpha)
        r.sub_(ap, alpha=alpha)
        rs = _dot(r, r)
        info["iterations"] = it
        info["relative_residual"] = math.sqrt(rs) / bnorm
        if info["relative_residual"] < tol:
            info["converged"] = True
            break
        z = r if precond is None else precond(r)
        rz_new = rs if precond is None else _dot(r, z)
        p.mul_(rz_new / rz).add_(z)
        rz = rz_new
    return x, info


def _normalize(v: torch.Tensor) -> tuple[torch.Tensor, float]:
    n = _norm(v)
    if n > 0:
        v.div_(n)
    return v, n


def lsqr(apply_a: Op, apply_at: Op, b: torch.Tensor, *, max_iter: int = 100, atol: float = 1e-3,
         btol: float = 1e-3, progress: bool = False, desc: str = "lsqr"):
    """LSQR for min ||A x - b||_2, x starting at zero.

    Stops when ||r|| / ||b|| < btol (consistent systems) or
    ||A^T r|| / (||A||_F,est ||r||) < atol (least-squares optimality), as in Paige & Saunders.

    Returns:
        (x, info) with ``iterations``, ``converged``, ``relative_residual`` (||r||/||b||) and
        ``optimality`` (the atol test quantity).
    """
    u, beta = _normalize(b.clone())
    v, alpha = _normalize(apply_at(u))
    x = torch.zeros_like(v)
    info = {"iterations": 0, "converged": True, "relative_residual": 1.0, "optimality": 0.0}
    if beta == 0.0 or alpha == 0.0:
        info["relative_residual"] = 0.0 if beta == 0.0 else 1.0
        return x, info
    info["converged"] = False
    w = v.clone()
    phibar, rhobar, bnorm, anorm2 = beta, alpha, beta, 0.0
    for it in _iterations(max_iter, progress, desc):
        u, beta = _normalize(apply_a(v).sub_(u, alpha=alpha))
        anorm2 += alpha * alpha + beta * beta
        v, alpha = _normalize(apply_at(u).sub_(v, alpha=beta))
        rho = math.hypot(rhobar, beta)
        c, s = rhobar / rho, beta / rho
        theta, rhobar = s * alpha, -c * alpha
        phi, phibar = c * phibar, s * phibar
        x.add_(w, alpha=phi / rho)
        w = v - w * (theta / rho)
        info["iterations"] = it
        info["relative_residual"] = phibar / bnorm
        info["optimality"] = phibar * alpha * abs(c) / (math.sqrt(anorm2) * phibar + 1e-30)
        if info["relative_residual"] < btol or info["optimality"] < atol or alpha == 0.0:
            info["converged"] = True
            break
    return x, info


def lsmr(apply_a: Op, apply_at: Op, b: torch.Tensor, *, max_iter: int = 100, tol: float = 1e-3,
         progress: bool = False, desc: str = "lsmr"):
    """LSMR for min ||A x - b||_2, x starting at zero (monotone decrease of ||A^T r||).

    Stops when ||A^T r|| has fallen below ``tol`` times its initial value ||A^T b|| (a simpler
    criterion than Fong & Saunders' normalised one), or after ``max_iter`` iterations; early
    stopping is itself a regulariser for ill-posed problems.

    Returns:
        (x, info) with ``iterations``, ``converged`` and ``relative_normal_residual``.
    """
    u, beta = _normalize(b.clone())
    v, alpha = _normalize(apply_at(u))
    x = torch.zeros_like(v)
    info = {"iterations": 0, "converged": True, "relative_normal_residual": 0.0}
    if beta == 0.0 or alpha == 0.0:
        return x, info
    info["converged"] = False
    zetabar, alphabar, ar0 = alpha * beta, alpha, alpha * beta
    rho, rhobar, cbar, sbar = 1.0, 1.0, 1.0, 0.0
    h, hbar = v.clone(), torch.zeros_like(v)
    for it in _iterations(max_iter, progress, desc):
        u, beta = _normalize(apply_a(v).sub_(u, alpha=alpha))
        v, alpha = _normalize(apply_at(u).sub_(v, alpha=beta))
        rho_old, rhobar_old = rho, rhobar
        rho = math.hypot(alphabar, beta)
        c, s = alphabar / rho, beta / rho
        theta_new, alphabar = s * alpha, c * alpha
        thetabar = sbar * rho
        rhobar = math.hypot(cbar * rho, theta_new)
        cbar, sbar = cbar * rho / rhobar, theta_new / rhobar
        zeta, zetabar = cbar * zetabar, -sbar * zetabar
        hbar.mul_(-thetabar * rho / (rho_old * rhobar_old)).add_(h)
        x.add_(hbar, alpha=zeta / (rho * rhobar))
        h.mul_(-theta_new / rho).add_(v)
        info["iterations"] = it
        info["relative_normal_residual"] = abs(zetabar) / ar0
        if info["relative_normal_residual"] < tol or alpha == 0.0:
            info["converged"] = True
            break
    return x, info
