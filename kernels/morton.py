"""Morton codes of points: interleave the integer cell coordinates of each point.

A point x inside the root cube [origin, origin + 2 h)^3 lies in the finest-level cell
``ijk = floor((x - origin) * scale)`` with ``scale = 2**depth / (2 h)``, clamped to
[0, 2**depth - 1]. Its code interleaves the bits of (i, j, k) with x lowest:
bit b of i goes to bit 3b, of j to 3b + 1, of k to 3b + 2, so that the three bits of one level
form the octant number used in ``aotfmm._geometry`` (``c = x | y << 1 | z << 2``).
depth <= 21 (the codes are < 2**63).
"""
import numpy as np

SIGNATURES = {
    # IN xyz (3, n), IN origin (3,), IN scale, IN depth, IN start, IN end, OUT codes (n,)
    "morton_encode_points": "void(f8[:, ::1], f8[::1], f8, i8, i8, i8, i8[::1])",
}

LOCALS = {}


def morton_encode_points(xyz, origin, scale, depth, start, end, codes):
    """codes[i] = interleave(clamp(floor((xyz[:, i] - origin) * scale), 0, 2**depth - 1)).

    For start <= i < end.
    """
    top = (1 << depth) - 1
    for i in range(start, end):
        code = 0
        for axis in range(3):
            u = (xyz[axis, i] - origin[axis]) * scale
            v = 0
            if u > 0.0:
                v = np.int64(u)
            if v > top:
                v = top
            # spread the low 21 bits of v to every third bit
            v = (v | (v << 32)) & 0x1F00000000FFFF
            v = (v | (v << 16)) & 0x1F0000FF0000FF
            v = (v | (v << 8)) & 0x100F00F00F00F00F
            v = (v | (v << 4)) & 0x10C30C30C30C30C3
            v = (v | (v << 2)) & 0x1249249249249249
            code |= v << axis
        codes[i] = code
    return None
