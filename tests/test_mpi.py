"""aotfmm.mpi under mpiexec with 1, 2, 3 and 4 ranks (oversubscribed on small machines): every
case of tests/mpi/check_mpi.py (uniform, sphere surface, two far clusters, separate targets,
k = 3 densities with dipoles, one rank holding every point and another none, Yukawa, Helmholtz,
no points anywhere, sources and targets on different ranks, the same points on every rank,
problems far from the origin in float64 and float32, bad input on one rank) against the serial Fmm and a numpy direct sum. Skipped without mpi4py
and an mpiexec (pip install "aotfmm[mpi]")."""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or _mpiexec() is None,
    reason="needs mpi4py and mpiexec (pip install 'aotfmm[mpi]')")


#: Cases some runs leave to others (CI's 15 minutes: the four runs were a third of it):
#: complex far boxes run at P = 1, 2; Yukawa at P = 1-3; its lonely targets at P = 3 and the
#: scales case at P = 1, 2 (each builds its own operator sets: ~10-15 s a run); Helmholtz at
#: P = 1-3. P = 4 (four ranks oversubscribing 2 cores beside the other pytest worker: ~90 s
#: of the suite before these cuts) runs the issue's must-show cases (point sets, separate
#: targets, k = 3 densities, dipoles, one rank with every point, bad input), deeper partition
#: levels and the failure cases; the rest run at P = 1-3.
_SKIP = {1: ["lonely_targets"], 2: ["lonely_targets"], 3: ["helmholtz_level3", "scales"],
         4: ["helmholtz_level3", "yukawa", "lonely_targets", "fields", "float32_cluster",
             "shifted", "thin_ghosts", "level_model", "few_charges", "dipole_far_box",
             "scales", "edge", "helmholtz", "targets_two_clusters"]}


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_distributed_equals_serial(ranks):
    cmd = [_mpiexec(), "-n", str(ranks), sys.executable,
           os.path.join(HERE, "mpi", "check_mpi.py")]
    if ranks in _SKIP:
        cmd += ["--skip", ",".join(_SKIP[ranks])]
    env = dict(os.environ, OMP_NUM_THREADS="1", AOTFMM_NUM_THREADS="1")
    # a generous hang guard: the cases take ~10-60 s on 2 cores; P = 4 runs the fewest (11)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("ok", "FAIL"))]
    assert proc.returncode == 0, out[-6000:]
    assert len(lines) >= 11 and all(ln.startswith("ok") for ln in lines), out[-6000:]


def test_import_without_mpi4py_is_clear(tmp_path):
    """aotfmm.mpi imports without mpi4py; using it says what to install."""
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import aotfmm.mpi\n"
            "try:\n"
            "    aotfmm.mpi._mpi()\n"
            "except ImportError as e:\n"
            "    print('hint' if 'aotfmm[mpi]' in str(e) else e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "hint", out.stdout + out.stderr


@pytest.mark.parametrize("args, message", [
    (["-n", "-5"], "-n must be a whole number of points >= 1, got -5"),
    (["-n", "1.5"], "-n must be a whole number of points >= 1, got 1.5"),
    (["--eps", "0"], "--eps must be in (0, 1)"),
    (["--threads", "0"], "--threads must be in [1, 4096], got 0"),
    (["--level", "9"], "--level must be in [2, 7], got 9"),
])
def test_demo_arguments_are_checked_before_anything_runs(args, message):
    """Bad demo arguments ended in tracebacks (or 1.5 points became 1): now one line, exit 2,
    on every rank before any collective."""
    out = subprocess.run([sys.executable, "-m", "aotfmm.mpi", "demo", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and message in out.stderr.splitlines()[-1], out.stderr


@pytest.mark.parametrize("dist", ["sphere", "plummer"])
def test_demo_point_sets(tmp_path, dist):
    """The demo (and benchmarks/mpi_scaling.py --dist) on 2 ranks: its error against the
    direct sum on a sample meets eps."""
    out = tmp_path / "r.json"
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "aotfmm.mpi", "demo", "-n", "2e4",
           "--dist", dist, "--threads", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json
    report = json.loads(out.read_text())
    assert report["n"] == 20000 and report["size"] == 2
    assert report["error"] <= 1e-6, report["error"]
