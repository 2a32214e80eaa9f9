"""aotfmm.direct and the compiled P2P kernels against an independent numpy direct sum."""
import os
import subprocess
import sys
import threading
import time

import warnings

import numpy as np
import pytest

import aotfmm
from aotfmm import _kernels
from aotfmm._threads import Workers
from aotfmm._direct import _direct, _p2p_all
from conftest import direct_reference, rel_err

TOL = {np.float64: 1e-12, np.float32: 1e-5}
RUNNABLE = _kernels.runnable_isas()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("separate", [False, True])
def test_potential_and_gradient_match_numpy(rng, dtype, separate):
    src = rng.random((700, 3))
    q = rng.standard_normal(700)
    trg = rng.random((300, 3)) * 2 - 0.5 if separate else None
    pot, grad = aotfmm.direct(src, q, trg, gradient=True, dtype=dtype)
    ref_pot, ref_grad = direct_reference(src, q, src if trg is None else trg)
    assert pot.dtype == dtype and grad.dtype == dtype
    assert pot.shape == (len(ref_pot),) and grad.shape == (len(ref_pot), 3)
    assert rel_err(pot, ref_pot) < TOL[dtype]
    assert rel_err(grad, ref_grad) < TOL[dtype]
    pot_only = aotfmm.direct(src, q, trg, dtype=dtype)
    assert rel_err(pot_only, ref_pot) < TOL[dtype]


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_runnable_isa_module_agrees(rng, isa, dtype):
    src = rng.random((500, 3))
    q = rng.standard_normal(500)
    module = _kernels.load(isa)
    pot, grad = _direct(src, q, src, True, np.dtype(dtype), Workers(2), module=module)
    ref_pot, ref_grad = direct_reference(src, q, src)
    assert rel_err(pot, ref_pot) < TOL[dtype]
    assert rel_err(grad, ref_grad) < TOL[dtype]
    # The FMM's near-field mode (one Newton step in float64's 1/r) on the same points.
    xyz = np.ascontiguousarray(src.T, dtype=dtype)
    qd = q.astype(dtype)
    for gradient in (False, True):
        p = np.zeros(500, dtype)
        g = np.zeros((3, 500), dtype) if gradient else None
        _p2p_all(xyz, qd, xyz, p, g, Workers(2), module, exact=False)
        assert rel_err(p, ref_pot) < TOL[dtype]
        if gradient:
            assert rel_err(g.T, ref_grad) < TOL[dtype]


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("exact", [True, False])
def test_near_coincident_points_in_float64(isa, exact):
    """Distances from 1e-8 down to 1e-100, including those (< ~1e-19) whose squared distance is
    below float32's range, where the float64 kernels' float32 1/r estimate gives up and the
    target must be redone exactly. Every potential and gradient must match numpy per point."""
    rng = np.random.default_rng(7)
    base = rng.random((200, 3)) * 2 - 1
    gaps = [1e-8, 1e-12, 1e-17, 3e-19, 1e-20, 1e-25, 1e-40, 1e-100]
    close = [[0.0, 0.0, 0.0]] + [[0.0, g, 0.0] if i % 2 else [g, 0.0, -g]
                                  for i, g in enumerate(gaps)]
    src = np.vstack([base, close, [[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]])
    q = rng.standard_normal(len(src))
    xyz = np.ascontiguousarray(src.T)
    module = _kernels.load(isa)
    pot, grad = np.zeros(len(src)), np.zeros((3, len(src)))
    _p2p_all(xyz, q, xyz, pot, grad, Workers(2), module, exact=exact)
    ref_pot, ref_grad = direct_reference(src, q, src)
    tol = 1e-12 if exact else 1e-11
    assert np.all(np.isfinite(pot)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(pot, ref_pot, rtol=tol, atol=0)
    gscale = np.abs(ref_grad).max(axis=1, keepdims=True)  # no norms: |grad| reaches 1e200
    assert np.all(np.abs(grad.T - ref_grad) <= tol * gscale)
    if exact:  # and the public function, which frames the points the same way (no centring)
        p, g = aotfmm.direct(src, q, gradient=True)
        np.testing.assert_allclose(p, ref_pot, rtol=tol, atol=0)
        assert np.all(np.abs(g - ref_grad) <= tol * gscale)


def test_all_isa_modules_export_the_same_names():
    import importlib
    names = []
    for isa in _kernels.built_isas():
        mod = importlib.import_module(f"aotfmm.{_kernels.module_name(isa)}")  # import only
        names.append(sorted(n for n in dir(mod) if not n.startswith("_")))
    assert names and all(n == names[0] for n in names)
    assert {"p2p_pot_f32", "p2p_pot_f64", "p2p_potgrad_f32", "p2p_potgrad_f64"} <= set(names[0])


def test_self_interaction_and_coincident_points_are_excluded():
    src = np.array([[0.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0]])
    q = np.array([1.0, 2.0, 3.0, 4.0])
    trg = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    for dtype in (np.float64, np.float32):
        pot, grad = aotfmm.direct(src, q, trg, gradient=True, dtype=dtype)
        assert np.isfinite(pot).all() and np.isfinite(grad).all()
        ref_pot, ref_grad = direct_reference(src, q, trg)
        np.testing.assert_allclose(pot, ref_pot, rtol=TOL[dtype])
        np.testing.assert_allclose(grad, ref_grad, rtol=TOL[dtype], atol=1e-7)
        # closed form at the origin: 2/1 + 3/1 + 4/2 over 4 pi
        assert abs(pot[0] - 7.0 / (4 * np.pi)) < 10 * TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_all_points_coincident_give_zero(dtype):
    """Exact zeros, and no warning about digits lost below the normal range (zeros are exact;
    the float64 subnormal check of 2026-12-06 first flagged them)."""
    src = np.ones((50, 3), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", aotfmm.AccuracyWarning)
        pot, grad = aotfmm.direct(src, np.ones(50, dtype=dtype), gradient=True)
    assert (pot == 0).all() and (grad == 0).all()


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e150, 1e300])
def test_tiny_and_huge_coordinates(rng, scale):
    src = rng.random((100, 3))
    q = rng.standard_normal(100)
    ref_pot, ref_grad = direct_reference(src, q, src)
    pot = aotfmm.direct(src * scale, q)
    assert rel_err(pot * scale, ref_pot) < 1e-12
    # The gradient scales as 1/scale**2: 1e600 does not exist in float64 (must raise), 1e-600
    # rounds to 0; the scales in between must keep full accuracy.
    if scale == 1e-300:
        with pytest.raises(FloatingPointError, match="gradient overflows"):
            aotfmm.direct(src * scale, q, gradient=True)
        return
    _, grad = aotfmm.direct(src * scale, q, gradient=True)
    if scale == 1e300:
        assert (grad == 0).all()
    else:
        assert rel_err(grad * scale * scale, ref_grad) < 1e-12


def test_far_from_origin_keeps_float32_digits(rng):
    src = rng.random((200, 3))
    q = rng.standard_normal(200)
    ref_pot, _ = direct_reference(src, q, src)
    pot = aotfmm.direct(src + 1e6, q, dtype=np.float32)
    assert rel_err(pot, ref_pot) < 1e-4  # coordinates are shifted before the cast to float32


def test_overflowing_result_raises():
    src = np.array([[0.0, 0, 0], [1e-300, 0, 0]])
    with pytest.raises(FloatingPointError, match="overflows float32"):
        aotfmm.direct(src, [1e30, 1e30], dtype=np.float32)


@pytest.mark.parametrize("layout", ["fortran", "strided", "int", "float16", "list"])
def test_memory_orders_and_dtypes(rng, layout):
    big = rng.integers(-50, 50, size=(400, 6)).astype(np.float64)
    src = big[::2, :3]
    q = rng.standard_normal(200)
    ref_pot, ref_grad = direct_reference(src, q, src)
    if layout == "fortran":
        arg = np.asfortranarray(src)
    elif layout == "strided":
        arg = src  # non-contiguous view: every other row, half the columns
        assert not arg.flags.c_contiguous
    elif layout == "int":
        arg = src.astype(np.int32)
    elif layout == "float16":
        arg = src.astype(np.float16)  # integers up to 50 are exact in float16
    else:
        arg = src.tolist()
    qarg = q[::1] if layout != "strided" else np.repeat(q, 2)[::2]
    pot, grad = aotfmm.direct(arg, qarg, gradient=True)
    tol = 1e-5 if layout == "float16" else 1e-12
    assert rel_err(pot, ref_pot) < tol and rel_err(grad, ref_grad) < tol


def test_dtype_resolution():
    src = np.random.default_rng(0).random((20, 3))
    assert aotfmm.direct(src.astype(np.float32), np.ones(20, np.float32)).dtype == np.float32
    assert aotfmm.direct(src, np.ones(20, np.float32)).dtype == np.float64
    assert aotfmm.direct(src.astype(np.float32), np.ones(20)).dtype == np.float64
    assert aotfmm.direct(src, np.ones(20), dtype="float32").dtype == np.float32


def test_threads_give_identical_results(rng):
    src = rng.random((3000, 3))
    q = rng.standard_normal(3000)
    one = aotfmm.direct(src, q, threads=1)
    for threads in (2, 3, 7):
        np.testing.assert_array_equal(aotfmm.direct(src, q, threads=threads), one)


def test_empty_inputs():
    empty = np.zeros((0, 3))
    assert aotfmm.direct(empty, np.zeros(0)).shape == (0,)
    pot, grad = aotfmm.direct(empty, np.zeros(0), np.ones((4, 3)), gradient=True)
    assert (pot == 0).all() and pot.shape == (4,) and grad.shape == (4, 3)
    pot, grad = aotfmm.direct(np.ones((4, 3)), np.ones(4), empty, gradient=True)
    assert pot.shape == (0,) and grad.shape == (0, 3)


def test_single_point():
    assert aotfmm.direct([[0.5, 0.5, 0.5]], [3.0]).tolist() == [0.0]


BAD = [
    (dict(sources=np.zeros((5, 2)), charges=np.zeros(5)), ValueError, "shape"),
    (dict(sources=np.zeros((3, 5)), charges=np.zeros(5)), ValueError, "transposed"),
    (dict(sources=np.zeros(3), charges=np.zeros(1)), ValueError, "shape"),
    (dict(sources=np.zeros((5, 3, 1)), charges=np.zeros(5)), ValueError, "shape"),
    (dict(sources=np.zeros((5, 3)), charges=np.zeros(4)), ValueError, "charges"),
    (dict(sources=np.zeros((5, 3)), charges=np.zeros((4, 2))), ValueError, "charges"),
    (dict(sources=np.zeros((5, 3)), charges=np.zeros((5, 2, 1))), ValueError, "charges"),
    (dict(sources=np.full((5, 3), np.nan), charges=np.zeros(5)), ValueError, "NaN"),
    (dict(sources=np.zeros((5, 3)), charges=[0, 0, np.inf, 0, 0]), ValueError, "NaN or inf"),
    (dict(sources=np.zeros((5, 3)), charges=np.zeros(5), targets=[[0, 0, np.nan]]), ValueError,
     "targets"),
    (dict(sources=np.zeros((5, 3), complex), charges=np.zeros(5)), TypeError, "real"),
    (dict(sources=np.zeros((5, 3)), charges=np.zeros(5, complex)), TypeError, "real"),
    (dict(sources=np.full((5, 3), "a"), charges=np.zeros(5)), TypeError, "real"),
    (dict(sources=np.zeros((5, 3), object), charges=np.zeros(5)), TypeError, "real"),
    (dict(sources=np.zeros((5, 3), bool), charges=np.zeros(5)), TypeError, "real"),
    (dict(sources=[[1, 2, 3], [1, 2]], charges=np.zeros(2)), TypeError, "real"),
    (dict(sources=None, charges=np.zeros(2)), TypeError, "sources"),
    (dict(sources=np.zeros((5, 3)), charges=np.zeros(5), dtype=np.int32), ValueError, "dtype"),
    (dict(sources=np.zeros((5, 3)), charges=np.zeros(5), dtype="complex128"), ValueError, "dtype"),
    (dict(sources=np.zeros((5, 3)), charges=np.zeros(5), dtype="nonsense"), TypeError, "dtype"),
    (dict(sources=np.zeros((5, 3)), charges=np.zeros(5), threads=0), ValueError, "threads"),
    (dict(sources=np.zeros((5, 3)), charges=np.zeros(5), threads=1.5), TypeError, "threads"),
    (dict(sources=np.zeros((5, 3)), charges=np.zeros(5), gradient="yes"), TypeError, "gradient"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD)
def test_bad_input_raises(kwargs, exc, match):
    kwargs = dict(kwargs)
    with pytest.raises(exc, match=match):
        aotfmm.direct(kwargs.pop("sources"), kwargs.pop("charges"), **kwargs)


def test_kernel_releases_the_gil(rng):
    """While one thread runs a long kernel call, the main thread must keep running Python code.

    With the GIL held the main thread would be frozen for the whole call (one gap as long as the
    call); released, its loop iterations keep coming at sub-millisecond gaps.
    """
    n = 16000
    xyz = rng.random((3, n))
    q = rng.standard_normal(n)
    pot = np.zeros(n)
    kernel = _kernels.get("p2p_pot", np.float64)
    start, end = np.array([0], dtype=np.int64), np.array([n], dtype=np.int64)
    lst = np.array([0, 1], dtype=np.int64)
    index = np.zeros(1, dtype=np.int64)
    done = threading.Event()
    started = threading.Event()

    def call():
        started.set()
        kernel(xyz, q, xyz, start, end, start, end, lst, index, np.zeros((1, 3)), index, 0, 1, 1,
               pot)
        done.set()

    worker = threading.Thread(target=call)
    t_start = time.perf_counter()
    worker.start()
    started.wait()
    stamps = []
    while not done.is_set():
        stamps.append(time.perf_counter())
    worker.join()
    duration = time.perf_counter() - t_start
    gaps = np.diff([t_start] + stamps)
    assert duration > 0.05, "problem too small to observe"
    assert gaps.max() < 0.5 * duration, (gaps.max(), duration)
    ref = direct_reference(xyz.T, q, xyz.T[:50])[0]
    assert rel_err(pot[:50], ref) < 1e-12


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=os.path.dirname(__file__) + "/..")


@pytest.mark.parametrize("isa", RUNNABLE)
def test_isa_environment_override(isa):
    out = _run("import aotfmm; print(aotfmm.config()['isa'])", AOTFMM_ISA=isa)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isa


def test_isa_environment_override_errors():
    out = _run("import aotfmm", AOTFMM_ISA="pentium-pro")
    assert out.returncode != 0 and "AOTFMM_ISA='pentium-pro' is not one of" in out.stderr


def test_cpu_feature_check():
    features = {f: True for f in _kernels.REQUIRES["x86-64-v3"]}
    assert _kernels.missing_features("x86-64-v3", features) == ()
    assert _kernels.missing_features("x86-64-v4", features) == _kernels.REQUIRES["x86-64-v4"][8:]
    assert _kernels.missing_features("generic", {}) == ()
    # numpy < 2.4 does not report BMI/BMI2/LZCNT/MOVBE: implied by AVX2
    old_numpy = {f: True for f in ("AVX", "AVX2", "FMA3", "F16C")}
    assert _kernels.missing_features("x86-64-v3", old_numpy) == ()
    assert _kernels.missing_features("x86-64-v3", dict(old_numpy, AVX2=False)) != ()
    # numpy >= 2.4's own verdict on the level wins
    assert _kernels.missing_features("x86-64-v3", dict(features, X86_V3=False)) == ("X86_V3",)


def test_show_config_reports_isa_and_threads(capsys):
    aotfmm.show_config()
    text = capsys.readouterr().out
    assert _kernels.ISA in text and "threads" in text and aotfmm.__version__ in text


def test_thread_count_environment_variable():
    out = _run("import aotfmm; print(aotfmm.config()['threads'])", AOTFMM_NUM_THREADS="3")
    assert out.stdout.strip() == "3"
    out = _run("import aotfmm, numpy as np; aotfmm.direct(np.zeros((2, 3)), [1, 1])",
               AOTFMM_NUM_THREADS="zero")
    assert out.returncode != 0 and "AOTFMM_NUM_THREADS must be a positive integer" in out.stderr


def test_float64_keeps_exact_differences_far_from_the_origin():
    # found by the hostile suite: centring the frame rounded the spacing 1 away near 2**53
    src = np.array([[-2.0**53, 1, 1], [0, 1, 1], [1, 1, 1]])
    pot = aotfmm.direct(src, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(pot, direct_reference(src, [1.0, 1.0, 1.0], src)[0], rtol=1e-15)
