"""Fields of few charges: the direct part (the strongest sources of a density with few
effective charges summed onto every target, ``Plan._few_split``; spots translated) against the
same evaluation through the expansions alone (``aotfmm.evaluate._FEW_CHARGES = 0``), on one
plan, same run.

    python benchmarks/few_charges.py [--n 1e6] [--dist uniform] [--eps 1e-6] [--threads 2]
                                     [--repeat 2]

Densities: one unit charge, 1000 random charges, one charge 1 among n charges of 1e-6, and n
random charges (never routed: the control); then, on the same points with their last 5000 moved
into a cube 2e-4 of the domain wide (a compact spot, more sources than the direct budget:
translated from a box centred on it, ``aotfmm._spots``), unit charges on the spot only, and
the spot plus n random charges of 1e-4. Per density and path, the best of ``--repeat``
evaluations with gradients, the time of the direct part, and the errors of potentials and
gradients on 300 sampled targets against a numpy sum written here, relative to the field of
|q| (the accuracy contract), so a fast wrong answer does not pass unnoticed.
"""
import argparse
import time
import warnings

import numpy as np

import aotfmm
from aotfmm import _bench, evaluate


def reference(x, q, at):
    """pot, grad and the contract's measures (fields of |q|) at x[at], r = 0 left out."""
    nz = np.flatnonzero(q)
    pot, grad = np.zeros(len(at)), np.zeros((len(at), 3))
    ubar, gbar = np.zeros(len(at)), np.zeros(len(at))
    for a in range(0, len(nz), 4096):
        s = nz[a:a + 4096]
        d = x[at][:, None, :] - x[s][None]
        r2 = (d * d).sum(-1)
        ir = np.where(r2 > 0, 1.0 / np.sqrt(np.where(r2 > 0, r2, 1.0)), 0.0)
        pot += ir @ q[s]
        grad -= np.einsum("tsk,ts->tk", d, ir ** 3 * q[s])
        ubar += ir @ np.abs(q[s])
        gbar += ir ** 2 @ np.abs(q[s])
    c = 1.0 / (4.0 * np.pi)
    return c * pot, c * grad, c * ubar, c * gbar


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e6)
    ap.add_argument("--dist", default="uniform", choices=_bench.DISTS)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    n = int(a.n)
    x, _ = _bench.make_points(a.dist, n)
    rng = np.random.default_rng(0)
    cases = {}
    q = np.zeros(n)
    q[n // 3] = 1.0
    cases["one charge"] = q
    q = np.zeros(n)
    q[rng.choice(n, 1000, replace=False)] = rng.standard_normal(1000)
    cases["1000 charges"] = q
    q = 1e-6 * rng.standard_normal(n)
    q[n // 7] = 1.0
    cases["1 among 1e-6"] = q
    cases["random (control)"] = rng.standard_normal(n)
    xs = x.copy()
    w = float(np.ptp(x, axis=0).max())
    xs[n - 5000:] = x[n // 5] + 1e-4 * w * rng.uniform(-1, 1, (5000, 3))
    q = np.zeros(n)
    q[n - 5000:] = 1.0
    spots = {"spot of 5000": q}
    q = 1e-4 * rng.standard_normal(n)
    q[n - 5000:] = 1.0
    spots["spot + 1e-4 all"] = q
    at = rng.choice(n, 300, replace=False)
    head = True
    for pts, group in ((x, cases), (xs, spots)):
        f = aotfmm.Fmm(pts, eps=a.eps, threads=a.threads)
        if head:
            print(f"{a.dist} n={n} eps={a.eps:g} threads={a.threads} p={f.p}; pot+grad, best "
                  f"of {a.repeat}; errors on 300 targets relative to the field of |q|")
            print(f"{'density':18} {'routed s':>9} {'direct s':>9} {'FMM-only s':>10} "
                  f"{'ratio':>6}  {'pot err':>8} {'grad err':>8} | FMM-only {'pot err':>8} "
                  f"{'grad err':>8}")
            head = False
        for name, q in group.items():
            run(f, pts, q, at, name, a.repeat)


def run(f, x, q, at, name, repeat):
    """One density, routed and through the expansions alone: prints its row."""
    default = evaluate._FEW_CHARGES
    rp, rg, ub, gb = reference(x, q, at)
    row = {}
    for route in (True, False):
        evaluate._FEW_CHARGES = default if route else 0
        best = np.inf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(repeat):
                t = time.perf_counter()
                pot, grad = f.evaluate(q, gradient=True)
                best = min(best, time.perf_counter() - t)
        direct = (f.timings.get("eval:few_direct", 0.0)
                  + f.timings.get("eval:few_spots", 0.0)) if route else 0.0
        ep = np.linalg.norm(pot[at] - rp) / np.linalg.norm(ub)
        eg = np.linalg.norm(grad[at] - rg) / np.linalg.norm(gb)
        row[route] = (best, direct, ep, eg)
    evaluate._FEW_CHARGES = default
    (t1, d1, p1, g1), (t0, _, p0, g0) = row[True], row[False]
    print(f"{name:18} {t1:9.3f} {d1:9.3f} {t0:10.3f} {t1 / t0:6.2f}  {p1:8.1e} {g1:8.1e} "
          f"| FMM-only {p0:8.1e} {g0:8.1e}", flush=True)


if __name__ == "__main__":
    main()
