"""M2L by target octant (aotfmm.expansions._octant_m2l): its pair grouping against a brute-force
V list, its sums against the stored per-vector operators applied pair by pair in numpy, and
whole evaluations that take it against numpy direct sums."""
import numpy as np
import pytest

import aotfmm
from aotfmm import _blas, _geometry, expansions
from aotfmm._threads import Workers

from conftest import direct_reference

INV4PI = 1.0 / (4.0 * np.pi)


def _rel(x, ref):
    return np.linalg.norm(x - ref) / np.linalg.norm(ref)


def _spy(monkeypatch, name="_octant_m2l"):
    """The calls of ``expansions.<name>`` (M2L's products): (plan, the multipoles' dtype)."""
    calls = []
    real = getattr(expansions, name)

    def counted(*args, **kwargs):
        mc = args[1] if name == "_octant_m2l" else args[3]
        calls.append((args[2] if name == "_octant_m2l" else args[4], mc.dtype))
        return real(*args, **kwargs)

    monkeypatch.setattr(expansions, name, counted)
    return calls


def _plan(n=40000, seed=3, **kw):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3))
    return x, rng, aotfmm.Fmm(x, eps=kw.pop("eps", 1e-6), ncrit=64, **kw)


def _brute_v_pairs(tree, level, targets=None):
    """{(target box, source box)}: boxes of ``level`` holding points (targets: those or the
    ones given), not adjacent, whose parents are (they are the same box or touch)."""
    lo, hi = tree.level_offsets[level], tree.level_offsets[level + 1]
    boxes = np.arange(lo, hi)
    boxes = boxes[tree.src_end[boxes] > tree.src_start[boxes]]
    targets = boxes if targets is None else np.asarray(targets)
    ijk, tijk = tree.ijk[boxes], tree.ijk[targets]
    d = np.abs(tijk[:, None, :] - ijk[None, :, :]).max(axis=2)
    dp = np.abs((tijk[:, None, :] >> 1) - (ijk[None, :, :] >> 1)).max(axis=2)
    t, s = np.nonzero((d > 1) & (dp <= 1))
    return {(int(a), int(b)) for a, b in zip(targets[t], boxes[s])}


def _octant_pairs(m2l_plan, tree):
    """The (target box, source box) pairs an OctantPlan holds, each checked on the way: its
    item's octant is the target's, its vector (reflected back) is source - target."""
    op = m2l_plan.octant
    out = []
    for i, (r0, r1, o) in enumerate(op.items):
        targets = m2l_plan.target_boxes[op.target_order[r0:r1]]
        assert np.all((tree.ijk[targets] & 1) @ [1, 2, 4] == o)
        for g in range(8):
            p0, p1 = op.groups[8 * i + g], op.groups[8 * i + g + 1]
            s0 = op.group_sources[8 * i + g]
            srcs = m2l_plan.sources[op.sources[s0 + op.pair_source[p0:p1]]]
            trgs = targets[op.pair_row[p0:p1]]
            sign = np.array([-1 if o >> axis & 1 else 1 for axis in range(3)])
            vec = _geometry.TRANSFER_VECTORS[op.pair_vector[p0:p1]] * sign
            assert np.array_equal(tree.ijk[srcs] - tree.ijk[trgs], vec)
            # the group is the sources' octant seen from octant 0
            assert np.all(((tree.ijk[srcs] & 1) @ [1, 2, 4]) ^ o == g)
            out += list(zip(trgs.tolist(), srcs.tolist()))
    assert len(out) == len(set(out))
    return set(out)


def test_octant_plan_holds_each_v_pair_once():
    _, _, fmm = _plan()
    core = fmm._core
    levels = [d for d in core.down_levels if d.m2l is not None and d.m2l.octant is not None]
    assert [d.level for d in levels] == [3, 4]  # level 2: 64 boxes, too few vectors filled
    for d in levels:
        assert _octant_pairs(d.m2l, core.tree) == _brute_v_pairs(core.tree, d.level)
        assert len(set(d.m2l.octant.items[:, 2].tolist())) == 8


@_blas.one_thread  # (numpy's BLAS threads spin: with the other xdist worker doing the same,
def _reference_m2l(ops, equiv, pairs, tree, n_boxes, nd):  # this file alone ran for minutes)
    """dcheck of every pair, one transfer vector at a time, with the stored C_t (numpy)."""
    mc = equiv.reshape(n_boxes, nd, ops.n_surf).astype(np.complex128) @ ops.m2l_v
    out = np.zeros((n_boxes, nd, ops.m2l_rank), np.complex128)
    pairs = np.array(sorted(pairs))
    vec = tree.ijk[pairs[:, 1]] - tree.ijk[pairs[:, 0]]
    t_of = _geometry._LOOKUP[tuple((vec + 3).T)]
    for t in np.unique(t_of):
        sel = pairs[t_of == t]  # (a target has one source per vector)
        out[sel[:, 0]] += mc[sel[:, 1]] @ ops.m2l_core(t).T
    return out @ ops.m2l_decompress.T


@pytest.mark.parametrize("case", ["float64", "float64 k=3", "float64 k=3 one at a time",
                                  "float32", "helmholtz", "float64 single",
                                  "float64 k=3 single", "helmholtz single",
                                  "float64 single per vector"])
@pytest.mark.parametrize("threads", [1, 2])
def test_octant_m2l_is_the_stored_operators_pair_by_pair(case, threads, monkeypatch):
    """C_t of a target in octant o is S_o C_t0 S_o (t0: t reflected into octant 0, S_o the
    bases' parities): the octant products must give what each pair's own stored C_t gives, to
    the ~1e-9 by which the build's truncations of mirror images differ. "single": the
    products in float32 / complex64 (``m2l(..., single=True)``, a mixed plan's), to float32's
    rounding; "per vector": bases taken for not symmetric, the products per transfer vector."""
    if "per vector" in case:
        monkeypatch.setattr(expansions, "_LAYOUTS", {})
        monkeypatch.setattr(expansions, "_SINGLES", {})
        monkeypatch.setattr(expansions, "_SIGNS", {})
        monkeypatch.setattr(expansions, "_reflection_signs", lambda surf, bases: None)
    kw = dict(float32=dict(dtype=np.float32, eps=1e-4),
              helmholtz=dict(kernel=aotfmm.Helmholtz(3.0), dtype=np.complex128)).get(case, {})
    _, rng, fmm = _plan(**kw)
    core = fmm._core
    tree = core.tree
    nd = 3 if "k=3" in case else 1
    single = "single" in case
    calls = _spy(monkeypatch, "_vector_m2l" if "per vector" in case else "_octant_m2l")
    for d in core.down_levels:
        if d.m2l is None or d.m2l.octant is None:
            continue
        ops = core.ops_at(d.level)
        if "one at a time" in case:  # W of one density only at level 4 (items of ~480 rows)
            r0 = expansions._octant_layout(ops).a0.shape[0]
            monkeypatch.setattr(expansions, "M2L_OCTANT_BYTES",
                                r0 * expansions.M2L_OCTANT_ROWS * ops.m2l_a.itemsize)
        n_boxes = len(tree.levels)
        vdt = ops.m2l_a.dtype
        equiv = rng.standard_normal((n_boxes, nd * ops.n_surf))
        if vdt.kind == "c":
            equiv = equiv + 1j * rng.standard_normal(equiv.shape)
        equiv = equiv.astype(vdt).reshape((n_boxes, nd, ops.n_surf) if nd > 1 else
                                          (n_boxes, ops.n_surf))
        dcheck = np.zeros((n_boxes,) + ((nd,) if nd > 1 else ()) + (ops.down_rank,), vdt)
        expansions.m2l(ops, equiv, dcheck, d.m2l, workers=Workers(threads), single=single)
        boxes = d.m2l.target_boxes
        keep = np.sort(rng.choice(boxes, min(len(boxes), 300), replace=False))  # (for time)
        pairs = _brute_v_pairs(tree, d.level, keep)
        ref = _reference_m2l(ops, equiv, pairs, tree, n_boxes, nd)[keep]
        got = dcheck.reshape((n_boxes, nd, -1))[keep]
        tol = 1e-4 if vdt == np.float32 else 1e-5 if single else 1e-7
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
        # per density too: a mix-up of densities' rows would still match the largest entry
        for k in range(nd):
            assert _rel(got[:, k].ravel(), ref[:, k].ravel()) <= tol
    assert len(calls) == 2
    halves = {np.dtype(np.float64): np.float32, np.dtype(np.complex128): np.complex64}
    assert {dt for _, dt in calls} == {np.dtype(halves[vdt] if single else vdt)}


def test_reflection_signs_of_hand_made_bases():
    """Columns 1, x, x y z, y^2 - z^2 on the unit surface: parities (-1)^(bits of the
    reflected axes the monomial is odd in); a column mixing parities has none."""
    surf = aotfmm.surfaces.surface(6).T
    x, y, z = surf
    basis = np.stack([np.ones_like(x), x, x * y * z, y * y - z * z], axis=1)
    signs = expansions._reflection_signs(surf, (basis, basis * 2.0))
    for o in range(8):
        fx, fy, fz = (-1.0 if o >> axis & 1 else 1.0 for axis in range(3))
        assert list(signs[o]) == [1.0, fx, fx * fy * fz, 1.0]
    assert expansions._reflection_signs(surf, (np.stack([x + y], axis=1),)) is None
    # the two bases must share their parities
    assert expansions._reflection_signs(surf, (basis[:, :2], basis[:, [0, 2]])) is None


def _yukawa(src, q, trg, lam):
    pot = np.zeros(len(trg))
    for a in range(0, len(trg), 128):
        r = np.linalg.norm(trg[a:a + 128, None, :] - src[None], axis=2)
        with np.errstate(divide="ignore"):
            g = np.where(r > 0, np.exp(-lam * r) / r, 0.0)
        pot[a:a + 128] = g @ q
    return pot * INV4PI


def _helmholtz(src, q, trg, kappa):
    pot = np.zeros(len(trg), np.complex128)
    for a in range(0, len(trg), 128):
        r = np.linalg.norm(trg[a:a + 128, None, :] - src[None], axis=2)
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(r > 0, np.exp(1j * kappa * r) / r, 0.0)
        pot[a:a + 128] = g @ q
    return pot * INV4PI


@pytest.mark.parametrize("family", ["laplace", "yukawa", "helmholtz"])
def test_evaluations_through_octant_m2l_meet_eps(family, monkeypatch):
    calls = _spy(monkeypatch)
    eps = 1e-6
    kw = dict(yukawa=dict(kernel=aotfmm.Yukawa(2.0)),
              helmholtz=dict(kernel=aotfmm.Helmholtz(3.0), dtype=np.complex128))
    x, rng, fmm = _plan(seed=5, eps=eps, **kw.get(family, {}))
    q = rng.standard_normal(len(x))
    sample = rng.choice(len(x), 300, replace=False)
    # the mixed plan's M2L products in float32 for Laplace only (README "Mixed precision")
    assert fmm._core.mixed_m2l == (family == "laplace")
    if family == "laplace":
        pot, grad = fmm.evaluate(q, gradient=True)
        ref_pot, ref_grad = direct_reference(x, q, x[sample])
        assert _rel(grad[sample], ref_grad) <= eps
    elif family == "yukawa":
        pot = fmm.evaluate(q)
        ref_pot = _yukawa(x, q, x[sample], 2.0)
    else:
        q = q + 1j * rng.standard_normal(len(x))
        pot = fmm.evaluate(q)
        ref_pot = _helmholtz(x, q, x[sample], 3.0)
    assert _rel(pot[sample], ref_pot) <= eps
    assert len(calls) >= 2  # levels 3 and 4 went through the octant products
    single = {"laplace": np.float32, "yukawa": np.float64, "helmholtz": np.complex128}[family]
    assert {dt for _, dt in calls} == {np.dtype(single)}


def test_operators_without_symmetric_bases_take_the_products_per_vector(monkeypatch):
    """Where the bases are not symmetric the octant plan is there but unused, and the answer
    is still right (the per-vector products)."""
    monkeypatch.setattr(expansions, "_LAYOUTS", {})
    monkeypatch.setattr(expansions, "_SINGLES", {})  # (their single-precision copies)
    monkeypatch.setattr(expansions, "_SIGNS", {})
    monkeypatch.setattr(expansions, "_reflection_signs", lambda surf, bases: None)
    calls = _spy(monkeypatch)
    x, rng, fmm = _plan(seed=7)
    assert any(d.m2l is not None and d.m2l.octant is not None for d in fmm._core.down_levels)
    q = rng.standard_normal(len(x))
    sample = rng.choice(len(x), 300, replace=False)
    pot, grad = fmm.evaluate(q, gradient=True)
    ref_pot, ref_grad = direct_reference(x, q, x[sample])
    assert _rel(pot[sample], ref_pot) <= 1e-6 and _rel(grad[sample], ref_grad) <= 1e-6
    assert calls == []


def test_m2l_plan_refuses_octants_that_do_not_fit():
    """Octants out of 0..7 are an error; octants that contradict the transfer vectors leave
    the level to the per-vector products (the octant plan would index another group's rows)."""
    _, _, fmm = _plan()
    core = fmm._core
    tree = core.tree
    d = next(d for d in core.down_levels if d.level == 4)
    pairs = sorted(_brute_v_pairs(tree, 4))
    boxes = np.unique([t for t, _ in pairs])
    counts = np.bincount(np.searchsorted(boxes, [t for t, _ in pairs]), minlength=len(boxes))
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    index = np.array([s for _, s in pairs], dtype=np.int64)
    vec = tree.ijk[index] - tree.ijk[np.repeat(boxes, counts)]
    transfer = _geometry.transfer_index(vec)
    octants = (tree.ijk & 1) @ np.array([1, 2, 4])
    n = len(tree.levels)

    def plan(octs):
        return expansions.m2l_plan(None, boxes, offsets, index, transfer, n, octants=octs)

    assert plan(octants).octant is not None
    assert np.array_equal(plan(octants).target_boxes, d.m2l.target_boxes)
    # a box at x = 14 of 0..15 has no sources at +3 in x: with its x bit flipped its own
    # vectors still fit its (wrong) octant, but as a source it sits in the wrong group
    wrong = octants.copy()
    wrong[boxes[tree.ijk[boxes, 0] == 14][0]] ^= 1
    assert plan(wrong).octant is None
    for bad in (octants + 8, octants - 1, octants[:-1], octants.astype(float)):
        with pytest.raises(ValueError, match="octants"):
            plan(bad)
    # pairs that do not fit their offsets or have no transfer vector never reach the
    # compiled octant_groups (which reads them unchecked): the old numpy grouping failed on
    # a short v_transfer only by chance of its indexing
    shifted = offsets.copy()
    shifted[1:] -= 1
    for offs, tr in ((offsets, transfer[:-1]), (offsets[:-1], transfer), (shifted, transfer),
                     (offsets, np.where(transfer == transfer[0], 316, transfer)),
                     (offsets, np.where(transfer == transfer[0], -1, transfer))):
        with pytest.raises(ValueError, match="v_offsets|v_transfer"):
            expansions.m2l_plan(None, boxes, offs, index, tr, n, octants=octants)
