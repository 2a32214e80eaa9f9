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
from numba.extending import register_jitable

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
    # IN pts, IN perm, IN start, IN end, IN leaves, IN l0, IN l1, IN anchor, IN scale,
    # OUT dmin, OUT out (3, n) float32 offsets, OUT out64 (3, n) float64 offsets,
    # OUT moved (3, n) out - out64
    "leaf_offsets_pair": "void(f8[:, ::1], i8[::1], i8[::1], i8[::1], i8[::1], i8, i8,"
                         " f8[:, ::1], f8, f8[::1], f4[:, ::1], f8[:, ::1], f8[:, ::1])",
    # INOUT xyz (3, n), INOUT err (3, n), IN start, IN end (per box), IN boxes, IN l0, IN l1,
    # OUT order (n,), OUT amax, OUT emax (per box), OUT bbox (n_boxes, 6)
    "box_sort_x": "void(f8[:, ::1], f8[:, ::1], i8[::1], i8[::1], i8[::1], i8, i8, i8[::1],"
                  " f8[::1], f8[::1], f8[:, ::1])",
    # IN trg (3, nt), IN terr (3, nt), IN tord (nt,), IN src (3, ns), IN serr (3, ns) (each
    # box sorted by x), IN sbox (n_boxes, 6) source bounding boxes, IN trg_start, IN trg_end,
    # IN src_start, IN src_end (per box), IN list_offsets, IN list_index, IN shift
    # (n_entries, 3), IN entry_err, IN pair_extra (n_entries,), IN boxes, IN l0, IN l1,
    # IN tau, OUT hit_target (cap,), OUT hit_sums (9, cap), INOUT n_hits (1,)
    "near_risk": "void(f8[:, ::1], f8[:, ::1], i8[::1], f8[:, ::1], f8[:, ::1], f8[:, ::1],"
                 " i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], f8[:, ::1],"
                 " f8[::1], f8[::1], i8[::1], i8, i8, f8, i8[::1], f8[:, ::1], i8[::1])",
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


@register_jitable
def _offset(pts, r, ax, ay, az, m):
    """Point r's offset (dx, dy, dz) from the anchor, and m lowered to its smallest nonzero
    |component| (the leaf kernels' dmin)."""
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
    return dx, dy, dz, m


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
            dx, dy, dz, m = _offset(pts, perm[j], ax, ay, az, m)
            out[0, j] = dx / scale
            out[1, j] = dy / scale
            out[2, j] = dz / scale
        dmin[b] = m
    return None


def leaf_offsets_pair(pts, perm, start, end, leaves, l0, l1, anchor, scale, dmin, out, out64,
                      moved):
    """:func:`leaf_offsets` into float32 ``out`` and float64 ``out64`` at once, and
    moved[:, j] = out[:, j] - out64[:, j] (how rounding to float32 moved point j, in frame
    units)."""
    for ll in range(l0, l1):
        b = leaves[ll]
        ax = anchor[b, 0]
        ay = anchor[b, 1]
        az = anchor[b, 2]
        m = np.inf
        for j in range(start[b], end[b]):
            dx, dy, dz, m = _offset(pts, perm[j], ax, ay, az, m)
            x = dx / scale
            y = dy / scale
            z = dz / scale
            fx = np.float32(x)
            fy = np.float32(y)
            fz = np.float32(z)
            out[0, j] = fx
            out[1, j] = fy
            out[2, j] = fz
            out64[0, j] = x
            out64[1, j] = y
            out64[2, j] = z
            moved[0, j] = np.float64(fx) - x
            moved[1, j] = np.float64(fy) - y
            moved[2, j] = np.float64(fz) - z
        dmin[b] = m
    return None


def box_sort_x(xyz, err, start, end, boxes, l0, l1, order, amax, emax, bbox):
    """For boxes[l0:l1]: each box's points (xyz[:, start[b]:end[b]], err[:, ...]) sorted by
    x in place, order[k] = the position point k had before; per box amax[b] = the largest
    |xyz| component, emax[b] = the largest |err[:, k]|, bbox[b] = (min x, min y, min z,
    max x, max y, max z). A stable index sort (:func:`_radix_order`: ties keep their tree
    order; an index heapsort until 2026-12-05 took ~1.5-2x as long as numba's merge sort, which
    took 2.4x as long as the radix sort), then a permutation through one scratch buffer
    (scratch allocated once, the size of the largest box)."""
    m = 1
    for bb in range(l0, l1):
        b = boxes[bb]
        m = max(m, end[b] - start[b])
    tmp = np.empty((6, m))
    bits = xyz.view(np.uint64)
    ka = np.empty(m, np.uint64)
    kb = np.empty(m, np.uint64)
    ia = np.empty(m, np.int64)
    ib = np.empty(m, np.int64)
    cnt = np.empty(257, np.int64)
    for bb in range(l0, l1):
        b = boxes[bb]
        s = start[b]
        n = end[b] - s
        perm = _radix_order(bits, s, n, ka, ia, kb, ib, cnt)  # (stable: ties keep tree order)
        for k in range(n):
            order[s + k] = s + perm[k]
        a = 0.0
        e = 0.0
        for axis in range(3):
            bbox[b, axis] = np.inf
            bbox[b, 3 + axis] = -np.inf
        for k in range(n):
            i = order[s + k]
            for axis in range(3):
                v = xyz[axis, i]
                tmp[axis, k] = v
                if abs(v) > a:
                    a = abs(v)
                if v < bbox[b, axis]:
                    bbox[b, axis] = v
                if v > bbox[b, 3 + axis]:
                    bbox[b, 3 + axis] = v
            n2 = 0.0
            for axis in range(3):
                v = err[axis, i]
                tmp[3 + axis, k] = v
                n2 += v * v
            if n2 > e:
                e = n2
        for k in range(n):
            for axis in range(3):
                xyz[axis, s + k] = tmp[axis, k]
                err[axis, s + k] = tmp[3 + axis, k]
        e = np.sqrt(e)
        amax[b] = a
        emax[b] = e
    return None


@register_jitable
def _radix_order(bits, s, n, ka, ia, kb, ib, cnt):
    """The stable argsort of the float64 values whose bits are bits[0, s:s + n] (positions
    from 0; finite values, -0.0 taken as +0.0, as comparisons do), in ia or ib (returned): the
    bits made order-preserving unsigned keys, then a least-significant-digit radix sort by
    bytes, skipping the bytes all keys share. Scratch ka, ia, kb, ib of >= n, cnt of 257."""
    top = np.uint64(1) << np.uint64(63)
    any_bit = np.uint64(0)
    all_bits = ~np.uint64(0)
    for i in range(n):
        u = bits[0, s + i]
        if u == top:  # -0.0
            u = np.uint64(0)
        u = ~u if u & top else u | top
        ka[i] = u
        ia[i] = i
        any_bit |= u
        all_bits &= u
    differ = any_bit ^ all_bits
    in_a = True
    for shift in range(0, 64, 8):
        sh = np.uint64(shift)
        if (differ >> sh) & np.uint64(255) == 0:
            continue
        sk, si, dk, di = (ka, ia, kb, ib) if in_a else (kb, ib, ka, ia)
        for d in range(257):
            cnt[d] = 0
        for i in range(n):
            cnt[((sk[i] >> sh) & np.uint64(255)) + np.uint64(1)] += 1
        for d in range(256):
            cnt[d + 1] += cnt[d]
        for i in range(n):
            d = (sk[i] >> sh) & np.uint64(255)
            q = cnt[d]
            cnt[d] = q + 1
            dk[q] = sk[i]
            di[q] = si[i]
        in_a = not in_a
    return ia if in_a else ib


@register_jitable
def _first_at_least(xyz, lo, hi, value):
    """The first i in [lo, hi) with xyz[0, i] >= value (hi if none; xyz[0, lo:hi] sorted)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if xyz[0, mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


#: the float32 arithmetic's share of a pair difference that grows with its distance r: the
#: pair loops form (t + shift) - s or t - (s - shift); the first operation rounds by at most
#: 2^-24 of |t + shift| <= |s| + r (or of |s - shift| <= |t| + r), the second is exact for
#: a close pair (Sterbenz) and else rounds by at most 2^-24 r: per component 2^-24 (|s| + 2 r),
#: the |s| part being the entry's ``pair_extra``
_ARITH_R = 2.0 ** -23 * 1.7320508075688772


def near_risk(trg, terr, tord, src, serr, sbox, trg_start, trg_end, src_start, src_end,
              list_offsets, list_index, shift, entry_err, pair_extra, boxes, l0, l1, tau,
              hit_target, hit_sums, n_hits):
    """The near pairs that rounding the points to float32 can hurt (aotfmm.evaluate
    ``Plan._rounding_redo``), for the target boxes boxes[l0:l1], summed per target.

    ``trg``/``src``: float64 leaf-local offsets (frame units), each box's points sorted by x
    (:func:`box_sort_x`); ``terr``/``serr`` (3, n): how each point moved when rounded to
    float32, in the same order; ``tord``: tree position of each sorted target. Per near-list
    entry (target box b, source box c = list_index[entry]): ``shift`` the float64
    anchor-to-anchor shift, ``pair_extra`` the rounding of the float32 shift plus the float32
    arithmetic's part that does not grow with the distance (a box's own entry: 0),
    ``entry_err`` a bound of |terr - serr| + pair_extra over the entry's pairs.

    A pair i, j at distance r > 0 moves by at most e = |terr[:, i] - serr[:, j]| +
    pair_extra + 2^-23 sqrt(3) r (:data:`_ARITH_R`). (The points' moves enter as the
    difference of the vectors, which is exactly how far they move the pair: points given in
    float32 whose offsets share a binade move alike. The arithmetic enters as a bound: the
    fast-math flags let LLVM pick the order of the pair loops' additions, so their exact
    rounding cannot be replayed here.) A pair with e > tau r is a hit. Per target with hits
    (the k-th, k = n_hits[0], which counts them all; stored while k < len(hit_target)):
    hit_target[k] = tord[i] and hit_sums[:, k] = the sums over its hits of
    (o + 1) e / r^(o + 2) (rows o = 0..3: the error bound of a term of the o-th derivative of
    1/r), of 1 / r^(o + 1) (rows 4 + o: the term) and of 1 (row 8).

    Only pairs with |dx| <= entry_err / (tau - 2^-23 sqrt(3)) can be hits: per target a
    window of the x-sorted sources is tested in one vectorised loop, and only a window with
    a hit is visited again. In the box's own entry the window moves along as the targets' x
    grows; for another box, binary searches skip the targets farther than that in x from all
    its sources, a cheap test skips those farther than that in y or z from its bounding box
    ``sbox`` (most), and the rest find their window by binary search."""
    cap = hit_target.shape[0]
    m = 1
    for bb in range(l0, l1):
        b = boxes[bb]
        m = max(m, trg_end[b] - trg_start[b])
    acc = np.zeros((9, m))
    for bb in range(l0, l1):
        b = boxes[bb]
        t0 = trg_start[b]
        t1 = trg_end[b]
        if t1 <= t0:
            continue
        for k in range(t1 - t0):
            for row in range(9):
                acc[row, k] = 0.0
        for ent in range(list_offsets[b], list_offsets[b + 1]):
            c = list_index[ent]
            s0 = src_start[c]
            s1 = src_end[c]
            if s1 <= s0:
                continue
            own = c == b
            sx = shift[ent, 0]
            sy = shift[ent, 1]
            sz = shift[ent, 2]
            extra = pair_extra[ent]
            # e = |terr - serr| + extra + kappa r > tau r <=> |terr - serr| + extra > teff r
            teff = tau - _ARITH_R
            teff2 = teff * teff
            w = entry_err[ent] / teff
            # only targets whose x is within w of the sources' x range can have a pair
            a = _first_at_least(trg, t0, t1, src[0, s0] - w - sx)
            z = _first_at_least(trg, a, t1, np.nextafter(src[0, s1 - 1] + w - sx, np.inf))
            ylo = sbox[c, 1] - w
            yhi = sbox[c, 4] + w
            zlo = sbox[c, 2] - w
            zhi = sbox[c, 5] + w
            lo = s0
            hi = s0
            for i in range(a, z):
                xi = trg[0, i] + sx
                yi = trg[1, i] + sy
                zi = trg[2, i] + sz
                if own:  # every target: a sweep, lo and hi move up with x
                    while lo < s1 and xi - src[0, lo] > w:
                        lo += 1
                    if hi < lo:
                        hi = lo
                    while hi < s1 and src[0, hi] - xi <= w:
                        hi += 1
                else:  # a neighbour: few targets come close enough in y and z
                    if yi < ylo or yi > yhi or zi < zlo or zi > zhi:
                        continue
                    lo = _first_at_least(src, s0, s1, xi - w)
                    hi = _first_at_least(src, lo, s1, np.nextafter(xi + w, np.inf))
                if hi <= lo:
                    continue
                mx = terr[0, i]
                my = terr[1, i]
                mz = terr[2, i]
                hit = 0
                for j in range(lo, hi):
                    dx = xi - src[0, j]
                    dy = yi - src[1, j]
                    dz = zi - src[2, j]
                    r2 = dx * dx + dy * dy + dz * dz
                    ex = mx - serr[0, j]
                    ey = my - serr[1, j]
                    ez = mz - serr[2, j]
                    e = np.sqrt(ex * ex + ey * ey + ez * ez) + extra
                    if r2 > 0.0 and e * e > teff2 * r2:
                        hit += 1
                if hit == 0:
                    continue
                row = i - t0
                for j in range(lo, hi):
                    dx = xi - src[0, j]
                    dy = yi - src[1, j]
                    dz = zi - src[2, j]
                    r2 = dx * dx + dy * dy + dz * dz
                    ex = mx - serr[0, j]
                    ey = my - serr[1, j]
                    ez = mz - serr[2, j]
                    e = np.sqrt(ex * ex + ey * ey + ez * ez) + extra
                    if r2 > 0.0 and e * e > teff2 * r2:
                        r = np.sqrt(r2)
                        e += _ARITH_R * r
                        inv = 1.0 / r
                        t = inv
                        for o in range(4):  # t = 1 / r^(o + 1)
                            acc[o, row] += (o + 1) * e * inv * t
                            acc[4 + o, row] += t
                            t *= inv
                        acc[8, row] += 1.0
        for row in range(t1 - t0):
            if acc[8, row] > 0.0:
                k = n_hits[0]
                if k < cap:
                    hit_target[k] = tord[t0 + row]
                    for q in range(9):
                        hit_sums[q, k] = acc[q, row]
                n_hits[0] = k + 1
    return None
