"""M2L's products in float32 against float64 on one plan: time and accuracy (issue 19).

A float64 Laplace plan at its sources whose near field takes float32 pair terms (eps >= 1e-6,
p <= 8) also takes M2L's compressed products in float32 (``plan._core.mixed_m2l``; README "Mixed
precision"). This script builds one plan per distribution and evaluates it with the products
in float64 and in float32 in turns (``--repeat`` rounds, best of each), printing M2L's time,
the evaluation's, and the errors of both against a numpy direct sum on ``--sample`` targets:
plain relative L2 (the field) and relative to the field of |q| (the README's contract).

    python benchmarks/m2l_single.py [--n 1e6] [--dist uniform plummer sphere] [--eps 1e-6]
        [--gradient] [--repeat 3] [--sample 1000] [--threads 2]
"""
import argparse
import time

import numpy as np

import aotfmm
from aotfmm._bench import DISTS, make_points


def direct(x, q, idx):
    """Potentials, gradients (n, 3), and the fields of |q| (pot, grad) at x[idx], numpy."""
    pot, grad = np.zeros(len(idx)), np.zeros((len(idx), 3))
    pot_abs, grad_abs = np.zeros(len(idx)), np.zeros(len(idx))
    aq = np.abs(q)
    for a in range(0, len(idx), 8):
        d = x[idx[a:a + 8], None, :] - x[None, :, :]
        r2 = (d * d).sum(-1)
        inv2 = np.divide(1.0, r2, out=np.zeros_like(r2), where=r2 > 0)
        inv = np.sqrt(inv2)
        pot[a:a + 8] = inv @ q
        grad[a:a + 8] = -np.einsum("ijk,ij->ik", d, inv * inv2 * q)
        pot_abs[a:a + 8] = inv @ aq
        grad_abs[a:a + 8] = inv2 @ aq
    c = 1.0 / (4.0 * np.pi)
    return pot * c, grad * c, pot_abs * c, grad_abs * c


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e6)
    ap.add_argument("--dist", nargs="+", default=["uniform", "plummer", "sphere"],
                    choices=DISTS)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--gradient", action="store_true", help="time pot+grad (errors: both)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sample", type=int, default=1000, help="targets for the errors (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    n = int(args.n)
    print(f"n = {n}, eps = {args.eps:g}, threads = {args.threads}, "
          f"{'pot+grad' if args.gradient else 'pot'} timed; best of {args.repeat}")
    print(f"{'dist':8} {'products':8} {'m2l s':>7} {'eval s':>7} {'pot err':>9} {'grad err':>9}"
          f" {'pot/|q|':>9} {'grad/|q|':>9}")
    for dist in args.dist:
        x, q = make_points(dist, n)
        plan = aotfmm.Fmm(x, eps=args.eps, threads=args.threads)
        core = plan._core
        if not core.mixed_m2l:
            print(f"{dist:8} (this plan takes float64 products only: eps below 1e-6, p > 8?)")
            continue
        best = {}
        for _ in range(args.repeat):
            for single in (False, True):
                core.mixed_m2l = single
                t0 = time.perf_counter()
                plan.evaluate(q, gradient=args.gradient)
                t = time.perf_counter() - t0
                m, e = best.get(single, (np.inf, np.inf))
                best[single] = (min(m, plan.timings["eval:m2l"]), min(e, t))
        errs = {}
        if args.sample:
            idx = np.random.default_rng(5).choice(n, min(args.sample, n), replace=False)
            ref_p, ref_g, abs_p, abs_g = direct(x, q, idx)
            for single in (False, True):
                core.mixed_m2l = single
                pot, grad = plan.evaluate(q, gradient=True)
                dp, dg = pot[idx] - ref_p, grad[idx] - ref_g
                errs[single] = (np.linalg.norm(dp) / np.linalg.norm(ref_p),
                                np.linalg.norm(dg) / np.linalg.norm(ref_g),
                                np.linalg.norm(dp) / np.linalg.norm(abs_p),
                                np.linalg.norm(dg) / np.linalg.norm(abs_g))
        core.mixed_m2l = True
        for single in (False, True):
            e = "".join(f" {v:9.2e}" for v in errs.get(single, ()))
            print(f"{dist:8} {'float32' if single else 'float64':8} {best[single][0]:7.3f} "
                  f"{best[single][1]:7.3f}{e}", flush=True)


if __name__ == "__main__":
    main()
