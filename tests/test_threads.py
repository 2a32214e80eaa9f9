"""The worker threads: nesting, concurrent callers, interrupts, argument limits.

Hangs are guarded by subprocess timeouts (generous: they only catch a deadlock)."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import aotfmm
from aotfmm import _threads


def _python(code, timeout=600):
    """Run ``code`` in a fresh interpreter; a hang fails the test instead of stalling it."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("threads", [2, 3, 4, 8, 17])
def test_nested_runs_cover_every_range_once(threads):
    seen = np.zeros((50, 40), dtype=np.int64)
    outer_w, inner_w = _threads.Workers(threads), _threads.Workers(threads + 1)

    def outer(a, b):
        for i in range(a, b):
            def inner(c, d, i=i):
                seen[i, c:d] += 1
            # nested on the same workers and on other ones: both run inline on this thread
            (outer_w if i % 2 else inner_w).run(inner, _threads.split(40, threads * 4))

    outer_w.run(outer, _threads.split(50, threads * 4))
    assert (seen == 1).all()
    assert inner_w.started == 0  # only ever called from inside a worker


def test_fmm_with_both_point_sets_large_returns_for_any_thread_count():
    # 4e5a0df: tree tasks on the shared pool waited on morton tasks queued behind them (hang)
    out = _python("""
        import numpy as np, aotfmm
        rng = np.random.default_rng(1)
        s, t = rng.random((100_000, 3)), rng.random((100_000, 3))
        q = rng.standard_normal(100_000)
        d = t[:300, None, :] - s[None, :, :]
        ref = (q / np.sqrt((d * d).sum(-1))).sum(1) / (4 * np.pi)   # numpy direct sum
        for threads in (4, 8, 3, 16):
            pot = aotfmm.Fmm(s, t, eps=1e-3, threads=threads).evaluate(q)
            err = np.linalg.norm(pot[:300] - ref) / np.linalg.norm(ref)
            assert err < 1e-3, (threads, err)
        print("ok")
    """)
    assert "ok" in out


def test_concurrent_callers_with_growing_thread_counts_get_the_serial_result(rng):
    # 4e5a0df: a caller asking for more threads shut the pool down under the other caller
    src = rng.random((600, 3))
    q = rng.standard_normal(600)
    d = src[:, None, :] - src[None, :, :]
    r = np.sqrt((d * d).sum(-1))
    with np.errstate(divide="ignore"):
        ref = np.where(r > 0, 1.0 / r, 0.0) @ q / (4 * np.pi)
    errors, results = [], []

    def caller(offset):
        try:
            for n in range(1, 41):
                results.append(aotfmm.direct(src, q, threads=n + offset))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(3)]
    for c in callers:
        c.start()
    for c in callers:
        c.join(timeout=600)
    assert not errors
    assert len(results) == 120
    serial = aotfmm.direct(src, q, threads=1)
    assert np.linalg.norm(serial - ref) / np.linalg.norm(ref) < 1e-13
    for pot in results:
        np.testing.assert_array_equal(pot, serial)


def test_an_exception_stops_handing_out_ranges():
    started = []
    lock = threading.Lock()

    def func(a, b):
        with lock:
            started.append(a)
        if a == 0:
            raise KeyboardInterrupt  # what Ctrl-C raises in the calling thread
        time.sleep(0.01)

    with pytest.raises(KeyboardInterrupt):
        _threads.Workers(4).run(func, np.arange(201))
    # the caller takes range 0 first; at most the ranges already taken by the 3 helpers ran
    assert len(started) <= 8, len(started)


def test_pool_threads_never_keep_the_interpreter_alive():
    # (threads that existed before are left out as well: a dropped pool's threads may still
    # be on their way out)
    before = set(threading.enumerate())
    w = _threads.Workers(4)
    w.run(lambda a, b: None, np.arange(5))
    pool = [t for t in threading.enumerate()
            if t not in before and t.name.startswith(w._name + "-")]
    assert len(pool) == 3 and all(t.daemon for t in pool)


@pytest.mark.parametrize("ranges", [2, 9])
def test_a_finished_run_leaves_nothing_of_its_work_alive(ranges):
    """The pool threads used to keep the last task they ran (and with it the job's function
    and whatever it closed over) until their next task: after a threaded evaluation, the near
    field's per-range sums (32 bytes per point with gradients per extra range) stayed
    allocated until the next threaded call."""
    import gc
    import weakref

    class Payload:  # stands for a work array the function writes
        pass

    w = _threads.Workers(2)
    payload = Payload()
    ref = weakref.ref(payload)
    seen = []
    other = threading.Event()  # range 0 waits until another thread runs a range

    def func(a, b, payload=payload):
        seen.append((a, b, threading.current_thread().name))
        if a == 0:
            other.wait(30)
        else:
            other.set()

    w.run(func, np.arange(ranges + 1))
    assert sorted(a for a, _, _ in seen) == list(range(ranges))
    assert len({name for _, _, name in seen}) == 2  # the pool took part
    del func, payload
    deadline = time.monotonic() + 30  # (hang guard: a pool thread may still be returning)
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert ref() is None, "a pool thread still holds the finished run's function"
    w.close()


@pytest.mark.parametrize("pg", [2, 3])
def test_a_threaded_evaluation_keeps_no_memory_beyond_its_results(pg):
    """numpy's allocations (tracemalloc) after a 2-thread evaluation of 20000 points, the
    results still held: at most their size plus 1 byte per point. Until the pool threads let
    go of their last task, the near field's per-range sums stayed allocated after the call
    (72 bytes per point with gradients, 168 with Hessians, 2e5 points)."""
    import gc
    import tracemalloc
    rng = np.random.default_rng(3)
    n = 20000
    x, q = rng.random((n, 3)), rng.standard_normal(n)
    plan = aotfmm.Fmm(x, eps=1e-6, threads=2, hessians=pg == 3)
    plan.fields(q, pg=pg)  # (first-call state, if any, is not what this is about)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        res = plan.fields(q, pg=pg)
        results = sum(a.nbytes for a in (res.pot, res.grad, res.hess) if a is not None)
        deadline = time.monotonic() + 30  # (a pool thread may still be returning)
        while True:
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - base
            if kept - results <= n or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    finally:
        tracemalloc.stop()
    assert kept - results <= n, f"{(kept - results) / n:.0f} bytes per point kept"


def _controlled():
    """Thread counts of the BLAS libraries aotfmm limits (those its controller saw)."""
    from aotfmm import _blas
    ctl = _blas._get_controller()
    return [lc.num_threads for lc in ctl.lib_controllers if lc.user_api == "blas"]


def _blas_threads(threadpoolctl):
    """numpy's BLAS thread counts now (one per BLAS library loaded)."""
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_plans_evaluated_from_several_threads_leave_blas_threads_as_they_were():
    """Hostile test 2026-12-05 (/tmp/ht46/repro_blas_state.py): numpy's BLAS thread count is
    one setting per process; a threaded plan sets it to 1 while it runs, and two Python
    threads evaluating plans at once left it at 1 for the rest of the process (5 of 5 runs):
    each region saved the other's 1 as the value to restore, and OpenBLAS lost a change made
    while another thread was inside a BLAS call. That slowed the caller's own numpy work and
    changed the bits of later results of ``threads=1`` plans (which then left BLAS alone)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    rng = np.random.default_rng(2)
    x, q = rng.random((20000, 3)), rng.standard_normal(20000)
    one = aotfmm.Fmm(x, eps=1e-6, threads=1)
    two = aotfmm.Fmm(x, eps=1e-6, threads=2)
    before = _blas_threads(threadpoolctl)
    if not before or max(before) < 2:
        pytest.skip("numpy's BLAS runs no threads here")
    first = one.fields(q, pg=2)
    for _ in range(2):
        errors = []

        def run():
            try:
                for _ in range(3):
                    two.fields(q)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        ths = [threading.Thread(target=run) for _ in range(2)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(600)  # (hang guard)
        assert not errors
        assert _blas_threads(threadpoolctl) == before
    again = one.fields(q, pg=2)
    assert np.array_equal(first.pot, again.pot) and np.array_equal(first.grad, again.grad)


@pytest.mark.parametrize("threads", [1, 2])
def test_blas_runs_on_one_thread_during_an_evaluation(monkeypatch, threads):
    """threads=1 means one core: until 2026-12-05 a threads=1 plan left numpy's BLAS alone,
    and OpenBLAS ran M2L's matrix products on every core (a 3e5-point evaluation took 1.8 CPU
    seconds per second on 2 cores). During M2L the BLAS libraries aotfmm controls (those
    loaded when it first limited BLAS, numpy's among them: aotfmm imports numpy; a BLAS loaded
    later, such as scipy's imported by another test, is not one aotfmm calls) must be on one
    thread, and every library back where it was after the evaluation."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from aotfmm import expansions

    rng = np.random.default_rng(3)
    x, q = rng.random((20000, 3)), rng.standard_normal(20000)
    plan = aotfmm.Fmm(x, eps=1e-6, threads=threads)
    seen, m2l = [], expansions.m2l

    def spy(*args, **kwargs):
        seen.append(_controlled())
        return m2l(*args, **kwargs)

    monkeypatch.setattr(expansions, "m2l", spy)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _blas_threads(threadpoolctl)
        if not before or max(before) < 2:
            pytest.skip("numpy's BLAS cannot run two threads here")
        plan.evaluate(q)
        after = _blas_threads(threadpoolctl)
    assert seen and all(max(s) == 1 for s in seen), seen
    assert after == before


@pytest.mark.parametrize("threads", [1, 2])
def test_blas_runs_on_one_thread_through_setup_and_the_whole_evaluation(monkeypatch, threads):
    """Not only the traversal: after one threaded BLAS call OpenBLAS's idle threads spin for
    ~0.12 s on the cores the traversal's own threads need. Until 2026-12-05 the few-charges
    check (an ``np.dot`` over 64^3 cells, run before the traversal) and a plan's setup (level
    operators of a kernel with a parameter, the near-field split) called BLAS on every core:
    a spy on OpenBLAS's worker saw 1.9 CPU seconds of its spinning over a few 4e5-point plans
    and evaluations, most of it during their P2M. Numpy's BLAS must be on one thread from the
    start of a plan's setup and of an evaluation to their end, and back where it was after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from aotfmm import evaluate

    seen = {}

    def spy(name):
        real = getattr(evaluate.Plan, name)

        def method(self, *args, **kwargs):
            seen.setdefault(name, []).append(max(_controlled()))
            return real(self, *args, **kwargs)
        monkeypatch.setattr(evaluate.Plan, name, method)

    for name in ("_near_symmetric", "_stats", "_few_split"):  # setup's middle and end; the
        spy(name)                                             # evaluation before its passes
    rng = np.random.default_rng(4)
    x, q = rng.random((20000, 3)), rng.standard_normal(20000)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _blas_threads(threadpoolctl)
        if not before or max(before) < 2:
            pytest.skip("numpy's BLAS cannot run two threads here")
        plan = aotfmm.Fmm(x, eps=1e-6, threads=threads)
        plan.evaluate(q)
        after = _blas_threads(threadpoolctl)
    assert set(seen) == {"_near_symmetric", "_stats", "_few_split"}, seen
    assert all(v == [1] for v in seen.values()), seen
    assert after == before


def _pool_threads(w):
    return [t for t in threading.enumerate() if t.name.startswith(w._name + "-")]


def test_workers_start_lazily_and_stop_when_closed_or_dropped():
    import gc
    w = _threads.Workers(3)
    assert w.started == 0 and not _pool_threads(w)          # nothing until parallel work
    w.run(lambda a, b: None, np.arange(2), limit=1)
    assert w.started == 0
    hits = np.zeros(30, dtype=np.int64)

    def work(a, b):
        hits[a:b] += 1
    w.run(work, np.arange(31))
    assert w.started == 2 and (hits == 1).all()
    threads = _pool_threads(w)
    w.close()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    w.run(work, np.arange(31))                                # closed: runs inline, still right
    assert (hits == 2).all()
    # dropped without close: the pool threads exit too (they hold the queue, not the object)
    w2 = _threads.Workers(3)
    w2.run(work, np.arange(31))
    threads = _pool_threads(w2)
    assert len(threads) == 2
    del w2
    gc.collect()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)


def test_a_plan_keeps_its_own_workers_and_new_plans_leave_no_threads_behind(rng):
    import gc
    src = rng.random((3000, 3))
    q = rng.standard_normal(3000)
    before = {t.ident for t in threading.enumerate()}
    for _ in range(5):
        plan = aotfmm.Fmm(src, eps=1e-3, threads=2)
        plan.evaluate(q)
    del plan
    gc.collect()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t.ident not in before
                 and t.name.startswith("aotfmm-")]
        if not extra:
            break
        time.sleep(0.05)
    assert not extra, extra


def test_workers_argument_pairs_are_checked():
    w = _threads.Workers(2)
    assert _threads.as_workers(None, w) is w and _threads.as_workers(2, w) is w
    assert _threads.as_workers(3).threads == 3
    with pytest.raises(ValueError, match="disagrees"):
        _threads.as_workers(3, w)
    with pytest.raises(TypeError, match="Workers"):
        _threads.as_workers(None, 2)


def test_ctrl_c_during_a_long_evaluation_exits_promptly():
    # The child restores Python's SIGINT handler itself: started from a background job of a
    # non-interactive shell (as CI scripts often are) it inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler, so the signal would do nothing and the test
    # would time out (it did, in clean-clone runs of .ci/run started with `&`).
    code = textwrap.dedent("""
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import sys, time, numpy as np, aotfmm
        rng = np.random.default_rng(0)
        s = rng.random((300_000, 3)); q = rng.standard_normal(300_000)
        plan = aotfmm.Fmm(s, eps=1e-6, threads=2)
        print("ready", flush=True)
        for _ in range(1000):
            plan.evaluate(q, gradient=True)
    """)
    import signal
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err


@pytest.mark.parametrize("bad", [10 ** 20, _threads.MAX_THREADS + 1, 0, -3])
def test_absurd_thread_counts_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="threads"):
        aotfmm.direct(np.zeros((2, 3)), np.ones(2), threads=bad)


def test_absurd_thread_environment_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(_threads.ENV_VAR, "99999999999999999999")
    with pytest.raises(ValueError, match=_threads.ENV_VAR):
        aotfmm.direct(np.zeros((2, 3)), np.ones(2))


@pytest.mark.parametrize("value", ["2_0", "\uff12", "1e3", "0x2", " 2 2"])
def test_thread_environment_takes_ascii_digits_only(monkeypatch, value):
    """int() read "2_0" as 20 and the full-width digit as 2; both are refused now."""
    monkeypatch.setenv(_threads.ENV_VAR, value)
    with pytest.raises(ValueError, match=_threads.ENV_VAR):
        _threads.default_threads()
