"""The package tree is the architecture: nn → training → run and store → analysis → web → cli, with
errors, config and the option registry shared by all. Every module's imports (AST, function-level ones
included) must point down the layers: nn imports no other bnrun package, training knows no store, the store
knows no runner (run writes into the store, never the reverse), analysis reads the store and
reaches no torch, not even through another bnrun module; requests (the filters, selections and
report requests both front ends parse) sit below the web view and the CLI; the web view reads through
analysis and the store, parses its parameters with the requests layer, imports nothing of the CLI and
reaches no torch; the CLI may use everything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bnrun"
LAYERS = ("nn", "training", "store", "run", "analysis", "requests", "web", "cli")
# What each layer may import besides itself and the shared modules.
ALLOWED = {
    "nn": set(),
    "training": {"nn"},
    "store": {"training"},  # the records training measures (bnrun.training.results, no torch)
    "run": {"nn", "training", "store"},
    "analysis": {"store"},
    "requests": {"store", "analysis"},
    "web": {"store", "analysis", "requests"},
    "cli": {"nn", "training", "store", "run", "analysis", "requests", "web"},
}
# Single modules a layer may import from a package it otherwise may not (none now).
ALLOWED_MODULES: dict[str, set[str]] = {}
SHARED = {"errors", "config", "registry", ""}  # "" is bnrun itself (__version__)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, module_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in MODULES)
    return found


def package_of(module: str) -> str:
    """'bnrun.analysis.stats' -> 'analysis'; 'bnrun.config' -> 'config'; 'bnrun' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_is_in_a_layer():
    strays = [name for name in MODULES if package_of(name) not in LAYERS and package_of(name) not in SHARED | {"__main__"}]
    assert not strays, f"modules outside the layers: {strays}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    own = package_of(module)
    if own not in LAYERS:
        return
    for target in imports(MODULES[module]):
        if not target.startswith("bnrun"):
            continue
        other = package_of(target)
        if other in SHARED or target in ALLOWED_MODULES.get(own, ()):
            continue
        assert other == own or other in ALLOWED[own], f"{module} ({own}) imports {target} ({other})"


def test_store_reaches_no_torch_through_training():
    """The store imports only training's plain records: opening a store never loads torch."""
    stores = [name for name in MODULES if package_of(name) == "store"]
    torch = {target for name in stores for target in reachable(name) if target.split(".")[0] == "torch"}
    assert not torch, f"the store reaches torch at import time: {sorted(torch)}"


def reachable(module: str) -> set[str]:
    """Every module imported at module level, transitively, from `module` (bnrun modules followed)."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        for target in imports(MODULES[current], module_level_only=True):
            if target in seen:
                continue
            seen.add(target)
            if target in MODULES:
                todo.append(target)
                todo.extend(parent for parent in parents(target) if parent in MODULES and parent not in seen)
    return seen


def parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@pytest.mark.parametrize("module", sorted(name for name in MODULES if package_of(name) in ("analysis", "requests", "web")))
def test_analysis_imports_no_torch(module):
    direct = {name for name in imports(MODULES[module]) if name.split(".")[0] == "torch"}
    assert not direct, f"{module} imports {sorted(direct)}"
    through = {name for name in reachable(module) if name.split(".")[0] == "torch"}
    assert not through, f"{module} reaches torch at import time: {sorted(through)}"


def test_the_checker_sees_a_violation(tmp_path):
    """The AST walk finds imports nested in functions, where the lazy ones live."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from bnrun.cli import actions\n    import torch\n")
    assert {"bnrun.cli", "torch"} <= imports(source)
