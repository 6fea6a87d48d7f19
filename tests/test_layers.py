"""The layers of docs/architecture: which modules of diffinv may import which.

`import_graph` reads the source with `ast` (nothing is imported), so a rule holds for imports
inside functions too, where a cycle or a reach across layers hides most easily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "diffinv"


def module_name(path: Path, root: Path, package: str) -> str:
    """`root/shapes/train.py` → "diffinv.shapes.train"; a package's `__init__.py` → the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def import_graph(root: Path = SOURCE, package: str = "diffinv", function_level: bool = True) -> dict[str, set[str]]:
    """Every module of the package in `root` → the set of the package's modules it imports.

    Relative imports are resolved; `from X import name` counts as importing `X.name` where that is
    a module of the package, else `X`. An imported module counts, not the packages above it that
    Python also runs (every module would otherwise import `diffinv`). Imports under `if
    TYPE_CHECKING:` count; `importlib.import_module("…")` does not. function_level: whether
    imports inside functions and methods count (they run later, but they still couple modules).
    """
    paths = {module_name(path, root, package): path for path in sorted(root.rglob("*.py"))}
    graph = {}
    for module, path in paths.items():
        # The package a relative import starts from: a package's own for its __init__.py, else its parent's.
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        imported = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path)), function_level):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                imported.add(submodule if submodule in paths else base)
        graph[module] = {name for name in imported if _inside(name, package)}
    return graph


def _imports(tree: ast.AST, function_level: bool):
    """The import statements of a module, skipping function bodies unless `function_level`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if function_level or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                stack.append(child)


def _inside(module: str, package: str) -> bool:
    """Whether `module` is `package` or one of its modules."""
    return module == package or module.startswith(package + ".")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


# --- the helper itself ------------------------------------------------------------------------------
def test_the_graph_resolves_relative_and_function_level_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import top\n")
    (package / "top.py").write_text(
        "import os\nfrom .sub import leaf\n\n\ndef later():\n    from .sub.leaf import x\n"
    )
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "leaf.py").write_text("from .. import top\nfrom ..top import later\nimport pkg.sub\nx = 1\n")
    assert import_graph(package, "pkg") == {
        "pkg": {"pkg.top"},
        "pkg.top": {"pkg.sub.leaf"},
        "pkg.sub": set(),
        "pkg.sub.leaf": {"pkg.top", "pkg.sub"},
    }
    assert import_graph(package, "pkg", function_level=False)["pkg.top"] == {"pkg.sub.leaf"}
    (package / "top.py").write_text("def later():\n    from .sub import leaf\n")
    assert import_graph(package, "pkg", function_level=False)["pkg.top"] == set()


def test_the_graph_covers_the_source(graph):
    assert "diffinv.shapes.train" in graph["diffinv.cli.shapes"]  # an import inside a function
    assert "diffinv.shapes.world" in graph["diffinv.shapes.train"]  # a relative one


# --- the rules --------------------------------------------------------------------------------------
def test_only_the_world_the_bench_and_the_command_line_import_the_shapes_world(graph):
    """The core knows no world: a model directory describes itself (diffinv.json)."""

    def may_import_the_world(module: str) -> bool:
        layer = module.split(".")[1] if "." in module else ""
        return layer in ("shapes", "bench") or layer.startswith("cli")

    reaching = {
        module: sorted(name for name in imported if _inside(name, "diffinv.shapes"))
        for module, imported in graph.items()
        if not may_import_the_world(module)
    }
    assert {module: names for module, names in reaching.items() if names} == {}


# The layers above the core (architecture: front ends, the harness, the methods beside Difference
# Inversion, the toy world); the core — the algorithm, the diffusers backbones, the config and the
# files — imports none of them.
ABOVE_THE_CORE = ("cli", "demo", "export", "bench", "baselines", "method", "shapes", "testing")
NEVER_FROM_THE_CORE = ("shapes", "bench", "baselines", "cli")


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_core_imports_no_layer_above_it(graph):
    reaching = {
        module: sorted(name for name in imported if _layer(name) in NEVER_FROM_THE_CORE)
        for module, imported in graph.items()
        if _layer(module) not in ABOVE_THE_CORE
    }
    assert {module: names for module, names in reaching.items() if names} == {}


def test_no_import_cycle(graph):
    """Module-level and function-level imports alike: a cycle hidden in a function is still one."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " → ".join(cycle))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_cycle_check_finds_a_hidden_cycle(tmp_path):
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def later():\n    from .a import x\n")
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle(import_graph(package, "toy"))
