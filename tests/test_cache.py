"""The operator cache: round trip, corruption, key sensitivity, unwritable dirs, races, memory."""
import os
import subprocess
import sys

import numpy as np
import pytest

from aotfmm import cache
from aotfmm.operators import _ARRAY_FIELDS, build_operators, get_operators

P = 3  # small and fast; the cache does not care about p


def same(a, b):
    for f in _ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_round_trip_equals_fresh_build(tmp_path):
    first = get_operators(P, np.float64, cache_dir=tmp_path)
    assert first.source == "built"
    again = get_operators(P, np.float64, cache_dir=tmp_path)
    assert again.source == "cache"
    same(first, again)
    fresh = build_operators(P, pinv_cutoff=first.pinv_cutoff, m2l_tol=first.m2l_tol)
    for f in _ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(again, f), fresh[f])
    f32 = get_operators(P, np.float32, cache_dir=tmp_path)
    assert f32.m2m.dtype == np.float32 and f32.source == "built"
    assert get_operators(P, np.float32, cache_dir=tmp_path).source == "cache"


def test_arrays_kept_in_memory_while_the_file_is_unchanged(tmp_path):
    cache.clear_memory()
    first = get_operators(P, np.float64, cache_dir=tmp_path)
    again = get_operators(P, np.float64, cache_dir=tmp_path)
    assert again.m2l_a is first.m2l_a  # not read again
    assert not again.m2l_a.flags.writeable  # shared, so read-only
    with pytest.raises(ValueError):
        again.m2m[0, 0, 0] = 1.0
    # The file replaced (another process rebuilt it): read again, same values.
    path = cache.cache_path(first.key, tmp_path)
    os.replace(path, path + ".old")
    with open(path + ".old", "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    third = get_operators(P, np.float64, cache_dir=tmp_path)
    assert third.m2l_a is not first.m2l_a and third.source == "cache"
    same(first, third)
    # Deleted: rebuilt. Cleared: read from disk again.
    os.unlink(path)
    assert get_operators(P, np.float64, cache_dir=tmp_path).source == "built"
    cache.clear_memory()
    fourth = get_operators(P, np.float64, cache_dir=tmp_path)
    assert fourth.m2l_a is not third.m2l_a
    same(first, fourth)
    # Only the last MEMORY_ENTRIES files are kept.
    for p in range(2, 3 + cache.MEMORY_ENTRIES):
        get_operators(p, np.float32, cache_dir=tmp_path)
    assert get_operators(P, np.float64, cache_dir=tmp_path).m2l_a is not fourth.m2l_a


def test_env_var_is_the_default_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AOTFMM_CACHE_DIR", str(tmp_path / "env"))
    ops = get_operators(P, np.float64)
    assert os.path.exists(cache.cache_path(ops.key, tmp_path / "env"))


def _path(tmp_path):
    ops = get_operators(P, np.float64, cache_dir=tmp_path)
    return cache.cache_path(ops.key, tmp_path), ops


@pytest.mark.parametrize("damage", ["truncate", "flip", "header", "garbage", "empty"])
def test_damaged_file_is_rebuilt_with_warning(tmp_path, damage):
    path, good = _path(tmp_path)
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":  # flip bytes inside the largest array (its CRC-32 catches it)
        _, length, _ = cache._PREFIX.unpack_from(data)
        start = cache._align(cache._PREFIX.size + length)
        off = start + cache.read_header(path)["arrays"]["m2l_a"]["offset"]
        for i in range(8):
            data[off + 100 + i] ^= 0xFF
    elif damage == "header":  # one byte of the JSON header (its CRC-32 catches it)
        data[40] ^= 0x01
    elif damage == "garbage":
        data = bytearray(b"not an operator file" * 100)
    else:
        data = bytearray()
    open(path, "wb").write(bytes(data))
    with pytest.warns(cache.CacheWarning, match="rebuilding"):
        ops = get_operators(P, np.float64, cache_dir=tmp_path)
    assert ops.source == "built"
    same(ops, good)
    assert get_operators(P, np.float64, cache_dir=tmp_path).source == "cache"  # repaired


def test_mismatched_file_is_rebuilt(tmp_path):
    """A valid file of another key sitting under this key's name is not trusted."""
    path, good = _path(tmp_path)
    other = get_operators(P, np.float64, cache_dir=tmp_path, m2l_tol=1e-2)
    os.replace(cache.cache_path(other.key, tmp_path), path)
    with pytest.warns(cache.CacheWarning, match="rebuilding"):
        ops = get_operators(P, np.float64, cache_dir=tmp_path)
    same(ops, good)


@pytest.mark.parametrize("change", [
    dict(p=4), dict(dtype=np.float32), dict(m2l_tol=1e-5), dict(pinv_cutoff=1e-10),
    dict(radii=(1.05, 2.9, 2.95, 1.05)), dict(radii=(1.1, 2.95, 2.95, 1.05)),
    dict(radii=(1.05, 2.95, 2.9, 1.05)), dict(radii=(1.05, 2.95, 2.95, 1.1)),
    dict(m2l_rank=5)])
def test_every_key_field_changes_the_file(tmp_path, change):
    base = dict(p=P, dtype=np.float64)
    a = get_operators(**base, cache_dir=tmp_path)
    b = get_operators(**dict(base, **change), cache_dir=tmp_path)
    assert cache.cache_path(a.key, tmp_path) != cache.cache_path(b.key, tmp_path)
    assert b.source == "built"


def test_format_version_and_method_are_in_the_hash(monkeypatch):
    key = get_operators(P, np.float64).key
    h = cache.key_hash(key)
    assert cache.key_hash(dict(key, m2l_method="fft")) != h
    monkeypatch.setattr(cache, "FORMAT_VERSION", cache.FORMAT_VERSION + 1)
    assert cache.key_hash(key) != h


def test_unwritable_dir_computes_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.warns(cache.CacheWarning, match="memory only"):
        ops = get_operators(P, np.float64, cache_dir=blocker / "sub")
    assert ops.source == "memory"

    # a read-only directory (simulated: we may be root, for whom chmod does not bite)
    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(cache.tempfile, "mkstemp", deny)
    with pytest.warns(cache.CacheWarning, match="memory only"):
        ops2 = get_operators(P, np.float64, cache_dir=tmp_path / "ro")
    assert ops2.source == "memory"
    same(ops, ops2)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root ignores directory permissions")
def test_read_only_dir_really(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    get_operators(P, np.float64, cache_dir=ro)  # a valid file, then lock the directory
    ro.chmod(0o555)
    try:
        assert get_operators(P, np.float64, cache_dir=ro).source == "cache"
        with pytest.warns(cache.CacheWarning):
            assert get_operators(P, np.float32, cache_dir=ro).source == "memory"
    finally:
        ro.chmod(0o755)


def test_concurrent_builders_never_corrupt(tmp_path):
    """Several processes building the same file at once: every result and the file are valid."""
    code = ("import sys, numpy as np; from aotfmm.operators import get_operators;"
            "o = get_operators(4, np.float64, cache_dir=sys.argv[1]);"
            "print(o.source, float(np.abs(o.m2l_a).sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({o[1] for o in outs}) == 1
    ops = get_operators(4, np.float64, cache_dir=tmp_path)
    assert ops.source == "cache"
    assert float(np.abs(ops.m2l_a).sum()) == float(outs[0][1])
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


# ----------------------------------------------------------------------------- size limit
def _fill(tmp_path, name, nbytes, atime_s):
    """A cache file for key {"k": name} of about nbytes, last used at atime_s (epoch s)."""
    arrays, source = cache.load_or_build({"k": name}, lambda: {"a": np.zeros(nbytes // 8)},
                                         cache_dir=tmp_path)
    assert source == "built"
    path = cache.cache_path({"k": name}, tmp_path)
    os.utime(path, ns=(int(atime_s * 1e9), os.stat(path).st_mtime_ns))
    return path


def test_cache_over_its_limit_drops_the_least_recently_used(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.MAX_SIZE_ENV, "inf")
    paths = [_fill(tmp_path, f"f{i}", 100_000, 1_000_000 + i) for i in range(5)]
    foreign = tmp_path / "notes.ops"          # not a name the cache gives: never removed
    foreign.write_bytes(b"x" * 300_000)
    sizes = [os.path.getsize(p) for p in paths]
    # a cache hit marks f0 as used now: it becomes the most recently used
    cache.clear_memory()
    assert cache.load_or_build({"k": "f0"}, lambda: pytest.fail("rebuilt"),
                               cache_dir=tmp_path)[1] == "cache"
    limit = sum(sizes[:3]) + 1000             # room for three files
    monkeypatch.setenv(cache.MAX_SIZE_ENV, repr(limit / 1e9))
    new = cache.load_or_build({"k": "new"}, lambda: {"a": np.zeros(100_000 // 8)},
                              cache_dir=tmp_path)
    assert new[1] == "built"
    left = {p for p in paths if os.path.exists(p)}
    # removed oldest-first: f1, f2, f3 (f0 was just used); kept f4, f0 and the new file
    assert left == {paths[0], paths[4]}
    assert os.path.exists(cache.cache_path({"k": "new"}, tmp_path))
    assert foreign.exists()
    total = sum(os.path.getsize(tmp_path / f) for f in os.listdir(tmp_path)
                if f != "notes.ops" and f.endswith(".ops"))
    assert total <= limit


def test_a_file_larger_than_the_limit_is_kept_when_just_written(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.MAX_SIZE_ENV, "1e-6")  # 1000 bytes
    old = _fill(tmp_path, "old", 50_000, 1_000_000)
    path = _fill(tmp_path, "big", 50_000, 2_000_000)
    assert os.path.exists(path)
    assert not os.path.exists(old)
    assert cache.evict(tmp_path, keep=(path,)) == []  # nothing else left to remove
    assert cache.evict(tmp_path) == [path]             # a later write would remove it


def test_evicted_file_is_rebuilt_quietly(tmp_path, monkeypatch):
    """Another process removed the file between the existence check and the read."""
    monkeypatch.setenv(cache.MAX_SIZE_ENV, "inf")
    path = _fill(tmp_path, "gone", 1000, 1_000_000)
    cache.clear_memory()
    real_read = cache._read

    def read_after_removal(p, *a, **k):
        os.unlink(p)
        return real_read(p, *a, **k)

    monkeypatch.setattr(cache, "_read", read_after_removal)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arrays, source = cache.load_or_build({"k": "gone"}, lambda: {"a": np.ones(3)},
                                             cache_dir=tmp_path)
    assert source == "built" and arrays["a"].sum() == 3
    assert os.path.exists(path)


@pytest.mark.parametrize("raw", ["", "inf", "0.5", "2"])
def test_size_limit_from_the_environment(monkeypatch, raw):
    monkeypatch.setenv(cache.MAX_SIZE_ENV, raw)
    want = {"": cache.DEFAULT_MAX_GB * 1e9, "inf": float("inf"), "0.5": 5e8, "2": 2e9}[raw]
    assert cache.max_cache_bytes() == want


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "lots"])
def test_bad_size_limit_warns_and_uses_the_default(monkeypatch, raw):
    monkeypatch.setenv(cache.MAX_SIZE_ENV, raw)
    with pytest.warns(cache.CacheWarning, match=cache.MAX_SIZE_ENV):
        assert cache.max_cache_bytes() == cache.DEFAULT_MAX_GB * 1e9


def _numpy_fields(src, trg, q, lam=0.0, kappa=0.0):
    """Potential and gradient at trg of charges q for exp((i kappa - lam) r) / (4 pi r),
    coincident pairs left out: numpy, float64 / complex128."""
    d = trg[:, None, :] - src[None, :, :]
    r = np.sqrt((d ** 2).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(r > 0, np.exp((1j * kappa - lam) * r) / (4 * np.pi * np.where(r > 0, r, 1)),
                     0)
        dg = np.where(r > 0, g * ((1j * kappa - lam) - 1 / np.where(r > 0, r, 1)), 0)
        grad = np.einsum("ts,tsc,s->tc", dg / np.where(r > 0, r, 1), d, q)
    return g @ q, grad


@pytest.mark.parametrize("kernel", ["laplace", "yukawa", "helmholtz"])
def test_plans_without_far_field_read_no_operators(monkeypatch, kernel):
    """Trees of one or two levels have no far field: every interaction is direct, so no
    operator set is built or read (a 10-point Laplace plan read or built the 45 MB p = 8
    set, 0.3 s for 1 ms of work). Results against numpy, with separate targets too."""
    import aotfmm
    from aotfmm import evaluate

    def refuse(*args, **kwargs):
        raise AssertionError("an operator set was asked for")

    monkeypatch.setattr(evaluate, "get_operators", refuse)
    rng = np.random.default_rng(5)
    kw, lam, kappa, dtype = {}, 0.0, 0.0, np.float64
    if kernel == "yukawa":
        kw, lam = dict(kernel=aotfmm.Yukawa(2.0)), 2.0
    elif kernel == "helmholtz":
        kw, kappa, dtype = dict(kernel=aotfmm.Helmholtz(3.0)), 3.0, np.complex128
    for n, m in ((10, None), (350, None), (1500, 200)):
        src = rng.random((n, 3))
        trg = None if m is None else rng.random((m, 3))
        q = rng.standard_normal(n).astype(dtype)
        plan = aotfmm.Fmm(src, trg, eps=1e-6, dtype=dtype, **kw)
        assert plan.stats["levels"] <= 2
        pot, grad = plan.evaluate(q, gradient=True)
        ref_pot, ref_grad = _numpy_fields(src, src if trg is None else trg, q, lam, kappa)
        assert np.linalg.norm(pot - ref_pot) <= 1e-10 * np.linalg.norm(ref_pot)
        assert np.linalg.norm(grad - ref_grad) <= 1e-10 * np.linalg.norm(ref_grad)
        assert plan.stats["operator_sets"] == 0  # and sizes and stats without one
        plan.report(file=False)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_cache_files_follow_the_umask(tmp_path, umask, mode):
    """Cache files were 0600 whatever the umask (tempfile.mkstemp): a directory prefilled by
    `aotfmm precompute` for others (README) was unreadable to them, and they rebuilt the
    operators on every run. They now get 0666 & ~umask like any other file."""
    old = os.umask(umask)
    try:
        get_operators(P, np.float64, cache_dir=tmp_path)
    finally:
        os.umask(old)
    files = [f for f in os.listdir(tmp_path) if f.endswith(".ops")]
    assert files
    for f in files:
        assert os.stat(tmp_path / f).st_mode & 0o777 == mode


def test_prefetch_keeps_the_file_in_memory_for_get_operators(tmp_path, monkeypatch):
    """Plans read their operators in a thread while their tree is built
    (operators.prefetch_operators): once it is joined, get_operators must not read the file
    again, and must give what the file holds."""
    from aotfmm.operators import prefetch_operators
    path, good = _path(tmp_path)
    cache.clear_memory()
    th = prefetch_operators(P, np.float64, cache_dir=tmp_path)
    th.join(60)
    assert not th.is_alive()

    def refuse(*args, **kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(cache, "_read", refuse)
    ops = get_operators(P, np.float64, cache_dir=tmp_path)
    assert ops.source == "cache"
    same(ops, good)
    assert prefetch_operators(P, np.float64, cache_dir=False) is None


def test_prefetch_of_a_damaged_or_missing_file_stays_silent(tmp_path, recwarn):
    """The prefetch never warns, builds or keeps a bad file: get_operators finds the damage
    and says so, as without it."""
    from aotfmm.operators import prefetch_operators
    path, good = _path(tmp_path)
    cache.clear_memory()
    with open(path, "wb") as f:
        f.write(b"not an operator file" * 100)
    prefetch_operators(P, np.float64, cache_dir=tmp_path).join(60)
    assert not recwarn.list and cache._recall(path) is None, [str(w.message) for w in recwarn]
    with pytest.warns(cache.CacheWarning, match="rebuilding"):
        ops = get_operators(P, np.float64, cache_dir=tmp_path)
    assert ops.source == "built"
    same(ops, good)
    os.unlink(path)
    cache.clear_memory()
    prefetch_operators(P, np.float64, cache_dir=tmp_path).join(60)
    assert not os.path.exists(path) and not recwarn.list  # nothing built or written
    assert get_operators(P, np.float64, cache_dir=tmp_path).source == "built"


def _spy_on_prefetch(monkeypatch):
    """The list that every prefetch thread a plan starts (evaluate.prefetch_operators) goes to."""
    from aotfmm import evaluate
    started, real = [], evaluate.prefetch_operators

    def spy(*args, **kwargs):
        th = real(*args, **kwargs)
        started.append(th)
        return th

    monkeypatch.setattr(evaluate, "prefetch_operators", spy)
    return started


def test_plans_prefetch_their_operators_only_where_they_may_need_them(monkeypatch):
    """A scale-invariant plan of >= evaluate._PREFETCH_LEAVES x ncrit points starts the
    prefetch and has joined it when built; smaller plans and kernels with a parameter (one
    set per level, known only from the tree) start none."""
    import aotfmm
    from aotfmm import evaluate
    started = _spy_on_prefetch(monkeypatch)
    rng = np.random.default_rng(6)
    big = evaluate._PREFETCH_LEAVES * 400  # (eps 1e-6: ncrit 400)
    plan = aotfmm.Fmm(rng.random((big, 3)), eps=1e-6)
    assert plan._core.ncrit == 400 and len(started) == 1 and not started[0].is_alive()
    aotfmm.Fmm(rng.random((big - 1, 3)), eps=1e-6)
    aotfmm.Fmm(rng.random((big, 3)), eps=1e-6, kernel=aotfmm.Yukawa(2.0))
    assert len(started) == 1


def test_a_prefetch_for_a_plan_without_far_field_is_cancelled_and_not_kept(monkeypatch):
    """Hostile test 2026-12-05: 20000 sources on two coincident sites are >= 16 x ncrit
    points but have no far field; the plan waited for the prefetch (eps 3e-10: setup 0.01 ->
    0.3 s) and kept the file in memory (peak 42 -> 324 MB). It must cancel it instead: the
    thread keeps nothing, and the results are the direct sums'."""
    import aotfmm
    started = _spy_on_prefetch(monkeypatch)
    cache.clear_memory()
    src = np.zeros((20000, 3))
    src[::2] = 1.0
    q = np.random.default_rng(7).standard_normal(20000)
    plan = aotfmm.Fmm(src, eps=1e-6)
    assert not plan._core.has_far_field and len(started) == 1
    started[0].join(60)
    assert started[0].cancel.is_set() and not cache._memory
    pot = plan.evaluate(q)
    # each site's field is the other site's charge over the distance sqrt(3) (coincident
    # points skip each other)
    other = np.where(np.arange(20000) % 2 == 0, q[1::2].sum(), q[::2].sum())
    np.testing.assert_allclose(pot, other / (4 * np.pi * np.sqrt(3.0)), rtol=1e-12)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # (get_operators')
def test_the_prefetch_thread_warns_nothing_on_a_file_whose_check_overflows(tmp_path):
    """Hostile test 2026-12-05: a cache file rewritten with huge finite values (valid CRCs)
    fails the spot check, whose products overflow; numpy's RuntimeWarning came from the
    prefetch thread too. Only get_operators may warn (its CacheWarning, and its own check's
    RuntimeWarning), as without the prefetch."""
    import warnings
    from aotfmm.operators import prefetch_operators
    path, good = _path(tmp_path)
    arrays, _ = cache._read(path, good.key, ())
    arrays = {k: np.array(v) for k, v in arrays.items()}
    arrays["m2m"][...] = 1e300
    os.unlink(path)
    cache._write(path, good.key, arrays)
    cache.clear_memory()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        prefetch_operators(P, np.float64, cache_dir=tmp_path).join(60)
    assert not seen, [str(w.message) for w in seen]
    assert cache._recall(path) is None
    with pytest.warns(cache.CacheWarning, match="rebuilding"):
        ops = get_operators(P, np.float64, cache_dir=tmp_path)
    same(ops, good)
