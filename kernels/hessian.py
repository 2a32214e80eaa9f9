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
(``aotfmm.expansions._s2p_hessians``).
"""
import numpy as np

INV4PI = 0.07957747154594767  # 1 / (4 pi)

SIGNATURES = {
    # IN src_xyz, IN q (nd, n), IN dip (nd, 3, n), IN trg_xyz, IN src_start, IN src_end,
    # IN trg_start, IN trg_end, IN list_offsets, IN list_index, IN shift (n_entries, 3),
    # IN boxes, IN i0, IN i1, IN flags, INOUT pot, INOUT grad, INOUT hess
    "p2p_hess": "void({F}[:, ::1], {F}[:, ::1], {F}[:, :, ::1], {F}[:, ::1], i8[::1], i8[::1],"
                " i8[::1], i8[::1], i8[::1], i8[::1], {F}[:, ::1], i8[::1], i8, i8, i8,"
                " {F}[:, ::1], {F}[:, :, ::1], {F}[:, :, ::1])",
}

_LOCALS = {"c": "{F}", "p": "{F}", "gx": "{F}", "gy": "{F}", "gz": "{F}", "hxx": "{F}",
        "hyy": "{F}", "hzz": "{F}", "hxy": "{F}", "hxz": "{F}", "hyz": "{F}", "r2": "{F}",
        "i1": "{F}", "i2": "{F}", "i3": "{F}", "i4": "{F}", "w": "{F}", "w3": "{F}",
        "pd": "{F}", "t5": "{F}", "t7": "{F}", "ux": "{F}", "uy": "{F}",
        "uz": "{F}", "xs": "{F}", "ys": "{F}", "zs": "{F}", "one": "{F}", "three": "{F}",
        "six": "{F}", "fifteen": "{F}", "dx": "{F}", "dy": "{F}", "dz": "{F}",
        "ax": "{F}", "ay": "{F}", "az": "{F}"}
LOCALS = {"p2p_hess": _LOCALS}


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

