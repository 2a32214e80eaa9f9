"""Hostile inputs for every public entry point: each case must give a correct result or raise
ValueError / TypeError / FloatingPointError: never crash, hang or return garbage.

Collected only through tests/test_hostile.py, which runs this file in a subprocess so that a
segfault in compiled code fails a test instead of killing the test run.
"""
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import aotfmm
from conftest import direct_reference

ALLOWED = (ValueError, TypeError, FloatingPointError)
SETTINGS = settings(max_examples=int(__import__("os").environ.get("AOTFMM_HOSTILE_EXAMPLES", 700)),
                    deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

DTYPES = [np.float64, np.float64, np.float64, np.float32, np.float32, np.float16, np.int64, np.int8, np.uint16, np.bool_,
          np.complex128, np.object_, np.str_]
GOOD_DTYPES = [np.float64, np.float64, np.float32, np.float16, np.int64, np.int8]
SPECIAL = [0.0, -0.0, 1.0, 1e-300, -1e-300, 1e300, -1e300, 5e-324, np.nan, np.inf, -np.inf]


def _point_shapes(n):
    return [(n, 3), (n, 3), (n, 3), (3, n), (n,), (n, 3, 1), (n, 4), ()]


def _charge_shapes(n):
    return [(n,), (n,), (n,), (n, 1), (n, 2), (n + 1,), (max(n - 1, 0),), (1, n), ()]


@st.composite
def arrays(draw, n=None, charges=False):
    """Arrays of many dtypes, shapes (mostly the right ones), values and memory layouts."""
    well_formed = draw(st.booleans())  # half the cases: right shape, real dtype, finite values
    dtype = draw(st.sampled_from(GOOD_DTYPES if well_formed else DTYPES))
    if n is None:
        n = draw(st.sampled_from([0, 1, 2, 3, 5, 17, 40]))
    shapes = _charge_shapes(n) if charges else _point_shapes(n)
    shape = shapes[0] if well_formed else draw(st.sampled_from(shapes))
    if dtype is np.object_:
        return np.empty(shape, dtype=object)
    if dtype is np.str_:
        return np.full(shape, "1.5")
    if np.dtype(dtype).kind == "f" or dtype is np.complex128:
        special = SPECIAL[:8] if well_formed else SPECIAL
        values = st.one_of(st.floats(-4, 4, allow_nan=False, width=16 if dtype is np.float16
                                     else 64), st.sampled_from(special))
        arr = draw(hnp.arrays(np.float64, shape, elements=values))
        with np.errstate(over="ignore", under="ignore"):
            arr = arr.astype(dtype)
    else:
        arr = draw(hnp.arrays(dtype, shape))
    layout = draw(st.sampled_from(["c", "f", "strided", "list"]))
    if layout == "f":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim >= 1:
        arr = np.repeat(arr, 2, axis=0)[::2]
    elif layout == "list":
        return arr.tolist()
    return arr


def _is_valid_points(a):
    a = np.asarray(a) if not isinstance(a, np.ndarray) else a
    return (a.dtype.kind in "iuf" and a.ndim == 2 and a.shape[1] == 3
            and np.isfinite(a.astype(np.float64)).all())


def _check(result, n_trg, gradient, k=None):
    pot, grad = result if gradient else (result, None)
    shape = (n_trg,) if k is None else (n_trg, k)
    assert pot.shape == shape and np.isfinite(pot).all()
    if gradient:
        assert grad.shape == shape + (3,) and np.isfinite(grad).all()


def _compare(src, q, trg, result, gradient, rtol):
    src = np.asarray(src, dtype=np.float64)
    trg = src if trg is None else np.asarray(trg, dtype=np.float64)
    spread = np.ptp(np.vstack([src, trg]), axis=0).max() if len(src) and len(trg) else 0
    if not (1e-100 < spread < 1e100) or len(src) > 60:
        return  # the reference itself over/underflows there
    q = np.asarray(q, dtype=np.float64)
    ref_pot, _ = direct_reference(src, q, trg)
    # Rounding errors scale with sum_j |q_j| / r (cancelling charges can make the potential
    # itself 0 while both sides round differently), so that is the yardstick.
    with np.errstate(over="ignore"):
        scale = np.abs(direct_reference(src, np.abs(q), trg)[0]).max() + 1e-300
    if not (np.isfinite(scale) and np.isfinite(ref_pot).all()):
        return  # the float64 reference overflows; the result was checked finite already
    pot = result[0] if gradient else result
    assert np.allclose(pot, ref_pot, rtol=rtol, atol=rtol * scale)


def call_or_raise(func, *args, **kwargs):
    """Run ``func``; return its result or None if it raised an allowed exception."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return func(*args, **kwargs)
        except ALLOWED as exc:
            assert str(exc), "exceptions must carry a message"
            return None


@SETTINGS
@given(data=st.data(), gradient=st.booleans(),
       dtype=st.sampled_from([None, np.float32, np.float64, "float64", np.int32, "complex64",
                              "garbage"]),
       threads=st.sampled_from([None, 1, 2, 0, -1, 2.5, True, "2"]))
def test_direct(data, gradient, dtype, threads):
    src = data.draw(arrays())
    n = np.shape(src)[0] if np.ndim(src) else 0
    q = data.draw(arrays(n=n, charges=True))
    trg = data.draw(st.one_of(st.none(), arrays()))
    result = call_or_raise(aotfmm.direct, src, q, trg, gradient=gradient, dtype=dtype,
                           threads=threads)
    if result is None:
        return
    # it returned: then the input was valid, and the result must be right
    assert _is_valid_points(src) and (trg is None or _is_valid_points(trg))
    n_trg = np.shape(src if trg is None else trg)[0]
    k = np.shape(q)[1] if np.ndim(q) == 2 else None  # (n, k) charges give (n_trg, k)
    _check(result, n_trg, gradient, k)
    pot = result[0] if gradient else result
    if pot.dtype == np.float64 and k is None:
        _compare(src, q, trg, result, gradient, rtol=1e-9)


FMM_SETTINGS = settings(SETTINGS, max_examples=int(__import__("os").environ.get(
    "AOTFMM_HOSTILE_FMM_EXAMPLES", 700)))


@FMM_SETTINGS
@given(data=st.data(), gradient=st.booleans(),
       eps=st.sampled_from([None, 1e-3, 1e-6, 0.0, 2.0, -1e-3, 1e-12, np.nan, "1e-3", 1e-3]),
       dtype=st.sampled_from([None, np.float32, np.float64, np.int32, "garbage"]))
def test_laplace(data, gradient, eps, dtype):
    src = data.draw(arrays())
    n = np.shape(src)[0] if np.ndim(src) else 0
    q = data.draw(arrays(n=n, charges=True))
    trg = data.draw(st.one_of(st.none(), arrays()))
    result = call_or_raise(aotfmm.laplace, src, q, trg, eps=eps, gradient=gradient,
                           dtype=dtype, threads=data.draw(st.sampled_from([None, 1, 2])))
    if result is None:
        return
    assert _is_valid_points(src) and (trg is None or _is_valid_points(trg))
    n_trg = np.shape(src if trg is None else trg)[0]
    k = np.shape(q)[1] if np.ndim(q) == 2 else None
    _check(result, n_trg, gradient, k)
    pot = result[0] if gradient else result
    if pot.dtype == np.float64 and k is None:
        _compare(src, q, trg, result, gradient, rtol=1e-5 if eps in (None, 1e-6) else 1e-2)


@FMM_SETTINGS
@given(data=st.data(), p=st.sampled_from([None, 2, 4, 17, 0, 3.0, "4"]),
       ncrit=st.sampled_from([None, 1, 2, 1000, 0, -5, 2.5]))
def test_plan_parameters_and_reuse(data, p, ncrit):
    src = data.draw(arrays())
    plan = call_or_raise(aotfmm.Fmm, src, p=p, ncrit=ncrit)
    if plan is None:
        return
    assert _is_valid_points(src)
    n = np.shape(src)[0]
    for _ in range(2):
        q = data.draw(arrays(n=n, charges=True))
        result = call_or_raise(plan.evaluate, q, gradient=data.draw(st.booleans()))
        if result is not None:
            pot = result[0] if isinstance(result, tuple) else result
            assert pot.shape[0] == n and np.isfinite(pot).all()


@settings(FMM_SETTINGS, max_examples=int(__import__("os").environ.get(
    "AOTFMM_HOSTILE_LFMM_EXAMPLES", 300)))
@given(data=st.data(), pg=st.sampled_from([0, 1, 2, 3, 1, 2, 3, 4, -1, True, 2.0, "2", None]),
       pgt=st.sampled_from([None, 0, 1, 2, 3, 4, 1.5]),
       with_q=st.booleans(), with_d=st.booleans())
def test_lfmm_dipoles_and_output_levels(data, pg, pgt, with_q, with_d):
    """lfmm (and through it Fmm.fields) with hostile charges, dipoles, targets and pg/pgt,
    Hessians included: a valid answer of the right shape or an allowed exception."""
    src = data.draw(arrays())
    n = np.shape(src)[0] if np.ndim(src) else 0
    q = data.draw(arrays(n=n, charges=True)) if with_q else None
    d = data.draw(arrays(n=n)) if with_d else None  # (n, 3) mostly, else hostile
    trg = data.draw(st.one_of(st.none(), arrays()))
    res = call_or_raise(aotfmm.lfmm, src, q, trg, dipoles=d, pg=pg, pgt=pgt,
                        eps=data.draw(st.sampled_from([1e-3, 1e-6, None])))
    if res is None:
        return
    assert _is_valid_points(src) and (trg is None or _is_valid_points(trg))
    assert with_q or with_d
    for name, count in (("", n), ("targ", 0 if trg is None else np.shape(trg)[0])):
        pot, grad, hess = (getattr(res, f + name) for f in ("pot", "grad", "hess"))
        for value, width in ((pot, None), (grad, 3), (hess, 6)):
            if value is None:
                continue
            assert value.shape[0] == count and np.isfinite(value).all()
            if width is not None:
                assert value.shape[-1] == width
