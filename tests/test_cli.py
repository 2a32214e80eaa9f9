"""The command line: every input format x every output format round-trips against direct()."""
import subprocess
import sys

import numpy as np
import pytest

import aotfmm
from aotfmm.cli import main

IN_FORMATS = ["npy", "npz", "h5", "csv"]
OUT_FORMATS = ["npy", "npz", "h5", "csv"]


def _write_input(path, fmt, src, q, trg):
    if fmt == "npy":
        np.save(path, np.column_stack([src, q]))
    elif fmt == "npz":
        np.savez(path, sources=src, charges=q, targets=trg)
    elif fmt == "h5":
        import h5py
        with h5py.File(path, "w") as f:
            f["sources"], f["charges"], f["targets"] = src, q, trg
    else:
        np.savetxt(path, np.column_stack([src, q]), delimiter=",", header="x,y,z,q",
                   fmt="%.17g")


def _read_output(path, fmt):
    if fmt == "npz":
        with np.load(path) as d:
            return d["potential"], d["gradient"]
    if fmt == "h5":
        import h5py
        with h5py.File(path, "r") as f:
            return f["potential"][()], f["gradient"][()]
    table = np.load(path) if fmt == "npy" else np.loadtxt(path, delimiter=",", skiprows=1)
    return table[:, 0], table[:, 1:4]


@pytest.mark.parametrize("fin", IN_FORMATS)
@pytest.mark.parametrize("fout", OUT_FORMATS)
def test_run_round_trips_every_format(tmp_path, rng, fin, fout):
    src, q, trg = rng.random((300, 3)), rng.standard_normal(300), rng.random((40, 3))
    inp, out = tmp_path / f"in.{fin}", tmp_path / f"out.{fout}"
    _write_input(inp, fin, src, q, trg)
    assert main(["run", str(inp), "-o", str(out), "--gradient", "--eps", "1e-6", "-q"]) == 0
    pot, grad = _read_output(out, fout)
    targets = trg if fin in ("npz", "h5") else None
    ref_pot, ref_grad = aotfmm.direct(src, q, targets, gradient=True)
    assert np.linalg.norm(pot - ref_pot) / np.linalg.norm(ref_pot) < 1e-6
    assert np.linalg.norm(grad - ref_grad) / np.linalg.norm(ref_grad) < 1e-6


def test_several_densities_through_the_cli(tmp_path, rng):
    src, q = rng.random((200, 3)), rng.standard_normal((200, 2))
    np.save(tmp_path / "in.npy", np.column_stack([src, q]))
    assert main(["run", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npz"), "-q"]) == 0
    with np.load(tmp_path / "o.npz") as d:
        pot = d["potential"]
    assert pot.shape == (200, 2)
    for k in range(2):
        ref = aotfmm.direct(src, q[:, k])
        assert np.linalg.norm(pot[:, k] - ref) / np.linalg.norm(ref) < 1e-6


@pytest.mark.parametrize("args, message", [
    (["run", "{tmp}/missing.npz", "-o", "{tmp}/x.npz"], "no such file"),
    (["run", "{bad}", "-o", "{tmp}/x.npz"], "expected a table"),
    (["run", "{good}", "-o", "{tmp}/x.xyz"], "unknown file type"),
    (["run", "{good}", "-o", "{tmp}/x.npz", "--eps", "1e-12"], "below what float64"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, rng, args, message):
    (tmp_path / "bad.csv").write_text("1,2\n")
    np.save(tmp_path / "good.npy", np.column_stack([rng.random((10, 3)), np.ones(10)]))
    args = [a.format(bad=tmp_path / "bad.csv", good=tmp_path / "good.npy", tmp=tmp_path)
            for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_console_commands_run(tmp_path):
    for args in (["info"], ["demo", "-n", "3000", "--sample", "100"],
                 ["precompute", "--eps", "1e-3"], ["--help"]):
        proc = subprocess.run([sys.executable, "-m", "aotfmm", *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert "relative L2 error" in subprocess.run(
        [sys.executable, "-m", "aotfmm", "demo", "-n", "2000", "--sample", "50"],
        capture_output=True, text=True, cwd=tmp_path).stdout


def test_readme_precompute_lines_run(tmp_path, capsys):
    """Every ``aotfmm precompute`` line the README shows is accepted (as a dry run: nothing is
    built); one of them once asked float32 for eps 1e-6, below its floor, and exited 2."""
    import os
    import shlex
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        lines = [ln.split("#")[0].strip() for ln in f
                 if ln.startswith("    aotfmm precompute") and "[" not in ln]  # not synopses
    assert len(lines) >= 3
    for line in lines:
        args = shlex.split(line)[1:]
        if "--dry-run" not in args:
            args.append("--dry-run")
        assert main(args) == 0, (line, capsys.readouterr())


def test_bench_takes_the_harness_options(capsys):
    """``aotfmm bench`` hands its arguments to the benchmark harness, whose options the README
    names (until 2026-12-06 the command took --quick only: --repeat was refused)."""
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aotfmm bench") and "--repeat R" in out and "--n N" in out
    assert main(["bench", "--repeat", "0"]) == 2  # the harness's own check, not "unrecognized"
    err = capsys.readouterr().err
    assert "--repeat" in err and "unrecognized" not in err, err


def test_counts_take_an_exponent(capsys):
    """``demo -n 2e3`` (the help says "default 1e5") is 2000 points; 2.5 is still refused."""
    assert main(["demo", "-n", "2e3", "--sample", "50", "--eps", "1e-3"]) == 0
    assert "2000" in capsys.readouterr().out
    assert main(["demo", "-n", "2.5"]) == 2
    assert "expected an integer" in capsys.readouterr().err
