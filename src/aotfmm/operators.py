"""KIFMM translation operators of a kernel family: build (float64), cache, hand out.

:func:`get_operators` returns an :class:`Operators` (frozen dataclass) for an expansion order
``p``, a run dtype and a kernel family (:mod:`aotfmm.families`, default Laplace), loading it
from the on-disk cache (:mod:`aotfmm.cache`) or building it. Applying the operators to a tree's
boxes is :mod:`aotfmm.expansions`' job.

Scaling convention (a homogeneous kernel, G(s x, s y) = s**degree G(x, y); Laplace: degree -1)
-----------------------------------------------------------------------------------------------
All matrices are built once for the *reference box*: half-width 1, centred at the origin. For a
box of half-width ``h`` the kernel matrix between its surfaces is ``K_h = h**degree K_1``, so

* check -> equivalent: ``UC2E_h = s(h) UC2E_1`` and ``DC2E_h = s(h) DC2E_1`` with
  ``s(h) = h**-degree`` (:meth:`~aotfmm.families.KernelFamily.c2e_scale`; Laplace: ``h``). P2M
  and P2L therefore multiply the check potentials (computed with the true coordinates) by
  ``s(h) UC2E_1`` or ``s(h) DC2E_1``; :mod:`aotfmm.expansions` applies the factor per box.
* M2M, L2L and M2L map equivalent densities to equivalent densities and are scale invariant:
  ``UC2E_2h K(parent check, child equiv) = UC2E_1 K_1(...)`` and so on. The same matrices serve
  every level; no factor is applied. A family that is not homogeneous (``degree`` None: Yukawa,
  Helmholtz) needs a set per level: :func:`get_operators` builds it for ``family.scaled(h)``.
* L2P and M2P evaluate ``sum_j G(x, y_j) density_j`` with the true coordinates
  ``y_j = c + h * radius * surface_j``: no factor either.

Equivalent densities are therefore true charges sitting on the equivalent surface points.

Matrices (float64 build, cast to the run dtype when stored in :class:`Operators`):

* ``uc2e_a`` (n_surf, r_up), ``uc2e_b`` (r_up, n_surf): UC2E_1 = uc2e_a @ uc2e_b =
  V Sigma^-1 U^T, pseudo-inverse of K(r_up_check S, r_up_equiv S) with singular values below
  ``pinv_cutoff * sigma_max`` dropped.
* ``dc2e_a`` (n_surf, r_down), ``dc2e_b`` (r_down, n_surf): the same for
  K(r_down_check S, r_down_equiv S).
* ``m2m`` (8, r_up, n_surf): parent_equiv = uc2e_a @ sum_c m2m[c] @ child_equiv, with
  m2m[c] = uc2e_b K(parent check, child equiv) for the child in octant c (octant c has centre
  offset ``OCTANT_SIGNS[c] * h_parent / 2``, see :mod:`aotfmm._geometry`).
* ``l2l`` (8, r_down, n_surf): child down-check coefficients += l2l[c] @ parent_local, with
  l2l[c] = s(1/2) dc2e_b K(child check, parent equiv) (s(1/2): the child's DC2E scale
  factor, 0.5 for Laplace).
* M2L (SVD variant, :mod:`aotfmm._m2l_svd`): ``m2l_v`` (n_surf, k), ``m2l_u`` (n_surf, k)
  (check-side basis, kept for tests and reporting), per-t factors ``m2l_a``, ``m2l_b`` (R, k)
  with rows ``m2l_offsets[t]:m2l_offsets[t+1]`` for t (C_t = a_t^T b_t, see :meth:`m2l_core`),
  ``m2l_decompress`` (r_down, k) = dc2e_b @ m2l_u: down-check coefficients[B] +=
  m2l_decompress @ C_t @ m2l_v.T @ equiv[S] for the transfer vector t = S_ijk - B_ijk.

Why the pseudo-inverses stay factored and come last
---------------------------------------------------
An equivalent density fitted with a small SVD cutoff carries rounding noise of relative size
~ eps_mach / pinv_cutoff in the modes of the smallest kept singular values. The noise is harmless
as long as every consumer of a density applies a kernel matrix first (which damps those modes by
the same singular values) and the amplifying factor ``V Sigma^-1`` last. A precomputed product
such as ``UC2E @ K`` breaks that: its own rounding (~ eps_mach / pinv_cutoff in *every* mode)
meets the noise, and the error grew from 1e-9 to 1e-5 as the cutoff went from 1e-9 to 1e-13
(p = 12). So upward, M2M sums ``uc2e_b K`` terms of the children and applies ``uc2e_a`` once per
parent; downward, L2L, M2L and P2L accumulate *down-check coefficients* (U^T times the check
potential, scaled to the reference box) and :func:`aotfmm.expansions.dc2e` applies ``dc2e_a``
once per box.
"""
import dataclasses
import os
import threading
import time

import numpy as np

from . import _blas, _geometry, _m2l_fast, _m2l_svd, _progress, _threads, cache
from .families import LAPLACE
from .surfaces import DEFAULT_RADII, kernel_matrix, n_surf, surface

__all__ = ["Operators", "get_operators", "build_operators", "default_m2l_tol",
           "default_pinv_cutoff", "P_MIN", "P_MAX"]

P_MIN, P_MAX = 2, 16

#: Default relative SVD cutoff of the check-to-equivalent pseudo-inverses, per dtype. The
#: operators apply the amplifying factor last (module docstring), so float64 can cut close to
#: its rounding level: 1e-13 measured best at p = 10..14 (1e-9 capped the FMM at ~2e-9, 1e-15
#: was up to 2x worse than 1e-13). float32 measured the same at 1e-7 and 1e-9 (p <= 8).
_PINV_CUTOFF = {"float32": 1e-7, "float64": 1e-13}

#: Methods of M2L this module can build, both the same compression (shared SVD bases of the
#: stacked 316 transfer blocks, per-vector truncation at ``m2l_tol``; ranks equal, errors equal
#: to ~3 digits): ``"sym"`` evaluates the 16 blocks the cube's symmetries leave and builds the
#: bases from them (:mod:`aotfmm._m2l_fast`, p = 8 in ~0.1 s); ``"svd"`` streams a QR through
#: all 316 blocks (:mod:`aotfmm._m2l_svd`, p = 8 in ~4 s: the Laplace build until 2026-12, kept
#: as the reference the engine pin was made with). The method is part of the cache key.
M2L_METHODS = ("sym", "svd")
#: The method :func:`get_operators` builds when none is given.
DEFAULT_M2L_METHOD = "sym"
_M2L_BUILDERS = {"sym": _m2l_fast, "svd": _m2l_svd}


def default_pinv_cutoff(dtype):
    return _PINV_CUTOFF[np.dtype(dtype).name]


#: M2L compression tolerance per p. The P2M -> M2L -> L2P error from all 316 V boxes measured
#: ~10-30x the tolerance (benchmarks/operators.py), so the tolerance sits ~30x below the error
#: of one expansion of order p at the V-list distance. The rank depends on the tolerance only.
#: From p = 9 on the FMM error (benchmarks/accuracy.py) was checked against a 3-10x looser
#: tolerance: the looser one cost up to 2x in the far-target gradient.
_M2L_TOL = {2: 1e-3, 3: 1e-4, 4: 1e-5, 5: 1e-6, 6: 1e-7, 7: 3e-8, 8: 1e-8, 9: 1e-10, 10: 1e-11,
            11: 1e-11}


def default_m2l_tol(p, dtype):
    """M2L compression tolerance matched to the accuracy of order ``p`` (and of ``dtype``)."""
    tol = _M2L_TOL.get(p, 1e-12)
    if np.dtype(dtype) == np.float32:
        tol = max(tol, 1e-7)
    return tol


@dataclasses.dataclass(frozen=True, eq=False)
class Operators:
    """Precomputed operators of order ``p`` for one run dtype (see the module docstring)."""
    p: int
    dtype: np.dtype
    n_surf: int
    surface: np.ndarray          # (n_surf, 3) float64, unit surface
    surface_soa: np.ndarray      # (3, n_surf) run dtype, C-contiguous (for kernels)
    r_up_equiv: float
    r_up_check: float
    r_down_equiv: float
    r_down_check: float
    pinv_cutoff: float
    m2l_method: str
    m2l_tol: float
    m2l_rank: int
    uc2e_a: np.ndarray
    uc2e_b: np.ndarray
    dc2e_a: np.ndarray
    dc2e_b: np.ndarray
    m2m: np.ndarray
    l2l: np.ndarray
    m2l_v: np.ndarray
    m2l_u: np.ndarray
    m2l_a: np.ndarray
    m2l_b: np.ndarray
    m2l_offsets: np.ndarray      # (317,) int64
    m2l_decompress: np.ndarray
    m2l_sigma: np.ndarray        # (n_surf,) float64 singular values of the stacked K_t
    key: dict = dataclasses.field(repr=False)
    source: str = "built"        # "built" or "cache"
    seconds: float = 0.0         # build or load time
    family: object = LAPLACE     # the kernel family (aotfmm.families.KernelFamily)

    def m2l_core(self, t):
        """C_t (k, k) of transfer vector row ``t``, rebuilt from its factors."""
        r0, r1 = self.m2l_offsets[t], self.m2l_offsets[t + 1]
        return self.m2l_a[r0:r1].T @ self.m2l_b[r0:r1]

    @property
    def up_rank(self):
        """Columns of ``uc2e_a``: singular values kept in the upward pseudo-inverse."""
        return self.uc2e_a.shape[1]

    @property
    def down_rank(self):
        """Columns of ``dc2e_a``: length of a box's down-check coefficient vector."""
        return self.dc2e_a.shape[1]

    @property
    def nbytes(self):
        """Bytes held by the operator matrices."""
        return sum(getattr(self, f).nbytes for f in _ARRAY_FIELDS)


_ARRAY_FIELDS = ("uc2e_a", "uc2e_b", "dc2e_a", "dc2e_b", "m2m", "l2l", "m2l_v", "m2l_u",
                 "m2l_a", "m2l_b", "m2l_offsets", "m2l_decompress")


def _pinv_factors(a, cutoff):
    """Pseudo-inverse of ``a`` as two factors (V Sigma^-1, U^T), singular values below
    ``cutoff * sigma_max`` dropped."""
    u, s, vt = np.linalg.svd(a)
    keep = s > cutoff * s[0]
    if a.dtype.kind == "c":  # V Sigma^-1 U^H
        return (np.ascontiguousarray(vt[keep].conj().T / s[keep]),
                np.ascontiguousarray(u[:, keep].conj().T))
    return np.ascontiguousarray(vt[keep].T / s[keep]), np.ascontiguousarray(u[:, keep].T)


def build_operators(p, radii=DEFAULT_RADII, pinv_cutoff=1e-13, m2l_tol=1e-7, m2l_rank=None,
                    method=None, stage=None, threads=None, family=LAPLACE, *, workers=None):
    """Build every operator of order ``p`` in float64 (no cache). Returns a dict of arrays.

    ``stage(name)``, if given, is called as each stage starts (for progress displays).
    ``threads``: our own worker threads (default: all CPUs), or ``workers`` (a
    :class:`aotfmm._threads.Workers`) to run on; numpy's BLAS runs on one thread meanwhile (its own threads spin badly on a busy machine, see :func:`_blas.limit_one`).
    ``family``: the kernel (:class:`aotfmm.families.KernelFamily`); the set is the reference
    box's (half-width 1): for a family with a parameter, pass ``family.scaled(h)`` to get the
    set of boxes of half-width h (complex matrices for a complex family)."""
    workers = _threads.as_workers(None if workers is not None else threads, workers)
    method = DEFAULT_M2L_METHOD if method is None else method
    with _blas.limit_one():
        return _build_operators(p, radii, pinv_cutoff, m2l_tol, m2l_rank, method,
                                stage or (lambda name: None), workers, family)


def _build_operators(p, radii, pinv_cutoff, m2l_tol, m2l_rank, method, stage, workers, family):
    r_ue, r_uc, r_de, r_dc = (float(r) for r in radii)
    s = surface(p)
    stage("pseudo-inverses")
    uc2e_a, uc2e_b = _pinv_factors(kernel_matrix(r_uc * s, r_ue * s, family), pinv_cutoff)
    dc2e_a, dc2e_b = _pinv_factors(kernel_matrix(r_dc * s, r_de * s, family), pinv_cutoff)
    n = len(s)
    stage("M2M, L2L")
    m2m = np.empty((8, len(uc2e_b), n), dtype=uc2e_b.dtype)
    for c, sign in enumerate(_geometry.OCTANT_SIGNS):
        # parent half-width 1, child half-width 1/2: uc2e_b K(parent check, child equiv).
        m2m[c] = uc2e_b @ kernel_matrix(r_uc * s, 0.5 * sign + 0.5 * r_ue * s, family)
    l2l = l2l_blocks(dc2e_b, s, r_dc, r_de, family, family.c2e_scale(0.5))
    if method not in _M2L_BUILDERS:
        raise ValueError(f"unknown M2L method {method!r}; expected one of {M2L_METHODS}")
    builder = _M2L_BUILDERS[method]
    m2l = builder.build(s, r_dc, r_ue, dc2e_b, m2l_tol, m2l_rank, stage=stage, workers=workers,
                        family=family)
    return dict(surface=s, uc2e_a=uc2e_a, uc2e_b=uc2e_b, dc2e_a=dc2e_a, dc2e_b=dc2e_b,
                m2m=m2m, l2l=l2l, **m2l)


def l2l_blocks(dc2e_b, s, r_dc, r_de, parent_family, child_c2e):
    """The 8 L2L blocks (8, rank, n_surf) from the local density of the reference box
    (half-width 1) into its children (half-width 1/2, octant c of
    :data:`aotfmm._geometry.OCTANT_SIGNS`): ``child_c2e DC2E_1 K(child check surface, parent
    equivalent surface)``, K of ``parent_family``. ``child_c2e`` is
    ``family.c2e_scale(0.5)`` (the child's DC2E is that times the reference one); a per-level
    set passes its parent level's family (:mod:`aotfmm.evaluate`), a single set its own."""
    return np.stack([child_c2e * dc2e_b @ kernel_matrix(0.5 * sign + 0.5 * r_dc * s, r_de * s,
                                                        parent_family)
                     for sign in _geometry.OCTANT_SIGNS])


#: Cold build of one operator set (M2L method "sym") in float64 on a 2-core Intel Xeon
#: (AVX-512), idle, on both cores (seconds), and its cache file (MB = 1e6 bytes):
#: ``python benchmarks/operators.py --build-table``. Only used for the estimate in the notice.
BUILD_COST = {2: (0.05, 0.1), 3: (0.04, 0.8), 4: (0.07, 3.0), 5: (0.13, 7.9), 6: (0.16, 17.5),
              7: (0.16, 28.9), 8: (0.25, 44.8), 9: (0.51, 100.0), 10: (0.89, 155.0),
              11: (1.4, 183.8), 12: (1.99, 259.1), 13: (2.88, 286.2), 14: (3.78, 313.9),
              15: (4.8, 344.8), 16: (6.23, 371.3)}
#: The float32 set's cache file (MB): its M2L ranks are cut at float32's precision, so from
#: p = 8 it is 3-11x smaller than float64's, not half (``get_operators(p, np.float32).nbytes``,
#: 2026-12-03; the build takes about the float64 time).
BUILD_MB_FLOAT32 = {2: 0.1, 3: 0.4, 4: 1.5, 5: 3.9, 6: 8.5, 7: 10.9, 8: 12.6, 9: 14.4, 10: 16.7,
                    11: 18.8, 12: 21.3, 13: 23.8, 14: 26.5, 15: 29.4, 16: 32.6}


def build_estimate(p, dtype, family=LAPLACE):
    """(seconds, MB) a cold build of order ``p`` is expected to take and write, or None
    (:data:`BUILD_COST` is Laplace's one set; a per-level set of a family with a parameter is
    built differently, in a fraction of that, so no estimate is shown for it)."""
    if p not in BUILD_COST or not family.scale_invariant:
        return None
    seconds, mb = BUILD_COST[p]
    return seconds, BUILD_MB_FLOAT32[p] if np.dtype(dtype) == np.float32 else mb


def _title(family):
    """The family as the notices write it ("Laplace", "Yukawa(lam=0.5)")."""
    return family.name.capitalize() if not family.params else repr(family)


def _build_notice(p, dt, key, cache_dir, est, family=LAPLACE):
    """The line announcing a build: why, how long, how big, where it goes."""
    cost = f", ~{_progress._fmt_seconds(est[0])}, ~{est[1]:.0f} MB" if est else ""
    if cache_dir is False:
        where, why = "not cached (cache_dir=False)", "no cache"
    else:
        path = cache.cache_path(key, cache_dir)
        where = f"cached in {os.path.dirname(path)}"
        why = "cache file unusable" if os.path.lexists(path) else "first use"
    return (f"aotfmm: building {_title(family)} operators p={p} for {dt.name}: {why}{cost}, "
            f"{where}")


def _all_finite(a, block=1 << 16):
    """np.isfinite(a).all() without a temporary the size of ``a``."""
    flat = a.reshape(-1)
    return all(np.isfinite(flat[i:i + block]).all() for i in range(0, flat.size, block))


def _check_arrays(arrays, p, dt, key):
    """Raise ValueError unless ``arrays`` (read from a cache file) have exactly the names,
    dtypes and shapes that ``p`` and ``key`` imply, consistent ranks, sane M2L offsets, only
    finite values and the surface of order ``p`` bit for bit.

    Shapes (n = n_surf(p); r_up, r_down, k, R read from the arrays, then checked everywhere):
    surface (n, 3) float64; uc2e_a (n, r_up), uc2e_b (r_up, n); dc2e_a (n, r_down),
    dc2e_b (r_down, n); m2m (8, r_up, n); l2l (8, r_down, n); m2l_v, m2l_u (n, k);
    m2l_a, m2l_b (R, k); m2l_offsets (317,) int64 from 0 to R, steps in [1, k];
    m2l_decompress (r_down, k); m2l_sigma (n,) float64. 1 <= r_up, r_down, k <= n, k the forced
    rank if there is one. Matrices have the dtype ``dt`` (the family's value dtype of the run).
    """
    n = n_surf(p)
    names = set(_ARRAY_FIELDS) | {"surface", "m2l_sigma"}
    if set(arrays) != names:
        raise ValueError(f"arrays {sorted(arrays)}, expected {sorted(names)}")

    def rank(name, axis):
        a = arrays[name]
        if a.ndim != 2 or not 1 <= a.shape[axis] <= n:
            raise ValueError(f"{name}: shape {a.shape}, expected 2-D with 1..{n} "
                             f"{'columns' if axis else 'rows'}")
        return a.shape[axis]

    r_up, r_down, k = rank("uc2e_a", 1), rank("dc2e_a", 1), rank("m2l_v", 1)
    n_t = _geometry.N_TRANSFER
    big_r = arrays["m2l_a"].shape[0] if arrays["m2l_a"].ndim == 2 else -1
    if key["m2l_rank"] >= 1 and k != min(key["m2l_rank"], n):
        raise ValueError(f"M2L rank {k}, the key forces {min(key['m2l_rank'], n)}")
    if not n_t <= big_r <= n_t * k:
        raise ValueError(f"m2l_a: shape {arrays['m2l_a'].shape}, expected {n_t}..{n_t * k} rows")
    f64, i64 = np.dtype(np.float64), np.dtype(np.int64)
    want = {"surface": ((n, 3), f64), "uc2e_a": ((n, r_up), dt), "uc2e_b": ((r_up, n), dt),
            "dc2e_a": ((n, r_down), dt), "dc2e_b": ((r_down, n), dt),
            "m2m": ((8, r_up, n), dt), "l2l": ((8, r_down, n), dt),
            "m2l_v": ((n, k), dt), "m2l_u": ((n, k), dt), "m2l_a": ((big_r, k), dt),
            "m2l_b": ((big_r, k), dt), "m2l_offsets": ((n_t + 1,), i64),
            "m2l_decompress": ((r_down, k), dt), "m2l_sigma": ((n,), f64)}
    for name, (shape, dtype) in want.items():
        a = arrays[name]
        if a.shape != shape or a.dtype != dtype:
            raise ValueError(f"{name}: {a.dtype} {a.shape}, expected {dtype} {shape}")
        if dtype.kind in "fc" and not _all_finite(a):
            raise ValueError(f"{name}: not all finite")
    steps = np.diff(arrays["m2l_offsets"])
    if arrays["m2l_offsets"][0] != 0 or arrays["m2l_offsets"][-1] != big_r or \
            not ((1 <= steps) & (steps <= k)).all():
        raise ValueError(f"m2l_offsets: not steps of 1..{k} from 0 to {big_r}")
    if (arrays["m2l_sigma"] < 0).any():
        raise ValueError("m2l_sigma: negative singular values")
    if not np.array_equal(arrays["surface"], surface(p)):
        raise ValueError(f"surface: differs from the surface of order {p}")


def _sample(n, m, shift):
    """About ``m`` indices spread evenly over range(n), shifted by ``shift`` (deterministic)."""
    return np.unique(((np.arange(m) * n) // m + shift) % n)


def _rel(got, want):
    return float(np.linalg.norm(got - want)) / max(float(np.linalg.norm(want)), 1e-300)


#: Relative tolerance of :func:`_spot_check`, per run dtype: 100x (float32) and 2000x (float64)
#: the largest error measured on valid files (7e-7, 5e-13; p = 2..12, cutoffs 0..0.3, radii).
_SPOT_TOL = {"float32": 1e-4, "float64": 1e-9}


def _spot_check(arrays, radii, pinv_cutoff, family=LAPLACE):
    """Raise ValueError if a sample of the matrix values is not what the kernel implies.

    Cheap (~1 ms at p = 8; shapes are checked before): a few rows and columns of

    * K K^+ K = K for UC2E and DC2E (``K uc2e_a uc2e_b K``), up to the dropped singular values;
    * ``m2m[c] = uc2e_b K(parent check, child equiv)`` and
      ``l2l[c] = s(1/2) dc2e_b K(child check, parent equiv)`` for all 8 children, recomputed
      (K and s from ``family``, see the module docstring);
    * ``m2l_decompress = dc2e_b m2l_u``.

    This catches planted or scaled values in those matrices. The M2L factors themselves
    (``m2l_u``, ``m2l_v``, ``m2l_a``, ``m2l_b``, ``m2l_sigma``) are not checked: recomputing
    them costs about a build. See :mod:`aotfmm.cache` ("Trust").
    """
    s = arrays["surface"]
    n = len(s)
    r_ue, r_uc, r_de, r_dc = radii
    tol = _SPOT_TOL[np.finfo(arrays["m2m"].dtype).dtype.name]
    # Few rows and columns: every product stays small enough for single-threaded BLAS.
    rows, cols = _sample(n, 16, 0), _sample(n, 4, 1)
    for name, rc, re in (("uc2e", r_uc, r_ue), ("dc2e", r_dc, r_de)):
        a, b = arrays[name + "_a"], arrays[name + "_b"]
        got = kernel_matrix(rc * s[rows], re * s, family) @ (
            a @ (b @ kernel_matrix(rc * s, re * s[cols], family)))
        # K - K K^+ K is the dropped part of K: singular values <= cutoff * sigma_max, and
        # sigma_max / |sampled block| stayed below n / 10 (measured error <= 3 cutoff at p = 6).
        err = _rel(got, kernel_matrix(rc * s[rows], re * s[cols], family))
        if not err <= tol + n * pinv_cutoff:
            raise ValueError(f"{name}_a, {name}_b: K {name.upper()} K differs from K by {err:.1e}")
    half = 0.5 * _geometry.OCTANT_SIGNS[:, None, :]  # child centres (8, 1, 3)
    m = len(cols)
    # all 8 children at once: columns c * m + j of K are child c, sampled point j
    k_m2m = kernel_matrix(r_uc * s, (half + 0.5 * r_ue * s[cols]).reshape(-1, 3), family)
    k_l2l = family.c2e_scale(0.5) * kernel_matrix((half + 0.5 * r_dc * s).reshape(-1, 3),
                                                  r_de * s[cols], family)
    k_l2l = k_l2l.reshape(8, n, m).transpose(1, 0, 2).reshape(n, 8 * m)
    for name, factor, k in (("m2m", "uc2e_b", k_m2m), ("l2l", "dc2e_b", k_l2l)):
        r = _sample(arrays[factor].shape[0], 16, 0)
        want = (arrays[factor][r] @ k).reshape(len(r), 8, m).transpose(1, 0, 2)
        err = _rel(arrays[name][:, r][:, :, cols], want)
        if not err <= tol:
            raise ValueError(f"{name}: differs from {factor} K by {err:.1e}")
    r, kc = _sample(arrays["dc2e_b"].shape[0], 16, 0), _sample(arrays["m2l_u"].shape[1], 8, 0)
    err = _rel(arrays["m2l_decompress"][r][:, kc], arrays["dc2e_b"][r] @ arrays["m2l_u"][:, kc])
    if not err <= tol:
        raise ValueError(f"m2l_decompress: differs from dc2e_b m2l_u by {err:.1e}")


def operator_key(p, dtype, m2l_tol=None, method=None, pinv_cutoff=None, radii=None,
                 m2l_rank=None, family=LAPLACE):
    """The cache key of an operator set (defaults as in :func:`get_operators`): the family's
    fields (:meth:`~aotfmm.families.KernelFamily.cache_key`: ``"kernel"`` and its parameters)
    and the build's."""
    dt = np.dtype(dtype)
    method = DEFAULT_M2L_METHOD if method is None else method
    m2l_tol = default_m2l_tol(p, dt) if m2l_tol is None else float(m2l_tol)
    pinv_cutoff = default_pinv_cutoff(dt) if pinv_cutoff is None else float(pinv_cutoff)
    radii = DEFAULT_RADII if radii is None else radii
    build = {"p": int(p), "r_up_equiv": radii[0], "r_up_check": radii[1],
             "r_down_equiv": radii[2], "r_down_check": radii[3], "pinv_cutoff": pinv_cutoff,
             "m2l_method": method, "m2l_tol": m2l_tol,
             "m2l_rank": -1 if m2l_rank is None else int(m2l_rank), "dtype": dt.name}
    kernel = family.cache_key()
    clash = sorted(set(kernel) & set(build))
    if clash:
        raise ValueError(f"kernel family {family.name!r}: parameter(s) {clash} clash with the "
                         "operator cache key")
    return {**kernel, **build}


def get_operators(p, dtype, *, m2l_tol=None, cache_dir=None, method=None, pinv_cutoff=None,
                  radii=None, m2l_rank=None, threads=None, family=LAPLACE, workers=None):
    """Operators of order ``p`` for run dtype ``dtype``, from the cache or built (and cached).

    Parameters
    ----------
    p : int in [2, 16]
        Expansion order: surfaces have ``6 (p - 1)^2 + 2`` points.
    dtype : float32 or float64
        Run dtype; matrices are computed in float64 and cast.
    m2l_tol : float, optional
        Relative SVD cutoff of the M2L compression; default :func:`default_m2l_tol`.
    cache_dir : path, False or None
        Cache directory; None: ``$AOTFMM_CACHE_DIR`` or the user cache dir; False: no cache.
    method : {"sym", "svd", None}
        How the M2L compression is built (:data:`M2L_METHODS`); default
        :data:`DEFAULT_M2L_METHOD`.
    pinv_cutoff : float, optional
        Relative SVD cutoff of UC2E/DC2E; default :func:`default_pinv_cutoff`.
    radii : 4 floats, optional
        (r_up_equiv, r_up_check, r_down_equiv, r_down_check); default (1.05, 2.95, 2.95, 1.05).
    m2l_rank : int, optional
        Force the M2L rank instead of choosing it from ``m2l_tol``.
    threads : int, optional
        Threads for a build (default: all CPUs); a cache hit does not use them.
    workers : aotfmm._threads.Workers, optional
        Workers to build on instead of new ones for ``threads``.
    family : aotfmm.families.KernelFamily, default LAPLACE
        The kernel. The set is the reference box's (half-width 1): it serves every level of a
        scale-invariant family; for a family with a parameter pass ``family.scaled(h)`` for the
        boxes of half-width h (one set per level). Matrices are complex for a complex family
        (complex64 for float32, complex128 for float64).

    Returns
    -------
    Operators

    Notes
    -----
    Arrays read from a cache file are checked before use: names, dtypes and exact shapes against
    ``p`` and the key, consistent ranks, M2L offsets, finiteness, the surface bit for bit, and a
    sample of UC2E/DC2E/M2M/L2L values against the kernel (:func:`_check_arrays`,
    :func:`_spot_check`); a file that fails is rebuilt and rewritten with a CacheWarning. The
    M2L factors cannot be recomputed cheaply, so the cache directory must be trusted (see
    :mod:`aotfmm.cache`).
    """
    p, dt, key, (m2l_tol, method, pinv_cutoff, radii) = _request(
        p, dtype, m2l_tol, method, pinv_cutoff, radii, m2l_rank, family)

    def build():
        est = build_estimate(p, dt, family)
        with _progress.Notice(_build_notice(p, dt, key, cache_dir, est, family),
                              estimate=est and est[0]) as notice:
            ops = build_operators(p, radii, pinv_cutoff, m2l_tol, m2l_rank, method,
                                  stage=notice.stage, threads=threads, family=family,
                                  workers=workers)
            vdt = family.value_dtype(dt)
            out = {k: (v if k in ("surface", "m2l_sigma", "m2l_offsets") else v.astype(vdt))
                   for k, v in ops.items()}
            mb = sum(v.nbytes for v in out.values()) / 1e6
            notice.done_text = (f"aotfmm: built {_title(family)} operators p={p} for {dt.name} "
                                f"({mb:.0f} MB, M2L rank {out['m2l_v'].shape[1]})")
        return out

    t0 = time.perf_counter()
    arrays, source = cache.load_or_build(key, build, cache_dir, required=_REQUIRED,
                                           validate=_validator(p, dt, key, radii, pinv_cutoff,
                                                               family))
    seconds = time.perf_counter() - t0
    s = arrays["surface"]
    return Operators(
        p=p, dtype=dt, n_surf=n_surf(p), surface=s,
        surface_soa=np.ascontiguousarray(s.T, dtype=dt),
        r_up_equiv=radii[0], r_up_check=radii[1], r_down_equiv=radii[2], r_down_check=radii[3],
        pinv_cutoff=pinv_cutoff, m2l_method=method, m2l_tol=m2l_tol,
        m2l_rank=arrays["m2l_v"].shape[1],
        **{f: np.ascontiguousarray(arrays[f]) for f in _ARRAY_FIELDS},
        m2l_sigma=arrays["m2l_sigma"],
        key=key, source=source, seconds=seconds, family=family)


#: what a cache file of operators must hold
_REQUIRED = _ARRAY_FIELDS + ("surface", "m2l_sigma")


def _validator(p, dt, key, radii, pinv_cutoff, family):
    def validate(arrays):  # arrays read from a cache file, before anything uses them
        _check_arrays(arrays, p, family.value_dtype(dt), key)
        _spot_check(arrays, radii, pinv_cutoff, family)
    return validate


def prefetch_operators(p, dtype, cache_dir=None, family=LAPLACE):
    """Start reading the default operators of ``p``/``dtype`` from the cache in a thread
    (:func:`aotfmm.cache.prefetch`: never builds, warns or raises; the read releases the GIL),
    so that :func:`get_operators` with the same arguments finds them in memory. Returns the
    thread: join it before that call, else both read the file; or set its ``cancel`` event
    when the operators are not needed after all (then nothing is kept in memory). None for
    ``cache_dir=False``. Plans start it before their tree (a cache hit at p = 8 costs ~50 ms:
    the read, its CRC-32s and the checks)."""
    if cache_dir is False:
        return None
    p, dt, key, (_, _, pinv_cutoff, radii) = _request(p, dtype, None, None, None, None,
                                                       None, family)
    cancel = threading.Event()
    th = threading.Thread(target=cache.prefetch, name="aotfmm-operator-prefetch", daemon=True,
                          args=(key, cache_dir), kwargs=dict(
                              required=_REQUIRED, cancel=cancel,
                              validate=_validator(p, dt, key, radii, pinv_cutoff, family)))
    th.cancel = cancel
    th.start()
    return th


def _request(p, dtype, m2l_tol, method, pinv_cutoff, radii, m2l_rank, family):
    """:func:`get_operators`'s arguments checked, defaults filled in, and the cache key:
    (p, dtype, key, (m2l_tol, method, pinv_cutoff, radii))."""
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not P_MIN <= p <= P_MAX:
        raise ValueError(f"p must be an integer in [{P_MIN}, {P_MAX}], got {p!r}")
    p = int(p)
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    method = DEFAULT_M2L_METHOD if method is None else method
    if method not in M2L_METHODS:
        raise ValueError(f"method must be one of {M2L_METHODS}, got {method!r}")
    m2l_tol = default_m2l_tol(p, dt) if m2l_tol is None else float(m2l_tol)
    if not 0.0 <= m2l_tol < 1.0:
        raise ValueError(f"m2l_tol must be in [0, 1), got {m2l_tol}")
    pinv_cutoff = default_pinv_cutoff(dt) if pinv_cutoff is None else float(pinv_cutoff)
    if not 0.0 <= pinv_cutoff < 1.0:
        raise ValueError(f"pinv_cutoff must be in [0, 1), got {pinv_cutoff}")
    radii = DEFAULT_RADII if radii is None else tuple(float(r) for r in radii)
    if len(radii) != 4 or not all(r > 0 for r in radii):
        raise ValueError(f"radii must be 4 positive numbers, got {radii!r}")
    r_ue, r_uc, r_de, r_dc = radii
    if not (r_ue < r_uc and r_dc < r_de and r_ue >= 1 and r_dc >= 1 and r_ue + r_dc < 4
            and r_uc <= 3 and r_de <= 3):
        raise ValueError("radii must satisfy 1 <= r_up_equiv < r_up_check <= 3, "
                         f"1 <= r_down_check < r_down_equiv <= 3 and r_up_equiv + r_down_check "
                         f"< 4, got {radii!r}")
    key = operator_key(p, dt, m2l_tol, method, pinv_cutoff, radii, m2l_rank, family)
    return p, dt, key, (m2l_tol, method, pinv_cutoff, radii)
