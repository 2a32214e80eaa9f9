"""The dispatch table against what the build compiled, and calls by name checked before the
compiled code runs (the kernels themselves check nothing)."""
import importlib.util
import os
import re
import sys

import numpy as np
import pytest

from aotfmm import _dispatch, _kernels
from aotfmm._exports import KERNELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src", "aotfmm")


def test_every_row_names_a_compiled_kernel_and_every_kernel_has_a_row():
    names = set(_dispatch.TABLE.values())
    assert names <= set(KERNELS), names - set(KERNELS)
    assert set(KERNELS) <= names, f"kernels without a dispatch row: {set(KERNELS) - names}"


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_the_active_module_exports_each_kernel_for_each_float_type(name):
    spec = KERNELS[name]
    symbols = [name + s for s in ("_f32", "_f64")] if spec["floats"] else [name]
    for sym in symbols:
        assert callable(getattr(_kernels.kernels, sym)), sym
    assert len(spec["params"]) == len(_dispatch.arg_types(name, np.float64))


@pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                    reason="needs numba (a build requirement) to read kernels/ as the build does")
def test_installed_table_is_the_build_export_table():
    """kernel names, parameter names and signatures installed == what compile_kernels.py
    exports from kernels/ now (export_table(): every symbol with its expanded signature)."""
    sys.path.insert(0, os.path.join(ROOT, "build_tools"))
    try:
        import compile_kernels
    finally:
        sys.path.remove(os.path.join(ROOT, "build_tools"))
    assert compile_kernels.kernel_table() == KERNELS
    exported = compile_kernels.export_table()
    expanded = {}
    for name, spec in KERNELS.items():
        if spec["floats"]:
            for ft, ct, suf in (("float32", "complex64", "_f32"),
                                ("float64", "complex128", "_f64")):
                expanded[name + suf] = spec["signature"].replace("{F}", ft).replace("{C}", ct)
        else:
            expanded[name] = spec["signature"]
    assert expanded == exported


def _p2p_pot_args(n=50, m=7, dt=np.float64, rng=None):
    rng = rng or np.random.default_rng(3)
    src = np.ascontiguousarray(rng.random((3, n)), dtype=dt)
    trg = np.ascontiguousarray(rng.random((3, m)) + 2.0, dtype=dt)
    z = np.zeros(1, np.int64)
    return dict(src_xyz=src, charges=np.ascontiguousarray(rng.standard_normal(n), dtype=dt),
                trg_xyz=trg, src_start=z, src_end=np.array([n]), trg_start=z.copy(),
                trg_end=np.array([m]), list_offsets=np.array([0, 1]), list_index=z.copy(),
                shift=np.zeros((1, 3), dt), boxes=z.copy(), refine=1,
                pot=np.zeros(m, dt))


@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_bound_call_by_name_is_the_direct_sum(dt):
    a = _p2p_pot_args(dt=dt)
    call = _dispatch.bind("p2p_pot", dt, **a)
    assert call.free == ("i0", "i1")
    call(0, 1)
    d = a["trg_xyz"].T.astype(float)[:, None, :] - a["src_xyz"].T.astype(float)[None]
    ref = (1.0 / np.sqrt((d * d).sum(-1))) @ a["charges"].astype(float) / (4 * np.pi)
    tol = 1e-13 if dt == np.float64 else 1e-5
    assert np.abs(a["pot"] - ref).max() <= tol * np.abs(ref).max()


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(charges=a["charges"].astype(np.float32)), "float64 array, got 1-D float32"),
    (lambda a: a.update(src_xyz=np.asfortranarray(a["src_xyz"])), "not C-contiguous"),
    (lambda a: a.update(src_start=a["src_start"].astype(np.int32)), "int64"),
    (lambda a: a.update(shift=a["shift"][0]), "2-D float64 array, got 1-D"),
    (lambda a: a.update(pot=list(a["pot"])), "expected an ndarray, got list"),
    (lambda a: a.update(refine=np.ones(2)), "expected a scalar"),
    (lambda a: a.update(bogus=1), "has no parameter(s) bogus"),
    (lambda a: a.pop("list_index"), "array parameter 'list_index' not given"),
])
def test_bad_arguments_are_refused_before_the_kernel_runs(change, message):
    a = _p2p_pot_args()
    change(a)
    with pytest.raises(TypeError, match=re.escape(message)):
        _dispatch.bind("p2p_pot", np.float64, **a)


def test_wrong_number_of_free_arguments_is_refused():
    call = _dispatch.bind("p2p_pot", np.float64, **_p2p_pot_args())
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'i1'"):
        call(0)


def test_unknown_combination_says_what_is_missing():
    with pytest.raises(NotImplementedError, match="no compiled kernel for p2p of yukawa"):
        _dispatch.kernel_name("yukawa", "p2p", "charge", "pot")
    assert _dispatch.kernel_name("laplace", "p2p", "charge", "pot") == "p2p_pot"


def test_no_positional_kernel_calls_outside_the_dispatch():
    """Every compiled kernel is reached through _dispatch.bind: no module fetches one itself."""
    offenders = []
    for fname in sorted(os.listdir(SRC)):
        if not fname.endswith(".py") or fname in ("_dispatch.py", "_kernels.py", "_exports.py"):
            continue
        text = open(os.path.join(SRC, fname), encoding="utf-8").read()
        for pat in (r"_kernels\.get\(", r"_kernels\.kernels\.", r"= _kernels\.kernels\b"):
            offenders += [f"{fname}: {m.group(0)}" for m in re.finditer(pat, text)]
    assert not offenders, offenders
