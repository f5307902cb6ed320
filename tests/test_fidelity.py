"""The simulator reproduces the measured dev runs (data/apex/fidelity_dev.csv) within the issue's 10%."""

import sys

import pytest

from apex_opt.experiments import read_experiments, read_measured
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from fidelity import DATA, predict  # noqa: E402

MEASURED = read_measured(DATA / "fidelity_dev.csv")
DEV = [e for e in read_experiments(DATA / "experiments.csv") if e.name in MEASURED]


def test_every_experiment_row_becomes_a_plan_with_its_engine_settings():
    rows = {e.name: e for e in read_experiments(DATA / "experiments.csv")}
    assert len(rows) == 58
    unchunked = rows["vllm_llama_lmsys_05_4DP2TP"].plan
    assert (unchunked.dp, unchunked.tp, unchunked.chunked_prefill, unchunked.max_num_batched_tokens,
            unchunked.custom_all_reduce, unchunked.gpu_memory_utilization) == (4, 2, False, 24272, False, 0.97)
    fp8 = rows["vllm_mistral_creation_05_8TP"].plan
    assert (fp8.weight_dtype, fp8.kv_dtype) == ("fp8", "fp8")
    sglang = rows["sglang_mixtral_lmsys_05_ep_8"]
    assert (sglang.engine, sglang.plan.ep, sglang.plan.cuda_graphs) == ("sglang-0.4", 8, False)


@pytest.mark.parametrize("experiment", DEV, ids=lambda e: e.name)
def test_mean_ttft_and_tpot_within_10_percent_of_the_measured_run(experiment):
    predicted = predict(experiment)
    measured = MEASURED[experiment.name]
    assert predicted["num_completed"] == int(experiment.row["n_requests"])
    for key in ("ttft_ms_mean", "tpot_ms"):
        assert predicted[key] == pytest.approx(measured[key], rel=0.10), key
