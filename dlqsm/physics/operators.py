"""Linear operator contract shared by every physics operator in dlqsm.

An operator maps tensors ``(..., X, Y, Z)`` to tensors and has an adjoint such that
<A x, y> = <x, A^H y>. :meth:`LinearOperator.adjointness_error` checks this numerically and is
used by the shared operator tests.
"""

from __future__ import annotations

import torch

from dlqsm.physics.fft import DIMS


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([(torch.roll(x, -1, dims=d) - x) / h
                            for d, h in zip(DIMS, self.voxel_size, strict=True)], dim=-4)

    def adjoint(self, g: torch.Tensor) -> torch.Tensor:
        out = 0
        for i, (d, h) in enumerate(zip(DIMS, self.voxel_size, strict=True)):
            gi = g[..., i, :, :, :]
            out = out + (torch.roll(gi, 1, dims=d) - gi) / h
        return out

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


class Identity(LinearOperator):
    """Identity operator (for tests and as a regulariser)."""

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y
