"""The import contract: apex_opt is built in layers, and a module imports (at module level) only from its own
layer or below, so the packages form no cycle and the simulator core never reaches up into the planner or CLI.

Imports inside functions are how a lower layer calls a higher one when it must (lazily); they are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "apex_opt"

#: lowest first; every top-level module or subpackage of apex_opt is in exactly one layer
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "units", "bounds", "_version", "resources", "executors", "plugins"),
    ("schema", "metrics"),
    ("ir", "topology", "workload", "measurements", "hub", "catalog", "calibration"),
    ("sim",),
    ("perf",),
    ("specs", "simulate"),
    ("planner", "capacity", "validate", "calibrate", "compare", "sweep", "plots"),
    ("cli", "__init__", "__main__"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def unit_of(module: str) -> str:
    """The layer unit of a dotted module name (``apex_opt.sim.engine`` -> ``sim``; ``apex_opt`` -> ``__init__``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported apex_opt module) for each import at module level of ``path``."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    name = ".".join(relative.parts)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    out = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from . import x: each name is a module of the package
                    out += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
                    continue
            else:
                target = node.module or ""
            if target.startswith("apex_opt"):
                out.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("apex_opt")]
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_top_level_module_and_package_is_in_a_layer() -> None:
    units = {p.stem if p.parent == PACKAGE else p.relative_to(PACKAGE).parts[0] for p in MODULES}
    assert not units - set(LAYER), f"add these to a layer of the import contract: {sorted(units - set(LAYER))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_from_its_layer_or_below(path: Path) -> None:
    own = unit_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    for line, target in module_level_imports(path):
        other = unit_of(target)
        if other == own:
            continue
        assert LAYER[other] <= LAYER[own], (f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} "
                                            f"(layer {LAYER[other]}) from layer {LAYER[own]}; import it inside the "
                                            "function that needs it, or move the code down a layer")


def test_the_packages_import_each_other_in_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        own = unit_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        graph.setdefault(own, set()).update(unit_of(t) for _, t in module_level_imports(path) if unit_of(t) != own)
    seen: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert seen.get(nxt) != 1, "import cycle: " + " -> ".join([*trail, node, nxt])
            if nxt not in seen:
                visit(nxt, [*trail, node])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [])
