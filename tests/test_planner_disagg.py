"""The planner chooses between aggregated and prefill/decode-disaggregated (xPyD) plans, and the ratio.

Disaggregated candidates are priced role by role (a prefill replica never decodes, a decode replica never
prefills), paired by CP-SAT within the cluster's GPUs, verified by the disaggregated simulator and ranked with
the aggregated plans on the simulated metrics.
"""

from __future__ import annotations

import itertools
import json

import pytest
from click.testing import CliRunner

from apex_opt import planner
from apex_opt.cli.main import cli
from apex_opt.errors import InfeasibleError
from apex_opt.planner.disagg import build_disagg_space
from apex_opt.planner.estimates import Menu, ShapeKey
from apex_opt.planner.space import build_space
from apex_opt.schema.plan import Deployment
from apex_opt.schema.plan import Plan as _Plan
from apex_opt.simulate import simulate
from apex_opt.specs import load_specs


def h100_plan(**fields):
    return _Plan(gpu="h100-sxm-80gb", **fields)


LONG_PROMPTS = "synthetic:rate=6rps,requests=150,prompt=2048,output=96,seed=4"


@pytest.fixture(scope="module")
def specs():
    """llama-3.1-8b on 8 H100s, long prompts at 6 req/s: prefill interference is what disaggregation removes."""
    return load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=8, workload=LONG_PROMPTS,
                      slo="ttft=500ms,tpot=20ms")


def test_each_role_is_priced_without_the_other_roles_interference(specs):
    space = build_space(specs)
    est = space.estimator
    key, menu = ShapeKey(2, 1, None, "bf16", "bf16"), Menu(256, None)
    together = est.estimate(key, menu, 1, 2)
    prefill = est.estimate_role("prefill", key, menu, 1, 2)
    decode = est.estimate_role("decode", key, menu, 1, 2)
    assert prefill.ttft_s < together.ttft_s  # no decode batch rides along with the prompt
    assert decode.tpot_s < together.tpot_s  # no prompt chunk rides along with the decodes
    assert prefill.capacity_rps > 0 and decode.capacity_rps > 0
    assert prefill.fits and decode.fits and prefill.gpus == decode.gpus == 4


def test_role_tables_hold_only_replica_sets_that_fit_and_stay_inside_a_node(specs):
    dspace = build_disagg_space(build_space(specs))
    assert dspace.prefill and dspace.decode
    for row in [*dspace.prefill, *dspace.decode]:
        assert row.est.fits and row.key.tp <= 8 and row.dp * row.pp * row.key.tp < 8


def test_disaggregation_only_returns_verified_xpyd_deployments_within_the_cluster(specs):
    result = planner.solve(specs, disaggregation="only", top_k=2, workers=1)
    assert result.plans
    for p in result.plans:
        assert isinstance(p.plan, Deployment) and p.plan.disaggregated
        assert {q.role for q in p.plan.plans} == {"prefill", "decode"}
        assert p.plan.gpus <= 8 and p.verified
        assert p.simulated["num_kv_transfers"] == p.simulated["num_completed"]  # every output > 1 token
        assert p.source == "cpsat:disaggregated"
        assert p.plan.label.startswith(f"{p.plan.plans[0].dp}P{p.plan.plans[1].dp}D ")


def test_auto_ranks_aggregated_and_disaggregated_plans_together_on_simulated_metrics(specs):
    result = planner.solve(specs, disaggregation="auto", top_k=3, workers=1)
    tried = [*result.plans, *result.rejected]
    assert any(isinstance(p.plan, Deployment) for p in tried)
    assert any(not isinstance(p.plan, Deployment) for p in tried)
    values = [p.simulated["goodput_req_s"] / p.plan.gpus for p in result.plans]
    assert all(a >= b * 0.99 for a, b in itertools.pairwise(values))  # best first (ties within 1%)


def test_off_searches_aggregated_plans_only(specs):
    result = planner.solve(specs, disaggregation="off", top_k=1, workers=1)
    assert not isinstance(result.best.plan, Deployment)
    assert not any("disaggregated" in n for n in result.notes)


@planner.constraint("tp-1")
def tp_1(v, s):
    """One GPU per tensor-parallel group."""
    return v.tp <= 1


@planner.constraint("decode-tp2")
def decode_tp2(v, s):
    return v.decode.tp >= 2


@planner.constraint("prefill-one-replica")
def prefill_one_replica(v, s):
    return v.prefill.dp == 1


def test_a_plan_constraint_holds_for_both_roles_of_every_pair(specs):
    result = planner.solve(specs, constraints=[tp_1], disaggregation="only", top_k=2, workers=1)
    assert result.plans
    for p in result.plans:
        assert [q.tp for q in p.plan.plans] == [1, 1]


def test_a_constraint_on_one_role_binds_that_role_only(specs):
    result = planner.solve(specs, constraints=[decode_tp2, prefill_one_replica], disaggregation="only", top_k=2,
                           workers=1)
    assert result.plans
    for p in result.plans:
        prefill, decode = p.plan.plans
        assert decode.tp >= 2 and prefill.dp == 1
    assert any(p.plan.plans[0].tp == 1 for p in result.plans)  # the prefill side may stay narrow


def test_the_deployments_gpus_and_latencies_are_what_a_pair_constraint_reads(specs):
    @planner.constraint("three-gpus")
    def three_gpus(v, s):
        return [v.gpus == 3, v.tpot_ms <= 12, v.ttft_ms <= 200]

    result = planner.solve(specs, constraints=[three_gpus], disaggregation="only", top_k=1, workers=1)
    best = result.best
    assert best.plan.gpus == 3
    assert best.predicted["tpot_mean_s"] <= 0.012 and best.predicted["ttft_mean_s"] <= 0.2


def test_user_constraints_that_rule_out_every_pair_are_named_with_what_fits_without_each(specs):
    with pytest.raises(InfeasibleError) as err:
        planner.solve(specs, constraints=[tp_1, decode_tp2], disaggregation="only", workers=1)
    text = str(err.value)
    assert "These constraints together rule out every pair:" in text
    assert "[tp-1]" in text and "One GPU per tensor-parallel group" in text and "[decode-tp2]" in text
    assert "without [tp-1]: 1P1D" in text and "without [decode-tp2]: 1P1D" in text
    assert {"tp-1", "decode-tp2"} <= set(err.value.conflict)


def test_a_constraint_the_pair_search_can_read_keeps_disaggregation_in_auto(specs):
    result = planner.solve(specs, constraints=[tp_1], top_k=1, workers=1)
    assert not any("disaggregated plans not searched" in n for n in result.notes)
    assert any(isinstance(p.plan, Deployment) for p in [*result.plans, *result.rejected])


def test_an_impossible_slo_for_every_pair_is_refused_with_the_bounds_named():
    specs = load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=4, workload=LONG_PROMPTS,
                       slo="ttft=5ms,tpot=20ms")
    with pytest.raises(InfeasibleError, match="slo.ttft"):
        planner.solve(specs, disaggregation="only", workers=1)


def test_cli_json_and_launch_commands_of_a_disaggregated_winner():
    out = CliRunner().invoke(cli, ["solve", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--nodes", "1",
                                   "--workload", LONG_PROMPTS, "--slo", "ttft=500ms,tpot=20ms",
                                   "--disaggregation", "only", "--top-k", "1", "--workers", "1", "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    best = data["plans"][0]
    assert best["disaggregated"] and [i["role"] for i in best["instances"]] == ["prefill", "decode"]
    assert "NixlConnector" in data["launch"]["vllm"]
    assert "--disaggregation-mode prefill" in data["launch"]["sglang"]
    assert "--disaggregation-mode decode" in data["launch"]["sglang"]
    bad = CliRunner().invoke(cli, ["solve", "--disaggregation", "sometimes"])
    assert bad.exit_code == 2 and "sometimes" in bad.output


def test_no_aggregated_plan_does_not_stop_the_disaggregated_search(specs, monkeypatch):
    """When every single plan is ruled out, auto still verifies the pairs; with off the infeasibility stands."""
    from apex_opt.planner.solve import Problem

    class NoPlan:
        def next(self):
            raise InfeasibleError("no single plan (test)", ("capacity",))

    monkeypatch.setattr(Problem, "optimizer", lambda self: NoPlan())
    result = planner.solve(specs, disaggregation="auto", top_k=1, workers=1)
    assert isinstance(result.best.plan, Deployment) and result.best.plan.disaggregated
    with pytest.raises(InfeasibleError, match="no single plan"):
        planner.solve(specs, disaggregation="off", top_k=1, workers=1)


@pytest.mark.parametrize("pp", [1, 2])
def test_a_prefill_replicas_capacity_is_where_its_bottleneck_stage_saturates_in_simulation(pp):
    """Pipeline stages work on different prompts at once, but every prompt passes the slowest stage: a pipelined
    prefill replica carries what that stage carries (it was priced at pp times that, twice too much at pp = 2)."""
    base = load_specs("llama-3.1-70b", gpu="h100-sxm-80gb", nodes=2, gpus_per_node=8, slo=None,
                      workload="synthetic:rate=1rps,requests=100,prompt=2048,output=64,seed=0")
    capacity = build_space(base).estimator.estimate_role("prefill", ShapeKey(4, 1, None, "bf16", "bf16"),
                                                          Menu(256, None), pp, 1).capacity_rps
    pair = Deployment(plans=(h100_plan(tp=4, pp=pp, role="prefill"), h100_plan(tp=8, role="decode")))
    for share, saturated in ((0.8, False), (1.25, True)):
        specs = load_specs("llama-3.1-70b", gpu="h100-sxm-80gb", nodes=2, gpus_per_node=8, slo=None,
                           workload=f"synthetic:rate={share * capacity:.3f}rps,requests=600,prompt=2048,output=64,"
                                    "seed=0")
        assert simulate(specs, pair).summary()["saturated"] is saturated, (share, capacity)
