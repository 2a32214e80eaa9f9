"""Equivalent and check surfaces of the KIFMM, and the float64 kernel matrices built on them.

A surface of order ``p`` is the set of points of the p x p x p grid ``linspace(-1, 1, p)^3`` that
lie on the faces of the cube [-1, 1]^3: ``6 (p - 1)^2 + 2`` points. They are ordered
lexicographically by grid index (i, j, k) along (x, y, z), z fastest.

A box of half-width ``h`` centred at ``c`` uses the points ``c + h * radius * surface`` (see
:mod:`aotfmm._geometry`). Radii (in units of the box half-width):

=================  ======  ==========================================
upward equivalent   1.05    multipole density lives here
upward check        2.95    P2M/M2M match potentials here
downward equiv.     2.95    local density lives here
downward check      1.05    M2L/L2L/P2L match potentials here
=================  ======  ==========================================

Everything in this module is float64 numpy: it builds operators, it is not on the hot path.
"""
import numpy as np

from .families import LAPLACE

__all__ = ["n_surf", "surface", "kernel_matrix", "DEFAULT_RADII"]

#: Default radii (r_up_equiv, r_up_check, r_down_equiv, r_down_check), as in exafmm-t.
DEFAULT_RADII = (1.05, 2.95, 2.95, 1.05)


def n_surf(p):
    """Number of points on a surface of order ``p``: 6 (p - 1)^2 + 2."""
    return 6 * (p - 1) ** 2 + 2


def surface(p):
    """Unit surface of order ``p``: (n_surf, 3) float64 points on the faces of [-1, 1]^3."""
    if p < 2:
        raise ValueError(f"surface order p must be >= 2, got {p}")
    idx = np.stack(np.meshgrid(*(np.arange(p),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    on_face = ((idx == 0) | (idx == p - 1)).any(axis=1)
    return np.ascontiguousarray(idx[on_face]) * (2.0 / (p - 1)) - 1.0


def kernel_matrix(x, y, family=LAPLACE):
    """Kernel matrix K[i, j] = G(x_i, y_j) of ``family`` (:meth:`~aotfmm.families.KernelFamily.
    reference`), 0 where x_i == y_j.

    ``x`` (m, 3), ``y`` (n, 3) float64; returns (m, n) float64.
    """
    return family.reference(x, y)
