"""One table from (family, operator, inputs, outputs) to a compiled kernel, and calls by name.

The compiled kernels do no type checking of their own (a wrong dtype crashes, a Fortran-ordered
or short array is read wrongly). So nothing calls them positionally: :func:`bind` takes the
arguments *by the kernel's own parameter names*, checks each against the compiled signature
(dtype, number of dimensions, C order; scalars converted) and returns a function of the
remaining ("free") parameters, typically the range ``i0, i1`` a worker thread takes. Names and
signatures come from ``aotfmm/_exports.py``, which the build generates from ``kernels/`` (see
``build_tools/compile_kernels.py kernel_table``), so a call and its kernel cannot drift apart;
``tests/test_dispatch.py`` checks every table row against it.

:data:`TABLE` maps ``(family, operator, inputs, outputs)`` to a kernel name:

* family: a kernel family's name (rows from its :attr:`aotfmm.families.KernelFamily.sums`,
  for every family of :data:`aotfmm.families.FAMILIES`; Laplace: ``"laplace"``) or ``"any"``
  for kernel-independent helpers (M2L gather/scatter, tree and list construction, Morton codes);
* inputs: ``"charge"`` (one charge vector, the fast single-density kernels), ``"densities"``
  (k charge and/or dipole densities, terms chosen by :func:`density_terms`' flags),
  ``"density"`` / ``"surface"`` (equivalent densities on box surfaces);
* outputs: ``"pot"``, ``"potgrad"``, ``"pot|potgrad"`` (chosen by a flag), ``"hess"``
  (potential, gradient and Hessian), ``"check"`` (check-surface potentials).
"""
import functools
import re

import numpy as np

from . import _kernels
from .families import FAMILIES

try:
    from ._exports import KERNELS
except ImportError:  # a source tree that was never built: the kernels are missing too
    KERNELS = {}

#: (family, operator, inputs, outputs) -> kernel name: each family's sums, then the helpers
TABLE = {(family.name, *row): name for family in FAMILIES for row, name in family.sums}
TABLE.update({
    ("any", "m2l_gather", "rows", "rows"): "m2l_gather",
    ("any", "m2l_scatter", "rows", "rows"): "m2l_scatter",
    ("any", "m2l_gather", "columns", "columns"): "m2l_gather_cols",
    ("any", "l2p_regular", "leaves", "fields"): "l2p_regular",
    ("any", "morton", "points", "codes"): "morton_encode_points",
    ("any", "leaf_anchors", "points", "anchors"): "leaf_anchors",
    ("any", "leaf_offsets", "points", "offsets"): "leaf_offsets",
    ("any", "leaf_offsets_pair", "points", "offsets"): "leaf_offsets_pair",
    ("any", "box_sort_x", "points", "order"): "box_sort_x",
    ("any", "near_risk", "points", "risk"): "near_risk",
    ("any", "colleagues", "tree", "colleagues"): "tree_colleagues",
    ("any", "list_u", "tree", "list"): "lists_u",
    ("any", "list_v", "tree", "list"): "lists_v",
    ("any", "list_w", "tree", "list"): "lists_w",
    ("any", "csr_transpose", "csr", "csr"): "csr_transpose",
    ("any", "octant_groups", "pairs", "groups"): "octant_groups",
})

#: flag bits of the density kernels (kernels/multi.py, kernels/hessian.py)
CHARGES, DIPOLES, GRADIENT, EXACT = 1, 2, 4, 8
#: flag bit of the symmetric near-field sums: exp to ~1e-11 relative (kernels/_vecmath.py)
COARSE_EXP = 16
#: the tolerance from which the near field may use :data:`COARSE_EXP` (1000x its error)
COARSE_EXP_EPS = 1e-8
#: the tolerance from which a float64 plan's near field of one charge vector may take its pair
#: terms in float32 (``p2p_sym_mixed``, ``p2p_mixed``: ~3e-7 per pair, summed in float64). At
#: 1e-6 the order chosen (p = 8) reaches 1.3e-7 at worst, so the contract keeps a margin of 2x
#: over the sum even if every pair erred its most in one direction; measured (2e5 points, 600
#: targets against numpy, contract measure), the float32 terms added at most 1.8e-7 (sphere
#: surface and plane gradients), and 1e6 uniform points took 0.56x the time with gradients.
#: It was 1e-5 until 2026-12-03.
MIXED_NEAR_EPS = 1e-6
#: ... and only when the plan's order is expected to reach no better than this (``order_error``):
#: a plan with an explicit p = 12 and the default eps keeps float64 pair terms.
MIXED_NEAR_ORDER_ERROR = 1e-7
#: what such a plan is expected to reach at best (its ``expected_eps``): where the near field
#: is most of the field the float32 terms show (``benchmarks/accuracy.py --mixed``, 2e4
#: points, leaves of ~300: p = 8 worst 2.7e-7, uniform gradient, against 1.4e-7 in float64)
MIXED_NEAR_ERROR = 3e-7

_ARRAY = re.compile(r"^(\w+|\{F\}|\{C\})\[([:, ]*)::1\]$")
_TYPES = {"i8": np.dtype(np.int64), "f8": np.dtype(np.float64), "f4": np.dtype(np.float32),
          "float64": np.dtype(np.float64), "float32": np.dtype(np.float32),
          "c8": np.dtype(np.complex64), "c16": np.dtype(np.complex128),
          "complex64": np.dtype(np.complex64), "complex128": np.dtype(np.complex128)}
#: float type -> the complex type of the same precision (the ``{C}`` of a signature)
_COMPLEX = {"float32": np.dtype(np.complex64), "float64": np.dtype(np.complex128)}


def _split_args(signature):
    """'void(a, b[:, ::1], c)' -> ['a', 'b[:, ::1]', 'c'] (commas inside [] kept)."""
    inner = signature[signature.index("(") + 1:signature.rindex(")")]
    args, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        args.append(cur.strip())
    return args


def arg_types(name, dtype=None):
    """[(dtype, ndim or None for a scalar)] of kernel ``name``'s parameters, ``{F}`` = dtype
    and ``{C}`` = the complex type of its precision (complex64 for float32, complex128 for
    float64)."""
    return _arg_types(name, None if dtype is None else np.dtype(dtype).name)


@functools.lru_cache(maxsize=None)
def _arg_types(name, dtype):
    spec = KERNELS[name]
    out = []
    for a in _split_args(spec["signature"]):
        m = _ARRAY.match(a)
        base = m.group(1) if m else a
        if base == "{F}":
            dt = np.dtype(dtype)
        elif base == "{C}":
            fname = np.dtype(dtype).name
            if fname not in _COMPLEX:
                raise TypeError(f"{name}: dtype is the float type of the coordinates "
                                f"(float32 or float64), got {fname}")
            dt = _COMPLEX[fname]
        else:
            dt = _TYPES[base]
        out.append((dt, m.group(2).count(":") + 1 if m else None))
    return out


def has_kernel(family, op, inputs, outputs):
    """True when ``family`` has a compiled sum for (op, inputs, outputs) (the single-density
    variants are Laplace's only; other families use their density sums for one vector too)."""
    return (family, op, inputs, outputs) in TABLE


def kernel_name(family, op, inputs, outputs):
    try:
        return TABLE[(family, op, inputs, outputs)]
    except KeyError:
        raise NotImplementedError(f"no compiled kernel for {op} of {family} from {inputs} to "
                                  f"{outputs}") from None


def _check(kernel, pname, value, dt, ndim):
    if ndim is None:
        if type(value) is int or (isinstance(value, np.generic) and value.dtype == dt):
            return dt.type(value)  # a scalar: converted to exactly the compiled type
        if isinstance(value, np.ndarray) and value.ndim:
            raise TypeError(f"{kernel}({pname}=...): expected a scalar, got an array")
        return dt.type(value)
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{kernel}({pname}=...): expected an ndarray, got "
                        f"{type(value).__name__}")
    if value.dtype != dt or value.ndim != ndim or not value.flags.c_contiguous:
        raise TypeError(f"{kernel}({pname}=...): expected a C-contiguous {ndim}-D {dt} array, "
                        f"got {value.ndim}-D {value.dtype}"
                        f"{'' if value.flags.c_contiguous else ' (not C-contiguous)'}")
    return value


def bind(name, dtype=None, module=None, **given):
    """Kernel ``name`` (float type ``dtype`` where it has one) with the arguments ``given`` by
    parameter name, checked against its compiled signature. Returns ``call(*free)``, taking
    the parameters not given, in the kernel's order (``call.free`` names them); those must be
    scalars (ranges, row offsets) and are passed on as they come.
    ``module``: a kernel module other than the active ISA's (tests compare them)."""
    if name not in KERNELS:
        raise NotImplementedError(f"kernel {name!r} is not in this build's kernel table")
    spec = KERNELS[name]
    params = spec["params"]
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise TypeError(f"{name}() has no parameter(s) {', '.join(unknown)}; it takes "
                        f"{', '.join(params)}")
    types = _arg_types(name, None if dtype is None else np.dtype(dtype).name)
    args = [None] * len(params)
    free = []
    for i, (pname, (dt, ndim)) in enumerate(zip(params, types)):
        if pname in given:
            args[i] = _check(name, pname, given[pname], dt, ndim)
        else:
            if ndim is not None:
                raise TypeError(f"{name}(): array parameter {pname!r} not given")
            free.append((i, pname))
    if spec["floats"]:
        kernel = _kernels.get(name, np.dtype(dtype), module)
    else:
        kernel = getattr(module if module is not None else _kernels.kernels, name)

    positions = tuple(f[0] for f in free)
    call = _factory(name, positions)(kernel, *[a for i, a in enumerate(args)
                                               if i not in positions])
    call.free = tuple(f[1] for f in free)
    call.kernel = name
    return call


_factories = {}


def _factory(name, free_positions):
    """``make(kernel, *fixed) -> call(*free)``: a plain function calling the kernel with the
    fixed values and the free ones in place, as cheap per call as the positional call it
    replaces (M2L calls its gather/scatter per transfer vector and chunk, tens of thousands of
    times at 1e6 points). Generated once per kernel and set of free parameters."""
    key = (name, free_positions)
    make = _factories.get(key)
    if make is None:
        params = KERNELS[name]["params"]
        fixed = [f"_a{i}" for i in range(len(params)) if i not in free_positions]
        free = [params[i] for i in free_positions]
        exprs = [params[i] if i in free_positions else f"_a{i}" for i in range(len(params))]
        code = (f"def make(_kernel, {', '.join(fixed)}):\n"
                f"    def call({', '.join(free)}):\n"
                f"        return _kernel({', '.join(exprs)})\n"
                f"    return call\n")
        ns = {}
        exec(code, ns)  # names are the kernel's own parameter names (identifiers)
        make = _factories[key] = ns["make"]
    return make


def density_terms(charges, dipoles, dtype):
    """(flags, q (k, n), dip (k, 3, n)) for the density kernels: the term bits
    (:data:`CHARGES`, :data:`DIPOLES`) and 1-element placeholders for an absent term."""
    dt = np.dtype(dtype)
    flags = (CHARGES if charges is not None else 0) | (DIPOLES if dipoles is not None else 0)
    q = charges.reshape(-1, charges.shape[-1]) if charges is not None else np.zeros((1, 1), dt)
    dip = (dipoles.reshape(-1, 3, dipoles.shape[-1]) if dipoles is not None
           else np.zeros((1, 1, 1), dt))
    return flags, q, dip
