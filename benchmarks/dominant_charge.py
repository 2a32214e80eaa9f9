"""One locally dominant charge: an open gap in the accuracy contract (README "Fields of few
charges"), measured per eps against a numpy sum written here.

    python benchmarks/dominant_charge.py [--eps 1e-3 1e-4 ...] [--threads 1]

Layout (found by a hostile round on 2026-12-06): 27 leaves of 380 uncharged points (a 3 x 3 x
3 block of level-5 boxes of the root cube) with uniform points around them; one unit charge a
near a corner of one of those leaves; 5000 far charges (uniform points outside the block)
carrying 60x a's magnitude. The density has ~2000 effective charges and no heavy cell, so
nothing is routed (``Plan._few_split``), and a's field reaches the block's targets through the
expansions from a box corner, a single source's worst place, while it dominates the field of
|q| there. Printed: the contract's measure over all points, ||u_fmm - u||_2 / ||u_bar||_2 / eps
(u_bar: the field of |q|), for potentials and gradients, and the worst single point's ratio.
A contract measure above 1 is a breach.
"""
import argparse

import numpy as np

import aotfmm


def layout(seed=1):
    """Points (n, 3), charges (n,): see the module docstring."""
    h0 = 0.5 * (1 + 2.0 ** -20)  # the root cube's half-width for points in [0, 1]^3 + corners
    w = 2 * h0 / 32               # a level-5 box

    def lo(ijk):
        return 0.5 - h0 + np.asarray(ijk, dtype=float) * w

    rng = np.random.default_rng(seed)
    block = np.concatenate([lo((i, j, k)) + w * (0.001 + 0.998 * rng.random((380, 3)))
                            for i in range(8, 11) for j in range(8, 11) for k in range(8, 11)])
    far = rng.random((20000, 3))
    far = far[~((far > lo((7, 7, 7))) & (far < lo((13, 13, 13)))).all(1)][:5000]
    a = lo((10, 9, 9)) + 1e-6 * np.array([1.0, 3.0, 3.0])
    x = np.concatenate([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], a], block, far])
    q = np.zeros(len(x))
    q[2] = 1.0
    q[len(x) - len(far):] = 60.0 / len(far) * (1 + 0.1 * rng.random(len(far)))
    return x, q


def reference(x, q):
    """pot, grad and the fields of |q| (pot_bar, |grad|_bar) at every point, r = 0 left out."""
    nz = np.flatnonzero(q)
    ys, qs = x[nz], q[nz]
    n = len(x)
    pot, pbar, gbar = np.zeros(n), np.zeros(n), np.zeros(n)
    grad = np.zeros((n, 3))
    for t0 in range(0, n, 500):
        d = x[t0:t0 + 500, None, :] - ys[None, :, :]
        r2 = (d * d).sum(-1)
        ir = np.divide(1.0, np.sqrt(r2), out=np.zeros_like(r2), where=r2 > 0)
        pot[t0:t0 + 500] = ir @ qs
        pbar[t0:t0 + 500] = ir @ np.abs(qs)
        grad[t0:t0 + 500] = -np.einsum("tsk,ts,s->tk", d, ir ** 3, qs)
        gbar[t0:t0 + 500] = (ir * ir) @ np.abs(qs)
    c = 1.0 / (4.0 * np.pi)
    return c * pot, c * grad, c * pbar, c * gbar


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eps", type=float, nargs="+",
                    default=[1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    x, q = layout()
    pot, grad, pbar, gbar = reference(x, q)
    print(f"{len(x)} points, one unit charge at a leaf corner, 5000 far charges of 60 in all; "
          f"contract measure (error / field of |q| / eps) over all points")
    print(f"{'eps':>7} {'p':>3}  {'pot':>7} {'grad':>7}   worst point: {'pot':>7} {'grad':>7}")
    for eps in args.eps:
        plan = aotfmm.Fmm(x, eps=eps, threads=args.threads)
        u, g = plan.evaluate(q, gradient=True)
        cp = np.linalg.norm(u - pot) / np.linalg.norm(pbar) / eps
        cg = np.linalg.norm(g - grad) / np.linalg.norm(gbar) / eps
        wp = np.max(np.abs(u - pot) / pbar) / eps
        wg = np.max(np.linalg.norm(g - grad, axis=1) / gbar) / eps
        flag = "   <- over the contract" if max(cp, cg) > 1 else ""
        print(f"{eps:7.0e} {plan.p:3d}  {cp:7.3f} {cg:7.3f}   {'':12} {wp:7.2f} {wg:7.2f}{flag}")


if __name__ == "__main__":
    main()
