"""Thread pool for GIL-released kernels: how many threads, and splitting work into chunks.

Kernels release the GIL, so Python threads calling them on disjoint output slices run in
parallel. The default thread count is the number of CPUs this process may use; ``threads=``
arguments and the ``AOTFMM_NUM_THREADS`` environment variable override it.
"""
import concurrent.futures
import numbers
import os
import threading

import numpy as np

ENV_VAR = "AOTFMM_NUM_THREADS"

_pool = None
_pool_size = 0
_pool_lock = threading.Lock()


def cpu_count():
    """CPUs this process may run on (affinity-aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads():
    """``$AOTFMM_NUM_THREADS`` if set (a positive integer), else :func:`cpu_count`."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return cpu_count()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV_VAR} must be a positive integer, got {value!r}")
    return n


def resolve_threads(threads):
    """Validate a ``threads=`` argument; None means :func:`default_threads`."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"threads must be a positive integer or None, got {threads!r}")
    if threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return int(threads)


def _get_pool(n):
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="aotfmm")
            _pool_size = n
        return _pool


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
        cum = np.concatenate(([0.0], np.cumsum(cost, dtype=np.float64)))
        if cum[-1] <= 0:
            return split(len(cost), n_chunks)
        goals = np.linspace(0.0, cum[-1], n_chunks + 1)
        bounds = np.searchsorted(cum, goals, side="left").astype(np.int64)
        bounds[0], bounds[-1] = 0, len(cost)
    return np.unique(bounds)


def run(func, bounds, threads):
    """Call ``func(start, end)`` for each range of ``bounds``, on at most ``threads`` threads.

    Ranges are handed out dynamically (the next free worker takes the next range), so giving
    more ranges than threads balances uneven work. The first exception raised is re-raised.
    """
    ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    n_workers = min(threads, len(ranges))
    if n_workers <= 1:
        for a, b in ranges:
            func(a, b)
        return
    todo = iter(ranges)
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            func(*item)

    pool = _get_pool(n_workers)
    futures = [pool.submit(worker) for _ in range(n_workers)]
    for f in futures:
        f.result()
