"""Rules of the code's layout (``DESIGN.md``, "Layout"), checked on the source tree.

* No module over 700 lines: a file past 700 lines is two ideas (every ``.py`` under
  ``wse_sim/`` and ``gpt_workload/``).
* ``wse_sim`` (the machine) never imports ``gpt_workload`` (the workload), at module level or
  inside a function.
* No import cycle among ``gpt_workload``'s modules. The graph is the one Python follows when
  it loads a module: an edge ``a -> b`` for every ``import`` that runs when ``a`` is imported
  (its module body, class bodies and ``if``/``try`` blocks at that level; not function bodies,
  which run later, nor ``if TYPE_CHECKING:`` blocks, which never run). ``from p import x``
  points at the module ``p.x`` when there is one, else at ``p``. Cycles are found with
  :func:`networkx.simple_cycles`.
* Plots, sweeps and experiments never import the CLI (``gpt_workload.cli``), at any level: the
  CLI sits on top of them, so an import the other way is a circle.

The sources are parsed with :mod:`ast`, not imported, so the rules hold for code paths no test
runs. Expected values come from the rules themselves, not from the tree (no allowlist).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 700


def _py_files(*packages: str, root: Path = ROOT) -> list[Path]:
    return sorted(p for pkg in packages for p in (root / pkg).rglob("*.py"))


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_nodes(body: list[ast.stmt]):
    """The statements of ``body`` that run when the module is imported (recursing into
    class bodies and ``if``/``try``/``with`` blocks, not into function bodies)."""
    for node in body:
        yield node
        if isinstance(node, ast.ClassDef):
            yield from _import_time_nodes(node.body)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_nodes(node.body)
            yield from _import_time_nodes(node.orelse)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _import_time_nodes(block)
            for handler in node.handlers:
                yield from _import_time_nodes(handler.body)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            yield from _import_time_nodes(node.body)


def _imported_names(node: ast.stmt, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement asks for (``from p import x`` gives ``p.x``: the
    module ``p.x`` if there is one, else ``x`` is a name in ``p``; :func:`_resolve`)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            base = base if is_package else base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        return [f"{prefix}.{a.name}" for a in node.names]
    return []


def _imports(path: Path, import_time_only: bool, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import of ``path`` (only those that run at import
    time when ``import_time_only``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = _import_time_nodes(tree.body) if import_time_only else ast.walk(tree)
    module, is_package = _module_name(path, root), path.name == "__init__.py"
    out = []
    for node in nodes:
        for name in _imported_names(node, module, is_package):
            out.append((node.lineno, name))
    return out


def _resolve(name: str, modules: set[str]) -> str | None:
    """The deepest module of ``modules`` that ``name`` names or lies in (None: none)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_no_module_over_700_lines() -> None:
    over = []
    for path in _py_files("wse_sim", "gpt_workload"):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            over.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not over, f"modules over {MAX_LINES} lines (split each by idea): " + "; ".join(over)


def test_wse_sim_never_imports_gpt_workload() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _py_files("wse_sim")
        for line, name in _imports(path, import_time_only=False)
        if name == "gpt_workload" or name.startswith("gpt_workload.")
    ]
    assert not bad, "wse_sim must not import gpt_workload: " + "; ".join(sorted(set(bad)))


def _import_graph(package: str = "gpt_workload", root: Path = ROOT) -> nx.DiGraph:
    """Import-time import graph of the modules of ``package`` (module docstring)."""
    paths = _py_files(package, root=root)
    modules = {_module_name(p, root) for p in paths}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for path in paths:
        src = _module_name(path, root)
        for _, name in _imports(path, import_time_only=True, root=root):
            dst = _resolve(name, modules)
            if dst is not None and dst != src:
                graph.add_edge(src, dst)
    return graph


def test_import_graph_is_read_from_the_sources() -> None:
    """The graph the cycle rule walks has the imports it should: the CLI imports
    ``simulate`` at import time, and a module's function-level imports are not edges."""
    graph = _import_graph()
    assert graph.number_of_nodes() > 50
    assert graph.has_edge("gpt_workload.simulate", "gpt_workload.mappings")
    lazy = [name for _, name in _imports(ROOT / "gpt_workload" / "__init__.py", False)]
    assert "gpt_workload.generation.job.generate" in lazy  # a function-level import ...
    assert not graph.out_degree("gpt_workload")  # ... is no edge


def test_cycle_finder_on_a_package_with_one_known_cycle(tmp_path: Path) -> None:
    """A fabricated package: ``a`` and ``b`` import each other at import time (``b`` through
    a relative import inside a class body), ``c`` imports ``a`` only inside a function and
    under ``TYPE_CHECKING``, ``d`` takes a name from the package: one cycle, ``a <-> b``."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    files = {
        "__init__.py": "",
        "a.py": "import pkg.b\n",
        "b.py": "class K:\n    from . import a\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n"
        "def f():\n    from pkg import a\n",
        "d.py": "from pkg import something\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = _import_graph("pkg", root=tmp_path)
    assert set(graph.edges) == {("pkg.a", "pkg.b"), ("pkg.b", "pkg.a"), ("pkg.d", "pkg")}
    assert sorted(sorted(c) for c in nx.simple_cycles(graph)) == [["pkg.a", "pkg.b"]]


def test_no_import_cycles_in_gpt_workload() -> None:
    cycles = sorted((" -> ".join([*c, c[0]]) for c in nx.simple_cycles(_import_graph())),
                    key=len)  # fmt: skip
    assert not cycles, f"{len(cycles)} import cycle(s): " + "; ".join(cycles[:20])


def test_plots_sweeps_and_experiments_never_import_the_cli() -> None:
    files = [ROOT / "gpt_workload" / "plots.py", *_py_files("experiments")]
    files += _py_files("gpt_workload/sweep")  # the sweep package (its command lives in cli/)
    assert (ROOT / "gpt_workload" / "plots.py") in files and len(files) > 5
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted(set(files))
        for line, name in _imports(path, import_time_only=False)
        if name == "gpt_workload.cli" or name.startswith(("gpt_workload.cli.", "gpt_workload.cli_"))
    ]
    assert not bad, "plots, sweeps and experiments must not import the CLI: " + "; ".join(bad)
