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
    # IN src (n, k), IN idx, IN i0, IN i1, OUT out (>= i1 - i0, k)
    "m2l_gather": "void({F}[:, ::1], i8[::1], i8, i8, {F}[:, ::1])",
    # IN y (>= i1 - i0, k), IN idx, IN i0, IN i1, INOUT z (n, k)
    "m2l_scatter": "void({F}[:, ::1], i8[::1], i8, i8, {F}[:, ::1])",
}

LOCALS = {
    "p2c_pot": {"c": "{F}", "acc": "{F}", "r2": "{F}", "invr": "{F}",
                "hr": "{F}", "xm": "{F}", "ym": "{F}", "zm": "{F}"},
    "s2p_pot": {"c": "{F}", "acc": "{F}", "r2": "{F}", "invr": "{F}",
                "hr": "{F}"},
    "s2p_potgrad": {"c": "{F}", "acc": "{F}", "gx": "{F}", "gy": "{F}",
                    "gz": "{F}", "r2": "{F}", "invr": "{F}", "invr3": "{F}", "hr": "{F}"},
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
    """pot[t] += sum_s sum_m dens[s, m] / (4 pi |x_t - y_m(s)|), y_m(s) = c_k + h_s r surf_m."""
    c = INV4PI
    n_surf = surf.shape[1]
    ys = np.empty((3, n_surf), dtype=surf.dtype)
    yx = ys[0]
    yy = ys[1]
    yz = ys[2]
    for i in range(b0, b1):
        b = trg_boxes[i]
        for k in range(list_offsets[i], list_offsets[i + 1]):
            s = list_index[k]
            hr = half_widths[s] * radius
            for m in range(n_surf):
                yx[m] = centers[k, 0] + hr * surf[0, m]
                yy[m] = centers[k, 1] + hr * surf[1, m]
                yz[m] = centers[k, 2] + hr * surf[2, m]
            d = dens[s]
            for t in range(trg_start[b], trg_end[b]):
                xt = trg_xyz[0, t]
                yt = trg_xyz[1, t]
                zt = trg_xyz[2, t]
                acc = 0.0
                for m in range(np.uint64(0), np.uint64(n_surf)):
                    dx = xt - yx[m]
                    dy = yt - yy[m]
                    dz = zt - yz[m]
                    r2 = dx * dx + dy * dy + dz * dz
                    invr = inv_sqrt(r2, 0)
                    if r2 == 0.0:
                        invr = 0.0
                    acc += d[m] * invr
                pot[t] += c * acc


def s2p_potgrad(dens, trg_xyz, trg_start, trg_end, trg_boxes, centers, half_widths,
                list_offsets, list_index, surf, radius, b0, b1, pot, grad):
    """s2p_pot plus grad[:, t] += -sum dens[s, m] (x_t - y_m) / (4 pi |x_t - y_m|^3)."""
    c = INV4PI
    n_surf = surf.shape[1]
    ys = np.empty((3, n_surf), dtype=surf.dtype)
    yx = ys[0]
    yy = ys[1]
    yz = ys[2]
    for i in range(b0, b1):
        b = trg_boxes[i]
        for k in range(list_offsets[i], list_offsets[i + 1]):
            s = list_index[k]
            hr = half_widths[s] * radius
            for m in range(n_surf):
                yx[m] = centers[k, 0] + hr * surf[0, m]
                yy[m] = centers[k, 1] + hr * surf[1, m]
                yz[m] = centers[k, 2] + hr * surf[2, m]
            d = dens[s]
            for t in range(trg_start[b], trg_end[b]):
                xt = trg_xyz[0, t]
                yt = trg_xyz[1, t]
                zt = trg_xyz[2, t]
                acc = 0.0
                gx = 0.0
                gy = 0.0
                gz = 0.0
                for m in range(np.uint64(0), np.uint64(n_surf)):
                    dx = xt - yx[m]
                    dy = yt - yy[m]
                    dz = zt - yz[m]
                    r2 = dx * dx + dy * dy + dz * dz
                    invr = inv_sqrt(r2, 0)
                    if r2 == 0.0:
                        invr = 0.0
                    qinvr = d[m] * invr
                    acc += qinvr
                    invr3 = qinvr * invr * invr
                    gx -= dx * invr3
                    gy -= dy * invr3
                    gz -= dz * invr3
                pot[t] += c * acc
                grad[0, t] += c * gx
                grad[1, t] += c * gy
                grad[2, t] += c * gz


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
