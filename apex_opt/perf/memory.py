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

#: share of the nominal HBM capacity that cudaMemGetInfo reports as total (H100 80 GB: 79.2 GiB of 80 GiB)
USABLE_FRACTION = 0.99
#: CUDA context + cuBLAS workspace, outside the profiled peak but inside the device total
CUDA_CONTEXT_BYTES = 0.5 * 2**30
#: CUDA graph pool for decode graphs up to the largest captured batch (vLLM logs "1~3 GiB per GPU")
GRAPH_BYTES_PER_SEQ = 6 * 2**20


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


def stage_weight_bytes(layout: StageLayout, model: ModelSpec, plan: Plan) -> float:
    """Weight bytes one GPU of the stage holds: quantized linear layers, 16-bit norms, embedding and LM head."""
    wbytes = DTYPE_BYTES[plan.weight_dtype]
    scale_overhead = 1.0 + (2.0 / 128 / wbytes if plan.weight_dtype == "int4" else 0.0)  # group-128 scales
    total = 0.0
    for block, ops in layout.blocks.items():
        reps = layout.repeat[block]
        for op in ops:
            kind = op.op.kind
            if kind in ("gemm", "experts") and op.op.name != "post.lm_head":
                total += reps * op.weight_elems * wbytes * scale_overhead
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
        weights = stage_weight_bytes(layout, model, plan)
        act = activation_peak(model, plan, settings, layout)
        per_token = model.kv_elems_per_token_per_layer(plan.tp) * kv_bytes * len(layout.layers)
        if settings.family == "sglang":
            budget = total * util - CUDA_CONTEXT_BYTES
            kv = budget - weights - fixed
        else:
            budget = total * util
            kv = budget - weights - act - fixed
        graphs = GRAPH_BYTES_PER_SEQ * settings.graph_max_batch if settings.cuda_graphs else 0.0
        shortfall = max(shortfall, weights + act + fixed - budget)
        stage = StageMemory(layout.stage, total, budget, weights, act, fixed, graphs, kv, per_token)
        stages.append(stage)
        block_bytes = per_token * settings.block_size
        blocks = min(blocks, math.floor(kv / block_bytes) if kv > 0 and block_bytes > 0 else 0)
    return PlanMemory(tuple(stages), int(max(blocks, 0)), settings.block_size, max(shortfall, 0.0))
