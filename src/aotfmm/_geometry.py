"""Conventions shared by the tree, the lists and the operators (one place, no copies).

* Octants: child ``c`` (0..7) of a box has offset bits ``(c & 1, (c >> 1) & 1, (c >> 2) & 1)``
  along (x, y, z); its center is ``parent_center + parent_half / 2 * OCTANT_SIGNS[c]``.
* Transfer vectors: a V-list pair (target box B, source box S) at the same level has
  ``t = (S_ijk - B_ijk)`` in box widths, each component in [-3, 3], not all in [-1, 1]:
  316 of them, ordered lexicographically by (tx, ty, tz) in :data:`TRANSFER_VECTORS`.
  ``transfer_index(t)`` maps an (m, 3) int array of vectors to their rows (-1 if not a V vector).
* Surfaces are given for a box of half-width 1 centred at the origin; a box of half-width h at c
  uses ``c + h * radius * surface``.
"""
import numpy as np

OCTANT_SIGNS = np.array([[2 * (c & 1) - 1, 2 * ((c >> 1) & 1) - 1, 2 * ((c >> 2) & 1) - 1]
                         for c in range(8)], dtype=np.int64)

_RANGE = np.arange(-3, 4)
_ALL = np.stack(np.meshgrid(_RANGE, _RANGE, _RANGE, indexing="ij"), axis=-1).reshape(-1, 3)
TRANSFER_VECTORS = _ALL[np.abs(_ALL).max(axis=1) > 1].copy()
N_TRANSFER = len(TRANSFER_VECTORS)  # 316

#: 7x7x7 lookup: _LOOKUP[tx+3, ty+3, tz+3] = row of t in TRANSFER_VECTORS, or -1.
_LOOKUP = np.full((7, 7, 7), -1, dtype=np.int64)
_LOOKUP[tuple((TRANSFER_VECTORS + 3).T)] = np.arange(N_TRANSFER)


def transfer_index(t):
    """Rows of TRANSFER_VECTORS for an (m, 3) integer array of vectors; -1 where not a V vector."""
    t = np.asarray(t, dtype=np.int64).reshape(-1, 3)
    out = np.full(len(t), -1, dtype=np.int64)
    ok = (np.abs(t) <= 3).all(axis=1)
    out[ok] = _LOOKUP[tuple((t[ok] + 3).T)]
    return out
