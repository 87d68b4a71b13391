"""The package's import graph, read with ast (module-level and function-local imports alike): no import cycle
between modules or between packages, and only the commands layer and cli.py import a command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "llmasr"
COMMAND_LAYER = ("llmasr.commands", "llmasr.cli", "llmasr.__main__")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _known(name: str, mods: dict) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imported(module: str, node: ast.Import | ast.ImportFrom, mods: dict) -> set[str]:
    """The llmasr modules an import statement names: `from pkg import name` counts pkg.name when it is a module
    (a submodule), else pkg itself (a name defined in pkg/__init__.py)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if mods[module].name == "__init__.py" else module.rpartition(".")[0]
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    found = {_known(n, mods) for n in names if n == "llmasr" or n.startswith("llmasr.")}
    return {m for m in found if m and m != module}


def import_graph(mods: dict | None = None) -> tuple[dict[str, set[str]], int]:
    """(module -> modules it imports anywhere in its file, number of llmasr imports inside functions)."""
    mods = mods or module_files()
    graph, local = {m: set() for m in mods}, 0

    def visit(module: str, node: ast.AST, in_function: bool) -> None:
        nonlocal local
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                targets = imported(module, child, mods)
                graph[module] |= targets
                local += bool(targets) and in_function
            visit(module, child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    for module, path in mods.items():
        visit(module, ast.parse(path.read_text(), str(path)), False)
    return graph, local


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def package_of(module: str) -> str:
    """llmasr.train.engine -> llmasr.train; top-level modules (llmasr.recipe, llmasr.errors) are their own node."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a, targets in graph.items():
        out.setdefault(package_of(a), set())
        out[package_of(a)] |= {package_of(b) for b in targets if package_of(b) != package_of(a)}
    return out


def _edges(graph: dict[str, set[str]], component: list[str]) -> str:
    return "; ".join(f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component)


def test_no_import_cycle_between_modules():
    graph, _ = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (module-level and function-local imports):\n" + "\n".join(
        _edges(graph, c) for c in found
    )


def test_no_import_cycle_between_packages():
    graph, _ = import_graph()
    packages = package_graph(graph)
    found = cycles(packages)
    detail = [
        f"{a} -> {b}" for c in found for a in graph for b in sorted(graph[a])
        if package_of(a) in c and package_of(b) in c and package_of(a) != package_of(b)
    ]  # fmt: skip
    assert not found, f"package cycles {found}, through:\n" + "\n".join(detail)


def test_only_the_command_layer_imports_commands():
    graph, _ = import_graph()
    wrong = [
        f"{a} imports {b}" for a in sorted(graph) for b in sorted(graph[a])
        if b.startswith(COMMAND_LAYER) and not a.startswith(COMMAND_LAYER)
    ]  # fmt: skip
    assert not wrong, "library modules import the command layer:\n" + "\n".join(wrong)


def test_every_verb_lives_in_the_commands_layer():
    from llmasr import cli

    table = [m for m, _ in cli.VERBS.values() if m] + list(cli.DATA_TOOLS.values())
    assert table and all(m.startswith("llmasr.commands.") for m in table), table
    mains = [m for m, path in module_files().items() if "def main(" in path.read_text()]
    assert sorted(m for m in mains if not m.startswith(COMMAND_LAYER)) == [], mains


# -- the checker itself, on a made-up package ----------------------------------------------------------------------
@pytest.fixture
def fake_package(tmp_path):
    def make(files: dict[str, str]) -> dict:
        for rel, text in files.items():
            path = tmp_path / "llmasr" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return module_files(tmp_path / "llmasr")

    return make


def test_checker_finds_a_cycle_through_a_function_local_import(fake_package):
    mods = fake_package({
        "__init__.py": "",
        "a/__init__.py": "",
        "a/x.py": "from llmasr.b import y\n",
        "b/__init__.py": "",
        "b/y.py": "def f():\n    from ..a import x\n",
        "c.py": "from llmasr import a\n",
    })  # fmt: skip
    graph, local = import_graph(mods)
    assert local == 1
    assert graph["llmasr.b.y"] == {"llmasr.a.x"} and graph["llmasr.c"] == {"llmasr.a"}
    assert cycles(graph) == [["llmasr.a.x", "llmasr.b.y"]]
    assert cycles(package_graph(graph)) == [["llmasr.a", "llmasr.b"]]


def test_checker_passes_a_layered_package(fake_package):
    mods = fake_package({
        "__init__.py": "",
        "a.py": "import os\n",
        "b.py": "from llmasr.a import thing\n",
        "commands/__init__.py": "",
        "commands/run.py": "from llmasr import b\n",
    })  # fmt: skip
    graph, local = import_graph(mods)
    assert local == 0 and cycles(graph) == [] and graph["llmasr.commands.run"] == {"llmasr.b"}


def test_no_two_test_files_share_a_name():
    """The test folders are no packages, so pytest imports each test file by its base name: a second file of the same
    name anywhere under tests/ stops the whole suite's collection, which a run of only some files does not show."""
    seen: dict[str, list[str]] = {}
    for f in sorted((ROOT.parent / "tests").rglob("test_*.py")):
        seen.setdefault(f.name, []).append(str(f.relative_to(ROOT.parent)))
    assert not {name: paths for name, paths in seen.items() if len(paths) > 1}
