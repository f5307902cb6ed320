"""apex-opt: plan LLM deployments on GPU clusters, proven feasible by CP-SAT and verified by simulation.

The front doors, in pipeline order:

* :func:`load_specs` resolves model, cluster, engine, workload and SLO into :class:`Specs`;
* :func:`estimate` prices one prefill and one decode iteration of a :class:`Plan` operator by operator;
* :func:`simulate` replays the workload through a plan, iteration by iteration (:class:`SimResult`);
* :func:`solve` searches the plan space and returns verified plans (:class:`PlanSet`), with
  :func:`constraint` for user constraints.

>>> import apex_opt as ax
>>> specs = ax.load_specs("llama-3.1-8b", "h100x8", workload="synthetic:rate=4rps,requests=40,prompt=256,output=32")
>>> ax.simulate(specs, ax.Plan(gpu="h100-sxm-80gb", tp=1))["num_completed"]
40
"""

from __future__ import annotations

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
from .planner import (
    Maximize,
    Minimize,
    PlanSet,
    PlanVars,
    Problem,
    RankedPlan,
    SearchOptions,
    constraint,
    load_constraints,
    solve,
)
from .schema.plan import Deployment, Plan
from .schema.slo import SLO, parse_slo
from .sim import SimResult
from .simulate import simulate
from .specs import Specs, load_specs
from .workload import Workload, load_workload


def estimate(specs: Specs, plan: Plan, *, batch: int = 32, context: int = 1024) -> dict:
    """Per-operator prefill and decode breakdown, memory fit and KV capacity of one replica of ``plan``.

    >>> import apex_opt as ax
    >>> e = ax.estimate(ax.load_specs(), ax.Plan(gpu="h100-sxm-80gb", tp=8), batch=8, context=512)
    >>> e["memory"]["fits"], e["decode"]["time_s"] < e["prefill"]["time_s"]
    (True, True)
    """
    from .perf.estimate import estimate_replica
    from .perf.replica import build_replica

    gpu = specs.gpus.get(plan.gpu) or specs.gpu
    return estimate_replica(build_replica(specs.model, gpu, plan, specs.engine), batch=batch, context=context)


__all__ = [
    "SLO",
    "ApexOptError",
    "ConstraintError",
    "Deployment",
    "DoesNotFitError",
    "InfeasibleError",
    "Maximize",
    "Minimize",
    "Plan",
    "PlanSet",
    "PlanVars",
    "Problem",
    "RankedPlan",
    "SearchOptions",
    "SimResult",
    "SimulationError",
    "SolverError",
    "SpecError",
    "Specs",
    "TraceError",
    "UnknownNameError",
    "Workload",
    "constraint",
    "estimate",
    "load_constraints",
    "load_specs",
    "load_workload",
    "parse_slo",
    "simulate",
    "solve",
]
