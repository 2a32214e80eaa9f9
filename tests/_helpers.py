"""Shared test helpers: point distributions and brute-force references (plain numpy/python)."""
import numpy as np


def make_points(kind, n, rng):
    """(3, n) float64 C-contiguous points in [-1, 1]^3 of a named distribution."""
    if kind == "uniform":
        x = rng.uniform(-1.0, 1.0, (3, n))
    elif kind == "sphere":
        x = rng.standard_normal((3, n))
        x /= np.linalg.norm(x, axis=0)
    elif kind == "gauss":  # a few tight clusters of different sizes
        centers = rng.uniform(-0.7, 0.7, (3, 4))
        which = rng.integers(0, 4, n)
        sigma = np.array([0.2, 0.05, 0.01, 0.002])[which]
        x = centers[:, which] + sigma * rng.standard_normal((3, n))
        x = np.clip(x, -1.0, 1.0)
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(x)


# ---------------------------------------------------------------------------------------------
# Brute-force tree: recursive refinement with python sets, then naive 2:1 balancing.

def cell_coords(xyz, center, half, max_level=19):
    """Integer cell coordinates (n, 3) of points at level max_level (same rounding as the tree)."""
    scale = float(2 ** 19) / (2.0 * half)
    u = (xyz.T - (center - half)) * scale
    v = np.clip(np.floor(u), 0, 2 ** 19 - 1).astype(np.int64)
    return v >> (19 - max_level)


def brute_tree(src, trg, same, ncrit, max_level, center, half):
    """Set of boxes (level, i, j, k) of the minimal 2:1-balanced complete refinement."""
    pts = [cell_coords(src, center, half)]
    if not same:
        pts.append(cell_coords(trg, center, half))
    pts = np.concatenate(pts)
    boxes = {(0, 0, 0, 0)}
    internal = set()
    todo = [(0, (0, 0, 0), np.arange(len(pts)))]
    while todo:
        lev, ijk, idx = todo.pop()
        if lev >= max_level or len(idx) <= ncrit:
            continue
        fine = pts[idx] >> (19 - max_level)
        if (fine == fine[0]).all():
            continue
        internal.add((lev,) + ijk)
        cell = pts[idx] >> (19 - lev - 1)
        for c in range(8):
            cijk = tuple(2 * ijk[a] + ((c >> a) & 1) for a in range(3))
            boxes.add((lev + 1,) + cijk)
            sel = idx[(cell == cijk).all(axis=1)]
            todo.append((lev + 1, cijk, sel))
    # naive balance: split any leaf that touches a leaf two or more levels finer
    while True:
        leaves = sorted(b for b in boxes if b not in internal)
        arr = np.array(leaves, dtype=np.int64)
        lev = arr[:, 0]
        deep = lev.max()
        size = np.int64(1) << (deep - lev)
        lo = arr[:, 1:] * size[:, None]
        hi = lo + size[:, None]
        adj = np.ones((len(arr), len(arr)), dtype=bool)
        for a in range(3):
            adj &= (lo[:, None, a] <= hi[None, :, a]) & (lo[None, :, a] <= hi[:, None, a])
        bad = adj & (lev[None, :] - lev[:, None] >= 2)   # row i coarser than column j
        split = np.flatnonzero(bad.any(axis=1))
        if split.size == 0:
            return boxes
        for i in split:
            b = leaves[i]
            internal.add(b)
            for c in range(8):
                boxes.add((b[0] + 1,) + tuple(2 * b[1 + a] + ((c >> a) & 1) for a in range(3)))


# ---------------------------------------------------------------------------------------------
# Brute-force lists from box geometry (centers and half-widths), O(n_boxes^2).

def geometry_relations(tree):
    """adj[i, j]: closed cubes of boxes i, j intersect; desc[i, j]: j strictly inside i."""
    c = tree.centers
    h = tree.root_half / 2.0 ** tree.levels
    tol = 1e-9 * tree.root_half
    n = len(h)
    adj = np.ones((n, n), dtype=bool)
    desc = tree.levels[None, :] > tree.levels[:, None]
    for a in range(3):
        d = np.abs(c[:, None, a] - c[None, :, a])
        adj &= d <= h[:, None] + h[None, :] + tol
        desc &= d <= h[:, None] - h[None, :] + tol
    return adj, desc


def brute_lists(tree):
    """Dict of python lists of sorted rows for 'u', 'v', 'w', 'x' and 'vt' (transfer indices)."""
    from aotfmm._geometry import transfer_index

    adj, desc = geometry_relations(tree)
    n = tree.n_boxes
    lev = tree.levels
    leaf = tree.is_leaf
    same_level = lev[:, None] == lev[None, :]
    coll = adj & same_level
    rows = {k: [[] for _ in range(n)] for k in "uvwx"}
    rows["vt"] = [[] for _ in range(n)]
    h = tree.root_half / 2.0 ** lev
    for b in range(n):
        if leaf[b]:
            rows["u"][b] = list(np.flatnonzero(adj[b] & leaf))
            others = np.flatnonzero(coll[b])
            others = others[others != b]
            cand = desc[others].any(axis=0) & ~adj[b]
            cand_idx = np.flatnonzero(cand)
            ok = [j for j in cand_idx if adj[b, tree.parent[j]]]
            rows["w"][b] = ok
        if lev[b] >= 2:
            pcoll = np.flatnonzero(coll[tree.parent[b]])
            cand = np.isin(tree.parent, pcoll) & ~adj[b]
            v = np.flatnonzero(cand)
            rows["v"][b] = list(v)
            t = np.rint((tree.centers[v] - tree.centers[b]) / (2 * h[b])).astype(np.int64)
            rows["vt"][b] = list(transfer_index(t))
    for b in range(n):
        for a in rows["w"][b]:
            rows["x"][a].append(b)
    return rows


def csr_rows(offsets, index):
    return [list(index[offsets[b]:offsets[b + 1]]) for b in range(len(offsets) - 1)]


INV4PI = 1.0 / (4.0 * np.pi)


def reference(src, trg, q, s):
    """Potential and gradient at ``trg`` of charges q at ``src`` for G = exp(s r) / (4 pi r)
    (s = -lam: Yukawa, s = i kappa: Helmholtz), coincident points left out; numpy, in blocks."""
    pot = np.zeros(len(trg), dtype=np.result_type(q, s))
    grad = np.zeros((len(trg), 3), dtype=pot.dtype)
    for a in range(0, len(trg), 256):
        d = trg[a:a + 256, None, :] - src[None, :, :]
        r = np.sqrt((d * d).sum(-1))
        far = r > 0
        rs = np.where(far, r, 1.0)
        g = np.where(far, np.exp(s * rs) * INV4PI / rs, 0.0)
        dg = np.where(far, g * (s * rs - 1.0) / (rs * rs), 0.0)  # (dG/dr) / r
        pot[a:a + 256] = g @ q
        grad[a:a + 256] = np.einsum("ij,ijk,j->ik", dg, d, q)
    return pot, grad
