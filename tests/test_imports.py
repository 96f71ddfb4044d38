"""No import circle inside the project: the graph of the import statements that run when a module is
imported (at module level, inside ``if``/``try`` blocks and class bodies too, ``if TYPE_CHECKING:``
included) has no cycle, and neither has the graph that also counts the imports deferred into
function bodies (``imported(..., deferred=True)``): a circle broken only by an import inside a
function is still a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agents", "policies", "envs", "supervised", "benchmarks")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every package module and top-level module."""
    mods = {file.stem: file for file in sorted(ROOT.glob("*.py"))}
    for pkg in PACKAGES:
        for file in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(file.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = file
    return mods


def _statements(tree: ast.AST, deferred: bool):
    """Every node of ``tree``, not descending into function bodies unless ``deferred``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if deferred or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                stack.append(child)


def imported(name: str, file: Path, known: set[str], deferred: bool = False) -> set[str]:
    """The project modules that ``file`` (module ``name``) imports when it is imported (with
    ``deferred``, also inside its functions)."""
    is_pkg = file.name == "__init__.py"
    out: set[str] = set()
    for node in _statements(ast.parse(file.read_text(), str(file)), deferred):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import sub" imports the submodule pkg.sub; "from mod import f" imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # "import a.b.c" of a name inside a module -> that module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    color = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the stack, 2 done
    for root in sorted(graph):
        if color[root]:
            continue
        stack, path = [(root, iter(sorted(graph[root])))], [root]
        color[root] = 1
        while stack:
            node, children = stack[-1]
            for child in children:
                if color[child] == 1:
                    return path[path.index(child):] + [child]
                if color[child] == 0:
                    color[child] = 1
                    stack.append((child, iter(sorted(graph[child]))))
                    path.append(child)
                    break
            else:
                color[node] = 2
                stack.pop()
                path.pop()
    return None


def import_graph(deferred: bool = False) -> dict[str, set[str]]:
    mods = project_modules()
    known = set(mods)
    # a package's __init__ runs before its submodules: "import a.b" depends on "a" too, which is
    # harmless here since the packages' __init__ files import none of their submodules' importers
    return {name: imported(name, file, known, deferred) for name, file in mods.items()}


def test_the_project_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 30 and "agents.ppo" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_import_circle_even_through_imports_inside_functions():
    graph = import_graph(deferred=True)
    assert "envs" in graph["agents.actor"]  # imported inside make_actor_envs: counted
    cycle = find_cycle(graph)
    assert cycle is None, "import circle (imports in functions counted): " + " -> ".join(cycle)


def test_policies_cores_and_supervised_import_only_what_the_design_allows():
    graph = import_graph()
    assert not graph["agents.runfolder"]  # the run folder is a leaf both sides share
    for name, deps in graph.items():
        if name.startswith("policies.cores"):
            assert all(d.startswith("policies.cores") for d in deps), (name, deps)
        if name.startswith("supervised"):
            assert all(d.startswith(("supervised", "policies.cores")) or d == "agents.runfolder"
                       for d in deps), (name, deps)


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"a"}}, ["a", "a"]),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"e"}, "e": {"d"}}, ["d", "e", "d"]),
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_imported_resolves_submodules_functions_and_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom agents import checkpoint as ckpt\nfrom agents.rollout import Carry\n"
                 "if TYPE_CHECKING:\n    from agents.ppo import Rollout\n"
                 "class C:\n    from agents import logger\n"
                 "def g():\n    from . import sibling\n    import policies.cores.base\n")
    known = {"agents", "agents.checkpoint", "agents.rollout", "agents.ppo", "agents.logger",
             "pkg.sibling", "policies.cores.base"}
    at_import = {"agents.checkpoint", "agents.rollout", "agents.ppo", "agents.logger"}
    assert imported("pkg.m", f, known) == at_import
    assert imported("pkg.m", f, known, deferred=True) == at_import | {"pkg.sibling", "policies.cores.base"}
