"""Search strategies: the registry of ``search(problem) -> PlanSet`` functions and the loading of ``solvers/*.py``.

A strategy is found by name (:func:`register_solver`, a plug-in package's entry point, or a bundled
``solvers/<name>.py``), as a path to a ``.py`` file defining ``search``, or given as the function itself
(:func:`get_solver`). A plug-in file that fails to load becomes a :class:`~apex_opt.errors.SpecError` or
:class:`~apex_opt.errors.SolverError` naming its line.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SolverError, SpecError, shorten
from ..plugins import load_plugins
from ..resources import find_resource
from .result import PlanSet

if TYPE_CHECKING:
    from .solve import Problem

_STRATEGIES: dict[str, Callable[[Problem], PlanSet]] = {}


def register_solver(name: str, search: Callable[[Problem], PlanSet]) -> None:
    """Register a search strategy under ``name`` (``solve(solver=name)``, ``--solver name``)."""
    if name in _STRATEGIES and _STRATEGIES[name] is not search:
        raise SpecError(f"a solver named '{name}' is already registered; choose another name")
    _STRATEGIES[name] = search


def solvers_dir() -> Path | None:
    """The folder of the bundled strategies: ``apex_opt/_solvers`` (wheel) or ``<repo>/solvers`` (checkout);
    ``None`` when neither is there (:func:`apex_opt.resources.find_resource`)."""
    return find_resource("solvers")


def solver_names() -> list[str]:
    folder = solvers_dir()
    found = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")} if folder else set()
    return sorted(found | set(_STRATEGIES))


def _load_strategy(path: Path) -> Callable[[Problem], PlanSet]:
    name = f"apex_opt_solver_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"{{solver=}}{path}: not a Python file", option="solver")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise SpecError(f"{{solver=}}{path}:{exc.lineno}: syntax error: {exc.msg}; fix the file",
                        option="solver") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plug-in's own failure becomes a message
        raise SolverError(f"{{solver=}}{path}: loading the plug-in failed at {_plugin_site(exc, path)}: "
                          f"{_plugin_failure(exc)}; fix the file", option="solver") from None
    search = getattr(module, "search", None)
    if not callable(search):
        raise SpecError(f"{{solver=}}{path}: the file defines no function search(problem)", option="solver")
    return search


def _plugin_failure(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({shorten(exc.code)}) (a plug-in returns its result; it must not exit)"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _plugin_site(exc: BaseException, path: Path | None = None) -> str:
    """``file:line`` of the innermost frame in the plug-in's file (or the innermost frame)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if path is not None and Path(f.filename) == Path(path)] or frames[-1:]
    return f"{Path(mine[-1].filename).name}:{mine[-1].lineno}" if mine else str(path or "?")



def get_solver(solver: str | Callable[[Problem], PlanSet]) -> tuple[str, Callable[[Problem], PlanSet]]:
    """(name, strategy) from a registered name, a bundled ``solvers/<name>.py``, a ``.py`` path or a function."""
    if callable(solver):
        return getattr(solver, "__name__", "custom"), solver
    if not isinstance(solver, str):
        raise SpecError(f"{{solver=}}{shorten(solver)}: got a value of type {type(solver).__name__}; give a name "
                        "(cpsat, exhaustive, heuristic), a .py file defining search(problem), or such a function",
                        option="solver")
    if solver in _STRATEGIES or (not solver.endswith(".py") and load_plugins() and solver in _STRATEGIES):
        return solver, _STRATEGIES[solver]
    path = Path(solver)
    if solver.endswith(".py"):
        if not path.is_file():
            raise SpecError(f"{{solver=}}{solver}: no such file", option="solver")
        return path.stem, _load_strategy(path)
    folder = solvers_dir()
    if folder is not None and (folder / f"{solver}.py").is_file():
        search = _load_strategy(folder / f"{solver}.py")
        _STRATEGIES[solver] = search
        return solver, search
    names = solver_names()
    if not names:
        raise SpecError(f"{{solver=}}{solver}: the bundled strategies (solvers/) are not installed next to apex_opt; "
                        "pass a .py file defining search(problem)", option="solver")
    raise SpecError(f"{{solver=}}'{solver}' is unknown; use one of {', '.join(names)} or a .py file", option="solver")


__all__ = ["get_solver", "register_solver", "solver_names", "solvers_dir"]
