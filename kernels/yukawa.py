"""Yukawa (modified Helmholtz) sums: G(x, y) = exp(-lam r) / (4 pi r), r = |x - y|, lam > 0.

The three density kernels of ``multi.py`` for this G, with the same parameters, layouts,
box/list/shift conventions and ``flags`` bits (1 charges, 2 dipoles, 4 gradient; 8, full
accuracy 1/r in P2P, as there; 16, P2P of one charge vector only: exp(-lam r) to ~1e-11 by
``_vecmath.vexp_coarse``, for the FMM's near field at eps >= 1e-8), plus the scalar ``lam``
({F}, > 0; the front end checks it):

* ``yukawa_p2p`` (P2P, like ``p2p_multi``), ``yukawa_p2c`` (P2M/P2L check potentials, like
  ``p2c_multi``), ``yukawa_s2p`` (L2P/M2P from surface densities, like ``s2p_multi``);
* ``yukawa_p2p_sym``: the near field of one charge vector when the targets are the sources,
  each pair of distinct boxes once for both (Newton's third law; see its docstring).

With d = x - y, r = |d|, e = exp(-lam r) and L = lam r, dividing everything by 4 pi:

* charge q at y: pot q e / r, grad -q e (1 + L) d / r^3;
* dipole D at y, field D . grad_y G (as for Laplace: P = D . d):
  pot P e (1 + L) / r^3, grad D e (1 + L) / r^3 - P d e (3 + 3 L + L^2) / r^5.

lam = 0 gives Laplace's formulas exactly. Coincident pairs (r = 0) contribute 0. Scratch
``buf`` (6, >= m) as in ``multi.py``. Per pair, P2P takes 1/r from ``_inline.inv_sqrt`` like
``p2p_multi`` (float32 estimate and one float64 Newton step, relative error ~3e-14) and
r = r2 (1/r) in the FMM's near field; a chunk with a source too close for the float32 estimate
is redone with the exact sqrt, and so is everything with flag 8 (direct sums: r = sqrt(r2)
correctly rounded, as before). One charge vector is summed inside the pair loop (no stored
geometry, as ``p2p.py`` does for Laplace). The exponent -lam r then carries
~lam r x 3e-14 relative error (near-field pairs have lam r of a few box widths: 6e-13 at
lam r = 20, where the term's weight is exp(-20) = 2e-9). P2C and S2P keep the exact sqrt
(their pairs are far fewer). exp(-lam r) is ``_vecmath.vexp`` (vectorised, full accuracy;
``vexp_coarse`` with flag 16), computed once; each density is then a multiply-add sweep over
the stored pair values. The dipole terms are formed from the unit vector as in ``multi.py``
(until 2026-12-02 they stored 1/r^5, and float32 dipoles closer than ~2e-8 of the frame
overflowed although their field fits: FloatingPointError; Helmholtz likewise).
"""
import numpy as np

from ._inline import gather_sym, inv_sqrt, scatter_sym
from ._vecmath import vexp, vexp_coarse

INV4PI = 0.07957747154594767  # 1 / (4 pi)

SIGNATURES = {
    # IN src_xyz, IN q (nd, n), IN dip (nd, 3, n), IN trg_xyz, IN src_start, IN src_end,
    # IN trg_start, IN trg_end, IN list_offsets, IN list_index, IN shift (n_entries, 3),
    # IN boxes, IN i0, IN i1, IN flags, IN m_max (>= sources of any listed box's list), IN lam,
    # INOUT pot (nd, n_trg), INOUT grad (nd, 3, n_trg)
    "yukawa_p2p": "void({F}[:, ::1], {F}[:, ::1], {F}[:, :, ::1], {F}[:, ::1], i8[::1],"
                  " i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], {F}[:, ::1], i8[::1], i8, i8,"
                  " i8, i8, {F}, {F}[:, ::1], {F}[:, :, ::1])",
    # IN src_xyz, IN q, IN dip, IN src_start, IN src_end, IN trg_boxes, IN centers,
    # IN half_widths, IN list_offsets, IN list_index, IN surf (3, n_surf), IN radius, IN b0,
    # IN b1, IN row0, IN flags, IN lam, OUT buf (6, m), OUT check (n_rows, nd, n_surf)
    "yukawa_p2c": "void({F}[:, ::1], {F}[:, ::1], {F}[:, :, ::1], i8[::1], i8[::1], i8[::1],"
                  " {F}[:, ::1], {F}[::1], i8[::1], i8[::1], {F}[:, ::1], {F}, i8, i8, i8, i8,"
                  " {F}, {F}[:, ::1], {F}[:, :, ::1])",
    # IN dens (n_boxes, nd, n_surf), IN trg_xyz, IN trg_start, IN trg_end, IN trg_boxes,
    # IN centers, IN half_widths, IN list_offsets, IN list_index, IN surf, IN radius, IN b0,
    # IN b1, IN flags (4: gradient), IN lam, OUT buf (6, n_surf), INOUT pot, INOUT grad
    "yukawa_s2p": "void({F}[:, :, ::1], {F}[:, ::1], i8[::1], i8[::1], i8[::1], {F}[:, ::1],"
                  " {F}[::1], i8[::1], i8[::1], {F}[:, ::1], {F}, i8, i8, i8, {F}, {F}[:, ::1],"
                  " {F}[:, ::1], {F}[:, :, ::1])",
    # IN xyz (3, n), IN q (n,), IN start, IN end, IN one_offsets, IN one_index,
    # IN one_shift (n_one, 3), IN sym_offsets, IN sym_index, IN sym_shift (n_sym, 3), IN boxes,
    # IN i0, IN i1, IN flags (4 gradient, 8 exact), IN m_max, IN lam, INOUT pot (n,),
    # INOUT grad (3, n)
    "yukawa_p2p_sym": "void({F}[:, ::1], {F}[::1], i8[::1], i8[::1], i8[::1], i8[::1],"
                      " {F}[:, ::1], i8[::1], i8[::1], {F}[:, ::1], i8[::1], i8, i8, i8, i8,"
                      " {F}, {F}[::1], {F}[:, ::1])",
}

_ACC = {name: "{F}" for name in (
    "c", "one", "three", "acc", "gx", "gy", "gz", "r2", "invr", "ir2", "r", "lr", "g0",
    "g1", "g2", "g3", "dd", "t5", "qj", "ox", "oy", "oz", "xi", "yi", "zi", "dx", "dy", "dz", "hr", "chk",
    "xm", "ym", "zm", "nlam")}
LOCALS = {"yukawa_p2p": _ACC, "yukawa_p2c": _ACC, "yukawa_s2p": _ACC,
          "yukawa_p2p_sym": _ACC}

#: Sources per geometry chunk in yukawa_p2p (as ``multi.P2P_CHUNK``: the scratch stays in L1).
P2P_CHUNK = 256


def yukawa_p2p(src_xyz, q, dip, trg_xyz, src_start, src_end, trg_start, trg_end, list_offsets,
               list_index, shift, boxes, i0, i1, flags, m_max, lam, pot, grad):
    """pot[d, i] (+ grad[d, :, i]) += Yukawa field of the listed boxes' charges/dipoles of
    density d (the structure of ``multi.p2p_multi``: each target box's list gathered into
    scratch, then per target, per chunk of sources, the pair values once and one sweep per
    density). Stored per pair: e/r (charges, potential); e/r and d e (1 + L)/r^3 (charges,
    gradient); with dipoles the unit vector u = d/r, e/r, e (1 + L)/r^2, e (1 + L)/r^3 and
    e (3 + 3L + L^2)/r^3: dipole potential (D.u) e (1 + L)/r^2, gradient D e (1 + L)/r^3 -
    (D.u) u e (3 + 3L + L^2)/r^3, charge gradient -q u e (1 + L)/r^2 (nothing beyond the
    field's own power of 1/r, so nothing overflows before the field does)."""
    c = INV4PI
    one = 1.0
    three = 3.0
    nlam = -lam
    has_q = (flags & 1) != 0
    has_d = (flags & 2) != 0
    do_g = (flags & 4) != 0
    refine = (flags & 8) != 0
    coarse = (flags & 16) != 0  # one charge vector: exp to ~1e-11 (vexp_coarse)
    mode = 2 if has_d else (1 if do_g else 0)
    fused = mode < 2 and pot.shape[0] == 1
    nd = pot.shape[0]
    dt = src_xyz.dtype
    geo = np.empty((7, P2P_CHUNK), dtype=dt)
    bx = geo[0]  # the unit vector d / r (mode 2), or d e (1 + L)/r^3 (mode 1)
    by = geo[1]
    bz = geo[2]
    b0 = geo[3]  # e / r
    b1 = geo[4]  # e (1 + L) / r^2 (mode 2)
    b2 = geo[5]  # e (3 + 3L + L^2) / r^3 (mode 2)
    b3 = geo[6]  # e (1 + L) / r^3 (mode 2)
    sums = np.zeros((nd, 4), dtype=dt)
    sxyz = np.empty((3, m_max), dtype=dt)
    gq = np.empty((nd if has_q else 1, m_max), dtype=dt)
    gd = np.empty((nd if has_d else 1, 3, m_max), dtype=dt)
    for ii in range(i0, i1):
        b = boxes[ii]
        n = 0
        for kk in range(list_offsets[b], list_offsets[b + 1]):
            s = list_index[kk]
            j0 = src_start[s]
            ox = shift[kk, 0]  # sources into the target box's frame
            oy = shift[kk, 1]
            oz = shift[kk, 2]
            for j in range(j0, src_end[s]):
                sxyz[0, n + j - j0] = src_xyz[0, j] - ox
                sxyz[1, n + j - j0] = src_xyz[1, j] - oy
                sxyz[2, n + j - j0] = src_xyz[2, j] - oz
            for d in range(nd):
                if has_q:
                    for j in range(j0, src_end[s]):
                        gq[d, n + j - j0] = q[d, j]
                if has_d:
                    for e in range(3):
                        for j in range(j0, src_end[s]):
                            gd[d, e, n + j - j0] = dip[d, e, j]
            n += src_end[s] - j0
        for i in range(trg_start[b], trg_end[b]):
            xi = trg_xyz[0, i]
            yi = trg_xyz[1, i]
            zi = trg_xyz[2, i]
            for d in range(nd):
                for e in range(4):
                    sums[d, e] = 0.0
            for c0 in range(0, n, P2P_CHUNK):
                c1 = min(c0 + P2P_CHUNK, n)
                m = np.uint64(c1 - c0)
                c0u = np.uint64(c0)
                chk = 0.0
                if fused:  # one charge vector: sum in the pair loop, no stored geometry
                    acc = 0.0
                    gx = 0.0
                    gy = 0.0
                    gz = 0.0
                    if not refine and coarse:
                        if mode == 0:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                dx = xi - sxyz[0, k]
                                dy = yi - sxyz[1, k]
                                dz = zi - sxyz[2, k]
                                r2 = dx * dx + dy * dy + dz * dz
                                invr = inv_sqrt(r2, False)
                                if r2 == 0.0:
                                    invr = 0.0
                                chk += invr
                                acc += gq[0, k] * (vexp_coarse(nlam * (r2 * invr)) * invr)
                        else:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                dx = xi - sxyz[0, k]
                                dy = yi - sxyz[1, k]
                                dz = zi - sxyz[2, k]
                                r2 = dx * dx + dy * dy + dz * dz
                                invr = inv_sqrt(r2, False)
                                if r2 == 0.0:
                                    invr = 0.0
                                chk += invr
                                r = r2 * invr
                                g0 = gq[0, k] * (vexp_coarse(nlam * r) * invr)
                                acc += g0
                                g1 = g0 * (one + lam * r) * (invr * invr)
                                gx -= dx * g1
                                gy -= dy * g1
                                gz -= dz * g1
                    elif not refine:
                        if mode == 0:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                dx = xi - sxyz[0, k]
                                dy = yi - sxyz[1, k]
                                dz = zi - sxyz[2, k]
                                r2 = dx * dx + dy * dy + dz * dz
                                invr = inv_sqrt(r2, False)
                                if r2 == 0.0:
                                    invr = 0.0
                                chk += invr
                                acc += gq[0, k] * (vexp(nlam * (r2 * invr)) * invr)
                        else:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                dx = xi - sxyz[0, k]
                                dy = yi - sxyz[1, k]
                                dz = zi - sxyz[2, k]
                                r2 = dx * dx + dy * dy + dz * dz
                                invr = inv_sqrt(r2, False)
                                if r2 == 0.0:
                                    invr = 0.0
                                chk += invr
                                r = r2 * invr
                                g0 = gq[0, k] * (vexp(nlam * r) * invr)
                                acc += g0
                                g1 = g0 * (one + lam * r) * (invr * invr)
                                gx -= dx * g1
                                gy -= dy * g1
                                gz -= dz * g1
                    if refine or chk != chk:  # exact sqrt: direct sums, or a source too close
                        acc = 0.0         # for the float32 estimate
                        gx = 0.0
                        gy = 0.0
                        gz = 0.0
                        if mode == 0:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                dx = xi - sxyz[0, k]
                                dy = yi - sxyz[1, k]
                                dz = zi - sxyz[2, k]
                                r2 = dx * dx + dy * dy + dz * dz
                                r = np.sqrt(r2)
                                invr = one / r
                                if r2 == 0.0:
                                    invr = 0.0
                                acc += gq[0, k] * (vexp(nlam * r) * invr)
                        else:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                dx = xi - sxyz[0, k]
                                dy = yi - sxyz[1, k]
                                dz = zi - sxyz[2, k]
                                r2 = dx * dx + dy * dy + dz * dz
                                r = np.sqrt(r2)
                                invr = one / r
                                if r2 == 0.0:
                                    invr = 0.0
                                g0 = gq[0, k] * (vexp(nlam * r) * invr)
                                acc += g0
                                g1 = g0 * (one + lam * r) * (invr * invr)
                                gx -= dx * g1
                                gy -= dy * g1
                                gz -= dz * g1
                    sums[0, 0] += acc
                    sums[0, 1] += gx
                    sums[0, 2] += gy
                    sums[0, 3] += gz
                    continue
                if mode == 0:
                    for j in range(np.uint64(0), m):
                        k = c0u + j
                        dx = xi - sxyz[0, k]
                        dy = yi - sxyz[1, k]
                        dz = zi - sxyz[2, k]
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = inv_sqrt(r2, refine)
                        if r2 == 0.0:
                            invr = 0.0
                        chk += invr
                        r = r2 * invr
                        b0[j] = vexp(nlam * r) * invr
                elif mode == 1:
                    for j in range(np.uint64(0), m):
                        k = c0u + j
                        dx = xi - sxyz[0, k]
                        dy = yi - sxyz[1, k]
                        dz = zi - sxyz[2, k]
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = inv_sqrt(r2, refine)
                        if r2 == 0.0:
                            invr = 0.0
                        chk += invr
                        r = r2 * invr
                        g0 = vexp(nlam * r) * invr
                        b0[j] = g0
                        g1 = g0 * (one + lam * r) * (invr * invr)
                        bx[j] = dx * g1
                        by[j] = dy * g1
                        bz[j] = dz * g1
                else:
                    for j in range(np.uint64(0), m):
                        k = c0u + j
                        dx = xi - sxyz[0, k]
                        dy = yi - sxyz[1, k]
                        dz = zi - sxyz[2, k]
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = inv_sqrt(r2, refine)
                        if r2 == 0.0:
                            invr = 0.0
                        chk += invr
                        r = r2 * invr
                        lr = lam * r
                        g0 = vexp(nlam * r) * invr
                        g1 = g0 * (one + lr) * invr
                        b0[j] = g0
                        b1[j] = g1
                        b2[j] = g0 * (three + lr * (three + lr)) * (invr * invr)
                        b3[j] = g1 * invr
                        bx[j] = dx * invr
                        by[j] = dy * invr
                        bz[j] = dz * invr
                if refine or chk != chk:  # exact sqrt: direct sums, or a source too close
                    for j in range(np.uint64(0), m):  # for the float32 estimate
                        k = c0u + j
                        dx = xi - sxyz[0, k]
                        dy = yi - sxyz[1, k]
                        dz = zi - sxyz[2, k]
                        r2 = dx * dx + dy * dy + dz * dz
                        r = np.sqrt(r2)
                        invr = one / r
                        if r2 == 0.0:
                            invr = 0.0
                        lr = lam * r
                        g0 = vexp(nlam * r) * invr
                        ir2 = invr * invr
                        b0[j] = g0
                        if mode == 1:
                            g1 = g0 * (one + lr) * ir2
                            bx[j] = dx * g1
                            by[j] = dy * g1
                            bz[j] = dz * g1
                        elif mode == 2:
                            g1 = g0 * (one + lr) * invr
                            b1[j] = g1
                            b2[j] = g0 * (three + lr * (three + lr)) * ir2
                            b3[j] = g1 * invr
                            bx[j] = dx * invr
                            by[j] = dy * invr
                            bz[j] = dz * invr
                for d in range(nd):
                    acc = 0.0
                    gx = 0.0
                    gy = 0.0
                    gz = 0.0
                    if has_q:
                        if mode == 0:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                acc += gq[d, k] * b0[j]
                        elif mode == 1:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                qj = gq[d, k]
                                acc += qj * b0[j]
                                gx -= qj * bx[j]
                                gy -= qj * by[j]
                                gz -= qj * bz[j]
                        elif do_g:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                qj = gq[d, k]
                                acc += qj * b0[j]
                                g1 = qj * b1[j]
                                gx -= bx[j] * g1
                                gy -= by[j] * g1
                                gz -= bz[j] * g1
                        else:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                acc += gq[d, k] * b0[j]
                    if has_d:
                        if do_g:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                dd = (gd[d, 0, k] * bx[j] + gd[d, 1, k] * by[j]
                                      + gd[d, 2, k] * bz[j])
                                acc += dd * b1[j]
                                g3 = b3[j]
                                t5 = dd * b2[j]
                                gx += gd[d, 0, k] * g3 - t5 * bx[j]
                                gy += gd[d, 1, k] * g3 - t5 * by[j]
                                gz += gd[d, 2, k] * g3 - t5 * bz[j]
                        else:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                acc += (gd[d, 0, k] * bx[j] + gd[d, 1, k] * by[j]
                                        + gd[d, 2, k] * bz[j]) * b1[j]
                    sums[d, 0] += acc
                    sums[d, 1] += gx
                    sums[d, 2] += gy
                    sums[d, 3] += gz
            for d in range(nd):
                pot[d, i] += c * sums[d, 0]
                if do_g:
                    grad[d, 0, i] += c * sums[d, 1]
                    grad[d, 1, i] += c * sums[d, 2]
                    grad[d, 2, i] += c * sums[d, 3]


def yukawa_p2c(src_xyz, q, dip, src_start, src_end, trg_boxes, centers, half_widths,
               list_offsets, list_index, surf, radius, b0, b1, row0, flags, lam, buf, check):
    """check[i - row0, d, m] = Yukawa potential of the listed boxes' sources (density d) at
    x_m(i) = centers[k] + half_widths[trg_boxes[i]] radius surf[:, m] (as ``p2c_multi``)."""
    c = INV4PI
    one = 1.0
    nlam = -lam
    has_q = (flags & 1) != 0
    has_d = (flags & 2) != 0
    nd = check.shape[1]
    n_surf = surf.shape[1]
    bx = buf[0]
    by = buf[1]
    bz = buf[2]
    bg0 = buf[3]  # e / r
    bg1 = buf[4]  # e (1 + L) / r^3
    for i in range(b0, b1):
        b = trg_boxes[i]
        hr = half_widths[b] * radius
        out = check[i - row0]
        for d in range(nd):
            for m in range(n_surf):
                out[d, m] = 0.0
        for m in range(n_surf):
            for kk in range(list_offsets[i], list_offsets[i + 1]):
                s = list_index[kk]
                xm = centers[kk, 0] + hr * surf[0, m]
                ym = centers[kk, 1] + hr * surf[1, m]
                zm = centers[kk, 2] + hr * surf[2, m]
                j0 = src_start[s]
                j1 = src_end[s]
                n = np.uint64(j1 - j0)
                j0u = np.uint64(j0)
                if has_d:
                    for j in range(np.uint64(0), n):
                        k = j0u + j
                        dx = xm - src_xyz[0, k]
                        dy = ym - src_xyz[1, k]
                        dz = zm - src_xyz[2, k]
                        r2 = dx * dx + dy * dy + dz * dz
                        r = np.sqrt(r2)
                        invr = one / r
                        if r2 == 0.0:
                            invr = 0.0
                        g0 = vexp(nlam * r) * invr
                        bx[j] = dx
                        by[j] = dy
                        bz[j] = dz
                        bg0[j] = g0
                        bg1[j] = g0 * (one + lam * r) * (invr * invr)
                else:
                    for j in range(np.uint64(0), n):
                        k = j0u + j
                        dx = xm - src_xyz[0, k]
                        dy = ym - src_xyz[1, k]
                        dz = zm - src_xyz[2, k]
                        r2 = dx * dx + dy * dy + dz * dz
                        r = np.sqrt(r2)
                        invr = one / r
                        if r2 == 0.0:
                            invr = 0.0
                        bg0[j] = vexp(nlam * r) * invr
                for d in range(nd):
                    acc = 0.0
                    if has_q:
                        for j in range(np.uint64(0), n):
                            k = j0u + j
                            acc += q[d, k] * bg0[j]
                    if has_d:
                        for j in range(np.uint64(0), n):
                            k = j0u + j
                            acc += (dip[d, 0, k] * bx[j] + dip[d, 1, k] * by[j]
                                    + dip[d, 2, k] * bz[j]) * bg1[j]
                    out[d, m] += c * acc


def yukawa_s2p(dens, trg_xyz, trg_start, trg_end, trg_boxes, centers, half_widths,
               list_offsets, list_index, surf, radius, b0, b1, flags, lam, buf, pot, grad):
    """pot[d, t] (+ grad[d, :, t]) += Yukawa field of dens[s, d, :] on the surfaces of the
    listed s (surface points centers[k] + half_widths[s] radius surf[:, m], as ``s2p_multi``)."""
    c = INV4PI
    one = 1.0
    nlam = -lam
    do_g = (flags & 4) != 0
    nd = dens.shape[1]
    n_surf = surf.shape[1]
    n = np.uint64(n_surf)
    wx = buf[0]  # d e (1 + L) / r^3 per surface point
    wy = buf[1]
    wz = buf[2]
    bg0 = buf[3]  # e / r
    for i in range(b0, b1):
        b = trg_boxes[i]
        for kk in range(list_offsets[i], list_offsets[i + 1]):
            s = list_index[kk]
            hr = half_widths[s] * radius
            ds = dens[s]
            for t in range(trg_start[b], trg_end[b]):
                xi = trg_xyz[0, t]
                yi = trg_xyz[1, t]
                zi = trg_xyz[2, t]
                if do_g:
                    for m in range(n):
                        dx = xi - (centers[kk, 0] + hr * surf[0, m])
                        dy = yi - (centers[kk, 1] + hr * surf[1, m])
                        dz = zi - (centers[kk, 2] + hr * surf[2, m])
                        r2 = dx * dx + dy * dy + dz * dz
                        r = np.sqrt(r2)
                        invr = one / r
                        if r2 == 0.0:
                            invr = 0.0
                        g0 = vexp(nlam * r) * invr
                        bg0[m] = g0
                        g1 = g0 * (one + lam * r) * (invr * invr)
                        wx[m] = dx * g1
                        wy[m] = dy * g1
                        wz[m] = dz * g1
                else:
                    for m in range(n):
                        dx = xi - (centers[kk, 0] + hr * surf[0, m])
                        dy = yi - (centers[kk, 1] + hr * surf[1, m])
                        dz = zi - (centers[kk, 2] + hr * surf[2, m])
                        r2 = dx * dx + dy * dy + dz * dz
                        r = np.sqrt(r2)
                        invr = one / r
                        if r2 == 0.0:
                            invr = 0.0
                        bg0[m] = vexp(nlam * r) * invr
                for d in range(nd):
                    w = ds[d]
                    acc = 0.0
                    if do_g:
                        gx = 0.0
                        gy = 0.0
                        gz = 0.0
                        for m in range(n):
                            qj = w[m]
                            acc += qj * bg0[m]
                            gx -= qj * wx[m]
                            gy -= qj * wy[m]
                            gz -= qj * wz[m]
                        grad[d, 0, t] += c * gx
                        grad[d, 1, t] += c * gy
                        grad[d, 2, t] += c * gz
                    else:
                        for m in range(n):
                            acc += w[m] * bg0[m]
                    pot[d, t] += c * acc


def yukawa_p2p_sym(xyz, q, start, end, one_offsets, one_index, one_shift, sym_offsets,
                   sym_index, sym_shift, boxes, i0, i1, flags, m_max, lam, pot, grad):
    """Near field of one charge vector when the targets are the sources (Newton's third law):
    pot[i] (+ grad[:, i]) += Yukawa field at point i, for the target boxes boxes[i0:i1].

    The points ``xyz`` (3, n) are both sources and targets, box b holding start[b]:end[b].
    Box b's one-sided list (``one_offsets``/``one_index``, per entry the shift of the source
    box's points into b's frame, as in ``yukawa_p2p``) acts on b's points only: b itself, and
    pairs whose mirror is not in the near field. Its symmetric list (``sym_*``) holds boxes s
    whose pair with b is computed once, here: each pair value is used for the point in b and,
    with the sign of d reversed for the gradient, for the point in s. So ``pot``/``grad``
    receive sums for points outside boxes[i0:i1]; callers running ranges in parallel give each
    thread its own output arrays (added up afterwards). flags: 4 gradient; 8 exact 1/r (direct
    sums); 16 exp to ~1e-11 (``vexp_coarse``: for the near field at eps >= 1e-8). ``m_max``
    >= the points of any box's one-sided list and of its symmetric list.

    1/r is ``inv_sqrt`` (float32 estimate and one Newton step) unless flag 8; a box where a pair
    is too close for the estimate (NaN) is redone with the exact sqrt, which is possible because
    each box's sums are built in scratch and added to ``pot``/``grad`` at the end."""
    c = INV4PI
    one = 1.0
    nlam = -lam
    do_g = (flags & 4) != 0
    exact0 = (flags & 8) != 0
    coarse = (flags & 16) != 0
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
            for e in range(4):
                for j in range(n2):
                    o2[e, j] = 0.0
                for i in range(nt):
                    ob[e, i] = 0.0
            chk = 0.0
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
            for i in range(nt):
                xi = xyz[0, t0 + i]
                yi = xyz[1, t0 + i]
                zi = xyz[2, t0 + i]
                qi = q[t0 + i]
                acc = 0.0
                gx = 0.0
                gy = 0.0
                gz = 0.0
                if not exact and coarse:
                    if not do_g:
                        for j in range(np.uint64(0), m1):
                            dx = xi - sx[j]
                            dy = yi - sy[j]
                            dz = zi - sz[j]
                            r2 = dx * dx + dy * dy + dz * dz
                            invr = inv_sqrt(r2, False)
                            if r2 == 0.0:
                                invr = 0.0
                            chk += invr
                            acc += qs[j] * (vexp_coarse(nlam * (r2 * invr)) * invr)
                        for j in range(np.uint64(0), m2):
                            dx = xi - tx[j]
                            dy = yi - ty[j]
                            dz = zi - tz[j]
                            r2 = dx * dx + dy * dy + dz * dz
                            invr = inv_sqrt(r2, False)
                            if r2 == 0.0:
                                invr = 0.0
                            chk += invr
                            g0 = vexp_coarse(nlam * (r2 * invr)) * invr
                            acc += qt[j] * g0
                            p2[j] += qi * g0
                    else:
                        for j in range(np.uint64(0), m1):
                            dx = xi - sx[j]
                            dy = yi - sy[j]
                            dz = zi - sz[j]
                            r2 = dx * dx + dy * dy + dz * dz
                            invr = inv_sqrt(r2, False)
                            if r2 == 0.0:
                                invr = 0.0
                            chk += invr
                            r = r2 * invr
                            g0 = qs[j] * (vexp_coarse(nlam * r) * invr)
                            acc += g0
                            g1 = g0 * (one + lam * r) * (invr * invr)
                            gx -= dx * g1
                            gy -= dy * g1
                            gz -= dz * g1
                        for j in range(np.uint64(0), m2):
                            dx = xi - tx[j]
                            dy = yi - ty[j]
                            dz = zi - tz[j]
                            r2 = dx * dx + dy * dy + dz * dz
                            invr = inv_sqrt(r2, False)
                            if r2 == 0.0:
                                invr = 0.0
                            chk += invr
                            r = r2 * invr
                            g0 = vexp_coarse(nlam * r) * invr
                            g1 = g0 * (one + lam * r) * (invr * invr)
                            qj = qt[j]
                            acc += qj * g0
                            p2[j] += qi * g0
                            t5 = qj * g1
                            gx -= dx * t5
                            gy -= dy * t5
                            gz -= dz * t5
                            t5 = qi * g1
                            px[j] += dx * t5
                            py[j] += dy * t5
                            pz[j] += dz * t5
                elif not exact:
                    if not do_g:
                        for j in range(np.uint64(0), m1):
                            dx = xi - sx[j]
                            dy = yi - sy[j]
                            dz = zi - sz[j]
                            r2 = dx * dx + dy * dy + dz * dz
                            invr = inv_sqrt(r2, False)
                            if r2 == 0.0:
                                invr = 0.0
                            chk += invr
                            acc += qs[j] * (vexp(nlam * (r2 * invr)) * invr)
                        for j in range(np.uint64(0), m2):
                            dx = xi - tx[j]
                            dy = yi - ty[j]
                            dz = zi - tz[j]
                            r2 = dx * dx + dy * dy + dz * dz
                            invr = inv_sqrt(r2, False)
                            if r2 == 0.0:
                                invr = 0.0
                            chk += invr
                            g0 = vexp(nlam * (r2 * invr)) * invr
                            acc += qt[j] * g0
                            p2[j] += qi * g0
                    else:
                        for j in range(np.uint64(0), m1):
                            dx = xi - sx[j]
                            dy = yi - sy[j]
                            dz = zi - sz[j]
                            r2 = dx * dx + dy * dy + dz * dz
                            invr = inv_sqrt(r2, False)
                            if r2 == 0.0:
                                invr = 0.0
                            chk += invr
                            r = r2 * invr
                            g0 = qs[j] * (vexp(nlam * r) * invr)
                            acc += g0
                            g1 = g0 * (one + lam * r) * (invr * invr)
                            gx -= dx * g1
                            gy -= dy * g1
                            gz -= dz * g1
                        for j in range(np.uint64(0), m2):
                            dx = xi - tx[j]
                            dy = yi - ty[j]
                            dz = zi - tz[j]
                            r2 = dx * dx + dy * dy + dz * dz
                            invr = inv_sqrt(r2, False)
                            if r2 == 0.0:
                                invr = 0.0
                            chk += invr
                            r = r2 * invr
                            g0 = vexp(nlam * r) * invr
                            g1 = g0 * (one + lam * r) * (invr * invr)
                            qj = qt[j]
                            acc += qj * g0
                            p2[j] += qi * g0
                            t5 = qj * g1
                            gx -= dx * t5
                            gy -= dy * t5
                            gz -= dz * t5
                            t5 = qi * g1
                            px[j] += dx * t5
                            py[j] += dy * t5
                            pz[j] += dz * t5
                else:
                    for j in range(np.uint64(0), m1):
                        dx = xi - sx[j]
                        dy = yi - sy[j]
                        dz = zi - sz[j]
                        r2 = dx * dx + dy * dy + dz * dz
                        r = np.sqrt(r2)
                        invr = one / r
                        if r2 == 0.0:
                            invr = 0.0
                        g0 = qs[j] * (vexp(nlam * r) * invr)
                        acc += g0
                        g1 = g0 * (one + lam * r) * (invr * invr)
                        gx -= dx * g1
                        gy -= dy * g1
                        gz -= dz * g1
                    for j in range(np.uint64(0), m2):
                        dx = xi - tx[j]
                        dy = yi - ty[j]
                        dz = zi - tz[j]
                        r2 = dx * dx + dy * dy + dz * dz
                        r = np.sqrt(r2)
                        invr = one / r
                        if r2 == 0.0:
                            invr = 0.0
                        g0 = vexp(nlam * r) * invr
                        g1 = g0 * (one + lam * r) * (invr * invr)
                        qj = qt[j]
                        acc += qj * g0
                        p2[j] += qi * g0
                        t5 = qj * g1
                        gx -= dx * t5
                        gy -= dy * t5
                        gz -= dz * t5
                        t5 = qi * g1
                        px[j] += dx * t5
                        py[j] += dy * t5
                        pz[j] += dz * t5
                ob[0, i] = acc
                ob[1, i] = gx
                ob[2, i] = gy
                ob[3, i] = gz
            if exact or chk == chk:
                break
            exact = True  # a pair too close for the float32 estimate: redo the box exactly
        scatter_sym(c, ob, o2, gidx, t0, nt, n2, do_g, pot, grad)
