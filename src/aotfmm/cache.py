"""On-disk cache of precomputed operators: one file per complete key, written atomically.

* Key: a flat dict of str/int/float values (kernel, p, radii, pinv cutoff, M2L method and
  tolerance/rank, dtype, :data:`FORMAT_VERSION`). Its canonical JSON is hashed (SHA-256) into the
  file name ``<prefix>-<hash[:20]>.ops`` and stored again in the file's header; on load it must
  equal the key, else the file is rebuilt.
* File: :data:`MAGIC` (16 bytes), header length (uint64 LE), CRC-32 of the header (uint32 LE),
  4 zero bytes, the JSON header (key, total file size, and per array: dtype, shape, offset,
  size, CRC-32), then the raw C-order arrays, each 64-byte aligned. Plain numpy and zlib: no
  HDF5 library to import.
* Reading: the whole file is read (the header, then one ``readinto`` for the rest) into
  private, 64-byte aligned memory; the CRCs are checked on that copy and the arrays handed out
  are read-only views of it. Nothing is memory-mapped, so a built plan never sees what later
  happens to the file (truncated, copied over or written in place by anyone: with a mapping
  that meant SIGBUS or silently changed results). Cost at p = 8 (45 MB): ~25 ms for
  allocation, copy and CRC-32 pass (the mapping took ~15 ms), against ~0.25 s to build
  (``operators.BUILD_COST``).
* Only a regular file is read, and only as far as its header says: it is opened with
  ``O_NONBLOCK | O_NOFOLLOW`` (a FIFO does not block the open, a symbolic link is not followed),
  then ``fstat`` must say regular file of exactly the size the header states, and the header
  length is capped at :data:`MAX_HEADER` before it is read. Anything else (FIFO, device,
  socket, directory, symbolic link, wrong size) is unusable: a :class:`CacheWarning`, and the
  path is replaced by a fresh regular file (``os.replace`` replaces a FIFO or a link itself;
  a directory cannot be replaced, so the operators then stay in memory, with a warning).
* Integrity: a wrong magic, size or header CRC, or any array's CRC-32, fails the read (flipped
  bytes, truncation, foreign files), as does a ``validate`` callback that rejects the arrays
  (:func:`aotfmm.operators.get_operators` checks every dtype and shape against ``p`` and the
  key, finiteness, the surface exactly and a sample of the matrices' values). The file is then
  rebuilt with a :class:`CacheWarning`, never trusted.
* Trust: CRCs catch accidents, not intent. Anyone who can write the cache directory can plant a
  file with consistent checksums, shapes and key but wrong operator values, and most of them
  (notably the M2L factors) cannot be recomputed cheaply at load time. Treat the cache
  directory like the installed package itself: writable only by you. Directories are created
  with your umask (``os.makedirs``), and so are files (``0666 & ~umask``: 0644 under the usual
  022, readable by others so that a directory filled by ``aotfmm precompute`` can be shared;
  0600 under 077). Until 2026-12-03 files were 0600 whatever the umask (``tempfile.mkstemp``),
  and every other user of a shared, prefilled directory rebuilt the operators on every run.
* Atomic write: data goes to a unique temporary file in the cache directory, is flushed and
  fsync'ed, then ``os.replace``'d onto the final name. Two processes building the same key each
  write their own temporary file; the last rename wins and both files are complete.
* Location: ``cache_dir`` argument, else ``$AOTFMM_CACHE_DIR``, else the user cache directory
  (``platformdirs.user_cache_dir("aotfmm")``, falling back to ``~/.cache/aotfmm``). If the
  directory cannot be created or written, the operators are computed in memory and a warning says
  so.
* Size: after a new file is written, the directory's cache files beyond
  ``$AOTFMM_CACHE_MAX_GB`` (default :data:`DEFAULT_MAX_GB` GB; ``inf`` for no limit) are
  removed, least recently used first (every use sets a file's access time), never the file
  just written (:func:`evict`). Per-level operator sets (Yukawa, Helmholtz) are tens to
  hundreds of MB each at eps 1e-3..1e-6 (0.8-1.5 GB at 1e-9), one per level and parameter,
  so an unbounded cache would fill the disk. Only names
  this module writes (``<prefix>-<20 hex digits>.ops``, regular files) are ever removed.
* In memory: the arrays of the last :data:`MEMORY_ENTRIES` files read or written stay in memory
  (read-only) and are reused while the file on disk is unchanged (still a regular file with the
  same device, inode, size and mtime),
  so building many plans in one process (e.g. one per time step) reads each file once.
  :func:`clear_memory` drops them.

API: :func:`load_or_build`, :func:`prefetch`, :func:`cache_path`, :func:`default_cache_dir`,
:func:`clear_memory`, :func:`evict`, :func:`max_cache_bytes`.
"""
import collections
import errno
import hashlib
import io
import json
import logging
import math
import os
import re
import stat
import struct
import tempfile
import threading
import time
import warnings
import zlib

import numpy as np

__all__ = ["load_or_build", "cache_path", "default_cache_dir", "key_hash", "CacheWarning",
           "FORMAT_VERSION", "ENV_VAR", "clear_memory", "MEMORY_ENTRIES", "read_header", "SUFFIX",
           "MAX_HEADER", "evict", "max_cache_bytes", "MAX_SIZE_ENV", "DEFAULT_MAX_GB"]

#: Bump when the stored arrays or their meaning change (4: own file format instead of HDF5).
FORMAT_VERSION = 4
SUFFIX = ".ops"
MAGIC = b"AOTFMM-OPS-1\0\0\0\0"
_PREFIX = struct.Struct("<16sQI4x")  # magic, header length, header CRC-32
_ALIGN = 64
ENV_VAR = "AOTFMM_CACHE_DIR"
#: Largest JSON header read (bytes); real headers are ~2 KB.
MAX_HEADER = 1 << 20


#: Environment variable: the cache directory's size limit in GB (10^9 bytes); ``inf``: none.
MAX_SIZE_ENV = "AOTFMM_CACHE_MAX_GB"
#: The size limit without :data:`MAX_SIZE_ENV` (GB).
DEFAULT_MAX_GB = 4.0
#: The names :func:`cache_path` gives: the only files :func:`evict` removes.
_NAME = re.compile(r"^[A-Za-z0-9_]+-[0-9a-f]{20}" + re.escape(SUFFIX) + "$")
_log = logging.getLogger("aotfmm")

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


def _signature(st):
    """Identity of a file's contents for the in-memory keep (files are only replaced whole)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _recall(path):
    """Arrays kept for ``path`` if the file is still the one they came from, else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    sig = _signature(st)
    with _memory_lock:
        hit = _memory.get(path)
        if hit is None or hit[0] != sig:
            return None
        _memory.move_to_end(path)
        return hit[1]


def _remember(path, sig, arrays):
    for a in arrays.values():
        a.flags.writeable = False  # shared by every plan that gets them
    with _memory_lock:
        _memory[path] = (sig, arrays)
        _memory.move_to_end(path)
        while len(_memory) > MEMORY_ENTRIES:
            _memory.popitem(last=False)


def max_cache_bytes():
    """The cache directory's size limit in bytes (``math.inf``: none), from
    ``$AOTFMM_CACHE_MAX_GB`` (a positive number of GB, or ``inf``); default
    :data:`DEFAULT_MAX_GB` GB. A value that is not a positive number warns and gives the
    default."""
    raw = os.environ.get(MAX_SIZE_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_GB * 1e9
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0:
        warnings.warn(f"{MAX_SIZE_ENV}={raw!r} is not a positive number of GB (or 'inf'); "
                      f"using {DEFAULT_MAX_GB:g} GB", CacheWarning, stacklevel=3)
        return DEFAULT_MAX_GB * 1e9
    return value * 1e9


def _touch(path):
    """Mark ``path`` as used now (its access time; the modification time, part of the
    in-memory signature, is kept) for :func:`evict`'s least-recently-used order."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))
    except (OSError, NotImplementedError):
        pass  # a read-only cache, or a file just removed: nothing to record


def evict(directory, keep=(), limit=None):
    """Remove cache files from ``directory``, least recently used first, until the files
    there total at most ``limit`` bytes (default :func:`max_cache_bytes`). Only regular
    files with the names :func:`cache_path` gives are counted and removed; ``keep`` (paths)
    never are. Returns the removed paths. Files another process removes meanwhile, or that
    cannot be removed, are skipped."""
    limit = max_cache_bytes() if limit is None else limit
    if math.isinf(limit):
        return []
    keep = {os.path.abspath(k) for k in keep}
    files, total = [], 0
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if not _NAME.match(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    files.append((st.st_atime_ns, entry.path, st.st_size))
                    total += st.st_size
    except OSError:
        return []
    removed, freed = [], 0
    for _, path, size in sorted(files):
        if total <= limit:
            break
        if os.path.abspath(path) in keep:
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            total -= size
            continue
        except OSError:
            continue
        total -= size
        freed += size
        removed.append(path)
    if removed:
        _log.info("aotfmm: operator cache %s over %.3g GB (%s): removed %d least recently "
                  "used file(s), %.0f MB", directory, limit / 1e9, MAX_SIZE_ENV, len(removed),
                  freed / 1e6)
    return removed


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


def _prefix(data):
    """(header length, header CRC-32) from a file's first bytes; raises on a foreign magic or
    a header longer than :data:`MAX_HEADER`."""
    magic, length, crc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not an aotfmm operator file")
    if length > MAX_HEADER:
        raise ValueError(f"header length {length} exceeds {MAX_HEADER}")
    return length, crc


def _parse_header(data):
    """(header dict, data section start) from the file's first bytes; raises if malformed."""
    if len(data) < _PREFIX.size:
        raise ValueError("file too short")
    length, crc = _prefix(data)
    end = _PREFIX.size + length
    if len(data) < end:
        raise ValueError("header truncated")
    raw = bytes(data[_PREFIX.size:end])
    if zlib.crc32(raw) != crc:
        raise ValueError("header checksum mismatch")
    header = json.loads(raw.decode())
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, _align(end)


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR,
          "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISLNK, "a symbolic link"))


def _kind(mode):
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _open_regular(path):
    """Unbuffered reader and ``fstat`` of ``path``, which must be a regular file.

    Never blocks (``O_NONBLOCK``: a FIFO opens at once and is then refused) and never follows a
    symbolic link at ``path`` (``O_NOFOLLOW``; where it does not exist, ``lstat`` first).
    """
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    if not nofollow and os.path.islink(path):
        raise ValueError("a symbolic link")
    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | nofollow | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_BINARY", 0))
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise ValueError("a symbolic link") from None  # what O_NOFOLLOW says (EMLINK: BSD)
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(_kind(st.st_mode))
        return io.FileIO(fd, "rb", closefd=True), st
    except BaseException:
        os.close(fd)
        raise


def _umask():
    """The process's umask, without changing it where the system reports it (Linux); else
    read by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _read_fully(f, view):
    """Fill ``view`` from ``f``; returns the bytes read (fewer only at end of file)."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _read_head(f, size):
    """Prefix and JSON header bytes of a regular file of ``size`` bytes (header length capped)."""
    head = bytearray(_PREFIX.size)
    if _read_fully(f, memoryview(head)) < _PREFIX.size:
        raise ValueError("file too short")
    length, _ = _prefix(head)
    if _PREFIX.size + length > size:
        raise ValueError("header truncated")
    head += bytes(length)
    if _read_fully(f, memoryview(head)[_PREFIX.size:]) < length:
        raise ValueError("header truncated")
    return head


def read_header(path):
    """The JSON header of a cache file (its key is ``json.loads(header["key_json"])``).

    Safe on anything at ``path``: only a regular file whose size is the one its header states
    is read, and at most :data:`MAX_HEADER` bytes of it; anything else raises ValueError or
    OSError (never blocks on a FIFO, never follows a symbolic link).
    """
    f, st = _open_regular(path)
    with f:
        header, _ = _parse_header(_read_head(f, st.st_size))
    if header.get("file_size") != st.st_size:
        raise ValueError(f"file size {st.st_size}, header says {header.get('file_size')}")
    return header


def _aligned_bytes(n):
    """Uninitialised uint8 array of ``n`` bytes starting on an :data:`_ALIGN` boundary."""
    raw = np.empty(n + _ALIGN, dtype=np.uint8)
    skip = -raw.ctypes.data % _ALIGN
    return raw[skip:skip + n]


def _array_spec(name, spec, start, size):
    """(offset, nbytes, dtype, shape) of an array entry of the header; raises if not sane."""
    try:
        off, nbytes = start + int(spec["offset"]), int(spec["nbytes"])
        dt = np.dtype(spec["dtype"])
        shape = tuple(int(n) for n in spec["shape"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"array {name}: bad entry ({exc})") from None
    if dt.kind not in "biufc" or dt.byteorder not in "=|" + ("<" if np.little_endian else ">"):
        raise ValueError(f"array {name}: dtype {dt} not allowed")
    count = 1
    for n in shape:
        if n < 0:
            raise ValueError(f"array {name}: bad shape {shape}")
        count *= n  # python ints: no overflow
    if off < start or off % _ALIGN or nbytes != dt.itemsize * count or off + nbytes > size:
        raise ValueError(f"array {name}: bad extent")
    return off, nbytes, dt, shape


def _read(path, key, required=()):
    """(arrays, file signature) stored at ``path`` if its header matches ``key``; raises on any
    mismatch. The arrays are read-only views of a private copy of the file (no mapping)."""
    f, st = _open_regular(path)
    with f:
        size = st.st_size
        head = _read_head(f, size)
        header, start = _parse_header(head)
        if header.get("key_json") != _canonical(dict(key, format_version=FORMAT_VERSION)):
            raise ValueError("stored key differs")
        if header.get("file_size") != size:
            raise ValueError(f"file size {size}, header says {header.get('file_size')}")
        specs = header.get("arrays")
        if not isinstance(specs, dict):
            raise ValueError("header has no array table")
        missing = sorted(set(required) - set(specs))
        if missing:
            raise ValueError(f"arrays missing: {', '.join(missing)}")
        layout = {name: _array_spec(name, spec, start, size) for name, spec in specs.items()}
        data = _aligned_bytes(size)
        data[:len(head)] = np.frombuffer(head, dtype=np.uint8)
        view = memoryview(data)
        if len(head) + _read_fully(f, view[len(head):]) != size or f.read(1):
            raise ValueError("file changed size while being read")
    data.base.flags.writeable = False  # read-only all the way down: views cannot be made
    data.flags.writeable = False       # writeable again
    out = {}
    for name, (off, nbytes, dt, shape) in layout.items():
        if zlib.crc32(view[off:off + nbytes]) != specs[name].get("crc32"):
            raise ValueError(f"array {name}: checksum mismatch")
        out[name] = data[off:off + nbytes].view(dt).reshape(shape)
    return out, _signature(st)


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
        try:  # mkstemp makes 0600: give the file the mode the umask gives any other file
            os.chmod(tmp, 0o666 & ~_umask())
        except OSError:
            pass
        with os.fdopen(fd, "wb") as fh:
            fh.write(_PREFIX.pack(MAGIC, len(raw), zlib.crc32(raw)))
            fh.write(raw)
            for name, a in items:
                fh.seek(start + specs[name]["offset"])
                fh.write(memoryview(a).cast("B") if a.nbytes else b"")
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())
            sig = _signature(os.fstat(fh.fileno()))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return sig


def prefetch(key, cache_dir=None, prefix="operators", required=(), validate=None,
             cancel=None):
    """Read, check and keep in memory the file of ``key``, as :func:`load_or_build` would on
    a cache hit, so that its later call finds it kept: for a thread that reads while the
    caller does other work. Never builds, writes, warns or raises (numpy's floating-point
    warnings are off here: the thread's own; a check that overflows fails anyway): a file
    that is missing, already kept or unusable is left for :func:`load_or_build` to find and
    report. ``cancel`` (a threading.Event): once set, nothing more is read or kept."""
    try:
        if cache_dir is False:
            return
        path = cache_path(key, cache_dir, prefix)
        if _recall_all(path, required) is not None or not os.path.lexists(path) \
                or (cancel is not None and cancel.is_set()):
            return
        with np.errstate(all="ignore"):
            arrays, sig = _read_checked(path, key, required, validate)
        if cancel is None or not cancel.is_set():
            _remember(path, sig, arrays)
    except Exception:  # noqa: BLE001 - load_or_build reads it again and says what is wrong
        return


def _recall_all(path, required):
    """:func:`_recall`, only if the kept arrays hold every name in ``required``."""
    kept = _recall(path)
    return kept if kept is not None and not set(required) - set(kept) else None


def _read_checked(path, key, required, validate):
    """:func:`_read`, then ``validate(arrays)`` (if given) before anything uses them."""
    arrays, sig = _read(path, key, required)
    if validate is not None:
        validate(arrays)
    return arrays, sig


def load_or_build(key, build, cache_dir=None, prefix="operators", required=(), validate=None):
    """Arrays for ``key`` from the cache, or ``build()`` (a dict of arrays) stored there.

    Returns ``(arrays, source)`` with source ``"cache"``, ``"built"`` (and stored) or
    ``"memory"`` (built, not stored: an unwritable directory, or something at the file's path
    that cannot be replaced; a CacheWarning says why). ``cache_dir=False`` disables the cache.
    ``required``: array names a stored file must hold. ``validate(arrays)``: called on arrays
    read from a file before they are used; raising ValueError makes the file count as corrupt
    (rebuilt and rewritten, with a CacheWarning).
    """
    if cache_dir is False:
        return build(), "memory"
    path = cache_path(key, cache_dir, prefix)
    kept = _recall_all(path, required)
    if kept is not None:
        _touch(path)
        return kept, "cache"
    if os.path.lexists(path):
        try:
            arrays, sig = _read_checked(path, key, required, validate)
            _remember(path, sig, arrays)
            _touch(path)
            return arrays, "cache"
        except FileNotFoundError:  # removed meanwhile (another process's evict): build it
            pass
        except Exception as exc:  # corrupt, truncated, mismatched, not a file: never trust it
            warnings.warn(f"operator cache file {path} is unusable ({type(exc).__name__}: "
                          f"{exc}); rebuilding it", CacheWarning, stacklevel=3)
    arrays = build()
    try:
        sig = _write(path, key, arrays)
    except OSError as exc:
        warnings.warn(f"cannot write the operator cache {path} ({exc}); operators are kept in "
                      f"memory only (set {ENV_VAR} to a writable directory)", CacheWarning,
                      stacklevel=3)
        return arrays, "memory"
    _remember(path, sig, arrays)
    evict(os.path.dirname(path), keep=(path,))
    return arrays, "built"
