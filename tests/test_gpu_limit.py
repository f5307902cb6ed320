"""A plan that cannot place among the best is not simulated: the GPU limit the verified plans imply.

For ``goodput-per-gpu`` a plan's simulated goodput is bounded by the workload's arrivals alone, so past some GPU
count its goodput per GPU cannot come within the 1% tie tolerance of the ``top_k``-th verified plan; for
``min-gpus`` the value is the GPU count itself. The searches beside the main one (disaggregated pairs, mixed-GPU
plans) propose nothing above that limit, and the ranked result is what it would have been.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import apex_opt as ax
from apex_opt.planner.objectives import TIE_TOLERANCE, goodput_ceiling, gpu_limit, objective_function, rank_plans
from apex_opt.schema.slo import SLO


@dataclass
class Entry:
    """The parts of a RankedPlan the ranking and the limit read."""

    plan: Any
    simulated: dict
    verified: bool = True
    predicted: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FakePlan:
    label: str
    gpus: int
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    max_num_batched_tokens: None = None
    max_num_seqs: None = None


def entry(label: str, gpus: int, goodput: float, verified: bool = True) -> Entry:
    return Entry(FakePlan(label, gpus), {"goodput_req_s": goodput, "tpot_mean_s": 0.02, "ttft_mean_s": 0.1},
                 verified)


def by_label(plan: Any) -> str:
    return plan.label


SLO_90 = SLO(ttft=0.2, tpot=0.05, attainment=0.9)


class Arrivals:
    def __init__(self, arrival_s: list[float]) -> None:
        self.arrival_s = np.asarray(arrival_s)


# ------------------------------------------------------------------------------------------- the ceiling
def test_goodput_is_bounded_by_the_arrivals_of_the_requests_that_meet_the_slo():
    arrivals = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]  # 10 requests over 9 s
    assert goodput_ceiling(arrivals, 1.0) == pytest.approx(10 / 9)
    # with 80% attainment 8 requests may meet it; the 8 earliest arrive within 7 s
    assert goodput_ceiling(arrivals, 0.8) == pytest.approx(max(8 / 7, 9 / 8, 10 / 9))


def test_the_ceiling_holds_for_a_simulated_plan_that_meets_its_slo():
    specs = ax.load_specs("llama-3.1-8b", "h100x8", workload="synthetic:rate=6rps,requests=120,prompt=512,output=64,seed=1",
                          slo="ttft=1s,tpot=100ms")
    summary = ax.simulate(specs, ax.Plan(gpu="h100-sxm-80gb", tp=1)).summary()
    assert summary["slo_met"]
    assert summary["goodput_req_s"] <= goodput_ceiling(specs.workload.arrival_s, specs.slo.attainment)


# ------------------------------------------------------------------------------------------- the limit
def test_goodput_per_gpu_limits_gpus_to_where_the_ceiling_per_gpu_reaches_the_kth_verified():
    arrivals = Arrivals(list(np.linspace(0.0, 99.0, 100)))  # about 1.01 req/s at most
    ceiling = goodput_ceiling(arrivals.arrival_s, 0.9)
    verified = [entry("a", 1, 1.0), entry("b", 2, 1.0), entry("c", 4, 1.0)]  # per GPU: 1.0, 0.5, 0.25
    most, why = gpu_limit(objective_function("goodput-per-gpu"), verified, 3, arrivals, SLO_90, by_label)
    assert most == math.floor(ceiling / (0.25 * (1 - TIE_TOLERANCE)))
    assert "cannot place among the 3 best" in why and "3rd verified" in why


def test_a_plan_past_the_limit_ranks_below_the_top_k_even_at_its_best():
    arrivals = Arrivals(list(np.linspace(0.0, 99.0, 100)))
    ceiling = goodput_ceiling(arrivals.arrival_s, 0.9)
    objective = objective_function("goodput-per-gpu")
    verified = [entry("a", 1, 1.0), entry("b", 2, 1.0), entry("c", 4, 1.0)]
    most, _ = gpu_limit(objective, verified, 3, arrivals, SLO_90, by_label)
    beyond = entry("d", most + 1, ceiling)  # the best goodput any simulation could give it
    ranked = rank_plans(objective, [beyond, *verified])
    assert [e.plan.label for e in ranked[:3]] == ["a", "b", "c"]
    at_limit = entry("e", most, ceiling)  # at the limit it may still tie with the 3rd, and win the tie
    assert "e" in [e.plan.label for e in rank_plans(objective, [at_limit, *verified])[:3]]


def test_min_gpus_limits_gpus_to_the_kth_verified_plans_count_within_the_tolerance():
    verified = [entry("a", 2, 1.0), entry("b", 4, 1.0)]
    most, _ = gpu_limit(objective_function("min-gpus"), verified, 2, Arrivals([0.0, 1.0]), SLO_90, by_label)
    assert most == 4


def test_there_is_no_limit_until_top_k_layouts_are_verified():
    objective = objective_function("goodput-per-gpu")
    arrivals = Arrivals([0.0, 1.0, 2.0])
    two = [entry("a", 1, 1.0), entry("a", 1, 0.9), entry("b", 2, 1.0)]  # two entries of one layout
    assert gpu_limit(objective, two, 3, arrivals, SLO_90, by_label) is None
    rejected = [entry("a", 1, 1.0), entry("b", 2, 1.0), entry("c", 4, 1.0, verified=False)]
    assert gpu_limit(objective, rejected, 3, arrivals, SLO_90, by_label) is None


@pytest.mark.parametrize("objective", ["throughput", "min-energy", "min-cost", "min-tpot", "min-ttft"])
def test_objectives_not_bounded_by_gpus_give_no_limit(objective):
    verified = [entry("a", 1, 1.0), entry("b", 2, 1.0), entry("c", 4, 1.0)]
    assert gpu_limit(objective_function(objective), verified, 3, Arrivals([0.0, 1.0]), SLO_90, by_label) is None


def test_goodput_without_an_slo_gives_no_limit():
    verified = [entry("a", 1, 1.0)]
    assert gpu_limit(objective_function("goodput-per-gpu"), verified, 1, Arrivals([0.0, 1.0]), SLO(), by_label) is None


# ------------------------------------------------------------------------------------------- in a solve
def _solve(monkeypatch: pytest.MonkeyPatch, limited: bool) -> ax.PlanSet:
    if not limited:
        monkeypatch.setattr(ax.Problem, "gpu_limit", lambda self, verified: None)
    specs = ax.load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=4,
                          workload="synthetic:rate=3rps,requests=60,prompt=512,output=64,seed=1",
                          slo="ttft=500ms,tpot=50ms")
    return ax.solve(specs, top_k=2, workers=1, disaggregation="auto")


def _ranked(result: ax.PlanSet) -> list[tuple[str, dict]]:
    return [(p.plan.label, p.simulated) for p in result.plans]


def test_deployments_past_the_limit_are_not_simulated_and_the_ranked_result_is_the_same(monkeypatch):
    limited = _solve(monkeypatch, limited=True)
    monkeypatch.undo()
    every = _solve(monkeypatch, limited=False)
    assert _ranked(limited) == _ranked(every)
    assert limited.stats.plans_simulated < every.stats.plans_simulated
    note = next(n for n in limited.notes if "were not simulated" in n)
    assert note.startswith("disaggregated plans with more than ") and "cannot place among the 2 best" in note
