"""Hessians (FMM3D's pg/pgt = 3): potential, gradient and the six second derivatives at once.

Kept apart from the fast paths of ``p2p.py``/``multi.py``: exact 1/r, one pass per density,
branch-free inner loops (one for charges only, one for dipoles with or without charges) that
LLVM vectorises. With d = x - y, r = |d|, the Laplace kernel G = 1/(4 pi r) gives

* a charge q at y:  pot q/r, grad -q d/r^3, hess_ab q (3 d_a d_b / r^5 - delta_ab / r^3);
* a dipole D at y (field D . grad_y G, P = D . d): pot P/r^3, grad_a D_a/r^3 - 3 P d_a/r^5,
  hess_ab -3 (D_a d_b + D_b d_a)/r^5 - 3 P delta_ab/r^5 + 15 P d_a d_b/r^7

(each divided by 4 pi). Hessian components are stored in FMM3D's order xx, yy, zz, xy, xz, yz.
Coincident pairs (r = 0) contribute nothing. Layouts: pot (nd, n_targets), grad
(nd, 3, n_targets), hess (nd, 6, n_targets), all INOUT (added to).

``p2p_hess`` has the box/list conventions of ``p2p.py`` (CSR over box ids, per-entry
``shift`` between box-local frames) and densities as in
``multi.py`` (``flags``: 1 charges, 2 dipoles). It serves L2P/M2P Hessians too: there the
equivalent surfaces of the listed boxes are passed as point charges
(``aotfmm.expansions._s2p_hessians``). ``p2p_sym_hess``: one charge vector with targets =
sources, by Newton's third law (the lists of ``p2p.p2p_sym``). The fast float32-estimate 1/r
of the other pair loops made these slower (measured on Zen 4, 1e5 points, 2 threads: with
the exact 1/r the Hessian P2P took 0.23 s one-sided and 0.19-0.21 s by Newton's third law,
with the estimate 0.28 s and 0.23 s; the sqrt and divide overlap a Hessian pair's many FMAs).
"""
import numpy as np
from numba.extending import register_jitable

from ._inline import gather_sym, scatter_sym
from .p2p import (MIXED_SOURCES, MIXED_SYM_SOURCES, MIXED_TARGETS, _float32_counts_differ,
                  _pad_sym_lists, _same_parts, _split_box, _target_parts)

INV4PI = 0.07957747154594767  # 1 / (4 pi)

SIGNATURES = {
    # IN src_xyz, IN q (nd, n), IN dip (nd, 3, n), IN trg_xyz, IN src_start, IN src_end,
    # IN trg_start, IN trg_end, IN list_offsets, IN list_index, IN shift (n_entries, 3),
    # IN boxes, IN i0, IN i1, IN flags, INOUT pot, INOUT grad, INOUT hess
    "p2p_hess": "void({F}[:, ::1], {F}[:, ::1], {F}[:, :, ::1], {F}[:, ::1], i8[::1], i8[::1],"
                " i8[::1], i8[::1], i8[::1], i8[::1], {F}[:, ::1], i8[::1], i8, i8, i8,"
                " {F}[:, ::1], {F}[:, :, ::1], {F}[:, :, ::1])",
    # IN xyz (3, n), IN q (n,), IN start, IN end, IN one_offsets, IN one_index,
    # IN one_shift, IN sym_offsets, IN sym_index, IN sym_shift, IN boxes, IN i0, IN i1,
    # IN flags (unused), IN m_max, INOUT pot (n,), INOUT grad (3, n), INOUT hess (6, n)
    "p2p_sym_hess": "void({F}[:, ::1], {F}[::1], i8[::1], i8[::1], i8[::1], i8[::1],"
                    " {F}[:, ::1], i8[::1], i8[::1], {F}[:, ::1], i8[::1], i8, i8, i8, i8,"
                    " {F}[::1], {F}[:, ::1], {F}[:, ::1])",
    # as p2p_sym_hess, float64 in and out, the pair terms in float32 (see p2p_sym_hess_mixed)
    "p2p_sym_hess_mixed": "void(f8[:, ::1], f8[::1], i8[::1], i8[::1], i8[::1], i8[::1],"
                          " f8[:, ::1], i8[::1], i8[::1], f8[:, ::1], i8[::1], i8, i8, i8, i8,"
                          " f8[::1], f8[:, ::1], f8[:, ::1])",
}

_LOCALS = {"c": "{F}", "p": "{F}", "gx": "{F}", "gy": "{F}", "gz": "{F}", "hxx": "{F}",
        "hyy": "{F}", "hzz": "{F}", "hxy": "{F}", "hxz": "{F}", "hyz": "{F}", "r2": "{F}",
        "i1": "{F}", "i2": "{F}", "i3": "{F}", "i4": "{F}", "w": "{F}", "w3": "{F}",
        "pd": "{F}", "t5": "{F}", "t7": "{F}", "ux": "{F}", "uy": "{F}",
        "uz": "{F}", "xs": "{F}", "ys": "{F}", "zs": "{F}", "one": "{F}", "three": "{F}",
        "six": "{F}", "fifteen": "{F}", "dx": "{F}", "dy": "{F}", "dz": "{F}",
        "ax": "{F}", "ay": "{F}", "az": "{F}"}
LOCALS = {"p2p_hess": _LOCALS,
          "p2p_sym_hess": dict(_LOCALS, ir="{F}", qi="{F}", xi="{F}", yi="{F}", zi="{F}",
                               axx="{F}", ayy="{F}", azz="{F}", axy="{F}", axz="{F}",
                               ayz="{F}"),
          "p2p_sym_hess_mixed": dict(
              {k: "float32" for k in _LOCALS if k != "c"},
              **{k: "float32" for k in ("ir", "qi", "axx", "ayy", "azz", "axy", "axz", "ayz",
                                        "xh", "yh", "zh", "xl", "yl", "zl", "thr")},
              **{k: "float64" for k in ("c", "xi", "yi", "zi")})}


def p2p_hess(src_xyz, q, dip, trg_xyz, src_start, src_end, trg_start, trg_end, list_offsets,
             list_index, shift, boxes, i0, i1, flags, pot, grad, hess):
    """pot/grad/hess[d, :, i] += fields of the listed boxes' charges/dipoles of density d."""
    c = INV4PI
    one = 1.0
    three = 3.0
    six = 6.0
    fifteen = 15.0
    has_q = (flags & 1) != 0
    has_d = (flags & 2) != 0
    nd = pot.shape[0]
    for ii in range(i0, i1):
        b = boxes[ii]
        for i in range(trg_start[b], trg_end[b]):
            xi = trg_xyz[0, i]
            yi = trg_xyz[1, i]
            zi = trg_xyz[2, i]
            for d in range(nd):
                p = 0.0
                gx = 0.0
                gy = 0.0
                gz = 0.0
                hxx = 0.0
                hyy = 0.0
                hzz = 0.0
                hxy = 0.0
                hxz = 0.0
                hyz = 0.0
                for kk in range(list_offsets[b], list_offsets[b + 1]):
                    s = list_index[kk]
                    xs = xi + shift[kk, 0]
                    ys = yi + shift[kk, 1]
                    zs = zi + shift[kk, 2]
                    # Branch-free loops, one per density kind (LLVM vectorises them): 1/r is
                    # set to 0 for a coincident pair, which zeroes every term. Unsigned
                    # indices: see p2p.py. Powers of 1/r up to 4 only, over the unit vector:
                    # 1/r^7 would overflow float32 for points 3e-6 apart while the Hessian
                    # itself does not.
                    j0 = np.uint64(src_start[s])
                    j1 = np.uint64(src_end[s])
                    if has_q and not has_d:
                        for j in range(j0, j1):
                            dx = xs - src_xyz[0, j]
                            dy = ys - src_xyz[1, j]
                            dz = zs - src_xyz[2, j]
                            r2 = dx * dx + dy * dy + dz * dz
                            i1 = one / np.sqrt(r2)
                            if r2 == 0.0:
                                i1 = 0.0
                            ux = dx * i1
                            uy = dy * i1
                            uz = dz * i1
                            i2 = i1 * i1
                            w = q[d, j]
                            p += w * i1
                            t5 = w * i2
                            gx -= t5 * ux
                            gy -= t5 * uy
                            gz -= t5 * uz
                            w3 = t5 * i1
                            t5 = three * w3
                            hxx += t5 * ux * ux - w3
                            hyy += t5 * uy * uy - w3
                            hzz += t5 * uz * uz - w3
                            hxy += t5 * ux * uy
                            hxz += t5 * ux * uz
                            hyz += t5 * uy * uz
                    elif has_d and not has_q:
                        for j in range(j0, j1):
                            dx = xs - src_xyz[0, j]
                            dy = ys - src_xyz[1, j]
                            dz = zs - src_xyz[2, j]
                            r2 = dx * dx + dy * dy + dz * dz
                            i1 = one / np.sqrt(r2)
                            if r2 == 0.0:
                                i1 = 0.0
                            ux = dx * i1
                            uy = dy * i1
                            uz = dz * i1
                            i2 = i1 * i1
                            i3 = i2 * i1
                            ax = dip[d, 0, j]
                            ay = dip[d, 1, j]
                            az = dip[d, 2, j]
                            pd = ax * ux + ay * uy + az * uz  # D . u
                            p += pd * i2
                            t5 = three * pd
                            gx += (ax - t5 * ux) * i3
                            gy += (ay - t5 * uy) * i3
                            gz += (az - t5 * uz) * i3
                            i4 = i2 * i2
                            t7 = fifteen * pd
                            hxx += (t7 * ux * ux - six * ax * ux - t5) * i4
                            hyy += (t7 * uy * uy - six * ay * uy - t5) * i4
                            hzz += (t7 * uz * uz - six * az * uz - t5) * i4
                            hxy += (t7 * ux * uy - three * (ax * uy + ay * ux)) * i4
                            hxz += (t7 * ux * uz - three * (ax * uz + az * ux)) * i4
                            hyz += (t7 * uy * uz - three * (ay * uz + az * uy)) * i4
                    elif has_q and has_d:
                        for j in range(j0, j1):
                            dx = xs - src_xyz[0, j]
                            dy = ys - src_xyz[1, j]
                            dz = zs - src_xyz[2, j]
                            r2 = dx * dx + dy * dy + dz * dz
                            i1 = one / np.sqrt(r2)
                            if r2 == 0.0:
                                i1 = 0.0
                            ux = dx * i1
                            uy = dy * i1
                            uz = dz * i1
                            i2 = i1 * i1
                            i3 = i2 * i1
                            w = q[d, j]
                            p += w * i1
                            t5 = w * i2
                            gx -= t5 * ux
                            gy -= t5 * uy
                            gz -= t5 * uz
                            w3 = w * i3
                            t5 = three * w3
                            hxx += t5 * ux * ux - w3
                            hyy += t5 * uy * uy - w3
                            hzz += t5 * uz * uz - w3
                            hxy += t5 * ux * uy
                            hxz += t5 * ux * uz
                            hyz += t5 * uy * uz
                            ax = dip[d, 0, j]
                            ay = dip[d, 1, j]
                            az = dip[d, 2, j]
                            pd = ax * ux + ay * uy + az * uz  # D . u
                            p += pd * i2
                            t5 = three * pd
                            gx += (ax - t5 * ux) * i3
                            gy += (ay - t5 * uy) * i3
                            gz += (az - t5 * uz) * i3
                            i4 = i2 * i2
                            t7 = fifteen * pd
                            hxx += (t7 * ux * ux - six * ax * ux - t5) * i4
                            hyy += (t7 * uy * uy - six * ay * uy - t5) * i4
                            hzz += (t7 * uz * uz - six * az * uz - t5) * i4
                            hxy += (t7 * ux * uy - three * (ax * uy + ay * ux)) * i4
                            hxz += (t7 * ux * uz - three * (ax * uz + az * ux)) * i4
                            hyz += (t7 * uy * uz - three * (ay * uz + az * uy)) * i4
                pot[d, i] += c * p
                grad[d, 0, i] += c * gx
                grad[d, 1, i] += c * gy
                grad[d, 2, i] += c * gz
                hess[d, 0, i] += c * hxx
                hess[d, 1, i] += c * hyy
                hess[d, 2, i] += c * hzz
                hess[d, 3, i] += c * hxy
                hess[d, 4, i] += c * hxz
                hess[d, 5, i] += c * hyz


@register_jitable  # also called by p2p_sym_hess_mixed for a box it must redo in float64
def p2p_sym_hess(xyz, q, start, end, one_offsets, one_index, one_shift, sym_offsets,
                 sym_index, sym_shift, boxes, i0, i1, flags, m_max, pot, grad, hess):
    """Potential, gradient and Hessian of one charge vector when the targets are the sources,
    by Newton's third law: ``p2p.p2p_sym``'s lists, scratch and conventions (a pair of box b's
    symmetric list is computed once and updates both points; callers running ranges in
    parallel give each thread its own outputs), with pot (n,), grad (3, n), hess (6, n).

    For a pair with d = x_i - y_j and u = d / r, both points see the same 1/r and the same
    even tensor (3 u u^T - I) / r^3; only the gradient's sign differs. ``flags`` is unused
    (exact 1/r always, as in p2p_hess)."""
    c = INV4PI
    one = 1.0
    three = 3.0
    dt = xyz.dtype
    s1 = np.empty((3, m_max), dtype=dt)   # one-sided sources, in b's frame
    q1 = np.empty(m_max, dtype=dt)
    s2 = np.empty((3, m_max), dtype=dt)   # symmetric partners, in b's frame
    q2 = np.empty(m_max, dtype=dt)
    gidx = np.empty(m_max, dtype=np.int64)
    o2 = np.empty((10, m_max), dtype=dt)  # the partners' sums: pot, grad (3), hess (6)
    ob = np.empty((10, m_max), dtype=dt)  # b's own sums
    for ii in range(i0, i1):
        b = boxes[ii]
        t0 = start[b]
        nt = end[b] - t0
        n1, n2 = gather_sym(xyz, q, start, end, one_offsets, one_index, one_shift,
                            sym_offsets, sym_index, sym_shift, b, s1, q1, s2, q2, gidx)
        for e in range(10):
            for j in range(n2):
                o2[e, j] = 0.0
        sx = s1[0, :n1]
        sy = s1[1, :n1]
        sz = s1[2, :n1]
        qs = q1[:n1]
        tx = s2[0, :n2]
        ty = s2[1, :n2]
        tz = s2[2, :n2]
        qt = q2[:n2]
        op = o2[0, :n2]
        ogx = o2[1, :n2]
        ogy = o2[2, :n2]
        ogz = o2[3, :n2]
        oxx = o2[4, :n2]
        oyy = o2[5, :n2]
        ozz = o2[6, :n2]
        oxy = o2[7, :n2]
        oxz = o2[8, :n2]
        oyz = o2[9, :n2]
        m1 = np.uint64(n1)
        m2 = np.uint64(n2)
        for i in range(nt):
            xi = xyz[0, t0 + i]
            yi = xyz[1, t0 + i]
            zi = xyz[2, t0 + i]
            qi = q[t0 + i]
            p = 0.0
            gx = 0.0
            gy = 0.0
            gz = 0.0
            hxx = 0.0
            hyy = 0.0
            hzz = 0.0
            hxy = 0.0
            hxz = 0.0
            hyz = 0.0
            for j in range(np.uint64(0), m1):
                dx = xi - sx[j]
                dy = yi - sy[j]
                dz = zi - sz[j]
                r2 = dx * dx + dy * dy + dz * dz
                ir = one / np.sqrt(r2)
                if r2 == 0.0:
                    ir = 0.0
                ux = dx * ir
                uy = dy * ir
                uz = dz * ir
                w = qs[j] * ir
                p += w
                t5 = w * ir
                gx -= t5 * ux
                gy -= t5 * uy
                gz -= t5 * uz
                w3 = t5 * ir
                t5 = three * w3
                hxx += t5 * ux * ux - w3
                hyy += t5 * uy * uy - w3
                hzz += t5 * uz * uz - w3
                hxy += t5 * ux * uy
                hxz += t5 * ux * uz
                hyz += t5 * uy * uz
            for j in range(np.uint64(0), m2):
                dx = xi - tx[j]
                dy = yi - ty[j]
                dz = zi - tz[j]
                r2 = dx * dx + dy * dy + dz * dz
                ir = one / np.sqrt(r2)
                if r2 == 0.0:
                    ir = 0.0
                ux = dx * ir
                uy = dy * ir
                uz = dz * ir
                i3 = ir * ir * ir
                axx = three * ux * ux - one  # (3 u u^T - I), shared by both points
                ayy = three * uy * uy - one
                azz = three * uz * uz - one
                axy = three * ux * uy
                axz = three * ux * uz
                ayz = three * uy * uz
                w = qt[j] * ir
                p += w
                t5 = w * ir
                gx -= t5 * ux
                gy -= t5 * uy
                gz -= t5 * uz
                w3 = t5 * ir
                hxx += w3 * axx
                hyy += w3 * ayy
                hzz += w3 * azz
                hxy += w3 * axy
                hxz += w3 * axz
                hyz += w3 * ayz
                w = qi * ir
                op[j] += w
                t5 = w * ir
                ogx[j] += t5 * ux
                ogy[j] += t5 * uy
                ogz[j] += t5 * uz
                w3 = qi * i3
                oxx[j] += w3 * axx
                oyy[j] += w3 * ayy
                ozz[j] += w3 * azz
                oxy[j] += w3 * axy
                oxz[j] += w3 * axz
                oyz[j] += w3 * ayz
            ob[0, i] = p
            ob[1, i] = gx
            ob[2, i] = gy
            ob[3, i] = gz
            ob[4, i] = hxx
            ob[5, i] = hyy
            ob[6, i] = hzz
            ob[7, i] = hxy
            ob[8, i] = hxz
            ob[9, i] = hyz
        _scatter_sym_hess(c, ob, o2, gidx, t0, nt, n2, pot, grad, hess)


def p2p_sym_hess_mixed(xyz, q, start, end, one_offsets, one_index, one_shift, sym_offsets,
                       sym_index, sym_shift, boxes, i0, i1, flags, m_max, pot, grad, hess):
    """:func:`p2p_sym_hess` for float64 points, charges and outputs with the pair terms in
    float32, as ``p2p.p2p_sym_mixed``: per box the gathered points (in its frame) are split
    into float32 parts on a power-of-two grid plus float32 rests; a target's sums are float32
    over at most ``MIXED_SOURCES`` one-sided sources or ``MIXED_SYM_SOURCES`` partners (since
    2026-12-06: runs of 128 where a lane gets 8 terms, x86-64-v4, as p2p_sym_mixed's; its ten
    horizontal sums a run made the Hessian near field 0.91x, JIT model, 2e5 uniform points,
    one thread), then float64; a partner's
    over at most ``MIXED_TARGETS`` targets. A box with a pair closer than ``MIXED_CUT``
    grid steps (or than ``MIXED_R2_MIN``, or rounding to r^2 = 0 without being coincident) is
    computed again in float64 with the exact 1/r, as p2p_sym_hess does; coincident points
    (each point with itself; only the one-sided list, which holds b, can have them) contribute
    0, found by equal float32 parts and counted against their float64 duplicates as in
    ``p2p.p2p_sym_mixed`` (a distinct point rounded onto a target: the box again in float64).
    ``flags`` is unused."""
    c = INV4PI
    one = np.float32(1.0)
    zero = np.float32(0.0)
    three = np.float32(3.0)
    bj = MIXED_SOURCES
    bs = MIXED_SYM_SOURCES
    bm = max(bj, bs)
    s1 = np.empty((3, m_max + bm), dtype=np.float64)
    q1 = np.empty(m_max + bm, dtype=np.float64)
    s2 = np.empty((3, m_max + bm), dtype=np.float64)
    q2 = np.empty(m_max + bm, dtype=np.float64)
    gidx = np.empty(m_max, dtype=np.int64)
    cnt = np.empty(m_max, dtype=np.float64)   # b's points' float64 duplicates, themselves included
    nzs = np.empty(m_max, dtype=np.float64)   # the sources equal to each target in float32
    h1 = np.empty((3, m_max + bm), dtype=np.float32)
    l1 = np.empty((3, m_max + bm), dtype=np.float32)
    h2 = np.empty((3, m_max + bm), dtype=np.float32)
    l2 = np.empty((3, m_max + bm), dtype=np.float32)
    f1 = np.empty(m_max + bm, dtype=np.float32)
    f2 = np.empty(m_max + bm, dtype=np.float32)
    o2f = np.empty((10, m_max + bm), dtype=np.float32)  # the partners' float32 partial sums
    o2 = np.empty((10, m_max), dtype=np.float64)   # ... added in float64
    ob = np.empty((10, m_max), dtype=np.float64)
    acc = np.empty(10, dtype=np.float64)
    ht, lt = _target_parts(start, end, boxes, i0, i1)
    for ii in range(i0, i1):
        b = boxes[ii]
        t0 = start[b]
        nt = end[b] - t0
        n1, n2 = gather_sym(xyz, q, start, end, one_offsets, one_index, one_shift,
                            sym_offsets, sym_index, sym_shift, b, s1, q1, s2, q2, gidx)
        thr, far = _split_box(s1, n1, s2, n2, xyz[:, t0:t0 + nt], nt, h1, l1, h2, l2, ht,
                              lt)
        # both lists padded to whole runs (bj, bs) with uncharged far points (terms 0), so
        # every float32 run below has a constant length
        n1p, n2p = _pad_sym_lists(q1, h1, l1, f1, n1, q2, h2, l2, f2, n2, far, bj, bs)
        for e in range(10):
            for j in range(n2p):
                o2f[e, j] = 0.0
            for j in range(n2):
                o2[e, j] = 0.0
        hx1 = h1[0, :n1p]
        hy1 = h1[1, :n1p]
        hz1 = h1[2, :n1p]
        lx1 = l1[0, :n1p]
        ly1 = l1[1, :n1p]
        lz1 = l1[2, :n1p]
        hx2 = h2[0, :n2p]
        hy2 = h2[1, :n2p]
        hz2 = h2[2, :n2p]
        lx2 = l2[0, :n2p]
        ly2 = l2[1, :n2p]
        lz2 = l2[2, :n2p]
        op = o2f[0, :n2p]
        ogx = o2f[1, :n2p]
        ogy = o2f[2, :n2p]
        ogz = o2f[3, :n2p]
        oxx = o2f[4, :n2p]
        oyy = o2f[5, :n2p]
        ozz = o2f[6, :n2p]
        oxy = o2f[7, :n2p]
        oxz = o2f[8, :n2p]
        oyz = o2f[9, :n2p]
        bad = False
        multi = False  # a target found more than itself (p2p.p2p_sym_mixed)
        for i in range(nt):
            xh = ht[0, i]
            yh = ht[1, i]
            zh = ht[2, i]
            xl = lt[0, i]
            yl = lt[1, i]
            zl = lt[2, i]
            qi = np.float32(q[t0 + i])
            nz = 0.0  # sources whose float32 parts equal the target's (p2p.p2p_sym_mixed)
            for e in range(10):
                acc[e] = 0.0
            for j0 in range(0, n1p, bj):  # one-sided sources (b itself among them), float32 blocks
                z = np.float32(0.0)
                p = np.float32(0.0)
                gx = np.float32(0.0)
                gy = np.float32(0.0)
                gz = np.float32(0.0)
                hxx = np.float32(0.0)
                hyy = np.float32(0.0)
                hzz = np.float32(0.0)
                hxy = np.float32(0.0)
                hxz = np.float32(0.0)
                hyz = np.float32(0.0)
                for j in range(np.uint64(j0), np.uint64(j0) + np.uint64(bj)):
                    dx = (xh - hx1[j]) + (xl - lx1[j])
                    dy = (yh - hy1[j]) + (yl - ly1[j])
                    dz = (zh - hz1[j]) + (zl - lz1[j])
                    r2 = dx * dx + dy * dy + dz * dz
                    ir = one / np.sqrt(r2)
                    if not r2 >= thr:
                        ir = np.float32(np.nan)
                    same = _same_parts(xh, yh, zh, xl, yl, zl, hx1[j], hy1[j], hz1[j],
                                       lx1[j], ly1[j], lz1[j])  # coincident: 0, counted
                    ir = zero if same else ir
                    z += one if same else zero
                    ux = dx * ir
                    uy = dy * ir
                    uz = dz * ir
                    w = f1[j] * ir
                    p += w
                    t5 = w * ir
                    gx -= t5 * ux
                    gy -= t5 * uy
                    gz -= t5 * uz
                    w3 = t5 * ir
                    t5 = three * w3
                    hxx += t5 * ux * ux - w3
                    hyy += t5 * uy * uy - w3
                    hzz += t5 * uz * uz - w3
                    hxy += t5 * ux * uy
                    hxz += t5 * ux * uz
                    hyz += t5 * uy * uz
                acc[0] += p
                acc[1] += gx
                acc[2] += gy
                acc[3] += gz
                acc[4] += hxx
                acc[5] += hyy
                acc[6] += hzz
                acc[7] += hxy
                acc[8] += hxz
                acc[9] += hyz
                nz += z
            for j0 in range(0, n2p, bs):  # symmetric partners: both points
                p = np.float32(0.0)
                gx = np.float32(0.0)
                gy = np.float32(0.0)
                gz = np.float32(0.0)
                hxx = np.float32(0.0)
                hyy = np.float32(0.0)
                hzz = np.float32(0.0)
                hxy = np.float32(0.0)
                hxz = np.float32(0.0)
                hyz = np.float32(0.0)
                for j in range(np.uint64(j0), np.uint64(j0) + np.uint64(bs)):
                    dx = (xh - hx2[j]) + (xl - lx2[j])
                    dy = (yh - hy2[j]) + (yl - ly2[j])
                    dz = (zh - hz2[j]) + (zl - lz2[j])
                    r2 = dx * dx + dy * dy + dz * dz
                    ir = one / np.sqrt(r2)
                    if not r2 >= thr:
                        ir = np.float32(np.nan)
                    ux = dx * ir
                    uy = dy * ir
                    uz = dz * ir
                    i3 = ir * ir * ir
                    axx = three * ux * ux - one  # (3 u u^T - I), shared by both points
                    ayy = three * uy * uy - one
                    azz = three * uz * uz - one
                    axy = three * ux * uy
                    axz = three * ux * uz
                    ayz = three * uy * uz
                    w = f2[j] * ir
                    p += w
                    t5 = w * ir
                    gx -= t5 * ux
                    gy -= t5 * uy
                    gz -= t5 * uz
                    w3 = t5 * ir
                    hxx += w3 * axx
                    hyy += w3 * ayy
                    hzz += w3 * azz
                    hxy += w3 * axy
                    hxz += w3 * axz
                    hyz += w3 * ayz
                    w = qi * ir
                    op[j] += w
                    t5 = w * ir
                    ogx[j] += t5 * ux
                    ogy[j] += t5 * uy
                    ogz[j] += t5 * uz
                    w3 = qi * i3
                    oxx[j] += w3 * axx
                    oyy[j] += w3 * ayy
                    ozz[j] += w3 * azz
                    oxy[j] += w3 * axy
                    oxz[j] += w3 * axz
                    oyz[j] += w3 * ayz
                acc[0] += p
                acc[1] += gx
                acc[2] += gy
                acc[3] += gz
                acc[4] += hxx
                acc[5] += hyy
                acc[6] += hzz
                acc[7] += hxy
                acc[8] += hxz
                acc[9] += hyz
            if acc[0] != acc[0]:  # a pair too close for the float32 terms
                bad = True
                break
            nzs[i] = nz
            if nz != 1.0:
                multi = True
            for e in range(10):
                ob[e, i] = acc[e]
            if (i + 1) % MIXED_TARGETS == 0 or i == nt - 1:  # partners' float32 runs to float64
                for e in range(10):
                    for j in range(n2):
                        o2[e, j] += o2f[e, j]
                        o2f[e, j] = 0.0
        if multi and not bad:  # (found only itself: it has no duplicates either)
            bad = _float32_counts_differ(xyz, t0, nt, nzs, cnt)
        if not bad:
            tot = 0.0
            for j in range(n2):
                tot += o2[0, j]
            bad = tot != tot
        if bad:  # the whole box in float64, exact 1/r
            p2p_sym_hess(xyz, q, start, end, one_offsets, one_index, one_shift, sym_offsets,
                         sym_index, sym_shift, boxes, ii, ii + 1, flags, m_max, pot, grad, hess)
            continue
        _scatter_sym_hess(c, ob, o2, gidx, t0, nt, n2, pot, grad, hess)



@register_jitable
def _scatter_sym_hess(c, ob, o2, gidx, t0, nt, n2, pot, grad, hess):
    """pot, grad and hess += c times box b's own sums ``ob`` (rows pot, grad (3), hess (6);
    points t0..t0+nt) and its partners' sums ``o2`` (points ``gidx``): the end of a
    Newton's-third-law Hessian box (``scatter_sym`` for rows 0-3)."""
    scatter_sym(c, ob, o2, gidx, t0, nt, n2, True, pot, grad)
    for e in range(6):
        for i in range(nt):
            hess[e, t0 + i] += c * ob[e + 4, i]
        for j in range(n2):
            hess[e, gidx[j]] += c * o2[e + 4, j]
