"""M2L by SVD compression and batched dense products (the "BLAS" M2L of bempp/kifmm).

Precomputation (:func:`build`), for the reference box of half-width 1 at the origin and the 316
transfer vectors t of :data:`aotfmm._geometry.TRANSFER_VECTORS` (source centre at ``2 t``):

    K_t = K(r_down_check * S, 2 t + r_up_equiv * S)                      (n_surf x n_surf)
    [K_1 ... K_316]    = U_fat  Sigma W^T    -> U = first k columns of U_fat (check side)
    [K_1; ...; K_316]  = W' Sigma' V_thin^T  -> V = first k columns of V_thin (equivalent side)
    C_t = U^T K_t V                                                       (k x k)
    C_t = P_t S_t Q_t^T -> keep the r_t singular values above tol * sigma_max (per-t rank):
    C_t ~ A_t^T B_t with A_t = (P_t S_t)^T (r_t x k), B_t = Q_t^T (r_t x k)

The rank ``k`` is the smallest one whose discarded singular values of *both* stacks are below
``tol * sigma_max``. The stacks are never formed: each is reduced by a streamed QR over blocks
of transfer vectors, and the SVD is taken of the n_surf x n_surf triangular factor. When the
down-check radius equals the up-equivalent radius, ``K_{-t} = K_t^T``, so both stacks have the
same singular vectors and U = V (one QR instead of two). The per-t recompression matters: the
shared rank k is set by the nearest transfer vectors, while most C_t have a far smaller rank
(measured mean r_t ~ k / 10), cutting M2L flops and memory about 5x.

Application (:func:`apply`, per level), with M the source boxes' upward equivalent densities:

    mc = M @ V                              compress every source once          (GEMM)
    z[B] += A_t^T B_t mc[S] for every (B, S, t)  two thin GEMMs per t over all its pairs
    dcheck[B] += (dc2e_b U) z[B]           decompress once per target box      (GEMM)

``dc2e_b U`` is precomputed (``m2l_decompress``); ``dcheck`` are down-check coefficients
(see :mod:`aotfmm.operators`), turned into local densities by ``dc2e_a`` once per box. M2L in terms of equivalent densities is scale invariant
for a homogeneous kernel (:attr:`aotfmm.families.KernelFamily.scale_invariant`), so one set
serves all levels. G comes from the kernel family (:meth:`~aotfmm.families.KernelFamily.g_of_r`).
"""
import numpy as np

from . import _geometry, _threads
from .families import LAPLACE

#: Transfer vectors per block in the streamed QR (bounds the work memory at ~32 * n_surf^2).
_QR_BLOCK = 32


def transfer_matrices(surf, r_check, r_equiv, vectors, family=LAPLACE):
    """K_t for the given transfer vectors: (len(vectors), n_surf, n_surf) float64.

    K_t[i, j] = G(|r_check s_i - 2 t - r_equiv s_j|) of ``family`` (a radial kernel); with
    D_ij = r_check s_i - r_equiv s_j, |D_ij - 2t|^2 = |D_ij|^2 - 4 t.D_ij + 4 |t|^2, so each t
    costs a few n^2 passes.
    """
    d = r_check * surf[:, None, :] - r_equiv * surf[None, :, :]
    dx, dy, dz = (np.ascontiguousarray(d[..., i]) for i in range(3))
    d2 = dx * dx + dy * dy + dz * dz
    out = np.empty((len(vectors), len(surf), len(surf)),
                   dtype=np.complex128 if family.complex else np.float64)
    for i, t in enumerate(np.asarray(vectors, dtype=np.float64)):
        if family.complex:  # distances in real arithmetic, then the complex kernel
            o = dx * (-4.0 * t[0]) + d2 - 4.0 * t[1] * dy - 4.0 * t[2] * dz + 4.0 * (t @ t)
            out[i] = family.g_of_r(np.sqrt(o))
            continue
        o = out[i]
        np.multiply(dx, -4.0 * t[0], out=o)
        o += d2
        o -= 4.0 * t[1] * dy
        o -= 4.0 * t[2] * dz
        o += 4.0 * (t @ t)
        np.sqrt(o, out=o)
        family.g_of_r(o, out=o)  # |D - 2t| >= 2 |t|_inf - r_check - r_equiv > 0 for V vectors
    return out


def _stacked_svd(surf, r_check, r_equiv, transpose, workers=_threads.INLINE, family=LAPLACE):
    """Singular values and right singular vectors of the tall stack [K_t; ...] (or [K_t^T; ...]).

    Streams blocks of K_t through a QR so that only an n x n triangular factor is kept; with
    several workers each stream its own share of the transfer vectors and the triangular
    factors are stacked and reduced by one more QR (the same R up to signs). The grouping is
    fixed (:data:`_QR_GROUPS`), so the result does not depend on ``workers``.
    """
    n = len(surf)
    vecs = _geometry.TRANSFER_VECTORS
    groups = _groups(len(vecs))
    rs = [None] * (len(groups) - 1)

    def stream(g0, g1):
        for g in range(g0, g1):
            r = np.zeros((0, n))
            for b0 in range(groups[g], groups[g + 1], _QR_BLOCK):
                b1 = min(b0 + _QR_BLOCK, groups[g + 1])
                k = transfer_matrices(surf, r_check, r_equiv, vecs[b0:b1], family)
                if transpose:  # K_t^H: its stack's right singular vectors are the left ones
                    k = k.transpose(0, 2, 1).conj()
                r = np.linalg.qr(np.concatenate([r, k.reshape(-1, n)]), mode="r")
            rs[g] = r

    workers.run(stream, np.arange(len(rs) + 1))
    r = rs[0] if len(rs) == 1 else np.linalg.qr(np.concatenate(rs), mode="r")
    _, sigma, vt = np.linalg.svd(r)
    return sigma, vt.conj().T


#: The QR stream is cut into this many groups whatever the thread count, so that a build's
#: rounding (and a float32 cast of its results) does not depend on how many workers ran it.
_QR_GROUPS = 4


def _groups(n_items):
    """Bounds of _QR_GROUPS contiguous groups of whole _QR_BLOCK blocks (fewer if there are
    fewer blocks); the workers only decide how many run at once."""
    n_blocks = -(-n_items // _QR_BLOCK)
    n_groups = max(1, min(_QR_GROUPS, n_blocks))
    return np.minimum(np.linspace(0, n_blocks, n_groups + 1).round().astype(int) * _QR_BLOCK,
                      n_items)


def rank_for(sigma, tol):
    """Smallest k with sigma[k] <= tol * sigma[0] (k >= 1)."""
    return max(1, int(np.count_nonzero(sigma > tol * sigma[0])))


def build(surf, r_down_check, r_up_equiv, dc2e_b, tol, rank=None, stage=None,
          workers=_threads.INLINE, family=LAPLACE):
    """Compressed M2L operators for all 316 transfer vectors, float64.

    Parameters
    ----------
    surf : ndarray (n_surf, 3) float64, unit surface.
    r_down_check, r_up_equiv : float, radii of the target's check and the source's equivalent
        surface (in half-widths).
    dc2e_b : ndarray (r_down, n_surf) float64, the U^T factor of DC2E (reference box).
    tol : float, relative singular value cutoff; ``rank`` (optional) forces the rank instead.

    Returns
    -------
    dict with ``m2l_v`` (n_surf, k), ``m2l_u`` (n_surf, k), ``m2l_decompress`` (r_down, k),
    ``m2l_a``, ``m2l_b`` (R, k) with R = sum_t r_t, ``m2l_offsets`` (317,) int64 (rows of t are
    ``offsets[t]:offsets[t + 1]``), ``m2l_sigma`` (n_surf,) singular values of the stack.
    ``stage(name)`` (optional) is called as each stage starts; ``workers``: our own threads
    (:class:`aotfmm._threads.Workers`; numpy's BLAS should be limited to one meanwhile, see
    :func:`aotfmm._blas.limit_one`).
    ``family``: the kernel (:class:`aotfmm.families.KernelFamily`).
    """
    stage = stage or (lambda name: None)
    stage("M2L basis (QR of 316 kernel blocks)")
    sig_v, v_all = _stacked_svd(surf, r_down_check, r_up_equiv, transpose=False,
                                workers=workers, family=family)
    if r_down_check == r_up_equiv:
        # K_{-t} = K_t^T: the stacks [K_t^H] and [K_t] are complex conjugates of each other
        # (the same one for a real kernel), so U = conj(V)
        sig_u, u_all = sig_v, v_all.conj()
    else:
        sig_u, u_all = _stacked_svd(surf, r_down_check, r_up_equiv, transpose=True,
                                    workers=workers, family=family)
    k = rank if rank is not None else max(rank_for(sig_v, tol), rank_for(sig_u, tol))
    k = min(k, len(surf))
    u, v = np.ascontiguousarray(u_all[:, :k]), np.ascontiguousarray(v_all[:, :k])
    done = [0]
    stage(f"M2L per-vector compression 0/{_geometry.N_TRANSFER}")
    n_t = _geometry.N_TRANSFER
    cut = (rank is None) * tol * max(sig_v[0], sig_u[0])
    factors = [None] * n_t   # (A_t, B_t) per transfer vector, truncated as soon as computed
    vecs = _geometry.TRANSFER_VECTORS

    def compress(b0, b1):  # C_t = U^T K_t V and its SVD, for the vectors of blocks b0..b1
        for t0 in range(b0 * _QR_BLOCK, min(b1 * _QR_BLOCK, n_t), _QR_BLOCK):
            t1 = min(t0 + _QR_BLOCK, n_t)
            kt = transfer_matrices(surf, r_down_check, r_up_equiv, vecs[t0:t1], family)
            p_, s_, qt = np.linalg.svd(u.conj().T @ kt @ v)  # C_t = U^H K_t V
            for i in range(t1 - t0):
                r = max(1, int(np.count_nonzero(s_[i] > cut)))
                factors[t0 + i] = ((p_[i, :, :r] * s_[i, :r]).T, qt[i, :r])
            done[0] += t1 - t0  # (a display only: a lost update between workers is harmless)
            stage(f"M2L per-vector compression {done[0]}/{n_t}")

    n_blocks = -(-n_t // _QR_BLOCK)
    workers.run(compress, np.arange(n_blocks + 1))
    ranks = np.array([len(f[0]) for f in factors])
    offsets = np.concatenate(([0], np.cumsum(ranks))).astype(np.int64)
    a = np.concatenate([f[0] for f in factors])
    b = np.concatenate([f[1] for f in factors])
    # applied to densities stored as rows, e @ conj(V) = (V^H e^T)^T (conj: no-op when real)
    return {"m2l_v": np.ascontiguousarray(v.conj()), "m2l_u": u, "m2l_a": np.ascontiguousarray(a),
            "m2l_b": np.ascontiguousarray(b), "m2l_offsets": offsets, "m2l_decompress": dc2e_b @ u,
            "m2l_sigma": sig_v}
