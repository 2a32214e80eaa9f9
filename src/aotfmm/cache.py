"""On-disk cache of precomputed operators: one file per complete key, written atomically.

* Key: a flat dict of str/int/float values (kernel, p, radii, pinv cutoff, M2L method and
  tolerance/rank, dtype, :data:`FORMAT_VERSION`). Its canonical JSON is hashed (SHA-256) into the
  file name ``<prefix>-<hash[:20]>.ops`` and stored again in the file's header; on load it must
  equal the key, else the file is rebuilt.
* File: :data:`MAGIC` (16 bytes), header length (uint64 LE), CRC-32 of the header (uint32 LE),
  4 zero bytes, the JSON header (key, total file size, and per array: dtype, shape, offset,
  size, CRC-32), then the raw C-order arrays, each 64-byte aligned. Plain numpy and zlib: no
  HDF5 library to import; the file is memory-mapped and its arrays are read-only views of the
  mapping, so loading costs the CRC-32 pass (~11 ms for the 43 MB of p = 8, against ~70-120 ms
  for the HDF5 files with Fletcher-32 this replaced). Files are only ever replaced whole
  (``os.replace``), never rewritten in place, so a mapping stays valid.
* Integrity: a wrong magic, size or header CRC, or any array's CRC-32, fails the read (flipped
  bytes, truncation, foreign files). The file is then rebuilt with a :class:`CacheWarning`,
  never trusted.
* Atomic write: data goes to a unique temporary file in the cache directory, is flushed and
  fsync'ed, then ``os.replace``'d onto the final name. Two processes building the same key each
  write their own temporary file; the last rename wins and both files are complete.
* Location: ``cache_dir`` argument, else ``$AOTFMM_CACHE_DIR``, else the user cache directory
  (``platformdirs.user_cache_dir("aotfmm")``, falling back to ``~/.cache/aotfmm``). If the
  directory cannot be created or written, the operators are computed in memory and a warning says
  so.
* In memory: the arrays of the last :data:`MEMORY_ENTRIES` files read or written stay in memory
  (read-only) and are reused while the file on disk is unchanged (same inode, size and mtime),
  so building many plans in one process (e.g. one per time step) reads each file once.
  :func:`clear_memory` drops them.

API: :func:`load_or_build`, :func:`cache_path`, :func:`default_cache_dir`, :func:`clear_memory`.
"""
import collections
import hashlib
import json
import mmap
import os
import struct
import tempfile
import threading
import warnings
import zlib

import numpy as np

__all__ = ["load_or_build", "cache_path", "default_cache_dir", "key_hash", "CacheWarning",
           "FORMAT_VERSION", "ENV_VAR", "clear_memory", "MEMORY_ENTRIES", "read_header", "SUFFIX"]

#: Bump when the stored arrays or their meaning change (4: own file format instead of HDF5).
FORMAT_VERSION = 4
SUFFIX = ".ops"
MAGIC = b"AOTFMM-OPS-1\0\0\0\0"
_PREFIX = struct.Struct("<16sQI4x")  # magic, header length, header CRC-32
_ALIGN = 64
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
    """The file that holds ``key``: ``<cache_dir>/<prefix>-<hash[:20]>.ops``."""
    cache_dir = default_cache_dir() if cache_dir is None else os.fspath(cache_dir)
    return os.path.join(cache_dir, f"{prefix}-{key_hash(key)[:20]}{SUFFIX}")


def _align(n):
    return -(-n // _ALIGN) * _ALIGN


def _parse_header(data):
    """(header dict, data section start) from the file's first bytes; raises if malformed."""
    if len(data) < _PREFIX.size:
        raise ValueError("file too short")
    magic, length, crc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not an aotfmm operator file")
    end = _PREFIX.size + length
    if len(data) < end:
        raise ValueError("header truncated")
    raw = bytes(data[_PREFIX.size:end])
    if zlib.crc32(raw) != crc:
        raise ValueError("header checksum mismatch")
    return json.loads(raw.decode()), _align(end)


def read_header(path):
    """The JSON header of a cache file (its key is ``json.loads(header["key_json"])``)."""
    with open(path, "rb") as f:
        head = f.read(_PREFIX.size)
        if len(head) == _PREFIX.size and head[:16] == MAGIC:
            head += f.read(_PREFIX.unpack_from(head)[1])
    return _parse_header(head)[0]


def _read(path, key, required=()):
    """Arrays stored at ``path`` if its header matches ``key``; raises on any mismatch."""
    with open(path, "rb") as f:
        try:  # map, don't copy: arrays are read-only views (files are only ever replaced whole)
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # empty file, or no mmap for this file system
            data = f.read()
    header, start = _parse_header(data)
    if header.get("key_json") != _canonical(dict(key, format_version=FORMAT_VERSION)):
        raise ValueError("stored key differs")
    if header.get("file_size") != len(data):
        raise ValueError(f"file size {len(data)}, header says {header.get('file_size')}")
    specs = header["arrays"]
    missing = sorted(set(required) - set(specs))
    if missing:
        raise ValueError(f"arrays missing: {', '.join(missing)}")
    view = memoryview(data)
    out = {}
    for name, spec in specs.items():
        off, nbytes = start + int(spec["offset"]), int(spec["nbytes"])
        dt = np.dtype(spec["dtype"])
        shape = tuple(int(n) for n in spec["shape"])
        if off + nbytes > len(data) or nbytes != dt.itemsize * int(np.prod(shape)):
            raise ValueError(f"array {name}: bad extent")
        if zlib.crc32(view[off:off + nbytes]) != spec["crc32"]:
            raise ValueError(f"array {name}: checksum mismatch")
        if nbytes == 0:
            out[name] = np.empty(shape, dtype=dt)
            continue
        out[name] = np.frombuffer(data, dtype=dt, count=int(np.prod(shape)),
                                  offset=off).reshape(shape)  # read-only view of ``data``
    return out


def _write(path, key, arrays):
    """Write atomically: unique temp file in the same directory, fsync, os.replace."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    items = [(name, np.require(a, requirements="C")) for name, a in sorted(arrays.items())]
    specs, offset = {}, 0
    for name, a in items:
        if a.dtype.hasobject or a.dtype.byteorder == ">":
            raise TypeError(f"array {name}: dtype {a.dtype} cannot be cached")
        specs[name] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                       "nbytes": a.nbytes, "crc32": zlib.crc32(memoryview(a).cast("B"))
                       if a.nbytes else 0}
        offset = _align(offset + a.nbytes)
    # The file size is in the header, whose length depends on it: reserve the widest value,
    # then pad the real header to that length.
    header = {"key_json": _canonical(dict(key, format_version=FORMAT_VERSION)),
              "arrays": specs, "file_size": 10 ** 15}
    raw = json.dumps(header).encode()
    start = _align(_PREFIX.size + len(raw))
    size = start + (specs[items[-1][0]]["offset"] + items[-1][1].nbytes if items else 0)
    header["file_size"] = size
    raw = json.dumps(header).encode().ljust(len(raw))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(_PREFIX.pack(MAGIC, len(raw), zlib.crc32(raw)))
            fh.write(raw)
            for name, a in items:
                fh.seek(start + specs[name]["offset"])
                fh.write(memoryview(a).cast("B") if a.nbytes else b"")
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_or_build(key, build, cache_dir=None, prefix="operators", required=()):
    """Arrays for ``key`` from the cache, or ``build()`` (a dict of arrays) stored there.

    Returns ``(arrays, source)`` with source ``"cache"``, ``"built"`` (and stored) or
    ``"memory"`` (built, not stored: an unwritable directory; a CacheWarning says why).
    ``cache_dir=False`` disables the cache. ``required``: array names a stored file must hold.
    """
    if cache_dir is False:
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
