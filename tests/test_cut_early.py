"""A verifying simulation stops once its SLO verdict is decided, and only then: cutting never changes a verdict."""

from __future__ import annotations

import pytest

import apex_opt as ax

PLAN = ax.Plan(tp=1, gpu="h100-sxm-80gb", engine="vllm-0.6")


def _specs(rate: float, slo: str = "ttft=300ms,tpot=40ms") -> ax.Specs:
    return ax.load_specs(model="llama-3.1-8b", cluster="h100x8", slo=slo,
                         workload=f"synthetic:rate={rate}rps,requests=400,prompt=1024,output=128,seed=2")


def test_an_overloaded_plan_is_cut_once_more_requests_missed_than_the_target_allows():
    specs = _specs(60)
    whole = ax.simulate(specs, PLAN).summary()
    cut = ax.simulate(specs, PLAN, cut_early=True).summary()
    assert not whole["slo_met"] and not cut["slo_met"]
    assert cut["cut_at_s"] < whole["makespan_s"]
    assert cut["num_slo_missed"] > 400 - 360  # attainment 90% of 400 requests allows 40 misses
    assert whole["slo_attainment"] <= cut["slo_attainment"] < 0.9


def test_a_plan_that_meets_its_slo_runs_to_the_end_with_the_same_results():
    specs = _specs(4)
    whole = ax.simulate(specs, PLAN).summary()
    cut = ax.simulate(specs, PLAN, cut_early=True).summary()
    assert whole["slo_met"] and "cut_at_s" not in cut
    assert cut == whole


@pytest.mark.parametrize("rate", [10, 16, 22, 28, 40])
@pytest.mark.parametrize("slo", ["ttft=300ms,tpot=40ms", "ttft.p90=1s,tpot=30ms,attainment=95%", "e2e=5s"])
def test_a_cut_run_had_missed_the_slo_the_whole_run_misses(rate, slo):
    specs = _specs(rate, slo)
    whole = ax.simulate(specs, PLAN).summary()
    cut = ax.simulate(specs, PLAN, cut_early=True).summary()
    if "cut_at_s" in cut:
        assert not whole["slo_met"]
        assert whole["slo_attainment"] <= cut["slo_attainment"] + 1e-12
    elif whole["slo_attainment"] >= specs.slo.attainment:
        assert cut == whole


@pytest.mark.parametrize("rate", [30, 60])
def test_a_disaggregated_run_is_cut_with_kv_transfers_still_in_flight(rate):
    """Prefill replicas hand requests off continuously: at the cut some caches are still on the wire, and the run
    ends there like any other (it used to fail as an internal inconsistency)."""
    specs = _specs(rate, "ttft=100ms,tpot=10ms")
    pair = ax.Deployment(plans=(ax.Plan(tp=1, gpu="h100-sxm-80gb", engine="vllm-0.6", role="prefill"),
                                ax.Plan(tp=1, gpu="h100-sxm-80gb", engine="vllm-0.6", role="decode")))
    whole = ax.simulate(specs, pair).summary()
    cut = ax.simulate(specs, pair, cut_early=True).summary()
    assert not whole["slo_met"] and not cut["slo_met"]
    assert cut["cut_at_s"] < whole["makespan_s"]
    assert whole["slo_attainment"] <= cut["slo_attainment"] + 1e-12


def test_without_an_slo_nothing_is_cut():
    specs = ax.load_specs(model="llama-3.1-8b", cluster="h100x8", slo=None,
                          workload="synthetic:rate=60rps,requests=200,prompt=1024,output=128,seed=2")
    assert "cut_at_s" not in ax.simulate(specs, PLAN, cut_early=True).summary()


@ax.constraint("one-gpu")
def one_gpu(v: ax.PlanVars, s: ax.Specs):
    """A single GPU, whatever the load."""
    return v.gpus == 1


def test_solve_says_when_and_why_it_cut_a_plan():
    specs = _specs(60)
    result = ax.solve(specs, top_k=1, solver="exhaustive", disaggregation="off", constraints=[one_gpu],
                      max_simulations=4)
    cut = [p for p in result.rejected if p.simulated and "cut_at_s" in p.simulated]
    assert cut, [p.notes for p in result.rejected]
    assert "cut at" in cut[0].notes[0] and "had already missed it" in cut[0].notes[0]
