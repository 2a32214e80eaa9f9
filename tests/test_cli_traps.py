"""The command-line traps of issue 15, each through the installed ``aotfmm`` command in a
subprocess (as a user runs it): dipoles and strict keys in .npz/.h5, the eps default per dtype
and CLI spelling in its errors, output checked before computing, --version, no private module in
any --help, a single density to .npy is (n,). Numbers are checked against a numpy direct sum
written here; the operator cache is the session's (AOTFMM_CACHE_DIR, set by conftest.py)."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import aotfmm

EPS = ["--eps", "1e-4"]  # where eps is not the point: a cheap order
# eps below float64's floor: the FMM setup would refuse it, so an output error reported instead
# was found before any computation
FAILS_LATER = ["--eps", "1e-12"]


def aotfmm_cmd(*args, cwd=None, env=None):
    exe = shutil.which("aotfmm", path=os.path.dirname(sys.executable))
    assert exe, f"no aotfmm command next to {sys.executable}"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=env)


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def numpy_fields(src, q=None, d=None, trg=None):
    """Potential (m,) and gradient (m, 3) of charges q (n,) and dipoles d (n, 3) at src, kernel
    1/(4 pi r); a dipole d at y gives d.(x - y) / (4 pi r^3). Targets trg (default: the sources,
    each source's own pair left out: r = 0 pairs are excluded)."""
    src = np.asarray(src, np.float64)
    trg = src if trg is None else np.asarray(trg, np.float64)
    pot, grad = np.zeros(len(trg)), np.zeros((len(trg), 3))
    for a in range(0, len(trg), 250):
        x = trg[a:a + 250, None, :] - src[None, :, :]
        r = np.sqrt((x * x).sum(-1))
        inv = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0), 0.0)
        i3 = inv ** 3
        if q is not None:
            pot[a:a + 250] += inv @ q
            grad[a:a + 250] -= np.einsum("tsk,ts,s->tk", x, i3, q)
        if d is not None:
            xd = np.einsum("tsk,sk->ts", x, d)
            pot[a:a + 250] += (xd * i3).sum(1)
            grad[a:a + 250] += i3 @ d - 3 * np.einsum("ts,tsk,ts->tk", xd, x, inv ** 5)
    return pot / (4 * np.pi), grad / (4 * np.pi)


def rel(x, ref):
    return float(np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref))


def clusters(rng, n):
    """n points in four tight clusters far apart: an adaptive tree with far-field work."""
    centers = np.array([[0.1, 0.1, 0.1], [0.9, 0.2, 0.8], [0.2, 0.9, 0.5], [0.8, 0.8, 0.1]])
    return centers[rng.integers(0, 4, n)] + 0.03 * rng.standard_normal((n, 3))


def write_h5(path, **arrays):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v


def write_arrays(path, fmt, **arrays):
    np.savez(path, **arrays) if fmt == "npz" else write_h5(path, **arrays)


# -- (1) dipoles in .npz / .h5; unknown keys refused -------------------------------------------

@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_run_evaluates_dipoles_and_charges(tmp_path, rng, fmt):
    src = clusters(rng, 2500)
    q, d = rng.standard_normal(2500), rng.standard_normal((2500, 3))
    write_arrays(tmp_path / f"in.{fmt}", fmt, sources=src, charges=q, dipoles=d)
    r = aotfmm_cmd("run", f"in.{fmt}", "-o", "out.npz", "--gradient", *EPS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "out.npz") as out:
        pot, grad = out["potential"], out["gradient"]
    ref_pot, ref_grad = numpy_fields(src, q, d)
    assert pot.shape == (2500,) and grad.shape == (2500, 3)
    assert rel(pot, ref_pot) < 1e-4 and rel(grad, ref_grad) < 1e-4


@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_run_evaluates_dipoles_alone_at_targets(tmp_path, rng, fmt):
    src, trg, d = clusters(rng, 2000), rng.random((300, 3)), rng.standard_normal((2000, 3))
    write_arrays(tmp_path / f"in.{fmt}", fmt, sources=src, dipoles=d, targets=trg)
    r = aotfmm_cmd("run", f"in.{fmt}", "-o", "out.npy", *EPS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pot = np.load(tmp_path / "out.npy")
    assert pot.shape == (300,)
    assert rel(pot, numpy_fields(src, d=d, trg=trg)[0]) < 1e-4


@pytest.mark.parametrize("fmt", ["npz", "h5"])
@pytest.mark.parametrize("key", ["weights", "Sources", "dipole"])
def test_run_refuses_an_unknown_key(tmp_path, rng, fmt, key):
    arrays = dict(sources=rng.random((30, 3)), charges=np.ones(30), dipoles=np.ones((30, 3)))
    arrays[key] = np.ones(30)
    write_arrays(tmp_path / f"in.{fmt}", fmt, **arrays)
    r = aotfmm_cmd("run", f"in.{fmt}", "-o", "out.npy", *EPS, cwd=tmp_path)
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert f"in.{fmt}: unknown array '{key}'" in line
    assert "sources, charges, dipoles, targets" in line
    assert not (tmp_path / "out.npy").exists()


# -- (2) eps default per dtype; CLI spelling in errors -------------------------------------------

def test_demo_float32_runs_with_the_default_eps(tmp_path):
    r = aotfmm_cmd("demo", "--dtype", "float32", "-n", "2000", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "eps 1e-05, float32" in lines[0]
    errors = re.search(r"potential ([0-9.e+-]+), gradient ([0-9.e+-]+)", r.stdout)
    assert errors and float(errors.group(1)) < 1e-5 and float(errors.group(2)) < 1e-4, r.stdout


def test_run_float32_npy_with_the_default_eps(tmp_path, rng):
    src = clusters(rng, 3000).astype(np.float32)
    q = rng.standard_normal(3000).astype(np.float32)
    np.save(tmp_path / "pts32.npy", np.column_stack([src, q]))
    r = aotfmm_cmd("run", "pts32.npy", "-o", "out.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "eps=1e-05" in r.stderr.splitlines()[-1]  # (after any operator-build notice)
    pot = np.load(tmp_path / "out.npy")
    assert pot.shape == (3000,)
    # reference: the float32 points and charges as given, summed in float64
    assert rel(pot, numpy_fields(src, q)[0]) < 1e-4


@pytest.mark.parametrize("command", ["run", "demo"])
def test_eps_below_the_float32_floor_is_reported_in_cli_spelling(tmp_path, rng, command):
    np.save(tmp_path / "pts32.npy", rng.random((50, 4)).astype(np.float32))
    args = (["run", "pts32.npy", "-o", "out.npy"] if command == "run"
            else ["demo", "--dtype", "float32", "-n", "50"])
    r = aotfmm_cmd(*args, "--eps", "1e-7", cwd=tmp_path)
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "below what float32 can reach" in line
    assert "use --dtype float64" in line and "dtype=" not in line
    assert "--eps 1e-07" in line and "eps=" not in line


def test_eps_below_the_float64_floor_is_one_line_without_api_spelling(tmp_path, rng):
    np.save(tmp_path / "pts.npy", rng.random((50, 4)))
    r = aotfmm_cmd("run", "pts.npy", "-o", "out.npy", "--eps", "1e-12", cwd=tmp_path)
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "below what float64 can reach" in line and "dtype=" not in line


# -- (3) the output is checked before the computation ---------------------------------------

@pytest.mark.parametrize("case, message", [
    ("x.xyz", "unknown file type '.xyz'"),
    ("nodir/x.npy", "does not exist"),
    ("adir.npy", "is a directory"),
    ("in.csv", "is the input file"),
])
def test_output_problems_come_before_reading_and_computing(tmp_path, case, message):
    # the input cannot be used either (too few columns): the output is checked first
    (tmp_path / "in.csv").write_text("1,2\n")
    (tmp_path / "adir.npy").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    r = aotfmm_cmd("run", "in.csv", "-o", case, *FAILS_LATER, cwd=tmp_path)
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert message in line and case in line
    assert "expected a table" not in line and "below what" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "in.csv").read_text() == "1,2\n"


def test_good_output_then_input_error(tmp_path):
    """With a usable output, the input's own error is the one reported (and nothing written)."""
    (tmp_path / "in.csv").write_text("1,2\n")
    r = aotfmm_cmd("run", "in.csv", "-o", "out.npy", cwd=tmp_path)
    assert r.returncode == 2 and "expected a table" in one_line(r.stderr)
    assert not (tmp_path / "out.npy").exists()


# -- (4) --version, --help, the .npy layout --------------------------------------------------

def test_version():
    r = aotfmm_cmd("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"aotfmm {aotfmm.__version__}"


@pytest.mark.parametrize("command", ["", "demo", "run", "bench", "precompute", "info"])
def test_help_names_no_private_module(command):
    r = aotfmm_cmd(*([command] if command else []), "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: aotfmm")
    assert "aotfmm._" not in r.stdout + r.stderr


def test_single_density_to_npy_is_one_dimensional(tmp_path, rng):
    src, q = clusters(rng, 2500), rng.standard_normal(2500)
    np.save(tmp_path / "in.npy", np.column_stack([src, q]))
    r = aotfmm_cmd("run", "in.npy", "-o", "pot.npy", *EPS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pot = np.load(tmp_path / "pot.npy")
    ref_pot, ref_grad = numpy_fields(src, q)
    assert pot.shape == (2500,) and rel(pot, ref_pot) < 1e-4
    # with --gradient: the table (n, 1 + 3); with two densities: (n, 2)
    r = aotfmm_cmd("run", "in.npy", "-o", "table.npy", "--gradient", *EPS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    table = np.load(tmp_path / "table.npy")
    assert table.shape == (2500, 4)
    assert rel(table[:, 0], ref_pot) < 1e-4 and rel(table[:, 1:], ref_grad) < 1e-4
    q2 = np.column_stack([q, -2 * q])
    np.save(tmp_path / "in2.npy", np.column_stack([src, q2]))
    r = aotfmm_cmd("run", "in2.npy", "-o", "two.npy", *EPS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    two = np.load(tmp_path / "two.npy")
    assert two.shape == (2500, 2) and rel(two[:, 1], -2 * ref_pot) < 1e-4
