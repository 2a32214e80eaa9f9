"""One FMM over MPI ranks (mpi4py): ``aotfmm.mpi.Fmm``.

Each rank passes its own points (any order, any amount, none included) and gets the fields at
exactly those points, in that order::

    from mpi4py import MPI
    import aotfmm.mpi
    plan = aotfmm.mpi.Fmm(my_sources, my_targets, comm=MPI.COMM_WORLD, eps=1e-6)
    pot, grad = plan.evaluate(my_charges, gradient=True)

Run under ``mpiexec -n P python script.py``; ``python -m aotfmm.mpi demo`` is a demo. Needs
``mpi4py`` and an MPI (``pip install "aotfmm[mpi]"`` installs mpi4py and the ``mpich`` wheel;
a system MPI works the same).

How (first version; what it does not do yet is said at the end):

1. **Partition.** Global bounds by allreduce give the root box. Every point falls in a box of
   the coarse level ``L`` (``level``, 8^L boxes; by default the L of 2..5 whose partition
   gives the smallest largest local problem: own points + ghost sources + far-box surface
   points, by the rules of steps 2 and 3, from the global histogram below, one allreduce of
   counts per box of the finest level needed); the histogram summed to the coarse boxes
   (a bucket sort on the Morton keys, weighted by points) cuts the boxes,
   in Morton order, into P contiguous ranges of equal weight. Sources and targets move to the
   rank owning their coarse box (Alltoallv).
2. **Ghost sources.** A rank receives, as points, the sources of the fine boxes (level G,
   up to 3 below L) adjacent to its own target boxes of that level, and of the far boxes
   below level L (step 3) holding at most n_surf(p_far) sources, whose points are cheaper
   than their surface (sparse Alltoallv; sender and receiver apply the same rule to the
   global counts per fine box, :meth:`Fmm._point_boxes`). So the ghost layer is one fine box
   thick where sources are dense and thicker, up to a coarse box, where they are sparse.
3. **Far field as equivalent densities.** Every other source is in a box that is well separated
   from the rank's target boxes at some level l <= G: for each level, the boxes not adjacent to
   the rank's level-l target boxes whose parents are (the rank's "far list"). Their KIFMM upward equivalent
   densities (order ``p_far``, surface radius 1.05 h) reproduce their field at the rank's
   targets to the FMM's accuracy (the W-list regime: the targets lie outside the upward check
   surface, 2.95 h). A far box is a run of coarse boxes, so a contiguous range of ranks holds
   its sources; its *home* is the first of them. At setup each rank sends its far boxes to
   their homes, and each home tells the rest of a wanted box's range. At evaluation the ranks
   holding sources in a wanted box compute their partial densities (check potentials by
   :func:`aotfmm.direct`, one pseudo-inverse per level) and send them to its home, which sums
   them and sends each requesting rank its own far boxes (two sparse Alltoallv): a rank moves
   the densities of the boxes it needs or holds, not of every rank's far list.
   A decaying kernel's far boxes many decay lengths wide are poor on their far side; where a
   rank has targets with no source in or next to their fine box, those within reach of them
   are split, down to point sources (:func:`_decay_split`), and its local FMM sums such
   targets directly (:meth:`Fmm._lonely_targets`).
4. **Local FMM.** Each rank runs the serial :class:`aotfmm.Fmm` with sources = own + ghost
   points + the far boxes' equivalent surface points (charges = their densities), targets =
   its own targets. Coincident points contribute nothing, as in the serial FMM, so a rank's
   own targets among its sources exclude their self-interaction.
5. **Results home.** The fields go back to the rank that passed each point, in its order
   (the reverse Alltoallv).

Every rank validates its input; if any rank fails, every rank raises the same
:class:`DistributedError` naming the rank and its error (no rank is left waiting). The same
holds for a failure inside a rank's own work after validation (the pseudo-inverses of the
setup, the far-field densities and the local FMM of an evaluation): each such step is followed
by an agreement (one allgather) before the next exchange.

Not done yet (aotfmm issue 18): the tree below level L is not shared (each rank's serial FMM
builds its own), and far boxes reach it as equivalent surface points rather than multipoles
(so a far box is only worth it above n_surf(p_far) sources: uniform points at 1e6 on 2 ranks
keep a coarse box of ghosts).
"""
import dataclasses
import functools
import time
import warnings

import numpy as np

from . import _blas, _dispatch, _frame, _kernels, _threads, api
from ._validation import (as_bool, as_densities, as_points, check_eps, check_integer,
                          check_kernel, check_level,
                          real_dtype, resolve_value_dtype)
from . import evaluate as _evaluate
from .evaluate import _DECAY_LH_MAX, _SCREEN, AccuracyWarning, choose_parameters, table_row
from .expansions import check_potentials
from .morton import MAX_LEVEL as MORTON_MAX_LEVEL
from .morton import deinterleave, interleave, point_codes
from .surfaces import DEFAULT_RADII, n_surf, surface

__all__ = ["Fmm", "DistributedError"]

R_UP_EQUIV, R_UP_CHECK = DEFAULT_RADII[0], DEFAULT_RADII[1]
#: relative SVD cutoff of the check-to-equivalent pseudo-inverse (as the serial operators)
_PINV_RCOND = {np.dtype(np.float32): 1e-7, np.dtype(np.float64): 1e-13}
#: ... at least this where the check fields take float32 terms (:meth:`Fmm._far_partials`):
#: their rounding (~2e-9 of the field of |q| on the surface) is amplified up to 1 / rcond in
#: the equivalent densities, whose pair terms the local FMM takes in float32 too. 2e5 cube
#: points on 2 ranks, eps 1e-6 (float64 fields: 2.4e-7 against a direct sum): rcond 1e-13
#: gave densities 1e4 times their float64 values and an error of 8.9e-6; 1e-10 2.9e-7;
#: 1e-9 .. 1e-7 2.4e-7 (densities within 2.2, 0.3, 0.03 of their float64 values)
_PINV_RCOND_TERMS = {np.dtype(np.float32): 1e-8, np.dtype(np.float64): 0.0}
#: :meth:`Fmm._far_partials`: sources per sum of a far box's check field, per term dtype (the
#: run sums are added in float64). float32 runs are the serial near field's (kernels/p2p.py
#: ``MIXED_SOURCES``: 64, 16 in the generic module, whose loops are scalar): a term below half
#: an ulp of its run's sum is lost, and until 2026-12-06 these runs were 256 (one unit charge
#: followed by 1023 of 2.9e-8 onto 200 check points erred 1.23e-6 of the field of |q| in the
#: generic module, 5.1e-7 in x86-64-v3; now 2.4e-7 and 3.3e-7: tests/test_precision.py; a
#: box of 15625 sources onto 488 points 2.1 -> 2.9 ms in x86-64-v4)
_FAR_RUN = {np.dtype(np.float32): 16 if _kernels.ISA == "generic" else 64,
            np.dtype(np.float64): 4096}


class DistributedError(RuntimeError):
    """Raised on every rank when any rank failed: ``rank`` is the first rank that failed and
    ``message`` its error ("TypeError: ...")."""

    def __init__(self, rank, message, n_failed=1):
        self.rank, self.message, self.n_failed = rank, message, n_failed
        more = f" (and {n_failed - 1} more rank(s))" if n_failed > 1 else ""
        super().__init__(f"rank {rank}{more}: {message}")


def _same_on_every_rank(comm, mine, what):
    """Collective: if any rank's ``mine`` differs from rank 0's, every rank raises the same
    :class:`DistributedError`, naming the first rank that differs and both values (a mismatch
    would otherwise be a silent wrong answer or a hang)."""
    theirs = comm.allgather(mine)
    bad = next((r for r, other in enumerate(theirs) if other != theirs[0]), None)
    if bad is not None:
        raise DistributedError(bad, f"{what} must be the same on every rank: rank 0 has "
                               f"{theirs[0]}, rank {bad} has {theirs[bad]}")


def _agree(comm, func, *args, **kwargs):
    """``func(*args, **kwargs)`` on every rank; if it raised on any rank, every rank raises
    :class:`DistributedError` (chained to the local error where there is one)."""
    err, out = None, None
    try:
        out = func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported to every rank, then raised
        err = exc
    msgs = comm.allgather(None if err is None else f"{type(err).__name__}: {err}")
    bad = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if bad:
        raise DistributedError(bad[0][0], bad[0][1], len(bad)) from err
    return out


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("aotfmm.mpi needs mpi4py and an MPI: pip install 'aotfmm[mpi]' "
                          "(mpi4py and the mpich wheel) or mpi4py with your system MPI") from exc
    return MPI


# ----------------------------------------------------------------------------- Morton boxes

#: The 26 neighbour offsets of a box.
_NEIGHBOURS = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
                        if (a, b, c) != (0, 0, 0)], dtype=np.int64)


def ghost_destinations(ijk, own, owner):
    """(box index, rank) pairs: for each box ``ijk[i]`` (m, 3) of the grid whose owners are
    ``owner`` (n, n, n), owned by ``own[i]``, every distinct other rank owning one of its 26
    neighbours, once (the ranks that receive its sources as ghosts)."""
    n = owner.shape[0]
    dest = np.empty((len(ijk), len(_NEIGHBOURS)), dtype=owner.dtype)
    for col, off in enumerate(_NEIGHBOURS):
        nb = ijk + off
        valid = ((nb >= 0) & (nb < n)).all(axis=1)
        nb = np.clip(nb, 0, n - 1)
        dest[:, col] = np.where(valid, owner[nb[:, 0], nb[:, 1], nb[:, 2]], -1)
    dest.sort(axis=1)
    first = np.ones(dest.shape, dtype=bool)
    first[:, 1:] = dest[:, 1:] != dest[:, :-1]
    rows, cols = np.nonzero(first & (dest >= 0) & (dest != np.asarray(own)[:, None]))
    return rows, dest[rows, cols].astype(np.int64)


@functools.lru_cache(maxsize=8)
def _grid_index(level):
    """Flat (C order) grid index of every box of ``level`` in code order (read-only)."""
    n = 1 << level
    ijk = deinterleave(np.arange(n ** 3))
    lin = (ijk[:, 0] * n + ijk[:, 1]) * n + ijk[:, 2]
    lin.flags.writeable = False
    return lin


def owner_grid(owner_by_code, level):
    """(n, n, n) owners of the boxes of ``level`` from their owners in code order."""
    n = 1 << level
    grid = np.empty(n ** 3, dtype=np.asarray(owner_by_code).dtype)
    grid[_grid_index(level)] = owner_by_code
    return grid.reshape(n, n, n)


@dataclasses.dataclass(frozen=True)
class Grid:
    """The root box and its coarse level: boxes of ``level`` are the partition's units."""
    lo: np.ndarray  # corner of the root box (3,)
    half: float     # root half-width
    level: int

    def keys(self, pts, level=None):
        """Codes (:mod:`aotfmm.morton`) of the boxes of ``level`` (default: the grid's)
        holding points (n, 3)."""
        codes = point_codes(np.ascontiguousarray(pts.T), self.lo, self.half)
        return codes >> (3 * (MORTON_MAX_LEVEL - (self.level if level is None else level)))

    def center(self, ijk, level):
        w = 2.0 * self.half / (1 << level)
        return self.lo + (ijk + 0.5) * w

    def box_half(self, level):
        return self.half / (1 << level)


# --------------------------------------------------------------------------------- exchange

class _Route:
    """Rows sent to ranks ``dest`` (one per row) and what came back: reusable for later arrays
    of the same rows (densities), and in reverse (results home)."""

    def __init__(self, comm, dest):
        self.comm = comm
        self.order = _index(np.argsort(dest, kind="stable"))
        self.send_counts = np.bincount(dest, minlength=comm.size).astype(np.int64)
        self.recv_counts = np.asarray(comm.alltoall(self.send_counts.tolist()), dtype=np.int64)
        self.n_recv = int(self.recv_counts.sum())
        self.bytes = 0
        self.messages = 0

    def _move(self, rows, counts_out, counts_in, n_in):
        rows = np.ascontiguousarray(rows)
        width = int(np.prod(rows.shape[1:], dtype=np.int64))
        out = np.empty((n_in,) + rows.shape[1:], dtype=rows.dtype)
        so = counts_out * width
        si = counts_in * width
        sd = np.concatenate(([0], np.cumsum(so)[:-1]))
        rd = np.concatenate(([0], np.cumsum(si)[:-1]))
        self.comm.Alltoallv([rows.reshape(-1), (so, sd)], [out.reshape(-1), (si, rd)])
        mine = self.comm.rank
        self.bytes += int((so.sum() - so[mine]) * rows.itemsize)
        self.messages += int(np.count_nonzero(so) - (so[mine] > 0))
        return out

    def send(self, rows):
        """Rows (n_rows, ...) in the caller's order -> the rows this rank received."""
        return self._move(np.asarray(rows)[self.order], self.send_counts, self.recv_counts,
                          self.n_recv)

    def back(self, rows):
        """The reverse: rows in received order -> rows in the caller's original order.

        ``rows`` may come in a one-item list, which is emptied: the array is then freed as
        soon as it is sent, before the reordered copy is made (peak memory)."""
        if isinstance(rows, list):
            rows = rows.pop()
        got = self._move(rows, self.recv_counts, self.send_counts, len(self.order))
        del rows
        out = np.empty_like(got)
        out[self.order] = got
        return out


# ------------------------------------------------------------------------------------- plan

#: The coarse levels the partition chooses from when ``level`` is not given.
_AUTO_LEVELS = (2, 3, 4, 5)
#: The finest level at which ghost layers are chosen (8^6 boxes of global counts per rank).
_FINE_MAX = 6
#: What a far box's surface point costs in the level choice, in ghost points: besides being
#: a source of the local FMM it is one of 488 on a small cube (the local tree refines there)
#: and its box's holders compute its density from their points. Counted once, the choice
#: took level 3 for the Plummer sphere at 1e6 on 2 ranks (500k own + 214k ghosts + 98k
#: surface points) over level 2 (500k + 300k + 42k), whose evaluations were faster: 4.84,
#: 5.13, 5.27 s against 5.22, 5.51, 5.71 s (far densities 0.21-0.24 s against 0.40-0.45).
_FAR_POINT_COST = 2


def _owners(weight, size):
    """Owner rank per box (Morton order) of boxes with ``weight``: contiguous ranges of
    equal total weight."""
    before = np.cumsum(weight) - weight
    total = max(int(weight.sum()), 1)
    return np.minimum((before + 0.5 * weight) * size // total, size - 1).astype(np.int64)


_OCTANTS = [(dx, dy, dz) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)]


def _dilate(occ):
    """Boxes within one box (26-neighbourhood) of an occupied one, on a (n, n, n) grid (the
    3x3x3 cube is separable: one box either way along each axis in turn)."""
    out = occ.copy()
    for axis in range(3):
        src = out.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        out[tuple(lo)] |= src[tuple(hi)]
        out[tuple(hi)] |= src[tuple(lo)]
    return out


def _coarsen(occ):
    """Occupancy of the parents (n/2)^3 of a (n, n, n) grid (or their sums, for counts)."""
    out = occ[0::2, 0::2, 0::2].copy()  # eight strided views: much faster than .any(axes)
    for dx, dy, dz in _OCTANTS[1:]:
        out += occ[dx::2, dy::2, dz::2]
    return out


def _far_lists(target_occ, source_occ, level):
    """{l: (m, 3) box coordinates} for l = 2..level: boxes with sources that are not adjacent
    to a target box of level l while their parent is adjacent to one of level l - 1 (all
    non-adjacent boxes at l = 2). Every source box of ``level`` not adjacent to a target box is
    inside exactly one of them (adjacency only shrinks going down)."""
    t_occ = {level: target_occ}
    s_occ = {level: source_occ}
    for lev in range(level, 2, -1):
        t_occ[lev - 1] = _coarsen(t_occ[lev])
        s_occ[lev - 1] = _coarsen(s_occ[lev])
    far = {}
    for lev in range(2, level + 1):
        near = _dilate(t_occ[lev])
        cand = ~near & s_occ[lev]
        if lev > 2:
            pnear = _dilate(t_occ[lev - 1])
            cand &= pnear.repeat(2, 0).repeat(2, 1).repeat(2, 2)
        far[lev] = np.argwhere(cand).astype(np.int64)
    return far


def _fine_level(level):
    """The fine level G of coarse level L, where ghosts are chosen: up to 3 below L, at
    most :data:`_FINE_MAX` (L itself above that)."""
    return max(level, min(level + 3, _FINE_MAX))


def _coarse_counts(hist, level):
    """Per-box counts (rows of ``hist``, boxes of a finer level in Morton order) summed to
    the boxes of ``level``."""
    return hist.reshape(hist.shape[0], 1 << (3 * level), -1).sum(axis=2)


def _dilate_by(occ, j):
    """Boxes within ``j`` boxes (Chebyshev distance) of an occupied one, on a (n, n, n) grid
    (a running sum along each axis in turn)."""
    out = occ
    for axis in range(3):
        n = out.shape[axis]
        c = np.cumsum(out, axis=axis, dtype=np.int32)
        idx = np.arange(n)
        hi = np.take(c, np.minimum(idx + j, n - 1), axis=axis)
        lo = np.take(c, np.maximum(idx - j - 1, 0), axis=axis)
        shape = [1, 1, 1]
        shape[axis] = n
        lo = lo * (idx - j - 1 >= 0).reshape(shape)
        out = hi - lo > 0
    return out


#: Far boxes of a decaying kernel wider than ``_DECAY_LH_MAX`` decay lengths lose relative
#: accuracy on their far side by about exp(this x lam h) (serial measurements under
#: ``evaluate._DECAY_LH_MAX``: 1.5e-8, 8.6e-6, 1.2e-3 of u-bar at lam h = 2, 4, 6.2, eps
#: 1e-6: a factor exp(2.3-3.2) per unit of lam h)
_DECAY_AMPLIFY = 3.5
#: At most this many extra points (ghost sources and far surface points) per rank for the
#: split of :func:`_decay_split`; above it the far boxes stay and the rank warns.
_SPLIT_BUDGET = 2_000_000


def _decay_split(far, t_occ, s_cnt, lam_w, eps, ns, notes):
    """(far, extra points (n, n, n) bool or None): the far lists of :func:`point_boxes` with
    the far boxes a decaying kernel cannot take as equivalent densities replaced by finer
    ones. ``lam_w``: the decay rate times the fine box width (distances below are in fine
    box widths); ``eps``: the accuracy asked.

    A far box of level l with lam h_l > ``_DECAY_LH_MAX`` fits its check surface to the strong
    side; targets with no source in or next to their fine box ("lonely": nothing else makes
    their u-bar) see its far side, off by ~exp(_DECAY_AMPLIFY lam h_l) times its field there.
    For each lonely box T, with k_T the Chebyshev distance (boxes) to the nearest source box
    and source counts standing in for |q| (as the serial screen): u-bar at T is at least
    g(sqrt(3) (k_T + 1)) (g(r) = exp(-lam r) / r), a box j boxes away contributes at most
    N g(j - 1) for all N sources. Wide far boxes within the j where N g(j - 1) times that
    factor falls below ``_SCREEN`` eps of T's bound are split into their children, level by
    level (children are far too); at the fine level they become point sources (ghosts), for
    the local FMM to sum directly as the serial plan does. Over :data:`_SPLIT_BUDGET` extra
    points nothing is split and ``notes["unresolved"]`` counts the lonely boxes."""
    n = t_occ.shape[0]
    fine = n.bit_length() - 1
    has_src = s_cnt > 0

    def half(lev):  # in fine box widths
        return 0.5 * (1 << (fine - lev))

    wide = [lev for lev in range(2, fine + 1) if lam_w * half(lev) > _DECAY_LH_MAX]
    if not wide or not any(len(far.get(lev, ())) for lev in wide):
        return far, None
    lonely = t_occ & ~_dilate(has_src)
    if not lonely.any():
        return far, None
    # lonely boxes grouped by their distance to the nearest source box
    groups, left, reach, k = [], lonely.copy(), _dilate(has_src), 1
    while left.any():
        k += 1
        reach = _dilate(reach)
        new = left & reach
        if new.any():
            groups.append((k, new))
            left &= ~new
    log_n = np.log(max(float(s_cnt.sum()), 1.0))

    def log_g(r):
        return -lam_w * r - np.log(r)

    def radius(k, lev):  # boxes from a lonely box of distance k that wide boxes split within
        need = np.log(_SCREEN * eps) + log_g(np.sqrt(3.0) * (k + 1)) - log_n \
            - _DECAY_AMPLIFY * lam_w * half(lev)
        j = k
        while j < 2 * n and log_g(max(j - 1, 1e-3)) > need:
            j += 1
        return j

    cnt = {fine: s_cnt}
    for lev in range(fine, 2, -1):
        cnt[lev - 1] = _coarsen(cnt[lev])
    orig, far = far, dict(far)
    before = sum(len(v) for v in far.values())
    extra = np.zeros_like(has_src)
    for lev in wide:
        ijk = far.get(lev)
        if ijk is None or not len(ijk):
            continue
        keep = np.zeros_like(has_src)
        for k, mask in groups:
            keep |= _dilate_by(mask, radius(k, lev))
        for _ in range(fine - lev):
            keep = _coarsen(keep)
        hit = keep[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        far[lev] = ijk[~hit]
        split = ijk[hit]
        if lev < fine:  # children with sources; those with at most ns go as points
            kids = (2 * split[:, None, :] + np.asarray(_OCTANTS)[None]).reshape(-1, 3)
            c = cnt[lev + 1][kids[:, 0], kids[:, 1], kids[:, 2]]
            far[lev + 1] = np.concatenate([far.get(lev + 1, np.zeros((0, 3), np.int64)),
                                           kids[c > ns]])
            split, lev = kids[(c > 0) & (c <= ns)], lev + 1
        f = 1 << (fine - lev)  # points: every fine box of the split boxes
        m = np.zeros((n // f,) * 3, dtype=bool)
        m[split[:, 0], split[:, 1], split[:, 2]] = True
        extra |= m.repeat(f, 0).repeat(f, 1).repeat(f, 2)
    extra &= has_src
    cost = int(s_cnt[extra].sum()) + ns * max(sum(len(v) for v in far.values()) - before, 0)
    if cost > _SPLIT_BUDGET:
        notes["unresolved"] = int(lonely.sum())
        return orig, None
    notes["split"] = cost
    return far, extra


def point_boxes(t_occ, s_cnt, level, ns, decay=None, notes=None):
    """What a rank takes of every source, on the fine grid (level G, n = 2^G per side):
    (points (n, n, n) bool: the fine boxes whose sources are point sources of its local FMM;
    far {level: (m, 3)}: the boxes whose sources reach it as equivalent densities). ``t_occ``
    (n, n, n) bool: the rank's fine boxes holding targets; ``s_cnt`` (n, n, n): global sources
    per fine box; ``level``: the coarse level L <= G; ``ns``: surface points per far box,
    n_surf(p_far). Every source box is in exactly one of them.

    Far boxes: for each level 2..G, those not adjacent to one of the rank's target boxes of
    that level whose parents are (:func:`_far_lists`). Points: the fine boxes adjacent to its
    target boxes, and the far boxes below L with at most ``ns`` sources (their points are
    cheaper than their surface). So the ghost layer is a fine box thick where sources are
    dense, a coarse box where they are not.

    ``decay``: (decay rate times the fine box width, eps) of a decaying kernel: far boxes
    too many decay lengths wide for the rank's targets with no source nearby are split
    (:func:`_decay_split`, which writes to the dict ``notes``)."""
    n = t_occ.shape[0]
    fine = n.bit_length() - 1
    has_src = s_cnt > 0
    far = _far_lists(t_occ, has_src, fine)
    points = _dilate(t_occ) & has_src
    if decay is not None and decay[0] > 0:
        far, extra = _decay_split(far, t_occ, s_cnt, decay[0], decay[1], ns,
                                  {} if notes is None else notes)
        if extra is not None:
            points |= extra
    cnt_lev = s_cnt
    for lev in range(fine, level, -1):
        if lev < fine:
            cnt_lev = _coarsen(cnt_lev)
        ijk = far.get(lev)
        if ijk is None or not len(ijk):
            continue
        f = 1 << (fine - lev)
        m = n // f
        cnt = cnt_lev[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        small = cnt <= ns
        mark = np.zeros((m, m, m), dtype=bool)
        mark[ijk[small, 0], ijk[small, 1], ijk[small, 2]] = True
        points |= mark.repeat(f, 0).repeat(f, 1).repeat(f, 2) & has_src
        far[lev] = ijk[~small]
    return points, far


class Fmm:
    """A distributed FMM plan over the ranks of ``comm`` (collective: every rank calls it).

    Parameters
    ----------
    local_sources : array_like (n, 3)
        This rank's sources (any number, 0 included).
    local_targets : array_like (m, 3), optional
        This rank's targets; None: the fields are wanted at ``local_sources`` (self-interaction
        excluded), as in the serial :class:`aotfmm.Fmm`.
    comm : mpi4py communicator
    eps, kernel, dtype, threads, dipoles, hessians : as in :class:`aotfmm.Fmm` (the same on
        every rank; Hessians through :meth:`fields` with ``pg``/``pgt`` = 3, Laplace only).
    level : int, optional
        Coarse level of the partition (2..7). Default: chosen from 2..5 to make the largest
        rank's local FMM smallest (own points + ghost sources + far-box surface points,
        computed from the global counts per box before anything moves; ``stats["level_loads"]``
        shows them).
    p_far : int, optional
        Order of the far boxes' equivalent densities (2..20). Default: one more than the
        serial plan takes for separate targets at ``eps``, two more with dipoles or Hessians
        (``stats["p_far"]``).

    Attributes
    ----------
    stats : dict
        This rank's points, ghost points, far boxes, bytes and messages per stage, seconds per
        stage (``stats["seconds"]``).
    """

    def __init__(self, local_sources, local_targets=None, *, comm, eps=None, kernel=None,
                 dtype=None, threads=None, dipoles=False, hessians=False, level=None,
                 p_far=None):
        self.comm = comm
        t0 = time.perf_counter()
        _agree(comm, self._check_input, local_sources, local_targets, eps, kernel, dtype,
               threads, level, dipoles, hessians)
        self._p_far_arg = check_integer("p_far", p_far, lo=2, hi=20, allow_none=True)
        # the far boxes' check fields take float32 terms where the serial plan's near field
        # does (a family with float32 pair terms, float32 or eps >= MIXED_NEAR_EPS; see
        # _far_partials)
        self._far_dtype = np.dtype(np.float32) if (
            _evaluate._MIXED_NEAR
            and _dispatch.has_kernel(self.family.name, "p2p_mixed", "charge", "pot|potgrad")
            and (self._rdt == np.float32 or self.eps >= _dispatch.MIXED_NEAR_EPS)) \
            else np.dtype(np.float64)
        # the same parameters everywhere: a mismatch would be a silent wrong answer
        _same_on_every_rank(comm, (self.family.cache_key(), self.dtype.str, self.eps,
                                   self._level, self.same, self._dipoles, self._hessians),
                            "kernel, eps, dtype, level, dipoles, hessians and whether targets "
                            "are given")
        if self.threads is None:  # share the node's CPUs between its ranks (oversubscribed
            # thread pools with MPI's busy-waiting ran 7x slower on 2 cores, 2 ranks)
            node = comm.Split_type(_mpi().COMM_TYPE_SHARED)
            self.threads = max(1, _threads.resolve_threads(None) // node.Get_size())
            node.Free()
        seconds = {}
        t = time.perf_counter()
        self._partition()
        seconds["partition"] = time.perf_counter() - t
        t = time.perf_counter()
        self.p_far = self._p_far(2.0 * self.grid.half)
        self._surf = surface(self.p_far)
        self._ghosts()
        seconds["ghosts"] = time.perf_counter() - t
        t = time.perf_counter()
        self._far_boxes()
        seconds["far lists"] = time.perf_counter() - t
        t = time.perf_counter()
        self._local = _agree(comm, self._local_plan, self._dipoles)
        self._approximates = None  # (set by the first evaluation: _warn_few_charges)
        seconds["local plan"] = time.perf_counter() - t
        # the local plan holds its own copy of its points: keep counts, not coordinates
        self._n_in = (len(self._src_in), len(self._trg_in))
        self._n_trg, self._n_far = len(self._trg), len(self._far_pts)
        n_owned = len(self._src)
        # and keys only the setup needed (memory per point: what stays is own sources, their
        # order by coarse box and the routes' orders)
        del self._src_in, self._trg_in, self._ghost, self._far_pts, self._trg
        del self._skey, self._skey_sorted, self._tkey, self._gkey
        del self._fine_owner, self._fine_src, self._fine_has_trg
        self._lonely_grid = None
        seconds["setup"] = time.perf_counter() - t0
        self.stats = dict(
            rank=comm.rank, size=comm.size, level=self.grid.level, p_far=self.p_far,
            level_loads=getattr(self, "_level_loads", None),
            n_sources_in=self._n_in[0], n_targets_in=self._n_in[1],
            n_sources=n_owned, n_targets=self._n_trg, n_ghost=self._n_ghost_near,
            n_far_boxes=int(sum(len(v) for v in self._far.values())),
            far_boxes_per_level={int(lev): len(v) for lev, v in self._far.items() if len(v)},
            n_far_points=self._n_far_points, decay_split=self._split.get("split", 0),
            seconds=seconds,
            bytes={"partition": sum(r.bytes for r in self._point_routes()),
                   "ghosts": self._route_ghost.bytes, "far lists": self._far_setup[0]},
            messages={"partition": sum(r.messages for r in self._point_routes()),
                      "ghosts": self._route_ghost.messages,
                      "far lists": self._far_setup[1]})

    def _point_routes(self):
        """The routes of the partition: sources, and targets when they are other points
        (with targets = sources one route serves both and is counted once)."""
        return (self._route_src,) if self._route_trg is self._route_src else \
            (self._route_src, self._route_trg)

    # -- setup -------------------------------------------------------------------------------
    def _check_input(self, sources, targets, eps, kernel, dtype, threads, level, dipoles,
                     hessians):
        self.family = check_kernel(kernel)
        self._dipoles = as_bool("dipoles", dipoles)
        self._hessians = as_bool("hessians", hessians)
        if self._hessians and not self.family.hessians:
            raise ValueError(f"Hessians are computed for the Laplace kernel only, not "
                             f"{self.family.name}")
        self.dtype = resolve_value_dtype(self.family, dtype, sources, targets)
        self._rdt = real_dtype(self.dtype)
        self.eps = check_eps(eps, self._rdt)
        self.threads = threads
        self._src_in = as_points("local_sources", sources).astype(np.float64, copy=False)
        # the local plans get float64 points (shifted to the global centre, see _partition),
        # also for single-precision input: a float32 plan then rounds their leaf offsets, not
        # their coordinates (points 1e4 from the origin, as float32, lost 1e-3 of their
        # spacing: errors 6e-5 at eps 1e-5)
        self.same = targets is None
        self._trg_in = (self._src_in if self.same
                        else as_points("local_targets", targets).astype(np.float64, copy=False))
        self._level = check_integer("level", level, lo=2, hi=7, allow_none=True)

    def _partition(self):
        comm = self.comm
        MPI = _mpi()
        pts = np.concatenate([self._src_in, self._trg_in]) if not self.same else self._src_in
        lo = np.full(3, np.inf) if not len(pts) else pts.min(0)
        hi = np.full(3, -np.inf) if not len(pts) else pts.max(0)
        glo, ghi = np.empty(3), np.empty(3)
        comm.Allreduce(lo, glo, op=MPI.MIN)
        comm.Allreduce(hi, ghi, op=MPI.MAX)
        self.n_total = comm.allreduce(len(self._src_in))
        if not np.isfinite(glo).all():  # no points anywhere
            glo, ghi = np.zeros(3), np.ones(3)
        # Everything from here on works relative to a global shift (the same on every rank;
        # potentials, gradients and Hessians do not change under a translation). In absolute
        # coordinates the far boxes' surface and check points of a problem 1e-3 wide at 1e8
        # were rounded to 1e-8, 1e-5 of their box: relative errors 1e-2 at eps 1e-6. The
        # shift keeps every x - shift exact (_exact_shift): until 2026-12-03 it was the
        # centre, which rounded points nearer 0 than half of it (pairs 1e-12 apart in the
        # unit cube lost ~1e-5 of their distance: 10x eps at 1e-6 on any number of ranks).
        shift = _exact_shift(glo, ghi)
        self._src_in = self._src_in - shift
        self._trg_in = self._src_in if self.same else self._trg_in - shift
        glo, ghi = glo - shift, ghi - shift
        center = 0.5 * (glo + ghi)
        # the half-width from the rounded centre (1e8 + 5e-8 * rand: their sum is rounded to
        # 3e-8, and half of ghi - glo left the extreme points outside the root box, where the
        # Morton codes clamp them: 0.3 relative error); a few ulps of the centre on top
        half = float(np.maximum(ghi - center, center - glo).max())
        half = half * (1.0 + 1e-9) + 4.0 * float(np.spacing(np.abs(center).max())) \
            if half > 0 else 1.0
        # one global histogram of sources and targets per box of the finest level needed:
        # the fine level G of the given coarse level, else of the finest candidate
        given = self._level
        hist_level = _fine_level(given if given is not None else max(_AUTO_LEVELS))
        # full-depth codes, computed once: the keys of every level below are shifts of them
        grid = Grid(lo=center - half, half=half, level=hist_level)
        scode = grid.keys(self._src_in, MORTON_MAX_LEVEL)
        tcode = scode if self.same else grid.keys(self._trg_in, MORTON_MAX_LEVEL)
        nh = 1 << (3 * hist_level)
        counts = np.zeros((2, nh), dtype=np.int64)  # sources, targets per box, all ranks
        counts[0] = np.bincount(scode >> (3 * (MORTON_MAX_LEVEL - hist_level)), minlength=nh)
        counts[1] = counts[0] if self.same else \
            np.bincount(tcode >> (3 * (MORTON_MAX_LEVEL - hist_level)), minlength=nh)
        hist = np.empty_like(counts)
        comm.Allreduce(counts, hist, op=MPI.SUM)
        del counts
        level = given if given is not None else self._choose_level(hist, 2.0 * half)
        self.grid = grid = Grid(lo=center - half, half=half, level=level)
        skey = scode >> (3 * (MORTON_MAX_LEVEL - level))
        tkey = skey if self.same else tcode >> (3 * (MORTON_MAX_LEVEL - level))
        totals = _coarse_counts(hist, level)
        weight = totals[0] if self.same else totals[0] + totals[1]
        self._owner = _owners(weight, comm.size)
        # keys of the fine level G (up to 3 below L): the ghost layer is chosen at that
        # resolution (_point_boxes), from the global sources and targets per fine box
        self._fine = fine = _fine_level(level)
        sfine = scode >> (3 * (MORTON_MAX_LEVEL - fine))
        tfine = sfine if self.same else tcode >> (3 * (MORTON_MAX_LEVEL - fine))
        del scode, tcode
        fine_counts = _coarse_counts(hist, fine)
        del hist
        nf = 1 << (3 * fine)
        # what _point_boxes needs for every rank it is asked about, made once: the fine
        # boxes' owners, source counts and targets as grids
        owner = self._owner[np.arange(nf) >> (3 * (fine - level))]
        self._fine_owner = owner_grid(owner, fine)
        self._fine_src = owner_grid(fine_counts[0], fine)
        self._fine_has_trg = owner_grid(fine_counts[1] > 0, fine)
        self._route_src = _Route(comm, self._owner[skey])
        self._src = self._route_src.send(self._src_in)
        self._skey = self._route_src.send(sfine)  # fine keys from here on
        if self.same:
            self._route_trg, self._trg, self._tkey = self._route_src, self._src, self._skey
        else:
            self._route_trg = _Route(comm, self._owner[tkey])
            self._trg = self._route_trg.send(self._trg_in)
            self._tkey = self._route_trg.send(tfine)
        # own sources sorted by fine box: a box of any level <= G is one contiguous run
        self._sorder = _index(np.argsort(self._skey, kind="stable"))
        self._skey_sorted = self._skey[self._sorder]

    def _p_far(self, size):
        """Order of the far boxes' equivalent densities: ``p_far`` if given, else one more
        than separate targets take, with the plan's dipoles and Hessians (the domain ``size``
        counts for Helmholtz). Without the dipoles' order, targets one box from a dense far box
        of dipoles got 2e-5 relative error at eps 1e-6 (serial: 9e-8)."""
        if self._p_far_arg is not None:
            return self._p_far_arg
        # from the plan's order without the separate targets' orders (p0 = the table's + 1 for
        # dipoles + 1 for Hessians): charges 2 more (3 from table order 12), dipoles 4 (+ 1
        # with Hessians), Hessians 4 (5 from table order 12). Those are the separate targets'
        # orders of until 2026-12-04 (one, two from table order 12 or with dipoles; Hessians
        # two more) plus one, two with dipoles or Hessians: with one less (12 at eps 1e-6)
        # targets over the middle of a far box's check face, where an even order has no check
        # point, got 1.6e-6 (13: 5e-9).
        p0, _ = choose_parameters(self.eps, dipoles=self._dipoles, hessians=self._hessians,
                                  family=self.family, size=size)
        late = int(table_row(self.eps, self.family)[1] >= 12)
        more = (4 + self._hessians if self._dipoles else 4 + late if self._hessians
                else 2 + late)
        return min(p0 + more, 16)

    def _choose_level(self, hist, size):
        """The coarse level (of :data:`_AUTO_LEVELS`) whose partition gives the smallest
        largest local FMM: per rank, its own points, its ghost sources and the surface points
        of its far boxes (each n_surf(p_far) points, counted :data:`_FAR_POINT_COST` times),
        by the rule of :func:`point_boxes` at each level's fine level, from the global counts
        per box of the finest one (``hist``: sources, targets). Few points per box make far surface points dominate (coarse
        levels win); many ranks make the ghost layer dominate (fine levels win). Every rank
        computes its own load per level; one allreduce takes the maximum."""
        ns = n_surf(self._p_far(size))
        rank, nranks = self.comm.rank, self.comm.size
        loads, grids = [], {}
        for level in _AUTO_LEVELS:
            s, t = _coarse_counts(hist, level)
            weight = s if self.same else s + t
            owner = _owners(weight, nranks)
            load = int(weight[owner == rank].sum())
            fine = _fine_level(level)
            if fine not in grids:  # global sources, and where targets are, per fine box
                fs, ft = _coarse_counts(hist, fine)
                grids[fine] = owner_grid(fs, fine), owner_grid(ft > 0, fine)
            s_grid, t_grid = grids[fine]
            own = owner_grid(owner == rank, level)
            f = 1 << (fine - level)
            own = own.repeat(f, 0).repeat(f, 1).repeat(f, 2)
            t_occ = own & t_grid
            if t_occ.any():
                points, far = point_boxes(t_occ, s_grid, level, ns,
                                          self._decay(size / (1 << fine)))
                load += int(s_grid[points & ~own].sum())
                load += _FAR_POINT_COST * ns * sum(len(v) for v in far.values())
            loads.append(load)
        worst = np.empty(len(loads), dtype=np.int64)
        self.comm.Allreduce(np.asarray(loads, dtype=np.int64), worst, op=_mpi().MAX)
        self._level_loads = dict(zip(_AUTO_LEVELS, worst.tolist()))
        return _AUTO_LEVELS[int(np.argmin(worst))]

    def _decay(self, width):
        """``decay`` of :func:`point_boxes` for fine boxes of ``width``: None unless the kernel
        decays and targets are other points (targets among the sources always have one)."""
        lam = float(self.family.decay_rate)
        return (lam * width, self.eps) if lam > 0 and not self.same else None

    def _ghosts(self):
        """Send own sources to the ranks that take them as point sources (ghosts): of the
        ranks owning a coarse box adjacent to one of ours, each gets the sources of the fine
        boxes in its :meth:`_point_boxes` (the same rule it applies to itself)."""
        grid, comm = self.grid, self.comm
        shift = 3 * (self._fine - grid.level)
        boxes = np.unique(self._skey >> shift)
        _, dest = ghost_destinations(deinterleave(boxes), np.full(len(boxes), comm.rank),
                                     owner_grid(self._owner, grid.level))
        dest = np.unique(dest)
        if self._decay(1.0) is not None:  # ranks with lonely targets may take any source
            far_ranks = np.unique(self._fine_owner[self._lonely_fine()])
            dest = np.union1d(dest, far_ranks[far_ranks != comm.rank])
        rows, dests = [], []
        for r in dest:
            sel = np.flatnonzero(self._point_boxes(int(r))[0][self._skey])
            rows.append(sel)
            dests.append(np.full(len(sel), r, dtype=np.int64))
        self._ghost_rows = _index(np.concatenate(rows) if rows else np.zeros(0, np.int64))
        self._route_ghost = _Route(comm, np.concatenate(dests) if dests
                                   else np.zeros(0, np.int64))
        self._ghost = self._route_ghost.send(self._src[self._ghost_rows])
        self._gkey = self._route_ghost.send(self._skey[self._ghost_rows])

    def _point_boxes(self, r, notes=None):
        """What rank ``r`` takes of every source (:func:`point_boxes` on this plan's fine
        grids, the points as a (8^G,) bool in Morton order). Every rank computes this for itself
        and for the ranks it sends ghosts to, from the same global counts: both sides agree
        (``notes``: see :func:`_decay_split`)."""
        t_occ = self._fine_has_trg & (self._fine_owner == r)
        if not t_occ.any():
            return np.zeros(t_occ.size, dtype=bool), {}
        points, far = point_boxes(t_occ, self._fine_src, self.grid.level, len(self._surf),
                                  self._decay(2.0 * self.grid.box_half(self._fine)), notes)
        return points.reshape(-1)[_grid_index(self._fine)], far  # grid -> code order

    def _far_boxes(self):
        grid, comm = self.grid, self.comm
        self._split = {}
        points, self._far = self._point_boxes(comm.rank, self._split) if len(self._tkey) \
            else (np.zeros(1 << (3 * self._fine), dtype=bool), {})
        self._warn_lonely_targets()
        # point sources of the local FMM: own sources and the ghosts (sent by the same rule)
        own_near, ghost_near = points[self._skey], points[self._gkey]
        self._own_near, self._ghost_near = _rows(own_near), _rows(ghost_near)
        self._n_own_near = int(np.count_nonzero(own_near))
        self._n_ghost_near = int(np.count_nonzero(ghost_near))
        self._far_exchange()
        # pseudo-inverse of check -> equivalent per level (translation invariant)
        self._uc2e = {}
        rcond = max(_PINV_RCOND[np.dtype(self._rdt)], _PINV_RCOND_TERMS[self._far_dtype])
        with _blas.limit_one():  # BLAS threads of several ranks per node would spin
            _agree(comm, self._pinvs, sorted(set(self._contrib_lev.tolist())), rcond)
        # surface points of this rank's far boxes
        pts = [grid.center(ijk, lev)[:, None, :] + R_UP_EQUIV * grid.box_half(lev) * self._surf
               for lev, ijk in self._far.items() if len(ijk)]
        self._far_pts = np.concatenate(pts).reshape(-1, 3) if pts else np.zeros((0, 3))
        self._n_far_points = len(self._far_pts)

    def _warn_lonely_targets(self):
        """A decaying kernel's far boxes many decay lengths wide (lam h above
        ``evaluate._DECAY_LH_MAX``) are equivalent densities that lose relative accuracy on
        their far side, and targets with no source in or next to their fine box see nothing
        else; :func:`_decay_split` splits those within reach of such targets, unless that
        takes more than :data:`_SPLIT_BUDGET` extra points: then this rank warns (before the
        split, targets 3 units from a unit cube of 2e4 sources, lam = 10, eps 1e-6 got up to
        9e-3 of their u-bar on 2 ranks, 9e-8 on 1)."""
        n = self._split.get("unresolved")
        if not n:
            return
        lam = float(self.family.decay_rate)
        wide = [lev for lev, ijk in self._far.items()
                if len(ijk) and lam * self.grid.box_half(lev) > _DECAY_LH_MAX]
        top = lam * self.grid.box_half(min(wide)) if wide else _DECAY_LH_MAX
        warnings.warn(
            f"aotfmm.mpi rank {self.comm.rank}: targets in {n} fine boxes have no source in "
            f"or next to their box; their field comes from far boxes up to {top:.3g} decay "
            f"lengths (lam h) wide, whose equivalent densities lose relative accuracy there "
            f"(measured up to 1e-2 of u-bar at eps 1e-6), and splitting them would take more "
            f"than {_SPLIT_BUDGET:.2g} extra points on this rank: results there may miss eps. "
            f"The serial aotfmm.Fmm sums such targets directly within its own budget.",
            AccuracyWarning, stacklevel=4)

    def _far_exchange(self):
        """Who sums and who receives each far box's equivalent density (sparse, no global
        list). A far box B of level l is a run of coarse boxes, owned by a contiguous range of
        ranks; its *home* is the owner of its first coarse box. Every rank sends the codes of
        its far boxes to their homes; each home tells the other ranks of B's range that B is
        wanted. At evaluation the ranks holding sources in a wanted box send their partial
        densities to its home, which sums them and sends the sum back along the requests'
        route: each rank receives only its own far boxes, once."""
        comm, grid = self.comm, self.grid
        # this rank's far boxes, in the order of their surface points, as (level, key) codes
        levels = [lev for lev, ijk in self._far.items() if len(ijk)]
        req = np.concatenate([_far_code(lev, interleave(self._far[lev])) for lev in levels]) \
            if levels else np.zeros(0, dtype=np.int64)
        self._route_req = _Route(comm, self._home(req))
        got = self._route_req.send(req)  # codes this rank is home of, one row per request
        wanted = np.unique(got)
        self._req_rows = np.searchsorted(wanted, got)
        # notices to the other ranks of each wanted box's range
        lev, key = _far_uncode(wanted)
        first, last = _coarse_span(lev, key, grid.level)
        r0 = self._owner[first]
        r1 = self._owner[last]
        n_extra = r1 - r0  # ranks r0 + 1 .. r1 (the home is r0)
        notice_dest = np.repeat(r0, n_extra) + _ranges(n_extra) + 1
        route_notice = _Route(comm, notice_dest)
        asked = route_notice.send(np.repeat(wanted, n_extra))
        todo = np.unique(np.concatenate([wanted, asked]))
        # keep the boxes where this rank holds sources
        lev, key = _far_uncode(todo)
        shift = 3 * (self._fine - lev)
        lo = np.searchsorted(self._skey_sorted, key << shift, side="left")
        hi = np.searchsorted(self._skey_sorted, (key + 1) << shift, side="left")
        has = hi > lo
        self._contrib = todo[has]
        self._contrib_lev, self._contrib_key = lev[has], key[has]
        self._contrib_rows = (lo[has], hi[has])
        self._route_contrib = _Route(comm, self._home(self._contrib))
        got = self._route_contrib.send(self._contrib)  # at the home: whose sum each row is
        routes = (self._route_req, route_notice, self._route_contrib)
        self._far_setup = (sum(r.bytes for r in routes), sum(r.messages for r in routes))
        self._contrib_into = np.searchsorted(wanted, got)
        self._n_wanted = len(wanted)

    def _home(self, codes):
        """The home rank of each far box code: the owner of its first coarse box."""
        lev, key = _far_uncode(codes)
        return self._owner[_coarse_span(lev, key, self.grid.level)[0]]

    def _pinvs(self, levels, rcond):
        """Check -> equivalent pseudo-inverse factors for ``levels``."""
        grid = self.grid
        for lev in levels:
            h = grid.box_half(lev)
            k = self.family.reference(R_UP_CHECK * h * self._surf, R_UP_EQUIV * h * self._surf)
            u, sv, vh = np.linalg.svd(k)
            keep = sv > rcond * sv[0]
            # applied as two factors, V S^-1 (U^H x): an explicit pseudo-inverse matrix
            # loses ~1e-3 of the density to rounding at cutoff 1e-13 (measured: 1e-6
            # relative error in the far field at p = 8, against 8e-10 this way)
            self._uc2e[lev] = (vh[keep].conj().T / sv[keep], u[:, keep].conj().T.copy())

    def _local_plan(self, dipoles):
        src = np.concatenate([self._src[self._own_near], self._ghost[self._ghost_near],
                              self._far_pts])
        trg = self._trg
        if not len(trg):
            return None
        if not len(src):
            return "empty"
        if self.same:
            # The targets are the own sources, the first len(trg) local sources (every own
            # source is in a target box, so near). A same-points plan whose targets are that
            # prefix (ghost and far surface points are sources only: their boxes get no near
            # list, no locals) computes own-own pairs once by Newton's third law and the rest
            # from the own side, with the serial plan's order. Taking the ghost and far points
            # as targets too (their fields dropped) ran slower than the one-sided plan: 1e6
            # points on 2 ranks 8.5 s against 5.4 s (the far points' tight surface clusters).
            return api.Fmm(src, kernel=self.family,
                           dipoles=dipoles, hessians=self._hessians, eps=self.eps,
                           dtype=self.dtype, threads=self.threads, _target_prefix=len(trg))
        return api.Fmm(src, trg,
                       kernel=self.family, dipoles=dipoles, hessians=self._hessians,
                       eps=self.eps, dtype=self.dtype, threads=self.threads,
                       _direct_targets=self._lonely_targets())

    def _lonely_fine(self):
        """(n, n, n) bool: the fine boxes holding targets (any rank's) with no source in or
        next to them; computed once per plan."""
        if getattr(self, "_lonely_grid", None) is None:
            self._lonely_grid = self._fine_has_trg & ~_dilate(self._fine_src > 0)
        return self._lonely_grid

    def _lonely_targets(self):
        """For a decaying kernel, own targets with no source in or next to their fine box, or
        None: their field is all far boxes' equivalent densities, whose values at a target
        cancel to far less than the sum of their magnitudes, so the local FMM's expansions of
        them (eps relative to that sum, and boxes of many decay lengths) are not good enough
        there: they take their sources directly (``api.Fmm``'s ``_direct_targets``). Measured
        before: sources in the unit cube, lam = 5, targets 4 units from its centre, eps 1e-6:
        2.3e-4 of u-bar (L2) on 2 ranks, 2.3e-9 with a direct local sum."""
        if self._decay(1.0) is None:
            return None
        mask = self._lonely_fine().reshape(-1)[_grid_index(self._fine)][self._tkey]
        return mask if mask.any() else None

    # -- evaluation --------------------------------------------------------------------------
    def _check_densities(self, charges, dipoles):
        if charges is None and dipoles is None:
            raise ValueError("give charges and/or dipoles")
        q, d, single = as_densities(charges, dipoles, self._n_in[0], self.family.complex)
        return q, d, single

    def evaluate(self, local_charges=None, *, dipoles=None, gradient=False):
        """Potentials (and gradients) at this rank's targets (or sources) in its order, for
        ``local_charges`` (n,) / (n, k) and/or ``dipoles`` (n, 3) / (n, k, 3) of this rank's
        sources: the serial :meth:`aotfmm.Fmm.evaluate`'s shapes. Collective."""
        pot, grad, _ = self._run(local_charges, dipoles, 2 if as_bool("gradient", gradient)
                                 else 1)
        return (pot, grad) if grad is not None else pot

    def fields(self, local_charges=None, *, dipoles=None, pg=None, pgt=None):
        """Potentials, gradients and Hessians in one traversal, FMM3D's output levels as in
        the serial :meth:`aotfmm.Fmm.fields`: ``pg`` at this rank's sources (a plan without
        ``local_targets``; default 1), ``pgt`` at its targets (default 1 when it has them);
        0 nothing, 1 potential, 2 and gradient, 3 and Hessian (xx, yy, zz, xy, xz, yz; a plan
        built with ``hessians=True``, Laplace only). Returns :class:`aotfmm.Fields`, None where
        not asked. Collective; every rank asks for the same levels."""
        def levels():
            a = check_level("pg", pg, 1 if self.same else 0, self.same,
                            "a plan with local_targets does not compute (use one without)")
            b = check_level("pgt", pgt, 0 if self.same else 1, not self.same,
                            "the plan has no targets")
            if max(a, b) == 3 and not self._hessians:
                raise ValueError("Hessians (pg or pgt = 3) need a plan built with "
                                 "hessians=True")
            return a, b
        a, b = _agree(self.comm, levels)
        pot, grad, hess = self._run(local_charges, dipoles, max(a, b, 1), asked=(a, b))
        lvl = a or b
        out = dict(pot=None, grad=None, hess=None, pottarg=None, gradtarg=None, hesstarg=None)
        tail = "" if self.same else "targ"
        if lvl:
            out["pot" + tail] = pot
            out["grad" + tail] = grad if lvl >= 2 else None
            out["hess" + tail] = hess if lvl == 3 else None
        return api.Fields(**out)

    def _run(self, local_charges, dipoles, level, asked=None):
        """(pot, grad or None, hess or None) at this rank's points for output ``level`` (1
        potential, 2 and gradient, 3 and Hessian); ``asked``: the levels every rank must agree
        on besides the densities' shapes."""
        comm = self.comm
        t0 = time.perf_counter()
        gradient = level >= 2
        q, d, single = _agree(comm, self._check_densities, local_charges, dipoles)
        k = (q if q is not None else d).shape[0]
        _same_on_every_rank(comm, (k, q is not None, d is not None, level, asked),
                            "the densities (k, charges, dipoles) and output levels")
        self._warn_few_charges(q, d)
        vdt = np.dtype(np.complex128) if self.family.complex else np.dtype(np.float64)
        seconds = {}
        t = time.perf_counter()
        routes = self._point_routes() + (self._route_ghost,)
        bytes0 = sum(r.bytes for r in routes)
        # rows: per source, k charges then 3k dipole components
        cols = []
        if q is not None:
            cols.append(q.T.astype(vdt))
        if d is not None:
            cols.append(d.transpose(2, 0, 1).reshape(self._n_in[0], 3 * k).astype(vdt))
        dens = self._route_src.send(np.concatenate(cols, axis=1))
        del cols
        ghost = self._route_ghost.send(dens[self._ghost_rows])
        seconds["densities"] = time.perf_counter() - t
        t = time.perf_counter()
        qo = dens[:, :k] if q is not None else None
        do = dens[:, -3 * k:].reshape(-1, k, 3) if d is not None else None
        qg = ghost[:, :k] if q is not None else None
        dg = ghost[:, -3 * k:].reshape(-1, k, 3) if d is not None else None
        with _blas.limit_one():
            far = self._far_densities(qo, do, k, vdt)
        seconds["far densities"] = time.perf_counter() - t
        t = time.perf_counter()
        # the routed densities, held only by this list: the local FMM's densities are made
        # from them and they are dropped before it runs (peak memory)
        parts = [(qo, do, qg, dg, far)]
        del dens, ghost, qo, do, qg, dg, far
        out = [_agree(comm, self._local_fields, parts, k, vdt, level)]
        seconds["local fmm"] = time.perf_counter() - t
        t = time.perf_counter()
        home = self._route_trg.back(out)  # the only reference: freed once sent
        seconds["results home"] = time.perf_counter() - t
        seconds["evaluate"] = time.perf_counter() - t0
        self.stats["seconds"].update({"eval:" + a: b for a, b in seconds.items()})
        self.stats["bytes"]["eval:points"] = (
            sum(r.bytes for r in routes) - bytes0)
        def part(lo, width):
            a = home[:, lo:lo + width * k].reshape((-1, k, width) if width > 1 else (-1, k))
            a = a[:, 0] if single else a
            return np.ascontiguousarray(a.astype(self.dtype, copy=False))
        return (part(0, 1), part(k, 3) if gradient else None,
                part(4 * k, 6) if level == 3 else None)

    def _warn_few_charges(self, q, d):
        """An AccuracyWarning on every rank when a density has fewer than
        min(_FEW_CHARGES, n / 8) effective charges ((sum |q|)^2 / sum q^2 over all ranks,
        dipoles by |d|) and some rank has far boxes' equivalent densities. The serial plan
        sums such a density's strongest sources directly (:meth:`aotfmm.evaluate.Plan.
        _few_split`); here each rank's local FMM does so for the sources it holds (a single
        rank: exact, no warning), but a source reaches the other
        ranks through its far box's equivalent density, fitted to that one source: one charge
        on a box face, 1000 points near the corner of the box below, 2 ranks, eps 1e-6:
        gradients up to 1.95x eps (2026-12-04; 6x without the local direct sums). Collective."""
        mag = _evaluate.density_magnitudes(q, d)
        if self._approximates is None:  # (each local FMM sums its own few directly)
            self._approximates = self.comm.allreduce(int(bool(self._n_far))) > 0
        s1, s2 = self.comm.allreduce(np.stack([mag.sum(axis=-1), np.square(mag).sum(axis=-1)]))
        few = _evaluate.few_charges(s1, s2, self.n_total)
        if self._approximates and few.any():
            j = int(np.flatnonzero(few)[0])
            warnings.warn(
                f"aotfmm.mpi rank {self.comm.rank}: the field of density {j} comes from few "
                f"points (about {s1[j] ** 2 / s2[j]:.0f} effective charges of "
                f"{self.n_total}); the serial aotfmm.Fmm sums such sources directly, the "
                f"distributed plan only for the ranks holding them: elsewhere they arrive "
                f"through far boxes' equivalent densities, whose accuracy for a few sources "
                f"is not what eps promises (measured up to 2x eps in gradients). Ask for a "
                f"smaller eps, or sum such fields directly (aotfmm.direct)",
                AccuracyWarning, stacklevel=_frame._caller_level())

    def _local_densities(self, qo, do, qg, dg, far, k, vdt):
        """(charges (n, k), dipoles (n, k, 3) or None) of the local FMM's sources, in its
        order: own and ghost sources near this rank's targets, then the far boxes' surface
        points (charges only); None when this rank runs no local FMM."""
        if self._local is None or self._local == "empty" or not self._n_trg:
            return None
        n_o, n_g, n_f = self._n_own_near, self._n_ghost_near, self._n_far
        on, gn = self._own_near, self._ghost_near
        qs = np.zeros((n_o + n_g + n_f, k), dtype=vdt)
        if qo is not None:
            qs[:n_o] = qo[on]
            qs[n_o:n_o + n_g] = qg[gn]
        if n_f:
            qs[n_o + n_g:] = far
        ds = None
        if do is not None:
            ds = np.zeros((n_o + n_g + n_f, k, 3), dtype=vdt)
            ds[:n_o] = do[on]
            ds[n_o:n_o + n_g] = dg[gn]
        return qs, ds

    def _local_fields(self, parts, k, vdt, level):
        """The serial FMM on own + ghost + far surface points: the rows going home, k
        potentials, then 3k gradient components (level >= 2), then 6k Hessian components
        (level 3) per own target. ``parts``: a one-item list of the routed densities (own
        charges, own dipoles, ghost charges, ghost dipoles, far-box densities), emptied."""
        n_t = self._n_trg
        width_all = (1, 4, 10)[level - 1] * k
        plan = self._local
        dens = self._local_densities(*parts.pop(), k, vdt)
        if dens is not None:
            qs, ds = dens
            del dens
            with _blas.limit_one():  # BLAS's own threads: one per rank (they spin, and
                # ranks share the node: M2L ran 8x slower with 2 ranks x 2 BLAS threads)
                if level == 3:
                    f = plan.fields(qs, dipoles=ds, **({"pg": 3} if self.same else {"pgt": 3}))
                    res = (f.pot, f.grad, f.hess) if self.same else \
                        (f.pottarg, f.gradtarg, f.hesstarg)
                else:
                    res = plan.evaluate(qs, dipoles=ds, gradient=level == 2)
                    res = res if level == 2 else (res,)
                if self.same:  # targets = the first n_t sources
                    res = tuple(part[:n_t] for part in res)
            del qs, ds
            # made after the FMM, and each part freed once copied (peak memory)
            out = np.empty((n_t, width_all), dtype=vdt)
            res = list(res)
            for lo, width in ((0, 1), (k, 3), (4 * k, 6))[:len(res)]:
                out[:, lo:lo + width * k] = res.pop(0).reshape(n_t, width * k)
            return out
        return np.zeros((n_t, width_all), dtype=vdt)

    def _far_densities(self, q, d, k, vdt):
        """This rank's far boxes' equivalent densities (n_far_points, k): the partial densities
        of own sources in the boxes it contributes to go to their homes, which sum them and
        send each rank its own far boxes (see :meth:`_far_exchange`)."""
        ns = len(self._surf)
        part = _agree(self.comm, self._far_partials, q, d, k, vdt)
        b0 = self._route_contrib.bytes + self._route_req.bytes
        m0 = self._route_contrib.messages + self._route_req.messages
        got = self._route_contrib.send(part.reshape(len(part), ns * k))
        del part
        total = np.zeros((self._n_wanted, ns * k), dtype=vdt)
        np.add.at(total, self._contrib_into, got)
        del got
        mine = self._route_req.back([total[self._req_rows]])
        self.stats["bytes"]["eval:far"] = self._route_contrib.bytes + self._route_req.bytes - b0
        self.stats["messages"]["eval:far"] = \
            self._route_contrib.messages + self._route_req.messages - m0
        return mine.reshape(-1, k)

    def _far_partials(self, q, d, k, vdt):
        """(n_contrib, n_surf, k): the equivalent densities of this rank's own sources in each
        far box it contributes to (:meth:`_far_exchange`): their fields on the box's check
        surface, from coordinates relative to its centre, then the pseudo-inverse.

        The fields are summed over runs of at most ``_FAR_RUN[dt]`` sources and the runs in
        float64. A problem whose serial plan takes float32 pair terms (Laplace; float64 at eps
        >= ``_dispatch.MIXED_NEAR_EPS``, and float32) takes its terms here in float32 too:
        points and check surfaces are at least 1.2 box half widths apart, and runs of 256
        float32 terms erred ~2e-9 of the field of |q| on the surface (15625 random charges, p_far
        10; shorter since 2026-12-06, for a large term followed by small ones: ``_FAR_RUN``).
        A box of 15625 sources onto 488 check points, one core (2-core AMD EPYC Zen 2):
        ``api.direct`` 11.3 ms, float64 terms 8.2 ms, float32 2.3 ms (runs of 256). Those
        plans' pseudo-inverses stop at ``_PINV_RCOND_TERMS`` (the rounding would be
        amplified)."""
        grid = self.grid
        ns = len(self._surf)
        acc = np.zeros((len(self._contrib), ns, k), dtype=vdt)
        if not len(self._contrib):
            return acc
        dt = self._far_dtype
        run = _FAR_RUN[dt]
        lo, hi = self._contrib_rows
        rows = np.concatenate([self._sorder[a:b] for a, b in zip(lo, hi)])
        counts = hi - lo
        first = np.concatenate(([0], np.cumsum(counts)[:-1]))
        ijk = deinterleave(self._contrib_key)
        half = np.array([grid.box_half(lev) for lev in self._contrib_lev])
        centers = np.array([grid.center(c, lev) for c, lev in zip(ijk, self._contrib_lev)])
        box = np.repeat(np.arange(len(counts)), counts)
        xyz = (self._src[rows] - centers[box]).T  # relative to the box centre, in float64
        # The sums run in units where each box's half-width (for a scale-invariant kernel,
        # G(h x) = h^degree G(x)) and each box's largest density are about 1, so float32
        # terms neither underflow nor overflow (charges 1e-44 or cubes 1e20 wide did):
        # dipoles take 1 / h with the coordinates, the results h^degree; densities a power
        # of two per box and column, the results its inverse.
        q = None if q is None else q[rows]
        d = None if d is None else d[rows]
        # Exponents rather than scale factors (a factor 2^-e overflows for subnormal
        # densities), per box and density column (columns in different units: one scale
        # flushed the small one to zero in float32). Charges and dipoles / h share one
        # exponent per box and column: e = the larger of theirs.
        scaled = self.family.scale_invariant
        m_h, e_h = np.frexp(half) if scaled else (np.ones(len(counts)), np.zeros(len(counts),
                                                                                int))
        if scaled:
            xyz /= half[box]
        radius_half = np.ones_like(half) if scaled else half

        def exponent(dens, axes):
            big = np.abs(dens).max(axis=axes) if axes else np.abs(dens)   # (n, k)
            big = np.maximum.reduceat(big, first, axis=0)                 # (boxes, k)
            return np.where(big > 0, np.frexp(np.where(big > 0, big, 1.0))[1], -10 ** 6)

        e = np.full((len(counts), k), -10 ** 6)
        if q is not None:
            e = np.maximum(e, exponent(q, None))
        if d is not None:  # (d / h) ~ d / m_h 2^-e_h
            e = np.maximum(e, exponent(d, 2) + 1 - e_h[:, None])
        e = np.where(e < -10 ** 5, 0, e)  # all-zero columns
        if q is not None:
            q = _ldexp(q, -e[box])
        if d is not None:
            d = _ldexp(d / m_h[box][:, None, None], -(e + e_h[:, None])[box][:, :, None])
        with np.errstate(over="ignore", divide="ignore"):
            mant, e_out = np.frexp(half ** self.family.degree) if scaled else \
                (np.ones(len(counts)), np.zeros(len(counts), int))
        # runs: box i's sources cut into ceil(counts[i] / run) pieces
        n_runs = -(-counts // run)
        run_box = np.repeat(np.arange(len(counts)), n_runs)
        nth = np.arange(len(run_box)) - np.repeat(np.cumsum(n_runs) - n_runs, n_runs)
        starts = first[run_box] + nth * run
        ends = np.minimum(starts + run, first[run_box] + counts[run_box])
        with _threads.Workers(self.threads) as workers:
            check = check_potentials(
                self.family, dt, xyz, starts, ends, radius_half[run_box], R_UP_CHECK,
                self._surf.T, charges=None if q is None else q.T,
                dipoles=None if d is None else d.transpose(1, 2, 0), workers=workers)
        del xyz, q, d
        sums = np.add.reduceat(check.astype(vdt), np.cumsum(n_runs) - n_runs, axis=0)
        sums = _ldexp(sums * mant[:, None, None], (e + e_out[:, None])[:, :, None])
        for lev in np.unique(self._contrib_lev):
            at = np.flatnonzero(self._contrib_lev == lev)
            a, b = self._uc2e[lev]
            # (boxes, k, ns) -> equivalent densities (boxes, ns, k)
            acc[at] = ((sums[at] @ b.T) @ a.T).transpose(0, 2, 1)
        return acc


def _ldexp(a, e):
    """a * 2^e elementwise (e broadcast), exact unless the result leaves the float range;
    complex a scaled part by part."""
    if np.iscomplexobj(a):
        return _ldexp(a.real, e) + 1j * _ldexp(a.imag, e)
    return np.ldexp(a, np.broadcast_to(e, a.shape).astype(np.int32))


def _exact_shift(lo, hi):
    """Per axis a shift c such that x - c is exact in float64 for every x in [lo, hi]: where
    the range lies within a factor 4 of itself away from 0 (0 < lo, hi <= 4 lo, or mirrored)
    its midpoint clipped into [hi / 2, 2 lo] (then c / 2 <= x <= 2 c: Sterbenz), else 0 (the
    range reaches within 3/4 of its width of 0, so the caller's coordinates are as fine as
    the range itself)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    mid = 0.5 * lo + 0.5 * hi
    c = np.zeros_like(lo)
    pos = (lo > 0) & (hi <= 4.0 * lo)
    neg = (hi < 0) & (lo >= 4.0 * hi)
    c[pos] = np.clip(mid[pos], 0.5 * hi[pos], 2.0 * lo[pos])
    c[neg] = np.clip(mid[neg], 2.0 * hi[neg], 0.5 * lo[neg])
    return c


def _coarse_span(lev, key, coarse):
    """First and last box of the ``coarse`` level inside (or holding) boxes ``key`` of
    levels ``lev`` (arrays)."""
    down = 3 * np.maximum(coarse - lev, 0)
    up = 3 * np.maximum(lev - coarse, 0)
    return (key << down) >> up, (((key + 1) << down) - 1) >> up


def _far_code(level, keys):
    """One int64 per far box: its Morton key at ``level`` (< 2^57) and the level."""
    return (np.asarray(keys, dtype=np.int64) << 4) | level


def _far_uncode(codes):
    codes = np.asarray(codes, dtype=np.int64)
    return codes & 15, codes >> 4


def _ranges(counts):
    """0..c-1 for each c in ``counts``, concatenated."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)


def _index(rows):
    """Row numbers kept for the plan's lifetime, as int32 when they fit (half the memory of
    int64 per point; numpy indexes with either)."""
    return rows.astype(np.int32) if len(rows) < 2 ** 31 - 1 else rows


def _rows(mask):
    """The rows where ``mask`` holds: a slice of all of them when every row does (no index
    array, and indexing with it makes no copy), else their numbers."""
    return slice(None) if mask.all() else _index(np.flatnonzero(mask))


# ------------------------------------------------------------------------------------- demo

def _peak_mib(field="VmHWM"):
    """This process's peak resident memory (VmHWM; ``field="VmRSS"``: the current one), MiB;
    None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


#: The demo's point sets: the unit cube, the unit sphere's surface, a Plummer sphere (scale
#: 0.1, cut at radius 1), as in benchmarks/compare.py.
DEMO_DISTS = ("uniform", "sphere", "plummer")


def _demo_points(dist, rng, n):
    if dist == "uniform":
        return rng.random((n, 3))
    x = rng.standard_normal((n, 3))
    x /= np.linalg.norm(x, axis=1)[:, None]
    if dist == "sphere":
        return x
    a = 0.1  # radius by inverting the enclosed mass r^3 / (r^2 + a^2)^(3/2) on [0, M(1)]
    u = rng.random(n) / (1.0 + a * a) ** 1.5
    return x * (a / np.sqrt(u ** (-2.0 / 3.0) - 1.0))[:, None]


def demo(n=100_000, eps=1e-6, threads=None, level=None, sample=500, seed=0, gradient=True,
         comm=None, out=None, dist="uniform"):
    """Random points (``dist``: one of :data:`DEMO_DISTS`, default the unit cube), dealt to
    the ranks at random in unequal shares; a
    distributed plan and one evaluation. Returns (on every rank) a dict: per-rank stats
    (points, ghosts, far boxes, bytes, messages, seconds per stage, peak MiB) and, from rank 0,
    the relative L2 error on ``sample`` targets against a direct sum (all points gathered on
    rank 0 after the timed part). Prints a report on rank 0 when ``out`` is a stream."""
    MPI = _mpi()
    comm = MPI.COMM_WORLD if comm is None else comm
    start_mib = _peak_mib("VmRSS")  # the interpreter, numpy, mpi4py and aotfmm, before points
    n = int(n)
    # each rank draws only its own points: rank r's share from a stream of its own
    w = np.random.default_rng(seed + 1).random(comm.size) + 0.5
    counts = np.floor(n * w / w.sum()).astype(np.int64)
    counts[0] += n - counts.sum()
    mine_rng = np.random.default_rng([seed, comm.rank])
    x = _demo_points(dist, mine_rng, int(counts[comm.rank]))
    q = mine_rng.standard_normal(len(x))
    comm.Barrier()
    t0 = time.perf_counter()
    plan = Fmm(x, comm=comm, eps=eps, threads=threads, level=level)
    res = plan.evaluate(q, gradient=gradient)
    comm.Barrier()
    wall = time.perf_counter() - t0
    pot = res[0] if gradient else res
    stats = dict(plan.stats, peak_mib=_peak_mib(), start_mib=start_mib, wall=wall)
    everyone = comm.gather(stats, root=0)
    # error on a sample, against a direct sum over all points (gathered after the timing)
    xs = comm.gather(x, root=0)
    qs = comm.gather(q, root=0)
    ps = comm.gather(pot, root=0)
    err = None
    if comm.rank == 0:
        X, Q, Pt = np.concatenate(xs), np.concatenate(qs), np.concatenate(ps)
        s = np.random.default_rng(seed + 2).choice(len(X), min(sample, len(X)), replace=False)
        ref = api.direct(X, Q, X[s])
        err = float(np.linalg.norm(Pt[s] - ref) / np.linalg.norm(ref))
    report = comm.bcast(dict(ranks=everyone, error=err, wall=wall, n=n, eps=eps,
                             size=comm.size), root=0)
    if comm.rank == 0 and out is not None:
        where = {"uniform": "in the unit cube", "sphere": "on the unit sphere",
                 "plummer": "in a Plummer sphere"}[dist]
        print(f"aotfmm.mpi demo: {n} points {where} on {comm.size} rank(s), eps {eps}, "
              f"level {report['ranks'][0]['level']}, p_far {report['ranks'][0]['p_far']}; "
              f"wall {wall:.2f} s; error on {len(s)} targets vs direct: {err:.1e}", file=out)
        print(f"{'rank':>4} {'in':>9} {'owned':>9} {'ghosts':>8} {'far box':>7} {'far pts':>8} "
              f"{'MB sent':>8} {'msgs':>5} {'setup s':>8} {'local s':>8} {'eval s':>7} "
              f"{'peak MiB':>8}", file=out)
        for st in report["ranks"]:
            sec = st["seconds"]
            sent = sum(st["bytes"].values()) / 1e6
            msgs = sum(st["messages"].values())
            print(f"{st['rank']:>4} {st['n_sources_in']:>9} {st['n_sources']:>9} "
                  f"{st['n_ghost']:>8} {st['n_far_boxes']:>7} {st['n_far_points']:>8} "
                  f"{sent:>8.2f} {msgs:>5} {sec['setup']:>8.2f} {sec['eval:local fmm']:>8.2f} "
                  f"{sec['eval:evaluate']:>7.2f} {st['peak_mib'] or 0:>8.0f}", file=out)
        stages = [k for k in report["ranks"][0]["seconds"]]
        print("seconds per stage (max over ranks): " + ", ".join(
            f"{k} {max(r['seconds'][k] for r in report['ranks']):.2f}" for k in stages), file=out)
    return report


def main(argv=None):
    import argparse
    import json
    import sys
    parser = argparse.ArgumentParser(
        prog="python -m aotfmm.mpi",
        description="aotfmm over MPI ranks; run under mpiexec -n P")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="random cube problem: per-rank points, ghosts, bytes, "
                       "stage times, peak memory, error on a sample")
    d.add_argument("-n", type=float, default=1e5, help="points in all (default 1e5)")
    d.add_argument("--eps", type=float, default=1e-6)
    d.add_argument("--threads", type=int, default=None, help="per rank (default: the node's "
                   "CPUs shared between its ranks)")
    d.add_argument("--level", type=int, default=None)
    d.add_argument("--dist", choices=DEMO_DISTS, default="uniform",
                   help="point set (default: the unit cube)")
    d.add_argument("--json", metavar="PATH", help="also write the report here (rank 0)")
    args = parser.parse_args(argv)
    # every rank checks the same arguments before any collective: all exit 2, none waits
    try:
        if not (np.isfinite(args.n) and args.n >= 1 and args.n == int(args.n)):
            raise ValueError(f"-n must be a whole number of points >= 1, got {args.n:g}")
        check_eps(args.eps, np.dtype(np.float64))
        check_integer("--threads", args.threads, lo=1, hi=_threads.MAX_THREADS,
                      allow_none=True)
        check_integer("--level", args.level, lo=2, hi=7, allow_none=True)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        parser.error("--eps " + msg[4:] if msg.startswith(("eps ", "eps=")) else msg)
    MPI = _mpi()
    report = demo(n=args.n, eps=args.eps, threads=args.threads, level=args.level,
                  out=sys.stdout, dist=args.dist)
    if args.json and MPI.COMM_WORLD.rank == 0:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
