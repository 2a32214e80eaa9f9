"""Numba sources of aotfmm's compiled kernels (build-time only).

Nothing here is imported at run time: ``build_tools/compile_kernels.py`` reads each family module
listed in :data:`FAMILIES`, expands its ``SIGNATURES`` and ``LOCALS`` tables over the float types
and compiles everything ahead of time into one extension module per ISA (``aotfmm._kernels_<isa>``).

Conventions (see ``../shared/design/style.md``):

* a family module defines plain Python functions and two tables:

  - ``SIGNATURES``: ``{name: "void({F}[:, ::1], ...)"}``; ``{F}`` is replaced by ``float32`` and
    ``float64`` and the exported symbol gets the suffix ``_f32``/``_f64``; ``{C}`` (complex
    densities and results) by the complex type of the same precision, ``complex64`` with
    ``float32`` and ``complex128`` with ``float64``. A signature with neither is exported once
    under its own name.
  - ``LOCALS``: ``{name: {"var": "{F}"}}`` pins accumulators and constants to the float type so
    that float32 kernels stay float32 (``{C}`` works here too).

* kernels take arrays and scalars only, write into caller-allocated buffers (IN/OUT is stated in
  each docstring), never allocate in inner loops, never call ``np.dot`` and raise nothing: the
  Python front end validates every argument before the call.
* no array views (``a[d, c0:c1]``, a row ``a[d]``) two or more loops deep: each costs an atomic
  reference count pair; index the array in place (``a[d, c0u + j]``;
  ``tests/test_kernel_sources.py``).
* every kernel is compiled with the GIL released and with the fast-math flags in
  :data:`FASTMATH`, which deliberately exclude ``nnan``/``ninf`` so ``r2 > 0`` guards survive.
"""

import os

#: The ISA variant being compiled ("generic", "x86-64-v3", ...), which
#: ``build_tools/compile_kernels.py`` puts in the environment before it imports the families
#: ("" otherwise). The mixed kernels' float32 runs are shorter where their loops stay scalar
#: (kernels/p2p.py ``MIXED_SOURCES``).
ISA = os.environ.get("AOTFMM_KERNELS_ISA", "")

#: Fast-math flags for every kernel: no ``nnan``/``ninf`` (they let LLVM delete ``r2 > 0`` guards).
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

#: Operator families, in the order they are compiled.
FAMILIES = ("p2p", "expansions", "multi", "hessian", "morton", "lists", "yukawa", "helmholtz")
