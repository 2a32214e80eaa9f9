"""Tree invariants, Morton keys, degenerate inputs, and equality with a brute-force build."""
import numpy as np
import pytest

from aotfmm import morton
from aotfmm import tree as tree_module
from aotfmm._geometry import OCTANT_SIGNS
from aotfmm.tree import MAX_LEVEL, build_tree

from _helpers import brute_tree, cell_coords, make_points

KINDS = ("uniform", "sphere", "gauss")


def build(kind, n_src, n_trg, ncrit, rng, same=False, max_level=None, threads=1):
    src = make_points(kind, n_src, rng)
    trg = src if same else make_points(kind, n_trg, rng)
    return src, trg, build_tree(src, trg, ncrit, max_level=max_level, threads=threads)


def check_tree(tree, src, trg, ncrit):
    """Every structural invariant the integrator relies on."""
    nb = tree.n_boxes
    lo = tree.level_offsets
    assert lo[0] == 0 and lo[-1] == nb and len(lo) == tree.n_levels + 1
    assert np.all(np.diff(lo) > 0)
    assert np.array_equal(tree.levels, np.repeat(np.arange(tree.n_levels), np.diff(lo)))
    for arr, shape in ((tree.keys, (nb,)), (tree.parent, (nb,)), (tree.children, (nb, 8)),
                       (tree.centers, (nb, 3)), (tree.ijk, (nb, 3)), (tree.src_start, (nb,)),
                       (tree.src_end, (nb,)), (tree.trg_start, (nb,)), (tree.trg_end, (nb,))):
        assert arr.shape == shape and arr.flags.c_contiguous
        assert arr.dtype == (np.float64 if arr is tree.centers else np.int64)
    assert tree.is_leaf.dtype == bool

    # Morton order within each level, keys unique
    codes = morton.interleave(tree.ijk)
    for lev in range(tree.n_levels):
        assert np.all(np.diff(codes[lo[lev]:lo[lev + 1]]) > 0)
    assert np.unique(tree.keys).size == nb

    # keys agree with ijk/levels
    assert np.array_equal(morton.deinterleave(codes), tree.ijk)
    assert np.array_equal(morton.code_to_key(codes, tree.levels), tree.keys)

    # complete tree: parent/children consistent, children in octant order, geometry
    assert tree.parent[0] == -1 and np.all(tree.parent[1:] >= 0)
    internal = ~tree.is_leaf
    assert np.all(tree.children[tree.is_leaf] == -1)
    assert np.all(tree.children[internal] >= 0)
    assert np.all(np.diff(tree.children[internal], axis=1) == 1)  # consecutive
    kids = tree.children[internal]
    assert np.array_equal(tree.parent[kids], np.repeat(np.flatnonzero(internal), 8).reshape(-1, 8))
    assert np.array_equal(tree.levels[kids], tree.levels[internal][:, None] + 1 + 0 * kids)
    h = tree.root_half / 2.0 ** tree.levels
    assert np.array_equal(tree.half_widths, h)
    expect = (tree.centers[internal][:, None, :]
              + 0.5 * h[internal][:, None, None] * OCTANT_SIGNS[None, :, :])
    np.testing.assert_allclose(tree.centers[kids], expect, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tree.centers[0], tree.root_center, atol=0)
    octant = (OCTANT_SIGNS + 1) // 2  # children in octant order: 2 ijk + octant bits
    assert np.array_equal(tree.ijk[kids], 2 * tree.ijk[internal][:, None, :] + octant[None])
    assert np.array_equal(np.sort(tree.leaves), np.flatnonzero(tree.is_leaf))
    assert np.all(np.diff(tree.keys[tree.leaves]) > 0)  # depth-first (Morton) order of leaves

    # points: permutations, leaf ranges disjoint and covering in leaf order, inside the cube
    same = tree.same_points
    sets = [("src", src, tree.src_perm, tree.src_start, tree.src_end)]
    if not same:
        sets.append(("trg", trg, tree.trg_perm, tree.trg_start, tree.trg_end))
    else:
        assert tree.trg_perm is tree.src_perm or np.array_equal(tree.trg_perm, tree.src_perm)
    for name, xyz, perm, start, end in sets:
        n = xyz.shape[1]
        assert np.array_equal(np.sort(perm), np.arange(n)), name
        assert start[0] == 0 and end[0] == n
        lv = tree.leaves
        assert start[lv[0]] == 0 and end[lv[-1]] == n
        assert np.array_equal(start[lv[1:]], end[lv[:-1]])
        # internal boxes cover their children
        assert np.array_equal(start[internal], start[kids[:, 0]])
        assert np.array_equal(end[internal], end[kids[:, 7]])
        owner = np.repeat(lv, end[lv] - start[lv])
        pts = xyz[:, perm]
        tol = 1e-12
        assert np.all(np.abs(pts.T - tree.centers[owner]) <= h[owner][:, None] * (1 + tol)), name
        # the root cube holds everything, with no point on its far faces
        assert np.all(pts.T < tree.root_center + tree.root_half)

    # refinement criterion
    count = tree.src_end - tree.src_start
    if not same:
        count = count + tree.trg_end - tree.trg_start
    over = tree.is_leaf & (count > ncrit) & (tree.levels < tree.max_level)
    for b in np.flatnonzero(over):  # allowed only if all its points share one deepest cell
        cells = [cell_coords(x[:, p[s[b]:e[b]]], tree.root_center, tree.root_half,
                             tree.max_level) for _, x, p, s, e in sets]
        cells = np.concatenate(cells)
        assert (cells == cells[0]).all(), b
    assert np.all(tree.levels <= tree.max_level)


def check_balance(tree):
    """Adjacent leaves (face, edge or corner) differ by at most one level (integer geometry)."""
    lv = tree.leaves
    lev = tree.levels[lv]
    deep = tree.n_levels - 1
    size = np.int64(1) << (deep - lev)
    lo = tree.ijk[lv] * size[:, None]
    hi = lo + size[:, None]
    # sweep in blocks to bound memory
    for a0 in range(0, len(lv), 1024):
        sl = slice(a0, a0 + 1024)
        adj = np.ones((len(lo[sl]), len(lv)), dtype=bool)
        for a in range(3):
            adj &= (lo[sl, None, a] <= hi[None, :, a]) & (lo[None, :, a] <= hi[sl, None, a])
        diff = np.abs(lev[sl, None] - lev[None, :])
        assert not np.any(adj & (diff > 1))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ncrit", [1, 8, 40])
@pytest.mark.parametrize("same", [False, True])
def test_tree_invariants(kind, ncrit, same, rng):
    n = 3000 if ncrit > 1 else 600
    src, trg, tree = build(kind, n, n // 2 + 1, ncrit, rng, same=same)
    check_tree(tree, src, trg, ncrit)
    check_balance(tree)
    assert tree.same_points == same


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("same", [False, True])
@pytest.mark.parametrize("ncrit", [3, 20])
def test_tree_equals_brute_force(kind, same, ncrit, rng):
    src, trg, tree = build(kind, 400, 300, ncrit, rng, same=same)
    expect = brute_tree(src, trg, same, ncrit, tree.max_level, tree.root_center, tree.root_half)
    got = set(zip(tree.levels.tolist(), *tree.ijk.T.tolist()))
    assert got == expect


def test_threads_same_result(rng):
    src = make_points("gauss", 20000, rng)
    trg = make_points("uniform", 5000, rng)
    a = build_tree(src, trg, 16, threads=1)
    b = build_tree(src, trg, 16, threads=2)
    for f in ("keys", "children", "src_perm", "trg_perm", "src_start", "trg_end"):
        assert np.array_equal(getattr(a, f), getattr(b, f))


def test_identical_sets_count_once(rng):
    x = make_points("uniform", 100, rng)
    one = build_tree(x, x, 100)
    assert one.n_boxes == 1  # 100 points, counted once
    two = build_tree(x, x.copy(), 100)
    assert two.n_boxes > 1  # 200 points
    assert not two.same_points


def test_max_level_respected(rng):
    x = make_points("gauss", 3000, rng)
    tree = build_tree(x, x, 1, max_level=4)
    assert tree.n_levels == 5
    check_tree(tree, x, x, 1)
    check_balance(tree)


@pytest.mark.parametrize("n_src,n_trg", [(0, 0), (0, 5), (5, 0), (1, 0), (1, 1), (2, 0)])
def test_tiny_inputs(n_src, n_trg, rng):
    src = make_points("uniform", n_src, rng)
    trg = make_points("uniform", n_trg, rng)
    for ncrit in (1, 2):
        tree = build_tree(src, trg, ncrit)
        check_tree(tree, src, trg, ncrit)
        check_balance(tree)


def test_two_points_one_each(rng):
    src = np.ascontiguousarray([[0.1], [0.2], [0.3]])
    trg = np.ascontiguousarray([[-0.5], [0.7], [0.0]])
    tree = build_tree(src, trg, 1)
    check_tree(tree, src, trg, 1)
    assert tree.n_levels == 2  # one split separates them


@pytest.mark.parametrize("same", [False, True])
def test_coincident_points_terminate(same, rng):
    x = np.ascontiguousarray(np.full((3, 5000), 0.25))
    tree = build_tree(x, x if same else x.copy(), 10)
    assert tree.n_boxes == 1
    check_tree(tree, x, x, 10)
    # coincident cluster plus a few other points: refines only until the cluster is alone
    y = np.ascontiguousarray(np.concatenate([x, make_points("uniform", 50, rng)], axis=1))
    tree = build_tree(y, y, 10)
    check_tree(tree, y, y, 10)
    check_balance(tree)
    assert tree.n_levels <= 8
    # nearly coincident (different below the deepest cell): stops at max_level
    z = y.copy()
    z[0, :5000] += np.linspace(0, 1e-12, 5000)
    z = np.ascontiguousarray(z)
    tree = build_tree(z, z, 10)
    check_tree(tree, z, z, 10)
    check_balance(tree)
    assert tree.n_levels <= MAX_LEVEL + 1


def test_bad_parameters(rng):
    x = make_points("uniform", 10, rng)
    for ncrit in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            build_tree(x, x, ncrit)
    for ml in (-1, MAX_LEVEL + 1, 2.0):
        with pytest.raises(ValueError):
            build_tree(x, x, 4, max_level=ml)


# ---------------------------------------------------------------------------------------------
# Morton keys

def test_key_round_trip(rng):
    for lev in (0, 1, 5, 13, MAX_LEVEL):
        ijk = rng.integers(0, 2 ** lev, (500, 3))
        codes = morton.interleave(ijk)
        assert np.array_equal(morton.deinterleave(codes), ijk)
        keys = morton.code_to_key(codes, lev)
        assert np.all(keys >= 0) and np.all(keys & (2 ** morton.LEVEL_BITS - 1) == lev)
        assert np.unique(keys).size == np.unique(codes).size


def test_key_bit_layout():
    # x lowest: octant c = x | y << 1 | z << 2 (matches _geometry.OCTANT_SIGNS)
    for c in range(8):
        ijk = (OCTANT_SIGNS[c] + 1) // 2
        assert morton.interleave(ijk[None])[0] == c
    # a parent precedes its children and they follow in octant order (depth-first order)
    code = morton.interleave([[3, 1, 2]])[0]
    key = morton.code_to_key(code, 2)
    kid_codes = (code << 3) | np.arange(8)
    kids = morton.code_to_key(kid_codes, 3)
    assert key < kids[0] and np.all(np.diff(kids) > 0)
    assert np.array_equal(morton.deinterleave(kid_codes),
                          2 * np.array([3, 1, 2]) + (OCTANT_SIGNS + 1) // 2)


def test_point_codes(rng):
    x = make_points("uniform", 1000, rng)
    center, half = np.zeros(3), 1.0 + 1e-6
    codes = morton.point_codes(x, center - half, half)
    assert np.array_equal(morton.deinterleave(codes), cell_coords(x, center, half))


@pytest.mark.parametrize("same", [True, False])
def test_permutation_is_the_stable_sort(rng, same):
    """The points' order is the stable sort of their Morton codes: exact duplicates (equal
    codes) keep their input order (the sort is an unstable SIMD sort plus a tie fix-up)."""
    base = rng.random((3, 400))
    pick = rng.integers(0, 400, 5000)                     # ~12 copies of each point
    src = np.ascontiguousarray(base[:, pick])
    trg = src if same else np.ascontiguousarray(base[:, rng.integers(0, 400, 3000)])
    tree = build_tree(src, trg, 20)
    for xyz, perm in ((src, tree.src_perm), (trg, tree.trg_perm)):
        codes = morton.point_codes(xyz, tree.root_center - tree.root_half, tree.root_half)
        assert np.array_equal(perm, np.argsort(codes, kind="stable"))
        # independent of the codes: copies of one point appear in increasing input index
        key = np.unique(xyz.T, axis=0, return_inverse=True)[1].ravel()[perm]
        for g in np.unique(key)[:50]:
            assert np.all(np.diff(perm[key == g]) > 0)


@pytest.mark.parametrize("n", [0, 1, 2, 64, 65, 5000, 70000])
def test_stable_argsort_of_codes_that_share_their_top_bits(rng, n):
    """tree._stable_argsort (a value sort of each code's top bits packed with its index, then
    the runs those bits leave tied ordered by full code) against numpy's stable argsort: codes
    with distinct low bits under shared top bits (a few runs, and most of them: the argsort
    takes over), exact duplicates, random codes, the largest code."""
    top = 1 << (3 * MAX_LEVEL)
    cases = [rng.integers(0, top, n), np.full(n, top - 1), rng.integers(0, 5, n)]
    base = int(rng.integers(0, top)) >> 30 << 30
    clustered = rng.integers(0, top, n)
    clustered[:n // 10] = base + rng.integers(0, 1 << 12, n // 10)  # 10 % share top bits
    cases.append(rng.permutation(clustered))
    cases.append(base + rng.integers(0, 1 << 12, n))  # all share them
    for codes in cases:
        codes = codes.astype(np.int64)
        assert np.array_equal(tree_module._stable_argsort(codes),
                              np.argsort(codes, kind="stable"))
