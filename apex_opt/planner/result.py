"""What :func:`apex_opt.solve` returns: a frozen :class:`PlanSet` of ranked, verified plans."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..schema.plan import Deployment, Plan
from ..sim.summary import SimSummary
from .launch import LaunchSettings, launch_commands
from .objectives import Objective
from .prediction import Prediction


@dataclass(frozen=True)
class RankedPlan:
    """One plan with the cost model's predictions and (when simulated) the simulator's measurements.

    Metric keys are named as in the metric registry (:mod:`apex_opt.metrics`, ``docs/metrics.md``), in SI units.
    ``predicted``: the cost model's :class:`~apex_opt.planner.prediction.Prediction` (``tpot_mean_s``,
    ``slo_attainment``, ``goodput_per_gpu_req_s``, ``kv_tokens``, ``memory_headroom_bytes``, ...; a mapping given
    here is read into one).
    ``simulated``: the simulation summary (``SimResult.summary()``, with ``gpus``, ``goodput_per_gpu_req_s`` and
    ``cost_per_mtok_usd``): a :class:`~apex_opt.sim.summary.SimSummary` (a mapping given here is read into one),
    or None.
    Both keep the earlier names (``goodput_rps``, ``tpot_s``, ``attainment``, ...) readable for one release.
    ``verified``: simulated, meets the SLO and every simulated-result constraint.
    """

    plan: Plan | Deployment  # a Deployment: a disaggregated (xPyD) plan
    predicted: Prediction
    simulated: SimSummary | None = None
    verified: bool = False
    notes: tuple[str, ...] = ()
    rank: int = 0
    source: str = ""  # which strategy or rule produced it
    index: int | None = None  # candidate index in the plan space (None: a plan from outside it)
    #: context caps and checkpoint facts for the launch lines (:func:`apex_opt.planner.launch.launch_settings`)
    launch_settings: LaunchSettings | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "predicted", Prediction.of(self.predicted))
        if self.simulated is not None:
            object.__setattr__(self, "simulated", SimSummary.of(self.simulated))

    @property
    def label(self) -> str:
        return self.plan.label

    def launch(self, model: str, engine: str = "vllm-0.6", num_layers: int | None = None,
               gpus_per_node: int = 8, flags: dict[str, list[str]] | None = None) -> dict[str, str]:
        """``{"vllm": ..., "sglang": ...}`` launch commands for this plan (``flags``: engine settings to add)."""
        return launch_commands(self.plan, model, engine=engine, num_layers=num_layers, gpus_per_node=gpus_per_node,
                               flags=flags, settings=self.launch_settings)

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        if isinstance(p, Deployment):
            return {
                "rank": self.rank,
                "label": p.label,
                "disaggregated": p.disaggregated,
                "gpus": p.gpus,
                "instances": [{"role": q.role, "label": q.label, **q.model_dump(mode="json")} for q in p.plans],
                "verified": self.verified,
                "predicted": dict(self.predicted),
                "simulated": dict(self.simulated) if self.simulated is not None else None,
                "notes": list(self.notes),
                "source": self.source,
            }
        return {
            "rank": self.rank,
            "label": p.label,
            "dp": p.dp,
            "pp": p.pp,
            "tp": p.tp,
            "ep": p.ep,
            "moe_tp": p.expert_tp if p.ep > 1 else None,
            "gpus": p.gpus,
            "layers_per_stage": list(p.layers_per_stage) if p.layers_per_stage else None,
            "weight_dtype": p.weight_dtype,
            "kv_dtype": p.kv_dtype,
            "max_num_seqs": p.max_num_seqs,
            "max_num_batched_tokens": p.max_num_batched_tokens,
            "chunked_prefill": p.chunked_prefill,
            "engine": p.engine,
            "gpu": p.gpu,
            "verified": self.verified,
            "predicted": dict(self.predicted),
            "simulated": dict(self.simulated) if self.simulated is not None else None,
            "notes": list(self.notes),
            "source": self.source,
        }

    def __repr__(self) -> str:
        state = "verified" if self.verified else ("simulated" if self.simulated else "predicted")
        return f"<RankedPlan #{self.rank} {self.plan.label} ({self.plan.gpus} GPUs, {state})>"


@dataclass(frozen=True)
class SolveStats:
    """How the search went: plan counts at each stage and where the time went."""

    candidates: int = 0  # plans in the search space, each estimated by the cost model
    feasible_plans: int = 0  # meet GPU count, divisibility, placement, memory and user constraints
    proven_infeasible: int = 0  # candidates ruled out by a constraint (including the analytical SLO bounds)
    estimated_feasible: int = 0  # candidates that also pass the analytical SLO and capacity bounds
    plans_simulated: int = 0
    plans_verified: int = 0
    plans_cut: int = 0  # simulated but missed the SLO or a simulated-result constraint
    solve_time_s: float = 0.0  # wall time of the whole solve
    space_time_s: float = 0.0  # building and estimating the space
    search_time_s: float = 0.0  # CP-SAT (or the strategy's own search)
    simulation_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PlanSet:
    """The ranked, verified plans of one solve.

    ``status``: ``"optimal"`` (k verified plans, best first), ``"exhausted"`` (the space ran out before k plans
    were verified), ``"budget"`` (stopped at the simulation budget), ``"unverified"`` (no plan met the SLO in
    simulation; ``rejected`` holds what was tried).
    """

    status: str
    plans: tuple[RankedPlan, ...]
    objective: Objective
    solver: str
    stats: SolveStats
    rejected: tuple[RankedPlan, ...] = ()
    explanation: str = ""
    problem: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: which calibration each GPU kind was priced with (:func:`apex_opt.perf.provenance.calibration_sources`)
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[RankedPlan]:
        return iter(self.plans)

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, i: int) -> RankedPlan:
        return self.plans[i]

    @property
    def best(self) -> RankedPlan | None:
        return self.plans[0] if self.plans else None

    def launch_commands(self) -> dict[str, str]:
        """vLLM and SGLang commands of the best plan ({} without one)."""
        if not self.plans:
            return {}
        return self._launch(self.plans[0])

    def _launch(self, p: RankedPlan) -> dict[str, str]:
        model = self.problem.get("hf_repo") or self.problem.get("model", "")
        return p.launch(model, self.problem.get("engine", "vllm-0.6"), self.problem.get("num_layers"),
                        self.problem.get("gpus_per_node", 8), self.problem.get("engine_flags"))

    def _with_launch(self, p: RankedPlan) -> dict[str, Any]:
        """``p.to_dict()`` plus ``launch``: the context cap of the plan's own engine line (``max_model_len``; null
        without one) and both engines' commands."""
        s = p.launch_settings or LaunchSettings()
        sglang = str(self.problem.get("engine", "")).startswith("sglang")
        return {**p.to_dict(), "launch": {"max_model_len": s.context_length if sglang else s.max_model_len,
                                          **self._launch(p)}}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``apex-opt solve --format json``); keys are documented in docs/planner.md."""
        s = self.stats
        return {
            "status": self.status,
            "solver": self.solver,
            "objective": self.objective.name,
            "problem": dict(self.problem),
            "plans": [self._with_launch(p) for p in self.plans],
            "rejected": [p.to_dict() for p in self.rejected],
            "explanation": self.explanation,
            "launch": self.launch_commands(),
            "candidates": s.candidates,
            "feasible_plans": s.feasible_plans,
            "proven_infeasible": s.proven_infeasible,
            "estimated_feasible": s.estimated_feasible,
            "plans_simulated": s.plans_simulated,
            "plans_verified": s.plans_verified,
            "solve_time_s": s.solve_time_s,
            "stats": s.to_dict(),
            "notes": list(self.notes),
            "calibration": {gpu: dict(entry) for gpu, entry in self.calibration.items()},
        }

    def __repr__(self) -> str:
        best = self.plans[0].label if self.plans else "none"
        return f"<PlanSet {self.status}: {len(self.plans)} plans, best {best}, {self.stats.plans_simulated} simulated>"


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


__all__ = ["PlanSet", "RankedPlan", "SolveStats"]
