"""The staged FMM driver: which pass runs when, over plan data built once.

Stages, in order (each named and timed):

1. ``leaf sources``  P2M: leaves' sources -> their multipoles;
2. ``upward``        M2M, level by level from the deepest;
3. ``downward``      per level from 2 down: the ``level`` hook, then L2L (parents' locals),
                     M2L (V list), P2L (far X list) into down-check coefficients, DC2E (-> locals);
4. ``leaf targets``  L2P (own local), M2P (far W list), P2P (near field).

The driver knows the order and nothing of the kernel or the data layout: ``passes`` does the
work (:class:`aotfmm.evaluate.KifmmPasses` applies the KIFMM operators; the counting test applies
counts) and ``comm`` is told at each point where several processes would exchange data:
:class:`SerialComm`, the one process, does nothing there. Hooks, in order: ``after_upward()``
(multipoles complete: a rank would send those of its boundary boxes), ``level(down)`` before
each level's downward work, ``before_leaf_targets()`` (locals complete; ghost sources for the
near field would have arrived).
"""
import dataclasses
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class UpLevel:
    """M2M into ``parents`` (n,) from ``children`` (n, 8), -1 for none, at one level."""
    level: int
    parents: np.ndarray
    children: np.ndarray


@dataclasses.dataclass(frozen=True)
class DownLevel:
    """One level's downward work: L2L (parents, children (n, 8)) or None, M2L plan or None,
    P2L (boxes, CSR offsets, source boxes) with its per-entry surface centres or None, and
    the boxes whose down-check coefficients become locals here (``receivers``)."""
    level: int
    l2l: tuple | None
    m2l: object | None
    p2l: tuple | None
    p2l_centers: np.ndarray | None
    receivers: np.ndarray


class SerialComm:
    """The communicator of one process: nothing to exchange at any hook."""
    rank = 0
    size = 1

    def after_upward(self, passes):
        pass

    def level(self, down, passes):
        pass

    def before_leaf_targets(self, passes):
        pass


SERIAL = SerialComm()

#: (stage, passes in it) in order; the per-level passes repeat for every DownLevel.
STAGES = (("leaf sources", ("p2m",)), ("upward", ("m2m",)),
          ("downward", ("l2l", "m2l", "p2l", "dc2e")),
          ("leaf targets", ("l2p", "m2p", "p2p")))


class Timer:
    """Seconds per pass name (summed over levels) and per stage; ``on_pass(name)`` and
    ``on_stage(name)`` (optional) are called as each ends (progress displays)."""

    def __init__(self, on_pass=None, on_stage=None):
        self.passes, self.stages = {}, {}
        self.on_pass, self.on_stage = on_pass, on_stage
        self.t = time.perf_counter()

    def lap(self, name):
        now = time.perf_counter()
        self.passes[name] = self.passes.get(name, 0.0) + now - self.t
        self.t = now
        if self.on_pass is not None:
            self.on_pass(name)

    def stage(self, name, seconds):
        self.stages[name] = self.stages.get(name, 0.0) + seconds
        if self.on_stage is not None:
            self.on_stage(name)


def run(up_levels, down_levels, passes, comm=SERIAL, timer=None):
    """Run every stage in order (see the module docstring). ``passes`` has the methods
    p2m(), m2m(up), l2l(down), m2l(down), p2l(down), dc2e(down), l2p(), m2p(), p2p();
    a pass with nothing to do at a level is still called (it returns at once)."""
    timer = timer or Timer()
    t0 = time.perf_counter()
    passes.p2m()
    timer.lap("p2m")
    t1 = time.perf_counter()
    timer.stage("leaf sources", t1 - t0)
    for up in up_levels:
        passes.m2m(up)
    timer.lap("m2m")
    comm.after_upward(passes)
    t2 = time.perf_counter()
    timer.stage("upward", t2 - t1)
    for down in down_levels:
        comm.level(down, passes)
        for name in ("l2l", "m2l", "p2l", "dc2e"):
            if getattr(passes, name)(down):
                timer.lap(name)
    comm.before_leaf_targets(passes)
    t3 = time.perf_counter()
    timer.stage("downward", t3 - t2)
    for name in ("l2p", "m2p", "p2p"):
        getattr(passes, name)()
        timer.lap(name)
    timer.stage("leaf targets", time.perf_counter() - t3)
    return timer
