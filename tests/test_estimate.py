"""`apex-opt estimate`: where one iteration's time goes, operator by operator, and whether the plan fits."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from apex_opt.catalog import get_engine, get_gpu, get_model
from apex_opt.cli.main import cli
from apex_opt.perf.replica import build_replica
from apex_opt.schema.plan import Plan
from apex_opt.sim.cost import BatchShape

PREFILL = BatchShape(num_tokens=2048, num_seqs=2, num_decodes=0, decode_ctx_sum=0, prefill_pairs=2 * 1024 * 1025 / 2,
                     has_prefill=True)
DECODE = BatchShape(num_tokens=48, num_seqs=48, num_decodes=48, decode_ctx_sum=48 * 900, prefill_pairs=0.0,
                    has_prefill=False)
MIXED = BatchShape(num_tokens=560, num_seqs=49, num_decodes=48, decode_ctx_sum=48 * 900,
                   prefill_pairs=512 * 257.0, has_prefill=True)


@pytest.mark.parametrize("model,plan", [
    ("llama-3.1-70b", {"tp": 4}),
    ("llama-3.1-70b", {"tp": 2, "pp": 2}),
    ("mixtral-8x7b", {"tp": 4, "ep": 4, "moe_tp": 1}),
    ("deepseek-v3", {"tp": 8, "weight_dtype": "fp8", "gpu": "h200-sxm-141gb"}),
    ("llama-3.1-8b", {"tp": 1, "cuda_graphs": False}),
])
@pytest.mark.parametrize("shape", [PREFILL, DECODE, MIXED], ids=["prefill", "decode", "mixed"])
def test_operator_times_add_up_to_the_iteration_time(model, plan, shape):
    plan = dict(plan)
    gpu = plan.pop("gpu", "h100-sxm-80gb")
    replica = build_replica(get_model(model), get_gpu(gpu), Plan(gpu=gpu, **plan), get_engine("vllm-0.6"))
    for stage in replica.cost.stages:
        ops = stage.operator_times(shape)
        assert sum(o.time_s for o in ops) == pytest.approx(stage.iteration_time(shape), rel=1e-9)
        assert all(o.time_s >= 0 and o.repeat >= 1 for o in ops)
        names = {o.name for o in ops}
        assert "attention" in names
        assert ("host_overhead" in names) == stage.layout.is_first
        assert ("lm_head+sampler" in names) == stage.layout.is_last


def test_cli_json_breakdown_matches_the_iteration_and_names_the_memory_fit():
    out = CliRunner().invoke(cli, ["estimate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--tp", "8",
                                   "--batch", "32", "--context", "1024", "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    for kind in ("prefill", "decode"):
        it = data[kind]
        assert sum(o["time_s"] for o in it["ops"]) == pytest.approx(it["time_s"], rel=1e-9)
        assert all(0.0 <= o["roofline_share"] <= 1.0 + 1e-9 for o in it["ops"])
    assert data["memory"]["fits"] is True
    small = CliRunner().invoke(cli, ["estimate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--tp", "1",
                                     "--format", "json"])
    assert small.exit_code == 0
    mem = json.loads(small.output)["memory"]
    assert mem["fits"] is False and mem["shortfall_bytes"] > 60 * 2**30
