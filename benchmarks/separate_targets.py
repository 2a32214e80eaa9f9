"""Separate targets: the plan's defaults against those of until 2026-12-04, same run.

    python benchmarks/separate_targets.py [--n 5e5] [--eps 1e-6] [--threads 2] [--repeat 2]

Since 2026-12-04 a plan with separate targets takes two orders more than the table's p
(three from table order 9) where it took one (two from order 12), and leaves of twice the
table's ncrit (sources and targets counted together). "before" rebuilds the old choice with
an explicit p and ncrit on the same points. Per layout: the best of ``--repeat`` evaluations
with gradients, and the errors of potentials and gradients on (at most) 300 targets against
a numpy sum written here, relative to the field of |q| (the accuracy contract). The "probe"
layout is the one that showed the old orders short: 1e5 uniform charges in [0, .5]^3 and
1000 targets in a cube 0.006 wide at the corner of the box one width below it.
"""
import argparse
import time
import warnings

import numpy as np

import aotfmm
from aotfmm import evaluate


def reference(src, q, trg):
    """pot, grad at trg and the contract's measures (fields of |q|); r = 0 left out."""
    pot, grad = np.zeros(len(trg)), np.zeros((len(trg), 3))
    ubar, gbar = np.zeros(len(trg)), np.zeros(len(trg))
    for a in range(0, len(src), 8192):
        d = trg[:, None, :] - src[None, a:a + 8192]
        r2 = (d * d).sum(-1)
        ir = np.where(r2 > 0, 1.0 / np.sqrt(np.where(r2 > 0, r2, 1.0)), 0.0)
        qa = q[a:a + 8192]
        pot += ir @ qa
        grad -= np.einsum("tsk,ts->tk", d, ir ** 3 * qa)
        ubar += ir @ np.abs(qa)
        gbar += ir ** 2 @ np.abs(qa)
    c = 1.0 / (4.0 * np.pi)
    return c * pot, c * grad, c * ubar, c * gbar


def layouts(n, rng):
    def sphere(m):
        v = rng.standard_normal((m, 3))
        return v / np.linalg.norm(v, axis=1)[:, None]

    def plummer(m):
        r = np.minimum(0.1 / np.sqrt(rng.random(m) ** (-2 / 3) - 1), 1.0)
        return sphere(m) * r[:, None]

    g = int(round(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.linspace(-0.5, 0.5, g)] * 3), -1).reshape(-1, 3)
    yield "uniform + uniform", rng.random((n, 3)), rng.random((n, 3))
    yield "sphere + ball", sphere(n), sphere(n) * rng.random((n, 1)) ** (1 / 3)
    yield "Plummer + grid", plummer(n), grid
    yield "cube + plane", rng.random((n, 3)), np.c_[rng.random((n // 10, 2)),
                                                    np.full(n // 10, 0.5)]
    box = np.vstack([rng.uniform(0, 0.5, (100000, 3)), [[-1, -1, -1], [1, 1, 1]]])
    corner = np.r_[rng.choice([0.0, 0.5], 2), -0.5]
    yield "probe", box, corner + rng.uniform(-0.003, 0.003, (1000, 3))


def old_choice(eps):
    """(p, ncrit) a separate-target plan took until 2026-12-04 (charges, Laplace)."""
    row = evaluate.table_row(eps)
    return min(row[1] + 1 + (row[1] >= 12), 16), row[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=5e5)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    n, eps = int(args.n), args.eps
    rng = np.random.default_rng(0)
    p_old, nc_old = old_choice(eps)
    p_new, nc_new = evaluate.choose_parameters(eps, separate_targets=True)
    print(f"eps {eps:g}, {args.threads} threads, pot+grad, best of {args.repeat}; "
          f"before p = {p_old}, ncrit {nc_old}; now p = {p_new}, ncrit {nc_new}")
    print(f"{'layout':18} {'sources':>8} {'targets':>8} | {'before s':>9} {'now s':>7} "
          f"{'now/bef':>7} | {'err before (pot, grad)':>22} | {'err now (pot, grad)':>20}")
    for name, src, trg in layouts(n, rng):
        q = rng.standard_normal(len(src)) if name != "probe" else rng.random(len(src))
        at = rng.choice(len(trg), min(300, len(trg)), replace=False)
        ref = reference(src, q, trg[at])
        row = []
        for kw in (dict(p=p_old, ncrit=nc_old), {}):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", aotfmm.AccuracyWarning)  # p=9 "reaches 1e-6"
                f = aotfmm.Fmm(src, trg, eps=eps, threads=args.threads, **kw)
            best = np.inf
            for _ in range(args.repeat):
                t = time.perf_counter()
                pot, grad = f.evaluate(q, gradient=True)
                best = min(best, time.perf_counter() - t)
            e_pot = np.linalg.norm(pot[at] - ref[0]) / np.linalg.norm(ref[2])
            e_grad = np.linalg.norm(grad[at] - ref[1]) / np.linalg.norm(ref[3])
            row.append((best, e_pot, e_grad))
            del f
        (t0, p0, g0), (t1, p1, g1) = row
        print(f"{name:18} {len(src):>8} {len(trg):>8} | {t0:9.2f} {t1:7.2f} {t1 / t0:7.2f} | "
              f"{p0:10.2e} {g0:10.2e} | {p1:9.2e} {g1:9.2e}", flush=True)


if __name__ == "__main__":
    main()
