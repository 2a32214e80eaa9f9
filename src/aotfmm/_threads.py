"""Worker threads for GIL-released kernels: a :class:`Workers` object, handed down explicitly.

Kernels release the GIL, so Python threads calling them on disjoint output slices run in
parallel. Whoever runs parallel work holds a :class:`Workers` (its thread count and its own
pool of threads) and hands it down to every function that splits work: ``Fmm`` makes one for
its ``threads=`` and keeps it for the plan's lifetime, the one-call functions make one per call,
and the builders take one too. There is no module-global pool. The default thread count is the
number of CPUs this process may use; ``threads=`` arguments and the ``AOTFMM_NUM_THREADS``
environment variable override it.

How :meth:`Workers.run` stays safe (the rules any caller may rely on):

* **Nesting runs inline.** A ``run`` called from inside a worker (a task of another ``run``, on
  this or any other ``Workers``) executes its ranges on that thread, serially: no task ever
  waits on a pool it runs on, so nested parallel regions cannot deadlock, whatever the counts.
* **The caller works too.** The calling thread takes ranges like any worker, so a ``run``
  finishes even if every pool thread is busy with other callers' work.
* **Each Workers owns its pool.** Concurrent callers sharing one ``Workers`` (threads calling one
  plan) queue their jobs on its ``threads - 1`` pool threads; callers with different objects
  (and any thread counts) never share a pool. Pool threads start on the first parallel ``run``
  and stop when the object is closed or garbage-collected; a closed ``Workers`` runs inline.
* **Interrupts stop the work.** Ranges are handed out one at a time; when the caller is
  interrupted (Ctrl-C) or a range raises, no further range starts, and the caller returns (or
  re-raises) once the ranges already running are done. Pool threads are daemons: they never
  keep the interpreter alive at exit.
"""
import itertools
import numbers
import os
import queue
import threading
import weakref

import numpy as np

ENV_VAR = "AOTFMM_NUM_THREADS"
#: Largest thread count accepted (threads=, $AOTFMM_NUM_THREADS): far above any machine's CPUs,
#: small enough that per-thread bookkeeping stays trivial.
MAX_THREADS = 4096

_local = threading.local()
# pools are numbered once per process, so a thread's name never points at another pool
# (id() did: a new pool can reuse a dropped one's address while its threads are exiting)
_pool_numbers = itertools.count()


def cpu_count():
    """CPUs this process may run on (affinity-aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_count(what, n):
    if n < 1 or n > MAX_THREADS:
        raise ValueError(f"{what} must be a positive integer at most {MAX_THREADS}, got {n}")
    return n


def default_threads():
    """``$AOTFMM_NUM_THREADS`` if set (a positive integer), else :func:`cpu_count`."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return min(cpu_count(), MAX_THREADS)
    # ASCII digits only: int() also takes "2_0" (20) and full-width or other Unicode digits
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"{ENV_VAR} must be a positive integer, got {value!r}")
    return _check_count(ENV_VAR, int(value))


def resolve_threads(threads):
    """Validate a ``threads=`` argument; None means :func:`default_threads`."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"threads must be a positive integer or None, got {threads!r}")
    return _check_count("threads", int(threads))


def in_worker():
    """True on a pool thread (a nested :func:`run` there executes inline)."""
    return getattr(_local, "worker", False)


def split(cost, n_chunks):
    """Boundaries of ``n_chunks`` contiguous ranges of items with about equal summed cost.

    ``cost`` is an array of per-item costs (or an int: that many items of unit cost). Returns
    int64 boundaries ``b`` with ``b[0] = 0``, ``b[-1] = n_items``, non-decreasing; empty ranges are
    dropped.
    """
    if isinstance(cost, numbers.Integral):
        n = int(cost)
        bounds = np.linspace(0, n, min(n_chunks, max(n, 1)) + 1).round().astype(np.int64)
    else:
        n_chunks = min(n_chunks, max(len(cost), 1))
        cum = np.concatenate(([0.0], np.cumsum(cost, dtype=np.float64)))
        if cum[-1] <= 0:
            return split(len(cost), n_chunks)
        goals = np.linspace(0.0, cum[-1], n_chunks + 1)
        bounds = np.searchsorted(cum, goals, side="left").astype(np.int64)
        bounds[0], bounds[-1] = 0, len(cost)
    return np.unique(bounds)


class _Job:
    """The ranges of one :func:`run`, handed out one at a time to whoever asks first."""

    def __init__(self, func, ranges):
        self.func = func
        self.ranges = ranges
        self.next = 0
        self.running = set()     # threads working on a range right now (their idents)
        self.error = None
        self.stopped = False
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)

    def work(self):
        """Take ranges until none is left (or the job was stopped)."""
        me = threading.get_ident()
        while True:
            with self.lock:
                if self.stopped or self.next >= len(self.ranges):
                    return
                item = self.ranges[self.next]
                self.next += 1
                self.running.add(me)
                func = self.func  # (read under the lock: the caller drops it when the job ends)
            try:
                func(*item)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
                with self.lock:
                    self.stopped = True
                    if self.error is None:
                        self.error = exc
            finally:
                with self.lock:
                    self.running.discard(me)
                    self.idle.notify_all()

    def finish(self):
        """Stop handing out ranges and wait for those running on other threads (they write the
        caller's arrays).

        Pool threads that reach this job's task later find nothing to do and move on, so the
        caller never waits for threads busy with other callers' work. The caller's own entry
        is not waited for: the caller is here, so it runs no range, and a KeyboardInterrupt
        landing between its bookkeeping steps could leave its entry behind (with a counter,
        that left the wait below spinning forever: a Ctrl-C test timed out in CI)."""
        me = threading.get_ident()
        with self.lock:
            self.stopped = True
            while self.running - {me}:
                self.idle.wait(0.1)


def _worker_main(tasks):
    _local.worker = True
    while True:
        task = tasks.get()
        if task is None:
            return
        task()
        # not kept while waiting for the next one: a finished job's function holds its
        # caller's work arrays (the near field's per-range sums: 32 bytes per point with
        # gradients stayed alive until the next threaded call)
        del task


def _stop_pool(tasks, pool):
    for _ in pool:
        tasks.put(None)


class Workers:
    """``threads`` threads for parallel work; hand it to whatever splits work.

    Parameters
    ----------
    threads : int or None
        How many threads a :meth:`run` may use at once, the caller's included (None:
        :func:`default_threads`).

    The pool (``threads - 1`` daemon threads) starts on the first parallel :meth:`run`; it is
    stopped by :meth:`close` or when the object is garbage-collected (a ``with`` block closes
    it too). See the module docstring for the safety rules.
    """

    def __init__(self, threads=None):
        self.threads = resolve_threads(threads)
        self._tasks = queue.SimpleQueue()
        self._pool = []
        self._lock = threading.Lock()
        self._closed = False
        self._name = f"aotfmm-{next(_pool_numbers)}"
        # the pool threads hold the queue only, so dropping the last reference stops them
        self._finalizer = weakref.finalize(self, _stop_pool, self._tasks, self._pool)

    def __repr__(self):
        return f"Workers(threads={self.threads})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop the pool threads (once idle); later runs execute inline."""
        with self._lock:
            self._closed = True
        self._finalizer()

    @property
    def started(self):
        """Pool threads started so far (0 until the first parallel run)."""
        return len(self._pool)

    def _ensure_pool(self, n):
        with self._lock:
            if self._closed:
                return False
            while len(self._pool) < n:
                t = threading.Thread(target=_worker_main, args=(self._tasks,),
                                     name=f"{self._name}-{len(self._pool)}", daemon=True)
                t.start()
                self._pool.append(t)
            return True

    def limited(self, limit):
        """How many threads a region capped at ``limit`` uses (at least 1)."""
        return max(1, min(self.threads, int(limit)))

    def split(self, cost, per_thread=1, limit=None):
        """:func:`split` into ``per_thread`` chunks per thread (of at most ``limit`` threads)."""
        n = self.threads if limit is None else self.limited(limit)
        return split(cost, n * per_thread)

    def run(self, func, bounds, limit=None):
        """Call ``func(start, end)`` for each range of ``bounds``, on at most ``threads`` threads
        (at most ``limit`` if given).

        Ranges are handed out dynamically (the next free thread takes the next range), so
        giving more ranges than threads balances uneven work. The caller's thread takes part.
        Inside a worker (a nested run) everything runs inline. The first exception raised is
        re-raised.
        """
        ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        n = self.threads if limit is None else self.limited(limit)
        n_workers = min(n, len(ranges))
        if n_workers <= 1 or in_worker() or not self._ensure_pool(n_workers - 1):
            for a, b in ranges:
                func(a, b)
            return
        job = _Job(func, ranges)
        for _ in range(n_workers - 1):
            self._tasks.put(job.work)
        try:
            _local.worker = True  # a run nested in func on this thread runs inline too
            job.work()
        finally:
            _local.worker = False
            try:
                job.finish()
            except BaseException:  # interrupted while waiting: no range starts any more
                job.stopped = True
                raise
            finally:
                # its queue entries may outlive this call (a pool thread busy elsewhere):
                # they find the job stopped and must not keep func's arrays alive
                job.func = None
        if job.error is not None:
            raise job.error


#: Runs everything on the caller's thread (no pool): for code paths that must not fan out.
INLINE = Workers(1)


def as_workers(threads=None, workers=None):
    """The :class:`Workers` of a ``threads=`` / ``workers=`` pair of arguments: ``workers`` if
    given (then ``threads`` must be None or equal its count), else a new one for ``threads``."""
    if workers is None:
        return Workers(threads)
    if not isinstance(workers, Workers):
        raise TypeError(f"workers must be an aotfmm Workers object, got {type(workers).__name__}")
    if threads is not None and resolve_threads(threads) != workers.threads:
        raise ValueError(f"threads={threads} disagrees with workers={workers!r}")
    return workers
