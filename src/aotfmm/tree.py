"""The adaptive, 2:1-balanced, complete linear octree over sources and targets.

Pipeline (:func:`build_tree`): root cube -> Morton codes of the points (compiled kernel) ->
sort -> top-down refinement (a box splits while it holds more than ``ncrit`` points) -> 2:1
balance (one fine-to-coarse sweep) -> flat arrays of boxes, level by level, Morton order within
a level, and the point range of every box.

The tree is *complete*: every internal box has all 8 children (some may be empty leaves).
Points are sorted by their finest-level Morton code, which orders them by the Morton order of
their leaves, so every box (leaf or not) owns one contiguous range of sorted points.
Key layout and codes: :mod:`aotfmm.morton`.
"""
import dataclasses
import numbers
import time

import numpy as np

from . import _threads
from .morton import MAX_LEVEL, code_to_key, deinterleave, interleave, point_codes

__all__ = ["Octree", "build_tree", "MAX_LEVEL"]

_i8 = np.int64


@dataclasses.dataclass(frozen=True, eq=False)
class Octree:
    """A complete linear octree as flat arrays (boxes level by level, Morton order per level).

    Attributes
    ----------
    root_center : ndarray of shape (3,), float64
    root_half : float
        Half-width of the root cube; a box of level l has half-width ``root_half / 2**l``.
    n_levels : int
        Levels 0 .. n_levels - 1 hold boxes.
    level_offsets : ndarray of shape (n_levels + 1,), int64
        Boxes of level l are ``range(level_offsets[l], level_offsets[l + 1])``.
    keys, levels, parent : ndarray of shape (n_boxes,), int64
        Morton keys (:mod:`aotfmm.morton`), levels, parent box index (-1 for the root).
    children : ndarray of shape (n_boxes, 8), int64
        Child box indices in octant order (``_geometry.OCTANT_SIGNS``); rows of -1 for leaves.
        The children of a box are consecutive indices.
    is_leaf : ndarray of shape (n_boxes,), bool
    leaves : ndarray of shape (n_leaves,), int64
        Box indices of the leaves in Morton (depth-first) order: the order of the sorted points.
    centers : ndarray of shape (n_boxes, 3), float64
    ijk : ndarray of shape (n_boxes, 3), int64
        Integer coordinates of each box on its own level, in [0, 2**level).
    src_perm, trg_perm : ndarray of shape (n_src,), (n_trg,), int64
        Sorted position k holds the caller's point ``perm[k]``.
    src_start, src_end, trg_start, trg_end : ndarray of shape (n_boxes,), int64
        Range of each box in the sorted points.
    same_points : bool
        Sources and targets were the same object (then the trg_* arrays are the src_* arrays).
    ncrit, max_level : int
        The refinement parameters used.
    timings : dict
        Seconds spent per phase: keys, sort, refine, balance, assemble.
    """
    root_center: np.ndarray
    root_half: float
    n_levels: int
    level_offsets: np.ndarray
    keys: np.ndarray
    levels: np.ndarray
    parent: np.ndarray
    children: np.ndarray
    is_leaf: np.ndarray
    leaves: np.ndarray
    centers: np.ndarray
    ijk: np.ndarray
    src_perm: np.ndarray
    trg_perm: np.ndarray
    src_start: np.ndarray
    src_end: np.ndarray
    trg_start: np.ndarray
    trg_end: np.ndarray
    same_points: bool
    ncrit: int
    max_level: int
    timings: dict

    @property
    def n_boxes(self):
        return int(self.level_offsets[-1])

    @property
    def n_leaves(self):
        return int(self.leaves.size)

    @property
    def half_widths(self):
        """(n_boxes,) float64 half-width of every box: ``root_half / 2**level`` (exact)."""
        return self.root_half / 2.0 ** self.levels


def _root_cube(src_xyz, trg_xyz):
    """Center and half-width of the (slightly padded) smallest cube holding all points."""
    parts = [a for a in (src_xyz, trg_xyz) if a.shape[1] > 0]
    if not parts:
        return np.zeros(3), 1.0
    lo = np.min([a.min(axis=1) for a in parts], axis=0)
    hi = np.max([a.max(axis=1) for a in parts], axis=0)
    center = 0.5 * (lo + hi)
    half = 0.5 * float((hi - lo).max())
    # Pad so no point lies on the far faces; a floor keeps the scale finite for coincident points.
    half = max(half * (1.0 + 2.0 ** -20), 2.0 ** -40)
    return center, half


def _sorted_codes(xyz, origin, half, workers):
    codes = point_codes(xyz, origin, half, workers)
    t0 = time.perf_counter()
    perm = _stable_argsort(codes)
    return codes[perm], perm, time.perf_counter() - t0


#: bits of a finest-level code (3 per level)
_CODE_BITS = 3 * MAX_LEVEL
#: above this share of points in runs that the packed sort leaves unresolved, the argsort
_PACKED_TIES_MAX = 0.25


def _stable_argsort(codes):
    """The stable argsort of ``codes`` (n,) int64 in [0, 2^57).

    Each code's top bits and its index are packed into one int64 (63 bits in all) and those
    sorted as values, which numpy does with its SIMD sort: 10-15 ms for 1e6 points where its
    argsort (until 2026-12-05; introsort, ties then put back in input order) took 30-50 ms
    (2-core Intel Xeon, AVX-512). Codes that agree in the kept bits (points in one cell of
    level ~14 at 1e6 points, ~12 at 1e8: rare but for tight clusters) are then ordered by
    their full codes, and where they are many, the argsort does it all."""
    codes = np.asarray(codes, dtype=np.int64)  # (the packing needs 64 bits)
    n = len(codes)
    b = max(1, (n - 1).bit_length())  # index bits
    drop = max(0, _CODE_BITS - (63 - b))
    packed = (codes >> drop) << b
    packed |= np.arange(n, dtype=np.int64)
    packed.sort()
    perm = packed & ((1 << b) - 1)
    if drop == 0:  # the whole codes: equal ones are in input order, as they should be
        return perm
    run = _tie_runs(packed >> b)
    if len(run) > _PACKED_TIES_MAX * n:
        perm = np.argsort(codes)
        run = _tie_runs(codes[perm])
    # (runs are contiguous and in order of their top bits, which the full codes keep: sorting
    # their union by (code, index) reorders each run in place)
    if len(run):
        perm[run] = perm[run][np.lexsort((perm[run], codes[perm[run]]))]
    return perm


def _tie_runs(keys):
    """Positions of the sorted ``keys`` that equal a neighbour (runs of ties, in order)."""
    tie = keys[1:] == keys[:-1]
    return np.flatnonzero(np.concatenate(([False], tie)) | np.concatenate((tie, [False])))


def _refine(s_codes, t_codes, ncrit, max_level):
    """Top-down refinement; returns the sorted level codes of the split boxes of each level."""
    internal = []
    codes = np.zeros(1, dtype=_i8)
    sets = [c for c in (s_codes, t_codes) if c is not None]
    lo = [np.zeros(1, dtype=_i8) for _ in sets]
    hi = [np.full(1, c.size, dtype=_i8) for c in sets]
    # Points whose codes agree above this shift can never be separated within max_level.
    sep_shift = 3 * (MAX_LEVEL - max_level)
    big = np.iinfo(_i8).max
    for level in range(max_level):
        count = sum(h - l for l, h in zip(lo, hi))
        split = count > ncrit
        if split.any():
            first = np.full(codes.size, big, dtype=_i8)
            last = np.full(codes.size, -1, dtype=_i8)
            for c, l, h in zip(sets, lo, hi):
                nonempty = h > l
                if c.size:
                    first = np.where(nonempty, np.minimum(first, c[np.minimum(l, c.size - 1)]),
                                     first)
                    last = np.where(nonempty, np.maximum(last, c[np.maximum(h - 1, 0)]), last)
            split &= (first >> sep_shift) != (last >> sep_shift)
        if not split.any():
            break
        parents = codes[split]
        internal.append(parents)
        codes = ((parents[:, None] << 3) | np.arange(8, dtype=_i8)).ravel()
        child_lo = codes << (3 * (MAX_LEVEL - level - 1))
        for k, c in enumerate(sets):
            start = np.searchsorted(c, child_lo).reshape(-1, 8)
            end = np.empty_like(start)
            end[:, :7] = start[:, 1:]
            end[:, 7] = hi[k][split]
            lo[k], hi[k] = start.ravel(), end.ravel()
    return internal


def _balance(internal):
    """Make the refined tree 2:1 balanced, in place on the per-level split-box codes.

    For a complete octree, 2:1 balance (adjacent leaves differ by at most one level) holds iff
    every colleague of every internal box exists, i.e. the parents of the 27 same-level
    neighbours of each internal box are internal too. Requirements only flow to coarser levels,
    so one sweep from the finest level up suffices and yields the smallest balanced refinement.
    """
    for m in range(len(internal) - 1, 0, -1):
        ijk = deinterleave(internal[m])
        p = ijk >> 1
        # the parents of the neighbours at offsets -1, 0, 1 are p and p -1 (even) or p + 1 (odd)
        alt = p + 2 * (ijk & 1) - 1
        n_parent_side = _i8(1) << (m - 1)
        cand = []
        for c in range(8):
            q = np.where(((c >> np.arange(3)) & 1).astype(bool), alt, p)
            q = q[((q >= 0) & (q < n_parent_side)).all(axis=1)]
            cand.append(interleave(q))
        internal[m - 1] = np.union1d(internal[m - 1], np.concatenate(cand))
    return internal


def build_tree(src_xyz, trg_xyz, ncrit, max_level=None, threads=1, *, workers=None,
               snap=None):
    """Build the adaptive, 2:1-balanced, complete octree of sources and targets.

    Internal: the caller has validated the points.

    Parameters
    ----------
    src_xyz : ndarray of shape (3, n_src), float64, C-contiguous
    trg_xyz : ndarray of shape (3, n_trg), float64, C-contiguous
        May be the very object ``src_xyz``: then every point counts once.
    ncrit : int >= 1
        A box is split while it holds more than ``ncrit`` points (sources plus targets), unless
        it is at ``max_level`` or all its points fall in one cell of level ``max_level``.
    max_level : int, optional
        Deepest level, at most :data:`MAX_LEVEL` (the default).
    threads : int or None
        Threads for the point codes and sorts (None: ``_threads.default_threads()``).
    workers : :class:`aotfmm._threads.Workers`, optional
        Workers to run them on instead (``threads`` then None or their count).
    snap : callable, optional
        ``snap(half) -> half' >= half``: enlarges the root cube (same centre), e.g. so that a
        kernel parameter times the box sizes falls on a grid of cached operator sets.

    Returns
    -------
    Octree
    """
    if isinstance(ncrit, bool) or not isinstance(ncrit, numbers.Integral) or ncrit < 1:
        raise ValueError(f"ncrit must be an integer >= 1, got {ncrit!r}")
    max_level = MAX_LEVEL if max_level is None else max_level
    if (isinstance(max_level, bool) or not isinstance(max_level, numbers.Integral)
            or not 0 <= max_level <= MAX_LEVEL):
        raise ValueError(f"max_level must be an integer in [0, {MAX_LEVEL}], got {max_level!r}")
    ncrit, max_level = int(ncrit), int(max_level)
    workers = _threads.as_workers(None if workers is not None else threads, workers)
    same = trg_xyz is src_xyz
    timings = {}

    t0 = time.perf_counter()
    center, half = _root_cube(src_xyz, trg_xyz)
    if snap is not None:
        snapped = float(snap(half))
        if not snapped >= half:
            raise ValueError(f"snap({half!r}) = {snapped!r} shrinks the root cube")
        half = snapped
    origin = center - half
    timings["keys"] = time.perf_counter() - t0

    if same:
        s_codes, s_perm, t_sort = _sorted_codes(src_xyz, origin, half, workers)
        t_codes, t_perm = s_codes, s_perm
    else:
        # numpy's sorts release the GIL: sort the two sets side by side
        out = [None, None]

        def work(a, b):
            out[a] = _sorted_codes((src_xyz, trg_xyz)[a], origin, half, workers)  # inline

        workers.run(work, np.arange(3), limit=2)
        (s_codes, s_perm, t1), (t_codes, t_perm, t2) = out
        t_sort = max(t1, t2)
    timings["sort"] = t_sort
    timings["keys"] = time.perf_counter() - t0 - t_sort

    t0 = time.perf_counter()
    internal = _refine(s_codes, None if same else t_codes, ncrit, max_level)
    timings["refine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    internal = _balance(internal)
    timings["balance"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tree = _assemble(internal, center, half, s_codes, s_perm, t_codes, t_perm, same, ncrit,
                     max_level, timings)
    timings["assemble"] = time.perf_counter() - t0
    return tree


def _assemble(internal, center, half, s_codes, s_perm, t_codes, t_perm, same, ncrit, max_level,
              timings):
    n_levels = len(internal) + 1
    level_codes = [np.zeros(1, dtype=_i8)]
    for parents in internal:
        level_codes.append(((parents[:, None] << 3) | np.arange(8, dtype=_i8)).ravel())
    sizes = np.array([c.size for c in level_codes], dtype=_i8)
    level_offsets = np.zeros(n_levels + 1, dtype=_i8)
    np.cumsum(sizes, out=level_offsets[1:])
    n_boxes = int(level_offsets[-1])

    codes = np.concatenate(level_codes)
    levels = np.repeat(np.arange(n_levels, dtype=_i8), sizes)
    keys = code_to_key(codes, levels)
    ijk = deinterleave(codes)

    children = np.full((n_boxes, 8), -1, dtype=_i8)
    parent = np.full(n_boxes, -1, dtype=_i8)
    is_leaf = np.ones(n_boxes, dtype=bool)
    for lev, parents in enumerate(internal):
        base = level_offsets[lev]
        # internal boxes of this level, in rank order (both arrays sorted)
        pos = base + np.searchsorted(level_codes[lev], parents)
        is_leaf[pos] = False
        first_child = level_offsets[lev + 1] + 8 * np.arange(parents.size, dtype=_i8)
        children[pos] = first_child[:, None] + np.arange(8, dtype=_i8)
        parent[level_offsets[lev + 1]:level_offsets[lev + 2]] = np.repeat(pos, 8)

    width = (2.0 * half) / np.exp2(levels.astype(np.float64))
    centers = (center - half) + (ijk + 0.5) * width[:, None]

    leaf_idx = np.flatnonzero(is_leaf)
    leaves = leaf_idx[np.argsort(keys[leaf_idx], kind="stable")]

    shift = 3 * (MAX_LEVEL - levels)
    box_lo = codes << shift
    box_hi = (codes + 1) << shift
    src_start = np.searchsorted(s_codes, box_lo).astype(_i8)
    src_end = np.searchsorted(s_codes, box_hi).astype(_i8)
    if same:
        trg_start, trg_end = src_start, src_end
    else:
        trg_start = np.searchsorted(t_codes, box_lo).astype(_i8)
        trg_end = np.searchsorted(t_codes, box_hi).astype(_i8)

    return Octree(
        root_center=np.asarray(center, dtype=np.float64), root_half=float(half),
        n_levels=n_levels, level_offsets=level_offsets, keys=keys, levels=levels, parent=parent,
        children=children, is_leaf=is_leaf, leaves=leaves, centers=centers, ijk=ijk,
        src_perm=s_perm.astype(_i8, copy=False), trg_perm=t_perm.astype(_i8, copy=False),
        src_start=src_start, src_end=src_end, trg_start=trg_start, trg_end=trg_end,
        same_points=same, ncrit=ncrit, max_level=max_level, timings=timings)
