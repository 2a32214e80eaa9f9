"""Direct summation of Laplace potentials: the O(n_sources * n_targets) reference and the
building block of the FMM's near field (same compiled P2P kernels)."""
import numpy as np

from . import _kernels, _threads
from ._validation import (as_bool, as_charges, as_points, frame, power_of_two_scale,
                          resolve_dtype, to_soa)

__all__ = ["direct"]

#: Target chunks handed to the thread pool per thread (dynamic scheduling smooths out imbalance).
_CHUNKS_PER_THREAD = 4
#: Below this many pair interactions one thread is used: the pool hand-off costs more.
_MIN_PAIRS_FOR_THREADS = 200_000


def direct(sources, charges, targets=None, *, gradient=False, dtype=None, threads=None):
    """Potentials (and gradients) of point charges by direct summation.

    Computes, for every target x_i,

        u(x_i) = sum_j q_j / (4 pi |x_i - y_j|),   grad u(x_i) = -sum_j q_j (x_i - y_j) / (4 pi |x_i - y_j|^3)

    leaving out coincident pairs (x_i == y_j contributes 0, so the self-interaction is excluded
    when ``targets`` is None).

    Parameters
    ----------
    sources : array_like of shape (n_sources, 3)
        Source coordinates, any real dtype and memory order.
    charges : array_like of shape (n_sources,)
    targets : array_like of shape (n_targets, 3), optional
        Evaluation points; default: the sources themselves.
    gradient : bool, default False
        Also return the gradient of the potential at each target.
    dtype : {None, float32, float64}
        Precision of the computation and the result. None: float32 if the float inputs are all
        float32, else float64.
    threads : int, optional
        Threads to use; default ``$AOTFMM_NUM_THREADS`` or all CPUs available to the process.

    Returns
    -------
    pot : ndarray of shape (n_targets,)
    grad : ndarray of shape (n_targets, 3)
        Only if ``gradient`` is True; then ``(pot, grad)`` is returned.

    Raises
    ------
    TypeError
        Non-numeric, complex or boolean arrays; bad ``dtype`` or ``threads`` types.
    ValueError
        Wrong shapes, mismatched lengths, NaN or infinity in the input.
    FloatingPointError
        The result overflows the chosen dtype.

    Examples
    --------
    >>> import numpy as np, aotfmm
    >>> aotfmm.direct([[0.0, 0, 0], [1.0, 0, 0]], [1.0, 1.0]) * 4 * np.pi
    array([1., 1.])
    """
    gradient = as_bool("gradient", gradient)
    dt = resolve_dtype(dtype, sources, charges, targets)
    threads = _threads.resolve_threads(threads)
    src = as_points("sources", sources)
    q = as_charges("charges", charges, src.shape[0])
    trg = src if targets is None else as_points("targets", targets)
    return _direct(src, q, trg, gradient, dt, threads)


def _direct(src, q, trg, gradient, dt, threads, module=None):
    """Validated-input twin of :func:`direct`: src/trg float64 (n, 3), q float64 (n,).

    ``module`` picks a kernel module other than the active ISA's (tests compare them).
    """
    n_trg = trg.shape[0]
    pot = np.zeros(n_trg, dtype=dt)
    grad = np.zeros((3, n_trg), dtype=dt)
    if n_trg and src.shape[0]:
        # float64: exact power-of-two scaling only; float32: also centre, to keep its digits.
        center, scale = frame(src, trg, center=dt == np.float32)
        src_xyz = to_soa(src, center, scale, dt)
        trg_xyz = to_soa(trg, center, scale, dt) if trg is not src else src_xyz
        qscale = power_of_two_scale(np.abs(q).max())
        charges = np.empty(q.shape, dtype=dt)
        np.divide(q, qscale, out=charges, casting="unsafe")
        _p2p_all(src_xyz, charges, trg_xyz, pot, grad if gradient else None, threads, module)
        pot = _rescale(pot, qscale / scale, "potential")
        grad = _rescale(grad, qscale / scale / scale, "gradient") if gradient else grad
    return (pot, np.ascontiguousarray(grad.T)) if gradient else pot


def _rescale(values, factor, what):
    """Undo the frame's scaling; raise instead of returning inf when the result overflows."""
    if factor == 1.0:
        return values
    with np.errstate(over="ignore"):
        out = (values.astype(np.float64, copy=False) * factor).astype(values.dtype, copy=False)
    if not np.isfinite(out).all():
        raise FloatingPointError(f"the {what} overflows {values.dtype}")
    return out


def _p2p_all(src_xyz, charges, trg_xyz, pot, grad, threads, module=None):
    """All sources on all targets, targets split into chunks over the thread pool."""
    n_src, n_trg = src_xyz.shape[1], trg_xyz.shape[1]
    if n_src * n_trg < _MIN_PAIRS_FOR_THREADS:
        threads = 1
    trg_offsets = _threads.split(n_trg, threads * _CHUNKS_PER_THREAD)
    n_chunks = len(trg_offsets) - 1
    trg_start, trg_end = trg_offsets[:-1].copy(), trg_offsets[1:].copy()
    src_start, src_end = np.zeros(1, np.int64), np.array([n_src], dtype=np.int64)
    list_offsets = np.arange(n_chunks + 1, dtype=np.int64)
    list_index = np.zeros(n_chunks, dtype=np.int64)
    boxes = np.arange(n_chunks, dtype=np.int64)
    p2p(src_xyz, charges, trg_xyz, src_start, src_end, trg_start, trg_end, list_offsets,
        list_index, boxes, pot, grad, threads, module)


def p2p(src_xyz, charges, trg_xyz, src_start, src_end, trg_start, trg_end, list_offsets,
        list_index, boxes, pot, grad, threads, module=None, cost=None):
    """Run the P2P kernel over the target boxes ``boxes`` on the thread pool (trusted input).

    ``grad`` None: potential only. ``cost``: per-box work estimates for load balancing.
    """
    dt = pot.dtype
    if grad is None:
        kernel = _kernels.get("p2p_pot", dt, module)

        def work(i0, i1):
            kernel(src_xyz, charges, trg_xyz, src_start, src_end, trg_start, trg_end,
                   list_offsets, list_index, boxes, i0, i1, pot)
    else:
        kernel = _kernels.get("p2p_potgrad", dt, module)

        def work(i0, i1):
            kernel(src_xyz, charges, trg_xyz, src_start, src_end, trg_start, trg_end,
                   list_offsets, list_index, boxes, i0, i1, pot, grad)
    n = len(boxes)
    bounds = np.arange(n + 1) if cost is None else _threads.split(cost, threads * _CHUNKS_PER_THREAD)
    _threads.run(work, bounds, threads)
