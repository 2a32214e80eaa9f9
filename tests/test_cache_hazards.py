"""The operator cache against hostile or accidental changes to its files on disk.

Each case runs in a subprocess: before the fixes they crashed (SIGBUS, malloc abort), hung
(blocked in open on a FIFO) or read until out of memory. ``timeout`` is only a hang guard and
the address space is capped so that an endless read fails fast instead of eating the machine.
Results are checked against a plain numpy direct sum written here.
"""
import os
import subprocess
import sys
import textwrap

import pytest

HANG_GUARD = 180  # seconds; a hang fails the test instead of blocking the suite
P = 4

try:
    import resource
except ImportError:  # not POSIX
    resource = None


def _cap_memory():
    if resource is not None:
        cap = 4 << 30  # an endless read hits MemoryError long before the machine runs out
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


# Shared by every child: points, charges and an independent numpy reference.
PRELUDE = textwrap.dedent("""
    import os, sys, json, struct, shutil, warnings
    import numpy as np
    import aotfmm
    from aotfmm import cache
    from aotfmm.operators import get_operators, _ARRAY_FIELDS

    rng = np.random.default_rng(7)
    # a dense corner makes the tree deeper than two levels: the plan has a far field and
    # reads operators (two levels are direct sums and read none)
    x = np.vstack([rng.uniform(-1.0, 1.0, (1500, 3)), rng.uniform(0.2, 0.4, (500, 3))])
    q = rng.standard_normal(len(x))

    def direct(x, q):  # 1/(4 pi r), r = 0 left out
        pot = np.zeros(len(x))
        for a in range(0, len(x), 250):
            r = np.linalg.norm(x[a:a + 250, None, :] - x[None, :, :], axis=-1)
            with np.errstate(divide="ignore"):
                pot[a:a + 250] = np.where(r > 0, 1.0 / r, 0.0) @ q
        return pot / (4 * np.pi)

    def rel_err(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    def cache_warnings(w):
        return [str(m.message) for m in w if issubclass(m.category, cache.CacheWarning)]
""")


def run_child(body, *args, env=None, helpers=""):
    """Run PRELUDE, helpers and body in a fresh interpreter; returns its CompletedProcess."""
    # One BLAS thread: on a busy machine OpenBLAS's spinning threads made a p = 4 build take
    # 30 s instead of 0.2 s. Nothing here is about BLAS.
    full_env = dict(os.environ, OPENBLAS_NUM_THREADS="1", **(env or {}))
    code = PRELUDE + textwrap.dedent(helpers) + textwrap.dedent(body)
    try:
        return subprocess.run([sys.executable, "-c", code,
                               *map(str, args)], capture_output=True, text=True,
                              timeout=HANG_GUARD, env=full_env, preexec_fn=_cap_memory
                              if resource is not None else None)
    except subprocess.TimeoutExpired:
        pytest.fail(f"child hung for {HANG_GUARD} s")


@pytest.fixture
def one_blas_thread():
    """In-process builds with one BLAS thread (see run_child); a no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def assert_ok(r):
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), (
        f"child exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}")


# --- A built plan does not depend on the file it loaded its operators from --------------

@pytest.mark.parametrize("change", ["truncate", "copy_over", "write_in_place"])
def test_plan_results_do_not_change_with_the_file(tmp_path, change):
    """`: > file` or `cp other file` gave SIGBUS on the next evaluate (the arrays were views of
    a mapping of the file); writing 64 bytes in place silently changed the plan's results."""
    r = run_child(f"""
        d, change, P = sys.argv[1], sys.argv[2], {P}
        get_operators(3, np.float64, cache_dir=d)  # another file, to copy over ours
        get_operators(P, np.float64, cache_dir=d)
        cache.clear_memory()
        ops = get_operators(P, np.float64, cache_dir=d)
        assert ops.source == "cache", ops.source  # read from the file
        plan = aotfmm.Fmm(x, p=P, cache_dir=d)
        before = plan.evaluate(q)
        path = cache.cache_path(ops.key, d)
        if change == "truncate":  # like `: > file`
            open(path, "r+b").truncate(0)
        elif change == "copy_over":  # like `cp other file`: truncates, then writes
            shutil.copyfile(cache.cache_path(get_operators(3, np.float64, cache_dir=d).key, d),
                            path)
        else:  # 64 bytes at the start of every array, same size and inode
            header = cache.read_header(path)
            start = cache._align(cache._PREFIX.size + cache._PREFIX.unpack_from(
                open(path, "rb").read(cache._PREFIX.size))[1])
            with open(path, "r+b") as f:
                for spec in header["arrays"].values():
                    if spec["nbytes"] >= 64:
                        f.seek(start + spec["offset"])
                        f.write(np.full(8, 3.0).tobytes())
        after = plan.evaluate(q)
        assert np.array_equal(before, after), rel_err(after, before)
        assert rel_err(after, direct(x, q)) < 1e-3
        # A new plan does not trust the changed file: rebuilt (and rewritten) with a warning.
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            again = get_operators(P, np.float64, cache_dir=d)
        assert again.source == "built" and cache_warnings(w), (again.source, cache_warnings(w))
        assert np.array_equal(aotfmm.Fmm(x, p=P, cache_dir=d).evaluate(q), before)
        print("OK")
    """, tmp_path, change)
    assert_ok(r)


def test_loaded_arrays_are_private_read_only_copies(tmp_path, one_blas_thread):
    """No mapping: the arrays own their (read-only) memory, which cannot be made writeable."""
    import numpy as np
    from aotfmm import cache
    from aotfmm.operators import get_operators
    get_operators(P, np.float64, cache_dir=tmp_path)
    cache.clear_memory()
    ops = get_operators(P, np.float64, cache_dir=tmp_path)
    assert ops.source == "cache"
    for a in (ops.m2m, ops.m2l_a, ops.m2l_offsets, ops.surface):
        base = a.base
        assert isinstance(base, np.ndarray) and base.base is None  # numpy owns the memory
        assert not a.flags.writeable and not base.flags.writeable
        with pytest.raises(ValueError):
            a.flags.writeable = True
        assert a.ctypes.data % 64 == 0  # arrays are 64-byte aligned


# --- A file with consistent checksums but wrong shapes or values ------------------------

PLANTS = {
    "tiled_surface": "arrays['surface'] = np.tile(arrays['surface'], (400, 1))",
    "scaled_surface": "arrays['surface'] = arrays['surface'] * 0.5",
    "inconsistent_rank": "arrays['uc2e_a'] = np.ascontiguousarray(arrays['uc2e_a'][:, :-1])",
    "offsets_past_end": "arrays['m2l_offsets'][-1] += 10 ** 6",
    "offsets_decreasing": "arrays['m2l_offsets'][5] = arrays['m2l_offsets'][4] - 1",
    "wrong_dtype": "arrays['m2l_a'] = arrays['m2l_a'].astype(np.float32)",
    "transposed": "arrays['m2l_decompress'] = np.ascontiguousarray(arrays['m2l_decompress'].T)",
    "nan": "arrays['l2l'][3, 2, 1] = np.nan",
    "missing_m2m_child": "arrays['m2m'] = np.ascontiguousarray(arrays['m2m'][:7])",
    "scaled_uc2e": "arrays['uc2e_a'] = arrays['uc2e_a'] * 2.0",
    "scaled_m2m": "arrays['m2m'] = arrays['m2m'] * 1.01",
    "scaled_l2l": "arrays['l2l'] = arrays['l2l'] * 0.99",
}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_file_is_checked_before_use(tmp_path, plant):
    """A file rewritten through cache._write (checksums recomputed) with other shapes crashed
    (the surface tiled 400x: malloc(): invalid size) or gave wrong results silently (scaled
    values: error 0.98). Now every dtype, shape and rank is checked against p and the key, the
    surface is compared with the exact one and a sample of values with the kernel; a mismatch
    is a CacheWarning, a rebuild and a rewrite."""
    r = run_child(f"""
        d, P = sys.argv[1], {P}
        good = get_operators(P, np.float64, cache_dir=d)
        names = _ARRAY_FIELDS + ("surface", "m2l_sigma")
        arrays = {{f: np.array(getattr(good, f)) for f in names}}
        {PLANTS[plant]}
        cache._write(cache.cache_path(good.key, d), good.key, arrays)
        cache.clear_memory()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            ops = get_operators(P, np.float64, cache_dir=d)
            pot = aotfmm.Fmm(x, p=P, cache_dir=d).evaluate(q)
        assert cache_warnings(w) and ops.source == "built", (ops.source, cache_warnings(w))
        for f in names:
            np.testing.assert_array_equal(getattr(ops, f), getattr(good, f))
        assert rel_err(pot, direct(x, q)) < 1e-3, rel_err(pot, direct(x, q))
        cache.clear_memory()  # rewritten: the next process reads it without complaint
        with warnings.catch_warnings():
            warnings.simplefilter("error", cache.CacheWarning)
            assert get_operators(P, np.float64, cache_dir=d).source == "cache"
        print("OK")
    """, tmp_path)
    assert_ok(r)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_valid_files_pass_the_checks(tmp_path, dtype, one_blas_thread):
    """No false alarm on valid files (both dtypes, non-default cutoff, radii, forced rank)."""
    import warnings
    import numpy as np
    from aotfmm import cache
    from aotfmm.operators import get_operators
    for kw in (dict(p=2), dict(p=3), dict(p=5), dict(p=3, pinv_cutoff=1e-3),
               dict(p=3, radii=(1.5, 2.0, 2.5, 1.1)), dict(p=3, m2l_rank=5)):
        get_operators(dtype=dtype, cache_dir=tmp_path, **kw)
        cache.clear_memory()
        with warnings.catch_warnings():
            warnings.simplefilter("error", cache.CacheWarning)
            assert get_operators(dtype=dtype, cache_dir=tmp_path, **kw).source == "cache", kw


# --- Special files where the cache file belongs -------------------------------------------

SPECIALS = ["fifo", "symlink_to_dev_zero", "directory", "huge_header_length"]
WHY = {"fifo": "FIFO", "symlink_to_dev_zero": "symbolic link", "directory": "directory",
       "huge_header_length": "header length"}


def _skip_unsupported(kind):
    if kind == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    if kind == "symlink_to_dev_zero" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")


MAKE_SPECIAL = """
    def make_special(kind, path):
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "symlink_to_dev_zero":
            os.symlink("/dev/zero", path)
        elif kind == "directory":
            os.mkdir(path)
        else:  # a valid-looking prefix that announces a 1 TiB header
            with open(path, "wb") as f:
                f.write(cache._PREFIX.pack(cache.MAGIC, 1 << 40, 0) + b"{}" * 100)
"""


@pytest.mark.parametrize("kind", SPECIALS)
def test_special_file_at_the_cache_path(tmp_path, kind):
    """A FIFO blocked aotfmm.laplace forever (in open), a symbolic link to /dev/zero made it
    read until out of memory. Now only a regular file of the size its header states is read;
    anything else is a CacheWarning that says what it found, and is replaced by a regular file
    (a directory cannot be: the operators stay in memory). The results are right either way."""
    _skip_unsupported(kind)
    d = tmp_path / "cache"
    r = run_child("""
        d, scratch, kind, why = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
        plan = aotfmm.Fmm(x, eps=1e-3, cache_dir=scratch)  # which p laplace will use ...
        key = get_operators(plan.p, np.float64, cache_dir=scratch).key  # ... and its key
        os.makedirs(d, exist_ok=True)
        path = cache.cache_path(key, d)
        make_special(kind, path)
        cache.clear_memory()
        try:  # what `aotfmm info` calls: must neither block nor read without end
            cache.read_header(path)
            raise AssertionError("read_header accepted " + kind)
        except (ValueError, OSError) as exc:
            assert why in str(exc), exc
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            pot = aotfmm.laplace(x, q, eps=1e-3)  # cache dir from AOTFMM_CACHE_DIR
        msgs = cache_warnings(w)
        assert msgs and why in msgs[0], msgs
        err = rel_err(pot, direct(x, q))
        assert err < 3e-3, err
        if kind == "directory":  # cannot be replaced: kept in memory, said so
            assert os.path.isdir(path) and any("memory only" in m for m in msgs), msgs
        else:  # replaced by a valid regular file
            assert os.path.isfile(path) and not os.path.islink(path)
            cache.clear_memory()
            with warnings.catch_warnings():
                warnings.simplefilter("error", cache.CacheWarning)
                assert get_operators(plan.p, np.float64, cache_dir=d).source == "cache"
        print("OK")
    """, d, tmp_path / "scratch", kind, WHY[kind], env={"AOTFMM_CACHE_DIR": str(d)},
                  helpers=MAKE_SPECIAL)
    assert_ok(r)


def test_info_lists_special_files_without_blocking(tmp_path):
    """`aotfmm info` (cli._describe_cache_file -> cache.read_header) blocked on a FIFO."""
    kinds = [k for k in SPECIALS if not (k == "fifo" and not hasattr(os, "mkfifo"))
             and not (k == "symlink_to_dev_zero" and not os.path.exists("/dev/zero"))]
    d = tmp_path / "cache"
    r = run_child("""
        d = sys.argv[1]
        os.makedirs(d)
        for kind in sys.argv[2:]:
            make_special(kind, os.path.join(d, kind + cache.SUFFIX))
        get_operators(3, np.float64, cache_dir=d)  # and one good file
        print("OK")
    """, d, *kinds, helpers=MAKE_SPECIAL)
    assert_ok(r)
    try:
        info = subprocess.run([sys.executable, "-m", "aotfmm", "info"], capture_output=True,
                              text=True, timeout=HANG_GUARD, preexec_fn=_cap_memory
                              if resource is not None else None,
                              env=dict(os.environ, AOTFMM_CACHE_DIR=str(d)))
    except subprocess.TimeoutExpired:
        pytest.fail(f"aotfmm info hung for {HANG_GUARD} s")
    assert info.returncode == 0, info.stderr
    lines = info.stdout.splitlines()
    for kind in kinds:
        line = next(ln for ln in lines if kind + ".ops" in ln)
        assert "unreadable" in line, line
    assert any("p=3" in ln for ln in lines), info.stdout


def test_info_names_each_files_kernel_and_parameter(tmp_path):
    """Yukawa and Helmholtz keep a set per level and parameter: `aotfmm info` says which."""
    import numpy as np
    from aotfmm.families import Helmholtz, Yukawa
    from aotfmm.operators import get_operators
    d = str(tmp_path / "cache")
    get_operators(3, np.float64, cache_dir=d)
    get_operators(3, np.float64, cache_dir=d, family=Yukawa(0.25))
    get_operators(3, np.float64, cache_dir=d, family=Helmholtz(0.5))
    get_operators(3, np.float64, cache_dir=d, family=Helmholtz(0.5 + 0.125j))
    info = subprocess.run([sys.executable, "-m", "aotfmm", "info"], capture_output=True,
                          text=True, timeout=HANG_GUARD,
                          env=dict(os.environ, AOTFMM_CACHE_DIR=d))
    assert info.returncode == 0, info.stderr
    lines = [ln for ln in info.stdout.splitlines() if ".ops:" in ln]
    assert len(lines) == 4, info.stdout
    for want in ("kernel=laplace, p=3", "kernel=yukawa, lam=0.25, p=3",
                 "kernel=helmholtz, kappa=0.5, p=3", "kernel=helmholtz, kappa=(0.5+0.125j), p=3"):
        assert sum(want in ln for ln in lines) == 1, (want, info.stdout)
