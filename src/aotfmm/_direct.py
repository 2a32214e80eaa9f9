"""Direct summation of Laplace potentials on validated input: the O(n_sources * n_targets)
reference behind :func:`aotfmm.direct` (``_direct``, ``_direct_multi``) and the FMM's near field
(:func:`p2p`, the same compiled P2P kernels over lists of box pairs).

Everything here trusts its input: the public :func:`aotfmm.direct` (in :mod:`aotfmm.api`)
checks it first (:mod:`aotfmm._validation`)."""
import threading

import numpy as np

from . import _dispatch, _rounding, _threads
from ._frame import (frame, rescale, scaled_charges, scaled_densities, to_soa, unscale_factor,
                     unscale_fields)
from ._validation import check_representable
from .families import LAPLACE

#: Target chunks handed to the thread pool per thread (dynamic scheduling smooths out imbalance).
_CHUNKS_PER_THREAD = 4
#: Newton's-third-law near field: pieces per thread's range (interrupt and error checks)
_SYM_PIECES = 16
#: Below this many pair interactions one thread is used: the pool hand-off costs more.
_MIN_PAIRS_FOR_THREADS = 200_000


def _direct(src, q, trg, gradient, dt, workers, module=None, family=LAPLACE):
    """Validated-input twin of :func:`direct`: src/trg float64 (n, 3), q float64 (n,).

    ``module`` picks a kernel module other than the active ISA's (tests compare them);
    ``family`` the kernel (:class:`aotfmm.families.KernelFamily`).
    """
    n_trg = trg.shape[0]
    pot = np.zeros(n_trg, dtype=dt)
    grad = np.zeros((3, n_trg), dtype=dt)
    if n_trg and src.shape[0]:
        # float64: exact power-of-two scaling only; float32: also centre, to keep its digits.
        center, scale = frame(src, trg, center=dt == np.float32)
        src_xyz = to_soa(src, center, scale, dt)
        trg_xyz = to_soa(trg, center, scale, dt) if trg is not src else src_xyz
        redo = rounding_redo(src, trg, center, scale, src_xyz, trg_xyz, int(gradient), workers)
        qscale, charges = scaled_charges(q, dt)
        _p2p_all(src_xyz, charges, trg_xyz, pot, grad if gradient else None, workers, module,
                 family=family.scaled(scale))
        _redo_targets(redo, charges, None, pot, grad if gradient else None, workers,
                      family.scaled(scale), module)
        pot = rescale(pot, unscale_factor(qscale, scale, 0, family), "potential")
        if gradient:
            grad = rescale(grad, unscale_factor(qscale, scale, 1, family), "gradient")
    return (pot, np.ascontiguousarray(grad.T)) if gradient else pot


def _direct_multi(src, q, d, trg, gradient, dt, workers, family=LAPLACE):
    """k densities: q (k, n) float64 or None, d (k, 3, n) float64 or None.

    Returns pot (k, n_trg) and grad (k, 3, n_trg) or None, in dtype ``dt`` (its complex type
    for a complex family: then q and d may be complex128). A family with a parameter runs in
    the frame as ``family.scaled(scale)``."""
    k = (q if q is not None else d).shape[0]
    n_trg = trg.shape[0]
    vdt = family.value_dtype(dt)
    pot = np.zeros((k, n_trg), dtype=vdt)
    grad = np.zeros((k, 3, n_trg), dtype=vdt) if gradient else None
    if not (n_trg and src.shape[0]):
        return pot, grad
    center, scale = frame(src, trg, center=dt == np.float32)
    src_xyz = to_soa(src, center, scale, dt)
    trg_xyz = to_soa(trg, center, scale, dt) if trg is not src else src_xyz
    redo = rounding_redo(src, trg, center, scale, src_xyz, trg_xyz,
                         int(gradient) + int(d is not None), workers)
    live, qscale, qs, ds = scaled_densities(q, d, scale)
    if not len(live):
        return pot, grad
    qs = None if qs is None else np.ascontiguousarray(qs, dtype=vdt)
    ds = None if ds is None else np.ascontiguousarray(ds, dtype=vdt)
    pl = np.zeros((len(live), n_trg), dtype=vdt)
    gl = np.zeros((len(live), 3, n_trg), dtype=vdt) if gradient else None
    _p2p_all(src_xyz, qs, trg_xyz, pl, gl, workers, dipoles=ds, family=family.scaled(scale))
    _redo_targets(redo, qs, ds, pl, gl, workers, family.scaled(scale))
    unscale_fields((pot, grad), (pl, gl), live, qscale, scale, family=family)
    return pot, grad


#: what a float32 direct sum of float64 points may lose to their rounding (relative L2 bound
#: against the field of |q|, :mod:`aotfmm._rounding`) before the hurt targets are redone,
#: and the pairs it counts: moved by more than DIRECT_TAU of their distance. A direct sum's
#: frame is the whole domain, so points move by ~6e-8 of it (a plan's leaves: of the leaf)
#: and the x-sweep's window is wide: tau 1e-5 costs ~+30 % of a float32 direct sum at 1e5
#: points, 2e-6 cost 4x. So float32's default eps is the target: pairs just below tau can
#: leave ~2e-6 (a pair 1.5e-3 apart among 6000 points: gradient 1.8e-6; 9e-6 at tau 1e-4).
DIRECT_ROUNDING = 2.5e-6
DIRECT_TAU = 1e-5


def rounding_redo(src, trg, center, scale, src_xyz, trg_xyz, order, workers):
    """Float64 points in a float32 direct sum: the targets whose sums rounding the points
    hurts (:mod:`aotfmm._rounding`, one box holding everything), with float64 frame
    coordinates of the sources and of those targets: (src (3, n), trg (3, m), index (m,)),
    or None when nothing needs redoing. Refuses (:func:`_representable`) offsets below what
    the frame holds in the run dtype first.

    The float64 coordinates are the caller's scaled by the frame's power of two, not
    centred, like float64's own direct sum: subtracting the centre rounds each point by
    ~1e-16 of the extent, which would merge a pair 1e-24 apart at the origin (and put a pair
    1e-13 apart at 0.3 5e-4 off). Each float32 point's move is measured against them with
    the centre added back in float64."""
    _representable(src, trg, center, scale, src_xyz.dtype)
    if src_xyz.dtype != np.float32:
        return None
    same = trg_xyz is src_xyz
    origin = np.zeros(3)
    shift = (np.asarray(center, dtype=np.float64) / scale)[:, None]
    s64 = to_soa(src, origin, scale, np.float64)
    t64 = s64 if same else to_soa(trg, origin, scale, np.float64)
    serr = (src_xyz + shift) - s64  # each point's move (3, n)
    terr = serr if same else (trg_xyz + shift) - t64
    if not (serr.any() or terr.any()):
        return None
    lo = np.minimum(s64.min(axis=1), t64.min(axis=1))
    hi = np.maximum(s64.max(axis=1), t64.max(axis=1))
    one = np.zeros(1, np.int64)
    ns, nt = np.array([s64.shape[1]]), np.array([t64.shape[1]])
    s_c, serr_c = s64.copy(), serr.copy()  # (hits sorts its arrays in place)
    t_c, terr_c = (s_c, serr_c) if same else (t64.copy(), terr.copy())
    hits = _rounding.hits(t_c, terr_c, s_c, serr_c, one, nt, one, ns, np.array([0, 1]), one,
                          np.zeros((1, 3)), np.zeros(1), one, one, DIRECT_TAU, workers,
                          same=same)
    targets, sums = hits[:2]
    err, field, base = _rounding.errors(targets, sums, s64.shape[1],
                                        float(np.linalg.norm(hi - lo)), same)
    order = min(order, 3)
    if not len(targets):
        return None
    n_rest = trg_xyz.shape[1] - len(targets)
    pick = _rounding.worst_first(np.arange(len(targets)), err[:order + 1],
                                 field[:order + 1], n_rest, base[:order + 1], len(targets),
                                 DIRECT_ROUNDING)
    if not len(pick):
        return None
    idx = targets[pick]
    return s64, to_soa(trg[idx], origin, scale, np.float64), idx


def _redo_targets(redo, charges, dipoles, pot, grad, workers, family, module=None):
    """:func:`rounding_redo`'s targets summed again in float64 into ``pot``/``grad`` (last
    axis: the targets; grad None: potential only), replacing their float32 sums."""
    if redo is None:
        return
    s64, t64, idx = redo
    v64 = family.value_dtype(np.float64)

    def as64(a):
        return None if a is None else a.astype(v64)

    p64 = np.zeros(pot.shape[:-1] + (len(idx),), dtype=v64)
    g64 = None if grad is None else np.zeros(grad.shape[:-1] + (len(idx),), dtype=v64)
    _p2p_all(s64, as64(charges), t64, p64, g64, workers, module, dipoles=as64(dipoles),
             family=family)
    with np.errstate(over="ignore"):  # (an overflow is reported when unscaled)
        pot[..., idx] = p64
        if grad is not None:
            grad[..., idx] = g64


def _representable(src, trg, center, scale, dt):
    """The frame's coordinates (offsets from ``center``) must keep distinct points apart."""
    for pts in ((src,) if trg is src else (src, trg)):
        check_representable(pts - center, scale, dt)


def _p2p_all(src_xyz, charges, trg_xyz, pot, grad, workers, module=None, dipoles=None,
             exact=True, family=LAPLACE):
    """All sources on all targets, targets split into chunks over ``workers``."""
    n_src, n_trg = src_xyz.shape[1], trg_xyz.shape[1]
    if n_src * n_trg < _MIN_PAIRS_FOR_THREADS:
        workers = _threads.INLINE
    trg_offsets = workers.split(n_trg, _CHUNKS_PER_THREAD)
    n_chunks = len(trg_offsets) - 1
    trg_start, trg_end = trg_offsets[:-1].copy(), trg_offsets[1:].copy()
    src_start, src_end = np.zeros(1, np.int64), np.array([n_src], dtype=np.int64)
    list_offsets = np.arange(n_chunks + 1, dtype=np.int64)
    list_index = np.zeros(n_chunks, dtype=np.int64)
    boxes = np.arange(n_chunks, dtype=np.int64)
    p2p(src_xyz, charges, trg_xyz, src_start, src_end, trg_start, trg_end, list_offsets,
        list_index, boxes, pot, grad, workers, module, dipoles=dipoles, exact=exact,
        family=family)


def p2p(src_xyz, charges, trg_xyz, src_start, src_end, trg_start, trg_end, list_offsets,
        list_index, boxes, pot, grad, workers, module=None, cost=None, dipoles=None,
        exact=True, hess=None, shift=None, family=LAPLACE, sym=None, coarse_exp=False,
        mixed=False):
    """Run the P2P kernel over the target boxes ``boxes`` on ``workers`` (trusted input).

    ``charges`` (n,) with ``pot`` (n_trg,), ``grad`` (3, n_trg); or several densities:
    ``charges`` (k, n) or None, ``dipoles`` (k, 3, n) or None, ``pot`` (k, n_trg), ``grad``
    (k, 3, n_trg). ``grad`` None: potential only. ``cost``: per-box work estimates.
    ``exact=False`` lets float64 1/r carry a ~1e-14 relative error (one Newton step instead of
    two, see kernels/p2p.py): fine for the FMM's near field, not for reference direct sums.
    ``hess`` (k, 6, n_trg): also the Hessians (then ``pot`` (k, n_trg), ``grad`` (k, 3, n_trg)
    and ``charges`` (k, n) or None are required; exact 1/r; one charge vector with ``sym``
    by Newton's third law).
    ``shift`` (len(list_index), 3) dt: per list entry, the vector from the source box's
    coordinate origin to the target box's (points local to their boxes); None: one frame.
    ``family``: the kernel (:class:`aotfmm.families.KernelFamily`) whose compiled sums run.
    ``sym``: the plan's split of these lists for Newton's third law
    (:meth:`aotfmm.evaluate.Plan._near_symmetric`; targets are the sources), used for one
    charge vector without dipoles or Hessians; None: every pair from its target's side.
    ``coarse_exp``: a family's near field of one charge vector may compute exp to ~1e-11
    relative (:data:`aotfmm._dispatch.COARSE_EXP`; the FMM at eps >= 1e-8; never with
    ``exact``). Kernels without the variant ignore the bit.
    ``mixed``: float64, not ``exact``: the pair terms may be taken in float32 and summed in
    float64 (one charge vector: ``p2p_sym_mixed`` with ``sym``, else ``p2p_mixed``; k charge
    and/or dipole vectors: ``p2p_multi_mixed``; Hessians only of one charge vector with
    ``sym``: ``p2p_sym_hess_mixed``; where the family has them; the FMM at eps >=
    :data:`aotfmm._dispatch.MIXED_NEAR_EPS`).
    """
    if sym is not None and charges is not None and dipoles is None and \
            (charges.ndim == 1 or charges.shape[0] == 1) and \
            (hess is None or _dispatch.has_kernel(family.name, "p2p_sym", "charge", "hess")):
        _p2p_sym(sym, src_xyz, charges, pot, grad, workers, module, exact, family, coarse_exp,
                 mixed, hess)
        return
    refine = 1 if exact else 0
    dt = src_xyz.dtype  # coordinates; pot/grad are complex for a complex family
    if shift is None:
        shift = np.zeros((max(len(list_index), 1), 3), dtype=dt)
    multi = hess is not None or dipoles is not None or pot.ndim == 2 or \
        not _dispatch.has_kernel(family.name, "p2p", "charge", "pot")
    shared = dict(src_xyz=src_xyz, trg_xyz=trg_xyz, src_start=src_start, src_end=src_end,
                  trg_start=trg_start, trg_end=trg_end, list_offsets=list_offsets,
                  list_index=list_index, shift=shift, boxes=boxes, **family.kernel_args())
    if multi:  # the density kernels: terms chosen by flags, placeholders for absent ones
        terms, q, dip = _dispatch.density_terms(charges, dipoles, pot.dtype)
        shared.update(q=q, dip=dip)
    if hess is not None:
        work = _dispatch.bind(_dispatch.kernel_name(family.name, "p2p", "densities", "hess"),
                              dt, module, **shared, flags=terms, pot=pot, grad=grad, hess=hess)
    elif multi and _mixed_kernel(family, "p2p_mixed", mixed, exact, dt, "densities"):
        # k charge and/or dipole vectors: the float32 pair terms of p2p_mixed, each chunk's
        # geometry swept by every density (kernels/p2p.py p2p_multi_mixed)
        m_max = _most_listed_sources(src_start, src_end, list_offsets, list_index, boxes)
        g = grad.reshape(-1, 3, grad.shape[-1]) if grad is not None else \
            np.zeros((1, 1, 1), pot.dtype)
        work = _dispatch.bind(_mixed_kernel(family, "p2p_mixed", mixed, exact, dt, "densities"),
                              dt, module, **shared,
                              flags=terms | (_dispatch.GRADIENT if grad is not None else 0),
                              m_max=m_max, pot=pot.reshape(-1, pot.shape[-1]), grad=g)
    elif multi:
        flags = terms | (_dispatch.GRADIENT if grad is not None else 0) | \
            (_dispatch.EXACT if exact else 0) | \
            (_dispatch.COARSE_EXP if coarse_exp and not exact else 0)
        g = grad.reshape(-1, 3, grad.shape[-1]) if grad is not None else \
            np.zeros((1, 1, 1), pot.dtype)
        m_max = _most_listed_sources(src_start, src_end, list_offsets, list_index, boxes)
        work = _dispatch.bind(_dispatch.kernel_name(family.name, "p2p", "densities",
                                                    "pot|potgrad"), dt, module, **shared,
                              flags=flags, m_max=m_max, pot=pot.reshape(-1, pot.shape[-1]),
                              grad=g)
    elif _mixed_kernel(family, "p2p_mixed", mixed, exact, dt):
        m_max = _most_listed_sources(src_start, src_end, list_offsets, list_index, boxes)
        work = _dispatch.bind(_mixed_kernel(family, "p2p_mixed", mixed, exact, dt), dt,
                              module, **shared, charges=charges,
                              flags=_dispatch.GRADIENT if grad is not None else 0,
                              m_max=m_max, pot=pot,
                              grad=grad if grad is not None else np.zeros((3, 1), dt))
    else:
        out = dict(pot=pot) if grad is None else dict(pot=pot, grad=grad)
        work = _dispatch.bind(_dispatch.kernel_name(family.name, "p2p", "charge",
                                                    "pot" if grad is None else "potgrad"),
                              dt, module, **shared, charges=charges, refine=refine, **out)
    n = len(boxes)
    bounds = np.arange(n + 1) if cost is None else workers.split(cost, _CHUNKS_PER_THREAD)
    workers.run(work, bounds)


def _most_listed_sources(src_start, src_end, list_offsets, list_index, boxes):
    """The most sources any of ``boxes`` has in its list (at least 1): the scratch size of the
    kernels that gather a target box's listed sources."""
    cum = np.concatenate(([0], np.cumsum((src_end - src_start)[list_index])))
    totals = cum[list_offsets[boxes + 1]] - cum[list_offsets[boxes]]
    return max(int(totals.max()), 1) if len(totals) else 1


def _mixed_kernel(family, op, mixed, exact, dt, inputs="charge"):
    """The kernel ``op`` ("p2p_mixed" / "p2p_sym_mixed": one charge vector, or with ``inputs``
    "densities" k of them, float32 pair terms summed in float64) when it applies (``mixed``,
    not ``exact``, float64 points, and the family has it), else None."""
    if mixed and not exact and dt == np.float64 and \
            _dispatch.has_kernel(family.name, op, inputs, "pot|potgrad"):
        return _dispatch.kernel_name(family.name, op, inputs, "pot|potgrad")
    return None


def _p2p_sym(sym, xyz, charges, pot, grad, workers, module, exact, family, coarse_exp,
             mixed=False, hess=None):
    """The near field of one charge vector by Newton's third law (see :func:`p2p`): a pair
    updates points of two boxes that other threads may be working on, so the boxes are cut
    into one range per thread (by cost); the first sums into ``pot``/``grad`` themselves, each
    other into its own arrays, added to ``pot``/``grad`` in range order at the end. Ranges are
    not handed out dynamically here: the result must not depend on which thread ran what (the
    same input gives the same bits every time); it depends on the thread count only through
    rounding."""
    dt = xyz.dtype
    n = xyz.shape[1]
    flags = (_dispatch.GRADIENT if grad is not None else 0) | (_dispatch.EXACT if exact else 0)
    if coarse_exp and not exact:
        flags |= _dispatch.COARSE_EXP
    name = _dispatch.kernel_name(family.name, "p2p_sym", "charge", "pot|potgrad")
    if hess is not None:  # pot, grad and hess (k = 1): the Hessian kernel (exact 1/r), with
        # float32 pair terms where the plan allows them (p2p_sym_hess_mixed)
        name = _dispatch.kernel_name(family.name, "p2p_sym", "charge", "hess")
        if mixed and not exact and dt == np.float64 and \
                _dispatch.has_kernel(family.name, "p2p_sym_mixed", "charge", "hess"):
            name = _dispatch.kernel_name(family.name, "p2p_sym_mixed", "charge", "hess")
        flags = 0
    elif _mixed_kernel(family, "p2p_sym_mixed", mixed, exact, dt):
        name = _mixed_kernel(family, "p2p_sym_mixed", mixed, exact, dt)
        flags &= _dispatch.GRADIENT
    shared = dict(xyz=xyz, q=charges.reshape(n), start=sym.start, end=sym.end,
                  one_offsets=sym.one_offsets, one_index=sym.one_index,
                  one_shift=sym.one_shift, sym_offsets=sym.sym_offsets,
                  sym_index=sym.sym_index, sym_shift=sym.sym_shift, boxes=sym.boxes,
                  flags=flags, m_max=sym.m_max, **family.kernel_args())
    pot1 = pot.reshape(n)
    grad1 = grad.reshape(3, n) if grad is not None else np.zeros((3, 1), dtype=pot.dtype)
    out1 = dict(pot=pot1, grad=grad1) if hess is None else \
        dict(pot=pot1, grad=grad1, hess=hess.reshape(6, n))
    bounds = workers.split(sym.cost, 1) if not _threads.in_worker() else \
        np.array([0, len(sym.boxes)])
    # each range in consecutive pieces, in order (the same sums as one call), so that an
    # interrupt (Ctrl-C reaches the caller's thread between pieces) or an error stops every
    # thread within a piece: one call per range took up to 1.5 s to notice a Ctrl-C (2e5
    # points with Hessians, one thread; hostile test 2026-12-05)
    stop = threading.Event()

    def pieces(call, i0, i1):
        cuts = _threads.split(sym.cost[i0:i1], _SYM_PIECES) + i0
        try:
            for a, b in zip(cuts[:-1], cuts[1:]):
                if stop.is_set():
                    return
                call(int(a), int(b))
        except BaseException:
            stop.set()
            raise

    if len(bounds) <= 2:
        pieces(_dispatch.bind(name, dt, module, **shared, **out1), int(bounds[0]),
               int(bounds[-1]))
        return
    # the first range sums into pot/grad itself (one buffer fewer: 32 bytes per point with
    # gradients, 80 with Hessians), each other range into its own zeroed copy
    outs = [out1] + [{key: np.zeros(a.shape, dtype=a.dtype) for key, a in out1.items()}
                     for _ in range(len(bounds) - 2)]
    calls = {int(a): _dispatch.bind(name, dt, module, **shared, **o)
             for a, o in zip(bounds[:-1], outs)}
    workers.run(lambda i0, i1: pieces(calls[i0], i0, i1), bounds)
    for o in outs[1:]:  # in range order: the same sum whichever thread ran which range
        for key, a in o.items():
            out1[key] += a
