"""U, V, W, X lists against a brute-force construction from the definitions, list-size bounds,
and the FMM counting property (every target leaf meets every source leaf exactly once)."""
import numpy as np
import pytest

from aotfmm._geometry import TRANSFER_VECTORS
from aotfmm.lists import build_lists, colleagues
from aotfmm.tree import build_tree

from _helpers import brute_lists, csr_rows, geometry_relations, make_points

KINDS = ("uniform", "sphere", "gauss")

#: Largest possible rows in a 2:1-balanced octree (see check_bounds).
BOUNDS = {"u": 57, "v": 189, "w": 152, "x": 19}


def make_tree(kind, n_src, n_trg, ncrit, rng, same, threads=1):
    src = make_points(kind, n_src, rng)
    trg = src if same else make_points(kind, n_trg, rng)
    return build_tree(src, trg, ncrit, threads=threads)


def check_csr(lists, n_boxes):
    for name in "uvwx":
        off = getattr(lists, name + "_offsets")
        idx = getattr(lists, name + "_index")
        assert off.dtype == np.int64 and idx.dtype == np.int64
        assert off.shape == (n_boxes + 1,) and off[0] == 0 and off[-1] == idx.size
        assert np.all(np.diff(off) >= 0)
        assert idx.size == 0 or (idx.min() >= 0 and idx.max() < n_boxes)
    assert lists.v_transfer.shape == lists.v_index.shape and lists.v_transfer.dtype == np.int64


def check_bounds(lists):
    """U: itself + 6*4 + 12*2 + 8 finer neighbours; V: 6^3 - 3^3; W: 26 refined colleagues
    minus the 56 children touching B (6*4 + 12*6 + 8*7); X: 26 - 7 colleagues of the parent."""
    for name, bound in BOUNDS.items():
        sizes = np.diff(getattr(lists, name + "_offsets"))
        assert sizes.max(initial=0) <= bound, name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("same", [False, True])
@pytest.mark.parametrize("ncrit", [2, 5, 30])
def test_lists_equal_brute_force(kind, same, ncrit, rng):
    n = {2: 250, 5: 500, 30: 1500}[ncrit] // (2 if kind == "gauss" else 1)  # gauss is deep
    tree = make_tree(kind, n, n // 2, ncrit, rng, same)
    assert tree.n_boxes <= 8000  # brute force is O(n_boxes^2)
    lists = build_lists(tree)
    check_csr(lists, tree.n_boxes)
    expect = brute_lists(tree)
    for name in "uvwx":
        got = csr_rows(getattr(lists, name + "_offsets"), getattr(lists, name + "_index"))
        assert got == expect[name], name
    assert csr_rows(lists.v_offsets, lists.v_transfer) == expect["vt"]
    check_bounds(lists)


def test_transfer_vectors(rng):
    tree = make_tree("gauss", 4000, 0, 10, rng, True)
    lists = build_lists(tree)
    rows = np.repeat(np.arange(tree.n_boxes), np.diff(lists.v_offsets))
    t = tree.ijk[lists.v_index] - tree.ijk[rows]
    assert np.all(lists.v_transfer >= 0)
    assert np.array_equal(TRANSFER_VECTORS[lists.v_transfer], t)
    assert np.array_equal(tree.levels[lists.v_index], tree.levels[rows])


def test_colleagues_brute_force(rng):
    tree = make_tree("sphere", 1500, 0, 6, rng, True)
    col = colleagues(tree)
    adj, _ = geometry_relations(tree)
    same = tree.levels[:, None] == tree.levels[None, :]
    for b in range(tree.n_boxes):
        got = col[b][col[b] >= 0]
        assert sorted(got) == list(np.flatnonzero(adj[b] & same[b])), b
        d = tree.ijk[got] - tree.ijk[b]
        assert np.array_equal((d[:, 0] + 1) * 9 + (d[:, 1] + 1) * 3 + d[:, 2] + 1,
                              np.flatnonzero(col[b] >= 0))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("same", [False, True])
def test_every_pair_counted_once(kind, same, rng):
    """For every leaf B, U(B), W(B) and V, X of B and its ancestors reach each leaf once."""
    tree = make_tree(kind, 1500, 1000, 12, rng, same)
    lists = build_lists(tree)
    # leaves under a box form a contiguous run of the Morton-ordered leaves: locate it from the
    # boxes' cubes (anchor and size at the deepest level), independently of the lists
    deep = tree.n_levels - 1
    size = np.int64(1) << (deep - tree.levels)
    lo = tree.ijk * size[:, None]
    leaf_lo = lo[tree.leaves]
    pos = np.full(tree.n_boxes, -1)
    pos[tree.leaves] = np.arange(tree.leaves.size)
    inside = np.ones((tree.n_boxes, tree.leaves.size), dtype=bool)
    for a in range(3):
        inside &= (leaf_lo[None, :, a] >= lo[:, None, a])
        inside &= (leaf_lo[None, :, a] < lo[:, None, a] + size[:, None])
    first = inside.argmax(axis=1)
    last = first + inside.sum(axis=1)
    assert np.all(inside.sum(axis=1) == last - first)
    assert all(inside[b, first[b]:last[b]].all() for b in range(0, tree.n_boxes, 7))

    def row(name, b):
        off = getattr(lists, name + "_offsets")
        return getattr(lists, name + "_index")[off[b]:off[b + 1]]

    for b in tree.leaves:
        seen = np.zeros(tree.leaves.size + 1, dtype=np.int64)
        boxes = [row("w", b)]
        a = b
        while a >= 0:
            boxes.append(row("v", a))
            boxes.append(row("x", a))
            a = tree.parent[a]
        boxes.append(row("u", b))
        boxes = np.concatenate(boxes)
        np.add.at(seen, first[boxes], 1)
        np.add.at(seen, last[boxes], -1)
        assert np.all(np.cumsum(seen)[:-1] == 1), b


def cell_points(level, per_cell, rng, skip=None):
    """``per_cell`` random points inside every level-``level`` cell of [-1, 1]^3 (but ``skip``),
    plus the 8 corners of the cube so that the root cube is [-1, 1]^3 up to its padding."""
    m = 2 ** level
    ijk = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)
    if skip is not None:
        ijk = ijk[~(ijk == skip).all(axis=1)]
    u = (np.repeat(ijk, per_cell, axis=0) + rng.uniform(0.05, 0.95, (len(ijk) * per_cell, 3)))
    x = 2.0 * u / m - 1.0
    corners = np.array(np.meshgrid([-1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0])).reshape(3, -1).T
    return np.concatenate([x, corners])


def test_bounds_are_reached(rng):
    """The bounds are sharp. A leaf whose 26 colleagues are all refined once has |U| = 57 and
    |W| = 152; a refined box among coarse leaves has children with |X| = 19."""
    # level-4 cells hold 15 points (leaves for ncrit 40), except one empty level-3 cell
    x = cell_points(4, 15, rng)
    hole = ((np.floor((x + 1.0) * 4.0) == 3).all(axis=1)) & (np.abs(x) < 1).all(axis=1)
    x = np.ascontiguousarray(x[~hole].T)
    lists = build_lists(build_tree(x, x, 40))
    check_bounds(lists)
    for name in "uvw":
        assert np.diff(getattr(lists, name + "_offsets")).max() == BOUNDS[name], name
    # level-3 cells hold 20 points, one level-3 cell gets 30 more in each of its children
    x = np.concatenate([cell_points(3, 20, rng), (cell_points(1, 30, rng)[:-8] + 1.0) / 8.0])
    x = np.ascontiguousarray(x.T)
    lists = build_lists(build_tree(x, x, 40))
    check_bounds(lists)
    assert np.diff(lists.x_offsets).max() == BOUNDS["x"]


def test_threads_same_result(rng):
    tree = make_tree("gauss", 30000, 10000, 8, rng, False)
    a = build_lists(tree, threads=1)
    b = build_lists(tree, threads=2)
    for f in ("u_offsets", "u_index", "v_offsets", "v_index", "v_transfer", "w_offsets",
              "w_index", "x_offsets", "x_index"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f


@pytest.mark.parametrize("n", [0, 1, 9])
def test_small_trees(n, rng):
    x = make_points("uniform", n, rng)
    tree = build_tree(x, x, 1)
    lists = build_lists(tree)
    check_csr(lists, tree.n_boxes)
    expect = brute_lists(tree)
    for name in "uvwx":
        assert csr_rows(getattr(lists, name + "_offsets"),
                        getattr(lists, name + "_index")) == expect[name]


# ---------------------------------------------------------------------------------------------
# Property test: tiny point sets with duplicates and points on cell boundaries.

from hypothesis import given, settings, strategies as st  # noqa: E402

from _helpers import brute_tree  # noqa: E402

_coord = st.sampled_from([-1.0, -0.5, -0.25, 0.0, 0.125, 0.25, 0.3, 0.5, 0.75, 1.0])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(src=st.lists(st.tuples(_coord, _coord, _coord), max_size=40),
       trg=st.lists(st.tuples(_coord, _coord, _coord), max_size=20),
       same=st.booleans(), ncrit=st.integers(1, 4), max_level=st.integers(0, 6))
def test_property_tree_and_lists(src, trg, same, ncrit, max_level):
    src = np.ascontiguousarray(np.array(src, dtype=np.float64).reshape(-1, 3).T)
    trg = src if same else np.ascontiguousarray(np.array(trg, dtype=np.float64).reshape(-1, 3).T)
    tree = build_tree(src, trg, ncrit, max_level=max_level)
    expect = brute_tree(src, trg, same, ncrit, max_level, tree.root_center, tree.root_half)
    assert set(zip(tree.levels.tolist(), *tree.ijk.T.tolist())) == expect
    lists = build_lists(tree)
    check_csr(lists, tree.n_boxes)
    want = brute_lists(tree)
    for name in "uvwx":
        assert csr_rows(getattr(lists, name + "_offsets"),
                        getattr(lists, name + "_index")) == want[name], name
    check_bounds(lists)
