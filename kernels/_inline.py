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
"""
import numpy as np
from numba import types
from numba.extending import overload

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

