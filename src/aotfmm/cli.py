"""Command line: ``aotfmm demo|run|bench|precompute|info`` (also ``python -m aotfmm``).

Exit codes: 0 success, 2 usage or input error (one line on stderr, no traceback).
"""
import argparse
import sys
import time
import warnings

import numpy as np

from ._argtypes import _eps, _int_in, _positive_int
from ._version import __version__

#: Upper bounds of the integer options (larger values are refused before any allocation).
MAX_POINTS = 100_000_000
MAX_THREADS = 4096


def _sample_error(values, ref):
    """Relative L2 error as text; "n/a" when the reference is zero (a lone point)."""
    norm = np.linalg.norm(ref)
    if norm == 0:
        return "n/a (reference is zero)"
    return f"{float(np.linalg.norm(values - ref) / norm):.2e}"


def _kernel(args):
    """The kernel family of ``--kernel`` and its parameter (``--lam``, ``--kappa``)."""
    from aotfmm import families
    by_name = {f.name: f for f in families.FAMILIES}
    family = by_name[args.kernel]
    names = [k for k, _ in family.params]
    given = {k: getattr(args, k) for k in _KERNEL_PARAMS if getattr(args, k) is not None}
    stray = [k for k in given if k not in names]
    if stray:
        raise ValueError(f"--{stray[0]} is a parameter of --kernel "
                         f"{_KERNEL_PARAMS[stray[0]]}, not of --kernel {args.kernel}")
    missing = [k for k in names if k not in given]
    if missing:
        raise ValueError(f"--kernel {args.kernel} needs --{missing[0]}")
    return family.with_params(**given) if names else family


def _demo(args):
    import aotfmm
    from aotfmm._direct import _direct, _direct_multi

    family = _kernel(args)
    rng = np.random.default_rng(args.seed)
    n = args.n
    src = rng.random((n, 3))
    q = rng.standard_normal(n)
    if family.complex:
        q = q + 1j * rng.standard_normal(n)
    dtype = family.value_dtype(args.dtype)
    cfg = aotfmm.config()
    t0 = time.perf_counter()
    plan = aotfmm.Fmm(src, kernel=family, eps=args.eps, dtype=dtype, threads=args.threads,
                      progress=sys.stderr.isatty())
    t1 = time.perf_counter()
    threads = plan.threads
    shown = "" if family.scale_invariant else f", kernel {family!r}"
    print(f"aotfmm {aotfmm.__version__} demo: {n} random points in the unit cube{shown}, "
          f"eps {plan.eps:g}, {plan.dtype.name}, kernels {cfg['isa']}, threads {threads}")
    pot, grad = plan.evaluate(q, gradient=True)
    t2 = time.perf_counter()
    sample = np.sort(rng.choice(n, size=min(n, args.sample), replace=False))
    t3 = time.perf_counter()
    if family.scale_invariant:
        ref_pot, ref_grad = _direct(src, q, src[sample], True, np.dtype(np.float64),
                                    plan._workers)
    else:
        ref_pot, ref_grad = _direct_multi(src, q[None], None, src[sample], True,
                                          np.dtype(np.float64), plan._workers, family=family)
        ref_pot, ref_grad = ref_pot[0], ref_grad[0].T
    t4 = time.perf_counter()
    # the direct sum over the sample excludes only exact coincidences, like the FMM
    print(f"setup (tree, lists, operators): {t1 - t0:.3f} s   "
          f"evaluate (potential + gradient): {t2 - t1:.3f} s")
    print(f"relative L2 error on {len(sample)} targets vs direct summation: "
          f"potential {_sample_error(pot[sample], ref_pot)}, "
          f"gradient {_sample_error(grad[sample], ref_grad)}   "
          f"(direct on the sample: {t4 - t3:.3f} s, all {n}: ~{(t4 - t3) * n / len(sample):.1f} s)")
    plan.report()
    return 0


def _run(args):
    from aotfmm import Fmm
    from aotfmm._io import check_output, read_problem, write_result
    from aotfmm._validation import as_densities, as_points

    family = _kernel(args)
    if family.complex:
        raise ValueError(f"aotfmm run reads and writes real arrays only; --kernel "
                         f"{args.kernel} has complex densities and results: use "
                         f"aotfmm.helmholtz() or aotfmm.Fmm(..., kernel=aotfmm.Helmholtz(kappa)) "
                         "from Python (or aotfmm demo --kernel helmholtz)")
    check_output(args.output, args.input)  # before any work: never fail (or clobber) at the end
    problem = read_problem(args.input)
    dipoles = problem["dipoles"]
    # the densities' shapes before the plan: a bad file fails at once, not after the setup
    as_densities(problem["charges"], dipoles, len(as_points("sources", problem["sources"])))
    t0 = time.perf_counter()
    plan = Fmm(problem["sources"], problem["targets"], kernel=family,
               dipoles=dipoles is not None, eps=args.eps, p=args.p, dtype=args.dtype,
               threads=args.threads, progress=sys.stderr.isatty() and not args.quiet)
    result = plan.evaluate(problem["charges"], dipoles=dipoles, gradient=args.gradient)
    pot, grad = result if args.gradient else (result, None)
    write_result(args.output, pot, grad)
    if not args.quiet:
        print(f"{args.input} -> {args.output}: {plan.n_sources} sources, {plan.n_targets} "
              f"targets, p={plan.p}, eps={plan.eps:g}, {time.perf_counter() - t0:.3f} s",
              file=sys.stderr)
    return 0


def _exit_code(exc):
    """The exit code of a SystemExit raised by argparse (help, version, usage error)."""
    return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def _bench(argv):
    """``aotfmm bench ARGS``: the benchmark harness with all its options (``--quick``, ``--n``,
    ``--repeat``, ...; ``aotfmm bench --help`` lists them)."""
    from aotfmm import _bench
    try:
        return _bench.main(argv)
    except SystemExit as exc:  # its argparse has printed help or the usage error
        return _exit_code(exc)


def _precompute_plan(args):
    """[(p, dtype, [uses])]: the orders the requested uses need, each with what needs it."""
    from aotfmm.api import EPS_DEFAULT, EPS_FLOOR
    from aotfmm.evaluate import choose_parameters
    if args.p and (args.eps or args.targets or args.dipoles or args.hessians or args.all_uses):
        raise ValueError("--p names the orders directly: give it without --eps, --targets, "
                         "--dipoles, --hessians and --all-uses")
    flags = [(t, d, h) for t in (False, True) for d in (False, True) for h in (False, True)] \
        if args.all_uses else [(args.targets, args.dipoles, args.hessians)]
    plan = {}
    for dtype in args.dtype:
        if args.p:
            for p in args.p:
                plan.setdefault((p, dtype), []).append(f"--p {p}")
            continue
        for eps in args.eps or [EPS_DEFAULT[dtype]]:
            if eps < EPS_FLOOR[dtype]:
                raise ValueError(f"--eps {eps:g} is below what {dtype} can reach (smallest: "
                                 f"{EPS_FLOOR[dtype]:g})"
                                 + ("; use --dtype float64" if dtype == "float32" else ""))
            for t, d, h in flags:
                p = choose_parameters(eps, separate_targets=t, dipoles=d, hessians=h)[0]
                use = " ".join([f"eps {eps:g}"] + [name for name, on in (
                    ("targets", t), ("dipoles", d), ("hessians", h)) if on])
                plan.setdefault((p, dtype), []).append(use)
    return sorted(plan.items())


def _precompute(args):
    import os
    from aotfmm import cache, operators
    plan = _precompute_plan(args)
    directory = cache.default_cache_dir() if args.cache_dir is None else args.cache_dir
    print(f"operator cache: {directory}")
    for (p, dtype), uses in plan:
        est = operators.build_estimate(p, dtype)
        if args.dry_run:
            key = operators.operator_key(p, dtype)
            there = os.path.exists(cache.cache_path(key, args.cache_dir))
            state = "cached" if there else (
                f"to build (~{est[0]:.0f} s, ~{est[1]:.0f} MB)" if est else "to build")
            print(f"p={p:2d} {dtype}: {state}; for {', '.join(uses)}")
            continue
        ops = operators.get_operators(p, dtype, cache_dir=args.cache_dir, threads=args.threads)
        print(f"p={p:2d} {dtype}: {ops.source} in {ops.seconds:.2f} s, "
              f"{ops.nbytes / 2**20:.1f} MiB, M2L rank {ops.m2l_rank}; for {', '.join(uses)}")
        sys.stdout.flush()
    return 0


def _info(args):
    import os
    import aotfmm
    from aotfmm import cache
    aotfmm.show_config()
    directory = cache.default_cache_dir()
    files = sorted(f for f in os.listdir(directory) if f.endswith(cache.SUFFIX)) \
        if os.path.isdir(directory) else []
    total = sum(os.path.getsize(os.path.join(directory, f)) for f in files)
    limit = cache.max_cache_bytes()
    limit_text = "no limit" if limit == float("inf") else f"limit {limit / 1e9:.3g} GB"
    print(f"operator cache: {directory} ({len(files)} file(s), {total / 1e6:.0f} MB, "
          f"{limit_text}; override with {cache.ENV_VAR}, {cache.MAX_SIZE_ENV})")
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
        from aotfmm.families import key_parameters
        # the kernel and its parameter (lam/kappa at the box's half-width: one set per tree
        # level), then the order and precision
        fields = ", ".join([f"{k}={v}" for k, v in key_parameters(attrs)] +
                           [f"{k}={attrs[k]}" for k in ("p", "dtype", "m2l_method", "m2l_tol")
                            if k in attrs])
        return f"{os.path.basename(path)}: {size:.1f} MiB, {fields}"
    except Exception as exc:  # corrupt or foreign file: say so, never fail `info`
        return f"{os.path.basename(path)}: {size:.1f} MiB, unreadable ({exc.__class__.__name__})"


RUN_LAYOUTS = """\
input layouts (n sources, m targets, k densities):
  .npz / .h5    arrays (HDF5: top-level datasets) sources (n, 3); charges (n,) or (n, k)
                and/or dipoles (n, 3) or (n, k, 3); optional targets (m, 3), else the
                targets are the sources (self-interaction left out). No other keys.
  .npy          one array (n, 3 + k): x, y, z, then k charge columns
  .csv / .txt / .dat  the same columns as text, comma- or whitespace-separated; lines starting
                with # and a first line of column names are skipped; every row has as
                many fields as the first (no empty ones)

output layouts (by OUTPUT's extension):
  .npz / .h5    potential (m,) or (m, k); gradient (m, 3) or (m, k, 3) with --gradient
  .npy          one density without --gradient: potential (m,); otherwise a table
                (m, k + 3k): k potential columns, then gx, gy, gz per density
  .csv / .txt / .dat  the same table as .npy (always 2-D) after a line of column names
"""


#: Kernel parameter options -> the kernel they belong to.
_KERNEL_PARAMS = {"lam": "yukawa", "kappa": "helmholtz"}


def _add_kernel_options(parser, note=""):
    """--kernel NAME and the kernels' parameters (--lam, --kappa)."""
    from .families import FAMILIES  # in their order: Laplace (the default) first
    names = [f.name for f in FAMILIES]
    parser.add_argument("--kernel", choices=names, default=names[0],
                        help=f"kernel G(x, y) (default {names[0]}){note}")
    parser.add_argument("--lam", type=float, default=None,
                        help="Yukawa screening parameter lam > 0: G = exp(-lam r) / (4 pi r)")
    parser.add_argument("--kappa", type=float, default=None,
                        help="Helmholtz wavenumber kappa > 0: G = exp(i kappa r) / (4 pi r), "
                        "complex densities")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="aotfmm", description="Laplace, Yukawa and Helmholtz FMM (KIFMM) with "
        "ahead-of-time compiled kernels.")
    parser.add_argument("--version", action="version", version=f"aotfmm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    eps_help = "target relative accuracy (default: 1e-6 in float64, 1e-5 in float32)"
    threads = dict(type=_int_in(1, MAX_THREADS), default=None,
                   help=f"worker threads, at most {MAX_THREADS} (default: all cores, or "
                   "$AOTFMM_NUM_THREADS)")

    demo = sub.add_parser("demo", help="random problem: accuracy vs direct, per-operator times")
    demo.add_argument("-n", type=_int_in(1, MAX_POINTS), default=100_000,
                      help=f"points, at most {MAX_POINTS} (default 1e5)")
    demo.add_argument("--eps", type=_eps, default=None, help=eps_help)
    demo.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    demo.add_argument("--threads", **threads)
    demo.add_argument("--sample", type=_int_in(1, MAX_POINTS), default=1000,
                      help=f"targets checked against direct summation, at most {MAX_POINTS} "
                      "(default 1000)")
    demo.add_argument("--seed", type=int, default=0)
    _add_kernel_options(demo, "; helmholtz: complex random charges")
    demo.set_defaults(func=_demo)

    run = sub.add_parser("run", help="evaluate a problem file, write the potentials",
                         description="Read points and densities from INPUT (.npy, .npz, .h5, "
                         ".csv/.txt/.dat), write potentials (and gradients) to OUTPUT (format from "
                         "its extension; never the input file). OUTPUT is replaced only once "
                         "completely written.",
                         epilog=RUN_LAYOUTS, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("input")
    run.add_argument("-o", "--output", required=True)
    run.add_argument("--eps", type=_eps, default=None, help=eps_help)
    run.add_argument("--p", type=_positive_int, default=None, help="expansion order")
    run.add_argument("--dtype", choices=("float64", "float32"), default=None)
    run.add_argument("--threads", **threads)
    run.add_argument("--gradient", action="store_true", help="also write gradients")
    run.add_argument("-q", "--quiet", action="store_true")
    _add_kernel_options(run, "; helmholtz is not served here yet (complex files)")
    run.set_defaults(func=_run)

    # (listed here; main() hands "bench ..." to the harness's own parser, all options)
    sub.add_parser("bench", help="compare with fmm3dpy / ferreus-bbfmm if installed "
                   "(aotfmm bench --help: its options)", add_help=False)

    pre = sub.add_parser(
        "precompute", help="fill the operator cache ahead of time",
        description="Build (or check) the operators a use will need, so that the first Fmm "
        "call does not build them. The use is described like Fmm's arguments: --eps (default: "
        "the dtype's default eps), --targets (separate targets), --dipoles, --hessians; "
        "--all-uses takes every combination of those three; --p names orders directly.",
        epilog="examples:\n  aotfmm precompute                         # what Fmm(points) "
        "needs by default\n  aotfmm precompute --eps 1e-6 --targets --dipoles\n  aotfmm "
        "precompute --eps 1e-3 1e-6 1e-9 --all-uses --dtype float64\n  aotfmm precompute "
        "--eps 1e-8 --all-uses --dry-run          # which p, and whether cached",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pre.add_argument("--p", type=_int_in(2, 16), nargs="+", help="expansion orders (2..16)")
    pre.add_argument("--eps", type=_eps, nargs="+", default=None,
                     help="accuracy targets (default: 1e-6 in float64, 1e-5 in float32)")
    pre.add_argument("--targets", action="store_true",
                     help="for plans with separate targets (two orders more, three below "
                     "eps 4e-7; see the README)")
    pre.add_argument("--dipoles", action="store_true", help="for dipole sources (one more)")
    pre.add_argument("--hessians", action="store_true",
                     help="for Hessians (one order more; with --targets three more than "
                     "the targets' order)")
    pre.add_argument("--all-uses", action="store_true",
                     help="every combination of --targets, --dipoles, --hessians")
    pre.add_argument("--dtype", nargs="+", choices=("float64", "float32"),
                     default=["float64"])
    pre.add_argument("--threads", **threads)
    pre.add_argument("--cache-dir", default=None,
                     help="cache directory (default: $AOTFMM_CACHE_DIR or the user cache dir)")
    pre.add_argument("--dry-run", action="store_true",
                     help="only list the orders, what needs them and whether they are cached")
    pre.set_defaults(func=_precompute)

    info = sub.add_parser("info", help="versions, ISA variant, threads, operator cache")
    info.set_defaults(func=_info)
    return parser


def _cli_spelling(message):
    """API errors name keyword arguments (``eps=1e-07 is below ...``, ``use dtype=float64``);
    on the command line say the options instead (``--eps 1e-07``, ``--dtype float64``)."""
    if message.startswith("eps="):
        message = "--eps " + message[len("eps="):]
    if message.startswith("p must") or message.startswith("p="):  # "p must be in [2, 16]"
        message = "--p" + message[1:].replace("=", " ", 1)
    message = message.replace("not eps=", "not --eps ").replace("leave out p ", "leave out --p ")
    for name in _KERNEL_PARAMS:  # "Yukawa: lam must be finite and > 0, got 0.0"
        for family in ("Yukawa", "Helmholtz"):
            message = message.replace(f"{family}: {name} must", f"--{name} must")
    return message.replace("use dtype=float64", "use --dtype float64")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings of a command: one line each (the library's would echo a source line)."""
    print(f"aotfmm: warning: {_cli_spelling(str(message))}", file=sys.stderr)


def main(argv=None):
    """Run the command line; returns the exit code (also for --help, --version, usage errors)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed help, the version or the usage error
        return _exit_code(exc)
    try:
        with warnings.catch_warnings():  # one line each, in the options' spelling
            warnings.showwarning = _show_warning
            return args.func(args)
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError) as exc:
        print(f"aotfmm: error: {_cli_spelling(str(exc))}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"aotfmm: error: out of memory{': ' + str(exc) if str(exc) else ''}",
              file=sys.stderr)
        return 2
