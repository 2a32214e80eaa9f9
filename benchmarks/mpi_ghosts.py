"""On paper: how aotfmm.mpi's ghost volume and far lists grow with the number of ranks, from
the partition of a uniform N-point cube alone (no FMM, no MPI):

    python benchmarks/mpi_ghosts.py                      # N = 1e8, P = 2 .. 1024, levels 3 .. 7

For each coarse level L and rank count P: the coarse boxes (8^L, N / 8^L points each) are cut in
Morton order into P equal ranges exactly as ``aotfmm.mpi.Fmm`` does; a rank receives as ghosts
the points of every box adjacent to one of its own that another rank owns, and, as far-field
sources, the equivalent surface points (n_surf(p_far) = 488 at eps 1e-6) of its far-list
boxes. Printed: own points per rank, ghosts per rank (mean and max), ghosts / own, far boxes
(max over a sample of ranks), the local FMM's sources / own points (what each rank's serial
FMM carries compared with an even share), and the far-field densities each rank moves per
evaluation (one float64 density), sent plus received: one allreduce over every rank's far
boxes (the first version; ~2x their union) against the exchange through the boxes' home ranks
(max over the sample).
"""
import argparse

import numpy as np

from aotfmm.mpi import _far_lists, ghost_destinations, owner_grid
from aotfmm.surfaces import n_surf


def owners(level, size):
    """Owner rank of every box (n, n, n) of ``level`` for a uniform cube (equal weights):
    box k of the Morton order goes to rank k * size // 8^level."""
    nb = 8 ** level
    return owner_grid(((np.arange(nb) * size) // nb).astype(np.int32), level)


def ghosts_per_rank(own, size):
    """Boxes each rank receives as ghosts (aotfmm.mpi's rule, for every box at once)."""
    n = own.shape[0]
    ijk = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), -1).reshape(-1, 3)
    _, dest = ghost_destinations(ijk, own.reshape(-1), own)
    return np.bincount(dest, minlength=size)


def far_boxes(own, rank, level):
    t = own == rank
    return int(sum(len(v) for v in _far_lists(t, np.ones_like(t), level).values()))


def far_exchange(own, size, level, sample):
    """Far-field densities moved per rank, in boxes (one box = n_surf values per density):
    the union of every rank's far lists (one allreduce over them sends and receives about
    twice that per rank: reduce-scatter plus allgather), and for the sampled ranks what aotfmm.mpi's home-rank exchange moves, sent plus received:
    partial densities to the homes of the far boxes holding its points, the sums of its own far
    boxes back, and as a home the partials of the other holders and the sums to every other
    requesting rank (nothing a rank sends to itself)."""
    n = own.shape[0]
    requesters = {}  # (level, i, j, k) -> ranks whose far list holds the box
    for r in range(size):
        for lev, ijk in _far_lists(own == r, np.ones_like(own, dtype=bool), level).items():
            for box in map(tuple, ijk.tolist()):
                requesters.setdefault((lev,) + box, []).append(r)
    worst = 0
    for r in sample:
        mine = own == r
        moved = 0
        for (lev, i, j, k), who in requesters.items():
            f = n >> lev  # coarse boxes per side of a level-lev box
            block = own[i * f:(i + 1) * f, j * f:(j + 1) * f, k * f:(k + 1) * f]
            home = block.reshape(-1)[0]  # boxes are Morton runs: the first cell's owner
            holders = np.unique(block)   # a uniform cube: every owner holds points
            if home == r:
                moved += sum(1 for q in who if q != r)        # sums out
                moved += sum(1 for q in holders if q != r)    # partials in
            else:
                moved += r in who                             # own sum in
                moved += bool(mine[i * f:(i + 1) * f, j * f:(j + 1) * f,
                                   k * f:(k + 1) * f].any())  # own partial out
        worst = max(worst, moved)
    return 2 * len(requesters), worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e8)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 8, 64, 256, 1024])
    ap.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    ap.add_argument("--p-far", type=int, default=10)
    ap.add_argument("--no-exchange", dest="exchange", action="store_false",
                    help="skip the far-field exchange columns (they scan every rank's far list)")
    args = ap.parse_args()
    ns = n_surf(args.p_far)
    print(f"uniform cube, N = {args.n:.0e}; far boxes carry {ns} surface points each (p_far "
          f"{args.p_far})")
    print(f"{'P':>5} {'L':>2} {'boxes/rank':>10} {'own/rank':>10} {'ghosts mean':>11} "
          f"{'ghosts max':>10} {'ghost/own':>9} {'far boxes':>9} {'sources/own':>11} "
          f"{'far MB allreduce':>16} {'far MB sparse':>13}")
    for size in args.ranks:
        for level in args.levels:
            nb = 8 ** level
            if nb < size:
                continue
            own = owners(level, size)
            per_box = args.n / nb
            g = ghosts_per_rank(own, size) * per_box
            own_pts = args.n / size
            sample = sorted({0, size // 3, size // 2, size - 1})
            far = max(far_boxes(own, r, level) for r in sample)
            src = (own_pts + g.max() + far * ns) / own_pts
            n_union, sparse = far_exchange(own, size, level, sample) if args.exchange else \
                (float("nan"), float("nan"))
            mb = ns * 8 / 1e6  # one box's density, one float64 density
            print(f"{size:>5} {level:>2} {nb / size:>10.1f} {own_pts:>10.3g} {g.mean():>11.3g} "
                  f"{g.max():>10.3g} {g.max() / own_pts:>9.2f} {far:>9} {src:>11.2f} "
                  f"{n_union * mb:>16.1f} {sparse * mb:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
