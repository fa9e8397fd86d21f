"""The package layout is the architecture: import directions between the subsystems, and no
import circle anywhere in csr_ros.

Every ``import`` statement of every module is read from the source (module level and inside
functions alike: a lazy import is still a dependency), so the checks need no model and no ROS.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import csr_ros

pytestmark = pytest.mark.core

PKG = Path(csr_ros.__file__).resolve().parent
LAYERS = ("config", "state", "model", "reconcile", "runtime")  # bottom to top
TENSOR_LIBS = {"torch", "transformers", "safetensors", "triton", "accelerate", "gguf"}
NOT_FROM_CORE = ("csr_ros.nodes", "csr_ros.cli", "csr_ros.msg", "csr_ros.srv", "csr_ros.action")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py")) if "__pycache__" not in p.parts}


def _resolve(importer: str, node: ast.AST) -> list[str]:
    """The modules an import statement names (``from a import b``: ``a.b`` when it is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative import
        pkg = importer if MODULES[importer].name == "__init__.py" else importer.rsplit(".", 1)[0]
        pkg = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1])
        base = f"{pkg}.{base}" if base else pkg
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return subs if len(subs) == len(node.names) else [base, *subs]


def imports_of(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update(_resolve(name, node))
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["csr_ros", "core"] or len(parts) < 3:
        return None
    return parts[2] if parts[2] in LAYERS else None


def test_every_core_subsystem_says_what_it_owns_and_may_import():
    for sub in LAYERS[1:]:
        doc = ast.get_docstring(ast.parse((PKG / "core" / sub / "__init__.py").read_text())) or ""
        assert "Owns" in doc and "May import" in doc, f"csr_ros/core/{sub}/__init__.py: {doc[:80]!r}"


def test_core_layers_import_only_downwards():
    bad = []
    for mod, deps in GRAPH.items():
        here = layer(mod)
        if here is None:
            continue
        for dep in deps:
            there = layer(dep)
            if there is not None and LAYERS.index(there) > LAYERS.index(here):
                bad.append(f"{mod} ({here}) imports {dep} ({there})")
    assert bad == []


def test_only_the_model_subsystem_touches_tensor_libraries():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps
           if m.startswith("csr_ros.core") and layer(m) != "model" and d.split(".")[0] in TENSOR_LIBS]
    assert bad == []


def test_core_imports_no_node_command_or_message_module():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() if m.startswith("csr_ros.core")
           for d in deps if d.startswith(NOT_FROM_CORE) or d.split(".")[0] in ("rclpy", "launch", "launch_ros")]
    assert bad == []


def test_nodes_do_not_import_the_commands():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() if m.startswith("csr_ros.nodes")
           for d in deps if d.startswith("csr_ros.cli")]
    assert bad == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next((d for d in it if d in graph), None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif w not in index:
                index[w] = low[w] = counter[0]
                counter[0] += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter(sorted(graph[w]))))
            elif w in on:
                low[v] = min(low[v], index[w])
    return out


def test_no_import_circle_in_the_package():
    internal = {m: {d for d in deps if d in MODULES and d != m} for m, deps in GRAPH.items()}
    assert _cycles(internal) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_finds_files_through_the_source_tree():
    """Shipped files come from the installed share directory (csr_ros.share), never from
    ``Path(__file__).parents[...]`` (which does not exist in an installed package)."""
    bad = [str(p.relative_to(PKG.parent)) for p in MODULES.values() if ".parents[" in p.read_text()
           and p.name != "share.py"]
    assert bad == []
