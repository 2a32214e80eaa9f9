"""P2P: direct Laplace interactions G(x, y) = 1 / (4 pi |x - y|), with G = 0 when x == y.

Points are grouped into boxes: box ``b`` owns targets ``trg_start[b]:trg_end[b]`` and sources
``src_start[b]:src_end[b]`` (boxes may nest: an octree box owns its descendants' points). Target
box ``b`` interacts with the source boxes ``list_index[list_offsets[b]:list_offsets[b+1]]`` (CSR).
One call handles the target boxes ``boxes[i0:i1]``, which must own disjoint target ranges (threads
get disjoint slices of ``boxes``). The FMM's near field (U lists plus W/X pairs cheaper done
directly) and plain direct summation (one source box holding everything, target boxes = thread
chunks) are the same kernel. Coordinates are structure-of-arrays, shape (3, n), C-contiguous.

Inner loops run over *unsigned* indices: with a signed index whose start is loaded from memory,
numba emits a negative-index wraparound fix-up on every access, which stops LLVM from using
contiguous vector loads (measured: f32 P2P at 1.0e9 instead of 2e9+ pairs/s/core on AVX2).
"""
import numpy as np

INV4PI = 0.07957747154594767  # 1 / (4 pi)

SIGNATURES = {
    # IN src_xyz, IN charges, IN trg_xyz, IN src_start, IN src_end, IN trg_start, IN trg_end,
    # IN list_offsets, IN list_index, IN boxes, IN i0, IN i1, INOUT pot
    "p2p_pot": "void({F}[:, ::1], {F}[::1], {F}[:, ::1], i8[::1], i8[::1], i8[::1], i8[::1],"
               " i8[::1], i8[::1], i8[::1], i8, i8, {F}[::1])",
    # ... INOUT pot, INOUT grad (3, n_targets)
    "p2p_potgrad": "void({F}[:, ::1], {F}[::1], {F}[:, ::1], i8[::1], i8[::1], i8[::1],"
                   " i8[::1], i8[::1], i8[::1], i8[::1], i8, i8, {F}[::1], {F}[:, ::1])",
}

LOCALS = {
    "p2p_pot": {"c": "{F}", "one": "{F}", "acc": "{F}", "r2": "{F}", "invr": "{F}"},
    "p2p_potgrad": {"c": "{F}", "one": "{F}", "acc": "{F}", "gx": "{F}", "gy": "{F}", "gz": "{F}",
                    "r2": "{F}", "invr": "{F}", "invr3": "{F}"},
}


def p2p_pot(src_xyz, charges, trg_xyz, src_start, src_end, trg_start, trg_end, list_offsets,
            list_index, boxes, i0, i1, pot):
    """pot[i] += sum_j charges[j] / (4 pi |x_i - y_j|) over the listed source boxes, r > 0."""
    c = INV4PI
    one = 1.0
    sx = src_xyz[0]
    sy = src_xyz[1]
    sz = src_xyz[2]
    for ii in range(i0, i1):
        b = boxes[ii]
        for i in range(trg_start[b], trg_end[b]):
            xi = trg_xyz[0, i]
            yi = trg_xyz[1, i]
            zi = trg_xyz[2, i]
            acc = 0.0
            for k in range(list_offsets[b], list_offsets[b + 1]):
                s = list_index[k]
                for j in range(np.uint64(src_start[s]), np.uint64(src_end[s])):
                    dx = xi - sx[j]
                    dy = yi - sy[j]
                    dz = zi - sz[j]
                    r2 = dx * dx + dy * dy + dz * dz
                    invr = one / np.sqrt(r2)
                    if r2 == 0.0:
                        invr = 0.0
                    acc += charges[j] * invr
            pot[i] += c * acc


def p2p_potgrad(src_xyz, charges, trg_xyz, src_start, src_end, trg_start, trg_end,
                list_offsets, list_index, boxes, i0, i1, pot, grad):
    """pot[i] += sum_j q_j G(x_i, y_j); grad[:, i] += sum_j -q_j (x_i - y_j) / (4 pi r^3), r > 0."""
    c = INV4PI
    one = 1.0
    sx = src_xyz[0]
    sy = src_xyz[1]
    sz = src_xyz[2]
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
                for j in range(np.uint64(src_start[s]), np.uint64(src_end[s])):
                    dx = xi - sx[j]
                    dy = yi - sy[j]
                    dz = zi - sz[j]
                    r2 = dx * dx + dy * dy + dz * dz
                    invr = one / np.sqrt(r2)
                    if r2 == 0.0:
                        invr = 0.0
                    qinvr = charges[j] * invr
                    acc += qinvr
                    invr3 = qinvr * invr * invr
                    gx -= dx * invr3
                    gy -= dy * invr3
                    gz -= dz * invr3
            pot[i] += c * acc
            grad[0, i] += c * gx
            grad[1, i] += c * gy
            grad[2, i] += c * gz
