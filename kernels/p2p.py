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

from . import ISA
from ._inline import FLT_MIN, gather_sym, inv_sqrt, scatter_sym, sym_target_exact

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
    # IN xyz (3, n), IN q (n,), IN start, IN end, IN one_offsets, IN one_index,
    # IN one_shift (n_one, 3), IN sym_offsets, IN sym_index, IN sym_shift (n_sym, 3), IN boxes,
    # IN i0, IN i1, IN flags (4 gradient, 8 exact), IN m_max, INOUT pot (n,), INOUT grad (3, n)
    "p2p_sym": "void({F}[:, ::1], {F}[::1], i8[::1], i8[::1], i8[::1], i8[::1], {F}[:, ::1],"
               " i8[::1], i8[::1], {F}[:, ::1], i8[::1], i8, i8, i8, i8, {F}[::1], {F}[:, ::1])",
    # IN src_xyz, IN charges, IN trg_xyz, IN src_start, IN src_end, IN trg_start, IN trg_end,
    # IN list_offsets, IN list_index, IN shift, IN boxes, IN i0, IN i1, IN flags (4 gradient),
    # IN m_max (>= the sources of any box's list), INOUT pot, INOUT grad (3, n_trg)
    "p2p_mixed": "void(f8[:, ::1], f8[::1], f8[:, ::1], i8[::1], i8[::1], i8[::1], i8[::1],"
                 " i8[::1], i8[::1], f8[:, ::1], i8[::1], i8, i8, i8, i8, f8[::1], f8[:, ::1])",
    # as p2p_mixed for k charge and/or dipole vectors: IN q (nd, n_src), IN dip (nd, 3, n_src)
    # (kernels/multi.py p2p_multi: flags 1 charges, 2 dipoles, 4 gradient), ...,
    # INOUT pot (nd, n_trg), INOUT grad (nd, 3, n_trg)
    "p2p_multi_mixed": "void(f8[:, ::1], f8[:, ::1], f8[:, :, ::1], f8[:, ::1], i8[::1],"
                       " i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], f8[:, ::1], i8[::1], i8,"
                       " i8, i8, i8, f8[:, ::1], f8[:, :, ::1])",
    # as p2p_sym, float64 in and out, pair terms in float32 (flags: 4 gradient)
    "p2p_sym_mixed": "void(f8[:, ::1], f8[::1], i8[::1], i8[::1], i8[::1], i8[::1], f8[:, ::1],"
                     " i8[::1], i8[::1], f8[:, ::1], i8[::1], i8, i8, i8, i8, f8[::1],"
                     " f8[:, ::1])",
}

LOCALS = {
    "p2p_pot": {"c": "{F}", "acc": "{F}", "r2": "{F}", "invr": "{F}", "xs": "{F}", "ys": "{F}",
                "zs": "{F}"},
    "p2p_potgrad": {"c": "{F}", "acc": "{F}", "gx": "{F}", "gy": "{F}", "gz": "{F}",
                    "r2": "{F}", "invr": "{F}", "invr3": "{F}", "xs": "{F}",
                    "ys": "{F}", "zs": "{F}"},
    "p2p_sym": {name: "{F}" for name in (
        "c", "one", "acc", "gx", "gy", "gz", "r2", "invr", "ir3", "qinvr", "t5", "qi", "qj",
        "xi", "yi", "zi", "dx", "dy", "dz", "ox", "oy", "oz", "x", "y", "z") + tuple(
            name + ab for ab in "ab" for name in (
                "acc", "gx", "gy", "gz", "r2", "invr", "ir3", "qinvr", "t5", "q", "x", "y", "z",
                "dx", "dy", "dz"))},
    "p2p_mixed": dict(
        {name: "float32" for name in ("one", "a", "ax", "ay", "az", "r2", "invr", "ir3",
                                      "qinvr", "dx", "dy", "dz", "thr", "xh", "yh", "zh",
                                      "xl", "yl", "zl")},
        **{name: "float64" for name in ("c", "acc", "gx", "gy", "gz", "xi", "yi", "zi")}),
    "p2p_multi_mixed": dict(
        {name: "float32" for name in ("one", "a", "gx", "gy", "gz", "r2", "invr", "i3", "dx",
                                      "dy", "dz", "thr", "xh", "yh", "zh", "xl", "yl", "zl",
                                      "chk", "w", "wx", "wy", "wz", "u", "qj",
                                      "three", "i2", "t2")},
        **{f"{v}{k}": "float32" for v in "axyz" for k in "0123"},
        **{name: "float64" for name in ("c", "xi", "yi", "zi", "ex", "ey", "ez", "er2", "einv",
                                        "ei3", "eq", "fx", "fy", "fz", "eu", "et")}),
    "p2p_sym_mixed": dict(
        {name: "float32" for name in ("one", "a", "ax", "ay", "az", "r2", "invr", "ir3",
                                      "qinvr", "t5", "qf", "qj", "dx", "dy", "dz", "thr",
                                      "xh", "yh", "zh", "xl", "yl", "zl", "hx", "hy", "hz",
                                      "lx", "ly", "lz")},
        **{name + k: "float32" for k in "01" for name in (
            "a", "ax", "ay", "az", "r2", "invr", "ir3", "qinvr", "t5", "qf", "dx", "dy", "dz",
            "xh", "yh", "zh", "xl", "yl", "zl")},
        **{name + k: "float64" for k in "01" for name in ("acc", "gx", "gy", "gz", "xi", "yi",
                                                          "zi")},
        **{name: "float64" for name in ("c", "acc", "gx", "gy", "gz")}),
}

#: Every float32 sum of the mixed kernels is a run of at most MIXED_SOURCES terms per target
#: (MIXED_TARGETS per partner) before it is added to float64. A float32 run of n terms can lose
#: up to ~n half-ulps of its largest partial sum: a term at or below half an ulp of the sum is
#: dropped whole, every time. Until 2026-12-04 a target's terms from its symmetric partners were
#: one run of a few thousand (~900 per AVX2 lane), and one large term (a close pair) followed by
#: many small ones lost 35x eps at eps 1e-6 (hostile test; unit charges of structured sign with
#: one close pair: 4x in gradients). A vectorised run of 64 is 8 per AVX2 lane (4 per AVX-512
#: lane) and a tree of 3 (4) adds: at most ~10 half-ulps (~6e-7 of the largest term, in the
#: worst crafted case; measured 0.04-0.8x eps at eps 1e-6 in the hostile constructions, where
#: the pair term's own float32 error adds ~2e-7). The generic module's loops are scalar (no
#: packed sqrt in its object code), so there a run is 16 (a JIT model with NUMBA_CPU_NAME=generic:
#: runs of 16 cost nothing over 64, runs of 8 made the loops 2x slower; the separate-target
#: hostile case 0.62x / 0.75x eps with 16, 2.6x / 3.2x with 64).
#: p2p_sym_mixed: a partner's float32 partial sums run over at most this many targets (pairs of
#: targets: 8 float32 adds) before they are added to their float64 sums
MIXED_TARGETS = 16  # (even: the two-target loop adds them in after a pair)
#: a target's float32 partial sums run over this many sources before they go to float64; the
#: lists are padded with uncharged far points to whole runs (kernels/p2p.py ``_pad_run``), so
#: the inner loops have a constant trip count (measured, JIT model of p2p_sym_mixed, 2e5
#: uniform points, eps 1e-6, one thread, AMD EPYC Zen 3: runs of 64 padded cost +10-25 %
#: (pot+grad) over one run per partner list; unpadded runs of 64 had cost +55-70 %)
MIXED_SOURCES = 16 if ISA == "generic" else 64
#: p2p_sym_mixed: a target's float32 partial sums over its symmetric partners (the bulk of the
#: near field) run over this many sources; its one-sided list (its own box first, where the
#: closest pairs are) keeps runs of MIXED_SOURCES. Each run ends in a horizontal sum of every
#: accumulator of the pair of targets (eight with gradients, ~10 instructions each), ~20 % of
#: the loop at 64 (2026-12-06, JIT model, 1e6 points, one thread, Intel Xeon AVX-512: runs of
#: 128 cost 0.90x with gradients on the cube and on a Plummer sphere, 0.94x for potentials;
#: 256 only 0.88x / 0.91x; the compiled kernel 0.89-0.91x / 0.97x). An AVX-512 lane sums 8
#: terms in float32 before the tree of 4: test_precision.py's tuned case of a close partner
#: followed by thousands of terms of 0.9 half-ulp (test_mixed_target_sums_keep_small_terms_...)
#: went 0.040x -> 0.020x eps, its polarised-medium case 0.076x -> 0.084x (runs of 4096: 9.2x);
#: a hostile construction aimed at the lanes (terms of 0.999 half-ulp after the close one in
#: its lane, the other lanes' sums just under half an ulp at each step of the closing tree)
#: 0.65x eps. Only where a lane gets 8 terms: an AVX2 lane (x86-64-v3) gets 16 from 128, and
#: that construction reached 1.07x eps (hostile test 2026-12-06), so v3 keeps 64.
MIXED_SYM_SOURCES = 128 if ISA == "x86-64-v4" else MIXED_SOURCES
#: p2p_multi_mixed: sources per geometry chunk (float32 1/r and (x - y)/r^3, 4 x 256 x 4 B, stay
#: in L1 while the densities sweep them in runs of MIXED_SOURCES); a multiple of MIXED_SOURCES
MIXED_CHUNK = 256
#: the mixed kernels redo in float64 a pair closer than this many grid steps g (their split
#: coordinates' rounding, ~1.2e-7 g per axis, is then at most ~1.2e-7 of r): at g / 8 (until
#: 2026-12-03, when they served eps >= 1e-5 only) a crafted pair at 1.002 g / 8 whose low
#: parts rounded apart had a gradient error of 1.6e-6 of the field of |q| at eps 1e-6 (hostile
#: test); random pairs come that close about once per 1e5 leaves of 400 points.
MIXED_CUT = 1.0
MIXED_CUT2 = MIXED_CUT * MIXED_CUT
#: below this r^2 the mixed kernels' float32 terms go to float64 too, whatever the grid: their
#: (1/r)^3 must stay far below the float32 maximum (a leaf of points 1e-16 apart has a grid so
#: fine that (g/8)^2 let r^2 = 1e-31 through, and its gradient came out inf: 2026-12-02)
MIXED_R2_MIN = np.float32(2.0 ** -80)


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


def p2p_sym(xyz, q, start, end, one_offsets, one_index, one_shift, sym_offsets, sym_index,
            sym_shift, boxes, i0, i1, flags, m_max, pot, grad):
    """Near field of one charge vector when the targets are the sources (Newton's third law):
    pot[i] (+ grad[:, i]) += Laplace field at point i, for the target boxes boxes[i0:i1].

    The points ``xyz`` (3, n) are both sources and targets, box b holding start[b]:end[b].
    Box b's one-sided list (``one_offsets``/``one_index``, per entry the shift of the source
    box's points into b's frame, as in ``p2p_pot``) acts on b's points only: b itself, and
    pairs whose mirror is not in the near field. Its symmetric list (``sym_*``) holds boxes s
    whose pair with b is computed once, here: each pair's 1/r is used for the point in b and
    for the point in s (the gradient with the sign of d reversed). So ``pot``/``grad`` receive
    sums for points outside boxes[i0:i1]; callers running ranges in parallel give each thread
    its own output arrays (added up afterwards). flags: 4 gradient; 8 exact 1/r (direct sums).
    ``m_max`` >= the points of any box's one-sided list and of its symmetric list.

    1/r is ``inv_sqrt`` with one Newton step (~1e-14) unless flag 8; a box where a pair is too
    close for its float32 estimate (a NaN sum) is redone with the exact sqrt, which is possible
    because each box's sums are built in scratch and added to ``pot``/``grad`` at the end."""
    c = INV4PI
    one = 1.0
    do_g = (flags & 4) != 0
    exact0 = (flags & 8) != 0
    dt = xyz.dtype
    s1 = np.empty((3, m_max), dtype=dt)   # one-sided sources, in b's frame
    q1 = np.empty(m_max, dtype=dt)
    s2 = np.empty((3, m_max), dtype=dt)   # symmetric partners, in b's frame
    q2 = np.empty(m_max, dtype=dt)
    gidx = np.empty(m_max, dtype=np.int64)  # their point indices
    o2 = np.empty((4, m_max), dtype=dt)   # their sums (pot, grad)
    ob = np.empty((4, m_max), dtype=dt)   # b's own sums
    for ii in range(i0, i1):
        b = boxes[ii]
        t0 = start[b]
        nt = end[b] - t0
        n1, n2 = gather_sym(xyz, q, start, end, one_offsets, one_index, one_shift,
                            sym_offsets, sym_index, sym_shift, b, s1, q1, s2, q2, gidx)
        exact = exact0
        while True:
            for e in range(4 if do_g else 1):  # (potentials alone read only the first row)
                for j in range(n2):
                    o2[e, j] = 0.0
            bad = False
            p2 = o2[0, :n2]
            px = o2[1, :n2]
            py = o2[2, :n2]
            pz = o2[3, :n2]
            sx = s1[0, :n1]
            sy = s1[1, :n1]
            sz = s1[2, :n1]
            qs = q1[:n1]
            tx = s2[0, :n2]
            ty = s2[1, :n2]
            tz = s2[2, :n2]
            qt = q2[:n2]
            m1 = np.uint64(n1)
            m2 = np.uint64(n2)
            # two targets at a time: each source's coordinates and each partner's sums are
            # loaded (and stored) once for both (float32 x86-64-v4 loops 1.2-1.5x faster)
            i2 = 0 if exact else nt - nt % 2
            for i in range(0, i2, 2):
                xa = xyz[0, t0 + i]
                ya = xyz[1, t0 + i]
                za = xyz[2, t0 + i]
                qa = q[t0 + i]
                xb = xyz[0, t0 + i + 1]
                yb = xyz[1, t0 + i + 1]
                zb = xyz[2, t0 + i + 1]
                qb = q[t0 + i + 1]
                acca = 0.0
                gxa = 0.0
                gya = 0.0
                gza = 0.0
                accb = 0.0
                gxb = 0.0
                gyb = 0.0
                gzb = 0.0
                if not do_g:
                    for j in range(np.uint64(0), m1):
                        x = sx[j]
                        y = sy[j]
                        z = sz[j]
                        dxa = xa - x
                        dya = ya - y
                        dza = za - z
                        dxb = xb - x
                        dyb = yb - y
                        dzb = zb - z
                        r2a = dxa * dxa + dya * dya + dza * dza
                        r2b = dxb * dxb + dyb * dyb + dzb * dzb
                        invra = inv_sqrt(r2a, 0)
                        invrb = inv_sqrt(r2b, 0)
                        if r2a == 0.0:
                            invra = 0.0
                        if r2b == 0.0:
                            invrb = 0.0
                        acca += qs[j] * invra
                        accb += qs[j] * invrb
                    for j in range(np.uint64(0), m2):
                        x = tx[j]
                        y = ty[j]
                        z = tz[j]
                        dxa = xa - x
                        dya = ya - y
                        dza = za - z
                        dxb = xb - x
                        dyb = yb - y
                        dzb = zb - z
                        r2a = dxa * dxa + dya * dya + dza * dza
                        r2b = dxb * dxb + dyb * dyb + dzb * dzb
                        invra = inv_sqrt(r2a, 0)
                        invrb = inv_sqrt(r2b, 0)
                        if r2a == 0.0:
                            invra = 0.0
                        if r2b == 0.0:
                            invrb = 0.0
                        qj = qt[j]
                        acca += qj * invra
                        accb += qj * invrb
                        p2[j] += qa * invra + qb * invrb
                else:
                    for j in range(np.uint64(0), m1):
                        x = sx[j]
                        y = sy[j]
                        z = sz[j]
                        dxa = xa - x
                        dya = ya - y
                        dza = za - z
                        dxb = xb - x
                        dyb = yb - y
                        dzb = zb - z
                        r2a = dxa * dxa + dya * dya + dza * dza
                        r2b = dxb * dxb + dyb * dyb + dzb * dzb
                        invra = inv_sqrt(r2a, 0)
                        invrb = inv_sqrt(r2b, 0)
                        if r2a == 0.0:
                            invra = 0.0
                        if r2b == 0.0:
                            invrb = 0.0
                        qj = qs[j]
                        qinvra = qj * invra
                        qinvrb = qj * invrb
                        acca += qinvra
                        accb += qinvrb
                        ir3a = qinvra * invra * invra
                        ir3b = qinvrb * invrb * invrb
                        gxa -= dxa * ir3a
                        gya -= dya * ir3a
                        gza -= dza * ir3a
                        gxb -= dxb * ir3b
                        gyb -= dyb * ir3b
                        gzb -= dzb * ir3b
                    for j in range(np.uint64(0), m2):
                        x = tx[j]
                        y = ty[j]
                        z = tz[j]
                        dxa = xa - x
                        dya = ya - y
                        dza = za - z
                        dxb = xb - x
                        dyb = yb - y
                        dzb = zb - z
                        r2a = dxa * dxa + dya * dya + dza * dza
                        r2b = dxb * dxb + dyb * dyb + dzb * dzb
                        invra = inv_sqrt(r2a, 0)
                        invrb = inv_sqrt(r2b, 0)
                        if r2a == 0.0:
                            invra = 0.0
                        if r2b == 0.0:
                            invrb = 0.0
                        ir3a = invra * invra * invra
                        ir3b = invrb * invrb * invrb
                        qj = qt[j]
                        acca += qj * invra
                        accb += qj * invrb
                        p2[j] += qa * invra + qb * invrb
                        t5a = qj * ir3a
                        t5b = qj * ir3b
                        gxa -= dxa * t5a
                        gya -= dya * t5a
                        gza -= dza * t5a
                        gxb -= dxb * t5b
                        gyb -= dyb * t5b
                        gzb -= dzb * t5b
                        t5a = qa * ir3a
                        t5b = qb * ir3b
                        px[j] += dxa * t5a + dxb * t5b
                        py[j] += dya * t5a + dyb * t5b
                        pz[j] += dza * t5a + dzb * t5b
                if acca != acca or accb != accb:
                    bad = True
                ob[0, i] = acca
                ob[1, i] = gxa
                ob[2, i] = gya
                ob[3, i] = gza
                ob[0, i + 1] = accb
                ob[1, i + 1] = gxb
                ob[2, i + 1] = gyb
                ob[3, i + 1] = gzb
            for i in range(i2, nt):  # the last target of an odd box; every target when exact
                xi = xyz[0, t0 + i]
                yi = xyz[1, t0 + i]
                zi = xyz[2, t0 + i]
                qi = q[t0 + i]
                acc = 0.0
                gx = 0.0
                gy = 0.0
                gz = 0.0
                if not exact and not do_g:
                    for j in range(np.uint64(0), m1):
                        dx = xi - sx[j]
                        dy = yi - sy[j]
                        dz = zi - sz[j]
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = inv_sqrt(r2, 0)
                        if r2 == 0.0:
                            invr = 0.0
                        acc += qs[j] * invr
                    for j in range(np.uint64(0), m2):
                        dx = xi - tx[j]
                        dy = yi - ty[j]
                        dz = zi - tz[j]
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = inv_sqrt(r2, 0)
                        if r2 == 0.0:
                            invr = 0.0
                        acc += qt[j] * invr
                        p2[j] += qi * invr
                elif not exact:
                    for j in range(np.uint64(0), m1):
                        dx = xi - sx[j]
                        dy = yi - sy[j]
                        dz = zi - sz[j]
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = inv_sqrt(r2, 0)
                        if r2 == 0.0:
                            invr = 0.0
                        qinvr = qs[j] * invr
                        acc += qinvr
                        ir3 = qinvr * invr * invr
                        gx -= dx * ir3
                        gy -= dy * ir3
                        gz -= dz * ir3
                    for j in range(np.uint64(0), m2):
                        dx = xi - tx[j]
                        dy = yi - ty[j]
                        dz = zi - tz[j]
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = inv_sqrt(r2, 0)
                        if r2 == 0.0:
                            invr = 0.0
                        ir3 = invr * invr * invr
                        qj = qt[j]
                        acc += qj * invr
                        p2[j] += qi * invr
                        t5 = qj * ir3
                        gx -= dx * t5
                        gy -= dy * t5
                        gz -= dz * t5
                        t5 = qi * ir3
                        px[j] += dx * t5
                        py[j] += dy * t5
                        pz[j] += dz * t5
                else:
                    acc, gx, gy, gz = sym_target_exact(xi, yi, zi, qi, s1, q1, n1, s2, q2, n2,
                                                       o2)
                if acc != acc:
                    bad = True
                ob[0, i] = acc
                ob[1, i] = gx
                ob[2, i] = gy
                ob[3, i] = gz
            if exact or not bad:
                break
            exact = True  # a pair too close for the float32 estimate: redo the box exactly
        scatter_sym(c, ob, o2, gidx, t0, nt, n2, do_g, pot, grad)


@register_jitable
def _grid(big):
    """The power of two g with 4096 g < big <= 8192 g (2^-13 of the largest coordinate
    magnitude, rounded up): values up to big are multiples of g below 2^14 g on the grid."""
    g = 2.0 ** -13
    while g * 8192.0 < big:
        g *= 2.0
    while g * 4096.0 >= big and g > 1e-280:
        g *= 0.5
    return g


@register_jitable
def _gather_own_first(src_xyz, q, src_start, src_end, list_offsets, list_index, shift, b, sg,
                      qg, run):
    """The sources listed for target box b into ``sg`` (3, .) in b's frame (``shift`` per list
    entry) and their charge vectors ``q`` (nd, n_src) into ``qg`` (nd, .), b's own sources
    first (the only ones that can coincide with its targets), the rest from the next multiple
    of ``run`` on: returns (n, n_own, n_own_p), the rest in ``[n_own_p, n)``. The gap
    ``[n_own, n_own_p)`` holds coordinates 0 (a 0 leaves :func:`_split_box`'s largest
    magnitude as it is) and charges not yet written until :func:`_pad_own_and_rest` fills
    it."""
    nd = q.shape[0]
    n = 0
    n_own = 0
    n_own_p = 0
    for own in (True, False):
        for kk in range(list_offsets[b], list_offsets[b + 1]):
            s = list_index[kk]
            if (s == b) != own:
                continue
            ox = shift[kk, 0]
            oy = shift[kk, 1]
            oz = shift[kk, 2]
            for j in range(src_start[s], src_end[s]):
                sg[0, n] = src_xyz[0, j] - ox
                sg[1, n] = src_xyz[1, j] - oy
                sg[2, n] = src_xyz[2, j] - oz
                for d in range(nd):
                    qg[d, n] = q[d, j]
                n += 1
        if own:
            n_own = n
            n_own_p = (n + run - 1) // run * run
            for j in range(n_own, n_own_p):
                for e in range(3):
                    sg[e, j] = 0.0
            n = n_own_p
    return n, n_own, n_own_p


@register_jitable
def _pad_own_and_rest(sg, qg, hs, ls, n_own, n_own_p, n, far, run):
    """After :func:`_gather_own_first` and :func:`_split_box`: the own sources' gap
    ``[n_own, n_own_p)`` and the rest's tail up to the next multiple of ``run`` become
    uncharged points at (far, far, far) (split parts ``hs``/``ls``; float64 coordinates
    ``sg`` NaN, never coincident with a target and skipped by an exact redo; charges ``qg``
    0), so the own sources and the rest are each whole runs: [own | pad | rest | pad].
    Returns the padded count."""
    n_p = (n + run - 1) // run * run
    nd = qg.shape[0]
    for j in range(n_own, n_p):
        if j < n_own_p or j >= n:
            for e in range(3):
                sg[e, j] = np.nan
                hs[e, j] = far
                ls[e, j] = 0.0
            for d in range(nd):
                qg[d, j] = 0.0
    return n_p


@register_jitable
def _target_parts(start, end, boxes, i0, i1):
    """Float32 hi/lo scratch (3, largest box of boxes[i0:i1]) for the targets'
    :func:`_split_box` parts."""
    tmax = 1
    for ii in range(i0, i1):
        tmax = max(tmax, end[boxes[ii]] - start[boxes[ii]])
    return np.empty((3, tmax), dtype=np.float32), np.empty((3, tmax), dtype=np.float32)


@register_jitable
def _split_box(s1, n1, s2, n2, t, nt, h1, l1, h2, l2, ht, lt):
    """A mixed kernel's per-box split: the grid g (:func:`_grid`) of the largest coordinate
    magnitude among ``s1[:, :n1]``, ``s2[:, :n2]`` and ``t[:, :nt]`` (in the box's frame),
    each set split on it into float32 parts (:func:`_split_hi_lo`, into h1/l1, h2/l2, ht/lt);
    returns the float32 r^2 below which a pair goes to float64 ((MIXED_CUT g)^2, at least
    MIXED_R2_MIN) and a float32 coordinate far from every point of the box (2^15 g, for
    :func:`_pad_run`).

    The largest magnitude of ``s1`` and ``s2`` (C-contiguous scratch) is taken on their
    float64 bit patterns with the sign cleared, as int64: for finite values the same order,
    and an integer max vectorises, where a float max (NaN semantics: the kernels' fast-math
    flags exclude ``nnan``) ran one element at a time, ~3 % of a 1e6-point potential-only
    ``p2p_sym_mixed`` (JIT model, 2026-12-05). Same grid, same bits."""
    s1i = s1.view(np.int64)
    s2i = s2.view(np.int64)
    sign_off = np.int64(0x7FFFFFFFFFFFFFFF)
    most = np.int64(0)
    for e in range(3):
        for j in range(n1):
            most = max(most, s1i[e, j] & sign_off)
        for j in range(n2):
            most = max(most, s2i[e, j] & sign_off)
    bits = np.empty(1, dtype=np.int64)
    bits[0] = most
    big = bits.view(np.float64)[0]
    for e in range(3):
        for j in range(nt):
            big = max(big, abs(t[e, j]))
    # (every point at the frame's origin: any grid splits them exactly; one of 1 keeps the
    # padding's coordinate 2^15 g away from them, where _grid(0) = 2^-931 made it 0 in
    # float32, equal to every point, and the box was redone in float64 at each call)
    g = _grid(big) if big > 0.0 else 1.0
    _split_hi_lo(s1, n1, g, h1, l1)
    _split_hi_lo(s2, n2, g, h2, l2)
    _split_hi_lo(t, nt, g, ht, lt)
    return (max(np.float32(g * g * MIXED_CUT2), MIXED_R2_MIN),
            np.float32(min(32768.0 * g, 1e38)))


@register_jitable
def _pad_run(h, l, qf, n, far, run):
    """Pads split points ``h``/``l`` (3, .) and float32 charges ``qf`` from n to the next
    multiple of ``run`` with uncharged points at (far, far, far); returns that multiple. With
    ``far`` from :func:`_split_box` (2^15 g, at least 3 x 2^13 g from every point of the box
    per axis) their r^2 passes the float64 redo cut unless every pair of the box fails it, and
    their terms are exactly 0."""
    n_pad = (n + run - 1) // run * run
    for e in range(3):
        for j in range(n, n_pad):
            h[e, j] = far
            l[e, j] = 0.0
    for j in range(n, n_pad):
        qf[j] = 0.0
    return n_pad


@register_jitable
def _pad_sym_lists(q1, h1, l1, f1, n1, q2, h2, l2, f2, n2, far, run, run2):
    """After gather_sym and :func:`_split_box`: the float32 charges ``f1``/``f2`` of both
    lists, the first padded to whole runs of ``run``, the second of ``run2``
    (:func:`_pad_run`). Returns the padded counts (n1p, n2p). (The float64 coordinates are
    not padded: only an exact redo reads them, up to n1 and n2.)"""
    for j in range(n1):
        f1[j] = q1[j]
    for j in range(n2):
        f2[j] = q2[j]
    return _pad_run(h1, l1, f1, n1, far, run), _pad_run(h2, l2, f2, n2, far, run2)


@register_jitable
def _split_hi_lo(s, n, g, hi, lo):
    """hi[:, j] = s[:, j] rounded to the grid g (a power of two; |s| <= 2^13 g, so exact in
    float32), lo = the rest (|lo| <= g / 2) in float32, for j < n."""
    for e in range(3):
        for j in range(n):
            v = s[e, j]
            h = np.floor(v / g + 0.5) * g
            hi[e, j] = h
            lo[e, j] = v - h


@register_jitable
def _same_parts(xh, yh, zh, xl, yl, zl, hx, hy, hz, lx, ly, lz):
    """Whether a source's six float32 parts (hi hx, hy, hz; lo lx, ly, lz) equal the target's:
    the mixed kernels take it for a coincident point (0, counted against the target's float64
    duplicates). Compared in float32, at the loops' full vector width."""
    return ((xh == hx) & (yh == hy) & (zh == hz) & (xl == lx) & (yl == ly) & (zl == lz))


@register_jitable
def _coincident_counts(xyz, t0, nt, cnt):
    """cnt[i] = how many of a box's points ``xyz[:, t0:t0 + nt]`` equal point t0 + i in
    float64, itself included (1 unless the box holds duplicates): sorted by x, equal x values
    compared in y and z. What :func:`p2p_sym_mixed` expects its float32 parts to find equal."""
    order = np.argsort(xyz[0, t0:t0 + nt])
    k = 0
    while k < nt:
        x = xyz[0, t0 + order[k]]
        m = k + 1
        while m < nt and xyz[0, t0 + order[m]] == x:
            m += 1
        for a in range(k, m):
            ia = t0 + order[a]
            c = 0.0
            for bb in range(k, m):
                ib = t0 + order[bb]
                if xyz[1, ia] == xyz[1, ib] and xyz[2, ia] == xyz[2, ib]:
                    c += 1.0
            cnt[order[a]] = c
        k = m


@register_jitable
def _float32_counts_differ(xyz, t0, nt, nzs, cnt):
    """Whether some target of a box found another number of float32-equal sources (``nzs``)
    than it has float64 duplicates (:func:`_coincident_counts` into ``cnt``, itself included):
    then a distinct point rounded onto it and the box is redone in float64. The mixed
    symmetric kernels call it only where a target found more than itself."""
    _coincident_counts(xyz, t0, nt, cnt)
    for i in range(nt):
        if nzs[i] != cnt[i]:
            return True
    return False


def p2p_sym_mixed(xyz, q, start, end, one_offsets, one_index, one_shift, sym_offsets,
                  sym_index, sym_shift, boxes, i0, i1, flags, m_max, pot, grad):
    """:func:`p2p_sym` for float64 points, charges and outputs with the pair terms in float32.

    Per box, every coordinate in the box's frame (float64) is split into a float32 value on a
    grid g (a power of two, 2^-13 of the largest coordinate: exact) plus a float32 rest, so
    a difference (hi_x - hi_y) + (lo_x - lo_y) carries a relative error of ~6e-8 + 1.2e-7 g/r
    whatever the distance r of the pair or the place of the box, and the pair terms cost
    float32 arithmetic at full vector width. A pair closer than MIXED_CUT g (where that error
    would exceed ~1.2e-7 per axis) or than 2^-40 (:data:`MIXED_R2_MIN`: its (1/r)^3 must fit
    float32) makes the box be redone in float64 with
    the exact 1/sqrt, as p2p_sym does. A source of the one-sided list (which holds b itself)
    at float32 r^2 = 0 is taken for a coincident point (0: the target itself, or a
    duplicate) and counted (since 2026-12-06: one compare instead of six float32 parts
    equal, 3 % of the loop; equal parts give r^2 = 0, and a distinct point at r^2 = 0, which
    the parts test left to the r^2 cut's redo, is counted and redoes the box below). A
    target that finds more of them than its float64 duplicates (:func:`_coincident_counts`,
    itself included; counted only in a box where some target found more than itself, since
    2026-12-05: the sort per box was ~3.5 %
    of a 1e6-point potential-only near field) has a distinct point rounded onto it, and the
    box is redone in float64 too (until 2026-12-04 the loop compared
    float64 coordinates, which halved its vector width: potentials ~10 % slower). Coincident
    points share a leaf; a symmetric partner is never coincident (a pair of partners that
    rounds together has r^2 = 0, below the cut: redone). A target's terms are summed in
    float32 over runs of ``MIXED_SOURCES`` of its one-sided list and of
    ``MIXED_SYM_SOURCES`` of its symmetric list (both padded to whole runs by
    :func:`_pad_run`), a partner's over at most ``MIXED_TARGETS``
    targets, and those partial sums in float64. flags: 4 gradient."""
    c = INV4PI
    one = np.float32(1.0)
    zero = np.float32(0.0)
    do_g = (flags & 4) != 0
    bi = MIXED_TARGETS
    bj = MIXED_SOURCES
    bs = MIXED_SYM_SOURCES
    bm = max(bj, bs)
    s1 = np.empty((3, m_max + bm), dtype=np.float64)   # one-sided sources, in b's frame
    q1 = np.empty(m_max + bm, dtype=np.float64)
    s2 = np.empty((3, m_max + bm), dtype=np.float64)   # symmetric partners, in b's frame
    q2 = np.empty(m_max + bm, dtype=np.float64)
    h1 = np.empty((3, m_max + bm), dtype=np.float32)   # their float32 hi/lo parts
    l1 = np.empty((3, m_max + bm), dtype=np.float32)
    h2 = np.empty((3, m_max + bm), dtype=np.float32)
    l2 = np.empty((3, m_max + bm), dtype=np.float32)
    ht = np.empty((3, m_max), dtype=np.float32)   # b's own points
    lt = np.empty((3, m_max), dtype=np.float32)
    q1f = np.empty(m_max + bm, dtype=np.float32)
    q2f = np.empty(m_max + bm, dtype=np.float32)
    gidx = np.empty(m_max, dtype=np.int64)
    cnt = np.empty(m_max, dtype=np.float64)   # b's points' float64 duplicates, themselves included
    nzs = np.empty(m_max, dtype=np.float64)   # the sources equal to each target in float32
    o2 = np.empty((4, m_max + bm), dtype=np.float64)   # partners' sums (pot, grad)
    of = np.zeros((4, m_max + bm), dtype=np.float32)   # their float32 partial sums
    ob = np.empty((4, m_max + bm), dtype=np.float64)   # b's own sums
    for ii in range(i0, i1):
        b = boxes[ii]
        t0 = start[b]
        nt = end[b] - t0
        n1, n2 = gather_sym(xyz, q, start, end, one_offsets, one_index, one_shift,
                            sym_offsets, sym_index, sym_shift, b, s1, q1, s2, q2, gidx)
        thr, far = _split_box(s1, n1, s2, n2, xyz[:, t0:t0 + nt], nt, h1, l1, h2, l2, ht,
                              lt)
        # both lists padded to whole runs (bj, bs) with uncharged points far away (their
        # terms are 0; the loops below then run whole runs of a constant length)
        n1p, n2p = _pad_sym_lists(q1, h1, l1, q1f, n1, q2, h2, l2, q2f, n2, far, bj, bs)
        for e in range(4 if do_g else 1):  # (potentials alone read only the first row)
            for j in range(n2p):
                o2[e, j] = 0.0
        bad = False
        multi = False  # a target found more than itself
        hx1 = h1[0, :n1p]
        hy1 = h1[1, :n1p]
        hz1 = h1[2, :n1p]
        lx1 = l1[0, :n1p]
        ly1 = l1[1, :n1p]
        lz1 = l1[2, :n1p]
        bq1 = q1f[:n1p]
        hx2 = h2[0, :n2p]
        hy2 = h2[1, :n2p]
        hz2 = h2[2, :n2p]
        lx2 = l2[0, :n2p]
        ly2 = l2[1, :n2p]
        lz2 = l2[2, :n2p]
        bq2 = q2f[:n2p]
        pf = of[0, :n2p]
        px = of[1, :n2p]
        py = of[2, :n2p]
        pz = of[3, :n2p]
        # two targets at a time (each source's and partner's values loaded once for both);
        # the last target of an odd box goes through the loop below
        i2 = nt - nt % 2
        for i in range(0, i2, 2):
            xh0 = ht[0, i]
            yh0 = ht[1, i]
            zh0 = ht[2, i]
            xl0 = lt[0, i]
            yl0 = lt[1, i]
            zl0 = lt[2, i]
            qf0 = np.float32(q[t0 + i])
            acc0 = 0.0
            gx0 = 0.0
            gy0 = 0.0
            gz0 = 0.0
            xh1 = ht[0, i + 1]
            yh1 = ht[1, i + 1]
            zh1 = ht[2, i + 1]
            xl1 = lt[0, i + 1]
            yl1 = lt[1, i + 1]
            zl1 = lt[2, i + 1]
            qf1 = np.float32(q[t0 + i + 1])
            acc1 = 0.0
            gx1 = 0.0
            gy1 = 0.0
            gz1 = 0.0
            nz0 = 0.0  # sources whose float32 parts equal the target's: its float64
            nz1 = 0.0  # duplicates (itself among them), unless a distinct point rounds onto it
            for c0 in range(0, n1p, bj):  # float32 sums over at most bj sources
                z0 = np.float32(0.0)
                z1 = np.float32(0.0)
                a0 = np.float32(0.0)
                ax0 = np.float32(0.0)
                ay0 = np.float32(0.0)
                az0 = np.float32(0.0)
                a1 = np.float32(0.0)
                ax1 = np.float32(0.0)
                ay1 = np.float32(0.0)
                az1 = np.float32(0.0)
                # (potentials alone skip the gradient terms: until 2026-12-05 this loop took
                # them in every mode, 7-9 % of a 1e6-point potential-only near field in a JIT
                # model of the kernel; README "Mixed precision")
                if do_g:
                    for j in range(np.uint64(c0), np.uint64(c0) + np.uint64(bj)):
                        hx = hx1[j]
                        hy = hy1[j]
                        hz = hz1[j]
                        lx = lx1[j]
                        ly = ly1[j]
                        lz = lz1[j]
                        qj = bq1[j]
                        dx0 = (xh0 - hx) + (xl0 - lx)
                        dy0 = (yh0 - hy) + (yl0 - ly)
                        dz0 = (zh0 - hz) + (zl0 - lz)
                        r20 = dx0 * dx0 + dy0 * dy0 + dz0 * dz0
                        invr0 = one / np.sqrt(r20)
                        if not r20 >= thr:
                            invr0 = np.float32(np.nan)
                        same = r20 == zero
                        invr0 = zero if same else invr0
                        z0 += one if same else zero
                        qinvr0 = qj * invr0
                        a0 += qinvr0
                        ir30 = qinvr0 * invr0 * invr0
                        ax0 -= dx0 * ir30
                        ay0 -= dy0 * ir30
                        az0 -= dz0 * ir30
                        dx1 = (xh1 - hx) + (xl1 - lx)
                        dy1 = (yh1 - hy) + (yl1 - ly)
                        dz1 = (zh1 - hz) + (zl1 - lz)
                        r21 = dx1 * dx1 + dy1 * dy1 + dz1 * dz1
                        invr1 = one / np.sqrt(r21)
                        if not r21 >= thr:
                            invr1 = np.float32(np.nan)
                        same = r21 == zero
                        invr1 = zero if same else invr1
                        z1 += one if same else zero
                        qinvr1 = qj * invr1
                        a1 += qinvr1
                        ir31 = qinvr1 * invr1 * invr1
                        ax1 -= dx1 * ir31
                        ay1 -= dy1 * ir31
                        az1 -= dz1 * ir31
                else:
                    for j in range(np.uint64(c0), np.uint64(c0) + np.uint64(bj)):
                        hx = hx1[j]
                        hy = hy1[j]
                        hz = hz1[j]
                        lx = lx1[j]
                        ly = ly1[j]
                        lz = lz1[j]
                        qj = bq1[j]
                        dx0 = (xh0 - hx) + (xl0 - lx)
                        dy0 = (yh0 - hy) + (yl0 - ly)
                        dz0 = (zh0 - hz) + (zl0 - lz)
                        r20 = dx0 * dx0 + dy0 * dy0 + dz0 * dz0
                        invr0 = one / np.sqrt(r20)
                        if not r20 >= thr:
                            invr0 = np.float32(np.nan)
                        same = r20 == zero
                        invr0 = zero if same else invr0
                        z0 += one if same else zero
                        a0 += qj * invr0
                        dx1 = (xh1 - hx) + (xl1 - lx)
                        dy1 = (yh1 - hy) + (yl1 - ly)
                        dz1 = (zh1 - hz) + (zl1 - lz)
                        r21 = dx1 * dx1 + dy1 * dy1 + dz1 * dz1
                        invr1 = one / np.sqrt(r21)
                        if not r21 >= thr:
                            invr1 = np.float32(np.nan)
                        same = r21 == zero
                        invr1 = zero if same else invr1
                        z1 += one if same else zero
                        a1 += qj * invr1
                nz0 += z0
                nz1 += z1
                acc0 += a0
                gx0 += ax0
                gy0 += ay0
                gz0 += az0
                acc1 += a1
                gx1 += ax1
                gy1 += ay1
                gz1 += az1
            for c2 in range(0, n2p, bs):
                a0 = np.float32(0.0)
                ax0 = np.float32(0.0)
                ay0 = np.float32(0.0)
                az0 = np.float32(0.0)
                a1 = np.float32(0.0)
                ax1 = np.float32(0.0)
                ay1 = np.float32(0.0)
                az1 = np.float32(0.0)
                if do_g:
                    for j in range(np.uint64(c2), np.uint64(c2) + np.uint64(bs)):
                        hx = hx2[j]
                        hy = hy2[j]
                        hz = hz2[j]
                        lx = lx2[j]
                        ly = ly2[j]
                        lz = lz2[j]
                        qj = bq2[j]
                        dx0 = (xh0 - hx) + (xl0 - lx)
                        dy0 = (yh0 - hy) + (yl0 - ly)
                        dz0 = (zh0 - hz) + (zl0 - lz)
                        r20 = dx0 * dx0 + dy0 * dy0 + dz0 * dz0
                        invr0 = one / np.sqrt(r20)
                        if not r20 >= thr:
                            invr0 = np.float32(np.nan)
                        a0 += qj * invr0
                        dx1 = (xh1 - hx) + (xl1 - lx)
                        dy1 = (yh1 - hy) + (yl1 - ly)
                        dz1 = (zh1 - hz) + (zl1 - lz)
                        r21 = dx1 * dx1 + dy1 * dy1 + dz1 * dz1
                        invr1 = one / np.sqrt(r21)
                        if not r21 >= thr:
                            invr1 = np.float32(np.nan)
                        a1 += qj * invr1
                        pf[j] += qf0 * invr0 + qf1 * invr1
                        ir30 = invr0 * invr0 * invr0
                        t50 = qj * ir30
                        ax0 -= dx0 * t50
                        ay0 -= dy0 * t50
                        az0 -= dz0 * t50
                        t50 = qf0 * ir30
                        ir31 = invr1 * invr1 * invr1
                        t51 = qj * ir31
                        ax1 -= dx1 * t51
                        ay1 -= dy1 * t51
                        az1 -= dz1 * t51
                        t51 = qf1 * ir31
                        px[j] += dx0 * t50 + dx1 * t51
                        py[j] += dy0 * t50 + dy1 * t51
                        pz[j] += dz0 * t50 + dz1 * t51
                else:
                    for j in range(np.uint64(c2), np.uint64(c2) + np.uint64(bs)):
                        hx = hx2[j]
                        hy = hy2[j]
                        hz = hz2[j]
                        lx = lx2[j]
                        ly = ly2[j]
                        lz = lz2[j]
                        qj = bq2[j]
                        dx0 = (xh0 - hx) + (xl0 - lx)
                        dy0 = (yh0 - hy) + (yl0 - ly)
                        dz0 = (zh0 - hz) + (zl0 - lz)
                        r20 = dx0 * dx0 + dy0 * dy0 + dz0 * dz0
                        invr0 = one / np.sqrt(r20)
                        if not r20 >= thr:
                            invr0 = np.float32(np.nan)
                        a0 += qj * invr0
                        dx1 = (xh1 - hx) + (xl1 - lx)
                        dy1 = (yh1 - hy) + (yl1 - ly)
                        dz1 = (zh1 - hz) + (zl1 - lz)
                        r21 = dx1 * dx1 + dy1 * dy1 + dz1 * dz1
                        invr1 = one / np.sqrt(r21)
                        if not r21 >= thr:
                            invr1 = np.float32(np.nan)
                        a1 += qj * invr1
                        pf[j] += qf0 * invr0 + qf1 * invr1
                acc0 += a0
                gx0 += ax0
                gy0 += ay0
                gz0 += az0
                acc1 += a1
                gx1 += ax1
                gy1 += ay1
                gz1 += az1
            if (i + 2) % bi == 0 or i + 2 == nt:  # the partners' float32 sums into float64
                for e in range(4 if do_g else 1):
                    for j in range(n2p):
                        o2[e, j] += of[e, j]
                        of[e, j] = 0.0
            if acc0 != acc0 or acc1 != acc1:
                bad = True
            nzs[i] = nz0
            nzs[i + 1] = nz1
            if nz0 != 1.0 or nz1 != 1.0:
                multi = True
            ob[0, i] = acc0
            ob[1, i] = gx0
            ob[2, i] = gy0
            ob[3, i] = gz0
            ob[0, i + 1] = acc1
            ob[1, i + 1] = gx1
            ob[2, i + 1] = gy1
            ob[3, i + 1] = gz1
        for i in range(i2, nt):
            xh = ht[0, i]
            yh = ht[1, i]
            zh = ht[2, i]
            xl = lt[0, i]
            yl = lt[1, i]
            zl = lt[2, i]
            qf = np.float32(q[t0 + i])
            acc = 0.0
            gx = 0.0
            gy = 0.0
            gz = 0.0
            nz = 0.0
            for c0 in range(0, n1p, bj):  # float32 sums over at most bj sources, then float64
                z = np.float32(0.0)
                a = np.float32(0.0)
                ax = np.float32(0.0)
                ay = np.float32(0.0)
                az = np.float32(0.0)
                if do_g:
                    for j in range(np.uint64(c0), np.uint64(c0) + np.uint64(bj)):
                        dx = (xh - hx1[j]) + (xl - lx1[j])
                        dy = (yh - hy1[j]) + (yl - ly1[j])
                        dz = (zh - hz1[j]) + (zl - lz1[j])
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = one / np.sqrt(r2)
                        if not r2 >= thr:  # too close, or distinct points rounded together: redo
                            invr = np.float32(np.nan)
                        same = r2 == zero  # itself (counted, see above)
                        invr = zero if same else invr
                        z += one if same else zero
                        qinvr = bq1[j] * invr
                        a += qinvr
                        ir3 = qinvr * invr * invr
                        ax -= dx * ir3
                        ay -= dy * ir3
                        az -= dz * ir3
                else:
                    for j in range(np.uint64(c0), np.uint64(c0) + np.uint64(bj)):
                        dx = (xh - hx1[j]) + (xl - lx1[j])
                        dy = (yh - hy1[j]) + (yl - ly1[j])
                        dz = (zh - hz1[j]) + (zl - lz1[j])
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = one / np.sqrt(r2)
                        if not r2 >= thr:
                            invr = np.float32(np.nan)
                        same = r2 == zero
                        invr = zero if same else invr
                        z += one if same else zero
                        a += bq1[j] * invr
                nz += z
                acc += a
                gx += ax
                gy += ay
                gz += az
            for c2 in range(0, n2p, bs):
                a = np.float32(0.0)  # (the partners: float32 runs of bs, as above)
                ax = np.float32(0.0)
                ay = np.float32(0.0)
                az = np.float32(0.0)
                if do_g:
                    for j in range(np.uint64(c2), np.uint64(c2) + np.uint64(bs)):
                        dx = (xh - hx2[j]) + (xl - lx2[j])
                        dy = (yh - hy2[j]) + (yl - ly2[j])
                        dz = (zh - hz2[j]) + (zl - lz2[j])
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = one / np.sqrt(r2)
                        if not r2 >= thr:
                            invr = np.float32(np.nan)
                        ir3 = invr * invr * invr
                        qj = bq2[j]
                        a += qj * invr
                        pf[j] += qf * invr
                        t5 = qj * ir3
                        ax -= dx * t5
                        ay -= dy * t5
                        az -= dz * t5
                        t5 = qf * ir3
                        px[j] += dx * t5
                        py[j] += dy * t5
                        pz[j] += dz * t5
                else:
                    for j in range(np.uint64(c2), np.uint64(c2) + np.uint64(bs)):
                        dx = (xh - hx2[j]) + (xl - lx2[j])
                        dy = (yh - hy2[j]) + (yl - ly2[j])
                        dz = (zh - hz2[j]) + (zl - lz2[j])
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = one / np.sqrt(r2)
                        if not r2 >= thr:
                            invr = np.float32(np.nan)
                        a += bq2[j] * invr
                        pf[j] += qf * invr
                acc += a
                gx += ax
                gy += ay
                gz += az
            if (i + 1) % bi == 0 or i == nt - 1:  # the partners' float32 sums into float64
                for e in range(4 if do_g else 1):
                    for j in range(n2p):
                        o2[e, j] += of[e, j]
                        of[e, j] = 0.0
            if acc != acc:
                bad = True
            nzs[i] = nz
            if nz != 1.0:
                multi = True
            ob[0, i] = acc
            ob[1, i] = gx
            ob[2, i] = gy
            ob[3, i] = gz
        if multi and not bad:  # (found only itself: it has no duplicates either)
            bad = _float32_counts_differ(xyz, t0, nt, nzs, cnt)
        if bad:  # a pair too close for the float32 terms: the box again, exactly in float64
            for e in range(4):
                for j in range(n2):
                    o2[e, j] = 0.0
            for i in range(nt):
                acc, gx, gy, gz = sym_target_exact(xyz[0, t0 + i], xyz[1, t0 + i],
                                                   xyz[2, t0 + i], q[t0 + i], s1, q1, n1, s2,
                                                   q2, n2, o2)
                ob[0, i] = acc
                ob[1, i] = gx
                ob[2, i] = gy
                ob[3, i] = gz
        scatter_sym(c, ob, o2, gidx, t0, nt, n2, do_g, pot, grad)


def p2p_mixed(src_xyz, charges, trg_xyz, src_start, src_end, trg_start, trg_end, list_offsets,
              list_index, shift, boxes, i0, i1, flags, m_max, pot, grad):
    """:func:`p2p_potgrad` (flags 4) or :func:`p2p_pot` for float64 points, charges and
    outputs, with the pair terms in float32 as in :func:`p2p_sym_mixed`: per target box its
    listed sources (own box first) are gathered in its frame, every coordinate split into a
    float32 part on a power-of-two grid plus a float32 rest, and each target's float32 sums
    over blocks of ``MIXED_SOURCES`` sources added in float64. A target with a source closer
    than MIXED_CUT grid steps, or one that rounds to r^2 = 0 without being coincident in float64,
    is summed again exactly in float64; a coincident source (only the own box can hold one)
    contributes 0."""
    c = INV4PI
    one = np.float32(1.0)
    do_g = (flags & 4) != 0
    bj = MIXED_SOURCES
    sg = np.empty((3, m_max + 2 * bj), dtype=np.float64)   # the listed sources, in b's frame
    q2 = charges.reshape(1, charges.shape[0])     # as one of k charge vectors
    qg = np.empty((1, m_max + 2 * bj), dtype=np.float64)
    hs = np.empty((3, m_max + 2 * bj), dtype=np.float32)
    ls = np.empty((3, m_max + 2 * bj), dtype=np.float32)
    qf = np.empty(m_max + 2 * bj, dtype=np.float32)
    exact = np.empty(4, dtype=np.float64)  # a redone target's sums (_exact_target)
    ht, lt = _target_parts(trg_start, trg_end, boxes, i0, i1)
    for ii in range(i0, i1):
        b = boxes[ii]
        t0 = trg_start[b]
        nt = trg_end[b] - t0
        if nt == 0:
            continue
        # the own sources and the rest each padded to whole runs of bj (uncharged points far
        # away, terms 0): [own | pad | rest | pad], every block below exactly bj long
        n, n_own, n_own_p = _gather_own_first(src_xyz, q2, src_start, src_end, list_offsets,
                                              list_index, shift, b, sg, qg, bj)
        thr, far = _split_box(sg, n, sg, 0, trg_xyz[:, t0:t0 + nt], nt, hs, ls, hs, ls, ht, lt)
        n_p = _pad_own_and_rest(sg, qg, hs, ls, n_own, n_own_p, n, far, bj)
        for j in range(n_p):
            qf[j] = qg[0, j]
        hx = hs[0, :n_p]
        hy = hs[1, :n_p]
        hz = hs[2, :n_p]
        lx = ls[0, :n_p]
        ly = ls[1, :n_p]
        lz = ls[2, :n_p]
        sx = sg[0, :n_own_p]
        sy = sg[1, :n_own_p]
        sz = sg[2, :n_own_p]
        bq = qf[:n_p]
        own_blocks = n_own_p // bj
        n_blocks = n_p // bj
        for i in range(nt):
            xh = ht[0, i]
            yh = ht[1, i]
            zh = ht[2, i]
            xl = lt[0, i]
            yl = lt[1, i]
            zl = lt[2, i]
            xi = trg_xyz[0, t0 + i]
            yi = trg_xyz[1, t0 + i]
            zi = trg_xyz[2, t0 + i]
            acc = 0.0
            gx = 0.0
            gy = 0.0
            gz = 0.0
            # float32 sums over at most bj sources, then float64; the own box first (the only
            # one that can hold a coincident source), then the rest
            for blk in range(n_blocks):
                own = blk < own_blocks
                j0 = blk * bj
                c1 = np.uint64(j0) + np.uint64(bj)
                a = np.float32(0.0)
                ax = np.float32(0.0)
                ay = np.float32(0.0)
                az = np.float32(0.0)
                if own and do_g:
                    for j in range(np.uint64(j0), c1):
                        dx = (xh - hx[j]) + (xl - lx[j])
                        dy = (yh - hy[j]) + (yl - ly[j])
                        dz = (zh - hz[j]) + (zl - lz[j])
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = one / np.sqrt(r2)
                        if not r2 >= thr:
                            invr = np.float32(np.nan)
                        if xi == sx[j] and yi == sy[j] and zi == sz[j]:  # coincident: 0
                            invr = np.float32(0.0)
                        qinvr = bq[j] * invr
                        a += qinvr
                        ir3 = qinvr * invr * invr
                        ax -= dx * ir3
                        ay -= dy * ir3
                        az -= dz * ir3
                elif own:
                    for j in range(np.uint64(j0), c1):
                        dx = (xh - hx[j]) + (xl - lx[j])
                        dy = (yh - hy[j]) + (yl - ly[j])
                        dz = (zh - hz[j]) + (zl - lz[j])
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = one / np.sqrt(r2)
                        if not r2 >= thr:
                            invr = np.float32(np.nan)
                        if xi == sx[j] and yi == sy[j] and zi == sz[j]:  # coincident: 0
                            invr = np.float32(0.0)
                        a += bq[j] * invr
                elif do_g:
                    for j in range(np.uint64(j0), c1):
                        dx = (xh - hx[j]) + (xl - lx[j])
                        dy = (yh - hy[j]) + (yl - ly[j])
                        dz = (zh - hz[j]) + (zl - lz[j])
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = one / np.sqrt(r2)
                        if not r2 >= thr:
                            invr = np.float32(np.nan)
                        qinvr = bq[j] * invr
                        a += qinvr
                        ir3 = qinvr * invr * invr
                        ax -= dx * ir3
                        ay -= dy * ir3
                        az -= dz * ir3
                else:
                    for j in range(np.uint64(j0), c1):
                        dx = (xh - hx[j]) + (xl - lx[j])
                        dy = (yh - hy[j]) + (yl - ly[j])
                        dz = (zh - hz[j]) + (zl - lz[j])
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = one / np.sqrt(r2)
                        if not r2 >= thr:
                            invr = np.float32(np.nan)
                        a += bq[j] * invr
                acc += a
                gx += ax
                gy += ay
                gz += az
            if acc != acc:  # a source too close for the float32 terms: exactly in float64
                _exact_target(xi, yi, zi, src_xyz[0], src_xyz[1], src_xyz[2], charges,
                              src_start, src_end, list_index, shift, list_offsets[b],
                              list_offsets[b + 1], exact)
                acc = exact[0]
                gx = exact[1]
                gy = exact[2]
                gz = exact[3]
            pot[t0 + i] += c * acc
            if do_g:
                grad[0, t0 + i] += c * gx
                grad[1, t0 + i] += c * gy
                grad[2, t0 + i] += c * gz


def p2p_multi_mixed(src_xyz, q, dip, trg_xyz, src_start, src_end, trg_start, trg_end,
                    list_offsets, list_index, shift, boxes, i0, i1, flags, m_max, pot, grad):
    """pot[d, i] (+ grad[d, :, i], flags 4) += the field of the listed boxes' charge vectors
    q[d] (flags 1) and/or dipole vectors dip[d] (flags 2), nd of them: ``kernels/multi.py``
    ``p2p_multi``, float64 in and out, with the pair terms of :func:`p2p_mixed`. Per target box
    its listed sources (own box first) are gathered in its frame and split into float32 parts on
    a power-of-two grid plus float32 rests; per target, chunks of ``MIXED_CHUNK`` sources get
    their float32 geometry once (1/r; (x - y)/r^3 for charges' gradients and dipoles; 1/r^3 and
    3 (x - y)/r^2 for dipoles' gradients), then every density sweeps it in float32 runs of
    ``MIXED_SOURCES`` (charges four densities per sweep, two with gradients; dipoles four per
    sweep, two with gradients; the own sources and the rest each padded to whole runs) and adds
    each run's sums to float64; one dipole vector alone skips the scratch: its terms are summed
    as they are computed (:func:`_one_dipole_mixed`, 1.4x faster in a JIT model, 1e5 uniform
    points, one thread, Zen 3). A target with a source closer than ``MIXED_CUT`` grid steps (or
    than ``MIXED_R2_MIN``), or whose float32 sums overflowed (a dipole's gradient ~|d|/r^3 can
    pass float32's range where 1/r^3 does not), is summed again, every density, exactly in
    float64; a coincident source (only the own box can hold one) contributes 0."""
    c = INV4PI
    one = np.float32(1.0)
    three = np.float32(3.0)
    do_q = (flags & 1) != 0
    do_d = (flags & 2) != 0
    do_g = (flags & 4) != 0
    nd = pot.shape[0]
    nb4 = (nd // 4) * 4 if not do_g else 0  # four densities a sweep, two with gradients
    nb2 = nb4 + ((nd - nb4) // 2) * 2 if do_g else nb4  # (see multi.p2p_multi)
    nbd = (nd // 4) * 4 if not do_g else 0  # dipoles: four a sweep, two with gradients
    geom = 2 if do_d and do_g else (1 if do_g or do_d else 0)  # which geometry (below)
    fused = nd == 1 and do_d and not do_q  # one dipole vector: _one_dipole_mixed
    ch = MIXED_CHUNK
    bj = MIXED_SOURCES
    mp = m_max + 2 * bj
    sg = np.empty((3, mp), dtype=np.float64)   # the listed sources, in b's frame
    qg = np.empty((nd if do_q else 1, mp), dtype=np.float32)
    q64 = np.empty((nd if do_q else 1, mp), dtype=np.float64)
    dg = np.empty((3 * nd if do_d else 1, mp), dtype=np.float32)  # rows 3d, 3d+1, 3d+2
    d64 = np.empty((3 * nd if do_d else 1, mp), dtype=np.float64)
    dip2 = dip.reshape(dip.shape[0] * dip.shape[1], dip.shape[2])
    hs = np.empty((3, mp), dtype=np.float32)
    ls = np.empty((3, mp), dtype=np.float32)
    geo = np.zeros((8, ch), dtype=np.float32)
    b1 = geo[0]  # 1 / r
    bx = geo[1]  # (x - y) / r^3 (charges' gradient, dipoles)
    by = geo[2]
    bz = geo[3]
    b3 = geo[4]  # 1 / r^3 (dipoles' gradient)
    vx = geo[5]  # 3 (x - y) / r^2 (dipoles' gradient)
    vy = geo[6]
    vz = geo[7]
    sums = np.zeros((nd, 4), dtype=np.float64)
    ht, lt = _target_parts(trg_start, trg_end, boxes, i0, i1)
    for ii in range(i0, i1):
        b = boxes[ii]
        t0 = trg_start[b]
        nt = trg_end[b] - t0
        if nt == 0:
            continue
        # the own sources and the rest each padded to whole runs of bj (no charge or dipole,
        # far away: terms 0; float64 coordinates NaN, which the exact redo skips)
        n = n_own = n_own_p = n_p = 0
        if do_q:
            n, n_own, n_own_p = _gather_own_first(src_xyz, q, src_start, src_end, list_offsets,
                                                  list_index, shift, b, sg, q64, bj)
        if do_d:
            n, n_own, n_own_p = _gather_own_first(src_xyz, dip2, src_start, src_end,
                                                  list_offsets, list_index, shift, b, sg, d64,
                                                  bj)
        thr, far = _split_box(sg, n, sg, 0, trg_xyz[:, t0:t0 + nt], nt, hs, ls, hs, ls, ht, lt)
        if do_q:
            n_p = _pad_own_and_rest(sg, q64, hs, ls, n_own, n_own_p, n, far, bj)
            for d in range(nd):
                for j in range(n_p):
                    qg[d, j] = q64[d, j]
        if do_d:
            n_p = _pad_own_and_rest(sg, d64, hs, ls, n_own, n_own_p, n, far, bj)
            for d in range(3 * nd):
                for j in range(n_p):
                    dg[d, j] = d64[d, j]
        for i in range(nt):
            xh = ht[0, i]
            yh = ht[1, i]
            zh = ht[2, i]
            xl = lt[0, i]
            yl = lt[1, i]
            zl = lt[2, i]
            xi = trg_xyz[0, t0 + i]
            yi = trg_xyz[1, t0 + i]
            zi = trg_xyz[2, t0 + i]
            for d in range(nd):
                for e in range(4):
                    sums[d, e] = 0.0
            bad = False
            if fused:  # one dipole vector: geometry and sums in one loop per run
                bad = _one_dipole_mixed(xh, yh, zh, xl, yl, zl, xi, yi, zi, hs, ls, sg, dg,
                                        n_own_p, n_p, thr, do_g, sums)
            # the scratch is indexed directly here and in the sweeps (c0u + j), never through
            # views: each view of an array costs an atomic reference count increment and
            # decrement (NRT), per target and chunk or run (9 % of a k = 8 dipole run's samples;
            # k densities 1.16-1.32x faster without them, JIT model, 1e5 points, Intel Xeon)
            for c0 in range(0, n_p if not fused else 0, ch):
                c1 = min(c0 + ch, n_p)
                c0u = np.uint64(c0)
                m = np.uint64(c1 - c0)
                chk = np.float32(0.0)
                if geom == 2:
                    for j in range(np.uint64(0), m):
                        dx = (xh - hs[0, c0u + j]) + (xl - ls[0, c0u + j])
                        dy = (yh - hs[1, c0u + j]) + (yl - ls[1, c0u + j])
                        dz = (zh - hs[2, c0u + j]) + (zl - ls[2, c0u + j])
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = one / np.sqrt(r2)
                        if not r2 >= thr:
                            invr = np.float32(np.nan)
                        b1[j] = invr
                        i2 = invr * invr
                        i3 = invr * i2
                        bx[j] = dx * i3
                        by[j] = dy * i3
                        bz[j] = dz * i3
                        b3[j] = i3
                        t2 = three * i2
                        vx[j] = dx * t2
                        vy[j] = dy * t2
                        vz[j] = dz * t2
                elif geom == 1:
                    for j in range(np.uint64(0), m):
                        dx = (xh - hs[0, c0u + j]) + (xl - ls[0, c0u + j])
                        dy = (yh - hs[1, c0u + j]) + (yl - ls[1, c0u + j])
                        dz = (zh - hs[2, c0u + j]) + (zl - ls[2, c0u + j])
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = one / np.sqrt(r2)
                        if not r2 >= thr:
                            invr = np.float32(np.nan)
                        b1[j] = invr
                        i3 = invr * invr * invr
                        bx[j] = dx * i3
                        by[j] = dy * i3
                        bz[j] = dz * i3
                else:
                    for j in range(np.uint64(0), m):
                        dx = (xh - hs[0, c0u + j]) + (xl - ls[0, c0u + j])
                        dy = (yh - hs[1, c0u + j]) + (yl - ls[1, c0u + j])
                        dz = (zh - hs[2, c0u + j]) + (zl - ls[2, c0u + j])
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = one / np.sqrt(r2)
                        if not r2 >= thr:
                            invr = np.float32(np.nan)
                        b1[j] = invr
                for j in range(c0, min(c1, n_own)):  # coincident with an own source: 0
                    if xi == sg[0, j] and yi == sg[1, j] and zi == sg[2, j]:
                        for e in range(8):
                            geo[e, j - c0] = 0.0
                for j in range(np.uint64(0), m):
                    chk += b1[j]
                if chk != chk:  # a source too close for the float32 terms
                    bad = True
                    break
                if do_q:
                    _charge_sweeps_mixed(qg, b1, bx, by, bz, c0, c1, nd, nb4, nb2, do_g, sums)
                if do_d:
                    _dipole_sweeps_mixed(dg, bx, by, bz, b3, vx, vy, vz, c0, c1, nd, nbd, do_g,
                                         sums)
            for d in range(nd):  # a float32 term past its range (close pairs of large
                for e in range(4):  # dipoles: ~|d| / r^3) overflowed: float64 too
                    v = sums[d, e]
                    if not v - v == 0.0:
                        bad = True
            if bad:  # every density of this target exactly in float64
                for d in range(nd):
                    for e in range(4):
                        sums[d, e] = 0.0
                for j in range(n_p):
                    ex = xi - sg[0, j]
                    ey = yi - sg[1, j]
                    ez = zi - sg[2, j]
                    er2 = ex * ex + ey * ey + ez * ez
                    if er2 > 0.0:
                        einv = 1.0 / np.sqrt(er2)
                        ei3 = einv * einv * einv
                        for d in range(nd):
                            if do_q:
                                eq = q64[d, j]
                                sums[d, 0] += eq * einv
                                sums[d, 1] -= eq * ex * ei3
                                sums[d, 2] -= eq * ey * ei3
                                sums[d, 3] -= eq * ez * ei3
                            if do_d:
                                fx = d64[3 * d, j]
                                fy = d64[3 * d + 1, j]
                                fz = d64[3 * d + 2, j]
                                eu = (fx * ex + fy * ey + fz * ez) * ei3
                                sums[d, 0] += eu
                                et = 3.0 * eu * einv * einv
                                sums[d, 1] += fx * ei3 - ex * et
                                sums[d, 2] += fy * ei3 - ey * et
                                sums[d, 3] += fz * ei3 - ez * et
            for d in range(nd):
                pot[d, t0 + i] += c * sums[d, 0]
                if do_g:
                    grad[d, 0, t0 + i] += c * sums[d, 1]
                    grad[d, 1, t0 + i] += c * sums[d, 2]
                    grad[d, 2, t0 + i] += c * sums[d, 3]


@register_jitable
def _charge_sweeps_mixed(qg, b1, bx, by, bz, c0, c1, nd, nb4, nb2, do_g, sums):
    """p2p_multi_mixed's charge vectors over one chunk's geometry ``[c0, c1)``: float32 runs of
    ``MIXED_SOURCES`` sources (a constant trip count), four densities per sweep (``[0, nb4)``),
    two with gradients (``[nb4, nb2)``), the rest one by one; each run's sums added to ``sums``
    (nd, 4) float64."""
    bj = MIXED_SOURCES
    c0u = np.uint64(c0)
    for d in range(0, nb4, 4):  # four densities per sweep
        for s0 in range(0, c1 - c0, bj):  # float32 runs of bj sources
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for j in range(np.uint64(s0), np.uint64(s0) + np.uint64(bj)):
                w = b1[j]
                a0 += qg[d, c0u + j] * w
                a1 += qg[d + 1, c0u + j] * w
                a2 += qg[d + 2, c0u + j] * w
                a3 += qg[d + 3, c0u + j] * w
            sums[d, 0] += a0
            sums[d + 1, 0] += a1
            sums[d + 2, 0] += a2
            sums[d + 3, 0] += a3
    for d in range(nb4, nb2, 2):  # with gradients: two densities per sweep
        for s0 in range(0, c1 - c0, bj):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            x0 = np.float32(0.0)
            x1 = np.float32(0.0)
            y0 = np.float32(0.0)
            y1 = np.float32(0.0)
            z0 = np.float32(0.0)
            z1 = np.float32(0.0)
            for j in range(np.uint64(s0), np.uint64(s0) + np.uint64(bj)):
                w = b1[j]
                wx = bx[j]
                wy = by[j]
                wz = bz[j]
                u = qg[d, c0u + j]
                a0 += u * w
                x0 -= u * wx
                y0 -= u * wy
                z0 -= u * wz
                u = qg[d + 1, c0u + j]
                a1 += u * w
                x1 -= u * wx
                y1 -= u * wy
                z1 -= u * wz
            sums[d, 0] += a0
            sums[d, 1] += x0
            sums[d, 2] += y0
            sums[d, 3] += z0
            sums[d + 1, 0] += a1
            sums[d + 1, 1] += x1
            sums[d + 1, 2] += y1
            sums[d + 1, 3] += z1
    for d in range(nb2, nd):
        for s0 in range(0, c1 - c0, bj):
            a = np.float32(0.0)
            gx = np.float32(0.0)
            gy = np.float32(0.0)
            gz = np.float32(0.0)
            if do_g:
                for j in range(np.uint64(s0), np.uint64(s0) + np.uint64(bj)):
                    qj = qg[d, c0u + j]
                    a += qj * b1[j]
                    gx -= qj * bx[j]
                    gy -= qj * by[j]
                    gz -= qj * bz[j]
            else:
                for j in range(np.uint64(s0), np.uint64(s0) + np.uint64(bj)):
                    a += qg[d, c0u + j] * b1[j]
            sums[d, 0] += a
            sums[d, 1] += gx
            sums[d, 2] += gy
            sums[d, 3] += gz


@register_jitable
def _dipole_sweeps_mixed(dg, bx, by, bz, b3, vx, vy, vz, c0, c1, nd, nbd, do_g, sums):
    """p2p_multi_mixed's dipole vectors (rows 3d, 3d + 1, 3d + 2 of ``dg``) over one chunk's
    geometry ``[c0, c1)``: the potential d . (x - y)/r^3, the gradient d/r^3 - 3 (d . (x - y))
    (x - y)/r^5 = d/r^3 - (d . (x - y)/r^3) 3 (x - y)/r^2; float32 runs of ``MIXED_SOURCES``
    sources, four densities per sweep for potentials (``[0, nbd)``), two with gradients (one
    by one: 1.3x slower, k = 8 in a JIT model, 1e5 uniform points, one thread, Zen 3), the rest
    one by one; each run's sums added to ``sums`` (nd, 4) float64."""
    bj = MIXED_SOURCES
    c0u = np.uint64(c0)
    for d in range(0, nbd, 4):
        r = 3 * d
        for s0 in range(0, c1 - c0, bj):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for j in range(np.uint64(s0), np.uint64(s0) + np.uint64(bj)):
                k = c0u + j
                wx = bx[j]
                wy = by[j]
                wz = bz[j]
                a0 += dg[r, k] * wx + dg[r + 1, k] * wy + dg[r + 2, k] * wz
                a1 += dg[r + 3, k] * wx + dg[r + 4, k] * wy + dg[r + 5, k] * wz
                a2 += dg[r + 6, k] * wx + dg[r + 7, k] * wy + dg[r + 8, k] * wz
                a3 += dg[r + 9, k] * wx + dg[r + 10, k] * wy + dg[r + 11, k] * wz
            sums[d, 0] += a0
            sums[d + 1, 0] += a1
            sums[d + 2, 0] += a2
            sums[d + 3, 0] += a3
    nbg = (nd // 2) * 2 if do_g else nbd
    for d in range(nbd, nbg, 2):  # with gradients: two densities per sweep
        r = 3 * d
        for s0 in range(0, c1 - c0, bj):
            a0 = np.float32(0.0)
            x0 = np.float32(0.0)
            y0 = np.float32(0.0)
            z0 = np.float32(0.0)
            a1 = np.float32(0.0)
            x1 = np.float32(0.0)
            y1 = np.float32(0.0)
            z1 = np.float32(0.0)
            for j in range(np.uint64(s0), np.uint64(s0) + np.uint64(bj)):
                wx = bx[j]
                wy = by[j]
                wz = bz[j]
                t = b3[j]
                k = c0u + j
                ux = dg[r, k]
                uy = dg[r + 1, k]
                uz = dg[r + 2, k]
                s = ux * wx + uy * wy + uz * wz
                a0 += s
                x0 += ux * t - s * vx[j]
                y0 += uy * t - s * vy[j]
                z0 += uz * t - s * vz[j]
                ux = dg[r + 3, k]
                uy = dg[r + 4, k]
                uz = dg[r + 5, k]
                s = ux * wx + uy * wy + uz * wz
                a1 += s
                x1 += ux * t - s * vx[j]
                y1 += uy * t - s * vy[j]
                z1 += uz * t - s * vz[j]
            sums[d, 0] += a0
            sums[d, 1] += x0
            sums[d, 2] += y0
            sums[d, 3] += z0
            sums[d + 1, 0] += a1
            sums[d + 1, 1] += x1
            sums[d + 1, 2] += y1
            sums[d + 1, 3] += z1
    for d in range(nbg, nd):
        r = 3 * d
        for s0 in range(0, c1 - c0, bj):
            a = np.float32(0.0)
            gx = np.float32(0.0)
            gy = np.float32(0.0)
            gz = np.float32(0.0)
            if do_g:
                for j in range(np.uint64(s0), np.uint64(s0) + np.uint64(bj)):
                    k = c0u + j
                    ux = dg[r, k]
                    uy = dg[r + 1, k]
                    uz = dg[r + 2, k]
                    s = ux * bx[j] + uy * by[j] + uz * bz[j]
                    a += s
                    t = b3[j]
                    gx += ux * t - s * vx[j]
                    gy += uy * t - s * vy[j]
                    gz += uz * t - s * vz[j]
            else:
                for j in range(np.uint64(s0), np.uint64(s0) + np.uint64(bj)):
                    k = c0u + j
                    a += dg[r, k] * bx[j] + dg[r + 1, k] * by[j] + dg[r + 2, k] * bz[j]
            sums[d, 0] += a
            sums[d, 1] += gx
            sums[d, 2] += gy
            sums[d, 3] += gz


@register_jitable
def _one_dipole_mixed(xh, yh, zh, xl, yl, zl, xi, yi, zi, hs, ls, sg, dg, n_own_p, n_p, thr, do_g,
                      sums):
    """p2p_multi_mixed for one dipole vector and one target: the pair terms computed and summed
    in one loop per float32 run of ``MIXED_SOURCES`` sources (no geometry scratch); own sources
    (``[0, n_own_p)``, the only ones that can be; their runs also sum gradients, which a
    potential-only call ignores) coincident with the target contribute 0. Returns True if a
    source is too close for the float32 terms or a term overflowed float32 (the caller redoes
    the target in float64).
    The loops are written out per case: one loop with the own-source test and the gradient
    behind branches ran 1.2x slower than the chunked sweeps (JIT model, as above)."""
    bj = MIXED_SOURCES
    one = np.float32(1.0)
    three = np.float32(3.0)
    px = dg[0]
    py = dg[1]
    pz = dg[2]
    hx = hs[0]
    hy = hs[1]
    hz = hs[2]
    lx = ls[0]
    ly = ls[1]
    lz = ls[2]
    sx = sg[0]
    sy = sg[1]
    sz = sg[2]
    for j0 in range(0, n_p, bj):
        a = np.float32(0.0)
        gx = np.float32(0.0)
        gy = np.float32(0.0)
        gz = np.float32(0.0)
        if j0 < n_own_p:
            for j in range(np.uint64(j0), np.uint64(j0) + np.uint64(bj)):
                dx = (xh - hx[j]) + (xl - lx[j])
                dy = (yh - hy[j]) + (yl - ly[j])
                dz = (zh - hz[j]) + (zl - lz[j])
                r2 = dx * dx + dy * dy + dz * dz
                invr = one / np.sqrt(r2)
                if not r2 >= thr:
                    invr = np.float32(np.nan)
                if xi == sx[j] and yi == sy[j] and zi == sz[j]:
                    invr = np.float32(0.0)
                i2 = invr * invr
                i3 = invr * i2
                ux = px[j]
                uy = py[j]
                uz = pz[j]
                s = (ux * dx + uy * dy + uz * dz) * i3
                a += s
                t = three * i2  # (s t would be ~3 |d| / r^4: past float32's range first)
                gx += ux * i3 - s * (dx * t)
                gy += uy * i3 - s * (dy * t)
                gz += uz * i3 - s * (dz * t)
        elif do_g:
            for j in range(np.uint64(j0), np.uint64(j0) + np.uint64(bj)):
                dx = (xh - hx[j]) + (xl - lx[j])
                dy = (yh - hy[j]) + (yl - ly[j])
                dz = (zh - hz[j]) + (zl - lz[j])
                r2 = dx * dx + dy * dy + dz * dz
                invr = one / np.sqrt(r2)
                if not r2 >= thr:
                    invr = np.float32(np.nan)
                i2 = invr * invr
                i3 = invr * i2
                ux = px[j]
                uy = py[j]
                uz = pz[j]
                s = (ux * dx + uy * dy + uz * dz) * i3
                a += s
                t = three * i2  # (s t would be ~3 |d| / r^4: past float32's range first)
                gx += ux * i3 - s * (dx * t)
                gy += uy * i3 - s * (dy * t)
                gz += uz * i3 - s * (dz * t)
        else:
            for j in range(np.uint64(j0), np.uint64(j0) + np.uint64(bj)):
                dx = (xh - hx[j]) + (xl - lx[j])
                dy = (yh - hy[j]) + (yl - ly[j])
                dz = (zh - hz[j]) + (zl - lz[j])
                r2 = dx * dx + dy * dy + dz * dz
                invr = one / np.sqrt(r2)
                if not r2 >= thr:
                    invr = np.float32(np.nan)
                a += (px[j] * dx + py[j] * dy + pz[j] * dz) * (invr * invr * invr)
        if not (a - a == 0.0 and gx - gx == 0.0 and gy - gy == 0.0 and gz - gz == 0.0):
            return True  # NaN (a source too close) or inf (a term past float32's range)
        sums[0, 0] += a
        sums[0, 1] += gx
        sums[0, 2] += gy
        sums[0, 3] += gz
    return False
