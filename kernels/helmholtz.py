"""Helmholtz sums: G(x, y) = exp(i kappa r) / (4 pi r), r = |x - y|, kappa complex, Im kappa >= 0.

The three density kernels of ``multi.py`` for this G, with the same parameters, layouts,
box/list/shift conventions and ``flags`` bits (1 charges, 2 dipoles, 4 gradient; 8, full
accuracy, is accepted and changes nothing: everything is computed to full accuracy here), plus
the scalar ``kappa`` ({C}: complex64 with float32 coordinates, complex128 with float64).
Coordinates are real ({F}); densities ``q``, ``dip``, ``dens`` and results ``pot``, ``grad``,
``check`` are complex ({C}), same layouts as ``multi.py``:

* ``helmholtz_p2p`` (P2P, like ``p2p_multi``), ``helmholtz_p2c`` (P2M/P2L check potentials,
  like ``p2c_multi``), ``helmholtz_s2p`` (L2P/M2P from surface densities, like ``s2p_multi``).

With d = x - y, r = |d|, u = exp(i kappa r) and L = -i kappa r, dividing everything by 4 pi
(the Yukawa formulas of ``yukawa.py`` with lam = -i kappa):

* charge q at y: pot q u / r, grad -q u (1 + L) d / r^3;
* dipole D at y, field D . grad_y G (as for Laplace: P = D . d):
  pot P u (1 + L) / r^3, grad D u (1 + L) / r^3 - P d u (3 + 3 L + L^2) / r^5.

Coincident pairs (r = 0) contribute 0. Per pair, r = sqrt(r2) and 1/r are exact (as in
``yukawa.py``: the phase Re(kappa) r carries one rounding) and u = exp(-Im(kappa) r) (cos + i
sin)(Re(kappa) r) is computed once from ``_vecmath.vexp``/``vsincos`` (vectorised, full
accuracy) and stored as real and imaginary parts; the density sweeps are real arithmetic on
split parts (P2P gathers each box list's densities into split scratch, S2P each box's surface
densities). Scratch ``buf`` (6, >= m) as in ``multi.py``: P2C and S2P keep u/r and
u (1 + L)/r^3 there (4 rows) and recompute the differences d where a sweep needs them.
"""
import numpy as np

from ._vecmath import vexp, vsincos

INV4PI = 0.07957747154594767  # 1 / (4 pi)

SIGNATURES = {
    # IN src_xyz, IN q (nd, n), IN dip (nd, 3, n), IN trg_xyz, IN src_start, IN src_end,
    # IN trg_start, IN trg_end, IN list_offsets, IN list_index, IN shift (n_entries, 3),
    # IN boxes, IN i0, IN i1, IN flags, IN m_max (>= sources of any listed box's list),
    # IN kappa, INOUT pot (nd, n_trg), INOUT grad (nd, 3, n_trg)
    "helmholtz_p2p": "void({F}[:, ::1], {C}[:, ::1], {C}[:, :, ::1], {F}[:, ::1], i8[::1],"
                     " i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], {F}[:, ::1], i8[::1], i8,"
                     " i8, i8, i8, {C}, {C}[:, ::1], {C}[:, :, ::1])",
    # IN src_xyz, IN q, IN dip, IN src_start, IN src_end, IN trg_boxes, IN centers,
    # IN half_widths, IN list_offsets, IN list_index, IN surf (3, n_surf), IN radius, IN b0,
    # IN b1, IN row0, IN flags, IN kappa, OUT buf (6, m), OUT check (n_rows, nd, n_surf)
    "helmholtz_p2c": "void({F}[:, ::1], {C}[:, ::1], {C}[:, :, ::1], i8[::1], i8[::1],"
                     " i8[::1], {F}[:, ::1], {F}[::1], i8[::1], i8[::1], {F}[:, ::1], {F}, i8,"
                     " i8, i8, i8, {C}, {F}[:, ::1], {C}[:, :, ::1])",
    # IN dens (n_boxes, nd, n_surf), IN trg_xyz, IN trg_start, IN trg_end, IN trg_boxes,
    # IN centers, IN half_widths, IN list_offsets, IN list_index, IN surf, IN radius, IN b0,
    # IN b1, IN flags (4: gradient), IN kappa, OUT buf (6, n_surf), INOUT pot, INOUT grad
    "helmholtz_s2p": "void({C}[:, :, ::1], {F}[:, ::1], i8[::1], i8[::1], i8[::1],"
                     " {F}[:, ::1], {F}[::1], i8[::1], i8[::1], {F}[:, ::1], {F}, i8, i8, i8,"
                     " {C}, {F}[:, ::1], {C}[:, ::1], {C}[:, :, ::1])",
}

_ACC = {name: "{F}" for name in (
    "c", "one", "two", "three", "ka", "kb", "r2", "invr", "ir2", "r", "ex", "sn", "cs", "fr",
    "fi", "g0r", "g0i", "g1r", "g1i", "g3r", "g3i", "p2r", "p2i", "lr", "li", "ar", "ai", "gxr", "gxi", "gyr",
    "gyi", "gzr", "gzi", "qr", "qi", "wr", "wi", "ddr", "ddi", "tr", "ti", "ox", "oy", "oz",
    "xi", "yi", "zi", "dx", "dy", "dz", "hr", "xm", "ym", "zm")}
LOCALS = {"helmholtz_p2p": _ACC, "helmholtz_p2c": _ACC, "helmholtz_s2p": _ACC}

#: Sources per geometry chunk in helmholtz_p2p (as ``multi.P2P_CHUNK``: the scratch stays in L1).
P2P_CHUNK = 256


def helmholtz_p2p(src_xyz, q, dip, trg_xyz, src_start, src_end, trg_start, trg_end,
                  list_offsets, list_index, shift, boxes, i0, i1, flags, m_max, kappa, pot,
                  grad):
    """pot[d, i] (+ grad[d, :, i]) += Helmholtz field of the listed boxes' charges/dipoles of
    density d (the structure of ``multi.p2p_multi``: each target box's list gathered into
    scratch, densities split into real and imaginary parts; then per target, per chunk of
    sources, the pair values once and one real sweep per density). Stored per pair (complex
    values as two rows): u/r (charges, potential); u/r and d u (1 + L)/r^3 (charges,
    gradient); with dipoles the unit vector d/r, u/r, u (1 + L)/r^2, u (1 + L)/r^3 and
    u (3 + 3L + L^2)/r^3 (as in yukawa.py: no power of 1/r beyond the field's own)."""
    c = INV4PI
    one = 1.0
    two = 2.0
    three = 3.0
    ka = kappa.real
    kb = kappa.imag
    has_q = (flags & 1) != 0
    has_d = (flags & 2) != 0
    do_g = (flags & 4) != 0
    mode = 2 if has_d else (1 if do_g else 0)
    nd = pot.shape[0]
    dt = src_xyz.dtype
    geo = np.empty((11, P2P_CHUNK), dtype=dt)  # per pair of a chunk, complex as (re, im) rows:
    b0r = geo[0]  # u / r
    b0i = geo[1]
    wxr = geo[2]  # mode 1: d u (1 + L) / r^3
    wxi = geo[3]
    wyr = geo[4]
    wyi = geo[5]
    wzr = geo[6]
    wzi = geo[7]
    b1r = geo[2]  # mode 2: u (1 + L) / r^2,
    b1i = geo[3]
    b2r = geo[4]  # u (3 + 3L + L^2) / r^3,
    b2i = geo[5]
    ex_ = geo[6]  # the unit vector d / r,
    ey_ = geo[7]
    ez_ = geo[8]
    b3r = geo[9]  # and u (1 + L) / r^3
    b3i = geo[10]
    sums = np.zeros((nd, 8), dtype=dt)
    sxyz = np.empty((3, m_max), dtype=dt)
    gq = np.empty((2, nd if has_q else 1, m_max), dtype=dt)
    gd = np.empty((2, nd if has_d else 1, 3, m_max), dtype=dt)
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
                        gq[0, d, n + j - j0] = q[d, j].real
                        gq[1, d, n + j - j0] = q[d, j].imag
                if has_d:
                    for e in range(3):
                        for j in range(j0, src_end[s]):
                            gd[0, d, e, n + j - j0] = dip[d, e, j].real
                            gd[1, d, e, n + j - j0] = dip[d, e, j].imag
            n += src_end[s] - j0
        for i in range(trg_start[b], trg_end[b]):
            xi = trg_xyz[0, i]
            yi = trg_xyz[1, i]
            zi = trg_xyz[2, i]
            for d in range(nd):
                for e in range(8):
                    sums[d, e] = 0.0
            for c0 in range(0, n, P2P_CHUNK):
                c1 = min(c0 + P2P_CHUNK, n)
                m = np.uint64(c1 - c0)
                c0u = np.uint64(c0)
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
                        sn, cs = vsincos(ka * r)
                        ex = vexp(-kb * r) * invr
                        b0r[j] = ex * cs
                        b0i[j] = ex * sn
                elif mode == 1:
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
                        sn, cs = vsincos(ka * r)
                        ex = vexp(-kb * r) * invr
                        g0r = ex * cs
                        g0i = ex * sn
                        b0r[j] = g0r
                        b0i[j] = g0i
                        # g1 = g0 (1 + L) / r^2, L = lr + i li = -i kappa r
                        ir2 = invr * invr
                        fr = (one + kb * r) * ir2
                        fi = -ka * r * ir2
                        g1r = g0r * fr - g0i * fi
                        g1i = g0r * fi + g0i * fr
                        wxr[j] = dx * g1r
                        wxi[j] = dx * g1i
                        wyr[j] = dy * g1r
                        wyi[j] = dy * g1i
                        wzr[j] = dz * g1r
                        wzi[j] = dz * g1i
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
                        sn, cs = vsincos(ka * r)
                        ex = vexp(-kb * r) * invr
                        g0r = ex * cs
                        g0i = ex * sn
                        lr = kb * r
                        li = -ka * r
                        ir2 = invr * invr
                        # from the unit vector: g0 (1 + L) / r and g0 (3 + 3L + L^2) / r^2,
                        # no power of 1/r beyond the field's own (1/r^5 overflowed float32
                        # for dipoles ~2e-8 apart)
                        fr = (one + lr) * invr
                        fi = li * invr
                        p2r = (three + lr * (three + lr) - li * li) * ir2
                        p2i = li * (three + two * lr) * ir2
                        b0r[j] = g0r
                        b0i[j] = g0i
                        g1r = g0r * fr - g0i * fi
                        g1i = g0r * fi + g0i * fr
                        b1r[j] = g1r
                        b1i[j] = g1i
                        b3r[j] = g1r * invr
                        b3i[j] = g1i * invr
                        b2r[j] = g0r * p2r - g0i * p2i
                        b2i[j] = g0r * p2i + g0i * p2r
                        ex_[j] = dx * invr
                        ey_[j] = dy * invr
                        ez_[j] = dz * invr
                for d in range(nd):
                    ar = 0.0
                    ai = 0.0
                    gxr = 0.0
                    gxi = 0.0
                    gyr = 0.0
                    gyi = 0.0
                    gzr = 0.0
                    gzi = 0.0
                    if has_q:
                        if not do_g:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                qr = gq[0, d, k]
                                qi = gq[1, d, k]
                                ar += qr * b0r[j] - qi * b0i[j]
                                ai += qr * b0i[j] + qi * b0r[j]
                        elif mode == 1:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                qr = gq[0, d, k]
                                qi = gq[1, d, k]
                                ar += qr * b0r[j] - qi * b0i[j]
                                ai += qr * b0i[j] + qi * b0r[j]
                                gxr -= qr * wxr[j] - qi * wxi[j]
                                gxi -= qr * wxi[j] + qi * wxr[j]
                                gyr -= qr * wyr[j] - qi * wyi[j]
                                gyi -= qr * wyi[j] + qi * wyr[j]
                                gzr -= qr * wzr[j] - qi * wzi[j]
                                gzi -= qr * wzi[j] + qi * wzr[j]
                        else:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                qr = gq[0, d, k]
                                qi = gq[1, d, k]
                                ar += qr * b0r[j] - qi * b0i[j]
                                ai += qr * b0i[j] + qi * b0r[j]
                                wr = qr * b1r[j] - qi * b1i[j]  # q g1
                                wi = qr * b1i[j] + qi * b1r[j]
                                gxr -= ex_[j] * wr
                                gxi -= ex_[j] * wi
                                gyr -= ey_[j] * wr
                                gyi -= ey_[j] * wi
                                gzr -= ez_[j] * wr
                                gzi -= ez_[j] * wi
                    if has_d:
                        if do_g:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                dx = ex_[j]
                                dy = ey_[j]
                                dz = ez_[j]
                                g1r = b1r[j]
                                g1i = b1i[j]
                                ddr = (gd[0, d, 0, k] * dx + gd[0, d, 1, k] * dy
                                       + gd[0, d, 2, k] * dz)
                                ddi = (gd[1, d, 0, k] * dx + gd[1, d, 1, k] * dy
                                       + gd[1, d, 2, k] * dz)
                                ar += ddr * g1r - ddi * g1i
                                ai += ddr * g1i + ddi * g1r
                                tr = ddr * b2r[j] - ddi * b2i[j]  # (D.u) g2
                                ti = ddr * b2i[j] + ddi * b2r[j]
                                g3r = b3r[j]
                                g3i = b3i[j]
                                gxr += gd[0, d, 0, k] * g3r - gd[1, d, 0, k] * g3i - tr * dx
                                gxi += gd[0, d, 0, k] * g3i + gd[1, d, 0, k] * g3r - ti * dx
                                gyr += gd[0, d, 1, k] * g3r - gd[1, d, 1, k] * g3i - tr * dy
                                gyi += gd[0, d, 1, k] * g3i + gd[1, d, 1, k] * g3r - ti * dy
                                gzr += gd[0, d, 2, k] * g3r - gd[1, d, 2, k] * g3i - tr * dz
                                gzi += gd[0, d, 2, k] * g3i + gd[1, d, 2, k] * g3r - ti * dz
                        else:
                            for j in range(np.uint64(0), m):
                                k = c0u + j
                                dx = ex_[j]
                                dy = ey_[j]
                                dz = ez_[j]
                                ddr = (gd[0, d, 0, k] * dx + gd[0, d, 1, k] * dy
                                       + gd[0, d, 2, k] * dz)
                                ddi = (gd[1, d, 0, k] * dx + gd[1, d, 1, k] * dy
                                       + gd[1, d, 2, k] * dz)
                                ar += ddr * b1r[j] - ddi * b1i[j]
                                ai += ddr * b1i[j] + ddi * b1r[j]
                    sums[d, 0] += ar
                    sums[d, 1] += ai
                    sums[d, 2] += gxr
                    sums[d, 3] += gxi
                    sums[d, 4] += gyr
                    sums[d, 5] += gyi
                    sums[d, 6] += gzr
                    sums[d, 7] += gzi
            for d in range(nd):
                pot[d, i] += complex(c * sums[d, 0], c * sums[d, 1])
                if do_g:
                    grad[d, 0, i] += complex(c * sums[d, 2], c * sums[d, 3])
                    grad[d, 1, i] += complex(c * sums[d, 4], c * sums[d, 5])
                    grad[d, 2, i] += complex(c * sums[d, 6], c * sums[d, 7])


def helmholtz_p2c(src_xyz, q, dip, src_start, src_end, trg_boxes, centers, half_widths,
                  list_offsets, list_index, surf, radius, b0, b1, row0, flags, kappa, buf,
                  check):
    """check[i - row0, d, m] = Helmholtz potential of the listed boxes' sources (density d) at
    x_m(i) = centers[k] + half_widths[trg_boxes[i]] radius surf[:, m] (as ``p2c_multi``)."""
    c = INV4PI
    one = 1.0
    ka = kappa.real
    kb = kappa.imag
    has_q = (flags & 1) != 0
    has_d = (flags & 2) != 0
    nd = check.shape[1]
    n_surf = surf.shape[1]
    b0r = buf[0]  # u / r
    b0i = buf[1]
    b1r = buf[2]  # u (1 + L) / r^3
    b1i = buf[3]
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
                        sn, cs = vsincos(ka * r)
                        ex = vexp(-kb * r) * invr
                        g0r = ex * cs
                        g0i = ex * sn
                        b0r[j] = g0r
                        b0i[j] = g0i
                        ir2 = invr * invr
                        fr = (one + kb * r) * ir2
                        fi = -ka * r * ir2
                        b1r[j] = g0r * fr - g0i * fi
                        b1i[j] = g0r * fi + g0i * fr
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
                        sn, cs = vsincos(ka * r)
                        ex = vexp(-kb * r) * invr
                        b0r[j] = ex * cs
                        b0i[j] = ex * sn
                for d in range(nd):
                    ar = 0.0
                    ai = 0.0
                    if has_q:
                        for j in range(np.uint64(0), n):
                            k = j0u + j
                            qr = q[d, k].real
                            qi = q[d, k].imag
                            ar += qr * b0r[j] - qi * b0i[j]
                            ai += qr * b0i[j] + qi * b0r[j]
                    if has_d:
                        for j in range(np.uint64(0), n):
                            k = j0u + j
                            # recomputed: buf has room for the pair values only
                            dx = xm - src_xyz[0, k]
                            dy = ym - src_xyz[1, k]
                            dz = zm - src_xyz[2, k]
                            ddr = (dip[d, 0, k].real * dx + dip[d, 1, k].real * dy
                                   + dip[d, 2, k].real * dz)
                            ddi = (dip[d, 0, k].imag * dx + dip[d, 1, k].imag * dy
                                   + dip[d, 2, k].imag * dz)
                            ar += ddr * b1r[j] - ddi * b1i[j]
                            ai += ddr * b1i[j] + ddi * b1r[j]
                    out[d, m] += complex(c * ar, c * ai)


def helmholtz_s2p(dens, trg_xyz, trg_start, trg_end, trg_boxes, centers, half_widths,
                  list_offsets, list_index, surf, radius, b0, b1, flags, kappa, buf, pot,
                  grad):
    """pot[d, t] (+ grad[d, :, t]) += Helmholtz field of dens[s, d, :] on the surfaces of the
    listed s (surface points centers[k] + half_widths[s] radius surf[:, m], as
    ``s2p_multi``)."""
    c = INV4PI
    one = 1.0
    ka = kappa.real
    kb = kappa.imag
    do_g = (flags & 4) != 0
    nd = dens.shape[1]
    n_surf = surf.shape[1]
    n = np.uint64(n_surf)
    b0r = buf[0]  # u / r
    b0i = buf[1]
    b1r = buf[2]  # u (1 + L) / r^3
    b1i = buf[3]
    sp = np.empty((2, nd, n_surf), dtype=surf.dtype)  # densities of the box: real, imaginary
    for i in range(b0, b1):
        b = trg_boxes[i]
        for kk in range(list_offsets[i], list_offsets[i + 1]):
            s = list_index[kk]
            hr = half_widths[s] * radius
            for d in range(nd):
                for m in range(n):
                    sp[0, d, m] = dens[s, d, m].real
                    sp[1, d, m] = dens[s, d, m].imag
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
                        sn, cs = vsincos(ka * r)
                        ex = vexp(-kb * r) * invr
                        g0r = ex * cs
                        g0i = ex * sn
                        b0r[m] = g0r
                        b0i[m] = g0i
                        ir2 = invr * invr
                        fr = (one + kb * r) * ir2
                        fi = -ka * r * ir2
                        b1r[m] = g0r * fr - g0i * fi
                        b1i[m] = g0r * fi + g0i * fr
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
                        sn, cs = vsincos(ka * r)
                        ex = vexp(-kb * r) * invr
                        b0r[m] = ex * cs
                        b0i[m] = ex * sn
                for d in range(nd):
                    wre = sp[0, d]
                    wim = sp[1, d]
                    ar = 0.0
                    ai = 0.0
                    if do_g:
                        gxr = 0.0
                        gxi = 0.0
                        gyr = 0.0
                        gyi = 0.0
                        gzr = 0.0
                        gzi = 0.0
                        for m in range(n):
                            qr = wre[m]
                            qi = wim[m]
                            ar += qr * b0r[m] - qi * b0i[m]
                            ai += qr * b0i[m] + qi * b0r[m]
                            wr = qr * b1r[m] - qi * b1i[m]  # q g1
                            wi = qr * b1i[m] + qi * b1r[m]
                            dx = xi - (centers[kk, 0] + hr * surf[0, m])
                            dy = yi - (centers[kk, 1] + hr * surf[1, m])
                            dz = zi - (centers[kk, 2] + hr * surf[2, m])
                            gxr -= dx * wr
                            gxi -= dx * wi
                            gyr -= dy * wr
                            gyi -= dy * wi
                            gzr -= dz * wr
                            gzi -= dz * wi
                        grad[d, 0, t] += complex(c * gxr, c * gxi)
                        grad[d, 1, t] += complex(c * gyr, c * gyi)
                        grad[d, 2, t] += complex(c * gzr, c * gzi)
                    else:
                        for m in range(n):
                            qr = wre[m]
                            qi = wim[m]
                            ar += qr * b0r[m] - qi * b0i[m]
                            ai += qr * b0i[m] + qi * b0r[m]
                    pot[d, t] += complex(c * ar, c * ai)
