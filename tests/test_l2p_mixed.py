"""P2M and L2P with float32 pair terms (``p2c_mixed``, ``s2p_mixed``): what a float64 plan
whose near field takes float32 pair terms (eps >= 1e-6, one charge vector) uses for its leaves'
multipoles and local expansions.

Checked against numpy sums written here: the compiled kernels on hand-made boxes and surfaces
(boxes far from the origin, several surfaces or source boxes per row, a row without targets or
sources, surfaces of 26 and 296 points), the pseudo-inverse cuts that keep the densities free of
the weakest modes' noise (against the singular values of the kernel matrices themselves), and
whole plans against a direct sum, potentials relative to the field itself (the cuts' reason:
without them the errors were 1e-6 and more).
"""
import numpy as np
import pytest

import aotfmm
from aotfmm import _dispatch, evaluate, operators, surfaces


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _problem(rng, p, offset):
    """Rows = target boxes (half-width h) with targets inside them, around centres within 1 of
    ``offset``; each row lists its own box's surface (radius 2.95 h, around its centre) and 0-2
    other boxes' surfaces around a point 6 h away (targets stay >= 1.2 h from every surface);
    box 2 has no targets; densities of sizes 1e-3..1e3 per box."""
    n_boxes, h = 5, 2.0 ** -4
    box_c = offset + rng.uniform(-1, 1, (n_boxes, 3))
    counts = rng.integers(5, 60, n_boxes)
    counts[2] = 0
    start = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    end = (start + counts).astype(np.int64)
    trg = np.concatenate([box_c[b][:, None] + h * rng.uniform(-1, 1, (3, counts[b]))
                          for b in range(n_boxes)], axis=1)
    trg_boxes = np.array([1, 4, 2, 0, 3], dtype=np.int64)
    lists = [[int(b)] + [int(s) for s in rng.choice(n_boxes, rng.integers(0, 3)) if s != b]
             for b in trg_boxes]
    offsets = np.concatenate(([0], np.cumsum([len(x) for x in lists]))).astype(np.int64)
    index = np.array([s for x in lists for s in x], dtype=np.int64)
    rows = np.repeat(trg_boxes, np.diff(offsets))
    away = np.where((index == rows)[:, None], 0.0, 6.0 * h * np.array([0.6, -0.48, 0.64]))
    surf = np.ascontiguousarray(surfaces.surface(p).T)
    dens = (rng.standard_normal((n_boxes, surf.shape[1]))
            * 10.0 ** rng.uniform(-3, 3, n_boxes)[:, None])
    return dict(dens=np.ascontiguousarray(dens), trg_xyz=np.ascontiguousarray(trg),
                trg_start=start, trg_end=end, trg_boxes=trg_boxes,
                centers=np.ascontiguousarray(box_c[rows] + away),
                half_widths=np.full(n_boxes, h), list_offsets=offsets, list_index=index,
                surf=surf, radius=2.95)


def _reference(a):
    n = a["trg_xyz"].shape[1]
    pot, grad, bar = np.zeros(n), np.zeros((3, n)), np.zeros(n)
    for i, b in enumerate(a["trg_boxes"]):
        t0, t1 = a["trg_start"][b], a["trg_end"][b]
        x = a["trg_xyz"][:, t0:t1]
        for k in range(a["list_offsets"][i], a["list_offsets"][i + 1]):
            s = a["list_index"][k]
            y = a["centers"][k][:, None] + a["half_widths"][s] * a["radius"] * a["surf"]
            d = x[:, :, None] - y[:, None, :]                       # (3, nt, m)
            r = np.sqrt((d * d).sum(0))
            pot[t0:t1] += (a["dens"][s] / r).sum(1) / (4 * np.pi)
            grad[:, t0:t1] -= (d * (a["dens"][s] / r ** 3)).sum(2) / (4 * np.pi)
            bar[t0:t1] += (np.abs(a["dens"][s]) / r).sum(1) / (4 * np.pi)
    return pot, grad, bar


@pytest.mark.parametrize("p", [3, 8])
@pytest.mark.parametrize("offset", [0.0, 1e6])
@pytest.mark.parametrize("flags", [0, 4])
def test_s2p_mixed_kernel_matches_numpy(p, offset, flags):
    """Terms in float32 from offsets to each surface's centre formed in float64: the error
    stays at float32's level of the sum of |terms| wherever the boxes sit (1e6 from the
    origin: a float32 coordinate there would be off by 0.06), every row, with and without
    gradients; pot-only leaves grad alone, and the call adds to what is there."""
    rng = np.random.default_rng(100 * p + flags + int(offset > 0))
    a = _problem(rng, p, offset)
    ref_pot, ref_grad, bar = _reference(a)
    n = a["trg_xyz"].shape[1]
    pot = np.full(n, 0.5)
    grad = np.full((3, n), -0.25) if flags else np.zeros((3, 1))
    _dispatch.bind("s2p_mixed", np.float64, **a, flags=flags, pot=pot,
                   grad=grad)(0, len(a["trg_boxes"]))
    err = np.abs(pot - 0.5 - ref_pot)
    assert np.all(err <= 1e-6 * bar), (err / bar).max()
    assert np.any(err > 0)                                      # float32 terms, not float64
    if flags:
        gbar = np.abs(ref_grad).sum(0) + bar                    # a loose scale per target
        assert rel(grad + 0.25, ref_grad) <= 1e-6
        assert np.all(np.abs(grad + 0.25 - ref_grad).sum(0) <= 1e-5 * gbar)
    else:
        assert np.array_equal(grad, np.zeros((3, 1)))
    # a row range only touches its own rows' targets
    pot2 = np.zeros(n)
    _dispatch.bind("s2p_mixed", np.float64, **a, flags=0, pot=pot2,
                   grad=np.zeros((3, 1)))(1, 3)
    inside = np.zeros(n, bool)
    for b in a["trg_boxes"][1:3]:
        inside[a["trg_start"][b]:a["trg_end"][b]] = True
    assert not pot2[~inside].any()
    assert np.all(np.abs(pot2[inside] - ref_pot[inside]) <= 1e-6 * bar[inside])


@pytest.mark.parametrize("p", [3, 8])
@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_p2c_mixed_kernel_matches_numpy(p, offset):
    """Check potentials from float32 terms (offsets to each entry's centre formed in float64):
    within float32's level of the sum of |terms| at every check point, boxes anywhere, rows
    listing several source boxes, an empty source box, a row range writing only its rows."""
    rng = np.random.default_rng(300 + p + int(offset > 0))
    n_boxes, h, radius = 5, 2.0 ** -4, 2.95
    box_c = offset + rng.uniform(-1, 1, (n_boxes, 3))
    counts = rng.integers(5, 300, n_boxes)
    counts[2] = 0
    start = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    end = (start + counts).astype(np.int64)
    src = np.concatenate([box_c[b][:, None] + h * rng.uniform(-1, 1, (3, counts[b]))
                          for b in range(n_boxes)], axis=1)
    q = rng.standard_normal(src.shape[1]) * 10.0 ** rng.uniform(-2, 2, src.shape[1])
    rows = np.array([1, 4, 2, 0, 3], dtype=np.int64)
    lists = [[int(b)] + [int(s) for s in rng.choice(n_boxes, rng.integers(0, 3)) if s != b]
             for b in rows]
    offsets = np.concatenate(([0], np.cumsum([len(x) for x in lists]))).astype(np.int64)
    index = np.array([s for x in lists for s in x], dtype=np.int64)
    centers = box_c[index]               # each entry: its source box's own surface centre
    surf = np.ascontiguousarray(surfaces.surface(p).T)
    args = dict(src_xyz=np.ascontiguousarray(src), charges=q, src_start=start, src_end=end,
                trg_boxes=rows, centers=np.ascontiguousarray(centers),
                half_widths=np.full(n_boxes, h), list_offsets=offsets, list_index=index,
                surf=surf, radius=radius)
    check = np.full((len(rows), surf.shape[1]), np.nan)
    _dispatch.bind("p2c_mixed", np.float64, **args, check=check)(0, len(rows), 0)
    ref, bar = np.zeros_like(check), np.zeros_like(check)
    for i in range(len(rows)):
        for k in range(offsets[i], offsets[i + 1]):
            s = index[k]
            xm = centers[k][:, None] + h * radius * surf                  # (3, m)
            d = xm[:, :, None] - src[:, None, start[s]:end[s]]             # (3, m, n)
            r = np.sqrt((d * d).sum(0))
            ref[i] += (q[start[s]:end[s]] / r).sum(1) / (4 * np.pi)
            bar[i] += (np.abs(q[start[s]:end[s]]) / r).sum(1) / (4 * np.pi)
    err = np.abs(check - ref)
    assert np.all(err <= 1e-6 * bar), (err / bar).max()
    assert np.any(err > 0)                                      # float32 terms, not float64
    part = np.full((2, surf.shape[1]), -1.0)
    _dispatch.bind("p2c_mixed", np.float64, **args, check=part)(1, 3, 1)
    assert np.all(np.abs(part - ref[1:3]) <= 1e-6 * bar[1:3])


@pytest.mark.parametrize("p", [4, 8])
def test_pinv_ranks_above_count_singular_values_of_the_kernel_matrices(p):
    """The cuts for the float32 terms' densities: the leading check coefficients whose
    singular value (of K(check surface, equivalent surface), computed here with numpy, up and
    down) is at least cut times the largest."""
    ops = operators.get_operators(p, np.float64)
    s = surfaces.surface(p)
    for (r_c, r_e), rank_above, full in (
            ((ops.r_down_check, ops.r_down_equiv), ops.down_rank_above, ops.down_rank),
            ((ops.r_up_check, ops.r_up_equiv), ops.up_rank_above, ops.up_rank)):
        x, y = r_c * s, r_e * s
        k = 1.0 / (4 * np.pi * np.linalg.norm(x[:, None, :] - y[None, :, :], axis=2))
        sigma = np.linalg.svd(k, compute_uv=False)
        for cut in (1e-3, 1e-6, 1e-8, 1e-9, 1e-12):
            assert rank_above(cut) == np.count_nonzero(sigma >= cut * sigma[0])
        assert rank_above(0.0) == full


def _direct(x, q, y):
    d = y[:, None, :] - x[None, :, :]
    r = np.sqrt((d * d).sum(-1))
    inv = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0), 0.0)
    return (inv * q).sum(1) / (4 * np.pi), -np.einsum("ijk,ij->ik", d, inv ** 3 * q) / (4 * np.pi)


@pytest.mark.parametrize("kind", ["uniform", "separate"])
def test_plans_with_float32_p2m_l2p_terms_keep_the_field_relative_error(kind, monkeypatch):
    """eps 1e-6, one charge vector, float64: P2M and L2P take float32 terms (p2c_mixed,
    s2p_mixed) and the potential's error relative to the field itself stays at what the mixed
    near field gives (expected_eps 3e-7; measured 1.7e-7 at 2e4 uniform points). The leaves'
    densities are fitted without the modes below evaluate._L2P_MIXED_CUT / _P2M_MIXED_CUT:
    with every mode (either cut at 0) this test fails (uniform / separate: 1.6e-6 / 4.1e-6
    without the L2P cut, 1.9e-6 / 5.6e-6 without the P2M cut)."""
    rng = np.random.default_rng(7 if kind == "uniform" else 8)
    x = rng.random((20000, 3))
    q = rng.standard_normal(20000)
    y = None if kind == "uniform" else rng.random((3000, 3)) * 0.6 + 0.2
    f = aotfmm.Fmm(x, y, eps=1e-6, threads=2)
    assert f._core.mixed_near
    seen = []
    orig = evaluate.KifmmPasses.l2p

    def l2p(self):
        seen.append((self.p2m_mixed, self.l2p_mixed))
        return orig(self)

    monkeypatch.setattr(evaluate.KifmmPasses, "l2p", l2p)
    pot, grad = f.evaluate(q, gradient=True)
    pot_only = f.evaluate(q)
    assert seen == [(True, True)] * 2
    trg = x if y is None else y
    idx = rng.choice(len(trg), 600, replace=False)
    ref_pot, ref_grad = _direct(x, q, trg[idx])
    assert rel(pot[idx], ref_pot) <= 3e-7
    assert rel(pot_only[idx], ref_pot) <= 3e-7
    assert rel(grad[idx], ref_grad) <= 1e-6
    # k charge vectors keep float64 terms
    seen.clear()
    f.evaluate(np.stack([q, -q], axis=1))
    assert seen == [(False, False)]
