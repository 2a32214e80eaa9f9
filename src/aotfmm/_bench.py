"""Peer comparison: aotfmm vs fmm3dpy (``lfmm3d``) vs ferreus-bbfmm on the same random problems.

    aotfmm bench [--quick] [--n N ...] ...   (installed CLI: the same options)
    python benchmarks/compare.py [options]  (all options; ``--help``)

Problems: points uniform in the unit cube (``uniform``), uniform on the unit sphere surface
(``sphere``) or a Plummer sphere (``plummer``: density ~ (1 + r^2/a^2)^(-5/2), a = 0.1,
truncated at r = 1 = 10 a, which keeps 98.5 % of the untruncated mass: an adaptive tree whose
leaves span ~6 levels), sources = targets, charges standard normal, all from fixed seeds. Every
(distribution, N, eps, potential / potential+gradient, library) case runs in a fresh Python
process, so that one library's threads, caches and memory cannot affect the next, and so that
its peak memory can be read on its own:

* **peak MiB**  the child process's peak resident memory at the end (Linux: ``VmHWM``, since
  ``ru_maxrss`` survives execve and would show the parent's size; elsewhere ``ru_maxrss``;
  everything: interpreter, numpy,
  the library, the input arrays, the outputs and the library's work space);
* **+MiB**      that minus the child's peak just before the library is called (after
  ``import numpy``, the library's import and the creation of the input arrays), i.e. what
  the computation itself added to the high-water mark.

Times are wall-clock (``time.perf_counter``) in the child: *setup* builds what depends on the
points only, *evaluate* is the charge-dependent part; fmm3dpy has one call (``lfmm3d``), so it
only has a total. ``cpu/wall`` is the child's user+system CPU time over the timed region divided
by its wall time (how many cores it kept busy). The operators the aotfmm cases need are built
(or found in the cache) by the parent before any case runs, so no case times a build; the
parent prints what it built and how long it took.

Threads: every child gets ``OMP_NUM_THREADS`` (fmm3dpy: OpenMP, gfortran), ``RAYON_NUM_THREADS``
(ferreus-bbfmm: Rust rayon global pool, also used by its faer linear algebra),
``AOTFMM_NUM_THREADS`` plus ``threads=`` (aotfmm) and ``OPENBLAS_NUM_THREADS`` /
``MKL_NUM_THREADS`` (numpy's BLAS) set to the same count; default: all CPUs of this process.

Accuracy: relative L2 error over a fixed sample of (at most) 1000 targets against
:func:`aotfmm.direct` in float64 (kernel 1/(4 pi r), coincident pairs excluded). Each library's
kernel scaling is first measured on a small problem (least-squares factor against the direct
sum, snapped to 1, 4 pi, -1 or -4 pi): fmm3dpy computes 1/(4 pi r) (factor 1), ferreus-bbfmm's
``FmmKernelType.Laplacian`` computes 1/r (factor 4 pi; gradient of 1/r, same sign); the sampled
outputs are divided by that factor before the error is measured (not timed).

Accuracy settings per library, for a requested eps:

* aotfmm: ``eps`` directly (it picks its expansion order p and leaf size);
* fmm3dpy: ``eps`` directly (``lfmm3d(eps=eps, ...)``);
* aotfmm32 (``--float32 EPS``): aotfmm with ``dtype=float32`` at that eps (the float64 points
  rounded once by aotfmm), reported as a fraction of the float64 aotfmm row's total time;
* ferreus-bbfmm (black-box FMM, Chebyshev interpolation): ``interpolation_order`` from
  :data:`FERREUS_ORDER` -- the smallest order whose potential and gradient relative L2 errors
  were both <= eps on uniform and sphere points, N = 1e5 (measured: order 3/4/5/6/7/8/9/10 ->
  potential error 2.3e-3/7.7e-3/4.9e-5/6.1e-6/1.1e-6/1.7e-7/3.1e-8/6.0e-9 on the uniform cube;
  order 4 is worse than 3); default ``FmmParams`` (256 points per leaf, ACA+SVD M2L compression
  with epsilon 10^-order, chunks of 1024 targets), ``sparse=True`` (empty leaves pruned).
  ``--ferreus-order`` overrides it.
"""
import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

import numpy as np

LIBRARIES = ("aotfmm", "fmm3dpy", "ferreus")
DISTS = ("uniform", "sphere", "plummer")
DEFAULT_DISTS = ("uniform", "sphere")
#: Plummer scale radius and truncation radius (in the points' units)
PLUMMER_A, PLUMMER_R = 0.1, 1.0
FULL_N = (100_000, 1_000_000)
QUICK_N = (20_000, 100_000)
EPSILONS = (1e-6, 1e-3)
SAMPLE = 1000
SEED = 20240917        # points and charges: default_rng((SEED, dist index, n))
SAMPLE_SEED = 7        # the sampled targets: default_rng((SAMPLE_SEED, n))

#: (largest eps served, ferreus-bbfmm interpolation_order); see the module docstring.
FERREUS_ORDER = ((1e-2, 3), (1e-3, 5), (1e-4, 5), (1e-5, 7), (1e-6, 8), (1e-7, 10), (1e-8, 11),
                 (1e-9, 12))


def ferreus_order(eps):
    return next((o for e, o in FERREUS_ORDER if eps >= e), FERREUS_ORDER[-1][1])


def make_points(dist, n, seed=SEED):
    """(points (n, 3) float64, charges (n,) float64), identical in parent and children."""
    rng = np.random.default_rng((seed, DISTS.index(dist), n))
    if dist == "uniform":
        x = rng.random((n, 3))
    elif dist == "plummer":
        # radius by inverting the enclosed mass M(r) = r^3 / (r^2 + a^2)^(3/2) on [0, M(R)]
        a, r_max = PLUMMER_A, PLUMMER_R
        u = rng.random(n) * r_max ** 3 / (r_max ** 2 + a ** 2) ** 1.5
        r = a / np.sqrt(u ** (-2.0 / 3.0) - 1.0)
        x = rng.standard_normal((n, 3))
        x *= (r / np.linalg.norm(x, axis=1))[:, None]
    else:
        x = rng.standard_normal((n, 3))
        x /= np.linalg.norm(x, axis=1)[:, None]
    q = rng.standard_normal(n)
    return x, q


#: Kernels the harness runs (``--kernel``); the parameter is given times the domain size D
#: (``--param-d``): D = 1 for the unit cube, 2 for the unit sphere and the Plummer sphere.
#: The kernels other than the default (Laplace); a spec's "kernel" is None for the default.
OTHER_KERNELS = ("yukawa", "helmholtz")
DOMAIN_SIZE = {"uniform": 1.0, "sphere": 2.0, "plummer": 2.0}


def kernel_charges(spec, q):
    """Helmholtz densities are complex: the real charges plus i times a second draw."""
    if spec.get("kernel") != "helmholtz":
        return q
    rng = np.random.default_rng((SEED, 99, len(q)))
    return q + 1j * rng.standard_normal(len(q))


def kernel_param(spec):
    """lam or kappa in the points' units: ``param_d`` / D of the case's distribution."""
    return spec["param_d"] / DOMAIN_SIZE[spec.get("dist", "uniform")]


def sample_indices(n, size=SAMPLE):
    rng = np.random.default_rng((SAMPLE_SEED, n))
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# child side: runs one library on one case (or a small probe) and pickles the sampled results


def _maxrss_mib():
    """This process's peak resident memory in MiB. On Linux from VmHWM: ru_maxrss survives
    execve, so a child would report its parent's size at fork whenever that was larger."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, else KiB


def _cpu_seconds():
    t = os.times()
    return t.user + t.system


def _run_aotfmm(x, q, eps, gradient, threads, spec):
    import aotfmm
    where = f"aotfmm {aotfmm.__version__} at {os.path.dirname(aotfmm.__file__)}"
    Fmm = getattr(aotfmm, "Fmm", None)
    if Fmm is None:  # built, but not exported from the package yet?
        try:
            from aotfmm.api import Fmm
        except ImportError as exc:
            raise _Unavailable(f"aotfmm.laplace not available in this build ({where}: "
                               f"{exc})") from None

    name = spec.get("kernel")
    kw = {}
    if name is not None:
        kernel = getattr(aotfmm, name.capitalize())(kernel_param(spec))
        kw = dict(kernel=kernel, dtype=np.complex128 if name == "helmholtz" else np.float64)
    dtype = np.float32 if spec.get("dtype") == "float32" else np.float64

    def run():
        t0 = time.perf_counter()
        try:
            plan = Fmm(x, eps=eps, threads=threads, **(kw or dict(dtype=dtype)))
        except ImportError as exc:  # the FMM modules are missing from this build
            raise _Unavailable(f"aotfmm.laplace not available in this build ({where}: "
                               f"{exc})") from None
        t1 = time.perf_counter()
        out = plan.evaluate(q, gradient=gradient)
        t2 = time.perf_counter()
        pot, grad = out if gradient else (out, None)
        return t1 - t0, t2 - t1, pot, grad, f"p={plan.p} ncrit={plan.ncrit}"
    return run


def _run_fmm3dpy(x, q, eps, gradient, threads, spec):
    import fmm3dpy
    src = np.ascontiguousarray(x.T)  # (3, n), its layout; prepared before the clock starts
    name = spec.get("kernel")
    if name == "yukawa":
        raise _Unavailable("fmm3dpy has no Yukawa (modified Helmholtz) FMM")
    if name == "helmholtz":
        zk = kernel_param(spec)

        def run_h():
            t0 = time.perf_counter()
            out = fmm3dpy.hfmm3d(eps=eps, zk=zk, sources=src, charges=q, pg=2 if gradient else 1)
            t1 = time.perf_counter()
            grad = out.grad.T if gradient else None
            return None, t1 - t0, out.pot, grad, f"eps={eps:g}"
        return run_h

    def run():
        t0 = time.perf_counter()
        out = fmm3dpy.lfmm3d(eps=eps, sources=src, charges=q, pg=2 if gradient else 1)
        t1 = time.perf_counter()
        grad = out.grad.T if gradient else None
        return None, t1 - t0, out.pot, grad, f"eps={eps:g}"  # one call: a total only
    return run


def _run_ferreus(x, q, eps, gradient, threads, spec):
    if spec.get("kernel") is not None:
        raise _Unavailable("ferreus-bbfmm is run for the Laplace kernel only here")
    import ferreus_bbfmm as fb
    order = spec.get("ferreus_order") or ferreus_order(eps)
    kernel = fb.KernelParams(fb.FmmKernelType.Laplacian)
    xs = np.ascontiguousarray(x)

    def run():
        t0 = time.perf_counter()
        tree = fb.FmmTree(xs, order, kernel, True)
        t1 = time.perf_counter()
        tree.set_weights(q)  # upward pass
        if gradient:
            pot, grad = tree.evaluate_with_gradients(q, xs)
        else:
            pot, grad = tree.evaluate(q, xs), None
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, pot, grad, f"order={order}"
    return run


_RUNNERS = {"aotfmm": _run_aotfmm, "fmm3dpy": _run_fmm3dpy, "ferreus": _run_ferreus,
            "baseline": _run_aotfmm, "aotfmm32": _run_aotfmm}
_MODULES = {"aotfmm": "aotfmm", "fmm3dpy": "fmm3dpy", "ferreus": "ferreus_bbfmm",
            "baseline": "aotfmm", "aotfmm32": "aotfmm"}


class _Unavailable(Exception):
    pass


def _probe_points(n=3000):
    rng = np.random.default_rng(12345)
    return rng.random((n, 3)) * 2.0 - 1.0, rng.standard_normal(n)


def _child(spec_json):
    """Entry point of a child process (see :func:`_launch`). Returns an exit code."""
    spec = json.loads(spec_json)
    lib, threads, out_path = spec["lib"], spec["threads"], spec["out"]
    result = {"lib": lib}
    try:
        try:
            module = __import__(_MODULES[lib])
        except ImportError as exc:
            raise _Unavailable(f"{_MODULES[lib]} is not importable ({exc})") from None
        result["version"] = getattr(module, "__version__", None) or _dist_version(lib)
        if spec["kind"] == "probe":
            # at the finest eps of the run: enough to tell 1 from 4 pi and the sign, and no
            # operator set that the cases themselves do not need
            x, q = _probe_points()
            eps = spec["eps"]
        else:
            x, q = make_points(spec["dist"], spec["n"])
            eps = spec["eps"]
        gradient = spec.get("gradient", True)
        q = kernel_charges(spec, q)
        run = _RUNNERS[lib](x, q, eps, gradient, threads, spec)
        base = _maxrss_mib()
        c0, w0 = _cpu_seconds(), time.perf_counter()
        setup, evaluate, pot, grad, params = run()
        wall, cpu = time.perf_counter() - w0, _cpu_seconds() - c0
        peak = _maxrss_mib()
        idx = np.arange(len(q)) if spec["kind"] == "probe" else np.asarray(spec["sample"])
        pot = np.asarray(pot).reshape(-1)
        result.update(ok=True, setup=setup, evaluate=evaluate if setup is not None else None,
                      total=(setup or 0.0) + evaluate, wall=wall, cpu=cpu,
                      peak=peak, base=base, params=params, pot=pot[idx],
                      grad=None if grad is None else np.asarray(grad)[idx])
    except _Unavailable as exc:
        result.update(ok=False, unavailable=True, message=str(exc))
    except Exception as exc:  # reported by the parent, the run goes on
        result.update(ok=False, unavailable=False, message=f"{type(exc).__name__}: {exc}")
    with open(out_path, "wb") as f:
        pickle.dump(result, f)
    return 0


def _dist_version(lib):
    try:
        from importlib.metadata import version
        return version({"ferreus": "ferreus_bbfmm"}.get(lib, lib))
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------
# parent side

_BOOT = ("import sys, importlib.util as u\n"
         "s = u.spec_from_file_location('_aotfmm_bench_child', sys.argv[1])\n"
         "m = u.module_from_spec(s); s.loader.exec_module(m)\n"
         "sys.exit(m._child(sys.argv[2]))\n")


def _child_env(threads):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS", "AOTFMM_NUM_THREADS",
                "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


#: Interpreters of the libraries: the pseudo-library "baseline" is aotfmm as installed for
#: another Python (``--baseline``), e.g. a venv holding an older commit, for before/after runs.
_PYTHONS = {}


def _launch(spec, threads, workdir, timeout):
    """Run one case in a fresh interpreter; the module file is loaded without importing the
    aotfmm package, so a peer's child holds only numpy + that peer."""
    out = os.path.join(workdir, f"result-{time.monotonic_ns()}.pkl")
    spec = dict(spec, threads=threads, out=out)
    python = _PYTHONS.get(spec["lib"], sys.executable)
    cmd = [python, "-c", _BOOT, os.path.abspath(__file__), json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=_child_env(threads), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "unavailable": False, "message": f"timed out after {timeout} s"}
    try:
        with open(out, "rb") as f:
            result = pickle.load(f)
        os.remove(out)
    except OSError:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        return {"ok": False, "unavailable": False,
                "message": f"child exited with code {proc.returncode}: " + " | ".join(tail)}
    return result


def _direct(x, q, targets, spec=None):
    import aotfmm
    name = (spec or {}).get("kernel")
    if name is None:
        return aotfmm.direct(x, q, targets, gradient=True, dtype=np.float64)
    kernel = getattr(aotfmm, name.capitalize())(kernel_param(spec))
    return aotfmm.direct(x, kernel_charges(spec, q), targets, gradient=True, kernel=kernel)


def _one_over_r():
    """Our kernel times this is 1/r (4 pi): the scaling of libraries that leave out the
    1/(4 pi). Imported here, not at the top: this file also runs as the children's script,
    and the other libraries' children must not load aotfmm."""
    from aotfmm.families import LAPLACE
    return 1.0 / float(LAPLACE.g_of_r(1.0))


def _snap(factor):
    """The kernel scaling among 1, 4 pi, -1, -4 pi that ``factor`` (a least-squares fit at
    the run's finest eps, >= 1e-3 off at worst) stands for; kept as is if none is within 5 %."""
    c = _one_over_r()
    candidates = (1.0, c, -1.0, -c)
    best = min(candidates, key=lambda c: abs(factor / c - 1.0))
    return best if abs(factor / best - 1.0) < 0.05 else factor


def _scale_name(c):
    one = _one_over_r()
    names = {1.0: "1/(4 pi r)", one: "1/r", -1.0: "-1/(4 pi r)", -one: "-1/r"}
    return names.get(c, f"{c:.6g} x 1/(4 pi r)")


def probe(lib, threads, workdir, timeout, eps=1e-6, order=None, kernel=None):
    """Import check + kernel scaling on a small problem at ``eps``: (info dict) or
    (None, message). ``kernel``: {"kernel": name, "param_d": value} (default Laplace)."""
    spec = {"kind": "probe", "lib": lib, "gradient": True, "eps": eps, "ferreus_order": order,
            **(kernel or {})}
    res = _launch(spec, threads, workdir, timeout)
    if not res.get("ok"):
        return None, res["message"]
    x, q = _probe_points()
    ref_pot, ref_grad = _direct(x, q, x, spec)
    cp = _snap(float(np.real(np.vdot(ref_pot, res["pot"]) / np.vdot(ref_pot, ref_pot))))
    cg = _snap(float(np.real(np.vdot(ref_grad, res["grad"]) / np.vdot(ref_grad, ref_grad))))
    info = {"version": res.get("version"), "pot_scale": cp, "grad_scale": cg,
            "probe_pot_err": _rel(res["pot"] / cp, ref_pot),
            "probe_grad_err": _rel(res["grad"] / cg, ref_grad)}
    return info, None


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _nfmt(n):
    """100000 -> '1e5', 20000 -> '2e4', 12345 -> '12345'."""
    k = len(str(n)) - 1
    return f"{n // 10**k}e{k}" if k >= 3 and n % 10**k == 0 else str(n)


def _fmt(v, spec):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-".rjust(int(spec.split(".")[0]))
    return format(v, spec)


def _table(rows, gradient):
    head = (f"  {'library':9} {'threads':>7} {'params':>18} {'setup s':>8} {'eval s':>8} "
            f"{'total s':>8} {'cpu/wall':>8} {'peak MiB':>9} {'+MiB':>8} {'err pot':>8}"
            + (f" {'err grad':>8}" if gradient else "") + f" {'aot/peer':>8}")
    lines = [head, "  " + "-" * (len(head) - 2)]
    aot = next((r for r in rows if r["lib"] == "aotfmm" and r.get("ok")), None)
    for r in rows:
        if not r.get("ok"):
            lines.append(f"  {r['lib']:9} {r['threads']:>7} -- {r['message']}")
            continue
        ratio = "n/a" if aot is None else format(aot["total"] / r["total"], ".3f")
        if r["lib"] == "aotfmm32":
            ratio = "-"  # its own line below the table: float32 over float64
        lines.append(
            f"  {r['lib']:9} {r['threads']:>7} {r['params']:>18} {_fmt(r['setup'], '8.3f')} "
            f"{_fmt(r['evaluate'], '8.3f')} {r['total']:8.3f} {r['cpu'] / r['wall']:8.2f} "
            f"{_fmt(r['peak'], '9.0f')} {_fmt(r['peak'] - r['base'], '8.0f')} "
            f"{r['err_pot']:8.1e}" + (f" {r['err_grad']:8.1e}" if gradient else "")
            + f" {ratio:>8}" + (f"  spread {r['spread']:.2f}" if r.get("spread") else "")
            + (f"  ({r['failed']} of its runs failed)" if r.get("failed") else "")
            + (f"  cold {r['cold']:.2f} s" if r.get("cold") else ""))
    return "\n".join(lines)


def _float32_line(rows, eps32, eps):
    """The aotfmm32 row's total time as a fraction of the aotfmm (float64) row's."""
    ok = {r["lib"]: r for r in rows if r.get("ok")}
    if "aotfmm32" in ok and "aotfmm" in ok:
        print(f"  aotfmm32 = aotfmm in float32 at eps {eps32:g}: total "
              f"{ok['aotfmm32']['total'] / ok['aotfmm']['total']:.2f} x aotfmm's (float64, "
              f"eps {eps:g})")


def _parse_n(text):
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count like 1e5, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"N must be >= 2, got {text!r}")
    return value


def _parse_list(kind, allowed, aliases=None):
    def parse(text):
        out = []
        for item in text.replace(",", " ").split():
            item = (aliases or {}).get(item.lower(), item.lower())
            if item not in allowed:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {item!r} (choose from {', '.join(allowed)})")
            out.append(item)
        return out
    return parse


def _operators_ahead(epsilons, threads, python=None, dtype="float64"):
    """Build (or find) the operator sets the aotfmm cases need before any case runs, in a
    process of their own (``aotfmm precompute``, its output shown): a build announces itself
    here instead of hiding inside a timed child, and the parent stays small (its size at fork
    would otherwise leak into the children's peak memory on some systems)."""
    # (--dtype only when it is not the default: a --baseline interpreter's older aotfmm may
    # predate the option)
    cmd = [python or sys.executable, "-m", "aotfmm", "precompute", "--threads", str(threads),
           *(["--dtype", dtype] if dtype != "float64" else []), "--eps",
           *(f"{e!r}" for e in epsilons)]
    print("aotfmm operators for these cases (not part of the timings below):")
    sys.stdout.flush()
    if subprocess.run(cmd, env=_child_env(threads)).returncode != 0:
        raise RuntimeError("aotfmm precompute failed: " + " ".join(cmd))


def build_parser():
    # parent side only (children load this file without the package): the CLI's checks
    from aotfmm._argtypes import _eps, _positive_int
    p = argparse.ArgumentParser(
        prog="aotfmm bench",
        description="Compare aotfmm with fmm3dpy and ferreus-bbfmm (those installed) on the same "
                    "random problems: time, peak memory, error vs direct summation.",
        epilog="Each case runs in a fresh subprocess; see aotfmm/_bench.py for the definitions.")
    p.add_argument("--quick", action="store_true",
                   help=f"N = {', '.join(map(_nfmt, QUICK_N))} only "
                        f"(default N: {', '.join(map(_nfmt, FULL_N))})")
    p.add_argument("--n", type=_parse_n, nargs="+", default=None, metavar="N",
                   help="problem sizes (sources = targets), e.g. --n 1e5 1e6")
    p.add_argument("--eps", type=_eps, nargs="+", default=list(EPSILONS), metavar="EPS",
                   help="requested accuracies (default: 1e-6 1e-3)")
    p.add_argument("--dist", type=_parse_list("distribution", DISTS, {"cube": "uniform"}),
                   nargs="+", default=[list(DEFAULT_DISTS)], metavar="DIST",
                   help="uniform (unit cube), sphere (unit sphere surface) and/or plummer "
                        "(Plummer sphere, a = 0.1, cut at r = 1); default uniform sphere")
    p.add_argument("--peers", type=_parse_list("library", LIBRARIES,
                                               {"ferreus_bbfmm": "ferreus",
                                                "ferreus-bbfmm": "ferreus",
                                                "fmm3d": "fmm3dpy", "aot": "aotfmm"}),
                   nargs="+", default=[list(LIBRARIES)], metavar="LIB",
                   help="libraries to run, space or comma separated "
                        "(default: aotfmm fmm3dpy ferreus)")
    p.add_argument("--mode", choices=("pot", "grad", "both"), default="both",
                   help="potential only, potential+gradient, or both (default)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help=f"threads for every library (default: all {_cpu_count()} CPUs)")
    p.add_argument("--ferreus-order", type=int, default=None, metavar="ORDER",
                   help="ferreus-bbfmm interpolation order (default: from eps, see FERREUS_ORDER)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="give up on a case after this long (default: no limit)")
    from aotfmm.families import LAPLACE
    p.add_argument("--kernel", choices=(LAPLACE.name,) + OTHER_KERNELS, default=LAPLACE.name,
                   help="the kernel (default laplace); yukawa/helmholtz take --param-d")
    p.add_argument("--param-d", type=float, default=10.0, metavar="X",
                   help="lam or kappa times the domain size D (D = 1 for the cube, 2 for the "
                        "sphere and Plummer); default 10")
    p.add_argument("--baseline", default=None, metavar="PYTHON",
                   help="also run aotfmm as installed for this Python interpreter (e.g. a venv "
                        "with an older commit), as the row 'baseline': before/after in one run")
    p.add_argument("--float32", type=_eps, default=None, metavar="EPS",
                   help="also run aotfmm in float32 at this eps (row 'aotfmm32', e.g. 1e-4), "
                        "its total time given as a fraction of the float64 aotfmm row's")
    p.add_argument("--repeat", type=_positive_int, default=1, metavar="R",
                   help="run each case R times, each library once per round (fresh processes, "
                        "in turns, so that a slow moment of the machine meets every library), "
                        "and keep each library's fastest total; the column 'spread' gives its "
                        "slowest total over its fastest (default 1)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write all results here")
    return p


def _case(lib, dist, n, eps, gradient, idx, args, kernel, per_level, threads, workdir):
    """One run of one library on one case (a fresh process; per-level kernels: a cold run
    first), its errors against the reference computed in :func:`main`."""
    spec = {"kind": "case", "lib": lib, "dist": dist, "n": n, "eps": eps,
            "gradient": gradient, "sample": idx.tolist(),
            "ferreus_order": args.ferreus_order, **kernel}
    if lib == "aotfmm32":
        spec.update(eps=args.float32, dtype="float32")
    cold = None
    if per_level and lib in ("aotfmm", "baseline"):
        first = _launch(spec, threads, workdir, args.timeout)
        cold = first.get("total") if first.get("ok") else None
    r = _launch(spec, threads, workdir, args.timeout)
    r["cold"] = cold
    r.update(lib=lib, threads=threads)
    return r


def main(argv=None):
    args = build_parser().parse_args(argv)
    dists = list(dict.fromkeys(d for group in args.dist for d in group))
    libs = list(dict.fromkeys(name for group in args.peers for name in group))
    ns = args.n or (QUICK_N if args.quick else FULL_N)
    modes = {"pot": [False], "grad": [True], "both": [False, True]}[args.mode]
    threads = args.threads or _cpu_count()
    if args.baseline:
        if not os.access(args.baseline, os.X_OK):
            print(f"aotfmm bench: --baseline {args.baseline}: not an executable", file=sys.stderr)
            return 2
        _PYTHONS["baseline"] = args.baseline
        libs = [lib for lib in libs if lib != "baseline"]
        libs.insert(libs.index("aotfmm") + 1 if "aotfmm" in libs else 0, "baseline")
    if args.float32 is not None:
        from aotfmm._validation import EPS_FLOOR
        if args.kernel in OTHER_KERNELS:
            print("aotfmm bench: --float32 is for the Laplace kernel", file=sys.stderr)
            return 2
        if args.float32 < EPS_FLOOR["float32"]:
            print(f"aotfmm bench: --float32 {args.float32:g} is below what float32 can reach "
                  f"(smallest: {EPS_FLOOR['float32']:g})", file=sys.stderr)
            return 2
        libs.insert(libs.index("aotfmm") + 1 if "aotfmm" in libs else 0, "aotfmm32")

    import platform
    print(f"aotfmm bench: python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()}, {_cpu_count()} CPUs, threads per library: {threads}")
    print(f"problems: {', '.join(dists)} x N {', '.join(map(_nfmt, ns))} x eps "
          f"{', '.join(f'{e:g}' for e in args.eps)}; error on <= {SAMPLE} sampled targets vs "
          f"aotfmm.direct (float64); peak MiB = child's peak RSS, +MiB = above its pre-call level"
          + (f"; each library's fastest of {args.repeat} runs (in turns), spread = its slowest "
             f"total / its fastest" if args.repeat > 1 else ""))
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    if load > 0.5:
        print(f"warning: load average {load:.1f} before starting -- other processes compete "
              f"for the CPUs, times will be noisy")
    sys.stdout.flush()

    results, failures = [], 0
    with tempfile.TemporaryDirectory(prefix="aotfmm-bench-") as workdir:
        per_level = args.kernel in OTHER_KERNELS
        kernel = {"kernel": args.kernel if per_level else None, "param_d": args.param_d}
        if per_level:
            print(f"kernel {args.kernel}, parameter x D = {args.param_d:g}: aotfmm builds its "
                  "operators per tree level on first use; each case runs once cold (operators "
                  "built, column 'cold s'), then timed warm")
        else:
            if "aotfmm" in libs:
                _operators_ahead(args.eps, threads)
            if "baseline" in libs:
                _operators_ahead(args.eps, threads, args.baseline)
            if "aotfmm32" in libs:
                _operators_ahead([args.float32], threads, dtype="float32")
        infos = {}
        for lib in libs:
            single = lib == "aotfmm32"
            info, message = probe(lib, threads, workdir, args.timeout,
                                  args.float32 if single else min(args.eps), args.ferreus_order,
                                  dict(kernel, dtype="float32") if single else kernel)
            if info is None:
                print(f"  {lib}: skipped -- {message}")
                continue
            infos[lib] = info
            extra = ""
            if lib == "ferreus":
                extra = ("; interpolation_order "
                         + (str(args.ferreus_order) if args.ferreus_order else
                            ", ".join(f"{ferreus_order(e)} for eps {e:g}" for e in args.eps)))
            grad = ("its gradient" if info["grad_scale"] == info["pot_scale"] else
                    f"gradient of {_scale_name(info['grad_scale'])}")
            print(f"  {lib} {info['version']}: kernel {_scale_name(info['pot_scale'])} and "
                  f"{grad} (outputs divided by {info['pot_scale']:.6g}; after that, error on the "
                  f"3000-point probe {info['probe_pot_err']:.0e} / "
                  f"{info['probe_grad_err']:.0e}){extra}")
        sys.stdout.flush()
        if not infos:
            print("no library available")
            return 1

        for dist in dists:
            for n in ns:
                x, q = make_points(dist, n)
                idx = sample_indices(n)
                t0 = time.perf_counter()
                ref_pot, ref_grad = _direct(x, q, x[idx], dict(kernel, dist=dist))
                t_ref = time.perf_counter() - t0
                del x, q
                for eps in args.eps:
                    for gradient in modes:
                        runs = {lib: [] for lib in infos}
                        for _ in range(args.repeat):  # rounds: each library once, in turns
                            for lib in infos:
                                r = _case(lib, dist, n, eps, gradient, idx, args, kernel,
                                          per_level, threads, workdir)
                                if r.get("ok"):
                                    info = infos[lib]
                                    r["err_pot"] = _rel(r.pop("pot") / info["pot_scale"],
                                                        ref_pot)
                                    g = r.pop("grad")
                                    r["err_grad"] = (None if g is None else
                                                     _rel(g / info["grad_scale"], ref_grad))
                                runs[lib].append(r)
                        rows = []
                        for lib in infos:
                            done = [r for r in runs[lib] if r.get("ok")]
                            if done:  # the fastest run, and how much slower the slowest was
                                r = min(done, key=lambda r: r["total"])
                                r["totals"] = [d["total"] for d in done]
                                if len(done) > 1:
                                    r["spread"] = max(r["totals"]) / r["total"]
                                if len(done) < len(runs[lib]):
                                    r["failed"] = len(runs[lib]) - len(done)
                                    failures += 1
                            else:
                                r = runs[lib][-1]
                                if not r.get("unavailable"):
                                    failures += 1
                            rows.append(r)
                        what = "potential + gradient" if gradient else "potential"
                        label = {"uniform": "uniform cube", "sphere": "sphere surface",
                                 "plummer": "Plummer sphere"}[dist]
                        if per_level:
                            label += (f", {args.kernel} {args.param_d:g}/D "
                                      f"(D = {DOMAIN_SIZE[dist]:g})")
                        print(f"\n{label}, N = {_nfmt(n)}, eps = {eps:g}, {what}  "
                              f"(reference: direct on {len(idx)} targets, {t_ref:.2f} s)")
                        print(_table(rows, gradient))
                        _float32_line(rows, args.float32, eps)
                        sys.stdout.flush()
                        for r in rows:
                            results.append(dict(r, dist=dist, n=n, eps=eps, gradient=gradient))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": threads, "libraries": infos, "results": results}, f, indent=1,
                      default=float)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
