"""The cost model's predictions are one typed record (``Prediction``) whose fields are registered metrics, shared by
proposals, ranked plans, JSON and tables."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

import apex_opt as ax
from apex_opt.errors import SpecError
from apex_opt.metrics import METRICS
from apex_opt.planner.prediction import Prediction
from apex_opt.planner.result import RankedPlan
from apex_opt.schema.plan import Plan


def test_every_field_of_a_prediction_is_a_registered_metric():
    scalars = [f.name for f in dataclasses.fields(Prediction) if f.name != "traffic_shares"]
    assert [name for name in scalars if name not in METRICS] == []


def test_a_predicted_quantity_the_simulator_also_measures_has_the_simulated_name():
    p = Prediction(fits=True, tpot_mean_s=0.03, slo_attainment=0.95, goodput_per_gpu_req_s=0.2)
    assert {"tpot_mean_s", "slo_attainment", "goodput_per_gpu_req_s"} <= set(p)
    assert METRICS["slo_attainment"].group == "slo"  # the same metric a simulation reports


def test_a_prediction_reads_as_a_mapping_of_the_fields_it_has():
    p = Prediction(fits=True, gpus=4, ttft_mean_s=0.05)
    assert dict(p) == {"fits": True, "gpus": 4, "ttft_mean_s": 0.05}
    assert p.get("tpot_mean_s") is None and "tpot_mean_s" not in p
    with pytest.raises(KeyError):
        p["tpot_mean_s"]


def test_an_earlier_spelling_is_read_with_a_deprecation_warning():
    p = Prediction.of({"fits": True, "attainment": 0.9})
    assert p.slo_attainment == 0.9
    with pytest.warns(DeprecationWarning, match="'attainment' is now named 'slo_attainment'"):
        assert p["attainment"] == 0.9
    with pytest.warns(DeprecationWarning, match="'goodput_rps' is now named 'goodput_req_s'"):
        assert Prediction(goodput_req_s=2.0).goodput_rps == 2.0  # an earlier attribute name reads its field


def test_a_key_that_is_no_field_is_refused_naming_the_fields():
    with pytest.raises(SpecError, match="no metric 'speed' in a prediction; its fields are fits, gpus"):
        Prediction.of({"fits": True, "speed": 1.0})


def test_a_ranked_plan_given_a_dict_reads_it_into_a_prediction():
    entry = RankedPlan(Plan(tp=2, gpu="h100-sxm-80gb"), {"fits": True, "tpot_mean_s": 0.02})
    assert isinstance(entry.predicted, Prediction)
    assert entry.predicted.tpot_mean_s == 0.02


@pytest.fixture(scope="module")
def solved():
    specs = ax.load_specs("llama-3.1-8b", "h100x8", workload="synthetic:rate=2rps,requests=60,prompt=256,output=64,"
                          "seed=0", slo="ttft=500ms,tpot=100ms")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the planner itself reads no earlier spelling
        return ax.solve(specs, top_k=2, max_simulations=4, disaggregation="off")


def test_every_plan_a_solve_returns_carries_a_prediction_with_its_gpus_and_memory(solved):
    for entry in solved.plans:
        assert isinstance(entry.predicted, Prediction)
        assert entry.predicted.fits and entry.predicted.gpus == entry.plan.gpus
        assert entry.predicted.memory_headroom_bytes > 0 and entry.predicted.kv_tokens > 0


def test_the_json_of_a_solve_names_its_predictions_as_the_registry_does(solved):
    doc = json.loads(json.dumps(solved.to_dict()))
    for plan in doc["plans"]:
        assert set(plan["predicted"]) <= set(METRICS)
        assert "slo_attainment" in plan["predicted"] and "attainment" not in plan["predicted"]
