"""Inline helpers shared by the kernel families (build time only, like the rest of ``kernels/``).

``inv_sqrt(r2, refine)``: 1 / sqrt(r2) for the pair loops, specialised on the float type.

* float32: ``1 / sqrt(r2)``; with the ``afn``/``arcp`` fast-math flags LLVM already lowers it to
  the hardware estimate (rsqrtps / vrsqrt14ps) plus one Newton step.
* float64: there is no float64 estimate instruction below AVX-512, and the exact
  ``vsqrtpd`` + ``vdivpd`` pair bounds potential-only loops at ~1e9 pairs/s/core. Instead the
  float32 value of ``r2`` gets the float32 estimate (~23 bits) and float64 Newton steps
  ``y <- y (3/2 - r2/2 y^2)`` square the relative error each time: one step gives ~1e-14
  (ample for the FMM's near field), two give full float64 accuracy (direct sums, ``refine``).
  Measured on Zen 4, potential loop: 2.0x (one step) / 1.6x (two steps) the exact rate.
  ``r2`` below the smallest normal float32 (0, and 0 < r2 < 1.2e-38, i.e. points closer than
  ~1e-19 in the [-1, 1]^3 frame) gives NaN: callers select 0 for r2 == 0 and redo a target whose
  sum came out NaN with the exact formula, so no distance is ever mishandled. Kernels only see
  coordinates in that frame (r2 <= 12), far below the float32 maximum.

It is a numba ``overload`` compiled with the kernels' fast-math flags; LLVM inlines it into each
loop (IR-level ``inline="always"`` gave the same speed but tripped numba's SSA checks when a
kernel calls it several times).

``gather_sym``/``scatter_sym`` (``register_jitable``): the per-box gather of sources into
scratch and the scatter of the sums of the Newton's-third-law near fields (``p2p_sym`` in
p2p.py, ``yukawa_p2p_sym`` in yukawa.py); ``sym_target_exact``: one target of a Laplace
Newton's-third-law box with the exact 1/sqrt (the redo of ``p2p_sym``/``p2p_sym_mixed``).
"""
import numpy as np
from numba import types
from numba.extending import overload, register_jitable

from . import FASTMATH

#: Smallest normal float32: below it the float32 estimate is meaningless.
FLT_MIN = np.float32(1.1754943508222875e-38)


def inv_sqrt(r2, refine):
    """Python reference: 1 / sqrt(r2) (the compiled versions are the overloads below)."""
    return 1.0 / np.sqrt(r2)


@overload(inv_sqrt, jit_options={"fastmath": set(FASTMATH)})
def _inv_sqrt(r2, refine):
    if isinstance(r2, types.Float) and r2.bitwidth == 64:
        def impl(r2, refine):
            r2f = np.float32(r2)
            y0 = np.float32(1.0) / np.sqrt(r2f)
            if not r2f >= FLT_MIN:
                y0 = np.float32(np.nan)
            y = np.float64(y0)
            h = 0.5 * r2
            y = y * (1.5 - h * y * y)
            if refine:
                y = y * (1.5 - h * y * y)
            return y
        return impl

    def impl32(r2, refine):
        return np.float32(1.0) / np.sqrt(r2)
    return impl32



@register_jitable
def gather_sym(xyz, q, start, end, one_offsets, one_index, one_shift, sym_offsets, sym_index,
               sym_shift, b, s1, q1, s2, q2, gidx):
    """The sources of box b's one-sided list into ``s1``/``q1`` and its symmetric partners into
    ``s2``/``q2`` (with their point indices ``gidx``), all shifted into b's frame; returns
    (n1, n2). Shared by the Newton's-third-law near fields (``p2p_sym``, ``yukawa_p2p_sym``)."""
    n1 = 0
    for kk in range(one_offsets[b], one_offsets[b + 1]):
        s = one_index[kk]
        ox = one_shift[kk, 0]
        oy = one_shift[kk, 1]
        oz = one_shift[kk, 2]
        for j in range(start[s], end[s]):
            s1[0, n1] = xyz[0, j] - ox
            s1[1, n1] = xyz[1, j] - oy
            s1[2, n1] = xyz[2, j] - oz
            q1[n1] = q[j]
            n1 += 1
    n2 = 0
    for kk in range(sym_offsets[b], sym_offsets[b + 1]):
        s = sym_index[kk]
        ox = sym_shift[kk, 0]
        oy = sym_shift[kk, 1]
        oz = sym_shift[kk, 2]
        for j in range(start[s], end[s]):
            s2[0, n2] = xyz[0, j] - ox
            s2[1, n2] = xyz[1, j] - oy
            s2[2, n2] = xyz[2, j] - oz
            q2[n2] = q[j]
            gidx[n2] = j
            n2 += 1
    return n1, n2


@register_jitable
def scatter_sym(c, ob, o2, gidx, t0, nt, n2, do_g, pot, grad):
    """pot (+ grad) += c times box b's own sums ``ob`` (points t0..t0+nt) and its partners'
    sums ``o2`` (points ``gidx``): the end of a Newton's-third-law box (see gather_sym)."""
    for i in range(nt):
        pot[t0 + i] += c * ob[0, i]
    for j in range(n2):
        pot[gidx[j]] += c * o2[0, j]
    if do_g:
        for e in range(3):
            for i in range(nt):
                grad[e, t0 + i] += c * ob[e + 1, i]
            for j in range(n2):
                grad[e, gidx[j]] += c * o2[e + 1, j]


@register_jitable
def sym_target_exact(xi, yi, zi, qi, s1, q1, n1, s2, q2, n2, o2):
    """The Laplace sums (pot, grad) at target (xi, yi, zi) of charge qi from the one-sided
    sources ``s1``/``q1`` and the symmetric partners ``s2``/``q2`` (gathered by gather_sym),
    with the exact 1/sqrt; the partners' sums ``o2`` (4, >= n2) get the target's share.
    Returns (acc, gx, gy, gz) (without 1/(4 pi)); coincident points contribute 0."""
    one = 1.0
    acc = 0.0
    gx = 0.0
    gy = 0.0
    gz = 0.0
    for j in range(n1):
        dx = xi - s1[0, j]
        dy = yi - s1[1, j]
        dz = zi - s1[2, j]
        r2 = dx * dx + dy * dy + dz * dz
        invr = one / np.sqrt(r2)
        if r2 == 0.0:
            invr = 0.0
        qinvr = q1[j] * invr
        acc += qinvr
        ir3 = qinvr * invr * invr
        gx -= dx * ir3
        gy -= dy * ir3
        gz -= dz * ir3
    for j in range(n2):
        dx = xi - s2[0, j]
        dy = yi - s2[1, j]
        dz = zi - s2[2, j]
        r2 = dx * dx + dy * dy + dz * dz
        invr = one / np.sqrt(r2)
        if r2 == 0.0:
            invr = 0.0
        ir3 = invr * invr * invr
        qj = q2[j]
        acc += qj * invr
        o2[0, j] += qi * invr
        t5 = qj * ir3
        gx -= dx * t5
        gy -= dy * t5
        gz -= dz * t5
        t5 = qi * ir3
        o2[1, j] += dx * t5
        o2[2, j] += dy * t5
        o2[3, j] += dz * t5
    return acc, gx, gy, gz


@register_jitable
def charge_sweep2(w, wx, wy, wz, q, d, c0, n):
    """Two charge vectors' potential and gradient sums over a swept geometry: returns
    (sum q0 w, -sum q0 wx, -sum q0 wy, -sum q0 wz, the same for q1) over the first ``n``
    entries, where ``w`` holds 1/r and ``wx, wy, wz`` (x - y)/r^3 per source (or per surface
    point) and q0, q1 are rows ``d`` and ``d + 1`` of ``q`` from column ``c0`` on (read in
    place: a view per call would cost an atomic reference count pair per target). The sums
    are of the arrays' float type. Shared by ``multi.p2p_multi`` and ``multi.s2p_multi`` (two
    densities a sweep: four gradients' 16 sums overflowed AVX2's 16 vector registers)."""
    a0 = w.dtype.type(0.0)
    a1 = a0
    x0 = a0
    x1 = a0
    y0 = a0
    y1 = a0
    z0 = a0
    z1 = a0
    c0u = np.uint64(c0)
    for j in range(np.uint64(0), np.uint64(n)):
        v = w[j]
        vx = wx[j]
        vy = wy[j]
        vz = wz[j]
        u = q[d, c0u + j]
        a0 += u * v
        x0 -= u * vx
        y0 -= u * vy
        z0 -= u * vz
        u = q[d + 1, c0u + j]
        a1 += u * v
        x1 -= u * vx
        y1 -= u * vy
        z1 -= u * vz
    return a0, x0, y0, z0, a1, x1, y1, z1
