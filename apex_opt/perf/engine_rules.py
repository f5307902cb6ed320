"""The engine's own rules for a plan: which knobs are in force once defaults and auto-switches are applied.

vLLM 0.6 turns chunked prefill on by itself when ``max_model_len > 32768`` (then the budget is 512 tokens);
without it the budget is ``max(max_model_len, 2048)``. vLLM V1 and SGLang size their defaults by GPU memory.
The custom all-reduce kernel is used only for TP sizes 2/4/6/8 inside one NVLink node. See docs/engines.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from ..schema.engine import EngineSpec
from ..schema.gpu import GPUSpec
from ..schema.model import ModelSpec
from ..schema.plan import Plan


@dataclass(frozen=True)
class EngineSettings:
    """The knobs in force for one plan on one engine."""

    engine: EngineSpec
    family: str
    chunked_prefill: bool
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    block_size: int
    gpu_memory_utilization: float
    custom_all_reduce: bool
    cuda_graphs: bool
    graph_max_batch: int
    graph_max_context: int | None
    async_output: bool


def resolve_engine(engine: EngineSpec, plan: Plan, model: ModelSpec, gpu: GPUSpec, *,
                   nodes_per_tp_group: int = 1, nvlink: bool = True) -> EngineSettings:
    """Apply ``engine``'s defaults and automatic switches to ``plan``."""
    known = engine.eager_kernels.backends()
    if plan.attention_backend is not None and plan.attention_backend not in known:
        raise SpecError(f"attention_backend '{plan.attention_backend}' is not one {engine.name} has kernels for; "
                        f"use one of {', '.join(known)} (--attention-backend), or leave it out for the default "
                        f"({engine.eager_kernels.attention_backend})")
    s = engine.scheduler
    max_model_len = plan.max_model_len or model.max_position_embeddings
    big_gpu = gpu.memory >= 70 * 2**30
    if plan.chunked_prefill is not None:
        chunked = plan.chunked_prefill
    elif s.chunked_prefill == "auto":  # vLLM 0.6 create_engine_config: not with prefix caching on
        chunked = (s.chunked_prefill_auto_above is not None and max_model_len > s.chunked_prefill_auto_above
                   and not s.prefix_caching)
    else:
        chunked = s.chunked_prefill == "on"
    budget_default = s.chunked_budget
    max_seqs_default = s.max_num_seqs
    if engine.family == "vllm-v1" and not big_gpu:
        budget_default, max_seqs_default = 2048, 256
    if engine.family == "sglang" and gpu.memory < 25e9:
        budget_default = 2048
    if plan.max_num_batched_tokens is not None:
        budget = plan.max_num_batched_tokens
    elif chunked:
        budget = budget_default
    else:
        budget = max(max_model_len, s.unchunked_budget_floor)
    max_seqs = plan.max_num_seqs or max_seqs_default
    util = plan.gpu_memory_utilization
    if util is None:
        util = engine.memory.gpu_memory_utilization
        if engine.memory.mem_fraction_by_tp:
            table = sorted(engine.memory.mem_fraction_by_tp.items())
            util = table[0][1]
            for min_tp, frac in table:
                if plan.tp >= min_tp:
                    util = frac
    tp = plan.tp
    # vLLM and SGLang 0.4 (which reuses vLLM's kernel) enable the custom all-reduce unless told not to
    custom_ar = plan.custom_all_reduce if plan.custom_all_reduce is not None else True
    custom_ar = custom_ar and tp in (2, 4, 6, 8) and nodes_per_tp_group == 1 and nvlink
    graphs = engine.cuda_graphs.enabled if plan.cuda_graphs is None else plan.cuda_graphs
    graph_max_batch = min(engine.cuda_graphs.max_batch, max_seqs) if engine.family == "vllm-v0" else \
        engine.cuda_graphs.max_batch
    return EngineSettings(
        engine=engine,
        family=engine.family,
        chunked_prefill=chunked,
        max_num_batched_tokens=budget,
        max_num_seqs=max_seqs,
        max_model_len=max_model_len,
        block_size=s.block_size,
        gpu_memory_utilization=util,
        custom_all_reduce=custom_ar,
        cuda_graphs=graphs,
        graph_max_batch=graph_max_batch,
        graph_max_context=engine.cuda_graphs.max_context,
        async_output=engine.async_output and plan.pp == 1,
    )
