"""Point <-> surface sums of the KIFMM (P2M, P2L, L2P, M2P) and M2L's gather/scatter.

Boxes: ``half_widths`` (n_boxes,) and, per list entry ``k``, ``centers[k]`` (n_entries, 3): the
centre of the surface that entry involves, in the frame of that entry's points (points may be
local to their box, see ``p2p.py``). The surface of radius ``radius`` is
``centers[k] + half_widths[b] * radius * surf[:, m]`` with ``surf`` the unit surface as
(3, n_surf), b the box owning the surface; it is generated on the fly, never stored per box. Points are SoA
(3, n), sorted by box: box ``b`` owns ``start[b]:end[b]``.

Rows ``b0 <= i < b1`` of a call are target boxes ``trg_boxes[i]``; each interacts with the boxes
``list_index[list_offsets[i]:list_offsets[i + 1]]`` (CSR over rows, not over box ids). P2M is
the special case "list = the box itself".

* ``p2c_pot``: check[i, m] = sum over listed boxes s, sources j of s: q_j G(x_m(i), y_j)
  (OUT, overwritten) -- P2M (upward check, list = self) and P2L (downward check, X list).
* ``s2p_pot`` / ``s2p_potgrad``: pot[t] += sum over listed boxes s, surface points m:
  dens[s, m] G(x_t, y_m(s)) (and the gradient) for the targets t of trg_boxes[i] -- L2P
  (downward equivalent of the box itself) and M2P (upward equivalent of the W list).
* ``m2l_gather`` / ``m2l_scatter``: row gather ``out[r - i0] = src[idx[r]]`` and row scatter-add
  ``z[idx[r]] += y[r - i0]`` for i0 <= r < i1, around M2L's per-transfer-vector GEMMs.
* ``m2l_gather_cols``: the column blocks of M2L's octant products, one per V-list pair: for
  pair r, ``w = cm * width[vec[r]]`` values of each of ``nd`` rows, from ``src`` (rows
  ``srow[r] * nd + d``, columns from ``cm * col_src[vec[r]]``) into ``dst`` (rows
  ``drow[r] * nd + d``, columns from ``cm * col_dst[vec[r]]``); ``cm`` = 2 for complex values
  seen as float pairs.

1/r uses ``_inline.inv_sqrt`` with one Newton step in float64 (relative error ~1e-14, far below
what any expansion order resolves). Point-surface distances are bounded below by the box size
(the surfaces keep clear of the boxes whose points they meet), so its tiny-r2 NaN never arises.
"""
import numpy as np

from ._inline import inv_sqrt

INV4PI = 0.07957747154594767  # 1 / (4 pi)

SIGNATURES = {
    # IN src_xyz, IN charges, IN src_start, IN src_end, IN trg_boxes, IN centers, IN half_widths,
    # IN list_offsets, IN list_index, IN surf (3, n_surf), IN radius, IN b0, IN b1,
    # OUT check (n_rows, n_surf): row i - row0 holds box trg_boxes[i]; IN row0
    "p2c_pot": "void({F}[:, ::1], {F}[::1], i8[::1], i8[::1], i8[::1], {F}[:, ::1], {F}[::1],"
               " i8[::1], i8[::1], {F}[:, ::1], {F}, i8, i8, i8, {F}[:, ::1])",
    # IN dens (n_boxes, n_surf), IN trg_xyz, IN trg_start, IN trg_end, IN trg_boxes, IN centers,
    # IN half_widths, IN list_offsets, IN list_index, IN surf, IN radius, IN b0, IN b1, INOUT pot
    "s2p_pot": "void({F}[:, ::1], {F}[:, ::1], i8[::1], i8[::1], i8[::1], {F}[:, ::1],"
               " {F}[::1], i8[::1], i8[::1], {F}[:, ::1], {F}, i8, i8, {F}[::1])",
    # ... INOUT pot, INOUT grad (3, n_targets)
    "s2p_potgrad": "void({F}[:, ::1], {F}[:, ::1], i8[::1], i8[::1], i8[::1], {F}[:, ::1],"
                   " {F}[::1], i8[::1], i8[::1], {F}[:, ::1], {F}, i8, i8, {F}[::1],"
                   " {F}[:, ::1])",
    # IN trg_xyz, IN trg_start, IN trg_end, IN leaves, IN offsets (n_boxes, 3) f8,
    # IN reg (n_leaves, 4) f8, IN l0, IN l1, IN flags (4 gradient), INOUT pot, INOUT grad
    "l2p_regular": "void({F}[:, ::1], i8[::1], i8[::1], i8[::1], f8[:, ::1], f8[:, ::1], i8, i8,"
                   " i8, {F}[::1], {F}[:, ::1])",
    # IN src (n, k), IN idx, IN i0, IN i1, OUT out (>= i1 - i0, k)
    "m2l_gather": "void({F}[:, ::1], i8[::1], i8, i8, {F}[:, ::1])",
    # IN y (>= i1 - i0, k), IN idx, IN i0, IN i1, INOUT z (n, k)
    "m2l_scatter": "void({F}[:, ::1], i8[::1], i8, i8, {F}[:, ::1])",
    # IN src (n_s * nd, >= max col_src + width), INOUT dst (n_w * nd, >= max col_dst + width),
    # IN srow, IN drow, IN vec (per pair), IN col_src, IN col_dst, IN width (per vector),
    # IN nd, IN cm, IN i0, IN i1
    "m2l_gather_cols": "void({F}[:, ::1], {F}[:, ::1], i8[::1], i8[::1], i8[::1], i8[::1],"
                       " i8[::1], i8[::1], i8, i8, i8, i8)",
}

LOCALS = {
    "p2c_pot": {"c": "{F}", "acc": "{F}", "r2": "{F}", "invr": "{F}",
                "hr": "{F}", "xm": "{F}", "ym": "{F}", "zm": "{F}"},
    "s2p_pot": {name: "{F}" for name in ("c", "hr", "x", "y", "z") + tuple(
        name + ab for ab in "abcd" for name in (
            "x", "y", "z", "q", "dx", "dy", "dz", "r2", "invr", "qinvr"))},
    "s2p_potgrad": {name: "{F}" for name in ("c", "hr", "x", "y", "z") + tuple(
        name + ab for ab in "abcd" for name in (
            "x", "y", "z", "q", "dx", "dy", "dz", "r2", "invr", "qinvr", "invr3"))},
}


def p2c_pot(src_xyz, charges, src_start, src_end, trg_boxes, centers, half_widths,
            list_offsets, list_index, surf, radius, b0, b1, row0, check):
    """check[i - row0, m] = sum_s sum_j q_j / (4 pi |x_m - y_j|), x_m = c_k + h_i r surf_m."""
    c = INV4PI
    sx = src_xyz[0]
    sy = src_xyz[1]
    sz = src_xyz[2]
    n_surf = surf.shape[1]
    for i in range(b0, b1):
        b = trg_boxes[i]
        hr = half_widths[b] * radius
        for m in range(n_surf):
            acc = 0.0
            for k in range(list_offsets[i], list_offsets[i + 1]):
                s = list_index[k]
                xm = centers[k, 0] + hr * surf[0, m]
                ym = centers[k, 1] + hr * surf[1, m]
                zm = centers[k, 2] + hr * surf[2, m]
                for j in range(np.uint64(src_start[s]), np.uint64(src_end[s])):
                    dx = xm - sx[j]
                    dy = ym - sy[j]
                    dz = zm - sz[j]
                    r2 = dx * dx + dy * dy + dz * dz
                    invr = inv_sqrt(r2, 0)
                    if r2 == 0.0:
                        invr = 0.0
                    acc += charges[j] * invr
            check[i - row0, m] = c * acc


def s2p_pot(dens, trg_xyz, trg_start, trg_end, trg_boxes, centers, half_widths, list_offsets,
            list_index, surf, radius, b0, b1, pot):
    """pot[t] += sum_s sum_m dens[s, m] / (4 pi |x_t - y_m(s)|), y_m(s) = c_k + h_s r surf_m.

    The inner loop runs over a box's targets (contiguous), four surface points at a time,
    into per-box sums added to ``pot`` once: a loop over the surface points per target
    (152..296 of them) spent its time in remainders and reductions (float32 x86-64-v4 L2P
    loop 1.4e9 -> 3.2e9 pairs/s/core, float64 1.0e9 -> 1.1e9)."""
    c = INV4PI
    n_surf = surf.shape[1]
    m4 = n_surf - n_surf % 4
    ys = np.empty((3, n_surf), dtype=surf.dtype)
    yx = ys[0]
    yy = ys[1]
    yz = ys[2]
    mt = 1
    for i in range(b0, b1):
        mt = max(mt, trg_end[trg_boxes[i]] - trg_start[trg_boxes[i]])
    sums = np.empty((1, mt), dtype=pot.dtype)  # a box's sums, without 1/(4 pi)
    for i in range(b0, b1):
        b = trg_boxes[i]
        t0 = trg_start[b]
        nt = trg_end[b] - t0
        if nt == 0 or list_offsets[i] == list_offsets[i + 1]:
            continue
        tx = trg_xyz[0, t0:t0 + nt]
        ty = trg_xyz[1, t0:t0 + nt]
        tz = trg_xyz[2, t0:t0 + nt]
        sp = sums[0, :nt]
        for e in range(1):
            for t in range(nt):
                sums[e, t] = 0.0
        n = np.uint64(nt)
        for k in range(list_offsets[i], list_offsets[i + 1]):
            s = list_index[k]
            hr = half_widths[s] * radius
            for m in range(n_surf):
                yx[m] = centers[k, 0] + hr * surf[0, m]
                yy[m] = centers[k, 1] + hr * surf[1, m]
                yz[m] = centers[k, 2] + hr * surf[2, m]
            d = dens[s]
            for m in range(0, m4, 4):
                xa = yx[m]
                ya = yy[m]
                za = yz[m]
                qa = d[m]
                xb = yx[m + 1]
                yb = yy[m + 1]
                zb = yz[m + 1]
                qb = d[m + 1]
                xc = yx[m + 2]
                yc = yy[m + 2]
                zc = yz[m + 2]
                qc = d[m + 2]
                xd = yx[m + 3]
                yd = yy[m + 3]
                zd = yz[m + 3]
                qd = d[m + 3]
                for t in range(np.uint64(0), n):
                    x = tx[t]
                    y = ty[t]
                    z = tz[t]
                    dxa = x - xa
                    dya = y - ya
                    dza = z - za
                    r2a = dxa * dxa + dya * dya + dza * dza
                    invra = inv_sqrt(r2a, 0)
                    if r2a == 0.0:
                        invra = 0.0
                    qinvra = qa * invra
                    dxb = x - xb
                    dyb = y - yb
                    dzb = z - zb
                    r2b = dxb * dxb + dyb * dyb + dzb * dzb
                    invrb = inv_sqrt(r2b, 0)
                    if r2b == 0.0:
                        invrb = 0.0
                    qinvrb = qb * invrb
                    dxc = x - xc
                    dyc = y - yc
                    dzc = z - zc
                    r2c = dxc * dxc + dyc * dyc + dzc * dzc
                    invrc = inv_sqrt(r2c, 0)
                    if r2c == 0.0:
                        invrc = 0.0
                    qinvrc = qc * invrc
                    dxd = x - xd
                    dyd = y - yd
                    dzd = z - zd
                    r2d = dxd * dxd + dyd * dyd + dzd * dzd
                    invrd = inv_sqrt(r2d, 0)
                    if r2d == 0.0:
                        invrd = 0.0
                    qinvrd = qd * invrd
                    sp[t] += qinvra + qinvrb + qinvrc + qinvrd
            for m in range(m4, n_surf):  # the last n_surf % 4 surface points
                xa = yx[m]
                ya = yy[m]
                za = yz[m]
                qa = d[m]
                for t in range(np.uint64(0), n):
                    dxa = tx[t] - xa
                    dya = ty[t] - ya
                    dza = tz[t] - za
                    r2a = dxa * dxa + dya * dya + dza * dza
                    invra = inv_sqrt(r2a, 0)
                    if r2a == 0.0:
                        invra = 0.0
                    qinvra = qa * invra
                    sp[t] += qinvra
        for t in range(nt):
            pot[t0 + t] += c * sp[t]


def s2p_potgrad(dens, trg_xyz, trg_start, trg_end, trg_boxes, centers, half_widths,
                list_offsets, list_index, surf, radius, b0, b1, pot, grad):
    """s2p_pot plus grad[:, t] += -sum dens[s, m] (x_t - y_m) / (4 pi |x_t - y_m|^3)."""
    c = INV4PI
    n_surf = surf.shape[1]
    m4 = n_surf - n_surf % 4
    ys = np.empty((3, n_surf), dtype=surf.dtype)
    yx = ys[0]
    yy = ys[1]
    yz = ys[2]
    mt = 1
    for i in range(b0, b1):
        mt = max(mt, trg_end[trg_boxes[i]] - trg_start[trg_boxes[i]])
    sums = np.empty((4, mt), dtype=pot.dtype)  # a box's sums, without 1/(4 pi)
    for i in range(b0, b1):
        b = trg_boxes[i]
        t0 = trg_start[b]
        nt = trg_end[b] - t0
        if nt == 0 or list_offsets[i] == list_offsets[i + 1]:
            continue
        tx = trg_xyz[0, t0:t0 + nt]
        ty = trg_xyz[1, t0:t0 + nt]
        tz = trg_xyz[2, t0:t0 + nt]
        sp = sums[0, :nt]
        sgx = sums[1, :nt]
        sgy = sums[2, :nt]
        sgz = sums[3, :nt]
        for e in range(4):
            for t in range(nt):
                sums[e, t] = 0.0
        n = np.uint64(nt)
        for k in range(list_offsets[i], list_offsets[i + 1]):
            s = list_index[k]
            hr = half_widths[s] * radius
            for m in range(n_surf):
                yx[m] = centers[k, 0] + hr * surf[0, m]
                yy[m] = centers[k, 1] + hr * surf[1, m]
                yz[m] = centers[k, 2] + hr * surf[2, m]
            d = dens[s]
            for m in range(0, m4, 4):
                xa = yx[m]
                ya = yy[m]
                za = yz[m]
                qa = d[m]
                xb = yx[m + 1]
                yb = yy[m + 1]
                zb = yz[m + 1]
                qb = d[m + 1]
                xc = yx[m + 2]
                yc = yy[m + 2]
                zc = yz[m + 2]
                qc = d[m + 2]
                xd = yx[m + 3]
                yd = yy[m + 3]
                zd = yz[m + 3]
                qd = d[m + 3]
                for t in range(np.uint64(0), n):
                    x = tx[t]
                    y = ty[t]
                    z = tz[t]
                    dxa = x - xa
                    dya = y - ya
                    dza = z - za
                    r2a = dxa * dxa + dya * dya + dza * dza
                    invra = inv_sqrt(r2a, 0)
                    if r2a == 0.0:
                        invra = 0.0
                    qinvra = qa * invra
                    invr3a = qinvra * invra * invra
                    dxb = x - xb
                    dyb = y - yb
                    dzb = z - zb
                    r2b = dxb * dxb + dyb * dyb + dzb * dzb
                    invrb = inv_sqrt(r2b, 0)
                    if r2b == 0.0:
                        invrb = 0.0
                    qinvrb = qb * invrb
                    invr3b = qinvrb * invrb * invrb
                    dxc = x - xc
                    dyc = y - yc
                    dzc = z - zc
                    r2c = dxc * dxc + dyc * dyc + dzc * dzc
                    invrc = inv_sqrt(r2c, 0)
                    if r2c == 0.0:
                        invrc = 0.0
                    qinvrc = qc * invrc
                    invr3c = qinvrc * invrc * invrc
                    dxd = x - xd
                    dyd = y - yd
                    dzd = z - zd
                    r2d = dxd * dxd + dyd * dyd + dzd * dzd
                    invrd = inv_sqrt(r2d, 0)
                    if r2d == 0.0:
                        invrd = 0.0
                    qinvrd = qd * invrd
                    invr3d = qinvrd * invrd * invrd
                    sp[t] += qinvra + qinvrb + qinvrc + qinvrd
                    sgx[t] -= dxa * invr3a + dxb * invr3b + dxc * invr3c + dxd * invr3d
                    sgy[t] -= dya * invr3a + dyb * invr3b + dyc * invr3c + dyd * invr3d
                    sgz[t] -= dza * invr3a + dzb * invr3b + dzc * invr3c + dzd * invr3d
            for m in range(m4, n_surf):  # the last n_surf % 4 surface points
                xa = yx[m]
                ya = yy[m]
                za = yz[m]
                qa = d[m]
                for t in range(np.uint64(0), n):
                    dxa = tx[t] - xa
                    dya = ty[t] - ya
                    dza = tz[t] - za
                    r2a = dxa * dxa + dya * dya + dza * dza
                    invra = inv_sqrt(r2a, 0)
                    if r2a == 0.0:
                        invra = 0.0
                    qinvra = qa * invra
                    sp[t] += qinvra
                    invr3a = qinvra * invra * invra
                    sgx[t] -= dxa * invr3a
                    sgy[t] -= dya * invr3a
                    sgz[t] -= dza * invr3a
        for t in range(nt):
            pot[t0 + t] += c * sp[t]
            grad[0, t0 + t] += c * sgx[t]
            grad[1, t0 + t] += c * sgy[t]
            grad[2, t0 + t] += c * sgz[t]


def l2p_regular(trg_xyz, trg_start, trg_end, leaves, offsets, reg, l0, l1, flags, pot, grad):
    """pot[t] += a + b . (x_t - centre) and (flags 4) grad[:, t] += b for the targets t of
    leaves[l0:l1], (a, b) = reg[l] for leaf leaves[l] (b per frame unit): the regular
    (constant + linear) part of a Laplace leaf's local field, one density. x_t is stored
    relative to the leaf's anchor and ``offsets[b]`` is the centre relative to it, both in
    frame units; the difference is taken in float64."""
    do_g = (flags & 4) != 0
    for ll in range(l0, l1):
        b = leaves[ll]
        a = reg[ll, 0]
        bx = reg[ll, 1]
        by = reg[ll, 2]
        bz = reg[ll, 3]
        ox = offsets[b, 0]
        oy = offsets[b, 1]
        oz = offsets[b, 2]
        for t in range(trg_start[b], trg_end[b]):
            dx = np.float64(trg_xyz[0, t]) - ox
            dy = np.float64(trg_xyz[1, t]) - oy
            dz = np.float64(trg_xyz[2, t]) - oz
            pot[t] += a + bx * dx + by * dy + bz * dz
        if do_g:
            for t in range(trg_start[b], trg_end[b]):
                grad[0, t] += bx
                grad[1, t] += by
                grad[2, t] += bz


def m2l_gather(src, idx, i0, i1, out):
    """out[r - i0, :] = src[idx[r], :] for i0 <= r < i1."""
    k = src.shape[1]
    for r in range(i0, i1):
        a = src[idx[r]]
        o = out[r - i0]
        for j in range(np.uint64(0), np.uint64(k)):
            o[j] = a[j]


def m2l_scatter(y, idx, i0, i1, z):
    """z[idx[r], :] += y[r - i0, :] for i0 <= r < i1 (idx has no repeats within the range)."""
    k = z.shape[1]
    for r in range(i0, i1):
        a = y[r - i0]
        o = z[idx[r]]
        for j in range(np.uint64(0), np.uint64(k)):
            o[j] += a[j]


def m2l_gather_cols(src, dst, srow, drow, vec, col_src, col_dst, width, nd, cm, i0, i1):
    """dst[drow[r] nd + d, cd + j] = src[srow[r] nd + d, cs + j] for i0 <= r < i1, d < nd,
    j < cm width[vec[r]], cs = cm col_src[vec[r]], cd = cm col_dst[vec[r]]."""
    for r in range(i0, i1):
        v = vec[r]
        cs = np.uint64(cm * col_src[v])
        cd = np.uint64(cm * col_dst[v])
        w = np.uint64(cm * width[v])
        for d in range(nd):
            a = srow[r] * nd + d
            b = drow[r] * nd + d
            for j in range(np.uint64(0), w):
                dst[b, cd + j] = src[a, cs + j]
