"""The regular part of the local expansions (``evaluate.Plan._regular_split``).

A box's local field is kept as ``c f(|x - centre|)`` plus the field of its equivalent density,
f the family's regular solution (1 for Laplace). Without that, gradients in leaves many levels
below their far sources lost accuracy level by level: with a 1e-6-wide cluster of uncharged
points 19 levels deep, the gradient error at eps 1e-6 was ~1e-3 (eps 1e-4: ~3e-2). Checked here
against numpy direct sums (tests/conftest.py, tests/_helpers.py), for Laplace (potential, gradient, Hessian),
Yukawa and Helmholtz (k = 2 densities), with the targets as the sources and apart.

The bounds are 10 eps: points whose whole field is far (no charge near them) see the local
expansions' error at their positions undiluted by an exact near field, measured at 2-5 eps for
such clusters (see the README, "Accuracy"); without the regular part they miss by 100-1000x.
"""
import warnings

import numpy as np
import pytest

import aotfmm
from aotfmm.families import Helmholtz, Yukawa
from conftest import hessian_reference


def _cluster_case(seed, width, n_cluster=600, n_uniform=800):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.2, 0.8, 3)
    cluster = centre + width * rng.random((n_cluster, 3))
    return cluster, rng.random((n_uniform, 3)), rng


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_regular_series_matches_closed_forms():
    r = np.array([0.05, 0.3, 0.9, 1.4, 1.9])
    lam = 1.1
    lam = 1.1
    for fam, mu, sf in ((Yukawa(lam), lam, np.sinh), (Helmholtz(0.9 + 0.3j), 0.9 + 0.3j, np.sin)):
        f, df, g, dg = fam.regular(r * r)
        z = mu * r
        # f = sf(z) / z; grad f = df x with df = f'(r) / r; e_i = x_i g, g proportional to
        # f'(r) / r and normalised to g(0) = 1. The closed forms cancel at small z (the series
        # does not): rtol grows for the derivatives.
        cf = np.cosh if sf is np.sinh else np.cos
        sign = 1.0 if sf is np.sinh else -1.0
        np.testing.assert_allclose(f, sf(z) / z, rtol=1e-14)
        fprime = mu * (z * cf(z) - sf(z)) / (z * z)                    # d f / d r
        np.testing.assert_allclose(df, fprime / r, rtol=1e-12)
        np.testing.assert_allclose(g, sign * 3.0 * (z * cf(z) - sf(z)) / z ** 3, rtol=1e-12)
        # dg: d g / d r = dg r
        gprime = sign * 3.0 * mu * (z * z * sf(z) * sign - 3.0 * (z * cf(z) - sf(z))) / z ** 4
        np.testing.assert_allclose(dg * r, gprime, rtol=1e-8)
    f, df, g, dg = aotfmm.Laplace().regular(r * r)
    assert (f == 1).all() and (df == 0).all() and (g == 1).all() and (dg == 0).all()
    # no cancellation at tiny r: f = 1 + t / 6, df = 2 mu2 / 6, g = 1 + t / 10 to rounding
    r2 = np.array([1e-20, 1e-12])
    f, df, g, dg = Yukawa(2.0).regular(r2)
    np.testing.assert_allclose(f, 1.0 + 4.0 * r2 / 6.0, rtol=1e-15)
    np.testing.assert_allclose(df, 4.0 / 3.0, rtol=1e-11)
    np.testing.assert_allclose(g, 1.0 + 4.0 * r2 / 10.0, rtol=1e-15)
    np.testing.assert_allclose(dg, 4.0 / 5.0, rtol=1e-11)


@pytest.mark.parametrize("eps", [1e-4, 1e-6])
@pytest.mark.parametrize("seed", [2, 3])
def test_laplace_deep_cluster(seed, eps):
    """Uncharged points 1e-6 wide (19 levels) among charged uniform ones: potential and
    gradient at the cluster within 10 eps (without the regular part: 1e-3 at eps 1e-6), the
    Hessian within 100 eps (without: 49, i.e. nothing right; with the cluster 1e-2 wide, 5
    levels, it is 11 eps: the far-only floor, see the module docstring)."""
    cluster, uniform, rng = _cluster_case(seed, 1e-6)
    pts = np.concatenate([cluster, uniform])
    q = np.concatenate([np.zeros(len(cluster)), rng.standard_normal(len(uniform))])
    fmm = aotfmm.Fmm(pts, eps=eps, threads=2, hessians=True)
    assert fmm.stats["levels"] >= 16, fmm.stats["levels"]
    out = fmm.fields(q, pg=3)
    idx = np.arange(0, len(cluster), 3)
    pot, grad, hess = hessian_reference(pts, q, None, pts[idx])
    assert _rel(out.pot[idx], pot) <= 10 * eps
    assert _rel(out.grad[idx], grad) <= 10 * eps
    assert _rel(out.hess[idx], hess) <= 100 * eps


@pytest.mark.parametrize("eps", [1e-4, 1e-6])
def test_laplace_deep_cluster_separate_targets(eps):
    cluster, uniform, rng = _cluster_case(3, 1e-6)
    q = rng.standard_normal(len(uniform))
    fmm = aotfmm.Fmm(uniform, cluster, eps=eps, threads=2)
    pot, grad = fmm.evaluate(q, gradient=True)
    want_pot, want_grad, _ = hessian_reference(uniform, q, None, cluster)
    assert _rel(pot, want_pot) <= 10 * eps
    assert _rel(grad, want_grad) <= 10 * eps


def _family_case(kernel, width, eps, seed=2):
    cluster, uniform, rng = _cluster_case(seed, width, 400, 600)
    pts = np.concatenate([cluster, uniform])
    vdt = complex if kernel.complex else float
    q = np.zeros((len(pts), 2), dtype=vdt)
    q[len(cluster):] = rng.standard_normal((len(uniform), 2))
    if kernel.complex:
        q[len(cluster):] *= np.exp(1j * rng.uniform(0, 2 * np.pi, (len(uniform), 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", aotfmm.AccuracyWarning)
        fmm = aotfmm.Fmm(pts, kernel=kernel, eps=eps, threads=2)
    pot, grad = fmm.evaluate(q, gradient=True)
    idx = np.arange(0, len(cluster), 2)
    k_mat, dk = kernel.field_reference(pts[idx], pts, gradient=True)
    assert pot.shape == (len(pts), 2) and grad.shape == (len(pts), 2, 3), (pot.shape, grad.shape)
    for j in range(2):
        assert _rel(pot[idx, j], k_mat @ q[:, j]) <= 10 * eps
        assert _rel(grad[idx, j], np.einsum("ijk,j->ik", dk, q[:, j])) <= 10 * eps


@pytest.mark.parametrize("kernel", [Yukawa(3.0), Helmholtz(2.0 + 0.5j)], ids=repr)
def test_families_regular_part(kernel):
    """The regular part f = sinh(lam r) / (lam r) or sin(kappa r) / (kappa r) and its
    gradient at the targets (a wrong f would be off by ~ the whole local field)."""
    _family_case(kernel, 1e-3, 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", [Yukawa(3.0), Helmholtz(2.0)], ids=repr)
def test_families_deep_cluster(kernel):
    _family_case(kernel, 1e-5, 1e-4)
