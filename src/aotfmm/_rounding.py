"""Float64 points computed in float32: which near pairs rounding hurts.

The float32 pair loops see each point's offset (from its leaf's anchor, or from the frame's
centre in a direct sum) rounded, so a pair's difference moves by up to e: the two points' own
moves, the rounding of the anchor-to-anchor shift, and the float32 arithmetic's (at most
2^-24 of the operands per operation). That is ~1e-7 of the leaf, so it matters only for pairs
much closer than their leaf, but there it can dominate: a cluster 1e-8 wide at 0.3 lost its
near field entirely, and the closest pair of 1e6 random points (1.5e-5 apart) gave a gradient
error of 1e-4 at both of its points, enough to dominate the relative L2 error of the result.

:func:`hits` finds every near pair with e > TAU r (kernels/morton.py ``near_risk``);
:func:`errors` bounds what they cost their targets against the field of |q| (unit charges,
every source not counted adding at least 1/D^(o+1), D the domain's diagonal);
:func:`worst_first` picks the groups of targets (leaves, or single targets in a direct sum)
to redo in float64 until the rest is within a budget. Callers:
``aotfmm.evaluate.Plan._rounding_redo`` and ``aotfmm._direct``.
"""
import numpy as np

from . import _dispatch

#: pairs whose difference may move by more than this fraction of their distance are counted
#: (at most: plans take eps when smaller; see :meth:`aotfmm.evaluate.Plan._rounding_redo`)
TAU = 1e-4


def hits(trg, terr, src, serr, trg_start, trg_end, src_start, src_end, list_offsets,
         list_index, shift, shift_err, boxes, leaves, tau, workers, same=False):
    """kernels/morton.py ``near_risk`` over the target boxes ``boxes`` (see
    :meth:`aotfmm.evaluate.Plan._rounding_redo`).

    ``trg``/``src``: float64 offsets (3, n) of the points in tree order, ``terr``/``serr``
    (3, n) how rounding to float32 moved each; per list entry (target box, source box
    list_index[entry]) ``shift`` the float64 shift between their origins and ``shift_err``
    how far its float32 copy is off. Each leaf's points are sorted by x IN PLACE (trg, terr,
    src, serr; the returned orders give each sorted point's tree position; with them each
    box's largest |offset| component, move and bounding box). A pair's difference moves by
    at most the difference of its two points' moves plus ``shift_err`` plus, for the float32
    arithmetic, 2^-24 sqrt(3) (the largest of either box's |offset| and |shift|; nothing in
    a box's own entry) + 2^-23 sqrt(3) r; the sweep (kernels/morton.py near_risk) sums per
    target what the pairs moved by more than ``tau`` of their distance can cost. Returns the
    targets with such pairs (tree positions), their sums (9, n), and the source and target
    orders."""
    n_boxes = len(trg_start)

    def sort_by_x(pts, err, start, end):
        order = np.arange(pts.shape[1], dtype=np.int64)
        amax, emax = np.zeros(n_boxes), np.zeros(n_boxes)
        bbox = np.zeros((n_boxes, 6))
        has = leaves[end[leaves] > start[leaves]]  # (a parent's range holds its leaves')
        sort = _dispatch.bind("box_sort_x", xyz=pts, err=err, start=start, end=end,
                              boxes=has, order=order, amax=amax, emax=emax, bbox=bbox)
        workers.run(sort, workers.split((end - start)[has].astype(np.float64) + 1.0))
        return order, amax, emax, bbox

    same = same and np.array_equal(trg_start, src_start) and np.array_equal(trg_end, src_end)
    if not same and trg is src:  # one array, two orders: the targets get their own copy
        trg, terr = trg.copy(), terr.copy()
    order, s_amax, s_emax, sbox = sort_by_x(src, serr, src_start, src_end)
    tord, t_amax, t_emax, _ = (order, s_amax, s_emax, sbox) if same \
        else sort_by_x(trg, terr, trg_start, trg_end)
    src_s, serr_s, trg_s, terr_s = src, serr, trg, terr
    rows = np.repeat(np.arange(n_boxes, dtype=np.int64), np.diff(list_offsets))
    a = np.abs(shift)  # (its largest component per entry column by column: numpy's max over
    #                    an axis of 3 took 25 ms for 7e5 entries, this 3)
    pair_extra = shift_err + 2.0 ** -24 * np.sqrt(3.0) * np.maximum(
        np.maximum(t_amax[rows], s_amax[list_index]),
        np.maximum(np.maximum(a[:, 0], a[:, 1]), a[:, 2]))
    pair_extra[rows == list_index] = 0.0  # a box's own entry: see near_risk
    entry_err = t_emax[rows] + s_emax[list_index] + pair_extra
    cost = (trg_end - trg_start)[boxes] * np.diff(list_offsets)[boxes] + 1.0
    bounds = workers.split(cost.astype(np.float64), 4)
    cap = 256
    while True:
        found = []

        def work(l0, l1, cap=cap):
            hits = (np.zeros(cap, np.int64), np.zeros((9, cap)), np.zeros(1, np.int64))
            _dispatch.bind("near_risk", trg=trg_s, terr=terr_s, tord=tord, src=src_s,
                           serr=serr_s, sbox=sbox, trg_start=trg_start, trg_end=trg_end,
                           src_start=src_start, src_end=src_end, list_offsets=list_offsets,
                           list_index=list_index, shift=shift, entry_err=entry_err,
                           pair_extra=pair_extra, boxes=boxes, tau=tau, hit_target=hits[0],
                           hit_sums=hits[1], n_hits=hits[2])(l0, l1)
            found.append(hits)

        workers.run(work, bounds)
        most = max(int(h[2][0]) for h in found) if found else 0
        if most <= cap:
            break
        cap = most  # a range found more than it could store: again, with room for all
    n = [int(h[2][0]) for h in found]
    return (np.concatenate([h[0][:k] for h, k in zip(found, n)] + [np.zeros(0, np.int64)]),
            np.concatenate([h[1][:, :k] for h, k in zip(found, n)] + [np.zeros((9, 0))],
                           axis=1),
            order, tord)


def errors(targets, sums, n_sources, diameter, same):
    """From :func:`hits`' per-target sums (9, n) of the targets with hits: per derivative
    order o = 0..3 (potential; gradient or dipole potential; Hessian or dipole gradient;
    dipole Hessian) the bound of the error rounding causes in their near field (sums[o]) and
    their field of |q| (unit charges): their hits' terms plus at least 1/D^(o+1) for each
    source not counted; and that 1/D^(o+1) per source for every target without hits
    (``base``, (4,)). Returns (err (4, n), field (4, n), base)."""
    d = max(diameter, np.finfo(np.float64).tiny)
    scale = d ** np.arange(1, 5)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        rest = np.maximum(n_sources - int(same) - sums[8], 0.0)
        field = sums[4:8] + rest / scale[:, None]
        base = (n_sources - int(same)) / scale
    return sums[:4], field, base


def relative_l2(err, field, n_rest, base):
    """sqrt(sum err^2 / (sum field^2 + n_rest base^2)) per row (in units of each row's
    largest value, so that the squares stay finite; inf when not even that helps)."""
    unit = np.maximum(np.maximum(np.max(err, axis=-1, initial=0.0),
                                 np.max(field, axis=-1, initial=0.0)), base)
    unit = np.where(np.isfinite(unit) & (unit > 0), unit, 1.0)
    err, field, base = err / unit[:, None], field / unit[:, None], base / unit
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        num = (err ** 2).sum(axis=-1)
        den = (field ** 2).sum(axis=-1) + n_rest * base ** 2
        out = np.where(num > 0, np.sqrt(num / np.where(den > 0, den, 0.0)), 0.0)
    return np.where(np.isfinite(out), out, np.inf)


def worst_first(group, err, field, n_rest, base, n_groups, eps):
    """The groups to redo: for each row (derivative order) of ``err`` (orders, n) of the hit
    targets (``group`` (n,) their group), by their summed squared error, largest first, until
    the rest's relative L2 bound (against ``field`` (orders, n) of the hit targets plus
    ``n_rest`` targets of field ``base`` (orders,)) is at most eps; the union over the rows
    (each order's own worst: a pair dominating the potential need not dominate the
    gradient). Returns the sorted group numbers."""
    picked = []
    for e, f, b in zip(np.atleast_2d(err), np.atleast_2d(field), np.atleast_1d(base)):
        # in units of the largest, so that squares and sums stay finite
        unit = max(float(np.max(e, initial=0.0)), float(np.max(f, initial=0.0)), float(b))
        if not np.isfinite(unit) or unit == 0.0:
            unit = 1.0
        with np.errstate(over="ignore", invalid="ignore"):
            e, f, b = e / unit, f / unit, b / unit
            score = np.bincount(group, e ** 2, minlength=n_groups)
            budget = eps ** 2 * ((f ** 2).sum() + n_rest * b ** 2)
            score[~np.isfinite(score)] = np.finfo(np.float64).max
            by = np.argsort(-score, kind="stable")
            # left[i]: what the groups after by[i] sum to (a suffix sum: subtracting running
            # sums from the total loses the small groups behind a dominant one)
            left = np.concatenate((np.cumsum(score[by][::-1])[::-1][1:], [0.0]))
        ok = left <= budget
        m = int(np.argmax(ok)) + 1 if ok.any() else len(by)
        picked.append(by[:m][score[by[:m]] > 0])
    return np.unique(np.concatenate(picked + [np.zeros(0, np.int64)]))
