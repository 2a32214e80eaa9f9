"""aotfmm: a kernel-independent fast multipole method in 3D for the Laplace kernel 1/(4 pi r),
the Yukawa kernel exp(-lam r)/(4 pi r) and the Helmholtz kernel exp(i kappa r)/(4 pi r), with
Numba kernels compiled ahead of time (no JIT, no Numba at run time).

Kernels: :func:`Laplace` (the default), :func:`Yukawa`, :func:`Helmholtz` (``kernel=``).
Public API: :func:`laplace`, :func:`yukawa`, :func:`helmholtz` (one call each), :func:`lfmm`
and :func:`hfmm` (FMM3D-style: sources and targets, charges and dipoles, pg/pgt) and
:class:`Fmm` (a plan for any of the kernels: build once, evaluate many densities),
:func:`direct` (direct summation, any kernel), :func:`show_config` / :func:`config`; warnings
:class:`AccuracyWarning` (a result probably misses eps) and :class:`CacheWarning` (the operator
cache could not be used as is). Typed (PEP 561: ships ``py.typed``).
"""
from ._version import __version__
from . import _kernels  # noqa: F401  (chooses the ISA at import; bad AOTFMM_ISA fails here)
from .api import Fields, Fmm, direct, helmholtz, hfmm, laplace, lfmm, yukawa
from .families import Helmholtz, Laplace, Yukawa
from .evaluate import AccuracyWarning
from .cache import CacheWarning
from ._config import config, show_config

__all__ = ["__version__", "Fmm", "Fields", "laplace", "yukawa", "helmholtz", "lfmm", "hfmm",
           "AccuracyWarning", "CacheWarning", "direct", "config", "show_config", "Laplace",
           "Yukawa", "Helmholtz"]
