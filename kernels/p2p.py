"""P2P: direct Laplace interactions G(x, y) = 1 / (4 pi |x - y|), with G = 0 when x == y.

Points are grouped into boxes: box ``b`` owns targets ``trg_start[b]:trg_end[b]`` and sources
``src_start[b]:src_end[b]`` (boxes may nest: an octree box owns its descendants' points). Target
box ``b`` interacts with the source boxes ``list_index[list_offsets[b]:list_offsets[b+1]]`` (CSR).
One call handles the target boxes ``boxes[i0:i1]``, which must own disjoint target ranges (threads
get disjoint slices of ``boxes``). The FMM's near field (U lists plus W/X pairs cheaper done
directly) and plain direct summation (one source box holding everything, target boxes = thread
chunks) are the same kernel. Coordinates are structure-of-arrays, shape (3, n), C-contiguous.

Coordinates may be local to their box: list entry ``k`` (target box b, source box s) carries
``shift[k]``, the vector from s's origin to b's, and a target x meets the sources of s at
``x + shift[k]`` (``shift`` all zero: one global frame). Tight clusters anywhere in the domain
then keep the relative precision of their own spacing (differences of nearby local values are
exact), which a global frame loses to the distance from its centre.

Inner loops run over *unsigned* indices: with a signed index whose start is loaded from memory,
numba emits a negative-index wraparound fix-up on every access, which stops LLVM from using
contiguous vector loads (measured: f32 P2P at 1.0e9 instead of 2e9+ pairs/s/core on AVX2).

1/r comes from ``_inline.inv_sqrt``: in float64 a float32 estimate refined by Newton steps, one
(``refine=0``, relative error ~1e-14: the FMM's near field) or two (``refine=1``, full accuracy:
direct sums). A target with a source closer than the estimate handles (~1e-19 in the kernels'
[-1, 1]^3 frame) sums to NaN and is redone exactly by ``_exact_target``.
"""
import numpy as np
from numba.extending import register_jitable

from ._inline import inv_sqrt

INV4PI = 0.07957747154594767  # 1 / (4 pi)

SIGNATURES = {
    # IN src_xyz, IN charges, IN trg_xyz, IN src_start, IN src_end, IN trg_start, IN trg_end,
    # IN list_offsets, IN list_index, IN shift (n_entries, 3), IN boxes, IN i0, IN i1, IN refine,
    # INOUT pot
    "p2p_pot": "void({F}[:, ::1], {F}[::1], {F}[:, ::1], i8[::1], i8[::1], i8[::1], i8[::1],"
               " i8[::1], i8[::1], {F}[:, ::1], i8[::1], i8, i8, i8, {F}[::1])",
    # ... IN refine, INOUT pot, INOUT grad (3, n_targets)
    "p2p_potgrad": "void({F}[:, ::1], {F}[::1], {F}[:, ::1], i8[::1], i8[::1], i8[::1],"
                   " i8[::1], i8[::1], i8[::1], {F}[:, ::1], i8[::1], i8, i8, i8, {F}[::1],"
                   " {F}[:, ::1])",
}

LOCALS = {
    "p2p_pot": {"c": "{F}", "acc": "{F}", "r2": "{F}", "invr": "{F}", "xs": "{F}", "ys": "{F}",
                "zs": "{F}"},
    "p2p_potgrad": {"c": "{F}", "acc": "{F}", "gx": "{F}", "gy": "{F}", "gz": "{F}",
                    "r2": "{F}", "invr": "{F}", "invr3": "{F}", "xs": "{F}",
                    "ys": "{F}", "zs": "{F}"},
}


@register_jitable
def _exact_target(xi, yi, zi, sx, sy, sz, charges, src_start, src_end, list_index, shift, k0,
                  k1, out):
    """out[:] = sum_j q_j (1/r, -(x - y)/r^3) over the listed boxes with the exact 1/sqrt.

    The slow path for a target whose fast sum came out NaN: some source lies closer than the
    float32 estimate can handle (see ``_inline.inv_sqrt``). Accumulates in float64."""
    acc = 0.0
    gx = 0.0
    gy = 0.0
    gz = 0.0
    for k in range(k0, k1):
        s = list_index[k]
        xs = np.float64(xi) + np.float64(shift[k, 0])
        ys = np.float64(yi) + np.float64(shift[k, 1])
        zs = np.float64(zi) + np.float64(shift[k, 2])
        for j in range(src_start[s], src_end[s]):
            dx = xs - np.float64(sx[j])
            dy = ys - np.float64(sy[j])
            dz = zs - np.float64(sz[j])
            r2 = dx * dx + dy * dy + dz * dz
            if r2 > 0.0:
                invr = 1.0 / np.sqrt(r2)
                qinvr = np.float64(charges[j]) * invr
                acc += qinvr
                invr3 = qinvr * invr * invr
                gx -= dx * invr3
                gy -= dy * invr3
                gz -= dz * invr3
    out[0] = acc
    out[1] = gx
    out[2] = gy
    out[3] = gz


def p2p_pot(src_xyz, charges, trg_xyz, src_start, src_end, trg_start, trg_end, list_offsets,
            list_index, shift, boxes, i0, i1, refine, pot):
    """pot[i] += sum_j charges[j] / (4 pi |x_i - y_j|) over the listed source boxes, r > 0.

    ``refine`` (0/1): one or two Newton steps in float64's 1/sqrt (1e-14 or full accuracy)."""
    c = INV4PI
    sx = src_xyz[0]
    sy = src_xyz[1]
    sz = src_xyz[2]
    out = np.empty(4, dtype=np.float64)
    for ii in range(i0, i1):
        b = boxes[ii]
        for i in range(trg_start[b], trg_end[b]):
            xi = trg_xyz[0, i]
            yi = trg_xyz[1, i]
            zi = trg_xyz[2, i]
            acc = 0.0
            for k in range(list_offsets[b], list_offsets[b + 1]):
                s = list_index[k]
                xs = xi + shift[k, 0]
                ys = yi + shift[k, 1]
                zs = zi + shift[k, 2]
                for j in range(np.uint64(src_start[s]), np.uint64(src_end[s])):
                    dx = xs - sx[j]
                    dy = ys - sy[j]
                    dz = zs - sz[j]
                    r2 = dx * dx + dy * dy + dz * dz
                    invr = inv_sqrt(r2, refine)
                    if r2 == 0.0:
                        invr = 0.0
                    acc += charges[j] * invr
            if acc != acc:
                _exact_target(xi, yi, zi, sx, sy, sz, charges, src_start, src_end, list_index,
                              shift, list_offsets[b], list_offsets[b + 1], out)
                acc = out[0]
            pot[i] += c * acc


def p2p_potgrad(src_xyz, charges, trg_xyz, src_start, src_end, trg_start, trg_end,
                list_offsets, list_index, shift, boxes, i0, i1, refine, pot, grad):
    """pot[i] += sum_j q_j G(x_i, y_j); grad[:, i] += sum_j -q_j (x_i - y_j) / (4 pi r^3), r > 0."""
    c = INV4PI
    sx = src_xyz[0]
    sy = src_xyz[1]
    sz = src_xyz[2]
    out = np.empty(4, dtype=np.float64)
    for ii in range(i0, i1):
        b = boxes[ii]
        for i in range(trg_start[b], trg_end[b]):
            xi = trg_xyz[0, i]
            yi = trg_xyz[1, i]
            zi = trg_xyz[2, i]
            acc = 0.0
            gx = 0.0
            gy = 0.0
            gz = 0.0
            for k in range(list_offsets[b], list_offsets[b + 1]):
                s = list_index[k]
                xs = xi + shift[k, 0]
                ys = yi + shift[k, 1]
                zs = zi + shift[k, 2]
                for j in range(np.uint64(src_start[s]), np.uint64(src_end[s])):
                    dx = xs - sx[j]
                    dy = ys - sy[j]
                    dz = zs - sz[j]
                    r2 = dx * dx + dy * dy + dz * dz
                    invr = inv_sqrt(r2, refine)
                    if r2 == 0.0:
                        invr = 0.0
                    qinvr = charges[j] * invr
                    acc += qinvr
                    invr3 = qinvr * invr * invr
                    gx -= dx * invr3
                    gy -= dy * invr3
                    gz -= dz * invr3
            if acc != acc:
                _exact_target(xi, yi, zi, sx, sy, sz, charges, src_start, src_end, list_index,
                              shift, list_offsets[b], list_offsets[b + 1], out)
                acc = out[0]
                gx = out[1]
                gy = out[2]
                gz = out[3]
            pot[i] += c * acc
            grad[0, i] += c * gx
            grad[1, i] += c * gy
            grad[2, i] += c * gz
