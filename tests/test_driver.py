"""The staged driver, checked by counting (exafmm-t's DummyFmm idea): every operator replaced
by a count of the sources it carries, so that each target must end with exactly n_sources:
every source reaches every target exactly once, through the stages and hooks in order."""
import numpy as np
import pytest

import aotfmm
from aotfmm import _driver
from conftest import sphere, uniform


class CountingPasses:
    """P2M: a leaf's multipole = its number of sources; M2M sums children; M2L, P2L, L2L add
    counts to down-check values; DC2E turns them into locals; L2P, M2P, P2P add counts to the
    targets (P2P counts a target's own point too: the count is of pairs considered)."""

    def __init__(self, plan):
        tree = plan.tree
        self.plan, self.tree = plan, tree
        self.nsrc = (tree.src_end - tree.src_start).astype(np.int64)
        n = plan.n_boxes
        self.equiv = np.zeros(n, np.int64)
        self.local = np.zeros(n, np.int64)
        self.dcheck = np.zeros(n, np.int64)
        self.pot = np.zeros(plan.trg.shape[1], np.int64)
        self.log = []

    def _to_targets(self, box, value):
        self.pot[self.tree.trg_start[box]:self.tree.trg_end[box]] += value

    def p2m(self):
        self.log.append("p2m")
        b = self.plan.p2m_boxes
        self.equiv[b] = self.nsrc[b]

    def m2m(self, up):
        self.log.append(("m2m", up.level))
        for parent, kids in zip(up.parents, up.children):
            self.equiv[parent] = self.equiv[kids[kids >= 0]].sum()

    def l2l(self, down):
        self.log.append(("l2l", down.level))
        if down.l2l is None:
            return False
        for parent, kids in zip(*down.l2l):
            self.dcheck[kids[kids >= 0]] += self.local[parent]
        return True

    def m2l(self, down):
        self.log.append(("m2l", down.level))
        m = down.m2l
        if m is None:
            return False
        np.add.at(self.dcheck, m.target_boxes[m.pair_target], self.equiv[m.sources[m.pair_source]])
        return True

    def p2l(self, down):
        self.log.append(("p2l", down.level))
        if down.p2l is None:
            return False
        boxes, offsets, index = down.p2l
        for i, b in enumerate(boxes):
            self.dcheck[b] += self.nsrc[index[offsets[i]:offsets[i + 1]]].sum()
        return True

    def dc2e(self, down):
        self.log.append(("dc2e", down.level))
        r = down.receivers
        self.local[r] = self.dcheck[r]
        return len(r) > 0

    def l2p(self):
        self.log.append("l2p")
        for b in self.plan.l2p_boxes:
            self._to_targets(b, self.local[b])

    def m2p(self):
        self.log.append("m2p")
        p = self.plan
        for i, b in enumerate(p.m2p_boxes):
            self._to_targets(b, self.equiv[p.m2p_index[p.m2p_offsets[i]:p.m2p_offsets[i + 1]]].sum())

    def p2p(self):
        self.log.append("p2p")
        p = self.plan
        for b in p.near_boxes:
            self._to_targets(b, self.nsrc[p.near_index[p.near_offsets[b]:p.near_offsets[b + 1]]].sum())


class RecordingComm(_driver.SerialComm):
    def __init__(self, passes):
        self.passes, self.hooks = passes, []

    def after_upward(self, passes):
        assert passes is self.passes
        self.hooks.append("after_upward")
        passes.log.append("after_upward")

    def level(self, down, passes):
        self.hooks.append(("level", down.level))
        passes.log.append(("level", down.level))

    def before_leaf_targets(self, passes):
        self.hooks.append("before_leaf_targets")
        passes.log.append("before_leaf_targets")


def _points(kind, rng, n):
    if kind in ("uniform", "sphere"):
        return {"uniform": uniform, "sphere": sphere}[kind](rng, n)
    if kind == "clusters":  # deep, adaptive: W and X lists, far and near
        c = np.array([[0.0, 0, 0], [1.0, 0, 0], [0.5, 0.9, 0.3]])[rng.integers(0, 3, n)]
        return c + 10.0 ** rng.uniform(-4, -1, (n, 1)) * rng.standard_normal((n, 3))
    raise ValueError(kind)


CASES = [("uniform", None, 1e-3, 32), ("sphere", None, 1e-6, None),
         ("clusters", None, 1e-3, None), ("clusters", "uniform", 1e-3, None),
         ("sphere", "clusters", 1e-6, 40)]


@pytest.mark.parametrize("src_kind, trg_kind, eps, ncrit", CASES)
def test_every_target_sees_every_source_once(rng, src_kind, trg_kind, eps, ncrit):
    src = _points(src_kind, rng, 6000)
    trg = None if trg_kind is None else _points(trg_kind, rng, 2500)
    plan = aotfmm.Fmm(src, trg, eps=eps, ncrit=ncrit)._core
    passes = CountingPasses(plan)
    comm = RecordingComm(passes)
    timer = _driver.run(plan.up_levels, plan.down_levels, passes, comm)
    assert (passes.pot == len(src)).all(), (passes.pot.min(), passes.pot.max(), len(src))

    assert len(plan.down_levels)
    assert set(timer.stages) == {"leaf sources", "upward", "downward", "leaf targets"}

    # hooks and passes in the documented order
    levels = [d.level for d in plan.down_levels]
    assert levels == sorted(levels) and levels[0] == 2
    assert [u.level for u in plan.up_levels] == sorted((u.level for u in plan.up_levels),
                                                        reverse=True)
    want = (["p2m"] + [("m2m", u.level) for u in plan.up_levels] + ["after_upward"]
            + [x for lv in levels for x in (("level", lv), ("l2l", lv), ("m2l", lv),
                                             ("p2l", lv), ("dc2e", lv))]
            + ["before_leaf_targets", "l2p", "m2p", "p2p"])
    assert passes.log == want
    assert comm.hooks == [h for h in want if h == "after_upward" or h == "before_leaf_targets"
                          or (isinstance(h, tuple) and h[0] == "level")]


def test_the_count_catches_a_wrong_order(rng):
    """Sanity of the check itself: locals passed down before they are complete lose counts."""
    plan = aotfmm.Fmm(_points("uniform", rng, 6000), eps=1e-3, ncrit=32)._core
    assert len(plan.down_levels) >= 2
    passes = CountingPasses(plan)
    _driver.run(plan.up_levels, list(reversed(plan.down_levels)), passes)
    assert not (passes.pot == 6000).all()


def test_serial_run_gives_the_fmm_result(rng):
    """The real passes through the driver: the plan's evaluate equals a numpy direct sum."""
    src = _points("clusters", rng, 3000)
    q = rng.standard_normal(3000)
    pot = aotfmm.Fmm(src, eps=1e-6).evaluate(q)
    d = src[:, None, :] - src[None]
    r = np.sqrt((d * d).sum(-1))
    ref = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0), 0.0) @ q / (4 * np.pi)
    assert np.linalg.norm(pot - ref) / np.linalg.norm(ref) < 1e-6


def test_the_cases_exercise_every_pass(rng):
    """Across the cases above, every kind of pass has work somewhere (else the count proves
    less than it seems)."""
    seen = set()
    for src_kind, trg_kind, eps, ncrit in CASES:
        src = _points(src_kind, rng, 6000)
        trg = None if trg_kind is None else _points(trg_kind, rng, 2500)
        p = aotfmm.Fmm(src, trg, eps=eps, ncrit=ncrit)._core
        seen |= {"m2m"} if p.up_levels else set()
        seen |= {name for d in p.down_levels for name in ("l2l", "m2l", "p2l")
                 if getattr(d, name) is not None}
        seen |= {name for name, boxes in (("l2p", p.l2p_boxes), ("m2p", p.m2p_boxes),
                                          ("p2p", p.near_boxes), ("p2m", p.p2m_boxes))
                 if len(boxes)}
    assert seen == {"p2m", "m2m", "l2l", "m2l", "p2l", "l2p", "m2p", "p2p"}, seen
