"""Morton keys of octree boxes and points (vectorised numpy; points through a compiled kernel).

Conventions (shared with :mod:`aotfmm._geometry` and ``kernels/morton.py``):

* A box at level ``l`` (0 = root) has integer coordinates ``ijk`` in [0, 2**l)^3 along (x, y, z).
  Its *code* interleaves the bits of (i, j, k), x lowest: bit b of i is bit 3b of the code, of j
  bit 3b + 1, of k bit 3b + 2. The lowest three bits of a code are therefore the box's octant in
  its parent (``c = x | y << 1 | z << 2``, as in ``_geometry.OCTANT_SIGNS``), and
  ``code(child c) = code(parent) << 3 | c``: sorting codes of one level sorts boxes in Morton order.
* The *key* of a box adds its level: ``key = (code << 3 * (MAX_LEVEL - l)) << LEVEL_BITS | l``.
  Keys of distinct boxes differ; sorting keys gives the depth-first (pre-)order of a linear
  octree (a parent before its children, children in octant order). With ``MAX_LEVEL = 19`` and
  ``LEVEL_BITS = 5`` a key uses 62 bits and fits a positive int64.
* A point's key is the key of the level-``MAX_LEVEL`` cell holding it.
"""
import numpy as np

from . import _kernels, _threads

__all__ = ["MAX_LEVEL", "LEVEL_BITS", "interleave", "deinterleave", "encode", "decode",
           "key_level", "parent", "children", "neighbours", "ancestor", "ancestors",
           "point_codes", "point_keys", "code_to_key", "key_to_code"]

#: Deepest level a key can describe.
MAX_LEVEL = 19
#: Low bits of a key holding the level.
LEVEL_BITS = 5
_LEVEL_MASK = (1 << LEVEL_BITS) - 1

_i8 = np.int64


def _spread(v):
    """Spread the low 21 bits of each (non-negative int64) v to every third bit."""
    v = np.asarray(v, dtype=_i8)
    v = (v | (v << 32)) & _i8(0x1F00000000FFFF)
    v = (v | (v << 16)) & _i8(0x1F0000FF0000FF)
    v = (v | (v << 8)) & _i8(0x100F00F00F00F00F)
    v = (v | (v << 4)) & _i8(0x10C30C30C30C30C3)
    v = (v | (v << 2)) & _i8(0x1249249249249249)
    return v


def _compact(v):
    """Inverse of :func:`_spread`: gather every third bit (from bit 0) into the low 21 bits."""
    v = np.asarray(v, dtype=_i8) & _i8(0x1249249249249249)
    v = (v ^ (v >> 2)) & _i8(0x10C30C30C30C30C3)
    v = (v ^ (v >> 4)) & _i8(0x100F00F00F00F00F)
    v = (v ^ (v >> 8)) & _i8(0x1F0000FF0000FF)
    v = (v ^ (v >> 16)) & _i8(0x1F00000000FFFF)
    v = (v ^ (v >> 32)) & _i8(0x1FFFFF)
    return v


def interleave(ijk):
    """Codes of an (m, 3) int array of box coordinates (each < 2**21)."""
    ijk = np.asarray(ijk, dtype=_i8).reshape(-1, 3)
    return _spread(ijk[:, 0]) | (_spread(ijk[:, 1]) << 1) | (_spread(ijk[:, 2]) << 2)


def deinterleave(codes):
    """(m, 3) int64 coordinates of an array of codes (inverse of :func:`interleave`)."""
    codes = np.asarray(codes, dtype=_i8).ravel()
    out = np.empty((codes.size, 3), dtype=_i8)
    for axis in range(3):
        out[:, axis] = _compact(codes >> axis)
    return out


def code_to_key(codes, level):
    """Keys of the level-``level`` boxes with these codes (``level`` scalar or array)."""
    level = np.asarray(level, dtype=_i8)
    return ((np.asarray(codes, dtype=_i8) << (3 * (MAX_LEVEL - level))) << LEVEL_BITS) | level


def key_to_code(keys):
    """Codes (at each key's own level) of an array of keys."""
    keys = np.asarray(keys, dtype=_i8)
    return (keys >> LEVEL_BITS) >> (3 * (MAX_LEVEL - (keys & _LEVEL_MASK)))


def encode(ijk, level):
    """Keys of boxes at ``level`` (scalar or (m,) array) with (m, 3) integer coordinates ``ijk``."""
    return code_to_key(interleave(ijk), level)


def decode(keys):
    """``(ijk, level)`` of an array of keys: (m, 3) coordinates at each box's level, (m,) levels."""
    keys = np.asarray(keys, dtype=_i8).ravel()
    return deinterleave(key_to_code(keys)), keys & _LEVEL_MASK


def key_level(keys):
    """Levels of an array of keys."""
    return np.asarray(keys, dtype=_i8) & _LEVEL_MASK


def ancestor(keys, level):
    """Keys of the ancestors at ``level`` (<= each key's level) of an array of keys."""
    keys = np.asarray(keys, dtype=_i8)
    level = np.asarray(level, dtype=_i8)
    anchor = (keys >> LEVEL_BITS) >> (3 * (MAX_LEVEL - level)) << (3 * (MAX_LEVEL - level))
    return (anchor << LEVEL_BITS) | level


def parent(keys):
    """Keys of the parents of an array of keys (level >= 1)."""
    keys = np.asarray(keys, dtype=_i8)
    return ancestor(keys, key_level(keys) - 1)


def ancestors(key):
    """Keys of the ancestors of one key, from the root down to (and including) the key itself."""
    key = _i8(key)
    lev = int(key & _LEVEL_MASK)
    return ancestor(np.full(lev + 1, key), np.arange(lev + 1))


def children(keys):
    """(m, 8) keys of the children of an array of keys (level < MAX_LEVEL), in octant order."""
    keys = np.asarray(keys, dtype=_i8).ravel()
    lev = keys & _LEVEL_MASK
    codes = key_to_code(keys)
    child_codes = (codes[:, None] << 3) | np.arange(8, dtype=_i8)
    return code_to_key(child_codes, (lev + 1)[:, None])


#: The 27 offsets (dx, dy, dz) in {-1, 0, 1}^3, lexicographic: row (dx+1)*9 + (dy+1)*3 + dz+1.
OFFSETS_27 = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)


def neighbours(keys):
    """(m, 27) keys of the same-level boxes at offsets :data:`OFFSETS_27` (-1 outside the root).

    Column 13 is the box itself.
    """
    ijk, lev = decode(keys)
    nb = ijk[:, None, :] + OFFSETS_27[None, :, :]
    inside = ((nb >= 0) & (nb < (_i8(1) << lev)[:, None, None])).all(axis=2)
    out = encode(nb.reshape(-1, 3), np.repeat(lev, 27)).reshape(-1, 27)
    out[~inside] = -1
    return out


def point_codes(xyz, origin, half, threads=1):
    """Finest-level (``MAX_LEVEL``) codes of points ``xyz`` (3, n) float64 C-contiguous in the
    cube [origin, origin + 2 half)^3; points outside are clamped to the nearest cell."""
    n = xyz.shape[1]
    codes = np.empty(n, dtype=_i8)
    scale = float(2 ** MAX_LEVEL) / (2.0 * float(half))
    origin = np.ascontiguousarray(origin, dtype=np.float64)
    kernel = _kernels.kernels.morton_encode_points

    def work(a, b):
        kernel(xyz, origin, scale, MAX_LEVEL, a, b, codes)

    threads = min(threads, max(1, n // 50_000))
    _threads.run(work, _threads.split(n, threads), threads)
    return codes


def point_keys(xyz, origin, half, threads=1):
    """Keys of the level-``MAX_LEVEL`` cells holding the points (see :func:`point_codes`)."""
    return (point_codes(np.ascontiguousarray(xyz, dtype=np.float64), origin, half, threads)
            << LEVEL_BITS) | MAX_LEVEL
