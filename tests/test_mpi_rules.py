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
        got = {}
        for box in map(tuple, np.argwhere(points).tolist()):
            got[box] = ("point",)
        for lev, ijk in far.items():
            f = 1 << (fine - lev)
            for a in map(tuple, ijk.tolist()):
                for d in itertools.product(range(f), repeat=3):
                    box = tuple(a[c] * f + d[c] for c in range(3))
                    if s_cnt[box] > 0:
                        assert box not in got, (box, "in two classes")
                        got[box] = ("far", lev, a)
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
