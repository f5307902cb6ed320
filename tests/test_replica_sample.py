"""A verification may simulate a sample of a plan's identical replicas: exactly, for every request it covers."""

from __future__ import annotations

import numpy as np
import pytest

import apex_opt as ax
from apex_opt.metrics import CLUSTER_MAXIMA
from apex_opt.planner.sampling import replica_sample, sampled, scaled_up
from apex_opt.schema.speculative import SpeculativeConfig
from apex_opt.specs import with_engine_settings

WORKLOAD = "synthetic:rate=24rps,requests=600,prompt=256,output=32,seed=3"


@pytest.fixture(scope="module")
def specs():
    return ax.load_specs(model="llama-3.1-8b", cluster="h100x8", workload=WORKLOAD, slo="ttft=500ms,tpot=40ms")


@pytest.fixture(scope="module")
def plan():
    return ax.Plan(tp=1, dp=6, gpu="h100-sxm-80gb", engine="vllm-0.6")


def test_the_sampled_replicas_serve_their_requests_exactly_as_in_the_whole_simulation(specs, plan):
    sample = replica_sample(plan, specs, 200)
    assert (sample.replicas, sample.of) == (2, 6)
    whole = ax.simulate(specs, plan, seed=0).records
    sub_plan, sub_specs = sampled(plan, specs, sample)
    part = ax.simulate(sub_specs, sub_plan, seed=0).records
    assert part.request_ids == tuple(whole.request_ids[i] for i in sample.index)
    np.testing.assert_array_equal(part.replica, whole.replica[sample.index])
    for field in ("first_scheduled_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "generated"):
        np.testing.assert_array_equal(getattr(part, field), getattr(whole, field)[sample.index])


def test_a_sampled_summary_scales_totals_and_rates_but_not_latencies(specs, plan):
    sample = replica_sample(plan, specs, 200)
    sub_plan, sub_specs = sampled(plan, specs, sample)
    part = ax.simulate(sub_specs, sub_plan, seed=0).summary()
    whole = ax.simulate(specs, plan, seed=0).summary()
    up = scaled_up(part, sample)
    assert up["replicas_simulated"] == 2
    assert up["gpus"] == whole["gpus"] == 6
    assert up["num_requests"] == whole["num_requests"] == 600
    assert up["ttft_p90_s"] == part["ttft_p90_s"]
    assert up["energy_per_output_token_j"] == part["energy_per_output_token_j"]
    assert up["throughput_output_tok_s"] == pytest.approx(whole["throughput_output_tok_s"], rel=0.1)
    assert up["offered_rate_req_s"] == pytest.approx(whole["offered_rate_req_s"], rel=0.1)
    assert not set(CLUSTER_MAXIMA) & set(up)


@pytest.mark.parametrize("case", ["one replica", "no target", "workload no larger", "deployment", "speculating",
                                  "client", "wide expert parallel"])
def test_plans_a_sample_would_not_reproduce_exactly_are_simulated_whole(specs, plan, case):
    target = 200
    if case == "one replica":
        plan = plan.model_copy(update={"dp": 1})
    elif case == "no target":
        target = None
    elif case == "workload no larger":
        target = 600
    elif case == "deployment":
        plan = ax.Deployment(plans=(plan.model_copy(update={"dp": 3, "role": "prefill"}),
                                    plan.model_copy(update={"dp": 3, "role": "decode"})))
    elif case == "speculating":
        plan = plan.model_copy(update={"speculative": SpeculativeConfig(method="ngram", num_tokens=2, acceptance=0.5)})
    elif case == "wide expert parallel":
        plan = plan.model_copy(update={"dp_attention": True, "ep": 6})
    elif case == "client":
        specs = with_engine_settings(specs, measured_at="client")
    assert replica_sample(plan, specs, target) is None


@ax.constraint("four-replicas-or-more")
def four_replicas_or_more(v: ax.PlanVars, s: ax.Specs):
    """At least four data-parallel replicas."""
    return v.dp >= 4


def test_solve_reports_the_replicas_it_simulated_and_every_replica_without_a_sample():
    common = {"model": "llama-3.1-8b", "cluster": "h100x8", "slo": "ttft=400ms,tpot=30ms",
                  "workload": "synthetic:rate=40rps,requests=1200,prompt=256,output=32,seed=1"}
    sampled_run = ax.solve(ax.load_specs(**common), constraints=[four_replicas_or_more], top_k=1, verify_requests=300,
                           disaggregation="off")
    whole_run = ax.solve(ax.load_specs(**common), constraints=[four_replicas_or_more], top_k=1, verify_requests=None,
                         disaggregation="off")
    best, full = sampled_run.best, whole_run.best
    assert best.plan.dp >= 4 and best.simulated["replicas_simulated"] == -(-300 * best.plan.dp // 1200)
    assert "replicas_simulated" not in full.simulated
    assert best.simulated["gpus"] == best.plan.gpus
