"""Error vs expansion order p: the measurements behind the eps -> p table in aotfmm/families.py.

For each distribution (uniform cube, sphere surface, clustered; "sparse charges", the
single-source worst case, not yet in the table), dtype and p, runs the FMM on n points and
prints the relative L2 error of potential and gradient on a sample of targets against direct
summation (``--contract``: relative to the field of |q|, the README's contract), plus the
evaluate time.

    python benchmarks/accuracy.py [--n 20000] [--p 3 4 5 ...] [--dtype float64 float32]
        [--kernel laplace|yukawa|helmholtz] [--param-d 10] [--cases NAME ...] [--contract]
        [--mixed]

The table measures the expansion orders, so the near field's pair terms stay float64 here;
``--mixed`` keeps what a float64 plan at eps >= 1e-6 does by default for p <= 8 (float32 pair
terms summed in float64, README "Mixed precision"), whose own error adds up to ~3e-7 where
the near field is most of the field (``aotfmm._dispatch.MIXED_NEAR_ERROR``). Fields of few
charges ("sparse charges") go through the expansions too: the direct sum of their strongest
sources that plans do by default since 2026-12-04 (``evaluate._FEW_CHARGES``, README "Fields of
few charges") is off here.

``--kernel yukawa``/``helmholtz`` with ``--param-d X``: lam (or kappa) times the domain size D
of each case (its largest extent) is X; the reference is the numpy-free compiled direct sum in
float64/complex128 (exact 1/sqrt, full-accuracy exp/sin/cos), checked against numpy in the tests.
"""
import argparse
import time
import warnings

import numpy as np

import aotfmm
from aotfmm._direct import _direct, _direct_multi
from aotfmm import evaluate
from aotfmm._threads import Workers
from aotfmm.evaluate import choose_parameters

DISTS = {
    "uniform": lambda rng, n: rng.random((n, 3)),
    "sphere": lambda rng, n: (lambda x: x / np.linalg.norm(x, axis=1, keepdims=True))(
        rng.standard_normal((n, 3))),
    "clustered": lambda rng, n: rng.random((5, 3))[rng.integers(0, 5, n)]
    + 0.03 * rng.standard_normal((n, 3)),
}


def two_far_clusters(rng, n):
    """Two clusters of width 1e-3 ten units apart (a deep tree)."""
    half = n // 2
    a = 1e-3 * rng.random((half, 3))
    return np.concatenate([a, a[: n - half] + [10.0, 0.0, 0.0]])


#: Separate targets: (name, sources, targets); the far-field gradient is the weakest output.
SEPARATE = {
    "clustered->box": (DISTS["clustered"], lambda rng, n: 2.0 * rng.random((n, 3)) - 0.5),
    "sphere->cube": (DISTS["sphere"], lambda rng, n: 3.0 * rng.random((n, 3)) - 1.5),
    "2 clusters->around": (two_far_clusters,
                           lambda rng, n: np.array([5.0, 0, 0]) + 6 * rng.standard_normal((n, 3))),
}


def sparse_charges(rng, n):
    """8 charged points in the unit cube and n - 8 uncharged ones in a 0.005-wide cube at its
    corner (see CHARGED): a few sources feed a dense, deep cluster of targets through
    expansions, one source each, at the corner of every coarse box holding them (where a
    local expansion is least accurate). The single-source worst case that the other cases
    average away (random charges of many sources)."""
    return np.concatenate([rng.random((n - 8, 3)) * 0.005, rng.random((8, 3))])


#: Cases whose charges are zero except on their last this many points.
CHARGED = {"sparse charges": 8}


def field_of_abs(src, q, trg):
    """The contract's reference sizes (README): sum_j |q_j| G and sum_j |q_j| |grad G| at trg,
    r = 0 left out (numpy, float64)."""
    aq = np.abs(q)
    pot, grad = np.zeros(len(trg)), np.zeros(len(trg))
    for a in range(0, len(trg), 64):
        d = trg[a:a + 64, None, :] - src[None]
        r2 = (d * d).sum(-1)
        inv2 = np.divide(1.0, r2, out=np.zeros_like(r2), where=r2 > 0)
        pot[a:a + 64] = np.sqrt(inv2) @ aq
        grad[a:a + 64] = inv2 @ aq
    return pot / (4 * np.pi), grad / (4 * np.pi)


def cases(rng, n, separate):
    for name, make in DISTS.items():
        yield name, make(rng, n), None
    yield "sparse charges", sparse_charges(rng, n), None
    if separate:
        for name, (make_s, make_t) in SEPARATE.items():
            yield name, make_s(rng, n), make_t(rng, n // 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--p", type=int, nargs="+", default=list(range(3, 15)))
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"])
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--no-separate", dest="separate", action="store_false",
                    help="skip the separate-target cases")
    ap.add_argument("--quick", action="store_true", help="n=5000, p 3..8")
    ap.add_argument("--kernel", choices=("laplace", "yukawa", "helmholtz"), default="laplace")
    ap.add_argument("--param-d", type=float, default=1.0,
                    help="yukawa/helmholtz: parameter times the domain size (default 1)")
    ap.add_argument("--cases", nargs="+", default=None, help="only these case names")
    ap.add_argument("--contract", action="store_true",
                    help="errors relative to the field of |q| (the README's contract; Laplace)"
                    " instead of the field itself")
    ap.add_argument("--mixed", action="store_true",
                    help="float32 pair terms where a float64 plan takes them by default "
                    "(p <= 8 at eps 1e-6); without it float64 ones: the orders' own errors")
    args = ap.parse_args()
    evaluate._MIXED_NEAR = args.mixed
    evaluate._FEW_CHARGES = 0  # the expansions, also for fields of few charges
    if args.quick:
        args.n, args.p = 5000, list(range(3, 9))
    print(f"n = {args.n}, sample = {args.sample}; error = L2 over the sample relative to the "
          f"{'field of |q|' if args.contract else 'field'}; kernel "
          f"{args.kernel}" + ("" if args.kernel == "laplace" else f", parameter x D = "
                                                                  f"{args.param_d:g}"))
    print(f"{'case':19} {'dtype':8} {'p':>3} {'ncrit':>5} {'pot err':>9} {'grad err':>9} "
          f"{'eval s':>7}")
    worst = {}
    for name, src64, trg64 in cases(np.random.default_rng(0), args.n, args.separate):
        if args.cases and name not in args.cases:
            continue
        rng = np.random.default_rng(1)
        q = rng.standard_normal(args.n)
        if name in CHARGED:
            q[: args.n - CHARGED[name]] = 0.0
        pts = src64 if trg64 is None else np.concatenate([src64, trg64])
        size = float((pts.max(axis=0) - pts.min(axis=0)).max())
        kernel = {"laplace": lambda: aotfmm.Laplace(),
                  "yukawa": lambda: aotfmm.Yukawa(args.param_d / size),
                  "helmholtz": lambda: aotfmm.Helmholtz(args.param_d / size)}[args.kernel]()
        if kernel.complex:
            q = q + 1j * rng.standard_normal(args.n)
        n_trg = args.n if trg64 is None else len(trg64)
        idx = rng.choice(n_trg, min(args.sample, n_trg), replace=False)
        for dtype in args.dtype:
            # the reference uses the very points the FMM gets (float32 inputs are rounded)
            src = src64.astype(dtype).astype(np.float64)
            trg = src if trg64 is None else trg64.astype(dtype).astype(np.float64)
            if args.kernel == "laplace":
                ref_pot, ref_grad = _direct(src, q, trg[idx], True, np.dtype(np.float64),
                                            Workers(2))
            else:
                rp, rg = _direct_multi(src, q[None], None, trg[idx], True,
                                       np.dtype(np.float64), Workers(2), family=kernel)
                ref_pot, ref_grad = rp[0], rg[0].T
            size_pot, size_grad = ref_pot, ref_grad
            if args.contract:
                if args.kernel != "laplace":
                    raise SystemExit("--contract: Laplace only")
                size_pot, size_grad = field_of_abs(src, q, trg[idx])
            for p in args.p:
                if dtype == "float32" and p > 8:
                    continue
                ncrit = choose_parameters(1e-6, p=p)[1]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", aotfmm.AccuracyWarning)
                    plan = aotfmm.Fmm(src.astype(dtype),
                                      None if trg64 is None else trg.astype(dtype), p=p,
                                      ncrit=ncrit, dtype=kernel.value_dtype(dtype),
                                      eps=1e-5 if dtype == "float32" else 1e-6, kernel=kernel)
                t0 = time.perf_counter()
                pot, grad = plan.evaluate(q, gradient=True)
                dt = time.perf_counter() - t0
                e_pot = np.linalg.norm(pot[idx] - ref_pot) / np.linalg.norm(size_pot)
                e_grad = np.linalg.norm(grad[idx] - ref_grad) / np.linalg.norm(size_grad)
                key = (dtype, p)
                worst[key] = max(worst.get(key, 0.0), e_pot, e_grad)
                print(f"{name:19} {dtype:8} {p:3d} {ncrit:5d} {e_pot:9.2e} {e_grad:9.2e} "
                      f"{dt:7.3f}", flush=True)
    print("\nworst of potential and gradient over all cases:")
    for (dtype, p), e in sorted(worst.items()):
        print(f"  {dtype:8} p={p:2d}  {e:.2e}")


if __name__ == "__main__":
    main()
