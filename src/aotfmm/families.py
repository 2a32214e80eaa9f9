"""Kernel families: what the FMM needs to know about a kernel G(x, y), in one frozen object.

Everything kernel-specific outside the compiled sums (``kernels/``) comes from a
:class:`KernelFamily`: the numpy G that builds the operators (:meth:`KernelFamily.reference`,
:meth:`KernelFamily.g_of_r`), the homogeneity degree that lets one operator set serve every
level and lets results be scaled back from the frame (:attr:`KernelFamily.scale_invariant`,
:meth:`KernelFamily.c2e_scale`, :mod:`aotfmm._frame`), the measured accuracy table that picks the
expansion order, the fields of the operator cache key, and the names of the family's compiled
sums (rows of :data:`aotfmm._dispatch.TABLE`). The tree, the lists, the driver and the cache
know no kernel.

:data:`LAPLACE`, G(x, y) = 1 / (4 pi |x - y|), is the first family and the one the FMM uses.

A new family is a new instance here (added to :data:`FAMILIES`), its compiled sums in
``kernels/`` named in :attr:`KernelFamily.sums`, and its tests. A family that is not scale
invariant (``degree=None``) needs operators per tree level, which are not implemented: building
its operators raises :class:`NotImplementedError`.
"""
import dataclasses
import typing

import numpy as np

__all__ = ["KernelFamily", "LAPLACE", "FAMILIES"]


@dataclasses.dataclass(frozen=True)
class KernelFamily:
    """One kernel family; instances are immutable and compare by value.

    Attributes
    ----------
    name : str
        Family name: the cache key's ``"kernel"`` value and the first field of the dispatch
        table's keys.
    params : tuple of (str, value) pairs
        Parameters (a wavenumber, a screening length); empty for Laplace. They go into the
        operator cache key (:meth:`cache_key`).
    scalar : {"real", "complex"}
        Value type of G and of the densities.
    degree : int or None
        Homogeneity degree, G(s x, s y) = s**degree G(x, y) (-1 for Laplace); None for a
        kernel that is not scale invariant (then operators are needed per level).
    components : int
        Values per density (1: a scalar kernel).
    g_of_r : callable
        ``g_of_r(r, out=None)``: G of a radial kernel as a function of the distance r > 0,
        elementwise on a float64 array (``out=r`` computes in place). The one place the
        kernel's formula is written in Python.
    eps_table : tuple of (eps, p, ncrit) rows
        The smallest ``eps`` each row serves, with its expansion order and leaf size, in
        decreasing eps (see :func:`aotfmm.evaluate.choose_parameters`).
    worst_error : tuple of (p, error) pairs
        The worst relative error measured at order p (see :func:`aotfmm.evaluate.order_error`).
    sums : tuple of ((operator, inputs, outputs), kernel name) rows
        The family's compiled sums: :data:`aotfmm._dispatch.TABLE` holds them under
        ``(name, operator, inputs, outputs)``.
    """
    name: str
    params: tuple
    scalar: str
    degree: typing.Optional[int]
    components: int
    g_of_r: typing.Callable
    eps_table: tuple
    worst_error: tuple
    sums: tuple

    def __post_init__(self):
        if self.scalar not in ("real", "complex"):
            raise ValueError(f"scalar must be 'real' or 'complex', got {self.scalar!r}")
        names = [k for k, _ in self.params]
        if "kernel" in names or len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique and not 'kernel': {names}")

    @property
    def scale_invariant(self):
        """True when G is homogeneous (``degree`` is not None): one operator set, built for
        the box of half-width 1, serves every level."""
        return self.degree is not None

    def reference(self, x, y):
        """Kernel matrix K[i, j] = G(x_i, y_j), 0 where x_i == y_j (float64 numpy, builds the
        operators). ``x`` (m, 3), ``y`` (n, 3) float64; returns (m, n)."""
        d = x[:, None, :] - y[None, :, :]
        r = np.sqrt(np.einsum("ijk,ijk->ij", d, d))
        with np.errstate(divide="ignore"):
            k = self.g_of_r(r)
        k[r == 0.0] = 0.0
        return k

    def c2e_scale(self, h):
        """``h ** -degree``: a check-to-equivalent operator (UC2E, DC2E) of a box of half-width
        ``h`` is this times the one of the reference box (half-width 1). ``h`` a float or an
        array; exponent 1 returns ``h`` itself (``h ** 1`` is not bit-identical to ``h`` in
        every numpy path)."""
        if not self.scale_invariant:
            raise NotImplementedError(f"kernel family {self.name!r} is not scale invariant: "
                                      "it needs operators per level (not implemented)")
        e = -self.degree
        return h if e == 1 else h ** e

    def worst_errors(self):
        """:attr:`worst_error` as a dict p -> error."""
        return dict(self.worst_error)

    def cache_key(self):
        """The operator cache key's fields for this family: ``{"kernel": name, **params}``."""
        return {"kernel": self.name, **dict(self.params)}


# ---------------------------------------------------------------------------------- Laplace

INV4PI = 1.0 / (4.0 * np.pi)


def _laplace_g(r, out=None):
    """1 / (4 pi r), elementwise (one division)."""
    return np.divide(INV4PI, r, out=out)


#: eps -> (p, ncrit): the smallest p whose worst measured relative L2 error of potential *and*
#: gradient is at least 3x below eps (benchmarks/accuracy.py, n = 2e4: uniform cube, sphere
#: surface, clustered; float64). Worst errors measured: p=3 2.6e-3, 4 4.8e-4, 5 6.2e-5,
#: 6 1.0e-5, 7 1.4e-6, 8 1.3e-7, 9 2.4e-8, 10 4.0e-9, 11 7.5e-10, 12 2.6e-10, 13 5.9e-11,
#: 14 2.1e-11. Separate targets take one order more (see choose_parameters); their worst case
#: (two tiny far clusters, targets around them) measured 8.2e-7 at p=9, 2.3e-10 at p=13 and
#: 1.9e-10 at p=14, where deep trees saturate (float64 coordinates of 20-level boxes).
#: ncrit: leaves of ~ncrit/2..ncrit points balance P2P against M2L; measured on uniform 1e5 and
#: 1e6 points at eps 1e-6 (p = 8): ncrit 160 -> 0.75 s / 7.2 s, 400 -> 0.44 s / 4.3 s (pot+grad).
_LAPLACE_EPS_TABLE = (  # (smallest eps served, p, ncrit)
    (8e-3, 3, 80),
    (1.5e-3, 4, 120),
    (2e-4, 5, 160),
    (3.5e-5, 6, 240),
    (4.5e-6, 7, 320),
    (4e-7, 8, 400),
    (8e-8, 9, 480),
    (1.3e-8, 10, 560),
    (2.5e-9, 11, 640),
    (8e-10, 12, 720),
    (2e-10, 13, 800),
)
#: p -> the worst measured error above (sources = targets, charges): what a plan of order p
#: reaches once the order bumps of choose_parameters are taken off (see order_error).
_LAPLACE_WORST_ERROR = ((3, 2.6e-3), (4, 4.8e-4), (5, 6.2e-5), (6, 1.0e-5), (7, 1.4e-6),
                        (8, 1.3e-7), (9, 2.4e-8), (10, 4.0e-9), (11, 7.5e-10), (12, 2.6e-10),
                        (13, 5.9e-11), (14, 2.1e-11))

#: The compiled Laplace sums (kernels/p2p.py, multi.py, hessian.py, expansions.py).
_LAPLACE_SUMS = (
    (("p2p", "charge", "pot"), "p2p_pot"),
    (("p2p", "charge", "potgrad"), "p2p_potgrad"),
    (("p2p", "densities", "pot|potgrad"), "p2p_multi"),
    (("p2p", "densities", "hess"), "p2p_hess"),
    (("p2c", "charge", "check"), "p2c_pot"),
    (("p2c", "densities", "check"), "p2c_multi"),
    (("s2p", "surface", "pot"), "s2p_pot"),
    (("s2p", "surface", "potgrad"), "s2p_potgrad"),
    (("s2p", "surfaces", "pot|potgrad"), "s2p_multi"),
)

#: The Laplace kernel G(x, y) = 1 / (4 pi |x - y|): real, scalar, homogeneous of degree -1.
LAPLACE = KernelFamily(name="laplace", params=(), scalar="real", degree=-1, components=1,
                       g_of_r=_laplace_g, eps_table=_LAPLACE_EPS_TABLE,
                       worst_error=_LAPLACE_WORST_ERROR, sums=_LAPLACE_SUMS)

#: Every family with compiled sums (the dispatch table is built from these).
FAMILIES = (LAPLACE,)

