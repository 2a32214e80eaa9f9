"""Runs the hypothesis hostile-input suite (tests/hostile/) in a subprocess: a segfault or abort
inside compiled code then fails this test instead of killing pytest."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_hostile_inputs_never_crash():
    env = dict(os.environ, AOTFMM_HOSTILE_SUBPROCESS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
         "--rootdir", HERE, os.path.join(HERE, "hostile")],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=900)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, f"hostile suite failed (exit {proc.returncode}):\n{tail}"
    assert " passed" in proc.stdout and "error" not in proc.stdout.splitlines()[-1], tail
