"""The simulator reproduces every measured development run within 10% (the calibration's fit, pinned).

APEX runs (vLLM 0.6 and SGLang 0.4, engine-side metrics): mean TTFT and TPOT; for SGLang the end-to-end mean,
the only exact figure of that row (its TTFT and TPOT were back-computed, data/apex/README.md). vLLM V1 runs
(client-side metrics, shared-prefix traffic, prefix caching on): mean TTFT and TPOT of each load stage.
"""

import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # experiments.py and fidelity.py live with the benchmarks
from experiments import read_experiments, read_measured
from fidelity import DATA, predict, predict_v1, read_v1_runs

MEASURED = read_measured(DATA / "fidelity_dev.csv")
DEV = [e for e in read_experiments(DATA / "experiments.csv") if e.name in MEASURED]
V1_SERVERS = read_v1_runs()


def test_every_experiment_row_becomes_a_plan_with_its_engine_settings():
    rows = {e.name: e for e in read_experiments(DATA / "experiments.csv")}
    assert len(rows) == 58
    unchunked = rows["vllm_llama_lmsys_05_4DP2TP"].plan
    assert (unchunked.dp, unchunked.tp, unchunked.chunked_prefill, unchunked.max_num_batched_tokens,
            unchunked.custom_all_reduce, unchunked.gpu_memory_utilization) == (4, 2, False, 24272, False, 0.97)
    fp8 = rows["vllm_mistral_creation_05_8TP"].plan
    assert (fp8.weight_dtype, fp8.kv_dtype) == ("fp8", "fp8")
    sglang = rows["sglang_mixtral_lmsys_05_ep_8"]
    assert (sglang.engine, sglang.plan.ep, sglang.plan.cuda_graphs, sglang.plan.attention_backend) == (
        "sglang-0.4", 8, False, "triton")


def test_the_development_set_covers_fp8_sglang_and_vllm_v1():
    assert len(DEV) == 6
    assert {e.engine for e in DEV} == {"vllm-0.6", "sglang-0.4"}
    assert any(e.plan.weight_dtype == "fp8" for e in DEV)
    assert sum(len(rows) for rows in V1_SERVERS.values()) == 6


@pytest.mark.parametrize("experiment", DEV, ids=lambda e: e.name)
def test_apex_run_means_within_10_percent_of_the_measured_run(experiment):
    predicted = predict(experiment)
    measured = MEASURED[experiment.name]
    assert predicted["num_completed"] == int(experiment.row["n_requests"])
    keys = ("e2e_s_mean",) if experiment.engine == "sglang-0.4" else ("ttft_ms_mean", "tpot_ms")
    for key in keys:
        assert predicted[key] == pytest.approx(measured[key], rel=0.10), key


@pytest.mark.parametrize("server", sorted(V1_SERVERS), ids=lambda s: s.split("-", 2)[-1])
def test_vllm_v1_stage_means_at_the_client_within_10_percent(server):
    rows = V1_SERVERS[server]
    predicted = predict_v1(rows)
    for row in rows:
        p = predicted[row["run"]]
        assert p["prefix_cache_hit_rate"] > 0.9  # ~45 distinct prompts recur over thousands of requests
        assert not p["saturated"]
        for key in ("ttft_ms_mean", "tpot_ms"):
            assert p[key] == pytest.approx(float(row[key]), rel=0.10), (row["run"], key)
