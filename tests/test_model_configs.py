"""What apex-opt reads from a model's config.json: the checkpoint's quantization, shared experts, interleaved MoE
layers, sliding-window layers, and which configs it refuses (issue 12)."""

import pytest
import yaml
from click.testing import CliRunner

from apex_opt import catalog, planner
from apex_opt.catalog import get_engine, get_gpu, get_model
from apex_opt.cli.main import cli
from apex_opt.errors import SpecError
from apex_opt.ir.parallel import stage_layouts
from apex_opt.perf.memory import stage_weight_bytes
from apex_opt.perf.replica import build_replica
from apex_opt.perf.weights import math_dtype, weight_formats
from apex_opt.planner.space import SearchOptions, weight_dtypes
from apex_opt.schema.model import model_from_hf_config
from apex_opt.schema.plan import Plan
from apex_opt.sim.cost import BatchShape
from apex_opt.specs import load_specs

GiB = 2**30
PUBLISHED = yaml.safe_load((catalog.specs_dir() / "models" / "published_params.yaml").read_text())
NEW_MODELS = ["gpt-oss-20b", "gpt-oss-120b", "llama-4-scout", "llama-4-maverick", "qwen3-32b", "qwen3-30b-a3b",
              "glm-4.5", "glm-4.5-air", "deepseek-v3.1"]
#: a small dense GQA config with every shape field spelled out
TINY = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
        "head_dim": 32, "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 4096}


def weights_per_gpu(name: str, gpu: str = "h100-sxm-80gb", **plan: object) -> float:
    model = get_model(name)
    p = Plan(gpu=gpu, **plan)
    return max(stage_weight_bytes(layout, model, p, get_gpu(gpu)) for layout in stage_layouts(model, p))


# --- quantization read from the checkpoint ---------------------------------------------------------------------
def test_gpt_oss_120b_mxfp4_experts_fit_one_h100():
    m = get_model("gpt-oss-120b")
    q = m.checkpoint_weights
    assert (q.method, q.dtype, q.scope, q.group_size, q.scale_bits) == ("mxfp4", "fp4", "experts", 32, 8)
    # experts at 4.25 bits (114.7B), attention, router, embedding and head in bf16 (2.1B): 60.7 GiB, not 218 GiB
    assert weights_per_gpu("gpt-oss-120b") / GiB == pytest.approx(60.7, abs=0.2)
    replica = build_replica(m, get_gpu("h100-sxm-80gb"), Plan(gpu="h100-sxm-80gb", engine="vllm-v1"),
                            get_engine("vllm-v1"))
    assert replica.memory.fits and replica.memory.kv_tokens > 32_768  # room for KV after 60.7 GiB of weights


def test_solve_plans_gpt_oss_120b_on_one_h100_served_as_stored():
    specs = load_specs("gpt-oss-120b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=8, engine="vllm-v1",
                       workload="synthetic:rate=2rps,requests=40,prompt=1024,output=256,seed=0",
                       slo="ttft=2s,tpot=60ms")
    best = planner.solve(specs, objective="min-gpus", top_k=1, workers=1, disaggregation="off").plans[0]
    assert best.verified and best.plan.gpus == 1
    assert best.plan.weight_dtype == "bf16"  # the only choice: fp4 experts as stored, the rest bf16


def test_only_the_experts_of_gpt_oss_are_fp4_and_attention_stays_bf16():
    f = weight_formats(get_model("gpt-oss-120b"), Plan(gpu="h100-sxm-80gb"), get_gpu("h100-sxm-80gb"))
    assert (f["experts"].stored, f["experts"].bytes_per_weight) == ("fp4", 0.53125)
    assert (f["gemm"].stored, f["gemm"].bytes_per_weight) == ("bf16", 2.0)


def test_fp4_math_only_on_gpus_with_an_fp4_peak():
    m = get_model("gpt-oss-120b")
    b200, h100 = get_gpu("b200"), get_gpu("h100-sxm-80gb")
    assert "fp4" in b200.peak_flops and "fp4" not in h100.peak_flops
    assert weight_formats(m, Plan(gpu="b200"), b200)["experts"].math == "fp4"
    assert weight_formats(m, Plan(gpu="h100-sxm-80gb"), h100)["experts"].math == "bf16"  # dequantized, as engines do
    assert math_dtype("fp8", h100) == "fp8" and math_dtype("fp8", get_gpu("a100-sxm-80gb")) == "bf16"
    # the step cost follows: the same fp4 expert bytes, but the B200 multiplies at its fp4 peak
    replica = build_replica(m, b200, Plan(gpu="b200"), get_engine("vllm-v1"))
    assert replica.cost.stages[0].precision.math == "fp4"


def test_deepseek_v3_fp8_blocks_are_sized_at_one_byte_plus_block_scales():
    q = get_model("deepseek-v3").checkpoint_weights
    assert (q.dtype, q.group_size, q.scale_bits, q.scope) == ("fp8", 128 * 128, 32, "linear")
    assert q.bytes_per_weight == pytest.approx(1 + 4 / 16384)
    # 671B weights in fp8: 79.3 GiB per GPU at tp=8, more than an H100's usable 79.2 GiB (served on H200, B200)
    assert weights_per_gpu("deepseek-v3", tp=8) / GiB == pytest.approx(79.3, abs=0.5)


@pytest.mark.parametrize(("qc", "dtype", "bytes_per_weight", "scope", "acts"), [
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "fp8", 1.0, "linear", "fp8"),
    ({"quant_method": "fbgemm_fp8", "modules_to_not_convert": ["language_model.model.layers.0.self_attn"]}, "fp8",
     1.0, "experts", "fp8"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}, "int4",
     (4 + 20 / 128) / 8, "linear", None),
    ({"quant_method": "gptq", "bits": 4, "group_size": -1, "desc_act": False}, "int4", 0.5, "linear", None),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
      "exclude_modules": ["lm_head", "model.layers.*.self_attn*"]}, "fp4", 0.5625, "experts", "fp4"),
    ({"quant_method": "compressed-tensors", "format": "int-quantized", "ignore": ["lm_head"],
      "config_groups": {"group_0": {"targets": ["Linear"],
                                    "weights": {"num_bits": 8, "type": "int", "strategy": "channel"},
                                    "input_activations": {"num_bits": 8, "type": "int", "dynamic": True}}}},
     "int8", 1.0, "linear", "int8"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"group_0": {"targets": ["Linear"],
                                    "weights": {"num_bits": 4, "type": "int", "strategy": "group",
                                                "group_size": 128}}}}, "int4", (4 + 16 / 128) / 8, "linear", None),
])
def test_each_quantization_config_gives_its_bytes_per_weight_scales_included(qc, dtype, bytes_per_weight, scope,
                                                                              acts):
    q = model_from_hf_config({**TINY, "model_type": "llama", "quantization_config": qc}, name="q").checkpoint_weights
    assert (q.dtype, q.scope, q.activations) == (dtype, scope, acts)
    assert q.bytes_per_weight == pytest.approx(bytes_per_weight)


def test_an_unknown_quant_method_is_refused_naming_it():
    with pytest.raises(SpecError, match="quant_method is 'bitsandbytes'.*supported: fp8, fbgemm_fp8, mxfp4"):
        model_from_hf_config({**TINY, "model_type": "llama", "quantization_config": {"quant_method": "bitsandbytes"}},
                             name="q")


def test_int4_checkpoint_math_is_bf16_even_where_int8_has_a_peak():
    m = model_from_hf_config({**TINY, "model_type": "llama",
                              "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}, name="q")
    f = weight_formats(m, Plan(gpu="h100-sxm-80gb"), get_gpu("h100-sxm-80gb"))
    assert (f["gemm"].stored, f["gemm"].math) == ("int4", "bf16")


# --- architectures ------------------------------------------------------------------------------------------------
def test_llama_4_scout_counts_its_shared_expert_in_active_parameters():
    m = get_model("llama-4-scout")
    assert (m.moe.num_experts, m.moe.top_k, m.moe.num_shared_experts) == (16, 1, 1)
    assert m.moe.shared_intermediate_size == m.moe.expert_intermediate_size == 8192
    assert m.active_params / 1e9 == pytest.approx(17.0, rel=0.015)  # without the shared expert: 11.1B
    assert m.hf_repo == "meta-llama/Llama-4-Scout-17B-16E-Instruct"


def test_llama_4_maverick_alternates_dense_and_moe_layers():
    m = get_model("llama-4-maverick")
    assert m.moe_layers == tuple(range(1, 48, 2))
    assert m.intermediate_size == 16384  # intermediate_size_mlp, the dense layers' width


def test_gpt_oss_alternates_sliding_and_full_attention_with_sinks():
    m = get_model("gpt-oss-20b")
    assert m.sliding_window == 128 and m.attention_sinks
    assert m.sliding_layers == tuple(range(0, 24, 2))


def test_a_sliding_window_layer_holds_at_most_window_tokens_of_kv():
    m = get_model("gpt-oss-120b")
    per_layer = m.kv_elems_per_token_per_layer(tp=1)
    full, sliding = 18, 18
    assert m.kv_elems_per_sequence(100) == 36 * 100 * per_layer  # shorter than the window: every layer holds all
    assert m.kv_elems_per_sequence(32_768) == (full * 32_768 + sliding * 128) * per_layer


def test_the_kv_cache_reserves_a_window_per_sequence_for_sliding_layers_when_that_holds_more_tokens():
    m = get_model("gpt-oss-120b")
    per_layer = m.kv_elems_per_token_per_layer(1) * 2.0

    def stage(max_num_seqs):
        plan = Plan(gpu="h100-sxm-80gb", engine="vllm-v1", max_num_seqs=max_num_seqs)
        return build_replica(m, get_gpu("h100-sxm-80gb"), plan, get_engine("vllm-v1")).memory.stages[0]

    few, many = stage(64), stage(1024)
    assert few.kv_bytes_per_token == 18 * per_layer  # full layers per token, 64 x 128 tokens reserved for 18 layers
    assert many.kv_bytes_per_token == 36 * per_layer  # 1024 reserved windows would hold fewer tokens
    assert few.kv_tokens > many.kv_tokens


def test_sliding_window_attention_caps_the_attention_pairs_beyond_the_window():
    m = get_model("gpt-oss-20b")
    dense_twin = m.model_copy(update={"sliding_window": None, "sliding_layers": ()})
    gpu, engine, plan = get_gpu("h100-sxm-80gb"), get_engine("vllm-v1"), Plan(gpu="h100-sxm-80gb", engine="vllm-v1")
    stages = [build_replica(x, gpu, plan, engine).cost.stages[0] for x in (m, dense_twin)]

    def prefill(n):
        return BatchShape(num_tokens=n, num_seqs=1, num_decodes=0, decode_ctx_sum=0, prefill_pairs=n * (n + 1) / 2,
                          has_prefill=True, max_ctx=n)

    long_times = [s.iteration_time(prefill(8192)) for s in stages]
    assert long_times[0] < long_times[1]
    # within the window every layer sees the whole context: the same cost as full attention, exactly
    assert stages[0].iteration_time(prefill(100)) == pytest.approx(stages[1].iteration_time(prefill(100)))
    assert 128 in stages[0].ctx_breakpoints  # the simulator's closed-form decode steps stop at the window


def test_attention_sinks_cost_marginally_more_and_leave_the_kv_cache_unchanged():
    m = get_model("gpt-oss-20b")
    plain = m.model_copy(update={"attention_sinks": False})
    gpu, engine, plan = get_gpu("h100-sxm-80gb"), get_engine("vllm-v1"), Plan(gpu="h100-sxm-80gb", engine="vllm-v1")
    with_sinks, without = (build_replica(x, gpu, plan, engine) for x in (m, plain))
    a, b = with_sinks.cost.stages[0], without.cost.stages[0]
    decode = BatchShape(num_tokens=64, num_seqs=64, num_decodes=64, decode_ctx_sum=64 * 2048, prefill_pairs=0.0,
                        has_prefill=False, max_ctx=2048)
    prefill = BatchShape(num_tokens=2048, num_seqs=1, num_decodes=0, decode_ctx_sum=0, prefill_pairs=2048 * 2049 / 2,
                         has_prefill=True, max_ctx=2048)
    for batch in (decode, prefill):
        assert b.iteration_time(batch) < a.iteration_time(batch) < b.iteration_time(batch) * (1 + 1e-6)
        # one exponential and one addition per query token, head and layer
        assert a.flops(batch) - b.flops(batch) == pytest.approx(2 * m.num_heads * m.num_layers * batch.num_tokens)
        assert a.bytes(batch) == b.bytes(batch)
        sinks = [op for op in a.operator_times(batch) if op.name == "attention.sinks"]
        assert len(sinks) == 1 and not any(op.name == "attention.sinks" for op in b.operator_times(batch))
        assert sum(op.time_s for op in a.operator_times(batch)) == pytest.approx(a.iteration_time(batch))
    # token-linear: the closed-form decode step stays exact
    c0, c1 = a.decode_coeffs(64, max_ctx=2048)
    assert c0 + c1 * decode.decode_ctx_sum == pytest.approx(a.iteration_time(decode))
    # the KV cache is untouched: the same bytes per token and blocks
    assert m.kv_elems_per_token_per_layer(1) == plain.kv_elems_per_token_per_layer(1)
    for x, y in zip(with_sinks.memory.stages, without.memory.stages, strict=True):
        assert (x.kv_bytes_per_token, x.kv_tokens) == (y.kv_bytes_per_token, y.kv_tokens)


def test_sinks_are_read_for_gpt_oss_configs_only():
    assert model_from_hf_config({**TINY, "model_type": "gpt_oss", "num_local_experts": 4,
                                 "num_experts_per_tok": 2}, name="gpt-oss-tiny").attention_sinks
    assert not model_from_hf_config({**TINY, "model_type": "llama"}, name="llama-tiny").attention_sinks


def test_gemma_3_interleaves_five_sliding_layers_per_global_one():
    cfg = {**TINY, "model_type": "gemma3_text", "num_hidden_layers": 12, "sliding_window": 1024,
           "sliding_window_pattern": 6}
    m = model_from_hf_config(cfg, name="g")
    assert m.sliding_window == 1024 and m.sliding_layers == (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)


def test_a_layer_types_list_without_a_sliding_window_is_refused_naming_the_field():
    cfg = {**TINY, "model_type": "gpt_oss", "layer_types": ["sliding_attention", "full_attention"] * 2}
    with pytest.raises(SpecError, match="no field 'sliding_window'"):
        model_from_hf_config(cfg, name="x")


def test_quantization_fp4_and_int8_need_the_gpus_tensor_cores():
    h100, b200 = get_gpu("h100-sxm-80gb"), get_gpu("b200")
    assert weight_dtypes(SearchOptions(quantization="fp4"), b200) == ("bf16", "fp4")
    assert weight_dtypes(SearchOptions(quantization="int8"), h100) == ("bf16", "int8")
    with pytest.raises(SpecError, match="quantization=fp4: h100-sxm-80gb has no fp4 tensor cores"):
        weight_dtypes(SearchOptions(quantization="fp4"), h100)
    # a checkpoint quantized already is served as stored: one choice, whatever --quantization allows
    assert weight_dtypes(SearchOptions(quantization="any"), h100, get_model("deepseek-v3")) == ("fp8",)
    assert weight_dtypes(SearchOptions(quantization="any"), h100, get_model("gpt-oss-120b")) == ("bf16",)


def test_int8_on_b300_is_not_rated_so_its_weights_are_dequantized_to_bf16_math():
    b300, b200 = get_gpu("b300"), get_gpu("b200")
    assert "int8" not in b300.peak_flops and "NOT RATED" in b300.sources["int8"]
    assert "bf16" in b300.sources["int8"]  # the spec says what the planner does instead
    # the search refuses to quantize to int8 on it ...
    with pytest.raises(SpecError, match="quantization=int8: b300 has no int8 tensor cores"):
        weight_dtypes(SearchOptions(quantization="int8"), b300)
    # ... and an int8 plan given directly keeps 1-byte weights but multiplies in bf16, at the bf16 peak
    model, engine = get_model("llama-3.1-8b"), get_engine("vllm-v1")
    fmt = weight_formats(model, Plan(gpu="b300", weight_dtype="int8"), b300)["gemm"]
    assert (fmt.stored, fmt.bytes_per_weight, fmt.math) == ("int8", 1.0, "bf16")
    assert math_dtype("int8", b200) == "int8"  # where int8 is rated, it is the math

    def stage(gpu, dtype):
        return build_replica(model, gpu, Plan(gpu=gpu.name, weight_dtype=dtype, engine="vllm-v1"), engine)

    prefill = BatchShape(num_tokens=8192, num_seqs=1, num_decodes=0, decode_ctx_sum=0,
                         prefill_pairs=8192 * 8193 / 2, has_prefill=True, max_ctx=8192)
    decode = BatchShape(num_tokens=8, num_seqs=8, num_decodes=8, decode_ctx_sum=8 * 1024, prefill_pairs=0.0,
                        has_prefill=False, max_ctx=1024)
    int8, bf16, rated = stage(b300, "int8"), stage(b300, "bf16"), stage(b200, "int8")
    assert int8.cost.stages[0].peak_flops() == b300.peak("bf16")
    assert int8.cost.stages[0].iteration_time(decode) < bf16.cost.stages[0].iteration_time(decode)  # half the bytes
    # compute-bound prefill gains nothing from int8 here (dequantization on top of bf16 math), unlike on B200
    assert int8.cost.stages[0].iteration_time(prefill) >= bf16.cost.stages[0].iteration_time(prefill)
    assert rated.cost.stages[0].iteration_time(prefill) < bf16.cost.stages[0].iteration_time(prefill)


def test_qwen2_sliding_window_is_off_unless_use_sliding_window():
    m = get_model("qwen2.5-72b")
    assert m.sliding_layers == () and m.sliding_window is None


def test_an_unknown_model_type_without_shapes_is_refused_naming_the_field():
    cfg = {k: v for k, v in TINY.items() if k != "head_dim"}
    with pytest.raises(SpecError) as err:
        model_from_hf_config({**cfg, "model_type": "mystery_lm"}, name="x", source="x.json")
    message = str(err.value)
    assert "model_type 'mystery_lm'" in message and "'head_dim'" in message and "\n" not in message
    # with every shape field given, an unknown type loads
    assert model_from_hf_config({**TINY, "model_type": "mystery_lm"}, name="x").head_dim == 32


def test_the_cli_exits_2_on_an_unknown_model_type(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "mystery_lm", "hidden_size": 256, "num_hidden_layers": 4, '
                    '"num_attention_heads": 8, "vocab_size": 1000}')
    result = CliRunner().invoke(cli, ["estimate", "--model", str(path), "--gpu", "h100-sxm-80gb"])
    assert result.exit_code == 2
    assert "num_key_value_heads" in result.output


# --- catalog: published figures -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW_MODELS)
def test_total_and_active_parameters_match_the_published_figures(name):
    counts = get_model(name).parameter_counts
    published = PUBLISHED[name]
    rel = published.get("tolerance", 0.01)
    assert counts["total"] == pytest.approx(published["total"], rel=rel)
    active = counts["active"]
    if not published.get("active_includes_input_embedding", True):
        active -= counts["embedding"]
    if not published.get("active_includes_lm_head", True):
        active -= counts["lm_head"]
    assert active == pytest.approx(published["active"], rel=rel)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_every_new_model_names_its_hugging_face_repository(name):
    assert get_model(name).hf_repo
    assert catalog.model_for_repo(get_model(name).hf_repo).name == name
