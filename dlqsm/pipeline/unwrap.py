"""Phase unwrapping: Laplacian (FFT) and exact quality-guided region growing, single and
multi-echo.

Shapes: a phase volume is (X, Y, Z) in rad, wrapped to [-pi, pi); multi-echo data are
(E, X, Y, Z) with echo times ``te`` (E,) in s; masks are bool (X, Y, Z); voxel sizes in mm.

Region growing (:func:`unwrap_region_growing`, ROMEO-like)
    Every pair of 6-neighbours inside the mask is an edge with a weight in [0, 1], the product
    of a phase coherence (1 - |wrapped difference| / pi), a phase-gradient coherence across two
    echoes, a magnitude coherence ((min / max)^2) and a magnitude weight (see
    :func:`edge_weights`). Quality-guided growing from a seed (Prim's algorithm: take the
    highest-weight edge from the grown region to a new voxel, unwrap the new voxel relative to
    its neighbour, repeat) accepts exactly the edges of the maximum spanning tree of this graph,
    and the result depends only on that tree: along every tree edge the unwrapped difference is
    the wrapped difference. dlqsm therefore computes the same maximum spanning tree with
    Boruvka's algorithm, whose rounds are vectorised torch operations (scatter-min of edge keys,
    pointer jumping to merge whole regions with their 2 pi offsets), so it runs on CPU and CUDA
    without a voxel-by-voxel priority queue. Weights are quantised to 2^20 levels and ties broken
    by edge index, so the tree is unique and the run deterministic. The output differs from the
    input by exact multiples of 2 pi; each connected part of the mask has one free global
    multiple of 2 pi, chosen so that its mean lies in (-pi, pi] (or the seed keeps its value).
    (ROMEO itself buckets the weights into 256 levels, so its ties are broken by queue order;
    here they are not ties.) Edges are taken in weight bands, the heaviest half first, which
    keeps Kruskal's order and lets most light edges fall inside a component before their turn.
    Cost: about 10 vectorised rounds over the edges; ~2 s of one CPU core for a 2-million-voxel
    mask in a 164x205x205 volume (6.9 M voxels unmasked: ~10 s), a few hundred MB of memory.

Laplacian unwrapping (:func:`unwrap_laplacian`)
    Solves the Poisson equation lap(u) = lap(true phase), with the right side from the wrapped
    finite differences of the phase (discrete least-squares unwrapping, Ghiglia & Romero 1994)
    or from sin/cos of the phase (Schofield & Zhu 2003), inverted in k-space with
    :func:`dlqsm.physics.kernels.laplacian_kernel`. Fast and smooth, but not exact: inside the
    mask the result has the Laplacian of the true phase (wherever neighbour differences are
    below pi), so it differs from the true phase by a harmonic function -- a background-like
    field that background removal takes out -- and not by multiples of 2 pi.

Multi-echo (:func:`unwrap_multi_echo`)
    Removes the phase offset at TE = 0 (estimated from the first two echoes and smoothed),
    unwraps a template echo spatially, then every other echo temporally from the fitted phase
    slope of the echoes unwrapped so far, rounding to exact multiples of 2 pi.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dlqsm.errors import InputError
from dlqsm.physics.fft import crop3, irfft3, pad3, rfft3
from dlqsm.physics.geometry import as_voxel_size
from dlqsm.physics.kernels import laplacian_kernel
from dlqsm.physics.units import wrap_phase
from dlqsm.pipeline.masking import gaussian_smooth

__all__ = [
    "edge_weights",
    "phase_offset_from_echoes",
    "unwrap_laplacian",
    "unwrap_multi_echo",
    "unwrap_region_growing",
    "voxel_quality",
]

TWO_PI = 2 * math.pi

OFFSET_SMOOTHING_MM = 2.0
"""Default sigma (mm) of the phase offset's smoothing in :func:`unwrap_multi_echo`. With
TE1 / (TE2 - TE1) = 0.5 (qsm-forward's TE 4/12/20/28 ms) an unsmoothed offset carries pi errors
wherever unwrapping the echo difference slipped by 2 pi, and temporal unwrapping then puts the
field off by one dTE wrap (0.42 ppm at 7 T) in those voxels. Measured on 12 qsm-forward heads
from raw phase (NRMSE %, qsm-ci scorer; docs/benchmarks/independent.md, "Phase offset
smoothing"): 0 / 2 / 4 / 8 mm summed 1025 / 893 / 899 / 906 points over the 12; 7 T voxel-sharp
tilted 87.0 -> 70.5 and 89.8 -> 65.4; no case worse by more than 0.1; a real 3-echo scan
(TE1 = dTE) bitwise unchanged."""
_QUANT_BITS = 20
_INDEX_BITS = 36


def _diff(x: torch.Tensor, d: int) -> torch.Tensor:
    """Forward difference along spatial axis d (0..2) of (..., X, Y, Z), no wrap-around:
    shape shrinks by one along that axis."""
    dim = x.dim() - 3 + d
    n = x.shape[dim]
    return x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1)


def _pairs(x: torch.Tensor, d: int):
    """(x, x shifted by +1 along spatial axis d), both shrunk by one along that axis."""
    n = x.shape[d]
    return x.narrow(d, 0, n - 1), x.narrow(d, 1, n - 1)


def _weight(dphi, dphi2=None, te_ratio=None, ma=None, mb=None, mag_ref=None) -> torch.Tensor:
    """Edge weight in [0, 1] from the phase difference along the edge (rad), optionally a
    second echo's difference with the TE ratio, and the two magnitudes (see edge_weights)."""
    g = wrap_phase(dphi)
    w = 1 - g.abs() / math.pi
    if dphi2 is not None:
        w = w * (1 - (g - wrap_phase(dphi2) * te_ratio).abs()).clamp_min(0)
    if ma is not None:
        lo, hi = torch.minimum(ma, mb), torch.maximum(ma, mb)
        w = w * (lo / hi.clamp_min(1e-30)) ** 2 * (lo / mag_ref).clamp(0, 1)
    return w


def _edge_weights_axis(phase, magnitude, phase2, te_ratio, mag_ref, d: int) -> torch.Tensor:
    """Weights of the edges (x, x + e_d), shape of the phase shrunk by one along axis d."""
    dphi2 = _diff(phase2, d) if phase2 is not None else None
    ma, mb = _pairs(magnitude, d) if magnitude is not None else (None, None)
    return _weight(_diff(phase, d), dphi2, te_ratio, ma, mb, mag_ref)


def _mag_ref(magnitude, mask=None) -> torch.Tensor:
    """Half the 90th percentile of the (masked) magnitude: brighter edges get full weight.
    ``magnitude`` may be a volume or the 1D values of the masked voxels."""
    m = magnitude[mask] if mask is not None else magnitude.flatten()
    m = m[:: max(1, m.numel() // 200_000)].float()
    return (0.5 * torch.quantile(m, 0.9)).clamp_min(1e-30)


def edge_weights(phase: torch.Tensor, magnitude: torch.Tensor | None = None, *,
                 phase2: torch.Tensor | None = None, te_ratio: float | None = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """ROMEO-like edge weights in [0, 1], stacked as (3, X, Y, Z).

    ``out[d, x]`` weighs the edge between voxel x and x + e_d (0 on the last slice along d).
    It is the product of
      * phase coherence ``1 - |wrap(phi(x + e_d) - phi(x))| / pi``;
      * phase-gradient coherence ``max(0, 1 - |g1 - g2 * te_ratio|)`` when ``phase2`` (a later
        echo, rad) and ``te_ratio`` (TE of ``phase`` / TE of ``phase2``) are given: g1, g2 are
        the wrapped differences along the edge; a true field gradient gives g1 = g2 * te_ratio;
      * magnitude coherence ``(min / max)^2`` of the two magnitudes, and a magnitude weight
        ``min(1, min / m_ref)`` with m_ref half the 90th percentile of the (masked) magnitude.
    """
    mref = _mag_ref(magnitude, mask) if magnitude is not None else None
    out = torch.zeros((3, *phase.shape[-3:]), device=phase.device, dtype=torch.float32)
    for d in range(3):
        w = _edge_weights_axis(phase, magnitude, phase2, te_ratio, mref, d)
        out[d].narrow(d, 0, phase.shape[d] - 1).copy_(w)
    return out


def voxel_quality(phase: torch.Tensor, magnitude: torch.Tensor | None = None, *,
                  phase2: torch.Tensor | None = None, te_ratio: float | None = None,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean weight of the (up to six) edges of each voxel, (X, Y, Z) in [0, 1].

    A phase-quality map for :func:`dlqsm.pipeline.masking.phase_quality_mask`; with ``mask``,
    only edges inside the mask count.
    """
    w = edge_weights(phase, magnitude, phase2=phase2, te_ratio=te_ratio, mask=mask)
    valid = torch.ones_like(w)
    for d in range(3):
        valid[d].narrow(d, phase.shape[d] - 1, 1).zero_()
        if mask is not None:
            m = mask.bool()
            both = m & torch.roll(m, -1, dims=d)
            valid[d] = valid[d] * both
    w = w * valid
    total = w.sum(0) + sum(torch.roll(w[d], 1, dims=d) for d in range(3))
    count = valid.sum(0) + sum(torch.roll(valid[d], 1, dims=d) for d in range(3))
    q = total / count.clamp_min(1)
    return q * mask if mask is not None else q


# --------------------------------------------------------------------------------------------
# exact region growing as a maximum spanning tree (Boruvka, vectorised)


def _graph(phase, magnitude, mask, phase2, te_ratio):
    """Nodes (masked voxels, in C order) and edges (a, b, key, step, w) of the unwrapping graph.

    ``step`` is the integer K_b - K_a that unwraps b relative to a; ``key`` orders edges by
    decreasing weight ``w`` (unique: ties broken by edge index).
    """
    dev = phase.device
    padded = [None if v is None else F.pad(v.float(), (0, 1, 0, 1, 0, 1)).flatten()
              for v in (mask, phase, magnitude, phase2)]
    lin = padded[0].nonzero().squeeze(1)  # masked voxels on a grid padded by one at the end
    n = lin.numel()
    node = torch.full_like(padded[0], -1, dtype=torch.int64)
    node[lin] = torch.arange(n, device=dev)
    vals = [None if v is None else v.index_select(0, lin) for v in padded[1:]]
    mref = _mag_ref(vals[1]) if vals[1] is not None else None
    X, Y, Z = phase.shape
    a_list, b_list = [], []
    for stride in ((Y + 1) * (Z + 1), Z + 1, 1):
        nb = node.index_select(0, lin + stride)
        sel = (nb >= 0).nonzero().squeeze(1)
        a_list.append(sel)
        b_list.append(nb.index_select(0, sel))
    a, b = torch.cat(a_list), torch.cat(b_list)
    pa, pb = (vals[0].index_select(0, i) for i in (a, b))
    dphi = pb - pa
    dphi2 = (vals[2].index_select(0, b) - vals[2].index_select(0, a)
             if vals[2] is not None else None)
    ma, mb = ((vals[1].index_select(0, a), vals[1].index_select(0, b))
              if vals[1] is not None else (None, None))
    w = _weight(dphi, dphi2, te_ratio, ma, mb, mref)
    step = torch.round(-dphi / TWO_PI).to(torch.int8)
    q = torch.round(w.clamp(0, 1) * (1 << _QUANT_BITS)).to(torch.int64)
    idx = torch.arange(a.numel(), device=dev, dtype=torch.int64)
    key = (((1 << _QUANT_BITS) - q) << _INDEX_BITS) | idx
    return a, b, key, step, w


def _spanning_forest_offsets(n: int, a, b, key, step, bands=(0.5,)):
    """Boruvka's maximum spanning forest with integer offsets.

    Each round, every component picks its best outgoing edge (smallest key: a scatter-min) and
    hooks onto the component at the other end; the resulting trees (one mutual pick each, whose
    smaller id stays root) are flattened by pointer jumping, carrying the integer offset between
    component roots. Edges inside a component are dropped as they appear. The edges are
    processed in weight bands (the heaviest fraction ``bands`` first), which is exact since
    Kruskal's algorithm takes them in that order too, and saves work: most lighter edges are
    already inside a component when their band starts.

    Returns (comp, koff): the root node of each node's component and the integer K of each
    node relative to that root (K_root = 0), such that K_b - K_a = step along every tree edge.
    """
    dev = a.device
    comp = torch.arange(n, device=dev)
    koff = torch.zeros(n, dtype=torch.int64, device=dev)
    step = step.to(torch.int64)
    if key.numel() == 0:  # isolated voxels only
        return comp, koff
    big = torch.iinfo(torch.int64).max
    cuts = [int(torch.kthvalue(key, max(1, int(f * key.numel()))).values) for f in bands if f < 1]
    lo = -1
    for hi in [*cuts, big]:  # heaviest edges first (Kruskal's order): the forest stays exact
        act = ((key > lo) & (key <= hi)).nonzero().squeeze(1)
        comp, koff = _boruvka(n, a, b, key, step, act, comp, koff)
        lo = hi
    return comp, koff


def _boruvka(n, a, b, key, step, act, comp, koff):
    """Boruvka rounds over the edges ``act`` (indices into a, b, key, step) starting from the
    components ``comp`` with offsets ``koff``; returns the updated (comp, koff)."""
    dev = a.device
    big = torch.iinfo(torch.int64).max
    index_mask = (1 << _INDEX_BITS) - 1
    ca = comp.index_select(0, a.index_select(0, act))
    cb = comp.index_select(0, b.index_select(0, act))
    while True:
        keep = (ca != cb).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        if keep.numel() < act.numel():
            act, ca, cb = (t.index_select(0, keep) for t in (act, ca, cb))
        k = key.index_select(0, act)
        best = torch.full((n,), big, dtype=torch.int64, device=dev)
        best.scatter_reduce_(0, ca, k, "amin")
        best.scatter_reduce_(0, cb, k, "amin")
        c = (best != big).nonzero().squeeze(1)  # components with an outgoing edge
        e = best.index_select(0, c) & index_mask  # ... and the edge each picks
        ea, eb = a.index_select(0, e), b.index_select(0, e)
        c_is_a = comp.index_select(0, ea) == c
        other = torch.where(c_is_a, comp.index_select(0, eb), comp.index_select(0, ea))
        r = koff.index_select(0, eb) - koff.index_select(0, ea) - step.index_select(0, e)
        r = torch.where(c_is_a, r, -r)  # K_root(c) - K_root(other)
        mutual = (best.index_select(0, other) & index_mask) == e
        hook = (~(mutual & (c < other))).nonzero().squeeze(1)
        c, other, r = c.index_select(0, hook), other.index_select(0, hook), r.index_select(0, hook)
        parent = torch.arange(n, device=dev)
        rel = torch.zeros(n, dtype=torch.int64, device=dev)  # K_root(c) - K_root(parent(c))
        parent[c] = other
        rel[c] = r
        _pointer_jump(parent, rel, c)
        koff += rel.index_select(0, comp)
        comp = parent.index_select(0, comp)
        ca, cb = parent.index_select(0, ca), parent.index_select(0, cb)
    return comp, koff


def _pointer_jump(parent, rel, nodes):
    """Point every node of a forest at its root in O(log depth) synchronous rounds, summing
    the offsets ``rel`` (to the parent) along the way; in place."""
    while nodes.numel():
        p = parent.index_select(0, nodes)
        pp = parent.index_select(0, p)
        live = (p != pp).nonzero().squeeze(1)  # parent not yet a root
        if live.numel() == 0:
            break
        nodes, p, pp = (t.index_select(0, live) for t in (nodes, p, pp))
        rel[nodes] = rel.index_select(0, nodes) + rel.index_select(0, p)
        parent[nodes] = pp


def _reference(comp, koff, values, seed_quality=None):
    """Shift each component's K so that its mean value (or its seed's) is in (-pi, pi]."""
    n = comp.numel()
    dev = comp.device
    if seed_quality is None:
        u = values.double() + TWO_PI * koff
        total = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, comp, u)
        count = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(
            0, comp, torch.ones_like(u))
        shift = torch.round(total / count.clamp_min(1) / TWO_PI).to(torch.int64)
        return koff - shift[comp]
    best = torch.full((n,), -1.0, device=dev).scatter_reduce_(0, comp, seed_quality, "amax")
    is_best = seed_quality == best[comp]
    ids = torch.arange(n, device=dev)
    seed = torch.full((n,), n, dtype=torch.int64, device=dev)
    seed.scatter_reduce_(0, comp[is_best], ids[is_best], "amin")
    return koff - koff[seed[comp]]


def unwrap_region_growing(phase: torch.Tensor, magnitude: torch.Tensor | None = None,
                          mask: torch.Tensor | None = None, *, phase2: torch.Tensor | None = None,
                          te_ratio: float | None = None, correct_global: bool = True
                          ) -> torch.Tensor:
    """Exact quality-guided unwrapping of one phase volume (ROMEO-like; see the module doc).

    Args:
        phase: (X, Y, Z) wrapped phase in rad.
        magnitude: (X, Y, Z) magnitude (any scale) for the magnitude terms of the weights.
        mask: bool (X, Y, Z); only voxels inside are unwrapped (outside keep the wrapped phase).
            Parts of the mask not connected through 6-neighbours get independent 2 pi offsets.
        phase2, te_ratio: a second echo's wrapped phase (X, Y, Z) and TE(phase) / TE(phase2),
            for the phase-gradient coherence weight.
        correct_global: shift each connected part by a multiple of 2 pi so its mean unwrapped
            phase is in (-pi, pi]; otherwise its highest-quality voxel (the seed a region grower
            would start from) keeps its wrapped value.

    Returns:
        (X, Y, Z) float32 unwrapped phase; ``(out - phase) / (2 pi)`` is integral everywhere.
    """
    if phase.dim() != 3:
        raise InputError(f"unwrap_region_growing takes one (X, Y, Z) volume, got "
                         f"{tuple(phase.shape)}.", fix="use unwrap_multi_echo for echoes.")
    if (phase2 is None) != (te_ratio is None):
        raise InputError("phase2 and te_ratio go together.")
    phase = phase.float()
    mask = torch.ones_like(phase, dtype=torch.bool) if mask is None else mask.bool()
    n = int(mask.sum())
    if n == 0:
        raise InputError("the unwrapping mask is empty.", fix="give a non-empty mask.")
    mag = magnitude.float() if magnitude is not None else None
    a, b, key, step, w = _graph(phase, mag, mask, phase2, te_ratio)
    comp, koff = _spanning_forest_offsets(n, a, b, key, step)
    values = phase[mask]
    if correct_global:
        koff = _reference(comp, koff, values)
    else:
        quality = torch.zeros(n, device=phase.device).index_add_(0, a, w).index_add_(0, b, w)
        koff = _reference(comp, koff, values, seed_quality=quality)
    out = phase.clone()
    out[mask] = values + TWO_PI * koff.to(torch.float32)
    return out


# --------------------------------------------------------------------------------------------
# Laplacian unwrapping


def _laplacian_rhs_gradient(phase, mask, vox):
    """Divergence of the wrapped forward differences (1/mm^2), zero across the periodic border
    and across the mask border: the Laplacian of the true phase where it is well sampled."""
    rhs = torch.zeros_like(phase)
    for d, h in enumerate(vox):
        dim = phase.dim() - 3 + d
        g = wrap_phase(torch.roll(phase, -1, dims=dim) - phase)
        g.narrow(dim, phase.shape[dim] - 1, 1).zero_()
        if mask is not None:
            g = g * (mask & torch.roll(mask, -1, dims=d - 3))
        rhs = rhs + (g - torch.roll(g, 1, dims=dim)) / h ** 2
    return rhs


def _laplacian_rhs_sincos(phase, mask, lap):
    """Schofield & Zhu: lap(phi) = cos(phi) lap(sin(phi)) - sin(phi) lap(cos(phi))."""
    s, c = torch.sin(phase), torch.cos(phase)
    shape = phase.shape[-3:]
    rhs = c * irfft3(rfft3(s) * lap, shape) - s * irfft3(rfft3(c) * lap, shape)
    return rhs * mask if mask is not None else rhs


def unwrap_laplacian(phase: torch.Tensor, voxel_size=(1.0, 1.0, 1.0),
                     mask: torch.Tensor | None = None, *, method: str = "gradient",
                     pad: int = 0) -> torch.Tensor:
    """Laplacian (FFT Poisson) phase unwrapping of (..., X, Y, Z) phase in rad.

    ``method="gradient"``: right side from the wrapped forward differences (the discrete
    least-squares unwrap; exact for a phase whose neighbour differences are all below pi, up to
    the treatment of the border). ``method="sincos"``: Schofield & Zhu 2003. With ``mask``,
    differences leaving the mask are ignored (gradient) or the right side is zeroed outside it
    (sincos). ``pad`` zero-pads each side (voxels) before the periodic FFT solve.

    The Poisson solve fixes the result only up to a constant, which is chosen so that the
    result agrees with the wrapped phase on average (modulo 2 pi) inside the mask. The output
    is NOT exact: inside the mask it differs from the true phase by a harmonic function (zero
    Laplacian; with no mask and a phase that is flat at the volume border, only by a constant),
    and from the input by non-integer multiples of 2 pi. The sin/cos form further scales the
    second differences by cos(phase gradient per voxel): use it only for small gradients. Use
    :func:`unwrap_region_growing` for exact results.

    Returns:
        float32 (..., X, Y, Z); zero outside the mask.
    """
    vox = as_voxel_size(voxel_size)  # checked here unless validated already (a Scan's grid)
    phase = phase.float()
    m = mask.bool() if mask is not None else None
    x = pad3(phase, pad)
    mp = pad3(m.to(torch.uint8), pad).bool() if m is not None else None
    shape = x.shape[-3:]
    lap = laplacian_kernel(shape, vox, device=phase.device)
    if method == "gradient":
        rhs = _laplacian_rhs_gradient(x, mp, vox)
    elif method == "sincos":
        rhs = _laplacian_rhs_sincos(x, mp, lap)
    else:
        raise InputError(f"unknown Laplacian unwrapping method {method!r}.",
                         fix="use 'gradient' or 'sincos'.")
    inv = torch.where(lap == 0, torch.zeros_like(lap), 1 / lap)
    u = crop3(irfft3(rfft3(rhs) * inv, shape), pad)
    sel = m if m is not None else torch.ones(phase.shape[-3:], dtype=torch.bool,
                                              device=phase.device)
    # constant: circular mean of (phase - u) over the mask, per leading index
    z = torch.polar(torch.ones_like(u), phase - u)[..., sel].sum(-1)
    u = u + torch.angle(z)[..., None, None, None]
    return u * sel if m is not None else u


# --------------------------------------------------------------------------------------------
# multi-echo


def _check_echoes(phase, te, magnitude):
    if phase.dim() != 4:
        raise InputError(f"multi-echo phase must be (E, X, Y, Z), got {tuple(phase.shape)}.")
    te = torch.as_tensor(te, dtype=torch.float64).flatten()
    if te.numel() != phase.shape[0]:
        raise InputError(f"{te.numel()} echo times for {phase.shape[0]} echoes.",
                         fix="give one TE (s) per echo.")
    if not bool(torch.all(te > 0)) or not bool(torch.all(te[1:] > te[:-1])):
        raise InputError(f"echo times must be positive and increasing, got {te.tolist()} s.",
                         fix="give TE in seconds, in acquisition order.")
    if magnitude is not None and tuple(magnitude.shape) != tuple(phase.shape):
        raise InputError(f"magnitude {tuple(magnitude.shape)} and phase {tuple(phase.shape)} "
                         "differ in shape.")
    return te


def phase_offset_from_echoes(phase: torch.Tensor, te, magnitude: torch.Tensor | None = None,
                             mask: torch.Tensor | None = None, *, voxel_size=(1.0, 1.0, 1.0),
                             smoothing_mm: float = 0.0) -> torch.Tensor:
    """Phase at TE = 0 (rad, wrapped), (X, Y, Z), from the first two echoes.

    phi0 = phi1 - TE1 / (TE2 - TE1) * unwrap(phi2 - phi1). When TE1 / (TE2 - TE1) is an integer
    (e.g. TE2 = 2 TE1, as in ASPIRE) the difference needs no unwrapping; otherwise it is
    unwrapped with :func:`unwrap_region_growing`, and a 2 pi error of that unwrapping becomes
    an error of 2 pi TE1 / (TE2 - TE1) in phi0 (pi for TE 4/12 ms). Optionally smoothed
    (``smoothing_mm``: sigma in mm of a Gaussian over the complex offset, weighted by the first
    echo's magnitude and restricted to the mask), which outvotes such errors in small regions:
    the offset of a coil-combined scan varies slowly (MCPC-3D-S smooths it too; Eckstein et
    al., Magn Reson Med 2018). Zero outside the mask.
    """
    te = _check_echoes(phase, te, magnitude)
    if phase.shape[0] < 2:
        raise InputError("a phase offset needs at least two echoes.")
    ratio = float(te[0] / (te[1] - te[0]))
    diff = wrap_phase(phase[1] - phase[0])
    if abs(ratio - round(ratio)) > 1e-6:
        mag = torch.sqrt(magnitude[0] * magnitude[1]) if magnitude is not None else None
        diff = unwrap_region_growing(diff, mag, mask)
    phi0 = wrap_phase(phase[0] - ratio * diff)
    if smoothing_mm > 0:
        w = magnitude[0] if magnitude is not None else torch.ones_like(phi0)
        if mask is not None:
            w = w * mask  # no votes from outside the brain, where the estimate is noise
        z = gaussian_smooth(torch.polar(w.float(), phi0), smoothing_mm, voxel_size)
        phi0 = torch.angle(z)
    return phi0 * mask if mask is not None else phi0


def _temporal(offset_free, unwrapped, te, template):
    """Unwrap echoes away from the template, each from the slope fitted (through the origin)
    to the echoes already unwrapped; rounds to exact multiples of 2 pi."""
    order = sorted(range(len(te)), key=lambda e: (abs(e - template), e))
    done = [template]
    for e in order[1:]:
        num = sum(unwrapped[j].double() * float(te[j]) for j in done)
        den = sum(float(te[j]) ** 2 for j in done)
        pred = (num / den * float(te[e])).float()
        k = torch.round((pred - offset_free[e]) / TWO_PI)
        unwrapped[e] = offset_free[e] + TWO_PI * k
        done.append(e)
    return unwrapped


def unwrap_multi_echo(phase: torch.Tensor, te, magnitude: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None, *, method: str = "romeo",
                      voxel_size=(1.0, 1.0, 1.0), template: int = 0,
                      correct_offset: bool = True,
                      offset_smoothing_mm: float = OFFSET_SMOOTHING_MM) -> torch.Tensor:
    """Unwrap multi-echo phase (E, X, Y, Z), rad, consistently across echoes.

    ``method="romeo"`` (exact): the phase offset at TE = 0 is estimated
    (:func:`phase_offset_from_echoes`) and removed; the template echo is unwrapped spatially
    with :func:`unwrap_region_growing` (phase-gradient coherence from the next echo); every
    other echo is unwrapped temporally: its 2 pi multiple is the one closest to the slope
    fitted to the echoes already unwrapped times its TE. The offset is then added back, so the
    result differs from the input by exact multiples of 2 pi in every voxel and echo, and
    ``out[e] - phi0`` is proportional to TE up to noise. The free global 2 pi is the template's
    (its offset-free mean in (-pi, pi]).

    ``method="laplacian"``: :func:`unwrap_laplacian` per offset-free echo, then each echo's
    constant is aligned (by a multiple of 2 pi) with the template scaled by TE; smooth, not exact.

    Args:
        phase: (E, X, Y, Z) wrapped phase, rad. te: (E,) echo times in s, increasing.
        magnitude: (E, X, Y, Z) for the weights. mask: bool (X, Y, Z); outside it the wrapped
            phase is returned (romeo) or zero (laplacian).
        template: echo unwrapped spatially (the first by default: fewest wraps).
        correct_offset: remove the TE = 0 phase offset before temporal unwrapping (needs >= 2
            echoes; turn off for data already offset-corrected, e.g. after ASPIRE).
        offset_smoothing_mm: Gaussian sigma (mm) of the offset's smoothing
            (:func:`phase_offset_from_echoes`; 0 = none); default
            :data:`OFFSET_SMOOTHING_MM`.

    Returns:
        (E, X, Y, Z) float32 unwrapped phase, rad.
    """
    te = _check_echoes(phase, te, magnitude)
    phase = phase.float()
    E = phase.shape[0]
    m = mask.bool() if mask is not None else torch.ones(phase.shape[1:], dtype=torch.bool,
                                                         device=phase.device)
    if not bool(m.any()):
        raise InputError("the unwrapping mask is empty.", fix="give a non-empty mask.")
    phi0 = torch.zeros_like(phase[0])
    if correct_offset and E >= 2:
        phi0 = phase_offset_from_echoes(phase, te, magnitude, m, voxel_size=voxel_size,
                                        smoothing_mm=offset_smoothing_mm)
    free = wrap_phase(phase - phi0)
    if method == "romeo":
        nxt = template + 1 if template + 1 < E else template - 1
        p2, ratio = (free[nxt], float(te[template] / te[nxt])) if E >= 2 else (None, None)
        mag_t = magnitude[template] if magnitude is not None else None
        out = free.clone()
        out[template] = unwrap_region_growing(free[template], mag_t, m, phase2=p2,
                                              te_ratio=ratio)
        out = torch.stack(_temporal(free, list(out), te, template))
        k = torch.round((out + phi0 - phase) / TWO_PI)
        return torch.where(m, phase + TWO_PI * k, phase)
    if method == "laplacian":
        lap = unwrap_laplacian(free, voxel_size, m)
        ref = lap[template]
        for e in range(E):
            scale = float(te[e] / te[template])
            shift = torch.round((ref[m] * scale - lap[e][m]).mean() / TWO_PI)
            lap[e] = lap[e] + TWO_PI * shift
        return (lap + phi0) * m
    raise InputError(f"unknown unwrapping method {method!r}.", fix="use 'romeo' or 'laplacian'.")
