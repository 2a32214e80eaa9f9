"""The near field by Newton's third law (targets = sources, one charge vector): each pair of
distinct near leaves computed once and used for both (``yukawa_p2p_sym``, Laplace's
``p2p_sym``, the plan's ``near_sym`` split, per-thread output arrays in
``aotfmm._direct._p2p_sym``).

Checked against numpy sums written here: the compiled kernel on hand-made boxes (every flag,
a pair too close for the float32 1/r estimate, coincident points, ranges split over separate
outputs), the plan's split against its own near list (every pair exactly once), and whole FMM
runs on uniform, clustered, duplicated and far-offset points over 1/2/3 threads, float32 and
float64, at tolerances with and without the coarse exp.
"""
import zlib

import numpy as np
import pytest

import aotfmm
from aotfmm import _dispatch
from _helpers import reference


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _csr(lists):
    offsets = np.concatenate(([0], np.cumsum([len(x) for x in lists]))).astype(np.int64)
    index = np.array([s for x in lists for s in x], dtype=np.int64)
    return offsets, index


def kernel_problem(rng, dt, n_boxes=7):
    """Boxes of points local to their own origins (a 1/4 grid); box 5 empty. Box 0 holds a
    pair 1e-20 apart near its origin (too close for the float32 estimate of 1/r: the box must
    be redone exactly) and a point coincident with another; box 1's first point coincides with
    box 2's first point through the shift. Lists: every box with itself one-sided, pair (1, 3)
    one-sided both ways, pair (2, 4) one-sided one way only (a W/X-like pair), every other pair
    of distinct boxes symmetric from the lower box."""
    counts = rng.integers(5, 40, n_boxes)
    counts[5] = 0
    start = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    end = (start + counts).astype(np.int64)
    origins = rng.integers(-4, 4, (n_boxes, 3)) * 0.25
    x = rng.uniform(-0.125, 0.125, (3, counts.sum()))
    q = rng.standard_normal(counts.sum())
    x[:, start[0]] = 0.0
    x[:, start[0] + 1] = 1e-20 if dt == np.float64 else 1e-3  # float32: 1/r is exact anyway
    q[start[0]:start[0] + 2] = 0.0  # its 1/r ~ 6e19 would swamp every other term
    x[:, start[0] + 3] = x[:, start[0] + 2]
    x[:, start[2]] = [0.125, -0.0625, 0.03125]  # exact in float32 too, as is the shift
    x[:, start[1]] = x[:, start[2]] + (origins[2] - origins[1])
    one = [[b] for b in range(n_boxes)]
    sym = [[] for _ in range(n_boxes)]
    for b in range(n_boxes):
        for s in range(b + 1, n_boxes):
            if (b, s) == (1, 3):
                one[1].append(3)
                one[3].append(1)
            elif (b, s) == (2, 4):
                one[4].append(2)
            else:
                sym[b].append(s)
    o1, i1 = _csr(one)
    o2, i2 = _csr(sym)
    # a source y of box s is y - shift in box b's frame
    sh1 = np.array([origins[b] - origins[s] for b, x_ in enumerate(one) for s in x_])
    sh2 = np.array([origins[b] - origins[s] for b, x_ in enumerate(sym) for s in x_])
    world = x + np.repeat(origins, counts, axis=0).T  # every point in one frame
    pairs = {(b, s) for b, x_ in enumerate(one) for s in x_} | \
        {(b, s) for b, x_ in enumerate(sym) for s in x_} | \
        {(s, b) for b, x_ in enumerate(sym) for s in x_}
    args = dict(xyz=np.ascontiguousarray(x, dtype=dt), q=np.ascontiguousarray(q, dtype=dt),
                start=start, end=end, one_offsets=o1, one_index=i1,
                one_shift=np.ascontiguousarray(sh1, dtype=dt), sym_offsets=o2, sym_index=i2,
                sym_shift=np.ascontiguousarray(sh2, dtype=dt),
                boxes=rng.permutation(n_boxes).astype(np.int64), m_max=int(counts.sum()))
    return args, world, q, pairs, start, end


def kernel_reference(world, q, pairs, start, end, lam):
    pot = np.zeros(world.shape[1])
    grad = np.zeros((world.shape[1], 3))
    pts = world.T
    for b, s in pairs:
        if end[b] > start[b] and end[s] > start[s]:
            p, g = reference(pts[start[s]:end[s]], pts[start[b]:end[b]],
                             q[start[s]:end[s]], -lam)
            pot[start[b]:end[b]] += p
            grad[start[b]:end[b]] += g
    return pot, grad


#: (kernel, its parameter arguments, lam of the numpy reference exp(-lam r) / (4 pi r))
KERNELS = [("yukawa_p2p_sym", {"lam": 1.7}, 1.7), ("p2p_sym", {}, 0.0)]


@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("flags", [0, 4, 8, 12, 16, 20])
@pytest.mark.parametrize("kernel,params,lam", KERNELS, ids=["yukawa", "laplace"])
def test_kernel_matches_numpy_pairs(dt, flags, kernel, params, lam):
    rng = np.random.default_rng(11 + flags)
    args, world, q, pairs, start, end = kernel_problem(rng, dt)
    n = world.shape[1]
    ref_pot, ref_grad = kernel_reference(world.astype(dt).astype(np.float64),
                                         args["q"].astype(np.float64), pairs, start, end, lam)
    pot = np.zeros(n, dt)
    grad = np.zeros((3, n), dt)
    call = _dispatch.bind(kernel, dt, **args, flags=flags, **params, pot=pot, grad=grad)
    call(0, len(args["boxes"]))
    tol = 1e-11 if dt == np.float64 else 2e-5
    assert rel(pot, ref_pot) <= tol
    if flags & 4:
        assert rel(grad.T, ref_grad) <= tol
    else:
        assert not grad.any()


@pytest.mark.parametrize("flags", [0, 4])
@pytest.mark.parametrize("close", [None, 1e-9, 1e-14])
def test_mixed_kernel_matches_numpy_pairs(flags, close):
    """p2p_sym_mixed (float64 in and out, float32 pair terms): within 2e-6 of numpy on the
    boxes above, whose box 0 has a pair 1e-20 apart (redone in float64). ``close``: box 3
    also gets a charged pair that close, whose 1/r dominates: float32 pair terms would be off
    by 100 % or more, so the box must be redone exactly."""
    rng = np.random.default_rng(23 + flags)
    args, world, q, pairs, start, end = kernel_problem(rng, np.float64)
    if close is not None:
        i = start[3]
        args["xyz"][:, i + 1] = args["xyz"][:, i] + close * np.array([0.6, -0.48, 0.64])
        world[:, i + 1] = args["xyz"][:, i + 1] + (world[:, i] - args["xyz"][:, i])
    n = world.shape[1]
    ref_pot, ref_grad = kernel_reference(world, args["q"], pairs, start, end, 0.0)
    if close is not None:  # the pair's own term from its exact local difference (the world
        i, qq = start[3], args["q"]  # coordinates round a 1e-14 difference by ~2 %)
        dw = world[:, i] - world[:, i + 1]
        dl = args["xyz"][:, i] - args["xyz"][:, i + 1]
        for a, b, sgn in ((i, i + 1, 1.0), (i + 1, i, -1.0)):
            for d, w in ((sgn * dw, -1.0), (sgn * dl, 1.0)):
                r = np.linalg.norm(d)
                ref_pot[a] += w * qq[b] / (4 * np.pi * r)
                ref_grad[a] += w * -qq[b] * d / (4 * np.pi * r ** 3)
    pot, grad = np.zeros(n), np.zeros((3, n))
    _dispatch.bind("p2p_sym_mixed", np.float64, **args, flags=flags, pot=pot,
                   grad=grad)(0, len(args["boxes"]))
    assert rel(pot, ref_pot) <= 2e-6
    if flags & 4:
        assert rel(grad.T, ref_grad) <= 2e-6
    else:
        assert not grad.any()


@pytest.mark.parametrize("flags", [0, 4])
def test_mixed_kernel_keeps_float32_pair_terms(flags):
    """The mixed kernel's float32 path runs for potentials alone as with gradients: in the
    boxes that are not redone in float64 (box 0 holds a pair 1e-20 apart, box 1 a partner
    coincident through the shift) the results differ from numpy by what float32 pair terms
    give (~1e-8 of the field), not by float64 rounding (~1e-16). A loop that lost its count
    of the sources equal to the target (itself) would redo every box in float64: right, and
    2-3x slower. (Since 2026-12-05 the potential-only mode has loops of its own, without the
    gradient terms that nobody read: 7-9 % of a 1e6-point potential-only near field.)"""
    rng = np.random.default_rng(31 + flags)
    args, world, q, pairs, start, end = kernel_problem(rng, np.float64)
    n = world.shape[1]
    ref_pot, ref_grad = kernel_reference(world, args["q"], pairs, start, end, 0.0)
    pot, grad = np.zeros(n), np.zeros((3, n))
    _dispatch.bind("p2p_sym_mixed", np.float64, **args, flags=flags, pot=pot,
                   grad=grad)(0, len(args["boxes"]))
    fast = np.concatenate([np.arange(start[b], end[b]) for b in (3, 4, 6)])
    err = np.abs(pot - ref_pot)[fast].max() / np.abs(ref_pot).max()
    assert 1e-12 < err <= 2e-6
    if flags & 4:
        err = np.abs(grad.T - ref_grad)[fast].max() / np.abs(ref_grad).max()
        assert 1e-12 < err <= 2e-6
    else:
        assert not grad.any()


@pytest.mark.parametrize("flags", [0, 4])
@pytest.mark.parametrize("close", [None, 1e-9, 1e-14])
def test_one_sided_mixed_kernel_matches_numpy_pairs(flags, close):
    """p2p_mixed (one charge vector from each target's side, float32 pair terms: what
    separate targets use at eps >= 1e-5) within 2e-6 of numpy on the boxes above: coincident
    points in a box and across a shift, a pair 1e-20 apart, and optionally a charged pair
    ``close`` apart (redone exactly for its targets)."""
    rng = np.random.default_rng(60 + flags)
    a, world, q, pairs, start, end = kernel_problem(rng, np.float64)
    if close is not None:
        i = start[3]
        a["xyz"][:, i + 1] = a["xyz"][:, i] + close * np.array([0.6, -0.48, 0.64])
        world[:, i + 1] = a["xyz"][:, i + 1] + (world[:, i] - a["xyz"][:, i])
    n_boxes = len(start)
    lists = [[s for b2, s in sorted(pairs) if b2 == b] for b in range(n_boxes)]
    offsets, index = _csr(lists)
    origins = {b: world[:, start[b]] - a["xyz"][:, start[b]] for b in range(n_boxes)
               if end[b] > start[b]}
    shift = np.array([origins.get(b, np.zeros(3)) - origins.get(s, np.zeros(3))
                      for b, x_ in enumerate(lists) for s in x_])
    cum = np.concatenate(([0], np.cumsum((end - start)[index])))
    m_max = int(max(cum[offsets[1:]] - cum[offsets[:-1]]))
    n = world.shape[1]
    pot, grad = np.zeros(n), np.zeros((3, n))
    _dispatch.bind("p2p_mixed", np.float64, src_xyz=a["xyz"], charges=a["q"],
                   trg_xyz=a["xyz"], src_start=start, src_end=end, trg_start=start,
                   trg_end=end, list_offsets=offsets, list_index=index,
                   shift=np.ascontiguousarray(shift), boxes=np.arange(n_boxes, dtype=np.int64),
                   flags=flags, m_max=m_max, pot=pot, grad=grad)(0, n_boxes)
    ref_pot, ref_grad = kernel_reference(world, a["q"], pairs, start, end, 0.0)
    if close is not None:  # the pair's own term from its exact local difference
        i, qq = start[3], a["q"]
        dw, dl = world[:, i] - world[:, i + 1], a["xyz"][:, i] - a["xyz"][:, i + 1]
        for t, s_, sgn in ((i, i + 1, 1.0), (i + 1, i, -1.0)):
            for d, w in ((sgn * dw, -1.0), (sgn * dl, 1.0)):
                r = np.linalg.norm(d)
                ref_pot[t] += w * qq[s_] / (4 * np.pi * r)
                ref_grad[t] += w * -qq[s_] * d / (4 * np.pi * r ** 3)
    assert rel(pot, ref_pot) <= 2e-6
    if flags & 4:
        assert rel(grad.T, ref_grad) <= 2e-6
    else:
        assert not grad.any()


@pytest.mark.parametrize("kernel,params,lam", KERNELS, ids=["yukawa", "laplace"])
def test_kernel_ranges_into_separate_outputs_add_up(kernel, params, lam):
    """Ranges of boxes run into separate arrays (as threads do) sum to the whole."""
    rng = np.random.default_rng(5)
    args, world, q, pairs, start, end = kernel_problem(rng, np.float64)
    n = world.shape[1]
    ref_pot, ref_grad = kernel_reference(world, q, pairs, start, end, lam)
    total_p, total_g = np.zeros(n), np.zeros((3, n))
    for a, b in ((0, 2), (2, 3), (3, 7)):
        pot, grad = np.zeros(n), np.zeros((3, n))
        _dispatch.bind(kernel, np.float64, **args, flags=4, **params, pot=pot,
                       grad=grad)(a, b)
        total_p += pot
        total_g += grad
    assert rel(total_p, ref_pot) <= 1e-12
    assert rel(total_g.T, ref_grad) <= 1e-12


def clustered(rng, n):
    centres = rng.random((4, 3))
    return centres[rng.integers(0, 4, n)] + 0.02 * rng.standard_normal((n, 3))


@pytest.mark.parametrize("dist", ["uniform", "clustered"])
def test_plan_split_covers_every_near_pair_once(dist):
    rng = np.random.default_rng(3)
    x = rng.random((6000, 3)) if dist == "uniform" else clustered(rng, 6000)
    plan = aotfmm.Fmm(x, kernel=aotfmm.Yukawa(3.0), eps=1e-6, ncrit=40)._core
    sym = plan.near_sym
    assert sym is not None
    n_boxes = plan.n_boxes

    def pairs(offsets, index):
        rows = np.repeat(np.arange(n_boxes), np.diff(offsets))
        return list(zip(rows.tolist(), index.tolist()))

    near = pairs(plan.near_offsets, plan.near_index)
    one = pairs(sym.one_offsets, sym.one_index)
    two = pairs(sym.sym_offsets, sym.sym_index)
    assert all(b < s for b, s in two)
    covered = one + two + [(s, b) for b, s in two]
    assert sorted(covered) == sorted(near)
    assert len(set(covered)) == len(covered)
    # shifts: a symmetric entry's shift is its near-list entry's
    shift = {pr: plan.near_shift[k] for k, pr in enumerate(near)}
    for k, pr in enumerate(two):
        assert np.array_equal(sym.sym_shift[k], shift[pr])
    if dist == "clustered":  # adaptive: some pairs are listed one way only (W/X direct)
        assert any(b != s for b, s in one)


@pytest.mark.parametrize("kernel", [aotfmm.Yukawa(2.0), aotfmm.Laplace()], ids=repr)
def test_plan_has_no_split_for_separate_targets(kernel):
    rng = np.random.default_rng(4)
    x = rng.random((3000, 3))
    assert aotfmm.Fmm(x, rng.random((500, 3)), kernel=kernel)._core.near_sym is None
    assert aotfmm.Fmm(x, x.copy(), kernel=kernel)._core.near_sym is None
    assert aotfmm.Fmm(x, kernel=kernel)._core.near_sym is not None


def _points(kind, rng, n):
    if kind == "uniform":
        return rng.random((n, 3))
    if kind == "clustered":
        return clustered(rng, n)
    if kind == "duplicates":  # every point twice: coincident pairs inside and across leaves
        x = rng.random((n // 2, 3))
        return np.concatenate([x, x])[rng.permutation(n // 2 * 2)]
    if kind == "far":  # far from the origin: differences must be formed leaf-locally
        return 1e6 + rng.random((n, 3))
    if kind == "hair":  # pairs 1e-10 apart: too close for float32 pair terms (mixed: redone)
        x = rng.random((n // 2, 3))
        y = x + 1e-10 * rng.standard_normal(x.shape)
        return np.concatenate([x, y])[rng.permutation(n // 2 * 2)]
    raise ValueError(kind)


@pytest.mark.parametrize("kind,threads,dtype,eps,coarse", [
    ("uniform", 1, np.float64, 1e-6, True),
    ("uniform", 2, np.float64, 1e-6, False),
    ("uniform", 3, np.float64, 1e-8, True),
    pytest.param("uniform", 3, np.float64, 1e-9, False, marks=pytest.mark.slow),
    ("clustered", 2, np.float64, 1e-6, True),
    ("clustered", 3, np.float64, 1e-3, False),
    ("duplicates", 2, np.float64, 1e-6, True),
    ("far", 2, np.float64, 1e-6, True),
    ("uniform", 2, np.float32, 1e-4, True),
    ("clustered", 1, np.float32, 1e-3, True),
    ("laplace uniform", 2, np.float64, 1e-6, True),
    ("laplace clustered", 3, np.float64, 1e-8, True),
    ("laplace duplicates", 1, np.float64, 1e-6, True),
    ("laplace far", 2, np.float64, 1e-6, True),
    ("laplace clustered", 2, np.float32, 1e-4, True),
    # float64 at eps >= MIXED_NEAR_EPS: pair terms in float32 (p2p_sym_mixed; duplicates
    # skipped exactly, hairs 1e-10 apart redo their boxes in float64)
    ("laplace uniform", 2, np.float64, 1e-5, True),
    ("laplace clustered", 1, np.float64, 1e-4, True),
    ("laplace duplicates", 3, np.float64, 1e-5, True),
    ("laplace far", 2, np.float64, 1e-5, True),
    ("laplace hair", 2, np.float64, 1e-5, True),
])
def test_fmm_with_newton_third_law_meets_eps(kind, threads, dtype, eps, coarse, monkeypatch):
    """coarse False: the full-accuracy exp at a tolerance that would allow the coarse one
    (Yukawa; "laplace ...": the Laplace kernel, which has no exp)."""
    if not coarse:
        monkeypatch.setattr(_dispatch, "COARSE_EXP_EPS", 1.0)
    rng = np.random.default_rng(zlib.crc32(f"{kind} {threads} {eps}".encode()))
    n = 8000
    laplace = kind.startswith("laplace ")
    x = _points(kind.split()[-1], rng, n)
    lam = 0.0 if laplace else 4.0 / (x.max(axis=0) - x.min(axis=0)).max()
    q = rng.standard_normal(len(x))
    f = aotfmm.Fmm(x, kernel=aotfmm.Laplace() if laplace else aotfmm.Yukawa(lam), eps=eps,
                   threads=threads, dtype=dtype, ncrit=64)
    assert f._core.near_sym is not None
    assert f._core.coarse_exp == coarse
    assert f._core.mixed_near == (dtype == np.float64 and eps >= _dispatch.MIXED_NEAR_EPS)
    pot, grad = f.evaluate(q, gradient=True)
    pot_only = f.evaluate(q)
    idx = rng.choice(len(x), 300, replace=False)
    ref_pot, ref_grad = reference(x, x[idx], q, -lam)
    assert rel(pot[idx], ref_pot) <= eps
    assert rel(grad[idx], ref_grad) <= eps
    assert rel(pot_only[idx], ref_pot) <= eps


@pytest.mark.parametrize("flags", [1, 5, 17, 21])
def test_one_sided_kernel_with_coarse_exp_matches_numpy(flags):
    """yukawa_p2p for one charge vector (separate targets use it), flag 16: the coarse exp."""
    rng = np.random.default_rng(40 + flags)
    a, world, q, pairs, start, end = kernel_problem(rng, np.float64)
    n_boxes = len(start)
    lists = [[s for b2, s in sorted(pairs) if b2 == b] for b in range(n_boxes)]
    offsets, index = _csr(lists)
    origins = {}  # the shifts from the kernel problem: y_local + origin_s = world
    for b in range(n_boxes):
        if end[b] > start[b]:
            origins[b] = world[:, start[b]] - a["xyz"][:, start[b]]
    shift = np.array([origins.get(b, np.zeros(3)) - origins.get(s, np.zeros(3))
                      for b, x_ in enumerate(lists) for s in x_])
    cum = np.concatenate(([0], np.cumsum((end - start)[index])))
    m_max = int(max(cum[offsets[1:]] - cum[offsets[:-1]]))
    n = world.shape[1]
    pot, grad = np.zeros((1, n)), np.zeros((1, 3, n))
    _dispatch.bind("yukawa_p2p", np.float64, src_xyz=a["xyz"], q=a["q"].reshape(1, n),
                   dip=np.zeros((1, 1, 1)), trg_xyz=a["xyz"], src_start=start, src_end=end,
                   trg_start=start, trg_end=end, list_offsets=offsets, list_index=index,
                   shift=np.ascontiguousarray(shift), boxes=np.arange(n_boxes, dtype=np.int64),
                   m_max=m_max, flags=flags, lam=1.3, pot=pot, grad=grad)(0, n_boxes)
    ref_pot, ref_grad = kernel_reference(world, q, pairs, start, end, 1.3)
    assert rel(pot[0], ref_pot) <= 1e-11
    if flags & 4:
        assert rel(grad[0].T, ref_grad) <= 1e-11


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("kernel", [aotfmm.Yukawa(5.0), aotfmm.Laplace()], ids=repr)
def test_same_input_gives_the_same_bits_every_time(threads, kernel):
    """Per-thread sums are added in a fixed order (not in whichever order threads finished)."""
    rng = np.random.default_rng(8)
    x = clustered(rng, 20000)
    q = rng.standard_normal(len(x))
    f = aotfmm.Fmm(x, kernel=kernel, eps=1e-6, threads=threads, ncrit=64)
    first = f.evaluate(q, gradient=True)
    for _ in range(4):
        again = f.evaluate(q, gradient=True)
        assert np.array_equal(again[0], first[0]) and np.array_equal(again[1], first[1])


@pytest.mark.parametrize("kernel", [aotfmm.Laplace(), aotfmm.Yukawa(3.0)], ids=repr)
def test_plan_with_targets_a_prefix_of_the_sources(kernel):
    """aotfmm.mpi's local plan: targets are the first m sources (a rank's own points), the
    rest (ghosts beside them, tight surface-like clusters far off) are sources only. Boxes of
    those get no targets; pairs among the targets' boxes still go by Newton's third law."""
    rng = np.random.default_rng(12)
    own = rng.random((6000, 3))
    ghosts = rng.random((2500, 3)) * [0.25, 1, 1] + [1.0, 0, 0]
    far = np.concatenate([c + 0.01 * rng.standard_normal((300, 3))
                          for c in ([3.0, 0.5, 0.5], [0.5, 3.0, 0.5])])
    x = np.concatenate([own, ghosts, far])
    q = rng.standard_normal(len(x))
    f = aotfmm.Fmm(x, kernel=kernel, eps=1e-6, ncrit=64, threads=2,
                   _target_prefix=len(own))
    plan = f._core
    t = plan.tree
    assert plan.near_sym is not None
    assert ((t.trg_end == t.trg_start) & (t.src_end > t.src_start)).any()
    pot, grad = f.evaluate(q, gradient=True)
    idx = rng.choice(len(own), 300, replace=False)
    lam = 0.0 if kernel == aotfmm.Laplace() else 3.0
    ref_pot, ref_grad = reference(x, x[idx], q, -lam)
    assert rel(pot[idx], ref_pot) <= 1e-6
    assert rel(grad[idx], ref_grad) <= 1e-6


def test_target_prefix_is_checked():
    x = np.random.default_rng(13).random((300, 3))
    for bad in (-1, 301):
        with pytest.raises(ValueError, match="_target_prefix must be in"):
            aotfmm.Fmm(x, _target_prefix=bad)
    for bad in (2.5, "3", True):
        with pytest.raises(TypeError, match="_target_prefix must be an integer"):
            aotfmm.Fmm(x, _target_prefix=bad)
    with pytest.raises(ValueError, match="without targets"):
        aotfmm.Fmm(x, x[:10], _target_prefix=3)


@pytest.mark.parametrize("p,eps,mixed", [(None, None, True), (10, None, False),
                                         (10, 1e-6, False), (7, None, True), (None, 5e-7, False)])
def test_float32_pair_terms_only_where_the_order_is_no_more_accurate(p, eps, mixed):
    """The default eps (1e-6) takes float32 pair terms with the order it chooses (p = 8, worst
    1.3e-7; expected_eps 3e-7 with the float32 terms); an explicit higher p keeps float64 ones,
    whatever eps says, so it reaches what its order does (expected_eps): p = 10 measured
    ~1e-11 here, ~2e-8 with float32 terms."""
    rng = np.random.default_rng(77)
    x = rng.random((6000, 3))
    q = rng.random(len(x))
    f = aotfmm.Fmm(x, p=p, eps=eps)
    assert f._core.mixed_near == mixed
    # expected_eps counts the float32 terms (3e-7 at best) on top of the order's error
    order = aotfmm.evaluate.order_error(f.p)
    assert f.expected_eps == (max(order, _dispatch.MIXED_NEAR_ERROR) if mixed else order)
    pot = f.evaluate(q)
    idx = rng.choice(len(x), 300, replace=False)
    err = rel(pot[idx], reference(x, x[idx], q, 0.0)[0])
    assert err <= (f.eps if mixed else 3 * f.expected_eps)


@pytest.mark.parametrize("kind,eps,threads", [
    ("uniform", 1e-5, 2), ("clustered", 1e-4, 1), ("far", 1e-5, 3), ("hair", 1e-5, 2),
    ("coincident", 1e-5, 2)])
def test_separate_targets_with_float32_pair_terms_meet_eps(kind, eps, threads):
    """Separate targets, float64, eps >= MIXED_NEAR_EPS: the one-sided near field takes its pair
    terms in float32 (p2p_mixed). "coincident": half the targets are copies of sources (their
    own pair contributes 0); "hair": targets 1e-10 from sources (redone in float64)."""
    rng = np.random.default_rng(zlib.crc32(f"sep {kind} {eps}".encode()))
    n, m = 8000, 3000
    x = _points("clustered" if kind == "clustered" else
                "far" if kind == "far" else "uniform", rng, n)
    y = _points("clustered" if kind == "clustered" else
                "far" if kind == "far" else "uniform", rng, m)
    if kind == "hair":
        y[: m // 2] = x[: m // 2] + 1e-10 * rng.standard_normal((m // 2, 3))
    if kind == "coincident":
        y[: m // 2] = x[rng.choice(n, m // 2, replace=False)]
    q = rng.standard_normal(n)
    f = aotfmm.Fmm(x, y, eps=eps, threads=threads, ncrit=64)
    assert f._core.near_sym is None and f._core.mixed_near
    pot, grad = f.evaluate(q, gradient=True)
    idx = rng.choice(m, 300, replace=False)
    ref_pot, ref_grad = reference(x, y[idx], q, 0.0)
    assert rel(pot[idx], ref_pot) <= eps
    assert rel(grad[idx], ref_grad) <= eps
    assert rel(f.evaluate(q)[idx], ref_pot) <= eps


@pytest.mark.parametrize("k,separate", [(1, False), (1, True), (3, False), (5, True)])
def test_float32_pair_terms_near_their_cutoff(k, separate):
    """Hostile test 2026-12-03: a pair just above the float32 terms' cutoff (then 1/8 of the
    leaf's grid) whose split coordinates rounded apart on every axis had a gradient error of
    1.6e-6 of the field of |q| at eps 1e-6 (p2p_mixed, p2p_sym_mixed and p2p_multi_mixed
    alike); the cutoff is now one grid step (kernels/p2p.py MIXED_CUT). The pair's positions
    are the tester's, among 20000 uniform points; numpy reference at the pair."""
    h = float.fromhex
    b = [h("0x1.a558b1cfabb26p-2"), h("0x1.33cd1f74118cfp-1"), h("0x1.0f97841bcfb54p-1")]
    p = [h("0x1.a559da12bbea3p-2"), h("0x1.33cdb39529a6cp-1"), h("0x1.0f98183f07bf2p-1")]
    x = np.concatenate([np.random.default_rng(5).random((20000, 3)), [b, p]])
    q = np.ones((len(x), k)) if k > 1 else np.ones(len(x))
    y = np.array([b, p]) if separate else None
    f = aotfmm.Fmm(x, y, eps=1e-6, threads=2)
    assert f._core.mixed_near
    pot, grad = f.evaluate(q, gradient=True)
    trg = np.array([b, p])
    pot, grad = (pot[-2:], grad[-2:]) if not separate else (pot, grad)
    d = trg[:, None, :] - x[None, :, :]
    r = np.sqrt((d * d).sum(-1))
    inv = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0), 0.0)
    ref_grad = -np.einsum("ijk,ij->ik", d, inv ** 3) / (4 * np.pi)
    bar_grad = (inv ** 2).sum(1) / (4 * np.pi)
    g = grad if k == 1 else grad[:, 0]
    assert np.linalg.norm(g - ref_grad) <= 1e-6 * np.linalg.norm(bar_grad) / 3


def _record_kernels(monkeypatch):
    """The names of the kernels bound from now on (a list that fills as they are)."""
    names = []
    bind = _dispatch.bind
    monkeypatch.setattr(_dispatch, "bind", lambda name, *a, **kw: (names.append(name),
                                                                     bind(name, *a, **kw))[1])
    return names


@pytest.mark.parametrize("kind,k,separate,threads", [
    ("uniform", 6, False, 2), ("duplicates", 3, False, 1), ("hair", 4, True, 3),
    ("far", 5, False, 2), ("clustered", 9, True, 2), ("uniform", 1, True, 1)])
def test_k_charge_vectors_with_float32_pair_terms_meet_eps(kind, k, separate, threads,
                                                           monkeypatch):
    """k charge vectors on a float64 plan at eps 1e-6: p2p_multi_mixed (float32 geometry per
    chunk swept by every density, four at a time and the rest one by one; a target with a
    too-close source redone in float64 for every density) against numpy, with and without
    gradients; each column within eps of its own single-vector run."""
    names = _record_kernels(monkeypatch)
    rng = np.random.default_rng(zlib.crc32(f"multi {kind} {k}".encode()))
    n, m = 8000, 2000
    x = _points(kind, rng, n)
    y = None
    if separate:  # targets among the sources (half of them 1e-10 from one for "hair")
        y = x[rng.choice(n, m, replace=False)] + 1e-3 * rng.standard_normal((m, 3))
        if kind == "hair":
            y[: m // 2] = x[: m // 2] + 1e-10 * rng.standard_normal((m // 2, 3))
    q = rng.standard_normal((n, k))
    eps = 1e-6
    f = aotfmm.Fmm(x, y, eps=eps, threads=threads, ncrit=64)
    assert f._core.mixed_near
    pot, grad = f.evaluate(q, gradient=True)
    pot_only = f.evaluate(q)
    assert ("p2p_multi_mixed" if k > 1 else "p2p_mixed") in names
    trg = x if y is None else y
    idx = rng.choice(len(trg), 200, replace=False)
    for col in range(k):
        ref_pot, ref_grad = reference(x, trg[idx], q[:, col], 0.0)
        assert rel(pot[idx, col], ref_pot) <= eps
        assert rel(grad[idx, col], ref_grad) <= eps
        assert rel(pot_only[idx, col], ref_pot) <= eps
    one_pot, one_grad = f.evaluate(np.ascontiguousarray(q[:, k - 1]), gradient=True)
    assert rel(pot[:, k - 1], one_pot) <= eps and rel(grad[:, k - 1], one_grad) <= eps


def _magnitude_fields(src, trg, q, d):
    """The contract's field of the magnitudes at ``trg`` (README): per column sums of
    |q| |G| + |d| |grad G| (potentials) and |q| |grad G| + |d| ||grad grad G|| (gradients; the
    Hessian of 1/r has norm 2/r^3), 1/(4 pi) included; coincident pairs left out. (k, nt)."""
    x = trg[:, None, :] - src[None, :, :]
    r = np.sqrt((x * x).sum(-1))
    inv = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0), 0.0) / (4 * np.pi)
    r1 = inv * 4 * np.pi
    pot, grad = 0.0, 0.0
    if q is not None:
        pot = pot + (inv @ abs(q)).T
        grad = grad + ((inv * r1) @ abs(q)).T
    if d is not None:
        a = np.linalg.norm(d, axis=2)
        pot = pot + ((inv * r1) @ a).T
        grad = grad + ((2 * inv * r1 * r1) @ a).T
    return pot, grad


@pytest.mark.parametrize("kind,k,separate,threads,charges", [
    ("uniform", 1, False, 2, False), ("duplicates", 3, False, 1, False),
    ("hair", 4, True, 3, False), ("far", 5, False, 2, True), ("clustered", 2, True, 2, False),
    ("duplicates", 1, True, 2, True), ("uniform", 8, False, 2, True)])
def test_dipole_vectors_with_float32_pair_terms_meet_eps(kind, k, separate, threads, charges,
                                                         monkeypatch):
    """k dipole vectors (``charges``: and k charge vectors in the same call) on a float64 plan
    at eps 1e-6: p2p_multi_mixed's dipole sweeps (float32 (x - y)/r^3, 1/r^3 and 3 (x - y)/r^2
    per chunk; potentials four densities a sweep, gradients one by one; a target with a
    too-close source redone in float64) against numpy, with and without gradients, and each
    column within eps of its own single run. Measured against the contract (error <= eps
    times the field of the magnitudes, README): dipoles' potentials cancel. Separate targets:
    half of them 1e-10 from a source ("hair") or on one ("duplicates")."""
    from conftest import density_reference
    names = _record_kernels(monkeypatch)
    rng = np.random.default_rng(zlib.crc32(f"dipoles {kind} {k} {separate}".encode()))
    n, m = 8000, 2000
    x = _points(kind, rng, n)
    y = None
    if separate:
        y = x[rng.choice(n, m, replace=False)] + 1e-3 * rng.standard_normal((m, 3))
        if kind == "hair":
            y[: m // 2] = x[: m // 2] + 1e-10 * rng.standard_normal((m // 2, 3))
        if kind == "duplicates":
            y[: m // 2] = x[rng.choice(n, m // 2, replace=False)]
    d = rng.standard_normal((n, k, 3))
    q = rng.standard_normal((n, k)) if charges else None
    args = dict(dipoles=d[:, 0] if k == 1 else d, charges=None if q is None else
                (q[:, 0] if k == 1 else q))
    eps = 1e-6
    f = aotfmm.Fmm(x, y, eps=eps, threads=threads, ncrit=64, dipoles=True)
    assert f._core.mixed_near
    pot, grad = f.evaluate(**args, gradient=True)
    pot_only = f.evaluate(**args)
    assert "p2p_multi_mixed" in names
    if k == 1:
        pot, grad, pot_only = pot[:, None], grad[:, None], pot_only[:, None]
    trg = x if y is None else y
    idx = rng.choice(len(trg), 200, replace=False)
    ref_pot, ref_grad = density_reference(x, q, d, trg[idx])
    bar_pot, bar_grad = _magnitude_fields(x, trg[idx], q, d)
    for col in range(k):
        bound_p = eps * np.linalg.norm(bar_pot[col])
        assert np.linalg.norm(pot[idx, col] - ref_pot[col]) <= bound_p
        assert np.linalg.norm(pot_only[idx, col] - ref_pot[col]) <= bound_p
        assert np.linalg.norm(grad[idx, col] - ref_grad[col]) <= eps * np.linalg.norm(
            bar_grad[col])
    last = dict(dipoles=np.ascontiguousarray(d[:, k - 1]),
                charges=None if q is None else np.ascontiguousarray(q[:, k - 1]))
    one_pot, one_grad = f.evaluate(**last, gradient=True)
    assert np.linalg.norm(pot[:, k - 1] - one_pot) <= eps * np.linalg.norm(one_pot)
    assert np.linalg.norm(grad[:, k - 1] - one_grad) <= eps * np.linalg.norm(one_grad)


@pytest.mark.parametrize("k", [1, 2])
def test_close_dipole_pairs_past_float32_range_are_redone(k):
    """Hostile test 2026-12-05: 500 clusters of 8 points 1-3e-8 around vertices of the finest
    grid (level 19), each with a partner 5e-11 from one of them, dipoles along the pair,
    ncrit=1 (the points' own spacing sets each leaf's split grid, so the pair is above the
    float32 cut). The one-dipole loop formed 3 (d . (x - y)) / r^5 as 3 s / r^2 (~3 |d| / r^4),
    which passed float32's range: inf, not NaN, so the target was not redone, and evaluate
    raised "the gradient overflows float64" (float64 pair terms: finite). Now no 1/r^4
    intermediate, and a target whose float32 sums are not finite is redone in float64.
    Against numpy under the contract; k = 2 takes the chunked sweeps."""
    from conftest import density_reference
    rng = np.random.default_rng(0)
    v = (2 * rng.integers(-2 ** 16, 2 ** 16, (500, 3)) + 1) * 2.0 ** -18
    octs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
    u = np.array([1.0, 2.0, 2.0]) / 3.0
    pts = [np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])]
    for c in v:
        off = octs * (1e-8 + 2e-8 * rng.random((8, 3)))
        pts += [c + off, (c + off[7] + 5e-11 * u)[None]]
    x = np.vstack(pts)
    d = np.stack([np.tile(u, (len(x), 1)), np.tile(-2 * u, (len(x), 1))], 1)[:, :k]
    eps = 1e-6
    f = aotfmm.Fmm(x, eps=eps, dipoles=True, ncrit=1)
    assert f._core.mixed_near
    pot, grad = f.evaluate(dipoles=d[:, 0] if k == 1 else d, gradient=True)
    if k == 1:
        pot, grad = pot[:, None], grad[:, None]
    ref_pot, ref_grad = density_reference(x, None, d, x)
    bar_pot, bar_grad = _magnitude_fields(x, x, None, d)
    for col in range(k):
        assert np.linalg.norm(pot[:, col] - ref_pot[col]) <= eps * np.linalg.norm(bar_pot[col])
        assert np.linalg.norm(grad[:, col] - ref_grad[col]) <= eps * np.linalg.norm(
            bar_grad[col])


@pytest.mark.parametrize("ncrit,eps,far", [(400, 1e-5, False), (400, 1e-6, False),
                                           (9000, 1e-5, True), (9000, 1e-6, True),
                                           (9000, 1e-6, False)])
def test_float32_pair_terms_on_a_cancelling_lattice_keep_the_contract(ncrit, eps, far):
    """A rock-salt lattice (+-1 charges: the potential cancels to a few % of the field of the
    magnitudes) is where float32 pair terms are weakest; with one leaf (ncrit 9000) each target
    sums 8000 terms. The contract (error <= eps times the field of |q|) holds with a 100x
    margin at eps 1e-5, 10x at 1e-6; with one leaf so does the plain relative error at 1e-5
    (here 1.2e-6 / 3.3e-6; 2-9e-6 at 3.9e4-2e5 points; the far field of cancelling charges can
    exceed it at smaller leaves, in float64 alike, as the README's contract says). ``far``: 66
    points around it (one in the lattice's level-1 box, so that it splits and the lattice is a
    level-2 leaf; 64 in a level-1 leaf across the root; one setting the root's size) give the
    plan a far field (W and X lists); without them (a single leaf) every interaction is direct
    and the plan keeps float64 pair terms: exact to rounding."""
    g = np.arange(20.0)
    x = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    q = (-1.0) ** x.sum(1)
    if far:
        rng = np.random.default_rng(9)
        x = np.concatenate([x, [[35.0, 35.0, 35.0]], rng.random((64, 3)) * 4 + [70, 2, 2],
                            [[79.0, 79.0, 79.0]]])
        q = np.concatenate([q, rng.choice([-1.0, 1.0], 66)])
        ncrit = 8000
    f = aotfmm.Fmm(x, eps=eps, ncrit=ncrit)
    assert (f.stats["leaves"] > 1) == (ncrit < 8000 or far)
    mixed = ncrit < 8000 or far
    assert f._core.mixed_near == mixed
    pot, grad = f.evaluate(q, gradient=True)
    idx = np.random.default_rng(4).choice(8000, 300, replace=False)
    ref_pot, ref_grad = reference(x, x[idx], q, 0.0)
    abs_pot = reference(x, x[idx], np.abs(q), 0.0)[0]  # the field of |q|: potential ...
    d = x[idx][:, None, :] - x[None, :, :]
    r = np.sqrt((d * d).sum(-1))
    # ... and gradient: sums of |grad G| = 1 / (4 pi r^2)
    bar_grad = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0) ** 2, 0.0).sum(1) / (4 * np.pi)
    err_p = np.linalg.norm(pot[idx] - ref_pot)
    err_g = np.linalg.norm(grad[idx] - ref_grad)
    margin = 100 if eps >= 1e-5 else 10
    assert err_p <= eps * np.linalg.norm(abs_pot) / margin
    assert err_g <= eps * np.linalg.norm(bar_grad) / margin
    if not mixed:
        assert err_p <= 1e-12 * np.linalg.norm(ref_pot)
        assert err_g <= 1e-12 * np.linalg.norm(ref_grad)
    elif far and eps >= 1e-5:
        assert err_p <= eps * np.linalg.norm(ref_pot) and err_g <= eps * np.linalg.norm(ref_grad)
