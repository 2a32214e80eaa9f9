"""Applying the KIFMM operators to a tree's boxes, batched per level (internal, trusted input).

Every function here trusts its input (the FMM driver builds it): arrays must have exactly the
stated dtype and be C-contiguous, indices in range. ``dt`` is the run dtype ``ops.dtype``
(float32 or float64); index arrays are int64. Nothing is validated: a wrong dtype crashes.

Shared arguments
----------------
ops : :class:`aotfmm.operators.Operators` of the run dtype.
src_xyz, trg_xyz : (3, n) dt, points sorted by box; box ``b`` owns ``start[b]:end[b]``.
charges : (n_sources,) dt.
src_start, src_end, trg_start, trg_end : (n_boxes,) int64.
centers : (n_boxes, 3) float64 or dt; half_widths : (n_boxes,) float64 or dt (cast to dt here).
equiv : (n_boxes, n_surf) dt, upward equivalent densities (multipoles), one row per box.
local : (n_boxes, n_surf) dt, downward equivalent densities (locals), one row per box.
dcheck : (n_boxes, ops.down_rank) dt, down-check coefficients: L2L, M2L and P2L accumulate
    here, :func:`dc2e` turns them into ``local`` (the pseudo-inverse factor that amplifies is
    applied once per box and last; see :mod:`aotfmm.operators` for why).
pot : (n_targets,) dt; grad : (3, n_targets) dt or None (then only the potential). Accumulated.
threads : int >= 1, threads of :mod:`aotfmm._threads` (BLAS is kept single-threaded meanwhile).

Densities are true charges on the surface points ``c + h * radius * surface`` (see the scaling
convention in :mod:`aotfmm.operators`): P2M/P2L multiply by ``h``, M2M/L2L/M2L are scale free.
Downward, per level: L2L, M2L, P2L into ``dcheck``, then :func:`dc2e`, then the next level.

Functions
---------
p2m(ops, src_xyz, charges, boxes, src_start, src_end, centers, half_widths, equiv, threads=1)
    equiv[boxes[i]] = h UC2E_1 K(up check of boxes[i], its sources) q     (rows overwritten)
m2m(ops, equiv, parents, children)
    equiv[parents[i]] += uc2e_a @ sum_c m2m[c] @ equiv[children[i, c]]; children
    (n_parents, 8) int64 in octant order, -1 where a child is missing.
l2l(ops, local, dcheck, parents, children)
    dcheck[children[i, c]] += l2l[c] @ local[parents[i]].
dc2e(ops, dcheck, local, rows)
    local[rows] += dcheck[rows] @ dc2e_a.T (rows: index array or slice).
m2l_plan(ops, target_boxes, v_offsets, v_index, v_transfer, n_boxes, threads=1) -> M2LPlan
    geometry-only preprocessing of one level's V list (reuse it for many charge vectors).
    target_boxes (n_t,) int64 unique; v_offsets (n_t + 1,) int64 CSR over rows of
    target_boxes; v_index (n_pairs,) int64 source box ids; v_transfer (n_pairs,) int64 rows of
    ``_geometry.TRANSFER_VECTORS`` (t = source_ijk - target_ijk).
m2l(ops, equiv, dcheck, plan, threads=1)
    dcheck[target_boxes[i]] += sum over the V list of i of M2L_t @ equiv[source].
p2l(ops, src_xyz, charges, src_start, src_end, target_boxes, x_offsets, x_index, centers,
    half_widths, dcheck, threads=1)
    dcheck[target_boxes[i]] += h dc2e_b K(down check of target_boxes[i], X list sources) q.
m2p(ops, equiv, trg_xyz, trg_start, trg_end, target_boxes, w_offsets, w_index, centers,
    half_widths, pot, grad=None, threads=1)
    targets of target_boxes[i] += field of equiv[w] on the upward equivalent surfaces of W list.
l2p(ops, local, trg_xyz, trg_start, trg_end, boxes, centers, half_widths, pot, grad=None,
    threads=1)
    targets of boxes[i] += field of local[boxes[i]] on their downward equivalent surface.
"""
import dataclasses

import numpy as np

from . import _blas, _geometry, _kernels, _threads

__all__ = ["p2m", "m2m", "l2l", "dc2e", "m2l_plan", "m2l", "M2LPlan", "p2l", "m2p", "l2p"]

#: Chunks per thread for the point <-> surface kernels (dynamic scheduling).
_CHUNKS_PER_THREAD = 4
#: At most this many boxes per P2M/P2L chunk: bounds the check-potential scratch memory.
_MAX_CHUNK_BOXES = 4096


def _cast(a, dt):
    return np.ascontiguousarray(a, dtype=dt)


def _bounds(cost, threads, max_items=None):
    n = len(cost)
    n_chunks = threads * _CHUNKS_PER_THREAD if threads > 1 else 1
    if max_items:
        n_chunks = max(n_chunks, -(-n // max_items))
    return _threads.split(cost, n_chunks)


def _self_list(n):
    return np.arange(n + 1, dtype=np.int64)


def _check_to_equiv(check, h, a, b):
    """h[:, None] * (check @ b.T @ a.T): check -> equivalent, pinv applied factor by factor
    (``a`` None: stop at the coefficients ``h * check @ b.T``)."""
    res = check @ b.T
    res *= h[:, None]
    return res if a is None else res @ a.T


def _p2c(ops, src_xyz, charges, src_start, src_end, trg_boxes, list_offsets, list_index,
         centers, half_widths, radius, a, b, threads, out, accumulate):
    """Check potentials on a surface of ``trg_boxes`` from listed sources, then -> equivalent."""
    dt = ops.dtype
    n = len(trg_boxes)
    if n == 0:
        return
    kernel = _kernels.get("p2c_pot", dt)
    centers = _cast(centers, dt)
    hw = _cast(half_widths, dt)
    counts = src_end - src_start
    cum = np.concatenate(([0], np.cumsum(counts[list_index])))
    per_row = cum[list_offsets[1:]] - cum[list_offsets[:-1]]
    bounds = _bounds(per_row + 1, threads, _MAX_CHUNK_BOXES)
    surf = ops.surface_soa
    radius = dt.type(radius)

    def work(i0, i1):
        check = np.empty((i1 - i0, ops.n_surf), dtype=dt)
        kernel(src_xyz, charges, src_start, src_end, trg_boxes, centers, hw, list_offsets,
               list_index, surf, radius, i0, i1, i0, check)
        boxes = trg_boxes[i0:i1]
        eq = _check_to_equiv(check, hw[boxes], a, b)
        if accumulate:
            out[boxes] += eq
        else:
            out[boxes] = eq

    with _blas.single_threaded(threads):
        _threads.run(work, bounds, threads)


def p2m(ops, src_xyz, charges, boxes, src_start, src_end, centers, half_widths, equiv,
        threads=1):
    """Multipoles of ``boxes`` (leaves) from their own sources; rows of ``equiv`` overwritten."""
    _p2c(ops, src_xyz, charges, src_start, src_end, boxes, _self_list(len(boxes)), boxes,
         centers, half_widths, ops.r_up_check, ops.uc2e_a, ops.uc2e_b, threads, equiv, False)


def p2l(ops, src_xyz, charges, src_start, src_end, target_boxes, x_offsets, x_index, centers,
        half_widths, dcheck, threads=1):
    """dcheck[target_boxes[i]] += h dc2e_b (potential of the X-list sources on the down check)."""
    _p2c(ops, src_xyz, charges, src_start, src_end, target_boxes, x_offsets, x_index,
         centers, half_widths, ops.r_down_check, None, ops.dc2e_b, threads, dcheck, True)


def _octant_pairs(parents, children):
    """Per octant c: (parent rows, child rows) of the children that exist (index != -1)."""
    for c in range(8):
        ch = children[:, c]
        has = ch >= 0
        if has.all():
            yield c, parents, ch
        elif has.any():
            yield c, parents[has], ch[has]


def m2m(ops, equiv, parents, children):
    """equiv[parents[i]] += uc2e_a @ sum_c m2m[c] @ equiv[children[i, c]] (children -1: absent).

    ``parents`` are distinct; the children's terms are summed as up-check coefficients and
    the amplifying factor ``uc2e_a`` is applied once per parent.
    """
    index = np.arange(len(parents))
    acc = np.zeros((len(parents), ops.up_rank), dtype=ops.dtype)
    for c, par, ch in _octant_pairs(index, children):
        acc[par] += equiv[ch] @ ops.m2m[c].T
    equiv[parents] += acc @ ops.uc2e_a.T


def l2l(ops, local, dcheck, parents, children):
    """dcheck[children[i, c]] += l2l[c] @ local[parents[i]] (children -1: absent)."""
    for c, par, ch in _octant_pairs(parents, children):
        dcheck[ch] += local[par] @ ops.l2l[c].T


def dc2e(ops, dcheck, local, rows):
    """local[rows] += dcheck[rows] @ dc2e_a.T: down-check coefficients -> local densities."""
    local[rows] += dcheck[rows] @ ops.dc2e_a.T


@dataclasses.dataclass(frozen=True)
class M2LPlan:
    """One level's V list sorted for batched M2L (see :func:`m2l_plan`)."""
    target_boxes: np.ndarray   # (n_t,) int64
    sources: np.ndarray        # (n_u,) int64 distinct source boxes
    pair_source: np.ndarray    # (n_pairs,) int64 row in `sources`, sorted by (t, target row)
    pair_target: np.ndarray    # (n_pairs,) int64 target row, same order
    segments: np.ndarray       # (n_chunks, 317) int64: pairs of transfer t, chunk j are
    #                            segments[j, t]:seg_end[j, t]
    seg_end: np.ndarray        # (n_chunks, 316) int64
    max_pairs: int             # largest segment (scratch size)


def m2l_plan(ops, target_boxes, v_offsets, v_index, v_transfer, n_boxes, threads=1):
    """Sort one level's V-list pairs by (transfer vector, target row); split targets in chunks."""
    n_t = len(target_boxes)
    n_pairs = len(v_index)
    rows = np.repeat(np.arange(n_t, dtype=np.int64), np.diff(v_offsets))
    used = np.zeros(n_boxes, dtype=bool)
    used[v_index] = True
    sources = np.flatnonzero(used).astype(np.int64)
    compact = np.cumsum(used, dtype=np.int64) - 1
    order = np.argsort(v_transfer.astype(np.int16), kind="stable")  # rows stay ascending
    pair_source = compact[v_index[order]]
    pair_target = rows[order]
    key = v_transfer[order] * n_t + pair_target  # ascending
    cost = np.diff(v_offsets)
    chunk_rows = _threads.split(cost, threads) if threads > 1 and n_t else \
        np.array([0, n_t], dtype=np.int64)
    t_ids = np.arange(_geometry.N_TRANSFER, dtype=np.int64)
    starts = np.searchsorted(key, t_ids[None, :] * n_t + chunk_rows[:-1, None])
    ends = np.searchsorted(key, t_ids[None, :] * n_t + chunk_rows[1:, None])
    max_pairs = int((ends - starts).max()) if n_pairs else 0
    return M2LPlan(np.asarray(target_boxes, dtype=np.int64), sources, pair_source,
                   pair_target, starts, ends, max_pairs)


def m2l(ops, equiv, dcheck, plan, threads=1):
    """dcheck[target] += dc2e_b U a_t^T b_t V^T equiv[source] for every V-list pair of the plan."""
    if len(plan.pair_source) == 0:
        return
    dt = ops.dtype
    k = ops.m2l_rank
    n_t = len(plan.target_boxes)
    mc = equiv[plan.sources] @ ops.m2l_v                       # compress every source once
    z = np.zeros((n_t, k), dtype=dt)
    gather = _kernels.get("m2l_gather", dt)
    scatter = _kernels.get("m2l_scatter", dt)
    a, b, offs = ops.m2l_a, ops.m2l_b, ops.m2l_offsets
    r_max = int(np.diff(offs).max())

    def work(j0, j1):
        buf = np.empty((plan.max_pairs, k), dtype=dt)
        mid = np.empty((plan.max_pairs, r_max), dtype=dt)
        out = np.empty((plan.max_pairs, k), dtype=dt)
        for j in range(j0, j1):
            for t in range(_geometry.N_TRANSFER):
                i0, i1 = int(plan.segments[j, t]), int(plan.seg_end[j, t])
                m = i1 - i0
                if m == 0:
                    continue
                gather(mc, plan.pair_source, i0, i1, buf)
                r0, r1 = offs[t], offs[t + 1]
                np.matmul(buf[:m], b[r0:r1].T, out=mid[:m, :r1 - r0])   # C_t = a_t^T b_t
                np.matmul(mid[:m, :r1 - r0], a[r0:r1], out=out[:m])
                scatter(out, plan.pair_target, i0, i1, z)

    n_chunks = plan.segments.shape[0]
    with _blas.single_threaded(threads):
        _threads.run(work, np.arange(n_chunks + 1), threads)
    dcheck[plan.target_boxes] += z @ ops.m2l_decompress.T     # decompress once per target


def _s2p(ops, dens, trg_xyz, trg_start, trg_end, trg_boxes, list_offsets, list_index,
         centers, half_widths, radius, pot, grad, threads):
    dt = ops.dtype
    n = len(trg_boxes)
    if n == 0:
        return
    centers = _cast(centers, dt)
    hw = _cast(half_widths, dt)
    n_trg = trg_end[trg_boxes] - trg_start[trg_boxes]
    bounds = _bounds(n_trg * np.diff(list_offsets) + 1, threads)
    surf = ops.surface_soa
    radius = dt.type(radius)
    if grad is None:
        kernel = _kernels.get("s2p_pot", dt)

        def work(i0, i1):
            kernel(dens, trg_xyz, trg_start, trg_end, trg_boxes, centers, hw, list_offsets,
                   list_index, surf, radius, i0, i1, pot)
    else:
        kernel = _kernels.get("s2p_potgrad", dt)

        def work(i0, i1):
            kernel(dens, trg_xyz, trg_start, trg_end, trg_boxes, centers, hw, list_offsets,
                   list_index, surf, radius, i0, i1, pot, grad)
    _threads.run(work, bounds, threads)


def m2p(ops, equiv, trg_xyz, trg_start, trg_end, target_boxes, w_offsets, w_index, centers,
        half_widths, pot, grad=None, threads=1):
    """Targets of target_boxes[i] += field of the multipoles of their W list."""
    _s2p(ops, equiv, trg_xyz, trg_start, trg_end, target_boxes, w_offsets, w_index, centers,
         half_widths, ops.r_up_equiv, pot, grad, threads)


def l2p(ops, local, trg_xyz, trg_start, trg_end, boxes, centers, half_widths, pot, grad=None,
        threads=1):
    """Targets of boxes[i] += field of their own local expansion."""
    _s2p(ops, local, trg_xyz, trg_start, trg_end, boxes, _self_list(len(boxes)), boxes,
         centers, half_widths, ops.r_down_equiv, pot, grad, threads)
