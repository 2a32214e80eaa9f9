"""aotfmm: a kernel-independent fast multipole method for the 3D Laplace kernel 1/(4 pi r),
with Numba kernels compiled ahead of time (no JIT, no Numba at run time).

Public API: :func:`laplace` (one call), :func:`lfmm` (FMM3D-style: sources and targets, charges
and dipoles, pg/pgt) and :class:`Fmm` (a plan: build once, evaluate many densities),
:func:`direct` (direct summation), :func:`show_config` / :func:`config`; warnings
:class:`AccuracyWarning` (a result probably misses eps) and :class:`CacheWarning` (the operator
cache could not be used as is). Typed (PEP 561: ships ``py.typed``).
"""
from ._version import __version__
from . import _kernels  # noqa: F401  (chooses the ISA at import; bad AOTFMM_ISA fails here)
from .api import Fields, Fmm, direct, laplace, lfmm
from .evaluate import AccuracyWarning
from .cache import CacheWarning
from ._config import config, show_config

__all__ = ["__version__", "Fmm", "Fields", "laplace", "lfmm", "AccuracyWarning", "CacheWarning",
           "direct", "config", "show_config"]
