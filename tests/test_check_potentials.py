"""expansions.check_potentials (the MPI far boxes' check fields) against numpy direct sums."""
import numpy as np
import pytest

import aotfmm
from aotfmm.expansions import check_potentials
from aotfmm.surfaces import surface


def _reference(kind, param, src, q, d, trg):
    """Field of charges q (n, k) and dipoles d (n, k, 3) at trg: G = exp(-lam r) / (4 pi r)
    (Yukawa), exp(i kappa r) / (4 pi r) (Helmholtz), 1 / (4 pi r) (Laplace); a dipole is
    d . grad_y G. Plain numpy, (k, nt)."""
    x = trg[:, None, :] - src[None]
    r = np.sqrt((x * x).sum(-1))
    if kind == "laplace":
        g, dg = 1 / r, -1 / r ** 2
    elif kind == "yukawa":
        g = np.exp(-param * r) / r
        dg = -g * (param + 1 / r)
    else:
        g = np.exp(1j * param * r) / r
        dg = g * (1j * param - 1 / r)
    out = 0
    if q is not None:
        out = out + (g @ q).T
    if d is not None:  # grad_y G = -dG/dr (x - y) / r
        out = out + np.einsum("ts,tsc,skc->kt", -dg / r, x, d)
    return out / (4 * np.pi)


@pytest.mark.parametrize("kind,param,dt,terms", [
    ("laplace", None, np.float64, "q1"), ("laplace", None, np.float32, "q1"),
    ("laplace", None, np.float64, "qd3"), ("laplace", None, np.float32, "d2"),
    ("yukawa", 3.0, np.float64, "qd2"), ("helmholtz", 4.0, np.float64, "q1"),
    ("helmholtz", 4.0, np.float32, "qd2")])
def test_check_potentials_match_numpy(kind, param, dt, terms):
    rng = np.random.default_rng(7)
    family = {"laplace": lambda: aotfmm.Laplace(), "yukawa": lambda: aotfmm.Yukawa(param),
              "helmholtz": lambda: aotfmm.Helmholtz(param)}[kind]()
    k = int(terms[-1])
    cplx = kind == "helmholtz"
    surf = surface(6)
    # three rows: two runs of one box (h = 0.25) and a row of another (h = 0.5, 1 source)
    counts, halves = np.array([300, 211, 1]), np.array([0.25, 0.25, 0.5])
    n = counts.sum()
    xyz = (rng.random((n, 3)) * 2 - 1) * np.repeat(halves, counts)[:, None]
    def dens(*shape):
        a = rng.standard_normal(shape)
        return a + 1j * rng.standard_normal(shape) if cplx else a
    q = dens(n, k) if "q" in terms else None
    d = dens(n, k, 3) if "d" in terms else None
    ends = np.cumsum(counts)
    starts = ends - counts
    radius = 2.95
    out = check_potentials(family, dt, xyz.T, starts, ends, halves, radius, surf.T,
                           charges=None if q is None else q.T,
                           dipoles=None if d is None else d.transpose(1, 2, 0))
    assert out.shape == (3, k, len(surf))
    assert out.dtype == (np.dtype(np.complex64 if dt == np.float32 else np.complex128)
                         if cplx else np.dtype(dt))
    scale = 0  # the field of |densities| on the surfaces: the measure of a rounding error
    for i in range(3):
        rows = slice(starts[i], ends[i])
        trg = halves[i] * radius * surf
        ref = _reference(kind, param, xyz[rows], None if q is None else q[rows],
                         None if d is None else d[rows], trg)
        absref = _reference(kind, 0.0 if kind != "laplace" else None, xyz[rows],
                            None if q is None else np.abs(q[rows]),
                            None if d is None else np.abs(d[rows]), trg)
        scale = np.abs(absref).max()
        tol = 1e-12 if dt == np.float64 else 3e-6
        assert np.abs(out[i] - ref).max() <= tol * scale, (i, np.abs(out[i] - ref).max() / scale)


def test_check_potentials_threads_and_empty():
    family = aotfmm.Laplace()
    rng = np.random.default_rng(3)
    xyz = rng.random((3, 2000)) - 0.5
    q = rng.standard_normal((1, 2000))
    starts, ends = np.arange(0, 2000, 100), np.arange(100, 2001, 100)
    surf = surface(5).T
    from aotfmm import _threads
    one = check_potentials(family, np.float64, xyz, starts, ends, np.full(20, 0.5), 2.95, surf,
                           charges=q)
    with _threads.Workers(2) as w:
        two = check_potentials(family, np.float64, xyz, starts, ends, np.full(20, 0.5), 2.95,
                               surf, charges=q, workers=w)
    assert np.array_equal(one, two)
    none = check_potentials(family, np.float64, xyz, starts[:0], ends[:0], np.zeros(0), 2.95,
                            surf, charges=q)
    assert none.shape == (0, 1, surf.shape[1])
