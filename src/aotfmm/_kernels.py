"""Pick the compiled kernel module (one per ISA variant) that this CPU runs best.

The wheel carries ``_kernels_generic`` and, on x86-64, ``_kernels_x86_64_v3`` (AVX2/FMA) and
``_kernels_x86_64_v4`` (AVX-512). A module built for an ISA the CPU lacks still *imports* but dies
with SIGILL when called, so we never load one without checking the CPU's features first. The
environment variable ``AOTFMM_ISA`` forces a variant (``generic``, ``x86-64-v3``, ``x86-64-v4``);
asking for one the CPU cannot run, or one this build does not carry, raises ImportError.
"""
import importlib
import importlib.util
import os

#: All variants, from the most portable to the most demanding.
ISAS = ("generic", "x86-64-v3", "x86-64-v4")

_V3 = ("AVX", "AVX2", "FMA3", "BMI", "BMI2", "F16C", "LZCNT", "MOVBE")
_V4 = _V3 + ("AVX512F", "AVX512BW", "AVX512CD", "AVX512DQ", "AVX512VL")
#: CPU features (numpy's names) each variant needs.
REQUIRES = {"generic": (), "x86-64-v3": _V3, "x86-64-v4": _V4}

#: Preference order when nothing is forced: the most capable variant the CPU runs.
_AUTO_ORDER = ("x86-64-v4", "x86-64-v3", "generic")

ENV_VAR = "AOTFMM_ISA"


def module_name(isa):
    return "_kernels_" + isa.replace("-", "_")


def cpu_features():
    """The CPU feature flags numpy detected at import (``{name: bool}``)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return dict(__cpu_features__)


def built_isas():
    """Variants whose extension module is installed."""
    return tuple(i for i in ISAS if importlib.util.find_spec(f"{__package__}.{module_name(i)}"))


#: numpy's own verdict on a whole level, where this numpy version reports it (numpy >= 2.4).
_LEVEL_KEYS = {"x86-64-v3": "X86_V3", "x86-64-v4": "X86_V4"}
#: Flags older numpy does not report; every CPU with AVX2 (Haswell, Excavator and later) has them.
_IMPLIED_BY_AVX2 = frozenset({"BMI", "BMI2", "LZCNT", "MOVBE"})


def missing_features(isa, features=None):
    """CPU features ``isa`` needs that this CPU lacks (empty tuple: it can run it)."""
    features = cpu_features() if features is None else features
    missing = [f for f in REQUIRES[isa]
               if not features.get(f, f in _IMPLIED_BY_AVX2 and features.get("AVX2", False))]
    level = _LEVEL_KEYS.get(isa)
    if level in features and not features[level] and not missing:
        missing.append(level)
    return tuple(missing)


def runnable_isas():
    """Variants both installed and supported by this CPU."""
    features = cpu_features()
    return tuple(i for i in built_isas() if not missing_features(i, features))


def _auto_isa():
    # benchmarks/p2p.py on an AVX-512 Zen 4: v4 is as fast as v3 in f64 and ~5% faster in f32.
    runnable = runnable_isas()
    for isa in _AUTO_ORDER:
        if isa in runnable:
            return isa
    raise ImportError("aotfmm: no compiled kernel module is installed; reinstall aotfmm")


def choose_isa(requested=None):
    """Resolve the variant to use: ``requested``, else ``$AOTFMM_ISA``, else the best runnable."""
    requested = requested if requested is not None else os.environ.get(ENV_VAR, "").strip()
    if not requested or requested == "auto":
        return _auto_isa()
    if requested not in ISAS:
        raise ImportError(f"aotfmm: {ENV_VAR}={requested!r} is not one of "
                          f"{', '.join(ISAS + ('auto',))}")
    if requested not in built_isas():
        raise ImportError(f"aotfmm: {ENV_VAR}={requested!r}: this build has no such module "
                          f"(built: {', '.join(built_isas()) or 'none'})")
    lacking = missing_features(requested)
    if lacking:
        raise ImportError(f"aotfmm: {ENV_VAR}={requested!r}: this CPU cannot run it "
                          f"(lacks {', '.join(lacking)})")
    return requested


def load(isa):
    """Import the kernel module of ``isa`` after checking that the CPU can run it."""
    if isa not in runnable_isas():
        raise ValueError(f"ISA variant {isa!r} is not runnable here "
                         f"(runnable: {', '.join(runnable_isas())})")
    return importlib.import_module(f"{__package__}.{module_name(isa)}")


ISA = choose_isa()
kernels = importlib.import_module(f"{__package__}.{module_name(ISA)}")


def get(name, dtype, module=None):
    """The exported kernel ``<name>_f32`` / ``<name>_f64`` for ``dtype`` (a numpy dtype)."""
    suffix = "_f32" if dtype == "float32" else "_f64"
    return getattr(kernels if module is None else module, name + suffix)
