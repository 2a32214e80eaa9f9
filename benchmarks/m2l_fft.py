"""Would an FFT M2L beat aotfmm's SVD M2L? A measurement, not an implementation (issue 19).

kifmm, PVFMM and exafmm-t translate multipoles by FFT: the upward equivalent surface (radius
1.05 h) and the downward check surface (1.05 h, the same lattice) are points of a p^3 grid, so
a V-list translation is a convolution with the kernel sampled on the (2p-1)^3 difference lattice
of its transfer vector: per source box one forward FFT of its density on a (2p)^3 grid, per pair
a pointwise product of (2p)^2 (p + 1) complex numbers, per target box one inverse FFT (then
the check potentials go through the same dc2e step as today).

This script, for the same points and eps:

1. checks that formulation on one V pair of each kind (face, edge, corner, far) against the
   dense kernel matrix (so the figures below are for a correct FFT M2L);
2. runs aotfmm's M2L inside the FMM (1 thread, best of 3) and counts its V-list pairs, boxes
   and flops (SVD: per pair 2 n_rows (r_t + r_t) x rank, with aotfmm's per-vector ranks r_t);
3. times, on one core, numpy's batched ``rfftn``/``irfftn`` of (2p)^3 grids per box and the
   pointwise products as batched complex matmuls over 8 x 8 children blocks per frequency
   (PVFMM's layout: a parent pair's 64 child pairs share one product per frequency), and
   prints the FFT M2L these would give for this tree next to the SVD M2L.

    python benchmarks/m2l_fft.py [--n 2e5] [--eps 1e-6 1e-9]

numpy's FFT is the only FFT a numba-AOT wheel could call without shipping one of its own; a
custom FFT would be faster, so the FFT figures are an upper bound for what numpy gives and the
flop ratio is the other bound.
"""
import argparse
import time

import numpy as np

import aotfmm
from aotfmm.surfaces import DEFAULT_RADII, surface


def laplace(d):
    r = np.sqrt((d * d).sum(-1))
    with np.errstate(divide="ignore"):
        return np.where(r > 0, 1.0 / (4 * np.pi * r), 0.0)


def lattice_index(p):
    """Grid indices (n_surf, 3) of the surface points of order p (surface()'s order)."""
    return np.rint((surface(p) + 1.0) * (p - 1) / 2).astype(np.int64)


def fft_m2l_check(p, t, rng):
    """Relative error of the FFT translation of one random density over transfer vector t."""
    r = DEFAULT_RADII[0]
    assert DEFAULT_RADII[3] == r, "FFT M2L needs the down-check radius = the up-equiv radius"
    idx = lattice_index(p)
    a = 2.0 * r / (p - 1)                          # lattice spacing, box half-width 1
    dens = rng.standard_normal(len(idx))
    src = -r + a * idx
    trg = 2.0 * np.asarray(t, float) - r + a * idx
    dense = laplace(trg[:, None, :] - src[None, :, :]) @ dens
    g = 2 * p
    grid = np.zeros((g, g, g))
    grid[tuple(idx.T)] = dens
    m = np.arange(g)
    m = np.where(m < p, m, m - g)                  # circular offsets -(p-1)..p-1 (and -p)
    off = np.stack(np.meshgrid(m, m, m, indexing="ij"), axis=-1) * a + 2.0 * np.asarray(t)
    kern = laplace(off)
    pot = np.fft.irfftn(np.fft.rfftn(grid) * np.fft.rfftn(kern), s=(g, g, g),
                          axes=(0, 1, 2))
    got = pot[tuple(idx.T)]
    return float(np.linalg.norm(got - dense) / np.linalg.norm(dense))


def best(func, repeat=3):
    t = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        t = min(t, time.perf_counter() - t0)
    return t


def fft_costs(p, n_boxes_sample=512):
    """Seconds per box of a forward and an inverse FFT, and per pair of the products."""
    g = 2 * p
    rng = np.random.default_rng(0)
    a = rng.random((n_boxes_sample, g, g, g))
    f = np.fft.rfftn(a, axes=(1, 2, 3))
    t_f = best(lambda: np.fft.rfftn(a, axes=(1, 2, 3))) / n_boxes_sample
    t_i = best(lambda: np.fft.irfftn(f, s=(g, g, g), axes=(1, 2, 3))) / n_boxes_sample
    nf = f[0].size
    # products: per frequency, 64 parent pairs x (8 children -> 8 children): (nf, 64, 8) @ (nf, 8, 8)
    s = (rng.random((nf, 64, 8)) + 1j * rng.random((nf, 64, 8)))
    k = (rng.random((nf, 8, 8)) + 1j * rng.random((nf, 8, 8)))
    out = np.empty((nf, 64, 8), dtype=complex)
    t_h = best(lambda: np.matmul(s, k, out=out)) / (64 * 64)
    return t_f, t_i, t_h, nf


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=2e5)
    ap.add_argument("--eps", type=float, nargs="+", default=[1e-6, 1e-9])
    args = ap.parse_args()
    n = int(args.n)
    rng = np.random.default_rng(1)
    x = rng.random((n, 3))
    q = rng.standard_normal(n)
    print(f"{n} uniform points in the unit cube, targets = sources, potential, 1 thread\n")
    for eps in args.eps:
        plan = aotfmm.Fmm(x, eps=eps, threads=1)
        core = plan._core
        p, ops = core.p, core.ops
        errs = [fft_m2l_check(p, t, rng) for t in ((2, 0, 0), (2, 2, 0), (2, 2, 2), (3, -1, 2))]
        m2l = np.inf
        for _ in range(3):
            plan.evaluate(q)
            m2l = min(m2l, plan.timings["eval:m2l"])
        pairs = sum(len(d.m2l.pair_source) for d in core.down_levels if d.m2l is not None)
        sources = sum(len(d.m2l.sources) for d in core.down_levels if d.m2l is not None)
        targets = sum(len(d.m2l.target_boxes) for d in core.down_levels if d.m2l is not None)
        r_t = np.diff(ops.m2l_offsets)
        # SVD M2L flops per pair: (1 x rank) @ (rank x r_t) and (1 x r_t) @ (r_t x rank),
        # weighted by how often each vector occurs; plus compress/decompress per box
        counts = np.zeros(len(r_t))
        for d in core.down_levels:
            if d.m2l is not None:
                counts += (d.m2l.seg_end - d.m2l.segments).sum(axis=0)
        svd_pair = 4.0 * ops.m2l_rank * (r_t * counts).sum() / max(counts.sum(), 1)
        t_f, t_i, t_h, nf = fft_costs(p)
        fft_total = sources * t_f + targets * t_i + pairs * t_h
        print(f"eps {eps:g}: p {p}, {ops.n_surf} surface points, FFT grid {2 * p}^3 "
              f"({nf} complex frequencies); FFT M2L vs dense kernel on 4 vectors: max error "
              f"{max(errs):.1e}")
        print(f"  V pairs {pairs}, source boxes {sources}, target boxes {targets}; "
              f"SVD M2L rank {ops.m2l_rank}, per-vector ranks mean {r_t.mean():.1f} "
              f"(min {r_t.min()}, max {r_t.max()})")
        print(f"  flops per pair: SVD {svd_pair / 1e3:.1f} k (+ compress / decompress per box); "
              f"FFT products {8 * nf / 1e3:.1f} k (+ 2 FFTs per box)")
        print(f"  aotfmm SVD M2L in the FMM: {m2l:.3f} s ({m2l / pairs * 1e9:.0f} ns per pair)")
        print(f"  numpy FFT M2L (estimate): forward {t_f * 1e6:.0f} us/box, inverse "
              f"{t_i * 1e6:.0f} us/box, products {t_h * 1e9:.0f} ns/pair -> "
              f"{sources * t_f:.3f} + {targets * t_i:.3f} + {pairs * t_h:.3f} = "
              f"{fft_total:.3f} s, {fft_total / m2l:.1f}x the SVD M2L")
        per_box = m2l / targets
        print(f"  per target box: SVD M2L {per_box * 1e6:.0f} us ({pairs / targets:.0f} pairs); "
              f"the two numpy FFTs alone {(t_f + t_i) * 1e6:.0f} us; products at 16 flops/cycle "
              f"and 3 GHz would add {pairs / targets * 8 * nf / 48e9 * 1e6:.0f} us\n")


if __name__ == "__main__":
    main()
