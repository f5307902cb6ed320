"""``ax.capacity`` and ``apex-opt capacity``: the highest rate a plan sustains under the SLO, and what a target costs."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.capacity import MAX_SIMULATIONS
from apex_opt.cli.main import cli

WORKLOAD = "synthetic:rate=4rps,requests=150,prompt=1024,output=128,seed=0"
SLO = "ttft=200ms,tpot=30ms"
GPU = "h100-sxm-80gb"


@pytest.fixture(scope="module")
def specs() -> ax.Specs:
    return ax.load_specs("llama-3.1-8b", "h100x8", workload=WORKLOAD, slo=SLO)


@pytest.fixture(scope="module")
def tp1(specs: ax.Specs) -> ax.CapacityResult:
    return ax.capacity(specs, ax.Plan(gpu=GPU, tp=1), precision=0.1, target_rate=30)


def passes(specs: ax.Specs, plan: ax.Plan, rate: float) -> bool:
    s = ax.simulate(dataclasses.replace(specs, workload=specs.workload.with_rate(rate)), plan)
    return bool(s["slo_met"]) and not s["saturated"]


def test_the_capacity_found_is_sustainable_and_a_rate_above_it_by_twice_the_precision_is_not(specs, tp1):
    plan = ax.Plan(gpu=GPU, tp=1)
    assert tp1.stopped == "precision" and tp1.precision <= 0.1 and tp1.simulations <= MAX_SIMULATIONS
    assert tp1.upper is not None and tp1.rate < tp1.upper <= tp1.rate * 1.1 + 1e-9
    assert passes(specs, plan, tp1.rate)
    assert not passes(specs, plan, tp1.rate * (1 + 2 * 0.1))
    assert tp1.summary["slo_met"] and tp1.ttft_s <= 0.2 and tp1.tpot_s <= 0.03


def test_the_result_is_deterministic(specs, tp1):
    again = ax.capacity(specs, ax.Plan(gpu=GPU, tp=1), precision=0.1, target_rate=30)
    assert again == tp1


def test_a_bigger_plan_carries_more(specs, tp1):
    tp2 = ax.capacity(specs, ax.Plan(gpu=GPU, tp=2), precision=0.1)
    assert tp2.rate > tp1.rate
    assert tp2.gpus == 2 and tp2.cost_per_hour_usd == pytest.approx(2 * tp1.cost_per_hour_usd)


def test_without_an_slo_it_is_a_spec_error_that_says_capacity_is_measured_against_one(specs):
    with pytest.raises(ax.SpecError, match="capacity is measured against an SLO.*ttft=200ms"):
        ax.capacity(dataclasses.replace(specs, slo=ax.SLO()), ax.Plan(gpu=GPU, tp=1))


def test_an_slo_not_met_one_request_at_a_time_is_infeasible_with_the_best_latency_seen(specs):
    tight = dataclasses.replace(specs, slo=ax.parse_slo("ttft=5ms,tpot=30ms"))
    with pytest.raises(ax.InfeasibleError, match=r"one at a time.*TTFT mean [\d.]+ms \(bound 5.0ms\)"):
        ax.capacity(tight, ax.Plan(gpu=GPU, tp=1), precision=0.1)


def test_bad_arguments_are_spec_errors(specs):
    for kw in ({"precision": 0}, {"precision": 1.5}, {"max_rate": -1}, {"target_rate": math.nan}):
        with pytest.raises(ax.SpecError):
            ax.capacity(specs, ax.Plan(gpu=GPU, tp=1), **kw)


def test_a_target_rate_takes_the_ceiling_of_target_over_per_replica_capacity(specs, tp1):
    t = tp1.target
    assert t is not None and t.rate == 30
    assert t.replicas == math.ceil(30 / tp1.per_replica_rate) and t.gpus == t.replicas
    assert t.cost_per_hour_usd == pytest.approx(t.replicas * specs.gpu.price_per_hour)
    mean_out = specs.workload.mean_output
    assert t.cost_per_mtok_usd == pytest.approx(t.cost_per_hour_usd / (30 * mean_out * 3600) * 1e6)
    assert tp1.cost_per_mtok_usd == pytest.approx(specs.gpu.price_per_hour / (tp1.rate * mean_out * 3600) * 1e6)


def test_a_plan_with_dp_reports_capacity_per_replica(specs):
    dp2 = ax.capacity(specs, ax.Plan(gpu=GPU, tp=1, dp=2), precision=0.1, target_rate=30)
    assert dp2.replicas_per_plan == 2 and dp2.per_replica_rate == pytest.approx(dp2.rate / 2)
    assert dp2.target.replicas == math.ceil(30 / dp2.per_replica_rate) and dp2.target.gpus == dp2.target.replicas


def test_max_rate_stops_the_search_with_a_lower_bound(specs):
    c = ax.capacity(specs, ax.Plan(gpu=GPU, tp=1), max_rate=5)
    assert c.rate == 5 and c.upper is None and c.stopped == "max_rate" and c.notes


def test_json_keys_follow_the_simulate_vocabulary(specs, tp1):
    d = tp1.to_dict()
    for key in ("capacity_req_s", "per_replica_capacity_req_s", "precision", "simulations", "gpus",
                "cost_per_hour_usd", "cost_per_mtok_usd", "goodput_req_s", "slo_attainment", "ttft_p99_s",
                "tpot_mean_s", "slo_ttft_value_s", "slo_met", "saturated", "target", "trials"):
        assert key in d, key
    assert set(d["target"]) == {"rate_req_s", "replicas", "gpus", "cost_per_hour_usd", "cost_per_mtok_usd"}
    assert len(d["trials"]) == tp1.simulations
    json.dumps(d)


def test_the_cli_prints_a_row_and_the_target_line_and_json_with_the_same_numbers():
    args = ["capacity", "--model", "llama-3.1-8b", "--tp", "1", "--slo", SLO, "--workload", WORKLOAD,
            "--precision", "10%", "--rate", "30rps"]
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0, table.output
    assert "dp1 tp1 pp1" in table.output and "target       30 req/s takes" in table.output
    out = CliRunner().invoke(cli, [*args, "--format", "json"])
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)
    assert d["label"] == "dp1 tp1 pp1" and d["target"]["replicas"] >= 1
    assert f"{d['capacity_req_s']:.2f}" in table.output


def test_the_cli_without_an_slo_exits_2_with_the_message():
    out = CliRunner().invoke(cli, ["capacity", "--model", "llama-3.1-8b", "--workload", WORKLOAD])
    assert out.exit_code == 2 and "capacity is measured against an SLO" in out.output
