"""Several densities in one traversal vs one run per density (issue: k = 8 at 1e5 points must
cost <= 0.5 k single runs), and the cost of dipoles, on the same plan.

    python benchmarks/densities.py [--n 100000] [--k 8] [--eps 1e-6] [--pair-terms-ab]

``--pair-terms-ab``: instead, one density and k densities with the near field's pair terms in
float64 against float32 (what a float64 plan at eps >= 1e-6 takes, README "Mixed precision"),
on the same plan, timed in turns.
"""
import argparse
import time

import numpy as np

import aotfmm


def best_interleaved(fns, repeat):
    """The best of ``repeat`` timings of each function, the functions taking turns: on a VM
    whose speed drifts by 10-30 % within a minute, timing all of one before the other moved
    the ratio by as much (k = 8 charges 0.46 / 0.57 in two runs of the same build)."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]


def pair_terms_ab(plan, label, what, runs, repeat):
    """Each of ``runs`` ((k, function)) with float64 and with float32 pair terms in the near
    field of the same plan (its ``mixed_near``, as the plan chose it at eps >= 1e-6), in turns."""
    if not plan._core.mixed_near:
        print(f"{label:8} {what:8}: this plan keeps float64 pair terms (eps, dtype or order)")
        return
    for k, fn in runs:
        def with_pair_terms(mixed, fn=fn):
            def run():
                plan._core.mixed_near = mixed
                fn()
            return run
        try:
            t64, t32 = best_interleaved((with_pair_terms(False), with_pair_terms(True)), repeat)
        finally:
            plan._core.mixed_near = True
        print(f"{label:8} {what:8} p={plan.p:2d} k={k}: float64 pair terms {t64:.3f} s, float32 "
              f"{t32:.3f} s = {t64 / t32:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pair-terms-ab", action="store_true",
                    help="float64 against float32 pair terms in the near field, same plan")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    src = rng.random((args.n, 3))
    q = rng.standard_normal((args.n, args.k))
    d = rng.standard_normal((args.n, args.k, 3))
    print(f"uniform cube, n = {args.n}, k = {args.k}, eps = {args.eps:g}, "
          f"threads = {aotfmm.config()['threads']}; evaluate only (plan built once)")
    for label, dip in (("charges", False), ("dipoles", True)):
        plan = aotfmm.Fmm(src, eps=args.eps, dipoles=dip)
        for gradient in (False, True):
            if dip:
                def one():
                    plan.evaluate(dipoles=d[:, 0], gradient=gradient)

                def many():
                    plan.evaluate(dipoles=d, gradient=gradient)
            else:
                def one():
                    plan.evaluate(q[:, 0], gradient=gradient)

                def many():
                    plan.evaluate(q, gradient=gradient)
            what = "pot+grad" if gradient else "pot"
            if args.pair_terms_ab:
                pair_terms_ab(plan, label, what, ((1, one), (args.k, many)), args.repeat)
                continue
            one()
            t1, tk = best_interleaved((one, many), args.repeat)
            print(f"{label:8} {what:8} p={plan.p:2d}: 1 density {t1:.3f} s, {args.k} densities "
                  f"{tk:.3f} s = {tk / (args.k * t1):.2f} x {args.k} single runs")


if __name__ == "__main__":
    main()
