"""The compiled Yukawa and Helmholtz sums (kernels/yukawa.py, kernels/helmholtz.py) through
``_dispatch.bind``, against numpy direct sums written out here.

G(x, y) = exp(-lam r) / (4 pi r) (Yukawa, real) and exp(i kappa r) / (4 pi r) (Helmholtz,
complex densities and results), G = 0 at r = 0. A dipole D at y has the field D . grad_y G, as
for Laplace (kernels/multi.py). Problems: several boxes with points local to their box (a
target meets the sources of list entry k at x + shift[k]), empty boxes, coincident
source/target pairs (also across boxes, through the shift), and calls over sub-ranges.
"""
import zlib

import numpy as np
import pytest

from aotfmm import _dispatch, _kernels

FAMILIES = ("yukawa", "helmholtz")
TERMS = {"charges": _dispatch.CHARGES, "dipoles": _dispatch.DIPOLES,
         "both": _dispatch.CHARGES | _dispatch.DIPOLES}
#: the kernel's parameter name and a value of it
PARAM = {"yukawa": ("lam", 1.7), "helmholtz": ("kappa", 2.3)}
TOL = {np.float32: 1e-4, np.float64: 1e-12}
CDT = {np.float32: np.complex64, np.float64: np.complex128}


# ------------------------------------------------------------------------- numpy references

def reference(family, par, x, y, q, dip):
    """pot (k, m), grad (k, 3, m) at x (3, m) of charges q (k, n) and/or dipoles dip (k, 3, n)
    at y (3, n), float64/complex128 numpy. With d = x - y, r = |d|:

    * Yukawa, G = exp(-lam r) / (4 pi r): grad_x G = -exp(-lam r) (1 + lam r) d / (4 pi r^3);
    * Helmholtz, G = exp(i kappa r) / (4 pi r): grad_x G = -exp(i kappa r) (1 - i kappa r) d /
      (4 pi r^3);

    a dipole's potential is D . grad_y G = -D . grad_x G, its gradient the derivative of that
    in x (written out below). Pairs with r = 0 contribute nothing."""
    d = x[:, :, None] - y[:, None, :]
    r = np.sqrt((d * d).sum(0))
    zero = r == 0.0
    r = np.where(zero, 1.0, r)
    if family == "yukawa":
        lam = par
        e = np.exp(-lam * r)
        g = e / (4 * np.pi * r)
        f1 = e * (1 + lam * r) / (4 * np.pi * r ** 3)
        f2 = e * (3 + 3 * lam * r + lam ** 2 * r ** 2) / (4 * np.pi * r ** 5)
    else:
        k = par
        e = np.exp(1j * k * r)
        g = e / (4 * np.pi * r)
        f1 = e * (1 - 1j * k * r) / (4 * np.pi * r ** 3)
        f2 = e * (3 - 3j * k * r - k ** 2 * r ** 2) / (4 * np.pi * r ** 5)
    for a in (g, f1, f2):
        a[zero] = 0.0
    # f1 = -G'(r) / r and f2 = -f1'(r) / r: grad_x G = -f1 d, grad_x [P f1] = D f1 - P f2 d
    nd = (q if q is not None else dip).shape[0]
    pot = np.zeros((nd, x.shape[1]), g.dtype)
    grad = np.zeros((nd, 3, x.shape[1]), g.dtype)
    if q is not None:
        pot += q @ g.T
        grad -= np.einsum("kn,amn,mn->kam", q, d, f1)
    if dip is not None:
        p = np.einsum("kan,amn->kmn", dip, d)
        pot += np.einsum("kmn,mn->km", p, f1)
        grad += np.einsum("kan,mn->kam", dip, f1) - np.einsum("kmn,amn,mn->kam", p, d, f2)
    return pot, grad


@pytest.mark.parametrize("family, par", [("yukawa", 1.7), ("yukawa", 0.0),
                                         ("helmholtz", 2.3), ("helmholtz", 1.5 + 0.7j)])
def test_reference_gradients_and_dipoles_are_derivatives_of_g(family, par):
    """The numpy reference itself: its gradient is the central difference of its potential in
    x, and a dipole's potential is D . grad_y of the charge potential (difference in y)."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (3, 4))
    y = rng.uniform(-1, 1, (3, 6)) + 2.5
    q = rng.standard_normal((2, 6))
    dip = rng.standard_normal((2, 3, 6))
    h = 1e-5
    for qq, dd in ((q, None), (None, dip)):
        pot, grad = reference(family, par, x, y, qq, dd)
        for a in range(3):
            e = np.zeros((3, 1))
            e[a] = h
            fd = (reference(family, par, x + e, y, qq, dd)[0]
                  - reference(family, par, x - e, y, qq, dd)[0]) / (2 * h)
            assert np.abs(fd - grad[:, a]).max() <= 1e-8 * np.abs(grad).max()
    pot, _ = reference(family, par, x, y, None, dip)
    fd = np.zeros_like(pot)
    for j in range(y.shape[1]):
        for a in range(3):
            e = np.zeros((3, y.shape[1]))
            e[a, j] = h
            one = np.zeros((2, y.shape[1]))
            one[:, j] = 1.0
            dq = (reference(family, par, x, y + e, one, None)[0]
                  - reference(family, par, x, y - e, one, None)[0]) / (2 * h)
            fd += dip[:, a, j][:, None] * dq
    assert np.abs(fd - pot).max() <= 1e-8 * np.abs(pot).max()


# ---------------------------------------------------------------------------------- problems

def _densities(rng, family, terms, nd, n, dt):
    """(q (nd, n), dip (nd, 3, n), flags): absent terms are 1-element placeholders."""
    vt = CDT[dt] if family == "helmholtz" else dt

    def draw(shape):
        v = rng.standard_normal(shape)
        if family == "helmholtz":
            v = v + 1j * rng.standard_normal(shape)
        return np.ascontiguousarray(v, dtype=vt)
    q = draw((nd, n)) if terms != "dipoles" else np.zeros((1, 1), vt)
    dip = draw((nd, 3, n)) if terms != "charges" else np.zeros((1, 1, 1), vt)
    return q, dip, TERMS[terms]


def _csr(lists):
    offsets = np.concatenate(([0], np.cumsum([len(x) for x in lists]))).astype(np.int64)
    index = np.array([s for x in lists for s in x], dtype=np.int64)
    return offsets, index


def _ranges(counts):
    start = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    return start, start + np.asarray(counts, dtype=np.int64)


def p2p_problem(rng, family, dt, terms, nd, n_boxes=6):
    """Points local to their boxes (origins on a 1/4 grid), box 3 without sources, box 4
    without targets; box 0's first targets are its first sources and box 1's first target
    meets box 2's first source through the shift (both exact in float32)."""
    counts = rng.integers(4, 25, n_boxes)
    counts[3] = 0
    origins = rng.integers(-8, 8, (n_boxes, 3)) * 0.25
    src = np.ascontiguousarray(rng.uniform(-0.5, 0.5, (3, counts.sum())), dtype=dt)
    src_start, src_end = _ranges(counts)
    src[:, src_start[2]] = [0.125, -0.25, 0.375]
    tcounts = rng.integers(1, 12, n_boxes)
    tcounts[4] = 0
    trg = np.ascontiguousarray(rng.uniform(-0.5, 0.5, (3, tcounts.sum())), dtype=dt)
    trg_start, trg_end = _ranges(tcounts)
    trg[:, trg_start[0]:trg_start[0] + 2] = src[:, src_start[0]:src_start[0] + 2]
    lists = [[b] + [s for s in range(n_boxes) if s != b and rng.random() < 0.6]
             for b in range(n_boxes)]
    if 2 not in lists[1]:
        lists[1].append(2)
    offsets, index = _csr(lists)
    shift = np.array([origins[b] - origins[s] for b, x in enumerate(lists) for s in x])
    shift = np.ascontiguousarray(shift, dtype=dt)
    # box 1's first target = box 2's first source, seen from box 1 (x + shift = y)
    k12 = offsets[1] + lists[1].index(2)
    trg[:, trg_start[1]] = src[:, src_start[2]] - shift[k12]
    q, dip, flags = _densities(rng, family, terms, nd, counts.sum(), dt)
    cum = np.concatenate(([0], np.cumsum(counts[index])))
    m_max = int(max(cum[offsets[1:]] - cum[offsets[:-1]]))
    args = dict(src_xyz=src, q=q, dip=dip, trg_xyz=trg, src_start=src_start, src_end=src_end,
                trg_start=trg_start, trg_end=trg_end, list_offsets=offsets, list_index=index,
                shift=shift, boxes=rng.permutation(n_boxes).astype(np.int64), m_max=m_max)
    return args, flags


def p2p_reference(family, par, a, flags):
    """Field at every target of its box's list, in the target box's frame (float64)."""
    f64 = np.float64
    has_q, has_d = flags & _dispatch.CHARGES, flags & _dispatch.DIPOLES
    n_trg = a["trg_xyz"].shape[1]
    nd = (a["q"] if has_q else a["dip"]).shape[0]
    vt = complex if family == "helmholtz" else float
    pot = np.zeros((nd, n_trg), vt)
    grad = np.zeros((nd, 3, n_trg), vt)
    for b in range(len(a["trg_start"])):
        t0, t1 = a["trg_start"][b], a["trg_end"][b]
        x = a["trg_xyz"][:, t0:t1].astype(f64)
        for k in range(a["list_offsets"][b], a["list_offsets"][b + 1]):
            s = a["list_index"][k]
            j0, j1 = a["src_start"][s], a["src_end"][s]
            y = a["src_xyz"][:, j0:j1].astype(f64) - a["shift"][k].astype(f64)[:, None]
            p, g = reference(family, par, x, y, a["q"][:, j0:j1] if has_q else None,
                             a["dip"][:, :, j0:j1] if has_d else None)
            pot[:, t0:t1] += p
            grad[:, :, t0:t1] += g
    return pot, grad


def _surface():
    """(3, 26) the points of {-1, 0, 1}^3 but the centre: a unit 'surface' whose points keep
    c + h r surf exact for dyadic c, h, r."""
    g = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                  if (i, j, k) != (0, 0, 0)], dtype=float)
    return np.ascontiguousarray(g.T)


def p2c_problem(rng, family, dt, terms, nd, n_boxes=5):
    """Rows = target boxes with check surfaces c_k + h_b r surf; source box 2 is empty; the
    first source of row 0's first listed box sits exactly on that row's check point 0."""
    counts = rng.integers(3, 20, n_boxes)
    counts[2] = 0
    src = np.ascontiguousarray(rng.uniform(-1, 1, (3, counts.sum())), dtype=dt)
    src_start, src_end = _ranges(counts)
    trg_boxes = np.array([3, 0, 4, 1], dtype=np.int64)
    half_widths = np.ascontiguousarray(2.0 ** -rng.integers(0, 3, n_boxes), dtype=dt)
    lists = [[s for s in range(n_boxes) if rng.random() < 0.7] or [0] for _ in trg_boxes]
    lists[0] = [1] + [s for s in lists[0] if s != 1]
    offsets, index = _csr(lists)
    centers = np.ascontiguousarray(rng.integers(-12, 12, (len(index), 3)) * 0.125, dtype=dt)
    surf = np.ascontiguousarray(_surface(), dtype=dt)
    radius = dt(1.5)
    src[:, src_start[1]] = centers[0] + half_widths[trg_boxes[0]] * radius * surf[:, 0]
    q, dip, flags = _densities(rng, family, terms, nd, counts.sum(), dt)
    args = dict(src_xyz=src, q=q, dip=dip, src_start=src_start, src_end=src_end,
                trg_boxes=trg_boxes, centers=centers, half_widths=half_widths,
                list_offsets=offsets, list_index=index, surf=surf, radius=radius,
                buf=np.empty((6, max(counts.max(), 1)), dt))
    return args, flags


def p2c_reference(family, par, a, flags):
    f64 = np.float64
    has_q, has_d = flags & _dispatch.CHARGES, flags & _dispatch.DIPOLES
    nd = (a["q"] if has_q else a["dip"]).shape[0]
    out = []
    for i, b in enumerate(a["trg_boxes"]):
        row = 0.0
        for k in range(a["list_offsets"][i], a["list_offsets"][i + 1]):
            s = a["list_index"][k]
            j0, j1 = a["src_start"][s], a["src_end"][s]
            x = (a["centers"][k].astype(f64)[:, None]
                 + f64(a["half_widths"][b]) * f64(a["radius"]) * a["surf"].astype(f64))
            row = row + reference(family, par, x, a["src_xyz"][:, j0:j1].astype(f64),
                                  a["q"][:, j0:j1] if has_q else None,
                                  a["dip"][:, :, j0:j1] if has_d else None)[0]
        out.append(row if np.ndim(row) else np.zeros((nd, a["surf"].shape[1])))
    return np.array(out)


def s2p_problem(rng, family, dt, nd, n_boxes=5):
    """Rows = target boxes meeting the surfaces c_k + h_s r surf of their listed boxes; box 2
    has no targets; row 0's first target sits exactly on its first surface's point 0."""
    tcounts = rng.integers(2, 15, n_boxes)
    tcounts[2] = 0
    trg = np.ascontiguousarray(rng.uniform(-1, 1, (3, tcounts.sum())), dtype=dt)
    trg_start, trg_end = _ranges(tcounts)
    trg_boxes = np.array([1, 4, 2, 0], dtype=np.int64)
    half_widths = np.ascontiguousarray(2.0 ** -rng.integers(0, 3, n_boxes), dtype=dt)
    lists = [[s for s in range(n_boxes) if rng.random() < 0.7] or [3] for _ in trg_boxes]
    offsets, index = _csr(lists)
    centers = np.ascontiguousarray(rng.integers(-12, 12, (len(index), 3)) * 0.125, dtype=dt)
    surf = np.ascontiguousarray(_surface(), dtype=dt)
    radius = dt(2.5)
    s0 = index[0]
    trg[:, trg_start[trg_boxes[0]]] = centers[0] + half_widths[s0] * radius * surf[:, 0]
    dens, _, _ = _densities(rng, family, "charges", n_boxes * nd, surf.shape[1], dt)
    args = dict(dens=np.ascontiguousarray(dens.reshape(n_boxes, nd, -1)), trg_xyz=trg,
                trg_start=trg_start, trg_end=trg_end, trg_boxes=trg_boxes, centers=centers,
                half_widths=half_widths, list_offsets=offsets, list_index=index, surf=surf,
                radius=radius, buf=np.empty((6, surf.shape[1]), dt))
    return args


def s2p_reference(family, par, a):
    f64 = np.float64
    nd = a["dens"].shape[1]
    n_trg = a["trg_xyz"].shape[1]
    vt = complex if family == "helmholtz" else float
    pot = np.zeros((nd, n_trg), vt)
    grad = np.zeros((nd, 3, n_trg), vt)
    for i, b in enumerate(a["trg_boxes"]):
        t0, t1 = a["trg_start"][b], a["trg_end"][b]
        for k in range(a["list_offsets"][i], a["list_offsets"][i + 1]):
            s = a["list_index"][k]
            y = (a["centers"][k].astype(f64)[:, None]
                 + f64(a["half_widths"][s]) * f64(a["radius"]) * a["surf"].astype(f64))
            p, g = reference(family, par, a["trg_xyz"][:, t0:t1].astype(f64), y,
                             a["dens"][s].astype(vt), None)
            pot[:, t0:t1] += p
            grad[:, :, t0:t1] += g
    return pot, grad


def _close(got, ref, dt, what):
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err <= TOL[dt], f"{what}: relative error {err:.2e}"
    return err


def _rng(*case):
    """A generator seeded by the test case (the same in every process)."""
    return np.random.default_rng(zlib.crc32(repr(case).encode()))


def _param(family, dt, value=None):
    name, default = PARAM[family]
    v = default if value is None else value
    return name, (CDT[dt](v) if family == "helmholtz" else dt(v)), v


# ------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("gradient", [False, True])
@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("terms", sorted(TERMS))
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_p2p(family, dt, terms, nd, gradient):
    rng = _rng(family, dt.__name__, terms, nd, gradient)
    a, flags = p2p_problem(rng, family, dt, terms, nd)
    pname, pval, par = _param(family, dt)
    ref_pot, ref_grad = p2p_reference(family, par, a, flags)
    vt = a["q"].dtype
    n_trg = a["trg_xyz"].shape[1]
    pot0 = np.ascontiguousarray(rng.standard_normal((nd, n_trg)), dtype=vt)  # INOUT: added to
    pot = pot0.copy()
    grad = np.zeros((nd, 3, n_trg), vt) if gradient else np.zeros((1, 1, 1), vt)
    flags |= _dispatch.GRADIENT if gradient else 0
    call = _dispatch.bind(f"{family}_p2p", dt, **a, flags=flags, **{pname: pval}, pot=pot,
                          grad=grad)
    assert call.free == ("i0", "i1")
    call(0, 2)
    call(2, len(a["boxes"]))
    _close(pot - pot0, ref_pot, dt, "pot")
    if gradient:
        _close(grad, ref_grad, dt, "grad")
    else:
        assert not grad.any()


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("terms", sorted(TERMS))
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_p2c(family, dt, terms, nd):
    rng = _rng(family, dt.__name__, terms, nd)
    a, flags = p2c_problem(rng, family, dt, terms, nd)
    pname, pval, par = _param(family, dt)
    ref = p2c_reference(family, par, a, flags)
    rows = []
    for b0, b1 in ((0, 1), (1, 4)):  # rows b0..b1 into a check array of their own (row0 = b0)
        check = np.full((b1 - b0, nd, a["surf"].shape[1]), 7.0, a["q"].dtype)  # OUT
        call = _dispatch.bind(f"{family}_p2c", dt, **a, flags=flags, **{pname: pval},
                              check=check)
        assert call.free == ("b0", "b1", "row0")
        call(b0, b1, b0)
        rows.append(check)
    _close(np.concatenate(rows), ref, dt, "check")


@pytest.mark.parametrize("gradient", [False, True])
@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_s2p(family, dt, nd, gradient):
    rng = _rng(family, dt.__name__, nd, gradient)
    a = s2p_problem(rng, family, dt, nd)
    pname, pval, par = _param(family, dt)
    ref_pot, ref_grad = s2p_reference(family, par, a)
    vt = a["dens"].dtype
    n_trg = a["trg_xyz"].shape[1]
    pot0 = np.ascontiguousarray(rng.standard_normal((nd, n_trg)), dtype=vt)
    pot = pot0.copy()
    grad = np.zeros((nd, 3, n_trg), vt) if gradient else np.zeros((1, 1, 1), vt)
    call = _dispatch.bind(f"{family}_s2p", dt, **a, flags=_dispatch.GRADIENT if gradient else 0,
                          **{pname: pval}, pot=pot, grad=grad)
    assert call.free == ("b0", "b1")
    call(0, 3)
    call(3, 4)
    _close(pot - pot0, ref_pot, dt, "pot")
    if gradient:
        _close(grad, ref_grad, dt, "grad")
    else:
        assert not grad.any()


@pytest.mark.parametrize("family, value", [("yukawa", 40.0), ("yukawa", 1e-3),
                                           ("helmholtz", 300.0), ("helmholtz", 1e-3),
                                           ("helmholtz", 60.0 + 8.0j), ("helmholtz", 3j),
                                           ("helmholtz", -4.0)])
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_p2p_parameter_range(family, value, dt):
    """Strong screening (exp(-lam r) down to ~1e-60, float32 underflow), kr up to ~1e3, a
    purely imaginary and a negative kappa: still the direct sum, nothing non-finite."""
    rng = np.random.default_rng(11)
    a, flags = p2p_problem(rng, family, dt, "both", 2)
    pname, pval, par = _param(family, dt, value)
    ref_pot, ref_grad = p2p_reference(family, par, a, flags)
    vt = a["q"].dtype
    pot = np.zeros((2, a["trg_xyz"].shape[1]), vt)
    grad = np.zeros((2, 3, a["trg_xyz"].shape[1]), vt)
    _dispatch.bind(f"{family}_p2p", dt, **a, flags=flags | _dispatch.GRADIENT,
                   **{pname: pval}, pot=pot, grad=grad)(0, len(a["boxes"]))
    # float32 phases kr ~ 1e3 carry kr * 6e-8 from the rounding of r itself
    tol = TOL[dt] * (30 if dt == np.float32 and abs(value) > 100 else 1)
    for got, ref, what in ((pot, ref_pot, "pot"), (grad, ref_grad, "grad")):
        assert np.all(np.isfinite(got))
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max(), what


@pytest.mark.parametrize("terms", sorted(TERMS))
def test_zero_parameter_is_laplace_with_its_conventions(terms):
    """lam = 0 and kappa = 0 give Laplace's p2p_multi/p2c_multi/s2p_multi on the very same
    arguments (same shift, dipole, buffer and row conventions), and kappa = i lam is Yukawa."""
    rng = np.random.default_rng(7)
    dt = np.float64
    full = _dispatch.GRADIENT | _dispatch.EXACT
    a, flags = p2p_problem(rng, "yukawa", dt, terms, 2)
    n_trg = a["trg_xyz"].shape[1]
    out = {}
    for name, extra, vt in (("p2p_multi", {}, dt), ("yukawa_p2p", {"lam": 0.0}, dt),
                            ("helmholtz_p2p", {"kappa": 0.0}, np.complex128)):
        pot, grad = np.zeros((2, n_trg), vt), np.zeros((2, 3, n_trg), vt)
        b = dict(a, q=a["q"].astype(vt), dip=a["dip"].astype(vt))
        _dispatch.bind(name, dt, **b, flags=flags | full, **extra, pot=pot, grad=grad)(0, 6)
        out[name] = pot, grad
    for name in ("yukawa_p2p", "helmholtz_p2p"):
        for got, lap in zip(out[name], out["p2p_multi"]):
            assert np.abs(got - lap).max() <= 1e-13 * np.abs(lap).max()
    # Helmholtz with kappa = i lam: Yukawa on the real and imaginary parts
    lam = 1.3
    ac, _ = p2p_problem(np.random.default_rng(8), "helmholtz", dt, terms, 2)
    n_trg = ac["trg_xyz"].shape[1]
    ph, gh = np.zeros((2, n_trg), complex), np.zeros((2, 3, n_trg), complex)
    _dispatch.bind("helmholtz_p2p", dt, **ac, flags=flags | full, kappa=1j * lam, pot=ph,
                   grad=gh)(0, 6)
    parts = []
    for part in (np.real, np.imag):
        b = dict(ac, q=np.ascontiguousarray(part(ac["q"])),
                 dip=np.ascontiguousarray(part(ac["dip"])))
        py, gy = np.zeros((2, n_trg)), np.zeros((2, 3, n_trg))
        _dispatch.bind("yukawa_p2p", dt, **b, flags=flags | full, lam=lam, pot=py, grad=gy)(0, 6)
        parts.append((py, gy))
    assert np.abs(ph - (parts[0][0] + 1j * parts[1][0])).max() <= 1e-13 * np.abs(ph).max()
    assert np.abs(gh - (parts[0][1] + 1j * parts[1][1])).max() <= 1e-13 * np.abs(gh).max()

    # P2C and S2P against p2c_multi / s2p_multi (those use the ~1e-14 float64 1/r)
    a, flags = p2c_problem(rng, "yukawa", dt, terms, 2)
    checks = {}
    for name, extra, vt in (("p2c_multi", {}, dt), ("yukawa_p2c", {"lam": 0.0}, dt),
                            ("helmholtz_p2c", {"kappa": 0.0}, np.complex128)):
        check = np.zeros((4, 2, 26), vt)
        b = dict(a, q=a["q"].astype(vt), dip=a["dip"].astype(vt))
        _dispatch.bind(name, dt, **b, flags=flags, **extra, check=check)(0, 4, 0)
        checks[name] = check
    for name in ("yukawa_p2c", "helmholtz_p2c"):
        assert (np.abs(checks[name] - checks["p2c_multi"]).max()
                <= 1e-12 * np.abs(checks["p2c_multi"]).max())
    a = s2p_problem(rng, "yukawa", dt, 2)
    res = {}
    for name, extra, vt in (("s2p_multi", {}, dt), ("yukawa_s2p", {"lam": 0.0}, dt),
                            ("helmholtz_s2p", {"kappa": 0.0}, np.complex128)):
        n_trg = a["trg_xyz"].shape[1]
        pot, grad = np.zeros((2, n_trg), vt), np.zeros((2, 3, n_trg), vt)
        b = dict(a, dens=a["dens"].astype(vt))
        _dispatch.bind(name, dt, **b, flags=_dispatch.GRADIENT, **extra, pot=pot,
                       grad=grad)(0, 4)
        res[name] = pot, grad
    for name in ("yukawa_s2p", "helmholtz_s2p"):
        for got, lap in zip(res[name], res["s2p_multi"]):
            assert np.abs(got - lap).max() <= 1e-12 * np.abs(lap).max()


def test_complex_arguments_are_checked_by_name():
    """{C} parameters take the complex type of the coordinates' precision, nothing else."""
    rng = np.random.default_rng(3)
    a, flags = p2p_problem(rng, "helmholtz", np.float64, "charges", 1)
    n_trg = a["trg_xyz"].shape[1]
    good = dict(a, flags=flags, kappa=2.0, pot=np.zeros((1, n_trg), complex),
                grad=np.zeros((1, 1, 1), complex))
    assert [t for t, _ in _dispatch.arg_types("helmholtz_p2p", np.float32)][1] == np.complex64
    _dispatch.bind("helmholtz_p2p", np.float64, **good)
    with pytest.raises(TypeError, match="complex128 array, got 2-D float64"):
        _dispatch.bind("helmholtz_p2p", np.float64, **dict(good, q=a["q"].real.copy()))
    with pytest.raises(TypeError, match="complex128 array, got 2-D complex64"):
        _dispatch.bind("helmholtz_p2p", np.float64,
                       **dict(good, pot=good["pot"].astype(np.complex64)))
    with pytest.raises(TypeError, match="float type of the coordinates"):
        _dispatch.bind("helmholtz_p2p", np.complex128, **good)
    with pytest.raises(TypeError, match="expected a scalar"):
        _dispatch.bind("helmholtz_p2p", np.float64, **dict(good, kappa=np.ones(2)))


@pytest.mark.parametrize("isa", _kernels.runnable_isas())
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_runnable_isa_module_agrees(family, dt, isa):
    """Each ISA's module (generic: floor and sqrt as library calls, AVX2, AVX-512) gives the
    direct sum: P2P with charges and dipoles and the gradient, P2C and S2P."""
    module = _kernels.load(isa)
    rng = _rng(family, dt.__name__, isa)
    pname, pval, par = _param(family, dt, 3.1 + 0.4j if family == "helmholtz" else 2.2)
    a, flags = p2p_problem(rng, family, dt, "both", 2)
    ref_pot, ref_grad = p2p_reference(family, par, a, flags)
    n_trg = a["trg_xyz"].shape[1]
    pot, grad = np.zeros((2, n_trg), a["q"].dtype), np.zeros((2, 3, n_trg), a["q"].dtype)
    _dispatch.bind(f"{family}_p2p", dt, module, **a, flags=flags | _dispatch.GRADIENT,
                   **{pname: pval}, pot=pot, grad=grad)(0, len(a["boxes"]))
    _close(pot, ref_pot, dt, "p2p pot")
    _close(grad, ref_grad, dt, "p2p grad")
    a, flags = p2c_problem(rng, family, dt, "both", 2)
    check = np.zeros((4, 2, 26), a["q"].dtype)
    _dispatch.bind(f"{family}_p2c", dt, module, **a, flags=flags, **{pname: pval},
                   check=check)(0, 4, 0)
    _close(check, p2c_reference(family, par, a, flags), dt, "p2c")
    a = s2p_problem(rng, family, dt, 2)
    ref_pot, ref_grad = s2p_reference(family, par, a)
    pot, grad = np.zeros_like(ref_pot, a["dens"].dtype), np.zeros_like(ref_grad, a["dens"].dtype)
    _dispatch.bind(f"{family}_s2p", dt, module, **a, flags=_dispatch.GRADIENT, **{pname: pval},
                   pot=pot, grad=grad)(0, 4)
    _close(pot, ref_pot, dt, "s2p pot")
    _close(grad, ref_grad, dt, "s2p grad")


@pytest.mark.parametrize("isa", _kernels.runnable_isas())
@pytest.mark.parametrize("family", FAMILIES)
def test_exp_and_phase_keep_full_accuracy_at_large_arguments(family, isa):
    """One pair at r = 5 exactly (a 3-4-5 triangle), float64: G to ~1e-15 relative for lam r up
    to 700 (exp down to 1e-304) and kappa r up to 1.5e4. Fails if the range reductions of
    kernels/_vecmath.py lose their split constants (e.g. compiled with ``reassoc``: ~1e-12)."""
    module = _kernels.load(isa)
    z, one = np.zeros(1, np.int64), np.ones(1, np.int64)
    pname = PARAM[family][0]
    values = np.linspace(0.1, 140.0, 57) if family == "yukawa" else np.linspace(1e3, 3e3, 57)
    worst = worst_fmm = 0.0
    for v, flags in [(v, f) for v in values
                     for f in (_dispatch.CHARGES | _dispatch.EXACT, _dispatch.CHARGES)]:
        vt = CDT[np.float64] if family == "helmholtz" else np.float64
        pot = np.zeros((1, 1), vt)
        _dispatch.bind(f"{family}_p2p", np.float64, module, src_xyz=np.zeros((3, 1)),
                       q=np.ones((1, 1), vt), dip=np.zeros((1, 1, 1), vt),
                       trg_xyz=np.array([[3.0], [4.0], [0.0]]), src_start=z, src_end=one,
                       trg_start=z, trg_end=one, list_offsets=np.array([0, 1]), list_index=z,
                       shift=np.zeros((1, 3)), boxes=z, flags=flags, m_max=1,
                       **{pname: v}, pot=pot, grad=np.zeros((1, 1, 1), vt))(0, 1)
        t = v * 5.0
        ref = (np.exp(-t) if family == "yukawa" else np.cos(t) + 1j * np.sin(t)) / (20 * np.pi)
        err = abs(pot[0, 0] - ref) / abs(ref)
        if flags & _dispatch.EXACT:
            worst = max(worst, err)
        else:  # FMM near field: r from one Newton step, ~3e-14 relative (kernels/yukawa.py)
            worst_fmm = max(worst_fmm, err / max(1.0, abs(t)))
    assert worst <= 2e-15, worst
    assert worst_fmm <= 1e-13, worst_fmm
