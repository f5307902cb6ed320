"""GPU memory of a plan: weights, activation and CUDA-graph reserves, and the KV cache the engine would allocate.

The KV-cache size follows each engine's own arithmetic (see ``docs/memory.md``):

* **vLLM** (0.6 and V1): ``num_gpu_blocks = floor((total * gpu_memory_utilization - peak) / block_bytes)``, where
  ``peak`` is what the profile run leaves allocated (weights, the activation peak of a dummy batch of
  ``max_num_batched_tokens`` tokens over ``max_num_seqs`` sequences with full-vocabulary sampling, and the non-torch
  buffers of NCCL and the custom all-reduce), ``block_bytes = block_size * kv_elems_per_token * layers * bytes``;
  the engine takes the minimum over its workers. CUDA graphs are captured afterwards, inside ``1 - utilization``.
* **SGLang**: ``tokens = (total * mem_fraction_static - weights - context) / cell`` with a per-token ``cell``; no
  activation profiling (activations and graphs live in ``1 - mem_fraction_static``).

``total`` is the memory the CUDA runtime reports, a little below the nominal capacity
(:data:`USABLE_FRACTION`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir.parallel import StageLayout
from ..schema.gpu import DTYPE_BYTES, GPUSpec
from ..schema.model import ModelSpec
from ..schema.plan import Plan
from .engine_rules import EngineSettings
from .weights import weight_formats

#: share of the nominal HBM capacity that cudaMemGetInfo reports as total (H100 80 GB: 79.2 GiB of 80 GiB)
USABLE_FRACTION = 0.99
#: CUDA context + cuBLAS workspace, outside the profiled peak but inside the device total
CUDA_CONTEXT_BYTES = 0.5 * 2**30
#: CUDA graph pool for decode graphs up to the largest captured batch (vLLM logs "1~3 GiB per GPU")
GRAPH_BYTES_PER_SEQ = 6 * 2**20
#: bytes do not depend on the GPU (only the math precision does): a stand-in when none is given
_ANY_GPU = GPUSpec(name="any", memory=1, memory_bandwidth=1, peak_flops={"bf16": 1.0},
                   intra_node={"kind": "nvlink", "bandwidth": 1}, power={"idle": 1, "max": 2}, price_per_hour=0)


@dataclass(frozen=True)
class StageMemory:
    """Memory of one GPU of one pipeline stage, in bytes."""

    stage: int
    total: float  # what the runtime reports
    budget: float  # total * utilization
    weights: float
    activation: float
    fixed: float
    graphs: float
    kv_cache: float
    kv_bytes_per_token: float  # across this stage's layers, one GPU

    @property
    def kv_tokens(self) -> int:
        return int(self.kv_cache // self.kv_bytes_per_token) if self.kv_bytes_per_token else 0

    @property
    def used(self) -> float:
        return self.weights + self.activation + self.fixed + max(self.kv_cache, 0.0)

    @property
    def headroom(self) -> float:
        """Memory left under the total after weights, reserves and the KV cache (what graphs etc. may use)."""
        return self.total - self.used - CUDA_CONTEXT_BYTES


@dataclass(frozen=True)
class PlanMemory:
    """Per-stage memory and the replica's KV capacity."""

    stages: tuple[StageMemory, ...]
    num_kv_blocks: int  # per replica (vLLM: minimum over workers; SGLang: tokens with page size 1)
    block_size: int
    shortfall: float  # bytes by which the worst stage's weights + reserves exceed its budget (0 if it fits)

    @property
    def kv_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size

    @property
    def fits(self) -> bool:
        return self.shortfall <= 0 and self.num_kv_blocks > 0

    @property
    def weights_per_gpu(self) -> float:
        return max(s.weights for s in self.stages)

    @property
    def worst(self) -> StageMemory:
        return min(self.stages, key=lambda s: s.kv_cache)


def stage_weight_bytes(layout: StageLayout, model: ModelSpec, plan: Plan, gpu: GPUSpec | None = None) -> float:
    """Weight bytes one GPU of the stage holds: linear layers in their format (:func:`weight_formats`: the
    checkpoint's stored one, scales included, or the plan's), 16-bit norms, router, embedding and LM head."""
    formats = weight_formats(model, plan, gpu or _ANY_GPU)
    total = 0.0
    for block, ops in layout.blocks.items():
        reps = layout.repeat[block]
        for op in ops:
            kind = op.op.kind
            if kind in ("gemm", "experts") and op.op.name != "post.lm_head":
                total += reps * op.weight_elems * formats[kind].bytes_per_weight
            elif op.op.name == "post.lm_head":
                total += op.weight_elems * 2.0
            else:
                total += reps * op.weight_elems * 2.0
    if layout.is_last and model.tie_word_embeddings and not layout.is_first:
        total += math.ceil(model.vocab_size / plan.tp) * model.hidden_size * 2.0
    return total


def activation_peak(model: ModelSpec, plan: Plan, settings: EngineSettings, layout: StageLayout) -> float:
    """Activation bytes the profile run holds: a few hidden-size tensors, the widest MLP intermediate and the
    QKV output per batched token, plus full-vocabulary logits and sampling buffers per sequence (last stage)."""
    if settings.engine.memory.profile_activation != "vllm-profile-run":
        return 0.0
    tokens = min(settings.max_num_batched_tokens, settings.max_model_len * max(1, settings.max_num_seqs))
    h = model.hidden_size
    widest = model.intermediate_size
    if model.moe:
        widest = max(widest if model.num_dense_layers else 0,
                     model.moe.expert_intermediate_size * model.moe.top_k, model.moe.shared_intermediate_size)
    per_token = 2.0 * (4 * h + 3 * widest / plan.tp + 2 * model.q_dim / plan.tp)
    act = tokens * per_token
    if layout.is_last:
        act += settings.max_num_seqs * model.vocab_size * 4.0 * 3
    return act


def kv_layout(model: ModelSpec, plan: Plan, settings: EngineSettings, layout: StageLayout, kv_bytes: float,
              free: float) -> tuple[float, float]:
    """(KV bytes per token of context, bytes reserved for the sliding-window layers) on one GPU of the stage,
    given ``free`` bytes for the cache.

    A full-attention layer holds every token of a sequence; a sliding-window layer at most ``sliding_window``
    tokens (vLLM's hybrid KV-cache manager frees the blocks that slide out of the window). A sequence of ``n``
    tokens thus needs ``full x n + sliding x min(n, window)`` token-layers. Two token budgets guarantee that the
    running sequences fit: the full layers per token plus a reserve of ``max_num_seqs x min(window, max_model_len)``
    tokens for the sliding ones, or every layer per token (no reserve). The one that admits more tokens is used:
    the reserve pays off for small windows (gpt-oss: 128), not for Llama-4's 8192-token chunks at 256 sequences.
    """
    per_layer = model.kv_elems_per_token_per_layer(plan.tp) * kv_bytes
    sliding = [i for i in layout.layers if model.kv_window(i)]
    full = len(layout.layers) - len(sliding)
    per_all = per_layer * len(layout.layers)
    if not sliding or not full:
        return per_all, 0.0
    window = min(model.sliding_window or 0, settings.max_model_len)
    reserve = per_layer * len(sliding) * window * max(1, settings.max_num_seqs)
    if (free - reserve) / (per_layer * full) > free / per_all:
        return per_layer * full, reserve
    return per_all, 0.0


def plan_memory(model: ModelSpec, gpu: GPUSpec, plan: Plan, settings: EngineSettings,
                layouts: list[StageLayout]) -> PlanMemory:
    """Memory per GPU of every stage and the KV blocks the engine would report."""
    total = gpu.memory * USABLE_FRACTION
    util = settings.gpu_memory_utilization
    kv_bytes = DTYPE_BYTES[plan.kv_dtype]
    fixed = float(settings.engine.memory.fixed_overhead)
    if plan.tp == 1:
        fixed *= 0.5
    stages = []
    shortfall = -math.inf
    blocks = math.inf
    for layout in layouts:
        weights = stage_weight_bytes(layout, model, plan, gpu)
        act = activation_peak(model, plan, settings, layout)
        if settings.engine.kv_pool_after_activations:
            budget = total * util
            kv = budget - weights - act - fixed
        else:  # nothing profiled: the pool is what the weights leave of the static fraction (SGLang)
            budget = total * util - CUDA_CONTEXT_BYTES
            kv = budget - weights - fixed
        per_token, window_reserve = kv_layout(model, plan, settings, layout, kv_bytes, kv)
        kv -= window_reserve
        graphs = GRAPH_BYTES_PER_SEQ * settings.graph_max_batch if settings.cuda_graphs else 0.0
        shortfall = max(shortfall, weights + act + fixed - budget)
        stage = StageMemory(layout.stage, total, budget, weights, act, fixed, graphs, kv, per_token)
        stages.append(stage)
        block_bytes = per_token * settings.block_size
        blocks = min(blocks, math.floor(kv / block_bytes) if kv > 0 and block_bytes > 0 else 0)
    return PlanMemory(tuple(stages), int(max(blocks, 0)), settings.block_size, max(shortfall, 0.0))
