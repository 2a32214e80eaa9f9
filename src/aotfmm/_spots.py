"""Charge on few compact spots with more sources than the direct budget: each spot's field from an
equivalent density on a small box centred on the spot.

The eps -> p table measures fields of many charges spread through their boxes. Charge that sits
on few places (:meth:`aotfmm.evaluate.Plan._few_places`) has the field of a few points at the
far targets, and a point in the worst place of a translation misses eps by up to ~150x in
gradients. Up to :data:`aotfmm.evaluate._FEW_DIRECT` such sources are summed directly; beyond
that (1001 charges on one point: 143x eps, hostile test 2026-12-04) their distinct points, if at
most that many, carry the summed densities of their coincident sources onto every target
(:func:`coincident`, exact); else each spot (a connected set of the heavy cells no wider than
two cells, else each of its cells) is translated from a cube of half-width h centred on its own
sources, where a source's place is never worse than the cube's corner and the far targets are at
least :data:`RHO` h away: KIFMM's upward equivalent density of that cube (check surface 2.95 h,
equivalent surface 1.05 h, as the FMM's own boxes), of the lowest order whose worst error,
measured here for the plan's kernel on unit charges at the cube's corners against targets on
spheres of radius RHO h .. 5 RHO h, is within :data:`_SHARE` of eps. Targets nearer than RHO h
(by their leaf's box) get the spot's sources pair by pair. The FMM gets the density without the
spot's sources.
"""
import threading

import numpy as np

from . import _blas
from ._direct import p2p as near_field
from .operators import P_MAX, _pinv_factors, default_pinv_cutoff
from .surfaces import DEFAULT_RADII, n_surf, surface

#: Far targets are at least this many spot half-widths from the spot's centre (twice the
#: check surface's radius). Laplace, unit charge at a corner of the cube, worst relative
#: gradient error at RHO = 4 / 6 / 8: order 6 3.7e-5 / 5.1e-6 / 2.3e-6, order 9 2.9e-7 /
#: 1.3e-8 / 4.7e-9 (further out it stops falling: the surfaces' own resolution).
RHO = 6.0

#: A spot's worst relative error (per source, against that source's own field: so against the
#: field of |q| of the spot) is at most eps / _SHARE for charges' potentials and gradients, and
#: eps / (_SHARE * _STRICTER) when dipoles or Hessians are asked for (their errors measured
#: 3-12x the charges' gradients at the same order, Laplace).
_SHARE = 20.0
_STRICTER = 10.0

#: At most this many heavy cells per density (each cell is a spot at most: connected ones
#: make one spot when no wider than two cells, else one each) ...
_MAX_SPOTS = 64
#: ... costing at most this many pairs per target in all (spot sources times near targets,
#: equivalent points times far targets), or 1e7 pairs (a few ms): else nothing is routed.
_PAIRS_PER_TARGET = 2000
_PAIRS_ANYWAY = 1e7

_NEIGHBOURS = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                        if (i, j, k) != (0, 0, 0)])


def components(keys, n):
    """Connected sets (26-neighbourhood) of the cells ``keys`` (flat indices into an n^3 grid):
    a label 0 .. n_sets - 1 per key."""
    keys = np.asarray(keys, dtype=np.int64)
    pos = {int(k): i for i, k in enumerate(keys)}
    ijk = np.stack(np.unravel_index(keys, (n, n, n)), axis=1)
    label = np.full(len(keys), -1, dtype=np.int64)
    n_sets = 0
    for start in range(len(keys)):
        if label[start] >= 0:
            continue
        label[start] = n_sets
        stack = [start]
        while stack:
            i = stack.pop()
            for nb in ijk[i] + _NEIGHBOURS:
                if (nb < 0).any() or (nb >= n).any():
                    continue
                j = pos.get(int((nb[0] * n + nb[1]) * n + nb[2]))
                if j is not None and label[j] < 0:
                    label[j] = n_sets
                    stack.append(j)
        n_sets += 1
    return label


def _fibonacci(m):
    """``m`` points spread over the unit sphere."""
    i = np.arange(m) + 0.5
    z = 1.0 - 2.0 * i / m
    phi = np.pi * (1.0 + 5 ** 0.5) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


_CORNERS = np.array([(i, j, k) for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=float)
_PROBES = np.vstack([_CORNERS, [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0],
                                [0.3, -1.0, 0.2], [1.0, 0.5, -0.7]]])
_SAMPLES = np.vstack([r * RHO * _fibonacci(160) for r in (1.0, 2.0, 5.0)])


def _first_order(tol):
    """The order :func:`spot_operator` tries first: Laplace's worst error is ~10^(0.5 - 0.9 q)
    at RHO = 6; one order below that guess."""
    return int(np.clip(np.ceil((0.5 - np.log10(tol)) / 0.9) - 1, 3, P_MAX))


def spot_operator(family, h, tol):
    """The lowest order q (from a guess, up to P_MAX) whose equivalent density on a cube of
    half-width ``h`` (centred at 0) reproduces the potential and gradient of unit charges at
    the cube's corners, centre and faces to a worst relative error of ``tol`` at targets
    RHO h .. 5 RHO h away, for the kernel ``family`` (frame units).
    Returns (q, equivalent surface points (m, 3), (a, b) pseudo-inverse factors of the check
    -> equivalent kernel matrix, measured error) or None if no order reaches ``tol``."""
    r_ue, r_uc = DEFAULT_RADII[0], DEFAULT_RADII[1]
    probes, x = h * _PROBES, h * _SAMPLES
    k0, g0 = family.field_reference(x, probes, gradient=True)
    pot_bar = np.abs(k0)
    grad_bar = np.sqrt(np.sum(np.abs(g0) ** 2, axis=-1))
    for q in range(_first_order(tol), P_MAX + 1):
        s = surface(q)
        chk, eqv = r_uc * h * s, r_ue * h * s
        a, b = _pinv_factors(family.reference(chk, eqv), default_pinv_cutoff(np.float64))
        eq = a @ (b @ family.reference(chk, probes))               # (m, probes)
        k1, g1 = family.field_reference(x, eqv, gradient=True)
        err_p = np.abs(k1 @ eq - k0) / pot_bar
        err_g = np.sqrt(np.sum(np.abs(np.einsum("xmc,mp->xpc", g1, eq) - g0) ** 2,
                               axis=-1)) / grad_bar
        err = float(max(err_p.max(), err_g.max()))
        if err <= tol:
            return q, eqv, (a, b), err
    return None


#: Scale-invariant kernels (Laplace): the spot operators of the cube of half-width 1, by
#: (kernel, tolerance), shared by every plan of the process; other kernels: per plan, by
#: (half-width, tolerance). At most this many of each (order 10: 3.8 MB; 16: 29 MB).
_UNIT_OPS = {}
_CACHED = 8
_LOCK = threading.Lock()


def _operator(family, h, tol, cache):
    """(:func:`spot_operator`'s result for the cube of half-width 1 when the kernel is scale
    invariant, else for ``h`` itself (in ``cache``), and the factor (h / 1 for the surface
    points, c2e_scale(h) for the pseudo-inverse) to apply to it)."""
    if family.scale_invariant:
        cache, key, size, scale = _UNIT_OPS, (family.name, tol), 1.0, (h, family.c2e_scale(h))
    else:
        key, size, scale = (h, tol), h, (1.0, 1.0)
    with _LOCK:  # (plans evaluated from several threads at once)
        if key not in cache:
            while len(cache) >= _CACHED:  # (the oldest out: a few MB each at most)
                cache.pop(next(iter(cache)))
            with _blas.limit_one():  # (OpenBLAS's threads spin badly on a busy machine)
                cache[key] = spot_operator(family, size, tol)
        return cache[key], scale


def plan_spots(plan, sets, eps, strict, max_h, cache):
    """Geometry and order of each spot: ``sets`` a list of (tree-order source indices, sorted;
    their cells), one per connected set of heavy cells. ``strict``: dipoles or Hessians asked
    for; ``max_h``: the place rule's cell width (frame units): a set wider than two cells is
    split into one spot per cell (clumps a cell apart are each point-like to the far field).
    Returns a list of dicts (idx, leaf, anchor, c, h, op, scale, near, far), or None when the
    spots are more than :data:`_MAX_SPOTS`, one has no order that reaches its share of eps, or
    they cost more than the budget (checked with the orders' first guess before any is built).
    ``cache``: the plan's spot operators (kernels with a parameter)."""
    tree = plan.tree
    t_lv = plan.target_leaves()
    counts = (tree.trg_end[t_lv] - tree.trg_start[t_lv]).astype(np.int64)
    n_trg = int(counts.sum())
    tol = eps / (_SHARE * (_STRICTER if strict else 1.0))
    if plan.redo is not None:  # float32 plans: the redo's boxes take the spots' own sources
        redo = np.zeros(len(tree.levels), dtype=bool)
        redo[plan.redo.boxes] = True
        redo = redo[t_lv]
    else:
        redo = np.zeros(len(t_lv), dtype=bool)
    budget = max(_PAIRS_PER_TARGET * n_trg, _PAIRS_ANYWAY)
    # A spot of m sources costs m n_near + n_surf(q) (n_trg - n_near) >= min(m, n_surf(q))
    # n_trg whatever n_near is, and splitting a set into spots (below) does not lower the sum
    # of those minima: when that bound is over the budget, the check after the geometry
    # would say None too, so the loop stops there. Charge spread over a few heavy cells (a
    # Plummer sphere of 1e6 points: one set of 22 cells, 1e5 sources, split per cell) is
    # refused before the geometry of its parts (36 -> 5 ms a call).
    m_first = n_surf(_first_order(tol))
    bound = [min(len(idx), m_first) for idx, _ in sets]
    if sum(bound) * n_trg > budget:
        return None
    centres = plan.offsets[t_lv]  # (+ the anchor's offset from each spot's, below)

    def geometry(idx, leaf):  # (leaf: plan.source_leaves(idx))
        anchor = plan.anchor[leaf[0]]
        # the spot's points relative to its first leaf's anchor, frame units, float64 shifts
        rel = plan.src[:, idx].astype(np.float64) + \
            ((plan.anchor[leaf] - anchor) / plan.frame_scale).T
        lo, hi = rel.min(axis=1), rel.max(axis=1)
        return anchor, 0.5 * (lo + hi), float((hi - lo).max())

    spots = []
    for i, (idx, cells) in enumerate(sets):
        leaf = plan.source_leaves(idx)
        parts = [(idx, leaf) + geometry(idx, leaf)]
        if parts[0][-1] > 2 * max_h:  # wider than two cells: one spot per cell
            keys, per_cell = np.unique(cells, return_counts=True)
            bound[i] = int(np.minimum(per_cell, m_first).sum())
            if sum(bound) * n_trg > budget:
                return None
            parts = []
            for key in keys:
                m = cells == key
                parts.append((idx[m], leaf[m]) + geometry(idx[m], leaf[m]))
        for idx, leaf, anchor, c, width in parts:
            # a spot on one point: any cube holds it at its centre (1e-9 of the domain)
            h = max(width * 0.5 * (1 + 1e-9), 1e-9 * plan.size)
            if not plan.family.scale_invariant:  # (few distinct operators per plan)
                h = 2.0 ** np.ceil(np.log2(h))
            # target leaves by the distance of their box from the spot's centre
            gap = np.maximum(np.abs(centres + (plan.anchor[t_lv] - anchor) / plan.frame_scale
                                    - c) - tree.half_widths[t_lv][:, None], 0.0)
            near = (np.sqrt(np.sum(gap * gap, axis=1)) < RHO * h * (1 + 1e-6)) | redo
            n_near = int(counts[near].sum())
            spots.append(dict(idx=idx, leaf=leaf, anchor=anchor, c=c, h=h, near=t_lv[near],
                              far=t_lv[~near], n_near=n_near))
        if len(spots) > _MAX_SPOTS:
            return None

    def cost(orders):
        return sum(len(sp["idx"]) * sp["n_near"] + n_surf(q) * (n_trg - sp["n_near"])
                   for sp, q in zip(spots, orders))

    if cost([_first_order(tol)] * len(spots)) > budget:  # (before any pseudo-inverse)
        return None
    for sp in spots:
        sp["op"], sp["scale"] = _operator(plan.family, sp["h"], tol, cache)
        if sp["op"] is None:
            return None
    return spots if cost([sp["op"][0] for sp in spots]) <= budget else None


def coincident(plan, idx, limit):
    """The heavy cells' sources ``idx`` (tree order, sorted) as their distinct points, when
    those are at most ``limit`` (:data:`aotfmm.evaluate._FEW_DIRECT`; float64 plans: the leaf-local
    offsets are the caller's coordinates exactly): a spot summed pair by pair onto every
    target from one source per point carrying the sum of its densities (exact: coincident
    sources skip the same targets). 125 grid sites with 24 unit charges each gave 5.2x eps in
    gradients with the default leaves (eps 4e-7), 26x with ncrit 32. Else None."""
    if plan.dtype != np.float64:
        return None
    # distinct points are at least as many as the distinct values of one coordinate: a sort
    # of one column settles most calls (Plummer, 1e6: 1e5 heavy-cell sources, 61 -> 2 ms)
    if len(idx) > limit and len(np.unique(plan.src[0, idx])) > limit:
        return None
    leaf = plan.source_leaves(idx)
    key = np.column_stack([leaf.astype(np.float64), plan.src[:, idx].T])
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    if len(first) > limit:
        return None
    order = np.argsort(idx[first])           # representatives in tree order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    rep = idx[first][order]
    t_lv = plan.target_leaves()
    return dict(idx=rep, leaf=leaf[first][order], anchor=None, members=idx,
                inverse=rank[inverse.reshape(-1)], near=t_lv, far=t_lv[:0])


def _summed(values, inverse, n):
    """Per representative, the sum of its members' ``values`` (..., members): (..., n)."""
    out = np.zeros(values.shape[:-1] + (n,), dtype=values.dtype)
    np.add.at(out, (Ellipsis, inverse), values)
    return out


def spot_fields(plan, spot, j, charges, dipoles, outs):
    """Add the field of density ``j``'s sources in ``spot`` (:func:`plan_spots`) to ``outs``
    (pot (1, n_trg), grad (1, 3, n_trg), hess (1, 6, n_trg) or None; tree target order):
    pair by pair at the targets of its near leaves, through its equivalent density at the
    far ones. ``charges`` (k, n) / ``dipoles`` (k, 3, n): caller order."""
    tree = plan.tree
    idx, leaf, anchor = spot["idx"], spot["leaf"], spot["anchor"]
    v64 = plan.family.value_dtype(np.float64)
    if "inverse" in spot:  # (coincident: each point's members summed)
        caller, inv = tree.src_perm[spot["members"]], spot["inverse"]
        qd = None if charges is None else \
            _summed(np.asarray(charges[j][caller], v64), inv, len(idx))[None]
        dd = None if dipoles is None else \
            _summed(np.asarray(dipoles[j][:, caller], v64), inv, len(idx))[None]
    else:
        caller = tree.src_perm[idx]
        qd = None if charges is None else np.ascontiguousarray(charges[j][caller][None], v64)
        dd = None if dipoles is None else np.ascontiguousarray(dipoles[j][:, caller][None],
                                                               v64)
    s_start, s_end, s_anchor = plan.leaf_runs(leaf)
    xyz = np.ascontiguousarray(plan.src[:, idx], dtype=np.float64)
    if len(spot["near"]):
        plan._sum_onto_leaves(xyz, qd, dd, s_start, s_end, s_anchor, spot["near"], outs)
        if plan.redo is not None:
            plan._few_redo(idx, qd, dd, outs)
    if not len(spot["far"]):
        return
    q, eqv, (a, b), _ = spot["op"]
    eqv = spot["scale"][0] * eqv  # (the unit cube's, for a scale-invariant kernel)
    r_uc = DEFAULT_RADII[1]
    chk = np.ascontiguousarray((spot["c"] + r_uc / DEFAULT_RADII[0] * eqv).T)  # (3, m)
    m = chk.shape[1]
    n_s = len(s_start)
    pot = np.zeros((1, m), dtype=v64)
    near_field(xyz, qd, chk, s_start, s_end, np.zeros(1, np.int64), np.full(1, m, np.int64),
               np.array([0, n_s], dtype=np.int64), np.arange(n_s, dtype=np.int64),
               np.zeros(1, np.int64), pot, None, plan.workers,
               cost=np.array([float(len(idx) * m)]), dipoles=dd, exact=True,
               shift=np.ascontiguousarray((anchor - s_anchor) / plan.frame_scale),
               family=plan.family)
    eq = (spot["scale"][1] * (a @ (b @ pot[0]))).astype(v64)
    e_xyz = np.ascontiguousarray((spot["c"] + eqv).T)
    plan._sum_onto_leaves(e_xyz, eq[None], None, np.zeros(1, np.int64),
                          np.full(1, m, np.int64), anchor[None], spot["far"], outs)
