"""aotfmm.mpi's ghost rule (:func:`aotfmm.mpi.point_boxes`) and its grid helpers against a
brute-force classification written here, box by box (no MPI needed)."""
import itertools

import numpy as np
import pytest

from aotfmm import mpi


def _brute(t_occ, s_cnt, level, ns):
    """Per fine source box: ('point',) or ('far', lev, ancestor ijk). A source box's field
    reaches a rank as the equivalent density of its ancestor at the coarsest level l >= 2
    where that ancestor is not adjacent (Chebyshev distance > 1) to the ancestor of any
    target box; if there is none it is a point source, and so is such an ancestor below the
    coarse level ``level`` that holds at most ``ns`` sources."""
    n = t_occ.shape[0]
    fine = n.bit_length() - 1
    targets = np.argwhere(t_occ)
    src = np.argwhere(s_cnt > 0)
    out = {}
    for box in map(tuple, src.tolist()):
        kind = ("point",)
        for lev in range(2, fine + 1):
            sh = fine - lev
            a = np.array(box) >> sh
            if len(targets) and (np.abs((targets >> sh) - a).max(axis=1) <= 1).any():
                continue
            f = 1 << sh
            cnt = s_cnt[a[0] * f:(a[0] + 1) * f, a[1] * f:(a[1] + 1) * f,
                        a[2] * f:(a[2] + 1) * f].sum()
            if not (lev > level and cnt <= ns):
                kind = ("far", lev, tuple(a.tolist()))
            break
        out[box] = kind
    return out


def _classes(points, far, s_cnt):
    """fine source box -> 'point' or (lev, ijk) of the far box holding it; fails if a box is
    in two classes or a source box in none."""
    fine = points.shape[0].bit_length() - 1
    got = {tuple(b): "point" for b in np.argwhere(points).tolist()}
    for lev, ijk in far.items():
        f = 1 << (fine - lev)
        for a in map(tuple, ijk.tolist()):
            for d in itertools.product(range(f), repeat=3):
                box = tuple(a[c] * f + d[c] for c in range(3))
                if s_cnt[box] > 0:
                    assert box not in got, (box, "in two classes")
                    got[box] = (lev, a)
    assert set(got) == set(map(tuple, np.argwhere(s_cnt > 0).tolist()))
    return got


@pytest.mark.parametrize("fine,level,seed", [(3, 2, 0), (4, 2, 1), (4, 3, 2), (4, 4, 3),
                                              (5, 2, 4), (3, 3, 5)])
def test_point_boxes_match_a_box_by_box_classification(fine, level, seed):
    rng = np.random.default_rng(seed)
    n = 1 << fine
    for trial in range(3):
        # clustered sources (counts from 0 to ~60) and a few target boxes
        s_cnt = rng.poisson(rng.gamma(0.5, 8.0, (n, n, n)))
        t_occ = rng.random((n, n, n)) < (0.02 if trial else 0.2)
        ns = int(rng.integers(1, 200))
        points, far = mpi.point_boxes(t_occ, s_cnt, level, ns)
        expect = _brute(t_occ, s_cnt, level, ns)
        got = {box: ("point",) if c == "point" else ("far",) + c
               for box, c in _classes(points, far, s_cnt).items()}
        assert got == expect
        assert not (points & (s_cnt == 0)).any()  # no empty box is asked for


def test_point_boxes_without_targets_take_nothing_near():
    s_cnt = np.ones((8, 8, 8), dtype=np.int64)
    points, far = mpi.point_boxes(np.zeros((8, 8, 8), dtype=bool), s_cnt, 2, 10)
    assert not points.any()


def test_dilate_and_coarsen_against_loops():
    rng = np.random.default_rng(7)
    for n in (1, 2, 4, 8):
        occ = rng.random((n, n, n)) < 0.1
        want = np.zeros_like(occ)
        for i, j, k in np.argwhere(occ):
            want[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2, max(k - 1, 0):k + 2] = True
        assert (mpi._dilate(occ) == want).all()
        if n > 1:
            cnt = rng.integers(0, 9, (n, n, n))
            h = n // 2
            want_c = np.array([[[cnt[2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2].sum()
                                 for k in range(h)] for j in range(h)] for i in range(h)])
            assert (mpi._coarsen(cnt) == want_c).all()
            want_o = np.array([[[occ[2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2].any()
                                 for k in range(h)] for j in range(h)] for i in range(h)])
            assert (mpi._coarsen(occ) == want_o).all()


def test_owner_grid_places_codes_at_their_boxes():
    from aotfmm.morton import interleave
    for level in (1, 2, 3):
        n = 1 << level
        ijk = np.argwhere(np.ones((n, n, n), dtype=bool))
        codes = interleave(ijk)
        by_code = np.empty(n ** 3, dtype=np.int64)
        by_code[codes] = np.arange(n ** 3)  # the value of code c: the row of its box
        grid = mpi.owner_grid(by_code, level)
        assert (grid[ijk[:, 0], ijk[:, 1], ijk[:, 2]] == np.arange(n ** 3)).all()


def test_dilate_by_against_loops():
    rng = np.random.default_rng(11)
    for n in (1, 4, 8):
        occ = rng.random((n, n, n)) < 0.05
        for j in (0, 1, 2, 5):
            want = np.zeros_like(occ)
            for i, k, m in np.argwhere(occ):
                want[max(i - j, 0):i + j + 1, max(k - j, 0):k + j + 1,
                     max(m - j, 0):m + j + 1] = True
            assert (mpi._dilate_by(occ, j) == want).all(), (n, j)


@pytest.mark.parametrize("lam_w,eps,seed", [(1.5, 1e-6, 0), (3.0, 1e-6, 1), (2.0, 1e-9, 2),
                                            (8.0, 1e-3, 3)])
def test_decaying_far_boxes_near_lonely_targets_are_split(lam_w, eps, seed):
    """point_boxes with a decay rate (lam_w: per fine box width): every source box is still
    in exactly one class, and every far box wider than _DECAY_LH_MAX decay lengths meets the
    screen at every target box with no source in or next to it, checked box by box here: N
    g((j - 1)) exp(_DECAY_AMPLIFY lam h) <= _SCREEN eps g(sqrt(3) (k + 1)), g(r) =
    exp(-lam_w r) / r, j the Chebyshev distance (fine boxes) from the target box to the far
    box, k to the nearest source box. Without such target boxes nothing changes."""
    rng = np.random.default_rng(seed)
    fine, level, ns = 4, 2, 5
    n = 1 << fine
    s_cnt = np.zeros((n, n, n), dtype=np.int64)
    s_cnt[:6, :6, :6] = rng.poisson(3.0, (6, 6, 6))       # a cluster in one corner
    t_occ = np.zeros((n, n, n), dtype=bool)
    t_occ[rng.integers(9, n, 5), rng.integers(0, n, 5), rng.integers(0, n, 5)] = True
    notes = {}
    points, far = mpi.point_boxes(t_occ, s_cnt, level, ns, (lam_w, eps), notes)
    _classes(points, far, s_cnt)
    assert "unresolved" not in notes
    src = np.argwhere(s_cnt > 0)
    lonely = [t for t in np.argwhere(t_occ) if np.abs(src - t).max(axis=1).min() > 1]
    assert lonely
    big_n = s_cnt.sum()

    def log_g(r):
        return -lam_w * r - np.log(r)

    def violations(far):
        bad = 0
        for lev, ijk in far.items():
            h = 0.5 * (1 << (fine - lev))
            if lam_w * h <= mpi._DECAY_LH_MAX:
                continue
            f = 1 << (fine - lev)
            for a in ijk:
                for t in lonely:
                    k = np.abs(src - t).max(axis=1).min()
                    lo, hi = a * f, a * f + f - 1
                    j = np.maximum(np.maximum(lo - t, t - hi), 0).max()
                    lhs = np.log(big_n) + log_g(max(j - 1, 1e-3)) \
                        + mpi._DECAY_AMPLIFY * lam_w * h
                    bad += lhs > np.log(mpi._SCREEN * eps) + log_g(np.sqrt(3) * (k + 1)) + 1e-9
        return bad

    assert violations(far) == 0
    assert violations(mpi.point_boxes(t_occ, s_cnt, level, ns)[1]) > 0  # what it fixes
    # no lonely target box: the same as without a decay rate
    t_near = np.zeros_like(t_occ)
    t_near[tuple(src[0])] = t_near[tuple(src[-1])] = True
    p1, f1 = mpi.point_boxes(t_near, s_cnt, level, ns, (lam_w, eps))
    p0, f0 = mpi.point_boxes(t_near, s_cnt, level, ns)
    assert (p1 == p0).all() and _classes(p1, f1, s_cnt) == _classes(p0, f0, s_cnt)
