"""Operator builds announce themselves (stderr without logging, logging with it, a moving line
on a TTY); `aotfmm precompute` fills what a described use needs; `bench --quick` needs no p >= 11;
the README's p table is the one the code uses."""
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import aotfmm
from aotfmm import _progress, operators
from aotfmm.evaluate import choose_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def py(code, cache_dir, **kw):
    env = dict(os.environ, AOTFMM_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env=env, **kw)


def cli(*args, cache_dir):
    env = dict(os.environ, AOTFMM_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "-m", "aotfmm", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env)


def numpy_pot(src, q, trg, d=None):
    """1/(4 pi r) potential of charges q (and dipoles d) at src, at trg; r = 0 left out."""
    x = trg[:, None, :] - src[None, :, :]
    r = np.sqrt((x * x).sum(-1))
    inv = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0), 0.0)
    pot = inv @ q
    if d is not None:
        pot += (np.einsum("tsk,sk->ts", x, d) * inv ** 3).sum(1)
    return pot / (4 * np.pi)


FMM_P4 = ("import aotfmm, numpy as np; "
          "aotfmm.Fmm(np.random.default_rng(0).random((2000, 3)), eps=5e-3)")


def test_first_build_is_announced_on_stderr_then_silent(tmp_path):
    cache = tmp_path / "cache"
    first = py(FMM_P4, cache)
    assert first.returncode == 0, first.stderr
    lines = first.stderr.splitlines()
    assert len(lines) == 2, first.stderr  # not a TTY: a start line and an end line, no ticker
    assert lines[0].startswith("aotfmm: building Laplace operators p=4 for float64: first use")
    assert f"cached in {cache}" in lines[0]
    assert re.fullmatch(r"aotfmm: built Laplace operators p=4 for float64 \(\d+ MB, M2L rank "
                        r"\d+\) in \d+\.\d s", lines[1]), lines[1]
    again = py(FMM_P4, cache)  # warm cache: nothing at all
    assert again.returncode == 0 and again.stderr == "", again.stderr


def test_unusable_cache_file_is_named_as_the_reason(tmp_path):
    cache = tmp_path / "cache"
    assert py(FMM_P4, cache).returncode == 0
    (path,) = cache.glob("*.ops")
    path.write_bytes(b"not an operator file")
    r = py(FMM_P4, cache)
    assert r.returncode == 0, r.stderr
    assert "building Laplace operators p=4 for float64: cache file unusable" in r.stderr


def test_notice_goes_through_logging_when_configured(tmp_path, caplog, capsys, rng):
    caplog.set_level(logging.INFO, logger="aotfmm")
    aotfmm.Fmm(rng.random((1500, 3)), eps=5e-3, cache_dir=tmp_path)
    msgs = [r.getMessage() for r in caplog.records if r.name == "aotfmm"]
    assert any(m.startswith("aotfmm: building Laplace operators p=4 for float64: first use")
               and str(tmp_path) in m for m in msgs), msgs
    assert any(m.startswith("aotfmm: built Laplace operators p=4") for m in msgs), msgs
    # logging is configured (pytest's handler): nothing is written to stderr directly
    assert "building" not in capsys.readouterr().err


def test_no_cache_build_says_so(tmp_path):
    r = py("import aotfmm, numpy as np; "
           "aotfmm.Fmm(np.random.default_rng(1).random((2000, 3)), eps=5e-3, cache_dir=False)",
           tmp_path)
    assert r.returncode == 0, r.stderr
    assert "p=4 for float64: no cache" in r.stderr and "not cached (cache_dir=False)" in r.stderr


class FakeTTY:
    def __init__(self):
        self.parts, self.lock = [], threading.Lock()

    def isatty(self):
        return True

    def write(self, s):
        with self.lock:
            self.parts.append(s)

    def flush(self):
        pass

    def text(self):
        return "".join(self.parts)


def test_tty_line_moves_with_stage_elapsed_and_estimate():
    tty = FakeTTY()
    with _progress.Notice("aotfmm: building X", estimate=2.0, stream=tty, interval=0.01) as n:
        n.stage("QR 3/10")
        deadline = time.monotonic() + 30
        while tty.text().count("QR 3/10") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        n.done_text = "aotfmm: built X"
    text = tty.text()
    assert text.startswith("\r\x1b[Kaotfmm: building X\n")
    ticks = re.findall(r"\r\x1b\[K  [|/\-\\] \d+\.\d s of ~2\.0 s QR 3/10", text)
    assert len(ticks) >= 3, text
    assert text.endswith("\r\x1b[Kaotfmm: built X in " + text.rsplit(" in ", 1)[1])
    assert text.endswith(" s\n")
    assert not any(t.name == "aotfmm-notice" for t in threading.enumerate())


def test_interrupted_build_says_so_and_reraises():
    tty = FakeTTY()
    with pytest.raises(KeyboardInterrupt):
        with _progress.Notice("aotfmm: building Y", stream=tty, interval=0.01):
            raise KeyboardInterrupt
    assert "interrupted (KeyboardInterrupt) after" in tty.text()
    assert not any(t.name == "aotfmm-notice" for t in threading.enumerate())


def test_broken_stream_does_not_break_the_work():
    class Broken(FakeTTY):
        def write(self, s):
            raise OSError("EPIPE")
    with _progress.Notice("x", stream=Broken(), interval=0.01):
        time.sleep(0.05)


def test_precompute_fills_exactly_what_the_use_needs(tmp_path, rng):
    cache = tmp_path / "cache"
    p = choose_parameters(5e-3, separate_targets=True, dipoles=True)[0]  # 7 (8e-3 row: 5)
    dry = cli("precompute", "--eps", "5e-3", "--targets", "--dipoles", "--dry-run",
              cache_dir=cache)
    assert dry.returncode == 0, dry.stderr
    assert re.search(rf"p= ?{p} float64: to build.*; for eps 0\.005 targets dipoles", dry.stdout), \
        dry.stdout
    assert not cache.exists() or not list(cache.glob("*.ops"))  # a dry run builds nothing
    r = cli("precompute", "--eps", "5e-3", "--targets", "--dipoles", cache_dir=cache)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"p= ?{p} float64: built in", r.stdout), r.stdout
    # the use itself now builds nothing, and is right
    src, trg = rng.random((1200, 3)), rng.random((300, 3))
    q, d = rng.standard_normal(1200), rng.standard_normal((1200, 3))
    np.savez(tmp_path / "pq.npz", src=src, trg=trg, q=q, d=d)
    use = subprocess.run(
        [sys.executable, "-c",
         "import aotfmm, numpy as np, sys; z = np.load(sys.argv[1]); "
         "plan = aotfmm.Fmm(z['src'], z['trg'], dipoles=True, eps=5e-3); "
         "np.save(sys.argv[2], plan.evaluate(z['q'], dipoles=z['d']))",
         str(tmp_path / "pq.npz"), str(tmp_path / "pot.npy")],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, AOTFMM_CACHE_DIR=str(cache)))
    assert use.returncode == 0, use.stderr
    assert "building" not in use.stderr, use.stderr
    ref = numpy_pot(src, q, trg, d)
    pot = np.load(tmp_path / "pot.npy")
    assert np.linalg.norm(pot - ref) / np.linalg.norm(ref) < 5e-3
    warm = cli("precompute", "--eps", "5e-3", "--targets", "--dipoles", "--dry-run",
               cache_dir=cache)
    assert re.search(rf"p= ?{p} float64: cached; for eps 0\.005 targets dipoles", warm.stdout)


def test_precompute_all_uses_lists_every_use_once(tmp_path):
    r = cli("precompute", "--eps", "1e-3", "1e-6", "--all-uses", "--dry-run", cache_dir=tmp_path)
    assert r.returncode == 0, r.stderr
    uses = [u.strip() for line in r.stdout.splitlines() if "; for " in line
            for u in line.split("; for ", 1)[1].split(",")]
    assert len(uses) == len(set(uses)) == 16, r.stdout
    assert "eps 1e-06 targets dipoles hessians" in uses


@pytest.mark.parametrize("args, message", [
    (["--eps", "1e-7", "--dtype", "float32"], "use --dtype float64"),
    (["--p", "5", "--targets"], "--p names the orders directly"),
    (["--p", "17"], "must be at most 16"),
])
def test_precompute_refuses_bad_requests(tmp_path, args, message):
    r = cli("precompute", *args, "--dry-run", cache_dir=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_quick_bench_needs_no_order_above_10():
    """`aotfmm bench --quick` (here with small N and aotfmm alone) builds its operators ahead,
    announced, and every order it uses (probe included) is at most 10."""
    code = ("import sys; from aotfmm import _bench; sys.exit(_bench.main(['--quick', '--n', "
            "'2000', '--dist', 'uniform', '--peers', 'aotfmm', '--mode', 'pot']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    ps = [int(p) for p in re.findall(r"\bp= ?(\d+)", r.stdout + r.stderr)]
    assert ps and max(ps) <= 10, r.stdout
    head, _, cases = r.stdout.partition("uniform cube, N = 2e3")
    assert "aotfmm operators for these cases" in head and cases, r.stdout


def _readme_p_table():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    m = re.search(r"\| eps \| charges \| targets \| dipoles \| targets \+ dipoles \| Hessians "
                  r"\| targets \+ Hessians \|\n\|[-| :]+\|\n((?:\|.*\|\n)+)", text)
    assert m, "README lacks the table of orders per use"
    rows = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[float(cells[0])] = [int(c) for c in cells[1:7]]
    return rows


def test_readme_order_table_is_the_one_the_code_uses():
    rows = _readme_p_table()
    assert len(rows) >= 6
    for eps, ps in rows.items():
        want = [choose_parameters(eps, None, None, t, d, h)[0] for t, d, h in (
            (False, False, False), (True, False, False), (False, True, False),
            (True, True, False), (False, False, True), (True, False, True))]
        assert ps == want, (eps, ps, want)


def test_build_estimates_cover_every_order():
    for p in range(operators.P_MIN, operators.P_MAX + 1):
        sec, mb = operators.build_estimate(p, np.float64)
        assert sec > 0 and mb > 0
        assert 0 < operators.build_estimate(p, np.float32)[1] <= mb
    for dt in (np.float64, np.float32):
        sizes = [operators.build_estimate(p, dt)[1] for p in range(2, 17)]
        assert sizes == sorted(sizes)


@pytest.mark.parametrize("p", [5, 8])
def test_float32_size_estimate_is_what_a_build_writes(p):
    """The notice said ~22 MB for a float32 p = 8 set that writes 13 MB (half of float64's
    was assumed; its M2L ranks are cut at float32's precision)."""
    built = operators.get_operators(p, np.float32, cache_dir=False).nbytes / 1e6
    assert operators.build_estimate(p, np.float32)[1] == pytest.approx(built, rel=0.25)


def test_build_is_identical_for_any_thread_count():
    """The QR stream is grouped the same way whatever the thread count: bit-identical operators
    (so float32 casts, and results, do not depend on how many threads built them)."""
    sets = [operators.build_operators(5, m2l_tol=1e-6, threads=t) for t in (1, 2, 3)]
    for name in sets[0]:
        assert all(np.array_equal(sets[0][name], s[name]) for s in sets[1:]), name


def test_bench_baseline_runs_another_interpreters_aotfmm_as_its_own_row():
    """`--baseline PYTHON` adds a row 'baseline' (aotfmm as that interpreter has it) next to
    aotfmm, for before/after comparisons in one run; here the same interpreter, so both rows
    reach the same accuracy and the ratio column compares them. `--float32 EPS` adds the row
    'aotfmm32' (float32 at that eps) and a line with its time over the float64 row's."""
    code = ("import sys; from aotfmm import _bench; sys.exit(_bench.main(['--n', '3000', "
            "'--dist', 'uniform', '--peers', 'aotfmm', '--mode', 'pot', '--eps', '1e-6', "
            f"'--float32', '1e-3', '--baseline', {sys.executable!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line.split() for line in r.stdout.splitlines()
            if line.strip().startswith(("aotfmm ", "aotfmm32 ", "baseline "))]
    table = {row[0]: row for row in rows if len(row) > 2 and row[2].startswith("p=")}
    assert list(table) == ["aotfmm", "aotfmm32", "baseline"], r.stdout
    assert table["aotfmm"][2] == table["baseline"][2] == "p=8", r.stdout  # eps 1e-6, float64
    assert table["aotfmm32"][2] == "p=5", r.stdout                          # eps 1e-3
    for name, row in table.items():   # err pot vs the float64 direct sum
        assert float(row[-2]) < (1e-3 if name == "aotfmm32" else 1e-6), r.stdout
    (line,) = [ln for ln in r.stdout.splitlines() if "in float32 at eps 0.001" in ln]
    ratio = float(line.split("total ")[1].split(" x")[0])
    totals = {name: float(row[6]) for name, row in table.items()}
    a, b = totals["aotfmm32"], totals["aotfmm"]
    # the line's ratio is of the unrounded totals, to 2 decimals; the table's totals are
    # rounded to 1 ms, which moves a/b by up to (a/b)(0.5 ms/a + 0.5 ms/b): ~4 % at 3000 points
    assert abs(ratio - a / b) <= 0.0051 + a / b * (0.0005 / a + 0.0005 / b) + 1e-9, r.stdout
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"),
                          "--baseline", "/nonexistent"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "not an executable" in bad.stderr
    # below float32's floor: a usage error before anything runs, not a traceback
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"),
                          "--float32", "1e-7"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "below what float32 can reach" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not bad.stdout, bad.stdout + bad.stderr


def test_bench_repeat_keeps_each_librarys_fastest_run(tmp_path):
    """`--repeat R` runs each case R times, the libraries in turns, and reports each one's
    fastest run (its total is the smallest of the R in the JSON), with the slowest over it as
    'spread'; the float32 line compares those fastest runs."""
    out = str(tmp_path / "r.json")
    code = ("import sys; from aotfmm import _bench; sys.exit(_bench.main(['--n', '3000', "
            "'--dist', 'uniform', '--peers', 'aotfmm', '--mode', 'pot', '--eps', '1e-6', "
            f"'--float32', '1e-3', '--repeat', '3', '--json', {out!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fastest of 3 runs" in r.stdout, r.stdout
    rows = {line.split()[0]: line for line in r.stdout.splitlines()
            if line.strip().startswith(("aotfmm ", "aotfmm32 ")) and " p=" in line}
    assert set(rows) == {"aotfmm", "aotfmm32"}, r.stdout
    with open(out) as f:
        results = {res["lib"]: res for res in json.load(f)["results"]}
    for name, line in rows.items():
        res = results[name]
        assert len(res["totals"]) == 3 and res["total"] == min(res["totals"]), res
        spread = float(line.split("spread ")[1].split()[0])
        assert spread == pytest.approx(max(res["totals"]) / min(res["totals"]), abs=0.006)
        assert float(line.split()[6]) == pytest.approx(res["total"], abs=6e-4), line
        assert res["err_pot"] < (1e-3 if name == "aotfmm32" else 1e-6), res
    (line,) = [ln for ln in r.stdout.splitlines() if "in float32 at eps 0.001" in ln]
    ratio = float(line.split("total ")[1].split(" x")[0])
    assert ratio == pytest.approx(results["aotfmm32"]["total"] / results["aotfmm"]["total"],
                                  abs=0.006), r.stdout


def test_a_per_level_set_is_announced_by_its_kernel_without_laplaces_estimate(caplog, tmp_path):
    """BUILD_COST is Laplace's one set (seconds at p = 8); a Yukawa or Helmholtz set per level
    takes a fraction of that, so its notice names the kernel and its parameter, no estimate."""
    assert operators.build_estimate(8, np.float64, aotfmm.Yukawa(1.0)) is None
    assert operators.build_estimate(8, np.float64) is not None
    with caplog.at_level(logging.INFO, logger="aotfmm"):
        operators.get_operators(4, np.float64, cache_dir=tmp_path, family=aotfmm.Yukawa(0.5))
    start = [r.getMessage() for r in caplog.records if "building" in r.getMessage()]
    assert start and "Yukawa(lam=0.5)" in start[0] and "~" not in start[0], start
