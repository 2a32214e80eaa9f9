"""Leaf size at unlucky problem sizes: plans with and without the root cube's enlargement
(aotfmm.evaluate._ROOT_SCALES; README "Leaf size at unlucky sizes"), interleaved in one process.

    python benchmarks/leaf_size.py                       # uniform, 2.5e5 .. 2e6, float64 1e-6
    python benchmarks/leaf_size.py --n 1.5e6 --dtype float32 --eps 1e-4
    python benchmarks/leaf_size.py --dist sphere plummer --n 1e6 2e6

Per size: the root scale the plan chose, its leaves (and the bounding cube's), and the time of a
plan plus one evaluation (pot+grad unless --pot) with and without the rule, best of --reps
runs each, alternating; the ratio is with / without. Without: the rule's gain threshold set so
that nothing switches (the same code otherwise).
"""
import argparse
import time

import numpy as np

import aotfmm
from aotfmm import evaluate
from aotfmm._bench import DISTS, make_points


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, nargs="+", default=[2.5e5, 3.5e5, 1e6, 1.5e6, 2e6])
    ap.add_argument("--dist", choices=DISTS, nargs="+", default=["uniform"])
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--eps", type=float, default=None,
                    help="default 1e-6 (float64), 1e-4 (float32)")
    ap.add_argument("--pot", action="store_true", help="potentials only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    dt = np.dtype(args.dtype)
    eps = args.eps if args.eps is not None else (1e-6 if dt == np.float64 else 1e-4)
    gain = evaluate._ROOT_SCALE_GAIN
    aotfmm.Fmm(np.random.default_rng(0).random((5000, 3)).astype(dt), eps=eps)  # operators
    print(f"{'points':>10} {'dist':>8} {'root':>6} {'leaves':>7} {'(cube)':>7} "
          f"{'without s':>10} {'with s':>8} {'ratio':>6}")
    for dist in args.dist:
        for n in (int(v) for v in args.n):
            x, q = make_points(dist, n)
            x, q = x.astype(dt), q.astype(dt)
            times = {"without": [], "with": []}
            info = {}
            for _ in range(args.reps):
                for mode in ("without", "with"):
                    evaluate._ROOT_SCALE_GAIN = gain if mode == "with" else -1.0
                    t0 = time.perf_counter()
                    plan = aotfmm.Fmm(x, eps=eps, threads=args.threads)
                    plan.evaluate(q, gradient=not args.pot)
                    times[mode].append(time.perf_counter() - t0)
                    info[mode] = plan.stats
                    del plan
            evaluate._ROOT_SCALE_GAIN = gain
            a, b = min(times["without"]), min(times["with"])
            print(f"{n:10d} {dist:>8} {info['with']['root_scale']:6.3f} "
                  f"{info['with']['leaves']:7d} {info['without']['leaves']:7d} {a:10.3f} "
                  f"{b:8.3f} {b / a:6.2f}", flush=True)


if __name__ == "__main__":
    main()
