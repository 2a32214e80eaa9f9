"""Every check of user input lives here; compiled kernels trust what comes out of it.

AOT-compiled kernels do no type checking at all: a wrong dtype crashes the process, a Fortran-
ordered or strided array gives silently wrong numbers, a short array reads out of bounds. Public
entry points therefore pass every argument through these functions *before* any kernel call.
"""
import numbers

import numpy as np


class AccuracyWarning(UserWarning):
    """The requested accuracy is probably not met (e.g. float32 on a very deep tree).

    Defined here, in the leaf module of checks, so that every module can warn without an
    import cycle; ``aotfmm.AccuracyWarning`` and ``aotfmm.evaluate.AccuracyWarning`` are it."""

    __module__ = "aotfmm"


#: Float types the kernels are compiled for.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


#: Smallest eps each dtype can honour (relative L2 error of potentials and gradients).
#: float64 reaches ~2e-11 at p = 14 on ordinary point sets; very deep trees (two 1e-3 clusters ten
#: units apart, separate targets) saturate at ~2e-10 (benchmarks/accuracy.py).
EPS_FLOOR = {"float32": 5e-6, "float64": 2e-10}
#: Smallest relative error Hessians reach (far-field part, measured: two clusters 1e-3 wide and
#: 10 apart with dipoles, targets around them: 2.6e-9 at p = 14 and 15 alike in float64).
HESSIAN_EPS_FLOOR = {"float32": 5e-6, "float64": 3e-9}
#: eps when none is given.
EPS_DEFAULT = {"float32": 1e-5, "float64": 1e-6}


def check_eps(eps, dtype):
    """The requested accuracy for ``dtype``: its default for None, else a float in (0, 1) no
    smaller than the dtype's floor."""
    if eps is None:
        return EPS_DEFAULT[dtype.name]
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {eps!r}")
    eps = float(eps)
    if not (0.0 < eps < 1.0) or not np.isfinite(eps):
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    floor = EPS_FLOOR[dtype.name]
    if eps < floor:
        hint = "; use dtype=float64" if dtype == np.float32 else ""
        raise ValueError(f"eps={eps:g} is below what {dtype.name} can reach "
                         f"(smallest supported: {floor:g}){hint}")
    return eps


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
    # a complex array counts by its parts' precision: complex64 is single, like float32
    floats = [d.itemsize // (2 if d.kind == "c" else 1) for d in kinds if d.kind in "fc"]
    if floats and all(size <= 4 for size in floats):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


COMPLEX_DTYPES = (np.dtype(np.complex64), np.dtype(np.complex128))


def kernel_label(family):
    """How a family names itself in messages: ``Yukawa(lam=2.0)``, ``Laplace()``."""
    return family.label or f"{family.name.capitalize()}()"


def kernel_call(family):
    """How a family is asked for: ``aotfmm.Yukawa(lam)``, ``aotfmm.Laplace()``."""
    return f"aotfmm.{family.name.capitalize()}({', '.join(k for k, _ in family.params)})"


def _string_kernel_hint(text):
    """What a string ``kernel=`` probably meant: ``pass aotfmm.Yukawa(lam)``."""
    from .families import FAMILIES
    calls = {f.name: kernel_call(f) for f in FAMILIES}
    calls["modified_helmholtz"] = calls.get("yukawa")
    meant = calls.get(text.strip().lower().replace("-", "_").replace(" ", "_"))
    return f"pass {meant}" if meant else "pass one of " + ", ".join(
        calls[f.name] for f in FAMILIES)


def check_kernel(kernel):
    """The kernel family of a ``kernel=`` argument (None: Laplace)."""
    from .families import LAPLACE, KernelFamily
    if kernel is None:
        return LAPLACE
    if isinstance(kernel, str):
        raise TypeError(f"kernel must be a kernel object, not the string {kernel!r}: "
                        f"{_string_kernel_hint(kernel)}")
    if isinstance(kernel, type) or callable(kernel) and not isinstance(kernel, KernelFamily):
        name = getattr(kernel, "__name__", repr(kernel))
        raise TypeError(f"kernel must be a kernel object, not the function {name} that makes "
                        f"one: {_string_kernel_hint(name)}")
    if not isinstance(kernel, KernelFamily):
        raise TypeError(f"kernel must be aotfmm.Laplace(), aotfmm.Yukawa(lam) or "
                        f"aotfmm.Helmholtz(kappa), got {kernel!r}")
    return kernel


def resolve_value_dtype(family, dtype, *arrays):
    """The dtype of a kernel's densities and results: float32/float64 for a real kernel,
    complex64/complex128 for a complex one (None: from the points, as :func:`resolve_dtype`)."""
    if not family.complex:
        if dtype is not None:
            try:
                dt = np.dtype(dtype)
            except TypeError:
                dt = None
            if dt is not None and dt.kind == "c":
                raise ValueError(f"dtype {dt} is complex, but {kernel_label(family)} is a real "
                                 "kernel: use float32 or float64")
        return resolve_dtype(dtype, *arrays)
    if dtype is None:
        return family.value_dtype(resolve_dtype(None, *arrays))
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be complex64 or complex128, got {dtype!r}") from exc
    if dt not in COMPLEX_DTYPES:
        raise ValueError(f"{kernel_label(family)} has complex densities and results: dtype "
                         f"must be complex64 or complex128 (or None), got {dt}")
    return dt


def real_dtype(dt):
    """float32/float64 of a value dtype (the coordinates' precision)."""
    return np.dtype(np.float32) if dt in (np.float32, np.complex64) else np.dtype(np.float64)


def _as_real_array(name, a, complex_ok=False):
    """``a`` as a numpy array of a real numeric kind (int, unsigned or float; also complex when
    ``complex_ok``), else TypeError."""
    if a is None:
        raise TypeError(f"{name} is required, got None")
    what = "numbers" if complex_ok else "real numbers"
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and other things numpy cannot turn into an array
        raise TypeError(f"{name} must be an array of {what}: {exc}") from None
    if arr.dtype.kind not in ("iufc" if complex_ok else "iuf"):
        hint = (" (complex values need a complex kernel, e.g. aotfmm.Helmholtz(kappa))"
                if arr.dtype.kind == "c" and name not in ("sources", "targets") else "")
        raise TypeError(f"{name} must hold {what} (int or float"
                        f"{' or complex' if complex_ok else ''}), got dtype {arr.dtype}{hint}")
    return arr


def _check_finite(name, arr):
    # One sum is enough when the data is clean (the common case); it overflows only for huge
    # finite values, which the elementwise check then clears.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(arr.sum()):
            return
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity")


#: the largest integer coordinate taken: every integer up to 2^53 is a float64
_INT_EXACT = 2 ** 53


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
    if arr.dtype.kind in "iu" and arr.size and \
            max(int(arr.max()), -int(arr.min())) > _INT_EXACT:
        # float64 holds integers exactly only up to 2^53: (2^60, 0, 0) and (2^60 + 1, 0, 0)
        # became one point and their pair was dropped (hostile test 2026-12-03)
        raise ValueError(f"{name} holds integer coordinates beyond 2^53, which float64 cannot "
                         f"hold exactly (distinct points could merge): subtract a common "
                         f"offset first, or pass floats if the rounding is acceptable")
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


def check_level(name, value, default, allowed, why):
    """FMM3D's pg / pgt output level: 0, 1, 2 or 3 (``default`` for None); nonzero only when
    ``allowed`` (else ValueError saying ``why``)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            value not in (0, 1, 2, 3):
        raise ValueError(f"{name} must be 0, 1, 2 or 3, got {value!r}")
    if value and not allowed:
        raise ValueError(f"{name}={value} asks for fields that {why}")
    return int(value)


def as_dipole_array(dipoles, n, complex_ok=False):
    """Dipoles (n, 3) or (n, k, 3) -> float64 (complex128 if ``complex_ok``) (k, 3, n) C array,
    and whether 2-D."""
    arr = _as_real_array("dipoles", dipoles, complex_ok)
    if arr.ndim == 2 and arr.shape == (n, 3):
        one, arr = True, arr.T[None]
    elif arr.ndim == 3 and arr.shape[0] == n and arr.shape[1] >= 1 and arr.shape[2] == 3:
        one, arr = False, arr.transpose(1, 2, 0)
    else:
        hint = ""
        if arr.shape == (3, n):
            hint = " (it looks transposed: pass one dipole per row, e.g. dipoles.T)"
        elif arr.ndim == 3 and arr.shape[1:] == (3, n):
            hint = (" (it looks like FMM3D's (nd, 3, n) layout: pass "
                    "dipoles.transpose(2, 0, 1))")
        elif arr.ndim == 3 and arr.shape[0] == n and arr.shape[1] == 3:
            hint = " (it looks like (n, 3, k): pass dipoles.transpose(0, 2, 1))"
        raise ValueError(f"dipoles must have shape ({n}, 3) or ({n}, k, 3) to match the {n} "
                         f"sources, got {arr.shape}{hint}")
    arr = np.ascontiguousarray(arr, dtype=np.complex128 if complex_ok else np.float64)
    _check_finite("dipoles", arr)
    return arr, one


def as_densities(charges, dipoles, n, complex_ok=False):
    """Validated (charges (k, n) or None, dipoles (k, 3, n) or None, single) for n sources:
    float64, or complex128 when ``complex_ok`` (a complex kernel)."""
    if charges is None and dipoles is None:
        raise ValueError("give charges, dipoles or both")
    q = d = None
    single = None
    if charges is not None:
        q, single = as_charge_matrix("charges", charges, n, complex_ok)
    if dipoles is not None:
        d, d_single = as_dipole_array(dipoles, n, complex_ok)
        if q is not None and (d_single != single or d.shape[0] != q.shape[0]):
            raise ValueError(f"charges {np.shape(charges)} and dipoles {np.shape(dipoles)} "
                             f"must describe the same number of densities: (n,) with (n, 3), "
                             f"or (n, k) with (n, k, 3)")
        single = d_single
    return q, d, single


def as_charge_matrix(name, charges, n, complex_ok=False):
    """Charges (n,) or (n, k) -> float64 (complex128 if ``complex_ok``) (k, n) C array, and
    whether the input was 1-D."""
    arr = _as_real_array(name, charges, complex_ok)
    if arr.ndim == 1 and arr.shape[0] == n:
        one = True
        arr = arr[None, :]
    elif arr.ndim == 2 and arr.shape[0] == n and arr.shape[1] >= 1:
        one = False
        arr = arr.T
    else:
        hint = ""
        if arr.ndim == 2 and arr.shape[1] == n:
            hint = (f" (it looks transposed: pass one density per column, e.g. {name}.T)")
        raise ValueError(f"{name} must have shape ({n},) or ({n}, k) to match the {n} sources, "
                         f"got {arr.shape}{hint}")
    arr = np.ascontiguousarray(arr, dtype=np.complex128 if complex_ok else np.float64)
    _check_finite(name, arr)
    return arr, one


def from_dipvec(dipvec, n, complex_ok=False):
    """FMM3D's dipvec, (3, n) or (nd, 3, n) -> our dipoles layout (n, 3) or (n, nd, 3)
    (complex accepted when ``complex_ok``)."""
    arr = _as_real_array("dipvec", dipvec, complex_ok)
    if arr.ndim == 2 and arr.shape == (3, n):
        return arr.T
    if arr.ndim == 3 and arr.shape[1:] == (3, n) and arr.shape[0] >= 1:
        return arr.transpose(2, 0, 1)
    hint = ""
    if arr.ndim in (2, 3) and arr.shape[0] == n and arr.shape[-1] == 3:
        hint = " (that is the dipoles= layout: pass it as dipoles=)"
    raise ValueError(f"dipvec (FMM3D's layout) must have shape (3, {n}) or (nd, 3, {n}) to "
                     f"match the {n} sources, got {arr.shape}{hint}")


def charges_for_nd(charges, nd, n, complex_ok=False):
    """Charges given with FMM3D's nd: (nd, n) (FMM3D's layout) -> (n, nd); others unchanged
    (complex accepted when ``complex_ok``)."""
    if charges is None:
        return None
    arr = _as_real_array("charges", charges, complex_ok)
    if arr.ndim == 2 and arr.shape == (nd, n) and n > 1:
        if nd == n:
            raise ValueError(f"charges has shape ({n}, {n}) and nd={nd} equals the number of "
                             "sources: FMM3D's (nd, n) layout and ours (n, k) cannot be told "
                             "apart; pass charges as (n, k) columns (FMM3D's charges.T) and "
                             "leave out nd")
        return arr.T
    return arr


def as_diagonal(diagonal, n, complex_ok=False):
    """A linear operator's diagonal: None -> 0.0, else a finite scalar or (n,) float64 array
    (complex128 when ``complex_ok``: a complex kernel's operator)."""
    diag = np.float64(0.0)
    if diagonal is not None:
        diag = _as_real_array("diagonal", diagonal, complex_ok)
        diag = diag.astype(np.complex128 if complex_ok else np.float64)
        if diag.ndim not in (0, 1) or (diag.ndim == 1 and diag.shape != (n,)):
            raise ValueError(f"diagonal must be a scalar or have shape ({n},), "
                             f"got {diag.shape}")
        _check_finite("diagonal", diag)
    return diag


#: Smallest nonzero coordinate difference (in units of the frame's half-width) each dtype keeps
#: exactly through the kernels: distinct values at least this large differ by at least their
#: ulp, whose square stays a normal number (float64: 2^-400 * 2^-52 squared = 2^-904; float32:
#: 2^-40 * 2^-23 squared = 2^-126, the smallest normal float32). float32 had 2^-100 until
#: 2026-12-02: a pair 1e-23 apart in a unit problem then had r^2 = 0 and was dropped as
#: coincident, and one 1e-22 apart (a subnormal r^2) was 1 % off.
_TINY = {"float64": 2.0 ** -400, "float32": 2.0 ** -40}


def tiny_offset(scale, dt):
    """The smallest nonzero offset (caller units) :func:`check_representable` accepts."""
    return _TINY[np.dtype(dt).name] * scale


def check_representable(d, scale, dt):
    """Raise if differences ``d`` (caller units) of points from their anchors are nonzero but
    below what the frame of half-width ``scale`` can represent in ``dt`` (they would collapse
    onto one point and be skipped as coincident)."""
    limit = tiny_offset(scale, dt)
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
