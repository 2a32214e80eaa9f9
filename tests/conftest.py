import os

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _tmp_cache_dir(tmp_path_factory, monkeypatch):
    """Every test uses a private operator cache (never the user's), one per session: pytest-xdist
    workers (each with its own base temp directory below the session's) share their parent's, so
    an operator set is built once per run (the cache writes atomically; see aotfmm.cache)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    d = base / "aotfmm-cache"
    d.mkdir(exist_ok=True)
    monkeypatch.setenv("AOTFMM_CACHE_DIR", str(d))
    return d


#: Orders whose operator sets are 260-370 MB each (README table; they took 30-90 s to build
#: before the symmetry build): only tests marked ``slow`` (deselected by default; ``pytest -m
#: slow`` runs them) may use them in this process.
SLOW_P = 12


@pytest.fixture(autouse=True)
def _high_orders_only_in_slow_tests(request, monkeypatch):
    """Fail a test not marked ``slow`` that loads or builds operators of order >= SLOW_P, so
    that the default suite stays fast (subprocesses are not watched)."""
    if request.node.get_closest_marker("slow") is not None:
        return
    from aotfmm import cache
    load_or_build = cache.load_or_build

    def guarded(key, *args, **kwargs):
        if isinstance(key, dict) and key.get("p", 0) >= SLOW_P:
            pytest.fail(f"operators p={key['p']} in a test not marked slow "
                        f"(@pytest.mark.slow; see tests/conftest.py)", pytrace=False)
        return load_or_build(key, *args, **kwargs)

    monkeypatch.setattr(cache, "load_or_build", guarded)


def slow_if(condition, *values):
    """pytest.param(*values), marked slow when ``condition`` (a high-order case)."""
    return pytest.param(*values, marks=[pytest.mark.slow] if condition else [])


def uniform(rng, n):
    """n points uniform in the unit cube, (n, 3)."""
    return rng.random((n, 3))


def sphere(rng, n):
    """n points uniform on the unit sphere surface, (n, 3)."""
    x = rng.standard_normal((n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)


def direct_reference(src, q, trg):
    """Plain float64 numpy direct sum of 1/(4 pi r), r > 0 only: independent of our kernels.

    src (ns, 3), q (ns,), trg (nt, 3) -> pot (nt,), grad (nt, 3). Each axis's differences
    apart (no |x|^2 - 2 x.y), the sums over sources as matrix-vector products.
    """
    src = np.asarray(src, dtype=np.float64)
    trg = np.asarray(trg, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    pot = np.zeros(len(trg))
    grad = np.zeros((len(trg), 3))
    for a in range(0, len(trg), 256):
        x = [trg[a:a + 256, k, None] - src[None, :, k] for k in range(3)]
        r = np.sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2])
        with np.errstate(divide="ignore"):
            inv = np.where(r > 0, 1.0 / r, 0.0)
        pot[a:a + 256] = inv @ q
        i3 = inv * inv * inv
        for k in range(3):
            grad[a:a + 256, k] = -((x[k] * i3) @ q)
    return pot / (4 * np.pi), grad / (4 * np.pi)


def rel_err(x, ref):
    x = np.asarray(x, dtype=np.float64)
    return np.linalg.norm(x - ref) / np.linalg.norm(ref)


# The hostile-input suite runs only in its own subprocess (see test_hostile.py).
collect_ignore = [] if os.environ.get("AOTFMM_HOSTILE_SUBPROCESS") else ["hostile"]


def density_reference(src, q, d, trg):
    """Plain float64 numpy sum for k densities of charges q (n, k) and/or dipoles d (n, k, 3):
    pot (k, nt), grad (k, nt, 3). A dipole d at y gives d.(x - y) / (4 pi r^3); r = 0 pairs
    are left out. Independent of our kernels (each axis's differences apart, the sums over
    sources as matrix products)."""
    src, trg = np.asarray(src, np.float64), np.asarray(trg, np.float64)
    k = (q if q is not None else d).shape[1]
    pot = np.zeros((k, len(trg)))
    grad = np.zeros((k, len(trg), 3))
    for a in range(0, len(trg), 128):
        b = slice(a, a + 128)
        x = [trg[b, e, None] - src[None, :, e] for e in range(3)]
        r = np.sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2])
        inv = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0), 0.0)
        i3 = inv ** 3
        if q is not None:
            pot[:, b] += (inv @ q).T
            for e in range(3):
                grad[:, b, e] -= ((x[e] * i3) @ q).T
        if d is not None:
            i5 = inv ** 5
            for e in range(3):
                pot[:, b] += ((x[e] * i3) @ d[:, :, e]).T
                grad[:, b, e] += (i3 @ d[:, :, e]).T
                for f in range(3):  # -3 (d.x) x_e / r^5
                    grad[:, b, e] -= 3 * ((x[e] * x[f] * i5) @ d[:, :, f]).T
    return pot / (4 * np.pi), grad / (4 * np.pi)


_PAIRS = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]


def hessian_reference(src, q, d, trg):
    """Plain float64 numpy potential, gradient and Hessian (xx, yy, zz, xy, xz, yz) of charges
    q (n,) and/or dipoles d (n, 3): (pot (nt,), grad (nt, 3), hess (nt, 6)). r = 0 left out."""
    src, trg = np.asarray(src, np.float64), np.asarray(trg, np.float64)
    pot, grad, hess = np.zeros(len(trg)), np.zeros((len(trg), 3)), np.zeros((len(trg), 6))
    for a in range(0, len(trg), 128):
        x = trg[a:a + 128, None, :] - src[None]
        r = np.sqrt((x * x).sum(-1))
        inv = np.where(r > 0, 1.0 / np.where(r > 0, r, 1.0), 0.0)
        i3, i5, i7 = inv ** 3, inv ** 5, inv ** 7
        if q is not None:
            pot[a:a + 128] += inv @ q
            for k in range(3):
                grad[a:a + 128, k] -= (x[..., k] * i3) @ q
            for c, (i, j) in enumerate(_PAIRS):
                hess[a:a + 128, c] += (3 * x[..., i] * x[..., j] * i5 - (i == j) * i3) @ q
        if d is not None:
            pd = x[..., 0] * d[:, 0] + x[..., 1] * d[:, 1] + x[..., 2] * d[:, 2]
            pot[a:a + 128] += (pd * i3).sum(1)
            grad[a:a + 128] += i3 @ d
            for k in range(3):
                grad[a:a + 128, k] -= 3 * (pd * x[..., k] * i5).sum(1)
            for c, (i, j) in enumerate(_PAIRS):
                hess[a:a + 128, c] += (-3 * (d[None, :, i] * x[..., j] + d[None, :, j] * x[..., i])
                                       * i5 - 3 * pd * (i == j) * i5
                                       + 15 * pd * x[..., i] * x[..., j] * i7).sum(1)
    f = 1 / (4 * np.pi)
    return pot * f, grad * f, hess * f
