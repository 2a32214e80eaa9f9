"""M2L compression built from the cube's symmetries: 16 kernel blocks instead of 316.

Same output as :func:`aotfmm._m2l_svd.build` (the same shared bases and per-vector truncation,
so the same ranks and errors up to rounding; see that module for the application), 20-30x
faster, for any radial kernel, real or complex, and any box half-width ``h``: the builder for
kernels that are not scale invariant (Yukawa, Helmholtz), which need an operator set per tree
level.

Symmetry
--------
The unit surface and the 316 transfer vectors are invariant under the 48 signed permutations
g of the axes (the cube's group O_h, :data:`GROUP`). With pi_g the surface permutation
s_{pi(i)} = g^T s_i and P_g the matching row permutation (:func:`surface_permutations`):

    K_{g t}[i, j] = G(h |r_c s_i - 2 g t - r_e s_j|) = K_t[pi(i), pi(j)],   K_{g t} = P K_t P^T

so every K_t is a permuted copy of the block of one of 16 orbit representatives t_r
(t_x >= t_y >= t_z >= 0, :data:`REPS`): only those 16 blocks are ever evaluated. With equal
check and equivalent radii a block depends on s_i - s_j only, which on the grid surface takes
(2p - 1)^3 values: G is evaluated once per value and gathered (the complex exp of Helmholtz
was 15 % of a build).

Parity basis (:class:`Parity`). The 8 axis flips commute; an orthogonal change of basis Q
(sums and differences over the points a flip exchanges) splits R^n into 8 sectors of vectors
even or odd in x, y and z, and turns every P_g into a signed permutation that maps sectors to
sectors. Any matrix that commutes with the flips, such as the Gram matrix of the stack below,
is block diagonal in this basis, so its singular vectors live in one sector each.

Shared bases. The right basis is the SVD of the tall stack S = [K_1; ...; K_316]:
S^H S = sum_t K_t^H K_t = sum_g P_g H P_g^T, H = sum_r K_r^H K_r / |stab(t_r)| (each t of an
orbit is hit by |stab| group elements). Per sector s, a triangular R_s with R_s^H R_s equal to
the sector's block comes from QRs only, without forming a Gram matrix:

1. QR of the 16 weighted blocks' sector columns [K~_r[:, s] / sqrt(|stab_r|)] (16 n x n/8),
   K~_r = Q^T K_r Q, as a QR of each block's n x n/8 columns (cache-sized: LAPACK's QR of a
   tall thin matrix is memory bound) and one of the 16 stacked triangles; the sum over the 8
   flips is then exactly 8 x the block diagonal;
2. the axis permutations S3 = {1, tau} {1, c, c^2} (tau swaps x and y, c cycles the axes): one
   small QR per subgroup, R_s <- qr([R_s; R_s' T^T; ...]) with T the signed permutation that
   carries sector s' to s.

Then one SVD of R_s per sector (n/8 x n/8): ~4 n^3 flops against ~650 n^3 for the streamed QR
of all 316 blocks (:mod:`aotfmm._m2l_svd`), with the same (QR) rounding behaviour.
The Gram matrix sum_t K_t K_t^T with one eigh was measured as well: it squares the condition
number, and its eigenvectors resolve singular values only down to ~sqrt(eps) sigma_max: at
p = 8 (tol 1e-8) the basis' projection error doubled (still below tol); from p = 9 (tol
1e-10) it stayed at ~4e-9 sigma_max, 40x (p = 9) and 360x (p = 10) over tol. It is not used.

Per-vector compression. With U (check side) and V (equivalent side) the shared bases,
C_t = U^H K_t conj(V). For t = g t_r, K_t = P K_r P^T, and inserting the projections U U^H and
conj(V) V^T (which K_r and K_t survive up to tol sigma_max):

    C_t ~ L_g C_r N_g,   L_g = U^H P_g U,   N_g = (P_g V)^T conj(V)                (k x k)

so only the 16 cores C_r are formed and compressed (a randomized truncated SVD at
tol * sigma_max, :func:`_truncated`), C_r ~ A_r^T B_r, and A_t = A_r L_g^T, B_t = B_r N_g. In
the parity basis L_g and N_g are 8 blocks of ~(k/8)^2 (sector s to its image), so these
products cost 1/8 of dense ones. L and N are orthogonal when the kept singular subspace is
invariant (the cut does not split a degenerate multiplet), and then A_t^T B_t has C_r's
singular values: r_t = r_{t_r}. The error bound is that of the projections
(||U A_t^T B_t V^T - K_t||_2 <= ~5 tol sigma_max against ~3 for a direct compression of each
K_t); measured, the errors agree with today's build to 3 digits or better (p = 4..10).

Complex kernels (Helmholtz). G is symmetric, not Hermitian: K_{-t} = K_t^T (no conjugate).
The stored bases keep the application's plain transposes, K_t ~ m2l_u C_t m2l_v^T, where
m2l_v is the *conjugate* of the stack's right singular vectors; with equal check and
equivalent radii the left singular vectors of [K_1 ... K_316] are that same conjugate, so
m2l_u = m2l_v as in the real case (and C_{-t} = C_t^T).

Threads: every stage is a fixed list of tasks (16 blocks, 8 sectors, 16 cores, 48 group
elements, 16 chunks of transfer vectors) handed to our threads, with numpy's BLAS on one
thread; results do not depend on the thread count.

Measured (``benchmarks/build_speed.py``, float64, default tol, 2-core Xeon shared with other
jobs, so about one core's worth): Laplace p = 6 / 8 / 10 in 0.05 / 0.12 / 0.44 s against
1.3 / 5.1 / 22 s for the streamed-QR build; Yukawa (lam h = 1) 0.07 / 0.17 / 0.53 s; Helmholtz
(kappa h = 2) 0.13 / 0.33 / 1.4 s against 3.6 / 16 / 76 s. The same k and mean r_t as the
streamed-QR build in every case measured (p = 4..10 for Laplace, Yukawa lam h = 0.1, 1, 10 and
Helmholtz kappa h = 0.5, 2, 4; Laplace p = 12), and max_t ||E_t|| within 3 % of it.
"""
import functools
import itertools

import numpy as np

from . import _blas, _geometry, _threads
from .families import LAPLACE

__all__ = ["build", "kernel_blocks", "surface_permutations", "Parity", "GROUP", "REPS",
           "REP_OF", "ELEMENT_OF", "STABILIZER"]


# ------------------------------------------------------------------------- the cube's symmetries

def _signed_permutations():
    """The 48 signed permutation matrices (3, 3) int64, identity first."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3), np.int64)
            m[np.arange(3), perm] = signs
            mats.append(m)
    return np.array(mats)


#: O_h as 48 integer matrices; element e maps a vector t to ``GROUP[e] @ t``.
GROUP = _signed_permutations()


def _element(m):
    return int(np.flatnonzero((GROUP == np.asarray(m)).all(axis=(1, 2)))[0])


def _orbits():
    tv = _geometry.TRANSFER_VECTORS
    canon = -np.sort(-np.abs(tv), axis=1)                 # |t| sorted decreasing
    reps = np.unique(canon, axis=0)[::-1].copy()          # (3,3,3) first, (2,0,0) last
    rep_of = np.array([np.flatnonzero((reps == c).all(axis=1))[0] for c in canon])
    images = np.einsum("eij,rj->eri", GROUP, reps)        # (48, 16, 3)
    element_of = np.array([np.flatnonzero((images[:, r] == t).all(axis=1))[0]
                           for t, r in zip(tv, rep_of)])  # first e with GROUP[e] t_r = t
    stabilizer = (images == reps[None]).all(axis=2).sum(axis=0)
    return reps, rep_of, element_of, stabilizer


#: The 16 orbit representatives t_r of the transfer vectors (t_x >= t_y >= t_z >= 0).
#: REP_OF[t] is the orbit of TRANSFER_VECTORS[t], ELEMENT_OF[t] the group element e with
#: ``GROUP[e] @ REPS[REP_OF[t]] == TRANSFER_VECTORS[t]``, STABILIZER[r] the number of elements
#: fixing REPS[r] (48 / orbit size).
REPS, REP_OF, ELEMENT_OF, STABILIZER = _orbits()


#: The axis flips diag(-1, 1, 1), diag(1, -1, 1), diag(1, 1, -1) (elements of GROUP).
_FLIPS = [_element(np.diag([-1 if a == b else 1 for b in range(3)])) for a in range(3)]

#: OCTANT_FLIPS[o]: the element of GROUP that negates the axes of the bits of o (x 1, y 2,
#: z 4): the reflection taking a child of octant 0 to octant o.
OCTANT_FLIPS = [_element(np.diag([-1 if (o >> a) & 1 else 1 for a in range(3)]))
                for o in range(8)]

#: O_h = S3 x {flips}: the flips are summed exactly by the parity basis (x 8), the axis
#: permutations S3 = {1, tau} {1, c, c^2} by one small QR per subgroup, given by its elements
#: other than the identity (tau swaps x and y, c cycles the axes; checked at import).
_TAU = [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
_CYCLE = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])
_S3_STAGES = ([_element(_TAU)], [_element(_CYCLE), _element(_CYCLE @ _CYCLE)])


def _check_stages():
    products = {0}
    for stage in _S3_STAGES + tuple([f] for f in _FLIPS):
        products |= {_element(GROUP[g] @ GROUP[p]) for g in stage for p in products}
    if len(products) != len(GROUP):  # pragma: no cover - a wrong table above
        raise AssertionError("the subgroups do not generate O_h")


_check_stages()


def surface_permutations(surf):
    """(48, n) int64: row e is the permutation pi with surf[pi[i]] = GROUP[e]^T s_i, so that
    K_{GROUP[e] t} = K_t[pi][:, pi] (``P K_t P^T``, P the row permutation by pi).

    Raises ValueError if ``surf`` is not invariant under the cube's symmetries (the KIFMM
    surfaces of :func:`aotfmm.surfaces.surface` are, to rounding: their coordinates
    k * 2 / (p - 1) - 1 are not exact negatives of each other).
    """
    surf = np.asarray(surf, dtype=np.float64)
    base = np.lexsort(np.round(surf, 9).T[::-1])
    out = np.empty((len(GROUP), len(surf)), np.int64)
    for e in range(len(GROUP)):
        image = surf @ GROUP[e]                 # row i: (GROUP[e]^T s_i)^T
        order = np.lexsort(np.round(image, 9).T[::-1])
        out[e, order] = base
        if not np.allclose(surf[out[e]], image, rtol=0.0, atol=1e-12):
            raise ValueError("the surface is not invariant under the cube's symmetries")
    return out


class Parity:
    """The parity basis of a symmetric surface: an orthogonal Q (n x n, real) whose columns
    are even or odd under each axis flip, grouped in 8 sectors s (bit a of s: odd in axis a).

    The 8 flips (sign changes of any axes) split the points into orbits of 8, 4, 2 or 1
    points. The basis vector of orbit o and sector s is sum_f chi_s(f) e_{f(p_o)}, normalised,
    for the characters chi_s(f) = (-1)^popcount(s & f) that are 1 on the orbit's stabilizer:
    ``Q^T x`` is one gather of 8 rows per orbit, one 8 x 8 Hadamard product and one gather
    into sector order. Every P_e (e in GROUP) becomes a signed permutation Q^T P_e Q: column j
    -> sign[e, j] * column target[e, j], sector s -> sector_map[e, s].

    Attributes: ``q`` (n, n), ``bounds`` (9,) sector s is columns bounds[s]:bounds[s + 1],
    ``sector_map`` (48, 8), ``target``, ``sign`` (48, n).
    """

    def __init__(self, surf, perms):
        n = len(surf)
        images = perms[OCTANT_FLIPS]                        # (8, n): point f(p)
        orbits = np.unique(images.min(axis=0))              # smallest point of each orbit
        self._idx = np.ascontiguousarray(images[:, orbits].T).reshape(-1)   # (orbits * 8,)
        hadamard = np.array([[(-1) ** bin(s & f).count("1") for f in range(8)]
                             for s in range(8)], dtype=np.float64)
        fixed = images[:, orbits].T == orbits[:, None]      # (orbits, 8): f in stabilizer
        valid = ((hadamard[None, :, :] == 1) | ~fixed[:, None, :]).all(axis=2)  # (orbits, 8)
        o, sec = np.nonzero(valid)
        order = np.lexsort((o, sec))                        # sector-major, then orbit
        self._sel = (o * 8 + sec)[order]
        self._scale = 1.0 / np.sqrt(8.0 * fixed.sum(axis=1)[o[order]])
        self._h8 = hadamard
        self._n_orbits = len(orbits)
        if len(self._sel) != n:  # pragma: no cover - the orbit-stabilizer count
            raise AssertionError("parity basis: wrong dimension")
        self.bounds = np.searchsorted(sec[order], np.arange(9))
        self.q = np.ascontiguousarray(self.to_parity(np.eye(n)).T)
        sector = np.repeat(np.arange(8), np.diff(self.bounds))
        q = self.q
        support = np.argmax(np.abs(q), axis=0)    # a point where column j is nonzero
        rows, cols = np.nonzero(np.abs(q) > 0.25)  # entries are 0 or +-1/sqrt(orbit size <= 8)
        col_at = np.full((n, 8), -1, np.int64)    # the column of sector s nonzero at point i
        col_at[rows, sector[cols]] = cols
        self.sector_map = np.empty((len(GROUP), 8), np.int64)
        self.target = np.empty((len(GROUP), n), np.int64)
        self.sign = np.empty((len(GROUP), n))
        cols = np.arange(n)
        for e in range(len(GROUP)):
            free = set(range(8))
            for s in range(8):
                if self.bounds[s] == self.bounds[s + 1]:
                    continue
                v = q[perms[e], self.bounds[s]]    # P_e applied to the sector's first column
                image = sum(1 << a for a, f in enumerate(_FLIPS) if v[perms[f]] @ v < 0)
                self.sector_map[e, s] = image
                free.discard(image)
            for s in range(8):                     # empty sectors: any bijection
                if self.bounds[s] == self.bounds[s + 1]:
                    self.sector_map[e, s] = free.pop()
            inv = np.empty(n, np.int64)
            inv[perms[e]] = cols
            b = inv[support]                       # (P_e q_j)[b] = q_j[support]
            tgt = col_at[b, self.sector_map[e, sector]]
            if (tgt < 0).any():  # pragma: no cover - the surface checks make this impossible
                raise AssertionError("signed permutation not found")
            self.target[e] = tgt
            self.sign[e] = np.sign(q[support, cols]) * np.sign(q[b, tgt])

    def sectors(self):
        return [slice(self.bounds[s], self.bounds[s + 1]) for s in range(8)]

    def _h(self, x):
        return self._h8 if x.dtype.kind == "f" else self._h8.astype(x.dtype)

    def to_parity(self, x):
        """Q^T x (along the first axis of a 2-D ``x``; a new array)."""
        g = np.take(x, self._idx, axis=0).reshape(self._n_orbits, 8, -1)
        y = np.matmul(self._h(x), g).reshape(self._n_orbits * 8, -1)[self._sel]
        y *= self._scale[:, None]
        return y

    def transform(self, k):
        """Q^T k Q for a square block ``k`` (real Q: no conjugation)."""
        y = self.to_parity(k)
        z = np.take(y, self._idx, axis=1).reshape(-1, 8) @ self._h(y).T
        z = np.take(z.reshape(len(y), -1), self._sel, axis=1)
        z *= self._scale
        return z

    def apply(self, e, x, s):
        """P~_e x for ``x`` with rows in sector ``s`` (n_s, m): its rows in sector
        sector_map[e, s] (n_s, m), P~_e = Q^T P_e Q."""
        j = np.arange(self.bounds[s], self.bounds[s + 1])
        t = self.sector_map[e, s]
        y = np.empty_like(x)
        y[self.target[e, j] - self.bounds[t]] = x * self.sign[e, j, None]
        return y


def kernel_blocks(surf, r_check, r_equiv, vectors, family=LAPLACE, h=1.0):
    """K_t[i, j] = G(h |r_check s_i - 2 t - r_equiv s_j|) for each t of ``vectors``:
    (len(vectors), n, n), float64 or complex128 (``family.scalar``)."""
    surf = np.asarray(surf, dtype=np.float64)
    vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
    n = len(surf)
    cplx = family.scalar == "complex"
    out = np.empty((len(vectors), n, n), np.complex128 if cplx else np.float64)
    d2 = np.empty((n, n))
    tmp = np.empty((n, n))
    for i, t in enumerate(vectors):
        for ax in range(3):  # componentwise differences: no cancellation in |D|^2 - 4 t.D + ...
            np.subtract.outer(r_check * surf[:, ax], 2.0 * t[ax] + r_equiv * surf[:, ax],
                              out=tmp)
            if ax == 0:
                np.multiply(tmp, tmp, out=d2)
            else:
                tmp *= tmp
                d2 += tmp
        np.sqrt(d2, out=d2)
        if h != 1.0:
            d2 *= h
        if cplx:
            out[i] = family.g_of_r(d2)
        else:
            family.g_of_r(d2, out=out[i])
    return out


def _lattice(surf):
    """(index, step, m) when ``surf`` lies on a uniform m x m x m grid of spacing ``step``
    (the KIFMM surfaces do), index[i, j] the flat position of s_i - s_j in the
    (2m - 1)^3 lattice of grid differences; None otherwise."""
    lo, hi = surf.min(), surf.max()
    m = len(np.unique(np.round(surf - lo, 9)))
    if m < 2:
        return None
    step = (hi - lo) / (m - 1)
    grid = np.round((surf - lo) / step)
    if not np.allclose(lo + grid * step, surf, rtol=0.0, atol=1e-12):
        return None
    g = grid.astype(np.int64)
    diff = (g[:, None, :] - g[None, :, :]) + (m - 1)
    index = (diff[..., 0] * (2 * m - 1) + diff[..., 1]) * (2 * m - 1) + diff[..., 2]
    return index.astype(np.intp), float(step), m


def _lattice_blocks(lattice, radius, vectors, family, h):
    """K_t for check and equivalent radius both ``radius``: G(h |radius (s_i - s_j) - 2 t|)
    evaluated once per grid difference ((2m - 1)^3 values instead of n^2) and gathered."""
    index, step, m = lattice
    axis = radius * step * np.arange(-(m - 1), m)
    out = []
    for t in np.asarray(vectors, dtype=np.float64).reshape(-1, 3):
        d = [axis - 2.0 * t[a] for a in range(3)]
        r = np.sqrt(d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2
                    + d[2][None, None, :] ** 2).reshape(-1)
        if h != 1.0:
            r *= h
        out.append(np.take(family.g_of_r(r), index))
    return out


# --------------------------------------------------------------------------------- threads

def _each(workers, n_items, func):
    """func(i) for i in range(n_items) on ``workers``, one item per range (handed out
    dynamically: uneven items balance)."""
    def body(a, b):
        for i in range(a, b):
            func(i)
    workers.run(body, np.arange(n_items + 1))


# --------------------------------------------------------------------------------- the build

def build(surf, r_down_check, r_up_equiv, dc2e_b, tol, rank=None, stage=None, threads=1,
          family=LAPLACE, h=1.0, *, workers=None):
    """Compressed M2L operators for all 316 transfer vectors of a box of half-width ``h``.

    Parameters
    ----------
    surf : ndarray (n_surf, 3) float64, unit surface (invariant under the cube's symmetries).
    r_down_check, r_up_equiv : float, radii of the target's check and the source's equivalent
        surface (in half-widths).
    dc2e_b : ndarray (r_down, n_surf), the U^H factor of DC2E of the same box size.
    tol : float, relative singular value cutoff; ``rank`` (optional) forces the rank instead.
    stage : callable, optional, called with a name as each stage starts.
    threads : int, threads of our own for the build, or ``workers``: an
        :class:`aotfmm._threads.Workers` to run on (then ``threads`` is ignored). numpy's BLAS
        is limited to one thread during the build; the result does not depend on the thread
        count (fixed work partition).
    family : anything with ``g_of_r(r, out=None)`` and ``scalar`` ("real" or "complex"),
        e.g. :data:`aotfmm.families.LAPLACE`. A complex G is evaluated without ``out=``.
    h : float, the box half-width: the kernel is evaluated at true distances,
        K_t[i, j] = G(h |r_down_check s_i - 2 t - r_up_equiv s_j|). For a scale-invariant
        family h = 1 gives the reference-box operators that serve every level;
        :mod:`aotfmm.operators` builds a level of a family with a parameter as the reference
        box (h = 1) of ``family.scaled(h)``, h times this one (G_k(h r) = G_{k h}(r) / h).

    Returns
    -------
    dict, as :func:`aotfmm._m2l_svd.build`: ``m2l_v``, ``m2l_u`` (n_surf, k), ``m2l_decompress``
    (r_down, k) = dc2e_b @ m2l_u, ``m2l_a``, ``m2l_b`` (R, k), ``m2l_offsets`` (317,) int64,
    ``m2l_sigma`` (n_surf,) float64 singular values of the stack [K_1; ...; K_316], decreasing.
    Arrays are float64, or complex128 for a complex family (``m2l_sigma`` and offsets
    excepted). For every transfer vector t (row of :data:`aotfmm._geometry.TRANSFER_VECTORS`),
    K_t ~ m2l_u @ a_t.T @ b_t @ m2l_v.T with a_t, b_t = rows offsets[t]:offsets[t + 1]
    (plain transposes also for complex: m2l_v holds the conjugate right basis). The k columns
    of m2l_u and m2l_v are singular vectors of the stacks grouped by parity sector (each group
    by decreasing singular value), not sorted by singular value overall. With unequal radii
    each sector keeps the larger of its two stacks' counts, so k can exceed
    :func:`aotfmm._m2l_svd.build`'s (the larger of the two global counts) by a few.
    """
    stage = stage or (lambda name: None)
    own = workers is None
    workers = _threads.Workers(threads) if own else workers
    try:
        with _blas.limit_one():
            return _build(np.asarray(surf, dtype=np.float64), float(r_down_check),
                          float(r_up_equiv), dc2e_b, tol, rank, stage, workers, family, float(h))
    finally:
        if own:
            workers.close()


#: Randomized compression of the cores (:func:`_truncated`): sketch columns added per round,
#: and the residual allowed, as a share of the discarded tail (Frobenius).
_SKETCH_BLOCK = 32
_RESIDUAL_SHARE = 0.3
_SEED = 20240611


def _truncated(c, cut):
    """(A, B), C ~ A^T B: the SVD of the square ``c`` truncated at singular values <= ``cut``
    (rank >= 1), A = (P S)^T, B = Q^H.

    The cores have rank ~k/10 (at most ~k/3), so instead of a full SVD, an adaptive
    randomized range finder (fixed seed: deterministic) grows an orthonormal Y, k/4 columns
    first, then 32 or more at a time, Y <- [Y, qr(E Omega)] with E = c - Y Y^H c the residual,
    kept up to date. The new
    block is orthogonalised against Y once more after its QR: E Omega is orthogonal to Y only
    up to eps ||c||, and the QR amplifies that in its columns of small norm when the spectrum
    falls steeply past the cut (without it, errors of 5-30x the truncation's were seen). Once
    ||E||_F (then checked once more from scratch) is at most 0.3 x the Frobenius norm of the
    discarded singular values of Y^H c, the small SVD of Y^H c (through the l x l triangular
    factor of a QR of its transpose) is truncated. The two errors are orthogonal, so the
    compression error is at most sqrt(1 + 0.3^2) = 1.044 x that of the exact truncation.
    Ranks: a singular value counts if it is above ``cut`` in Y^H c (which differs from c's by
    at most ||E||). Falls back to the full SVD when Y would pass k / 2 columns, and when
    ``cut`` is 0 (a forced rank)."""
    k = c.shape[1]
    if cut > 0:
        rng = np.random.default_rng(_SEED)
        resid = c.copy()
        ys, bs = [], []
        ell, block = 0, max(_SKETCH_BLOCK, k // 4)   # ranks are ~k/10 to k/3
        while 2 * (ell + block) <= k:
            q = np.linalg.qr(resid @ rng.standard_normal((k, block)))[0]
            if ys:
                # E Omega is orthogonal to Y only up to eps ||c||, and its QR amplifies that in
                # the columns of small norm: orthogonalise the normalised block again
                y = np.concatenate(ys, axis=1)
                q = np.linalg.qr(q - y @ (y.conj().T @ q))[0]
            qh = q.conj().T
            resid -= q @ (qh @ resid)
            ys.append(q)
            bs.append(qh @ c)
            ell += block
            # Y^H c = R^H Q^H (Householder QR of its transpose): its singular values are R's
            qb, rb = np.linalg.qr(np.concatenate(bs).conj().T)
            s_ = np.linalg.svd(rb, compute_uv=False)
            r = max(1, int(np.count_nonzero(s_ > cut)))
            tail = _RESIDUAL_SHARE * np.linalg.norm(s_[r:])
            if r < ell and np.linalg.norm(resid) <= tail:
                y = np.concatenate(ys, axis=1)          # the residual without updates, once
                if np.linalg.norm(c - y @ np.concatenate(bs)) <= tail:
                    p_, s_, wt = np.linalg.svd(rb.conj().T)    # Y^H c = P S (Q W)^H
                    return ((y @ p_[:, :r]) * s_[:r]).T, (qb @ wt[:r].conj().T).conj().T
            block = max(_SKETCH_BLOCK, r + _SKETCH_BLOCK - ell)
    p_, s_, qt = np.linalg.svd(c)
    r = max(1, int(np.count_nonzero(s_ > cut)))
    return (p_[:, :r] * s_[:r]).T, qt[:r]


def _symmetrized(r, par, workers):
    """Per-sector R'_s with R'^H R' = sum over all 48 g of P~_g R^H R P~_g^T, for the block
    diagonal R^H R of the sector factors ``r``: the 8 flips give 8 times the block diagonal,
    the S3 subgroups one small QR each (a sector's image comes from another sector)."""
    r = [np.sqrt(8.0) * x for x in r]
    for stage in _S3_STAGES:
        new = [None] * 8

        def reduce(s):
            parts = [r[s]]
            for g in stage:
                src = int(np.flatnonzero(par.sector_map[g] == s)[0])
                parts.append(par.apply(g, r[src].T, src).T)   # R_src T^T, T = P~_g block
            new[s] = np.linalg.qr(np.concatenate(parts), mode="r")

        _each(workers, 8, reduce)
        r = new
    return r


@functools.lru_cache(maxsize=4)
def _symmetry(surf_bytes, n):
    """(surface permutations, parity basis, grid lattice or None) of a surface (~20 ms at
    p = 8; cached: a run builds one set per level on the same surface)."""
    surf = np.frombuffer(surf_bytes, dtype=np.float64).reshape(n, 3)
    perms = surface_permutations(surf)
    par = Parity(surf, perms)
    lattice = _lattice(surf)
    for a in (perms, par.q, par.bounds, par.sector_map, par.target, par.sign) + \
            (() if lattice is None else (lattice[0],)):
        a.flags.writeable = False                  # shared by every later build
    return perms, par, lattice


def _build(surf, r_dc, r_ue, dc2e_b, tol, rank, stage, workers, family, h):
    n = len(surf)
    n_r = len(REPS)
    same = r_dc == r_ue              # K_{-t} = K_t^T: one stack gives both bases
    perms, par, lattice = _symmetry(surf.tobytes(), len(surf))
    sec = par.sectors()

    stage(f"M2L basis (QR of {n_r} kernel blocks and the cube's symmetries)")
    kt = [None] * n_r                # Q^T K_r Q
    sides = (False,) if same else (False, True)   # False: right stack [K_t], True: [K_t^H]
    rs = {}                          # R of each block's sector columns, weighted

    def block(r):  # K~_r, and the QR of each sector's n x n/8 columns while in cache
        if same and lattice is not None:   # G once per grid difference: exp is costly
            k_r = _lattice_blocks(lattice, r_dc, REPS[r:r + 1], family, h)[0]
        else:
            k_r = kernel_blocks(surf, r_dc, r_ue, REPS[r:r + 1], family, h)[0]
        kt[r] = par.transform(k_r)
        w = 1.0 / np.sqrt(STABILIZER[r])
        for left in sides:
            for s in range(8):
                x = kt[r][sec[s]].conj().T if left else kt[r][:, sec[s]]
                rs[left, s, r] = w * np.linalg.qr(x, mode="r")

    _each(workers, n_r, block)

    def sector_r(i):  # the 16 blocks' factors of one sector stacked: R of the sector's stack
        left, s = sides[i // 8], i % 8
        rs[left, s] = np.linalg.qr(np.concatenate([rs[left, s, r] for r in range(n_r)]),
                                   mode="r")

    _each(workers, 8 * len(sides), sector_r)
    svd = {}
    for left in sides:
        r = _symmetrized([rs[left, s] for s in range(8)], par, workers)

        def sector_svd(s):
            svd[left, s] = np.linalg.svd(r[s])[1:]     # sigma_s, V_s^H of the sector stack

        _each(workers, 8, sector_svd)
    sig = {left: np.concatenate([svd[left, s][0] for s in range(8)]) for left in sides}
    sector = np.repeat(np.arange(8), np.diff(par.bounds))
    if rank is None:
        ks = np.zeros(8, np.int64)
        for left in sides:
            keep = sig[left] > tol * sig[left].max()
            if not keep.any():
                keep[np.argmax(sig[left])] = True
            ks = np.maximum(ks, np.bincount(sector[keep], minlength=8))
        cut = tol * max(sig[left].max() for left in sides)
    else:
        top = np.argsort(-sig[False], kind="stable")[:min(int(rank), n)]
        ks = np.bincount(sector[top], minlength=8)
        cut = 0.0
    kb = np.concatenate(([0], np.cumsum(ks)))
    k = int(kb[-1])
    kc = [slice(kb[s], kb[s + 1]) for s in range(8)]
    # parity-basis bases, one block per sector: V~_s (conjugate right vectors), U~_s
    vt = [np.ascontiguousarray(svd[False, s][1][:ks[s]].T) for s in range(8)]
    ut = vt if same else [np.ascontiguousarray(svd[True, s][1][:ks[s]].conj().T)
                          for s in range(8)]
    dtype = np.result_type(kt[0], vt[0])

    stage(f"M2L per-vector compression ({n_r} cores)")
    cores = [None] * n_r

    def core(r):  # C_r = U~^H K~_r conj(V~), block by block, then its truncated SVD
        x = np.empty((k, n), dtype)
        for s in range(8):
            np.matmul(ut[s].conj().T, kt[r][sec[s]], out=x[kc[s]])
        c = np.empty((k, k), dtype)
        for s in range(8):
            np.matmul(x[:, sec[s]], vt[s].conj(), out=c[:, kc[s]])
        cores[r] = _truncated(c, cut)

    _each(workers, n_r, lambda i: core(n_r - 1 - i))   # nearest (highest rank) first

    stage(f"M2L per-vector compression (rotations of {len(REP_OF)} factors)")
    ranks = np.array([len(cores[r][0]) for r in REP_OF])
    offsets = np.concatenate(([0], np.cumsum(ranks))).astype(np.int64)
    a = np.empty((offsets[-1], k), dtype)
    b = np.empty((offsets[-1], k), dtype)
    used = np.unique(ELEMENT_OF)
    lt, nn = {}, {}   # per element e and sector s: (L_e block (d, s))^T and N_e block (s, d)

    def rotations(i):  # L_e = U^H P_e U and N_e = (P_e V)^T conj(V), sector blocks s -> d
        e = used[i]
        lt[e], nn[e] = [None] * 8, [None] * 8
        for s in range(8):
            d = par.sector_map[e, s]
            lt[e][s] = par.apply(e, ut[s], s).T @ ut[d].conj()
            nn[e][s] = lt[e][s] if same else par.apply(e, vt[s], s).T @ vt[d].conj()

    _each(workers, len(used), rotations)
    chunks = np.linspace(0, len(REP_OF), 16 + 1).round().astype(int)

    def rotate(j):  # A_t = A_r L_e^T, B_t = B_r N_e for t = e t_r, sector block by block
        for t in range(chunks[j], chunks[j + 1]):
            (ar, br), e = cores[REP_OF[t]], ELEMENT_OF[t]
            at, bt = a[offsets[t]:offsets[t + 1]], b[offsets[t]:offsets[t + 1]]
            for s in range(8):
                d = kc[par.sector_map[e, s]]
                if ks[s] == 0:     # the image sector's columns get nothing
                    at[:, d] = 0
                    bt[:, d] = 0
                    continue
                np.matmul(ar[:, kc[s]], lt[e][s], out=at[:, d])
                np.matmul(br[:, kc[s]], nn[e][s], out=bt[:, d])

    _each(workers, len(chunks) - 1, rotate)
    q = par.q
    v = np.empty((n, k), dtype)
    u = v if same else np.empty((n, k), dtype)
    for s in range(8):
        np.matmul(q[:, sec[s]], vt[s], out=v[:, kc[s]])
        if not same:
            np.matmul(q[:, sec[s]], ut[s], out=u[:, kc[s]])
    return {"m2l_v": v, "m2l_u": u, "m2l_a": a, "m2l_b": b, "m2l_offsets": offsets,
            "m2l_decompress": dc2e_b @ u, "m2l_sigma": np.sort(sig[False])[::-1].copy()}
