"""Morton codes and keys of octree boxes, codes of points (numpy; points through a compiled
kernel): what :mod:`aotfmm.tree` builds the octree with.

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
* A point's code is the code of the level-``MAX_LEVEL`` cell holding it.
"""
import numpy as np

from . import _dispatch, _threads

__all__ = ["MAX_LEVEL", "LEVEL_BITS", "interleave", "deinterleave", "code_to_key",
           "point_codes"]

#: Deepest level a key can describe.
MAX_LEVEL = 19
#: Low bits of a key holding the level.
LEVEL_BITS = 5

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


def point_codes(xyz, origin, half, workers=_threads.INLINE):
    """Finest-level (``MAX_LEVEL``) codes of points ``xyz`` (3, n) float64 C-contiguous in the
    cube [origin, origin + 2 half)^3; points outside are clamped to the nearest cell."""
    n = xyz.shape[1]
    codes = np.empty(n, dtype=_i8)
    scale = float(2 ** MAX_LEVEL) / (2.0 * float(half))
    origin = np.ascontiguousarray(origin, dtype=np.float64)
    work = _dispatch.bind("morton_encode_points", xyz=xyz, origin=origin, scale=scale,
                          depth=MAX_LEVEL, codes=codes)

    limit = max(1, n // 50_000)
    workers.run(work, workers.split(n, limit=limit), limit=limit)
    return codes

