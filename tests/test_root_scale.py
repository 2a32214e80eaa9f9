"""The root cube's enlargement (evaluate._ROOT_SCALES): leaf size against the far field.

On points that fill their boxes the leaves jump 8x per level, so at some sizes a plan got
leaves of ~ncrit / 6 points and 8x the boxes (2.5e5 uniform points: 61 per leaf). A plan with
the table's ncrit, of a scale-invariant kernel, with at least 1e5 points and a tree at most
10 levels deep may enlarge its root by 2^(1/3) or 2^(2/3) when its cost model says so. These
tests check that such a plan still meets eps against a numpy direct sum, that the rule stays
out of the cases it is not for, and that the model's near-field pair count is right (against
a count from the boxes' geometry, not from the lists it uses).
"""
import numpy as np
import pytest

import aotfmm
from aotfmm import evaluate
from aotfmm.lists import build_lists
from conftest import direct_reference, rel_err


def test_an_unlucky_uniform_size_gets_an_enlarged_root_and_meets_eps():
    rng = np.random.default_rng(11)
    n = 250_000  # the bounding cube's leaves: level 4, 61 points each
    x = rng.random((n, 3))
    q = rng.standard_normal(n)
    fmm = aotfmm.Fmm(x, eps=1e-6, threads=2)
    stats = fmm.stats
    assert stats["root_scale"] in evaluate._ROOT_SCALES, stats["root_scale"]
    assert n / stats["leaves"] > 100, stats["leaves"]  # leaves between the two sizes
    pot, grad = fmm.evaluate(q, gradient=True)
    idx = rng.choice(n, 300, replace=False)
    ref_pot, ref_grad = direct_reference(x, q, x[idx])
    assert rel_err(pot[idx], ref_pot) <= 1e-6
    assert rel_err(grad[idx], ref_grad) <= 1e-6


def test_the_same_points_far_from_the_origin_and_scaled_take_the_same_tree():
    """The enlargement is decided from counts, so it does not depend on where the points are
    or in which units (and the results follow the translation and scaling)."""
    rng = np.random.default_rng(12)
    n = 250_000
    x = rng.random((n, 3))
    q = rng.standard_normal(n)
    base = aotfmm.Fmm(x, eps=1e-6, threads=2)
    moved = aotfmm.Fmm(1e3 + 1e-2 * x, eps=1e-6, threads=2)
    assert moved.stats["root_scale"] == base.stats["root_scale"] > 1.0
    assert moved.stats["leaves"] == base.stats["leaves"]
    idx = rng.choice(n, 200, replace=False)
    ref_pot, _ = direct_reference(1e3 + 1e-2 * x, q, 1e3 + 1e-2 * x[idx])
    assert rel_err(moved.evaluate(q)[idx], ref_pot) <= 1e-6


@pytest.mark.parametrize("case", ["ncrit given", "few points", "Yukawa", "slab"])
def test_the_bounding_cube_stays_where_the_rule_does_not_apply(case):
    rng = np.random.default_rng(13)
    if case == "slab":  # hostile test 2026-12-05: the cost model counted the empty boxes of
        # a 1 x 1 x 0.01 slab's complete octree and their V pairs; it switched, 1.4x slower
        fmm = aotfmm.Fmm(rng.random((250_000, 3)) * [1.0, 1.0, 0.01], eps=1e-6, threads=2)
    elif case == "ncrit given":  # the caller's leaf size is kept as asked
        x = rng.random((250_000, 3))
        default = aotfmm.Fmm(x, eps=1e-6, threads=2)
        fmm = aotfmm.Fmm(x, eps=1e-6, threads=2, ncrit=default.ncrit)
    elif case == "few points":  # 3e4: 469 per level-2 box, level-3 leaves of 58
        fmm = aotfmm.Fmm(rng.random((30_000, 3)), eps=1e-6, threads=2)
    else:  # a kernel with a parameter has its root on the grid of its operator sets
        fmm = aotfmm.Fmm(rng.random((250_000, 3)), eps=1e-3, threads=2,
                         kernel=aotfmm.Yukawa(1.0))
    assert fmm.stats["root_scale"] == 1.0


def _adjacent_pairs(tree):
    """Near-field pairs of a tree from the boxes' geometry alone: per leaf with targets, its
    targets times the sources of every leaf whose box touches or is it."""
    leaves = tree.leaves
    c = tree.centers[leaves]
    h = tree.half_widths[leaves]
    ns = (tree.src_end - tree.src_start)[leaves].astype(float)
    nt = (tree.trg_end - tree.trg_start)[leaves].astype(float)
    total = 0.0
    for i in range(len(leaves)):
        gap = np.abs(c - c[i]).max(axis=1) - (h + h[i])
        touch = gap <= 1e-9 * h[i]
        total += nt[i] * ns[touch].sum()
    return total


def test_the_cost_model_counts_the_near_field_pairs():
    """On a uniform tree (no W or X lists) the model's pair count, with the far-field costs
    set to zero, is the number of near-field pairs the geometry gives."""
    rng = np.random.default_rng(14)
    x = rng.random((20_000, 3))
    fmm = aotfmm.Fmm(x, eps=1e-6, threads=1)
    core = fmm._core
    lists = build_lists(core.tree)
    assert len(lists.w_index) == 0 and len(lists.x_index) == 0  # (so only U pairs count)
    own = evaluate._tree_costs(core.tree, lists, core.ncrit, (0.0, 0.0), True, core.p)[0]
    assert own == _adjacent_pairs(core.tree)
