"""Public API: the :class:`Fmm` plan (build tree and operators once, evaluate many charge
vectors), the one-call :func:`laplace` and :func:`lfmm` (FMM3D-style), and :func:`direct`
(direct summation, the reference). Input checks live in :mod:`aotfmm._validation`, the
frame and density scaling in :mod:`aotfmm._frame`, the direct sums in :mod:`aotfmm._direct`."""
from __future__ import annotations

import numbers
import os
import time
import typing
import warnings

import numpy as np
import numpy.typing as npt

from . import _dispatch, _progress, _threads
from ._direct import _direct, _direct_multi
from .evaluate import AccuracyWarning, order_error
from ._frame import frame, scaled_densities, to_soa, unscale_fields
from .families import LAPLACE, Helmholtz, KernelFamily, Yukawa
# EPS_DEFAULT, EPS_FLOOR, HESSIAN_EPS_FLOOR live with the eps check; importable from here too
from ._validation import EPS_DEFAULT, EPS_FLOOR, HESSIAN_EPS_FLOOR  # noqa: F401
from ._validation import (as_bool, as_charges, as_densities, as_diagonal, as_points,
                          charges_for_nd, check_eps, check_integer, check_level, check_kernel,
                          from_dipvec, kernel_label, real_dtype, resolve_value_dtype)

if typing.TYPE_CHECKING:  # optional dependencies, for the annotations only
    from matplotlib.axes import Axes
    from scipy.sparse.linalg import LinearOperator

__all__ = ["Fmm", "Fields", "direct", "laplace", "yukawa", "helmholtz", "lfmm", "hfmm"]


#: What float32 reaches with explicit leaves below 32 points (evaluate._SMALL_LEAF_ORDERS): 300
#: points on a k/4 grid at eps 5e-6 gave gradient errors of 2.3-3.3x eps (of the field of |q|)
#: with ncrit 1-8, 1.2x at 31, 0.65x at 32 (hostile test 2026-12-03); more orders made it worse
#: below eps 2e-5 (rounding over deep trees, not truncation), at 1e-4 they help (1.24x -> 0.22x).
FLOAT32_SMALL_LEAF_EPS = 2e-5


def _expected_eps(p, dtype, separate_targets=False, dipoles=False, hessians=False,
                  family=LAPLACE, size=None, ncrit=None):
    """The error a plan of order p is expected to reach: the measured worst case for its order
    (evaluate.order_error, from the kernel family's table), but never below the dtype's floor
    (and Hessians' floor)."""
    floor = EPS_FLOOR[real_dtype(np.dtype(dtype)).name]
    if hessians:
        floor = max(floor, HESSIAN_EPS_FLOOR[real_dtype(np.dtype(dtype)).name])
    return max(order_error(p, separate_targets, dipoles, hessians, family=family, size=size,
                           ncrit=ncrit), floor)


class Fields(typing.NamedTuple):
    """Results of :meth:`Fmm.fields` / :func:`lfmm`: at the sources (``pot``, ``grad``,
    ``hess``) and at the targets (``pottarg``, ``gradtarg``, ``hesstarg``); None where not
    requested. Hessians hold xx, yy, zz, xy, xz, yz (FMM3D's order) in their last axis."""
    pot: np.ndarray | None
    grad: np.ndarray | None
    pottarg: np.ndarray | None
    gradtarg: np.ndarray | None
    hess: np.ndarray | None = None
    hesstarg: np.ndarray | None = None


def _shape_out(pot, grad, single, gradient):
    """(k, n) / (k, 3, n) -> the public shapes: (n,) / (n, 3) or (n, k) / (n, k, 3)."""
    pot_out = np.ascontiguousarray(pot[0] if single else pot.T)
    if not gradient:
        return pot_out
    return pot_out, _shape_vec(grad, single)


def _shape_vec(a, single):
    """(k, c, n) -> (n, c) or (n, k, c)."""
    return np.ascontiguousarray(a[0].T if single else a.transpose(2, 0, 1))


class Fmm:
    """A reusable FMM plan in 3D for the Laplace kernel 1/(4 pi r) (default), the Yukawa kernel
    exp(-lam r)/(4 pi r) or the Helmholtz kernel exp(i kappa r)/(4 pi r).

    Builds the adaptive octree, its interaction lists and the translation operators once; then
    :meth:`evaluate` / :meth:`fields` compute potentials (and gradients) of any number of charge
    and dipole densities, all densities in one traversal.

    Parameters
    ----------
    sources : array_like of shape (n_sources, 3)
    targets : array_like of shape (n_targets, 3), optional
        Evaluation points; default: the sources (self-interaction excluded).
    kernel : aotfmm.Laplace(), aotfmm.Yukawa(lam) or aotfmm.Helmholtz(kappa), optional
        The kernel G(x, y) (default Laplace). Yukawa densities and fields are real; Helmholtz
        densities and fields are complex (``dtype`` complex64/complex128). Hessians are
        available for Laplace only.
    at_sources : bool, optional
        Also evaluate at the sources (default: only when ``targets`` is None). With targets
        and ``at_sources=True``, :meth:`fields` returns both sets from one traversal.
    dipoles : bool, default False
        The plan will evaluate dipole sources: one expansion order more, so that dipole
        fields meet ``eps`` too (evaluating dipoles on a plan without it warns).
    hessians : bool, default False
        The plan will evaluate Hessians (:meth:`fields` with ``pg``/``pgt`` = 3): one order
        more again, three with separate targets (Hessians at targets far from all sources were
        measured up to 1.4x eps with one, 7.5x with two); asking a plan without it for
        Hessians warns.
    eps : float, optional
        Requested relative L2 accuracy of potentials and gradients (default 1e-6 in float64,
        1e-5 in float32); picks the expansion order and leaf size from a measured table.
        Smallest supported: 2e-10 in float64, 5e-6 in float32 (ValueError below).
    p : int, optional
        Expansion order (surface points per cube edge), overriding the one ``eps`` picks.
        The plan then reaches about :attr:`expected_eps`, whatever ``eps`` says; given
        together with an ``eps`` that p cannot meet, an :class:`AccuracyWarning` says so.
    ncrit : int, optional
        Maximum points (sources + targets) per leaf; default from the table. With the
        table's ncrit a plan of the Laplace kernel with at least 1e5 points may enlarge its
        root cube by 2^(1/3) or 2^(2/3) where its leaves would otherwise come out far below
        ncrit (``stats["root_scale"]``; README "Leaf size at unlucky sizes"); a given ncrit
        keeps the points' bounding cube.
    dtype : {None, float32, float64, complex64, complex128}
        Precision of densities and results; None: single precision if the points are float32,
        else double. Complex (and only complex) for a complex kernel (Helmholtz).
    threads : int, optional
        Threads; default ``$AOTFMM_NUM_THREADS`` or all CPUs available.
    cache_dir : str or path, optional
        Operator cache directory (default: ``$AOTFMM_CACHE_DIR`` or the user cache dir).
    progress : bool, default False
        Print each setup and evaluation phase with its time on stderr as it completes.
    _target_prefix : int, optional
        Internal (:mod:`aotfmm.mpi`'s local plans), without ``targets``: only the first that
        many sources are targets. Boxes holding none of them get no near field, no local
        expansion and no L2P, and the pairs among the others still go by Newton's third law;
        the fields at the other points are not meaningful.
    _direct_targets : bool array (m,), optional
        Internal (:mod:`aotfmm.mpi`), with ``targets``: for a decaying kernel, the leaves
        holding these targets take their sources directly (screened by the decay, within a
        budget of pair terms; as the plan does by itself for targets with no source near them
        when its expansions are too coarse).

    Attributes
    ----------
    p, ncrit : int
        The expansion order and leaf size in use.
    eps : float
        The requested accuracy (the dtype's default when none was given).
    expected_eps : float
        The relative error this plan is expected to reach: the worst error measured for its
        order p (``aotfmm/families.py``, the table behind ``eps``) once the orders added for
        separate targets, dipoles and Hessians are taken off, and at least the dtype's floor
        (2e-10 in float64, 5e-6 in float32; 3e-9 for a plan built with ``hessians=True`` in
        float64), and at least 3e-7 where the near field takes float32 pair terms (float64
        from eps 1e-6 up, README "Mixed precision"; Laplace plans whose targets are the sources
        take M2L's compressed products in float32 then too, ~4e-10 of the field of |q|). When
        ``eps`` chooses p it is at most ``eps`` (at most eps / 3 above the floors; Hessians
        asked below 3e-9 excepted); with an explicit ``p`` it can be larger.
    stats : dict
        Tree depth, number of boxes and leaves, list sizes, p, eps, expected_eps, memory.
    timings : dict
        Seconds per setup phase and per operator of the last :meth:`evaluate`.
    family, kernel : aotfmm.families.KernelFamily
        The kernel (``kernel=``; :data:`aotfmm.families.LAPLACE` by default).
    """

    def __init__(self, sources: npt.ArrayLike, targets: npt.ArrayLike | None = None, *,
                 kernel: KernelFamily | None = None, at_sources: bool | None = None, dipoles: bool = False, hessians: bool = False,
                 eps: float | None = None, p: int | None = None, ncrit: int | None = None,
                 dtype: npt.DTypeLike = None, threads: int | None = None,
                 cache_dir: str | os.PathLike | None = None, progress: bool = False,
                 _target_prefix: int | None = None,
                 _direct_targets: npt.ArrayLike | None = None) -> None:
        from . import evaluate
        t0 = time.perf_counter()
        self.family = self.kernel = check_kernel(kernel)
        self.dtype = resolve_value_dtype(self.family, dtype, sources, targets)
        self._rdt = real_dtype(self.dtype)  # coordinates
        self.eps = check_eps(eps, self._rdt)
        self.threads = _threads.resolve_threads(threads)
        # this plan's own threads, used by its setup and every evaluation
        self._workers = _threads.Workers(self.threads)
        p = check_integer("p", p, lo=evaluate.P_MIN, hi=evaluate.P_MAX, allow_none=True)
        ncrit = check_integer("ncrit", ncrit, lo=1, allow_none=True)
        src = as_points("sources", sources)
        trg = src if targets is None else as_points("targets", targets)
        self.n_sources, self.n_targets = src.shape[0], trg.shape[0]
        _target_prefix = check_integer("_target_prefix", _target_prefix, lo=0,
                                       hi=self.n_sources, allow_none=True)
        if _target_prefix is not None and targets is not None:
            raise ValueError("_target_prefix is for plans without targets")
        if _direct_targets is not None:
            _direct_targets = np.asarray(_direct_targets)
            if targets is None or _direct_targets.dtype != bool or \
                    _direct_targets.shape != (self.n_targets,):
                raise ValueError("_direct_targets must be a bool mask over the targets")
        self._targets_given = targets is not None
        if at_sources is None:
            at_sources = targets is None
        at_sources = as_bool("at_sources", at_sources)
        if not at_sources and targets is None:
            raise ValueError("at_sources=False needs targets")
        self._at_sources = at_sources
        self._for_dipoles = as_bool("dipoles", dipoles)
        self._for_hessians = as_bool("hessians", hessians)
        if self._for_hessians and not self.family.hessians:
            raise ValueError(f"{self.family!r} has no Hessians (the Laplace kernel has)")
        self._p_given = p is not None
        # Points given in float32 (or float16) are used exactly as given: scale by a power of
        # two only. Centring them would round them a second time (the FMM would then answer
        # for slightly different points); other inputs are centred to keep float32's digits.
        given_single = all(np.asarray(a).dtype.kind == "f" and np.asarray(a).dtype.itemsize <= 4
                           for a in (sources, targets) if a is not None)
        self._center, self._scale = frame(src, trg, center=not given_single)
        src_xyz = to_soa(src, self._center, self._scale, np.float64)
        trg_xyz = src_xyz if targets is None else to_soa(trg, self._center, self._scale,
                                                        np.float64)
        trg_pts = None if targets is None else trg
        if targets is not None and at_sources:  # one target set: the sources, then the targets
            trg_xyz = np.ascontiguousarray(np.concatenate([src_xyz, trg_xyz], axis=1))
            trg_pts = np.concatenate([src, trg])
        self.progress = as_bool("progress", progress)
        bar = _progress.Progress(self.progress, label="aotfmm setup")
        self._core = evaluate.Plan(src_xyz, trg_xyz, eps=self.eps, p=p, ncrit=ncrit,
                                   dtype=self._rdt, workers=self._workers, cache_dir=cache_dir,
                                   progress=bar, dipoles=self._for_dipoles,
                                   hessians=self._for_hessians,
                                   points=(src, trg_pts, self._center, self._scale),
                                   family=self.family.scaled(self._scale),
                                   target_prefix=_target_prefix,
                                   direct_targets=None if _direct_targets is None or at_sources
                                   else _direct_targets)
        bar.done()
        self.p = self._core.p
        self.ncrit = self._core.ncrit
        plan_kind = dict(separate_targets=not self._core.same, dipoles=self._for_dipoles,
                         hessians=self._for_hessians, family=self._core.family,
                         size=self._core.size, ncrit=self.ncrit)
        self.expected_eps = _expected_eps(self.p, self.dtype, **plan_kind)
        if self._core.mixed_near:  # float32 pair terms in the near field (README)
            self.expected_eps = max(self.expected_eps, _dispatch.MIXED_NEAR_ERROR)
        f32_small = self._rdt == np.float32 and bool(evaluate._leaf_orders(self.ncrit)) and \
            self.expected_eps < FLOAT32_SMALL_LEAF_EPS
        if f32_small:  # float32 rounding over deep trees of tiny leaves: orders do not fix it
            self.expected_eps = FLOAT32_SMALL_LEAF_EPS
        if f32_small and self.eps < FLOAT32_SMALL_LEAF_EPS:  # (the default eps too)
            warnings.warn(f"float32 with leaves below 32 points (ncrit={self.ncrit}) reaches "
                          f"about {FLOAT32_SMALL_LEAF_EPS:.2g}, not eps={self.eps:g}: use a "
                          f"larger ncrit (or leave it out) or dtype=float64", AccuracyWarning,
                          stacklevel=2)
        elif eps is not None and self.expected_eps > self.eps:
            p_eps = evaluate.choose_parameters(self.eps, **plan_kind)[0]
            if evaluate.order_error(p_eps, **plan_kind) > self.eps:
                # even the order eps chooses misses it: the orders it needs (e.g. for a small
                # ncrit) pass P_MAX
                why = (f" with ncrit={self.ncrit} (small leaves take up to "
                       f"{evaluate._leaf_orders(1)} orders more; leave out ncrit for the "
                       f"table's)" if evaluate._leaf_orders(self.ncrit) else "")
                warnings.warn(f"eps={self.eps:g} needs an order above p={evaluate.P_MAX} on "
                              f"this plan{why}: p={self.p} reaches about "
                              f"{self.expected_eps:.2g}", AccuracyWarning, stacklevel=2)
            elif self._p_given and p_eps != self.p:
                warnings.warn(f"p={self.p} reaches about {self.expected_eps:.2g} relative error "
                              f"on this plan (the worst measured for that order), not "
                              f"eps={self.eps:g}: leave out p to let eps choose it (p={p_eps} "
                              f"here)", AccuracyWarning, stacklevel=2)
            # else a floor of the dtype or of Hessians (HESSIAN_EPS_FLOOR): evaluating
            # Hessians says so
        self.timings = dict(self._core.setup_timings, setup_total=time.perf_counter() - t0)

    @property
    def stats(self) -> dict:
        return dict(self._core.stats, n_sources=self.n_sources, n_targets=self.n_targets,
                    eps=self.eps, expected_eps=self.expected_eps, dtype=self.dtype.name,
                    threads=self.threads)

    def evaluate(self, charges: npt.ArrayLike | None = None, *,
                 dipoles: npt.ArrayLike | None = None, gradient: bool = False
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Potentials (and gradients) at the plan's targets for one or several densities.

        All densities go through one traversal of the tree (matrix-matrix products).

        Parameters
        ----------
        charges : array_like of shape (n_sources,) or (n_sources, k), optional
            Real, or complex for a complex kernel (Helmholtz; real ones are taken as complex).
        dipoles : array_like of shape (n_sources, 3) or (n_sources, k, 3), optional
            Dipole moments: a dipole d at y adds d . grad_y G(x, y) at x (the double-layer
            kernel; for Laplace d . (x - y) / (4 pi |x - y|^3)). Give charges, dipoles or both
            (same k).
        gradient : bool, default False

        Returns
        -------
        pot : ndarray of shape (n_targets,) or (n_targets, k)
        grad : ndarray of shape (n_targets, 3) or (n_targets, k, 3), if ``gradient``

        The targets are the sources (self-interaction excluded) unless the plan was built with
        ``targets``; a plan built with ``targets`` and ``at_sources=True`` returns the fields at
        the targets here and both sets from :meth:`fields`.

        A density whose field comes from few points (fewer than min(1000, n/8) effective
        charges, (sum |q|)^2 / sum q^2) has its strongest sources, up to 1000, summed
        directly onto every target and only the rest through the expansions (README "Fields
        of few charges"); this applies to :meth:`fields` too.
        """
        gradient = as_bool("gradient", gradient)
        pot, grad, _, single = self._run(charges, dipoles, gradient)
        lo = self.n_sources if (self._at_sources and self._targets_given) else 0
        return _shape_out(pot[:, lo:], None if grad is None else grad[:, :, lo:], single,
                          gradient)

    def fields(self, charges: npt.ArrayLike | None = None, *,
               dipoles: npt.ArrayLike | None = None, pg: int | None = None,
               pgt: int | None = None) -> Fields:
        """Fields at the sources and at the targets in one traversal (FMM3D's pg/pgt).

        Parameters
        ----------
        charges, dipoles : as in :meth:`evaluate`.
        pg : {0, 1, 2, 3}, optional
            At the sources (self-interaction excluded): 0 nothing, 1 potential, 2 potential
            and gradient, 3 also the Hessian. Default 1 if the plan evaluates at its sources,
            else 0; > 0 needs a plan built with ``at_sources=True`` (the default without
            ``targets``).
        pgt : {0, 1, 2, 3}, optional
            The same at the targets; default 1 if the plan has targets, else 0.

        Returns
        -------
        Fields
            ``pot``, ``grad``, ``hess`` (at the sources) and ``pottarg``, ``gradtarg``,
            ``hesstarg`` (at the targets), shaped like :meth:`evaluate`'s results (Hessians:
            (n, 6) or (n, k, 6), components xx, yy, zz, xy, xz, yz); None where not requested.
            Hessians meet ``eps`` on plans built with ``hessians=True``, down to eps ~3e-9
            in float64 (below, their far-field part levels off; an AccuracyWarning says so).
        """
        pg = check_level("pg", pg, 1 if self._at_sources else 0, self._at_sources,
                         "the plan was built without at_sources=True")
        pgt = check_level("pgt", pgt, 1 if self._targets_given else 0, self._targets_given,
                          "the plan has no targets")
        top = max(pg, pgt)
        pot, grad, hess, single = self._run(charges, dipoles, top >= 2, top == 3)
        ns = self.n_sources if self._at_sources else 0
        out = {}
        for name, lvl, sl in (("", pg, slice(0, ns)), ("targ", pgt, slice(ns, None))):
            out["pot" + name] = _shape_out(pot[:, sl], None, single, False) if lvl else None
            out["grad" + name] = _shape_vec(grad[:, :, sl], single) if lvl >= 2 else None
            out["hess" + name] = _shape_vec(hess[:, :, sl], single) if lvl == 3 else None
        return Fields(**out)

    def _run(self, charges, dipoles, gradient, hessian=False):
        """Validated densities -> (pot (k, n_out), grad (k, 3, n_out) or None,
        hess (k, 6, n_out) or None, single)."""
        q, d, single = as_densities(charges, dipoles, self.n_sources, self.family.complex)
        if d is not None and not self._for_dipoles and not self._p_given:
            warnings.warn("this plan chose its order for charges; dipoles need one more to "
                          f"meet eps={self.eps:g}: build it with Fmm(..., dipoles=True)",
                          AccuracyWarning, stacklevel=3)
        if hessian and not self._for_hessians and not self._p_given:
            warnings.warn("this plan chose its order for potentials and gradients; Hessians "
                          f"need one more to meet eps={self.eps:g}: build it with "
                          "Fmm(..., hessians=True)", AccuracyWarning, stacklevel=3)
        if hessian and not self.family.hessians:
            raise ValueError(f"{self.family!r} has no Hessians (the Laplace kernel has)")
        if hessian and self.eps < HESSIAN_EPS_FLOOR[self._rdt.name]:
            warnings.warn(f"Hessians reach about {HESSIAN_EPS_FLOOR[self._rdt.name]:g} "
                          f"relative error in {self._rdt.name}, not eps={self.eps:g} (their "
                          "far-field part levels off there)", AccuracyWarning, stacklevel=3)
        gradient = gradient or hessian
        t0 = time.perf_counter()
        k = (q if q is not None else d).shape[0]
        n_out = self._core.trg.shape[1]
        timings = {}
        live, qscale, qs, ds = scaled_densities(q, d, self._scale)
        frame_outs = None
        if self.n_sources and n_out and len(live):
            bar = _progress.Progress(self.progress, label="aotfmm evaluate")
            pc, gc, hc, timings = self._core.evaluate(qs, gradient, progress=bar, dipoles=ds,
                                                      hessian=hessian)
            bar.done()
            frame_outs = (pc, gc, hc)
        if frame_outs is not None and len(live) == k and frame_outs[0].dtype == self.dtype:
            pot, grad, hess = outs = frame_outs  # every density: scaled in place
        else:  # some densities all zero (their fields are 0), or no work at all
            pot = np.zeros((k, n_out), dtype=self.dtype)
            grad = np.zeros((k, 3, n_out), dtype=self.dtype) if gradient else None
            hess = np.zeros((k, 6, n_out), dtype=self.dtype) if hessian else None
            outs = (pot, grad, hess)
        if frame_outs is not None:
            unscale_fields(outs, frame_outs, live, qscale, self._scale, family=self.family,
                           eps=self.eps)
        timings["evaluate_total"] = time.perf_counter() - t0
        self.timings = {k_: v for k_, v in self.timings.items() if not k_.startswith("eval:")}
        self.timings.update({f"eval:{k_}": v for k_, v in timings.items()})
        return pot, grad, hess, single

    def as_linear_operator(self, diagonal: float | complex | npt.ArrayLike | None = None
                           ) -> LinearOperator:
        """The FMM as a ``scipy.sparse.linalg.LinearOperator`` (sources = targets).

        ``A @ q`` is the potential at the sources of charges ``q`` (self term excluded) plus
        ``diagonal * q``: ``diagonal`` (a scalar or an (n,) array, default 0; complex for a
        complex kernel) supplies the self term a discretisation needs. Use it with scipy's
        iterative solvers (GMRES, CG, ...); the product is accurate to the plan's ``eps``.
        Needs scipy.

        ``A @ X`` with an (n, k) block (``matmat``) evaluates all k columns in one traversal
        (one :meth:`evaluate` call with k densities), not k products; ``diagonal`` scales each
        column.

        A real kernel (Laplace, Yukawa) gives a real symmetric operator (dtype float32/float64,
        products in float64): complex vectors and blocks are split into real and imaginary
        parts, which also go through one traversal, and ``A.H`` (``rmatvec``, ``rmatmat``) is
        ``A`` (up to the FMM's eps). The Helmholtz kernel gives a complex operator (dtype
        complex64/complex128, products in complex128) that is complex symmetric, not
        Hermitian: ``A.T`` is ``A``, and ``A.H @ x`` is ``conj(A @ conj(x))`` (with the
        diagonal conjugated too), which is how ``rmatvec`` computes it.
        """
        try:
            from scipy.sparse.linalg import LinearOperator
        except ImportError:
            raise ImportError("as_linear_operator needs scipy: pip install scipy") from None
        if self._targets_given:
            raise ValueError("as_linear_operator needs a plan whose targets are its sources "
                             "(build it with targets=None)")
        n = self.n_sources
        diag = as_diagonal(diagonal, n, self.family.complex)
        dcol = diag[:, None] if diag.ndim == 1 else diag

        def matmat(x):
            x = np.asarray(x).reshape(n, -1)
            return self._matmat(x) + dcol * x

        def matvec(x):
            return matmat(np.asarray(x).reshape(n, 1))[:, 0]

        if not self.family.complex:  # real symmetric: A.H = A
            return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, matmat=matmat,
                                  rmatmat=matmat, dtype=self.dtype)

        def rmatmat(x):  # complex symmetric: A.H = conj(A), so A.H x = conj(A conj(x))
            return np.conj(matmat(np.conj(np.asarray(x))))

        def rmatvec(x):
            return rmatmat(np.asarray(x).reshape(n, 1))[:, 0]

        return LinearOperator((n, n), matvec=matvec, rmatvec=rmatvec, matmat=matmat,
                              rmatmat=rmatmat, dtype=self.dtype)

    def _matmat(self, x):
        """Potentials at the sources for the k columns of ``x`` (n, k), in one traversal, as
        float64 (complex for complex ``x``: real and imaginary parts as 2k densities), or
        complex128 for a complex kernel (complex densities as they are)."""
        k = x.shape[1]
        if self.family.complex:
            if k == 0:
                return np.zeros((self.n_sources, 0), dtype=np.complex128)
            return self.evaluate(x).astype(np.complex128)
        if k == 0:
            return np.zeros((self.n_sources, 0), dtype=np.result_type(x.dtype, np.float64))
        if np.iscomplexobj(x):  # scipy probes with complex vectors in some solvers
            y = self.evaluate(np.concatenate([x.real, x.imag], axis=1)).astype(np.float64)
            return y[:, :k] + 1j * y[:, k:]
        return self.evaluate(x).astype(np.float64)

    def plot_tree(self, ax: Axes | None = None, axis: int = 2, *, max_points: int = 20_000,
                  colorbar: bool = True) -> Axes:
        """Draw the octree's leaves and the sources, projected along one axis (matplotlib).

        Leaves are drawn as box outlines coloured by their level (deepest on top), above the
        points, so dense clusters do not hide their boxes. Boxes of different depth along the
        projection axis overlap in the picture. Needs matplotlib (``pip install matplotlib``).

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw; default: a new 6 x 6 inch figure.
        axis : {0, 1, 2}, default 2
            The axis projected away (2: look along z, at the x-y plane).
        max_points : int, default 20000
            At most this many sources are drawn: a fixed (seeded) random subset of the
            sources when there are more, so the same plan always gives the same picture. 0
            draws boxes only.
        colorbar : bool, default True
            Add a colorbar of the leaf levels next to ``ax``.

        Returns
        -------
        matplotlib.axes.Axes
            ``ax``, with the boxes as a ``PolyCollection`` (gid ``"aotfmm-leaves"``) and the
            points as a ``Line2D`` (gid ``"aotfmm-points"``).
        """
        try:
            import matplotlib
            import matplotlib.pyplot as plt
            from matplotlib.cm import ScalarMappable
            from matplotlib.collections import PolyCollection
            from matplotlib.colors import BoundaryNorm, ListedColormap
        except ImportError:
            raise ImportError("plot_tree needs matplotlib: pip install matplotlib") from None
        axis = check_integer("axis", axis, lo=0, hi=2)
        max_points = check_integer("max_points", max_points, lo=0)
        colorbar = as_bool("colorbar", colorbar)
        keep = [a for a in range(3) if a != axis]
        tree = self._core.tree
        scale, center = self._scale, self._center
        levels = tree.levels[tree.leaves].astype(np.int64)
        order = np.argsort(levels, kind="stable")  # deepest last: drawn on top
        leaves, levels = tree.leaves[order], levels[order]
        c = tree.centers[leaves][:, keep] * scale + center[keep]
        h = (tree.half_widths[leaves] * scale)[:, None]
        corners = np.stack([c + h * np.array(s) for s in ((-1, -1), (1, -1), (1, 1), (-1, 1))],
                           axis=1)
        lo, hi = int(levels.min()), int(levels.max())
        if hi - lo < 10:  # distinct colours, all visible on white
            cmap = ListedColormap(matplotlib.colormaps["tab10"].colors[:hi - lo + 1])
        else:
            cmap = matplotlib.colormaps["turbo"].resampled(hi - lo + 1)
        norm = BoundaryNorm(np.arange(lo - 0.5, hi + 1.0), cmap.N)
        if ax is None:
            ax = plt.figure(figsize=(6, 6)).add_subplot()
        boxes = PolyCollection(corners, facecolors="none", edgecolors=cmap(norm(levels)),
                               linewidths=0.7, zorder=3)
        boxes.set_gid("aotfmm-leaves")
        ax.add_collection(boxes)
        pts = self._core.frame_points("src")
        n = pts.shape[1]
        if n > max_points:
            pick = np.sort(np.random.default_rng(0).choice(n, size=max_points, replace=False))
            pts = pts[:, pick]
        pts = pts[keep] * scale + center[keep, None]
        (line,) = ax.plot(pts[0], pts[1], ",", color="0.55", zorder=2)
        line.set_gid("aotfmm-points")
        ax.set_aspect("equal")
        ax.autoscale_view()
        ax.set_xlabel("xyz"[keep[0]])
        ax.set_ylabel("xyz"[keep[1]])
        shown = f", {pts.shape[1]} of {n} sources shown" if pts.shape[1] < n else ""
        ax.set_title(f"{len(tree.leaves)} leaves, {tree.n_levels} levels, p={self.p}{shown}")
        if colorbar:
            ticks = np.arange(lo, hi + 1)
            if len(ticks) > 12:
                ticks = ticks[::-(-len(ticks) // 12)]
            ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, ticks=ticks,
                               label="leaf level", shrink=0.8)
        return ax

    def report(self, file=None) -> str:
        """A readable table of the plan: accuracy, tree, list sizes, per-operator times and
        memory.

        Printed to ``file`` (default stdout); pass ``file=False`` to only return the text.
        """
        st = self.stats
        how = "p given" if self._p_given else "p from eps"
        lines = [repr(self),
                 f"accuracy: eps {self.eps:g} requested, about {self.expected_eps:.2g} expected "
                 f"(p={self.p}, {how})",
                 f"tree: {st['levels']} levels, {st['boxes']} boxes, {st['leaves']} leaves; "
                 f"surface points {st['n_surf']}, M2L rank {st['m2l_rank']}" + (
                     f"; root cube {st['root_scale']:.3g}x the points' (leaf size)"
                     if st.get("root_scale", 1.0) != 1.0 else ""),
                 "list sizes (mean / max): " + ", ".join(
                     f"{k.upper()} {v['mean']:.1f} / {v['max']}"
                     for k, v in st["list_sizes"].items())]
        setup = {k: v for k, v in self.timings.items() if not k.startswith("eval:")}
        evals = {k[5:]: v for k, v in self.timings.items() if k.startswith("eval:")}
        lines.append("setup: " + ", ".join(f"{k} {v:.3f} s" for k, v in setup.items()))
        if evals:
            total = evals.pop("evaluate_total")
            lines.append(f"last evaluate: {total:.3f} s")
            lines.append(f"  {'operator':10} {'seconds':>9} {'share':>6}")
            for name, sec in sorted(evals.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {name:10} {sec:9.4f} {sec / total:6.1%}")
        mem = st["memory_bytes"]
        lines.append("memory: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in mem.items()))
        text = "\n".join(lines)
        if file is not False:
            print(text, file=file)
        return text

    def __repr__(self) -> str:
        return (f"Fmm(n_sources={self.n_sources}, n_targets={self.n_targets}, p={self.p}, "
                f"ncrit={self.ncrit}, eps={self.eps:g}, expected_eps={self.expected_eps:.2g}, "
                f"dtype={self.dtype.name}, threads={self.threads})")


def direct(sources, charges=None, targets=None, *, dipoles=None, gradient=False, dtype=None,
           threads=None, kernel=None):
    """Potentials (and gradients) of point charges and/or dipoles by direct summation.

    Computes, for every target x_i,

        u(x_i) = sum_j q_j G(x_i, y_j) + d_j . grad_y G(x_i, y_j)

    and its gradient in x_i, leaving out coincident pairs (x_i == y_j contributes 0, so the
    self-interaction is excluded when ``targets`` is None). G is the ``kernel``, r = |x - y|:

    * Laplace (default): G = 1 / (4 pi r), a dipole adds d . (x - y) / (4 pi r^3);
    * ``aotfmm.Yukawa(lam)``: G = exp(-lam r) / (4 pi r), real;
    * ``aotfmm.Helmholtz(kappa)``: G = exp(i kappa r) / (4 pi r), complex densities and
      results (real densities are accepted and taken as complex).

    Parameters
    ----------
    sources : array_like of shape (n_sources, 3)
        Source coordinates, any real dtype and memory order.
    charges : array_like of shape (n_sources,) or (n_sources, k), optional
    targets : array_like of shape (n_targets, 3), optional
        Evaluation points; default: the sources themselves.
    dipoles : array_like of shape (n_sources, 3) or (n_sources, k, 3), optional
        Dipole moments (double-layer sources). Charges, dipoles or both (same k).
    gradient : bool, default False
        Also return the gradient of the potential at each target.
    dtype : {None, float32, float64}, or {None, complex64, complex128} for Helmholtz
        Precision of the computation and the result. None: single precision if the float
        (and complex) inputs are all single (float32, complex64), else double.
    threads : int, optional
        Threads to use; default ``$AOTFMM_NUM_THREADS`` or all CPUs available to the process.
    kernel : aotfmm.Laplace(), aotfmm.Yukawa(lam) or aotfmm.Helmholtz(kappa), optional
        The kernel G (default Laplace).

    Returns
    -------
    pot : ndarray of shape (n_targets,) or (n_targets, k)
    grad : ndarray of shape (n_targets, 3) or (n_targets, k, 3)
        Only if ``gradient`` is True; then ``(pot, grad)`` is returned.

    Raises
    ------
    TypeError
        Non-numeric, boolean or (for a real kernel) complex arrays; bad ``dtype``, ``kernel``
        or ``threads`` types.
    ValueError
        Wrong shapes, mismatched lengths, NaN or infinity in the input; a real dtype for
        Helmholtz or a complex one for a real kernel; Helmholtz with |Re kappa| times the
        domain size above 1e15 (``families.PHASE_MAX``: float64 points do not fix the phase).
    FloatingPointError
        The result overflows the chosen dtype.

    Examples
    --------
    >>> import numpy as np, aotfmm
    >>> aotfmm.direct([[0.0, 0, 0], [1.0, 0, 0]], [1.0, 1.0]) * 4 * np.pi
    array([1., 1.])
    """
    family = check_kernel(kernel)
    gradient = as_bool("gradient", gradient)
    dt = resolve_value_dtype(family, dtype, sources, charges, targets, dipoles)
    workers = _threads.Workers(threads)
    src = as_points("sources", sources)
    trg = src if targets is None else as_points("targets", targets)
    if family is LAPLACE and dipoles is None and charges is not None and np.ndim(charges) == 1:
        q = as_charges("charges", charges, src.shape[0])
        return _direct(src, q, trg, gradient, dt, workers)
    q, d, single = as_densities(charges, dipoles, src.shape[0], family.complex)
    if family.complex and len(src) and len(trg):
        pts = np.concatenate([src, trg]) if trg is not src else src
        family.check_phase(float((pts.max(axis=0) - pts.min(axis=0)).max()))
    pot, grad = _direct_multi(src, q, d, trg, gradient, real_dtype(dt), workers, family=family)
    return _shape_out(pot, grad, single, gradient)


def _one_call(family, sources, charges, targets, dipoles, eps, gradient, dtype, threads):
    """:func:`laplace`, :func:`yukawa`, :func:`helmholtz`: every argument checked, then an
    :class:`Fmm` plan built and evaluated once."""
    dt = resolve_value_dtype(family, dtype, sources, charges, targets, dipoles)
    gradient = as_bool("gradient", gradient)
    n = as_points("sources", sources).shape[0]
    as_densities(charges, dipoles, n, family.complex)  # fail before building anything
    # the caller's arrays, not converted copies: Fmm treats float32 points specially
    plan = Fmm(sources, targets, kernel=family, dipoles=dipoles is not None, eps=eps, dtype=dt,
               threads=threads)
    return plan.evaluate(charges, dipoles=dipoles, gradient=gradient)


def laplace(sources: npt.ArrayLike, charges: npt.ArrayLike | None = None,
            targets: npt.ArrayLike | None = None, *, dipoles: npt.ArrayLike | None = None,
            eps: float | None = None, gradient: bool = False, dtype: npt.DTypeLike = None,
            threads: int | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Potentials (and gradients) of point charges and/or dipoles by the FMM, in one call.

    u(x) = sum_j q_j / (4 pi |x - y_j|) + d_j . (x - y_j) / (4 pi |x - y_j|^3), coincident
    pairs left out: the conventions of :func:`aotfmm.direct`. Builds an :class:`Fmm` plan and
    evaluates it once; to evaluate several densities on the same points, build the plan
    yourself (or pass all densities at once as (n, k) columns).

    Parameters
    ----------
    sources : array_like of shape (n_sources, 3)
        Source points, one per row (any real dtype and memory order).
    charges : array_like of shape (n_sources,) or (n_sources, k), optional
        Charge densities; k columns are k densities, evaluated in one traversal.
    targets : array_like of shape (n_targets, 3), optional
        Evaluation points; default: the sources (self-interaction excluded).
    dipoles : array_like of shape (n_sources, 3) or (n_sources, k, 3), optional
        Dipole moments (double layer). Give charges, dipoles or both (the same k).
    eps : float, optional
        Requested relative L2 accuracy of potentials and gradients: default 1e-6 in float64,
        1e-5 in float32; smallest 2e-10 (float64) / 5e-6 (float32).
    gradient : bool, default False
        Also return the gradients.
    dtype : {None, float32, float64}
        Compute precision; None: float32 if every float input is float32, else float64.
    threads : int, optional
        Threads; default ``$AOTFMM_NUM_THREADS`` or all CPUs available.

    Returns
    -------
    pot : ndarray of shape (n_targets,) or (n_targets, k)
        Potentials at the targets (the sources if no targets), in the caller's point order.
    grad : ndarray of shape (n_targets, 3) or (n_targets, k, 3)
        Gradients, only if ``gradient``: then ``(pot, grad)`` is returned.

    Raises
    ------
    ValueError, TypeError
        Bad shapes, NaN/inf, non-real input or bad parameters, before anything is computed.
    """
    return _one_call(LAPLACE, sources, charges, targets, dipoles, eps, gradient, dtype, threads)


def yukawa(sources: npt.ArrayLike, charges: npt.ArrayLike | None, lam: float,
           targets: npt.ArrayLike | None = None, *, dipoles: npt.ArrayLike | None = None,
           eps: float | None = None, gradient: bool = False, dtype: npt.DTypeLike = None,
           threads: int | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Yukawa (modified Helmholtz, screened Coulomb) potentials (and gradients) by the FMM, in
    one call: :func:`laplace` with the kernel G(x, y) = exp(-lam r) / (4 pi r), r = |x - y|.

    u(x) = sum_j q_j G(x, y_j) + d_j . grad_y G(x, y_j), coincident pairs left out; a dipole
    d at y adds d . (x - y) (1 + lam r) exp(-lam r) / (4 pi r^3). Real densities and results.
    The same as ``aotfmm.Fmm(sources, targets, kernel=aotfmm.Yukawa(lam), ...)`` evaluated
    once; the conventions of :func:`aotfmm.direct` with ``kernel=aotfmm.Yukawa(lam)``.

    Parameters
    ----------
    sources : array_like of shape (n_sources, 3)
    charges : array_like of shape (n_sources,) or (n_sources, k), or None
        Charge densities (real); None with ``dipoles`` only.
    lam : float
        Screening parameter, finite and > 0 (units 1 / length of the points).
    targets, dipoles, eps, gradient, threads
        As in :func:`laplace`.
    dtype : {None, float32, float64}
        As in :func:`laplace`.

    Returns
    -------
    pot : ndarray of shape (n_targets,) or (n_targets, k)
    grad : ndarray of shape (n_targets, 3) or (n_targets, k, 3), if ``gradient``

    Raises
    ------
    ValueError, TypeError
        ``lam`` not a finite real > 0 (or a bool), complex densities, and what
        :func:`laplace` refuses, before anything is computed.
    """
    family = Yukawa(lam)
    return _one_call(family, sources, charges, targets, dipoles, eps, gradient, dtype, threads)


def helmholtz(sources: npt.ArrayLike, charges: npt.ArrayLike | None, kappa: complex,
              targets: npt.ArrayLike | None = None, *, dipoles: npt.ArrayLike | None = None,
              eps: float | None = None, gradient: bool = False, dtype: npt.DTypeLike = None,
              threads: int | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Helmholtz potentials (and gradients) by the FMM, in one call: :func:`laplace` with the
    kernel G(x, y) = exp(i kappa r) / (4 pi r), r = |x - y|, and complex values.

    u(x) = sum_j q_j G(x, y_j) + d_j . grad_y G(x, y_j), coincident pairs left out; a dipole
    d at y adds d . (x - y) (1 - i kappa r) exp(i kappa r) / (4 pi r^3). Densities may be
    real or complex; results are complex (complex64 / complex128). The same as
    ``aotfmm.Fmm(sources, targets, kernel=aotfmm.Helmholtz(kappa), ...)`` evaluated once;
    the conventions of :func:`aotfmm.direct` with ``kernel=aotfmm.Helmholtz(kappa)``, and of
    FMM3D's ``hfmm3d`` from v2.1.0 on (see :func:`hfmm`).

    Parameters
    ----------
    sources : array_like of shape (n_sources, 3)
    charges : array_like of shape (n_sources,) or (n_sources, k), or None
        Charge densities (complex or real); None with ``dipoles`` only.
    kappa : float or complex
        Wavenumber: real, finite and > 0 (a complex kappa with Re >= 0, Im >= 0, not 0, is
        accepted: a decaying wave).
    targets, dipoles, eps, gradient, threads
        As in :func:`laplace` (``dipoles`` may be complex).
    dtype : {None, complex64, complex128}
        Precision of densities and results; None: complex64 if every float and complex input
        is single precision (float32, complex64), else complex128. A real dtype is refused.

    Returns
    -------
    pot : complex ndarray of shape (n_targets,) or (n_targets, k)
    grad : complex ndarray of shape (n_targets, 3) or (n_targets, k, 3), if ``gradient``

    Raises
    ------
    ValueError, TypeError
        ``kappa`` not finite, 0 or with a negative part (or a bool), a real ``dtype``, and
        what :func:`laplace` refuses, before anything is computed.
    """
    family = Helmholtz(kappa)
    return _one_call(family, sources, charges, targets, dipoles, eps, gradient, dtype, threads)


def _refuse_fmm3d_order(func, sources):
    """A number where the sources go: FMM3D's positional order (eps first), refused."""
    if isinstance(sources, (numbers.Number, np.number)):
        raise TypeError(f"{func} takes the sources (n, 3) first, got {sources!r}: pass eps, "
                        "zk and the rest by keyword (fmm3dpy's functions take every argument "
                        "by keyword, so those calls work unchanged)")


def _fmm3d_call(func, family, sources, charges, targets, dipoles, dipvec, nd, pg, pgt, eps,
                dtype, threads):
    """:func:`lfmm` and :func:`hfmm`: FMM3D's layouts and pg/pgt checked and mapped, one
    :class:`Fmm` plan evaluated once by :meth:`Fmm.fields`."""
    _refuse_fmm3d_order(func, sources)
    n = as_points("sources", sources).shape[0]
    if targets is not None:
        as_points("targets", targets)  # checked even when pgt=0 leaves them unused
    cplx = family.complex
    if dipvec is not None:
        if dipoles is not None:
            raise ValueError("give dipoles= (our (n, 3) / (n, k, 3) layout) or dipvec= "
                             "(FMM3D's (3, n) / (nd, 3, n)), not both")
        dipoles = from_dipvec(dipvec, n, cplx)
    if nd is not None:
        nd = check_integer("nd", nd, lo=1)
        charges = charges_for_nd(charges, nd, n, cplx)
    dt = resolve_value_dtype(family, dtype, sources, charges, targets, dipoles)
    q, d, _ = as_densities(charges, dipoles, n, cplx)
    if nd is not None and (q if q is not None else d).shape[0] != nd:
        got = (q if q is not None else d).shape[0]
        raise ValueError(f"nd={nd} but the densities given hold {got} (charges "
                         f"{np.shape(charges)}, dipoles {np.shape(dipoles)})")
    pgt = (0 if targets is None else 1) if pgt is None else pgt
    check_level("pg", pg, 0, True, "")
    check_level("pgt", pgt, 0, targets is not None, "need targets")
    if not pg and not pgt:
        raise ValueError("pg and pgt are both 0: nothing to compute")
    for name, level in (("pg", pg), ("pgt", pgt)):
        if level == 3 and not family.hessians:
            raise ValueError(f"{name}=3 asks for Hessians, which aotfmm computes for the "
                             f"Laplace kernel only, not for {kernel_label(family)}: use "
                             f"{name}=2 (potential and gradient)")
    plan = Fmm(sources, targets if pgt else None, kernel=family,
               at_sources=bool(pg) or targets is None, dipoles=dipoles is not None,
               hessians=max(pg, pgt) == 3, eps=eps, dtype=dt, threads=threads)
    return plan.fields(charges, dipoles=dipoles, pg=pg, pgt=pgt if targets is not None else None)


def lfmm(sources: npt.ArrayLike, charges: npt.ArrayLike | None = None,
         targets: npt.ArrayLike | None = None, *, dipoles: npt.ArrayLike | None = None,
         dipvec: npt.ArrayLike | None = None, nd: int | None = None, pg: int = 1,
         pgt: int | None = None, eps: float | None = None, dtype: npt.DTypeLike = None,
         threads: int | None = None) -> Fields:
    """FMM3D-style call: fields at the sources and/or at the targets in one traversal.

    Kernel 1/(4 pi r), dipoles d . (x - y) / (4 pi |x - y|^3), coincident pairs left out:
    the same as FMM3D's ``lfmm3d`` from FMM3D v2.1.0 on (fmm3dpy 2.1.0; measured with fmm3dpy
    2.1.0: equal to a 1/(4 pi r) sum to 1e-15), so results compare directly. FMM3D up to
    v2.0.0 (and fmm3dpy 1.0.0) used 1/r without the 1/(4 pi): multiply our results by 4 pi
    to compare with those (FMM3D pull request #62, "1/4pi factor", merged for v2.1.0).

    Parameters
    ----------
    sources : array_like of shape (n, 3)
        Source points, one per row. FMM3D's (3, n) is refused with a hint (pass
        ``sources.T``): a (3, 3) array could be either, so it is never transposed silently.
    charges : array_like of shape (n,) or (n, k), optional
        Charges; k columns are k densities. FMM3D's (nd, n) layout is accepted when ``nd``
        is given, the shape is (nd, n) and nd != n; with nd == n the two layouts cannot be
        told apart and a ValueError asks for (n, k) (FMM3D's ``charges.T``).
    targets : array_like of shape (nt, 3), optional
        Target points, one per row (FMM3D's ``targets.T``).
    dipoles : array_like of shape (n, 3) or (n, k, 3), optional
        Dipole moments in our layout.
    dipvec : array_like of shape (3, n) or (nd, 3, n), optional
        Dipole moments in FMM3D's layout, as an alternative to ``dipoles`` (giving both is a
        ValueError).
    nd : int, optional
        FMM3D's number of densities: checked against the densities given (ValueError if it
        differs); it also lets ``charges`` come as (nd, n), see above.
    pg, pgt : {0, 1, 2, 3}
        Outputs at the sources (self-interaction excluded; default 1) and at the targets
        (default: 1 if targets are given, else 0): 0 nothing, 1 potential, 2 + gradient,
        3 + Hessian.
    eps : float, optional
        Requested relative L2 accuracy (default 1e-6 in float64, 1e-5 in float32).
    dtype : {None, float32, float64}
    threads : int, optional

    Returns
    -------
    Fields
        ``pot``, ``grad``, ``hess`` (at the sources) and ``pottarg``, ``gradtarg``,
        ``hesstarg`` (at the targets), always in our layout, also when the input came in
        FMM3D's: potentials (n,) or (n, k), gradients (n, 3) or (n, k, 3), Hessians (n, 6) or
        (n, k, 6) in FMM3D's component order xx, yy, zz, xy, xz, yz; None where not
        requested. (FMM3D's are (nd, n), (nd, 3, n), (nd, 6, n): ``res.grad.T`` or
        ``res.grad.transpose(1, 2, 0)`` converts.)

    Unlike fmm3dpy's keyword-only ``lfmm3d``, the sources come first (also positionally);
    fmm3dpy's keyword calls work unchanged. See README "Coming from FMM3D" for the mapping.
    """
    return _fmm3d_call("lfmm", LAPLACE, sources, charges, targets, dipoles, dipvec, nd, pg,
                       pgt, eps, dtype, threads)


def hfmm(sources: npt.ArrayLike, charges: npt.ArrayLike | None = None,
         targets: npt.ArrayLike | None = None, *, zk: complex | None = None,
         dipoles: npt.ArrayLike | None = None, dipvec: npt.ArrayLike | None = None,
         nd: int | None = None, pg: int = 1, pgt: int | None = None, eps: float | None = None,
         dtype: npt.DTypeLike = None, threads: int | None = None) -> Fields:
    """FMM3D-style Helmholtz call (``hfmm3d``): fields at the sources and/or targets in one
    traversal, with :func:`lfmm`'s conventions and layouts.

    u(x) = sum_j c_j G(x, y_j) - v_j . grad_x G(x, y_j), G(x, y) = exp(i zk r) / (4 pi r),
    r = |x - y|, coincident pairs left out (- v . grad_x G = v . grad_y G: our ``dipoles``).
    That is FMM3D's ``hfmm3d`` from FMM3D v2.1.0 on (fmm3dpy 2.1.0; measured: equal to a numpy
    exp(i k r) / (4 pi r) sum to 1e-15 for charges, 2.5e-15 for dipoles with that sign), so
    results compare directly.
    FMM3D up to v2.0.0 (fmm3dpy 1.0.0) used exp(i k r) / r without the 1/(4 pi): multiply
    our results by 4 pi to compare with those (FMM3D pull request #62, merged for v2.1.0).

    Parameters
    ----------
    sources : array_like of shape (n, 3)
        Source points, one per row (FMM3D's ``sources.T``; (3, n) is refused with a hint).
    charges : array_like of shape (n,) or (n, k), complex or real, optional
        As in :func:`lfmm` (FMM3D's (nd, n) accepted with ``nd`` given and nd != n).
    targets : array_like of shape (nt, 3), optional
        Target points, one per row (FMM3D's ``targets.T``).
    zk : float or complex, keyword
        The wavenumber (FMM3D's ``zk``): real > 0, or complex with Re >= 0, Im >= 0 (not 0).
    dipoles : array_like of shape (n, 3) or (n, k, 3), complex or real, optional
        Dipole moments in our layout.
    dipvec : array_like of shape (3, n) or (nd, 3, n), complex or real, optional
        Dipole moments in FMM3D's layout (instead of ``dipoles``).
    nd : int, optional
        As in :func:`lfmm`.
    pg, pgt : {0, 1, 2}
        Outputs at the sources (default 1) and at the targets (default 1 if targets are
        given, else 0): 0 nothing, 1 potential, 2 + gradient. 3 (Hessians) is refused: aotfmm
        has Helmholtz Hessians no more than fmm3dpy's ``hfmm3d`` has. Unlike fmm3dpy, pg and
        pgt may differ when both are given.
    eps : float, optional
        Requested relative L2 accuracy (default 1e-6 in complex128, 1e-5 in complex64).
    dtype : {None, complex64, complex128}
        None: complex64 if every float and complex input is single precision, else
        complex128 (FMM3D computes in complex128). A real dtype is refused.
    threads : int, optional

    Returns
    -------
    Fields
        ``pot``, ``grad`` (at the sources) and ``pottarg``, ``gradtarg`` (at the targets),
        complex, always in our layout: (n,) or (n, k), (n, 3) or (n, k, 3) (FMM3D's
        (nd, n), (3, n), (nd, 3, n): ``res.pot.T``, ``res.grad.T`` for k = 1 or
        ``res.grad.transpose(1, 2, 0)`` convert); None where not requested.

    Unlike fmm3dpy's keyword-only ``hfmm3d``, the sources come first (also positionally);
    fmm3dpy's keyword calls (``hfmm(eps=, zk=, sources=, charges=, ...)``) work unchanged.
    """
    _refuse_fmm3d_order("hfmm", sources)  # (before zk: FMM3D's order passes it positionally)
    if zk is None:
        raise TypeError("hfmm needs the wavenumber: zk= (keyword)")
    try:
        family = Helmholtz(zk)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"zk={zk!r} is not a valid wavenumber: {exc}") from None
    return _fmm3d_call("hfmm", family, sources, charges, targets, dipoles, dipvec, nd, pg, pgt,
                       eps, dtype, threads)
