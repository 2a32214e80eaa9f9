"""Dipole sources, several densities in one traversal, fields at sources and targets at once
(issue "parity with FMM3D"): every combination against a plain numpy direct sum."""
import numpy as np
import pytest

import aotfmm
from aotfmm import evaluate
from conftest import density_reference, rel_err, slow_if

N_SRC, N_TRG, SAMPLE = 2500, 1200, 300
TERMS = ("charges", "dipoles", "both")


def problem(rng, k, dtype):
    centers = rng.random((4, 3))
    src = centers[rng.integers(0, 4, N_SRC)] + 0.08 * rng.standard_normal((N_SRC, 3))
    trg = rng.random((N_TRG, 3)) * 1.4 - 0.2
    q = rng.standard_normal((N_SRC, k))
    d = rng.standard_normal((N_SRC, k, 3))
    return src.astype(dtype), trg.astype(dtype), q, d


def densities(terms, q, d, k):
    """The arguments as a user passes them: k = 1 as (n,) / (n, 3), else (n, k) / (n, k, 3)."""
    qq = None if terms == "dipoles" else (q[:, 0] if k == 1 else q)
    dd = None if terms == "charges" else (d[:, 0] if k == 1 else d)
    return qq, dd


def as_kn(pot, grad, k):
    """Public shapes -> (k, n) and (k, n, 3)."""
    if k == 1:
        return pot[None], None if grad is None else grad[None]
    return pot.T, None if grad is None else grad.transpose(1, 0, 2)


CASES = [slow_if(eps < 1e-8, t, k, eps, np.float64) for t in TERMS for k in (1, 3)
         for eps in (1e-3, 1e-6, 1e-9)]
CASES += [(t, k, eps, np.float32) for t in TERMS for k in (1, 3) for eps in (1e-3, 1e-5)]
# k = 6 charges only / dipoles only: the kernels sweep four densities at once (two with
# gradients, as k = 3 does), then the rest
CASES += [(t, 6, eps, dt) for t in ("charges", "dipoles")
          for eps, dt in ((1e-6, np.float64), (1e-5, np.float32))]


@pytest.mark.parametrize("terms,k,eps,dtype", CASES)
def test_every_combination_against_direct_sum(rng, terms, k, eps, dtype):
    src, trg, q, d = problem(rng, k, dtype)
    qq, dd = densities(terms, q, d, k)
    # small leaves so that every operator (M2L over several levels, M2M, L2L) takes part
    plan = aotfmm.Fmm(src, trg, at_sources=True, dipoles=terms != "charges", eps=eps, ncrit=48)
    assert plan.stats["levels"] >= 4
    full = plan.fields(qq, dipoles=dd, pg=2, pgt=2)
    s_idx = rng.choice(N_SRC, SAMPLE, replace=False)
    t_idx = rng.choice(N_TRG, SAMPLE, replace=False)
    src64, trg64 = src.astype(np.float64), trg.astype(np.float64)
    qr = None if qq is None else q
    dr = None if dd is None else d
    for pot, grad, pts, idx in ((full.pot, full.grad, src64, s_idx),
                                (full.pottarg, full.gradtarg, trg64, t_idx)):
        assert pot.dtype == dtype and grad.dtype == dtype
        assert pot.shape == ((len(pts),) if k == 1 else (len(pts), k))
        assert grad.shape == ((len(pts), 3) if k == 1 else (len(pts), k, 3))
        p_, g_ = as_kn(pot, grad, k)
        ref_p, ref_g = density_reference(src64, qr, dr, pts[idx])
        for col in range(k):
            assert rel_err(p_[col, idx], ref_p[col]) <= eps
            assert rel_err(g_[col, idx], ref_g[col]) <= eps
    # each output alone, and potential-only requests, give the same numbers
    # (a float64 plan at eps >= 1e-6 takes its pair terms in float32, and its potential-only
    # loops round them differently from the gradient loops)
    mixed = plan._core.mixed_near
    rt = 1e-12 if dtype == np.float64 and not mixed else 1e-6 if dtype == np.float64 else 1e-5
    for pg, pgt in ((1, 0), (0, 1), (2, 1), (1, 2)):
        part = plan.fields(qq, dipoles=dd, pg=pg, pgt=pgt)
        assert (part.pot is None) == (pg == 0) and (part.pottarg is None) == (pgt == 0)
        assert (part.grad is None) == (pg < 2) and (part.gradtarg is None) == (pgt < 2)
        if pg:
            np.testing.assert_allclose(part.pot, full.pot, rtol=rt, atol=rt * abs(full.pot).max())
        if pgt:
            np.testing.assert_allclose(part.pottarg, full.pottarg, rtol=rt,
                                       atol=rt * abs(full.pottarg).max())


@pytest.mark.parametrize("terms", TERMS)
def test_one_call_lfmm_and_plans_with_one_output_set(rng, terms):
    k = 2
    src, trg, q, d = problem(rng, k, np.float64)
    qq, dd = densities(terms, q, d, k)
    ref_s = density_reference(src, None if qq is None else q, None if dd is None else d, src)
    ref_t = density_reference(src, None if qq is None else q, None if dd is None else d, trg)
    res = aotfmm.lfmm(src, qq, trg, dipoles=dd, pg=2, pgt=1, eps=1e-6)
    assert res.gradtarg is None
    assert rel_err(res.pot.T, ref_s[0]) <= 1e-6 and rel_err(res.pottarg.T, ref_t[0]) <= 1e-6
    assert rel_err(res.grad.transpose(1, 0, 2), ref_s[1]) <= 1e-6
    only_src = aotfmm.lfmm(src, qq, dipoles=dd, pg=1, eps=1e-6)
    assert only_src.pottarg is None and rel_err(only_src.pot.T, ref_s[0]) <= 1e-6
    only_trg = aotfmm.lfmm(src, qq, trg, dipoles=dd, pg=0, pgt=2, eps=1e-6)
    assert only_trg.pot is None and rel_err(only_trg.gradtarg.transpose(1, 0, 2),
                                            ref_t[1]) <= 1e-6
    # laplace() and Fmm.evaluate take dipoles too
    pot, grad = aotfmm.laplace(src, qq, trg, dipoles=dd, gradient=True, eps=1e-6)
    assert rel_err(pot.T, ref_t[0]) <= 1e-6 and rel_err(grad.transpose(1, 0, 2), ref_t[1]) <= 1e-6
    pd = aotfmm.direct(src, qq, trg, dipoles=dd)
    assert rel_err(pd.T, ref_t[0]) <= 1e-12


def test_p2l_and_m2p_carry_dipoles(rng):
    """Big leaves and a low order, so X-list sources go through P2L and W lists through M2P."""
    n = 6000
    centers = rng.random((3, 3))
    src = centers[rng.integers(0, 3, n)] + 0.02 * rng.standard_normal((n, 3))
    trg = rng.random((3000, 3)) * 1.6 - 0.3
    d = rng.standard_normal((n, 3))
    plan = aotfmm.Fmm(src, trg, at_sources=True, dipoles=True, p=6, ncrit=400)
    assert any(e.p2l is not None for e in plan._core.down_levels) and len(plan._core.m2p_boxes)
    f = plan.fields(dipoles=d, pg=2, pgt=2)
    idx = rng.choice(3000, 300, replace=False)
    ref_p, ref_g = density_reference(src, None, d[:, None], trg[idx])
    assert rel_err(f.pottarg[idx], ref_p[0]) <= 1e-3
    assert rel_err(f.gradtarg[idx], ref_g[0]) <= 1e-3


@pytest.mark.parametrize("eps", (1e-6, 1e-7))
def test_several_densities_equal_column_runs(rng, eps):
    """Columns of a k = 4 run (charges and dipoles) against one run per column. At eps 1e-6
    the pair terms are float32 (p2p_multi_mixed) and k charge vectors' loops take two or four
    densities a sweep, one alone: their float32 sums may be rounded in another order (up to
    ~1e-7 of the largest value measured, depending on the build's vectorisation), so there
    columns agree to 1e-6 of it; float64 pair terms (eps 1e-7) to 1e-10."""
    src, trg, q, d = problem(rng, 4, np.float64)
    plan = aotfmm.Fmm(src, dipoles=True, eps=eps, ncrit=64)
    assert plan._core.mixed_near == (eps >= 1e-6)
    rt, at = (0.0, 1e-6) if plan._core.mixed_near else (1e-10, 1e-12)
    pot, grad = plan.evaluate(q, dipoles=d, gradient=True)
    for col in range(4):
        p1, g1 = plan.evaluate(q[:, col], dipoles=d[:, col], gradient=True)
        np.testing.assert_allclose(pot[:, col], p1, rtol=rt, atol=at * abs(p1).max())
        np.testing.assert_allclose(grad[:, col], g1, rtol=rt, atol=at * abs(g1).max())


@pytest.mark.parametrize("terms", ("charges", "dipoles"))
@pytest.mark.parametrize("k", (4, 5, 9))
def test_blocked_densities_equal_column_runs(rng, terms, k, monkeypatch):
    """Charges only or dipoles only, k >= 4: the density kernels (P2P, P2M/P2L, L2P/M2P)
    sweep four densities at a time and the rest one by one; every column must equal its own
    single-density run (other loops), at sources and at separate targets. (A single charge
    vector at eps 1e-6 would take float32 pair terms, k densities float64 ones: off here, so
    that the loops are compared to rounding.)"""
    monkeypatch.setattr(evaluate, "_MIXED_NEAR", False)
    src, trg, q, d = problem(rng, k, np.float64)
    plan = aotfmm.Fmm(src, trg, at_sources=True, dipoles=terms == "dipoles", eps=1e-6, ncrit=48)
    qq, dd = densities(terms, q, d, k)
    full = plan.fields(qq, dipoles=dd, pg=2, pgt=2)
    for col in range(k):
        one = plan.fields(None if qq is None else np.ascontiguousarray(q[:, col]),
                          dipoles=None if dd is None else np.ascontiguousarray(d[:, col]),
                          pg=2, pgt=2)
        for got, ref in ((full.pot[:, col], one.pot), (full.grad[:, col], one.grad),
                         (full.pottarg[:, col], one.pottarg),
                         (full.gradtarg[:, col], one.gradtarg)):
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * abs(ref).max())


def test_zero_density_column_and_scaling(rng):
    """A zero column stays exactly zero; huge dipoles on tiny coordinates keep their digits."""
    src = rng.random((2000, 3)) * 1e-5
    d = rng.standard_normal((2000, 3, 3)) * 1e150
    d[:, 1] = 0.0
    pot = aotfmm.laplace(src, dipoles=d, eps=1e-6)
    assert (pot[:, 1] == 0).all()
    ref = density_reference(src, None, d[:, [0, 2]] / 1e150, src[:200])[0]
    assert np.isfinite(pot).all()
    assert rel_err(pot[:200, [0, 2]].T / 1e150, ref) <= 1e-6


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(), ValueError, "charges, dipoles or both"),
    (dict(dipoles=np.ones((10, 2))), ValueError, "dipoles must have shape"),
    (dict(dipoles=np.ones((10, 2, 3)), charges=np.ones(10)), ValueError, "same number"),
    (dict(dipoles=np.ones((10, 3, 3)), charges=np.ones((10, 2))), ValueError, "same number"),
    (dict(dipoles=np.full((10, 3), np.nan)), ValueError, "dipoles"),
    (dict(dipoles=np.ones((10, 3), complex)), TypeError, "dipoles"),
])
def test_bad_densities(rng, kwargs, exc, match):
    src = rng.random((10, 3))
    with pytest.raises(exc, match=match):
        aotfmm.laplace(src, **kwargs)
    with pytest.raises(exc, match=match):
        aotfmm.direct(src, **kwargs)


def test_bad_pg_pgt(rng):
    src, trg = rng.random((50, 3)), rng.random((20, 3))
    q = rng.standard_normal(50)
    with pytest.raises(ValueError, match="pg must be 0, 1, 2 or 3"):
        aotfmm.lfmm(src, q, pg=4)
    with pytest.raises(ValueError, match="nothing to compute"):
        aotfmm.lfmm(src, q, trg, pg=0, pgt=0)
    with pytest.raises(ValueError, match="pgt"):
        aotfmm.lfmm(src, q, pgt=1)
    plan = aotfmm.Fmm(src, trg)  # targets only
    with pytest.raises(ValueError, match="at_sources"):
        plan.fields(q, pg=1)
    with pytest.raises(ValueError, match="at_sources=False needs targets"):
        aotfmm.Fmm(src, at_sources=False)


def test_dipoles_on_a_charge_plan_warn(rng):
    src = rng.random((300, 3))
    plan = aotfmm.Fmm(src, eps=1e-6)
    with pytest.warns(aotfmm.AccuracyWarning, match="dipoles=True"):
        plan.evaluate(dipoles=rng.standard_normal((300, 3)))
    assert aotfmm.Fmm(src, eps=1e-6, dipoles=True).p == plan.p + 1


def test_dipole_overflow_raises_instead_of_inf(rng):
    src = rng.random((100, 3)) * 1e-200
    d = rng.standard_normal((100, 3)) * 1e300
    with pytest.raises(FloatingPointError, match="overflows"):
        aotfmm.laplace(src, dipoles=d)
    with pytest.raises(FloatingPointError, match="overflows"):
        aotfmm.direct(src, dipoles=d)


@pytest.mark.parametrize("family", ["laplace", "yukawa", "helmholtz"])
@pytest.mark.parametrize("dtype,r", [(np.float32, 1e-8), (np.float32, 1e-11),
                                     (np.float64, 1e-70)])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_close_dipoles_whose_field_fits_do_not_overflow(family, dtype, r, k):
    """Two dipoles r apart beside two points a unit away: the gradient ~|d|/r^3 fits the
    dtype, but 1/r^5 (float32: from r ~ 1e-8; float64: 1e-62) does not. Their terms are
    formed from the unit vector, 1/r^2 and 1/r^3, so nothing overflows that the field does
    not (Laplace since 2026-12-02; Yukawa and Helmholtz raised FloatingPointError until later
    that day). Closed form at the pair (the unit-distance points add ~1e-16 of it and less),
    with L = 0 (Laplace), lam r (Yukawa) or -i kappa r (Helmholtz), E = exp(-L),
    d = (1, 1, 1), u = (x - y)/r = -+e_x: pot = (d . u) E (1 + L)/(4 pi r^2),
    grad = (d E (1 + L) - (d . u) u E (3 + 3 L + L^2))/(4 pi r^3) (numpy's 1/r^5 would
    overflow too)."""
    src = np.array([[0, 0, 0], [r, 0, 0], [1, 1, 1], [-1, 0.5, -1]], dtype=dtype)
    kern = {"laplace": aotfmm.Laplace(), "yukawa": aotfmm.Yukawa(1.5),
            "helmholtz": aotfmm.Helmholtz(2.0)}[family]
    d = np.ones((4, k, 3)) if k > 1 else np.ones((4, 3))
    scale = (1 + 0.5j) if family == "helmholtz" else 1.0
    d = (d * scale).astype(dtype) if family != "helmholtz" else d * scale
    pot, grad = aotfmm.Fmm(src, kernel=kern, dipoles=True).evaluate(dipoles=d, gradient=True)
    rr = float(src[1, 0])
    big_l = {"laplace": 0.0, "yukawa": 1.5 * rr, "helmholtz": -2.0j * rr}[family]
    e = np.exp(-big_l)
    want_p = scale * np.array([-1.0, 1.0]) * e * (1 + big_l) / (4 * np.pi * rr ** 2)
    ex = np.array([1.0, 0.0, 0.0])
    want_g = scale * (np.ones(3) * e * (1 + big_l) - ex * e * (3 + 3 * big_l + big_l ** 2)) \
        / (4 * np.pi * rr ** 3)
    p2, g2 = pot.reshape(4, k)[:2], grad.reshape(4, k, 3)[:2]
    assert np.isfinite(g2).all()
    for col in range(k):
        np.testing.assert_allclose(p2[:, col], want_p, rtol=1e-5)
        np.testing.assert_allclose(g2[:, col], np.stack([want_g, want_g]), rtol=1e-5)


@pytest.mark.parametrize("method", ["direct", "fmm"])
def test_near_coincident_points_with_dipoles(rng, method):
    """Sources 1e-8 .. 1e-40 apart: below ~1e-19 the float64 kernels' float32 1/r estimate
    gives up and the geometry is redone exactly. Charges and dipoles, k = 2, per point."""
    base = rng.random((3000, 3)) * 2 - 1
    gaps = [1e-8, 1e-12, 1e-17, 1e-20, 1e-25, 1e-40]
    close = np.array([[0.0, 0.0, 0.0]] + [[g, 0.0, -g] if i % 2 else [0.0, g, 0.0]
                                          for i, g in enumerate(gaps)])
    src = np.vstack([base, close, [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]])
    n = len(src)
    q, d = rng.standard_normal((n, 2)), rng.standard_normal((n, 2, 3))
    if method == "direct":
        pot, grad = aotfmm.direct(src, q, dipoles=d, gradient=True)
        tol = 1e-12
    else:
        pot, grad = aotfmm.laplace(src, q, dipoles=d, gradient=True, eps=1e-6)
        tol = 1e-6
    ref_p, ref_g = density_reference(src, q, d, src)
    k = slice(3000, 3000 + len(close))
    for col in range(2):
        np.testing.assert_allclose(pot[k, col], ref_p[col, k], rtol=tol, atol=0)
        gscale = np.abs(ref_g[col, k]).max(axis=1, keepdims=True)
        assert np.all(np.abs(grad[k, col] - ref_g[col, k]) <= tol * gscale)
        assert rel_err(pot[:3000, col], ref_p[col, :3000]) < tol
        assert rel_err(grad[:3000, col], ref_g[col, :3000]) < tol
