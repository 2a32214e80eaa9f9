"""Keep numpy's BLAS single-threaded while our own thread pool runs GEMMs (optional threadpoolctl).

threadpoolctl is optional: without it BLAS keeps its own thread count (it may oversubscribe the
CPUs while our pool runs, which costs speed, never correctness).
"""
import contextlib
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


def single_threaded(threads):
    """Context manager: BLAS limited to one thread when ``threads > 1``, else a no-op."""
    return contextlib.nullcontext() if threads <= 1 else limit_one()


def limit_one():
    """Context manager: BLAS on one thread, whatever our thread count (no-op without
    threadpoolctl). For work that we split over our own threads, and for many small LAPACK
    calls: OpenBLAS's spinning threads made a p = 5 operator build take 30 s instead of 0.7 s
    while another process kept one of two cores busy."""
    ctl = _get_controller()
    if not ctl:
        return contextlib.nullcontext()
    return ctl.limit(limits=1, user_api="blas")
