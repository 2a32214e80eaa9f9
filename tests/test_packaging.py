"""Packaging: the declared dependencies and extras, h5py only for .h5 files (with an install hint
when it is missing), the wheel workflow's runners and the wheels cibuildwheel selects.

The installed package is what is tested (the console script, subprocesses); pyproject.toml and
the workflow are read from the checkout next to this file (skipped when absent, e.g. in an
unpacked wheel test tree without them)."""
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
WORKFLOW = ROOT / ".github" / "workflows" / "wheels.yml"
SRC = ROOT / "src" / "aotfmm"

#: The hard dependencies (see the comment above ``dependencies`` in pyproject.toml).
REQUIRED = ["numpy", "platformdirs", "threadpoolctl"]
HINT = 'pip install "aotfmm[hdf5]"'

# The wheels pyproject.toml's comments promise: CPython 3.10-3.14 on Linux x86_64 + aarch64
# (manylinux), macOS x86_64 + arm64 (no cp314 x86_64: numba has none), Windows AMD64; nothing
# for musllinux, i686, win32, free-threaded or universal2.
_PY = [f"cp3{minor}" for minor in range(10, 15)]
INTENDED_WHEELS = {
    "linux": {f"{v}-manylinux_{a}" for v in _PY for a in ("x86_64", "aarch64")},
    "macos": {f"{v}-macosx_{a}" for v in _PY for a in ("x86_64", "arm64")}
    - {"cp314-macosx_x86_64"},
    "windows": {f"{v}-win_amd64" for v in _PY},
}
RETIRED_RUNNERS = ("macos-13", "macos-12", "macos-11", "macos-10.15", "ubuntu-20.04",
                   "ubuntu-18.04", "windows-2019")


def _pyproject():
    if not PYPROJECT.exists():
        pytest.skip("no pyproject.toml next to the tests")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)


def _name(requirement):
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower()


def _workflow():
    if not WORKFLOW.exists():
        pytest.skip("no .github/workflows/wheels.yml next to the tests")
    return WORKFLOW.read_text()


def _aotfmm():
    """The installed console script next to this interpreter."""
    exe = shutil.which("aotfmm", path=os.path.dirname(sys.executable))
    assert exe, f"no aotfmm command next to {sys.executable}: the package must install it"
    return exe


def _without_h5py(tmp_path):
    """Environment in which ``import h5py`` fails in any Python started with it, as when h5py
    is not installed (a sitecustomize puts None in sys.modules['h5py'])."""
    site = tmp_path / "no_h5py"
    site.mkdir()
    (site / "sitecustomize.py").write_text('import sys\nsys.modules["h5py"] = None\n')
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- dependencies -----------------------------------------------------------------------------

def test_hard_dependencies_are_numpy_platformdirs_threadpoolctl():
    deps = _pyproject()["project"]["dependencies"]
    assert sorted(_name(d) for d in deps) == REQUIRED
    assert all(";" not in d for d in deps)  # no platform-dependent dependency set


def test_h5py_is_in_the_hdf5_and_test_extras():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert [_name(r) for r in extras["hdf5"]] == ["h5py"]
    assert "h5py" in [_name(r) for r in extras["test"]]
    assert {"pytest", "hypothesis"} <= {_name(r) for r in extras["test"]}


def test_wheel_tests_install_the_test_extra():
    """cibuildwheel installs the wheel with [test]: h5py is there for the .h5 tests, and the
    test dependencies are listed once."""
    cibw = _pyproject()["tool"]["cibuildwheel"]
    assert cibw.get("test-extras") == ["test"]
    assert "test-requires" not in cibw


def test_only_the_io_module_imports_h5py():
    if not SRC.is_dir():
        pytest.skip("no source tree")
    users = sorted(p.name for p in SRC.glob("*.py") if re.search(r"^\s*(import|from)\s+h5py\b",
                                                                 p.read_text(), re.M))
    assert users == ["_io.py"]


def test_library_and_cache_never_import_h5py(tmp_path):
    code = ("import sys, numpy as np, aotfmm\n"
            "x = np.random.default_rng(0).random((400, 3))\n"
            "aotfmm.laplace(x, np.ones(400), eps=1e-3)\n"
            "aotfmm.direct(x, np.ones(400))\n"
            "assert 'h5py' not in sys.modules, 'h5py imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_library_works_without_h5py(tmp_path):
    src, q = np.random.default_rng(1).random((500, 3)), np.ones(500)
    np.save(tmp_path / "src.npy", src)
    code = ("import numpy as np, aotfmm\n"
            "try:\n    import h5py\nexcept ImportError:\n    pass\n"
            "else:\n    raise SystemExit('h5py is importable: the test setup failed')\n"
            "src = np.load('src.npy')\n"
            "pot = aotfmm.laplace(src, np.ones(len(src)), eps=1e-3)\n"
            "np.save('pot.npy', pot)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, cwd=tmp_path, env=_without_h5py(tmp_path))
    assert r.returncode == 0, r.stderr
    d = src[:, None, :] - src[None, :, :]
    r2 = (d * d).sum(-1)
    np.fill_diagonal(r2, np.inf)  # self pair excluded
    ref = (q / np.sqrt(r2)).sum(1) / (4 * np.pi)
    pot = np.load(tmp_path / "pot.npy")
    assert np.linalg.norm(pot - ref) / np.linalg.norm(ref) < 1e-3


def test_h5_input_without_h5py_exits_2_with_the_install_hint(tmp_path):
    import h5py  # the test process has it (test extra): write the file here
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["sources"], f["charges"] = np.random.default_rng(2).random((20, 3)), np.ones(20)
    r = subprocess.run([_aotfmm(), "run", "x.h5", "-o", "y.npy"], capture_output=True,
                       text=True, timeout=600, cwd=tmp_path, env=_without_h5py(tmp_path))
    assert r.returncode == 2, r.stderr
    line = _one_line(r.stderr)
    assert line.startswith("aotfmm: error: x.h5: ") and HINT in line and "not installed" in line
    assert not (tmp_path / "y.npy").exists()


def test_h5_output_without_h5py_is_refused_before_computing(tmp_path):
    np.save(tmp_path / "in.npy", np.random.default_rng(3).random((50, 4)))
    # --eps 1e-12 would fail in the FMM setup: the h5py message shows it was checked before
    r = subprocess.run([_aotfmm(), "run", "in.npy", "-o", "y.h5", "--eps", "1e-12"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env=_without_h5py(tmp_path))
    assert r.returncode == 2, r.stderr
    line = _one_line(r.stderr)
    assert "y.h5: " in line and HINT in line and "below what" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "no_h5py"]


def test_broken_h5py_is_reported_with_the_hint(tmp_path):
    """An h5py that is installed but fails to import (missing libhdf5, numpy ABI mismatch)."""
    fake = tmp_path / "broken" / "h5py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("libhdf5.so.310: cannot open shared '
                                      'object file")\n')
    np.save(tmp_path / "in.npy", np.random.default_rng(4).random((10, 4)))
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "broken"))
    r = subprocess.run([_aotfmm(), "run", "in.npy", "-o", "y.h5"], capture_output=True,
                       text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr
    line = _one_line(r.stderr)
    assert "cannot be imported" in line and "libhdf5.so.310" in line and HINT in line


# -- wheels workflow and cibuildwheel selection -----------------------------------------------

def _runner_labels(text):
    """Every runner label the workflow names: matrix os lists and runs-on values."""
    labels = []
    text = re.sub(r"#.*", "", text)
    for m in re.finditer(r"^\s*os:\s*\[([^\]]*)\]", text, re.M):
        labels += [x.strip().strip("'\"") for x in m.group(1).split(",") if x.strip()]
    for m in re.finditer(r"^\s*runs-on:\s*(\S+)", text, re.M):
        if "${{" not in m.group(1):
            labels.append(m.group(1).strip("'\""))
    return labels


def test_workflow_names_no_retired_runner():
    text = _workflow()
    labels = _runner_labels(text)
    assert labels
    code = re.sub(r"#.*", "", text)  # comments may mention history
    for retired in RETIRED_RUNNERS:
        assert not re.search(rf"(?<![\w.-]){re.escape(retired)}(?![\w.])", code), retired
        assert not any(lab == retired or lab.startswith(retired + "-") for lab in labels)


def test_workflow_has_one_intel_and_one_arm64_macos_runner():
    labels = [lab for lab in _runner_labels(_workflow()) if lab.startswith("macos")]
    # macos-N-intel / macos-N-large: x86_64; macos-N / macos-N-xlarge / macos-latest: arm64
    intel = [lab for lab in labels if re.fullmatch(r"macos-\d+-(intel|large)", lab)]
    arm = [lab for lab in labels if re.fullmatch(r"macos-(\d+|latest)(-xlarge)?", lab)]
    assert len(intel) == 1 and len(arm) == 1 and sorted(labels) == sorted(intel + arm), labels


def test_workflow_covers_every_intended_architecture():
    labels = _runner_labels(_workflow())
    assert any(re.fullmatch(r"ubuntu-(latest|\d+\.\d+)", lab) for lab in labels)  # x86_64
    assert any(re.fullmatch(r"ubuntu-\d+\.\d+-arm", lab) for lab in labels)  # aarch64
    assert any(re.fullmatch(r"windows-(latest|\d+)", lab) for lab in labels)  # AMD64


def test_release_check_can_read_the_cibuildwheel_version():
    """build_tools/release_check.sh installs cibuildwheel==X.Y.* from `uses: ...@vX.Y`."""
    uses = re.findall(r"uses:\s*pypa/cibuildwheel@v(\d+(?:\.\d+)*)\s*$", _workflow(), re.M)
    assert len(uses) == 1 and len(uses[0].split(".")) >= 2, uses


def test_macos_builds_the_runner_architecture_only():
    """archs = native on macOS: the x86_64 and arm64 runners build their own (no universal2,
    no cross builds); the cibuildwheel check below simulates both runners with --archs."""
    assert _pyproject()["tool"]["cibuildwheel"]["macos"]["archs"] == ["native"]


def _cibuildwheel():
    return (shutil.which("cibuildwheel", path=os.path.dirname(sys.executable))
            or shutil.which("cibuildwheel"))


@pytest.mark.parametrize("platform", sorted(INTENDED_WHEELS))
def test_cibuildwheel_selects_the_intended_wheels(platform):
    _pyproject()
    exe = _cibuildwheel()
    if exe is None:
        pytest.skip("cibuildwheel is not installed")
    archs = ["--archs", "x86_64,arm64"] if platform == "macos" else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBW_")}
    r = subprocess.run([exe, "--print-build-identifiers", "--platform", platform, *archs,
                        str(ROOT)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    got = r.stdout.split()
    assert len(got) == len(set(got)) and set(got) == INTENDED_WHEELS[platform], got


def _load_compile_kernels(root):
    """build_tools/compile_kernels.py as a module, from a copy of the tree under ``root``."""
    spec = importlib.util.spec_from_file_location(
        "compile_kernels_copy", os.path.join(root, "build_tools", "compile_kernels.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                    reason="the digest names the numba version (a build requirement)")
def test_kernel_objects_are_reused_only_for_identical_inputs(tmp_path, monkeypatch):
    """AOTFMM_KERNEL_OBJECT_CACHE (.ci/run): the second build of the same sources copies the
    object; a changed kernel source, ISA or module name compiles again; unset, always compiles."""
    root = tmp_path / "tree"
    shutil.copytree(os.path.join(ROOT, "kernels"), root / "kernels")
    (root / "build_tools").mkdir()
    shutil.copy(os.path.join(ROOT, "build_tools", "compile_kernels.py"), root / "build_tools")
    ck = _load_compile_kernels(str(root))
    compiled = []

    def fake_compile(isa, name, output):  # stands in for numba: records the call
        compiled.append((isa, name))
        pathlib.Path(output).write_bytes(f"{isa} {name} {len(compiled)}".encode())

    monkeypatch.setattr(ck, "compile_object", fake_compile)
    store = tmp_path / "objects"
    monkeypatch.setenv(ck.OBJECT_CACHE_ENV, str(store))
    out = tmp_path / "a.o"
    ck.compile_object_reusing("generic", "_kernels_generic", str(out))
    first = out.read_bytes()
    out.unlink()
    ck.compile_object_reusing("generic", "_kernels_generic", str(out))
    assert compiled == [("generic", "_kernels_generic")] and out.read_bytes() == first
    ck.compile_object_reusing("x86-64-v3", "_kernels_generic", str(out))
    ck.compile_object_reusing("generic", "_kernels_other", str(out))
    assert len(compiled) == 3
    with open(root / "kernels" / "p2p.py", "a") as f:
        f.write("\n# changed\n")
    ck.compile_object_reusing("generic", "_kernels_generic", str(out))
    assert len(compiled) == 4 and out.read_bytes() != first
    monkeypatch.delenv(ck.OBJECT_CACHE_ENV)
    ck.compile_object_reusing("generic", "_kernels_generic", str(out))
    ck.compile_object_reusing("generic", "_kernels_generic", str(out))
    assert len(compiled) == 6
    assert not [p for p in store.iterdir() if p.suffix == ".tmp"]
