"""Engine behaviours are declared in the engine spec (defaulting to the family's), so a custom spec can change them."""

from __future__ import annotations

import pytest

import apex_opt as ax
from apex_opt.catalog import get_engine, get_gpu, get_model
from apex_opt.perf.engine_rules import resolve_engine, scheduler_config
from apex_opt.perf.replica import build_replica
from apex_opt.planner.space import _ep_choices
from apex_opt.schema.engine import FAMILY_RULES, EngineSpec
from apex_opt.schema.plan import Plan

RULES = ("ep_whole_tp_group", "dp_attention", "small_gpu", "graph_batch_within_max_num_seqs",
         "async_output_needs_graphs", "default_seqs_within_budget", "budget_raised_to_seqs",
         "unchunked_budget_covers_model_len", "prefill_chunks_with_decodes", "kv_pool_after_activations")


def custom(name: str, **rules: object) -> EngineSpec:
    """A copy of a catalog engine without the engine rules it declares, plus ``rules``."""
    data = {k: v for k, v in get_engine(name).model_dump().items() if k not in RULES}
    return EngineSpec.parse({**data, "name": f"{name}-custom", **rules}, source="test", kind="engine")


def test_a_spec_that_leaves_the_rules_out_gets_its_familys_which_the_catalog_specs_also_declare():
    for name in ("vllm-0.6", "vllm-v1", "sglang-0.4"):
        engine, bare = get_engine(name), custom(name)
        assert {k: getattr(bare, k) for k in RULES} == {k: getattr(engine, k) for k in RULES}
        rules = FAMILY_RULES[engine.family]
        assert engine.ep_whole_tp_group is rules["ep_whole_tp_group"] and engine.dp_attention is rules["dp_attention"]


def test_a_declared_small_gpu_rule_changes_the_defaults_a_plan_runs_under():
    model, l40s = get_model("llama-3.1-8b"), get_gpu("l40s")  # 48 GB: under vLLM V1's 70 GiB
    plan = Plan(gpu="l40s", engine="vllm-v1")
    family = resolve_engine(custom("vllm-v1"), plan, model, l40s)
    assert (family.max_num_batched_tokens, family.max_num_seqs) == (2048, 256)  # vLLM V1 on a small GPU
    none = resolve_engine(custom("vllm-v1", small_gpu=None), plan, model, l40s)
    assert (none.max_num_batched_tokens, none.max_num_seqs) == (8192, 1024)  # the engine's usual defaults
    lower = resolve_engine(custom("vllm-v1", small_gpu={"below": "40GB", "chunked_budget": 1024}), plan, model, l40s)
    assert (lower.max_num_batched_tokens, lower.max_num_seqs) == (8192, 1024)  # 48 GB is not under 40 GB


def test_declared_expert_parallel_rules_change_the_layouts_the_planner_searches():
    def layouts(engine: EngineSpec) -> list[tuple[int, int | None, int]]:
        specs = ax.load_specs("mixtral-8x7b", "h100x8", engine=engine)
        return _ep_choices(specs, 4, 8)

    sglang = layouts(custom("sglang-0.4"))
    assert (2, 2, 1) not in sglang and (4, 1, 1) in sglang  # --enable-ep-moe: experts over the whole TP group
    assert (8, 1, 2) in sglang  # and wide EP over 2 x 4 GPUs
    any_ep = layouts(custom("sglang-0.4", ep_whole_tp_group=False))
    assert (2, 2, 1) in any_ep  # an engine that runs any ep dividing tp
    whole = layouts(custom("sglang-0.4", ep_whole_tp_group=True, dp_attention=False))
    assert whole == [(1, None, 1), (4, 1, 1)]  # as vLLM 0.6: experts over the whole TP group only


def test_a_declared_cuda_graph_rule_changes_the_largest_captured_batch():
    model, h100 = get_model("llama-3.1-8b"), get_gpu("h100-sxm-80gb")
    plan = Plan(gpu="h100-sxm-80gb", engine="vllm-0.6", max_num_seqs=64)
    assert resolve_engine(custom("vllm-0.6"), plan, model, h100).graph_max_batch == 64  # vLLM 0.6: min(256, 64)
    free = custom("vllm-0.6", graph_batch_within_max_num_seqs=False)
    assert resolve_engine(free, plan, model, h100).graph_max_batch == 256


def test_vllm_v1_picks_its_small_defaults_on_an_a100_whatever_its_memory():
    model, a100 = get_model("llama-3.1-8b"), get_gpu("a100-sxm-80gb")  # 80 GiB, not under 70 GiB
    plan = Plan(gpu="a100-sxm-80gb", engine="vllm-v1")
    on_a100 = resolve_engine(custom("vllm-v1"), plan, model, a100)
    assert (on_a100.max_num_batched_tokens, on_a100.max_num_seqs) == (2048, 256)
    by_memory = custom("vllm-v1", small_gpu={"below": "70GiB", "chunked_budget": 2048, "max_num_seqs": 256})
    assert resolve_engine(by_memory, plan, model, a100).max_num_batched_tokens == 8192


def test_vllm_v1_lowers_its_default_sequence_limit_to_a_smaller_token_budget_and_keeps_a_set_one():
    model, h100 = get_model("llama-3.1-8b"), get_gpu("h100-sxm-80gb")
    small_budget = Plan(gpu="h100-sxm-80gb", engine="vllm-v1", max_num_batched_tokens=512)
    assert resolve_engine(custom("vllm-v1"), small_budget, model, h100).max_num_seqs == 512
    assert resolve_engine(custom("vllm-v1"), small_budget.model_copy(update={"max_num_seqs": 128}), model,
                          h100).max_num_seqs == 128
    strict = custom("vllm-v1", default_seqs_within_budget=False)
    with pytest.raises(ax.SpecError, match="below max_num_seqs 1024"):  # 1024 sequences, 512 tokens: refused
        resolve_engine(strict, small_budget, model, h100)


def test_vllm_06_runs_without_async_output_processing_when_cuda_graphs_are_off():
    model, h100 = get_model("llama-3.1-8b"), get_gpu("h100-sxm-80gb")
    graphs = resolve_engine(custom("vllm-0.6"), Plan(gpu="h100-sxm-80gb"), model, h100)
    eager = resolve_engine(custom("vllm-0.6"), Plan(gpu="h100-sxm-80gb", cuda_graphs=False), model, h100)
    assert graphs.async_output and not eager.async_output
    assert scheduler_config(eager, 1000).metrics_stamp == "forward"  # tokens stamped after their forward
    kept = resolve_engine(custom("vllm-0.6", async_output_needs_graphs=False), Plan(gpu="h100-sxm-80gb",
                                                                                   cuda_graphs=False), model, h100)
    assert kept.async_output


def test_a_declared_prefill_chunk_rule_changes_how_the_planner_prices_prompts_against_decodes():
    """SGLang 0.4 runs a prompt's chunk as an extend batch of its own, and the decodes wait for it; an engine whose
    chunks ride in the decodes' steps (vLLM's chunked prefill, SGLang's --enable-mixed-chunk) adds less per chunk."""
    workload = "synthetic:rate=4rps,requests=400,prompt=2048,output=256,seed=0"

    def tpot(engine: EngineSpec) -> float:
        specs = ax.load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=1, engine=engine,
                              workload=workload, slo="ttft=2s,tpot=100ms")
        return ax.Problem(specs).proposal(tp=1, budget=512).predicted.tpot_mean_s

    separate, mixed = tpot(custom("sglang-0.4")), tpot(custom("sglang-0.4", prefill_chunks_with_decodes=True))
    assert get_engine("sglang-0.4").prefill_chunks_with_decodes is False
    assert mixed < separate


def test_a_declared_kv_pool_rule_changes_the_kv_cache_a_replica_gets():
    """vLLM sizes the KV cache after profiling the activation peak; SGLang profiles nothing (engines.md 4)."""
    model, gpu = get_model("llama-3.1-8b"), get_gpu("h100-sxm-80gb")
    plan = Plan(gpu="h100-sxm-80gb", engine="sglang-0.4", tp=1)
    unprofiled = build_replica(model, gpu, plan, custom("sglang-0.4")).memory
    profiled = build_replica(model, gpu, plan, custom("sglang-0.4", kv_pool_after_activations=True)).memory
    assert get_engine("sglang-0.4").kv_pool_after_activations is False
    assert profiled.kv_tokens != unprofiled.kv_tokens
