"""Modules that say what they hold (issue 16, item 5): no import cycles in the package (a static
walk over every import statement, function-level ones included), ``aotfmm.direct`` is the public
function and nothing else, the benchmark harness does not import the CLI, and every name in
``aotfmm.__all__`` resolves."""
import ast
import importlib.util
import inspect
import pathlib

import aotfmm
import aotfmm.api

PKG = pathlib.Path(aotfmm.__file__).parent


def _module_name(path):
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources():
    """{module name: (path, is package)} for every .py file of the installed package."""
    return {_module_name(p): (p, p.name == "__init__.py") for p in sorted(PKG.rglob("*.py"))}


def import_graph():
    """{module: {imported aotfmm module: first line}} from every ``import`` / ``from ... import``
    at any nesting level (functions, classes, ``if`` blocks). ``from X import name`` is an edge
    to ``X.name`` when that is a module of the package, else to ``X``; relative imports are
    resolved against the importing module's package."""
    sources = _sources()
    graph = {}
    for name, (path, is_pkg) in sources.items():
        package = name if is_pkg else name.rpartition(".")[0]
        edges = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                for alias in node.names:
                    sub = f"{mod}.{alias.name}"
                    targets.append(sub if sub in sources else mod)
            for t in targets:
                if t == "aotfmm" or t.startswith("aotfmm."):
                    edges.setdefault(t, node.lineno)
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import cycle as [(module, line of its import of the next), ...], or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, {})):
            if state.get(n) == "open":
                cyc = stack[stack.index(n):] + [n]
                return [(a, graph[a][b]) for a, b in zip(cyc, cyc[1:])] + [(n, None)]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_walk_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "aotfmm._direct" in graph["aotfmm.api"]  # top level, relative
    assert "aotfmm._bench" in graph["aotfmm.cli"]  # inside a function: from aotfmm import _bench
    assert "aotfmm._argtypes" in graph["aotfmm._bench"]  # inside build_parser
    # a cycle through a function-level import is found
    assert find_cycle({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}}) == \
        [("a", 1), ("b", 2), ("c", 3), ("a", None)]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    if cycle:
        print("import cycle: " + " -> ".join(
            f"{m} (line {line})" if line else m for m, line in cycle))
    assert cycle is None, " -> ".join(m for m, _ in cycle)


def test_direct_is_the_public_function_not_a_module():
    assert inspect.isfunction(aotfmm.direct)
    assert aotfmm.direct is aotfmm.api.direct
    assert aotfmm.direct.__module__ == "aotfmm.api"
    assert "sources" in inspect.signature(aotfmm.direct).parameters
    assert aotfmm.direct.__doc__.startswith("Potentials (and gradients) of point charges")
    spec = importlib.util.find_spec("aotfmm.direct")
    assert spec is None, (
        f"a module aotfmm.direct is still found at {spec.origin}"
        + ("; that file does not exist: the editable install's file map predates the rename, "
           "reinstall it (pip install -e .)" if spec.origin and
           not pathlib.Path(spec.origin).exists() else ""))


def test_bench_does_not_import_the_cli():
    graph = import_graph()
    assert "aotfmm.cli" not in graph["aotfmm._bench"]
    # nor through the package (aotfmm/__init__ must not pull in the CLI)
    seen, todo = set(), ["aotfmm._bench"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, {}))
    assert "aotfmm.cli" not in seen, sorted(seen)


def test_every_public_name_resolves():
    for name in aotfmm.__all__:
        assert getattr(aotfmm, name) is not None, name
    for name in aotfmm.api.__all__:
        assert getattr(aotfmm.api, name) is getattr(aotfmm, name), name
    from aotfmm.api import EPS_DEFAULT, EPS_FLOOR, HESSIAN_EPS_FLOOR  # kept for the CLI
    assert set(EPS_DEFAULT) == set(EPS_FLOOR) == set(HESSIAN_EPS_FLOOR) == {"float32",
                                                                             "float64"}
