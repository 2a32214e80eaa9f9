"""The KIFMM interaction lists U, V, W, X of an :class:`~aotfmm.tree.Octree`, as CSR arrays.

For a box B (colleagues: same-level boxes adjacent to B; adjacent: closed cubes intersect):

* U(B), B a leaf: all leaves adjacent to B (any level), B included -> P2P.
* V(B), level >= 2: children of the colleagues of B's parent that are not adjacent to B -> M2L;
  ``v_transfer`` gives the row of ``_geometry.TRANSFER_VECTORS`` of t = ijk(source) - ijk(B).
* W(B), B a leaf: descendants of B's colleagues that are not adjacent to B but whose parent is
  adjacent to B -> M2P.
* X(B): A in X(B) iff B in W(A) -> P2L.

Rows are over all boxes (row = target box; rows that do not apply are empty), sorted ascending.
Empty boxes are not filtered out. U, V and W come from compiled kernels (``kernels/lists.py``)
run in two passes (row lengths, then rows) over thread chunks; X is the transpose of W.
"""
import dataclasses
import time

import numpy as np

from . import _dispatch, _geometry, _threads

__all__ = ["Lists", "build_lists", "colleagues"]

_i8 = np.int64
#: Box chunks per thread (dynamic scheduling evens out uneven rows).
_CHUNKS_PER_THREAD = 4
#: Below this many boxes one thread is used.
_MIN_BOXES_FOR_THREADS = 2000


@dataclasses.dataclass(frozen=True, eq=False)
class Lists:
    """U, V, W, X interaction lists as CSR over all boxes (int64 arrays).

    ``x_index[x_offsets[b]:x_offsets[b + 1]]`` are the boxes of X(b), and so on;
    ``v_transfer`` runs parallel to ``v_index``. ``timings`` holds seconds per list.
    """
    u_offsets: np.ndarray
    u_index: np.ndarray
    v_offsets: np.ndarray
    v_index: np.ndarray
    v_transfer: np.ndarray
    w_offsets: np.ndarray
    w_index: np.ndarray
    x_offsets: np.ndarray
    x_index: np.ndarray
    timings: dict


def _n_threads(n_boxes, workers):
    return 1 if n_boxes < _MIN_BOXES_FOR_THREADS else workers.threads


def colleagues(tree, workers=_threads.INLINE):
    """(n_boxes, 27) int64: the box at ``ijk + d`` on the same level, or -1.

    Column ``(dx + 1) * 9 + (dy + 1) * 3 + dz + 1`` for d = (dx, dy, dz) in {-1, 0, 1}^3
    (lexicographic); column 13 is the box itself.
    """
    col = np.empty((tree.n_boxes, 27), dtype=_i8)
    work = _dispatch.bind("tree_colleagues", parent=tree.parent, children=tree.children,
                          ijk=tree.ijk, levels=tree.levels, col=col)

    for lev in range(tree.n_levels):  # a level reads its parents' rows
        a, b = int(tree.level_offsets[lev]), int(tree.level_offsets[lev + 1])
        n = _n_threads(b - a, workers)
        workers.run(work, a + _threads.split(b - a, n * _CHUNKS_PER_THREAD), limit=n)
    return col


def _two_pass(kernel, args, n_boxes, workers, with_transfer=False):
    """Run list kernel ``kernel`` (its arguments ``args`` by name) over all boxes: row
    lengths, offsets, then the rows."""
    counts = np.zeros(n_boxes, dtype=_i8)
    dummy = np.zeros(1, dtype=_i8)
    n = _n_threads(n_boxes, workers)
    bounds = _threads.split(n_boxes, n * _CHUNKS_PER_THREAD)
    status = []
    extra = dict(transfer=dummy) if with_transfer else {}
    counter = _dispatch.bind(kernel, **args, fill=0, offsets=dummy, counts=counts, out=dummy,
                             **extra)

    def count(a, b):
        status.append(counter(a, b))

    workers.run(count, bounds, limit=n)
    offsets = np.zeros(n_boxes + 1, dtype=_i8)
    np.cumsum(counts, out=offsets[1:])
    index = np.empty(int(offsets[-1]), dtype=_i8)
    transfer = np.empty(int(offsets[-1]), dtype=_i8) if with_transfer else None
    extra = dict(transfer=transfer) if with_transfer else {}
    filler = _dispatch.bind(kernel, **args, fill=1, offsets=offsets, counts=counts, out=index,
                            **extra)

    def fill(a, b):
        status.append(filler(a, b))

    # balance the fill pass by the row lengths now known
    bounds = _threads.split(counts + 1, n * _CHUNKS_PER_THREAD)
    workers.run(fill, bounds, limit=n)
    if any(s != 0 for s in status):
        raise RuntimeError("interaction list row overflowed the kernel's scratch buffer "
                           "(is the tree 2:1 balanced?)")
    return offsets, index, transfer


def _transpose(offsets, index, n_boxes):
    """CSR of the transposed relation; rows come out sorted when the input rows are."""
    t_offsets = np.zeros(n_boxes + 1, dtype=_i8)
    np.cumsum(np.bincount(index, minlength=n_boxes), out=t_offsets[1:])
    t_index = np.empty(index.size, dtype=_i8)
    _dispatch.bind("csr_transpose", offsets=offsets, index=index,
                   cursor=t_offsets[:-1].copy(), out=t_index)()
    return t_offsets, t_index


def build_lists(tree, threads=1, *, workers=None):
    """U, V, W and X lists of ``tree`` (an :class:`~aotfmm.tree.Octree`).

    Parameters
    ----------
    tree : Octree
    threads : int or None
        Threads for the list kernels (None: ``_threads.default_threads()``).
    workers : :class:`aotfmm._threads.Workers`, optional
        Workers to run them on instead (``threads`` then None or their count).

    Returns
    -------
    Lists
    """
    workers = _threads.as_workers(None if workers is not None else threads, workers)
    timings = {}
    n = tree.n_boxes
    depth = _i8(tree.n_levels - 1)

    t0 = time.perf_counter()
    col = colleagues(tree, workers)
    timings["colleagues"] = time.perf_counter() - t0

    base = dict(col=col, parent=tree.parent, children=tree.children, ijk=tree.ijk,
                levels=tree.levels)
    t0 = time.perf_counter()
    u_offsets, u_index, _ = _two_pass("lists_u", dict(base, depth=depth), n, workers)
    timings["u"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    lookup = np.ascontiguousarray(_geometry._LOOKUP.ravel(), dtype=_i8)
    v_offsets, v_index, v_transfer = _two_pass("lists_v", dict(base, lookup=lookup), n,
                                               workers, with_transfer=True)
    timings["v"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    w_offsets, w_index, _ = _two_pass("lists_w", dict(base, depth=depth), n, workers)
    timings["w"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    x_offsets, x_index = _transpose(w_offsets, w_index, n)
    timings["x"] = time.perf_counter() - t0

    return Lists(u_offsets=u_offsets, u_index=u_index, v_offsets=v_offsets, v_index=v_index,
                 v_transfer=v_transfer, w_offsets=w_offsets, w_index=w_index,
                 x_offsets=x_offsets, x_index=x_index, timings=timings)
