"""Cold M2L build: today's streamed-QR build (aotfmm._m2l_svd) against the symmetry build
(aotfmm._m2l_fast), per p, one run each: time, ranks, accuracy; and the whole operator set as
operators.build_operators makes it (pseudo-inverses, M2M, L2L, M2L) with either M2L builder.

    python benchmarks/build_speed.py [--p 4 6 8 10] [--threads 2] [--families]

Accuracy, against the uncompressed K_t built here with numpy from the surface and G:
``E/tol`` is max over the 316 t of ||U A_t^T B_t V^T - K_t||_F / sigma_max in units of tol (the
builds' bound is ~3 tol), ``E/|K|`` the same relative to each ||K_t||_F, ``fro`` the relative
Frobenius error of all 316 blocks together. ``apply``: densities from a P2M of 30 random
charges in each of the 316 source boxes (UC2E pseudo-inverse, cutoff 1e-13), summed through the
compressed M2L vs through the K_t (the compression's error on realistic densities); ``chain``:
that M2L sum vs the sources' direct potential at the target's check points (P2M + M2L, what
DC2E and L2P then see; it includes the P2M error of order p).

``--families`` adds Yukawa exp(-lam r)/(4 pi r) (lam h = 0.1, 1, 10) and Helmholtz
exp(i kappa r)/(4 pi r) (kappa h = 0.5, 2, 4) for boxes of half-width h = 0.37: today's build
makes the reference-box set of ``family.scaled(h)`` (as operators.py does per level), the fast
one evaluates G at the true distances (``h=``); errors are relative, so they compare.

Times are wall clock with ``--threads`` threads (numpy's BLAS on one); ``cpu`` is the process
CPU time (all threads), steadier on a busy machine. "rest of the set" is
operators.build_operators (no cache: pseudo-inverses, M2M, L2L, as operators.py builds them, on
one thread) with the M2L step taking no time; the whole set is that plus either M2L build.
"parallel": the same pseudo-inverses and products on the workers with componentwise kernel
matrices (:func:`proposed_rest`, what operators.py could do). The load average is printed: on
a busy machine the wall times are not worth much.
"""
import argparse
import os
import platform
import time
from unittest import mock

import numpy as np

from aotfmm import _blas, _geometry, _m2l_fast, _m2l_svd, _threads, operators
from aotfmm.families import LAPLACE, Helmholtz, Yukawa
from aotfmm.operators import default_m2l_tol
from aotfmm.surfaces import DEFAULT_RADII, surface

TV = _geometry.TRANSFER_VECTORS
R_UE, R_UC, R_DE, R_DC = DEFAULT_RADII
PINV_CUTOFF = 1e-13
H = 0.37


def cpu_name():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.startswith("model name"))
        if " avx512f" in info:
            name += " (AVX-512)"
    except (OSError, StopIteration):
        pass
    return name


def kernel_matrix(x, y, family, h=1.0):
    """G(h |x_i - y_j|) with numpy (independent of the library's builders)."""
    d2 = sum((x[:, None, a] - y[None, :, a]) ** 2 for a in range(3))
    return family.g_of_r(h * np.sqrt(d2))


def transfer_blocks(s, t0, t1, family, h):
    """K_t = G(h |r_dc s_i - 2 t - r_ue s_j|) for t in t0..t1 with numpy, (m, n, n)."""
    tv = TV[t0:t1]
    d2 = sum((R_DC * s[None, :, None, a] - 2.0 * tv[:, None, None, a]
              - R_UE * s[None, None, :, a]) ** 2 for a in range(3))
    return family.g_of_r(h * np.sqrt(d2))


def today(s, dc2e_b, tol, workers, family):
    return _m2l_svd.build(s, R_DC, R_UE, dc2e_b, tol, workers=workers, family=family)


def pinv_apply(k, cutoff, x):
    """pinv(k) @ x with singular values below cutoff * sigma_max dropped (complex-correct)."""
    u, sv, vt = np.linalg.svd(k)
    keep = sv > cutoff * sv[0]
    return vt[keep].conj().T @ ((u[:, keep].conj().T @ x) / sv[keep, None])


def errors(out, s, family, h, rng):
    """(max_t |E_t|_F / sigma_max, max_t |E_t|_F / |K_t|_F, fro, apply, chain)."""
    u, v, a, b, off = (out[k] for k in ("m2l_u", "m2l_v", "m2l_a", "m2l_b", "m2l_offsets"))
    sigma = out["m2l_sigma"][0]
    # P2M densities of 30 random charges per source box (box t centred at 2 h t)
    up = kernel_matrix(R_UC * h * s, R_UE * h * s, family)
    srcs = [2 * h * t + h * rng.uniform(-1, 1, (30, 3)) for t in TV]
    q = [rng.standard_normal(30) for _ in TV]
    pots = np.stack([kernel_matrix(c + R_UC * h * s, x, family) @ qq
                     for c, x, qq in zip(2 * h * TV, srcs, q)], axis=1)
    dens = pinv_apply(up, PINV_CUTOFF, pots)                # (n, 316)
    e_abs, e_rel, num, den = [], [], 0.0, 0.0
    exact = compressed = 0.0
    for t0 in range(0, len(TV), 32):
        kt = transfer_blocks(s, t0, t0 + 32, family, h)
        for i, t in enumerate(range(t0, min(t0 + 32, len(TV)))):
            at, bt = a[off[t]:off[t + 1]], b[off[t]:off[t + 1]]
            approx = u @ (at.T @ (bt @ v.T))
            e = np.linalg.norm(approx - kt[i])
            f = np.linalg.norm(kt[i])
            e_abs.append(e / sigma)
            e_rel.append(e / f)
            num, den = num + e * e, den + f * f
            exact = exact + kt[i] @ dens[:, t]
            compressed = compressed + u @ (at.T @ (bt @ (v.T @ dens[:, t])))
    direct = sum(kernel_matrix(R_DC * h * s, x, family) @ qq for x, qq in zip(srcs, q))
    nrm = np.linalg.norm
    return (max(e_abs), max(e_rel), np.sqrt(num / den), nrm(compressed - exact) / nrm(exact),
            nrm(compressed - direct) / nrm(direct))


def timed(f):
    t0, c0 = time.perf_counter(), time.process_time()
    out = f()
    return out, time.perf_counter() - t0, time.process_time() - c0


def whole_set(p, family, workers, builder):
    """operators.build_operators (float64, no cache) with ``builder`` as the M2L builder."""
    with mock.patch.object(operators._m2l_svd, "build", builder):
        return operators.build_operators(p, DEFAULT_RADII, PINV_CUTOFF,
                                         default_m2l_tol(p, np.float64), family=family,
                                         workers=workers)


def proposed_rest(p, family, workers):
    """The rest of a set as operators.py could build it: the same two pseudo-inverses (SVDs)
    and 8 + 8 M2M/L2L products, but run on the workers, with kernel matrices from
    componentwise distances and ``g_of_r`` (the complex family.reference also computes
    gradients)."""
    s = surface(p)
    res = [None] * 18

    def km(x, y):
        d2 = sum((x[:, None, a] - y[None, :, a]) ** 2 for a in range(3))
        return family.g_of_r(np.sqrt(d2))

    def task(i):
        if i < 2:
            x, y = ((R_UC * s, R_UE * s), (R_DC * s, R_DE * s))[i]
            res[i] = operators._pinv_factors(km(x, y), PINV_CUTOFF)[1]
            return
        c = (i - 2) % 8
        child = 0.5 * _geometry.OCTANT_SIGNS[c]
        if i < 10:
            res[i] = res[0] @ km(R_UC * s, child + 0.5 * R_UE * s)
        else:
            res[i] = res[1] @ km(child + 0.5 * R_DC * s, R_DE * s)

    with _blas.limit_one():
        _m2l_fast._each(workers, 2, task)
        _m2l_fast._each(workers, 16, lambda j: task(j + 2))
    return res


def fmt_err(e):
    return f"{e[0]:7.2f} {e[1]:9.1e} {e[2]:9.1e} {e[3]:9.1e} {e[4]:9.1e}"


def row(label, p, n, tol, name, out, t, c):
    e = errors_cache[id(out)]
    return (f"{label}{p:3d} {n:5d} {tol:7.0e} | {name:<6} {t:7.3f} {c:7.3f} "
            f"{out['m2l_v'].shape[1]:4d} {len(out['m2l_a']) / len(TV):7.1f} | "
            f"{fmt_err([e[0] / tol, *e[1:]])}")


errors_cache = {}


def compare(p, fam, h, workers, label=""):
    """Both M2L builds and both whole sets for one family and p; prints three lines."""
    s = surface(p)
    tol = default_m2l_tol(p, np.float64)
    ref_family = fam.scaled(h)            # today's per-level set: reference box, G(h r)
    with _blas.limit_one():
        dc2e_b = operators._pinv_factors(operators.kernel_matrix(
            R_DC * s, R_DE * s, ref_family), PINV_CUTOFF)[1]
        old, t_old, c_old = timed(lambda: today(s, dc2e_b, tol, workers, ref_family))
        new, t_new, c_new = timed(lambda: _m2l_fast.build(s, R_DC, R_UE, dc2e_b, tol,
                                                          workers=workers, family=fam, h=h))
    # the rest of the set: build_operators with an M2L builder that returns a finished result
    _, t_rest, _ = timed(lambda: whole_set(p, ref_family, workers, lambda *a, **k: old))
    _, t_prop, _ = timed(lambda: proposed_rest(p, ref_family, workers))
    with _blas.limit_one():
        errors_cache[id(old)] = errors(old, s, ref_family, 1.0, np.random.default_rng(p))
        errors_cache[id(new)] = errors(new, s, fam, h, np.random.default_rng(p))
    print(row(label, p, len(s), tol, "today", old, t_old, c_old))
    print(row(label, p, len(s), tol, "fast", new, t_new, c_new))
    print(f"{'':>{len(label) + 17}}| M2L {t_old / t_new:5.1f}x faster (cpu {c_old / c_new:.1f}x); "
          f"rest of the set {t_rest:.3f} s (parallel {t_prop:.3f} s); whole set "
          f"{t_rest + t_old:.3f} s -> {t_rest + t_new:.3f} s ({t_prop + t_new:.3f} s)",
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--p", type=int, nargs="+", default=[4, 6, 8, 10])
    ap.add_argument("--threads", type=int, default=_threads.cpu_count())
    ap.add_argument("--families", action="store_true",
                    help=f"also Yukawa and Helmholtz at h = {H}")
    args = ap.parse_args()
    print(f"== cold M2L builds, float64, {args.threads} threads (BLAS on one), one run each; "
          f"{cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("errors: E/tol = max_t |E_t|_F / (tol sigma_max); E/|K| = max_t |E_t|_F / |K_t|_F; "
          "fro; apply; chain (see the module docstring)")
    hdr = (f"{'p':>3} {'n':>5} {'tol':>7} | {'build':<6} {'wall s':>7} {'cpu s':>7} {'k':>4} "
           f"{'mean r':>7} | {'E/tol':>7} {'E/|K|':>9} {'fro':>9} {'apply':>9} {'chain':>9}")
    with _threads.Workers(args.threads) as workers:
        print(hdr)
        for p in args.p:
            compare(p, LAPLACE, 1.0, workers)
        if not args.families:
            return
        print(f"\n== per-level families, boxes of half-width h = {H}")
        print(f"{'family':<24}" + hdr)
        fams = [Yukawa(x / H) for x in (0.1, 1.0, 10.0)] + \
               [Helmholtz(x / H) for x in (0.5, 2.0, 4.0)]
        for fam in fams:
            (name, value), = fam.params
            label = f"{fam.name} {name}*h={abs(value) * H:g}"
            for p in args.p:
                compare(p, fam, H, workers, f"{label:<24}")


if __name__ == "__main__":
    main()
