"""Cold M2L build: today's streamed-QR build (aotfmm._m2l_svd) against the symmetry build
(aotfmm._m2l_fast), per p, one run each: time, ranks, accuracy; and the rest of an operator set
(pseudo-inverses, M2M, L2L) for the per-level time of a family that is not scale invariant.

    python benchmarks/build_speed.py [--p 4 6 8 10] [--threads 2] [--families]

Accuracy, against the uncompressed K_t built here with numpy from the surface and G:
``max_t |E_t|/sigma`` is max over the 316 t of ||U A_t^T B_t V^T - K_t||_F / sigma_max in units
of tol (the build's bound is a few tol), ``max_t |E_t|/|K_t|`` the same relative to each K_t,
``fro`` the relative Frobenius error of all 316 blocks together. ``apply``: densities from a P2M
of random charges in each of the 316 source boxes (UC2E pseudo-inverse, cutoff 1e-13), summed
through the compressed M2L vs through the K_t (the compression's error on realistic densities);
``chain``: that M2L sum vs the sources' direct potential at the target's check points (P2M +
M2L, what L2P then sees).

``--families`` adds Yukawa exp(-lam r)/(4 pi r) (lam h = 0.1, 1, 10) and Helmholtz
exp(i kappa r)/(4 pi r) (kappa h = 0.5, 2, 4) at h = 0.37. Today's build serves Yukawa with h
folded into G; for Helmholtz (complex, which today's build cannot do) the reference is today's
algorithm ported to complex here (:func:`reference_build`: the same streamed QRs and per-t
SVDs). Times are wall clock; ``cpu`` is the process CPU time (all threads), steadier on a
busy machine.
"""
import argparse
import dataclasses
import inspect
import os
import platform
import time
import typing

import numpy as np

from aotfmm import _blas, _geometry, _m2l_fast, _m2l_svd, _threads
from aotfmm.families import LAPLACE
from aotfmm.operators import default_m2l_tol
from aotfmm.surfaces import DEFAULT_RADII, surface

TV = _geometry.TRANSFER_VECTORS
R_UE, R_UC, R_DE, R_DC = DEFAULT_RADII
PINV_CUTOFF = 1e-13
H = 0.37


@dataclasses.dataclass(frozen=True)
class Radial:
    """A family-like radial kernel: what the builders read (``g_of_r``, ``scalar``)."""
    name: str
    scalar: str
    g: typing.Callable

    def g_of_r(self, r, out=None):
        v = self.g(r)
        if out is None:
            return v
        out[...] = v
        return out


def yukawa(lam):
    return Radial(f"yukawa lam={lam:g}", "real",
                  lambda r: np.exp(-lam * r) / (4.0 * np.pi * r))


def helmholtz(kappa):
    return Radial(f"helmholtz kappa={kappa:g}", "complex",
                  lambda r: np.exp(1j * kappa * r) / (4.0 * np.pi * r))


def folded(family, h):
    """``family`` with G(r) -> G(h r): the reference-box build then gives the operators of
    half-width h (today's build has no h)."""
    return Radial(f"{family.name} at h={h:g}", family.scalar,
                  lambda r: family.g_of_r(h * np.asarray(r, dtype=np.float64)))


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
    """G(h |x_i - y_j|) with numpy (independent of the library)."""
    d = x[:, None, :] - y[None, :, :]
    return family.g_of_r(h * np.sqrt((d * d).sum(-1)))


def transfer_blocks(s, t0, t1, family, h):
    """K_t for t in t0..t1 with numpy, (m, n, n)."""
    y = 2.0 * TV[t0:t1, None, :] + R_UE * s[None]
    d = R_DC * s[None, :, None, :] - y[:, None, :, :]
    return family.g_of_r(h * np.sqrt((d * d).sum(-1)))


def today(s, dc2e_b, tol, threads, family):
    """aotfmm._m2l_svd.build with ``threads`` (whichever threading argument it takes)."""
    params = inspect.signature(_m2l_svd.build).parameters
    if "workers" in params:
        with _threads.Workers(threads) as w:
            return _m2l_svd.build(s, R_DC, R_UE, dc2e_b, tol, workers=w, family=family)
    return _m2l_svd.build(s, R_DC, R_UE, dc2e_b, tol, threads=threads, family=family)


def reference_build(s, tol, family, h):
    """Today's algorithm (aotfmm._m2l_svd), complex-aware: streamed QR of all 316 blocks (the
    check and equivalent radii are equal: one stack), SVD of R, then C_t = U^H K_t conj(V) and
    its SVD per t. Single-threaded; a reference for ranks and errors only."""
    n = len(s)
    r = np.zeros((0, n), complex)
    for t0 in range(0, len(TV), 32):
        r = np.linalg.qr(np.concatenate([r, transfer_blocks(s, t0, t0 + 32, family, h)
                                         .reshape(-1, n)]), mode="r")
    _, sigma, vt = np.linalg.svd(r)
    k = _m2l_svd.rank_for(sigma, tol)
    v = vt[:k].T
    u = v
    a, b, offsets = [], [], [0]
    for t0 in range(0, len(TV), 32):
        p_, s_, qt = np.linalg.svd(u.conj().T @ transfer_blocks(s, t0, t0 + 32, family, h)
                                   @ v.conj())
        for i in range(len(s_)):
            rr = max(1, int(np.count_nonzero(s_[i] > tol * sigma[0])))
            a.append((p_[i, :, :rr] * s_[i, :rr]).T)
            b.append(qt[i, :rr])
            offsets.append(offsets[-1] + rr)
    return {"m2l_u": u, "m2l_v": v, "m2l_a": np.concatenate(a), "m2l_b": np.concatenate(b),
            "m2l_offsets": np.array(offsets), "m2l_sigma": sigma}


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


def rest_of_set(s, family, h):
    """The rest of a per-level set as operators.py builds it (one thread): UC2E/DC2E
    pseudo-inverse factors (SVDs), M2M and L2L (8 + 8 kernel matrices and GEMMs). L2L of a
    per-level set needs the child level's dc2e_b, which that level's set computes anyway: the
    level's own stands in for it here (same shape, same flops)."""
    def pinv(k):
        u, sv, vt = np.linalg.svd(k)
        keep = sv > PINV_CUTOFF * sv[0]
        return vt[keep].conj().T / sv[keep], u[:, keep].conj().T

    _, uc2e_b = pinv(kernel_matrix(R_UC * h * s, R_UE * h * s, family))
    _, dc2e_b = pinv(kernel_matrix(R_DC * h * s, R_DE * h * s, family))
    child_b = dc2e_b
    for sign in _geometry.OCTANT_SIGNS:
        uc2e_b @ kernel_matrix(R_UC * h * s, h / 2 * sign + h / 2 * R_UE * s, family)
        child_b @ kernel_matrix(h / 2 * sign + h / 2 * R_DC * s, R_DE * h * s, family)
    return dc2e_b


def fmt_err(e):
    return f"{e[0]:7.2f} {e[1]:9.1e} {e[2]:9.1e} {e[3]:9.1e} {e[4]:9.1e}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--p", type=int, nargs="+", default=[4, 6, 8, 10])
    ap.add_argument("--threads", type=int, default=_threads.cpu_count())
    ap.add_argument("--families", action="store_true",
                    help="also Yukawa and Helmholtz at h = 0.37 (slower: references)")
    args = ap.parse_args()
    thr = args.threads
    rng = np.random.default_rng(7)
    print(f"== cold M2L builds, float64, {thr} threads (BLAS on one), one run each; "
          f"{cpu_name()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("errors: max_t|E_t|/sigma in units of tol; max_t|E_t|/|K_t|; fro; apply; chain "
          "(module docstring)")
    hdr = (f"{'p':>3} {'n':>5} {'tol':>7} | {'build':<6} {'wall s':>7} {'cpu s':>7} {'k':>4} "
           f"{'mean r':>7} | {'E/tol':>7} {'E/|K|':>9} {'fro':>9} {'apply':>9} {'chain':>9}")
    print(hdr)
    with _blas.limit_one():
        for p in args.p:
            s = surface(p)
            tol = default_m2l_tol(p, np.float64)
            (dc2e_b, t_rest, c_rest) = timed(lambda: rest_of_set(s, LAPLACE, 1.0))
            old, t_old, c_old = timed(lambda: today(s, dc2e_b, tol, thr, LAPLACE))
            new, t_new, c_new = timed(lambda: _m2l_fast.build(s, R_DC, R_UE, dc2e_b, tol,
                                                              threads=thr))
            for name, out, t, c in (("today", old, t_old, c_old), ("fast", new, t_new, c_new)):
                e = errors(out, s, LAPLACE, 1.0, np.random.default_rng(p))
                print(f"{p:3d} {len(s):5d} {tol:7.0e} | {name:<6} {t:7.3f} {c:7.3f} "
                      f"{out['m2l_v'].shape[1]:4d} {len(out['m2l_a']) / len(TV):7.1f} | "
                      f"{fmt_err([e[0] / tol, *e[1:]])}")
            print(f"{'':>17}| ratio {t_old / t_new:6.1f}x wall, {c_old / c_new:.1f}x cpu; "
                  f"rest of the set (2 pinv, M2M, L2L, 1 thread) {t_rest:.3f} s; "
                  f"set total with fast M2L {t_rest + t_new:.3f} s", flush=True)
        if not args.families:
            return
        print(f"\n== per-level families at h = {H}: reference (today's build or its "
              "complex port) vs fast")
        print(f"{'family':<22} " + hdr)
        fams = [yukawa(x / H) for x in (0.1, 1.0, 10.0)] + \
               [helmholtz(x / H) for x in (0.5, 2.0, 4.0)]
        for fam in fams:
            for p in args.p:
                s = surface(p)
                tol = default_m2l_tol(p, np.float64)
                dc2e_b, t_rest, _ = timed(lambda: rest_of_set(s, fam, H))
                if fam.scalar == "real":
                    old, t_old, c_old = timed(lambda: today(s, dc2e_b, tol, thr, folded(fam, H)))
                    label = "today"
                else:
                    old, t_old, c_old = timed(lambda: reference_build(s, tol, fam, H))
                    label = "port"
                new, t_new, c_new = timed(lambda: _m2l_fast.build(
                    s, R_DC, R_UE, dc2e_b, tol, threads=thr, family=fam, h=H))
                for name, out, t, c in ((label, old, t_old, c_old), ("fast", new, t_new, c_new)):
                    e = errors(out, s, fam, H, np.random.default_rng(p))
                    print(f"{fam.name:<22} {p:3d} {len(s):5d} {tol:7.0e} | {name:<6} {t:7.3f} "
                          f"{c:7.3f} {out['m2l_v'].shape[1]:4d} "
                          f"{len(out['m2l_a']) / len(TV):7.1f} | "
                          f"{fmt_err([e[0] / tol, *e[1:]])}")
                print(f"{'':>40}| rest of the set {t_rest:.3f} s; per level with fast M2L "
                      f"{t_rest + t_new:.3f} s", flush=True)


if __name__ == "__main__":
    main()
