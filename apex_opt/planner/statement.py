"""What a planning problem is: :class:`ProblemStatement`, the inputs that determine a solve's answer, frozen and
checked.

A statement holds the specs (model, cluster, engine, workload, SLO), the objective, the constraints on the plan and
on simulated metrics, ``top_k``, the search options, the seed, the speculative settings, the requests a verification
simulates, the simulation budget and the CP-SAT time limit. Nothing else: how the simulations run (workers,
executor), progress callbacks and the state of a run (its clock, simulations, notes) belong to the
:class:`~apex_opt.planner.solve.Problem` searching it, in its :class:`~apex_opt.planner.run.SearchRun`. Assigning
a field raises, so a run cannot change a statement, and problems sharing one search independently.

``ProblemStatement.of(specs, objective="throughput", constraints=["rules.py"], max_requests=500, ...)`` takes what
``Problem`` and ``solve`` accept; the constructor takes the normalised values (an :class:`Objective`, tuples of
:class:`Constraint`). Both check them, with the messages ``solve`` gives.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from ..errors import SpecError, shorten
from ..schema.speculative import SpeculativeConfig
from ..specs import Specs
from .constraints import Constraint, normalize, split_kinds
from .launch import engine_flags
from .objectives import Objective, objective_function
from .sampling import VERIFY_REQUESTS
from .space import PlanSpace, SearchOptions


@dataclass(frozen=True)
class ProblemStatement:
    """The inputs of one planning problem (see the module docstring); equal statements have the same answer."""

    specs: Specs
    _: KW_ONLY
    objective: Objective = field(default_factory=lambda: objective_function(None))
    #: constraints on the plan (analytical: the CP-SAT model holds them)
    constraints: tuple[Constraint, ...] = ()
    #: constraints on simulated metrics (checked on each simulated plan)
    sim_constraints: tuple[Constraint, ...] = ()
    top_k: int = 3
    options: SearchOptions = field(default_factory=SearchOptions)
    seed: int = 0
    #: speculative decoding settings every proposal is simulated with (None: without); the best per layout wins
    speculative: tuple[SpeculativeConfig | None, ...] = ()
    #: a plan's identical replicas are simulated as far as they cover this many requests (None: all of them)
    verify_requests: int | None = VERIFY_REQUESTS
    #: simulations a search may run; None gives (5 * top_k + 5) per speculative setting
    max_simulations: int | None = None
    #: seconds for each CP-SAT search (None: no limit)
    time_limit: float | None = None

    def __post_init__(self) -> None:
        _check_specs(self.specs, "ProblemStatement")
        _check_top_k(self.top_k)
        check_seed(self.seed)
        check_time_limit(self.time_limit)
        _check_verify_requests(self.verify_requests)
        plan, simulated = split_kinds(normalize([*self.constraints, *self.sim_constraints]))
        speculative = tuple(self.speculative)
        budget = self.max_simulations
        if budget is None:
            budget = (5 * self.top_k + 5) * max(1, len(speculative))
        normalised = {"objective": objective_function(self.objective), "constraints": tuple(plan),
                      "sim_constraints": tuple(simulated), "options": self.options or SearchOptions(),
                      "speculative": speculative, "max_simulations": budget}
        for name, value in normalised.items():  # frozen: the dataclass's own way to set a field while building
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, specs: Specs, *, objective: Any = "goodput-per-gpu", constraints: Iterable[Any] = (),
           top_k: int = 3, options: SearchOptions | None = None, max_requests: int | None = None, seed: int = 0,
           time_limit: float | None = None, max_simulations: int | None = None,
           speculative: Sequence[SpeculativeConfig | None] = (),
           verify_requests: int | None = VERIFY_REQUESTS) -> ProblemStatement:
        """The statement of what ``Problem(specs, ...)`` accepts: an objective name, :class:`Objective` or function;
        constraint functions or ``.py`` files; ``options=None`` for the defaults; ``max_requests`` to plan on the
        workload's first N requests only."""
        _check_specs(specs, "ProblemStatement.of")
        _check_top_k(top_k)  # the inputs first, before constraint files are loaded
        if max_requests is not None:
            if isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 1:
                raise SpecError(f"{{max_requests=}}{shorten(max_requests)}: must be a whole number of at least 1",
                                option="max_requests")
            specs = dataclasses.replace(specs, workload=specs.workload.head(max_requests))
        _check_verify_requests(verify_requests)
        plan, simulated = split_kinds(normalize(constraints))
        return cls(specs, objective=objective_function(objective), constraints=tuple(plan),
                   sim_constraints=tuple(simulated), top_k=top_k, options=options or SearchOptions(), seed=seed,
                   speculative=tuple(speculative), verify_requests=verify_requests, max_simulations=max_simulations,
                   time_limit=time_limit)

    @property
    def simulation_budget(self) -> int:
        """``max_simulations`` (filled in when the statement is built: never None)."""
        assert self.max_simulations is not None
        return self.max_simulations

    def describe(self, space: PlanSpace) -> dict[str, Any]:
        """The problem as a result reports it (``PlanSet.problem``); ``space``, the plan space of this statement,
        gives what it establishes: the GPU kind and count searched and the workload's arrival rate."""
        s = self.specs
        return {
            "model": s.model.name,
            "hf_repo": s.model.hf_repo,  # what the launch commands serve ("" for a config.json without one)
            "num_layers": s.model.num_layers,
            "cluster": s.cluster.name,
            "gpu": space.gpu_name,
            "gpus": space.total_gpus,
            "gpus_per_node": space.gpus_per_node,
            "engine": s.engine.name,
            "engine_flags": engine_flags(s.engine),
            "workload": s.workload.name,
            "requests": len(s.workload),
            "rate_req_s": space.stats.rate,
            "slo": s.slo.describe(),
            "objective": self.objective.name,
            "top_k": self.top_k,
            "constraints": [c.label for c in self.constraints],
            "simulated_constraints": [c.label for c in self.sim_constraints],
            "quantization": self.options.quantization,
            "kv_dtype": self.options.kv_dtype,
            "use_all_gpus": self.options.use_all_gpus,
            "seed": self.seed,
        }


def _check_specs(specs: object, who: str) -> None:
    if not isinstance(specs, Specs):
        raise SpecError(f"{who}(specs={shorten(specs)}): specs must be the Specs that load_specs(...) returns, not a "
                        f"{type(specs).__name__}; write {who}(ax.load_specs(\"llama-3.1-8b\", \"h100x8\"))")


def _check_top_k(top_k: object) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise SpecError(f"{{top_k=}}{shorten(top_k)}: must be a whole number of at least 1; write e.g. {{top_k=}}3",
                        option="top_k")
    if top_k < 1:
        raise SpecError(f"{{top_k=}}{top_k}: must be at least 1", option="top_k")


def check_seed(seed: object) -> None:
    """Refuse a seed that is not a whole number of at least 0."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"{{seed=}}{shorten(seed)}: must be a whole number of at least 0 (it seeds the simulator and "
                        "the solver); write e.g. {seed=}0", option="seed")


def check_time_limit(time_limit: object) -> None:
    """Refuse a CP-SAT time limit that is not a finite number of seconds above 0 (None: no limit)."""
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                   or not math.isfinite(time_limit) or time_limit <= 0):
        raise SpecError(f"{{time_limit=}}{shorten(time_limit)}: must be a finite number of seconds above 0; write "
                        "e.g. {time_limit=}30", option="time_limit")


def _check_verify_requests(verify_requests: object) -> None:
    if verify_requests is not None and (isinstance(verify_requests, bool) or not isinstance(verify_requests, int)
                                        or verify_requests < 1):
        raise SpecError(f"{{verify_requests=}}{shorten(verify_requests)}: must be a whole number of at least 1 "
                        "(requests a verification simulates at least), or None to simulate every replica; "
                        f"write e.g. {{verify_requests=}}{VERIFY_REQUESTS}", option="verify_requests")


__all__ = ["ProblemStatement"]
