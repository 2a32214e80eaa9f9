"""Compile aotfmm's Numba kernels ahead of time into a native object file (build time only).

CMake calls this script once per ISA variant::

    python build_tools/compile_kernels.py object --isa x86-64-v3 --module _kernels_x86_64_v3 \
        --output build/_kernels_x86_64_v3.o

and once at configure time to learn how to build numba's small C runtime that the object needs::

    python build_tools/compile_kernels.py mixin-info      # JSON: sources, defines, include dirs

Every kernel family in ``kernels/`` is expanded over float32/float64 from its ``SIGNATURES`` and
``LOCALS`` tables (see ``kernels/__init__.py``) and compiled with the GIL released, fast-math
without ``nnan``/``ninf``, the numpy error model and no bounds checks. We drive
``numba.pycc.compiler.ModuleCompiler`` directly instead of ``numba.pycc.CC`` because ``CC`` wants
to run setuptools itself; see ``../shared/design/aot-build.md`` for what that requires.

Object reuse (opt-in, for CI): with ``AOTFMM_KERNEL_OBJECT_CACHE=DIR`` in the environment, an
object is copied from DIR when one was compiled there from the same inputs, and stored there
after a compile otherwise. The inputs are hashed in full (:func:`object_digest`): every file of
``kernels/``, this script, the numba, llvmlite and numpy versions, the Python version and
platform, the ISA and the module name; anything else changed means a fresh compile. ``.ci/run``
sets it so that the release check's wheel (built from the sdist, same sources) does not
compile the same three objects a second time (~2.5 min on 2 cores). Unset, nothing is reused.
"""
import argparse
import hashlib
import importlib
import inspect
import json
import os
import platform
import shutil
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: ISA variant -> LLVM cpu name ("" is the architecture's generic model).
ISAS = {"generic": "", "x86-64-v3": "x86-64-v3", "x86-64-v4": "x86-64-v4"}

#: ISA variant -> extra LLVM target features. x86-64-v4's default tuning prefers 256-bit vectors
#: (Skylake-X frequency licences); our pair loops are pure arithmetic and run faster with full
#: 512-bit vectors: float64 P2P inside the FMM 1.54e9 -> 1.86e9 pairs/s/core (potential) and
#: 0.97e9 -> 1.26e9 (potential+gradient) on Zen 4 (benchmarks/p2p.py).
TM_FEATURES = {"x86-64-v4": "-prefer-256-bit"}

#: float-type placeholder -> (numba type name, symbol suffix)
FLOATS = (("float32", "_f32"), ("float64", "_f64"))
#: float type -> the complex type of the same precision, for the ``{C}`` placeholder
COMPLEX = {"float32": "complex64", "float64": "complex128"}


def module_name(isa):
    """Extension module name for an ISA variant: ``_kernels_x86_64_v3`` and so on."""
    return "_kernels_" + isa.replace("-", "_")


def load_families():
    """Import the kernel family modules listed in ``kernels.FAMILIES``."""
    sys.path.insert(0, ROOT)
    try:
        kernels = importlib.import_module("kernels")
        return kernels, [importlib.import_module("kernels." + f) for f in kernels.FAMILIES]
    finally:
        sys.path.remove(ROOT)


def has_float_type(sig):
    """True when a signature is a template over the float type (``{F}`` and/or ``{C}``)."""
    return "{F}" in sig or "{C}" in sig


def expand(family):
    """Yield ``(symbol, signature string, python function, locals dict)`` for one family.

    ``{F}`` becomes float32/float64 and ``{C}`` the complex type of the same precision
    (complex64/complex128); a signature with either is exported as ``_f32`` and ``_f64``."""
    for name, sig in family.SIGNATURES.items():
        func = getattr(family, name)
        local_types = family.LOCALS.get(name, {})
        variants = FLOATS if has_float_type(sig) else ((None, ""),)
        for ftype, suffix in variants:
            def sub(text, ftype=ftype):
                if not ftype:
                    return text
                return text.replace("{F}", ftype).replace("{C}", COMPLEX[ftype])
            yield (name + suffix, sub(sig), func,
                   {var: sub(t) for var, t in local_types.items()})


def export_table():
    """All exported symbols and their signatures, as ``{symbol: signature string}``."""
    _, families = load_families()
    return {sym: sig for fam in families for sym, sig, _, _ in expand(fam)}


def kernel_table():
    """Per kernel (not per float type): its family, parameter names (from the Python source)
    and signature template (``{F}`` for the float type, ``{C}`` for the complex type of the
    same precision), as ``{name: {...}}``. Installed as
    ``aotfmm/_exports.py`` so that the run-time dispatch calls kernels by parameter name and
    tests compare it with what was compiled, without numba."""
    _, families = load_families()
    table = {}
    for fam in families:
        for name, sig in fam.SIGNATURES.items():
            params = tuple(inspect.signature(getattr(fam, name)).parameters)
            table[name] = {"family": fam.__name__.rsplit(".", 1)[-1], "params": params,
                           "signature": sig, "floats": has_float_type(sig)}
    return table


def write_exports_module(path):
    """Write the kernel table as a Python module (see :func:`kernel_table`)."""
    table = kernel_table()
    lines = ['"""Generated at build time by build_tools/compile_kernels.py (kernel_table): every',
             "compiled kernel's parameter names and signature template. Do not edit.",
             '"""', "", "KERNELS = {"]
    for name in sorted(table):
        lines.append(f"    {name!r}: {table[name]!r},")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def compile_object(isa, name, output):
    """Compile every kernel for one ISA into the object file ``output``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba.pycc's pending-deprecation warning
        from numba.core import sigutils, typing
        from numba.core.codegen import AOTCPUCodegen
        from numba.core.types import __dict__ as numba_types
        import numba.pycc.compiler as pycc_compiler
    os.environ["AOTFMM_KERNELS_ISA"] = isa  # (kernels.ISA: per-ISA constants of the families)
    kernels, families = load_families()
    if kernels.ISA != isa:  # imported earlier in this process, for another ISA
        raise RuntimeError(f"kernels were imported for ISA {kernels.ISA!r}, not {isa!r}: "
                           f"compile one ISA per process")

    entries, locals_by_func = [], {}
    for fam in families:
        for sym, sig, func, local_types in expand(fam):
            args, ret = sigutils.normalize_signature(sig)
            entries.append(pycc_compiler.ExportEntry(sym, typing.signature(ret, *args), func))
            resolved = {var: numba_types[t] for var, t in local_types.items()}
            # One python function serves both float types: key the locals by (function, args).
            locals_by_func[(func, tuple(args))] = resolved

    original = pycc_compiler.compile_extra

    def compile_extra(typingctx, targetctx, func, args, return_type, flags, locals, **kws):
        flags.release_gil = True
        flags.fastmath = set(kernels.FASTMATH)
        flags.error_model = "numpy"
        flags.boundscheck = False
        locals = dict(locals, **locals_by_func.get((func, tuple(args)), {}))
        return original(typingctx, targetctx, func, args, return_type, flags, locals, **kws)

    pycc_compiler.compile_extra = compile_extra
    # numba's AOT codegen passes no target features of its own (the cpu name implies them).
    original_features = AOTCPUCodegen._customize_tm_features
    AOTCPUCodegen._customize_tm_features = lambda self: TM_FEATURES.get(isa, "")
    try:
        compiler = pycc_compiler.ModuleCompiler(entries, name, use_nrt=True, cpu_name=ISAS[isa])
        # Without this the module imports but every call segfaults (aot-build.md).
        compiler.external_init_function = "pycc_init_" + name
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        compiler.write_native_object(output, wrap=True)
    finally:
        pycc_compiler.compile_extra = original
        AOTCPUCodegen._customize_tm_features = original_features


OBJECT_CACHE_ENV = "AOTFMM_KERNEL_OBJECT_CACHE"


def object_digest(isa, name):
    """sha256 (hex) of everything an object compiled by :func:`compile_object` depends on."""
    from importlib.metadata import version
    h = hashlib.sha256()

    def add(label, data):
        data = data if isinstance(data, bytes) else str(data).encode()
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    kdir = os.path.join(ROOT, "kernels")
    for fname in sorted(os.listdir(kdir)):
        path = os.path.join(kdir, fname)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                add("kernels/" + fname, f.read())
    with open(os.path.abspath(__file__), "rb") as f:
        add("compile_kernels.py", f.read())
    for label, value in (("numba", version("numba")), ("llvmlite", version("llvmlite")),
                         ("numpy", version("numpy")), ("python", sys.version),
                         ("platform", f"{sys.platform} {platform.machine()}"),
                         ("isa", isa), ("module", name)):
        add(label, value)
    return h.hexdigest()


def compile_object_reusing(isa, name, output):
    """:func:`compile_object`, or a copy of the same object from ``$AOTFMM_KERNEL_OBJECT_CACHE``
    (see the module docstring)."""
    cache_dir = os.environ.get(OBJECT_CACHE_ENV)
    if not cache_dir:
        compile_object(isa, name, output)
        return
    os.makedirs(cache_dir, exist_ok=True)
    stored = os.path.join(cache_dir, f"{name}-{object_digest(isa, name)[:32]}.o")
    if os.path.isfile(stored):
        shutil.copyfile(stored, output)
        print(f"compile_kernels: {name}: reused {stored} ({OBJECT_CACHE_ENV})", flush=True)
        return
    compile_object(isa, name, output)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    shutil.copyfile(output, tmp)
    os.replace(tmp, stored)  # atomic: a parallel build sees the whole file or none


def mixin_info():
    """Sources, macros and include dirs of numba's C runtime, asked from the installed numba."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from numba.pycc.cc import CC
        import numba
        import numpy
    cc = CC("_aotfmm_probe")
    cc.use_nrt = True
    defines = [(k, v) for k, v in cc._get_mixin_defines() if k != "PYCC_MODULE_NAME"]
    return {
        "sources": [os.path.normpath(s) for s in cc._get_mixin_sources()],
        "defines": [f"{k}={v}" for k, v in defines],
        "include_dirs": [os.path.dirname(numba.__file__), numpy.get_include()],
        "numba_version": numba.__version__,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    obj = sub.add_parser("object", help="compile the kernels for one ISA into an object file")
    obj.add_argument("--isa", choices=sorted(ISAS), required=True)
    obj.add_argument("--module", help="extension module name (default from --isa)")
    obj.add_argument("--output", required=True)
    info = sub.add_parser("mixin-info", help="print numba's C runtime build info as JSON")
    info.add_argument("--cmake", action="store_true", help="print CMake set() lines instead")
    exp = sub.add_parser("exports", help="print the exported symbols and signatures as JSON")
    exp.add_argument("--python", metavar="PATH",
                     help="instead write the kernel table module (aotfmm/_exports.py) here")
    args = parser.parse_args(argv)

    if args.command == "object":
        compile_object_reusing(args.isa, args.module or module_name(args.isa), args.output)
    elif args.command == "mixin-info":
        info = mixin_info()
        if args.cmake:
            for key in ("sources", "defines", "include_dirs"):
                items = ";".join(p.replace("\\", "/") for p in info[key])
                print(f'set(NUMBA_MIXIN_{key.upper()} "{items}")')
        else:
            print(json.dumps(info, indent=1))
    elif args.python:
        write_exports_module(args.python)
    else:
        print(json.dumps(export_table(), indent=1))


if __name__ == "__main__":
    main()
