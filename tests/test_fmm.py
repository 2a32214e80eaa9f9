"""The FMM end to end against an independent numpy direct sum (tests/conftest.py)."""
import numpy as np
import pytest

import aotfmm
from conftest import direct_reference, rel_err, slow_if, sphere, uniform


def clustered(rng, n):
    centers = rng.random((5, 3))
    return centers[rng.integers(0, 5, n)] + 0.03 * rng.standard_normal((n, 3))


DISTRIBUTIONS = {"uniform": uniform, "sphere": sphere, "clustered": clustered}


def check(src, q, trg, eps, dtype, gradient=True, sample=None, **kw):
    """Run the FMM and compare with the direct sum on (a sample of) the targets."""
    result = aotfmm.laplace(src, q, trg, eps=eps, gradient=gradient, dtype=dtype, **kw)
    pot, grad = result if gradient else (result, None)
    targets = src if trg is None else trg
    idx = np.arange(len(targets)) if sample is None else sample
    ref_pot, ref_grad = direct_reference(src, q, targets[idx])
    if not np.linalg.norm(ref_pot):  # e.g. a single point: nothing to compare relatively
        assert (pot[idx] == 0).all() and (grad is None or (grad[idx] == 0).all())
        return pot, grad
    e_pot = rel_err(pot[idx], ref_pot)
    assert e_pot <= eps, f"potential error {e_pot:.2e} > eps {eps:g}"
    if gradient:
        e_grad = rel_err(grad[idx], ref_grad)
        assert e_grad <= eps, f"gradient error {e_grad:.2e} > eps {eps:g}"
    return pot, grad


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("eps", [1e-3, 1e-6, slow_if(True, 1e-9)])
def test_float64_accuracy(rng, dist, eps):
    src = DISTRIBUTIONS[dist](rng, 6000)
    q = rng.standard_normal(6000)
    check(src, q, None, eps, np.float64, sample=rng.choice(6000, 600, replace=False))


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("eps", [1e-3, 1e-5])
def test_float32_accuracy(rng, dist, eps):
    src = DISTRIBUTIONS[dist](rng, 6000).astype(np.float32)
    q = rng.standard_normal(6000).astype(np.float32)
    pot, grad = check(src, q, None, eps, np.float32, sample=rng.choice(6000, 600, replace=False))
    assert pot.dtype == np.float32 and grad.dtype == np.float32


@pytest.mark.parametrize("eps", [1e-3, 1e-6, slow_if(True, 1e-9)])
def test_separate_sources_and_targets(rng, eps):
    src = clustered(rng, 5000)
    trg = uniform(rng, 3000) * 1.4 - 0.2  # overlapping, partly outside the sources' box
    q = rng.standard_normal(5000)
    check(src, q, trg, eps, np.float64, sample=rng.choice(3000, 500, replace=False))


def test_larger_problem(rng):
    n = 20000
    src = uniform(rng, n)
    q = rng.standard_normal(n)
    check(src, q, None, 1e-6, np.float64, sample=rng.choice(n, 400, replace=False))


@pytest.mark.slow
@pytest.mark.parametrize("dist", ["uniform", "clustered"])
def test_eps_1e9_on_a_deep_tree(rng, dist):
    """eps 1e-9 with small leaves, so that M2M/L2L/M2L chains run over several levels."""
    n = 12000
    src = DISTRIBUTIONS[dist](rng, n)
    q = rng.standard_normal(n)
    plan = aotfmm.Fmm(src, eps=1e-9, ncrit=40)
    assert plan.stats["levels"] >= 4  # M2L on levels 2 and 3 at least, L2L and M2M between
    pot, grad = plan.evaluate(q, gradient=True)
    idx = rng.choice(n, 300, replace=False)
    ref_pot, ref_grad = direct_reference(src, q, src[idx])
    assert rel_err(pot[idx], ref_pot) <= 1e-9
    assert rel_err(grad[idx], ref_grad) <= 1e-9


def test_plan_reuse_equals_fresh_run(rng):
    src = sphere(rng, 4000)
    plan = aotfmm.Fmm(src, eps=1e-6)
    for _ in range(3):
        q = rng.standard_normal(4000)
        pot, grad = plan.evaluate(q, gradient=True)
        fresh_pot, fresh_grad = aotfmm.laplace(src, q, eps=1e-6, gradient=True)
        np.testing.assert_allclose(pot, fresh_pot, rtol=1e-12, atol=1e-12 * abs(pot).max())
        np.testing.assert_allclose(grad, fresh_grad, rtol=1e-12, atol=1e-12 * abs(grad).max())


def test_multiple_right_hand_sides(rng):
    src = clustered(rng, 3000)
    trg = uniform(rng, 1000)
    q = rng.standard_normal((3000, 4))
    plan = aotfmm.Fmm(src, trg, eps=1e-6)
    pot, grad = plan.evaluate(q, gradient=True)
    assert pot.shape == (1000, 4) and grad.shape == (1000, 4, 3)
    # one traversal for all columns: same operators, summation order may differ; a single
    # column's near field takes float32 pair terms at eps 1e-6 (README, "Mixed precision")
    assert plan._core.mixed_near
    rt = at = 1e-6
    for k in range(4):
        p1, g1 = plan.evaluate(q[:, k], gradient=True)
        np.testing.assert_allclose(pot[:, k], p1, rtol=rt, atol=at * abs(p1).max())
        np.testing.assert_allclose(grad[:, k], g1, rtol=rt, atol=at * abs(g1).max())
        ref_pot, _ = direct_reference(src, q[:, k], trg)
        assert rel_err(pot[:, k], ref_pot) < 1e-6


@pytest.mark.parametrize("block_rows, k, dtype, eps", [
    (5, 1, np.float64, 1e-6), (5, 2, np.float32, 1e-4), (1, 3, np.float64, 1e-6),
    (10 ** 6, 2, np.float32, 1e-4)])
def test_m2l_blocks_of_any_size(rng, monkeypatch, block_rows, k, dtype, eps):
    """M2L runs a transfer vector's pairs in GEMM blocks of M2L_BLOCK_ROWS rows (pairs x
    densities): blocks of one pair, uneven last blocks and whole segments all meet eps."""
    from aotfmm import expansions
    monkeypatch.setattr(expansions, "M2L_BLOCK_ROWS", block_rows)
    src = uniform(rng, 6000)
    q = rng.standard_normal((6000, k))
    plan = aotfmm.Fmm(src, eps=eps, dtype=dtype, ncrit=40, threads=2)
    assert plan.stats["levels"] >= 4  # V lists at several levels, segments of many pairs
    pot, grad = plan.evaluate(q, gradient=True)
    pot, grad = pot.reshape(6000, k), grad.reshape(6000, k, 3)
    for j in range(k):
        ref_pot, ref_grad = direct_reference(src, q[:, j], src)
        assert rel_err(pot[:, j], ref_pot) < eps
        assert rel_err(grad[:, j], ref_grad) < eps


@pytest.mark.parametrize("n", [1, 2, 3, 9])
def test_tiny_problems(rng, n):
    src = uniform(rng, n)
    q = rng.standard_normal(n)
    check(src, q, None, 1e-7, np.float64)


def test_all_points_coincident():
    src = np.full((500, 3), 0.25)
    pot, grad = aotfmm.laplace(src, np.ones(500), gradient=True)
    assert (pot == 0).all() and (grad == 0).all()


def test_coincident_clusters_and_duplicates(rng):
    src = np.repeat(uniform(rng, 300), 20, axis=0)  # 6000 points, 20 copies each
    q = rng.standard_normal(6000)
    check(src, q, None, 1e-6, np.float64, sample=np.arange(0, 6000, 7))


def test_near_coincident_points(rng):
    """Pairs 1e-8 .. 1e-100 apart (in a [-1, 1]^3 box, near its centre so the frame keeps them
    apart): the near field's float32 1/r estimate cannot take squared distances below 1e-38 and
    those targets are redone exactly. Each close point's huge potential and gradient must match
    per point; the ordinary points must still meet eps."""
    base = uniform(rng, 6000) * 2 - 1
    gaps = [1e-8, 1e-12, 1e-17, 1e-20, 1e-25, 1e-40, 1e-100]
    close = np.array([[0.0, 0.0, 0.0]] + [[g, 0.0, -g] if i % 2 else [0.0, g, 0.0]
                                          for i, g in enumerate(gaps)])
    src = np.vstack([base, close, [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]])
    q = rng.standard_normal(len(src))
    pot, grad = aotfmm.laplace(src, q, gradient=True, eps=1e-8)  # p = 11
    ref_pot, ref_grad = direct_reference(src, q, src)
    k = slice(6000, 6000 + len(close))
    np.testing.assert_allclose(pot[k], ref_pot[k], rtol=1e-9, atol=0)
    gscale = np.abs(ref_grad[k]).max(axis=1, keepdims=True)
    assert np.all(np.abs(grad[k] - ref_grad[k]) <= 1e-9 * gscale)
    assert rel_err(pot[:6000], ref_pot[:6000]) < 1e-8
    assert rel_err(grad[:6000], ref_grad[:6000]) < 1e-8


@pytest.mark.parametrize("shape", ["plane", "line"])
def test_degenerate_geometry(rng, shape):
    src = uniform(rng, 5000)
    src[:, 2] = 0.5
    if shape == "line":
        src[:, 1] = 0.5
    q = rng.standard_normal(5000)
    check(src, q, None, 1e-6, np.float64, sample=np.arange(0, 5000, 9))


def test_far_from_origin_and_scaled(rng):
    src = uniform(rng, 3000)
    q = rng.standard_normal(3000)
    ref_pot, ref_grad = direct_reference(src, q, src)
    for scale, shift in [(1e-100, 0.0), (1e100, 0.0), (1.0, 1e7)]:
        pot, grad = aotfmm.laplace(src * scale + shift, q, eps=1e-6, gradient=True)
        assert rel_err(pot * scale, ref_pot) < 1e-6
        assert rel_err(grad * scale ** 2, ref_grad) < 1e-6


def test_float32_plans_take_smaller_table_leaves(rng):
    """float32 plans of more than 64 leaves' points take leaves of 300 points where the
    table says 400, 120 or 80 (float64, fewer points and explicit ncrit keep
    theirs); 26000 uniform points (406 per level-2 box) split to level 3 either way, but
    must still meet eps against numpy."""
    from aotfmm.evaluate import choose_parameters
    big = 64 * 400 + 1
    assert choose_parameters(1e-4, dtype=np.float32, n_points=big) == (6, 300)
    assert choose_parameters(1e-4, dtype=np.float32, n_points=big - 1) == (6, 400)
    assert choose_parameters(1e-4, dtype=np.float64, n_points=big) == (6, 400)
    assert choose_parameters(1e-4) == (6, 400)
    assert choose_parameters(3e-3, dtype=np.float32, n_points=10 ** 6) == (4, 300)
    assert choose_parameters(8e-3, dtype=np.float32, n_points=10 ** 6) == (3, 300)
    assert choose_parameters(3e-3, dtype=np.float32, n_points=64 * 300) == (4, 120)
    assert choose_parameters(3e-3, dtype=np.float64, n_points=10 ** 6) == (4, 120)
    assert choose_parameters(1e-3, dtype=np.float32, n_points=big) == (5, 300)
    assert choose_parameters(1e-3, dtype=np.float64, n_points=big) == (5, 400)
    assert aotfmm.Fmm(uniform(rng, 2500), eps=1e-4, dtype=np.float32).ncrit == 400
    src = uniform(rng, 26000)
    q = rng.standard_normal(26000)
    for eps, nc in ((5e-3, 300), (1e-3, 300), (1e-4, 300), (1e-5, 300)):
        plan = aotfmm.Fmm(src, eps=eps, dtype=np.float32, threads=1)
        assert plan.ncrit == nc and plan.stats["levels"] >= 4
        assert aotfmm.Fmm(src, eps=eps, dtype=np.float32, ncrit=400, threads=1).ncrit == 400
        pot, grad = plan.evaluate(q.astype(np.float32), gradient=True)
        idx = rng.choice(26000, 400, replace=False)
        ref_pot, ref_grad = direct_reference(src, q, src[idx])
        assert rel_err(pot[idx], ref_pot) < eps
        assert rel_err(grad[idx], ref_grad) < eps


def test_explicit_p_and_ncrit(rng):
    src = uniform(rng, 3000)
    q = rng.standard_normal(3000)
    plan = aotfmm.Fmm(src, p=5, ncrit=40)
    assert plan.p == 5 and plan.ncrit == 40
    ref, _ = direct_reference(src, q, src)
    assert rel_err(plan.evaluate(q), ref) < 1e-2


def test_zero_charges_and_empty_sets(rng):
    src = uniform(rng, 100)
    assert (aotfmm.laplace(src, np.zeros(100)) == 0).all()
    assert aotfmm.laplace(np.zeros((0, 3)), np.zeros(0)).shape == (0,)
    pot, grad = aotfmm.laplace(np.zeros((0, 3)), np.zeros(0), src, gradient=True)
    assert (pot == 0).all() and grad.shape == (100, 3)
    assert aotfmm.laplace(src, np.ones(100), np.zeros((0, 3))).shape == (0,)


def test_stats_timings_and_report(rng):
    plan = aotfmm.Fmm(uniform(rng, 5000), eps=1e-3)
    plan.evaluate(np.ones(5000))
    st = plan.stats
    assert st["leaves"] >= 1 and st["levels"] >= 1 and st["p"] == plan.p
    assert set(st["list_sizes"]) == {"u", "v", "w", "x"}
    assert st["list_sizes"]["u"]["max"] <= 60 and st["list_sizes"]["v"]["max"] <= 189
    assert "eval:evaluate_total" in plan.timings and "tree" in plan.timings
    text = plan.report(file=False)
    assert "M2L rank" in text and "p2p" in text


BAD = [
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=1.5), ValueError, "eps"),
    (dict(eps="small"), TypeError, "eps"),
    (dict(eps=1e-9, dtype=np.float32), ValueError, "float32"),
    (dict(eps=1e-11), ValueError, "below what float64 can reach"),
    (dict(p=1), ValueError, "p must be"),
    (dict(p=3.5), TypeError, "p must be"),
    (dict(ncrit=0), ValueError, "ncrit"),
    (dict(dtype=np.int64), ValueError, "dtype"),
    (dict(threads=0), ValueError, "threads"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD)
def test_bad_parameters_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        aotfmm.Fmm(np.random.default_rng(0).random((10, 3)), **kwargs)


def test_bad_charges_raise():
    plan = aotfmm.Fmm(np.random.default_rng(0).random((10, 3)))
    for q, exc in [(np.ones(9), ValueError), (np.ones((10, 2, 1)), ValueError),
                   (np.ones(10, complex), TypeError), ([1.0] * 9 + [np.nan], ValueError),
                   (np.ones((10, 0)), ValueError), ("abc", TypeError)]:
        with pytest.raises(exc):
            plan.evaluate(q)
    with pytest.raises(ValueError, match="charges"):
        aotfmm.laplace(np.zeros((4, 3)), np.ones(5))


def test_gradient_overflow_raises_instead_of_inf(rng):
    src = uniform(rng, 200) * 1e-200  # gradients ~1e400: not a float64
    with pytest.raises(FloatingPointError, match="gradient overflows"):
        aotfmm.laplace(src, np.ones(200), gradient=True)
    assert np.isfinite(aotfmm.laplace(src, np.ones(200))).all()


def test_default_eps_depends_on_dtype(rng):
    src = uniform(rng, 500)
    assert aotfmm.Fmm(src).eps == 1e-6
    assert aotfmm.Fmm(src.astype(np.float32)).eps == 1e-5
    assert aotfmm.laplace(src.astype(np.float32), np.ones(500, np.float32)).dtype == np.float32


def test_linear_operator_gmres_matches_dense_solve(rng):
    pytest.importorskip("scipy")
    from scipy.sparse.linalg import gmres
    n = 1500
    src = sphere(rng, n)
    b = rng.standard_normal(n)
    diag = 10.0  # a self term making the system well conditioned
    plan = aotfmm.Fmm(src, eps=1e-7)
    op = plan.as_linear_operator(diagonal=diag)
    x, info = gmres(op, b, rtol=1e-10, atol=0.0, restart=100, maxiter=500)
    assert info == 0
    d = src[:, None, :] - src[None, :, :]
    r = np.sqrt((d * d).sum(-1))
    with np.errstate(divide="ignore"):
        dense = np.where(r > 0, 1.0 / (4 * np.pi * r), 0.0)
    x_ref = np.linalg.solve(dense + diag * np.eye(n), b)
    assert rel_err(x, x_ref) < 1e-6
    with pytest.raises(ValueError, match="diagonal"):
        plan.as_linear_operator(diagonal=np.ones(3))
    with pytest.raises(ValueError, match="targets"):
        aotfmm.Fmm(src, src[:10]).as_linear_operator()


def test_progress_prints_phases_only_when_asked(rng, capsys):
    src = uniform(rng, 3000)
    plan = aotfmm.Fmm(src, progress=True)
    plan.evaluate(np.ones(3000))
    err = capsys.readouterr().err
    for phase in ("tree", "lists", "operators", "p2m", "p2p"):
        assert phase in err
    quiet = aotfmm.Fmm(src)
    quiet.evaluate(np.ones(3000))
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress"):
        aotfmm.Fmm(src, progress="yes")


def test_plot_tree(rng, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    plan = aotfmm.Fmm(clustered(rng, 3000))
    ax = plan.plot_tree()
    assert str(len(plan._core.tree.leaves)) in ax.get_title()
    ax.figure.savefig(tmp_path / "tree.png")
    assert (tmp_path / "tree.png").stat().st_size > 1000


def test_two_tiny_far_clusters_with_targets_around(rng):
    # found by a sweep: far-field gradients need one order more for separate targets (two
    # since 2026-12-04: targets gathered at a box corner, test_precision)
    src = np.vstack([rng.random((1500, 3)) * 1e-3, 1e3 + rng.random((1500, 3)) * 1e-3])
    q = rng.standard_normal(3000)
    trg = src[rng.choice(3000, 400)] + 10 * rng.standard_normal((400, 3))
    plan = aotfmm.Fmm(src, trg, eps=1e-6)
    assert plan.p == aotfmm.Fmm(src, eps=1e-6).p + 2
    check(src, q, trg, 1e-6, np.float64)
    with pytest.warns(aotfmm.AccuracyWarning, match="float32"):
        aotfmm.Fmm(src.astype(np.float32), trg.astype(np.float32))
