"""Reading problems and writing results for ``aotfmm run``: .npy, .npz, .h5/.hdf5, .csv/.txt.

Input (points as rows; one column per density):

* ``.npz`` / ``.h5``: arrays (HDF5: datasets at the top level) ``sources`` (n, 3), ``charges``
  (n,) or (n, k), ``dipoles`` (n, 3) or (n, k, 3), optional ``targets`` (m, 3). Give charges,
  dipoles or both (the same k). Any other key is an error. Values must be real numbers.
* ``.npy``: one array (n, 3 + k): x, y, z, then k charge columns (targets = sources).
* ``.csv`` / ``.txt`` / ``.dat``: the same columns as text, comma- or whitespace-separated;
  lines starting with ``#`` and a first line of column names (no field a number) are skipped.
  A file with only the line of column names is a problem with no points. Any other field that
  is not a decimal number is an error naming its line.

HDF5 needs h5py, which aotfmm does not depend on: ``pip install "aotfmm[hdf5]"``. Without it,
reading or writing .h5 fails up front with that hint (an :class:`InputError`).

Output, chosen by the output file's extension (m targets, k densities):

* ``.npz`` / ``.h5``: ``potential`` (m,) or (m, k), ``gradient`` (m, 3) or (m, k, 3) if asked.
* ``.npy``: one density without gradient: the potentials, shape (m,). Otherwise a table
  (m, k + 3k): the k potential columns, then gx, gy, gz of each density if asked.
* ``.csv`` / ``.txt`` / ``.dat``: the same table as .npy (always 2-D) with a header line.

Outputs are written to a temporary file next to the target, synced and renamed over it only
when complete: a failed write leaves an earlier file untouched. :func:`check_output` refuses
beforehand an output that cannot be written or is the input itself.
"""
import io
import os
import stat
import tempfile
import warnings

import numpy as np

from . import cache

FORMATS = {".npy": "npy", ".npz": "npz", ".h5": "h5", ".hdf5": "h5", ".csv": "text",
           ".txt": "text", ".dat": "text"}
#: Arrays accepted in .npz / .h5 input.
KEYS = ("sources", "charges", "dipoles", "targets")
_NDIM = {"sources": ((2,), "(n, 3)"), "targets": ((2,), "(m, 3)"),
         "charges": ((1, 2), "(n,) or (n, k)"), "dipoles": ((2, 3), "(n, 3) or (n, k, 3)")}


class InputError(ValueError):
    """A problem file that cannot be used (reported in one line by the CLI)."""


def file_format(path):
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in FORMATS:
        raise InputError(f"{path}: unknown file type {ext!r}; expected one of "
                         f"{', '.join(sorted(FORMATS))}")
    return FORMATS[ext]


#: How to get h5py, which is not a dependency of aotfmm (only .h5 files need it).
H5PY_HINT = 'pip install "aotfmm[hdf5]"'


def _h5py(path):
    """The h5py module, or an InputError naming ``path`` and how to install h5py."""
    try:
        import h5py
    except ModuleNotFoundError as exc:
        if exc.name != "h5py":  # h5py is there but lacks one of its own modules
            raise InputError(f"{path}: HDF5 files need h5py, which is installed but cannot be "
                             f"imported ({exc}); reinstall it: {H5PY_HINT}") from None
        raise InputError(f"{path}: HDF5 files need h5py, which is not installed: "
                         f"{H5PY_HINT}") from None
    except Exception as exc:  # a broken install: missing libhdf5, numpy ABI mismatch ...
        reason = " ".join(f"{exc.__class__.__name__}: {exc}".split())
        raise InputError(f"{path}: HDF5 files need h5py, which is installed but cannot be "
                         f"imported ({reason}); reinstall it: {H5PY_HINT}") from None
    return h5py


def _split_columns(path, table):
    if table.ndim != 2 or table.shape[1] < 4:
        raise InputError(f"{path}: expected a table with columns x, y, z, charge[, ...], got "
                         f"shape {table.shape}")
    _check_dtype(path, "table", table.dtype)
    if table.shape[1] - 3 > max(table.shape[0], 8):  # (4, 2000) ran as 4 points, k = 1997
        warnings.warn(f"{path}: {table.shape[0]} points with {table.shape[1] - 3} densities "
                      f"each: each row is one point (x, y, z, q1, ...); was the table saved "
                      f"transposed?", stacklevel=2)
    charges = table[:, 3:]
    return {"sources": table[:, :3], "charges": charges[:, 0] if charges.shape[1] == 1
            else charges, "dipoles": None, "targets": None}


def _check_keys(path, keys):
    unknown = [k for k in keys if k not in KEYS]
    if unknown:
        raise InputError(f"{path}: unknown array {unknown[0]!r}; accepted: {', '.join(KEYS)}")
    if "sources" not in keys or not {"charges", "dipoles"} & set(keys):
        raise InputError(f"{path}: needs 'sources' and 'charges' and/or 'dipoles'; found "
                         f"{', '.join(sorted(keys)) or 'none'}")


def _check_dtype(path, key, dtype):
    if dtype.kind not in "iuf":
        raise InputError(f"{path}: {key!r} has dtype {dtype}, expected real numbers "
                         f"(integer or floating point)")


def _check_array(path, key, dtype, shape):
    _check_dtype(path, key, dtype)
    ndims, expected = _NDIM[key]
    if shape is None or len(shape) not in ndims or (key != "charges" and shape[-1] != 3):
        raise InputError(f"{path}: {key!r} must have shape {expected}, got "
                         f"{'no data' if shape is None else tuple(shape)}")


def read_problem(path):
    """Read a problem file -> dict with ``sources``, ``charges``, ``dipoles``, ``targets``
    (the last three None when absent)."""
    fmt = file_format(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    try:
        if fmt in ("npy", "npz"):
            _check_magic(path, fmt)
        if fmt == "npy":
            return _split_columns(path, np.load(path, allow_pickle=False))
        if fmt == "text":
            return _split_columns(path, _read_text(path))
        arrays = {}
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as data:
                _check_keys(path, data.files)
                for k in data.files:
                    arrays[k] = data[k]
                    _check_array(path, k, arrays[k].dtype, arrays[k].shape)
        else:
            h5py = _h5py(path)
            with h5py.File(path, "r") as f:
                _check_keys(path, list(f.keys()))
                for k in f.keys():
                    obj = f.get(k)
                    if not isinstance(obj, h5py.Dataset):
                        what = "a group" if isinstance(obj, h5py.Group) else "not readable"
                        raise InputError(f"{path}: {k!r} is {what}, expected a dataset")
                    _check_array(path, k, obj.dtype, obj.shape)
                    arrays[k] = obj[()]
    except InputError:
        raise
    except Exception as exc:  # unreadable, corrupt, wrong dtype ...
        if "allow_pickle" in str(exc):  # numpy's advice would be to unpickle the file
            raise InputError(f"{path}: holds Python objects (pickled data), which aotfmm does "
                             f"not load: save arrays of real numbers") from None
        raise InputError(f"{path}: cannot read: {exc}") from None
    return {k: arrays.get(k) for k in KEYS}


#: The first bytes of a .npy file and of a .npz (zip) file.
_MAGIC = {"npy": (b"\x93NUMPY",), "npz": (b"PK\x03\x04", b"PK\x05\x06")}


def _check_magic(path, fmt):
    """Refuse a file that does not start like a .npy / .npz file. np.load would take it for
    a pickle and answer with advice to unpickle it (allow_pickle=True)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(_MAGIC[fmt]):
        kind = "a NumPy .npy file" if fmt == "npy" else "a NumPy .npz (zip) file"
        raise InputError(f"{path}: not {kind}" + (" (it is empty)" if not head else ""))


def _read_text(path):
    """The numbers of a text table (n, columns) float64. The first line (after comments) is a
    line of column names when none of its fields is a number; a line with some numbers and
    some words is an error, as a corrupt row anywhere else is (it used to be taken for the
    names and dropped: 2026-12-02). A line with a comma has comma-separated fields, each one
    there (one trailing comma is allowed); others are separated by whitespace. Every row has
    as many fields as the first (and as the line of names): an empty field dropped silently
    used to shift the columns after it (2026-12-03)."""
    # utf-8-sig: a byte-order mark is not part of the first field; an undecodable byte becomes
    # a character no number has (named below) instead of a UnicodeDecodeError
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        lines = [(i + 1, ln) for i, ln in enumerate(f)
                 if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"{path}: no rows and no line of column names")
    rows = [_fields(path, number, line) for number, line in lines]
    names = None
    if not any(_is_number(tok) for tok in rows[0]):
        names = lines[0][0], len(rows[0])  # the line of column names
        lines, rows = lines[1:], rows[1:]
    if not rows:
        return np.empty((0, names[1]), dtype=np.float64)
    where, width = names if names is not None else (lines[0][0], len(rows[0]))
    for (number, _), fields in zip(lines, rows):
        if len(fields) != width:
            raise InputError(f"{path}: line {number} has {len(fields)} fields, line {where} "
                             f"has {width}" + (" (the column names)" if names else ""))
    try:
        if any("_" in line for _, line in lines):  # numpy, like float(), reads "1_0" as 10
            raise ValueError
        return np.array(rows, dtype=np.float64)
    except ValueError:  # name the first field that is not a number, and its line
        for (number, _), fields in zip(lines, rows):
            bad = next((tok for tok in fields if not _is_number(tok)), None)
            if bad is not None:
                raise InputError(f"{path}: line {number}: {bad!r} is not a number (only the "
                                 f"first line may be column names, and then none of them a "
                                 f"number)") from None
        raise


def _fields(path, number, line):
    """The fields of one text line: comma-separated when it has a comma (each field must be
    there; one trailing comma ends the line), else separated by whitespace."""
    text = line.strip()
    if "," not in text:
        return text.split()
    if text.endswith(","):
        text = text[:-1]
    fields = [tok.strip() for tok in text.split(",")]
    if "" in fields:
        raise InputError(f"{path}: line {number}: field {fields.index('') + 1} is empty")
    return fields


def _is_number(token):
    """A decimal number as written in a table: what float() takes, without the digit
    separators it also allows ("1_0" would be 10)."""
    if "_" in token:
        return False
    try:
        float(token)
        return True
    except ValueError:
        return False


def _same_file(a, b):
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output(path, input_path=None):
    """Refuse, before any computation, an output that would fail or overwrite the input:
    unknown extension, missing or unwritable directory, a directory, the input file itself
    (also through a hard or symbolic link)."""
    fmt = file_format(path)
    if fmt == "h5":
        _h5py(path)
    if input_path is not None and _same_file(path, input_path):
        raise InputError(f"{path}: is the input file {input_path}; write to another file")
    target = os.path.realpath(path)
    if os.path.isdir(target):
        raise InputError(f"{path}: is a directory")
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        # name the directory that is missing: a symbolic link's target's, not the link's;
        # and a file where a directory should be is not "missing"
        what = "is a file, not a directory" if os.path.exists(directory) else "does not exist"
        via = f" (where {path} points)" if os.path.islink(path) else ""
        raise InputError(f"{path}: directory {directory}{via} {what}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                                   dir=directory)
    except OSError as exc:
        raise InputError(f"{path}: cannot write in {directory}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(tmp)


def _table(pot, grad):
    """(m,) / (m, k) potentials and (m, 3) / (m, k, 3) gradients -> (m, k + 3k), names."""
    m = pot.shape[0]
    pot2 = pot[:, None] if pot.ndim == 1 else pot
    k = pot2.shape[1]
    cols = [pot2]
    names = ["potential"] if k == 1 else [f"potential_{i}" for i in range(k)]
    if grad is not None:
        g = grad[:, None, :] if grad.ndim == 2 else grad
        cols.append(g.reshape(m, 3 * k))
        names += [f"grad{a}" if k == 1 else f"grad{a}_{i}" for i in range(k) for a in "xyz"]
    return np.hstack(cols), names


def _write(fmt, f, pot, grad):
    if fmt == "npz":
        arrays = {"potential": pot} if grad is None else {"potential": pot, "gradient": grad}
        np.savez(f, **arrays)
    elif fmt == "npy":
        np.save(f, pot if (grad is None and pot.ndim == 1) else _table(pot, grad)[0])
    else:
        table, names = _table(pot, grad)
        np.savetxt(f, table, delimiter=",", header=",".join(names), comments="", fmt="%.17g")


def _new_file_mode(target):
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~cache._umask()


def write_result(path, pot, grad=None):
    """Write potentials (and gradients) in the format given by ``path``'s extension, through a
    temporary file renamed over ``path`` (its symlink target if it is one) when complete."""
    fmt = file_format(path)
    h5py = _h5py(path) if fmt == "h5" else None
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if fmt == "h5":  # built in memory: HDF5 can crash on a failing disk write
                buf = io.BytesIO()
                with h5py.File(buf, "w") as h5:
                    h5.create_dataset("potential", data=pot)
                    if grad is not None:
                        h5.create_dataset("gradient", data=grad)
                f.write(buf.getbuffer())
            else:
                _write(fmt, f, pot, grad)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(target))
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, Exception) and not isinstance(exc, InputError):
            raise InputError(f"{path}: cannot write: {exc}") from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
