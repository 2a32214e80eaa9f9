"""Command line: ``aotfmm demo|run|bench|precompute|info`` (also ``python -m aotfmm``).

Exit codes: 0 success, 2 usage or input error (one line on stderr, no traceback).
"""
import argparse
import sys
import time

import numpy as np


def _sample_error(values, ref):
    return float(np.linalg.norm(values - ref) / np.linalg.norm(ref))


def _demo(args):
    import aotfmm
    from aotfmm.direct import _direct

    rng = np.random.default_rng(args.seed)
    n = args.n
    src = rng.random((n, 3))
    q = rng.standard_normal(n)
    cfg = aotfmm.config()
    threads = args.threads or cfg["threads"]
    print(f"aotfmm {aotfmm.__version__} demo: {n} random points in the unit cube, "
          f"eps {args.eps:g}, {args.dtype}, kernels {cfg['isa']}, threads {threads}")
    t0 = time.perf_counter()
    plan = aotfmm.Fmm(src, eps=args.eps, dtype=args.dtype, threads=args.threads,
                      progress=sys.stderr.isatty())
    t1 = time.perf_counter()
    pot, grad = plan.evaluate(q, gradient=True)
    t2 = time.perf_counter()
    sample = np.sort(rng.choice(n, size=min(n, args.sample), replace=False))
    t3 = time.perf_counter()
    ref_pot, ref_grad = _direct(src, q, src[sample], True, np.dtype(np.float64), threads)
    t4 = time.perf_counter()
    # the direct sum over the sample excludes only exact coincidences, like the FMM
    print(f"setup (tree, lists, operators): {t1 - t0:.3f} s   "
          f"evaluate (potential + gradient): {t2 - t1:.3f} s")
    print(f"relative L2 error on {len(sample)} targets vs direct summation: "
          f"potential {_sample_error(pot[sample], ref_pot):.2e}, "
          f"gradient {_sample_error(grad[sample], ref_grad):.2e}   "
          f"(direct on the sample: {t4 - t3:.3f} s, all {n}: ~{(t4 - t3) * n / len(sample):.1f} s)")
    plan.report()
    return 0


def _run(args):
    from aotfmm import Fmm
    from aotfmm._io import read_problem, write_result

    problem = read_problem(args.input)
    t0 = time.perf_counter()
    plan = Fmm(problem["sources"], problem["targets"], eps=args.eps, p=args.p, dtype=args.dtype,
               threads=args.threads, progress=sys.stderr.isatty() and not args.quiet)
    result = plan.evaluate(problem["charges"], gradient=args.gradient)
    pot, grad = result if args.gradient else (result, None)
    write_result(args.output, pot, grad)
    if not args.quiet:
        print(f"{args.input} -> {args.output}: {plan.n_sources} sources, {plan.n_targets} "
              f"targets, p={plan.p}, {time.perf_counter() - t0:.3f} s", file=sys.stderr)
    return 0


def _bench(args):
    from aotfmm import _bench
    return _bench.main(["--quick"] if args.quick else [])


def _precompute(args):
    from aotfmm import operators
    from aotfmm.evaluate import choose_parameters
    ps = args.p or sorted({choose_parameters(e, separate_targets=s)[0]
                           for e in args.eps for s in (False, True)})
    for dtype in args.dtype:
        for p in ps:
            ops = operators.get_operators(p, dtype, cache_dir=args.cache_dir)
            print(f"p={p:2d} {dtype}: {ops.source} in {ops.seconds:.2f} s, "
                  f"{ops.nbytes / 2**20:.1f} MiB, M2L rank {ops.m2l_rank}")
    return 0


def _info(args):
    import os
    import aotfmm
    from aotfmm import cache
    aotfmm.show_config()
    directory = cache.default_cache_dir()
    files = sorted(f for f in os.listdir(directory) if f.endswith(cache.SUFFIX)) \
        if os.path.isdir(directory) else []
    print(f"operator cache: {directory} ({len(files)} file(s); override with "
          f"{cache.ENV_VAR})")
    for name in files:
        print("  " + _describe_cache_file(os.path.join(directory, name)))
    return 0


def _describe_cache_file(path):
    """One line per cache file: its key fields, or why it cannot be read."""
    import os
    size = os.path.getsize(path) / 2**20
    try:
        import json
        from aotfmm import cache
        attrs = json.loads(cache.read_header(path)["key_json"])
        fields = ", ".join(f"{k}={attrs[k]}" for k in ("p", "dtype", "m2l_method", "m2l_tol")
                           if k in attrs)
        return f"{os.path.basename(path)}: {size:.1f} MiB, {fields}"
    except Exception as exc:  # corrupt or foreign file: say so, never fail `info`
        return f"{os.path.basename(path)}: {size:.1f} MiB, unreadable ({exc.__class__.__name__})"


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _eps(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="aotfmm", description="Laplace FMM (KIFMM) with ahead-of-time compiled kernels.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="random problem: accuracy vs direct, per-operator times")
    demo.add_argument("-n", type=_positive_int, default=100_000, help="points (default 1e5)")
    demo.add_argument("--eps", type=_eps, default=1e-6)
    demo.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    demo.add_argument("--threads", type=_positive_int, default=None)
    demo.add_argument("--sample", type=_positive_int, default=1000,
                      help="targets checked against direct summation")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    run = sub.add_parser("run", help="evaluate a problem file, write the potentials",
                         description="Read points and charges from INPUT (.npy, .npz, .h5, "
                         ".csv/.txt), write potentials (and gradients) to OUTPUT (format from "
                         "its extension). See aotfmm._io for the layouts.")
    run.add_argument("input")
    run.add_argument("-o", "--output", required=True)
    run.add_argument("--eps", type=_eps, default=1e-6)
    run.add_argument("--p", type=_positive_int, default=None, help="expansion order")
    run.add_argument("--dtype", choices=("float64", "float32"), default=None)
    run.add_argument("--threads", type=_positive_int, default=None)
    run.add_argument("--gradient", action="store_true", help="also write gradients")
    run.add_argument("-q", "--quiet", action="store_true")
    run.set_defaults(func=_run)

    bench = sub.add_parser("bench", help="compare with fmm3dpy / ferreus-bbfmm if installed")
    bench.add_argument("--quick", action="store_true", help="small problems only")
    bench.set_defaults(func=_bench)

    pre = sub.add_parser("precompute", help="fill the operator cache ahead of time")
    pre.add_argument("--p", type=_positive_int, nargs="+", help="expansion orders")
    pre.add_argument("--eps", type=_eps, nargs="+", default=[1e-3, 1e-6, 1e-9],
                     help="accuracy targets whose p to precompute (default 1e-3 1e-6 1e-9)")
    pre.add_argument("--dtype", nargs="+", choices=("float64", "float32"),
                     default=["float64"])
    pre.add_argument("--cache-dir", default=None)
    pre.set_defaults(func=_precompute)

    info = sub.add_parser("info", help="versions, ISA variant, threads, operator cache")
    info.set_defaults(func=_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as exc:
        print(f"aotfmm: error: {exc}", file=sys.stderr)
        return 2
