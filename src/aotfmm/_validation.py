"""Every check of user input lives here; compiled kernels trust what comes out of it.

AOT-compiled kernels do no type checking at all: a wrong dtype crashes the process, a Fortran-
ordered or strided array gives silently wrong numbers, a short array reads out of bounds. Public
entry points therefore pass every argument through these functions *before* any kernel call.
"""
import numbers

import numpy as np

#: Float types the kernels are compiled for.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def resolve_dtype(dtype, *arrays):
    """Compute dtype: ``dtype`` if given (float32/float64), else float32 when every float input is
    float32 (or float16), else float64."""
    if dtype is not None:
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
        if dt not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {dt}")
        return dt
    kinds = [np.asarray(a).dtype for a in arrays if a is not None and hasattr(a, "dtype")]
    floats = [d for d in kinds if d.kind == "f"]
    if floats and all(d.itemsize <= 4 for d in floats):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _as_real_array(name, a):
    """``a`` as a numpy array of a real numeric kind (int, unsigned or float), else TypeError."""
    if a is None:
        raise TypeError(f"{name} is required, got None")
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and other things numpy cannot turn into an array
        raise TypeError(f"{name} must be an array of real numbers: {exc}") from None
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers (int or float), got dtype {arr.dtype}")
    return arr


def _check_finite(name, arr):
    # One sum is enough when the data is clean (the common case); it overflows only for huge
    # finite values, which the elementwise check then clears.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(arr.sum()):
            return
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity")


def as_points(name, a):
    """Points given as (n, 3) rows -> float64 array of shape (n, 3), checked finite.

    Any real dtype and memory order is accepted (the result is a new or viewed float64 array).
    """
    arr = _as_real_array(name, a)
    if arr.ndim != 2 or arr.shape[1] != 3:
        hint = ""
        if arr.ndim == 2 and arr.shape[0] == 3:
            hint = " (it looks transposed: pass one point per row, e.g. xyz.T)"
        elif arr.ndim == 1 and arr.shape[0] == 3:
            hint = " (a single point is xyz.reshape(1, 3))"
        raise ValueError(f"{name} must have shape (n, 3), got {arr.shape}{hint}")
    arr = arr.astype(np.float64, copy=False)
    _check_finite(name, arr)
    return arr


def as_charges(name, a, n):
    """Charges for ``n`` sources, shape (n,) -> float64 array (n,), checked finite."""
    arr = _as_real_array(name, a)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the {n} sources, "
                         f"got {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    _check_finite(name, arr)
    return arr


def as_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


#: Smallest nonzero coordinate difference (in units of the frame's half-width) each dtype keeps
#: exactly through the kernels: distinct values at least this large differ by at least their
#: ulp, whose square stays a normal number (float64: 2^-400 * 2^-52 squared = 2^-904).
_TINY = {"float64": 2.0 ** -400, "float32": 2.0 ** -100}


def check_representable(d, scale, dt):
    """Raise if differences ``d`` (caller units) of points from their anchors are nonzero but
    below what the frame of half-width ``scale`` can represent in ``dt`` (they would collapse
    onto one point and be skipped as coincident)."""
    limit = _TINY[np.dtype(dt).name] * scale
    if limit > 0.0:
        a = np.abs(d)
        bad = (a > 0.0) & (a < limit)
        if bad.any():
            smallest = float(a[bad].min())
            raise ValueError(
                f"the points span too wide a range of scales for {np.dtype(dt).name}: "
                f"coordinates differ by {smallest:.3g} in a problem of extent {2 * scale:.3g} "
                f"(ratio below {_TINY[np.dtype(dt).name]:.3g}); such points cannot be "
                "told apart from coincident ones. Split the problem by scale"
                + (" or use dtype=float64" if np.dtype(dt) == np.float32 else ""))


def check_integer(name, value, lo=None, hi=None, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    return value
