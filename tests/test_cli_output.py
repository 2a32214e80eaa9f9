"""`aotfmm run` never destroys data: the output is never the input, output problems are found
before any computation, and a failed write leaves an earlier output untouched."""
import os
import resource
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from aotfmm.cli import main

FORMATS = ["npy", "csv", "npz", "h5"]
# A flag that makes the computation itself fail (eps below float64's floor): when an output
# problem is reported instead, it was found before the FMM was set up.
FAILS_LATER = ["--eps", "1e-12"]


def _write_input(path, fmt, src, q):
    if fmt == "npy":
        np.save(path, np.column_stack([src, q]))
    elif fmt == "csv":
        np.savetxt(path, np.column_stack([src, q]), delimiter=",", header="x,y,z,q",
                   comments="", fmt="%.17g")
    elif fmt == "npz":
        np.savez(path, sources=src, charges=q)
    else:
        import h5py
        with h5py.File(path, "w") as f:
            f["sources"], f["charges"] = src, q


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("how", ["same", "dotted", "hardlink", "symlink"])
def test_output_that_is_the_input_is_refused_before_computing(tmp_path, capsys, rng, fmt, how):
    inp = tmp_path / f"in.{fmt}"
    _write_input(inp, fmt, rng.random((50, 3)), rng.standard_normal(50))
    before = inp.read_bytes()
    out = {"same": inp, "dotted": tmp_path / "sub" / ".." / f"in.{fmt}",
           "hardlink": tmp_path / f"hard.{fmt}", "symlink": tmp_path / f"sym.{fmt}"}[how]
    if how == "dotted":
        (tmp_path / "sub").mkdir()
    elif how == "hardlink":
        os.link(inp, out)
    elif how == "symlink":
        os.symlink(inp, out)
    assert main(["run", str(inp), "-o", str(out), "-q"] + FAILS_LATER) == 2
    line = _one_line(capsys.readouterr().err)
    assert "input file" in line and "below what" not in line
    assert inp.read_bytes() == before


@pytest.mark.parametrize("case", ["missing-dir", "file-as-dir", "extension", "is-dir"])
def test_output_problems_are_reported_before_computing(tmp_path, capsys, rng, case):
    inp = tmp_path / "in.npy"
    _write_input(inp, "npy", rng.random((50, 3)), rng.standard_normal(50))
    out, message = {"missing-dir": (tmp_path / "nope" / "out.npy", "does not exist"),
                    "file-as-dir": (inp / "out.npy", "is a file, not a directory"),
                    "extension": (tmp_path / "out.xyz", "unknown file type"),
                    "is-dir": (tmp_path / "d.npy", "is a directory")}[case]
    if case == "is-dir":
        out.mkdir()
    assert main(["run", str(inp), "-o", str(out), "-q"] + FAILS_LATER) == 2
    assert message in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("where", ["chmod", "sysfs"])
def test_unwritable_output_directory_is_reported_before_computing(tmp_path, capsys, rng, where):
    inp = tmp_path / "in.npy"
    _write_input(inp, "npy", rng.random((50, 3)), rng.standard_normal(50))
    if where == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        directory = tmp_path / "ro"
        directory.mkdir()
        directory.chmod(0o555)
    else:
        directory = "/sys"  # sysfs: no new files, even for root
        if not os.path.isdir(directory):
            pytest.skip("no /sys here")
        try:
            fd, tmp = tempfile.mkstemp(dir=directory)
        except OSError:
            pass
        else:
            os.close(fd)
            os.unlink(tmp)
            pytest.skip("/sys is writable here")
    try:
        assert main(["run", str(inp), "-o", os.path.join(directory, "out.npy"), "-q"]
                    + FAILS_LATER) == 2
    finally:
        if where == "chmod":
            directory.chmod(0o755)
    assert "cannot write in" in _one_line(capsys.readouterr().err)


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_write_leaves_the_earlier_output_untouched(tmp_path, rng, fmt):
    """A write that fails partway (file size limit) removes its temporary file and leaves the
    earlier output as it was (not a truncated file)."""
    inp, out = tmp_path / "in.npy", tmp_path / f"out.{fmt}"
    _write_input(inp, "npy", rng.random((1500, 3)), rng.standard_normal(1500))
    cmd = [sys.executable, "-m", "aotfmm", "run", str(inp), "-o", str(out), "--eps", "1e-3",
           "--gradient", "-q"]
    good = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert good.returncode == 0, good.stderr
    before, inode = out.read_bytes(), out.stat().st_ino
    assert len(before) > 16384  # the limit below cuts this write short
    out.chmod(0o640)
    bad = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=600,
                         preexec_fn=_limit_file_size)
    assert bad.returncode == 2, bad.stderr
    line = _one_line(bad.stderr)
    assert "cannot write" in line and str(out) in line
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.npy", out.name])
    # a complete write replaces the file, keeping its permissions, and leaves nothing behind
    again = subprocess.run(cmd[:-1], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert out.stat().st_ino != inode and out.read_bytes() == before  # renamed over it
    assert (out.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.npy", out.name])


def test_output_through_a_symlink_updates_its_target(tmp_path, rng):
    inp = tmp_path / "in.npy"
    _write_input(inp, "npy", rng.random((50, 3)), rng.standard_normal(50))
    (tmp_path / "real.npy").write_bytes(b"old")
    os.symlink(tmp_path / "real.npy", tmp_path / "link.npy")
    assert main(["run", str(inp), "-o", str(tmp_path / "link.npy"), "--eps", "1e-3", "-q"]) == 0
    assert (tmp_path / "link.npy").is_symlink()
    assert np.load(tmp_path / "real.npy").shape == (50,)


def test_output_directory_messages_name_what_is_wrong(tmp_path, capsys):
    """-o through a symbolic link whose target's directory is missing named the link's own
    directory (which exists) as missing; -o under a regular file called it a missing
    directory."""
    import numpy as np
    from aotfmm.cli import main
    inp = tmp_path / "p.npy"
    np.save(inp, np.random.default_rng(0).random((50, 4)))
    link = tmp_path / "out.npy"
    os.symlink(tmp_path / "gone" / "out.npy", link)
    assert main(["run", str(inp), "-o", str(link)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "gone") in err and "does not exist" in err and "points" in err
    assert main(["run", str(inp), "-o", str(inp) + "/out.npz"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
