"""Per-operator breakdown of one prefill and one decode iteration of a plan (``apex-opt estimate``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..bounds import MAX_BATCH, MAX_ITERATION_TOKENS, check_count, format_count
from ..errors import SpecError, shorten
from ..sim.cost import BatchShape
from ..units import format_bytes
from .provenance import calibration_notes, calibration_sources
from .replica import Replica
from .step import StageCost


@dataclass(frozen=True)
class OpCost:
    """One operator (or collective) summed over its repeats on one stage, per GPU."""

    name: str
    kind: str
    repeat: int
    time_s: float
    flops: float
    bytes: float
    roofline_share: float  # ideal roofline time / modelled time (1.0 = at peak)


@dataclass(frozen=True)
class IterationBreakdown:
    kind: str  # prefill | decode
    batch: int
    tokens: int
    context: int
    time_s: float
    ops: list[OpCost] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _roofline(stage: StageCost, flops: float, nbytes: float, seconds: float) -> float:
    if seconds <= 0:
        return 0.0
    ideal = max(flops / stage.gpu.peak(stage.precision.math), nbytes / stage.gpu.memory_bandwidth)
    return ideal / seconds


def _breakdown(replica: Replica, kind: str, batch: int, context: int) -> IterationBreakdown:
    if kind == "prefill":
        tokens = batch * context
        shape = BatchShape(num_tokens=tokens, num_seqs=batch, num_decodes=0, decode_ctx_sum=0,
                           prefill_pairs=batch * context * (context + 1) / 2.0, has_prefill=True, max_ctx=context)
    else:
        tokens = batch
        shape = BatchShape(num_tokens=batch, num_seqs=batch, num_decodes=batch, decode_ctx_sum=batch * (context + 1),
                           prefill_pairs=0.0, has_prefill=False, max_ctx=context + 1)
    ops: list[OpCost] = []
    total = 0.0
    for stage in replica.cost.stages:
        prefix = f"stage{stage.layout.stage}." if len(replica.cost.stages) > 1 else ""
        for op in stage.operator_times(shape):
            share = _roofline(stage, op.flops / op.repeat, op.bytes / op.repeat, op.time_s / op.repeat) \
                if op.kind not in ("collective", "host") and op.repeat else 0.0
            ops.append(OpCost(prefix + op.name, op.kind, op.repeat, op.time_s, op.flops, op.bytes, share))
        total += stage.iteration_time(shape)
    return IterationBreakdown(kind, batch, tokens, context, total, ops)


def check_iteration(model: Any, batch: int, context: int) -> None:
    """Refuse a batch or context no engine runs, before any table is sized by it (SpecError naming the bound)."""
    for name, value in (("batch", batch), ("context", context)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{{{name}=}}{shorten(value)}: must be a whole number >= 1, e.g. {{{name}=}}32",
                            option=name)
    check_count("{batch}", batch, MAX_BATCH, f"use {{batch=}}{MAX_BATCH} or less (engines run a few hundred "
                                             "sequences per iteration)", option="batch")
    limit = int(model.max_position_embeddings)
    if context > limit:
        raise SpecError(f"{{context=}}{format_count(context)} is beyond {model.name}'s context window of {limit:,} "
                        f"tokens (max_position_embeddings); use {{context=}}{limit} or less", option="context")
    if batch * context > MAX_ITERATION_TOKENS:
        raise SpecError(f"{{batch=}}{batch:,} x {{context=}}{context:,} = {batch * context:,} prompt tokens in one "
                        f"iteration, more than the {MAX_ITERATION_TOKENS:,} apex-opt prices; use at most "
                        f"{{batch=}}{max(1, MAX_ITERATION_TOKENS // context):,} at this context",
                        option=("batch", "context"))


def estimate_replica(replica: Replica, *, batch: int, context: int) -> dict:
    """Prefill and decode breakdowns, memory fit and KV capacity of one replica, as a JSON-ready dict."""
    check_iteration(replica.model, batch, context)
    mem = replica.memory
    prefill = _breakdown(replica, "prefill", batch, context)
    decode = _breakdown(replica, "decode", batch, context)
    stages = [
        {
            "stage": s.stage,
            "weights_bytes": s.weights,
            "activation_bytes": s.activation,
            "fixed_bytes": s.fixed,
            "kv_cache_bytes": max(s.kv_cache, 0.0),
            "total_bytes": s.total,
            "budget_bytes": s.budget,
            "headroom_bytes": s.headroom,
        }
        for s in mem.stages
    ]
    kv_tokens = mem.kv_tokens
    needed = batch * (context + 1)
    return {
        "plan": replica.plan.model_dump(mode="json"),
        "model": replica.model.name,
        "gpu": replica.gpu.name,
        "engine": replica.settings.engine.name,
        "settings": {
            "chunked_prefill": replica.settings.chunked_prefill,
            "max_num_batched_tokens": replica.settings.max_num_batched_tokens,
            "max_num_seqs": replica.settings.max_num_seqs,
            "max_model_len": replica.settings.max_model_len,
            "gpu_memory_utilization": replica.settings.gpu_memory_utilization,
            "custom_all_reduce": replica.settings.custom_all_reduce,
            "cuda_graphs": replica.settings.cuda_graphs,
        },
        "memory": {
            "fits": mem.fits,
            "shortfall_bytes": mem.shortfall,
            "weights_per_gpu_bytes": mem.weights_per_gpu,
            "num_kv_blocks": mem.num_kv_blocks,
            "block_size": mem.block_size,
            "kv_capacity_tokens": kv_tokens,
            "batch_fits_kv": kv_tokens >= needed,
            "stages": stages,
            "summary": f"weights {format_bytes(mem.weights_per_gpu)}/GPU, KV {kv_tokens:,} tokens "
                       f"({mem.num_kv_blocks:,} blocks of {mem.block_size})",
        },
        "prefill": prefill.as_dict(),
        "decode": decode.as_dict(),
        "decode_tokens_per_s": batch / decode.time_s if decode.time_s else 0.0,
        "prefill_tokens_per_s": prefill.tokens / prefill.time_s if prefill.time_s else 0.0,
        "calibration": calibration_sources([replica.gpu]),
        "notes": calibration_notes([replica.gpu]),
    }
