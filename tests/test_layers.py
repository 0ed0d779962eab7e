"""Imports only point down the layers of docs/architecture.md, and form no circle.

The import graph is read with ``ast`` from the source files (nothing is imported), so an upward
import anywhere in the package (module level, inside a function, or under ``TYPE_CHECKING``)
fails here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "taskbalance"

#: Top-level module or subpackage of taskbalance -> its layer (higher may import lower only).
LAYERS: dict[str, int] = {
    "__init__": 0,  # the public surface re-exports the core only
    "fileio": 0,
    "validation": 0,
    "balancing": 0,
    "tasks": 0,
    "models": 0,
    "data": 1,
    "training": 2,
    "lightning": 2,  # the Lightning integration (extra "lightning"): a training loop's peer
    "experiments": 3,
    "tools": 4,
    "cli": 4,
    "__main__": 5,
}
LAYER_NAMES = ["core", "data", "training", "experiments", "cli", "__main__"]

#: Circles allowed: a registry importing the modules that register themselves into it.
REGISTRATION = {
    ("taskbalance.balancing.registry", "taskbalance.balancing.aggregation"),
    ("taskbalance.balancing.registry", "taskbalance.balancing.weighting"),
    ("taskbalance.data.benchmark", "taskbalance.data.multidigits"),
    ("taskbalance.data.benchmark", "taskbalance.data.pingpong"),
    ("taskbalance.data.benchmark", "taskbalance.data.scenes"),
    ("taskbalance.data.benchmark", "taskbalance.data.synthetic_groups"),
    ("taskbalance.data.benchmark", "taskbalance.data.synthetic_mtl"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def _imports(path: Path, *, type_only: bool = True) -> set[str]:
    """Modules of taskbalance that ``path`` imports (``from x import y`` counts ``x.y`` when
    ``x.y`` is a module, else ``x``); ``type_only=False`` leaves out imports made for
    annotations only (under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    skip = set() if type_only else _type_checking_blocks(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("taskbalance"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("taskbalance"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return found - {here}


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: _imports(path) for name, path in MODULES.items()}
#: What runs: imports for annotations only may close a circle (they are never executed).
RUNTIME_GRAPH = {name: _imports(path, type_only=False) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    top = "__init__" if len(parts) == 1 else parts[1]
    if top not in LAYERS:
        raise AssertionError(f"{module}: add its top-level name {top!r} to LAYERS (and the docs)")
    return LAYERS[top]


def test_every_import_points_down() -> None:
    upward = [
        f"{src} ({LAYER_NAMES[_layer(src)]}) imports {dst} ({LAYER_NAMES[_layer(dst)]})"
        for src, targets in GRAPH.items()
        for dst in targets
        if _layer(dst) > _layer(src)
    ]
    assert not upward, "imports that point up a layer:\n" + "\n".join(sorted(upward))


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_registration(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {
        src: {
            dst
            for dst in targets
            if not any(src == r and (dst == p or dst.startswith(p + ".")) for r, p in REGISTRATION)
        }
        for src, targets in graph.items()
    }


def test_no_import_circles_other_than_registries() -> None:
    circles = _circles(_without_registration(RUNTIME_GRAPH))
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_check_sees_an_upward_import_and_a_circle() -> None:
    # the checks above can fail: an invented upward edge and an invented circle are found
    graph = dict(GRAPH)
    graph["taskbalance.balancing.base"] = GRAPH["taskbalance.balancing.base"] | {
        "taskbalance.training.trainer"
    }
    assert _layer("taskbalance.training.trainer") > _layer("taskbalance.balancing.base")
    graph["taskbalance.training.trainer"] = GRAPH["taskbalance.training.trainer"] | {
        "taskbalance.balancing.base"
    }
    assert any("taskbalance.balancing.base" in c for c in _circles(_without_registration(graph)))


def test_method_modules_import_shared_modules_not_each_other() -> None:
    # a method is one file: what two methods share lives in base, solvers or a _private helper
    methods = {
        name
        for name in MODULES
        if name.rpartition(".")[0]
        in ("taskbalance.balancing.aggregation", "taskbalance.balancing.weighting")
        and not name.rpartition(".")[2].startswith("_")
        and name.rpartition(".")[2] != "config"
    }
    crossing = [f"{a} imports {b}" for a in sorted(methods) for b in GRAPH[a] if b in methods]
    assert not crossing, "\n".join(crossing)


@pytest.mark.parametrize("layer", ["balancing", "tasks", "models", "fileio", "validation"])
def test_the_core_needs_torch_and_numpy_only(layer: str) -> None:
    # torchvision: optional backbones, imported inside the function that needs them (extra "vision")
    allowed = {"torch", "numpy", "taskbalance", "torchvision"}
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for name, path in MODULES.items():
        if name.split(".")[1:2] != [layer]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            roots = []
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                roots = [node.module.split(".")[0]]
            bad += [f"{name}: {r}" for r in roots if r not in allowed and r not in stdlib]
    assert not bad, "the core imports packages beyond torch and numpy:\n" + "\n".join(bad)


def test_every_method_has_the_base_epoch_end_signature() -> None:
    # the Trainer calls method.epoch_end(mean_losses) on every method, without duck typing
    import inspect

    from taskbalance import Method, available_methods, method_info

    base = inspect.signature(Method.epoch_end)
    wrong = [
        name
        for name in available_methods()
        if inspect.signature(method_info(name).cls.epoch_end) != base
    ]
    assert not wrong, f"epoch_end differs from Method.epoch_end{base} in {wrong}"
