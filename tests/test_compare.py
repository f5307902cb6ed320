"""``apex-opt compare PLAN PLAN ...`` and ``ax.compare``: several plans on one workload, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.calibration import CalibrationProfile
from apex_opt.cli.main import cli
from apex_opt.errors import SpecError
from apex_opt.metrics import FORMERLY, METRICS

SMALL = "synthetic:rate=4rps,requests=20,prompt=256,output=32,seed=0"
PROBLEM = ["--model", "llama-3.1-8b", "--workload", SMALL, "--workers", "1"]
GPU = "h100-sxm-80gb"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["compare", *args])


def as_json(*args: str) -> dict:
    result = invoke(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def specs() -> ax.Specs:
    return ax.load_specs("llama-3.1-8b", "h100x8", workload=SMALL, slo="ttft=500ms,tpot=50ms")


# ---------------------------------------------------------------------------------------------------- command
def test_compare_prints_one_column_per_plan():
    result = invoke("tp=1", "tp=2", "tp=1,dp=2", *PROBLEM)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "tp=1,dp=2" in line)
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == ["", "tp=1", "tp=2", "tp=1,dp=2"]
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│")}
    assert {"TTFT p99", "TPOT mean", "energy/token (J/token)", "$/Mtok", "GPUs"} <= set(rows)
    assert [c.strip() for c in rows["GPUs"].split("│")[2:5]] == ["1*", "2", "2"]  # * marks the best value


def test_compare_json_has_one_entry_per_plan_named_as_the_registry():
    d = as_json("tp=1", "tp=2", *PROBLEM, "--slo", "ttft=500ms,tpot=50ms")
    assert [p["spec"] for p in d["plans"]] == ["tp=1", "tp=2"]
    assert [p["label"] for p in d["plans"]] == ["dp1 tp1 pp1", "dp1 tp2 pp1"]
    for plan in d["plans"]:
        assert {"ttft_p99_s", "goodput_req_s", "cost_per_mtok_usd", "energy_per_output_token_j"} <= set(plan)
        assert not set(plan) & set(FORMERLY)
    assert d["best"]["gpus"] == "dp1 tp1 pp1" and set(d["best"]) <= set(METRICS)


def test_a_plan_spec_overrides_the_plan_options_it_names():
    d = as_json("tp=1", "tp=1,weight_dtype=bf16,engine=vllm-v1", *PROBLEM, "--weight-dtype", "fp8")
    first, second = (p["plan"] for p in d["plans"])
    assert (first["weight_dtype"], first["engine"]) == ("fp8", "vllm-0.6")  # the options: where every PLAN starts
    assert (second["weight_dtype"], second["engine"]) == ("bf16", "vllm-v1")


def test_the_quick_form_cluster_is_sized_to_the_largest_plan():
    d = as_json("tp=1", "tp=8,dp=2", *PROBLEM)
    assert d["cluster"] == "2x8-h100-sxm-80gb"
    assert [p["gpus"] for p in d["plans"]] == [1, 16]


def test_each_column_is_what_simulate_reports_for_that_plan(specs):
    d = as_json("tp=1", "tp=2", *PROBLEM, "--slo", "ttft=500ms,tpot=50ms")
    for entry, tp in zip(d["plans"], (1, 2), strict=True):
        alone = ax.simulate(specs, ax.Plan(gpu=GPU, tp=tp)).summary()
        assert entry["ttft_p99_s"] == pytest.approx(alone["ttft_p99_s"])
        assert entry["num_completed"] == alone["num_completed"] == 20


def test_compare_applies_the_calibration_profile(tmp_path: Path):
    slow = tmp_path / "slow.yaml"
    CalibrationProfile(name="slow", constants={"engines.vllm-v1.step_s": 0.02}).write(slow)
    base = as_json("tp=1", *PROBLEM, "--engine", "vllm-v1")
    slowed = as_json("tp=1", *PROBLEM, "--engine", "vllm-v1", "--calibration", str(slow))
    assert slowed["plans"][0]["tpot_mean_s"] > base["plans"][0]["tpot_mean_s"] + 0.015


def test_an_unknown_plan_key_is_refused_with_the_valid_form():
    result = invoke("tp=1", "tp=2,colour=red", *PROBLEM)
    assert result.exit_code == 2
    assert "Error: PLAN 'tp=2,colour=red': unknown key 'colour'" in result.output
    assert "weight_dtype" in result.output


def test_disaggregated_options_are_refused():
    result = invoke("tp=1", *PROBLEM, "--prefill", "tp=1", "--decode", "tp=1")
    assert result.exit_code == 2 and "compare takes aggregated plans" in result.output


def test_an_unknown_metric_row_is_refused_before_any_simulation():
    result = invoke("tp=1", *PROBLEM, "--metric", "speed")
    assert result.exit_code == 2 and "--metric 'speed': not a registered metric" in result.output


def test_rows_can_be_chosen_by_registry_name_old_names_included():
    result = invoke("tp=1", "tp=2", *PROBLEM, "--metric", "ttft_p99_s", "--metric", "energy_per_token_j")
    assert result.exit_code == 0, result.output
    labels = [line.split("│")[1].strip() for line in result.output.splitlines() if line.startswith("│")]
    assert labels == ["TTFT p99", "energy/token (J/token)"]


# ---------------------------------------------------------------------------------------------------- library
def test_compare_returns_the_plans_in_order_and_picks_the_best_by_the_registry_sense(specs):
    c = ax.compare(specs, [ax.Plan(gpu=GPU, tp=2), ax.Plan(gpu=GPU, tp=1)], workers=1)
    assert c.labels == ("dp1 tp2 pp1", "dp1 tp1 pp1")
    assert c.best("gpus") == "dp1 tp1 pp1"  # fewer is better
    assert c.best("tpot_mean_s") == "dp1 tp2 pp1"  # lower is better
    assert c.best("throughput_output_tok_s") in c.labels  # higher is better
    with pytest.raises(SpecError, match="unknown metric 'speed'"):
        c.best("speed")


def test_a_plan_whose_simulation_fails_keeps_its_column_with_the_reason():
    specs = ax.load_specs("llama-3.1-70b", "h100x8", workload=SMALL)
    c = ax.compare(specs, [ax.Plan(gpu=GPU, tp=1), ax.Plan(gpu=GPU, tp=4)], workers=1)
    assert c.metrics[0] is None and "no memory for the KV cache" in c.errors[0]
    assert c.metrics[1] is not None and c.errors[1] == ""
    assert "error" in c.to_dict()["plans"][0]


def test_plans_that_share_a_label_get_distinct_columns(specs):
    c = ax.compare(specs, [ax.Plan(gpu=GPU, tp=1), ax.Plan(gpu=GPU, tp=1, engine="vllm-v1")], workers=1)
    assert c.labels == ("dp1 tp1 pp1", "dp1 tp1 pp1 #2")


def test_two_workers_give_the_same_columns_as_one(specs):
    plans = [ax.Plan(gpu=GPU, tp=1), ax.Plan(gpu=GPU, tp=2)]
    two, one = ax.compare(specs, plans, workers=2), ax.compare(specs, plans, workers=1)
    assert [repr(dict(m or {})) for m in two.metrics] == [repr(dict(m or {})) for m in one.metrics]  # NaN alike


def test_compare_refuses_what_is_not_a_list_of_plans(specs):
    with pytest.raises(SpecError, match="give a list of at least one Plan"):
        ax.compare(specs, ax.Plan(gpu=GPU, tp=1))  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="needs 16 GPUs"):
        ax.compare(specs, [ax.Plan(gpu=GPU, tp=8, dp=2)])
