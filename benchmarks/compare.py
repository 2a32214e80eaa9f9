"""Peer comparison: aotfmm vs fmm3dpy vs ferreus-bbfmm (those installed), same random problems.

    python benchmarks/compare.py [--quick] [--n 1e5 1e6] [--eps 1e-6 1e-3]
        [--dist uniform sphere] [--peers aotfmm fmm3dpy ferreus] [--mode pot|grad|both]
        [--threads T] [--ferreus-order K] [--timeout S] [--json out.json]

Same as ``aotfmm bench``; the harness and the definitions of every column are in
``aotfmm/_bench.py``.
"""
import sys

from aotfmm._bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
