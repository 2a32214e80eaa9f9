"""Rules the compiled kernels' sources (kernels/*.py) must keep that no numerical test sees.

Array views in inner loops. Every view numba makes (``a[d, c0:c1]``, ``a[0, :n]``, and
``a[d]`` of a 2-D array) takes an atomic reference count increment on the array's memory and
a decrement when it dies (NRT_incref / NRT_decref, a ``lock`` instruction each). Made per
target and chunk, or per surface point and listed box, they add up: on the Intel Xeon
(x86-64-v4) 9 % of a k = 8 dipole run's near-field samples sat in NRT_incref/decref; indexing
in place gave the same sums and made the near field of k densities 1.1-1.45x faster, their
P2M 1.3-2x (Laplace, Yukawa, Helmholtz; 2026-12-05). So no kernel slices an array inside two
or more nested loops (a register_jitable helper's loops count as they stand in the helper:
such helpers take the array and its offsets, as ``_inline.charge_sweep2`` does), except where
a view serves a whole pair of leaves (:data:`PER_LEAF_PAIR`): there it is noise against the
pair terms. Row views by an integer index (``a[d]``) look like element reads to this scan;
the rule holds for them too (kernels/__init__.py).
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "kernels")

#: kernel -> why its views two loops deep are allowed: each serves one pair of leaves (tens of
#: thousands of pair terms at the default leaf sizes), not one target or one chunk
PER_LEAF_PAIR = {
    "p2p_sym": "per target leaf and listed leaf (Newton's third law)",
    "yukawa_p2p_sym": "per target leaf and listed leaf (Newton's third law)",
}


def _views(tree, depth_min):
    """(function, line, loop depth) of every sliced subscript read ``depth_min`` or more
    loops deep, per top-level function of ``tree``."""
    hits = []

    class Walk(ast.NodeVisitor):
        def __init__(self, name):
            self.name = name
            self.depth = 0

        def visit_For(self, node):
            self.depth += 1
            self.generic_visit(node)
            self.depth -= 1

        visit_While = visit_For

        def visit_Subscript(self, node):
            index = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if self.depth >= depth_min and isinstance(node.ctx, ast.Load) and \
                    any(isinstance(i, ast.Slice) for i in index):
                hits.append((self.name, node.lineno, self.depth))
            self.generic_visit(node)

    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            Walk(node.name).visit(node)
    return hits


def _sources():
    if not os.path.isdir(KERNELS):
        pytest.skip("kernels/ is not beside the tests (an installed wheel's tests)")
    return sorted(f for f in os.listdir(KERNELS) if f.endswith(".py"))


def test_no_kernel_makes_array_views_two_loops_deep():
    bad = []
    for name in _sources():
        with open(os.path.join(KERNELS, name)) as f:
            tree = ast.parse(f.read())
        bad += [f"kernels/{name}:{line} {fn} (a view {depth} loops deep)"
                for fn, line, depth in _views(tree, 2) if fn not in PER_LEAF_PAIR]
    assert not bad, "index the array in place instead:\n" + "\n".join(bad)


def test_the_scan_sees_views_in_loops():
    """The walk itself: a view two loops deep is found, one loop deep, a store and an
    element read are not."""
    code = ("def f(a, b, n):\n"
            "    for i in range(n):\n"
            "        x = a[i, 0:4]\n"
            "        for j in range(n):\n"
            "            y = a[i, j:n]\n"
            "            a[i, 0:2] = 0\n"
            "            z = b[i, j]\n"
            "            while j < n:\n"
            "                w = b[:j]\n")
    assert _views(ast.parse(code), 2) == [("f", 5, 2), ("f", 9, 3)]
    assert _views(ast.parse(code), 1) == [("f", 3, 1), ("f", 5, 2), ("f", 9, 3)]
