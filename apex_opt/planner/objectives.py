"""Objectives: what "best" means, predicted (CP-SAT, scaled ints) and simulated (the verified ranking).

===================  ========================================  =============================  ====================
``--objective``      optimises                                 metric                         ties broken by
===================  ========================================  =============================  ====================
``goodput-per-gpu``  SLO-meeting requests/s per GPU (default)  ``goodput_per_gpu_req_s``      min-tpot, min-ttft
``throughput``       sustainable output tokens/s               ``throughput_output_tok_s``    min-tpot, min-ttft
``min-gpus``         GPUs used                                 ``gpus``                       min-tpot, min-ttft
``min-energy``       joules per output token                   ``energy_per_output_token_j``  min-tpot, min-ttft
``min-cost``         USD per million output tokens             ``cost_per_mtok_usd``          min-tpot, min-ttft
``min-tpot``         mean time per output token                ``tpot_mean_s``                min-ttft, min-energy
``min-ttft``         mean time to first token                  ``ttft_mean_s``                min-tpot, min-energy
===================  ========================================  =============================  ====================

Every objective optimises one metric of the registry (:mod:`apex_opt.metrics`, ``docs/metrics.md``) and is named
as it is there: the entry's ``objective`` is the ``--objective`` name, its ``sense`` says which way is better, and
its ``solver`` gives the ``PlanVars`` field and scale the CP-SAT model optimises (``energy_per_output_token_j`` is
``v.energy_per_token``, in microjoules). :attr:`Objective.metric`, :attr:`Objective.tie_breaks` and the levels of
:attr:`Objective.levels` are registry names, which are also the keys of ``RankedPlan.predicted`` and
``RankedPlan.simulated``.

The documented tie-break order is ``min-tpot, min-ttft, min-energy``: an objective is followed by the first two of
these that differ from it; after them, always, full-precision weights and KV and the engine's default limits are
preferred. CP-SAT optimises the levels lexicographically through one weighted sum with provably dominating weights
(:meth:`apex_opt.planner.model.PlanModel.objective_expr`); the verified ranking compares the simulated values in
the same order, counting values within 1% of the best as ties (:func:`rank_plans`).

``Minimize(metric)``, ``Maximize(metric)`` take a registry name of a metric the planner models (one with a
``solver`` entry, such as ``"cost_per_mtok_usd"``) or a function ``(v, s) -> linear expression`` for objectives of
your own; such plans are ranked by the solver's order. An earlier spelling is accepted with a
``DeprecationWarning`` until the next release: one the registry lists (:data:`apex_opt.metrics.FORMERLY`, e.g.
``"goodput_per_gpu"``), or the planner's own name from before the registry (``"cost_per_mtok"``, ``"tpot"``);
any other name is refused with the closest registry name.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SpecError
from ..metrics import METRICS, canonical_name

#: the ``--objective`` names, in the order help texts and errors list them (the default first)
_LISTED = ("goodput-per-gpu", "throughput", "min-gpus", "min-energy", "min-cost", "min-tpot", "min-ttft")
#: ``--objective`` NAME -> the registry name of the metric it optimises (read from the registry's ``objective``)
OBJECTIVE_NAMES: dict[str, str] = {
    name: next(m.name for m in METRICS.values() if m.objective == name) for name in _LISTED}
if set(OBJECTIVE_NAMES) != {m.objective for m in METRICS.values() if m.objective} or any(
        METRICS[k].solver is None for k in OBJECTIVE_NAMES.values()):  # pragma: no cover - a registry edit
    raise RuntimeError("apex_opt.planner.objectives: every registered objective needs a listed name and a solver "
                       "variable")
#: the documented tie breaks, in order (registry names): min-tpot, min-ttft, min-energy
TIE_BREAK_ORDER = tuple(OBJECTIVE_NAMES[name] for name in ("min-tpot", "min-ttft", "min-energy"))
#: the registry metrics the planner can optimise: those with a ``PlanVars`` field (``solver``), objectives first
_MODELLED = (*OBJECTIVE_NAMES.values(),
             *(m.name for m in METRICS.values() if m.solver is not None and m.name not in OBJECTIVE_NAMES.values()))


def precision_penalty(weight_dtype: str, kv_dtype: str, custom_budget: bool, custom_seqs: bool) -> int:
    """The last, implicit tie break: full-precision weights, then KV, then the engine's default limits."""
    weights = {"bf16": 0, "fp16": 0, "fp8": 1, "int8": 1, "int4": 2, "fp4": 2}.get(weight_dtype, 0)
    kv = 0 if kv_dtype in ("bf16", "fp16") else 1
    return weights * 9 + kv * 3 + int(custom_budget) + int(custom_seqs)


def plan_penalty(plan: Any, default_seqs: int = 256) -> int:
    """:func:`precision_penalty` of a plan (of a deployment: its largest plan's)."""
    if hasattr(plan, "plans"):
        return max(plan_penalty(p, default_seqs) for p in plan.plans)
    return precision_penalty(plan.weight_dtype, plan.kv_dtype, plan.max_num_batched_tokens is not None,
                             plan.max_num_seqs is not None and plan.max_num_seqs != default_seqs)


def predicted_value(metric: str, predicted: Mapping[str, Any]) -> float:
    """The predicted value of ``metric`` (a registry name; SI units) from a ``RankedPlan.predicted``; NaN if absent."""
    value = predicted.get(metric)
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class Objective:
    """A primary goal plus its tie breaks; build with :func:`Minimize`, :func:`Maximize` or a name."""

    name: str
    sense: int
    metric: str | None = None
    fn: Callable[..., Any] | None = field(default=None, compare=False)
    tie_breaks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.metric is None and self.fn is None:
            raise SpecError("an objective needs a metric name or a function (v, s) -> expression")

    @property
    def levels(self) -> tuple[tuple[str | None, int], ...]:
        """(metric or None for the function, sense) for the primary and each tie break."""
        return ((self.metric, self.sense), *((t, METRICS[t].sense) for t in self.tie_breaks))

    def __repr__(self) -> str:
        return f"<Objective {self.name}>"


def _tie_breaks(metric: str | None) -> tuple[str, ...]:
    return tuple(t for t in TIE_BREAK_ORDER if t != metric)[:2]


def _metric_name(metric: str) -> str:
    """The registry name of a metric the planner can optimise. An earlier spelling warns and is accepted until the
    next release: the registry's (:data:`apex_opt.metrics.FORMERLY`), or the planner's own name from before the
    registry (the ``PlanVars`` field or the ``--objective`` name without ``min-``: ``"cost_per_mtok"``)."""
    key = metric.strip()
    name = canonical_name(key)
    if name not in _MODELLED:
        name = _planner_spelling(key) or name
    if name in _MODELLED:
        if name != key:
            warnings.warn(f"metric '{key}' is now named '{name}' (see docs/metrics.md); the old name is accepted "
                          "until the next release", DeprecationWarning, stacklevel=3)
        return name
    listed = ", ".join(_MODELLED)
    if name in METRICS:
        raise SpecError(f"metric '{key}' is not modelled by the planner (it has no PlanVars variable); an objective "
                        f"optimises one of {listed}, or a function (v, s) -> expression")
    close = difflib.get_close_matches(key.lower().replace("-", "_"), _MODELLED, n=1, cutoff=0.6)
    if close:
        raise SpecError(f"unknown metric '{key}': did you mean '{close[0]}' (its registry name, docs/metrics.md), "
                        f"or the objective '{METRICS[close[0]].objective}'?")
    raise SpecError(f"unknown metric '{key}'; use one of {listed} (docs/metrics.md)")


def _planner_spelling(key: str) -> str | None:
    """The modelled metric the planner called ``key`` before the registry: its ``PlanVars`` field (without
    ``_ns``) or its ``--objective`` name without ``min-`` (``energy_per_token``, ``tpot``, ``goodput_per_gpu``)."""
    k = key.lower().replace("-", "_")
    for name in _MODELLED:
        m = METRICS[name]
        var = m.solver[0] if m.solver else ""
        if k in {var, var.removesuffix("_ns"), (m.objective or "").replace("-", "_").removeprefix("min_")}:
            return name
    return None


def Minimize(metric: str | Callable[..., Any]) -> Objective:
    """Minimise a metric (``"cost_per_mtok_usd"``, ``"tpot_mean_s"``, ...) or a function ``(v, s) -> linear expression``."""
    if callable(metric):
        return Objective(f"minimize {getattr(metric, '__name__', 'expression')}", -1, None, metric,
                         _tie_breaks(None))
    key = _metric_name(metric)
    return Objective(f"minimize {key}", -1, key, None, _tie_breaks(key))


def Maximize(metric: str | Callable[..., Any]) -> Objective:
    """Maximise a metric (``"goodput_per_gpu_req_s"``, ``"throughput_output_tok_s"``) or a function ``(v, s) -> expression``."""
    if callable(metric):
        return Objective(f"maximize {getattr(metric, '__name__', 'expression')}", +1, None, metric,
                         _tie_breaks(None))
    key = _metric_name(metric)
    return Objective(f"maximize {key}", +1, key, None, _tie_breaks(key))


def objective_function(objective: str | Objective | Callable[..., Any] | None) -> Objective:
    """Normalise ``solve(objective=...)``: an ``--objective`` name, an :class:`Objective`, or a function to minimise."""
    if objective is None:
        objective = "goodput-per-gpu"
    if isinstance(objective, Objective):
        return objective
    if isinstance(objective, str):
        name = objective.strip().lower()
        if name in OBJECTIVE_NAMES:
            key = OBJECTIVE_NAMES[name]
            return Objective(name, METRICS[key].sense, key, None, _tie_breaks(key))
        raise SpecError(f"{{objective=}}'{objective}' is unknown; use one of {', '.join(OBJECTIVE_NAMES)}",
                        option="objective")
    if callable(objective):
        return Minimize(objective)
    raise SpecError(f"objective={objective!r}: give a name ({', '.join(OBJECTIVE_NAMES)}), Minimize(...) or "
                    "Maximize(...)")


# ------------------------------------------------------------------------------------------- values
def simulated_value(metric: str, summary: Mapping[str, Any], gpus: int) -> float:
    """The simulated value of ``metric`` (a registry name; SI units) from a ``SimResult.summary()`` record.

    ``gpus`` and ``goodput_per_gpu_req_s`` are the plan's: its GPU count, and the goodput over it.
    """
    if metric == "goodput_per_gpu_req_s":
        return float(summary.get("goodput_req_s", math.nan)) / max(gpus, 1)
    if metric == "gpus":
        return float(gpus)
    return float(summary.get(metric, math.nan))


def _sig(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant digits (for reports)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, -math.floor(math.log10(abs(x))) + digits - 1)


#: simulated values within this relative distance of the best count as ties, broken by the next level
TIE_TOLERANCE = 0.01


def _level_values(objective: Objective, entry: Any) -> list[float]:
    """Each level's value of a ranked entry (simulated when available, else predicted), oriented: lower is better."""
    out = []
    for metric, sense in objective.levels:
        if metric is None:
            continue
        value = simulated_value(metric, entry.simulated, entry.plan.gpus) if entry.simulated else math.nan
        if not math.isfinite(value):
            value = predicted_value(metric, entry.predicted)
        out.append(-sense * value if math.isfinite(value) else math.inf)
    return out


def _close(a: float, b: float) -> bool:
    if a == b:
        return True
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= TIE_TOLERANCE * max(abs(a), abs(b))


def rank_plans(objective: Objective, entries: list, default_seqs: int = 256) -> list:
    """Order entries best first: level by level, values within 1% of the level's best count as ties.

    The best entry is picked greedily: keep the entries within :data:`TIE_TOLERANCE` of the best on the primary
    level, among them those within tolerance of the best on the next level, and so on; then the implicit
    precision/default-limits preference, then the original (solver) order. Repeat on the rest.
    """
    rest = [(i, e, _level_values(objective, e)) for i, e in enumerate(entries)]
    out = []
    while rest:
        pool = rest
        for k in range(len(pool[0][2])):
            best = min(vals[k] for _, _, vals in pool)
            pool = [x for x in pool if _close(x[2][k], best)]
        pick = min(pool, key=lambda x: (plan_penalty(x[1].plan, default_seqs), x[0]))
        out.append(pick[1])
        rest = [x for x in rest if x is not pick]
    return out


def goodput_ceiling(arrival_s: Any, attainment: float) -> float:
    """The most requests per second that can meet the SLO in any simulation of a workload that meets it.

    A simulation's goodput is its SLO-meeting requests over its makespan, which runs from the first arrival to
    the last finish, at least to the arrival of the latest of them. A plan that meets the SLO has ``m >=
    attainment x n`` such requests, the latest of which arrives no earlier than the ``m``-th arrival, so its
    goodput is at most ``max over m of m / (a[m-1] - a[0])``: the workload alone decides it (about its mean rate).

    >>> goodput_ceiling([0.0, 1.0, 2.0, 3.0, 4.0], 0.9)  # 5 requests over 4 s
    1.25
    >>> goodput_ceiling([0.0, 0.0], 0.5)  # two at once: no bound
    inf
    """
    a = np.asarray(arrival_s, dtype=float)
    n = len(a)
    if n == 0:
        return 0.0
    m = np.arange(max(math.ceil(attainment * n - 1e-9), 1), n + 1)
    span = a[m - 1] - a[0]
    with np.errstate(divide="ignore"):
        rates = np.where(span > 0, m / np.where(span > 0, span, 1.0), np.inf)
    return float(rates.max())


def gpu_limit(objective: Objective, verified: Sequence[Any], keep: int, workload: Any, slo: Any,
              layout: Callable[[Any], Any]) -> tuple[int, str] | None:
    """The most GPUs a plan simulated whole may use and still place among the ``keep`` best of the result,
    given the ``verified`` entries so far: ``(gpus, why)``, or None when the objective gives no such bound.

    Two objectives bound their simulated value by GPUs alone: ``min-gpus`` (the value is the GPU count) and
    ``goodput-per-gpu`` (at most :func:`goodput_ceiling` over the GPUs). A plan can only enter the first
    ``keep`` distinct layouts (``layout``) of :func:`rank_plans` if its value comes within the 1% tie tolerance
    of the ``keep``-th best layout's: every entry better by more than that is ranked before it. So a search
    need not simulate, or even propose, plans with more GPUs than this: the result would be the same.
    """
    metric = objective.metric
    if metric not in ("gpus", "goodput_per_gpu_req_s") or keep < 1:
        return None
    if metric == "goodput_per_gpu_req_s" and (slo is None or getattr(slo, "is_empty", True)):
        return None
    best: dict[Any, float] = {}
    for e in verified:
        if not e.verified or not e.simulated:
            continue
        value = simulated_value(metric, e.simulated, e.plan.gpus)
        if not math.isfinite(value):
            continue
        key = layout(e.plan)
        if key not in best or (value > best[key] if objective.sense > 0 else value < best[key]):
            best[key] = value
    if len(best) < keep:
        return None
    ordered = sorted(best.values(), reverse=objective.sense > 0)
    kth = ordered[keep - 1]
    if metric == "gpus":
        limit = math.floor(kth / (1.0 - TIE_TOLERANCE) + 1e-9)
        return limit, (f"they cannot place among the {keep} best: the {_ordinal(keep)} verified plan uses {kth:g}")
    ceiling = goodput_ceiling(workload.arrival_s, slo.attainment)
    if not (kth > 0 and math.isfinite(ceiling)):
        return None
    limit = math.floor(ceiling / (kth * (1.0 - TIE_TOLERANCE)) + 1e-9)
    return limit, (f"they cannot place among the {keep} best: the workload's arrivals allow at most {ceiling:.3g} "
                   f"req/s of goodput, {ceiling / (limit + 1):.3g} req/s per GPU on {limit + 1} GPUs, and the "
                   f"{_ordinal(keep)} verified plan has {kth:.3g}")


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


__all__ = [
    "OBJECTIVE_NAMES",
    "TIE_BREAK_ORDER",
    "Maximize",
    "Minimize",
    "Objective",
    "goodput_ceiling",
    "gpu_limit",
    "objective_function",
    "plan_penalty",
    "predicted_value",
    "rank_plans",
    "simulated_value",
]
