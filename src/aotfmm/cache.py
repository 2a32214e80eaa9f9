"""HDF5 cache of precomputed operators: one file per complete key, written atomically.

* Key: a flat dict of str/int/float values (kernel, p, radii, pinv cutoff, M2L method and
  tolerance/rank, dtype, :data:`FORMAT_VERSION`). Its canonical JSON is hashed (SHA-256) into the
  file name ``<prefix>-<hash[:20]>.h5`` and stored again as HDF5 attributes; on load every
  attribute must equal the key, else the file is rebuilt.
* Integrity: every dataset is written with HDF5's Fletcher-32 checksum filter, so flipped bytes
  fail the read; a truncated or non-HDF5 file fails to open. Either way the file is rebuilt with a
  :class:`CacheWarning`, never trusted.
* Atomic write: data goes to a unique temporary file in the cache directory, is flushed and
  fsync'ed, then ``os.replace``'d onto the final name. Two processes building the same key each
  write their own temporary file; the last rename wins and both files are complete.
* Location: ``cache_dir`` argument, else ``$AOTFMM_CACHE_DIR``, else the user cache directory
  (``platformdirs.user_cache_dir("aotfmm")``, falling back to ``~/.cache/aotfmm``). If the
  directory cannot be created or written, the operators are computed in memory and a warning says
  so. Without h5py the cache is disabled (warning once).
* In memory: the arrays of the last :data:`MEMORY_ENTRIES` files read or written stay in memory
  (read-only) and are reused while the file on disk is unchanged (same inode, size and mtime),
  so building many plans in one process (e.g. one per time step) reads each file once.
  :func:`clear_memory` drops them.

API: :func:`load_or_build`, :func:`cache_path`, :func:`default_cache_dir`, :func:`clear_memory`.
"""
import collections
import hashlib
import json
import os
import tempfile
import threading
import warnings

import numpy as np

__all__ = ["load_or_build", "cache_path", "default_cache_dir", "key_hash", "CacheWarning",
           "FORMAT_VERSION", "ENV_VAR", "clear_memory", "MEMORY_ENTRIES"]

#: Bump when the stored arrays or their meaning change.
FORMAT_VERSION = 3
ENV_VAR = "AOTFMM_CACHE_DIR"


#: How many cache files' arrays are kept in memory (least recently used dropped first).
MEMORY_ENTRIES = 2
_memory = collections.OrderedDict()  # path -> (file signature, arrays)
_memory_lock = threading.Lock()


class CacheWarning(UserWarning):
    """The operator cache could not be used as is (rebuilt, or not written)."""


def clear_memory():
    """Forget the operator arrays kept in memory (the files on disk stay)."""
    with _memory_lock:
        _memory.clear()


def _signature(path):
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _recall(path):
    """Arrays kept for ``path`` if the file is still the one they came from, else None."""
    try:
        sig = _signature(path)
    except OSError:
        return None
    with _memory_lock:
        hit = _memory.get(path)
        if hit is None or hit[0] != sig:
            return None
        _memory.move_to_end(path)
        return hit[1]


def _remember(path, arrays):
    try:
        sig = _signature(path)
    except OSError:
        return
    for a in arrays.values():
        a.flags.writeable = False  # shared by every plan that gets them
    with _memory_lock:
        _memory[path] = (sig, arrays)
        _memory.move_to_end(path)
        while len(_memory) > MEMORY_ENTRIES:
            _memory.popitem(last=False)


def default_cache_dir():
    """``$AOTFMM_CACHE_DIR`` if set, else the user cache directory for aotfmm."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return os.path.expanduser(env)
    try:
        import platformdirs
        return platformdirs.user_cache_dir("aotfmm", appauthor=False)
    except ImportError:
        return os.path.join(os.path.expanduser("~"), ".cache", "aotfmm")


def _canonical(key):
    def norm(v):
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        if isinstance(v, (int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)):
            return repr(float(v))  # exact round trip, no JSON float formatting ambiguity
        if v is None or isinstance(v, str):
            return v
        raise TypeError(f"cache key values must be str, int, float, bool or None, got {v!r}")
    return json.dumps({k: norm(v) for k, v in key.items()}, sort_keys=True)


def key_hash(key):
    """SHA-256 hex digest of the canonical JSON of ``key`` (with the format version)."""
    return hashlib.sha256(_canonical(dict(key, format_version=FORMAT_VERSION))
                          .encode()).hexdigest()


def cache_path(key, cache_dir=None, prefix="operators"):
    """The file that holds ``key``: ``<cache_dir>/<prefix>-<hash[:20]>.h5``."""
    cache_dir = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    return os.path.join(cache_dir, f"{prefix}-{key_hash(key)[:20]}.h5")


def _attr_value(v):
    return "None" if v is None else v


def _read(path, key, required=()):
    """Arrays stored at ``path`` if its attributes match ``key``; raises on any mismatch."""
    import h5py
    full = dict(key, format_version=FORMAT_VERSION)
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        if attrs.get("key_json") != _canonical(full):
            raise ValueError("stored key differs")
        for k, v in full.items():
            stored = attrs.get(k)
            if isinstance(stored, bytes):
                stored = stored.decode()
            if isinstance(stored, np.generic):
                stored = stored.item()
            if stored != _attr_value(v):
                raise ValueError(f"attribute {k}: stored {stored!r}, expected {v!r}")
        names = json.loads(attrs["arrays"])
        missing = sorted(set(required) - set(names))
        if missing:
            raise ValueError(f"arrays missing: {', '.join(missing)}")
        out = {}
        for name in names:
            out[name] = f[name][()]  # Fletcher-32 verified here
        if attrs.get("complete") is not True and attrs.get("complete") != np.True_:
            raise ValueError("file not marked complete")
    return out


def _write(path, key, arrays):
    """Write atomically: unique temp file in the same directory, fsync, os.replace."""
    import h5py
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".h5", dir=directory)
    os.close(fd)
    try:
        full = dict(key, format_version=FORMAT_VERSION)
        with h5py.File(tmp, "w") as f:
            for name, a in arrays.items():
                a = np.ascontiguousarray(a)
                if a.size:
                    f.create_dataset(name, data=a, fletcher32=True, chunks=_chunks(a))
                else:
                    f.create_dataset(name, data=a)
            for k, v in full.items():
                f.attrs[k] = _attr_value(v)
            f.attrs["key_json"] = _canonical(full)
            f.attrs["arrays"] = json.dumps(sorted(arrays))
            f.attrs["complete"] = True
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _chunks(a):
    """Chunk shape of about 1 MiB along the first axis (checksums are per chunk)."""
    if a.ndim == 0:
        return None
    row = max(1, a.nbytes // max(a.shape[0], 1))
    n = int(max(1, min(a.shape[0], (1 << 20) // row)))
    return (n,) + a.shape[1:]


def load_or_build(key, build, cache_dir=None, prefix="operators", required=()):
    """Arrays for ``key`` from the cache, or ``build()`` (a dict of arrays) stored there.

    Returns ``(arrays, source)`` with source ``"cache"``, ``"built"`` (and stored) or
    ``"memory"`` (built, not stored: no h5py or an unwritable directory; a CacheWarning says why).
    ``cache_dir=False`` disables the cache. ``required``: array names a stored file must hold.
    """
    if cache_dir is False:
        return build(), "memory"
    try:
        import h5py  # noqa: F401
    except ImportError:
        warnings.warn("h5py is not installed: operators are not cached", CacheWarning,
                      stacklevel=3)
        return build(), "memory"
    path = cache_path(key, cache_dir, prefix)
    kept = _recall(path)
    if kept is not None and not set(required) - set(kept):
        return kept, "cache"
    if os.path.exists(path):
        try:
            arrays = _read(path, key, required)
            _remember(path, arrays)
            return arrays, "cache"
        except Exception as exc:  # corrupt, truncated, mismatched: never trust it
            warnings.warn(f"operator cache file {path} is unusable ({type(exc).__name__}: "
                          f"{exc}); rebuilding it", CacheWarning, stacklevel=3)
    arrays = build()
    try:
        _write(path, key, arrays)
    except OSError as exc:
        warnings.warn(f"cannot write the operator cache {path} ({exc}); operators are kept in "
                      f"memory only (set {ENV_VAR} to a writable directory)", CacheWarning,
                      stacklevel=3)
        return arrays, "memory"
    _remember(path, arrays)
    return arrays, "built"
