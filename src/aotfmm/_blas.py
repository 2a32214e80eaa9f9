"""Keep numpy's BLAS single-threaded while our own thread pool runs GEMMs (optional threadpoolctl).

threadpoolctl is optional: without it BLAS keeps its own thread count (it may oversubscribe the
CPUs while our pool runs, and a ``threads=1`` plan's GEMMs may use every core, which costs speed,
never correctness).
"""
import contextlib
import functools
import threading

_controller = None
_lock = threading.Lock()


def _get_controller():
    global _controller
    with _lock:
        if _controller is None:
            try:
                from threadpoolctl import ThreadpoolController
                _controller = ThreadpoolController()
            except Exception:  # not installed, or cannot inspect the loaded libraries
                _controller = False
        return _controller


#: regions inside :func:`limit_one` right now (any thread) and the limiter of the first, which
#: holds the BLAS thread counts to go back to when the last one ends
_depth = 0
_limiter = None
_depth_lock = threading.Lock()


def limit_one():
    """Context manager: BLAS on one thread, whatever our thread count (no-op without
    threadpoolctl). For work that we split over our own threads, and for many small LAPACK
    calls: OpenBLAS's spinning threads made a p = 5 operator build take 30 s instead of 0.7 s
    while another process kept one of two cores busy.

    The BLAS thread count is one setting for the whole process, so overlapping regions (plans
    evaluated from several Python threads, nested regions) share one limit: the first to
    enter saves the counts and sets 1, the last to leave restores them. Each region limiting
    on its own (threadpoolctl's ``limit``) could save another region's 1 as the value to
    restore, leaving numpy's BLAS on one thread for the rest of the process (hostile test
    2026-12-05: 5 of 5 concurrent runs of two 2-thread plans did), which also changed the
    bits of later results of plans that did not limit BLAS (``threads=1`` then). OpenBLAS can
    also lose a change made while another thread is inside a BLAS call (the restore read back
    1 with a plan's unlimited GEMMs running in another thread), so every plan, threads=1
    included, keeps BLAS on one thread for its whole setup and each whole evaluation
    (:class:`aotfmm.evaluate.Plan`, :func:`one_thread`): the last region then ends when no
    BLAS call of ours runs. (A threaded call just before our own threads start also costs
    them: OpenBLAS's idle threads spin ~0.12 s after it.) A caller's own BLAS calls in other
    threads at that moment can still make OpenBLAS drop the restore."""
    ctl = _get_controller()
    if not ctl:
        return contextlib.nullcontext()
    return _shared_limit(ctl)


@contextlib.contextmanager
def _shared_limit(ctl):
    global _depth, _limiter
    with _depth_lock:
        if _depth == 0:
            _limiter = ctl.limit(limits=1, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _depth_lock:
            _depth -= 1
            if _depth == 0:
                limiter, _limiter = _limiter, None
                limiter.restore_original_limits()


def one_thread(func):
    """Decorator: ``func`` runs inside :func:`limit_one` (its signature kept)."""
    @functools.wraps(func)
    def limited(*args, **kwargs):
        with limit_one():
            return func(*args, **kwargs)
    return limited
