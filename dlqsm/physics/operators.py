"""Linear operator contract shared by every physics operator in dlqsm.

An operator maps tensors ``(..., X, Y, Z)`` to tensors and has an adjoint such that
<A x, y> = <x, A^H y>. :meth:`LinearOperator.adjointness_error` checks this numerically and is
used by the shared operator tests.
"""

from __future__ import annotations

import torch


class LinearOperator:
    """Base class: subclasses implement :meth:`forward` and :meth:`adjoint`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x."""
        return self.adjoint(self.forward(x))

    def adjointness_error(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Relative mismatch |<Ax, y> - <x, A^H y>| / |<Ax, y>| for probe tensors x, y."""
        lhs = torch.vdot(self.forward(x).flatten().to(torch.complex128),
                         y.flatten().to(torch.complex128))
        rhs = torch.vdot(x.flatten().to(torch.complex128),
                         self.adjoint(y).flatten().to(torch.complex128))
        return float(abs(lhs - rhs) / max(abs(lhs), 1e-30))


class Gradient(LinearOperator):
    """Forward finite differences with periodic boundaries, divided by the voxel size (1/mm).

    ``forward`` maps (..., X, Y, Z) -> (..., 3, X, Y, Z); ``adjoint`` is minus the backward
    divergence. Periodic boundaries make the operator diagonal in k-space
    (:meth:`kspace_filters`), which closed-form and ADMM solvers rely on.
    """

    def __init__(self, voxel_size=(1.0, 1.0, 1.0)):
        self.voxel_size = tuple(float(v) for v in voxel_size)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(..., X, Y, Z) -> (..., 3, X, Y, Z), written into ``out`` when given.

        Shifted slices are subtracted into a buffer (no rolled copies); under autograd the
        same differences are formed out of place so that gradients flow.
        """
        if out is None:
            if torch.is_grad_enabled() and x.requires_grad:
                return torch.stack([self._diff(x, x.ndim - 3 + i) / h
                                    for i, h in enumerate(self.voxel_size)], dim=-4)
            out = x.new_empty((*x.shape[:-3], 3, *x.shape[-3:]))
        for i, h in enumerate(self.voxel_size):
            d, o = x.ndim - 3 + i, out.select(-4, i)
            n = x.shape[d]
            torch.sub(x.narrow(d, 1, n - 1), x.narrow(d, 0, n - 1), out=o.narrow(d, 0, n - 1))
            torch.sub(x.narrow(d, 0, 1), x.narrow(d, n - 1, 1), out=o.narrow(d, n - 1, 1))
            if h != 1.0:
                o.div_(h)
        return out

    def adjoint(self, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(..., 3, X, Y, Z) -> (..., X, Y, Z): minus the backward divergence, into ``out``."""
        if out is None and torch.is_grad_enabled() and g.requires_grad:
            return sum(-self._diff(g.select(-4, i), g.ndim - 4 + i, backward=True) / h
                       for i, h in enumerate(self.voxel_size))
        if out is None:
            out = g.new_empty((*g.shape[:-4], *g.shape[-3:]))
        for i, h in enumerate(self.voxel_size):
            gi, d = g.select(-4, i), out.ndim - 3 + i
            n = out.shape[d]
            if i == 0:
                torch.mul(gi, -1.0 / h, out=out)
            else:
                out.add_(gi, alpha=-1.0 / h)
            out.narrow(d, 1, n - 1).add_(gi.narrow(d, 0, n - 1), alpha=1.0 / h)
            out.narrow(d, 0, 1).add_(gi.narrow(d, n - 1, 1), alpha=1.0 / h)
        return out

    @staticmethod
    def _diff(x: torch.Tensor, d: int, backward: bool = False) -> torch.Tensor:
        """Periodic forward (x[i+1] - x[i]) or backward (x[i] - x[i-1]) difference along d."""
        n = x.shape[d]
        if backward:
            return torch.cat([x.narrow(d, 0, 1) - x.narrow(d, n - 1, 1),
                              x.narrow(d, 1, n - 1) - x.narrow(d, 0, n - 1)], dim=d)
        return torch.cat([x.narrow(d, 1, n - 1) - x.narrow(d, 0, n - 1),
                          x.narrow(d, 0, 1) - x.narrow(d, n - 1, 1)], dim=d)

    def kspace_filters(self, shape, *, half: bool = True, device=None, dtype=torch.float32):
        """Transfer functions E_i(k) = (exp(2 pi i n_i / N_i) - 1) / h_i, shape (3, X, Y, Zk).

        ``forward(x)[i] == irfft(E_i * rfft(x))`` for real x.
        """
        out = []
        for axis, (n, h) in enumerate(zip(shape, self.voxel_size, strict=True)):
            if half and axis == 2:
                idx = torch.arange(n // 2 + 1, device=device, dtype=dtype)
            else:
                idx = torch.arange(n, device=device, dtype=dtype)
            e = (torch.exp(2j * torch.pi * idx / n) - 1) / h
            view = [1, 1, 1]
            view[axis] = -1
            out.append(e.view(view))
        full = torch.broadcast_shapes(*(e.shape for e in out))
        return torch.stack([e.expand(full) for e in out])


def laplacian_interior(x: torch.Tensor, voxel_size=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """7-point finite-difference Laplacian (1/mm^2) of ``x`` (X, Y, Z) on its inner voxels.

    Returns an (X-2, Y-2, Z-2) tensor: sum_i (x[+e_i] - 2 x + x[-e_i]) / h_i^2, with no boundary
    rule (the outer faces have no value). Exact for quadratics. Used by LBV background removal
    and the field-noise estimate of the automatic regularisation weight.
    """
    h = [float(v) for v in voxel_size]
    core = (slice(1, -1),) * 3
    lap = x[core] * (-2.0 * sum(1.0 / (v * v) for v in h))
    for axis, hx in enumerate(h):
        for lo, hi in ((0, -2), (2, None)):
            sl = [slice(1, -1)] * 3
            sl[axis] = slice(lo, hi)
            lap.add_(x[tuple(sl)], alpha=1.0 / (hx * hx))
    return lap


class Identity(LinearOperator):
    """Identity operator (for tests and as a regulariser)."""

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y
