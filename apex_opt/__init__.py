"""apex-opt: plan LLM deployments on GPU clusters, proven feasible by CP-SAT and verified by simulation.

The front doors, in pipeline order:

* :func:`load_specs` resolves model, cluster, engine, workload and SLO into :class:`Specs`;
* :func:`estimate` prices one prefill and one decode iteration of a :class:`Plan` operator by operator;
* :func:`simulate` replays the workload through a plan, iteration by iteration (:class:`SimResult`);
* :func:`capacity` finds the highest request rate a plan sustains under the SLO (:class:`CapacityResult`);
* :func:`compare` simulates several plans on one workload, side by side (:class:`Comparison`);
* :func:`sweep` runs a grid of rates, SLOs, GPU kinds, models or engine settings, one row per point;
* :func:`solve` searches the plan space and returns verified plans (:class:`PlanSet`), with
  :func:`constraint` for user constraints;
* ``register_model``, ``register_gpu``, ``register_engine``, ``register_cluster``, ``register_solver``,
  ``register_policy`` and ``register_measurement_format`` extend the registries (:mod:`apex_opt.plugins`, which
  also runs installed packages' ``apex_opt.plugins`` entry points).

>>> import apex_opt as ax
>>> specs = ax.load_specs("llama-3.1-8b", "h100x8", workload="synthetic:rate=4rps,requests=40,prompt=256,output=32")
>>> ax.simulate(specs, ax.Plan(gpu="h100-sxm-80gb", tp=1))["num_completed"]
40
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__ as __version__
from .calibration.profile import applying_calibration
from .capacity import CapacityResult, capacity
from .compare import Comparison, compare
from .errors import (
    ApexOptError,
    ConstraintError,
    DoesNotFitError,
    InfeasibleError,
    SimulationError,
    SolverError,
    SpecError,
    TraceError,
    UnknownNameError,
)
from .errors import shorten as _shorten
from .planner import (
    Maximize,
    Minimize,
    PlanSet,
    PlanVars,
    Prediction,
    Problem,
    RankedPlan,
    SearchOptions,
    constraint,
    load_constraints,
    solve,
)
from .plugins import (
    load_plugins,
    register_cluster,
    register_engine,
    register_gpu,
    register_measurement_format,
    register_model,
    register_policy,
    register_solver,
)
from .schema.plan import Deployment, Plan
from .schema.slo import SLO, parse_slo
from .sim import SimResult, SimSummary
from .simulate import simulate
from .specs import Specs, load_specs
from .sweep import sweep
from .workload import Workload
from .workload import load_workload as _load_workload

if TYPE_CHECKING:
    import os
    from pathlib import Path


def load_workload(ref: str | os.PathLike[str], *, specs_dir: str | Path | None = None,
                  block_tokens: int | None = None) -> Workload:
    """A workload from a catalog name, a trace path or a ``synthetic:`` expression (``specs_dir``: the built-in
    catalog unless given); see :func:`apex_opt.workload.load_workload`."""
    import os

    from .catalog import specs_dir as _specs_dir

    if not isinstance(ref, (str, os.PathLike)):
        raise SpecError(f"load_workload({_shorten(ref)}): got a value of type {type(ref).__name__}; give a catalog "
                        "name such as 'lmsys', a trace path or a synthetic:... expression")
    return _load_workload(ref, specs_dir=specs_dir if specs_dir is not None else _specs_dir(),
                          block_tokens=block_tokens)


@applying_calibration
def estimate(specs: Specs, plan: Plan, *, batch: int = 32, context: int = 1024) -> dict:
    """Per-operator prefill and decode breakdown, memory fit and KV capacity of one replica of ``plan``.

    >>> import apex_opt as ax
    >>> e = ax.estimate(ax.load_specs(), ax.Plan(gpu="h100-sxm-80gb", tp=8), batch=8, context=512)
    >>> e["memory"]["fits"], e["decode"]["time_s"] < e["prefill"]["time_s"]
    (True, True)
    """
    from .perf.estimate import estimate_replica
    from .perf.replica import build_replica
    from .simulate import check_simulate_args

    check_simulate_args(specs, plan, fn="estimate")
    if not isinstance(plan, Plan):
        raise SpecError(f"estimate(plan={_shorten(plan)}): estimate prices one Plan; give one of the deployment's "
                        "plans, e.g. deployment.plans[0]")
    for name, value in (("batch", batch), ("context", context)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"estimate({name}={_shorten(value)}): must be a whole number of at least 1, e.g. "
                            f"{name}={32 if name == 'batch' else 1024}")
    gpu = specs.gpus.get(plan.gpu) or specs.gpu
    return estimate_replica(build_replica(specs.model, gpu, plan, specs.engine), batch=batch, context=context)


__all__ = [
    "SLO",
    "ApexOptError",
    "CapacityResult",
    "Comparison",
    "ConstraintError",
    "Deployment",
    "DoesNotFitError",
    "InfeasibleError",
    "Maximize",
    "Minimize",
    "Plan",
    "PlanSet",
    "PlanVars",
    "Prediction",
    "Problem",
    "RankedPlan",
    "SearchOptions",
    "SimResult",
    "SimSummary",
    "SimulationError",
    "SolverError",
    "SpecError",
    "Specs",
    "TraceError",
    "UnknownNameError",
    "Workload",
    "capacity",
    "compare",
    "constraint",
    "estimate",
    "load_constraints",
    "load_plugins",
    "load_specs",
    "load_workload",
    "parse_slo",
    "register_cluster",
    "register_engine",
    "register_gpu",
    "register_measurement_format",
    "register_model",
    "register_policy",
    "register_solver",
    "simulate",
    "solve",
    "sweep",
]
