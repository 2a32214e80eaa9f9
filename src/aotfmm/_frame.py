"""The frame: points and densities scaled into a range every dtype computes well, and the fields
scaled back.

Points go to ``(x - center) / scale`` with ``scale`` a power of two (:func:`frame`,
:func:`to_soa`), so huge (1e300) and tiny (1e-300) coordinates neither overflow nor underflow
``r**2`` and float32 keeps the digits of points far from the origin. Each density is divided by
its own power of two (:func:`scaled_densities`, :func:`scaled_charges`), which keeps the sums
inside the dtype's range. All these divisions are exact.

Going back uses the kernel's homogeneity: a kernel family of degree ``degree``
(:attr:`aotfmm.families.KernelFamily.degree`, G(s r) = s**degree G(r)) gives potentials that
scale as ``scale**degree``, gradients as ``scale**(degree - 1)`` and Hessians as
``scale**(degree - 2)`` (:func:`field_power`, :func:`unscale_fields`, :func:`unscale_factor`).
A dipole's field takes one more derivative of G, so dipole densities are divided by ``scale``
once more on the way in, whatever the degree; then every density shares the charges' factors
on the way out. A family with a parameter (Yukawa, Helmholtz) is evaluated in the frame with
its parameter multiplied by ``scale`` (:meth:`~aotfmm.families.KernelFamily.scaled`), and its
fields come back like those of a kernel of degree
:attr:`~aotfmm.families.KernelFamily.frame_degree`: G_k(s r) = s**frame_degree G_{k s}(r).
"""
import os
import sys
import warnings

import numpy as np

from ._validation import AccuracyWarning
from .families import LAPLACE

__all__ = ["power_of_two_scale", "frame", "to_soa", "scaled_charges", "scaled_densities",
           "field_power", "field_factor", "unscale_factor", "unscale_fields", "rescale"]

#: What the fields of derivative order 0, 1, 2 are called in overflow messages.
_FIELD_NAMES = ("potential", "gradient", "Hessian")


def power_of_two_scale(max_abs):
    """Smallest power of two >= ``max_abs`` (1.0 for 0): dividing by it is exact."""
    if max_abs <= 0.0:
        return 1.0
    mantissa, exponent = np.frexp(max_abs)
    return float(np.ldexp(1.0, int(exponent) - (1 if mantissa == 0.5 else 0)))


def _bounds(points, block=1 << 16):
    """(per-axis min, per-axis max) of (n, 3) points: blocks transposed to (3, m) first, since
    a reduction over axis 0 of an (n, 3) array runs ~4x slower than over contiguous rows."""
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for i in range(0, points.shape[0], block):
        t = np.ascontiguousarray(points[i:i + block].T)
        np.minimum(lo, t.min(axis=1), out=lo)
        np.maximum(hi, t.max(axis=1), out=hi)
    return lo, hi


def frame(*point_arrays, center=True):
    """Center and power-of-two scale that map all points into [-1, 1]^3.

    Working in that frame keeps huge (1e300) and tiny (1e-300) coordinates from overflowing or
    underflowing ``r**2``, and lets float32 keep the digits of points far from the origin.
    With ``center=False`` the center is 0 and only the (exact) power-of-two scaling is applied:
    coordinate differences then stay exactly as in the input, which float64 direct sums want
    (centering rounds when the extent dwarfs the spacing, e.g. points 1 apart near 2**53).
    Returns ``(center (3,), scale)``.
    """
    nonempty = [p for p in point_arrays if p.shape[0]]
    if not nonempty:
        return np.zeros(3), 1.0
    bounds = [_bounds(p) for p in nonempty]
    lo = np.min([b[0] for b in bounds], axis=0)
    hi = np.max([b[1] for b in bounds], axis=0)
    if not center:
        return np.zeros(3), power_of_two_scale(max(np.abs(lo).max(), np.abs(hi).max()))
    mid = 0.5 * lo + 0.5 * hi  # no overflow for |coordinates| near the float64 maximum
    half = np.max(0.5 * hi - 0.5 * lo)
    return mid, power_of_two_scale(half)


def to_soa(points, center, scale, dtype):
    """(n, 3) float64 points -> C-contiguous (3, n) array of ``dtype`` in the given frame."""
    # one axis at a time, in float64 (a float32 input's strided column went through numpy's
    # mixed-type loop on the (n, 3) array: 0.1 s of a 1e6-point float32 setup, now ~0.01 s)
    out = np.empty((3, points.shape[0]), dtype=dtype)
    direct = out.dtype == np.float64
    row = None if direct else np.empty(points.shape[0])
    for k in range(3):
        r = out[k] if direct else row
        np.subtract(points[:, k], center[k], out=r, dtype=np.float64)
        np.divide(r, scale, out=r)
        if not direct:
            out[k] = r  # rounded once, from the float64 value
    return out


def scaled_charges(q, dtype):
    """One charge vector q (n,) float64 -> (its power-of-two scale, q / scale as ``dtype``).

    The fields of the result times :func:`field_factor` ``(scale, frame_scale, ...)`` are the
    fields of ``q`` (charges carry no power of the frame scale).
    """
    qscale = power_of_two_scale(np.abs(q).max())
    charges = np.empty(q.shape, dtype=dtype)
    np.divide(q, qscale, out=charges, casting="unsafe")
    return qscale, charges


def scaled_densities(q, d, frame_scale):
    """Densities for the frame of scale ``frame_scale``, each divided by a power of two.

    q (k, n) or None, d (k, 3, n) or None (float64). A dipole's field carries one more power of
    the frame scale than a charge's (one more derivative of the kernel), so dipoles are divided
    by it. Each density (column) then gets its own exact power-of-two scale (keeps the sums
    inside the dtype's range); all-zero densities are left out. Returns (live column indices,
    their scales, q[live] / scale, d[live] / scale), to hand to :func:`unscale_fields`.
    """
    k = (q if q is not None else d).shape[0]
    if d is not None:
        with np.errstate(over="ignore"):
            d = d / frame_scale
        if not np.isfinite(d).all():
            raise FloatingPointError("the dipole field overflows float64 at this coordinate "
                                     "scale")
    mags = np.zeros(k)
    if q is not None:
        mags = np.maximum(mags, np.abs(q).max(axis=1, initial=0.0))
    if d is not None:
        mags = np.maximum(mags, np.abs(d).max(axis=(1, 2), initial=0.0))
    live = np.flatnonzero(mags > 0.0)
    qscale = [power_of_two_scale(float(m)) for m in mags[live]]
    qscale = np.array(qscale, dtype=np.float64)
    qs = None if q is None else q[live] / qscale[:, None]
    ds = None if d is None else d[live] / qscale[:, None, None]
    return live, qscale, qs, ds


def field_power(family, order):
    """The power of the frame scale in a field of derivative order ``order`` (0 potential,
    1 gradient, 2 Hessian) of kernel ``family``: its ``scaling_degree - order`` (for a family
    with a parameter, the frame family is ``family.scaled(scale)``)."""
    return family.scaling_degree - order


def field_factor(density_scale, frame_scale, power):
    """``density_scale * frame_scale**power``, one multiplication or division at a time
    (``frame_scale ** 3`` alone may overflow where the product does not)."""
    factor = float(density_scale)
    for _ in range(-power):
        factor /= frame_scale
    for _ in range(power):
        factor *= frame_scale
    return factor


def unscale_factor(density_scale, frame_scale, order, family=LAPLACE):
    """The factor taking a frame field of derivative order ``order`` of kernel ``family``, for
    a density divided by ``density_scale``, back to the caller's units."""
    return field_factor(density_scale, frame_scale, field_power(family, order))


def unscale_fields(outs, frame_outs, live, qscale, frame_scale, *, family=LAPLACE, eps=None):
    """Fields of the frame back to the caller's units, density by density.

    ``outs`` (potentials (k, n), gradients (k, 3, n), Hessians (k, 6, n); None entries are
    skipped) get rows ``live`` from ``frame_outs`` (one row per live density), times that
    density's scale and ``frame_scale ** (degree - order)``, order 0, 1, 2 for potentials,
    gradients, Hessians of ``family``, homogeneous of degree ``family.degree`` (see
    :func:`scaled_densities`). ``outs`` may be ``frame_outs`` itself (every density live):
    the rows are then scaled in place, without a copy. ``eps``: the plan's, for
    :func:`rescale`'s warning about float32 fields below the normal range.
    """
    for order, (out, got, what) in enumerate(zip(outs, frame_outs, _FIELD_NAMES)):
        if out is None:
            continue
        for row, col in enumerate(live):
            factor = unscale_factor(qscale[row], frame_scale, order, family)
            rescale(got[row], factor, what, out=out[col], eps=eps)


def rescale(values, factor, what, out=None, eps=None):
    """Undo the frame's scaling; raise instead of returning inf when the result overflows.

    With ``out`` (same shape; may be ``values`` itself) the result is written there and no
    full-size temporary is made; the product is formed in double precision either way.
    results far below their dtype's normal range warn (:func:`_warn_subnormal`; ``eps``: the
    accuracy asked for, default :data:`_SUBNORMAL_LOSS`)."""
    if factor == 1.0:
        if out is not None and out is not values:
            out[...] = values
        res = values if out is None else out
        if not np.isfinite(res).all():
            raise FloatingPointError(f"the {what} overflows {values.dtype}")
        _warn_subnormal(res, what, eps)
        return res
    wide = np.complex128 if values.dtype.kind == "c" else np.float64
    with np.errstate(over="ignore"):
        if out is None:
            out = (values.astype(wide, copy=False) * factor).astype(values.dtype, copy=False)
        else:  # buffered: the ufunc casts blocks to ``wide`` and back
            np.multiply(values, factor, out=out, dtype=wide, casting="unsafe")
    if not np.isfinite(out).all():
        raise FloatingPointError(f"the {what} overflows {values.dtype}")
    _warn_subnormal(out, what, eps)
    return out


#: without an eps (direct sums): below this relative L2 error from the subnormal range alone a
#: result is not flagged (float32: a fifth of the smallest eps float32 plans serve, 5e-6;
#: float64: far above a float64 direct sum's own rounding)
_SUBNORMAL_LOSS = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}


def _warn_subnormal(out, what, eps=None):
    """AccuracyWarning when fields lie so far below their dtype's normal range (float32 /
    complex64: 1.2e-38; float64 / complex128: 2.2e-308) that rounding them to its subnormal
    numbers (spacing 2^-149 / 2^-1074) alone may cost more than eps / 2 (without eps:
    :data:`_SUBNORMAL_LOSS`) of their L2 norm: the densities are scaled into range for the
    sums, but the fields come back in the caller's units and dtype (float32 charges of 1e-44
    at eps 1e-5: potential errors 1.1x eps, silently, until 2026-12-03; float64 charges of
    1e-320, 1e-322: 0.6x and 60x eps at eps 1e-7 without a word until 2026-12-06). The bound,
    half a spacing per value over the norm, is plain relative error, which the contract's
    u-bar can exceed. The first values, else two passes without a copy, decide in every
    usual case (a value far above the normal range's bottom); the rest is measured in
    float64, scaled."""
    real = np.dtype(out.dtype.char.lower()) if out.dtype.kind == "c" else out.dtype
    if real not in _SUBNORMAL_LOSS or out.size == 0:
        return
    fi = np.finfo(real)  # normal range from 2^emin; the subnormal spacing is 2^(emin - bits + 1)
    emin, bits = fi.minexp, fi.nmant + 1
    comp = out if out.dtype.kind != "c" else np.ascontiguousarray(out).view(real)
    low = np.sqrt(comp.size) * 2.0 ** emin
    # (the first values decide almost always: float64 fields were checked from 2026-12-06,
    # and two passes over a 1e6-point evaluation's outputs took ~5-10 ms)
    if float(np.abs(comp.flat[:256]).max()) >= low or \
            max(float(comp.max()), -float(comp.min())) >= low:
        return
    # scaled by 2^-emin (exact: powers of two): sums of squares of values below 2^emin would
    # underflow in float64
    a = np.abs(np.ldexp(comp.astype(np.float64), -emin))
    n_small = int(np.count_nonzero((a < 1.0) & (a > 0.0)))  # (zeros are exact: all-zero
    norm = float(np.sqrt(np.sum(a * a)))                     # fields of coincident points)
    loss = np.sqrt(n_small) * 2.0 ** -bits / norm if norm > 0 else 0.0
    if n_small and loss > (_SUBNORMAL_LOSS[real] if eps is None else eps / 2):
        warnings.warn(f"{n_small} of {comp.size} {what} values lie below {real.name}'s normal "
                      f"range ({2.0 ** emin:.2g}), where {real.name} keeps fewer digits: from "
                      f"that alone up to {min(loss, 1.0):.2g} relative error in the {what}. "
                      f"Scale the densities up (the fields scale with them)"
                      f"{' or use dtype=float64' if real == np.float32 else ''}",
                      AccuracyWarning, stacklevel=_caller_level())


def _caller_level():
    """The ``stacklevel`` that names the first caller outside this package, for a warning
    raised by the function that calls this one (its depth differs between entry points)."""
    pkg = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame, level = frame.f_back, level + 1
    return level
