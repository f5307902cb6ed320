"""Planning a large cluster: the dp ladder, exact row pruning and the prefix search give the same plans as the
whole table, with a space that grows with the logarithm of the cluster.

The answers are checked against a CP-SAT model over every candidate (the slow, obviously-right formulation).
"""

from __future__ import annotations

import itertools

import pytest

from apex_opt import planner
from apex_opt.planner.model import PlanModel, objective_key
from apex_opt.planner.objectives import objective_function
from apex_opt.planner.solve import Optimizer, Problem
from apex_opt.planner.space import SearchOptions, build_space, dp_values
from apex_opt.specs import load_specs

WORKLOAD = "synthetic:rate=30rps,requests=80,prompt=512,output=64,seed=3"


def test_dp_values_are_dense_up_to_the_threshold_then_a_ladder_with_the_needed_count_and_the_most():
    opts = SearchOptions()
    assert dp_values(8, None, opts) == list(range(1, 9))
    values = dp_values(1024, 300, opts)
    assert values[:32] == list(range(1, 33)) and values[-1] == 1024
    assert set(range(296, 309)) <= set(values)  # every count around the one that carries the load
    assert len(values) < 150  # instead of 1024
    ratios = [b / a for a, b in itertools.pairwise(values[32:])]
    assert max(ratios) <= 1.05 + 1 / 32
    assert dp_values(1024, None, SearchOptions(dense_dp=2048)) == list(range(1, 1025))


def test_the_space_grows_with_the_logarithm_of_the_cluster():
    sizes = {}
    for nodes in (8, 32, 128):
        specs = load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=nodes, workload=WORKLOAD)
        sizes[nodes] = len(build_space(specs, SearchOptions(max_num_seqs=(256,), budgets=(None,), max_pp=2)))
    # 16x the GPUs: a few times the candidates, not 16x or more (every dp value would give over 16x: more tp
    # degrees, and more replicas of each)
    assert sizes[128] < 6 * sizes[8]
    assert sizes[128] / sizes[32] < sizes[32] / sizes[8] * 1.25


@pytest.fixture(scope="module")
def mid_problem():
    """llama-3.1-70b on 4 nodes of 8 H100s: pipeline depths up to 8, a few thousand candidates."""
    specs = load_specs("llama-3.1-70b", gpu="h100-sxm-80gb", nodes=4, workload=WORKLOAD, slo="ttft=1s,tpot=60ms")
    return specs


@pytest.mark.parametrize("objective", ["goodput-per-gpu", "min-tpot", "min-energy", "throughput"])
def test_the_prefix_search_proposes_what_the_whole_table_proposes(mid_problem, objective):
    problem = Problem(mid_problem, objective=objective, workers=1,
                      options=SearchOptions(max_num_seqs=(256,), budgets=(None, 2048)))
    small = Optimizer(problem, first_rows=4)  # forces several prefix extensions
    whole = PlanModel(problem.space, problem.all_constraints, seed=problem.seed)
    obj = objective_function(objective)
    L = mid_problem.model.num_layers
    for _ in range(4):
        want = whole.best(obj)
        got = small.next()
        assert want is not None and got is not None
        # the same objective levels (the layouts may differ on exact ties), the same candidate most of the time
        want_key = objective_key(whole.row(want.index), obj, L, want.split)
        got_key = objective_key(whole.row(got.index), obj, L, got.plan.layers_per_stage or (L,))
        assert got_key == want_key
        whole.cut(problem.space_layout(got.index))
    assert small.size < len(small.order)  # it never needed the whole table


def test_rows_failing_a_split_independent_constraint_are_never_searched(mid_problem):
    problem = Problem(mid_problem, workers=1)
    checker = problem._checker
    assert {"gpus", "divisibility", "capacity", "slo.ttft"} <= set(checker.table_labels())
    assert "memory" not in checker.table_labels() and "slo.tpot" not in checker.table_labels()
    searched = set(problem.search_rows)
    for i, bad in enumerate(problem.violations):
        if {"divisibility", "capacity"} & set(bad):
            assert i not in searched


def test_a_user_rule_on_the_split_is_still_honoured_by_the_prefix_search(mid_problem):
    @planner.constraint("first-stage-small")
    def first_small(v, s):
        return [v.pp == 2, v.layers[0] <= 30]

    result = planner.solve(mid_problem, constraints=[first_small], workers=1, top_k=1, max_simulations=3)
    assert result.best.plan.pp == 2 and result.best.plan.layers_per_stage[0] <= 30


def test_a_shape_that_missed_its_slo_in_simulation_rules_out_its_plans_with_fewer_replicas():
    specs = load_specs("llama-3.1-8b", "h100x8", slo="ttft=500ms,tpot=40ms",
                       workload="synthetic:rate=40rps,requests=200,prompt=512,output=64,seed=0")
    problem = Problem(specs, options=SearchOptions(disaggregation="off"))
    optimizer = problem.optimizer()
    first = optimizer.next()
    missed = planner.RankedPlan(first.plan, first.predicted, {"slo_met": False}, False, ("SLO missed",),
                                index=first.index)
    c = problem.space.candidates[first.index]
    fewer = {d.index for d in problem.space.candidates
             if d.key == c.key and d.pp == c.pp and d.menu == c.menu and d.dp < c.dp}
    assert fewer and optimizer.observe([missed]) == len(fewer)
    proposed = []
    while (p := optimizer.next()) is not None:
        proposed.append(p.index)
    assert not fewer & set(proposed)
    unaffected = Problem(specs, options=SearchOptions(disaggregation="off")).optimizer()
    met = planner.RankedPlan(first.plan, first.predicted, {"slo_met": True}, True, (), index=first.index)
    assert unaffected.observe([met]) == 0
