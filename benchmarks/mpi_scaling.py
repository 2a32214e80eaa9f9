"""aotfmm.mpi strong scaling: one random cube problem on 1 and 2 ranks (1 thread each by
default), each in its own ``mpiexec`` run, one after the other in this process:

    python benchmarks/mpi_scaling.py                 # 1e6 points, eps 1e-6, ranks 1 2
    python benchmarks/mpi_scaling.py --n 2e5 --ranks 1 2 3 4
    python benchmarks/mpi_scaling.py --dist plummer     # a dense core: thin ghosts matter

Prints per rank the points it owns, ghost points, far boxes, bytes sent, stage times and peak
memory (VmHWM), and the ratios of the P-rank run to the 1-rank run: wall time (the issue's goal:
<= 0.6 at 2 ranks) and the largest per-rank peak memory (goal <= 0.6), also counted from each
rank's memory before its points exist (the interpreter and imports: a fixed cost per rank). The error is measured on
500 targets against a direct sum (gathered after the timed part). Needs mpi4py and mpiexec
(pip install "aotfmm[mpi]").
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile


def mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e6)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=1, help="threads per rank (default 1)")
    ap.add_argument("--level", type=int, default=None)
    ap.add_argument("--dist", choices=("uniform", "sphere", "plummer"), default="uniform",
                    help="point set (default: the unit cube)")
    args = ap.parse_args()
    exe = mpiexec()
    if exe is None:
        sys.exit("no mpiexec: pip install 'aotfmm[mpi]'")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.ranks:
            out = os.path.join(tmp, f"r{p}.json")
            cmd = [exe, "-n", str(p), sys.executable, "-m", "aotfmm.mpi", "demo", "-n",
                   str(args.n), "--eps", str(args.eps), "--threads", str(args.threads),
                   "--dist", args.dist, "--json", out] + \
                ([] if args.level is None else ["--level", str(args.level)])
            print("$ " + " ".join(cmd[:1] + cmd[1:3] + ["python"] + cmd[4:-2]), flush=True)
            subprocess.run(cmd, check=True, env=env)
            with open(out) as f:
                reports[p] = json.load(f)
    base = reports[args.ranks[0]]

    def peaks(r):  # the largest per-rank peak, and the largest growth from the start
        return (max(x["peak_mib"] or 0 for x in r["ranks"]),
                max((x["peak_mib"] or 0) - (x.get("start_mib") or 0) for x in r["ranks"]))
    bpeak, bgrow = peaks(base)
    print(f"\n{'ranks':>5} {'wall s':>7} {'ratio':>6} {'max peak MiB':>12} {'ratio':>6} "
          f"{'above start':>11} {'ratio':>6} {'ghosts/rank':>11} {'MB sent/rank':>12} "
          f"{'error':>8}")
    for p, r in reports.items():
        peak, grow = peaks(r)
        ghosts = sum(x["n_ghost"] for x in r["ranks"]) / p
        sent = sum(sum(x["bytes"].values()) for x in r["ranks"]) / p / 1e6
        print(f"{p:>5} {r['wall']:>7.2f} {r['wall'] / base['wall']:>6.2f} {peak:>12.0f} "
              f"{peak / bpeak if bpeak else 0:>6.2f} {grow:>11.0f} "
              f"{grow / bgrow if bgrow else 0:>6.2f} {ghosts:>11.0f} {sent:>12.2f} "
              f"{r['error']:>8.1e}")
    print("(above start: the peak minus the rank's resident memory before its points were made:"
          " the interpreter, numpy, mpi4py and aotfmm, ~70 MiB per rank)")


if __name__ == "__main__":
    main()
