"""The kernel family seam (aotfmm.families): Laplace described once, and used by default.

LAPLACE's G equals a numpy 1/(4 pi r) written here; the operator builders take their kernel from
the family; the cache key carries the family's name and parameters (and Laplace's is unchanged,
so existing cache files stay valid); a family that is not scale invariant is refused where one
operator set for all levels would be built; no module but families.py writes 1/(4 pi) or the
homogeneity degree; Fmm uses LAPLACE.
"""
import ast
import dataclasses
import inspect
import io
import os
import re
import tokenize

import numpy as np
import pytest

import aotfmm
from aotfmm import _direct, _dispatch, _frame, _geometry, _m2l_svd, evaluate, operators, surfaces
from aotfmm.families import FAMILIES, LAPLACE, KernelFamily

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "aotfmm")



def _points(rng, n):
    return rng.random((n, 3)) * 4.0 - 2.0


def test_laplace_reference_is_one_over_four_pi_r(rng):
    x, y = _points(rng, 40), _points(rng, 30)
    y[7] = x[3]  # a coincident pair: left out (0)
    d = x[:, None, :] - y[None, :, :]
    r = np.sqrt((d * d).sum(-1))
    with np.errstate(divide="ignore"):
        want = np.where(r > 0, 1.0 / (4.0 * np.pi * r), 0.0)
    got = LAPLACE.reference(x, y)
    assert got.shape == (40, 30) and got.dtype == np.float64
    assert got[3, 7] == 0.0
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    # the operators' kernel matrix is the family's reference, bit for bit
    assert np.array_equal(surfaces.kernel_matrix(x, y), got)
    assert np.array_equal(surfaces.kernel_matrix(x, y, LAPLACE), got)


def test_laplace_g_of_r(rng):
    r = rng.random(100) * 10.0 + 1e-3
    want = 1.0 / (4.0 * np.pi * r)
    np.testing.assert_allclose(LAPLACE.g_of_r(r), want, rtol=1e-15, atol=0)
    buf = r.copy()
    out = LAPLACE.g_of_r(buf, out=buf)  # in place, as transfer_matrices uses it
    assert out is buf
    np.testing.assert_allclose(buf, want, rtol=1e-15, atol=0)


def test_transfer_matrices_are_the_reference_on_shifted_surfaces():
    """M2L's incremental |D - 2t| and the family's G give the reference matrices."""
    s = surfaces.surface(4)
    vecs = _geometry.TRANSFER_VECTORS[::53]
    got = _m2l_svd.transfer_matrices(s, 1.05, 1.05, vecs, LAPLACE)
    for k, t in zip(got, vecs):
        np.testing.assert_allclose(k, LAPLACE.reference(1.05 * s, 2.0 * t + 1.05 * s),
                                   rtol=1e-13, atol=0)


def test_family_fields():
    assert isinstance(LAPLACE, KernelFamily)
    assert (LAPLACE.name, LAPLACE.params, LAPLACE.scalar, LAPLACE.degree,
            LAPLACE.components) == ("laplace", (), "real", -1, 1)
    assert LAPLACE.scale_invariant and not aotfmm.Yukawa(1.0).scale_invariant
    assert LAPLACE in FAMILIES
    with pytest.raises(dataclasses.FrozenInstanceError):
        LAPLACE.degree = -2
    hash(LAPLACE)
    # the check-to-equivalent scale h**-degree: h itself for Laplace (same object: no h**1)
    h = np.array([1.0, 0.5, 0.25], dtype=np.float32)
    assert LAPLACE.c2e_scale(h) is h
    assert LAPLACE.c2e_scale(0.5) == 0.5
    assert np.array_equal(dataclasses.replace(LAPLACE, degree=-2).c2e_scale(h), h * h)
    with pytest.raises(ValueError, match="scalar"):
        dataclasses.replace(LAPLACE, scalar="quaternion")
    with pytest.raises(ValueError, match="not 'kernel'"):
        dataclasses.replace(LAPLACE, params=(("kernel", 1.0),))


def test_eps_tables_come_from_the_family():
    assert evaluate.choose_parameters(1e-6) == (8, 400)
    assert evaluate.order_error(8) == dict(LAPLACE.worst_error)[8]
    other = dataclasses.replace(LAPLACE, name="other", eps_table=((1e-3, 5, 100), (1e-9, 9, 300)),
                                worst_error=((5, 1e-4), (9, 1e-10)))
    assert evaluate.choose_parameters(1e-6, family=other) == (9, 300)
    assert evaluate.choose_parameters(1e-2, family=other) == (5, 100)
    assert evaluate.order_error(9, family=other) == 1e-10
    assert evaluate.order_error(4, family=other) == pytest.approx(1e-3)


def test_cache_key_carries_the_family():
    key = operators.operator_key(8, np.float64, method="svd")
    # Laplace's streamed-QR key is the one from before the seam: those cache files keep their
    # names; the default method names its own build
    assert key == {"kernel": "laplace", "p": 8, "r_up_equiv": 1.05, "r_up_check": 2.95,
                   "r_down_equiv": 2.95, "r_down_check": 1.05, "pinv_cutoff": 1e-13,
                   "m2l_method": "svd", "m2l_tol": 1e-8, "m2l_rank": -1, "dtype": "float64"}
    assert operators.operator_key(8, np.float64) == dict(key, m2l_method="sym")
    assert LAPLACE.cache_key() == {"kernel": "laplace"}
    screened = dataclasses.replace(LAPLACE, name="screened", params=(("kappa", 2.5),))
    assert screened.cache_key() == {"kernel": "screened", "kappa": 2.5}
    other = operators.operator_key(8, np.float64, family=screened)
    assert other["kernel"] == "screened" and other["kappa"] == 2.5
    assert {k: v for k, v in other.items() if k not in ("kernel", "kappa")} == \
        {k: v for k, v in operators.operator_key(8, np.float64).items() if k != "kernel"}
    assert aotfmm.cache.key_hash(other) != aotfmm.cache.key_hash(key)
    assert aotfmm.cache.key_hash(operators.operator_key(
        8, np.float64, family=dataclasses.replace(screened, params=(("kappa", 3.0),)))) != \
        aotfmm.cache.key_hash(other)
    with pytest.raises(ValueError, match="clash"):
        operators.operator_key(8, np.float64,
                               family=dataclasses.replace(LAPLACE, params=(("p", 1),)))


def test_a_family_that_is_not_scale_invariant_must_scale_with_its_parameters():
    # degree None: operators per level come from scaled(h); without a rule to scale it the
    # family is refused where it is made, before any operator or plan could use it
    with pytest.raises(ValueError, match="frame_degree"):
        dataclasses.replace(LAPLACE, name="test", degree=None)
    y = aotfmm.Yukawa(2.0)
    assert not y.scale_invariant and y.scaling_degree == -1
    assert y.scaled(0.25) == aotfmm.Yukawa(0.5) and y.c2e_scale(0.5) == 0.5
    assert _frame.field_power(y, 1) == -2


def test_dispatch_rows_are_the_family_sums():
    rows = {key[1:]: name for key, name in _dispatch.TABLE.items() if key[0] == LAPLACE.name}
    assert rows == dict(LAPLACE.sums)
    assert set(LAPLACE.sums) and all(name in _dispatch.TABLE.values()
                                     for _, name in LAPLACE.sums)
    assert {key[0] for key in _dispatch.TABLE} == {f.name for f in FAMILIES} | {"any"}


def _code_only(text):
    """``text`` with string literals (docstrings too) and comments blanked out: only code."""
    lines = text.splitlines(keepends=True)
    starts = np.cumsum([0] + [len(line) for line in lines])
    chars = list(text)
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.STRING, tokenize.COMMENT) or \
                tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            a = starts[tok.start[0] - 1] + tok.start[1]
            b = starts[tok.end[0] - 1] + tok.end[1]
            chars[a:b] = [" "] * (b - a)
    return "".join(chars)


def _laplace_strings(text):
    """Line numbers of the string constants "laplace" (any case) outside ``__all__`` (where
    it names the public function :func:`aotfmm.laplace`)."""
    tree = ast.parse(text)
    exported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                for t in node.targets):
            exported |= {id(c) for c in ast.walk(node.value)}
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.lower() == "laplace" and id(node) not in exported]


_FORBIDDEN = re.compile(r"\bINV4PI\b|\bKERNEL_DEGREE\b|\b4(\.0)?\s*\*\s*(np|numpy|math)\.pi\b|"
                        r"\b(np|numpy|math)\.pi\s*\*\s*4(\.0)?\b")


def test_only_the_family_module_knows_the_laplace_kernel():
    """No module under src/aotfmm but families.py has 1/(4 pi), the degree constant or a
    "laplace" string in its code (docstrings may describe the kernel, ``__all__`` names the
    public function aotfmm.laplace; kernels/ sources are compiled and exempt, they live
    outside src/aotfmm)."""
    offenders = []
    for root, _, files in os.walk(SRC):
        for fname in sorted(files):
            path = os.path.join(root, fname)
            rel = os.path.relpath(path, SRC)
            if not fname.endswith(".py") or rel in ("families.py", "_exports.py"):
                continue
            text = open(path, encoding="utf-8").read()
            code = _code_only(text)
            offenders += [f"{rel}: {m.group(0)}" for m in _FORBIDDEN.finditer(code)]
            offenders += [f"{rel}:{line}: 'laplace'" for line in _laplace_strings(text)]
    assert not offenders, offenders


def test_the_grep_would_see_an_offender():
    assert _FORBIDDEN.search(_code_only("x = 1.0 / (4.0 * np.pi)\n"))
    assert _FORBIDDEN.search(_code_only("k = INV4PI / r\n"))
    assert not _FORBIDDEN.search(_code_only('"""G = 1/(4 * np.pi r)"""\nx = 1  # 4 * np.pi\n'))
    assert _laplace_strings('__all__ = ["laplace"]\nkey = {"kernel": "laplace"}\n') == [2]


def test_laplace_is_the_default_everywhere(rng):
    for func, name in ((evaluate.Plan, "family"), (operators.get_operators, "family"),
                       (operators.build_operators, "family"), (operators.operator_key, "family"),
                       (surfaces.kernel_matrix, "family"), (_m2l_svd.build, "family"),
                       (_frame.unscale_fields, "family"), (evaluate.choose_parameters, "family"),
                       (_direct.p2p, "family"), (_direct._direct, "family")):
        assert inspect.signature(func).parameters[name].default is LAPLACE, func
    fmm = aotfmm.Fmm(rng.random((3000, 3)), p=3)  # a far field: the plan holds operators
    assert fmm.family is aotfmm.families.LAPLACE
    assert fmm._core.family is LAPLACE and fmm._core.ops.family is LAPLACE
    assert fmm._core.ops.key["kernel"] == "laplace"


def test_per_family_behaviour_comes_from_fields_not_the_name():
    """decay, dG/dr and the size-dependent orders are fields of the family: a renamed family
    behaves exactly like the one it copies (nothing dispatches on the name)."""
    from aotfmm.families import Helmholtz, Yukawa
    r = np.array([0.3, 1.0, 2.5])
    for fam in (aotfmm.Laplace(), Yukawa(2.0), Helmholtz(3.0 + 0.5j)):
        renamed = dataclasses.replace(fam, name="renamed_" + fam.name)
        for size in (None, 1.0, 5.0, 20.0):
            assert renamed.extra_orders(size) == fam.extra_orders(size)
        assert renamed.decay(0.7) == fam.decay(0.7)
        np.testing.assert_array_equal(renamed.dg_dr(r), fam.dg_dr(r))
        assert renamed.frequency_range == fam.frequency_range
    # the closed forms, independently: |G| decay and a centred difference of g_of_r
    assert Yukawa(2.0).decay(0.7) == pytest.approx(np.exp(-1.4))
    assert Helmholtz(3.0 + 0.5j).decay(0.7) == pytest.approx(np.exp(-0.35))
    assert aotfmm.Laplace().decay(0.7) == 1.0
    for fam in (aotfmm.Laplace(), Yukawa(2.0), Helmholtz(3.0 + 0.5j)):
        h = 1e-6
        num = (fam.g_of_r(r + h) - fam.g_of_r(r - h)) / (2 * h)
        np.testing.assert_allclose(fam.dg_dr(r), num, rtol=1e-7)
    hz = Helmholtz(10.0)
    assert hz.extra_orders(0.5) == (0, True) and hz.extra_orders(1.5) == (2, True)
    assert hz.extra_orders(3.5) == (3, True) and hz.extra_orders(4.5)[1] is False
    assert Yukawa(100.0).extra_orders(1e3) == (0, True)
