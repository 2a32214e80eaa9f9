"""Hessians (FMM3D's pg/pgt = 3) against a numpy direct sum, and their API."""
import warnings

import numpy as np
import pytest

import aotfmm
from aotfmm import AccuracyWarning
from aotfmm.evaluate import choose_parameters
from conftest import SLOW_P, hessian_reference, rel_err, slow_if, sphere, uniform


def points(rng, kind, n):
    if kind in ("uniform", "sphere"):
        return {"uniform": uniform, "sphere": sphere}[kind](rng, n)
    return rng.random((4, 3))[rng.integers(0, 4, n)] + 0.03 * rng.standard_normal((n, 3))


@pytest.mark.parametrize("terms,kind,eps", [
    # separate targets + Hessians at eps 1e-6 take p = 13, with dipoles 14: slow
    slow_if(choose_parameters(eps, separate_targets=True, dipoles=terms != "charges",
                              hessians=True)[0] >= SLOW_P, terms, kind, eps)
    for kind, eps in (("uniform", 1e-3), ("clustered", 1e-4), ("sphere", 1e-4),
                      ("clustered", 1e-6), ("sphere", 1e-6))
    for terms in ("charges", "dipoles", "both")])
def test_hessians_at_sources_and_targets(rng, terms, kind, eps):
    n = 6000
    src = points(rng, kind, n)
    trg = rng.random((800, 3)) * 1.4 - 0.2
    q = rng.standard_normal(n) if terms != "dipoles" else None
    d = rng.standard_normal((n, 3)) if terms != "charges" else None
    f = aotfmm.lfmm(src, q, trg, dipoles=d, pg=3, pgt=3, eps=eps)
    assert f.hess.shape == (n, 6) and f.hesstarg.shape == (800, 6)
    idx = rng.choice(n, 600, replace=False)
    for got, where in (((f.pot[idx], f.grad[idx], f.hess[idx]), src[idx]),
                       ((f.pottarg, f.gradtarg, f.hesstarg), trg)):
        for value, ref in zip(got, hessian_reference(src, q, d, where)):
            assert rel_err(value, ref) < eps


@pytest.mark.slow  # eps 1e-8, separate targets, Hessians: p = 14
def test_hessian_is_the_gradients_derivative_and_traceless(rng):
    """Independent of any reference sum: away from the sources the Hessian is symmetric by
    construction, traceless (the potential is harmonic) and the gradient's finite difference."""
    src = rng.random((3000, 3))
    q = rng.standard_normal(3000)
    x0 = np.array([[1.7, 0.4, 0.6]])
    h = 3e-4
    shifts = np.vstack([x0 + h * e for e in np.eye(3)] + [x0 - h * e for e in np.eye(3)])
    f = aotfmm.lfmm(src, q, np.vstack([x0, shifts]), pg=0, pgt=3, eps=1e-8)
    hess, grad = f.hesstarg, f.gradtarg
    assert abs(hess[0, :3].sum()) < 1e-7 * np.abs(hess[0]).max()
    fd = (grad[1:4] - grad[4:7]) / (2 * h)          # row a: d grad / d x_a
    full = np.array([[hess[0, 0], hess[0, 3], hess[0, 4]],
                     [hess[0, 3], hess[0, 1], hess[0, 5]],
                     [hess[0, 4], hess[0, 5], hess[0, 2]]])
    np.testing.assert_allclose(fd, full, rtol=0, atol=2e-6 * np.abs(full).max())


def test_several_densities_and_float32(rng):
    n = 4000
    src = rng.random((n, 3))
    q = rng.standard_normal((n, 2))
    d = rng.standard_normal((n, 2, 3))
    plan = aotfmm.Fmm(src, dipoles=True, hessians=True, eps=1e-6)
    f = plan.fields(q, dipoles=d, pg=3)
    assert f.hess.shape == (n, 2, 6) and f.pottarg is None and f.hesstarg is None
    idx = rng.choice(n, 400, replace=False)
    for col in range(2):
        ref = hessian_reference(src, q[:, col], d[:, col], src[idx])
        assert rel_err(f.hess[idx, col], ref[2]) < 1e-6
        assert rel_err(f.grad[idx, col], ref[1]) < 1e-6
    f32 = aotfmm.lfmm(src.astype(np.float32), q[:, 0].astype(np.float32), pg=3, eps=1e-3)
    assert f32.hess.dtype == np.float32
    ref = hessian_reference(src.astype(np.float32), q[:, 0], None, src[idx].astype(np.float32))
    assert rel_err(f32.hess[idx], ref[2]) < 1e-3


@pytest.mark.parametrize("kind", ("uniform", "clustered"))
@pytest.mark.parametrize("threads,mixed", ((1, True), (2, True), (1, False), (2, False)))
def test_one_charge_vector_at_its_sources_by_newtons_third_law(rng, kind, threads, mixed,
                                                               monkeypatch):
    """One charge vector, fields at the sources: the near field's pairs are computed once for
    both points (p2p_sym_hess; at eps 1e-6 with float32 pair terms, p2p_sym_hess_mixed).
    Against numpy, and against the same plan's two-column run, whose near field takes every
    pair from its target's side in float64 (p2p_hess): to rounding with float64 pair terms,
    to eps with float32 ones."""
    from aotfmm import evaluate
    monkeypatch.setattr(evaluate, "_MIXED_NEAR", mixed)
    n = 5000
    src = points(rng, kind, n)
    q = rng.standard_normal(n)
    plan = aotfmm.Fmm(src, hessians=True, eps=1e-6, threads=threads, ncrit=150)
    assert plan._core.mixed_near == mixed
    tol = (1e-6, 1e-6) if mixed else (1e-11, 1e-13)
    f = plan.fields(q, pg=3)
    two = plan.fields(np.stack([q, -q], axis=1), pg=3)
    idx = rng.choice(n, 400, replace=False)
    for value, ref in zip((f.pot[idx], f.grad[idx], f.hess[idx]),
                          hessian_reference(src, q, None, src[idx])):
        assert rel_err(value, ref) < 1e-6
    for a, b in ((f.pot, two.pot[:, 0]), (f.grad, two.grad[:, 0]), (f.hess, two.hess[:, 0]),
                 (f.hess, -two.hess[:, 1])):
        np.testing.assert_allclose(a, b, rtol=tol[0], atol=tol[1] * np.abs(b).max())


@pytest.mark.parametrize("layout", ("duplicates", "hairs", "offset"))
def test_hessians_with_float32_pair_terms_meet_eps(rng, layout):
    """p2p_sym_hess_mixed at eps 1e-6 (float64 plan): every point twice (coincident pairs: 0,
    in float32 and in float64), pairs 1e-11 apart (their leaves redone in float64), and the
    cube 1e6 from the origin (leaf-local coordinates); numpy reference."""
    n = 3000
    x = rng.random((n, 3))
    if layout == "duplicates":
        x = np.concatenate([x, x])
    elif layout == "hairs":
        x = np.concatenate([x, x[:500] + 1e-11 * rng.standard_normal((500, 3))])
    else:
        x = x + 1e6
    q = rng.standard_normal(len(x))
    plan = aotfmm.Fmm(x, hessians=True, eps=1e-6, ncrit=100)
    assert plan._core.mixed_near
    f = plan.fields(q, pg=3)
    near = np.arange(n - 5, min(n + 5, len(x)))  # around the duplicates' / hairs' seam
    idx = np.concatenate([rng.choice(len(x), 300, replace=False), near])
    for value, ref in zip((f.pot[idx], f.grad[idx], f.hess[idx]),
                          hessian_reference(x, q, None, x[idx])):
        assert rel_err(value, ref) < 1e-6


def test_near_coincident_float32_pairs_do_not_overflow(rng):
    """1/r^7 of points 1e-6 apart overflows float32; the Hessian itself (~1/r^4) does not."""
    src = np.vstack([rng.random((500, 3)), [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5 + 1e-6]]])
    src = src.astype(np.float32)
    q = rng.standard_normal(502).astype(np.float32)
    d = rng.standard_normal((502, 3)).astype(np.float32)
    f = aotfmm.lfmm(src, q, dipoles=d, pg=3, eps=1e-3)
    assert np.isfinite(f.hess).all()
    ref = hessian_reference(src, q, d, src[-2:])
    assert rel_err(f.hess[-2:], ref[2]) < 1e-3


@pytest.mark.parametrize("terms", ("charges", "dipoles"))
def test_pairs_closer_than_a_float32_estimate_handles(rng, terms):
    """Points closer than ~1e-19 (in the kernels' frame), where the other pair loops' float32
    estimate of 1/r gives up: the Hessian loops (exact 1/r) must not come out NaN. Two
    uncharged points 1e-20 apart at the origin (their leaf-local offsets keep the distance)
    beside 3000 charged ones, and two charged points 1e-9 apart."""
    n = 3000
    src = np.vstack([rng.random((n, 3)), [[0.0, 0.0, 0.0], [1e-20, 0.0, 0.0]],
                     [[0.3, 0.6, 0.2], [0.3, 0.6, 0.2 + 1e-9]]])
    q = rng.standard_normal(n + 4) if terms == "charges" else None
    d = rng.standard_normal((n + 4, 3)) if terms == "dipoles" else None
    for a in (q, d):
        if a is not None:
            a[n:n + 2] = 0.0
    f = aotfmm.lfmm(src, q, dipoles=d, pg=3, eps=1e-6)
    assert np.isfinite(f.hess).all() and np.isfinite(f.grad).all()
    idx = np.concatenate([rng.choice(n, 300, replace=False), np.arange(n, n + 4)])
    for value, ref in zip((f.pot[idx], f.grad[idx], f.hess[idx]),
                          hessian_reference(src, q, d, src[idx])):
        assert rel_err(value, ref) < 1e-6
        assert rel_err(value[-4:-2], ref[-4:-2]) < 1e-6  # the uncharged pair's own fields


def test_levels_and_warnings(rng):
    src = rng.random((500, 3))
    q = rng.standard_normal(500)
    plan = aotfmm.Fmm(src, eps=1e-6, hessians=True)
    assert plan.p == aotfmm.Fmm(src, eps=1e-6).p + 1
    trg = rng.random((10, 3))
    assert aotfmm.Fmm(src, trg, eps=1e-6, hessians=True).p == aotfmm.Fmm(src, trg, eps=1e-6).p + 3
    with pytest.raises(ValueError, match="0, 1, 2 or 3"):
        plan.fields(q, pg=4)
    f = plan.fields(q, pg=2)
    assert f.hess is None and f.grad is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan.fields(q, pg=3)  # built for Hessians, eps 1e-6: no warning
        aotfmm.Fmm(src, p=6).fields(q, pg=3)  # explicit p: the caller chose
    with pytest.warns(AccuracyWarning, match="hessians=True"):
        aotfmm.Fmm(src, eps=1e-6).fields(q, pg=3)


@pytest.mark.slow  # eps 1e-9 with Hessians: p = 13
def test_hessians_below_their_floor_warn(rng):
    src = rng.random((500, 3))
    q = rng.standard_normal(500)
    with pytest.warns(AccuracyWarning, match="Hessians reach about"):
        aotfmm.Fmm(src, eps=1e-9, hessians=True).fields(q, pg=3)


@pytest.mark.parametrize("eps", [1e-4, slow_if(True, 1e-6)])  # (p = 11, 13)
def test_far_targets_around_two_tiny_clusters(rng, eps):
    """Targets that see only expansions (the hardest case for derivatives): Hessians of a plan
    built for them meet eps (at 1e-6 one order less than in 2026-12-03's choice, p = 10, gave
    up to 1.4x eps)."""
    n = 6000
    src = np.vstack([rng.standard_normal((n // 2, 3)) * 1e-3,
                     rng.standard_normal((n // 2, 3)) * 1e-3 + [10, 0, 0]])
    trg = rng.random((1500, 3)) * 14 - 2
    q = rng.standard_normal(n)
    f = aotfmm.lfmm(src, q, trg, pg=0, pgt=3, eps=eps)
    for value, ref in zip((f.pottarg, f.gradtarg, f.hesstarg),
                          hessian_reference(src, q, None, trg)):
        assert rel_err(value, ref) < eps
