"""What this installation runs with: version, ISA variant, threads."""
import os
import platform
import sys

import numpy as np

from . import _kernels, _threads
from ._version import __version__


def config():
    """Return the configuration as a dict (see :func:`show_config`)."""
    features = _kernels.cpu_features()
    return {
        "aotfmm": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": f"{platform.system()} {platform.machine()}",
        "isa": _kernels.ISA,
        "isa_forced": os.environ.get(_kernels.ENV_VAR) or None,
        "isas_built": _kernels.built_isas(),
        "isas_runnable": _kernels.runnable_isas(),
        "cpu_features": tuple(sorted(k for k, v in features.items() if v
                                     and k in {f for r in _kernels.REQUIRES.values() for f in r})),
        "threads": _threads.default_threads(),
        "cpus": _threads.cpu_count(),
    }


def show_config(file=None):
    """Print version, ISA variant in use (and why), threads and platform."""
    cfg = config()
    file = sys.stdout if file is None else file
    why = f"forced by {_kernels.ENV_VAR}" if cfg["isa_forced"] else "chosen from CPU features"
    lines = [
        f"aotfmm {cfg['aotfmm']}  (python {cfg['python']}, numpy {cfg['numpy']}, "
        f"{cfg['platform']})",
        f"kernels:  {cfg['isa']} ({why})",
        f"built:    {', '.join(cfg['isas_built'])}",
        f"runnable: {', '.join(cfg['isas_runnable'])}",
        f"threads:  {cfg['threads']} (CPUs available: {cfg['cpus']}; "
        f"override with threads= or {_threads.ENV_VAR})",
    ]
    print("\n".join(lines), file=file)
