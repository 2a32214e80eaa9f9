"""The public API of the Yukawa and Helmholtz kernels (issue 17): aotfmm.yukawa, aotfmm.helmholtz,
aotfmm.direct(kernel=), aotfmm.hfmm (FMM3D's hfmm3d), Fmm(kernel=).as_linear_operator, the CLI's
--kernel, and the errors for bad parameters.

Every number is checked against plain numpy sums written here (never aotfmm.direct, never the
families' own numpy reference): G = exp(s r) / (4 pi r) with s = -lam (Yukawa) or s = i kappa
(Helmholtz), its gradient and the dipole terms d . grad_y G written out below (and checked
against finite differences). All FMM cases use the same unit-cube points, lam and kappa, so that
they share operator sets; eps 1e-3 and 1e-6 (p <= 8), eps 1e-9 only in a slow case (p = 12).
"""
import inspect
import re

import numpy as np
import pytest

import aotfmm
from aotfmm.cli import main

LAM, KAPPA = 2.0, 3.0
N = 5000  # sources: unit cube (every FMM case has a far field at eps 1e-3 and 1e-6)
M = 300   # targets where the FMM is checked against the numpy sums


# --- independent numpy references ----------------------------------------------------------------

def fields(src, trg, s, q=None, d=None, gradient=True):
    """Potential and gradient at trg (m, 3) of charges q (n,) / (n, k) and dipoles d (n, 3) /
    (n, k, 3) at src for G(r) = exp(s r) / (4 pi r), s = -lam or i kappa; r = 0 pairs left out.

    pot = sum_j q_j G + d_j . grad_y G. With x = trg - src, E = exp(s r):
      grad_x G          = E (s r - 1) x / (4 pi r^3)
      d . grad_y G      = (d . x) E (1 - s r) / (4 pi r^3)
      grad_x (d.grad_y G) = d E (1 - s r) / (4 pi r^3) - (d . x) x E (3 - 3 s r + s^2 r^2)
                                                         / (4 pi r^5)
    Returns pot (m,) / (m, k) and grad (m, 3) / (m, k, 3) (zeros for charges unless
    ``gradient``), complex128 (float64 for real s and real densities).
    """
    src, trg = np.asarray(src, np.float64), np.asarray(trg, np.float64)
    real = np.isreal(s) and not any(np.iscomplexobj(a) for a in (q, d) if a is not None)
    one = (q if q is not None else d).ndim == (1 if q is not None else 2)
    if q is not None:
        q = np.asarray(q, np.complex128).reshape(len(src), -1)
    if d is not None:
        d = np.asarray(d, np.complex128).reshape(len(src), -1, 3)
    k = (q if q is not None else d).shape[1]
    pot = np.zeros((len(trg), k), np.complex128)
    grad = np.zeros((len(trg), k, 3), np.complex128)
    for a in range(0, len(trg), 100):
        x = trg[a:a + 100, None, :] - src[None]
        r = np.sqrt((x * x).sum(-1))
        far = r > 0
        r = np.where(far, r, 1.0)
        e = np.where(far, np.exp(s * r), 0.0) / (4 * np.pi)
        if q is not None:
            pot[a:a + 100] += (e / r) @ q
            if gradient:
                grad[a:a + 100] += np.einsum("tsc,ts,sk->tkc", x, e * (s * r - 1) / r ** 3, q)
        if d is not None:
            dx = np.einsum("tsc,skc->tsk", x, d)
            f1 = e * (1 - s * r) / r ** 3
            f2 = e * (3 - 3 * s * r + (s * r) ** 2) / r ** 5
            pot[a:a + 100] += np.einsum("tsk,ts->tk", dx, f1)
            grad[a:a + 100] += (np.einsum("skc,ts->tkc", d, f1)
                                - np.einsum("tsk,tsc,ts->tkc", dx, x, f2))
    if real:
        pot, grad = pot.real, grad.real
    return (pot[:, 0], grad[:, 0]) if one else (pot, grad)


def rel(x, ref):
    x = np.asarray(x).astype(np.complex128)
    return np.linalg.norm(x - ref) / np.linalg.norm(ref)


@pytest.fixture(scope="module")
def pts():
    rng = np.random.default_rng(17)
    return dict(src=rng.random((N, 3)), trg=rng.random((700, 3)))


@pytest.mark.parametrize("s", [-LAM, 1j * KAPPA, -0.5 + 1.5j])
def test_the_numpy_reference_gradients_are_derivatives_of_its_potentials(s):
    rng = np.random.default_rng(1)
    src, trg = rng.random((20, 3)), rng.random((5, 3)) + 1.5
    q, d = rng.standard_normal(20) + 1j * rng.standard_normal(20), rng.standard_normal((20, 3))
    h = 1e-6
    for kw in (dict(q=q), dict(d=d)):
        _, grad = fields(src, trg, s, **kw)
        for c in range(3):
            e = np.zeros(3)
            e[c] = h
            fd = (fields(src, trg + e, s, **kw)[0] - fields(src, trg - e, s, **kw)[0]) / (2 * h)
            assert rel(grad[:, c], fd) < 1e-8
    # s = 0 is the Laplace kernel: 1 / (4 pi r) and d . (x - y) / (4 pi r^3)
    x = trg[:, None] - src[None]
    r = np.linalg.norm(x, axis=-1)
    assert rel(fields(src, trg, 0.0, q=q)[0], (1 / (4 * np.pi * r)) @ q) < 1e-14
    assert rel(fields(src, trg, 0.0, d=d)[0],
               np.einsum("tsc,sc,ts->t", x, d, 1 / (4 * np.pi * r ** 3))) < 1e-14


# --- aotfmm.direct(kernel=) ----------------------------------------------------------------------

@pytest.mark.parametrize("kernel,s", [(aotfmm.Yukawa(LAM), -LAM),
                                      (aotfmm.Helmholtz(KAPPA), 1j * KAPPA)])
def test_direct_with_a_kernel_matches_numpy(rng, pts, kernel, s):
    src, trg = pts["src"][:500], pts["trg"][:200]
    cplx = kernel.complex
    q = rng.standard_normal((500, 2)) + (1j * rng.standard_normal((500, 2)) if cplx else 0)
    d = rng.standard_normal((500, 2, 3)) + (1j * rng.standard_normal((500, 2, 3)) if cplx else 0)
    # (n,) charges, separate targets
    pot = aotfmm.direct(src, q[:, 0], trg, kernel=kernel)
    assert pot.shape == (200,) and pot.dtype == (np.complex128 if cplx else np.float64)
    assert rel(pot, fields(src, trg, s, q=q[:, 0])[0]) < 1e-13
    # (n, k) charges and dipoles, sources = targets, gradients
    pot, grad = aotfmm.direct(src, q, dipoles=d, gradient=True, kernel=kernel)
    ref_pot, ref_grad = fields(src, src, s, q=q, d=d)
    assert pot.shape == (500, 2) and grad.shape == (500, 2, 3)
    assert rel(pot, ref_pot) < 1e-13 and rel(grad, ref_grad) < 1e-13
    # dipoles alone, (n, 3)
    pot, grad = aotfmm.direct(src, None, trg, dipoles=d[:, 0], gradient=True, kernel=kernel)
    ref_pot, ref_grad = fields(src, trg, s, d=d[:, 0])
    assert grad.shape == (200, 3) and rel(pot, ref_pot) < 1e-13 and rel(grad, ref_grad) < 1e-13
    # single precision
    pot = aotfmm.direct(src.astype(np.float32),
                        q[:, 0].astype(np.complex64 if cplx else np.float32), kernel=kernel)
    assert pot.dtype == (np.complex64 if cplx else np.float32)
    assert rel(pot, fields(src, src, s, q=q[:, 0])[0]) < 1e-5


def test_direct_helmholtz_real_densities_and_laplace_default(pts):
    src, q = pts["src"][:300], np.random.default_rng(4).standard_normal(300)
    pot = aotfmm.direct(src, q, kernel=aotfmm.Helmholtz(KAPPA))
    assert pot.dtype == np.complex128 and rel(pot, fields(src, src, 1j * KAPPA, q=q)[0]) < 1e-13
    # kernel=None and kernel=aotfmm.Laplace() are the Laplace sum, as before
    ref = fields(src, src, 0.0, q=q)[0]
    assert rel(aotfmm.direct(src, q), ref) < 1e-13
    assert np.array_equal(aotfmm.direct(src, q, kernel=aotfmm.Laplace()), aotfmm.direct(src, q))
    assert aotfmm.direct(src, q, dtype=np.complex64, kernel=aotfmm.Helmholtz(KAPPA)).dtype == \
        np.complex64


# --- aotfmm.yukawa / aotfmm.helmholtz: laplace()'s conventions -----------------------------------

def test_one_call_functions_have_laplaces_keywords():
    lap = inspect.signature(aotfmm.laplace).parameters
    for func, param in ((aotfmm.yukawa, "lam"), (aotfmm.helmholtz, "kappa")):
        ps = inspect.signature(func).parameters
        assert list(ps) == ["sources", "charges", param, *[k for k in lap if k not in
                                                            ("sources", "charges")]]
        for name in lap:
            if name not in ("sources", "charges"):
                assert ps[name].kind == lap[name].kind and ps[name].default == lap[name].default
        assert ps[param].default is inspect.Parameter.empty
    for name in ("yukawa", "helmholtz", "hfmm", "Yukawa", "Helmholtz", "Laplace"):
        assert name in aotfmm.__all__ and hasattr(aotfmm, name)


CASES = [  # (eps, separate targets, k densities (0: (n,)), dipoles, gradient)
    (1e-3, False, 0, False, False),
    (1e-3, True, 2, False, True),
    (1e-3, False, 0, True, True),
    (1e-6, False, 2, False, True),
]


@pytest.mark.parametrize("eps,targets,k,dipoles,gradient", CASES)
@pytest.mark.parametrize("which", ["yukawa", "helmholtz"])
def test_one_call_meets_eps_against_numpy(rng, pts, which, eps, targets, k, dipoles, gradient):
    src = pts["src"]
    cplx = which == "helmholtz"
    shape = (N,) if k == 0 else (N, k)
    q = rng.random(shape) + (1j * rng.random(shape) if cplx else 0)
    d = None
    if dipoles:
        d = rng.standard_normal((*shape, 3)) + (1j * rng.standard_normal((*shape, 3)) if cplx
                                                else 0)
    func, param, s = ((aotfmm.helmholtz, KAPPA, 1j * KAPPA) if cplx
                      else (aotfmm.yukawa, LAM, -LAM))
    trg = pts["trg"] if targets else None
    out = func(src, q, param, trg, dipoles=d, eps=eps, gradient=gradient)
    pot, grad = out if gradient else (out, None)
    n_out = len(trg) if targets else N
    assert pot.shape == (n_out, *shape[1:])
    assert pot.dtype == (np.complex128 if cplx else np.float64)
    check = (trg if targets else src)[:M]
    ref_pot, ref_grad = fields(src, check, s, q=q, d=d, gradient=gradient)
    assert rel(pot[:M], ref_pot) < eps
    if gradient:
        assert grad.shape == (n_out, *shape[1:], 3) and grad.dtype == pot.dtype
        assert rel(grad[:M], ref_grad) < eps


@pytest.mark.parametrize("which", ["yukawa", "helmholtz"])
def test_one_call_single_precision(rng, pts, which):
    src32 = pts["src"].astype(np.float32)
    cplx = which == "helmholtz"
    q = rng.random(N).astype(np.float32)
    if cplx:
        q = (q + 1j * rng.random(N)).astype(np.complex64)
    func, param, s = ((aotfmm.helmholtz, KAPPA, 1j * KAPPA) if cplx
                      else (aotfmm.yukawa, LAM, -LAM))
    pot, grad = func(src32, q, param, eps=1e-3, gradient=True)
    assert pot.dtype == grad.dtype == (np.complex64 if cplx else np.float32)
    ref_pot, ref_grad = fields(src32, src32[:M], s, q=q)
    assert rel(pot[:M], ref_pot) < 1e-3 and rel(grad[:M], ref_grad) < 1e-3
    # float64 points asked for single precision: dtype=
    dt = np.complex64 if cplx else np.float32
    assert func(pts["src"], q, param, eps=1e-3, dtype=dt).dtype == dt


def test_one_call_equals_the_plan(rng, pts):
    q = rng.random(N) + 1j * rng.random(N)
    plan = aotfmm.Fmm(pts["src"], kernel=aotfmm.Helmholtz(KAPPA), eps=1e-3)
    assert np.array_equal(plan.evaluate(q), aotfmm.helmholtz(pts["src"], q, KAPPA, eps=1e-3))
    plan = aotfmm.Fmm(pts["src"], kernel=aotfmm.Yukawa(LAM), eps=1e-3)
    assert np.array_equal(plan.evaluate(q.real), aotfmm.yukawa(pts["src"], q.real, LAM,
                                                               eps=1e-3))


def test_a_problem_too_small_for_a_far_field():
    """300 points and eps 1e-6 (leaves of up to 400 points): no far field at all."""
    rng = np.random.default_rng(3)
    src, q = rng.random((300, 3)), rng.random(300)
    pot = aotfmm.yukawa(src, q, LAM, eps=1e-6)
    assert rel(pot, fields(src, src, -LAM, q=q)[0]) < 1e-6
    pot = aotfmm.hfmm(src, q, zk=KAPPA, eps=1e-6).pot
    assert rel(pot, fields(src, src, 1j * KAPPA, q=q)[0]) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("which", ["yukawa", "helmholtz"])
def test_one_call_at_eps_1e_9(rng, which):
    n = 12_000  # p = 12 takes leaves of up to 720 points: enough of them for a far field
    src = rng.random((n, 3))
    cplx = which == "helmholtz"
    q = rng.random(n) + (1j * rng.random(n) if cplx else 0)
    func, param, s = ((aotfmm.helmholtz, KAPPA, 1j * KAPPA) if cplx
                      else (aotfmm.yukawa, LAM, -LAM))
    pot, grad = func(src, q, param, eps=1e-9, gradient=True)
    ref_pot, ref_grad = fields(src, src[:M], s, q=q)
    assert rel(pot[:M], ref_pot) < 1e-9 and rel(grad[:M], ref_grad) < 1e-9


# --- aotfmm.hfmm: FMM3D's hfmm3d ------------------------------------------------------------------

HFMM3D_ARGS = ("eps", "zk", "sources", "charges", "dipvec", "targets", "pg", "pgt", "nd")


def test_hfmm_takes_hfmm3ds_keywords():
    ps = inspect.signature(aotfmm.hfmm).parameters
    assert set(HFMM3D_ARGS) <= set(ps)
    assert ps["zk"].kind == inspect.Parameter.KEYWORD_ONLY
    assert ps["zk"].default is None  # (required: None is refused, see below)
    # lfmm's keywords too, with the same defaults
    lf = inspect.signature(aotfmm.lfmm).parameters
    for name in lf:
        assert ps[name].default == lf[name].default, name


def test_hfmm_matches_numpy_in_fmm3ds_layouts(rng, pts):
    n = 2000  # sources + targets at both: 2 n + 700 points, leaves at level 2 as elsewhere
    src, trg = pts["src"][:n], pts["trg"]
    nd = 2
    q = rng.random((nd, n)) + 1j * rng.random((nd, n))  # FMM3D's (nd, n)
    res = aotfmm.hfmm(src, q, trg, zk=KAPPA, nd=nd, pg=2, pgt=2, eps=1e-3)
    assert res.pot.shape == (n, nd) and res.grad.shape == (n, nd, 3)
    assert res.pottarg.shape == (len(trg), nd) and res.gradtarg.shape == (len(trg), nd, 3)
    assert res.pot.dtype == np.complex128 and res.hess is None and res.hesstarg is None
    ref_pot, ref_grad = fields(src, src[:M], 1j * KAPPA, q=q.T)
    assert rel(res.pot[:M], ref_pot) < 1e-3 and rel(res.grad[:M], ref_grad) < 1e-3
    ref_pot, ref_grad = fields(src, trg[:M], 1j * KAPPA, q=q.T)
    assert rel(res.pottarg[:M], ref_pot) < 1e-3 and rel(res.gradtarg[:M], ref_grad) < 1e-3
    # charges and FMM3D's dipvec (3, n) at the sources; pgt defaults to 0 without targets
    c = rng.random(n) + 1j * rng.random(n)
    dipvec = rng.standard_normal((3, n)) + 1j * rng.standard_normal((3, n))
    res = aotfmm.hfmm(src, c, zk=KAPPA, dipvec=dipvec, pg=1, eps=1e-3)
    assert res.pot.shape == (n,) and res.grad is None and res.pottarg is None
    assert rel(res.pot[:M], fields(src, src[:M], 1j * KAPPA, q=c, d=dipvec.T,
                                   gradient=False)[0]) < 1e-3
    # fmm3dpy's all-keyword call works unchanged (sources given by keyword)
    res2 = aotfmm.hfmm(eps=1e-3, zk=KAPPA, sources=src, charges=c, dipvec=dipvec, pg=1)
    assert np.array_equal(res2.pot, res.pot)


def test_hfmm_matches_fmm3dpy():
    """fmm3dpy >= 2.1 (FMM3D v2.1.0, PR #62) sums exp(ikr) / (4 pi r) like aotfmm; earlier
    releases sum exp(ikr) / r. Both its scaling and its dipole sign are measured here."""
    fmm3dpy = pytest.importorskip("fmm3dpy")
    from importlib.metadata import version
    release = tuple(int(v) for v in re.findall(r"\d+", version("fmm3dpy"))[:2])
    factor = 1.0 if release >= (2, 1) else 4 * np.pi
    rng = np.random.default_rng(2000)
    n, nt, eps = 2000, 300, 1e-3
    src, trg = rng.random((n, 3)), rng.random((nt, 3))
    q = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    d = rng.standard_normal((n, 3)) + 1j * rng.standard_normal((n, 3))
    # charges and dipoles at the sources
    theirs = fmm3dpy.hfmm3d(eps=1e-10, zk=KAPPA, sources=src.T.copy(), charges=q,
                            dipvec=d.T.copy(), pg=2)
    ours = aotfmm.hfmm(src, q, zk=KAPPA, dipvec=d.T, pg=2, eps=eps)
    assert rel(factor * ours.pot, theirs.pot) < eps
    assert rel(factor * ours.grad, theirs.grad.T) < eps
    # their scaling and dipole sign themselves, against numpy (on 300 of the sources)
    ref_pot, ref_grad = fields(src, src[:nt], 1j * KAPPA, q=q, d=d)
    assert rel(theirs.pot[:nt], factor * ref_pot) < 1e-8
    assert rel(theirs.grad.T[:nt], factor * ref_grad) < 1e-8
    # charges to separate targets, in fmm3dpy's keyword call
    theirs = fmm3dpy.hfmm3d(eps=1e-10, zk=KAPPA, sources=src.T.copy(), charges=q,
                            targets=trg.T.copy(), pgt=2)
    ours = aotfmm.hfmm(eps=eps, zk=KAPPA, sources=src, charges=q, targets=trg, pg=0, pgt=2)
    assert ours.pot is None
    assert rel(factor * ours.pottarg, theirs.pottarg) < eps
    assert rel(factor * ours.gradtarg, theirs.gradtarg.T) < eps


def test_hfmm_refuses_hessians_and_bad_calls(pts):
    src, trg, q = pts["src"][:50], pts["trg"][:10], np.ones(50, complex)
    with pytest.raises(ValueError, match=r"pg=3 asks for Hessians.*Helmholtz\(kappa=3\.0\).*"
                                         r"pg=2"):
        aotfmm.hfmm(src, q, zk=KAPPA, pg=3)
    with pytest.raises(ValueError, match=r"pgt=3 asks for Hessians.*use pgt=2"):
        aotfmm.hfmm(src, q, trg, zk=KAPPA, pg=1, pgt=3)
    for zk, err in ((float("inf"), ValueError), (-1.0, ValueError), (0, ValueError),
                    (True, TypeError), ("3", TypeError)):
        with pytest.raises(err, match=r"^zk=.* is not a valid wavenumber"):
            aotfmm.hfmm(src, q, zk=zk)
    with pytest.raises(TypeError, match=r"^hfmm needs the wavenumber: zk="):
        aotfmm.hfmm(src, q)
    with pytest.raises(TypeError, match=r"hfmm takes the sources \(n, 3\) first.*by keyword"):
        aotfmm.hfmm(1e-6, src, q, zk=KAPPA)
    # FMM3D's own positional order (eps, zk, sources, ...) gets that hint too, not Python's
    # "missing keyword-only argument" (until 2026-12-06: zk had no default)
    with pytest.raises(TypeError, match=r"hfmm takes the sources \(n, 3\) first.*by keyword"):
        aotfmm.hfmm(1e-6, KAPPA, src)
    with pytest.raises(ValueError, match=r"sources must have shape \(n, 3\).*transposed"):
        aotfmm.hfmm(src.T, q, zk=KAPPA)
    with pytest.raises(ValueError, match="dtype must be complex64 or complex128"):
        aotfmm.hfmm(src, q, zk=KAPPA, dtype=np.float64)
    with pytest.raises(ValueError, match="not both"):
        aotfmm.hfmm(src, q, zk=KAPPA, dipvec=np.ones((3, 50)), dipoles=np.ones((50, 3)))
    with pytest.raises(ValueError, match="nd=3 but the densities given hold 1"):
        aotfmm.hfmm(src, q, zk=KAPPA, nd=3)
    # lfmm gives the same hint for FMM3D's positional order
    with pytest.raises(TypeError, match=r"lfmm takes the sources \(n, 3\) first"):
        aotfmm.lfmm(1e-6, src)


# --- as_linear_operator ---------------------------------------------------------------------------

def dense(x, s):
    """The (n, n) matrix exp(s r) / (4 pi r), r = |x_i - x_j|, zero diagonal (numpy)."""
    from scipy.spatial.distance import cdist
    r = cdist(x, x)
    far = r > 0
    r = np.where(far, r, 1.0)
    return np.where(far, np.exp(s * r) / (4 * np.pi * r), 0.0)


def test_helmholtz_linear_operator_solves_with_gmres(rng, pts):
    from scipy.sparse.linalg import gmres
    n = 2000
    src = pts["src"][:n]
    # eps 1e-6 (p = 8) with smaller leaves than its table's, so that 2000 points have a far field
    plan = aotfmm.Fmm(src, kernel=aotfmm.Helmholtz(KAPPA), eps=1e-6, ncrit=150)
    assert plan.p == 8 and plan.stats["list_sizes"]["v"]["max"] > 0
    diag = 0.5 * n * (1 + 0.2j)  # a second-kind system: the diagonal dominates, complex
    A = plan.as_linear_operator(diagonal=diag)
    assert A.dtype == np.complex128 and A.shape == (n, n)
    K = dense(src, 1j * KAPPA)
    assert np.allclose(K, K.T)  # complex symmetric
    dense_a = diag * np.eye(n) + K
    x0 = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    ax = A @ x0
    assert ax.dtype == np.complex128 and rel(ax, dense_a @ x0) < 1e-6
    # A.H x = conj(A) x (complex symmetric, not Hermitian): not A x
    ahx = A.H @ x0
    assert rel(ahx, dense_a.conj().T @ x0) < 1e-6 and rel(ahx, ax) > 0.1
    assert np.array_equal(A.rmatvec(x0), ahx)
    # a block: two columns in one traversal, and its adjoint
    X = np.stack([x0, rng.standard_normal(n)], axis=1)
    assert (A @ X).shape == (n, 2) and rel(A @ X, dense_a @ X) < 1e-6
    assert rel(A.H @ X, dense_a.conj().T @ X) < 1e-6
    assert rel(A @ X[:, 1], dense_a @ X[:, 1]) < 1e-6  # real vectors
    # GMRES on A x = b: the residual checked with the numpy matrix
    b = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    x, info = gmres(A, b, rtol=1e-10, atol=0.0, restart=50)
    assert info == 0
    assert np.linalg.norm(dense_a @ x - b) / np.linalg.norm(b) < 1e-6


def test_yukawa_linear_operator_is_real_symmetric(rng, pts):
    src = pts["src"]
    plan = aotfmm.Fmm(src, kernel=aotfmm.Yukawa(LAM), eps=1e-3)
    A = plan.as_linear_operator(diagonal=np.full(N, 2.0))
    assert A.dtype == np.float64
    x = rng.standard_normal(N)
    ref = 2.0 * x[:M] + fields(src, src[:M], -LAM, q=x, gradient=False)[0]
    assert rel((A @ x)[:M], ref) < 1e-3 and np.array_equal(A.H @ x, A @ x)
    z = x + 1j * rng.standard_normal(N)  # complex vectors: real and imaginary parts
    refz = 2.0 * z[:M] + fields(src, src[:M], -LAM, q=z, gradient=False)[0]
    assert rel((A @ z)[:M], refz) < 1e-3
    with pytest.raises(TypeError, match="diagonal must hold real numbers.*complex"):
        plan.as_linear_operator(diagonal=1j)


# --- errors name the argument ---------------------------------------------------------------------

@pytest.mark.parametrize("lam,err,msg", [
    (0.0, ValueError, r"lam must be finite and > 0, got 0\.0"),
    (-1.0, ValueError, r"lam must be finite and > 0"),
    (float("inf"), ValueError, r"lam must be finite and > 0"),
    (float("nan"), ValueError, r"lam must be finite and > 0"),
    (True, TypeError, r"lam must be a real number, got True"),
    (1j, TypeError, r"lam must be a real number"),
    ("2", TypeError, r"lam must be a real number"),
])
def test_bad_lam(lam, err, msg):
    src = np.random.default_rng(0).random((20, 3))
    with pytest.raises(err, match=msg):
        aotfmm.Yukawa(lam)
    with pytest.raises(err, match=msg):
        aotfmm.yukawa(src, np.ones(20), lam)


@pytest.mark.parametrize("kappa,err,msg", [
    (float("inf"), ValueError, r"kappa must be finite"),
    (float("nan"), ValueError, r"kappa must be finite"),
    (complex(1, float("inf")), ValueError, r"kappa must be finite"),
    (-3.0, ValueError, r"kappa must have Re >= 0 and Im >= 0"),
    (0, ValueError, r"kappa must .*not be 0"),
    (True, TypeError, r"kappa must be a number, got True"),
    ("3", TypeError, r"kappa must be a number"),
])
def test_bad_kappa(kappa, err, msg):
    src = np.random.default_rng(0).random((20, 3))
    with pytest.raises(err, match=msg):
        aotfmm.Helmholtz(kappa)
    with pytest.raises(err, match=msg):
        aotfmm.helmholtz(src, np.ones(20), kappa)


@pytest.mark.parametrize("kappa", [3e15, 1e20, 1e300, complex(2e16, 1.0)])
def test_kappa_too_large_for_float64_phases_is_refused(kappa):
    """Above 1e15 radians across the domain float64 points do not fix the phase kappa r:
    direct sums of 100 points at kappa 1e20 gave |values| 4e46 times u-bar (1e30: inf, then
    "the potential overflows"); every entry now says why instead. A decaying kernel of huge
    Im(kappa) is fine (it is zero)."""
    src = np.random.default_rng(0).random((100, 3))
    q = np.ones(100, dtype=complex)
    for call in (lambda: aotfmm.direct(src, q, kernel=aotfmm.Helmholtz(kappa)),
                 lambda: aotfmm.helmholtz(src, q, kappa),
                 lambda: aotfmm.hfmm(src, charges=q, zk=kappa, eps=1e-6),
                 lambda: aotfmm.Fmm(src, src[:3] + 2.0, kernel=aotfmm.Helmholtz(kappa))):
        with pytest.raises(ValueError, match=r"\|Re kappa\| D = .* is above 1e\+15: at that"):
            call()
    ok = aotfmm.direct(src, q, kernel=aotfmm.Helmholtz(complex(1.0, 1e300)))
    assert np.all(ok == 0)


def test_dtype_and_density_kind_errors():
    rng = np.random.default_rng(0)
    src, qr = rng.random((20, 3)), rng.random(20)
    qc = qr + 1j
    real_dtype = r"Helmholtz\(kappa=3\.0\) has complex densities and results: dtype must be " \
        r"complex64 or complex128 \(or None\), got float64"
    for call in (lambda: aotfmm.helmholtz(src, qc, KAPPA, dtype=np.float64),
                 lambda: aotfmm.Fmm(src, kernel=aotfmm.Helmholtz(KAPPA), dtype="float64"),
                 lambda: aotfmm.direct(src, qc, kernel=aotfmm.Helmholtz(KAPPA),
                                       dtype=np.float64)):
        with pytest.raises(ValueError, match=real_dtype):
            call()
    for call in (lambda: aotfmm.yukawa(src, qr, LAM, dtype=np.complex128),
                 lambda: aotfmm.direct(src, qr, dtype=np.complex128)):
        with pytest.raises(ValueError, match=r"dtype complex128 is complex, but .* is a real "
                                             r"kernel: use float32 or float64"):
            call()
    complex_q = r"charges must hold real numbers.*got dtype complex128 \(complex values need " \
        r"a complex kernel"
    for call in (lambda: aotfmm.yukawa(src, qc, LAM),
                 lambda: aotfmm.laplace(src, qc),
                 lambda: aotfmm.direct(src, qc, kernel=aotfmm.Yukawa(LAM)),
                 lambda: aotfmm.Fmm(rng.random((300, 3)), kernel=aotfmm.Yukawa(LAM), p=3,
                                    ncrit=20).evaluate(qc[:1].repeat(300))):
        with pytest.raises(TypeError, match=complex_q):
            call()
    with pytest.raises(TypeError, match=r"dipoles must hold real numbers"):
        aotfmm.yukawa(src, None, LAM, dipoles=np.ones((20, 3)) * 1j)
    with pytest.raises(ValueError, match=r"has no Hessians"):
        aotfmm.Fmm(src, kernel=aotfmm.Helmholtz(KAPPA), hessians=True)


@pytest.mark.parametrize("kernel,msg", [
    (aotfmm.Yukawa, r"kernel must be a kernel object, not the function Yukawa that makes one: "
                    r"pass aotfmm\.Yukawa\(lam\)"),
    (aotfmm.Helmholtz, r"not the function Helmholtz .*pass aotfmm\.Helmholtz\(kappa\)"),
    ("yukawa", r"kernel must be a kernel object, not the string 'yukawa': pass "
               r"aotfmm\.Yukawa\(lam\)"),
    ("Helmholtz", r"not the string 'Helmholtz': pass aotfmm\.Helmholtz\(kappa\)"),
    ("coulomb", r"not the string 'coulomb': pass one of aotfmm\.Laplace\(\), "
                r"aotfmm\.Yukawa\(lam\), aotfmm\.Helmholtz\(kappa\)"),
    (3, r"kernel must be aotfmm\.Laplace\(\), aotfmm\.Yukawa\(lam\) or "
        r"aotfmm\.Helmholtz\(kappa\), got 3"),
])
def test_bad_kernel_argument(kernel, msg):
    src = np.random.default_rng(0).random((20, 3))
    for call in (lambda: aotfmm.Fmm(src, kernel=kernel),
                 lambda: aotfmm.direct(src, np.ones(20), kernel=kernel)):
        with pytest.raises(TypeError, match=msg):
            call()


# --- command line ---------------------------------------------------------------------------------

def test_cli_demo_and_run_with_a_kernel(tmp_path, capsys):
    assert main(["demo", "-n", "3000", "--sample", "100", "--eps", "1e-3", "--kernel",
                 "helmholtz", "--kappa", str(KAPPA)]) == 0
    out = capsys.readouterr().out
    assert "kernel Helmholtz(kappa=3.0)" in out and "complex128" in out
    err = re.search(r"potential ([0-9.e+-]+), gradient ([0-9.e+-]+)", out)
    assert float(err.group(1)) < 1e-3 and float(err.group(2)) < 1e-3
    assert main(["demo", "-n", "3000", "--sample", "100", "--eps", "1e-3", "--kernel", "yukawa",
                 "--lam", str(LAM)]) == 0
    out = capsys.readouterr().out
    assert "kernel Yukawa(lam=2.0)" in out
    err = re.search(r"potential ([0-9.e+-]+), gradient ([0-9.e+-]+)", out)
    assert float(err.group(1)) < 1e-3 and float(err.group(2)) < 1e-3
    # run: a Yukawa problem file
    rng = np.random.default_rng(5)
    src, q = rng.random((N, 3)), rng.random(N)
    np.savez(tmp_path / "p.npz", sources=src, charges=q)
    assert main(["run", str(tmp_path / "p.npz"), "-o", str(tmp_path / "o.npz"), "--eps",
                 "1e-3", "--kernel", "yukawa", "--lam", str(LAM), "--gradient", "-q"]) == 0
    with np.load(tmp_path / "o.npz") as res:
        ref_pot, ref_grad = fields(src, src[:M], -LAM, q=q)
        assert rel(res["potential"][:M], ref_pot) < 1e-3
        assert rel(res["gradient"][:M], ref_grad) < 1e-3


@pytest.mark.parametrize("args,msg", [
    (["demo", "--kernel", "yukawa"], "--kernel yukawa needs --lam"),
    (["demo", "--kernel", "helmholtz"], "--kernel helmholtz needs --kappa"),
    (["demo", "--kernel", "yukawa", "--lam", "0"], "--lam must be finite and > 0, got 0.0"),
    (["demo", "--kernel", "helmholtz", "--kappa", "inf"], "--kappa must be finite"),
    (["demo", "--lam", "2"], "--lam is a parameter of --kernel yukawa, not of --kernel laplace"),
    (["run", "in.npz", "-o", "out.npz", "--kernel", "helmholtz", "--kappa", "3"],
     "aotfmm run reads and writes real arrays only"),
])
def test_cli_kernel_errors(args, msg, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("aotfmm: error: ") and msg in err and err.count("\n") == 1
