"""P2P throughput: pair interactions per second (per core), f32/f64, each ISA module, 1 and all
threads, potential and potential+gradient, against a plain numpy direct sum in the same run.

float64 runs twice: ``exact`` (two Newton steps in 1/r: what aotfmm.direct uses) and ``fmm``
(one step, relative error ~1e-14: the FMM's near field).

Then the near field *inside the FMM* (``--fmm-n`` uniform points, eps 1e-6, targets = sources):
the plan's near lists run once from each target's side (``one-sided``: what separate targets and
k > 1 densities use) and by Newton's third law (``sym``: each pair of distinct near leaves once,
used for both points), both counted as the interactions a one-sided pass would compute, so the
two rates compare directly (sym's "rate" is effective). float64 also runs ``mixed``: Newton's
third law with the pair terms in float32, summed in float64 (``p2p_sym_mixed``, what a float64
plan at eps >= 1e-6 uses since 2026-12-03, 1e-5 before; on the eps 1e-6 plan's lists).

    python benchmarks/p2p.py [--n 20000] [--fmm-n 200000] [--quick]
"""
import argparse
import time

import numpy as np

import aotfmm
from aotfmm import _kernels, _threads
from aotfmm._direct import _p2p_all, p2p as near_field


def best_time(func, repeat):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t0)
    return best


def numpy_rate(n, repeat):
    """Pairs/s of a blocked float64 numpy direct sum (potential only), single call."""
    rng = np.random.default_rng(1)
    src, trg, q = rng.random((n, 3)), rng.random((2000, 3)), rng.standard_normal(n)

    def run():
        d = trg[:, None, :] - src[None, :, :]
        r = np.sqrt(np.einsum("tsk,tsk->ts", d, d))
        with np.errstate(divide="ignore"):
            inv = np.where(r > 0, 1.0 / r, 0.0)
        return inv @ q
    return trg.shape[0] * n / best_time(run, repeat)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="sources = targets")
    parser.add_argument("--quick", action="store_true", help="smaller n, one repeat")
    parser.add_argument("--fmm-n", type=int, default=200000,
                        help="points of the in-FMM near-field measurement")
    args = parser.parse_args()
    n, repeat = (5000, 1) if args.quick else (args.n, 3)
    rng = np.random.default_rng(0)
    ncpu = _threads.cpu_count()
    ref = numpy_rate(n, repeat)
    print(f"n = {n} sources = targets (uniform cube); CPUs = {ncpu}; active ISA = {_kernels.ISA}")
    print(f"numpy float64 reference (potential, 1 call): {ref:.3g} pairs/s")
    print(f"{'isa':10} {'dtype':8} {'1/r':5} {'output':8} {'threads':>7} {'pairs/s':>10} "
          f"{'per core':>10} {'speed-up':>8} {'vs numpy':>8}")
    for isa in _kernels.runnable_isas():
        module = _kernels.load(isa)
        for dtype in (np.float64, np.float32):
            xyz = rng.random((3, n)).astype(dtype)
            q = rng.standard_normal(n).astype(dtype)
            modes = ("exact", "fmm") if dtype == np.float64 else ("-",)
            for output in ("pot", "potgrad"):
                pot = np.zeros(n, dtype)
                grad = np.zeros((3, n), dtype) if output == "potgrad" else None
                for mode in modes:
                    one = None
                    for threads in sorted({1, ncpu}):
                        workers = _threads.Workers(threads)
                        t = best_time(lambda: _p2p_all(xyz, q, xyz, pot, grad, workers, module,
                                                       exact=mode != "fmm"), repeat)
                        rate = n * n / t
                        one = rate if threads == 1 else one
                        print(f"{isa:10} {np.dtype(dtype).name:8} {mode:5} {output:8} "
                              f"{threads:7d} {rate:10.3g} {rate / threads:10.3g} "
                              f"{rate / one:8.2f} {rate / ref:8.1f}")
    fmm_rates(5000 if args.quick else args.fmm_n, repeat, ncpu)


def fmm_rates(n, repeat, ncpu):
    """The FMM's own near field, one-sided and by Newton's third law, per ISA and dtype."""
    rng = np.random.default_rng(2)
    x = rng.random((n, 3))
    q0 = rng.standard_normal(n)
    print(f"\nnear field inside the FMM: n = {n} uniform, eps 1e-6, targets = sources; "
          f"interactions counted one-sided (sym: effective rate)")
    print(f"{'isa':10} {'dtype':8} {'lists':9} {'output':8} {'threads':>7} {'pairs/s':>10} "
          f"{'per core':>10} {'gain':>8}")
    for dtype in (np.float64, np.float32):
        plan = aotfmm.Fmm(x, eps=1e-6 if dtype == np.float64 else 1e-4, dtype=dtype)._core
        t = plan.tree
        n_src = t.src_end - t.src_start
        cum = np.concatenate(([0], np.cumsum(n_src[plan.near_index])))
        per_box = cum[plan.near_offsets[1:]] - cum[plan.near_offsets[:-1]]
        pairs = float(((t.trg_end - t.trg_start) * per_box).sum())
        q = np.ascontiguousarray(q0[t.src_perm], dtype=dtype)
        for isa in _kernels.runnable_isas():
            module = _kernels.load(isa)
            for output in ("pot", "potgrad"):
                pot = np.zeros(n, dtype)
                grad = np.zeros((3, n), dtype) if output == "potgrad" else None
                for threads in sorted({1, ncpu}):
                    workers = _threads.Workers(threads)
                    one_sided = None
                    variants = ("one-sided", "sym") + (("mixed",) if dtype == np.float64
                                                        else ())
                    for lists in variants:
                        def run():
                            near_field(plan.src, q, plan.trg, t.src_start, t.src_end,
                                       t.trg_start, t.trg_end, plan.near_offsets,
                                       plan.near_index, plan.near_boxes, pot, grad, workers,
                                       module, cost=plan.near_cost, exact=False,
                                       shift=plan.near_shift,
                                       sym=plan.near_sym if lists != "one-sided" else None,
                                       mixed=lists == "mixed")
                        rate = pairs / best_time(run, repeat)
                        one_sided = rate if lists == "one-sided" else one_sided
                        gain = f"{rate / one_sided:8.2f}" if lists != "one-sided" else \
                            f"{'':8}"
                        print(f"{isa:10} {np.dtype(dtype).name:8} {lists:9} {output:8} "
                              f"{threads:7d} {rate:10.3g} {rate / threads:10.3g} {gain}")


if __name__ == "__main__":
    main()
