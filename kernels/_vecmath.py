"""exp, and sin/cos together, as plain arithmetic that LLVM vectorises (build time only).

The pair loops of the Yukawa and Helmholtz sums (``yukawa.py``, ``helmholtz.py``) need
exp(-lam r) and cos/sin(kappa r) once per pair. ``np.exp``/``np.cos`` compile to calls into
libm, one element at a time, and a loop with a call in it is not vectorised (numba's SVML path
needs Intel's runtime library, which an AOT build must not depend on). These versions are
range reduction, a polynomial and a power of two built from its bits: only multiplies, adds,
``floor``, selects and integer shifts, so the loop around them vectorises like the Laplace ones.

* ``vexp(x)``: exp(x) for x <= 0 (what the kernels need: lam r >= 0, Im(kappa) r >= 0; also
  right for 0 < x < ~700). x = n ln2 + r with |r| <= ln2/2 (Cody-Waite: ln2 in two parts),
  exp(r) by its Taylor polynomial (degree 12 in float64: truncation < 2e-16; degree 7 in
  float32), times 2^n built from the exponent bits. Below the smallest normal result
  (x < -708 in float64, x < -87 in float32) it returns 0. Measured relative error on
  [-708, 0]: <= 3.2e-16 (float64), <= 8.6e-8 (float32).
* ``vexp_coarse(x)``: the same for pair sums that need ~1e-11 only (degree 9, one-part ln 2):
  ~15 % faster Yukawa near fields at eps >= 1e-8.
* ``vsincos(t)``: (sin t, cos t). t = k pi/2 + y with |y| <= pi/4 (pi/2 in three parts),
  fdlibm's minimax polynomials for sin/cos on [-pi/4, pi/4] (Taylor in float32), and the
  quadrant k mod 4 chosen with float selects (no float -> int conversion, which AVX2 cannot
  vectorise for int64). Measured absolute error for |t| <= 1e6: <= 2.3e-16 (float64),
  <= 1.6e-7 (float32). The argument t = kappa r itself carries |t| * 1.1e-16 (float64) from the
  rounding of r, which dominates for large t anyway.

They are numba ``overload``s specialised on the float type and compiled with the kernels'
fast-math flags (``kernels.FASTMATH``) but ``reassoc`` (see ``_OPTS``); LLVM inlines them into
the loops. The guards (x < -708, r2 == 0 in the callers) survive: there is no ``nnan``/``ninf``.
"""
import numpy as np
from numba import types
from numba.extending import overload

from . import FASTMATH

#: The kernels' fast-math flags without ``reassoc``: it would merge the two- and three-part
#: constants of the range reductions back into one (measured: sin/cos absolute error 4e-13
#: instead of 1e-16 at t ~ 1e4). The flags are per instruction, so they survive inlining.
_OPTS = {"fastmath": set(FASTMATH) - {"reassoc"}}

# exp -----------------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 to 32 bits: n * _LN2_HI is exact for |n| < 2^20
_LN2_LO = 1.90821492927058770002e-10
_LN2 = 0.6931471805599453  # ln 2 in one part (vexp_coarse)
# 1/k!, k = 12 .. 2
_E12 = 2.08767569878680989792e-09
_E11 = 2.50521083854417187751e-08
_E10 = 2.75573192239858906526e-07
_E9 = 2.75573192239858906526e-06
_E8 = 2.48015873015873015873e-05
_E7 = 1.98412698412698412698e-04
_E6 = 1.38888888888888888889e-03
_E5 = 8.33333333333333333333e-03
_E4 = 4.16666666666666666667e-02
_E3 = 1.66666666666666666667e-01
_E2 = 0.5
_XMIN64 = -708.0  # exp(-708) ~ 3.3e-308: above the smallest normal float64 (2.2e-308)

_XMIN32 = np.float32(-87.0)  # exp(-87) ~ 1.6e-38: above the smallest normal float32 (1.2e-38)
_LOG2E_F = np.float32(1.4426950408889634)
_LN2_HI_F = np.float32(0.693359375)  # ln 2 to 9 bits: n * _LN2_HI_F exact for |n| < 2^15
_LN2_LO_F = np.float32(-2.12194440e-4)
_F7 = np.float32(1.0 / 5040.0)
_F6 = np.float32(1.0 / 720.0)
_F5 = np.float32(1.0 / 120.0)
_F4 = np.float32(1.0 / 24.0)
_F3 = np.float32(1.0 / 6.0)
_F2 = np.float32(0.5)
_ONE_F = np.float32(1.0)
_HALF_F = np.float32(0.5)
_ZERO_F = np.float32(0.0)


def vexp(x):
    """Python reference: exp(x) (the compiled versions are the overloads below)."""
    return np.exp(x)


@overload(vexp, jit_options=_OPTS)
def _vexp(x):
    if isinstance(x, types.Float) and x.bitwidth == 64:
        def impl(x):
            xc = x
            if xc < _XMIN64:
                xc = _XMIN64
            n = np.floor(xc * _LOG2E + 0.5)
            r = (xc - n * _LN2_HI) - n * _LN2_LO
            p = _E12
            p = p * r + _E11
            p = p * r + _E10
            p = p * r + _E9
            p = p * r + _E8
            p = p * r + _E7
            p = p * r + _E6
            p = p * r + _E5
            p = p * r + _E4
            p = p * r + _E3
            p = p * r + _E2
            p = p * (r * r) + r + 1.0
            bits = (np.int64(np.int32(n)) + 1023) << 52
            y = p * np.int64(bits).view(np.float64)
            if x < _XMIN64:
                y = 0.0
            return y
        return impl

    def impl32(x):
        xc = x
        if xc < _XMIN32:
            xc = _XMIN32
        n = np.floor(xc * _LOG2E_F + _HALF_F)
        r = (xc - n * _LN2_HI_F) - n * _LN2_LO_F
        p = _F7
        p = p * r + _F6
        p = p * r + _F5
        p = p * r + _F4
        p = p * r + _F3
        p = p * r + _F2
        p = p * (r * r) + r + _ONE_F
        bits = np.int32((np.int64(np.int32(n)) + 127) << 23)
        y = p * np.int32(bits).view(np.float32)
        if x < _XMIN32:
            y = _ZERO_F
        return y
    return impl32


def vexp_coarse(x):
    """Python reference: exp(x) (the compiled versions are the overloads below)."""
    return np.exp(x)


@overload(vexp_coarse, jit_options=_OPTS)
def _vexp_coarse(x):
    """exp(x), x <= 0, to ~1e-11 relative in float64 for pair loops whose sums need no more
    (the FMM's near field at eps >= 1e-8): ``vexp``'s reduction with ln 2 in one part (|n| <=
    1021 puts at most ~2.5e-14 into r) and the Taylor polynomial to degree 9 instead of 12
    (truncation (ln2/2)^10/10! < 7.2e-12). Measured on [-708, 0]: <= 9.5e-12. float32: ``vexp``."""
    if isinstance(x, types.Float) and x.bitwidth == 64:
        def impl(x):
            n = np.floor(x * _LOG2E + 0.5)
            r = x - n * _LN2
            p = _E9
            p = p * r + _E8
            p = p * r + _E7
            p = p * r + _E6
            p = p * r + _E5
            p = p * r + _E4
            p = p * r + _E3
            p = p * r + _E2
            p = p * (r * r) + r + 1.0
            bits = (np.int64(np.int32(n)) + 1023) << 52
            y = p * np.int64(bits).view(np.float64)
            if x < _XMIN64:  # below the normal range (also where n has no int32 value)
                y = 0.0
            return y
        return impl

    def impl32(x):
        return vexp(x)
    return impl32


# sin, cos -------------------------------------------------------------------------------------
_TWO_OVER_PI = 6.36619772367581382433e-01
_PIO2_1 = 1.57079632673412561417e+00  # pi/2 to 33 bits
_PIO2_2 = 6.07710050630396597660e-11  # the next 33 bits
_PIO2_3 = 2.02226624879595063154e-21  # the rest
# fdlibm k_sin.c / k_cos.c: minimax on [-pi/4, pi/4]
_S1 = -1.66666666666666324348e-01
_S2 = 8.33333333332248946124e-03
_S3 = -1.98412698298579493134e-04
_S4 = 2.75573137070700676789e-06
_S5 = -2.50507602534068634195e-08
_S6 = 1.58969099521155010221e-10
_C1 = 4.16666666666666019037e-02
_C2 = -1.38888888888741095749e-03
_C3 = 2.48015872894767294178e-05
_C4 = -2.75573143513906633035e-07
_C5 = 2.08757232129817482790e-09
_C6 = -1.13596475577881948265e-11

_TWO_OVER_PI_F = np.float32(6.36619772367581382433e-01)
_PIO2_1F = np.float32(1.5703125)  # pi/2 to 8 bits (cephes' DP1..DP3, doubled)
_PIO2_2F = np.float32(4.837512969970703125e-4)
_PIO2_3F = np.float32(7.54978995489188216e-8)
_SF3 = np.float32(-1.0 / 6.0)
_SF5 = np.float32(1.0 / 120.0)
_SF7 = np.float32(-1.0 / 5040.0)
_SF9 = np.float32(1.0 / 362880.0)
_CF4 = np.float32(1.0 / 24.0)
_CF6 = np.float32(-1.0 / 720.0)
_CF8 = np.float32(1.0 / 40320.0)
_QUARTER_F = np.float32(0.25)
_TWO_F = np.float32(2.0)
_FOUR_F = np.float32(4.0)


def vsincos(t):
    """Python reference: (sin t, cos t) (the compiled versions are the overloads below)."""
    return np.sin(t), np.cos(t)


@overload(vsincos, jit_options=_OPTS)
def _vsincos(t):
    if isinstance(t, types.Float) and t.bitwidth == 64:
        def impl(t):
            k = np.floor(t * _TWO_OVER_PI + 0.5)
            y = ((t - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
            z = y * y
            ps = _S6
            ps = ps * z + _S5
            ps = ps * z + _S4
            ps = ps * z + _S3
            ps = ps * z + _S2
            ps = ps * z + _S1
            s = y + (y * z) * ps
            pc = _C6
            pc = pc * z + _C5
            pc = pc * z + _C4
            pc = pc * z + _C3
            pc = pc * z + _C2
            pc = pc * z + _C1
            c = (1.0 - 0.5 * z) + (z * z) * pc
            # quadrant q = k mod 4 in {0, 1, 2, 3}: sin t = s, c, -s, -c; cos t = c, -s, -c, s
            h = np.floor(k * 0.5)
            odd = k - 2.0 * h                 # q & 1
            hi = h - 2.0 * np.floor(h * 0.5)  # q >> 1
            sn = s
            cs = c
            if odd != 0.0:
                sn = c
                cs = -s
            if hi != 0.0:
                sn = -sn
                cs = -cs
            return sn, cs
        return impl

    def impl32(t):
        k = np.floor(t * _TWO_OVER_PI_F + _HALF_F)
        y = ((t - k * _PIO2_1F) - k * _PIO2_2F) - k * _PIO2_3F
        z = y * y
        ps = _SF9
        ps = ps * z + _SF7
        ps = ps * z + _SF5
        ps = ps * z + _SF3
        s = y + (y * z) * ps
        pc = _CF8
        pc = pc * z + _CF6
        pc = pc * z + _CF4
        c = (_ONE_F - _HALF_F * z) + (z * z) * pc
        h = np.floor(k * _HALF_F)
        odd = k - _TWO_F * h
        hi = h - _TWO_F * np.floor(h * _HALF_F)
        sn = s
        cs = c
        if odd != _ZERO_F:
            sn = c
            cs = -s
        if hi != _ZERO_F:
            sn = -sn
            cs = -cs
        return sn, cs
    return impl32
