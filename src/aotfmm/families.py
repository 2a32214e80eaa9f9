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
``kernels/`` named in :attr:`KernelFamily.sums`, and its tests.

Families with a parameter (:func:`Yukawa`, G = exp(-lam r) / (4 pi r); :func:`Helmholtz`,
G = exp(i kappa r) / (4 pi r)) are not scale invariant (``degree`` None), but they scale with
their parameter: G_k(s r) = s**frame_degree G_{k s}(r) (:attr:`KernelFamily.frame_degree`,
:meth:`KernelFamily.scaled`). That one rule serves the frame (the FMM works in coordinates
divided by ``scale`` with the parameter multiplied by it, and scales the fields back like a
kernel of degree ``frame_degree``) and the tree levels: the operators of a box of half-width h
are those of the reference box (half-width 1) for the family ``scaled(h)``, so a tree gets one
operator set per level (see :mod:`aotfmm.evaluate`).
"""
import cmath
import dataclasses
import math
import numbers
import typing

import numpy as np

__all__ = ["KernelFamily", "LAPLACE", "FAMILIES", "Laplace", "Yukawa", "Helmholtz"]


def _regular_series(n):
    """Coefficients in powers of t of F(t) = sum_j t^j / (2j + 1)!, F' and F'' (n + 1 each)."""
    c0 = [1.0 / math.factorial(2 * j + 1) for j in range(n + 3)]
    c1 = [(j + 1) * c0[j + 1] for j in range(n + 2)]
    c2 = [(j + 1) * c1[j + 1] for j in range(n + 1)]
    return tuple(tuple(c[:n + 1]) for c in (c0, c1, c2))


#: The series of :meth:`KernelFamily.regular`, 18 terms: exact to rounding for |mu2| r^2 <= 4
#: (4^18 / 37! ~ 5e-33), the range its callers stay in.
_REGULAR_SERIES = _regular_series(18)


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
    float32_ncrit : tuple of (p, ncrit) rows
        The leaf size a float32 plan of many points takes instead of the table's, per table
        order (empty: the table's).
    single_m2l : bool
        A float64 plan whose near field takes float32 pair terms, and whose targets are the
        sources, also takes M2L's compressed products in float32
        (``aotfmm.evaluate._MIXED_M2L``): measured to keep the contract for Laplace; False
        where not measured to.
    sums : tuple of ((operator, inputs, outputs), kernel name) rows
        The family's compiled sums: :data:`aotfmm._dispatch.TABLE` holds them under
        ``(name, operator, inputs, outputs)``.
    frame_degree : int or None
        G_k(s r) = s**frame_degree G_{k s}(r) with the parameters k multiplied by s
        (:meth:`scaled`): how fields come back from the frame. Equals ``degree`` for a scale
        invariant family (None there means: the same as ``degree``).
    label : str
        How the family shows itself (``repr``): ``Yukawa(lam=2.0)``.
    dg_of_r : callable
        ``dg_of_r(r)``: dG/dr elementwise for r > 0 (float64 array in; float64 or complex128
        out): gradients of the reference sums.
    decay_rate : float
        |G(r)| = exp(-decay_rate r) x the Laplace kernel's: lam for Yukawa, Im(kappa) for
        Helmholtz, 0 for Laplace (far fields that vanish below eps can be dropped).
    size_orders : tuple of (max |parameter| x D, extra orders) rows
        Orders added to the eps table's p for a domain of size D (a Helmholtz box many
        wavelengths wide needs a larger surface), in increasing size; empty: every size is
        served with the table's p. Above the last row the family warns (AccuracyWarning).
    regular_mu2 : callable or None
        ``regular_mu2(**params)``: mu2 of the family's regular radial solution
        f(r) = sum_n (mu2 r^2)^n / (2n + 1)!, f(0) = 1 (:meth:`regular`): 0 for Laplace (f = 1),
        lam^2 for Yukawa (sinh(lam r) / (lam r)), -kappa^2 for Helmholtz (sin(kappa r) /
        (kappa r)). Local expansions carry the part a f + b . e of their field (f and its
        degree-1 partners e, :meth:`regular`) apart from the equivalent density
        (:mod:`aotfmm.evaluate`); None: they do not.
    """
    name: str
    params: tuple
    scalar: str
    degree: typing.Optional[int]
    components: int
    g_of_r: typing.Callable = dataclasses.field(compare=False)
    eps_table: tuple
    worst_error: tuple
    sums: tuple
    frame_degree: typing.Optional[int] = None
    label: str = dataclasses.field(default="", compare=False)
    #: builds the family with other parameter values (``scaled``); None: no parameters
    make: typing.Optional[typing.Callable] = dataclasses.field(default=None, compare=False,
                                                               repr=False)
    dg_of_r: typing.Optional[typing.Callable] = dataclasses.field(default=None, compare=False,
                                                                  repr=False)
    decay_rate: float = dataclasses.field(default=0.0, compare=False)
    size_orders: tuple = dataclasses.field(default=(), compare=False)
    regular_mu2: typing.Optional[typing.Callable] = dataclasses.field(default=None,
                                                                      compare=False, repr=False)
    #: float32 plans of many points take leaves of ``ncrit`` points whatever the table's
    #: (their pair loops are cheaper against M2L than float64's): rows (largest table p,
    #: ncrit), the first whose p the table row's p does not exceed; () : the table's
    float32_ncrit: tuple = dataclasses.field(default=(), compare=False)
    #: M2L's compressed products in float32 in a mixed-precision plan (see the docstring)
    single_m2l: bool = dataclasses.field(default=False, compare=False)

    def __repr__(self):
        return self.label or f"KernelFamily({self.name!r})"

    def __post_init__(self):
        if self.scalar not in ("real", "complex"):
            raise ValueError(f"scalar must be 'real' or 'complex', got {self.scalar!r}")
        if self.degree is None and (self.frame_degree is None or self.make is None):
            raise ValueError(f"kernel family {self.name!r}: a kernel that is not scale invariant "
                             "(degree None) must scale with its parameters: give frame_degree "
                             "and make (see KernelFamily.scaled)")
        names = [k for k, _ in self.params]
        if "kernel" in names or len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique and not 'kernel': {names}")
        if self.size_orders and len(self.params) != 1:
            raise ValueError(f"kernel family {self.name!r}: size_orders need exactly one "
                             "parameter (the one |parameter| x D is measured with)")

    @property
    def scale_invariant(self):
        """True when G is homogeneous (``degree`` is not None): one operator set, built for
        the box of half-width 1, serves every level."""
        return self.degree is not None

    @property
    def scaling_degree(self):
        """The power of the frame scale in the potential (``frame_degree``, else ``degree``)."""
        return self.degree if self.frame_degree is None else self.frame_degree

    @property
    def hessians(self):
        """True when the family has compiled Hessian sums (Laplace)."""
        return any(key[2] == "hess" for key, _ in self.sums)

    @property
    def complex(self):
        """True when G, densities and fields are complex."""
        return self.scalar == "complex"

    def value_dtype(self, dtype):
        """The dtype of densities and fields for run (coordinate) dtype ``dtype``."""
        dt = np.dtype(dtype)
        if not self.complex:
            return dt
        return np.dtype(np.complex64) if dt == np.float32 else np.dtype(np.complex128)

    def scaled(self, s):
        """The family whose G(r) is this one's G(s r) / s**frame_degree: parameters times
        ``s`` (``self`` for a scale-invariant family)."""
        if self.scale_invariant:
            return self
        if self.make is None:
            raise NotImplementedError(f"kernel family {self.name!r} cannot be rescaled")
        return self.make(**{k: v * s for k, v in self.params})

    def with_params(self, **params):
        """The same family with other parameter values."""
        if self.make is None:
            raise NotImplementedError(f"kernel family {self.name!r} has no parameters")
        return self.make(**params)

    #: Steps per factor two of the parameter grid (:meth:`snapped`, :meth:`grid_half`).
    GRID_STEPS = 8

    def snapped(self):
        """The family with its parameter's magnitude rounded to the grid 2**(i / GRID_STEPS)
        (phase kept): per-level operator sets are built and cached for grid values only, so
        that runs on similar extents share them (``self`` for a scale-invariant family)."""
        if self.scale_invariant:
            return self
        (name, value), = self.params
        mag = abs(value)
        i = round(self.GRID_STEPS * math.log2(mag))
        grid = 2.0 ** (i / self.GRID_STEPS)
        return self.with_params(**{name: grid if isinstance(value, float)
                                   else complex(grid * (value / mag))})

    def grid_half(self, half):
        """The smallest root half-width >= ``half`` whose parameter times half-width is on the
        grid of :meth:`snapped` (``half`` for a scale-invariant family)."""
        if self.scale_invariant:
            return half
        (_, value), = self.params
        mag = abs(value)
        i = math.ceil(self.GRID_STEPS * math.log2(mag * half))
        while 2.0 ** (i / self.GRID_STEPS) / mag < half:
            i += 1
        return 2.0 ** (i / self.GRID_STEPS) / mag

    def decay(self, d):
        """|G(d)| relative to the Laplace kernel's at distance d: exp(-decay_rate d) (far
        fields that vanish below eps can be dropped)."""
        return math.exp(-self.decay_rate * d) if self.decay_rate else 1.0

    def _size_measure(self, size):
        """|parameter| x size (the quantity :attr:`size_orders` is tabulated in); of a complex
        parameter its real part, the oscillation: the decay of Im needs no orders (Yukawa
        takes the Laplace table's), and until 2026-12-06 kappa = 20j counted as |kappa| D = 80,
        above the table (p 13 where 8 serve, a false warning, 39 s on 8000 points)."""
        (_, value), = self.params
        return abs(complex(value).real) * size

    def _measure_name(self):
        (name, value), = self.params
        return f"|Re {name}|" if complex(value).imag else f"|{name}|"

    def extra_orders(self, size):
        """(orders added to the eps table's p, whether the table serves this size) for a
        domain of ``size`` (largest extent, in the family's units), from
        :attr:`size_orders`."""
        if not self.size_orders or size is None:
            return 0, True
        kd = self._size_measure(size)
        for top, extra in self.size_orders:
            if kd <= top:
                return extra, True
        return self.size_orders[-1][1], False

    @property
    def frequency_range(self):
        """What sizes the family's table serves, in words."""
        if not self.size_orders:
            return "any size"
        return f"{self._measure_name()} D <= {self.size_orders[-1][0]:g}, D the domain size"

    def check_phase(self, size):
        """ValueError when an oscillating kernel has more than :data:`PHASE_MAX` radians across
        a domain of ``size``: float64 points then do not fix the phase kappa r (an ulp of r
        moves it by more than ~0.1 rad) and the compiled sums' phase reduction fails (values
        up to 5e18 times u-bar at |kappa| D = 1e18 for 100 points, summed directly)."""
        if not self.complex or not size:
            return
        (name, _), = self.params
        kr = self._size_measure(size)  # |Re kappa| D
        if kr > PHASE_MAX:
            raise ValueError(f"{self.name.capitalize()}: |Re {name}| D = {kr:.3g} (D the domain "
                             f"size) is above {PHASE_MAX:g}: at that many radians across the "
                             f"domain float64 coordinates do not determine the phase {name} r, "
                             f"so no result would mean anything")

    def frequency_text(self, size):
        """``|kappa| D = 57.2`` for a domain of ``size``."""
        return f"{self._measure_name()} D = {self._size_measure(size):.3g}"

    def kernel_args(self):
        """The parameters as the compiled sums take them (by name)."""
        return dict(self.params)

    def reference(self, x, y):
        """Kernel matrix K[i, j] = G(x_i, y_j), 0 where x_i == y_j (float64 numpy, builds the
        operators). ``x`` (m, 3), ``y`` (n, 3) float64; returns (m, n)."""
        if not self.complex:  # in place, one pass (the operator builds' hot path)
            d = x[:, None, :] - y[None, :, :]
            r = np.sqrt(np.einsum("ijk,ijk->ij", d, d))
            with np.errstate(divide="ignore"):
                k = self.g_of_r(r)
            k[r == 0.0] = 0.0
            return k
        return self.field_reference(x, y)[0]

    def field_reference(self, x, y, gradient=False):
        """(K, dK) with K[i, j] = G(x_i, y_j) and dK[i, j, :] = grad_x G(x_i, y_j) (0 where
        x_i == y_j), float64/complex128 numpy from ``g_of_r`` and its radial derivative
        (for reference direct sums and operator spot checks)."""
        d = x[:, None, :] - y[None, :, :]
        r = np.sqrt(np.einsum("ijk,ijk->ij", d, d))
        zero = r == 0.0
        rs = np.where(zero, 1.0, r)
        k = self.g_of_r(rs)
        k[zero] = 0.0
        if not gradient:
            return k, None
        dg = self.dg_dr(rs)
        dg[zero] = 0.0
        return k, (dg / rs)[..., None] * d

    def dg_dr(self, r):
        """dG/dr, elementwise (r > 0)."""
        if self.dg_of_r is None:
            raise NotImplementedError(f"kernel family {self.name!r} has no dg_of_r")
        return self.dg_of_r(np.asarray(r, dtype=np.float64))

    def regular_mu2_value(self):
        """mu2 of :attr:`regular_mu2` for this family's parameters, or None."""
        if self.regular_mu2 is None:
            return None
        return self.regular_mu2(**dict(self.params))

    def regular(self, r2):
        """The family's regular solutions of degree 0 and 1 about a centre, at squared
        distances ``r2`` (array) from it: (f, df, g, dg) with

        * f(x) = F(mu2 r^2), F(t) = sum_n t^n / (2n + 1)! (f(0) = 1; grad f = df x),
        * e_i(x) = x_i g, g = G(mu2 r^2), G = 6 F' (G(0) = 1; grad e_i = g u_i + dg x_i x),

        x the offset from the centre (u_i the unit vector), df = 2 mu2 F'(t), dg = 2 mu2 G'(t).
        Laplace: f = 1, e_i = x_i. Power series (no cancellation at small r), exact to
        rounding for |mu2 r2| <= 4."""
        mu2 = self.regular_mu2_value()
        r2 = np.asarray(r2, dtype=np.float64)
        if mu2 is None:
            raise NotImplementedError(f"kernel family {self.name!r} has no regular solution")
        if mu2 == 0:
            one, zero = np.ones_like(r2), np.zeros_like(r2)
            return one, zero, one, zero
        t = mu2 * r2
        out = []
        for c in _REGULAR_SERIES:  # F, F', F'' (Horner from the top)
            v = np.zeros_like(t) + c[-1]
            for cj in c[-2::-1]:
                v = v * t + cj
            out.append(v)
        f, f1, f2 = out
        return f, 2.0 * mu2 * f1, 6.0 * f1, 12.0 * mu2 * f2

    def c2e_scale(self, h):
        """``h ** -frame_degree``: a check-to-equivalent operator (UC2E, DC2E) of a box of
        half-width ``h`` is this times the one of the reference box (half-width 1) of the family
        :meth:`scaled` by ``h``. ``h`` a float or an
        array; exponent 1 returns ``h`` itself (``h ** 1`` is not bit-identical to ``h`` in
        every numpy path)."""
        e = -self.scaling_degree
        return h if e == 1 else h ** e

    def worst_errors(self):
        """:attr:`worst_error` as a dict p -> error."""
        return dict(self.worst_error)

    def cache_key(self):
        """The operator cache key's fields for this family: ``{"kernel": name, **params}``."""
        key = {"kernel": self.name}
        for k, v in self.params:
            if isinstance(v, complex):
                key[k + "_re"], key[k + "_im"] = v.real, v.imag
            else:
                key[k] = v
        return key


# ---------------------------------------------------------------------------------- Laplace

INV4PI = 1.0 / (4.0 * np.pi)


def _laplace_g(r, out=None):
    """1 / (4 pi r), elementwise (one division)."""
    return np.divide(INV4PI, r, out=out)


def _laplace_dg(r):
    """-1 / (4 pi r^2)."""
    return -INV4PI / (r * r)


#: eps -> (p, ncrit): the smallest p whose worst measured relative L2 error of potential *and*
#: gradient is at least 3x below eps (benchmarks/accuracy.py, n = 2e4: uniform cube, sphere
#: surface, clustered; float64 with float64 pair terms: a plan with float32 ones, eps >= 1e-6,
#: adds _dispatch.MIXED_NEAR_ERROR to its expected_eps). Worst errors measured: p=3 2.6e-3,
#: 4 4.8e-4, 5 6.2e-5, 6 1.0e-5, 7 1.4e-6, 8 1.3e-7, 9 2.4e-8, 10 4.0e-9, 11 7.5e-10,
#: 12 2.6e-10, 13 5.9e-11, 14 2.1e-11. Separate targets take two orders more (three from table
#: order 9; see choose_parameters); their worst case (two tiny far clusters, targets around
#: them) measured 8.2e-7 at p=9, 2.3e-10 at p=13 and 1.9e-10 at p=14, where deep trees
#: saturate (float64 coordinates of 20-level boxes).
#: ncrit: leaves of ~ncrit/2..ncrit points balance P2P against M2L; measured on uniform 1e5 and
#: 1e6 points at eps 1e-6 (p = 8): ncrit 160 -> 0.75 s / 7.2 s, 400 -> 0.44 s / 4.3 s (pot+grad).
#: With the near field by Newton's third law (half the pair work) p = 5..7 also do best with 400:
#: 1e6 uniform, pot+grad, 2 threads (Xeon AVX-512), leaves of 30 points (their old ncrit) vs 244
#: (400): p = 5 (eps 1e-3) 6.1 s vs 4.6 s; p = 6 (1e-4) 6.4 vs 4.9, float32 3.7 vs 2.4-2.8 (the
#: float32 run at eps 1e-4 was slower than at 1e-5). Per point, float32 p = 6: leaves of 15, 30,
#: 61, 122, 244, 488 points cost 8.2, 3.8, 2.8, 2.1, 2.4-2.8, 3.3 us; float64 p = 8: -, 7.6, 7.0,
#: 5.0, 4.6, 6.4 us.
#: float32 plans: ncrit 300 rather than 400 (families.KernelFamily.float32_ncrit). Uniform points
#: fill leaves of N / 8^L: 400 keeps ~244 at 1e6 but ~366-390 at 1.5e6 and 2e5, where the
#: next level's leaves (~46-49 points) were much faster in float32 (their pair loops are cheap
#: against M2L) and not in float64. One thread, 2-core AMD EPYC Zen 2, pot+grad, best of 2,
#: ncrit 400 -> 300 (or 120, the same tree): uniform 2e5 p = 5 / 6 / 7: 0.67 -> 0.31, 0.70 ->
#: 0.40, 0.81 -> 0.45 s; uniform 1.5e6 p = 5 / 6: 5.75 -> 2.77, 5.92 -> 3.81 s; 1e6 sphere
#: surface p = 6 / 7: 1.95 -> 1.67, 2.07 -> 1.83 s; 1e6 Plummer sphere 3.40 -> 2.88, 3.60 ->
#: 3.17 s; uniform 1e6 unchanged (244 points: the same tree; its 30-point leaves were slower
#: at p = 6 / 7: 2.86 -> 3.20, 3.05 -> 3.72 s). float64 (p = 8) at 1.5e6: 9.4 -> 11.5 s, at
#: 2e5 1.18 -> 1.20 s: it keeps 400. p = 5 (eps 2e-4 .. 1.5e-3) seemed better with 200
#: (same runs, interleaved, best of 2, 300 -> 200; not reproduced, see below): 1e6 cube
#: 2.75 -> 2.53 s, sphere 1.49 -> 1.29, Plummer 2.56 -> 2.19; 2e5 cube 0.31 -> 0.32, sphere
#: 0.30 -> 0.25; p = 6 / 7 do not (1e6 cube 2.94 -> 3.69 / 3.17 -> 4.22 s: 30-point leaves;
#: sphere and Plummer 0-10 % faster).
#: Re-measured 2026-12-03 (same machine, idle, interleaved, 3 runs each, 300 -> 200): the 1e6
#: cube at p = 5 went to 30-point leaves and slower, 1.81-1.83 -> 2.86-3.05 s (2 threads;
#: 3.08-3.10 -> 3.72-4.18 s on one), slower than eps 1e-4 (p = 6: 1.87-1.91 s), so coarser eps
#: was slower; sphere 1.33-1.35 vs 1.30-1.37, Plummer 2.04-2.12 vs 2.11-2.38, 2e5 and 1.5e6
#: cubes the same tree. The earlier 2.75 -> 2.53 did not reproduce: p = 5 takes 300 too.
#: And p = 3 / 4 (eps 8e-3 / 3e-3, table leaves 80 / 120) take 300 as well: with their table
#: leaves the 1e6 cube took 2.57-2.76 s against 1.82 s at eps 1e-3 (coarser eps slower); with
#: 300 1.73-1.85 / 1.75-1.78 s; Plummer p = 3 2.89-3.05 -> 1.64-1.67, p = 4 2.21-2.6 -> 1.9-1.95;
#: 1e5 cube 0.24-0.28 -> 0.16 / 0.27-0.29 -> 0.21; 1e6 sphere p = 4 1.12-1.23 -> 1.20-1.27
#: (5 % slower), 2e5 sphere the same (2 threads, interleaved, 3 runs, 2026-12-03).
_LAPLACE_FLOAT32_NCRIT = ((99, 300),)
_LAPLACE_EPS_TABLE = (  # (smallest eps served, p, ncrit)
    (8e-3, 3, 80),
    (1.5e-3, 4, 120),
    (2e-4, 5, 400),
    (3.5e-5, 6, 400),
    (4.5e-6, 7, 400),
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
    (("p2p_sym", "charge", "pot|potgrad"), "p2p_sym"),
    (("p2p_sym", "charge", "hess"), "p2p_sym_hess"),
    (("p2p_mixed", "charge", "pot|potgrad"), "p2p_mixed"),
    (("p2p_mixed", "densities", "pot|potgrad"), "p2p_multi_mixed"),
    (("p2p_sym_mixed", "charge", "pot|potgrad"), "p2p_sym_mixed"),
    (("p2p_sym_mixed", "charge", "hess"), "p2p_sym_hess_mixed"),
    (("p2c", "charge", "check"), "p2c_pot"),
    (("p2c", "densities", "check"), "p2c_multi"),
    (("s2p", "surface", "pot"), "s2p_pot"),
    (("s2p", "surface", "potgrad"), "s2p_potgrad"),
    (("s2p", "surfaces", "pot|potgrad"), "s2p_multi"),
)

#: The Laplace kernel G(x, y) = 1 / (4 pi |x - y|): real, scalar, homogeneous of degree -1.
LAPLACE = KernelFamily(name="laplace", params=(), scalar="real", degree=-1, components=1,
                       g_of_r=_laplace_g, eps_table=_LAPLACE_EPS_TABLE,
                       worst_error=_LAPLACE_WORST_ERROR, sums=_LAPLACE_SUMS,
                       dg_of_r=_laplace_dg, regular_mu2=lambda: 0.0,
                       float32_ncrit=_LAPLACE_FLOAT32_NCRIT, single_m2l=True)

#: The parameter families use Laplace's eps -> (p, ncrit) table and worst errors, measured to
#: hold for them (benchmarks/accuracy.py --kernel yukawa|helmholtz --param-d X, n = 2e4, the
#: same six cases): Yukawa lam D = 1, sources = targets worst at p = 4, 6, 8, 10, 12: 3.6e-4,
#: 6.2e-6, 7.4e-8, 2.1e-9, 1.2e-10 (Laplace: 4.8e-4, 1.0e-5, 1.3e-7, 4.0e-9, 2.6e-10); its
#: separate-target gradients are 2-8x Laplace's at the same p and are covered by the order
#: those take more; larger lam D decays the far field and lowers the errors (lam D = 10:
#: uniform 4.7e-8 at p = 8). Helmholtz: with the orders of _HELMHOLTZ_ORDERS.
_YUKAWA_EPS_TABLE = _HELMHOLTZ_EPS_TABLE = _LAPLACE_EPS_TABLE
_YUKAWA_WORST_ERROR = _HELMHOLTZ_WORST_ERROR = _LAPLACE_WORST_ERROR



def Laplace():
    """The Laplace kernel G(x, y) = 1 / (4 pi |x - y|) (:data:`LAPLACE`, the default)."""
    return LAPLACE


# ----------------------------------------------------------------------------------- Yukawa

def _yukawa_g(lam):
    def g(r, out=None):
        """exp(-lam r) / (4 pi r), elementwise."""
        v = np.exp(-lam * r) * INV4PI / r
        if out is None:
            return v
        out[...] = v
        return out
    return g


def _yukawa_dg(lam):
    def dg(r):
        """-exp(-lam r) (1 + lam r) / (4 pi r^2)."""
        return -np.exp(-lam * r) * (1.0 + lam * r) * INV4PI / (r * r)
    return dg


def _real_param(name, value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what}: {name} must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{what}: {name} must be finite and > 0, got {value!r}")
    return value


#: Yukawa sums (kernels/yukawa.py): k charges and/or dipoles, and the near field of one charge
#: vector by Newton's third law when the targets are the sources (``p2p_sym``).
_YUKAWA_SUMS = (
    (("p2p", "densities", "pot|potgrad"), "yukawa_p2p"),
    (("p2p_sym", "charge", "pot|potgrad"), "yukawa_p2p_sym"),
    (("p2c", "densities", "check"), "yukawa_p2c"),
    (("s2p", "surfaces", "pot|potgrad"), "yukawa_s2p"),
)


def Yukawa(lam):
    """The Yukawa (modified Helmholtz, screened Coulomb) kernel G(x, y) = exp(-lam r) / (4 pi r),
    r = |x - y|, for a real screening parameter ``lam`` > 0 (units: 1 / length). Real
    densities and fields (float32/float64)."""
    lam = _real_param("lam", lam, "Yukawa")
    return KernelFamily(name="yukawa", params=(("lam", lam),), scalar="real", degree=None,
                        components=1, g_of_r=_yukawa_g(lam), eps_table=_YUKAWA_EPS_TABLE,
                        worst_error=_YUKAWA_WORST_ERROR, sums=_YUKAWA_SUMS, frame_degree=-1,
                        label=f"Yukawa(lam={lam!r})", make=Yukawa, dg_of_r=_yukawa_dg(lam),
                        decay_rate=lam, regular_mu2=lambda lam: lam * lam)


# -------------------------------------------------------------------------------- Helmholtz

def _helmholtz_g(kappa):
    def g(r, out=None):
        """exp(i kappa r) / (4 pi r), elementwise (complex)."""
        v = np.exp(1j * kappa * r) * INV4PI / r
        if out is None:
            return v
        out[...] = v
        return out
    return g


def _helmholtz_dg(kappa):
    def dg(r):
        """exp(i kappa r) (i kappa r - 1) / (4 pi r^2) (complex)."""
        return np.exp(1j * kappa * r) * (1j * kappa * r - 1.0) * INV4PI / (r * r)
    return dg


def _complex_param(name, value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Complex):
        raise TypeError(f"{what}: {name} must be a number, got {value!r}")
    value = complex(value)
    if not cmath.isfinite(value):
        raise ValueError(f"{what}: {name} must be finite, got {value!r}")
    if value.real < 0.0 or value.imag < 0.0 or value == 0:
        raise ValueError(f"{what}: {name} must have Re >= 0 and Im >= 0 (outgoing or decaying "
                         f"waves) and not be 0 (that is the Laplace kernel), got {value!r}")
    return value


_HELMHOLTZ_SUMS = (
    (("p2p", "densities", "pot|potgrad"), "helmholtz_p2p"),
    (("p2c", "densities", "check"), "helmholtz_p2c"),
    (("s2p", "surfaces", "pot|potgrad"), "helmholtz_s2p"),
)


#: |kappa| D -> orders added to the eps table's p (D the domain's largest extent), so that a
#: Helmholtz plan reaches Laplace's measured errors: benchmarks/accuracy.py --kernel helmholtz
#: --param-d X (uniform, sphere, clustered and 3 separate-target cases, n = 2e4, float64).
#: Worst error of the sources = targets cases at p = 6, 8, 10, 12: kappa D = 10 (uniform only)
#: 3.3e-6, 4.6e-8, 2.1e-9, -; 20: 1.2e-4, 8.8e-6, 1.3e-7, 9.0e-10; 40: 4.9e-3, 2.4e-5, 9.1e-8,
#: 9.5e-10; 60: 10, 6.2e-3, 4.9e-5, 2.6e-7 (not served: it needs more than 4 extra orders).
#: Laplace's worst at p = 4, 6, 8, 10 is 4.8e-4, 1.0e-5, 1.3e-7, 4.0e-9. Above the last row an
#: AccuracyWarning says the result may miss eps.
_HELMHOLTZ_ORDERS = ((10.0, 0), (20.0, 2), (40.0, 3))


#: The most radians (|Re kappa| times the domain size) an oscillating kernel may span: an ulp of
#: a float64 distance moves the phase by 2^-53 of it (0.1 rad here); the compiled sums' phase
#: reduction gave |values| far above u-bar from ~1e17.
PHASE_MAX = 1e15


def Helmholtz(kappa):
    """The Helmholtz kernel G(x, y) = exp(i kappa r) / (4 pi r), r = |x - y|, for a wavenumber
    ``kappa`` (real > 0; a complex kappa with Re, Im >= 0 is accepted: a decaying wave).
    Complex densities and fields (complex64/complex128; coordinates float32/float64)."""
    kappa = _complex_param("kappa", kappa, "Helmholtz")
    shown = kappa.real if kappa.imag == 0 else kappa
    return KernelFamily(name="helmholtz", params=(("kappa", kappa),), scalar="complex",
                        degree=None, components=1, g_of_r=_helmholtz_g(kappa),
                        eps_table=_HELMHOLTZ_EPS_TABLE, worst_error=_HELMHOLTZ_WORST_ERROR,
                        sums=_HELMHOLTZ_SUMS, frame_degree=-1,
                        label=f"Helmholtz(kappa={shown!r})", make=Helmholtz,
                        dg_of_r=_helmholtz_dg(kappa), decay_rate=kappa.imag,
                        size_orders=_HELMHOLTZ_ORDERS, regular_mu2=lambda kappa: -kappa * kappa)


#: Every family with compiled sums, one instance each (the dispatch table is built from these:
#: its keys are the family names).
FAMILIES = (LAPLACE, Yukawa(1.0), Helmholtz(1.0))


def key_parameters(key):
    """The kernel and its parameters in an operator cache key, as ``[(name, value)]``: the
    inverse of :meth:`KernelFamily.cache_key` for display (a complex parameter rejoined from its
    ``_re``/``_im`` fields; a real one as stored). A kernel this build does not know: its name
    only; no kernel field: []."""
    if "kernel" not in key:
        return []
    family = next((f for f in FAMILIES if f.name == key["kernel"]), None)
    out = [("kernel", key["kernel"])]
    for name, _ in (family.params if family is not None else ()):
        if name in key:
            out.append((name, key[name]))
        elif name + "_re" in key:
            im = float(key.get(name + "_im", 0.0))
            out.append((name, complex(float(key[name + "_re"]), im) if im else
                        key[name + "_re"]))
    return out
