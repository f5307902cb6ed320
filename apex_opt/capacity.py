"""The highest request rate a plan sustains under the SLO, found by simulation, and what a target rate costs.

:func:`capacity` replays ``specs.workload`` rescaled in time to each trial rate (:meth:`Workload.with_rate`:
the same lengths and arrival pattern) through the plan. A rate *passes* when the simulated summary meets the SLO
(``slo_met``) and is not ``saturated``. The search brackets the capacity by doubling from the workload's own
rate (or halving when that fails), then bisects until the bracket is within ``precision`` (relative), with at
most :data:`MAX_SIMULATIONS` simulations. The same inputs and seed give the same result.

>>> import apex_opt as ax
>>> specs = ax.load_specs("llama-3.1-8b", "h100x8", slo="ttft=200ms,tpot=30ms",
...                       workload="synthetic:rate=4rps,requests=100,prompt=1024,output=128,seed=0")
>>> c = ax.capacity(specs, ax.Plan(gpu="h100-sxm-80gb", tp=1), precision=0.1, target_rate=20)
>>> 8 < c.rate < 16, c.precision <= 0.1, c.target.replicas == math.ceil(20 / c.per_replica_rate)
(True, True, True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InfeasibleError, SpecError, shorten, spell_option
from .schema.plan import Deployment, Plan
from .schema.slo import SLO
from .simulate import check_simulate_args, simulate
from .specs import Specs
from .units import format_time

#: simulations one capacity search may run (bracketing and bisection together)
MAX_SIMULATIONS = 30
#: a failing rate with fewer requests in the system than this (rate x mean e2e latency, Little's law) runs them
#: one at a time: lowering the rate further cannot help
LONE_CONCURRENCY = 0.1
#: latency keys copied from the simulated summary into :meth:`CapacityResult.to_dict`
_SUMMARY_KEYS = (
    *(f"{m}_{s}_s" for m in ("ttft", "tpot", "itl", "e2e") for s in ("mean", "p50", "p90", "p95", "p99")),
    "slo_attainment", "goodput_req_s", "goodput_per_gpu_req_s", "slo_ttft_value_s", "slo_tpot_value_s", "slo_e2e_value_s", "slo_met",
    "saturated", "offered_rate_req_s", "served_rate_req_s", "throughput_req_s", "throughput_output_tok_s",
    "energy_per_output_token_j", "num_requests", "num_completed",
)


@dataclass(frozen=True)
class Trial:
    """One simulated rate: whether it passed, the bounded statistics (``slo_ttft_value_s`` ...) and attainment;
    ``summary``: the whole simulated summary at that rate (for latency-versus-load plots)."""

    rate: float
    passed: bool
    ttft_s: float
    tpot_s: float
    attainment: float
    saturated: bool
    summary: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"rate_req_s": self.rate, "passed": self.passed, "slo_ttft_value_s": self.ttft_s,
                "slo_tpot_value_s": self.tpot_s, "slo_attainment": self.attainment, "saturated": self.saturated}


@dataclass(frozen=True)
class TargetCost:
    """What serving ``rate`` takes: ``replicas`` copies of the plan's replica (of a whole Deployment), their GPUs,
    USD per hour, and USD per million output tokens at that rate."""

    rate: float
    replicas: int
    gpus: int
    cost_per_hour_usd: float
    cost_per_mtok_usd: float

    def to_dict(self) -> dict[str, Any]:
        return {"rate_req_s": self.rate, "replicas": self.replicas, "gpus": self.gpus,
                "cost_per_hour_usd": self.cost_per_hour_usd, "cost_per_mtok_usd": self.cost_per_mtok_usd}


@dataclass(frozen=True)
class CapacityResult:
    """The capacity of one plan under the SLO (what :func:`capacity` returns).

    ``rate``: the highest request rate (req/s) found to pass, for the whole plan (all of its dp replicas).
    ``upper``: the lowest rate found to fail (None when the search stopped at ``max_rate``). ``precision``: the
    relative width reached, ``(upper - rate) / rate`` (0 at ``max_rate``). ``stopped``: ``"precision"`` (the
    asked precision was reached), ``"budget"`` (:data:`MAX_SIMULATIONS` ran out first) or ``"max_rate"`` (the
    plan passes at ``max_rate``: its capacity is at least that). ``simulations``: how many were run; ``trials``
    each of them in order. ``summary``: the simulated summary at ``rate`` (the keys of ``simulate``).
    ``replicas_per_plan``: the plan's dp (1 for a Deployment, which is costed as one unit);
    ``per_replica_rate`` = ``rate / replicas_per_plan``. ``gpus``, ``cost_per_hour_usd``: the plan's;
    ``cost_per_mtok_usd``: USD per million output tokens when the plan runs at ``rate``. ``target``: for a
    target rate, the replicas, GPUs and cost it takes (:class:`TargetCost`), else None. ``notes``: plain remarks.
    """

    label: str
    rate: float
    upper: float | None
    precision: float
    stopped: str
    simulations: int
    trials: tuple[Trial, ...]
    summary: Mapping[str, Any]
    replicas_per_plan: int
    per_replica_rate: float
    gpus: int
    cost_per_hour_usd: float
    cost_per_mtok_usd: float
    target: TargetCost | None = None
    notes: tuple[str, ...] = ()
    slo: SLO | None = None  # the SLO the rates were judged against

    @property
    def ttft_s(self) -> float:
        """TTFT at the capacity, at the statistic the SLO bounds (NaN when the SLO has no TTFT bound)."""
        return float(self.summary.get("slo_ttft_value_s", math.nan))

    @property
    def tpot_s(self) -> float:
        """TPOT at the capacity, at the statistic the SLO bounds (NaN when the SLO has no TPOT bound)."""
        return float(self.summary.get("slo_tpot_value_s", math.nan))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; latency and SLO keys are named as in ``simulate``'s JSON."""
        return {
            "label": self.label,
            "capacity_req_s": self.rate,
            "upper_req_s": self.upper,
            "per_replica_capacity_req_s": self.per_replica_rate,
            "replicas_per_plan": self.replicas_per_plan,
            "precision": self.precision,
            "stopped": self.stopped,
            "simulations": self.simulations,
            "gpus": self.gpus,
            "cost_per_hour_usd": self.cost_per_hour_usd,
            "cost_per_mtok_usd": self.cost_per_mtok_usd,
            **{k: self.summary[k] for k in _SUMMARY_KEYS if k in self.summary},
            "target": self.target.to_dict() if self.target is not None else None,
            "trials": [t.to_dict() for t in self.trials],
            "notes": list(self.notes),
        }


#: the start of the error for a capacity search without an SLO; the fix follows (load_specs(slo=) or --slo)
NO_SLO = ("capacity is measured against an SLO and none was given: a rate passes when the simulated latencies meet "
          "it; give one, e.g. ")


def _positive(name: str, value: Any, example: str, cli_example: str, *, below_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0 \
            or (below_one and value >= 1):
        rng = "between 0 and 1 (exclusive)" if below_one else "a finite number > 0"
        # the CLI value is written another way (2%, 5rps), so the message gives both forms
        raise SpecError(f"capacity({name}={shorten(value)}): must be {rng}, e.g. {name}={example} "
                        f"({spell_option(name, 'cli')} {cli_example})", option=name)
    return float(value)


def _plan_price(specs: Specs, plan: Plan | Deployment) -> float:
    plans = plan.plans if isinstance(plan, Deployment) else (plan,)
    return sum((specs.gpus[p.gpu].price_per_hour if p.gpu in specs.gpus else math.nan) * p.gpus for p in plans)


def _per_mtok(price_per_hour: float, rate: float, mean_output: float) -> float:
    tokens_per_hour = rate * mean_output * 3600.0
    return price_per_hour / tokens_per_hour * 1e6 if tokens_per_hour > 0 else math.nan


def capacity(specs: Specs, plan: Plan | Deployment, *, precision: float = 0.02, max_rate: float | None = None,
             seed: int = 0, measured_at: str | None = None, target_rate: float | None = None,
             progress: Callable[[int, int], None] | None = None) -> CapacityResult:
    """The highest request rate ``plan`` sustains under ``specs.slo``, found by simulation (module docstring).

    ``precision``: relative width of the final bracket (0.02: within 2%). ``max_rate``: do not search above it
    (req/s). ``seed``, ``measured_at``: as in :func:`~apex_opt.simulate.simulate`. ``target_rate`` (req/s):
    also cost the replicas of the plan that serve it (``ceil(target / per-replica capacity)``; a plan with dp=2
    has two replicas, each carrying half its capacity; a Deployment is costed as one unit). ``progress``: called
    as ``progress(done, most)`` after each simulation (``most``: :data:`MAX_SIMULATIONS`).

    Raises :class:`SpecError` without an SLO, and :class:`InfeasibleError` when the plan misses the SLO even
    with requests running one at a time (the best TTFT and TPOT seen are named).
    """
    check_simulate_args(specs, plan, seed=seed, fn="capacity")
    if specs.slo.is_empty:
        # capacity() takes the SLO from the specs; the CLI refuses a missing --slo itself, with the flag
        raise SpecError(NO_SLO + "load_specs(..., slo='ttft=200ms,tpot=50ms')", option="slo")
    precision = _positive("precision", precision, "0.02", "2%", below_one=True)
    if max_rate is not None:
        max_rate = _positive("max_rate", max_rate, "50", "50rps")
    if target_rate is not None:
        target_rate = _positive("target_rate", target_rate, "5", "5rps")
    workload = specs.workload
    base = workload.rate
    if len(workload) < 2 or not (math.isfinite(base) and base > 0):
        raise SpecError(f"capacity: workload '{workload.name}' has {len(workload)} request(s) and arrival rate "
                        f"{base}; the search rescales the arrivals, so give a workload of two or more requests "
                        "spread over time, e.g. synthetic:rate=4rps,requests=200,prompt=1024,output=128")

    trials: list[Trial] = []
    summaries: dict[float, Mapping[str, Any]] = {}

    def run(rate: float) -> bool:
        s = simulate(dataclasses.replace(specs, workload=workload.with_rate(rate)), plan, seed=seed,
                     measured_at=measured_at).summary()
        ok = bool(s.get("slo_met")) and not s.get("saturated") and s.get("num_completed", 0) > 0
        summaries[rate] = s
        trials.append(Trial(rate, ok, float(s.get("slo_ttft_value_s", math.nan)),
                            float(s.get("slo_tpot_value_s", math.nan)), float(s.get("slo_attainment", math.nan)),
                            bool(s.get("saturated")), s))
        if progress is not None:
            progress(len(trials), MAX_SIMULATIONS)
        return ok

    def lone(rate: float) -> bool:  # a failing rate at which requests hardly overlap
        e2e = summaries[rate].get("e2e_mean_s", math.nan)
        return not (rate * e2e >= LONE_CONCURRENCY)  # NaN (nothing completed) counts as lone

    lo: float | None = None
    hi: float | None = None
    stopped = "precision"
    rate = min(base, max_rate) if max_rate is not None else base
    if run(rate):
        lo = rate
        while hi is None:
            if max_rate is not None and lo >= max_rate:
                stopped = "max_rate"
                break
            if len(trials) >= MAX_SIMULATIONS:
                stopped = "budget"
                break
            rate = min(2 * lo, max_rate) if max_rate is not None else 2 * lo
            if run(rate):
                lo = rate
            else:
                hi = rate
    else:
        hi = rate
        while lo is None:
            if lone(hi) or len(trials) >= MAX_SIMULATIONS:
                raise _infeasible(specs, plan, trials, hi, lone(hi))
            rate = hi / 2
            if run(rate):
                lo = rate
            else:
                hi = rate
    assert lo is not None
    while hi is not None and (hi - lo) / lo > precision:
        if len(trials) >= MAX_SIMULATIONS:
            stopped = "budget"
            break
        mid = (lo + hi) / 2
        if run(mid):
            lo = mid
        else:
            hi = mid

    notes: list[str] = []
    reached = (hi - lo) / lo if hi is not None else 0.0
    if stopped == "budget":
        notes.append(f"stopped after {len(trials)} simulations (the limit) with the capacity known to within "
                     f"{reached * 100:.1f}%, not the {precision * 100:g}% asked" if hi is not None else
                     f"stopped after {len(trials)} simulations (the limit) still passing at {lo:.4g} req/s: the "
                     "capacity is at least that; give max_rate or a workload closer to the plan's load")
    elif stopped == "max_rate":
        notes.append(f"passes at max_rate {lo:.4g} req/s: the capacity is at least that (the search stops there)")
    dp = plan.dp if isinstance(plan, Plan) else 1
    unit_gpus = plan.gpus_per_replica if isinstance(plan, Plan) else plan.gpus
    price = _plan_price(specs, plan)
    unit_price = price / dp
    mean_out = workload.mean_output
    target = None
    if target_rate is not None:
        per_replica = lo / dp
        replicas = max(1, math.ceil(target_rate / per_replica - 1e-9))
        target = TargetCost(target_rate, replicas, replicas * unit_gpus, replicas * unit_price,
                            _per_mtok(replicas * unit_price, target_rate, mean_out))
        if stopped != "precision":
            notes.append(f"the replicas for {target_rate:g} req/s are counted from a capacity that is "
                         + ("a lower bound" if hi is None else "less precise than asked"))
    return CapacityResult(
        label=plan.label, rate=lo, upper=hi, precision=reached, stopped=stopped, simulations=len(trials),
        trials=tuple(trials), summary=summaries[lo], replicas_per_plan=dp, per_replica_rate=lo / dp,
        gpus=plan.gpus, cost_per_hour_usd=price, cost_per_mtok_usd=_per_mtok(price, lo, mean_out), target=target,
        notes=tuple(notes), slo=specs.slo)


def _infeasible(specs: Specs, plan: Plan | Deployment, trials: list[Trial], rate: float,
                lone: bool) -> InfeasibleError:
    slo = specs.slo
    best = []
    for metric, bound, stat in (("TTFT", slo.ttft, slo.ttft_stat), ("TPOT", slo.tpot, slo.tpot_stat)):
        if bound is None:
            continue
        seen = [v for v in (t.ttft_s if metric == "TTFT" else t.tpot_s for t in trials) if math.isfinite(v)]
        value = format_time(min(seen)) if seen else "none (no request completed)"
        best.append(f"{metric} {stat} {value} (bound {format_time(bound)})")
    attain = max((t.attainment for t in trials if math.isfinite(t.attainment)), default=math.nan)
    best.append(f"attainment {attain * 100:.1f}% (target {slo.attainment * 100:.0f}%)")
    why = ("even with requests running one at a time" if lone
           else f"at any of the {len(trials)} rates tried, the lowest {rate:.3g} req/s")
    return InfeasibleError(
        f"plan {plan.label} cannot meet the SLO {slo.describe()} {why}: the best seen is {', '.join(best)}; "
        "relax the SLO, or give the plan more GPUs per replica (tp/pp), a faster GPU or fp8 weights")


__all__ = ["MAX_SIMULATIONS", "NO_SLO", "CapacityResult", "TargetCost", "Trial", "capacity"]
