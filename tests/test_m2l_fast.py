"""aotfmm._m2l_fast (the M2L compression built from the cube's symmetries) against references
written here with numpy: the 316 uncompressed K_t from the surface points and the kernel
formula, the singular values of their full stack, plain-numpy checks of the symmetry tables.

Bounds: the shared bases are cut at tol * sigma_max (sigma_max: the stack's largest singular
value) and each core at the same level, so ||K_t - U C_t V^T||_2 <= ~3 tol sigma_max; the
Frobenius norm checked here measured 0.9-2.2 tol sigma_max (p = 4..8, Laplace, Yukawa,
Helmholtz), the same as the streamed-QR build's.
"""
import itertools

import numpy as np
import pytest

from aotfmm import _m2l_fast
from aotfmm.surfaces import surface

#: Transfer vectors, rebuilt here: integer vectors in [-3, 3]^3 outside [-1, 1]^3, in
#: lexicographic order (the order of aotfmm._geometry.TRANSFER_VECTORS, checked below).
TV = np.array([t for t in itertools.product(range(-3, 4), repeat=3) if max(map(abs, t)) > 1])
TOL = {4: 1e-5, 5: 1e-6, 6: 1e-7, 8: 1e-8}
R_E = R_C = 1.05


class Radial:
    """A family-like radial kernel: the attributes the builder reads."""

    def __init__(self, scalar, g):
        self.scalar, self.g = scalar, g

    def g_of_r(self, r, out=None):
        v = self.g(r)
        if out is None:
            return v
        out[...] = v
        return out


LAPLACE = Radial("real", lambda r: 1.0 / (4.0 * np.pi * r))


def yukawa(lam):
    return Radial("real", lambda r: np.exp(-lam * r) / (4.0 * np.pi * r))


def helmholtz(kappa):
    return Radial("complex", lambda r: np.exp(1j * kappa * r) / (4.0 * np.pi * r))


@pytest.fixture(autouse=True)
def _blas_one_thread():
    """numpy's BLAS on one thread, as during a build (the references here are many small
    products; BLAS threads only oversubscribe the CPUs)."""
    from aotfmm import _blas
    with _blas.limit_one():
        yield


def ref_blocks(s, family, h=1.0, r_check=R_C, r_equiv=R_E, t=slice(None)):
    """K_t[i, j] = G(h |r_check s_i - 2 t - r_equiv s_j|) for TV[t], with numpy."""
    tv = TV[t]
    d2 = np.zeros((len(tv), len(s), len(s)))
    for ax in range(3):
        d = (r_check * s[None, :, None, ax] - 2.0 * tv[:, None, None, ax]
             - r_equiv * s[None, None, :, ax])
        d2 += d * d
    return family.g(h * np.sqrt(d2))


def build(p, family=LAPLACE, h=1.0, r_check=R_C, r_equiv=R_E, threads=1, rank=None, tol=None):
    s = surface(p)
    dc2e_b = np.random.default_rng(p).standard_normal((len(s) - 2, len(s)))
    tol = TOL[p] if tol is None else tol
    out = _m2l_fast.build(s, r_check, r_equiv, dc2e_b, tol, rank=rank, threads=threads,
                          family=family, h=h)
    return s, dc2e_b, tol, out


def core(out, t):
    o = out["m2l_offsets"]
    return out["m2l_a"][o[t]:o[t + 1]].T @ out["m2l_b"][o[t]:o[t + 1]]


def check_against_uncompressed(s, out, tol, family, h=1.0, r_check=R_C, r_equiv=R_E):
    """Per-t error bound; the stack's singular values and the rank k from numpy's SVD of the
    full stack of K_t (n <= 160; above, sigma_max from the top eigenvalue of the stack's Gram
    matrix, which is accurate for the largest one). Returns max_t ||E_t||_F / (tol sigma_max).
    """
    n = len(s)
    u, v = out["m2l_u"], out["m2l_v"]
    k = u.shape[1]
    sigma = out["m2l_sigma"]
    assert sigma.shape == (n,) and sigma.dtype == np.float64
    errs, gram, blocks = [], 0.0, []
    for t0 in range(0, len(TV), 32):
        kt = ref_blocks(s, family, h, r_check, r_equiv, slice(t0, t0 + 32))
        errs += [np.linalg.norm(u @ core(out, t0 + i) @ v.T - x) for i, x in enumerate(kt)]
        if n <= 160:
            blocks.append(kt.reshape(-1, n))
        else:
            x = kt.reshape(-1, n)
            gram = gram + x.conj().T @ x
    if n <= 160:
        stack_sv = np.linalg.svd(np.concatenate(blocks), compute_uv=False)
        assert np.allclose(sigma, stack_sv, rtol=0, atol=1e-12 * stack_sv[0])
        if r_check == r_equiv:
            assert k == np.count_nonzero(stack_sv > tol * stack_sv[0])
        sigma_max = stack_sv[0]
    else:
        sigma_max = np.sqrt(np.linalg.eigvalsh(gram)[-1])
        assert sigma[0] == pytest.approx(sigma_max, rel=1e-12)
    assert max(errs) <= 3 * tol * sigma_max
    return max(errs) / (tol * sigma_max)


def check_contract(s, dc2e_b, out, complex_=False):
    n = len(s)
    u, v, a, b, off = (out[k] for k in ("m2l_u", "m2l_v", "m2l_a", "m2l_b", "m2l_offsets"))
    k = u.shape[1]
    dt = np.complex128 if complex_ else np.float64
    assert u.shape == v.shape == (n, k) and 1 <= k <= n
    assert all(x.dtype == dt for x in (u, v, a, b, out["m2l_decompress"]))
    assert off.dtype == np.int64 and off.shape == (len(TV) + 1,) and off[0] == 0
    steps = np.diff(off)
    assert (steps >= 1).all() and (steps <= k).all() and off[-1] == len(a) == len(b)
    assert a.shape[1] == b.shape[1] == k
    assert np.allclose(u.conj().T @ u, np.eye(k), atol=1e-12)
    assert np.allclose(v.conj().T @ v, np.eye(k), atol=1e-12)
    assert np.allclose(out["m2l_decompress"], dc2e_b @ u, rtol=0, atol=1e-13 * np.abs(dc2e_b).max())
    assert (np.diff(out["m2l_sigma"]) <= 0).all()


# ------------------------------------------------------------------------ symmetry tables

def test_tables():
    from aotfmm import _geometry
    assert np.array_equal(TV, _geometry.TRANSFER_VECTORS)
    g = _m2l_fast.GROUP
    assert g.shape == (48, 3, 3) and len({m.tobytes() for m in g}) == 48
    for m in g:   # signed permutations
        assert (np.abs(m).sum(0) == 1).all() and (np.abs(m).sum(1) == 1).all()
    reps = _m2l_fast.REPS
    assert len(reps) == 16 and (reps[:, 0] >= reps[:, 1]).all() and \
        (reps[:, 1] >= reps[:, 2]).all() and (reps[:, 2] >= 0).all()
    images = np.einsum("tij,tj->ti", g[_m2l_fast.ELEMENT_OF], reps[_m2l_fast.REP_OF])
    assert np.array_equal(images, TV)
    sizes = np.bincount(_m2l_fast.REP_OF, minlength=16)
    assert np.array_equal(sizes * _m2l_fast.STABILIZER, np.full(16, 48))


@pytest.mark.parametrize("p", [3, 4])
def test_permutations_map_blocks(p):
    """K_{g t} = K_t[pi][:, pi] for the surface permutation pi of g, every g, a few t."""
    s = surface(p)
    perms = _m2l_fast.surface_permutations(s)
    for e, m in enumerate(_m2l_fast.GROUP):
        assert np.allclose(s[perms[e]], s @ m, rtol=0, atol=1e-15)
    for ti in (0, 57, 200, 315):
        kt = ref_blocks(s, LAPLACE, t=[ti])[0]
        for e, m in enumerate(_m2l_fast.GROUP):
            tj = int(np.flatnonzero((TV == m @ TV[ti]).all(1))[0])
            kg = ref_blocks(s, LAPLACE, t=[tj])[0]
            assert np.allclose(kg, kt[perms[e]][:, perms[e]], rtol=1e-14, atol=0)


@pytest.mark.parametrize("p", [3, 4, 5])
def test_parity_basis(p):
    """Q orthogonal; sector s columns are eigenvectors of the three axis flips with signs
    (-1)^bit; Q^T P_e Q is the signed permutation the class reports, for all 48 e; the
    transform is Q^T K Q."""
    s = surface(p)
    n = len(s)
    perms = _m2l_fast.surface_permutations(s)
    par = _m2l_fast.Parity(s, perms)
    q = par.q
    assert np.allclose(q.T @ q, np.eye(n), atol=1e-14)
    flips = [int(np.flatnonzero((_m2l_fast.GROUP == np.diag(d)).all((1, 2)))[0])
             for d in ([-1, 1, 1], [1, -1, 1], [1, 1, -1])]
    for sec in range(8):
        cols = q[:, par.bounds[sec]:par.bounds[sec + 1]]
        for a, f in enumerate(flips):
            sign = -1.0 if (sec >> a) & 1 else 1.0
            assert np.allclose(cols[perms[f]], sign * cols, atol=1e-14)
    for e in range(48):
        dense = q.T @ q[perms[e]]
        want = np.zeros((n, n))
        want[par.target[e], np.arange(n)] = par.sign[e]
        assert np.allclose(dense, want, atol=1e-13)
    k = np.random.default_rng(0).standard_normal((n, n)) * (1 + 1j)
    assert np.allclose(par.transform(k), q.T @ k @ q, atol=1e-13)


@pytest.mark.parametrize("p", [2, 3, 4, 7])
def test_lattice_blocks(p):
    """With equal radii K_t depends on s_i - s_j only: G evaluated once per grid difference
    and gathered equals the kernel formula (complex too); no lattice for a surface off the
    grid."""
    s = surface(p)
    lattice = _m2l_fast._lattice(s)
    assert lattice is not None and lattice[2] == p
    for fam in (LAPLACE, helmholtz(2.5)):
        got = np.array(_m2l_fast._lattice_blocks(lattice, R_C, TV[[0, 100, 315]], fam, 0.7))
        want = ref_blocks(s, fam, 0.7, t=[0, 100, 315])
        assert np.allclose(got, want, rtol=1e-14, atol=0)
    bent = s.copy()
    bent[0, 0] += 1e-3
    assert _m2l_fast._lattice(bent) is None


def test_surface_not_symmetric():
    s = surface(4).copy()
    s[0] *= 0.99
    with pytest.raises(ValueError, match="symmetries"):
        _m2l_fast.build(s, R_C, R_E, np.eye(len(s)), 1e-5)


# ------------------------------------------------------------------------ compression

@pytest.mark.parametrize("p", [4, 5, 6, 8])
def test_laplace_against_uncompressed(p):
    s, dc2e_b, tol, out = build(p)
    check_contract(s, dc2e_b, out)
    check_against_uncompressed(s, out, tol, LAPLACE)


def test_per_vector_ranks_match_full_svd():
    """r_t equals the count of singular values of U^H K_t conj(V) above tol * sigma_max (the
    randomized core compression may differ by one where a value sits at the cut)."""
    p = 5
    s, _, tol, out = build(p)
    kt = ref_blocks(s, LAPLACE)
    u, v = out["m2l_u"], out["m2l_v"]
    cut = tol * out["m2l_sigma"][0]
    want = np.array([max(1, np.count_nonzero(np.linalg.svd(u.T @ k @ v, compute_uv=False)
                                             > cut)) for k in kt])
    got = np.diff(out["m2l_offsets"])
    assert np.abs(got - want).max() <= 1
    assert abs(got.sum() - want.sum()) <= 0.01 * want.sum()


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("k, knee, decay, steep, cut", [
    (240, 240, 0.5, 0.5, 1e-8), (240, 240, 0.8, 0.8, 1e-8), (240, 240, 0.95, 0.95, 1e-3),
    (152, 40, 0.72, 0.5, 1.7e-7), (152, 45, 0.72, 0.35, 1.7e-7), (232, 30, 0.6, 0.4, 1e-8)])
def test_truncated_core_compression(dtype, k, knee, decay, steep, cut):
    """The randomized truncated SVD of a core against numpy's SVD: the same rank and a
    Frobenius error within 1.044x (the documented bound) of the exact truncation's, for
    geometric singular values (as the cores' at far transfer vectors, rank ~k/10 to ~k/3 at
    the cut) and spectra that fall steeply past a knee (as a strongly screened Yukawa core's:
    the case where the range basis lost orthogonality, errors 5-30x before the fix)."""
    rng = np.random.default_rng(knee)

    def orth():
        x = rng.standard_normal((k, k))
        if dtype == np.complex128:
            x = x + 1j * rng.standard_normal((k, k))
        return np.linalg.qr(x)[0]

    j = np.arange(k)
    sv = np.maximum(np.where(j <= knee, decay ** j, decay ** knee * steep ** (j - knee)),
                    1e-300)
    c = (orth() * sv) @ orth().conj().T
    a, b = _m2l_fast._truncated(c, cut)
    exact = np.linalg.svd(c, compute_uv=False)
    r = np.count_nonzero(exact > cut)
    assert len(a) == len(b) == r and a.dtype == b.dtype == dtype
    assert np.linalg.norm(c - a.T @ b) <= 1.045 * np.linalg.norm(exact[r:])


def test_threads_give_identical_arrays():
    """threads=1, threads=2 and a caller's Workers(3) give the same arrays bit for bit (a
    fixed work partition; BLAS on one thread)."""
    from aotfmm._threads import Workers
    p = 6
    s, dc2e_b, tol, one = build(p, threads=1)
    _, _, _, two = build(p, threads=2)
    with Workers(3) as w:
        three = _m2l_fast.build(s, R_C, R_E, dc2e_b, tol, workers=w, family=LAPLACE)
    for key in one:
        assert np.array_equal(one[key], two[key]), key
        assert np.array_equal(one[key], three[key]), key


@pytest.mark.parametrize("kappa_h", [0.5, 2.0, 4.0])
def test_helmholtz_complex(kappa_h):
    """Complex symmetric G: K_t ~ U C_t V^T with plain transposes, U = V (equal radii), and
    C_{-t} = C_t^T as K_{-t} = K_t^T."""
    p, h = 5, 0.37
    fam = helmholtz(kappa_h / h)
    s, dc2e_b, tol, out = build(p, fam, h)
    check_contract(s, dc2e_b, out, complex_=True)
    check_against_uncompressed(s, out, tol, fam, h)
    assert np.array_equal(out["m2l_u"], out["m2l_v"])
    minus = [int(np.flatnonzero((TV == -t).all(1))[0]) for t in TV]
    sigma = out["m2l_sigma"][0]
    for t in range(0, len(TV), 7):
        assert np.abs(core(out, minus[t]) - core(out, t).T).max() <= 3 * tol * sigma


@pytest.mark.parametrize("lam_h", [0.1, 1.0, 10.0])
def test_yukawa_at_half_width(lam_h):
    p, h = 5, 0.37
    fam = yukawa(lam_h / h)
    s, dc2e_b, tol, out = build(p, fam, h)
    check_contract(s, dc2e_b, out)
    check_against_uncompressed(s, out, tol, fam, h)


@pytest.mark.parametrize("family", [LAPLACE, helmholtz(3.0)], ids=["laplace", "helmholtz"])
def test_unequal_radii(family):
    """Check radius != equivalent radius: two stacks, U != V."""
    p, r_check, r_equiv = 4, 1.05, 1.3
    s, dc2e_b, tol, out = build(p, family, 1.0, r_check, r_equiv)
    check_contract(s, dc2e_b, out, complex_=family.scalar == "complex")
    check_against_uncompressed(s, out, tol, family, 1.0, r_check, r_equiv)
    kt = ref_blocks(s, family, 1.0, r_check, r_equiv)
    left_sv = np.linalg.svd(kt.transpose(1, 0, 2).reshape(len(s), -1), compute_uv=False)
    assert out["m2l_u"].shape[1] >= np.count_nonzero(left_sv > tol * left_sv[0])


def test_forced_rank():
    """rank=k keeps the k largest singular directions of the stack: the stack's residual
    outside span(V) is the norm of the other singular values."""
    p, k = 5, 20
    s, dc2e_b, _, out = build(p, rank=k)
    check_contract(s, dc2e_b, out)
    v = out["m2l_v"]
    assert v.shape[1] == k
    stack = ref_blocks(s, LAPLACE).reshape(-1, len(s))
    sv = np.linalg.svd(stack, compute_uv=False)
    resid = np.linalg.norm(stack - (stack @ v) @ v.T)
    assert resid == pytest.approx(np.linalg.norm(sv[k:]), rel=1e-8)
    assert (np.diff(out["m2l_offsets"]) == k).all()


def test_laplace_half_width_scales():
    """Laplace at half-width h: K is K_1 / h, so sigma is sigma_1 / h, the ranks stay."""
    p, h = 4, 0.25
    _, _, _, one = build(p)
    _, _, _, quarter = build(p, LAPLACE, h)
    assert np.allclose(quarter["m2l_sigma"], one["m2l_sigma"] / h, rtol=1e-12)
    assert np.array_equal(quarter["m2l_offsets"], one["m2l_offsets"])


def test_same_as_streamed_qr_build():
    """Against today's builder (aotfmm._m2l_svd, the same bases and truncation computed from
    all 316 blocks): same stack singular values, rank k and (up to one per t) ranks."""
    from aotfmm import _m2l_svd
    from aotfmm.families import LAPLACE as FAMILY
    p = 5
    s = surface(p)
    dc2e_b = np.eye(len(s))
    ref = _m2l_svd.build(s, R_C, R_E, dc2e_b, TOL[p], family=FAMILY)
    out = _m2l_fast.build(s, R_C, R_E, dc2e_b, TOL[p], family=FAMILY)
    assert np.allclose(out["m2l_sigma"], ref["m2l_sigma"], rtol=0, atol=1e-13 * ref["m2l_sigma"][0])
    assert out["m2l_v"].shape == ref["m2l_v"].shape
    assert np.abs(np.diff(out["m2l_offsets"]) - np.diff(ref["m2l_offsets"])).max() <= 1
