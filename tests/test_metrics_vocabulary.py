"""One vocabulary: every command and library result names a metric as the registry does, in SI units, and the
reference page docs/metrics.md is generated from the registry."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.cli.main import cli
from apex_opt.metrics import FORMERLY, HIGHER, LOWER, METRICS, MetricValues, markdown
from apex_opt.planner.model import UNITS
from apex_opt.planner.objectives import OBJECTIVE_NAMES, objective_function

REPO = Path(__file__).resolve().parent.parent
SMALL = "synthetic:rate=4rps,requests=20,prompt=256,output=32,seed=0"
PROBLEM = ["--model", "llama-3.1-8b", "--workload", SMALL, "--slo", "ttft=500ms,tpot=50ms"]
#: what a unit's name ends with
SUFFIX = {"s": "_s", "req/s": "_req_s", "req/s per GPU": "_req_s", "tok/s": "_tok_s", "J": "_j", "J/token": "_j",
          "USD": "_usd", "USD/h": "_usd", "USD/Mtok": "_usd"}
#: keys of the JSON documents that describe the problem or the search, not a measured quantity
DESCRIPTIVE = {"plan", "label", "model", "cluster", "workload", "engine", "slo", "calibration", "notes", "error",
               "measured_at"}


def invoke_json(*args: str) -> dict:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def simulated() -> dict:
    return invoke_json("simulate", *PROBLEM, "--tp", "1", "--format", "json")


@pytest.fixture(scope="module")
def solved() -> dict:
    return invoke_json("solve", *PROBLEM, "--gpu", "h100-sxm-80gb", "--nodes", "1", "--gpus-per-node", "2",
                       "--top-k", "1", "--workers", "1", "--disaggregation", "off", "--format", "json")


def numbers(d: dict) -> set[str]:
    return {k for k, v in d.items() if isinstance(v, (int, float)) or (v is None and k not in DESCRIPTIVE)}


# ------------------------------------------------------------------------------------------------ the registry
def test_docs_metrics_md_is_generated_from_the_registry():
    page = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert page == markdown(), "docs/metrics.md is out of date: run python benchmarks/metrics_doc.py --write"


def test_every_metric_name_ends_with_its_unit_and_says_which_way_is_better():
    for m in METRICS.values():
        if m.unit in SUFFIX and m.group != "reference":  # the reference data's own aggregates keep its names
            assert m.name.endswith(SUFFIX[m.unit]), (m.name, m.unit)
        assert m.sense in (LOWER, HIGHER, 0) and m.meaning and m.label


def test_each_objective_optimises_one_registered_metric_at_the_planners_scale():
    for objective, name in OBJECTIVE_NAMES.items():
        m = METRICS[name]
        assert m.objective == objective and m.solver is not None
        assert objective_function(objective).metric == name
        assert objective_function(objective).sense == m.sense == (LOWER if objective.startswith("min-") else HIGHER)
    assert set(OBJECTIVE_NAMES) == {m.objective for m in METRICS.values() if m.objective}
    scale = {m.solver[0]: m.solver[1] for m in METRICS.values() if m.solver}
    assert scale["energy_per_token"] == UNITS["energy"] == 1e-6  # the planner counts microjoules
    assert scale["cost_per_mtok"] == UNITS["cost"] and scale["goodput_per_gpu"] == UNITS["rate"]
    assert scale["throughput"] == UNITS["throughput"] and scale["tpot_ns"] == UNITS["time"]


def test_an_objective_is_named_by_its_registered_metric():
    assert ax.Minimize("energy_per_output_token_j").metric == "energy_per_output_token_j"
    assert ax.Maximize("goodput_per_gpu_req_s").metric == "goodput_per_gpu_req_s"
    assert ax.Minimize("energy_per_output_token_j").tie_breaks == ("tpot_mean_s", "ttft_mean_s")


# -------------------------------------------------------------------------------------- the commands agree
def test_simulate_and_solve_json_name_every_shared_metric_alike(simulated, solved):
    sim_keys = numbers(simulated)
    solve_keys = numbers(solved["plans"][0]["simulated"])
    assert sim_keys == solve_keys  # the same summary, under the same names
    for key in ("goodput_req_s", "goodput_per_gpu_req_s", "throughput_output_tok_s", "energy_per_output_token_j",
                "cost_usd", "cost_per_mtok_usd", "ttft_p99_s", "tpot_mean_s", "gpus"):
        assert key in sim_keys and key in solve_keys, key
    predicted = set(solved["plans"][0]["predicted"])
    assert {"ttft_mean_s", "tpot_mean_s", "goodput_req_s", "goodput_per_gpu_req_s", "capacity_req_s",
            "throughput_output_tok_s", "energy_per_output_token_j", "cost_per_mtok_usd"} <= predicted
    assert "rate_req_s" in solved["problem"]


def test_every_number_simulate_reports_is_a_registered_metric(simulated):
    unregistered = sorted(numbers(simulated) - set(METRICS))
    assert unregistered == []


def test_no_json_document_uses_an_earlier_spelling(simulated, solved):
    plan = solved["plans"][0]
    for where, keys in (("simulate", simulated), ("solve simulated", plan["simulated"]),
                        ("solve predicted", plan["predicted"]), ("solve problem", solved["problem"])):
        assert not set(keys) & set(FORMERLY), where


def test_capacity_json_names_its_metrics_as_the_registry():
    d = invoke_json("capacity", *PROBLEM, "--tp", "1", "--precision", "0.5", "--format", "json")
    assert {"capacity_req_s", "per_replica_capacity_req_s", "cost_per_hour_usd", "cost_per_mtok_usd",
            "goodput_req_s", "goodput_per_gpu_req_s", "energy_per_output_token_j"} <= set(d)
    extra = {"upper_req_s", "precision", "stopped", "simulations", "replicas_per_plan", "target", "trials"}
    assert numbers(d) - extra <= set(METRICS)
    assert not set(d) & set(FORMERLY)


def test_simulate_prints_cost_per_million_output_tokens():
    result = CliRunner().invoke(cli, ["simulate", *PROBLEM, "--tp", "1"])
    assert result.exit_code == 0, result.output
    assert "per million output tokens" in result.output


# ------------------------------------------------------------------------- earlier names, for one release
def test_earlier_names_stay_readable_for_one_release_with_a_deprecation_warning():
    specs = ax.load_specs("llama-3.1-8b", "h100x8", workload=SMALL, slo="ttft=500ms,tpot=50ms")
    result = ax.simulate(specs, ax.Plan(gpu="h100-sxm-80gb", tp=1))
    summary = result.summary()
    with pytest.warns(DeprecationWarning, match="'cost' is now named 'cost_usd'"):
        assert summary["cost"] == summary["cost_usd"]
    with pytest.warns(DeprecationWarning, match="goodput_req_s"):
        assert result["goodput_rps"] == summary["goodput_req_s"]
    with pytest.warns(DeprecationWarning):
        assert summary.get("energy_per_token_j") == summary["energy_per_output_token_j"]
    assert "cost" not in summary and "goodput_rps" not in summary  # read, never written


def test_metric_values_keep_attribute_access_and_refuse_unknown_names():
    v = MetricValues({"ttft_p99_s": 0.2, "num_preemptions": 3})
    assert v.ttft_p99_s == 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert v.preemptions == 3
    with pytest.raises(AttributeError, match="no metric 'tpot_p99_s'"):
        v.tpot_p99_s  # noqa: B018
    with pytest.raises(KeyError):
        v["goodput_rps"]  # an earlier name of a metric that is not there
