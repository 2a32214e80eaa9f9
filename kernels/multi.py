"""Several densities at once, and dipole sources: P2P, P2C (P2M/P2L) and S2P (L2P/M2P).

The single-charge-vector kernels of ``p2p.py``/``expansions.py`` fuse the distance and the sum.
Here, for one target and its sources, the geometry (1/r and the powers and vectors a case needs,
see ``p2p_multi``) goes into a scratch buffer once, and then the ``nd`` densities are vectorised
passes over it, four densities of one kind per pass (two with gradients; the rest one by one): k
densities cost one 1/r per pair plus k multiply-adds, not k square roots.

Sources of a box may carry charges ``q`` (nd, n) and/or dipoles ``dip`` (nd, 3, n), chosen by the
bits of ``flags``: 1 charges, 2 dipoles, 4 gradient (P2P/S2P only), 8 full-accuracy 1/r (P2P
only: direct sums; without it float64 1/r carries ~1e-14 relative error, see ``_inline``). Arrays of a term that is off
are not read (pass any (1, 1) / (1, 1, 1) array). The field of a dipole d at y on x is
d . grad_y G(x, y) = d . (x - y) / (4 pi r^3), its gradient in x is
(d / r^3 - 3 (d . (x - y)) (x - y) / r^5) / (4 pi). Coincident pairs (r = 0) contribute 0.

Layouts: pot (nd, n_targets), grad (nd, 3, n_targets), check (n_rows, nd, n_surf),
dens (n_boxes, nd, n_surf). ``buf`` (6, >= largest source box) is per-call scratch (OUT).
1/r is ``_inline.inv_sqrt``; P2P redoes a target's geometry exactly when a source is too close
for its float32 estimate.
Box/list conventions as in ``p2p.py`` (P2P: CSR over box ids, per-entry ``shift`` between
box-local frames) and ``expansions.py`` (P2C/S2P: CSR over rows, ``centers`` per list entry).
"""
import numpy as np

from ._inline import charge_sweep2, inv_sqrt

INV4PI = 0.07957747154594767  # 1 / (4 pi)

SIGNATURES = {
    # IN src_xyz, IN q (nd, n), IN dip (nd, 3, n), IN trg_xyz, IN src_start, IN src_end,
    # IN trg_start, IN trg_end, IN list_offsets, IN list_index, IN shift (n_entries, 3),
    # IN boxes, IN i0, IN i1, IN flags, IN m_max (>= sources of any listed box's list),
    # INOUT pot (nd, n_trg), INOUT grad (nd, 3, n_trg)
    "p2p_multi": "void({F}[:, ::1], {F}[:, ::1], {F}[:, :, ::1], {F}[:, ::1], i8[::1], i8[::1],"
                 " i8[::1], i8[::1], i8[::1], i8[::1], {F}[:, ::1], i8[::1], i8, i8, i8, i8,"
                 " {F}[:, ::1], {F}[:, :, ::1])",
    # IN src_xyz, IN q, IN dip, IN src_start, IN src_end, IN trg_boxes, IN centers,
    # IN half_widths, IN list_offsets, IN list_index, IN surf (3, n_surf), IN radius, IN b0,
    # IN b1, IN row0, IN flags, OUT buf (6, m), OUT check (n_rows, nd, n_surf)
    "p2c_multi": "void({F}[:, ::1], {F}[:, ::1], {F}[:, :, ::1], i8[::1], i8[::1], i8[::1],"
                 " {F}[:, ::1], {F}[::1], i8[::1], i8[::1], {F}[:, ::1], {F}, i8, i8, i8, i8,"
                 " {F}[:, ::1], {F}[:, :, ::1])",
    # IN dens (n_boxes, nd, n_surf), IN trg_xyz, IN trg_start, IN trg_end, IN trg_boxes,
    # IN centers, IN half_widths, IN list_offsets, IN list_index, IN surf, IN radius, IN b0,
    # IN b1, IN flags (4: gradient), OUT buf (6, n_surf), INOUT pot, INOUT grad
    "s2p_multi": "void({F}[:, :, ::1], {F}[:, ::1], i8[::1], i8[::1], i8[::1], {F}[:, ::1],"
                 " {F}[::1], i8[::1], i8[::1], {F}[:, ::1], {F}, i8, i8, i8, {F}[:, ::1],"
                 " {F}[:, ::1], {F}[:, :, ::1])",
}

_ACC = {"c": "{F}", "one": "{F}", "three": "{F}", "acc": "{F}", "gx": "{F}", "gy": "{F}",
        "i2": "{F}", "ux": "{F}", "uy": "{F}", "uz": "{F}",
        "gz": "{F}", "r2": "{F}", "invr": "{F}", "i3": "{F}", "dd": "{F}", "t5": "{F}",
        "qj": "{F}", "chk": "{F}", "ox": "{F}", "oy": "{F}", "oz": "{F}"}
#: the four-density sweep's accumulators and per-pair values (p2p_multi)
_SUMS4 = {f"{v}{i}": "{F}" for v in "axyz" for i in range(4)}
_ACC4 = dict(_SUMS4)
_ACC4.update(w="{F}", wx="{F}", wy="{F}", wz="{F}", u="{F}", u0="{F}", u1="{F}",
             u2="{F}", vx="{F}", vy="{F}", vz="{F}")
LOCALS = {
    "p2p_multi": dict(_ACC, **_ACC4),
    "p2c_multi": dict(_ACC, **_ACC4, hr="{F}", xm="{F}", ym="{F}", zm="{F}"),
    "s2p_multi": dict(_ACC, **_SUMS4, hr="{F}", u="{F}", v="{F}", vx="{F}", vy="{F}",
                      vz="{F}"),
}


#: Sources per geometry chunk in p2p_multi: its scratch (6 x 256 x 8 B) stays in L1 while the
#: densities sweep it (a whole list's geometry, ~5000 sources, spilled to L2 and ran 2x slower).
P2P_CHUNK = 256


def p2p_multi(src_xyz, q, dip, trg_xyz, src_start, src_end, trg_start, trg_end, list_offsets,
              list_index, shift, boxes, i0, i1, flags, m_max, pot, grad):
    """pot[d, i] (+ grad[d, :, i]) += field of the listed boxes' charges/dipoles of density d.

    Per target box, the sources of its whole list (at most ``m_max``) are first gathered into
    contiguous scratch (coordinates, densities). Each target then walks them in chunks of
    ``P2P_CHUNK``: the chunk's geometry once, then vectorised sweeps over it, four densities
    per sweep (two with gradients) when they are all charges or all dipoles, the rest one per
    sweep. Only the
    geometry a case needs is stored: 1/r (charges, potential); 1/r and (x - y)/r^3 (charges,
    gradient); with dipoles 1/r, the unit vector u = (x - y)/r and 1/r^2, and with the
    gradient also 1/r^3. A dipole's potential is then (d . u)/r^2 and its gradient
    (d - 3 (d . u) u)/r^3: no intermediate exceeds 1/r^3 (with (x - y) and 1/r^5 the
    float32 gradient overflowed for pairs 1e-8 apart, where the field itself fits)."""
    c = INV4PI
    three = 3.0
    has_q = (flags & 1) != 0
    has_d = (flags & 2) != 0
    do_g = (flags & 4) != 0
    refine = (flags & 8) != 0
    mode = (3 if do_g else 2) if has_d else (1 if do_g else 0)
    nd = pot.shape[0]
    # densities of one kind go in groups: four a sweep for potentials, two with gradients (four
    # gradients' 16 accumulators overflowed AVX2's 16 vector registers: the spills made k = 8
    # dipoles with gradients 1.2x and float32 charges 2x slower than two a sweep)
    one_kind = has_q != has_d
    nb4 = (nd // 4) * 4 if one_kind and not do_g else 0
    nb2 = nb4 + ((nd - nb4) // 2) * 2 if one_kind and do_g else nb4
    dt = src_xyz.dtype
    geo = np.empty((6, P2P_CHUNK), dtype=dt)
    bx = geo[0]  # (x - y) / r^3 in mode 1, u = (x - y) / r in modes 2 and 3 (dipoles)
    by = geo[1]
    bz = geo[2]
    b1 = geo[3]  # 1 / r
    b2 = geo[4]  # 1 / r^2 (modes 2, 3)
    b3 = geo[5]  # 1 / r^3 (mode 3: dipoles and the gradient)
    sums = np.zeros((nd, 4), dtype=dt)
    sxyz = np.empty((3, m_max), dtype=dt)
    gq = np.empty((nd if has_q else 1, m_max), dtype=dt)
    gd = np.empty((3 * nd if has_d else 1, m_max), dtype=dt)  # rows 3d, 3d + 1, 3d + 2
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
                            gd[3 * d + e, n + j - j0] = dip[d, e, j]
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
                        b1[j] = invr
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
                        b1[j] = invr
                        i3 = invr * invr * invr
                        bx[j] = dx * i3
                        by[j] = dy * i3
                        bz[j] = dz * i3
                elif mode == 2:
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
                        b1[j] = invr
                        bx[j] = dx * invr
                        by[j] = dy * invr
                        bz[j] = dz * invr
                        b2[j] = invr * invr
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
                        b1[j] = invr
                        ux = dx * invr
                        uy = dy * invr
                        uz = dz * invr
                        bx[j] = ux
                        by[j] = uy
                        bz[j] = uz
                        i2 = invr * invr
                        b2[j] = i2
                        b3[j] = i2 * invr
                if chk != chk:  # a source too close for the float32 estimate: redo exactly
                    for j in range(np.uint64(0), m):
                        k = c0u + j
                        dx = xi - sxyz[0, k]
                        dy = yi - sxyz[1, k]
                        dz = zi - sxyz[2, k]
                        r2 = dx * dx + dy * dy + dz * dz
                        invr = 0.0
                        if r2 > 0.0:
                            invr = 1.0 / np.sqrt(r2)
                        b1[j] = invr
                        i3 = invr * invr * invr
                        if mode == 1:
                            bx[j] = dx * i3
                            by[j] = dy * i3
                            bz[j] = dz * i3
                        elif mode >= 2:
                            ux = dx * invr
                            uy = dy * invr
                            uz = dz * invr
                            bx[j] = ux
                            by[j] = uy
                            bz[j] = uz
                            i2 = invr * invr
                            b2[j] = i2
                            b3[j] = i2 * invr
                for d in range(0, nb4, 4):  # four densities per sweep: the geometry is
                    # loaded once for four (L1 loads, not FMAs, bound the one-density sweeps)
                    r = 3 * d
                    a0 = 0.0
                    a1 = 0.0
                    a2 = 0.0
                    a3 = 0.0
                    if has_q:
                        for j in range(np.uint64(0), m):
                            k = c0u + j
                            w = b1[j]
                            a0 += gq[d, k] * w
                            a1 += gq[d + 1, k] * w
                            a2 += gq[d + 2, k] * w
                            a3 += gq[d + 3, k] * w
                    else:
                        for j in range(np.uint64(0), m):
                            k = c0u + j
                            wx = bx[j]
                            wy = by[j]
                            wz = bz[j]
                            i2 = b2[j]
                            a0 += (gd[r, k] * wx + gd[r + 1, k] * wy + gd[r + 2, k] * wz) * i2
                            a1 += (gd[r + 3, k] * wx + gd[r + 4, k] * wy + gd[r + 5, k] * wz) * i2
                            a2 += (gd[r + 6, k] * wx + gd[r + 7, k] * wy + gd[r + 8, k] * wz) * i2
                            a3 += (gd[r + 9, k] * wx + gd[r + 10, k] * wy
                                   + gd[r + 11, k] * wz) * i2
                    sums[d, 0] += a0
                    sums[d + 1, 0] += a1
                    sums[d + 2, 0] += a2
                    sums[d + 3, 0] += a3
                for d in range(nb4, nb2, 2):  # with gradients: two densities per sweep
                    r = 3 * d
                    a0 = 0.0
                    a1 = 0.0
                    x0 = 0.0
                    x1 = 0.0
                    y0 = 0.0
                    y1 = 0.0
                    z0 = 0.0
                    z1 = 0.0
                    if has_q:
                        a0, x0, y0, z0, a1, x1, y1, z1 = charge_sweep2(
                            b1, bx, by, bz, gq, d, c0u, m)
                    else:
                        for j in range(np.uint64(0), m):
                            k = c0u + j
                            wx = bx[j]
                            wy = by[j]
                            wz = bz[j]
                            i2 = b2[j]
                            i3 = b3[j]
                            u0 = gd[r, k]
                            u1 = gd[r + 1, k]
                            u2 = gd[r + 2, k]
                            dd = u0 * wx + u1 * wy + u2 * wz
                            a0 += dd * i2
                            t5 = three * dd
                            x0 += (u0 - t5 * wx) * i3
                            y0 += (u1 - t5 * wy) * i3
                            z0 += (u2 - t5 * wz) * i3
                            u0 = gd[r + 3, k]
                            u1 = gd[r + 4, k]
                            u2 = gd[r + 5, k]
                            dd = u0 * wx + u1 * wy + u2 * wz
                            a1 += dd * i2
                            t5 = three * dd
                            x1 += (u0 - t5 * wx) * i3
                            y1 += (u1 - t5 * wy) * i3
                            z1 += (u2 - t5 * wz) * i3
                    sums[d, 0] += a0
                    sums[d, 1] += x0
                    sums[d, 2] += y0
                    sums[d, 3] += z0
                    sums[d + 1, 0] += a1
                    sums[d + 1, 1] += x1
                    sums[d + 1, 2] += y1
                    sums[d + 1, 3] += z1
                for d in range(nb2, nd):
                    r = 3 * d
                    acc = 0.0
                    gx = 0.0
                    gy = 0.0
                    gz = 0.0
                    if has_q:
                        if mode == 0:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                acc += gq[d, k] * b1[j]
                        elif mode == 1:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                qj = gq[d, k]
                                acc += qj * b1[j]
                                gx -= qj * bx[j]
                                gy -= qj * by[j]
                                gz -= qj * bz[j]
                        elif do_g:  # with dipoles: bx.. hold u, b2 1/r^2
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                qj = gq[d, k]
                                acc += qj * b1[j]
                                i3 = qj * b2[j]
                                gx -= bx[j] * i3
                                gy -= by[j] * i3
                                gz -= bz[j] * i3
                        else:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                acc += gq[d, k] * b1[j]
                    if has_d:
                        if do_g:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                dd = gd[r, k] * bx[j] + gd[r + 1, k] * by[j] + gd[r + 2, k] * bz[j]
                                acc += dd * b2[j]
                                i3 = b3[j]
                                t5 = three * dd
                                gx += (gd[r, k] - t5 * bx[j]) * i3
                                gy += (gd[r + 1, k] - t5 * by[j]) * i3
                                gz += (gd[r + 2, k] - t5 * bz[j]) * i3
                        else:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                acc += (gd[r, k] * bx[j] + gd[r + 1, k] * by[j]
                                        + gd[r + 2, k] * bz[j]) * b2[j]
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


def p2c_multi(src_xyz, q, dip, src_start, src_end, trg_boxes, centers, half_widths,
              list_offsets, list_index, surf, radius, b0, b1, row0, flags, buf, check):
    """check[i - row0, d, m] = potential of the listed boxes' sources (density d) at x_m(i)."""
    c = INV4PI
    has_q = (flags & 1) != 0
    has_d = (flags & 2) != 0
    nd = check.shape[1]
    nb4 = (nd // 4) * 4 if has_q != has_d else 0  # densities swept four at a time
    n_surf = surf.shape[1]
    bx = buf[0]
    by = buf[1]
    bz = buf[2]
    bi = buf[3]
    b3 = buf[4]
    # sources and densities read in place (k = j0u + j), never through views: a view costs an
    # atomic reference count pair, here per surface point and listed box
    dip2 = dip.reshape(dip.shape[0] * dip.shape[1], dip.shape[2])  # rows 3d, 3d + 1, 3d + 2
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
                for j in range(np.uint64(0), n):
                    k = j0u + j
                    dx = xm - src_xyz[0, k]
                    dy = ym - src_xyz[1, k]
                    dz = zm - src_xyz[2, k]
                    r2 = dx * dx + dy * dy + dz * dz
                    invr = inv_sqrt(r2, 0)
                    if r2 == 0.0:
                        invr = 0.0
                    bx[j] = dx
                    by[j] = dy
                    bz[j] = dz
                    bi[j] = invr
                    b3[j] = invr * invr * invr
                for d in range(0, nb4, 4):  # four densities per sweep (see p2p_multi)
                    r = 3 * d
                    a0 = 0.0
                    a1 = 0.0
                    a2 = 0.0
                    a3 = 0.0
                    if has_q:
                        for j in range(np.uint64(0), n):
                            k = j0u + j
                            w = bi[j]
                            a0 += q[d, k] * w
                            a1 += q[d + 1, k] * w
                            a2 += q[d + 2, k] * w
                            a3 += q[d + 3, k] * w
                    else:
                        for j in range(np.uint64(0), n):
                            k = j0u + j
                            wx = bx[j]
                            wy = by[j]
                            wz = bz[j]
                            i3 = b3[j]
                            a0 += (dip2[r, k] * wx + dip2[r + 1, k] * wy
                                   + dip2[r + 2, k] * wz) * i3
                            a1 += (dip2[r + 3, k] * wx + dip2[r + 4, k] * wy
                                   + dip2[r + 5, k] * wz) * i3
                            a2 += (dip2[r + 6, k] * wx + dip2[r + 7, k] * wy
                                   + dip2[r + 8, k] * wz) * i3
                            a3 += (dip2[r + 9, k] * wx + dip2[r + 10, k] * wy
                                   + dip2[r + 11, k] * wz) * i3
                    out[d, m] += c * a0
                    out[d + 1, m] += c * a1
                    out[d + 2, m] += c * a2
                    out[d + 3, m] += c * a3
                for d in range(nb4, nd):
                    r = 3 * d
                    acc = 0.0
                    if has_q:
                        for j in range(np.uint64(0), n):
                            k = j0u + j
                            acc += q[d, k] * bi[j]
                    if has_d:
                        for j in range(np.uint64(0), n):
                            k = j0u + j
                            acc += (dip2[r, k] * bx[j] + dip2[r + 1, k] * by[j]
                                    + dip2[r + 2, k] * bz[j]) * b3[j]
                    out[d, m] += c * acc


def s2p_multi(dens, trg_xyz, trg_start, trg_end, trg_boxes, centers, half_widths, list_offsets,
              list_index, surf, radius, b0, b1, flags, buf, pot, grad):
    """pot[d, t] (+ grad[d, :, t]) += field of dens[s, d, :] on the surfaces of the listed s."""
    c = INV4PI
    do_g = (flags & 4) != 0
    nd = dens.shape[1]
    nb4 = (nd // 4) * 4 if not do_g else 0  # four densities a sweep, two with gradients
    nb2 = nb4 + ((nd - nb4) // 2) * 2 if do_g else nb4  # (see p2p_multi)
    n_surf = surf.shape[1]
    n = np.uint64(n_surf)
    wx = buf[0]  # (x - y) / r^3 per surface point
    wy = buf[1]
    wz = buf[2]
    bi = buf[3]  # 1 / r
    for i in range(b0, b1):
        b = trg_boxes[i]
        for kk in range(list_offsets[i], list_offsets[i + 1]):
            s = list_index[kk]
            hr = half_widths[s] * radius
            ds = dens[s]
            for t in range(trg_start[b], trg_end[b]):
                xt = trg_xyz[0, t]
                yt = trg_xyz[1, t]
                zt = trg_xyz[2, t]
                for m in range(n):
                    dx = xt - (centers[kk, 0] + hr * surf[0, m])
                    dy = yt - (centers[kk, 1] + hr * surf[1, m])
                    dz = zt - (centers[kk, 2] + hr * surf[2, m])
                    r2 = dx * dx + dy * dy + dz * dz
                    invr = inv_sqrt(r2, 0)
                    if r2 == 0.0:
                        invr = 0.0
                    bi[m] = invr
                    i3 = invr * invr * invr
                    wx[m] = dx * i3
                    wy[m] = dy * i3
                    wz[m] = dz * i3
                for d in range(0, nb4, 4):  # four densities per sweep (see p2p_multi)
                    a0 = 0.0
                    a1 = 0.0
                    a2 = 0.0
                    a3 = 0.0
                    for m in range(n):
                        v = bi[m]
                        a0 += ds[d, m] * v
                        a1 += ds[d + 1, m] * v
                        a2 += ds[d + 2, m] * v
                        a3 += ds[d + 3, m] * v
                    pot[d, t] += c * a0
                    pot[d + 1, t] += c * a1
                    pot[d + 2, t] += c * a2
                    pot[d + 3, t] += c * a3
                for d in range(nb4, nb2, 2):  # with gradients: two densities per sweep
                    a0, x0, y0, z0, a1, x1, y1, z1 = charge_sweep2(bi, wx, wy, wz, ds, d, 0,
                                                                   n)
                    pot[d, t] += c * a0
                    pot[d + 1, t] += c * a1
                    grad[d, 0, t] += c * x0
                    grad[d, 1, t] += c * y0
                    grad[d, 2, t] += c * z0
                    grad[d + 1, 0, t] += c * x1
                    grad[d + 1, 1, t] += c * y1
                    grad[d + 1, 2, t] += c * z1
                for d in range(nb2, nd):
                    acc = 0.0
                    if do_g:
                        gx = 0.0
                        gy = 0.0
                        gz = 0.0
                        for m in range(n):
                            qj = ds[d, m]
                            acc += qj * bi[m]
                            gx -= qj * wx[m]
                            gy -= qj * wy[m]
                            gz -= qj * wz[m]
                        grad[d, 0, t] += c * gx
                        grad[d, 1, t] += c * gy
                        grad[d, 2, t] += c * gz
                    else:
                        for m in range(n):
                            acc += ds[d, m] * bi[m]
                    pot[d, t] += c * acc
