"""Objectives speak the metric registry's vocabulary: one name per metric (apex_opt.metrics), read from its entries."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest

import apex_opt as ax
from apex_opt.metrics import METRICS
from apex_opt.planner import objectives
from apex_opt.planner.model import _column
from apex_opt.planner.objectives import (
    OBJECTIVE_NAMES,
    TIE_BREAK_ORDER,
    Maximize,
    Minimize,
    objective_function,
    predicted_value,
    rank_plans,
    simulated_value,
)


def test_objective_names_come_from_the_registry_in_the_documented_order():
    assert list(OBJECTIVE_NAMES) == ["goodput-per-gpu", "throughput", "min-gpus", "min-energy", "min-cost",
                                     "min-tpot", "min-ttft"]
    assert OBJECTIVE_NAMES == {m.objective: m.name for m in METRICS.values() if m.objective}
    assert TIE_BREAK_ORDER == ("tpot_mean_s", "ttft_mean_s", "energy_per_output_token_j")


@pytest.mark.parametrize("name", list(OBJECTIVE_NAMES))
def test_every_level_is_a_registered_metric_with_its_sense_and_planner_variable(name):
    obj = objective_function(name)
    assert obj.name == name and obj.metric == OBJECTIVE_NAMES[name]
    assert len(obj.levels) == 3 and obj.metric not in obj.tie_breaks
    for metric, sense in obj.levels:
        m = METRICS[metric]
        assert sense == m.sense and m.solver is not None
        assert _column(metric) == m.solver[0]  # the CP-SAT table column is the registry's PlanVars field


def test_minimize_and_maximize_take_registry_names():
    assert Minimize("cost_per_mtok_usd").levels == objective_function("min-cost").levels
    assert Minimize("cost_per_mtok_usd").name == "minimize cost_per_mtok_usd"
    assert Maximize("throughput_output_tok_s").levels == objective_function("throughput").levels
    assert Minimize("tpot_mean_s").tie_breaks == ("ttft_mean_s", "energy_per_output_token_j")


def test_an_earlier_spelling_of_the_registry_is_accepted_with_a_deprecation_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = Maximize("goodput_per_gpu")
        energy = Minimize("energy_per_token_j")
    assert obj.metric == "goodput_per_gpu_req_s" and energy.metric == "energy_per_output_token_j"
    assert [w.category for w in caught] == [DeprecationWarning, DeprecationWarning]
    assert "goodput_per_gpu_req_s" in str(caught[0].message)


@pytest.mark.parametrize("name, registered", [("cost_per_mtok", "cost_per_mtok_usd"),
                                              ("energy_per_token", "energy_per_output_token_j"),
                                              ("tpot", "tpot_mean_s"), ("ttft", "ttft_mean_s"),
                                              ("throughput", "throughput_output_tok_s")])
def test_the_planners_name_from_before_the_registry_still_works_for_a_release_with_a_warning(name, registered):
    with pytest.warns(DeprecationWarning, match=f"'{name}' is now named '{registered}'"):
        assert Minimize(name).metric == registered


def test_a_misspelt_metric_is_refused_with_the_registry_name_it_is_closest_to():
    with pytest.raises(ax.SpecError, match="unknown metric 'cost_per_mtk': did you mean 'cost_per_mtok_usd'.*min-cost"):
        Minimize("cost_per_mtk")


def test_a_metric_the_planner_does_not_model_or_an_unknown_one_is_refused():
    with pytest.raises(ax.SpecError, match="'ttft_p99_s' is not modelled by the planner.*goodput_per_gpu_req_s"):
        Minimize("ttft_p99_s")
    with pytest.raises(ax.SpecError, match="unknown metric 'fastest'; use one of goodput_per_gpu_req_s"):
        Maximize("fastest")
    with pytest.raises(ax.SpecError, match="use one of goodput-per-gpu, throughput, min-gpus"):
        objective_function("energy_per_output_token_j")


def test_values_are_read_under_registry_names():
    predicted = {"energy_per_output_token_j": 0.5, "gpus": 2}
    assert predicted_value("energy_per_output_token_j", predicted) == 0.5
    assert math.isnan(predicted_value("cost_per_mtok_usd", predicted))
    summary = {"goodput_req_s": 3.0, "tpot_mean_s": 0.02}
    assert simulated_value("goodput_per_gpu_req_s", summary, 2) == 1.5
    assert simulated_value("gpus", summary, 2) == 2.0
    assert simulated_value("tpot_mean_s", summary, 2) == 0.02
    assert math.isnan(simulated_value("ttft_mean_s", summary, 2))


def _entry(gpus: int, simulated: dict, predicted: dict | None = None) -> SimpleNamespace:
    plan = SimpleNamespace(gpus=gpus, weight_dtype="bf16", kv_dtype="bf16", max_num_batched_tokens=None,
                           max_num_seqs=None)
    return SimpleNamespace(plan=plan, simulated=simulated, predicted=predicted or {})


def test_rank_plans_orders_by_the_registry_metric_then_the_tie_breaks():
    a = _entry(2, {"goodput_req_s": 4.0, "tpot_mean_s": 0.030, "ttft_mean_s": 0.1})
    b = _entry(2, {"goodput_req_s": 4.02, "tpot_mean_s": 0.020, "ttft_mean_s": 0.1})  # ties a within 1%, faster
    c = _entry(1, {"goodput_req_s": 3.0, "tpot_mean_s": 0.050, "ttft_mean_s": 0.1})  # 3 req/s per GPU: best
    d = _entry(4, {}, {"goodput_per_gpu_req_s": 0.5})  # not simulated: its prediction ranks it
    assert rank_plans(objective_function("goodput-per-gpu"), [a, b, c, d]) == [c, b, a, d]
    assert rank_plans(objective_function("min-tpot"), [a, b, c, d]) == [b, a, c, d]
    assert rank_plans(objective_function("min-gpus"), [a, b, c, d]) == [c, b, a, d]


def test_the_gpu_bound_reads_registry_names():
    assert objectives.gpu_limit(objective_function("min-energy"), [], 1, None, None, lambda p: p) is None
    verified = [SimpleNamespace(verified=True, simulated={"goodput_req_s": 1.0}, plan=SimpleNamespace(gpus=2))]
    limit = objectives.gpu_limit(objective_function("min-gpus"), verified, 1, None, None, lambda p: p.gpus)
    assert limit is not None and limit[0] == 2
