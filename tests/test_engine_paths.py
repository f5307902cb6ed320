"""Engine code paths that change the step cost (fp8 input quantisation, eager kernel inventories, the overlapped
scheduler in eager mode), where latencies are measured (engine or client), and saturation reporting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.catalog import get_engine, get_gpu, get_model
from apex_opt.cli.main import cli
from apex_opt.perf.replica import build_replica
from apex_opt.schema.plan import Plan
from apex_opt.sim.client import ClientPath, open_streams
from apex_opt.sim.cost import BatchShape
from apex_opt.sim.metrics import load_balance
from apex_opt.simulate import client_path
from apex_opt.specs import with_engine_settings

H100 = "h100-sxm-80gb"


def decode(batch: int, ctx: int = 600) -> BatchShape:
    return BatchShape(num_tokens=batch, num_seqs=batch, num_decodes=batch, decode_ctx_sum=batch * ctx,
                      prefill_pairs=0.0, has_prefill=False, max_ctx=ctx)


def prefill(tokens: int) -> BatchShape:
    return BatchShape(num_tokens=tokens, num_seqs=1, num_decodes=0, decode_ctx_sum=0,
                      prefill_pairs=tokens * (tokens + 1) / 2, has_prefill=True, max_ctx=tokens)


def stage(model: str, engine: str = "vllm-0.6", **plan) -> object:
    return build_replica(get_model(model), get_gpu(H100), Plan(gpu=H100, engine=engine, **plan),
                         get_engine(engine)).cost.stages[0]


def test_fp8_w8a8_quantises_every_gemm_input_with_three_kernels_in_vllm_0_6():
    bf16 = stage("mistral-large-2407", tp=8)
    fp8 = stage("mistral-large-2407", tp=8, weight_dtype="fp8")
    bf16.linear_time(8, True)
    fp8.linear_time(8, True)
    gemms = 4 * 88  # qkv, o, gate-up, down in each of 88 layers
    assert fp8.kernels - bf16.kernels == 3 * gemms


def test_fp8_input_quantisation_costs_gpu_time_in_a_cuda_graph_decode():
    fp8 = stage("mistral-large-2407", tp=8, weight_dtype="fp8")
    quant = sum(float(fp8._quant_time(op, np.array([16.0]))[0]) * fp8.layout.repeat[block]
                for block, ops in fp8.layout.blocks.items() for op in ops if fp8._quantizes(op))
    assert 1e-3 < quant < 4e-3  # two small memory-bound kernels per GEMM, 352 GEMMs


def test_an_fp8_kv_cache_moves_vllm_0_6_to_the_xformers_backend_with_more_kernels():
    bf16_kv = stage("llama-3.1-70b", tp=8)
    fp8_kv = stage("llama-3.1-70b", tp=8, kv_dtype="fp8")
    bf16_kv.linear_time(8, True)
    fp8_kv.linear_time(8, True)
    assert fp8_kv.kernels - bf16_kv.kernels == 2 * 80


def test_sglang_ep_moe_launches_more_triton_kernels_than_the_fused_moe_and_is_slower_eager():
    tp = stage("mixtral-8x22b", engine="sglang-0.4", tp=8, cuda_graphs=False, attention_backend="triton")
    ep = stage("mixtral-8x22b", engine="sglang-0.4", tp=8, ep=8, cuda_graphs=False, attention_backend="triton")
    assert ep.iteration_time(decode(16)) > 1.3 * tp.iteration_time(decode(16))


def test_eager_decode_is_launch_bound_and_cuda_graphs_remove_the_launches():
    eager = stage("mixtral-8x22b", engine="sglang-0.4", tp=8, cuda_graphs=False)
    graphs = stage("mixtral-8x22b", engine="sglang-0.4", tp=8)
    assert eager.iteration_time(decode(8)) > 1.5 * graphs.iteration_time(decode(8))


def test_an_overlapped_scheduler_hides_host_work_only_behind_gpu_work():
    eager = stage("mixtral-8x22b", engine="sglang-0.4", tp=8, cuda_graphs=False)
    b = decode(32)
    full_host = eager.host_time(b) / 0.1
    gpu = eager.linear_time(32, True)
    forward = max(gpu, eager.launch_s + full_host)
    assert eager._host_share(b, False) == pytest.approx(forward - max(gpu, eager.launch_s))
    ops = eager.operator_times(b)
    assert sum(o.time_s for o in ops) == pytest.approx(eager.iteration_time(b), rel=1e-9)


def test_vllm_v1_captures_graphs_up_to_twice_max_num_seqs_tokens():
    v1 = stage("llama-3.1-8b", engine="vllm-v1", max_num_seqs=128)
    assert v1.uses_graph(prefill(256)) and not v1.uses_graph(prefill(257))
    wide = stage("llama-3.1-8b", engine="vllm-v1", max_num_seqs=512)
    assert wide.uses_graph(prefill(512)) and not wide.uses_graph(prefill(513))


def test_the_client_path_adds_to_ttft_and_e2e_but_not_to_inter_token_gaps():
    specs = ax.load_specs(workload="synthetic:rate=1rps,requests=30,prompt=400,output=50,seed=3")
    plan = ax.Plan(gpu=H100, tp=4)
    engine_side = ax.simulate(specs, plan)
    client_side = ax.simulate(specs, plan, measured_at="client")
    assert (engine_side["measured_at"], client_side["measured_at"]) == ("engine", "client")
    path = client_path(specs.engine)
    delay = (path.delay(specs.workload.prompt_tokens) + path.output_lag_steps * engine_side.records.tpot_s
             + path.per_stream_s * open_streams(engine_side.records))
    assert client_side.records.ttft_s - engine_side.records.ttft_s == pytest.approx(delay)
    assert client_side.records.finish_s - engine_side.records.finish_s == pytest.approx(delay)
    assert client_side["tpot_ms"] == pytest.approx(engine_side["tpot_ms"])
    assert client_side["e2e_mean_s"] == pytest.approx(engine_side["e2e_mean_s"] + float(delay.mean()))


def test_measured_at_must_be_engine_or_client():
    specs = ax.load_specs(workload="synthetic:rate=1rps,requests=3,prompt=100,output=5,seed=0")
    with pytest.raises(ax.SpecError, match="measured_at='proxy'"):
        ax.simulate(specs, ax.Plan(gpu=H100, tp=4), measured_at="proxy")


def test_a_busier_frontend_delays_first_tokens_by_its_open_streams():
    specs = ax.load_specs("llama-3.1-8b", workload="synthetic:rate=20rps,requests=300,prompt=300,output=100,seed=1")
    rec = ax.simulate(specs, ax.Plan(gpu=H100, tp=1)).records
    quiet = ClientPath(request_s=0.001).view(rec)
    busy = ClientPath(request_s=0.001, per_stream_s=1e-4).view(rec)
    extra = busy.ttft_s - quiet.ttft_s
    assert extra == pytest.approx(1e-4 * open_streams(rec))
    assert extra.max() > extra.min() > 0


def test_a_client_path_delay_is_linear_in_the_prompt():
    path = ClientPath(request_s=0.01, per_prompt_token_s=1e-6, response_s=0.002)
    assert path.delay(np.array([0, 1000])) == pytest.approx([0.012, 0.013])


def test_an_overloaded_plan_is_reported_saturated_with_offered_and_served_rates():
    specs = ax.load_specs("llama-3.1-8b", workload="synthetic:rate=80rps,requests=3000,prompt=2000,output=200,seed=0")
    s = ax.simulate(specs, ax.Plan(gpu=H100, tp=1)).summary()
    assert s["saturated"] is True
    assert s["offered_rate_req_s"] == pytest.approx(80, rel=0.1)
    assert s["served_rate_req_s"] < 0.5 * s["offered_rate_req_s"]
    assert s["backlog_growth_req_s"] > 10


def test_a_lightly_loaded_plan_is_not_saturated():
    specs = ax.load_specs("llama-3.1-8b", workload="synthetic:rate=2rps,requests=400,prompt=500,output=100,seed=0")
    s = ax.simulate(specs, ax.Plan(gpu=H100, tp=1)).summary()
    assert s["saturated"] is False
    assert s["served_rate_req_s"] == pytest.approx(s["offered_rate_req_s"], rel=0.1)


def test_load_balance_of_a_single_request_is_undefined_not_saturated():
    specs = ax.load_specs("llama-3.1-8b", workload="synthetic:rate=2rps,requests=1,prompt=50,output=5,seed=0")
    s = ax.simulate(specs, ax.Plan(gpu=H100, tp=1)).summary()
    assert s["saturated"] is False and math.isnan(s["offered_rate_req_s"])
    assert load_balance(ax.simulate(specs, ax.Plan(gpu=H100, tp=1)).records)["saturated"] is False


def test_without_an_slo_attainment_is_absent_not_one_hundred_percent():
    specs = ax.load_specs("llama-3.1-8b", workload="synthetic:rate=2rps,requests=20,prompt=50,output=5,seed=0",
                          slo=None)
    s = ax.simulate(specs, ax.Plan(gpu=H100, tp=1)).summary()
    assert "slo_attainment" not in s and "goodput_req_s" not in s


def test_engine_settings_apply_to_every_plan_of_a_problem():
    specs = with_engine_settings(ax.load_specs(engine="sglang-0.4"), cuda_graphs=False, attention_backend="triton",
                                 measured_at="client")
    assert specs.engine.cuda_graphs.enabled is False
    assert specs.engine.eager_kernels.attention_backend == "triton"
    assert specs.slo.measured_at == "client" and specs.slo.describe().endswith("(at the client)")


def test_simulate_command_takes_engine_settings_and_the_measurement_point():
    args = ["simulate", "--model", "llama-3.1-8b", "--workload", "synthetic:rate=1rps,requests=20,prompt=200,output=20",
            "--format", "json"]
    graphs = json.loads(CliRunner().invoke(cli, args).output)
    eager = json.loads(CliRunner().invoke(cli, [*args, "--no-cuda-graphs", "--measured-at", "client"]).output)
    assert eager["measured_at"] == "client" and eager["plan"]["cuda_graphs"] is False
    assert eager["tpot_ms"] > graphs["tpot_ms"]
    assert "saturated" in eager and "offered_rate_req_s" in eager


def test_a_mooncake_trace_replays_with_prefix_caching_measured_at_the_client(tmp_path):
    out = tmp_path / "requests.jsonl"
    args = ["simulate", "--model", "llama-3.1-8b", "--engine", "vllm-0.6", "--workload", "mooncake-sample",
            "--prefix-caching", "--measured-at", "client", "--format", "json", "--requests-out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert s["measured_at"] == "client" and s["prefix_cache_hit_rate"] > 0.2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(r["cached_tokens"] for r in rows) > 0
    off = json.loads(CliRunner().invoke(cli, [*args[:7], "--no-prefix-caching", *args[8:]]).output)
    assert off["ttft_mean_s"] > 1.5 * s["ttft_mean_s"] and off.get("prefix_cache_hit_rate") is None


def test_an_unknown_attention_backend_is_refused_with_the_known_ones():
    specs = ax.load_specs(workload="synthetic:rate=1rps,requests=3,prompt=100,output=5,seed=0")
    with pytest.raises(ax.SpecError, match="attention_backend='magic'.*flash-attn, xformers"):
        ax.simulate(specs, ax.Plan(gpu=H100, tp=4, attention_backend="magic"))
