"""Time to first result: `import aotfmm` + one `aotfmm.laplace` call in a fresh process, against
the same call repeated in a warm process (issue: <= 1.2x with a warm operator cache).

    python benchmarks/first_call.py [--n 100000] [--eps 1e-6] [--gradient] [--cold]

Fresh: a new interpreter generates the points (numpy only), then times ``import aotfmm`` plus
the call (interpreter and numpy start-up are not counted: every Python program pays them).
Warm: best of 5 calls in one process after a first call. ``--cold`` also runs a fresh process
with an empty operator cache (a temporary AOTFMM_CACHE_DIR) to show what building costs.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import numpy as np
n, eps, gradient, repeat = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
rng = np.random.default_rng(0)
x = rng.random((n, 3)); q = rng.standard_normal(n)
t0 = time.perf_counter()
import aotfmm
t1 = time.perf_counter()
aotfmm.laplace(x, q, eps=eps, gradient=gradient)
t2 = time.perf_counter()
warm = []
for _ in range(repeat):
    t = time.perf_counter(); aotfmm.laplace(x, q, eps=eps, gradient=gradient)
    warm.append(time.perf_counter() - t)
print(json.dumps({"import": t1 - t0, "first": t2 - t1, "warm": min(warm) if warm else None}))
"""


def run(n, eps, gradient, repeat, env=None):
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(eps), "1" if gradient else "0",
                          str(repeat)], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e5)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--gradient", action="store_true")
    ap.add_argument("--cold", action="store_true", help="also time an empty operator cache")
    args = ap.parse_args()
    n = int(args.n)
    run(n, args.eps, args.gradient, 0)  # make sure the operator cache is warm
    warm = run(n, args.eps, args.gradient, 5)["warm"]
    fresh = [run(n, args.eps, args.gradient, 0) for _ in range(3)]
    best = min(fresh, key=lambda r: r["import"] + r["first"])
    total = best["import"] + best["first"]
    what = "potential+gradient" if args.gradient else "potential"
    print(f"n = {n}, eps = {args.eps:g}, {what}")
    print(f"  warm, in process (best of 5):      {warm:.3f} s")
    print(f"  fresh process, warm operator cache: {total:.3f} s "
          f"(import aotfmm {best['import']:.3f} s + first call {best['first']:.3f} s) "
          f"= {total / warm:.2f}x warm")
    if args.cold:
        with tempfile.TemporaryDirectory() as tmp:
            cold = run(n, args.eps, args.gradient, 0, env={"AOTFMM_CACHE_DIR": tmp})
        extra = cold["import"] + cold["first"] - total
        print(f"  fresh process, empty operator cache: {cold['import'] + cold['first']:.3f} s "
              f"(+{extra:.2f} s building operators)")


if __name__ == "__main__":
    main()
