"""A simulation's summary is one typed record, :class:`apex_opt.sim.summary.SimSummary`, named as the metric
registry names it: one field per metric a simulation can report, read as a mapping of the fields it has, in the
order the simulator reports them."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

import apex_opt as ax
from apex_opt.errors import SpecError
from apex_opt.metrics import CLUSTER_MAXIMA, METRICS
from apex_opt.planner.result import RankedPlan
from apex_opt.planner.sampling import ReplicaSample, scaled_up
from apex_opt.schema.speculative import SpeculativeConfig
from apex_opt.sim.summary import DESCRIPTIVE, SimSummary

GPU = "h100-sxm-80gb"
SMALL = "synthetic:rate=4rps,requests=40,prompt=512,output=32,seed=1"
HINTS = typing.get_type_hints(SimSummary)


def _specs(workload: str = SMALL, slo: str | None = "ttft=500ms,tpot=50ms", cluster: str = "h100x8") -> ax.Specs:
    return ax.load_specs("llama-3.1-8b", cluster, workload=workload, slo=slo)


@pytest.fixture(scope="module")
def summary() -> SimSummary:
    return ax.simulate(_specs(), ax.Plan(gpu=GPU, tp=1)).summary()


# ------------------------------------------------------------------------------ one vocabulary, no drift
def test_its_fields_are_exactly_the_registered_metrics_outside_the_prediction_group():
    fields = {f.name for f in dataclasses.fields(SimSummary)}
    simulation_metrics = {name for name, m in METRICS.items() if m.group != "prediction"}
    assert fields - set(DESCRIPTIVE) == simulation_metrics
    assert DESCRIPTIVE == ("measured_at",) and "measured_at" not in METRICS


def test_each_field_is_typed_as_its_metric_reads():
    for name, metric in METRICS.items():
        if metric.group == "prediction":
            continue
        if metric.unit == "bool":
            expected = bool | None
        elif metric.fmt in ("d", ",d"):  # counts: shown as whole numbers
            expected = int | None
        else:
            expected = float | None
        assert HINTS[name] == expected, name
    assert HINTS["measured_at"] == str | None


def test_every_field_defaults_to_not_reported():
    empty = SimSummary()
    assert len(empty) == 0 and dict(empty) == {} and not empty
    assert all(getattr(empty, f.name) is None for f in dataclasses.fields(SimSummary))


# ------------------------------------------------------------------------------------ a real simulation
def test_a_simulation_summary_is_the_record_and_holds_only_registered_names(summary):
    assert isinstance(summary, SimSummary)
    assert set(summary) <= set(METRICS) | set(DESCRIPTIVE)
    assert summary.measured_at == "engine" and summary.slo_met is True
    assert isinstance(summary.num_requests, int) and summary.num_requests == 40
    assert summary.ttft_mean_s == summary["ttft_mean_s"] > 0
    assert summary.goodput_per_gpu_req_s == pytest.approx(summary.goodput_req_s / summary.gpus)


@pytest.mark.parametrize("case", ["slo", "no slo", "client", "prefix caching", "speculating", "disaggregated",
                                  "cut"])
def test_it_iterates_in_the_order_the_simulator_reports_so_json_keeps_its_key_order(case):
    specs, plan, kw = _specs(), ax.Plan(gpu=GPU, tp=1), {}
    if case == "no slo":
        specs = _specs(slo=None)
    elif case == "client":
        kw = {"measured_at": "client"}
    elif case == "prefix caching":
        kw = {"prefix_caching": True}
    elif case == "speculating":
        plan = ax.Plan(gpu=GPU, tp=1, engine="vllm-v1",
                       speculative=SpeculativeConfig(method="ngram", num_tokens=2, acceptance=0.5))
    elif case == "disaggregated":
        specs = _specs(cluster="h100x16")
        plan = ax.Deployment(plans=(ax.Plan(gpu=GPU, tp=1, role="prefill"), ax.Plan(gpu=GPU, tp=1, role="decode")))
    elif case == "cut":
        specs = _specs("synthetic:rate=60rps,requests=300,prompt=1024,output=128,seed=2", "ttft=300ms,tpot=40ms")
        kw = {"cut_early": True}
    result = ax.simulate(specs, plan, **kw)
    summary = result.summary()
    derived = [k for k in ("goodput_per_gpu_req_s",) if k in summary and k not in result.summary_values]
    assert list(summary) == [*result.summary_values, *derived]
    assert list(json.loads(json.dumps(dict(summary), default=str))) == list(summary)
    marker = {"client": "measured_at", "prefix caching": "prefix_cache_hit_rate", "speculating":
              "spec_tokens_per_step", "disaggregated": "num_kv_transfers", "cut": "cut_at_s"}.get(case)
    assert marker is None or marker in summary
    assert ("slo_met" in summary) == (case != "no slo")


# ------------------------------------------------------------------------------------------- as a mapping
def test_it_reads_as_the_dict_it_replaces(summary):
    plain = dict(summary)
    assert summary == plain and plain == summary  # compares as a mapping, both ways
    assert summary.get("tpot_mean_s") == plain["tpot_mean_s"] and summary.get("cut_at_s") is None
    assert "cut_at_s" not in summary and "kv_transfer_bytes" not in summary and "ttft_p99_s" in summary
    assert len(summary) == len(plain) and {**summary} == plain
    with pytest.raises(KeyError):
        summary["cut_at_s"]  # a field the run did not report is absent, not None
    with pytest.raises(KeyError):
        summary["speed"]


def test_earlier_spellings_are_read_with_a_deprecation_warning_and_never_held(summary):
    with pytest.warns(DeprecationWarning, match="'goodput_rps' is now named 'goodput_req_s'"):
        assert summary["goodput_rps"] == summary.goodput_req_s
    with pytest.warns(DeprecationWarning, match="cost_usd"):
        assert summary.cost == summary.cost_usd
    with pytest.warns(DeprecationWarning):
        assert summary.get("energy_per_token_j") == summary.energy_per_output_token_j
    assert "cost" not in summary and "goodput_rps" not in summary
    with pytest.raises(AttributeError, match="no metric 'speed'"):
        summary.speed  # noqa: B018


# ------------------------------------------------------------------------------- built from a mapping
def test_a_key_that_is_no_metric_is_refused_with_its_name():
    with pytest.raises(SpecError, match="no metric 'speed' in a simulation summary"):
        SimSummary.of({"ttft_mean_s": 0.1, "speed": 3})
    with pytest.raises(SpecError, match="'plan'"):
        RankedPlan(ax.Plan(gpu=GPU, tp=1), {"fits": True}, simulated={"plan": "tp1"})


def test_earlier_spellings_are_read_into_their_registered_names_and_a_registered_name_wins():
    s = SimSummary.of({"goodput_rps": 2.0, "cost": 1.0, "cost_usd": 3.0})
    assert dict(s) == {"goodput_req_s": 2.0, "cost_usd": 3.0}
    ranked = RankedPlan(ax.Plan(gpu=GPU, tp=1), {"fits": True}, simulated={"attainment": 0.95, "gpus": 1})
    assert isinstance(ranked.simulated, SimSummary) and ranked.simulated.slo_attainment == 0.95


# ---------------------------------------------------------------------------------------------- changes
def test_it_is_frozen_and_changes_make_a_new_record(summary):
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.ttft_mean_s = 0.0  # type: ignore[misc]
    faster = summary.replace(ttft_mean_s=0.001, cut_at_s=None)
    assert faster.ttft_mean_s == 0.001 and summary.ttft_mean_s != 0.001
    assert "ttft_mean_s" in faster and list(faster) == list(summary)


def test_derived_metrics_are_filled_in_only_where_missing():
    s = SimSummary(goodput_req_s=3.0, cost_usd=2.0, output_tokens=1_000_000)
    d = s.with_derived(gpus=4)
    assert (d.gpus, d.goodput_per_gpu_req_s, d.cost_per_mtok_usd) == (4, 0.75, 2.0)
    assert s.gpus is None  # the original is unchanged
    assert d.with_derived(gpus=8).gpus == 4  # a reported value wins over the plan's


def test_a_sampled_summary_scales_up_into_a_record_that_keeps_counts_whole(summary):
    up = scaled_up(summary, ReplicaSample(replicas=1, of=3, index=()))
    assert isinstance(up, SimSummary)
    assert up.num_requests == 3 * summary.num_requests and isinstance(up.num_requests, int)
    assert up.ttft_p90_s == summary.ttft_p90_s and up.replicas_simulated == 1
    assert not set(CLUSTER_MAXIMA) & set(up) and set(CLUSTER_MAXIMA) <= set(summary)
