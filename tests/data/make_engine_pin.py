"""Write tests/data/engine_pin.npz: FMM results that the engine-seams refactor must reproduce.

    python tests/data/make_engine_pin.py      (run at the commit before the refactor)

The points are generated here from fixed seeds (the accuracy benchmark's distributions and
two of its separate-target cases); only results are stored, every third row to keep the file
small. tests/test_engine_pin.py recomputes and compares (float64: max relative difference
<= 1e-13 of each array's largest entry).
"""
import os
import subprocess

import numpy as np

import aotfmm
from aotfmm.evaluate import choose_parameters

HERE = os.path.dirname(os.path.abspath(__file__))
N, M, STRIDE = 1500, 400, 3


def points(dist, rng, n):
    # Deliberately self-contained (not conftest's uniform/sphere): the stored results depend on
    # these exact draws, which must not change when a shared test helper does.
    if dist == "uniform":
        return rng.random((n, 3))
    if dist == "sphere":
        x = rng.standard_normal((n, 3))
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    if dist == "clustered":
        return rng.random((5, 3))[rng.integers(0, 5, n)] + 0.02 * rng.standard_normal((n, 3))
    if dist == "two_clusters":
        c = np.array([[0.0, 0, 0], [10.0, 0, 0]])[rng.integers(0, 2, n)]
        return c + 1e-3 * rng.random((n, 3))
    raise ValueError(dist)


CASES = {  # name -> (source distribution, separate targets?)
    "uniform": ("uniform", False), "sphere": ("sphere", False),
    "clustered": ("clustered", False), "sphere->cube": ("sphere", True),
    "two_clusters->around": ("two_clusters", True)}
EPS = {"float64": 1e-6, "float32": 1e-4}
#: The leaf size the pin was made with (the table's ncrit then; since 2026-12 p = 5..7 take 400).
NCRIT = {"float64": 400, "float32": 240}


def inputs(case):
    dist, separate = CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)) * 7919)
    src = points(dist, rng, N)
    trg = None
    if separate:
        lo, hi = src.min(0), src.max(0)
        span = hi - lo
        trg = lo - span + 3 * span * rng.random((M, 3))
    q = rng.standard_normal((N, 3))
    d = rng.standard_normal((N, 3, 3))
    return src, trg, q, d


def compute(case, dtype):
    """{name: array} for one case and dtype (every STRIDE-th row)."""
    src, trg, q, d = inputs(case)
    eps = EPS[dtype]
    out = {}
    ncrit = NCRIT[dtype]
    if trg is None:
        plan = aotfmm.Fmm(src, eps=eps, dtype=dtype, hessians=True, threads=2, ncrit=ncrit)
        f = plan.fields(q[:, 0], pg=3)
        out.update(pot1=f.pot, grad1=f.grad, hess1=f.hess)
        plan = aotfmm.Fmm(src, eps=eps, dtype=dtype, dipoles=True, threads=2, ncrit=ncrit)
        f = plan.fields(q, dipoles=d, pg=2)
        out.update(pot3=f.pot, grad3=f.grad)
    else:
        # the order and leaf size the pin was made with: one order for the separate targets
        # (two since 2026-12-04), one for dipoles (since 2026-12 eps picks one more for
        # dipoles at separate targets)
        p = choose_parameters(eps)[0] + 1
        plan = aotfmm.Fmm(src, trg, at_sources=True, eps=eps, dtype=dtype, threads=2, p=p,
                          ncrit=ncrit)
        f = plan.fields(q[:, 0], pg=2, pgt=2)
        out.update(pot1=f.pot, grad1=f.grad, pottarg1=f.pottarg, gradtarg1=f.gradtarg)
        plan = aotfmm.Fmm(src, trg, dipoles=True, eps=eps, dtype=dtype, threads=2, p=p + 1,
                          ncrit=ncrit)
        f = plan.fields(q, dipoles=d, pgt=2)
        out.update(pottarg3=f.pottarg, gradtarg3=f.gradtarg)
    return {k: np.ascontiguousarray(v[::STRIDE]) for k, v in out.items()}


def machine():
    """ISA module and CPU model: results are reproducible to the last bit only on the same."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{aotfmm.config()['isa']} | {model or os.uname().machine}"


def main():
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    arrays = {"commit": np.array(commit), "machine": np.array(machine())}
    for case in CASES:
        for dtype in EPS:
            for name, a in compute(case, dtype).items():
                arrays[f"{case}|{dtype}|{name}"] = a
    path = os.path.join(HERE, "engine_pin.npz")
    np.savez_compressed(path, **arrays)
    print(f"{path}: {len(arrays) - 2} arrays, {os.path.getsize(path) / 1e3:.0f} kB, "
          f"commit {commit[:10]}")


if __name__ == "__main__":
    main()
