"""Reading problems and writing results for ``aotfmm run``: .npy, .npz, .h5/.hdf5, .csv/.txt.

Input (points as rows; charges one column per density):

* ``.npz`` / ``.h5``: arrays ``sources`` (n, 3), ``charges`` (n,) or (n, k), optional ``targets``
  (m, 3); optional ``dipoles`` is rejected with a clear message until dipoles are supported.
* ``.npy``: one array (n, 3 + k): x, y, z, then k charge columns (targets = sources).
* ``.csv`` / ``.txt``: the same columns as text, comma- or whitespace-separated; lines starting
  with ``#`` and a first line of column names are skipped.

Output, chosen by the output file's extension:

* ``.npz`` / ``.h5``: ``potential`` (m,) or (m, k), ``gradient`` (m, 3) or (m, k, 3) if asked.
* ``.npy``: (m, c) with the potential column(s), then gradient columns if asked.
* ``.csv`` / ``.txt``: the same columns with a header line.
"""
import os

import numpy as np

FORMATS = {".npy": "npy", ".npz": "npz", ".h5": "h5", ".hdf5": "h5", ".csv": "text",
           ".txt": "text", ".dat": "text"}


class InputError(ValueError):
    """A problem file that cannot be used (reported in one line by the CLI)."""


def file_format(path):
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in FORMATS:
        raise InputError(f"{path}: unknown file type {ext!r}; expected one of "
                         f"{', '.join(sorted(FORMATS))}")
    return FORMATS[ext]


def _h5py():
    try:
        import h5py
    except ImportError:
        raise InputError("HDF5 files need h5py: pip install h5py") from None
    return h5py


def _split_columns(path, table):
    if table.ndim != 2 or table.shape[1] < 4:
        raise InputError(f"{path}: expected a table with columns x, y, z, charge[, ...], got "
                         f"shape {table.shape}")
    charges = table[:, 3:]
    return {"sources": table[:, :3], "charges": charges[:, 0] if charges.shape[1] == 1
            else charges, "targets": None}


def read_problem(path):
    """Read a problem file -> dict with ``sources``, ``charges``, ``targets`` (or None)."""
    fmt = file_format(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    try:
        if fmt == "npy":
            return _split_columns(path, np.load(path, allow_pickle=False))
        if fmt == "text":
            with open(path) as f:
                lines = [ln for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
            if lines and not _is_numeric_row(lines[0]):
                lines = lines[1:]  # header
            rows = [ln.replace(",", " ").split() for ln in lines]
            if not rows or len({len(r) for r in rows}) != 1:
                raise InputError(f"{path}: rows must all have the same number of columns")
            return _split_columns(path, np.array(rows, dtype=np.float64))
        if fmt == "npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        else:
            with _h5py().File(path, "r") as f:
                arrays = {k: f[k][()] for k in f.keys()}
    except InputError:
        raise
    except Exception as exc:  # unreadable, corrupt, wrong dtype ...
        raise InputError(f"{path}: cannot read: {exc}") from None
    missing = {"sources", "charges"} - set(arrays)
    if missing:
        raise InputError(f"{path}: missing array(s) {', '.join(sorted(missing))}; "
                         f"found {', '.join(sorted(arrays)) or 'none'}")
    return {"sources": arrays["sources"], "charges": arrays["charges"],
            "targets": arrays.get("targets")}


def _is_numeric_row(line):
    try:
        [float(x) for x in line.replace(",", " ").split()]
        return True
    except ValueError:
        return False


def write_result(path, pot, grad=None):
    """Write potentials (and gradients) in the format given by ``path``'s extension."""
    fmt = file_format(path)
    if fmt in ("npz", "h5"):
        arrays = {"potential": pot} if grad is None else {"potential": pot, "gradient": grad}
        if fmt == "npz":
            with open(path, "wb") as f:
                np.savez(f, **arrays)
        else:
            with _h5py().File(path, "w") as f:
                for k, v in arrays.items():
                    f.create_dataset(k, data=v)
        return
    pot2 = pot.reshape(len(pot), -1)
    cols = [pot2]
    names = ["potential"] if pot2.shape[1] == 1 else [f"potential_{i}" for i in range(pot2.shape[1])]
    if grad is not None:
        g = grad.reshape(len(pot), -1, 3)
        cols.append(g.reshape(len(pot), -1))
        names += [f"grad{a}" if g.shape[1] == 1 else f"grad{a}_{i}"
                  for i in range(g.shape[1]) for a in "xyz"]
    table = np.hstack(cols)
    if fmt == "npy":
        np.save(path, table)
    else:
        np.savetxt(path, table, delimiter=",", header=",".join(names), comments="",
                   fmt="%.17g")
