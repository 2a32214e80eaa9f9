"""KIFMM operators: precompute time and size per p, cache load time, accuracy of each operator
against a float64 numpy direct sum (p = 4..10, float64/float32), and each operator's throughput
on one level of 4096 boxes (a 16^3 grid), 1 and all threads.

    python benchmarks/operators.py [--quick] [--pmax 10]
    python benchmarks/operators.py --build-table [--pmax 16]   # cold build time and file size
                                                               # per p (README, BUILD_COST)
"""
import argparse
import os
import tempfile
import time

import numpy as np

from aotfmm import _geometry, _threads, expansions
from aotfmm.cache import cache_path
from aotfmm.operators import get_operators

INV4PI = 1.0 / (4.0 * np.pi)
I64 = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731


def ref_pot(trg, src, q):
    d = trg[:, None, :] - src[None, :, :]
    return INV4PI * (1.0 / np.sqrt((d * d).sum(-1))) @ q


def rel(a, b):
    return np.linalg.norm(np.asarray(a, float) - b) / np.linalg.norm(b)


def soa(x, dt):
    return np.ascontiguousarray(x.T, dtype=dt)


def surf_pot(ops, dens, c, h, radius, trg):
    return ref_pot(trg, c + h * radius * ops.surface, dens.astype(float))


def accuracy(p, dt, rng):
    """Relative L2 errors of P2M (far field at >= 3h), M2M, M2L (all 316 t) + L2P, P2L+L2L+L2P."""
    ops = get_operators(p, dt)
    out = {}
    # P2M: far points at Chebyshev distance [3h, 6h]
    c, h, n = np.array([0.3, -1.1, 2.0]), 0.37, 300
    src = c + h * rng.uniform(-1, 1, (n, 3))
    q = rng.standard_normal(n)
    eq = np.zeros((1, ops.n_surf), dt)
    expansions.p2m(ops, soa(src, dt), q.astype(dt), I64([0]), I64([0]), I64([n]), c[None],
                   np.array([h]), eq)
    far = rng.uniform(-6, 6, (6000, 3))
    far = c + h * far[np.abs(far).max(1) >= 3][:300]
    out["P2M"] = rel(surf_pot(ops, eq[0], c, h, ops.r_up_equiv, far), ref_pot(far, src, q))
    # M2M: 8 children -> parent, far field of the parent
    H = 2.3
    centers = np.concatenate([[c], c + 0.5 * H * _geometry.OCTANT_SIGNS])
    hw = np.array([H] + [H / 2] * 8)
    src = np.concatenate([centers[1 + o] + H / 2 * rng.uniform(-1, 1, (40, 3))
                          for o in range(8)])
    q = rng.standard_normal(len(src))
    eq = np.zeros((9, ops.n_surf), dt)
    expansions.p2m(ops, soa(src, dt), q.astype(dt), I64(range(1, 9)),
                   I64([0] + [40 * o for o in range(8)]),
                   I64([0] + [40 * (o + 1) for o in range(8)]), centers, hw, eq)
    expansions.m2m(ops, eq, I64([0]), I64([range(1, 9)]))
    far = rng.uniform(-6, 6, (6000, 3))
    far = c + H * far[np.abs(far).max(1) >= 3][:300]
    out["M2M"] = rel(surf_pot(ops, eq[0], c, H, ops.r_up_equiv, far), ref_pot(far, src, q))
    # P2L (a source box 2 widths away) -> L2L -> L2P in the 8 children
    sc = c + 2 * H * np.array([2, -1, 1])
    centers2 = np.concatenate([centers, [sc]])
    hw2 = np.append(hw, H)
    src = sc + H * rng.uniform(-1, 1, (200, 3))
    q = rng.standard_normal(200)
    st, en = np.zeros(10, np.int64), np.zeros(10, np.int64)
    en[9] = 200
    loc = np.zeros((10, ops.n_surf), dt)
    dchk = np.zeros((10, ops.down_rank), dt)
    expansions.p2l(ops, soa(src, dt), q.astype(dt), st, en, I64([0]), I64([0, 1]), I64([9]),
                   centers2, hw2, dchk)
    expansions.dc2e(ops, dchk, loc, I64([0]))
    expansions.l2l(ops, loc, dchk, I64([0]), I64([range(1, 9)]))
    expansions.dc2e(ops, dchk, loc, I64(range(1, 9)))
    trg = np.concatenate([centers[1 + o] + H / 2 * rng.uniform(-1, 1, (30, 3))
                          for o in range(8)])
    ts = I64([0] + [30 * o for o in range(8)] + [0])
    te = I64([0] + [30 * (o + 1) for o in range(8)] + [0])
    pot = np.zeros(240, dt)
    grad = np.zeros((3, 240), dt)
    expansions.l2p(ops, loc, soa(trg, dt), ts, te, I64(range(1, 9)), centers2, hw2, pot, grad)
    out["P2L+L2L+L2P"] = rel(pot, ref_pot(trg, src, q))
    # M2L from all 316 V-list boxes (P2M -> M2L -> L2P)
    tv = _geometry.TRANSFER_VECTORS
    h = 0.21
    cent = np.concatenate([[c], c + 2 * h * tv])
    hwv = np.full(len(cent), h)
    src = np.concatenate([cc + h * rng.uniform(-1, 1, (5, 3)) for cc in cent[1:]])
    q = rng.standard_normal(len(src))
    st = I64([0] + list(range(0, 5 * 316, 5)))
    en = I64([0] + list(range(5, 5 * 317, 5)))
    eq = np.zeros((317, ops.n_surf), dt)
    expansions.p2m(ops, soa(src, dt), q.astype(dt), I64(range(1, 317)), st, en, cent, hwv, eq)
    loc = np.zeros((317, ops.n_surf), dt)
    dchk = np.zeros((317, ops.down_rank), dt)
    plan = expansions.m2l_plan(ops, I64([0]), I64([0, 316]), I64(range(1, 317)),
                               I64(range(316)), 317)
    expansions.m2l(ops, eq, dchk, plan)
    expansions.dc2e(ops, dchk, loc, I64([0]))
    trg = c + h * rng.uniform(-1, 1, (200, 3))
    pot = np.zeros(200, dt)
    ts, te = np.zeros(317, np.int64), np.zeros(317, np.int64)
    te[0] = 200
    expansions.l2p(ops, loc, soa(trg, dt), ts, te, I64([0]), cent, hwv, pot)
    out["P2M+M2L+L2P"] = rel(pot, ref_pot(trg, src, q))
    return out


def v_lists(m):
    """V lists of a full m^3 grid level: CSR (offsets, index, transfer)."""
    ijk = np.stack(np.meshgrid(*(np.arange(m),) * 3, indexing="ij"), -1).reshape(-1, 3)
    tv = _geometry.TRANSFER_VECTORS
    nb = ijk[:, None, :] + tv[None]
    ok = (nb >= 0).all(-1) & (nb < m).all(-1)
    ok &= (np.abs(nb // 2 - ijk[:, None, :] // 2) <= 1).all(-1)
    counts = ok.sum(1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = (nb[..., 0] * m + nb[..., 1]) * m + nb[..., 2]
    t = np.broadcast_to(np.arange(len(tv)), ok.shape)
    return offsets, idx[ok].astype(np.int64), t[ok].astype(np.int64)


def best(f, repeat):
    t = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        t = min(t, time.perf_counter() - t0)
    return t


def throughput(p, dt, threads, repeat, npb=32):
    """Seconds per level of 4096 boxes (16^3, half-width 1/32) for each operator."""
    ops = get_operators(p, dt)
    rng = np.random.default_rng(3)
    m = 16
    h = 1.0 / (2 * m)
    ijk = np.stack(np.meshgrid(*(np.arange(m),) * 3, indexing="ij"), -1).reshape(-1, 3)
    nb = len(ijk)
    centers = (ijk + 0.5) / m
    hw = np.full(nb, h)
    pts = np.repeat(centers, npb, 0) + h * rng.uniform(-1, 1, (nb * npb, 3))
    xyz = soa(pts, dt)
    q = rng.standard_normal(nb * npb).astype(dt)
    start = I64(np.arange(nb) * npb)
    end = start + npb
    boxes = I64(range(nb))
    equiv = rng.standard_normal((nb, ops.n_surf)).astype(dt)
    local = np.zeros((nb, ops.n_surf), dt)
    dchk = np.zeros((nb, ops.down_rank), dt)
    pot = np.zeros(nb * npb, dt)
    grad = np.zeros((3, nb * npb), dt)
    vo, vi, vt = v_lists(m)
    plan = expansions.m2l_plan(ops, boxes, vo, vi, vt, nb, threads)
    octants = I64((ijk & 1) @ [1, 2, 4])
    by_octant = expansions.m2l_plan(ops, boxes, vo, vi, vt, nb, threads, octants=octants)
    # synthetic W/X lists: 8 random non-adjacent boxes each (sizes like an adaptive tree)
    wl = rng.integers(0, nb, (nb, 8))
    wo = I64(np.arange(nb + 1) * 8)
    parents = I64(range(512))
    children = I64(rng.permutation(nb).reshape(512, 8))
    res = {}
    res["P2M"] = best(lambda: expansions.p2m(ops, xyz, q, boxes, start, end, centers, hw, equiv,
                                             threads), repeat)
    res["M2M (512x8)"] = best(lambda: expansions.m2m(ops, local, parents, children), repeat)
    res["L2L (512x8)"] = best(lambda: expansions.l2l(ops, local, dchk, parents, children),
                              repeat)
    res[f"M2L ({len(vi)} pairs)"] = best(lambda: expansions.m2l(ops, equiv, dchk, plan,
                                                                 threads), repeat)
    res["M2L by octant"] = best(lambda: expansions.m2l(ops, equiv, dchk, by_octant, threads),
                                repeat)
    res["DC2E (all boxes)"] = best(lambda: expansions.dc2e(ops, dchk, local, slice(None)),
                                   repeat)
    res["M2L plan"] = best(lambda: expansions.m2l_plan(ops, boxes, vo, vi, vt, nb, threads), 1)
    res["M2L plan by octant"] = best(lambda: expansions.m2l_plan(
        ops, boxes, vo, vi, vt, nb, threads, octants=octants), 1)
    res["P2L (8 X boxes)"] = best(lambda: expansions.p2l(ops, xyz, q, start, end, boxes, wo,
                                                         I64(wl.ravel()), centers, hw, dchk,
                                                         threads), repeat)
    res["L2P pot"] = best(lambda: expansions.l2p(ops, local, xyz, start, end, boxes, centers,
                                                 hw, pot, None, threads), repeat)
    res["L2P pot+grad"] = best(lambda: expansions.l2p(ops, local, xyz, start, end, boxes,
                                                      centers, hw, pot, grad, threads), repeat)
    res["M2P pot (8 W boxes)"] = best(lambda: expansions.m2p(ops, equiv, xyz, start, end, boxes,
                                                             wo, I64(wl.ravel()), centers, hw,
                                                             pot, None, threads), repeat)
    return res, len(vi)


def build_table(pmax):
    """Cold float64 build per p on all CPUs (what a first use costs), the cache file's size in
    float64 and float32 (the float32 file holds the same arrays, matrices cast), and the
    uses (eps, targets, dipoles, Hessians) that pick each p."""
    import platform
    from aotfmm.evaluate import choose_parameters
    from aotfmm.operators import operator_key
    ncpu = _threads.cpu_count()
    tmp = tempfile.mkdtemp(prefix="aotfmm-bench-")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"== cold operator builds, float64, {ncpu} threads; {cpu}")
    print(f"{'p':>3} {'n_surf':>6} {'rank':>5} {'build s':>8} {'f64 MB':>7} {'f32 MB':>7}")
    cost = {}
    for p in range(2, pmax + 1):
        t0 = time.perf_counter()
        ops = get_operators(p, np.float64, cache_dir=tmp)
        sec = time.perf_counter() - t0
        assert ops.source == "built"
        path = cache_path(operator_key(p, np.float64), tmp)
        mb64 = os.path.getsize(path) / 1e6
        floats = sum(getattr(ops, f).nbytes for f in ("uc2e_a", "uc2e_b", "dc2e_a", "dc2e_b",
                                                       "m2m", "l2l", "m2l_v", "m2l_u", "m2l_a",
                                                       "m2l_b", "m2l_decompress"))
        mb32 = mb64 - floats / 2 / 1e6
        os.remove(path)  # keep the disk use of a p = 16 run bounded
        cost[p] = (round(sec, 2 if sec < 10 else 1), round(mb64, 1))
        print(f"{p:>3} {ops.n_surf:>6} {ops.m2l_rank:>5} {sec:>8.2f} {mb64:>7.1f} {mb32:>7.1f}",
              flush=True)
    print("\nBUILD_COST = " + repr(cost))
    print("\n== which p each use picks (float64; float32 the same down to its eps floor 5e-6)")
    uses = [("charges", False, False, False), ("targets", True, False, False),
            ("dipoles", False, True, False), ("targets+dipoles", True, True, False),
            ("Hessians", False, False, True), ("targets+Hessians", True, False, True)]
    print("| eps | " + " | ".join(u[0] for u in uses) + " |")
    for eps in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10):
        print(f"| {eps:g} | " + " | ".join(str(choose_parameters(eps, None, None, t, d, h)[0])
                                          for _, t, d, h in uses) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="p <= 6, one repeat")
    parser.add_argument("--pmax", type=int, default=None,
                        help="largest p (default 10; 16 with --build-table)")
    parser.add_argument("--build-table", action="store_true",
                        help="only: cold build time and cache file size per p, and the p each "
                        "use picks")
    args = parser.parse_args()
    if args.build_table:
        return build_table(args.pmax or 16)
    args.pmax = args.pmax or 10
    pmax = min(args.pmax, 6) if args.quick else args.pmax
    repeat = 1 if args.quick else 3
    ps = list(range(4, pmax + 1))
    ncpu = _threads.cpu_count()
    tmp = tempfile.mkdtemp(prefix="aotfmm-bench-")
    os.environ["AOTFMM_CACHE_DIR"] = tmp

    print(f"== precompute (cold, float64 build) and cache; CPUs = {ncpu}")
    print(f"{'p':>3} {'n_surf':>6} {'dtype':8} {'m2l_tol':>8} {'rank':>5} {'build s':>8} "
          f"{'load ms':>8} {'file MB':>8} {'mem MB':>7} {'M2L C MB':>8}")
    for p in ps:
        for dt in (np.float64, np.float32):
            ops = get_operators(p, dt)
            assert ops.source == "built"
            load = best(lambda: get_operators(p, dt), 5)
            size = os.path.getsize(cache_path(ops.key)) / 2**20
            print(f"{p:>3} {ops.n_surf:>6} {np.dtype(dt).name:8} {ops.m2l_tol:>8.0e} "
                  f"{ops.m2l_rank:>5} {ops.seconds:>8.2f} {1e3 * load:>8.1f} {size:>8.1f} "
                  f"{ops.nbytes / 2**20:>7.1f} {(ops.m2l_a.nbytes + ops.m2l_b.nbytes) / 2**20:>8.1f}")

    print("\n== accuracy: relative L2 error vs float64 numpy direct sum (worst-case distances)")
    rng = np.random.default_rng(0)
    for dt in (np.float64, np.float32):
        rows = {p: accuracy(p, dt, rng) for p in ps}
        names = list(rows[ps[0]])
        print(f"{np.dtype(dt).name:8} " + " ".join(f"{n:>12}" for n in names))
        for p in ps:
            print(f"p = {p:<4} " + " ".join(f"{rows[p][n]:>12.1e}" for n in names))

    print("\n== throughput: one level of 4096 boxes (16^3), 32 points per box, seconds per call")
    for p in ([4, 6] if args.quick else [4, 6, 8, 10]):
        if p > pmax:
            continue
        for dt in (np.float64, np.float32):
            for threads in sorted({1, ncpu}):
                res, npairs = throughput(p, dt, threads, repeat)
                print(f"p = {p} {np.dtype(dt).name} threads = {threads}: " +
                      ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in res.items()))


if __name__ == "__main__":
    main()
