"""Several Python threads at once, each with its own thread count: one shared plan evaluated
concurrently and new plans built concurrently, every result checked against a numpy sum."""
import threading

import numpy as np

import aotfmm
from conftest import direct_reference, rel_err


def test_four_callers_share_a_plan_and_build_their_own(rng):
    src = rng.random((4000, 3))
    shared = aotfmm.Fmm(src, eps=1e-6, threads=2)
    charges = [rng.standard_normal(4000) for _ in range(4)]
    idx = rng.choice(4000, 200, replace=False)
    refs = [direct_reference(src, q, src[idx])[0] for q in charges]
    own_src = [rng.random((2500, 3)) + i for i in range(4)]
    own_q = [rng.standard_normal(2500) for _ in range(4)]
    own_refs = [direct_reference(s, q, s[:150])[0] for s, q in zip(own_src, own_q)]
    errors, results = [], {}
    start = threading.Barrier(4)

    def caller(i):
        try:
            start.wait(timeout=60)
            for rep in range(3):
                pot = shared.evaluate(charges[i]) if rep != 1 else \
                    aotfmm.Fmm(src, eps=1e-6, threads=i + 1).evaluate(charges[i])
                results[(i, rep)] = pot[idx]
            plan = aotfmm.Fmm(own_src[i], eps=1e-6, threads=[1, 2, 3, 8][i])
            results[(i, "own")] = plan.evaluate(own_q[i])[:150]
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)  # a hang guard only
    assert not any(t.is_alive() for t in threads), "a caller hung"
    assert not errors, errors
    for i in range(4):
        for rep in range(3):
            assert rel_err(results[(i, rep)], refs[i]) < 1e-6, (i, rep)
        assert rel_err(results[(i, "own")], own_refs[i]) < 1e-6, i
        # the shared plan gives the same answer every time, whoever else is running
        assert np.array_equal(results[(i, 0)], results[(i, 2)])
