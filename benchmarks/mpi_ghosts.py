"""On paper: how aotfmm.mpi's ghost volume and far lists grow with the number of ranks, from
the partition of a uniform N-point cube alone (no FMM, no MPI):

    python benchmarks/mpi_ghosts.py                      # N = 1e8, P = 2 .. 1024, levels 3 .. 7

For each coarse level L and rank count P: the coarse boxes (8^L, N / 8^L points each) are cut in
Morton order into P equal ranges exactly as ``aotfmm.mpi.Fmm`` does, and each rank takes its
sources by aotfmm.mpi's own rule (:func:`aotfmm.mpi.point_boxes`, at the fine level G = min(L +
3, 6), or L from 7): as ghost points the sources of the fine boxes adjacent to its own and of
the far boxes below L holding at most n_surf(p_far) = 488 sources (eps 1e-6), and as far-field
sources the 488 equivalent surface points of each other far box. Printed: own points per rank,
ghosts per rank (mean and max), ghosts / own, far boxes (max), the local FMM's sources / own
points (what each rank's serial FMM carries compared with an even share), and the far-field
densities each rank moves per evaluation (one float64 density), sent plus received: one
allreduce over every rank's far boxes (~2x their union) against the exchange through the boxes'
home ranks. Ghosts, far boxes and sources are over a sample of ranks (``--sample``, evenly
spread, the first and last included); the exchange scans every rank's far list and gives the
largest of ranks 0, P/3, P/2 and P - 1.
"""
import argparse

import numpy as np

from aotfmm.mpi import _fine_level, owner_grid, point_boxes
from aotfmm.surfaces import n_surf


def owners(level, size):
    """Owner rank of every box (n, n, n) of ``level`` for a uniform cube (equal weights):
    box k of the Morton order goes to rank k * size // 8^level."""
    nb = 8 ** level
    return owner_grid(((np.arange(nb) * size) // nb).astype(np.int32), level)


def fine_owners(own, level):
    """The owners of the fine boxes (aotfmm.mpi's fine level of ``level``)."""
    f = 1 << (_fine_level(level) - level)
    return own.repeat(f, 0).repeat(f, 1).repeat(f, 2)


def take(fown, rank, level, n_points, ns):
    """(ghost points, far boxes {level: (m, 3)}) of ``rank``: aotfmm.mpi's rule on the fine
    grid of a uniform cube of ``n_points`` (every fine box holds targets and sources)."""
    mine = fown == rank
    s_cnt = np.full(fown.shape, n_points / fown.size)
    points, far = point_boxes(mine, s_cnt, level, ns)
    return float(s_cnt[points & ~mine].sum()), far


def far_exchange(fown, size, level, n_points, ns, sample):
    """Far-field densities moved per rank, in boxes (one box = n_surf values per density):
    the union of every rank's far lists (one allreduce over them sends and receives about
    twice that per rank: reduce-scatter plus allgather), and for the sampled ranks what
    aotfmm.mpi's home-rank exchange moves, sent plus received: partial densities to the homes
    of the far boxes holding its points, the sums of its own far boxes back, and as a home the
    partials of the other holders and the sums to every other requesting rank (nothing a rank
    sends to itself)."""
    n = fown.shape[0]
    fine = n.bit_length() - 1
    requesters = {}  # (level, i, j, k) -> ranks whose far list holds the box
    for r in range(size):
        for lev, ijk in take(fown, r, level, n_points, ns)[1].items():
            for box in map(tuple, ijk.tolist()):
                requesters.setdefault((lev,) + box, []).append(r)
    worst = 0
    for r in sample:
        moved = 0
        for (lev, i, j, k), who in requesters.items():
            f = 1 << (fine - lev)  # fine boxes per side of a level-lev box
            block = fown[i * f:(i + 1) * f, j * f:(j + 1) * f, k * f:(k + 1) * f]
            home = block.reshape(-1)[0]  # boxes are Morton runs: the first cell's owner
            if home == r:
                moved += sum(1 for q in who if q != r)                    # sums out
                moved += sum(1 for q in np.unique(block) if q != r)       # partials in
            else:
                moved += r in who                                         # own sum in
                moved += bool((block == r).any())                         # own partial out
        worst = max(worst, moved)
    return 2 * len(requesters), worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e8)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 8, 64, 256, 1024])
    ap.add_argument("--levels", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    ap.add_argument("--p-far", type=int, default=10)
    ap.add_argument("--sample", type=int, default=16, help="ranks sampled per row (default 16)")
    ap.add_argument("--no-exchange", dest="exchange", action="store_false",
                    help="skip the far-field exchange columns (they scan every rank's far list)")
    args = ap.parse_args()
    ns = n_surf(args.p_far)
    print(f"uniform cube, N = {args.n:.0e}; far boxes carry {ns} surface points each (p_far "
          f"{args.p_far}); ghosts by the fine-box rule (aotfmm.mpi.point_boxes)")
    print(f"{'P':>5} {'L':>2} {'G':>2} {'boxes/rank':>10} {'own/rank':>10} {'ghosts mean':>11} "
          f"{'ghosts max':>10} {'ghost/own':>9} {'far boxes':>9} {'sources/own':>11} "
          f"{'far MB allreduce':>16} {'far MB sparse':>13}")
    for size in args.ranks:
        for level in args.levels:
            nb = 8 ** level
            if nb < size:
                continue
            fown = fine_owners(owners(level, size), level)
            sample = sorted({0, size - 1} | set(np.linspace(0, size - 1, args.sample)
                                                .round().astype(int).tolist()))
            own_pts = args.n / size
            taken = [take(fown, r, level, args.n, ns) for r in sample]
            g = np.array([t[0] for t in taken])
            far = np.array([sum(len(v) for v in t[1].values()) for t in taken])
            src = ((own_pts + g + far * ns) / own_pts).max()
            n_union, sparse = far_exchange(fown, size, level, args.n, ns,
                                           sorted({0, size // 3, size // 2, size - 1})) \
                if args.exchange else (float("nan"), float("nan"))
            mb = ns * 8 / 1e6  # one box's density, one float64 density
            print(f"{size:>5} {level:>2} {_fine_level(level):>2} {nb / size:>10.1f} "
                  f"{own_pts:>10.3g} {g.mean():>11.3g} {g.max():>10.3g} "
                  f"{g.max() / own_pts:>9.2f} {far.max():>9} {src:>11.2f} "
                  f"{n_union * mb:>16.1f} {sparse * mb:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
