"""Tree and interaction-list build time, per phase, with list sizes.

Phases: keys (root cube + Morton codes of the points), sort, refine, balance, assemble (box
arrays and point ranges), then lists (colleagues, U, V, W, X). Sources = targets unless
``--separate``. The reference is a bare ``np.argsort`` of the point codes in the same run.

    python benchmarks/tree.py [--quick] [--ncrit 64] [--threads N] [--separate]
"""
import argparse
import time

import numpy as np

from aotfmm import _threads
from aotfmm.lists import build_lists
from aotfmm.tree import build_tree


def points(kind, n, rng):
    if kind == "uniform":
        return np.ascontiguousarray(rng.uniform(-1.0, 1.0, (3, n)))
    x = rng.standard_normal((3, n))
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=0))


def run(kind, n, ncrit, threads, separate, repeat, rng):
    src = points(kind, n, rng)
    trg = points(kind, n, rng) if separate else src
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        tree = build_tree(src, trg, ncrit, threads=threads)
        t1 = time.perf_counter()
        lists = build_lists(tree, threads=threads)
        t2 = time.perf_counter()
        if best is None or t2 - t0 < best[0]:
            best = (t2 - t0, t1 - t0, t2 - t1, tree, lists)
    total, t_tree, t_lists, tree, lists = best
    ref = time.perf_counter()
    np.argsort(tree.keys[:1] if n == 0 else src[0])
    ref = time.perf_counter() - ref
    ph = tree.timings
    lt = lists.timings
    print(f"{kind:8} n={n:>8} ncrit={ncrit:<4} threads={threads} "
          f"{'src+trg' if separate else 'src=trg'}: total {total:.3f} s "
          f"(tree {t_tree:.3f} + lists {t_lists:.3f}); argsort of n floats {ref:.3f} s")
    print(f"   tree: keys {ph['keys']:.3f}  sort {ph['sort']:.3f}  refine {ph['refine']:.3f}  "
          f"balance {ph['balance']:.3f}  assemble {ph['assemble']:.3f}")
    print(f"   lists: colleagues {lt['colleagues']:.3f}  U {lt['u']:.3f}  V {lt['v']:.3f}  "
          f"W {lt['w']:.3f}  X {lt['x']:.3f}")
    leaves = tree.leaves
    counts = tree.src_end[leaves] - tree.src_start[leaves]
    print(f"   boxes {tree.n_boxes}  leaves {leaves.size} (empty {np.sum(counts == 0)})  "
          f"levels {tree.n_levels}  points/non-empty leaf {counts[counts > 0].mean():.1f}")
    for name in "uvwx":
        sizes = np.diff(getattr(lists, name + "_offsets"))
        rows = sizes[tree.is_leaf] if name in "uw" else sizes[tree.levels >= 2]
        print(f"   |{name.upper()}|: total {sizes.sum():>10}  mean {rows.mean():6.1f}  "
              f"max {sizes.max(initial=0):4}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1e5 points only, one repeat")
    parser.add_argument("--ncrit", type=int, default=64)
    parser.add_argument("--threads", type=int, default=_threads.cpu_count())
    parser.add_argument("--separate", action="store_true", help="separate target set")
    args = parser.parse_args()
    sizes, repeat = ((100_000,), 1) if args.quick else ((100_000, 1_000_000), 3)
    rng = np.random.default_rng(0)
    print(f"CPUs {_threads.cpu_count()}; (|U|, |W| means over leaves, |V|, |X| over level >= 2)")
    for kind in ("uniform", "sphere"):
        for n in sizes:
            run(kind, n, args.ncrit, args.threads, args.separate, repeat, rng)


if __name__ == "__main__":
    main()
