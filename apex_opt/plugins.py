"""Extending apex-opt: one facade over every registry, and packages that register themselves.

Every kind of thing apex-opt looks up by name has a registry, and each has one ``register_*`` function here
(also at ``apex_opt.register_*``):

* ``register_model(spec)``: a :class:`~apex_opt.schema.model.ModelSpec`, for ``--model NAME``;
* ``register_gpu(spec)``: a :class:`~apex_opt.schema.gpu.GPUSpec`, for ``--gpu NAME`` and cluster files;
* ``register_engine(spec)``: an :class:`~apex_opt.schema.engine.EngineSpec`, for ``--engine NAME`` and
  ``Plan.engine``;
* ``register_cluster(spec)``: a :class:`~apex_opt.schema.cluster.ClusterSpec`, for ``--cluster NAME``;
* ``register_solver(name, search)``: a strategy ``search(problem) -> PlanSet``, for ``--solver NAME``;
* ``register_policy(name)``: a class decorator for a scheduling policy an engine spec names in
  ``scheduler.policy``;
* ``register_measurement_format(fmt)``: a benchmark-result reader for ``validate --measurements FILE``.

A package that adds some of these declares an entry point in the group ``apex_opt.plugins`` naming a function
of no arguments that calls them::

    # pyproject.toml of the package
    [project.entry-points."apex_opt.plugins"]
    my-site = "my_site.apex:register"

apex-opt runs every such function once, in the order of the entry points' names, the first time a name is not
found among what is registered, or when the names are listed (``apex-opt catalog``): a run that only uses the
built-in catalog imports no plug-in. A plug-in that fails is named in the error, with its entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import SpecError

if TYPE_CHECKING:
    from .measurements import Format
    from .planner.result import PlanSet
    from .planner.solve import Problem
    from .schema.cluster import ClusterSpec
    from .schema.engine import EngineSpec
    from .schema.gpu import GPUSpec
    from .schema.model import ModelSpec

#: the entry-point group plug-in packages declare
GROUP = "apex_opt.plugins"

_loaded: list[str] | None = None  # names of the plug-ins run so far; None: not looked for yet

C = TypeVar("C", bound=type)


def load_plugins() -> list[str]:
    """Run every installed plug-in's registration function (entry points of :data:`GROUP`), once per process;
    returns their names. Called by the registries when a name is missing, so callers rarely need it.

    Raises
    ------
    SpecError
        When a plug-in cannot be imported or its function fails; the message names the entry point.
    """
    global _loaded
    if _loaded is not None:
        return list(_loaded)
    _loaded = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        _run(ep)
        _loaded.append(ep.name)
    return list(_loaded)


def _run(ep: EntryPoint) -> None:
    where = f"plug-in '{ep.name}' ({ep.value}, entry point group {GROUP}"
    dist = getattr(ep, "dist", None)
    where += f", package {dist.name})" if dist is not None else ")"
    try:
        register = ep.load()
    except Exception as exc:  # noqa: BLE001 - a third party's failure becomes a message naming it
        raise SpecError(f"{where} could not be imported: {type(exc).__name__}: {str(exc)[:200]}; fix or uninstall "
                        "its package") from None
    if not callable(register):
        raise SpecError(f"{where} names {type(register).__name__} {register!r:.60}, not a function; point the entry "
                        "point at a function of no arguments that calls apex_opt.register_*")
    try:
        register()
    except SpecError as exc:
        raise SpecError(f"{where} failed while registering: {exc}") from None
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"{where} failed while registering: {type(exc).__name__}: {str(exc)[:200]}; fix or "
                        "uninstall its package") from None


def _check(value: Any, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        article = "an" if kind.__name__[0] in "AEIOU" else "a"
        raise SpecError(f"register_{what}({value!r:.60}): give {article} {kind.__name__} (e.g. {kind.__name__}.parse("
                        f"data, source=..., kind=\"{what}\") of the fields of specs/{what}s/*.yaml)")


def register_model(spec: ModelSpec) -> ModelSpec:
    """Make ``spec`` a catalog model under ``spec.name`` (a name taken already raises)."""
    from .catalog import MODELS
    from .schema.model import ModelSpec

    _check(spec, ModelSpec, "model")
    MODELS.register(spec.name, spec)
    return spec


def register_gpu(spec: GPUSpec) -> GPUSpec:
    """Make ``spec`` a catalog GPU under ``spec.name`` (a name taken already raises)."""
    from .catalog import GPUS
    from .schema.gpu import GPUSpec

    _check(spec, GPUSpec, "gpu")
    GPUS.register(spec.name, spec)
    return spec


def register_engine(spec: EngineSpec) -> EngineSpec:
    """Make ``spec`` a catalog engine under ``spec.name`` (a name taken already raises)."""
    from .catalog import ENGINES
    from .schema.engine import EngineSpec

    _check(spec, EngineSpec, "engine")
    ENGINES.register(spec.name, spec)
    return spec


def register_cluster(spec: ClusterSpec) -> ClusterSpec:
    """Make ``spec`` a catalog cluster under ``spec.name``; its GPU kinds must be registered (a name taken
    already raises)."""
    from .catalog import CLUSTERS, check_cluster_gpus
    from .schema.cluster import ClusterSpec

    _check(spec, ClusterSpec, "cluster")
    check_cluster_gpus(spec)
    CLUSTERS.register(spec.name, spec)
    return spec


def register_solver(name: str, search: Callable[[Problem], PlanSet]) -> None:
    """Make ``search(problem) -> PlanSet`` the strategy ``solve(solver=name)`` and ``--solver name`` run."""
    from .planner.solve import register_solver as add

    add(name, search)


def register_policy(name: str) -> Callable[[C], C]:
    """Class decorator: a :class:`~apex_opt.sim.policies.SchedulerPolicy` subclass becomes the policy an engine
    spec names with ``scheduler.policy: name``."""
    from .sim.policies import register_policy as add

    return add(name)


def register_measurement_format(fmt: Format) -> Format:
    """Make ``fmt`` (name, description, ``detect(path, content)``, ``read(path)``) a format ``validate
    --measurements`` reads and detects."""
    from .measurements import register

    return register(fmt)


__all__ = ["GROUP", "load_plugins", "register_cluster", "register_engine", "register_gpu", "register_measurement_format",
           "register_model", "register_policy", "register_solver"]
