"""Morton codes of points: interleave the integer cell coordinates of each point.

A point x inside the root cube [origin, origin + 2 h)^3 lies in the finest-level cell
``ijk = floor((x - origin) * scale)`` with ``scale = 2**depth / (2 h)``, clamped to
[0, 2**depth - 1]. Its code interleaves the bits of (i, j, k) with x lowest:
bit b of i goes to bit 3b, of j to 3b + 1, of k to 3b + 2, so that the three bits of one level
form the octant number used in ``aotfmm._geometry`` (``c = x | y << 1 | z << 2``).
depth <= 21 (the codes are < 2**63).

Leaf-local coordinates (``aotfmm.evaluate.Plan._local_coordinates``): per leaf an anchor whose
component on each axis is the leaf's coordinate of smallest magnitude (the first such point in
tree order; a later point set replaces it only if strictly smaller), then each point's offset
from its leaf's anchor, divided by the frame scale, in the kernels' float type.
"""
import numpy as np

SIGNATURES = {
    # IN xyz (3, n), IN origin (3,), IN scale, IN depth, IN start, IN end, OUT codes (n,)
    "morton_encode_points": "void(f8[:, ::1], f8[::1], f8, i8, i8, i8, i8[::1])",
    # IN pts (n, 3) caller coordinates, IN perm (n,) tree order -> input row, IN start, IN end
    # (per box), IN leaves, IN l0, IN l1, INOUT best (n_boxes, 3) smallest |coordinate| so far,
    # INOUT anchor (n_boxes, 3)
    "leaf_anchors": "void(f8[:, ::1], i8[::1], i8[::1], i8[::1], i8[::1], i8, i8, f8[:, ::1],"
                    " f8[:, ::1])",
    # IN pts, IN perm, IN start, IN end, IN leaves, IN l0, IN l1, IN anchor (n_boxes, 3),
    # IN scale, OUT dmin (n_boxes,) smallest nonzero |offset| per leaf (inf: none),
    # OUT out (3, n) offsets / scale in tree order
    "leaf_offsets": "void(f8[:, ::1], i8[::1], i8[::1], i8[::1], i8[::1], i8, i8, f8[:, ::1],"
                    " f8, f8[::1], {F}[:, ::1])",
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


def leaf_anchors(pts, perm, start, end, leaves, l0, l1, best, anchor):
    """For leaves[l0:l1] and each axis: anchor[b, axis] = the first coordinate of smallest
    magnitude among the leaf's points pts[perm[start[b]:end[b]]] that is strictly smaller in
    magnitude than best[b, axis] (which is updated)."""
    for ll in range(l0, l1):
        b = leaves[ll]
        for axis in range(3):
            bv = best[b, axis]
            av = anchor[b, axis]
            for j in range(start[b], end[b]):
                v = pts[perm[j], axis]
                a = abs(v)
                if a < bv:
                    bv = a
                    av = v
            best[b, axis] = bv
            anchor[b, axis] = av
    return None


def leaf_offsets(pts, perm, start, end, leaves, l0, l1, anchor, scale, dmin, out):
    """out[:, j] = (pts[perm[j]] - anchor[b]) / scale for the points j of leaves[l0:l1], and
    dmin[b] = the smallest nonzero |pts[perm[j], axis] - anchor[b, axis]| of the leaf.
    ``scale`` is a power of two (the frame's), so the division is exact up to the final
    rounding to the float type."""
    for ll in range(l0, l1):
        b = leaves[ll]
        ax = anchor[b, 0]
        ay = anchor[b, 1]
        az = anchor[b, 2]
        m = np.inf
        for j in range(start[b], end[b]):
            r = perm[j]
            dx = pts[r, 0] - ax
            dy = pts[r, 1] - ay
            dz = pts[r, 2] - az
            ex = abs(dx)
            ey = abs(dy)
            ez = abs(dz)
            if ex > 0.0 and ex < m:
                m = ex
            if ey > 0.0 and ey < m:
                m = ey
            if ez > 0.0 and ez < m:
                m = ez
            out[0, j] = dx / scale
            out[1, j] = dy / scale
            out[2, j] = dz / scale
        dmin[b] = m
    return None
