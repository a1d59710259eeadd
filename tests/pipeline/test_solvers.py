"""dlqsm.pipeline.solvers: results that do not depend on the machine's thread count."""

import torch


def test_inner_products_and_cg_do_not_depend_on_the_thread_count():
    """Long float32 sums split across BLAS threads round differently (torch.dot gave three
    different values for 1, 2 and 3 threads at 2^21 elements); dlqsm's solvers must give the
    same iterates whatever torch.set_num_threads says."""
    from dlqsm.pipeline.solvers import _dot, cg

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2 ** 21, generator=g)
    b = torch.randn(2 ** 21, generator=g)
    diag = 1.0 + 10.0 * torch.rand(2 ** 21, generator=g)  # SPD, condition number ~11
    before = torch.get_num_threads()
    dots, sols = [], []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            dots.append(_dot(a, b))
            x, info = cg(lambda v: diag * v, b, max_iter=8, tol=1e-12)
            sols.append(x)
    finally:
        torch.set_num_threads(before)
    assert len(set(dots)) == 1
    assert abs(dots[0] - float(torch.dot(a.double(), b.double()))) < 1e-3 * float(
        torch.dot(a.abs().double(), b.abs().double())) ** 0.5
    for x in sols[1:]:
        assert torch.equal(x, sols[0])
