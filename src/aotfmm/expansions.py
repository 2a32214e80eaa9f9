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
entry_centers : optional, (n_list_entries, 3): per list entry, the centre of the surface it
    involves in the frame of that entry's points (P2M/L2P: the box's own centre; P2L: the
    target box's centre seen from the source box's points; M2P: the source box's centre seen
    from the target box's points). Default: ``centers`` (points in one global frame); the FMM
    driver passes them for points stored local to their leaves.
equiv : (n_boxes, n_surf) dt, upward equivalent densities (multipoles), one row per box.
local : (n_boxes, n_surf) dt, downward equivalent densities (locals), one row per box.
dcheck : (n_boxes, ops.down_rank) dt, down-check coefficients: L2L, M2L and P2L accumulate
    here, :func:`dc2e` turns them into ``local`` (the pseudo-inverse factor that amplifies is
    applied once per box and last; see :mod:`aotfmm.operators` for why).
pot : (n_targets,) dt; grad : (3, n_targets) dt or None (then only the potential). Accumulated.
workers : :class:`aotfmm._threads.Workers` that run the work (BLAS is kept single-threaded
    meanwhile); default: inline on the caller's thread.

Densities are true charges on the surface points ``c + h * radius * surface`` (see the scaling
convention in :mod:`aotfmm.operators`): P2M/P2L multiply by ``h ** -degree`` of the operators'
kernel family (``ops.family.c2e_scale(h)``; Laplace: ``h``), M2M/L2L/M2L are scale free. The
compiled sums are the family's (``ops.family.name`` rows of :data:`aotfmm._dispatch.TABLE`).
Downward, per level: L2L, M2L, P2L into ``dcheck``, then :func:`dc2e`, then the next level.

Functions
---------
p2m(ops, src_xyz, charges, boxes, src_start, src_end, centers, half_widths, equiv, workers=INLINE)
    equiv[boxes[i]] = h UC2E_1 K(up check of boxes[i], its sources) q     (rows overwritten)
m2m(ops, equiv, parents, children)
    equiv[parents[i]] += uc2e_a @ sum_c m2m[c] @ equiv[children[i, c]]; children
    (n_parents, 8) int64 in octant order, -1 where a child is missing.
l2l(ops, local, dcheck, parents, children)
    dcheck[children[i, c]] += l2l[c] @ local[parents[i]].
dc2e(ops, dcheck, local, rows)
    local[rows] += dcheck[rows] @ dc2e_a.T (rows: index array or slice).
m2l_plan(ops, target_boxes, v_offsets, v_index, v_transfer, n_boxes, workers=INLINE,
         octants=None) -> M2LPlan
    geometry-only preprocessing of one level's V list (reuse it for many charge vectors).
    target_boxes (n_t,) int64 unique; v_offsets (n_t + 1,) int64 CSR over rows of
    target_boxes; v_index (n_pairs,) int64 source box ids; v_transfer (n_pairs,) int64 rows of
    ``_geometry.TRANSFER_VECTORS`` (t = source_ijk - target_ijk).
m2l(ops, equiv, dcheck, plan, workers=INLINE, single=False)
    dcheck[target_boxes[i]] += sum over the V list of i of M2L_t @ equiv[source]: by target
    octant (:func:`_octant_m2l`, one dense product per item of up to 512 targets) where the
    plan grouped the level for it (``octants`` given, pairs filling >= half the vectors) and
    the operators' bases are symmetric; otherwise one transfer vector at a time
    (:func:`_vector_m2l`). ``single``: the compressed products in float32 / complex64 for
    float64 / complex128 values (a mixed-precision plan's).
p2l(ops, src_xyz, charges, src_start, src_end, target_boxes, x_offsets, x_index, centers,
    half_widths, dcheck, workers=INLINE)
    dcheck[target_boxes[i]] += h dc2e_b K(down check of target_boxes[i], X list sources) q.
m2p(ops, equiv, trg_xyz, trg_start, trg_end, target_boxes, w_offsets, w_index, centers,
    half_widths, pot, grad=None, workers=INLINE)
    targets of target_boxes[i] += field of equiv[w] on the upward equivalent surfaces of W list.
l2p(ops, local, trg_xyz, trg_start, trg_end, boxes, centers, half_widths, pot, grad=None,
    workers=INLINE)
    targets of boxes[i] += field of local[boxes[i]] on their downward equivalent surface.
"""
import dataclasses
import threading
import weakref

import numpy as np

from . import _blas, _dispatch, _geometry, _m2l_fast, _threads
from ._threads import INLINE
from ._direct import p2p

__all__ = ["check_potentials", "p2m", "m2m", "l2l", "dc2e", "m2l_plan", "m2l", "M2LPlan", "p2l", "m2p", "l2p"]

#: Chunks per thread for the point <-> surface kernels (dynamic scheduling).
_CHUNKS_PER_THREAD = 4
#: At most this many boxes per P2M/P2L chunk: bounds the check-potential scratch memory (4096
#: until 2026-12-05: a one-thread P2M of 1e6 uniform points, p = 8, held 3 x 9.3 MB of
#: temporaries, the peak of aotfmm.mpi's ranks; 1024: VmHWM of a serial one-thread run 297 ->
#: 280 MiB, 2-rank MPI peak 271 -> 262 MiB)
_MAX_CHUNK_BOXES = 1024
#: M2L: GEMM rows (pairs x densities) per block of a transfer vector's pairs. Whole segments
#: (up to ~3600 pairs at 1e6 points) needed scratch of 2 x 1.9 kB per row per thread (p = 8,
#: float64): 106 MB per thread for k = 8 at 1e6, and they streamed the gathered multipoles,
#: the products and the scatter through memory. M2L time, 2-core Intel Xeon, quiet machine,
#: 2 threads, eps 1e-6, best of 3 (whole -> 256 rows): 1e6 cube 0.477 -> 0.445 s (64 rows
#: 0.559, 1024 0.482); Plummer 1.057 -> 0.992 s; k = 8 at 1e5 0.336 -> 0.315 s, at 1e6 5.2 ->
#: 3.9 s. With the other core streaming memory (1 thread) whole segments took 1.03 s against
#: 0.68 s for 64 rows.
M2L_BLOCK_ROWS = 256

#: M2L by target octant (:func:`_octant_m2l`) at levels whose V-list pairs fill at least this
#: fraction of the 189 transfer vectors each target can have; sparser levels (a sphere
#: surface's: ~45 of 189) keep the products per transfer vector.
M2L_OCTANT_FILL = 0.5
#: ... with at most this many targets per item (one item: one dense product)
M2L_OCTANT_ROWS = 512
#: ... whose matrix of gathered columns takes at most this many bytes (so many densities at a
#: time; where one density's would take more, the products per transfer vector are used)
M2L_OCTANT_BYTES = 64 << 20


def _octant_tables():
    """Transfer vectors of a target in octant 0 (x, y, z children bits 0) and of its
    reflections: ``flip[o, t]`` is vector t with the axes of octant o's bits negated;
    ``column[t]``: t is one of octant 0's 189; ``group[t]``: the octant of its source (t & 1)."""
    tv = _geometry.TRANSFER_VECTORS
    flip = np.stack([_geometry.transfer_index(tv @ _m2l_fast.GROUP[e])
                     for e in _m2l_fast.OCTANT_FLIPS])
    column = np.all((tv >= -2) & (tv <= 3), axis=1)
    group = (tv[:, 0] & 1) | (tv[:, 1] & 1) << 1 | (tv[:, 2] & 1) << 2
    return flip, column, group


_OCTANT_FLIP, _OCTANT0_COLUMN, _OCTANT0_GROUP = _octant_tables()
_N_OCTANT_VECTORS = int(_OCTANT0_COLUMN.sum())  # 189
_OCTANT0_COLUMN_I8 = _OCTANT0_COLUMN.astype(np.int64)  # (for the compiled octant_groups)
_LAYOUTS = {}
_SINGLES = {}
_SIGNS = {}
_LAYOUTS_LOCK = threading.RLock()  # (_single_ops makes a layout while holding it)
#: a value type -> the type of its M2L products where they are taken in single precision
_SINGLE = {np.dtype(np.float64): np.dtype(np.float32),
           np.dtype(np.complex128): np.dtype(np.complex64)}


def _cast(a, dt):
    return np.ascontiguousarray(a, dtype=dt)


def _bounds(cost, workers, max_items=None):
    n = len(cost)
    n_chunks = workers.threads * _CHUNKS_PER_THREAD if workers.threads > 1 else 1
    if max_items:
        n_chunks = max(n_chunks, -(-n // max_items))
    return _threads.split(cost, n_chunks)


#: The per-level GEMM passes (M2M, L2L, DC2E, M2L's compression and decompression) split their
#: rows over the plan's threads when each thread gets at least this many. They ran on one
#: thread until 2026-12-05: on 2 cores they kept the other idle for 0.1 s (1e6 uniform
#: points, eps 1e-6) to 0.25 s (Plummer) of each evaluation.
_MIN_SPLIT_ROWS = 64


def _row_ranges(n, workers):
    """Bounds of equal ranges of ``n`` rows, one per thread of ``workers`` (one range when
    threads would get fewer than :data:`_MIN_SPLIT_ROWS` rows each)."""
    return _threads.split(n, max(1, min(workers.threads, n // _MIN_SPLIT_ROWS)))


def _self_list(n):
    return np.arange(n + 1, dtype=np.int64)


def _dens3(a, n_surf):
    """(n_boxes, n_surf) or (n_boxes, k, n_surf) -> a (n_boxes, k, n_surf) view."""
    return a.reshape(a.shape[0], -1, n_surf)


def _rows_gemm(x, m):
    """(rows, k, n) @ m.T -> (rows, k, m.shape[0]): one GEMM over all rows and densities."""
    rows, k, n = x.shape
    return (x.reshape(rows * k, n) @ m.T).reshape(rows, k, m.shape[0])


def _source_terms(charges, dipoles, dt, single_ok=True):
    """(flags, q (k, n), dip (k, 3, n), k, multi) for the kernels; ``multi`` False: the
    single-charge-vector kernels apply (charges 1-D or (1, n), no dipoles, and the family has
    them: ``single_ok``)."""
    if single_ok and dipoles is None and (charges.ndim == 1 or charges.shape[0] == 1):
        return _dispatch.CHARGES, charges.reshape(-1), None, 1, False
    flags, q, dip = _dispatch.density_terms(charges, dipoles, dt)
    k = q.shape[0] if charges is not None else dip.shape[0]
    return flags, q, dip, k, True


def _p2c(ops, src_xyz, charges, src_start, src_end, trg_boxes, list_offsets, list_index,
         centers, half_widths, radius, a, b, workers, out, accumulate, dipoles=None):
    """Check potentials on a surface of ``trg_boxes`` from listed sources, then -> equivalent
    (``a`` None: only to the check coefficients ``h * check @ b.T``)."""
    dt, vdt = ops.dtype, ops.family.value_dtype(ops.dtype)
    n = len(trg_boxes)
    if n == 0:
        return
    single = _dispatch.has_kernel(ops.family.name, "p2c", "charge", "check")
    flags, q, dip, k, multi = _source_terms(charges, dipoles, vdt, single)
    kernel = _dispatch.kernel_name(ops.family.name, "p2c", "densities" if multi else "charge",
                                   "check")
    centers = _cast(centers, dt)  # per list entry (see kernels/expansions.py)
    hw = _cast(half_widths, dt)
    c2e = ops.family.c2e_scale(hw)  # per box: its check-to-equivalent factor h ** -degree
    counts = src_end - src_start
    cum = np.concatenate(([0], np.cumsum(counts[list_index])))
    per_row = cum[list_offsets[1:]] - cum[list_offsets[:-1]]
    bounds = _bounds(per_row + 1, workers, _MAX_CHUNK_BOXES)
    surf = ops.surface_soa
    radius = dt.type(radius)
    out3 = _dens3(out, out.shape[-1])
    buf_len = int(counts[list_index].max()) if len(list_index) else 1

    shared = dict(src_xyz=src_xyz, src_start=src_start, src_end=src_end, trg_boxes=trg_boxes,
                  centers=centers, half_widths=hw, list_offsets=list_offsets,
                  list_index=list_index, surf=surf, radius=radius,
                  **ops.family.kernel_args())
    if multi:
        shared.update(q=q, dip=dip, flags=flags)
    else:
        shared.update(charges=q)

    def work(i0, i1):
        check = np.empty((i1 - i0, k, ops.n_surf), dtype=vdt)
        if multi:
            _dispatch.bind(kernel, dt, **shared, buf=np.empty((6, buf_len), dt),
                           check=check)(i0, i1, i0)
        else:
            _dispatch.bind(kernel, dt, **shared,
                           check=check.reshape(i1 - i0, ops.n_surf))(i0, i1, i0)
        boxes = trg_boxes[i0:i1]
        eq = _rows_gemm(check, b)
        eq *= c2e[boxes][:, None, None]
        if a is not None:
            eq = _rows_gemm(eq, a)
        if accumulate:
            out3[boxes] += eq
        else:
            out3[boxes] = eq

    with _blas.limit_one():
        workers.run(work, bounds)


def check_potentials(family, dt, src_xyz, starts, ends, half_widths, radius, surf, charges=None,
                     dipoles=None, workers=INLINE):
    """Fields on check surfaces of independent source ranges, one row each: out[i, :, m] is
    the field at ``half_widths[i] * radius * surf[:, m]`` of the sources
    ``starts[i]:ends[i]``, whose coordinates are relative to that surface's centre. Each row
    is one sum over its range (in ``dt``: a caller wanting float32 terms with sums in float64
    gives short ranges and adds the rows up itself). Returns (rows, k, n_surf) in the
    family's value dtype of ``dt``.

    src_xyz (3, n) dt; surf (3, n_surf); charges (k, n) / dipoles (k, 3, n) (value dtype)."""
    dt = np.dtype(dt)
    vdt = family.value_dtype(dt)
    rows = len(starts)
    single = _dispatch.has_kernel(family.name, "p2c", "charge", "check")
    flags, q, dip, k, multi = _source_terms(charges, dipoles, vdt, single)
    kernel = _dispatch.kernel_name(family.name, "p2c", "densities" if multi else "charge",
                                   "check")
    out = np.empty((rows, k, surf.shape[1]), dtype=vdt)
    if rows == 0:
        return out
    starts = _cast(starts, np.int64)
    ends = _cast(ends, np.int64)
    counts = ends - starts
    shared = dict(src_xyz=_cast(src_xyz, dt), src_start=starts, src_end=ends,
                  trg_boxes=np.arange(rows, dtype=np.int64), centers=np.zeros((rows, 3), dt),
                  half_widths=_cast(half_widths, dt), list_offsets=_self_list(rows),
                  list_index=np.arange(rows, dtype=np.int64), surf=_cast(surf, dt),
                  radius=dt.type(radius), **family.kernel_args())
    if multi:
        shared.update(q=_cast(q, vdt), dip=_cast(dip, vdt), flags=flags)
    else:
        shared.update(charges=_cast(q, vdt))
    buf_len = max(1, int(counts.max()))

    def work(i0, i1):
        if multi:
            _dispatch.bind(kernel, dt, **shared, buf=np.empty((6, buf_len), dt),
                           check=out)(i0, i1, 0)
        else:
            _dispatch.bind(kernel, dt, **shared, check=out.reshape(rows, -1))(i0, i1, 0)

    workers.run(work, _bounds(counts + 1, workers))
    return out


def p2m(ops, src_xyz, charges, boxes, src_start, src_end, centers, half_widths, equiv,
        workers=INLINE, dipoles=None, entry_centers=None):
    """Multipoles of ``boxes`` (leaves) from their own sources; rows of ``equiv`` overwritten.

    charges (n,) or (k, n) (or None with dipoles (k, 3, n)); equiv (n_boxes[, k], n_surf).
    """
    if entry_centers is None:
        entry_centers = centers[boxes]
    _p2c(ops, src_xyz, charges, src_start, src_end, boxes, _self_list(len(boxes)), boxes,
         entry_centers, half_widths, ops.r_up_check, ops.uc2e_a, ops.uc2e_b, workers, equiv,
         False, dipoles)


def p2l(ops, src_xyz, charges, src_start, src_end, target_boxes, x_offsets, x_index, centers,
        half_widths, dcheck, workers=INLINE, dipoles=None, entry_centers=None):
    """dcheck[target_boxes[i]] += h dc2e_b (potential of the X-list sources on the down check)."""
    if entry_centers is None:
        entry_centers = centers[np.repeat(target_boxes, np.diff(x_offsets))]
    _p2c(ops, src_xyz, charges, src_start, src_end, target_boxes, x_offsets, x_index,
         entry_centers, half_widths, ops.r_down_check, None, ops.dc2e_b, workers, dcheck, True,
         dipoles)


def _octant_pairs(parents, children):
    """Per octant c: (parent rows, child rows) of the children that exist (index != -1)."""
    for c in range(8):
        ch = children[:, c]
        has = ch >= 0
        if has.all():
            yield c, parents, ch
        elif has.any():
            yield c, parents[has], ch[has]


def m2m(ops, equiv, parents, children, workers=INLINE):
    """equiv[parents[i]] += uc2e_a @ sum_c m2m[c] @ equiv[children[i, c]] (children -1: absent).

    ``parents`` are distinct; the children's terms are summed as up-check coefficients and
    the amplifying factor ``uc2e_a`` is applied once per parent. Ranges of parents go to
    the threads of ``workers`` (each writes its own parents).
    """
    e3 = _dens3(equiv, ops.n_surf)

    def work(i0, i1):
        index = np.arange(i1 - i0)
        acc = np.zeros((i1 - i0, e3.shape[1], ops.up_rank), dtype=e3.dtype)
        for c, par, ch in _octant_pairs(index, children[i0:i1]):
            acc[par] += _rows_gemm(e3[ch], ops.m2m[c])
        e3[parents[i0:i1]] += _rows_gemm(acc, ops.uc2e_a)

    workers.run(work, _row_ranges(len(parents), workers))


def l2l(ops, local, dcheck, parents, children, workers=INLINE):
    """dcheck[children[i, c]] += l2l[c] @ local[parents[i]] (children -1: absent). Ranges of
    parents go to the threads of ``workers`` (distinct parents have distinct children)."""
    l3 = _dens3(local, ops.n_surf)
    d3 = _dens3(dcheck, ops.down_rank)

    def work(i0, i1):
        for c, par, ch in _octant_pairs(parents[i0:i1], children[i0:i1]):
            d3[ch] += _rows_gemm(l3[par], ops.l2l[c])

    workers.run(work, _row_ranges(len(parents), workers))


#: dc2e, the M2L's decompression and its compression where rounded to single precision: rows
#: per GEMM (its gathered inputs and products are temporaries: dc2e's for all rows of a level
#: at once took 37 MB at 1e6 uniform points, p = 8, the evaluation's peak)
DC2E_BLOCK_ROWS = 1024


def dc2e(ops, dcheck, local, rows, workers=INLINE):
    """local[rows] += dcheck[rows] @ dc2e_a.T: down-check coefficients -> local densities
    (``rows`` distinct; ranges of them go to the threads of ``workers``)."""
    l3 = _dens3(local, ops.n_surf)
    d3 = _dens3(dcheck, ops.down_rank)

    def work(i0, i1):
        for i in range(i0, i1, DC2E_BLOCK_ROWS):
            r = rows[i:min(i + DC2E_BLOCK_ROWS, i1)]
            l3[r] += _rows_gemm(d3[r], ops.dc2e_a)

    workers.run(work, _row_ranges(len(rows), workers))


class M2LPlan:
    """One level's V list sorted for batched M2L (see :func:`m2l_plan`).

    ``target_boxes`` (n_t,) and ``sources`` (n_u,) int64 (distinct source boxes); ``octant``
    the :class:`OctantPlan` for the octant products, or None. The arrays of the products per
    transfer vector (:func:`_vector_m2l`) are made on first use, once (levels that take the
    octant products never need them; until 2026-12-05 every level built them, ~0.01 s of a
    1e6 cube's setup and ~0.03 s of a Plummer sphere's): ``pair_source`` (n_pairs,) row in
    ``sources`` and ``pair_target`` (n_pairs,) target row, sorted by (transfer vector, target
    row); ``segments`` (n_chunks, 316) and ``seg_end``: pairs of transfer t in chunk j are
    segments[j, t]:seg_end[j, t]; ``max_pairs`` the largest segment (scratch size)."""

    def __init__(self, target_boxes, sources, v_offsets, pair_rows, v_transfer, chunk_rows,
                 octant=None):
        self.target_boxes = target_boxes
        self.sources = sources
        self.octant = octant
        self.n_pairs = len(pair_rows)
        self._pairs = (v_offsets, pair_rows, v_transfer, chunk_rows)
        self._vector = None
        self._lock = threading.Lock()

    def _vector_arrays(self):
        with self._lock:
            if self._vector is None:
                v_offsets, pair_rows, v_transfer, chunk_rows = self._pairs
                n_t = len(self.target_boxes)
                rows = np.repeat(np.arange(n_t, dtype=np.int64), np.diff(v_offsets))
                order = np.argsort(v_transfer.astype(np.int16), kind="stable")  # rows ascending
                pair_source, pair_target = pair_rows[order], rows[order]
                key = v_transfer[order] * n_t + pair_target  # ascending
                t_ids = np.arange(_geometry.N_TRANSFER, dtype=np.int64)
                starts = np.searchsorted(key, t_ids[None, :] * n_t + chunk_rows[:-1, None])
                ends = np.searchsorted(key, t_ids[None, :] * n_t + chunk_rows[1:, None])
                max_pairs = int((ends - starts).max()) if len(key) else 0
                self._vector = (pair_source, pair_target, starts, ends, max_pairs)
            return self._vector

    pair_source = property(lambda self: self._vector_arrays()[0])
    pair_target = property(lambda self: self._vector_arrays()[1])
    segments = property(lambda self: self._vector_arrays()[2])
    seg_end = property(lambda self: self._vector_arrays()[3])
    max_pairs = property(lambda self: self._vector_arrays()[4])


@dataclasses.dataclass
class OctantPlan:
    """One level's V list grouped for :func:`_octant_m2l`: targets by octant, in items of at
    most :data:`M2L_OCTANT_ROWS` targets; an item's pairs by source group (the octant a source
    has when the target's octant is reflected to octant 0), each group's distinct sources
    listed once."""
    target_order: np.ndarray   # (n_t,) int64: target rows, by octant (row i of the products)
    items: np.ndarray          # (n_items, 3) int64: products' rows [r0, r1), their octant
    groups: np.ndarray         # (8 n_items + 1,) int64: pairs of item i, group g are
    #                            groups[8 i + g]:groups[8 i + g + 1]
    group_sources: np.ndarray  # (8 n_items + 1,) int64: their distinct sources, in `sources`
    sources: np.ndarray        # rows of M2LPlan.sources
    pair_row: np.ndarray       # (n_pairs,) int64: a pair's target, a row of its item
    pair_source: np.ndarray    # (n_pairs,) int64: its source, a row of its group's sources
    pair_vector: np.ndarray    # (n_pairs,) int64: its transfer vector reflected to octant 0


def m2l_plan(ops, target_boxes, v_offsets, v_index, v_transfer, n_boxes, workers=INLINE,
             octants=None):
    """One level's V-list pairs for batched M2L: their distinct sources, the targets split
    in chunks for the threads, the pairs sorted by (transfer vector, target row) on first use
    (:class:`M2LPlan`).

    ``octants`` (n_boxes,) int: each box's octant in its parent (``ijk & 1`` as bits x, y, z);
    given, a level whose pairs fill at least :data:`M2L_OCTANT_FILL` of its targets' transfer
    vectors is also grouped for the octant products of :func:`_octant_m2l`."""
    n_t = len(target_boxes)
    n_pairs = len(v_index)
    v_offsets = np.asarray(v_offsets, dtype=np.int64)
    v_transfer = np.asarray(v_transfer, dtype=np.int64)
    # (the pairs reach compiled kernels that read them unchecked: octant_groups, m2l_gather)
    if v_offsets.shape != (n_t + 1,) or v_offsets[0] != 0 or v_offsets[-1] != n_pairs or \
            (np.diff(v_offsets) < 0).any() or v_transfer.shape != (n_pairs,):
        raise ValueError(f"v_offsets must be the {n_t + 1} CSR offsets of the {n_pairs} pairs "
                         f"of v_index, and v_transfer one transfer vector per pair")
    if n_pairs and not ((v_transfer >= 0) & (v_transfer < _geometry.N_TRANSFER)).all():
        raise ValueError(f"v_transfer must hold transfer vectors in 0..{_geometry.N_TRANSFER - 1}")
    used = np.zeros(n_boxes, dtype=bool)
    used[v_index] = True
    sources = np.flatnonzero(used).astype(np.int64)
    compact = np.cumsum(used, dtype=np.int64) - 1
    pair_rows = compact[v_index]  # each pair's source, a row of `sources`
    cost = np.diff(v_offsets)
    chunk_rows = workers.split(cost) if workers.threads > 1 and n_t else \
        np.array([0, n_t], dtype=np.int64)
    octant = None
    if octants is not None and n_pairs >= M2L_OCTANT_FILL * _N_OCTANT_VECTORS * n_t:
        octants = np.asarray(octants)
        if octants.shape != (n_boxes,) or octants.dtype.kind not in "iu" or \
                not ((octants >= 0) & (octants < 8)).all():
            raise ValueError(f"octants must be {n_boxes} integers in 0..7 (one per box)")
        rows = np.repeat(np.arange(n_t, dtype=np.int64), cost)
        octant = _octant_plan(octants[target_boxes], rows, pair_rows, v_transfer,
                              octants[sources])
    return M2LPlan(np.asarray(target_boxes, dtype=np.int64), sources, v_offsets, pair_rows,
                   v_transfer, chunk_rows, octant)


def _octant_plan(target_octant, pair_row, pair_source, pair_vector, source_octant):
    """The V-list pairs of one level grouped for :func:`_octant_m2l` (None if a pair's vector
    is not one a box of its octant can have, or its source's octant is not the one the vector
    gives: not a V list of same-level boxes with these octants).

    Targets by octant (stable), in items of at most :data:`M2L_OCTANT_ROWS`; the pairs and
    each group's distinct sources by the compiled ``octant_groups`` (kernels/lists.py), in
    time linear in the pairs (a group of an item is the item's sources of one octant,
    ``source_octant`` per row of the plan's sources). Until 2026-12-05 numpy sorts and an
    (item, source) marking table did this: 0.03 s of a 1e6 cube's setup, 0.08 s of a Plummer
    sphere's."""
    n_t, n_src = len(target_octant), len(source_octant)
    if not len(pair_row) == len(pair_source) == len(pair_vector):
        raise ValueError("pair_row, pair_source and pair_vector must have one entry per pair")
    order = np.argsort(target_octant.astype(np.int8), kind="stable")
    new_row = np.empty(n_t, dtype=np.int64)
    new_row[order] = np.arange(n_t, dtype=np.int64)
    items, start = [], 0
    for o, count in enumerate(np.bincount(target_octant, minlength=8)):
        edges = start + np.linspace(0, count, -(-count // M2L_OCTANT_ROWS) + 1).round()
        items += [(int(a), int(b), o) for a, b in zip(edges[:-1], edges[1:])]
        start += count
    items = np.array(items, dtype=np.int64).reshape(-1, 3)
    row_item = np.repeat(np.arange(len(items), dtype=np.int64), items[:, 1] - items[:, 0])
    n_pairs = len(pair_row)
    groups = np.empty(8 * len(items) + 1, dtype=np.int64)
    group_sources = np.empty_like(groups)
    out_row, out_source, out_vector, sources, key, src_tmp = \
        (np.empty(n_pairs, dtype=np.int64) for _ in range(6))
    n_out = _dispatch.bind(
        "octant_groups", target_octant=_cast(target_octant, np.int64),
        pair_row=_cast(pair_row, np.int64), pair_source=_cast(pair_source, np.int64),
        pair_vector=_cast(pair_vector, np.int64), source_octant=_cast(source_octant, np.int64),
        flip=_OCTANT_FLIP, col0=_OCTANT0_COLUMN_I8, group0=_OCTANT0_GROUP, new_row=new_row,
        row_item=row_item, item_first=np.ascontiguousarray(items[:, 0]), groups=groups,
        out_row=out_row, out_source=out_source, out_vector=out_vector,
        group_sources=group_sources, sources=sources, key=key, src_tmp=src_tmp,
        mark=np.empty(n_src, dtype=np.int64), loc=np.empty(n_src, dtype=np.int64))()
    if n_out < 0:
        return None
    return OctantPlan(order, items, groups, group_sources, sources[:n_out].copy(), out_row,
                      out_source, out_vector)


def m2l(ops, equiv, dcheck, plan, workers=INLINE, single=False):
    """dcheck[target] += dc2e_b U a_t^T b_t V^T equiv[source] for every V-list pair of the plan.

    ``single`` (float64 or complex128 values): the compressed multipoles V^T equiv are rounded
    to float32 / complex64 and go through a_t, b_t in that type (:func:`_single_ops`), at
    twice the vector width; the compression and the decompression dc2e_b U stay in the
    values' type (the densities hold the pseudo-inverses' weak modes, which float32 would
    swamp: README "Mixed precision")."""
    if plan.n_pairs == 0:
        return
    vdt = equiv.dtype
    pdt = _SINGLE.get(vdt, vdt) if single else vdt  # the products' type
    dt = np.finfo(pdt).dtype                        # ... its real type: the kernels'
    kr = ops.m2l_rank
    e3 = _dens3(equiv, ops.n_surf)
    nd = e3.shape[1]
    k = nd * kr  # a pair's row: the compressed multipoles of all nd densities
    n_t = len(plan.target_boxes)
    mc = np.empty((len(plan.sources), k), dtype=pdt)  # every source compressed once

    def compress(i0, i1):
        if pdt == vdt:  # (straight into mc: no second copy of its rows)
            np.matmul(e3[plan.sources[i0:i1]].reshape(-1, ops.n_surf), ops.m2l_v,
                      out=mc[i0:i1].reshape(-1, kr))
            return
        for j0 in range(i0, i1, DC2E_BLOCK_ROWS):  # (rounded block by block)
            j1 = min(j0 + DC2E_BLOCK_ROWS, i1)
            mc[j0:j1] = (e3[plan.sources[j0:j1]].reshape(-1, ops.n_surf) @
                         ops.m2l_v).reshape(j1 - j0, k)

    workers.run(compress, _row_ranges(len(plan.sources), workers))
    a, b, layout = (ops.m2l_a, ops.m2l_b, _octant_layout(ops)) if pdt == vdt else \
        _single_ops(ops, pdt)
    if plan.octant is not None and layout is not None and a.dtype == pdt and \
            layout.a0.shape[0] * M2L_OCTANT_ROWS * pdt.itemsize <= M2L_OCTANT_BYTES:
        z, targets = _octant_m2l(layout, mc.reshape(-1, nd, kr), plan, dt, workers)
    else:
        z, targets = _vector_m2l(ops, a, b, mc, plan, dt, nd, workers), plan.target_boxes
    d3 = _dens3(dcheck, ops.down_rank)                          # decompress once per target
    z3 = z.reshape(n_t, nd, kr)

    def decompress(i0, i1):  # (distinct targets; in blocks: their temporaries)
        for i in range(i0, i1, DC2E_BLOCK_ROWS):
            j = min(i + DC2E_BLOCK_ROWS, i1)
            d3[targets[i:j]] += _rows_gemm(z3[i:j], ops.m2l_decompress)

    workers.run(decompress, _row_ranges(n_t, workers))


def _real(a):  # gather/scatter move whole rows: a complex row is a real row twice as long
    return a.view(a.real.dtype) if a.dtype.kind == "c" else a


def _vector_m2l(ops, a, b, mc, plan, dt, nd, workers):
    """The compressed down-check sums (n_t, nd * k) of M2L, one transfer vector at a time: its
    pairs' compressed multipoles gathered, times b_t^T and a_t, scattered onto the targets.
    ``a``, ``b``: ``ops.m2l_a``, ``ops.m2l_b`` in the type of ``mc``."""
    vdt, kr = mc.dtype, ops.m2l_rank
    k = nd * kr
    z = np.zeros((len(plan.target_boxes), k), dtype=vdt)
    offs = ops.m2l_offsets
    r_max = int(np.diff(offs).max())

    block = max(1, min(plan.max_pairs, M2L_BLOCK_ROWS // nd))  # pairs per GEMM block

    def work(j0, j1):
        buf = np.empty((block, k), dtype=vdt)
        mid = np.empty((block * nd, r_max), dtype=vdt)
        out = np.empty((block, k), dtype=vdt)
        gather = _dispatch.bind("m2l_gather", dt, src=_real(mc), idx=plan.pair_source,
                                out=_real(buf))
        scatter = _dispatch.bind("m2l_scatter", dt, y=_real(out), idx=plan.pair_target,
                                 z=_real(z))
        for j in range(j0, j1):
            for t in range(_geometry.N_TRANSFER):
                s0, s1 = int(plan.segments[j, t]), int(plan.seg_end[j, t])
                r0, r1 = offs[t], offs[t + 1]
                bt, at = b[r0:r1].T, a[r0:r1]                      # C_t = a_t^T b_t
                for i0 in range(s0, s1, block):
                    i1 = min(i0 + block, s1)
                    rows = (i1 - i0) * nd
                    gather(i0, i1)
                    np.matmul(buf[:i1 - i0].reshape(rows, kr), bt, out=mid[:rows, :r1 - r0])
                    np.matmul(mid[:rows, :r1 - r0], at, out=out[:i1 - i0].reshape(rows, kr))
                    scatter(i0, i1)

    n_chunks = plan.segments.shape[0]
    with _blas.limit_one():
        workers.run(work, np.arange(n_chunks + 1))
    return z


@dataclasses.dataclass
class OctantLayout:
    """M2L operators of octant 0's 189 transfer vectors, stacked for :func:`_octant_m2l`."""
    signs: np.ndarray    # (8, k): the compressed bases' parities under octant o's reflection
    a0: np.ndarray       # (R0, k): a_t of octant 0's vectors, by group, then vector
    b0: np.ndarray       # (R0, k): b_t, same rows
    bounds: np.ndarray   # (9,) int64: rows of group g are bounds[g]:bounds[g + 1]
    col_dst: np.ndarray  # (316,) int64: vector t's first row in a0 (-1: not octant 0's)
    col_src: np.ndarray  # (316,) int64: ... counted from its group's first row
    width: np.ndarray    # (316,) int64: its rank r_t


def _reflection_signs(surf, bases, tol=1e-9):
    """(8, k): s[o, j] = +-1 such that reflecting the surface across the axes of octant o's bits
    maps column j of every basis (n_surf, k) in ``bases`` to s[o, j] times itself; None if a
    column is not that symmetric (to ``tol`` of its norm) or the surface is not."""
    try:
        perms = _m2l_fast.surface_permutations(np.asarray(surf, dtype=np.float64).T)
    except ValueError:
        return None
    signs = np.ones((8, bases[0].shape[1]))
    for i, basis in enumerate(bases):
        norm2 = np.sum(np.abs(basis) ** 2, axis=0)
        for o in range(1, 8):
            image = basis[perms[_m2l_fast.OCTANT_FLIPS[o]]]
            s = np.where(np.real(np.sum(np.conj(basis) * image, axis=0)) < 0.0, -1.0, 1.0)
            if np.abs(image - basis * s).max(axis=0).max(initial=0.0) > \
                    tol * np.sqrt(norm2.max(initial=0.0)) or \
                    (i > 0 and not np.array_equal(s, signs[o])):
                return None
            signs[o] = s
    return signs


def _kept(table, ops, make):
    """``make()`` for ``ops``, made once and kept in ``table`` while ``ops`` lives."""
    with _LAYOUTS_LOCK:
        hit = table.get(id(ops))
        if hit is not None and hit[0]() is ops:
            return hit[1]
        value = make()
        table[id(ops)] = (weakref.ref(ops, lambda _, key=id(ops): table.pop(key, None)), value)
        return value


def _single_ops(ops, pdt):
    """(m2l_a, m2l_b, :class:`OctantLayout` or None) of ``ops`` rounded to ``pdt`` (float32 or
    complex64), made once per ``ops``: the products of :func:`m2l` with ``single``. The
    layout's rows are gathered from the rounded m2l_a, m2l_b: the float64 layout is not made
    for it (a p = 8 set's first single-precision M2L: ~30 -> ~12 ms, and 20 MB less kept)."""
    def make():
        a, b = _cast(ops.m2l_a, pdt), _cast(ops.m2l_b, pdt)
        return a, b, _make_layout(ops, a, b)
    return _kept(_SINGLES, ops, make)


def _octant_layout(ops):
    """The :class:`OctantLayout` of ``ops`` (built once, kept while ``ops`` lives), or None
    where its compressed bases are not symmetric under the reflections (the products per
    transfer vector are used then)."""
    return _kept(_LAYOUTS, ops, lambda: _make_layout(ops, ops.m2l_a, ops.m2l_b))


def _signs(ops):
    """:func:`_reflection_signs` of ``ops``'s surface and compressed bases, once per ``ops``
    (shared by its layouts in either precision), or None."""
    return _kept(_SIGNS, ops, lambda: _reflection_signs(ops.surface_soa,
                                                        (ops.m2l_v, ops.m2l_u)))


def _make_layout(ops, m2l_a, m2l_b):
    """The :class:`OctantLayout` of ``ops`` with its a0, b0 gathered from ``m2l_a``,
    ``m2l_b`` (``ops``'s own, or their single-precision copies); None as
    :func:`_octant_layout`."""
    signs = _signs(ops)
    if signs is None:
        return None
    offs = ops.m2l_offsets
    vectors = np.flatnonzero(_OCTANT0_COLUMN)
    vectors = vectors[np.argsort(_OCTANT0_GROUP[vectors], kind="stable")]
    width = np.diff(offs).astype(np.int64)
    start = np.concatenate(([0], np.cumsum(width[vectors])))
    col_dst = np.full(len(width), -1, dtype=np.int64)
    col_dst[vectors] = start[:-1]
    bounds = start[np.searchsorted(_OCTANT0_GROUP[vectors], np.arange(9))]
    col_src = col_dst - np.where(col_dst >= 0, bounds[_OCTANT0_GROUP], 0)
    rows = np.concatenate([np.arange(offs[t], offs[t + 1]) for t in vectors])
    return OctantLayout(signs.astype(m2l_a.real.dtype), m2l_a[rows], m2l_b[rows],
                        bounds.astype(np.int64), col_dst, col_src, width)


def _octant_m2l(layout, mc3, plan, dt, workers):
    """The compressed down-check sums of M2L by target octant, and the targets of their rows.

    A target of octant o is octant 0's mirror image (across the axes of o's bits), and so is
    each of its V-list pairs: C_t, the compressed operator of vector t, is S_o C_t0 S_o with t0
    = t reflected and S_o the bases' parities (:func:`_reflection_signs`; the bases are built
    symmetric). So for the targets of one item (one octant, up to M2L_OCTANT_ROWS of them)
    every pair's S_o mc[s] b_t0^T goes into the target's row at t0's columns of one matrix W
    (zeros where a vector has no source), and W a0 S_o are the targets' sums: one dense product
    over the 189 vectors of octant 0, written once, instead of a gather, two thin products
    and a scatter per vector. The first products are per group (the octant of the sources
    after the reflection): the group's distinct sources times b0's rows of its vectors.
    Densities go through W as many at a time as fit in :data:`M2L_OCTANT_BYTES`."""
    op = plan.octant
    vdt = mc3.dtype
    nd, kr = mc3.shape[1], mc3.shape[2]
    n_t = len(plan.target_boxes)
    z = np.empty((n_t, nd, kr), dtype=vdt)
    a0, b0, bounds = layout.a0, layout.b0, layout.bounds
    rows = int((op.items[:, 1] - op.items[:, 0]).max())
    # densities per pass: W of at most M2L_OCTANT_BYTES
    chunk = max(1, min(nd, M2L_OCTANT_BYTES // (rows * a0.shape[0] * vdt.itemsize)))
    width = int(np.diff(bounds).max())
    n_src = int(np.diff(op.group_sources).max())
    cm = 2 if vdt.kind == "c" else 1

    def work(i0, i1):
        w = np.empty((rows * chunk, a0.shape[0]), dtype=vdt)
        flat = np.empty(n_src * chunk * width, dtype=vdt)
        for i in range(i0, i1):
            r0, r1, o = (int(v) for v in op.items[i])
            signs = layout.signs[o]
            for d0 in range(0, nd, chunk):
                c = min(chunk, nd - d0)
                wi = w[:(r1 - r0) * c]
                wi.fill(0)
                for g in range(8):
                    p0, p1 = int(op.groups[8 * i + g]), int(op.groups[8 * i + g + 1])
                    if p0 == p1:
                        continue
                    s0, s1 = op.group_sources[8 * i + g], op.group_sources[8 * i + g + 1]
                    x = mc3[op.sources[s0:s1], d0:d0 + c]       # (copies the rows)
                    x *= signs
                    c0, c1 = int(bounds[g]), int(bounds[g + 1])
                    wb = flat[:x.shape[0] * c * (c1 - c0)].reshape(x.shape[0] * c, c1 - c0)
                    np.matmul(x.reshape(-1, kr), b0[c0:c1].T, out=wb)
                    _dispatch.bind("m2l_gather_cols", dt, src=_real(wb), dst=_real(wi),
                                   srow=op.pair_source, drow=op.pair_row, vec=op.pair_vector,
                                   col_src=layout.col_src, col_dst=layout.col_dst,
                                   width=layout.width, nd=c, cm=cm)(p0, p1)
                if c == nd:
                    zi = z[r0:r1].reshape((r1 - r0) * nd, kr)
                    np.matmul(wi, a0, out=zi)
                    zi *= signs
                else:
                    z[r0:r1, d0:d0 + c] = (wi @ a0 * signs).reshape(r1 - r0, c, kr)

    with _blas.limit_one():
        workers.run(work, np.arange(len(op.items) + 1))
    return z.reshape(n_t, nd * kr), plan.target_boxes[op.target_order]


def _s2p(ops, dens, trg_xyz, trg_start, trg_end, trg_boxes, list_offsets, list_index,
         centers, half_widths, radius, pot, grad, workers, hess=None):
    dt = ops.dtype
    n = len(trg_boxes)
    if n == 0:
        return
    centers = _cast(centers, dt)
    hw = _cast(half_widths, dt)
    radius = dt.type(radius)
    d3 = _dens3(dens, ops.n_surf)
    if hess is not None:  # pot (k, n), grad (k, 3, n), hess (k, 6, n)
        _s2p_hessians(ops, d3, trg_xyz, trg_start[trg_boxes], trg_end[trg_boxes], list_offsets,
                      list_index, centers, hw, radius, pot, grad, hess, workers)
        return
    n_trg = trg_end[trg_boxes] - trg_start[trg_boxes]
    bounds = _bounds(n_trg * np.diff(list_offsets) + 1, workers)
    surf = ops.surface_soa
    nd = d3.shape[1]
    shared = dict(trg_xyz=trg_xyz, trg_start=trg_start, trg_end=trg_end, trg_boxes=trg_boxes,
                  centers=centers, half_widths=hw, list_offsets=list_offsets,
                  list_index=list_index, surf=surf, radius=radius,
                  **ops.family.kernel_args())
    single = _dispatch.has_kernel(ops.family.name, "s2p", "surface", "pot")
    if nd > 1 or not single:
        flags = 0 if grad is None else _dispatch.GRADIENT
        grad3 = np.zeros((1, 1, 1), pot.dtype) if grad is None else grad.reshape(nd, 3, -1)
        multi_kernel = _dispatch.kernel_name(ops.family.name, "s2p", "surfaces", "pot|potgrad")

        def work(i0, i1):
            _dispatch.bind(multi_kernel, dt, dens=d3, **shared, flags=flags,
                           buf=np.empty((6, ops.n_surf), dt), pot=pot.reshape(nd, -1),
                           grad=grad3)(i0, i1)
    else:
        d2, out = d3.reshape(len(d3), ops.n_surf), dict(pot=pot.reshape(-1))
        if grad is not None:
            out["grad"] = grad.reshape(3, -1)
        work = _dispatch.bind(_dispatch.kernel_name(
            ops.family.name, "s2p", "surface", "pot" if grad is None else "potgrad"), dt, dens=d2,
            **shared, **out)  # a function of (b0, b1), the range a worker takes
    workers.run(work, bounds)


def _s2p_hessians(ops, d3, trg_xyz, row_start, row_end, list_offsets, list_index, centers, hw,
                  radius, pot, grad, hess, workers):
    """Potential, gradient and Hessian of surface densities: the surfaces of the listed boxes
    become point charges and the near field's Hessian kernel sums them (rows are targets
    ``row_start[i]:row_end[i]`` with the boxes ``list_index[list_offsets[i]:...]``)."""
    n_surf = ops.n_surf
    used, pos = np.unique(list_index, return_inverse=True)
    # each surface relative to its own centre; entry k's centre (in the targets' frame) is
    # centers[k], so a target meets it at x - centers[k]
    pts = (hw[used] * radius)[:, None, None] * ops.surface_soa
    src = np.ascontiguousarray(pts.transpose(1, 0, 2).reshape(3, -1))
    q = np.ascontiguousarray(d3[used].transpose(1, 0, 2).reshape(d3.shape[1], -1))
    start = np.arange(len(used), dtype=np.int64) * n_surf
    p2p(src, q, trg_xyz, start, start + n_surf, row_start, row_end, list_offsets,
        pos.astype(np.int64), np.arange(len(row_start), dtype=np.int64), pot, grad, workers,
        cost=(row_end - row_start) * np.diff(list_offsets) + 1, hess=hess,
        shift=np.ascontiguousarray(-centers), family=ops.family)


def m2p(ops, equiv, trg_xyz, trg_start, trg_end, target_boxes, w_offsets, w_index, centers,
        half_widths, pot, grad=None, workers=INLINE, hess=None, entry_centers=None):
    """Targets of target_boxes[i] += field of the multipoles of their W list."""
    if entry_centers is None:
        entry_centers = centers[w_index]
    _s2p(ops, equiv, trg_xyz, trg_start, trg_end, target_boxes, w_offsets, w_index,
         entry_centers, half_widths, ops.r_up_equiv, pot, grad, workers, hess)


def l2p(ops, local, trg_xyz, trg_start, trg_end, boxes, centers, half_widths, pot, grad=None,
        workers=INLINE, hess=None, entry_centers=None):
    """Targets of boxes[i] += field of their own local expansion."""
    if entry_centers is None:
        entry_centers = centers[boxes]
    _s2p(ops, local, trg_xyz, trg_start, trg_end, boxes, _self_list(len(boxes)), boxes,
         entry_centers, half_widths, ops.r_down_equiv, pot, grad, workers, hess)
