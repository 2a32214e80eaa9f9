"""`aotfmm run` / `demo`: empty problems, dipoles, HDF5 and .npz key checks, integer caps, the
default eps per dtype, the .npy layout and --version. Numbers are checked against a plain numpy
direct sum written here."""
import subprocess
import sys

import numpy as np
import pytest

import aotfmm
from aotfmm.cli import main

EPS = ["--eps", "1e-3"]


def numpy_fields(src, trg, q=None, d=None):
    """Potential (m,) and gradient (m, 3) at trg of charges q (n,) and dipoles d (n, 3) at src,
    kernel 1/(4 pi r), a dipole d at y giving d.(x - y) / (4 pi r^3); r = 0 pairs left out."""
    x = trg[:, None, :] - src[None, :, :]
    r = np.sqrt((x * x).sum(-1))
    inv = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0), 0.0)
    pot, grad = np.zeros(len(trg)), np.zeros((len(trg), 3))
    if q is not None:
        pot += inv @ q
        grad -= np.einsum("tsk,ts,s->tk", x, inv ** 3, q)
    if d is not None:
        xd = np.einsum("tsk,sk->ts", x, d)
        pot += (xd * inv ** 3).sum(1)
        grad += np.einsum("sk,ts->tk", d, inv ** 3) - 3 * np.einsum("ts,tsk,ts->tk", xd, x,
                                                                      inv ** 5)
    return pot / (4 * np.pi), grad / (4 * np.pi)


def rel(x, ref):
    return np.linalg.norm(x - ref) / np.linalg.norm(ref)


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "aotfmm", *map(str, args)], capture_output=True,
                          text=True, timeout=600, **kw)


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _h5(path, **arrays):
    import h5py
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if isinstance(v, str) and v == "group":
                f.create_group(k)
            else:
                f[k] = v


# -- empty problems ---------------------------------------------------------------------------

def _empty_input(path, fmt):
    if fmt == "npy":
        np.save(path, np.zeros((0, 4)))
    elif fmt == "csv":
        path.write_text("x,y,z,q\n")
    elif fmt == "npz":
        np.savez(path, sources=np.zeros((0, 3)), charges=np.zeros(0))
    else:
        _h5(path, sources=np.zeros((0, 3)), charges=np.zeros(0))


@pytest.mark.parametrize("fin", ["npy", "csv", "npz", "h5"])
@pytest.mark.parametrize("fout", ["npy", "csv", "npz", "h5"])
def test_zero_row_problem_writes_an_empty_result(tmp_path, capsys, fin, fout):
    inp, out = tmp_path / f"in.{fin}", tmp_path / f"out.{fout}"
    _empty_input(inp, fin)
    assert main(["run", str(inp), "-o", str(out), "-q"] + EPS) == 0, capsys.readouterr().err
    if fout == "npy":
        assert np.load(out).shape == (0,)
    elif fout == "csv":
        assert out.read_text().strip() == "potential"
    elif fout == "npz":
        with np.load(out) as d:
            assert d["potential"].shape == (0,)
    else:
        import h5py
        with h5py.File(out, "r") as f:
            assert f["potential"].shape == (0,)


def test_zero_row_problem_with_gradient_and_two_densities(tmp_path):
    inp, out = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(inp, np.zeros((0, 5)))
    assert main(["run", str(inp), "-o", str(out), "--gradient", "-q"] + EPS) == 0
    assert np.load(out).shape == (0, 2 + 6)


def test_empty_text_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "in.csv").write_text("# nothing here\n")
    assert main(["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.npy")]) == 2
    assert "no rows and no line of column names" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("text, line, token", [
    ("1,2,3,abc\n0,0,0,1\n1,0,0,1\n", 1, "abc"),      # a corrupt first row is not a header
    ("0,0,0,0x10\n1,0,0,1\n2,0,0,1\n", 1, "0x10"),
    ("x,y,z,q\n0,0,0,1\n1,2,3,abc\n", 3, "abc"),
    ("# c\nx y z q\n0 0 0 1\n1 0 0 1_0\n", 4, "1_0"),  # float() would read 10
])
def test_text_fields_that_are_not_numbers_name_their_line(tmp_path, capsys, text, line, token):
    (tmp_path / "in.csv").write_text(text)
    assert main(["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.npy")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"line {line}: {token!r} is not a number" in err
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("text, message", [
    ("x,y,z,q1,q2\n0.1,0.2,0.3,,2\n0.4,0.5,0.6,,3\n", "line 2: field 4 is empty"),
    ("x,y,z,q\n0.1,0.2,0.3,1,5\n0.4,0.5,0.6,2,7\n", "line 2 has 5 fields, line 1 has 4 (the "
                                                   "column names)"),
    ("0,0,0,1\n1,0,0\n", "line 2 has 3 fields, line 1 has 4"),
    ("0 0 0 1\n1 0 0 2 3\n", "line 2 has 5 fields, line 1 has 4"),
])
def test_text_columns_never_shift(tmp_path, capsys, text, message):
    """An empty CSV field or a row longer than the names was dropped or taken as another
    density (exit 0, wrong charges): now an error naming the line."""
    (tmp_path / "in.csv").write_text(text)
    assert main(["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.npy")]) == 2
    assert message in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize("text", ["\ufeff0,0,0,1\n1,0,0,2\n",            # byte-order mark
                                  "x,y,z,q,\n0,0,0,1,\n1,0,0,2,\n",      # trailing commas
                                  "0 ,\t0,0, 1\r\n1, 0,0 ,2\r\n"])         # blanks, CRLF
def test_text_layouts_that_are_read(tmp_path, text):
    (tmp_path / "in.csv").write_text(text, encoding="utf-8", newline="")
    assert main(["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.npy"), *EPS]) == 0
    src = np.array([[0.0, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"),
                               numpy_fields(src, src, q=np.array([1.0, 2.0]))[0], rtol=1e-12)


def test_text_header_line_and_comments_are_skipped(tmp_path):
    (tmp_path / "in.csv").write_text("# points\nx, y, z, q\n0, 0, 0, 1\n# mid\n1, 0, 0, 2\n")
    assert main(["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.npy"), *EPS]) == 0
    pot = np.load(tmp_path / "o.npy")
    src = np.array([[0.0, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(pot, numpy_fields(src, src, q=np.array([1.0, 2.0]))[0],
                               rtol=1e-12)


@pytest.mark.parametrize("name, content, message", [
    ("in.npy", b"\x00garbage" * 100, "not a NumPy .npy file"),
    ("in.npy", b"", "not a NumPy .npy file (it is empty)"),
    ("in.npz", b"\x00garbage" * 100, "not a NumPy .npz (zip) file"),
])
def test_files_that_are_not_numpy_files_say_so(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    assert main(["run", str(tmp_path / name), "-o", str(tmp_path / "o.npy")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert message in err and "pickle" not in err.replace("pickled", "")


def test_object_arrays_are_refused_without_advice_to_unpickle(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.array([[0, 0, 0, {"q": 1}]], dtype=object),
            allow_pickle=True)
    assert main(["run", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy")]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "holds Python objects" in err and "allow_pickle" not in err


# -- integer caps -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, name, cap", [
    (["demo", "-n", "99999999999999999999"], "-n", "100000000"),
    (["demo", "--threads", "99999999999999999999"], "--threads", "4096"),
    (["demo", "--sample", "99999999999999999999"], "--sample", "100000000"),
    (["run", "in.npy", "-o", "out.npy", "--threads", "5000"], "--threads", "4096"),
])
def test_huge_integer_options_are_refused_naming_the_option(args, name, cap):
    r = cli(*args)
    assert r.returncode == 2
    assert f"argument {name}: must be at most {cap}" in r.stderr
    assert "Traceback" not in r.stderr and "Maximum allowed" not in r.stderr


def test_help_states_the_caps():
    r = cli("demo", "--help")
    assert r.returncode == 0 and "100000000" in r.stdout and "4096" in r.stdout


# -- demo -------------------------------------------------------------------------------------

def test_demo_with_one_point_reports_no_nan_and_no_warning():
    r = cli("demo", "-n", "1", "--eps", "1e-3")
    assert r.returncode == 0, r.stderr
    assert "n/a (reference is zero)" in r.stdout and "nan" not in r.stdout.lower()
    assert "Warning" not in r.stderr


def test_demo_float32_uses_the_dtype_default_eps():
    r = cli("demo", "--dtype", "float32", "-n", "300", "--sample", "50")
    assert r.returncode == 0, r.stderr
    assert "eps 1e-05, float32" in r.stdout.splitlines()[0]


def test_demo_header_prints_the_eps_given():
    r = cli("demo", "-n", "300", "--sample", "50", "--eps", "1e-3")
    assert r.returncode == 0, r.stderr
    assert "eps 0.001, float64" in r.stdout.splitlines()[0]


@pytest.mark.parametrize("dtype, eps", [("float64", "1e-06"), ("float32", "1e-05")])
def test_run_prints_the_eps_used(tmp_path, rng, dtype, eps):
    np.save(tmp_path / "in.npy", np.column_stack([rng.random((300, 3)), rng.random(300)]))
    r = cli("run", tmp_path / "in.npy", "-o", tmp_path / "out.npy", "--dtype", dtype)
    assert r.returncode == 0, r.stderr
    assert f"eps={eps}" in r.stderr


# -- .npy layout, --version -------------------------------------------------------------------

def test_single_density_to_npy_is_one_dimensional(tmp_path, rng):
    src, q = rng.random((300, 3)), rng.standard_normal(300)
    np.save(tmp_path / "in.npy", np.column_stack([src, q]))
    assert main(["run", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "-q"]
                + EPS) == 0
    pot = np.load(tmp_path / "o.npy")
    assert pot.shape == (300,)
    assert rel(pot, numpy_fields(src, src, q)[0]) < 1e-3
    assert main(["run", str(tmp_path / "in.npy"), "-o", str(tmp_path / "g.npy"), "--gradient",
                 "-q"] + EPS) == 0
    assert np.load(tmp_path / "g.npy").shape == (300, 4)


def test_run_help_describes_the_layouts_without_private_modules():
    r = cli("run", "--help")
    assert r.returncode == 0
    assert "_io" not in r.stdout
    assert "(n, 3 + k)" in r.stdout and "dipoles" in r.stdout and "gradient" in r.stdout


def test_version(capsys):
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"aotfmm {aotfmm.__version__}"
    assert main(["--version"]) == 0


# -- .npz / .h5 keys and datasets -------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["npz", "h5"])
@pytest.mark.parametrize("with_charges", [False, True])
def test_dipoles_are_evaluated(tmp_path, rng, fmt, with_charges):
    src, trg = rng.random((400, 3)), rng.random((60, 3))
    d, q = rng.standard_normal((400, 3)), rng.standard_normal(400)
    arrays = dict(sources=src, dipoles=d, targets=trg, **({"charges": q} if with_charges else {}))
    inp, out = tmp_path / f"in.{fmt}", tmp_path / "out.npz"
    np.savez(inp, **arrays) if fmt == "npz" else _h5(inp, **arrays)
    assert main(["run", str(inp), "-o", str(out), "--gradient", "-q"] + EPS) == 0
    with np.load(out) as r:
        pot, grad = r["potential"], r["gradient"]
    ref_pot, ref_grad = numpy_fields(src, trg, q if with_charges else None, d)
    assert pot.shape == (60,) and grad.shape == (60, 3)
    assert rel(pot, ref_pot) < 1e-3 and rel(grad, ref_grad) < 1e-3


def test_several_dipole_densities(tmp_path, rng):
    src = rng.random((300, 3))
    d, q = rng.standard_normal((300, 2, 3)), rng.standard_normal((300, 2))
    np.savez(tmp_path / "in.npz", sources=src, charges=q, dipoles=d)
    assert main(["run", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npy"), "--gradient",
                 "-q"] + EPS) == 0
    table = np.load(tmp_path / "o.npy")
    assert table.shape == (300, 2 + 6)
    for k in range(2):
        ref_pot, ref_grad = numpy_fields(src, src, q[:, k], d[:, k])
        assert rel(table[:, k], ref_pot) < 1e-3
        assert rel(table[:, 2 + 3 * k:5 + 3 * k], ref_grad) < 1e-3


@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_unknown_keys_are_refused(tmp_path, capsys, rng, fmt):
    arrays = dict(sources=rng.random((20, 3)), charges=np.ones(20), weights=np.ones(20))
    inp = tmp_path / f"in.{fmt}"
    np.savez(inp, **arrays) if fmt == "npz" else _h5(inp, **arrays)
    assert main(["run", str(inp), "-o", str(tmp_path / "o.npy")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'weights'" in line and "sources, charges, dipoles, targets" in line


@pytest.mark.parametrize("fmt", ["npz", "h5"])
@pytest.mark.parametrize("key, value, message", [
    ("sources", "group", "'sources' is a group, expected a dataset"),
    ("charges", "group", "'charges' is a group, expected a dataset"),
    ("sources", np.array([b"a", b"b", b"c"]), "'sources' has dtype"),
    ("charges", np.ones(20, dtype=complex), "'charges' has dtype"),
    ("sources", np.ones(60), "'sources' must have shape (n, 3)"),
    ("sources", np.ones((20, 2)), "'sources' must have shape (n, 3)"),
    ("charges", np.ones((20, 1, 1)), "'charges' must have shape (n,) or (n, k)"),
    ("targets", np.float64(1.0), "'targets' must have shape (m, 3)"),
    ("dipoles", np.ones(20), "'dipoles' must have shape (n, 3) or (n, k, 3)"),
])
def test_bad_arrays_are_named(tmp_path, capsys, fmt, key, value, message):
    if fmt == "npz" and isinstance(value, str):
        pytest.skip(".npz has no groups")
    arrays = dict(sources=np.random.default_rng(0).random((20, 3)), charges=np.ones(20))
    arrays[key] = value
    inp = tmp_path / f"in.{fmt}"
    np.savez(inp, **arrays) if fmt == "npz" else _h5(inp, **arrays)
    assert main(["run", str(inp), "-o", str(tmp_path / "o.npy")]) == 2
    assert f"{inp}: {message}" in _one_line(capsys.readouterr().err)


def test_missing_densities_are_named(tmp_path, capsys):
    np.savez(tmp_path / "in.npz", sources=np.zeros((5, 3)))
    assert main(["run", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npy")]) == 2
    assert "'charges' and/or 'dipoles'" in _one_line(capsys.readouterr().err)


def test_option_errors_and_warnings_use_the_options_spelling(tmp_path, rng):
    """'p must be in [2, 16]' named no option, and an AccuracyWarning reached the terminal as
    Python's two lines (path:line, then the source line that raised it)."""
    np.save(tmp_path / "in.npy", np.column_stack([rng.random((300, 3)), rng.random(300)]))
    cmd = [sys.executable, "-m", "aotfmm", "run", str(tmp_path / "in.npy"), "-o",
           str(tmp_path / "o.npy")]
    r = subprocess.run(cmd + ["--p", "40"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip() == "aotfmm: error: --p must be in [2, 16], got 40"
    r = subprocess.run(cmd + ["--p", "5", "--eps", "1e-9"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    warn = [ln for ln in r.stderr.splitlines() if "warning:" in ln or "Warning" in ln]
    assert len(warn) == 1 and warn[0].startswith("aotfmm: warning: --p 5 reaches"), r.stderr
    assert "not --eps 1e-09" in warn[0] and ".py" not in r.stderr, r.stderr


def test_a_transposed_table_is_pointed_out(tmp_path, capsys):
    """np.save(table.T) for a (2000, 4) table ran as 4 points with 1997 densities each and
    said nothing; a table with more densities than points (and more than 8) now warns."""
    table = np.random.default_rng(3).random((2000, 4))
    inp, out = tmp_path / "t.npy", tmp_path / "o.npy"
    np.save(inp, table.T.copy())
    assert main(["run", str(inp), "-o", str(out)] + EPS) == 0
    err = capsys.readouterr().err
    assert "4 points with 1997 densities" in err and "saved transposed" in err
    np.save(inp, table)  # the right way round: nothing to say
    assert main(["run", str(inp), "-o", str(out)] + EPS) == 0
    assert "saved transposed" not in capsys.readouterr().err


def test_run_checks_the_densities_before_the_setup(tmp_path, capsys, monkeypatch):
    """Charges that do not match the sources fail before any plan is built (the setup of a
    large problem took its whole time before the error)."""
    inp = tmp_path / "in.npz"
    np.savez(inp, sources=np.random.default_rng(0).random((50, 3)), charges=np.ones(49))

    def no_plan(*args, **kwargs):
        raise AssertionError("a plan was built")
    monkeypatch.setattr(aotfmm, "Fmm", no_plan)
    assert main(["run", str(inp), "-o", str(tmp_path / "out.npy")]) != 0
    err = capsys.readouterr().err
    assert "charges must have shape (50,) or (50, k)" in err and "a plan was built" not in err
