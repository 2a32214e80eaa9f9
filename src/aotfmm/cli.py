"""Command line: ``aotfmm demo|info`` (also ``python -m aotfmm``).

Exit codes: 0 success, 2 usage or input error (one line on stderr, no traceback).
"""
import argparse
import sys
import time

import numpy as np


def _demo(args):
    import aotfmm
    from aotfmm import _kernels

    rng = np.random.default_rng(args.seed)
    n = args.n
    src = rng.random((n, 3))
    q = rng.standard_normal(n)
    print(f"aotfmm {aotfmm.__version__}: direct summation demo, {n} random points in the unit "
          f"cube, kernels {_kernels.ISA}, threads {args.threads or aotfmm.config()['threads']}")
    sample = rng.choice(n, size=min(n, 200), replace=False)
    for dtype in ("float64", "float32"):
        t0 = time.perf_counter()
        pot, grad = aotfmm.direct(src, q, gradient=True, dtype=dtype, threads=args.threads)
        t1 = time.perf_counter()
        ref_pot, ref_grad = _numpy_reference(src, q, src[sample])
        e_pot = np.linalg.norm(pot[sample] - ref_pot) / np.linalg.norm(ref_pot)
        e_grad = np.linalg.norm(grad[sample] - ref_grad) / np.linalg.norm(ref_grad)
        rate = n * n / (t1 - t0)
        print(f"  {dtype}: potential+gradient in {t1 - t0:.3f} s ({rate:.3g} pairs/s); "
              f"rel. error vs numpy on {len(sample)} targets: pot {e_pot:.1e}, grad {e_grad:.1e}")
    return 0


def _numpy_reference(src, q, trg):
    """Plain float64 numpy direct sum (independent of the compiled kernels)."""
    d = trg[:, None, :] - src[None, :, :]
    r = np.sqrt((d * d).sum(-1))
    with np.errstate(divide="ignore"):
        inv = np.where(r > 0, 1.0 / r, 0.0)
    pot = inv @ q / (4 * np.pi)
    grad = -np.einsum("tsk,ts->tk", d, inv**3 * q) / (4 * np.pi)
    return pot, grad


def _info(args):
    import aotfmm
    aotfmm.show_config()
    return 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="aotfmm", description="aotfmm command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a random problem and print accuracy and timings")
    demo.add_argument("-n", type=_positive_int, default=20000, help="number of points")
    demo.add_argument("--threads", type=_positive_int, default=None)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="print versions, ISA variant and threads")
    info.set_defaults(func=_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"aotfmm: error: {exc}", file=sys.stderr)
        return 2
