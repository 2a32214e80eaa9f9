"""The FMM driver: tree + lists + operators -> potentials and gradients (internal, trusted input).

:class:`Plan` does all geometry-only work once (tree, lists, operators, the filtered and
re-grouped interaction lists, sorted coordinates); :meth:`Plan.evaluate` runs the passes for one
charge vector:

    P2M (leaves) -> M2M (up to level 2) -> per level from 2 down: L2L, M2L (V), P2L (X)
    -> at the leaves: L2P, M2P (W), P2P (U, plus W/X pairs cheaper done directly)

Coordinates arrive in the frame of :func:`aotfmm._frame.frame` (inside [-1, 1]^3) as float64
(3, n); results leave in the caller's point order, still in that frame (the API rescales).
"""
import collections
import dataclasses
import threading
import time
import warnings
from types import SimpleNamespace

import numpy as np

from . import (_blas, _dispatch, _driver, _frame, _geometry, _rounding, _spots, _threads,
               _validation, expansions)
from ._driver import DownLevel, UpLevel
from .cache import key_hash
from ._direct import p2p as near_field
from .families import LAPLACE
from .lists import _transpose, build_lists
from .operators import P_MAX, P_MIN, get_operators, l2l_blocks, prefetch_operators
from ._validation import AccuracyWarning, check_representable  # noqa: F401 (re-exported)
from .morton import LEVEL_BITS, MAX_LEVEL
from .surfaces import n_surf
from .tree import build_tree

__all__ = ["Plan", "P_MIN", "P_MAX", "choose_parameters", "order_error", "AccuracyWarning"]

#: Deepest level float32 resolves well: box surfaces need ~10 of float32's 24 bits below the
#: box size (measured: two 1e-3 clusters 1e3 apart, 20 levels, float32 error 1e-3 at eps 1e-5).
_FLOAT32_MAX_LEVEL = 12


#: Local expansions carry the regular part a f + b . e of their field (for Laplace a constant and
#: a linear term) apart from the equivalent density (see :meth:`Plan._regular_split`). Off only
#: for the engine pin (tests/test_engine_pin.py), whose numbers predate it.
_REGULAR_SPLIT = True

#: A float64 plan at eps >= _dispatch.MIXED_NEAR_EPS takes the pair terms of its near field in
#: float32, summed in float64 (kernels/p2p.py p2p_sym_mixed, p2p_mixed, p2p_multi_mixed; charges
#: and dipoles, one vector or k; Hessians of one charge vector at its sources).
#: Off only for the engine pin (tests/test_engine_pin.py), whose numbers predate it.
_MIXED_NEAR = True

#: ... and such a Laplace plan (one whose near field takes float32 pair terms) takes M2L's
#: compressed products in float32 (expansions.m2l ``single``): M2L of 1e6 points at eps 1e-6,
#: 2 threads, 2-core Intel Xeon, cube 0.20 -> 0.11 s, Plummer 0.41 -> 0.23 s, sphere surface
#: 0.155 -> 0.105 s. Errors: ~5e-10 of the field of |q| for 1e6 random charges (the contract's
#: measure; plain relative potential errors 4.7e-8 -> 1.7e-7 on the cube, 1.1e-7 -> 4.6e-7 on
#: Plummer: the float32 sums of terms that cancel), up to 2.5e-7 for one lone charge at the
#: worst spots (whose field is summed directly anyway: _FEW_CHARGES). Only for families with
#: ``single_m2l`` (Laplace): sparse charges with Yukawa (lam D = 10) went 3.8e-7 -> 1.3e-6.
#: Only where the targets are the sources: at separate targets away from charges whose far
#: field cancels (zero net charge and dipole, targets on a sphere 5 units out) the plain
#: relative error went 2e-8 -> 6e-6 (1e-9 of the field of |q| either way; hostile test
#: 2026-12-06): no near field there outweighs the far field's rounding (at the sources, a
#: dipole layer's went 3.2e-7 -> 2.1e-6; README "Mixed precision"). Off for the engine pin
#: (it follows _MIXED_NEAR).
_MIXED_M2L = True

#: Leaf size against the far field (issue 19, "balance P2P against M2L"). On points that fill
#: their boxes, an octree's leaves jump 8x in size per level, so some problem sizes get leaves
#: of ~ncrit / 6 points and 8x the boxes of their neighbours (1e6 uniform points: 244 per leaf,
#: 2e6: 61, 8x the M2L; 1e6 took 2.9 s and 2e6 9.4 s, 2-core AMD EPYC Zen 3, eps 1e-6). A
#: root cube enlarged by 2^(1/3) or 2^(2/3) (same centre: the points fill less of it) moves
#: the leaves between those sizes. A plan whose ncrit is the table's, of a scale-invariant
#: kernel, predicts from its own tree what each enlargement would cost (:func:`_tree_costs`),
#: builds each one that promises :data:`_ROOT_SCALE_TRY` of the default's cost or less, and
#: keeps the cheapest whose real lists cost :data:`_ROOT_SCALE_GAIN` of it or less. The cost
#: model is good to ~10 % on uniform points (0.9 let a sphere surface at 2e6 and float32 at
#: 2.5e5 switch for 0-4 % losses), hence the 15 % margin.
_ROOT_SCALES = (2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))
_ROOT_SCALE_GAIN = 0.85
#: ... built only when predicted at this much of the default's cost or less: the prediction is
#: optimistic by ~0.1 on uniform points (2.5e5: 0.69 predicted, 0.81 real), and a candidate
#: built for nothing costs a tree and its lists (1.2e6 points: +0.12 s, hostile test)
_ROOT_SCALE_TRY = 0.8
#: ... only for trees at most this deep: a deeper one has clusters, whose leaves do not jump in
#: step, and an enlarged root coarsens the deepest level the Morton codes resolve (a cluster of
#: 600 points 1e-6 wide went from 20 levels to one 600-point leaf at level 4)
_ROOT_SCALE_MAX_LEVEL = 10
#: ... and at least this many points (sources plus targets): below, the model's constants
#: (fitted from 2.5e5 up) were off by ~15 % (3e4 uniform points: predicted 0.91, took 1.07x),
#: and what a better tree saves is a few milliseconds
_ROOT_SCALE_MIN_POINTS = 100_000
#: ... what one V-list pair (its M2L) and one box (the other translations, the plan's per-box
#: setup) cost in near-field pair terms, at p = 8 in float64 with float32 pair terms (fitted
#: on uniform points 2.5e5 .. 2e6 at the three root sizes, 2 threads: M2L 0.7 us a V pair,
#: the rest of a box ~85 us, a pair term 0.33 ns); scaled by n_surf(p) / n_surf(8), x 1.5 for
#: float32 plans (their pair terms cost 2/3), x 0.5 where the pair terms are float64 (eps
#: below MIXED_NEAR_EPS).
_V_PAIR_COST = 2100.0
_BOX_COST = 2.5e5

#: A plan of at least this many times ncrit points (sources and targets) reads its operators
#: from the cache in a thread while its tree is built (:func:`aotfmm.operators.
#: prefetch_operators`; ~50 ms at p = 8, float64). Fewer points may make a tree without a far
#: field, which reads no operators.
_PREFETCH_LEAVES = 16

#: A density whose effective number of charges, (sum |q|)^2 / sum q^2 (1 for one charge, ~0.64 n
#: for n random normal ones), is below this (and below n / 8) does not get the FMM's accuracy
#: from the eps -> p table: the contract's averaging over many charges is what the table
#: measures, and one charge in the worst position of a translation got up to 6x eps in
#: potentials and 27-322x eps in gradients at eps 1e-3 .. 1e-8 (hostile test 2026-12-03, README
#: "Fields of few charges"); 1-40 random charges 2-4x in gradients. Where between that and many
#: charges it stops mattering is not measured; 1000 is a guess on the safe side. Such a
#: density's strongest sources are summed directly (:meth:`Plan._few_split`).
_FEW_CHARGES = 1000

def density_magnitudes(charges, dipoles):
    """(k, n) float64: |q| + |d| per density and source, what :data:`_FEW_CHARGES` counts
    (charges (k, n) and/or dipoles (k, 3, n), either None)."""
    mag = 0.0
    if charges is not None:
        mag = np.abs(charges).astype(np.float64, copy=False)
    if dipoles is not None:
        mag = mag + np.sqrt(np.sum(np.abs(dipoles).astype(np.float64) ** 2, axis=1))
    return mag


def few_charges(s1, s2, n):
    """Per density, whether its field comes from few points: fewer than min(:data:
    `_FEW_CHARGES`, n / 8) effective charges s1^2 / s2, from the sums s1 and s2 of the
    magnitudes (:func:`density_magnitudes`) and of their squares over ``n`` sources."""
    return (s2 > 0) & (s1 * s1 < min(_FEW_CHARGES, n / 8) * s2)


def _tail_sums(v):
    """Sums of v[K:] and of its squares for K = 0 .. len(v) (non-negative v: tail sums, so no
    cancellation when what is left is tiny)."""
    return (np.concatenate((np.cumsum(v[::-1])[::-1], [0.0])),
            np.concatenate((np.cumsum(np.square(v)[::-1])[::-1], [0.0])))


#: At most this many sources per density are summed directly (exactly, onto every target) when
#: its effective number of charges is below :data:`_FEW_CHARGES`: the strongest, as few as leave
#: a remainder of many effective charges (or none) for the FMM. Cost: this many sources times
#: the targets, against ~3000-6000 near pairs per target in the FMM's own near field.
_FEW_DIRECT = 1000

#: ... and when even that many leave a remainder of few effective charges, an AccuracyWarning
#: if the remainder carries more than this fraction of sum |q| (its error, up to ~300x eps of
#: its own field in gradients, is then not small against the whole field's).
_FEW_LEFT = 1e-3

#: Charge on few spots: :meth:`Plan._few_places` counts a density's magnitudes per cell of a
#: grid of this many cells per side over the sources' bounding cube (cells 1/64 of the domain,
#: 1/16 of the coarsest boxes that translate: the far field sees what one holds as about one
#: point). 1000 unit charges on one point (or within 1e-3) have 1000 effective charges but one
#: effective cell. A Plummer sphere of 1e6 points has ~770 effective cells, but its heaviest
#: hold thousands of sources each, more than :data:`_FEW_DIRECT`: not routed (and its field
#: meets the contract).
_FEW_CELLS = 64

#: The split is used at levels whose reference family has |mu2| <= this (half-width 1): the
#: series of KernelFamily.regular stays exact there (|mu2| r^2 <= 3.2 on the surfaces used).
_REGULAR_MU2_MAX = 1.0

#: Leaves smaller than the table's (an explicit ``ncrit`` below these) get orders more: the
#: table's errors were measured with its own leaves (ncrit 80-800), and smaller leaves put
#: more of each target's field into expansions, from more levels. (ncrit below, orders more);
#: see :func:`choose_parameters` for the measurements.
_SMALL_LEAF_ORDERS = ((8, 2), (32, 1))


#: From this table order on (eps below 4e-7), separate targets get three orders more instead of
#: two (see :func:`choose_parameters`).
_SEPARATE_THREE_FROM = 9

#: A plan with separate targets takes leaves of up to this many times the table's ncrit points
#: (sources and targets counted together): a leaf of m sources and m targets costs the near
#: field m^2 pair terms per neighbour, one of 2m points of one set 2m^2 / 2 (Newton's third
#: law), so the table's balance of near field and M2L sits at about twice the points.
#: Measured 2026-12-04 (2-core AMD EPYC Zen 2, 2 threads, pot+grad, best of 2, ncrit x1 -> x2):
#: 1e6 uniform sources + 1e6 uniform targets eps 1e-6 (p = 10) 14.1 -> 4.3 s (leaves of 61 ->
#: 488 points; M2L 11.0 -> 1.2 s), float32 eps 1e-4 2.65 -> 2.2 s; 2e5 + 2e5 1.71 -> 1.11 s;
#: sphere-surface sources in a ball of targets (5e5 + 5e5) 1.93 -> 1.76 s, a Plummer sphere with
#: an 80^3 grid 3.58 -> 3.08 s (eps 1e-3 1.44 -> 1.31), 1e6 cube + 1e5 targets on a plane 1.07
#: -> 0.91 s; 1e6 + 1e5 either way round unchanged (the same tree); none slower beyond noise
#: (sphere at eps 1e-3 0.98 / 1.01 s).
_SEPARATE_LEAF = 2


def _leaf_orders(ncrit):
    """Orders more for an ``ncrit`` below the table's leaf sizes (:data:`_SMALL_LEAF_ORDERS`);
    0 for None (the table's own)."""
    if ncrit is None:
        return 0
    return next((k for below, k in _SMALL_LEAF_ORDERS if ncrit < below), 0)


def _order_bump(separate_targets=False, dipoles=False, hessians=False, base=None, ncrit=None):
    """Orders choose_parameters adds to the table's p ``base`` (see its docstring for the
    measurements)."""
    sep, dip = bool(separate_targets), bool(dipoles)
    # separate targets: two orders, three from _SEPARATE_THREE_FROM or with dipoles (whose own
    # order is that third one there; see choose_parameters)
    three = sep and base is not None and base >= _SEPARATE_THREE_FROM
    return 2 * sep + max(three, dip) + (1 + 2 * sep) * bool(hessians) + _leaf_orders(ncrit)


def order_error(p, separate_targets=False, dipoles=False, hessians=False, family=LAPLACE,
                size=None, ncrit=None):
    """The relative error a plan of order ``p`` is expected to reach (before dtype floors).

    The inverse of :func:`choose_parameters`: take off the order bumps for separate targets,
    dipoles and Hessians and read the worst measured error of the remaining order in the
    kernel family's table (:attr:`~aotfmm.families.KernelFamily.worst_error`; so a p chosen
    from eps gives at most eps / 3). Orders below the table are extrapolated by a factor 10
    per order (capped at 1), orders above it saturate at the last measurement. ``size``: the
    domain size in the family's units, for a family whose order depends on it (Helmholtz:
    kappa times the size, :meth:`~aotfmm.families.KernelFamily.extra_orders`). ``ncrit``: the
    plan's leaf size, whose small-leaf orders (:func:`_leaf_orders`) are taken off too.
    """
    worst = family.worst_errors()
    q = p - _order_bump(separate_targets, dipoles, hessians, ncrit=ncrit) - \
        family.extra_orders(size)[0]
    if separate_targets and not dipoles and q >= _SEPARATE_THREE_FROM:  # took three there
        q -= 1
    lo, hi = min(worst), max(worst)
    if q < lo:
        return min(1.0, worst[lo] * 10.0 ** (lo - q))
    return worst[min(q, hi)]


def table_row(eps, family=LAPLACE):
    """The row (eps, p, ncrit) of the family's eps -> p table that serves ``eps``: the first
    whose eps is at most the one asked for (the last row below all)."""
    table = family.eps_table
    return next((r for r in table if eps >= r[0]), table[-1])


def choose_parameters(eps, p=None, ncrit=None, separate_targets=False, dipoles=False,
                      hessians=False, family=LAPLACE, size=None, dtype=None, n_points=None):
    """(p, ncrit) for an accuracy target; explicit values win.

    The base row comes from the kernel family's measured table
    (:attr:`~aotfmm.families.KernelFamily.eps_table`): the first row whose eps is at most the
    one asked for (the last row below all), with its p and ncrit; a float32 ``dtype`` with
    more than 64 leaves' worth of points at the table's and at its own leaf size
    (``n_points``: sources plus separate targets) takes the family's
    :attr:`~aotfmm.families.KernelFamily.float32_ncrit` instead (fewer points: a tree of 8 or
    64 leaves, mostly direct, whose smaller leaves only add far-field work: 2500 uniform
    points with 300 took 16.7 ms against 6.6 ms with 400, 2e4 1.14x).

    Dipole sources get one order more too: their fields decay one power faster, so more of
    them sits in high-order terms (measured at eps 1e-9, clustered sources, separate targets:
    1.2e-9 at the charges' order).

    Separate targets get two orders more (up to P_MAX): targets away from every source see
    only expansions, and a local expansion errs most at the corner of its box nearest the
    sources, which targets spread over their boxes average out (the table) and a target set
    gathered there does not. Measured 2026-12-04 (1000 targets in a cube 0.006 wide at the
    corner of the box one width from [0, .5]^3, at z = -0.5; sources: 1e5 uniform in that
    box, or in its lowest fifth, or 1000 unit charges within 1e-1 / 1e-2 / 1e-3 of a point on
    its face; 3 seeds each; worst gradient error in the contract's measure, one order -> two):
    eps 1e-2 5.4 -> 0.25 eps, 1e-3 0.72 -> 0.18, 1e-4 1.8 -> 0.19, 1e-5 1.9 -> 0.77, 1e-6
    7.7 -> 0.47 (uniform sources 1.2 -> 0.17), 1e-7 4.7 -> 3.2 (uniform 1.7 -> 0.23), so
    from table order 9 (:data:`_SEPARATE_THREE_FROM`, eps below 4e-7) they get three: the
    clusters at 1e-7 0.76 eps (p = 12), at 1e-8 2.4 eps with two orders (p = 13). Until then
    they got one order, two from table order 12, where a target in a large leaf next to a
    deep cluster (five Gaussian clusters of width 0.03, 4000 sources, 2000 targets in a box
    twice as wide, ncrit 16-48, eps 1e-9) had a gradient error of 1.01 eps with one (p =
    13), 0.12 eps with two. Dipoles at separate targets take three orders at every eps
    (their own and two for the targets; the third separate-target order is not added on top
    of theirs: not measured with dipoles, and at table order 13 it would pass P_MAX): two
    clusters of width 1e-3 ten apart, 3000 dipoles, a few hundred targets around them, eps
    1e-6, trees 17-18 levels deep gave gradient errors of 9.4e-7..1.5e-6 with one order for
    the targets (p = 10), 1.8e-7..2.2e-7 with two.

    A default ncrit is doubled for separate targets (:data:`_SEPARATE_LEAF`: it counts sources
    and targets together, and a leaf of both costs half the near field of one set of as many).

    Hessians get one order more again, three with separate targets (two until 2026-12-04:
    at the worst spot above, eps 1e-6, p = 11 / 12 / 13 gave Hessian errors up to 7.5 / 1.9 /
    0.67 eps against the field of |q| (sqrt 6 |q| / r^3), eps 1e-4, p = 8 / 9 / 10 up to
    3.8 / 1.4 / 0.08 eps). Before: at targets far from all
    sources they were measured at up to 1.4x eps with one more order than the gradients (same
    two clusters, eps 1e-6, p = 10), at most 5e-8 with two (p = 11).

    A family whose accuracy depends on the domain size in its units (Helmholtz: kappa times
    the size ``size``) adds the orders of :meth:`~aotfmm.families.KernelFamily.extra_orders`.

    An explicit ``ncrit`` below the table's leaf sizes adds orders too (:data:`_SMALL_LEAF_ORDERS`:
    one below 32, two below 8): smaller leaves put more of each target's field into
    expansions, from more levels. Measured against numpy sums (error relative to the field of
    |q|, random charges): 3000 points, ncrit 1 against 128, up to 8x the error at the same p
    for sources = targets and 22x for separate targets on box faces (a k/16 grid); 12-40
    points with ncrit 1-7 had gradient errors up to 25x the table's worst for their order
    (3.3e-6 at eps 1e-6, p = 8), 20000 sources with 1000 grid targets and ncrit 8-30 up to
    2.8x eps (eps 4e-9). One order lowers these errors ~5x.
    """
    row = table_row(eps, family)
    if dtype is not None and np.dtype(dtype) == np.float32 and n_points is not None:
        leaf = next((c for p_max, c in family.float32_ncrit if row[1] <= p_max), None)
        if leaf is not None and n_points > 64 * max(row[2], leaf):
            row = (row[0], row[1], leaf)
    if p is None:
        bump = _order_bump(separate_targets, dipoles, hessians, base=row[1], ncrit=ncrit) + \
            family.extra_orders(size)[0]
        p = min(row[1] + bump, P_MAX)
        row = (row[0], p, row[2])
    if ncrit is None:
        # keep the leaf size in proportion to the surface size when p is forced
        ncrit = row[2] if p == row[1] else max(16, int(round(row[2] * (p / row[1]) ** 2)))
        if separate_targets:
            ncrit *= _SEPARATE_LEAF
    return p, ncrit


def _exact_anchors(m, box_center, box_half, tiny):
    """Leaf anchors (n_boxes, 3) from the leaves' coordinates of smallest magnitude ``m``
    (caller units; a box's centre where it has no points) such that ``x - a`` is exact in
    float64 for every coordinate x of the leaf: ``m`` rounded toward zero to a multiple of
    U = ulp of the largest |coordinate| the box (``box_center`` +- ``box_half``, widened by
    2^-30) can hold. Every x of the box is then a multiple of ulp(x), which divides U, with
    the sign of a and |a| <= |x|, so x - a is a multiple of ulp(x) no larger than |x|. A box
    across 0 takes a = 0 (x - 0 is exact for both signs), unless its smallest coordinate is
    nonzero but below ``tiny`` (the frame's resolution: as an offset from 0 it would be
    refused, as before it is the anchor itself).

    Before 2026-12-03 the anchor was ``m`` itself, exact only where x and m are within a
    factor two: pairs 1e-12 apart at ~0.5 (8000 points, leaves from 0 to 0.125 on an axis)
    lost ~1e-5 of their distance, and the contract ~5x at eps 1e-8 (2.5e-8 / 5.5e-8 of the
    field of |q|, potential / gradient, at every eps)."""
    lo = box_center - box_half[:, None]
    hi = box_center + box_half[:, None]
    bound = np.maximum(np.abs(lo), np.abs(hi)) * (1.0 + 2.0 ** -30)
    with np.errstate(invalid="ignore", over="ignore"):
        ulp = np.spacing(bound)
        a = np.trunc(m / ulp) * ulp  # ulp is a power of two: m / ulp and the product exact
    a = np.where(np.isfinite(a), a, m)
    across = (lo <= 0.0) & (hi >= 0.0)
    keep = across & (np.abs(m) > 0.0) & (np.abs(m) < tiny)
    return np.where(across, np.where(keep, m, 0.0), a)


@dataclasses.dataclass(frozen=True)
class NoOperators:
    """Stands in for the operator set of a plan without far field (every box within two
    levels of the root, or a decaying kernel's far field dropped): every interaction is
    direct, so no set is built or read (a 10-point plan read, or on first use built and
    wrote, the 45 MB p = 8 set: 0.3 s against 1 ms of work). It carries the sizes the plan
    allocates and reports."""
    n_surf: int
    m2l_rank: int = 0
    down_rank: int = 0
    nbytes: int = 0


#: A level's far field (V, W, X lists and the expansions behind them) is dropped when the kernel
#: at the smallest far distance (2 h, one box width) has decayed below this times eps relative
#: to the Laplace kernel (:meth:`~aotfmm.families.KernelFamily.decay`): Yukawa with lam h
#: large. The factor covers the ~200 boxes of the first far shell against the 27 near ones.
_FAR_DROP = 1e-3

#: A decaying kernel's expansions lose relative accuracy on the far side of a box when the
#: box is large in decay lengths: the fields on its check surfaces then span exp(2 lam h) and
#: the fits keep the strong side. Targets with no source near them see only that far side:
#: 15000 sources in a 0.1-wide cube, targets one unit away, relative to their u-bar (the
#: accuracy contract): lam h = 2 -> 1.5e-8, 3.08 -> 2.7e-7, 4 -> 8.6e-6, 6.2 -> 1.2e-3 (eps
#: 1e-6, p = 9); 4.6e-7 / 7.6e-6 / 1.2e-4 at eps 1e-4 (p = 7), 1.1e-10 / 6.4e-10 / 1.0e-7 at
#: eps 1e-8 (p = 12); the dropped coarse levels (_FAR_DROP) carried all of their field. Where
#: the plan has such levels (lam h above this at its coarsest far level, or dropped levels),
#: leaves whose targets have no source in their near field take their sources directly
#: (:meth:`Plan._screened_direct`).
_DECAY_LH_MAX = 2.5
#: _screened_direct: a source leaf whose bound is below this times eps times the target
#: leaf's lower bound of u-bar, over the number of source leaves, is left out (so all left
#: out together stay below this times eps u-bar)
_SCREEN = 0.1
#: ... and only while they cost at most this many pair terms per point of the problem (a
#: multipole counts n_surf per target), about what the FMM's own near field costs (5.8e9
#: pair terms for 1e6 uniform points at eps 1e-6). 1e6 sources in a unit cube, 1e5 targets
#: on a sphere of radius 1 around its centre, lam = 20: 1.9e10 terms (17000 per point), 23 s
#: (93 s with sources only, before multipoles), against 0.8 s through the expansions, which
#: met eps there (5.5e-8 of u-bar); 2e5 sources, 2e4 targets at radius 2, lam = 10: 2250 per
#: point, evaluation 0.27 -> 0.9-1.06 s, 3e-5 -> 9e-10 of u-bar
_SCREEN_BUDGET = 6000


def _first_far_level(family, tree, eps):
    """The coarsest level (>= 2) whose far field is kept; coarser levels are dropped (see
    :data:`_FAR_DROP`; 2 for a kernel that does not decay)."""
    for lev in range(2, tree.n_levels):
        if family.decay(2.0 * tree.root_half / 2.0 ** lev) >= _FAR_DROP * eps:
            return lev
    return max(2, tree.n_levels)


#: Composed per-level L2L operators of the families with a parameter, by (operator set key,
#: parent level's family): the same pair always composes to the same matrix, and plans on
#: similar extents meet the same pairs (each costs 8 n_surf^3 flops: ~0.02 s at p = 8).
_L2L_MEMO = collections.OrderedDict()
_L2L_MEMO_SIZE = 64
_L2L_LOCK = threading.Lock()


def _composed_l2l(ops, parent_family, frame_family, vdt):
    """L2L into the boxes of ``ops`` (a per-level set) from their parent's local expansion:
    ``c2e_scale(1/2) DC2E_child K(child check surface, parent equivalent surface)`` with the
    parent level's family, in the value dtype ``vdt`` (memoised, read-only)."""
    memo_key = (key_hash(ops.key), parent_family, np.dtype(vdt).str)
    with _L2L_LOCK:
        hit = _L2L_MEMO.get(memo_key)
        if hit is not None:
            _L2L_MEMO.move_to_end(memo_key)
            return hit
    dc2e_b = ops.dc2e_b.astype(np.complex128 if np.dtype(vdt).kind == "c" else np.float64)
    l2l = l2l_blocks(dc2e_b, ops.surface, ops.r_down_check, ops.r_down_equiv, parent_family,
                     frame_family.c2e_scale(0.5)).astype(vdt)
    l2l.flags.writeable = False
    with _L2L_LOCK:
        _L2L_MEMO[memo_key] = l2l
        while len(_L2L_MEMO) > _L2L_MEMO_SIZE:
            _L2L_MEMO.popitem(last=False)
    return l2l


def _ranges(starts, ends):
    """Concatenation of range(starts[i], ends[i]) (int64)."""
    counts = ends - starts
    return (np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            + np.arange(int(counts.sum()), dtype=np.int64))


def _targets_prefix(tree, m):
    """The tree of a same-points plan whose targets are only the first ``m`` points (in the
    caller's order; aotfmm.mpi: a rank's own points before its ghost and far surface points):
    a box holding none of them gets an empty target range, so it has no near list, no local
    expansion and no L2P. A box holding some has all its points as targets (their ranges are
    contiguous); the fields at the other points are computed and are not asked for."""
    is_target = tree.src_perm < m
    cum = np.concatenate(([0], np.cumsum(is_target, dtype=np.int64)))
    has = cum[tree.src_end] > cum[tree.src_start]
    trg_end = np.where(has, tree.src_end, tree.src_start).astype(tree.src_end.dtype)
    return dataclasses.replace(tree, trg_start=tree.src_start.copy(), trg_end=trg_end)


def _pad_rows(a, rows, axis):
    """``a`` with zero rows appended along ``axis`` up to ``rows``."""
    if a.shape[axis] == rows:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, rows - a.shape[axis])
    return np.ascontiguousarray(np.pad(a, pad))


def _pairs(offsets, index):
    """CSR -> (row, column) pair arrays."""
    rows = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    return rows, index


def _csr(rows, cols, n_rows, extra=None):
    """(row, column[, extra]) pairs -> CSR over all n_rows rows, stable in the input order
    (``extra``: per-pair rows of any dtype, reordered alike)."""
    order = np.argsort(rows, kind="stable")
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=offsets[1:])
    cols = np.ascontiguousarray(cols[order], dtype=np.int64)
    if extra is None:
        return offsets, cols
    return offsets, cols, np.ascontiguousarray(extra[order])


def _far_costs(p, dtype, eps):
    """(:data:`_V_PAIR_COST`, :data:`_BOX_COST`) for order ``p``, float type ``dtype``, ``eps``."""
    scale = n_surf(p) / n_surf(8)
    if dtype == np.float32:
        scale *= 1.5
    elif eps < _dispatch.MIXED_NEAR_EPS:
        scale *= 0.5
    return _V_PAIR_COST * scale, _BOX_COST * scale


def _list_sums(values, offsets, index, rows):
    """Per row in ``rows``: the sum of ``values`` over its CSR list (``offsets``, ``index``)."""
    cum = np.concatenate(([0], np.cumsum(values[index])))
    return cum[offsets[rows + 1]] - cum[offsets[rows]]


def _tree_costs(tree, lists, ncrit, far, same, p, scales=()):
    """Cost of a tree's near field and far field in pair terms: near-field pairs (each leaf's
    targets times the sources of its U list; W and X list pairs count at most n_surf(p)
    sources and targets a box, what their direct sums or expansions take) plus, with ``far`` =
    :func:`_far_costs`, its V-pair cost per V-list pair and its box cost per box (both only
    where the boxes hold points). Returns the
    tree's own cost, then one predicted cost per root enlargement in ``scales`` (volume
    factors m = s^3, from the U-list pairs, the V pairs and the boxes):
    a leaf of c points whose parent has d non-empty children (d = 8 where points fill space,
    ~4 on a surface) would hold c' = c d^(log2(m) / 3) points, or c' / d if that is over
    ``ncrit`` (then split); its pairs scale by c' / c and the boxes over its points by c / c'."""
    leaves = tree.leaves
    ns = tree.src_end - tree.src_start
    nt = tree.trg_end - tree.trg_start
    pairs = nt[leaves].astype(np.float64) * _list_sums(ns, lists.u_offsets, lists.u_index,
                                                       leaves)
    n_boxes = len(tree.keys)
    cap = float(n_surf(p))
    ns_cap = np.minimum(ns, cap)
    wx = float((nt[leaves] * _list_sums(ns_cap, lists.w_offsets, lists.w_index, leaves)).sum())
    wx += float((np.minimum(nt, cap) * _list_sums(ns_cap, lists.x_offsets, lists.x_index,
                                                  np.arange(n_boxes))).sum())
    # (a complete octree's empty boxes cost nothing: only V pairs and boxes with points count;
    # counting them all made a 1 x 1 x 0.01 slab of 2.5e5 points switch, 1.4x slower)
    v_cost, box_cost = far
    n_v = int(_list_sums((ns > 0).astype(np.int64), lists.v_offsets, lists.v_index,
                         np.flatnonzero(nt > 0)).sum())  # (per row: no (row, col) pair arrays)
    boxes_cost = v_cost * n_v + box_cost * int(np.count_nonzero(ns + nt))
    costs = [float(pairs.sum()) + wx + boxes_cost]
    if not scales or not len(leaves):
        return costs
    count = ns if same else ns + nt
    c = count[leaves].astype(np.float64)
    parent = tree.parent[leaves]
    has = parent >= 0
    kids = tree.children[np.where(has, parent, 0)]
    d = np.where(has, ((kids >= 0) & (count[np.maximum(kids, 0)] > 0)).sum(axis=1), 8)
    d = np.clip(d, 2, 8).astype(np.float64)
    for s in scales:
        grow = d ** np.log2(s)          # s = m^(1/3): d^(log2(m) / 3)
        f = np.where(c * grow <= ncrit, grow, grow / d)
        cover = np.where(c > 0, 1.0 / f, 1.0 / grow)   # boxes over the leaf's points
        costs.append(float((pairs * f).sum()) + wx + boxes_cost * float(cover.mean()))
    return costs


class Plan:
    """Everything that depends on the points only; see the module docstring."""

    @_blas.one_thread  # (all of the setup, as for an evaluation: see :meth:`evaluate`)
    def __init__(self, src_xyz, trg_xyz, *, eps, p=None, ncrit=None, dtype=np.float64,
                 workers=_threads.INLINE, cache_dir=None, progress=None, dipoles=False,
                 hessians=False, points=None, family=LAPLACE, target_prefix=None,
                 direct_targets=None):
        timings = {}
        step = progress.step if progress is not None else (lambda name: None)
        t = time.perf_counter()
        dt = np.dtype(dtype)
        self.dtype, self.workers, self.family, self.eps = dt, workers, family, eps
        self.same = trg_xyz is src_xyz
        pts = [a for a in ((src_xyz,) if self.same else (src_xyz, trg_xyz)) if a.shape[1]]
        #: the domain size (largest extent of all the points, sources and targets together: what
        #: the tree spans), in the frame's units. Until 2026-12-06 the larger of the two sets'
        #: own extents: Helmholtz targets in a unit cube 20 away from sources in another took
        #: |kappa| D = 5 for 105, no orders and no warning, and erred 43-58 (hostile round)
        self.size = float(np.max(np.max([a.max(axis=1) for a in pts], axis=0) -
                                 np.min([a.min(axis=1) for a in pts], axis=0))) if pts else 0.0
        n_points = sum(a.shape[1] for a in pts)  # sources and separate targets
        self.p, self.ncrit = choose_parameters(eps, p, ncrit, separate_targets=not self.same,
                                               dipoles=dipoles, hessians=hessians,
                                               family=family, size=self.size, dtype=dt,
                                               n_points=n_points)
        family.check_phase(self.size)
        # the operators read from the cache in a thread while the tree is built (not for
        # problems that small that they may have no far field: the read would be for nothing)
        prefetch = prefetch_operators(self.p, dt, cache_dir, family) \
            if family.scale_invariant and \
            n_points >= _PREFETCH_LEAVES * self.ncrit else None
        extra, served = family.extra_orders(self.size)
        if not served:
            # (the family here is the frame's, its parameter scaled: name the product only)
            warnings.warn(f"{family.name.capitalize()} kernel: "
                          f"{family.frequency_text(self.size)} is above the range its order "
                          f"table serves ({family.frequency_range}): results may miss eps, "
                          f"by far at coarse eps; a smaller eps gets closer, and far above "
                          f"the range they are meaningless and setup grows huge (Helmholtz: "
                          f"kappa D = 80 gave 0.34 at eps 1e-3; kappa D = 180 gave a relative "
                          f"error of 120 after 112 s and 7 GB for 15000 points; figures: "
                          f"README, 'Kernels: Yukawa and Helmholtz')",
                          AccuracyWarning, stacklevel=3)

        # a family with a parameter: the root (and so every level) sized so that the parameter
        # times each level's half-width is on the grid of cached operator sets
        def tree_and_lists(scale):
            tree = build_tree(src_xyz, trg_xyz, self.ncrit, workers=workers,
                              snap=family.grid_half if not family.scale_invariant else
                              None if scale == 1.0 else (lambda half: half * scale))
            if target_prefix is not None and self.same:
                tree = _targets_prefix(tree, target_prefix)
            return tree, build_lists(tree, workers=workers)

        tree, lists = tree_and_lists(1.0)
        #: the root cube's enlargement (:data:`_ROOT_SCALES`; 1.0: the points' bounding cube)
        self.root_scale = 1.0
        if ncrit is None and family.scale_invariant and \
                2 < tree.n_levels <= _ROOT_SCALE_MAX_LEVEL + 1 and \
                n_points >= _ROOT_SCALE_MIN_POINTS:
            far = _far_costs(self.p, dt, eps)
            own, *guess = _tree_costs(tree, lists, self.ncrit, far, self.same, self.p,
                                      _ROOT_SCALES)
            best = _ROOT_SCALE_GAIN * own
            for i in np.argsort(guess):  # each promising one built, the cheapest kept
                if guess[i] > min(_ROOT_SCALE_TRY, _ROOT_SCALE_GAIN) * own:
                    break
                tree2, lists2 = tree_and_lists(_ROOT_SCALES[i])
                cost = _tree_costs(tree2, lists2, self.ncrit, far, self.same, self.p)[0]
                if cost <= best:
                    best, tree, lists, self.root_scale = cost, tree2, lists2, _ROOT_SCALES[i]
                del tree2, lists2
        if dt == np.float32 and tree.n_levels - 1 > _FLOAT32_MAX_LEVEL:
            warnings.warn(f"the octree is {tree.n_levels - 1} levels deep: float32 cannot "
                          f"resolve boxes below level {_FLOAT32_MAX_LEVEL} of this problem's "
                          f"extent, results may miss eps; use dtype=float64",
                          AccuracyWarning, stacklevel=3)
        # (the kept lists' own time; "tree" holds the rest, a rebuilt root included)
        t_lists = float(sum(lists.timings.values()))
        timings["tree"] = time.perf_counter() - t - t_lists
        timings["lists"] = t_lists
        t = time.perf_counter()
        step("tree")
        step("lists")
        self.tree = tree
        # leaves holding targets that must take the screened direct path (aotfmm.mpi)
        self._direct_boxes = None
        if direct_targets is not None and not self.same and np.any(direct_targets):
            cum = np.concatenate(([0], np.cumsum(np.asarray(direct_targets, dtype=bool)
                                                 [tree.trg_perm], dtype=np.int64)))
            self._direct_boxes = cum[tree.trg_end] > cum[tree.trg_start]
        t_passes = time.perf_counter()
        self.first_far = _first_far_level(family, tree, eps)
        self._xyz = (src_xyz, trg_xyz)  # for _screened_direct, dropped after the passes
        self._setup_passes(tree, lists, n_surf(self.p))
        del self._xyz
        t0 = time.perf_counter()
        if prefetch is not None:
            if self._levels_with_work():
                prefetch.join()
            else:  # no far field after all (clumps of points, say): nothing to wait for or
                prefetch.cancel.set()  # keep (hostile test 2026-12-05: 20000 points on two
                #                        coincident sites, eps 3e-10: setup 0.01 -> 0.3 s)
        self._level_operators(tree, cache_dir)
        self.regular_split = self._regular_split()
        timings["operators"] = time.perf_counter() - t0
        step("operators")
        t = time.perf_counter()

        if points is None:  # the frame coordinates are the caller's points
            points = (src_xyz.T, None if self.same else trg_xyz.T, np.zeros(3), 1.0)
        self._local_coordinates(tree, *points)
        self.half_widths = np.ascontiguousarray(tree.half_widths, dtype=dt)
        self._entry_geometry(tree)
        #: the target boxes whose near field rounding to float32 would hurt, with float64
        #: geometry for them (None: none); :meth:`_rounding_redo`
        self.rounding_left = None  # the bounds left after the redo (None: nothing moved)
        self._cells = None  # Plan._source_cells, made on first use
        self._rank_arrays = {}  # Plan._ranks, likewise
        self._spot_cache = None  # spot operators by (half-width, tolerance): aotfmm._spots
        self.redo = self._rounding_redo(tree, dipoles, hessians)
        redo_pairs = 0 if self.redo is None else float(self.redo.cost.sum())
        if redo_pairs > 2e7 and redo_pairs > 0.25 * (redo_pairs + self.near_cost.sum()):
            # float64 from both sides of each pair (no Newton's third law): here a float64
            # plan is faster (1e4 pairs of points 1e-4 apart: 0.89 s against 0.41 s); not
            # for small problems (2e7 pairs: ~10 ms)
            warnings.warn(f"float32 cannot resolve these points' close pairs at their leaf "
                          f"offsets well enough for eps={eps:g}: {len(self.redo.boxes)} of "
                          f"{len(tree.leaves)} leaves take their near field in float64, and "
                          f"dtype=float64 would likely be faster", AccuracyWarning,
                          stacklevel=3)
        self.near_sym = self._near_symmetric(tree)
        #: the near field may take exp to ~1e-11 (kernels/_vecmath.py vexp_coarse)
        self.coarse_exp = eps >= _dispatch.COARSE_EXP_EPS
        #: whether any box uses operators (else every interaction is a direct sum)
        self.has_far_field = bool(self._levels_with_work())
        #: a float64 near field may take its pair terms in float32 (see _MIXED_NEAR)
        #: when eps allows it and the order's own error is no smaller than theirs (an explicit
        #: high p under the default eps keeps float64 pair terms), and only with a far field:
        #: a plan whose interactions are all direct is exact to rounding in float64
        self.mixed_near = (_MIXED_NEAR and dt == np.float64 and eps >= _dispatch.MIXED_NEAR_EPS
                           and self.has_far_field
                           and order_error(self.p, not self.same, dipoles, hessians,
                                           family=family, size=self.size, ncrit=ncrit)
                           >= _dispatch.MIXED_NEAR_ORDER_ERROR)
        #: ... and M2L's compressed products in float32 then, where the family was measured
        #: to keep the contract so (Laplace) and the targets are the sources (see _MIXED_M2L)
        self.mixed_m2l = _MIXED_M2L and self.mixed_near and family.single_m2l and self.same
        self.p2m_groups = self._p2m_groups()
        timings["setup_passes"] = time.perf_counter() - t + t0 - t_passes
        step("passes")
        self.setup_timings = timings
        self.stats = self._stats(tree, lists)

    # ------------------------------------------------------------------ setup
    def _local_coordinates(self, tree, src_pts, trg_pts, center, scale):
        """Points stored relative to an anchor of their leaf, from the caller's coordinates.

        The frame (``(x - center) / scale``, in [-1, 1]^3) rounds a point to a grid set by its
        distance from ``center``: a cluster 1e-12 wide near a corner of the box kept only ~4
        digits of its own spacing. Kernels therefore get each point's offset from its leaf's
        anchor, and per list entry the anchor-to-anchor vector or the surface centre relative
        to the anchor, all taken in float64 from the caller's coordinates. The anchor's
        component along each axis is the leaf's coordinate of smallest magnitude on that axis,
        in float64 plans rounded toward zero to a multiple of the largest ulp the leaf's box can
        hold, or 0 for a box across 0 (:func:`_exact_anchors`): ``x - a`` is then exact for
        every point x of the leaf (float32 plans keep the coordinate itself, exact where x and
        a are within a factor two, Sterbenz, else within ulp(x)). Differences of nearby
        points, within a leaf or across leaves, keep the precision of the data's own spacing
        wherever the points sit, in float64 and (after rounding the small offsets) in float32.

        ``src_pts`` (n, 3) / ``trg_pts`` (m, 3) or None (the same points): float64 caller
        coordinates; ``center``, ``scale``: the frame they were mapped with.
        """
        dt = self.dtype
        center = np.asarray(center, dtype=np.float64)
        scale = float(scale)
        leaves = tree.leaves
        workers = self.workers
        anchor = center + scale * tree.centers  # leaves without points: their centre
        best = np.full((len(anchor), 3), np.inf)
        src_pts = np.ascontiguousarray(src_pts, dtype=np.float64)
        sets = [(src_pts, tree.src_perm, tree.src_start, tree.src_end)]
        if not self.same:
            trg_pts = np.ascontiguousarray(src_pts if trg_pts is None else trg_pts,
                                           dtype=np.float64)
            sets.append((trg_pts, tree.trg_perm, tree.trg_start, tree.trg_end))

        def leaf_ranges(start, end):  # leaves split by their point counts
            cost = (end[leaves] - start[leaves]).astype(np.float64) + 1.0
            limit = max(1, int(cost.sum()) // 100_000)
            return workers.split(cost, limit=limit), limit

        # the signed coordinate of smallest magnitude, per leaf and axis (the first in tree
        # order; a later set's only if strictly smaller): a kernel per range of leaves
        for pts, perm, start, end in sets:
            work = _dispatch.bind("leaf_anchors", pts=pts, perm=perm, start=start, end=end,
                                  leaves=leaves, best=best, anchor=anchor)
            workers.run(work, *leaf_ranges(start, end))
        if dt == np.float64:  # (float32 offsets round to 2^-24 of the leaf anyway, and an
            # anchor moved off its point would give that point an offset far below the float32
            # frame's resolution: refused by check_representable)
            anchor = _exact_anchors(anchor, center + scale * tree.centers,
                                    scale * tree.half_widths, _validation.tiny_offset(scale, dt))
        self.anchor, self.frame_center, self.frame_scale = anchor, center, scale

        # offsets[b] = centre of b minus its anchor, in frame units, without the frame's
        # rounding: (a - center) split exactly into hi + lo (two-sum)
        hi = anchor - center
        bb = hi - anchor
        lo = (anchor - (hi - bb)) + (-center - bb)
        with np.errstate(over="ignore", invalid="ignore"):
            self.offsets = (tree.centers - hi / scale) - lo / scale
        self.offsets[~np.isfinite(self.offsets)] = 0.0

        def local(pts, perm, start, end):
            out = np.empty((3, len(perm)), dtype=dt)
            dmin = np.full(len(anchor), np.inf)
            args = dict(pts=pts, perm=perm, start=start, end=end, leaves=leaves,
                        anchor=anchor, scale=scale, dmin=dmin, out=out)
            if dt == np.float32:  # the float64 offsets too, and how far rounding moved each
                exact.append((np.empty((3, len(perm))), np.empty((3, len(perm)))))
                work = _dispatch.bind("leaf_offsets_pair", **args, out64=exact[-1][0],
                                      moved=exact[-1][1])
            else:
                work = _dispatch.bind("leaf_offsets", dt, **args)
            workers.run(work, *leaf_ranges(start, end))
            smallest.append(dmin.min(initial=np.inf))
            return out

        smallest, exact = [], []
        self.src = local(*sets[0])
        self.trg = self.src if self.same else local(*sets[1])
        # float32: the float64 offsets and how far rounding moved each point, for
        # :meth:`_rounding_redo` (None: float64, or nothing moved)
        self._exact = None
        if exact and any(m.any() for _, m in exact):
            self._exact = exact if not self.same else exact * 2
        # Offsets too small for the frame are refused (float32: the square of any difference
        # stays normal, and the frame-unit fields of the closest pairs stay finite, also
        # where :meth:`_rounding_redo` computes them in float64)
        check_representable(np.array([min(smallest)]), scale, dt)

    def _rounding_redo(self, tree, dipoles, hessians):
        """Float64 points in a float32 plan: find the target boxes whose near field rounding
        would hurt, to be computed in float64 (:meth:`KifmmPasses.p2p`).

        The float32 pair loops see each point's leaf offset rounded and the anchor-to-anchor
        shift rounded, so a pair's difference moves by up to e (the two points' own moves,
        the shift's, and the float32 arithmetic's, at most 2^-24 of the operands per
        operation). That is ~1e-7 of the leaf, so it matters only for pairs much closer than
        their leaf: a cluster 1e-8 wide at 0.3 lost its near field entirely, and the closest
        pair of 1e6 random points (1.5e-5 apart) gave a gradient error of 1e-4 at both of its
        points, enough to dominate the relative L2 error of the whole result.

        Every near pair with e > tau r (kernels/morton.py ``near_risk``, a sweep over each
        box pair sorted by x that visits only |dx| <= e / tau) bounds the errors of its terms
        at its target; the other pairs move by less than tau relative, so their terms of the
        o-th derivative by less than (o + 1) tau: tau = min(:data:`aotfmm._rounding.TAU`,
        eps / (o + 1)) for the highest o the plan is built for keeps that under eps even for
        a pair that dominates the result (one 9.5e-4 apart among 4000 points, e/r = 1.6e-5,
        gave a gradient error of 3.1e-5 at eps 1e-5 with tau 2 eps; 1e-4 missed more).
        Against the field of |q| (:func:`aotfmm._rounding.errors`), the boxes with the largest
        summed squared error are redone in float64 until the rest's relative L2 bound is at
        most eps / 4 for the highest derivative the plan is built for (the gradient; one more
        for dipoles, one more for Hessians). Returns None (no point moved, or no box needs
        it) or the boxes with float64 offsets of their targets and near sources, the
        entries' float64 shifts, the bounds before (``risk``) and ``in_redo``; the bounds
        after are :attr:`rounding_left`."""
        exact, self._exact = self._exact, None
        if exact is None or not len(self.near_index):
            return None
        (src64, serr), (trg64, terr) = exact
        n_boxes = self.n_boxes
        rows = np.repeat(np.arange(n_boxes, dtype=np.int64), np.diff(self.near_offsets))
        cols = self.near_index
        shift = np.ascontiguousarray((self.anchor[rows] - self.anchor[cols]) / self.frame_scale)
        d = self.near_shift.astype(np.float64) - shift
        # (column by column, in the order a sum over axis 1 takes, bit for bit: 3x faster)
        shift_err = np.sqrt((d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]) + d[:, 2] * d[:, 2])
        s_start, s_end, t_start, t_end = tree.src_start, tree.src_end, tree.trg_start, \
            tree.trg_end
        leaves = tree.leaves
        boxes = np.flatnonzero(np.diff(self.near_offsets) > 0)
        order = min(1 + int(dipoles) + int(hessians), 3)
        # a pair not counted moves its term of the o-th derivative by < (o + 1) tau: eps
        tau = min(_rounding.TAU, self.eps / (order + 1))
        hits = _rounding.hits(trg64, terr, src64, serr, t_start, t_end, s_start, s_end,
                              self.near_offsets, cols, shift, shift_err, boxes, leaves, tau,
                              self.workers, same=self.same)
        # (src64/trg64 now hold each leaf's points sorted by x; sord/tord: their tree order)
        targets, sums, sord, tord = hits
        err, field, base = _rounding.errors(targets, sums, src64.shape[1],
                                            self.size * np.sqrt(3.0), self.same)
        n_rest = trg64.shape[1] - len(targets)
        risk = _rounding.relative_l2(err, field, n_rest, base)
        self.rounding_left = risk
        if not (risk[:order + 1] > self.eps / 4).any():
            return None
        # boxes by their summed squared error, largest first, until the rest is small enough
        with_targets = leaves[t_end[leaves] > t_start[leaves]]
        by_start = with_targets[np.argsort(t_start[with_targets], kind="stable")]
        box_of = by_start[np.searchsorted(t_start[by_start], targets, side="right") - 1]
        redo = _rounding.worst_first(box_of, err[:order + 1], field[:order + 1], n_rest,
                                     base[:order + 1], n_boxes, self.eps / 4)
        in_redo = np.zeros(n_boxes, dtype=bool)
        in_redo[redo] = True
        err[:, in_redo[box_of]] = 0.0
        self.rounding_left = _rounding.relative_l2(err, field, n_rest, base)

        # compact float64 copies: the redone boxes' targets and their near lists' sources
        def ranges(lo, hi):  # concatenated arange(lo[i], hi[i])
            n = hi - lo
            first = np.repeat(lo - np.concatenate(([0], np.cumsum(n)[:-1])), n)
            return first + np.arange(n.sum(), dtype=np.int64)

        def compact(pts, start, end, which):
            which = np.unique(which)
            n = end[which] - start[which]
            new_start = np.zeros(n_boxes, dtype=np.int64)
            new_start[which] = np.concatenate(([0], np.cumsum(n)[:-1]))
            new_end = new_start.copy()
            new_end[which] += n
            idx = ranges(start[which], end[which])
            return np.ascontiguousarray(pts[:, idx]), idx, new_start, new_end

        entries = ranges(self.near_offsets[redo], self.near_offsets[redo + 1])
        trg, trg_idx, trg_s, trg_e = compact(trg64, t_start, t_end, redo)
        src, src_idx, src_s, src_e = compact(src64, s_start, s_end, cols[entries])
        trg_idx, src_idx = tord[trg_idx], sord[src_idx]  # sorted positions -> tree order
        cum = np.concatenate(([0], np.cumsum((src_e - src_s)[cols])))
        work = cum[self.near_offsets[redo + 1]] - cum[self.near_offsets[redo]]
        keep = ~in_redo[self.near_boxes]
        self.near_boxes, self.near_cost = self.near_boxes[keep], self.near_cost[keep]
        return SimpleNamespace(boxes=redo, trg=trg, trg_idx=trg_idx, trg_start=trg_s,
                               trg_end=trg_e, src=src, src_idx=src_idx, src_start=src_s,
                               src_end=src_e, shift=shift,
                               cost=(trg_e - trg_s)[redo] * (work + 1), risk=risk,
                               in_redo=in_redo)

    def _leaf_origins(self):
        """(n_boxes, 3) float64: each box's anchor in the frame coordinates (a point's frame
        coordinates are its leaf-local offset plus its leaf's row)."""
        return (self.anchor - self.frame_center) / self.frame_scale

    def frame_points(self, which="src"):
        """Sorted points in the frame coordinates (for plotting; float64 (3, n))."""
        tree = self.tree
        start, end = (tree.src_start, tree.src_end) if which == "src" else \
            (tree.trg_start, tree.trg_end)
        pts = self.src if which == "src" else self.trg
        leaves = tree.leaves
        origin = self._leaf_origins()
        return pts.astype(np.float64) + np.repeat(origin[leaves], end[leaves] - start[leaves],
                                                  axis=0).T

    def _near_symmetric(self, tree):
        """The near field split for Newton's third law, when the targets are the sources and
        the family has a symmetric P2P (:func:`aotfmm._direct.p2p`'s ``sym``): a pair of
        distinct leaves listed both ways is computed once, from the lower-numbered box, and
        used for both; the rest (each box with itself, pairs listed one way: direct W/X pairs
        whose mirror goes through an expansion) stays one-sided. None otherwise."""
        if not (self.same and len(self.near_index) and _dispatch.has_kernel(
                self.family.name, "p2p_sym", "charge", "pot|potgrad")):
            return None
        # every box with targets has them all (its points; see _targets_prefix)
        if not (np.array_equal(tree.src_start, tree.trg_start) and
                ((tree.trg_end == tree.src_end) | (tree.trg_end == tree.trg_start)).all()):
            return None
        n_boxes = self.n_boxes
        rows = np.repeat(np.arange(n_boxes, dtype=np.int64), np.diff(self.near_offsets))
        cols = self.near_index
        # each pair (r, c) is mirrored when (c, r) is listed: the transposed lists hold, for
        # each box c, the boxes r that list it in ascending order, so c n + r over them is
        # sorted, and the pairs' own r n + c (rows ascending) are found in it by a nearly
        # monotone search (np.unique/np.isin hash and took ~1.3 s at 3e4 leaves; sorting the
        # keys and searching each mirror took 0.02 s of a 1e6 Plummer setup until 2026-12-05)
        t_rows, t_cols = _pairs(*_transpose(self.near_offsets, cols, n_boxes))
        key_t = t_rows * n_boxes + t_cols
        if (key_t[1:] == key_t[:-1]).any():
            return None  # a pair listed twice: keep the plain near field
        key = rows * n_boxes + cols
        pos = np.minimum(np.searchsorted(key_t, key), len(key_t) - 1)
        mirrored = (key_t[pos] == key) & (rows != cols)
        if self.redo is not None:  # boxes redone in float64 take every pair one-sided
            mirrored &= ~self.redo.in_redo[rows] & ~self.redo.in_redo[cols]
        pick = {}
        for name, sel in (("one", ~mirrored), ("sym", mirrored & (rows < cols))):
            (pick[name + "_offsets"], pick[name + "_index"],
             pick[name + "_shift"]) = _csr(rows[sel], cols[sel], n_boxes, self.near_shift[sel])
        n_pts = tree.src_end - tree.src_start
        work = {}
        for name in ("one", "sym"):
            off, idx = pick[name + "_offsets"], pick[name + "_index"]
            cum = np.concatenate(([0], np.cumsum(n_pts[idx])))
            work[name] = cum[off[1:]] - cum[off[:-1]]
        boxes = np.flatnonzero(work["one"] + work["sym"] + np.diff(pick["sym_offsets"]) > 0)
        boxes = boxes[n_pts[boxes] > 0]
        if self.redo is not None:
            boxes = boxes[~self.redo.in_redo[boxes]]
        m_max = max(int(work["one"].max(initial=0)), int(work["sym"].max(initial=0)), 1)
        return SimpleNamespace(
            start=np.ascontiguousarray(tree.src_start, dtype=np.int64),
            end=np.ascontiguousarray(tree.src_end, dtype=np.int64),
            boxes=np.ascontiguousarray(boxes, dtype=np.int64), m_max=m_max,
            cost=n_pts[boxes] * (work["one"][boxes] + work["sym"][boxes] + 1),
            pairs=int((n_pts[boxes] * (work["one"][boxes] + 2 * work["sym"][boxes])).sum()),
            **pick)

    def _entry_geometry(self, tree):
        """Per list entry: P2P anchor-to-anchor shifts, and surface centres of P2M, L2P, M2P
        and P2L as seen from the points they meet (see :meth:`_local_coordinates`)."""
        dt, c, off = self.dtype, tree.centers, self.offsets

        def cast(a):
            return np.ascontiguousarray(a, dtype=dt).reshape(-1, 3)

        rows = np.repeat(np.arange(self.n_boxes, dtype=np.int64), np.diff(self.near_offsets))
        cols = self.near_index
        self.near_shift = cast((self.anchor[rows] - self.anchor[cols]) / self.frame_scale)
        self.p2m_centers = cast(off[self.p2m_boxes])
        self.l2p_centers = cast(off[self.l2p_boxes])
        rows = np.repeat(self.m2p_boxes, np.diff(self.m2p_offsets))
        self.m2p_centers = cast((c[self.m2p_index] - c[rows]) + off[rows])
        for i, down in enumerate(self.down_levels):
            if down.p2l is not None:
                boxes, offsets, index = down.p2l
                rows = np.repeat(boxes, np.diff(offsets))
                self.down_levels[i] = dataclasses.replace(
                    down, p2l_centers=cast((c[rows] - c[index]) + off[index]))

    def _leaf_pairs(self, tree, rows, cols):
        """Near-field pairs with a non-leaf side (W pairs with a small source box, X pairs
        above level 2) -> the pairs of their leaves: points are local to leaves."""
        mixed = ~(tree.is_leaf[rows] & tree.is_leaf[cols])
        if not mixed.any():
            return rows, cols
        leaf_anchor = tree.keys[tree.leaves] >> LEVEL_BITS
        shift = 3 * (MAX_LEVEL - tree.levels)
        lo = np.searchsorted(leaf_anchor, (tree.keys >> LEVEL_BITS))
        hi = np.searchsorted(leaf_anchor, ((tree.keys >> LEVEL_BITS) >> shift) + 1 << shift)
        r, c = rows[mixed], cols[mixed]
        nr, nc = hi[r] - lo[r], hi[c] - lo[c]
        tot = nr * nc
        pair = np.repeat(np.arange(len(r)), tot)
        within = np.arange(int(tot.sum()), dtype=np.int64) - np.repeat(np.cumsum(tot) - tot, tot)
        lr = tree.leaves[lo[r][pair] + within // nc[pair]]
        lc = tree.leaves[lo[c][pair] + within % nc[pair]]
        ok = (tree.trg_end[lr] > tree.trg_start[lr]) & (tree.src_end[lc] > tree.src_start[lc])
        return (np.concatenate([rows[~mixed], lr[ok]]), np.concatenate([cols[~mixed], lc[ok]]))

    def _setup_passes(self, tree, lists, n_surf):
        n_boxes = len(tree.keys)
        n_src = tree.src_end - tree.src_start
        n_trg = tree.trg_end - tree.trg_start
        has_src, has_trg = n_src > 0, n_trg > 0
        levels = tree.levels
        leaves = tree.leaves
        self.n_boxes = n_boxes

        # Upward: P2M at leaves holding sources; M2M for parents at levels >= 2 (only levels >= 2
        # ever send multipoles: V lists start at level 2, W boxes are at least that deep).
        # Levels above first_far have no far field (a decaying kernel, see _first_far_level).
        far = self.first_far
        self.p2m_boxes = leaves[has_src[leaves] & (levels[leaves] >= far)]
        self.up_levels = []
        for lev in range(tree.n_levels - 2, far - 1, -1):
            parents = np.arange(tree.level_offsets[lev], tree.level_offsets[lev + 1])
            parents = parents[~tree.is_leaf[parents] & has_src[parents]]
            if len(parents):
                children = tree.children[parents].copy()
                children[children >= 0] = np.where(has_src[children[children >= 0]],
                                                   children[children >= 0], -1)
                self.up_levels.append(UpLevel(lev, parents, np.ascontiguousarray(children)))

        # W and X pairs: far ones through the expansions, near-cheap ones directly (P2P).
        w_rows, w_cols = _pairs(lists.w_offsets, lists.w_index)
        keep = has_trg[w_rows] & has_src[w_cols]
        w_rows, w_cols = w_rows[keep], w_cols[keep]
        w_direct = n_src[w_cols] < n_surf  # M2P costs n_surf per target, P2P n_src(A)
        # a W box above first_far is at least its width from the target: negligible
        keep = w_direct | (levels[w_cols] >= far)
        w_rows, w_cols, w_direct = w_rows[keep], w_cols[keep], w_direct[keep]
        x_rows, x_cols = _pairs(lists.x_offsets, lists.x_index)
        keep = has_trg[x_rows] & has_src[x_cols]
        x_rows, x_cols = x_rows[keep], x_cols[keep]
        # P2L costs n_src(A) * n_surf, P2P n_src(A) * n_trg(B); a non-leaf B's target range
        # overlaps its leaves' P2P rows, so only leaves may take X pairs directly.
        x_direct = tree.is_leaf[x_rows] & (n_trg[x_rows] < n_surf) | (levels[x_rows] < 2)
        keep = x_direct | (levels[x_rows] >= far)  # as W: negligible above first_far
        x_rows, x_cols, x_direct = x_rows[keep], x_cols[keep], x_direct[keep]

        u_rows, u_cols = _pairs(lists.u_offsets, lists.u_index)
        keep = has_trg[u_rows] & has_src[u_cols]
        near_rows, near_cols = self._leaf_pairs(
            tree, np.concatenate([u_rows[keep], w_rows[w_direct], x_rows[x_direct]]),
            np.concatenate([u_cols[keep], w_cols[w_direct], x_cols[x_direct]]))
        self.far_direct = np.zeros(0, dtype=np.int64)
        budget = _SCREEN_BUDGET * (int(n_src[0]) + int(n_trg[0]))  # the root's points
        screened = self._screened_direct(tree, u_rows[keep], n_src, n_trg, budget,
                                         u_cols[keep])
        self._far_m2p = None
        if screened is not None and screened[1] is None:  # over budget: keep the expansions
            warnings.warn(
                f"{int(n_trg[screened[0]].sum())} targets have no source near them and take "
                f"their whole {self.family.name} field through expansions of boxes many decay "
                f"lengths wide, which lose relative accuracy there (measured up to 1e-3 of "
                f"their u-bar at lam h 6); taking them from their sources and the multipoles "
                f"of narrower boxes would take more than {budget:.2g} pair terms. Results "
                f"there may miss eps.",
                AccuracyWarning, stacklevel=4)
            screened = None
        if screened is not None:  # these leaves' whole field: their W/X pairs go too
            self.far_direct, d_rows, d_cols = screened[:3]
            self._far_m2p = screened[3:]
            k = ~np.isin(near_rows, self.far_direct)
            near_rows = np.concatenate([near_rows[k], d_rows])
            near_cols = np.concatenate([near_cols[k], d_cols])
        self.near_offsets, self.near_index = _csr(near_rows, near_cols, n_boxes)
        self.near_boxes = np.unique(near_rows)
        work = np.add.reduceat(n_src[self.near_index], self.near_offsets[self.near_boxes]) \
            if len(self.near_boxes) else np.zeros(0)
        self.near_cost = n_trg[self.near_boxes] * (work + 1)

        m2p_r, m2p_c = w_rows[~w_direct], w_cols[~w_direct]
        if len(self.far_direct):  # their whole field is direct or from finer multipoles
            k = ~np.isin(m2p_r, self.far_direct)
            m2p_r = np.concatenate([m2p_r[k], self._far_m2p[0]])
            m2p_c = np.concatenate([m2p_c[k], self._far_m2p[1]])
        self.m2p_boxes, m2p_rows, m2p_cols = self._grouped(m2p_r, m2p_c)
        self.m2p_offsets, self.m2p_index = m2p_rows, m2p_cols
        xr, xc = x_rows[~x_direct], x_cols[~x_direct]

        # Downward, per level from 2: targets with a local expansion are boxes at level >= 2
        # that hold targets; every one of them gets L2L from its parent (level >= 3), M2L from
        # its V list and P2L from its far X list.
        v_rows, v_cols = _pairs(lists.v_offsets, lists.v_index)
        keep = has_trg[v_rows] & has_src[v_cols]
        v_rows, v_cols, v_tr = v_rows[keep], v_cols[keep], lists.v_transfer[keep]
        if (v_rows[1:] < v_rows[:-1]).any() or (xr[1:] < xr[:-1]).any():
            raise RuntimeError("V/X pairs out of row order")  # (the slices below need it)
        octants = (tree.ijk & 1) @ np.array([1, 2, 4], dtype=np.int64)  # in its parent

        def level(lev):
            lo, hi = tree.level_offsets[lev], tree.level_offsets[lev + 1]
            entry = {"l2l": None, "m2l": None, "p2l": None}
            if lev >= far + 1:
                parents = np.arange(tree.level_offsets[lev - 1], lo)
                parents = parents[~tree.is_leaf[parents] & has_trg[parents]]
                children = tree.children[parents].copy()
                children[children >= 0] = np.where(has_trg[children[children >= 0]],
                                                    children[children >= 0], -1)
                entry["l2l"] = (parents, np.ascontiguousarray(children))
            # (v_rows and xr ascend, as CSR pairs filtered do: each level's are one slice;
            # masks over all pairs per level took ~0.02 s of a 1e6 Plummer setup)
            sel = slice(*np.searchsorted(v_rows, [lo, hi]))
            if sel.stop > sel.start:
                boxes, offsets, index, transfer = self._grouped(v_rows[sel], v_cols[sel],
                                                                v_tr[sel])
                entry["m2l"] = expansions.m2l_plan(None, boxes, offsets, index, transfer,
                                                   n_boxes, workers=self.workers,
                                                   octants=octants)
            sel = slice(*np.searchsorted(xr, [lo, hi]))
            if sel.stop > sel.start:
                entry["p2l"] = self._grouped(xr[sel], xc[sel])
            # boxes whose down-check coefficients become local densities at this level
            got = [entry["l2l"][1].ravel()] if entry["l2l"] is not None else []
            got += [entry["m2l"].target_boxes] if entry["m2l"] is not None else []
            got += [entry["p2l"][0]] if entry["p2l"] is not None else []
            got = np.concatenate(got) if got else np.zeros(0, np.int64)
            return DownLevel(lev, **entry, p2l_centers=None, receivers=np.unique(got[got >= 0]))

        # the levels on the plan's threads, those with the most V pairs first (their M2L
        # plans' octant grouping, a compiled kernel, is most of it: 0.027 s of a 1e6 Plummer
        # sphere's setup on one thread, 0.020 s of it at its levels 6-8)
        levs = np.arange(far, tree.n_levels)
        pairs = np.diff(np.searchsorted(v_rows, tree.level_offsets[far:]))  # per level
        todo = levs[np.argsort(-pairs, kind="stable")]
        made = {}

        def work(i0, i1):
            for i in range(i0, i1):
                made[int(todo[i])] = level(int(todo[i]))

        self.workers.run(work, np.arange(len(todo) + 1))
        self.down_levels = [made[int(lev)] for lev in levs]
        self.l2p_boxes = leaves[has_trg[leaves] & (levels[leaves] >= far)]
        if len(self.far_direct):
            self.l2p_boxes = self.l2p_boxes[~np.isin(self.l2p_boxes, self.far_direct)]
        if not any(len(d.receivers) for d in self.down_levels):
            # no local expansion receives anything (e.g. 2 sources and 2 targets in leaves of
            # one point): nothing to evaluate, and the plan reads no operators to do it with
            self.l2p_boxes = self.l2p_boxes[:0]

    def _levels_with_work(self):
        """Levels whose boxes use operators (P2M, M2M, L2L, M2L, P2L, DC2E)."""
        levels = set(self.tree.levels[self.p2m_boxes].tolist())
        levels |= {up.level for up in self.up_levels}
        levels |= {d.level for d in self.down_levels if len(d.receivers)}
        return sorted(levels)

    def _level_operators(self, tree, cache_dir):
        """The operator sets, ``self.level_ops[level]``, and ``self.ops`` (one of them: sizes).

        A scale-invariant family: one set (the reference box's) for every level. A family with
        a parameter: per level with work, the reference set of ``family.scaled(h)`` for the
        level's half-width h, snapped to the parameter grid (the root was sized for it), with
        ``family`` set back to the frame's (the compiled sums take the frame's parameter), the
        L2L into the level composed here from its own DC2E and its parent level's kernel (so
        that two cached sets never mix bases), and the down-check rank padded with zeros to a
        common one (one coefficient array for all levels)."""
        family, dt = self.family, self.dtype
        if not self._levels_with_work():  # every interaction is direct: nothing to read
            ops = NoOperators(n_surf(self.p))
            self.level_ops = dict.fromkeys(range(tree.n_levels), ops)
            self.level_families = dict.fromkeys(range(tree.n_levels), family)
            self.ops = ops
            return
        if family.scale_invariant:
            ops = get_operators(self.p, dt, cache_dir=cache_dir, workers=self.workers,
                                family=family)
            self.level_ops = dict.fromkeys(range(tree.n_levels), ops)
            self.level_families = dict.fromkeys(range(tree.n_levels), family)
            self.ops = ops
            return
        work = self._levels_with_work()
        fams = {lev: family.scaled(tree.root_half / 2.0 ** lev).snapped()
                for lev in set(work) | {lev - 1 for lev in work}}
        sets = {lev: get_operators(self.p, dt, cache_dir=cache_dir, workers=self.workers,
                                   family=fams[lev]) for lev in work}
        rank = max(ops.down_rank for ops in sets.values())
        vdt = family.value_dtype(dt)
        self.level_ops = {}
        for lev, ops in sets.items():
            l2l = _composed_l2l(ops, fams[lev - 1], family, vdt)
            self.level_ops[lev] = dataclasses.replace(
                ops, family=family, l2l=_pad_rows(l2l, rank, 1),
                dc2e_a=_pad_rows(ops.dc2e_a.T, rank, 0).T.copy(),
                dc2e_b=_pad_rows(ops.dc2e_b, rank, 0),
                m2l_decompress=_pad_rows(ops.m2l_decompress, rank, 0))
        self.level_families = fams
        self.ops = self.level_ops[max(self.level_ops)]

    def _regular_split(self):
        """Per level: the operators that keep the regular part of each local expansion apart.

        A box's local field is ``a f(rho) + sum_i b_i e_i(rho) + sum_j G(x, y_j) density_j``,
        rho = (x - centre) / h, with f and e_i the family's regular solutions of degree 0 and 1
        (Laplace: 1 and rho_i; :meth:`KernelFamily.regular`) and (a, b) four values per box and
        density. Without them the density alone fits the whole field on the check surface with
        a relative error that does not depend on the box's size (the kernel is scale
        invariant), so a potential a made by sources far away leaves an error whose gradient is
        ~ e_p |a| / h (and a gradient b / h one whose Hessian is ~ e_p |b| / h^2): in boxes many
        levels below their far sources the gradient lost digits level by level (1e-3 at eps
        1e-6 in a 1e-6-wide cluster 19 levels deep; Hessians lost everything). With (a, b) kept
        exactly the density fits only the rest, of size ~ the Hessian times h^2.

        In down-check coefficients (``c2e(h) dc2e_b u`` for a check potential u, see
        :mod:`aotfmm.operators`) the four fields on the box's check surface are the columns of
        ``c2e(h) W``, ``W = dc2e_b M`` (M: the fields at the reference check surface). DC2E
        takes out their least-squares part (``alpha = P d``, ``P = (W^H W)^-1 W^H``) and keeps
        (a, b) = alpha / c2e(h); L2L adds ``c2e(h_child) V[octant] (a, b)_parent`` with
        ``V[o] = dc2e_b M_parent(child check surface)``; L2P adds the four fields and their
        gradients. Returns {level: (W, P, V or None)} in the value dtype, levels without the
        split (a parameter too large for the series at that box size) left out."""
        fam = self.family
        if not _REGULAR_SPLIT or fam.regular_mu2 is None or isinstance(self.ops, NoOperators):
            return {}
        ref = self.level_families

        def modes(level_family, x):  # (..., 4): f, e_x, e_y, e_z at reference points x
            f, _, g, _ = level_family.regular((x * x).sum(-1))
            return np.concatenate([f[..., None], x * g[..., None]], axis=-1)

        out = {}
        for lev in sorted(self.level_ops):
            if abs(ref[lev].regular_mu2_value()) > _REGULAR_MU2_MAX:
                continue
            ops = self.level_ops[lev]
            b = np.asarray(ops.dc2e_b, dtype=np.complex128 if fam.complex else np.float64)
            chk = ops.r_down_check * ops.surface
            w = b @ modes(ref[lev], chk)                                           # (r, 4)
            wh = w.conj().T
            proj = np.linalg.solve(wh @ w, wh)                                     # (4, r)
            v = None
            if lev - 1 in out:
                half = 0.5 * _geometry.OCTANT_SIGNS[:, None, :] + 0.5 * chk[None]  # (8, n, 3)
                v = b @ modes(ref[lev - 1], half)  # (8, r, 4); a GEMM per octant (np.einsum
                # took ~3 ms a level: a 1e5-point plan's setup 41 -> 24 ms without it)
                v = v.astype(ops.dc2e_b.dtype)
            out[lev] = (w.astype(ops.dc2e_b.dtype), proj.astype(ops.dc2e_b.dtype), v)
        return out

    def _p2m_groups(self):
        """[(index into p2m_boxes, operator set)]: one group for a scale-invariant family, else
        the leaves of each level with that level's set (fixed per plan)."""
        if self.family.scale_invariant or not len(self.p2m_boxes):
            return [(slice(None), self.ops)]
        lev = self.tree.levels[self.p2m_boxes]
        return [(np.flatnonzero(lev == level), self.ops_at(int(level)))
                for level in np.unique(lev)]

    @property
    def _single_kernels(self):
        """The family has single-charge-vector sums (Laplace): one density uses them."""
        return _dispatch.has_kernel(self.family.name, "p2p", "charge", "pot")

    def ops_at(self, level):
        """The operator set of boxes at ``level``."""
        return self.level_ops[level]

    def _far_in_big_leaves(self, tree, leaves, u_rows, u_cols):
        """Of ``leaves`` (target leaves many decay lengths wide with sources in their U
        list), those holding a target more than :data:`_DECAY_LH_MAX` decay lengths from the
        bounding box of every source leaf of its U list: a wide leaf's far side can be far
        from its neighbours' sources, and its field then comes through wide expansions."""
        src_xyz, trg_xyz = self._xyz
        reach = _DECAY_LH_MAX / float(self.family.decay_rate)
        sel = np.isin(u_rows, leaves)
        r, c = u_rows[sel], u_cols[sel]
        if not len(r):
            return leaves[:0]

        def boxes(xyz, perm, start, end, which):  # tight bounding boxes of the points
            starts = start[which]
            pts = xyz[:, perm[np.concatenate([np.arange(a, b) for a, b in
                                              zip(starts, end[which])])]]
            offs = np.concatenate(([0], np.cumsum(end[which] - starts)[:-1]))
            return (np.minimum.reduceat(pts, offs, axis=1).T,
                    np.maximum.reduceat(pts, offs, axis=1).T)

        cs, ci = np.unique(c, return_inverse=True)
        s_lo, s_hi = boxes(src_xyz, tree.src_perm, tree.src_start, tree.src_end, cs)
        ts, ti = np.unique(r, return_inverse=True)
        t_lo, t_hi = boxes(trg_xyz, tree.trg_perm, tree.trg_start, tree.trg_end, ts)
        # a pair whose farthest target is within reach clears its target leaf
        worst = np.maximum(np.maximum(s_lo[ci] - t_lo[ti], t_hi[ti] - s_hi[ci]), 0.0)
        clear = np.zeros(len(ts), dtype=bool)
        clear[ti[np.sqrt((worst * worst).sum(axis=1)) <= reach]] = True
        keep = ~clear[ti]
        r, ci = r[keep], ci[keep]
        if not len(r):
            return leaves[:0]
        counts = tree.trg_end[r] - tree.trg_start[r]
        pair = np.repeat(np.arange(len(r)), counts)
        sorted_t = np.repeat(tree.trg_start[r], counts) + \
            (np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts))
        pts = trg_xyz[:, tree.trg_perm[sorted_t]].T
        gap = np.maximum(np.maximum(s_lo[ci[pair]] - pts, pts - s_hi[ci[pair]]), 0.0)
        nearest = np.full(len(tree.trg_perm), np.inf)
        np.minimum.at(nearest, sorted_t, np.sqrt((gap * gap).sum(axis=1)))
        far_t = np.isfinite(nearest) & (nearest > reach)
        cum = np.concatenate(([0], np.cumsum(far_t, dtype=np.int64)))
        return leaves[cum[tree.trg_end[leaves]] > cum[tree.trg_start[leaves]]]

    def _screened_direct(self, tree, u_rows, n_src, n_trg, budget, u_cols=None):
        """(leaves, rows, cols, m2p rows, m2p cols) or None: for a decaying kernel whose far
        field this plan takes through expansions that are too coarse for targets with no
        source near them (a far level with lam h > :data:`_DECAY_LH_MAX`, or levels dropped
        by :data:`_FAR_DROP`), the target leaves with no source in their U list (``u_rows``:
        the target leaves of its pairs with sources; ``u_cols`` their source leaves) or
        more than that many decay lengths wide themselves with a target as far from the
        sources of their U list (:meth:`_far_in_big_leaves`), and what each of them takes
        instead of
        everything else (L2P, M2P and direct W/X pairs): the sources of some boxes directly
        (P2P, leaf pairs) and the multipoles of others (M2P).

        Per target leaf T, with source counts standing in for sum |q| (the plan does not know
        the charges): a lower bound of u-bar at every target of T is
        ``max_S n_S |G(d_max(T, S))|`` over source leaves S; a box B contributes at most
        ``n_B |G(d_min(T, B))|`` and is left out below ``_SCREEN * eps`` times the lower bound
        over the number of source leaves (so all left out together stay below that). The
        boxes start at the coarsest level (at least the first far one) at most
        :data:`_DECAY_LH_MAX` decay lengths wide, whose multipoles hold on their far side too,
        with the source leaves above it; a box whose centre is at least 3 half-widths from T
        (the W list's separation) and at most that many decay lengths wide gives its
        multipole (its sources, if it has at most n_surf), a leaf closer or wider gives its
        sources, any other box its children (leaves of
        ``direct_targets`` take sources only). Until 2026-12-03 every
        box gave its sources: 2e5 sources in a unit cube with 2e4 targets on a sphere of
        radius 2, lam = 10, would have taken 4e9 pair terms, over the budget, so the plan kept
        its expansions (3e-5 of u-bar). If it comes to more than ``budget`` pair terms (a
        multipole counts n_surf), returns (leaves, None, None, None, None) as soon as that is
        known."""
        fam = self.family
        lam = float(fam.decay_rate)
        if not lam:
            return None
        far, levels = self.first_far, tree.levels
        coarse = tree.root_half / 2.0 ** min(far, tree.n_levels - 1)
        forced = self._direct_boxes
        wide = far > 2 or lam * coarse > _DECAY_LH_MAX
        if forced is None and not wide:
            return None
        leaves = tree.leaves
        near = np.zeros(len(tree.keys), dtype=bool)
        near[u_rows] = True
        # a leaf many decay lengths wide: its far side can be many decay lengths from its U
        # list, and its own local expansion is as poor there (octant of targets 2 units from
        # a unit cube, lam 20: level-2 target leaves with lam h 6.7 and a source leaf in their
        # U list got 7.5e-4 of u-bar at eps 1e-6); those with such targets go too (all of
        # them: 1e5 uniform targets among 1e5 sources, lam 100, went over the budget)
        big = fam.decay_rate * tree.root_half / 2.0 ** levels[leaves] > _DECAY_LH_MAX
        lonely = ~near[leaves] if wide else np.zeros(len(leaves), dtype=bool)
        check = leaves[big & near[leaves] & (n_trg[leaves] > 0)] if wide else leaves[:0]
        if len(check) and u_cols is not None:
            lonely |= np.isin(leaves, self._far_in_big_leaves(tree, check, u_rows, u_cols))
        if forced is not None:
            lonely |= forced[leaves]
        lonely = leaves[(n_trg[leaves] > 0) & lonely]
        src = leaves[n_src[leaves] > 0]
        if not len(lonely) or not len(src):
            return None
        half = tree.root_half / 2.0 ** levels
        centers = tree.centers
        cs, hs, ns = centers[src], half[src], n_src[src].astype(np.float64)
        surf = n_surf(self.p)
        # the boxes the search starts from
        l0 = min(far, tree.n_levels - 1)  # (far can lie below the tree: no multipoles)
        while l0 < tree.n_levels - 1 and lam * tree.root_half / 2.0 ** l0 > _DECAY_LH_MAX:
            l0 += 1
        level_boxes = np.arange(tree.level_offsets[l0], tree.level_offsets[l0 + 1])
        start = np.concatenate([level_boxes[n_src[level_boxes] > 0], src[levels[src] < l0]])

        def g(r):  # |G(r)| up to its constant: exp(-lam r) / r
            return np.exp(-lam * r) / np.maximum(r, 1e-300)

        def d_min(t, b):
            gap = np.abs(centers[t] - centers[b]) - (half[t] + half[b])[:, None]
            return np.sqrt((np.maximum(gap, 0.0) ** 2).sum(-1))

        rows, cols, m_rows, m_cols, cost = [], [], [], [], 0
        step = max(1, 500_000 // max(len(src), len(start)))  # temporaries of ~12 MB
        for a in range(0, len(lonely), step):
            t = lonely[a:a + step]
            gap = np.abs(centers[t][:, None, :] - cs[None])                  # (m, k, 3)
            reach = half[t][:, None, None] + hs[None, :, None]
            lower = (ns * g(np.sqrt(((gap + reach) ** 2).sum(-1)))).max(axis=1)  # (m,)
            del gap, reach
            pr = np.repeat(t, len(start))
            pc = np.tile(start, len(t))
            cut = np.repeat((_SCREEN * self.eps / len(src)) * lower, len(start))
            while len(pr):
                keep = n_src[pc] * g(d_min(pr, pc)) > cut
                pr, pc, cut = pr[keep], pc[keep], cut[keep]
                # Chebyshev distance from B's centre to T's box, in B's half-widths
                sep = (np.abs(centers[pr] - centers[pc]) - half[pr][:, None]).max(axis=1) \
                    >= 3.0 * half[pc] * (1.0 - 1e-12)
                # (only narrow boxes: a tree whose deepest level is still wide, lam 40 at
                # eps 1e-4 with lam h 3.4 there, got up to 1.2 of u-bar from their multipoles)
                m2p = sep & (n_src[pc] > surf) & (levels[pc] >= far) \
                    & (lam * half[pc] <= _DECAY_LH_MAX)
                if forced is not None:  # aotfmm.mpi: equivalent densities among the sources,
                    # whose multipoles lose what their cancellation leaves (lam 5, targets 4
                    # units out, 2 ranks: 3.2e-8 of u-bar against 2.3e-9 from the sources)
                    m2p &= ~forced[pr]
                # sources: a leaf, or a separated box too small for a multipole; any other
                # box (near, or separated but too wide) gives its children
                direct = ~m2p & (tree.is_leaf[pc] | (sep & (n_src[pc] <= surf)))
                m_rows.append(pr[m2p])
                m_cols.append(pc[m2p])
                rows.append(pr[direct])
                cols.append(pc[direct])
                cost += surf * int(n_trg[pr[m2p]].sum()) + \
                    int((n_trg[pr[direct]] * n_src[pc[direct]]).sum())
                if cost > budget:
                    return lonely, None, None, None, None
                down = ~m2p & ~direct
                kids = tree.children[pc[down]]                                # (j, 8)
                pr = np.repeat(pr[down], kids.shape[1])
                cut = np.repeat(cut[down], kids.shape[1])
                pc = kids.ravel()
                ok = pc >= 0
                pr, pc, cut = pr[ok], pc[ok], cut[ok]
                ok = n_src[pc] > 0
                pr, pc, cut = pr[ok], pc[ok], cut[ok]
        rows, cols = self._leaf_pairs(tree, np.concatenate(rows), np.concatenate(cols))
        return lonely, rows, cols, np.concatenate(m_rows), np.concatenate(m_cols)

    @staticmethod
    def _grouped(rows, cols, extra=None):
        """Pairs -> (unique target boxes, CSR offsets over them, cols[, extra]) sorted by target
        (stably; rows that already ascend, as CSR pairs do, are not sorted again: the sort and
        np.unique's took ~0.025 s of a 1e6 Plummer setup)."""
        if len(rows) > 1 and not (rows[1:] >= rows[:-1]).all():
            order = np.argsort(rows, kind="stable")
            rows, cols = rows[order], cols[order]
            extra = None if extra is None else extra[order]
        first = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1]))) if len(rows) \
            else np.zeros(0, dtype=np.int64)
        offsets = np.append(first, len(rows)).astype(np.int64)
        out = (np.asarray(rows[first], dtype=np.int64), offsets,
               np.ascontiguousarray(cols, dtype=np.int64))
        if extra is not None:
            out += (np.ascontiguousarray(extra, dtype=np.int64),)
        return out

    def _stats(self, tree, lists):
        def sizes(offsets, rows):
            n = np.diff(offsets)[rows] if len(rows) else np.zeros(1, np.int64)
            return {"mean": float(n.mean()), "max": int(n.max())}
        all_boxes = np.arange(len(tree.keys))
        arrays = [self.src, self.offsets, self.anchor, self.half_widths, self.near_index]
        if not self.same:
            arrays.append(self.trg)
        n_surf = self.ops.n_surf
        return {
            "p": self.p, "ncrit": self.ncrit, "n_surf": n_surf,
            "levels": int(tree.n_levels), "boxes": int(len(tree.keys)),
            "root_scale": self.root_scale,
            "leaves": int(len(tree.leaves)),
            "list_sizes": {"u": sizes(lists.u_offsets, tree.leaves),
                           "v": sizes(lists.v_offsets, all_boxes),
                           "w": sizes(lists.w_offsets, tree.leaves),
                           "x": sizes(lists.x_offsets, all_boxes)},
            "m2l_rank": int(max(o.m2l_rank for o in self.level_ops.values())),
            "operator_sets": len({id(o) for o in self.level_ops.values()
                                  if not isinstance(o, NoOperators)}),
            "memory_bytes": {"operators": int(sum({id(o): o.nbytes for o in
                                                   self.level_ops.values()}.values())),
                             "expansions": int(2 * len(tree.keys) * n_surf * self.dtype.itemsize),
                             "points_and_lists": int(sum(a.nbytes for a in arrays))},
        }

    # ------------------------------------------------------------------ evaluate
    def _few_split(self, charges, dipoles, hessian=False):
        """The sources to sum directly for densities whose field comes from few points (see
        :data:`_FEW_CHARGES`), on a plan with a far field (an all-direct plan is exact).

        Per density with fewer than min(:data:`_FEW_CHARGES`, n / 8) effective charges
        ((sum |q|)^2 / sum q^2, dipoles by |d|, both added for both): its non-zero sources if
        at most :data:`_FEW_DIRECT`, else the fewest of its strongest that leave a remainder of
        that many effective charges, else the :data:`_FEW_DIRECT` strongest. Then, of what is
        left, charge that sits in few places (:meth:`_few_places`). An AccuracyWarning if what
        the FMM is left with still has few effective charges and carries over :data:`_FEW_LEFT`
        of sum |q|.
        Where the heaviest cells hold more than :data:`_FEW_DIRECT` sources: their distinct
        points carrying the summed densities when at most :data:`_FEW_DIRECT`, else spots
        translated from boxes centred on them (:mod:`aotfmm._spots`; ``hessian``: whether
        Hessians are asked for).
        Returns None (nothing to route) or (picks, spots, rest): per density index the
        caller-order indices of its sources summed directly, per density index its spots
        (:func:`aotfmm._spots.plan_spots`), and whether the FMM has anything left to do (a
        routed density's remainder, or a density not routed)."""
        if not self.has_far_field:
            return None
        mag = density_magnitudes(charges, dipoles)
        n = mag.shape[-1]
        n_min = min(_FEW_CHARGES, n / 8)
        s1, s2 = mag.sum(axis=-1), np.square(mag).sum(axis=-1)
        few = few_charges(s1, s2, n)
        picks = {}
        for j in np.flatnonzero(few):
            m = mag[j]
            nz = np.flatnonzero(m)
            if len(nz) <= _FEW_DIRECT:
                picks[int(j)] = nz
                continue
            top = nz[np.argpartition(m[nz], len(nz) - _FEW_DIRECT)[len(nz) - _FEW_DIRECT:]]
            top = top[np.argsort(-m[top], kind="stable")]          # strongest first
            rest = m.copy()
            rest[top] = 0.0
            # what remains after routing the K strongest, K = 0 .. _FEW_DIRECT
            t1, t2 = _tail_sums(m[top])
            r1, r2 = rest.sum() + t1, np.square(rest).sum() + t2
            many = r1 * r1 >= n_min * r2
            kk = int(np.argmax(many)) if many.any() else _FEW_DIRECT
            picks[int(j)] = np.sort(top[:kk])
        left, warn, spots = False, [], {}
        strict = dipoles is not None or hessian
        for j in np.flatnonzero(s2 > 0):
            m = row = mag[j]
            if j in picks:
                if len(picks[j]) == np.count_nonzero(m):
                    continue  # all of it routed
                m = m.copy()
                m[picks[j]] = 0.0
            more = self._few_places(m, n_min)
            if more is not None and more[1] is not None:  # spots: a translation of each
                if self._spot_cache is None:
                    self._spot_cache = {}
                sp = [more[2]] if more[2] is not None else _spots.plan_spots(
                    self, more[1], self.eps, strict, self._cell_width, self._spot_cache)
                if sp is not None:
                    spots[int(j)] = sp
                    m = m.copy()
                    m[more[0]] = 0.0
            elif more is not None:
                picks[int(j)] = np.union1d(picks.get(int(j), more[0][:0]), more[0])
                m = m.copy()
                m[more[0]] = 0.0
            # (the density's own sums where nothing of it was routed)
            r1, r2 = (s1[j], s2[j]) if m is row else (m.sum(), np.square(m).sum())
            left = left or r2 > 0
            if r2 > 0 and r1 * r1 < n_min * r2 and r1 > _FEW_LEFT * s1[j]:
                warn.append((int(j), r1 / s1[j]))
        if warn:
            j, frac = max(warn, key=lambda w: w[1])
            warnings.warn(f"the field of density {j} comes from few points: its "
                          f"{_FEW_DIRECT} strongest sources are summed directly, but the "
                          f"rest ({frac:.2g} of sum |q|, fewer than {n_min:.0f} effective "
                          f"charges) goes through expansions, whose accuracy contract (eps "
                          f"relative to the field of |q|) is met for fields of many charges; "
                          f"from a few, targets in the worst position of a translation got up "
                          f"to 6x eps in potentials and up to 300x eps in gradients (README, "
                          f"Fields of few charges). Ask for a smaller eps or sum such fields "
                          f"directly (aotfmm.direct)",
                          AccuracyWarning, stacklevel=_frame._caller_level())
        return (picks, spots, left) if picks or spots else None

    def _few_places(self, m, n_min):
        """Caller-order indices of the sources (magnitudes ``m``, caller order) in the fewest
        of the heaviest cells (:data:`_FEW_CELLS` per side of the sources' bounding cube)
        that leave the rest of ``m`` in many effective cells (as :data:`_FEW_CHARGES` counts
        charges), when ``m`` sits in fewer than ``n_min`` effective cells: (those indices,
        None, None) if they are at most :data:`_FEW_DIRECT` (to be summed directly), else
        (those indices, [], their distinct points as one spot) if those are at most
        :data:`_FEW_DIRECT` (:func:`aotfmm._spots.coincident`), else (those indices, their
        spots: per connected set of the cells, its sources' tree-order indices, sorted, and
        their cells; :mod:`aotfmm._spots`, None); None if ``m`` is on many cells or the
        heavy cells are more than :data:`aotfmm._spots._MAX_SPOTS`. Many charges on one spot
        are one charge to the far field (1000 on one point: 143x eps in gradients through the
        expansions)."""
        cell = self._source_cells()
        q = np.bincount(cell, weights=m, minlength=_FEW_CELLS ** 3)
        c1, c2 = q.sum(), np.dot(q, q)
        if not (c2 > 0 and c1 * c1 < n_min * c2):
            return None
        order = np.flatnonzero(q)
        order = order[np.argsort(-q[order], kind="stable")]      # heaviest first
        t1, t2 = _tail_sums(q[order])  # what remains with the K heaviest taken
        kk = int(np.argmax((t1 * t1 >= n_min * t2) | (t2 == 0)))
        take = np.zeros(len(q), dtype=bool)
        take[order[:kk]] = True
        sel = np.flatnonzero(take[cell] & (m > 0))
        if len(sel) <= _FEW_DIRECT:
            return sel, None, None
        inv = self._ranks(self.tree.src_perm)
        same = _spots.coincident(self, np.sort(inv[sel]), _FEW_DIRECT)
        if same is not None:
            return sel, [], same
        if kk > _spots._MAX_SPOTS:  # (each heavy cell is a spot at most)
            return None
        label = np.full(len(q), -1, dtype=np.int64)
        label[order[:kk]] = _spots.components(order[:kk], _FEW_CELLS)
        lab = label[cell[sel]]
        sets = []
        for i in range(int(lab.max()) + 1):
            t = inv[sel[lab == i]]
            o = np.argsort(t)
            sets.append((t[o], cell[sel[lab == i]][o]))
        return sel, sets, None

    def _ranks(self, perm):
        """Each point's tree-order index in the caller's order: the inverse of ``perm``, the
        tree's ``src_perm`` or ``trg_perm`` (one array where the targets are the sources).
        Made once per plan and permutation, on first use (it was made per call: ~5 ms at 1e6
        points in the few-charges check, and again in every evaluation's unsort)."""
        inv = self._rank_arrays.get(id(perm))
        if inv is None:
            inv = np.empty_like(perm)
            inv[perm] = np.arange(len(inv), dtype=inv.dtype)
            self._rank_arrays[id(perm)] = inv  # (the tree keeps ``perm``: its id stays its)
        return inv

    def _source_cells(self):
        """(n_sources,) int32, caller order: each source's cell of a grid of :data:`_FEW_CELLS`^3
        over the sources' bounding cube (frame coordinates; computed once per plan, on the first
        evaluation).

        One axis at a time, without the (3, n) frame points: the bounds from per-leaf minima
        and maxima of the leaf-local offsets (adding a leaf's origin is monotonic, so the
        bounds are the frame points' own), then each axis's cell index. The same cells as
        ``frame_points`` would give, bit for bit; 1e6 points 76 -> 31 ms."""
        if self._cells is None:
            tree, src = self.tree, self.src
            leaves = tree.leaves
            counts = tree.src_end[leaves] - tree.src_start[leaves]
            full = counts > 0
            origin = self._leaf_origins()
            lo, hi = np.empty(3), np.empty(3)
            for a in range(3):  # (the leaves' sources are consecutive, in leaf order)
                o = origin[leaves[full], a]
                seg = tree.src_start[leaves[full]]
                lo[a] = (np.minimum.reduceat(src[a], seg).astype(np.float64) + o).min()
                hi[a] = (np.maximum.reduceat(src[a], seg).astype(np.float64) + o).max()
            w = float((hi - lo).max()) / _FEW_CELLS
            key = np.zeros(src.shape[1], dtype=np.int64)
            pos = np.concatenate(([0], np.cumsum(counts)))

            def work(l0, l1):  # ranges of leaves, their points consecutive (numpy: no GIL)
                i0, i1 = pos[l0], pos[l1]
                k = key[i0:i1]
                for a in range(3):
                    v = src[a, i0:i1].astype(np.float64) + np.repeat(origin[leaves[l0:l1], a],
                                                                      counts[l0:l1])
                    v -= lo[a]
                    v /= w if w > 0 else 1.0
                    ijk = v.astype(np.int64)
                    del v
                    np.minimum(ijk, _FEW_CELLS - 1, out=ijk)
                    k *= _FEW_CELLS
                    k += ijk

            self.workers.run(work, self.workers.split(counts))
            cells = np.empty(len(key), dtype=np.int32)
            cells[tree.src_perm] = key
            self._cell_width, self._cells = w, cells
        return self._cells

    def _few_direct(self, picks, charges, dipoles, pot, grad, hess):
        """Add to ``pot``/``grad``/``hess`` (tree target order, frame units) the fields of the
        routed sources (:meth:`_few_split`) on every target, summed pair by pair in float64
        (exact 1/r) from the leaf-local coordinates with float64 anchor-to-anchor shifts, as
        the near field is; float32 plans add to it the float64 offsets of the boxes
        :meth:`_rounding_redo` picked. The routed densities go together over the union of
        their sources when it is at most twice their separate sizes, else one by one.
        Returns, per routed density, the tree-order indices of its routed sources (to be
        zeroed in the FMM's densities)."""
        inv = self._ranks(self.tree.src_perm)
        per = {j: np.sort(inv[c]) for j, c in picks.items()}
        cols = sorted(per)
        union = np.unique(np.concatenate([per[j] for j in cols]))
        if len(union) * len(cols) <= 2 * sum(len(per[j]) for j in cols):
            groups = [(cols, union)]
        else:
            groups = [([j], per[j]) for j in cols]
        for g_cols, idx in groups:
            self._few_onto_targets(g_cols, idx, per, charges, dipoles, pot, grad, hess)
        return per

    def _few_onto_targets(self, cols, idx, per, charges, dipoles, pot, grad, hess):
        """:meth:`_few_direct` for the densities ``cols`` over the tree-order sources ``idx``
        (each density's own routed ones among them, zeros for the rest)."""
        tree = self.tree
        v64 = self.family.value_dtype(np.float64)

        def routed(a, axis_shape):  # (len(cols), ..., len(idx))
            if a is None:
                return None
            out = np.zeros((len(cols),) + axis_shape + (len(idx),), dtype=v64)
            for i, j in enumerate(cols):
                c = per[j]
                out[i][..., np.searchsorted(idx, c)] = a[j][..., tree.src_perm[c]]
            return out

        qd = routed(charges, ())
        dd = routed(dipoles, (3,))
        s_start, s_end, s_anchor = self.leaf_runs(self.source_leaves(idx))
        xyz = np.ascontiguousarray(self.src[:, idx], dtype=np.float64)
        outs = [None if a is None else a[cols] for a in (pot, grad, hess)]  # (copies)
        self._sum_onto_leaves(xyz, qd, dd, s_start, s_end, s_anchor, self.target_leaves(),
                              outs)
        if self.redo is not None:
            self._few_redo(idx, qd, dd, outs)
        for a, b in zip((pot, grad, hess), outs):
            if a is not None:
                a[cols] = b

    def source_leaves(self, idx):
        """The leaf holding each of the tree-order sources ``idx``."""
        tree = self.tree
        leaves = tree.leaves
        s_lv = leaves[tree.src_end[leaves] > tree.src_start[leaves]]
        s_lv = s_lv[np.argsort(tree.src_start[s_lv], kind="stable")]
        return s_lv[np.searchsorted(tree.src_start[s_lv], idx, side="right") - 1]

    def leaf_runs(self, leaf):
        """Sources given by their leaves ``leaf`` (sorted by tree order: one run per leaf) as
        :meth:`_sum_onto_leaves` takes them: (run starts, run ends, each run's anchor)."""
        runs = np.flatnonzero(np.r_[True, leaf[1:] != leaf[:-1]])
        return (runs.astype(np.int64), np.append(runs[1:], len(leaf)).astype(np.int64),
                self.anchor[leaf[runs]])

    def target_leaves(self):
        """The leaves holding targets, in the order of their target ranges."""
        tree = self.tree
        leaves = tree.leaves
        t_lv = leaves[tree.trg_end[leaves] > tree.trg_start[leaves]]
        return t_lv[np.argsort(tree.trg_start[t_lv], kind="stable")]

    def _sum_onto_leaves(self, xyz, qd, dd, s_start, s_end, s_anchor, t_lv, outs):
        """Add to ``outs`` (pot (k, n_trg), grad (k, 3, n_trg), hess (k, 6, n_trg), each or
        None; tree target order, frame units) the fields of the sources ``xyz`` ((3, n)
        float64, frame units, each box's points relative to its anchor ``s_anchor[i]`` (caller
        units), boxes ``s_start``/``s_end``) with densities ``qd`` (k, n) / ``dd`` (k, 3, n)
        (either None) at every target of the leaves ``t_lv``, every pair, exact 1/r, from
        anchor-to-anchor shifts taken in float64 (as the near field is)."""
        tree = self.tree
        n_s = len(s_start)
        # chunks of whole target leaves (as KifmmPasses._l2p_regular cuts them): a cut every
        # ~2^16 targets and every 2^20 / n_s leaves (list entries), bounded temporaries
        counts = (tree.trg_end[t_lv] - tree.trg_start[t_lv]).astype(np.int64)
        cum = np.concatenate([[0], np.cumsum(counts)])
        cuts = np.unique(np.concatenate([np.searchsorted(cum, np.arange(0, cum[-1], 1 << 16)),
                                         np.arange(0, len(t_lv), max(1, (1 << 20) // n_s)),
                                         [len(t_lv)]]))
        for c0, c1 in zip(cuts[:-1], cuts[1:]):
            lv = t_lv[c0:c1]
            n_c = len(lv)
            at = _ranges(tree.trg_start[lv].astype(np.int64), tree.trg_end[lv].astype(np.int64))
            trg = np.ascontiguousarray(self.trg[:, at], dtype=np.float64)
            loc = cum[c0:c1 + 1] - cum[c0]
            shift = ((self.anchor[lv][:, None, :] - s_anchor[None, :, :])
                     / self.frame_scale).reshape(-1, 3)
            out = [None if a is None else np.zeros(a.shape[:-1] + (len(at),),
                                                   dtype=self.family.value_dtype(np.float64))
                   for a in outs]
            near_field(xyz, qd, trg, s_start, s_end, loc[:-1].copy(), loc[1:].copy(),
                       np.arange(n_c + 1, dtype=np.int64) * n_s,
                       np.tile(np.arange(n_s, dtype=np.int64), n_c),
                       np.arange(n_c, dtype=np.int64), out[0], out[1], self.workers,
                       cost=counts[c0:c1] * xyz.shape[1] + 1.0, dipoles=dd, exact=True,
                       hess=out[2], shift=np.ascontiguousarray(shift), family=self.family)
            with np.errstate(over="ignore"):  # (an overflow is reported when unscaled)
                for a, b in zip(outs, out):
                    if a is not None:
                        a[..., at] += b.astype(a.dtype)

    def _few_redo(self, idx, qd, dd, outs):
        """Float32 plans: on the boxes :meth:`_rounding_redo` picked, the routed sources of
        their near lists once more from float64 offsets, less the same from the float32
        ones :meth:`_few_direct` used (where rounding the points moves a pair by more than
        a small part of its distance)."""
        r = self.redo
        n = self.src.shape[1]
        v64 = self.family.value_dtype(np.float64)
        hit = np.isin(r.src_idx, idx)
        if not hit.any():
            return

        def dense(a):  # routed densities at the redo's sources (zero where not routed)
            if a is None:
                return None
            full = np.zeros(a.shape[:-1] + (n,), dtype=v64)
            full[..., idx] = a
            return np.ascontiguousarray(full[..., r.src_idx])

        q, d = dense(qd), dense(dd)
        src32 = np.ascontiguousarray(self.src[:, r.src_idx], dtype=np.float64)
        trg32 = np.ascontiguousarray(self.trg[:, r.trg_idx], dtype=np.float64)
        diff = []
        for s_xyz, t_xyz, sign in ((r.src, r.trg, 1.0), (src32, trg32, -1.0)):
            out = [None if a is None else np.zeros(a.shape[:-1] + (len(r.trg_idx),), v64)
                   for a in outs]
            near_field(s_xyz, q, t_xyz, r.src_start, r.src_end, r.trg_start, r.trg_end,
                       self.near_offsets, self.near_index, r.boxes, out[0], out[1],
                       self.workers, cost=r.cost, dipoles=d, exact=True, hess=out[2],
                       shift=r.shift, family=self.family)
            diff.append([None if o is None else sign * o for o in out])
        with np.errstate(over="ignore"):
            for a, b, c in zip(outs, *diff):
                if a is not None:
                    a[..., r.trg_idx] += (b + c).astype(a.dtype)

    @_blas.one_thread
    def evaluate(self, charges, gradient, progress=None, dipoles=None, hessian=False,
                 comm=_driver.SERIAL):
        """One traversal for k densities, in the caller's source order: charges (k, n_sources)
        float64 or None, dipoles (k, 3, n_sources) float64 or None (in this frame).
        Returns (pot (k, n_targets), grad (k, 3, n_targets) or None, hess (k, 6, n_targets)
        or None, timings). ``hessian`` implies the gradient. The stages run through
        :func:`aotfmm._driver.run` with :class:`KifmmPasses`; ``comm`` gets its hooks.

        numpy's BLAS runs on one thread for the whole call, not only for the traversal: its
        thread count is one setting for the process, and OpenBLAS can lose a change made
        while another thread is inside a BLAS call (plans evaluated from several Python
        threads: :func:`aotfmm._blas.limit_one`). threads=1 too: left alone, OpenBLAS ran
        M2L's GEMMs on every core and its threads spun between them (a threads=1 evaluation
        of 3e5 points took 1.8 CPU seconds per second on 2 cores). And before the traversal
        too: after one threaded call (the few-charges check's ``np.dot`` over 64^3 cells,
        a setup's operator products) OpenBLAS's idle threads spin for ~0.12 s, on the cores
        the traversal's own threads need (2 cores, 1e6 points: 0.1-0.25 CPU seconds of such
        spinning per evaluation, 2026-12-05)."""
        tree, dt = self.tree, self.dtype
        timings = {}
        t = time.perf_counter()

        def tick(name):
            nonlocal t
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - t
            t = now

        k = (charges if charges is not None else dipoles).shape[0]
        gradient = gradient or hessian
        few = self._few_split(charges, dipoles, hessian) if comm is _driver.SERIAL else None
        if self.rounding_left is not None:  # a derivative beyond what the plan was built for
            order = min(int(gradient) + int(hessian) + int(dipoles is not None), 3)
            if self.rounding_left[order] > self.eps / 2:
                warnings.warn(f"float64 points rounded to float32 may cost this evaluation "
                              f"up to {self.rounding_left[order]:.2g} relative error (eps "
                              f"{self.eps:g}): build the plan with dipoles=True/hessians=True "
                              f"for what it evaluates, or use dtype=float64",
                              AccuracyWarning, stacklevel=4)
        vdt = self.family.value_dtype(dt)  # densities and fields (complex for Helmholtz)
        q = dip = None
        if charges is not None:
            q = np.ascontiguousarray(charges[:, tree.src_perm], dtype=vdt)
            if k == 1 and dipoles is None and not hessian and self._single_kernels:
                q = q[0]  # the single-density kernels
        if dipoles is not None:
            dip = np.ascontiguousarray(dipoles[:, :, tree.src_perm], dtype=vdt)
        n_trg = self.trg.shape[1]
        pot = np.zeros((k, n_trg), dtype=vdt)
        grad = np.zeros((k, 3, n_trg), dtype=vdt) if gradient else None
        hess = np.zeros((k, 6, n_trg), dtype=vdt) if hessian else None
        tick("prepare")
        run_fmm = True
        if few is not None:  # the few strong sources directly, the rest through the FMM
            picks, spots, run_fmm = few
            per = self._few_direct(picks, charges, dipoles, pot, grad, hess) if picks else {}
            if picks:
                tick("few_direct")
            for j, sp in spots.items():
                outs = [None if a is None else a[j:j + 1] for a in (pot, grad, hess)]
                for spot in sp:
                    _spots.spot_fields(self, spot, j, charges, dipoles, outs)
                per[j] = np.union1d(per.get(j, sp[0]["idx"][:0]), np.concatenate(
                    [spot.get("members", spot["idx"]) for spot in sp]))
            if spots:
                tick("few_spots")
            for j, c in per.items():  # (out of the FMM's densities)
                if q is not None:
                    (q if q.ndim == 2 else q[None])[j, c] = 0
                if dip is not None:
                    dip[j, :, c] = 0
        passes = KifmmPasses(self, q, dip, pot, grad, hess)
        tick("prepare")
        timer = _driver.Timer(
            on_pass=lambda name: progress is not None and name in (
                "p2m", "m2m", "l2p", "m2p", "p2p") and progress.step(name),
            on_stage=lambda name: progress is not None and name == "downward" and
            progress.step("l2l+m2l+p2l"))
        if run_fmm:  # (numpy's BLAS on one thread: :meth:`evaluate`)
            _driver.run(self.up_levels, self.down_levels, passes, comm, timer)
        for name, sec in timer.passes.items():
            timings[name] = timings.get(name, 0.0) + sec
        del passes  # the expansions: freed before the outputs are copied (peak memory)
        t = time.perf_counter()

        # back to the caller's target order (last axis): a gather through the inverse
        # permutation (np.take), ~2x faster than scattering through the permutation; ranges
        # of targets on the plan's threads (np.take releases the GIL)
        inv = self._ranks(tree.trg_perm)
        out = [None if a is None else np.empty_like(a) for a in (pot, grad, hess)]
        rows = [(a.reshape(-1, a.shape[-1]), o.reshape(-1, o.shape[-1]))
                for a, o in zip((pot, grad, hess), out) if a is not None]

        def gather(j0, j1):
            for a, o in rows:
                for r in range(a.shape[0]):  # ('wrap': the indices are valid; 'raise' buffers)
                    np.take(a[r], inv[j0:j1], out=o[r, j0:j1], mode="wrap")

        self.workers.run(gather, self.workers.split(len(inv)))
        tick("unsort")
        return (*out, timings)


class KifmmPasses:
    """The KIFMM passes of one evaluation: :mod:`aotfmm.expansions` and the near field applied
    to a :class:`Plan`'s boxes, for the densities ``q``/``dip`` (in the tree's source order)
    into ``pot``/``grad``/``hess`` (tree's target order). :func:`aotfmm._driver.run` calls
    them in stage order; the per-level passes return whether they had work at that level."""

    def __init__(self, plan, q, dip, pot, grad, hess):
        self.plan, self.q, self.dip, self.hess = plan, q, dip, hess
        ops, k = plan.ops, pot.shape[0]
        multi = k > 1 or dip is not None or hess is not None or not plan._single_kernels
        self.pot = pot if multi else pot[0]
        self.grad = grad if (multi or grad is None) else grad[0]
        shape = (plan.n_boxes, k, ops.n_surf)
        vdt = pot.dtype
        self.equiv = np.zeros(shape, dtype=vdt)
        self.local = np.zeros(shape, dtype=vdt)
        self.dcheck = np.zeros((plan.n_boxes, k, ops.down_rank), dtype=vdt)
        #: the regular part (a, b) of each box's local field (Plan._regular_split), frame units
        self.regular = np.zeros((plan.n_boxes, k, 4), dtype=vdt) if plan.regular_split \
            else None

    def p2m(self):
        p, t = self.plan, self.plan.tree
        if not len(p.p2m_boxes):
            return
        for sel, ops in p.p2m_groups:  # surface centres come per list entry (None here)
            expansions.p2m(ops, p.src, self.q, p.p2m_boxes[sel], t.src_start, t.src_end, None,
                           p.half_widths, self.equiv, workers=p.workers, dipoles=self.dip,
                           entry_centers=p.p2m_centers[sel])

    def m2m(self, up):
        expansions.m2m(self.plan.ops_at(up.level), self.equiv, up.parents, up.children,
                       workers=self.plan.workers)

    def l2l(self, down):
        if down.l2l is None:
            return False
        ops = self.plan.ops_at(down.level)
        expansions.l2l(ops, self.local, self.dcheck, *down.l2l, workers=self.plan.workers)
        split = self.plan.regular_split.get(down.level)
        if split is not None and split[2] is not None:  # the parents' regular part
            d3 = expansions._dens3(self.dcheck, ops.down_rank)
            c2e_scale, hw = self.plan.family.c2e_scale, self.plan.half_widths
            for c, par, ch in expansions._octant_pairs(*down.l2l):
                d3[ch] += c2e_scale(hw[ch])[:, None, None] * (self.regular[par] @ split[2][c].T)
        return True

    def m2l(self, down):
        if down.m2l is None:
            return False
        expansions.m2l(self.plan.ops_at(down.level), self.equiv, self.dcheck, down.m2l,
                       workers=self.plan.workers, single=self.plan.mixed_m2l)
        return True

    def p2l(self, down):
        if down.p2l is None:
            return False
        p, t = self.plan, self.plan.tree
        boxes, offsets, index = down.p2l
        expansions.p2l(p.ops_at(down.level), p.src, self.q, t.src_start, t.src_end, boxes,
                       offsets, index, None, p.half_widths, self.dcheck, workers=p.workers,
                       dipoles=self.dip, entry_centers=down.p2l_centers)
        return True

    def dc2e(self, down):
        if not len(down.receivers):
            return False
        ops = self.plan.ops_at(down.level)
        split = self.plan.regular_split.get(down.level)
        if split is not None:  # the regular part apart: (a, b) = alpha / c2e(h)
            w, proj, _ = split
            rows = down.receivers
            d3 = expansions._dens3(self.dcheck, ops.down_rank)
            d = d3[rows]
            alpha = d @ proj.T
            d -= alpha @ w.T
            d3[rows] = d
            scale = self.plan.family.c2e_scale(self.plan.half_widths[rows])
            self.regular[rows] = alpha / scale[:, None, None]
        expansions.dc2e(ops, self.dcheck, self.local, down.receivers, workers=self.plan.workers)
        return True

    def l2p(self):
        p, t = self.plan, self.plan.tree
        if len(p.l2p_boxes):
            expansions.l2p(p.ops, self.local, p.trg, t.trg_start, t.trg_end, p.l2p_boxes, None,
                           p.half_widths, self.pot, self.grad, workers=p.workers,
                           hess=self.hess, entry_centers=p.l2p_centers)
            if self.regular is not None:
                self._l2p_regular()

    def _l2p_regular(self):
        """Targets of the L2P leaves += the regular part of their leaf's local field,
        ``a f(rho) + b . e(rho)`` with rho = (x - centre) / h, and its gradient (Laplace:
        a + b . rho and b / h; the Hessians of these fields are 0 for Laplace, the only family
        with Hessians). Chunks of whole leaves (~2^17 targets): bounded temporaries."""
        p, t = self.plan, self.plan.tree
        leaves = p.l2p_boxes
        reg = self.regular[leaves]                                 # (n_leaves, k, 4)
        if not reg.any():
            return
        counts = t.trg_end[leaves] - t.trg_start[leaves]
        reg[..., 1:] /= p.half_widths[leaves, None, None]          # b per frame unit
        laplace = p.family.regular_mu2_value() == 0
        if laplace and reg.shape[1] == 1 and self.pot.ndim == 1:   # one density: compiled
            work = _dispatch.bind(
                "l2p_regular", p.dtype, trg_xyz=p.trg, trg_start=t.trg_start,
                trg_end=t.trg_end, leaves=leaves, offsets=p.offsets,
                reg=np.ascontiguousarray(reg[:, 0, :], dtype=np.float64),
                flags=0 if self.grad is None else _dispatch.GRADIENT, pot=self.pot,
                grad=np.zeros((3, 1), p.dtype) if self.grad is None else self.grad)
            p.workers.run(work, p.workers.split(counts.astype(np.float64) + 1.0))
            return
        pot = self.pot if self.pot.ndim == 2 else self.pot[None]
        grad = self.grad
        if grad is not None and grad.ndim == 2:
            grad = grad[None]
        cum = np.concatenate([[0], np.cumsum(counts)])
        cuts = np.unique(np.concatenate([np.searchsorted(cum, np.arange(0, cum[-1], 1 << 17)),
                                         [len(leaves)]]))
        for c0, c1 in zip(cuts[:-1], cuts[1:]):
            lv, cnt = leaves[c0:c1], counts[c0:c1]
            idx = _ranges(t.trg_start[lv], t.trg_end[lv])
            if len(idx) and idx[-1] - idx[0] + 1 == len(idx):    # usually: one run, a view
                idx = slice(int(idx[0]), int(idx[-1]) + 1)
            row = np.repeat(np.arange(c1 - c0), cnt)
            d = p.trg[:, idx].astype(np.float64, copy=False) - p.offsets[lv].T[:, row]  # (3, m)
            r = reg[c0:c1]
            for j in range(r.shape[1]):                            # densities
                a, b = r[row, j, 0], r[row, j, 1:].T               # (m,), (3, m)
                bd = np.einsum("im,im->m", b, d)
                if laplace:
                    pot[j, idx] += a + bd
                    if grad is not None:
                        grad[j][:, idx] += b
                    continue
                f, df, g, dg = p.family.regular(np.einsum("im,im->m", d, d))
                pot[j, idx] += a * f + bd * g
                if grad is not None:
                    grad[j][:, idx] += b * g + (a * df + bd * dg) * d

    def m2p(self):
        p, t = self.plan, self.plan.tree
        if len(p.m2p_boxes):
            expansions.m2p(p.ops, self.equiv, p.trg, t.trg_start, t.trg_end, p.m2p_boxes,
                           p.m2p_offsets, p.m2p_index, None, p.half_widths, self.pot,
                           self.grad, workers=p.workers, hess=self.hess,
                           entry_centers=p.m2p_centers)

    def p2p(self):
        p, t = self.plan, self.plan.tree
        # the expansions were last read by l2p / m2p (the driver runs p2p last): freed
        # before the near field's buffers are made (the evaluation's peak memory)
        self.equiv = self.local = self.dcheck = self.regular = None
        if len(p.near_boxes):
            near_field(p.src, self.q, p.trg, t.src_start, t.src_end, t.trg_start, t.trg_end,
                       p.near_offsets, p.near_index, p.near_boxes, self.pot, self.grad,
                       p.workers, cost=p.near_cost, dipoles=self.dip, exact=False,
                       hess=self.hess, shift=p.near_shift, family=p.family, sym=p.near_sym,
                       coarse_exp=p.coarse_exp, mixed=p.mixed_near)
        if p.redo is not None:
            self._p2p_redo(p.redo)

    def _p2p_redo(self, r):
        """The near field of the boxes :meth:`Plan._rounding_redo` picked, in float64 from
        float64 offsets, added to the float32 results."""
        p = self.plan
        vdt = p.family.value_dtype(np.float64)

        def take(a, idx):
            return None if a is None else np.ascontiguousarray(a[..., idx], dtype=vdt)

        def zeros(a):
            return None if a is None else np.zeros(a.shape[:-1] + (len(r.trg_idx),), vdt)

        out = [zeros(a) for a in (self.pot, self.grad, self.hess)]
        near_field(r.src, take(self.q, r.src_idx), r.trg, r.src_start, r.src_end, r.trg_start,
                   r.trg_end, p.near_offsets, p.near_index, r.boxes, out[0], out[1],
                   p.workers, cost=r.cost, dipoles=take(self.dip, r.src_idx), exact=False,
                   hess=out[2], shift=r.shift, family=p.family, sym=None,
                   coarse_exp=p.coarse_exp, mixed=False)
        with np.errstate(over="ignore"):  # (an overflow is reported when unscaled)
            for a, b in zip((self.pot, self.grad, self.hess), out):
                if a is not None:
                    a[..., r.trg_idx] += b.astype(a.dtype)
