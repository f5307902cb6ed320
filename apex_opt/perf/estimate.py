"""Per-operator breakdown of one prefill and one decode iteration of a plan (``apex-opt estimate``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..sim.cost import BatchShape
from ..units import format_bytes
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
                           prefill_pairs=batch * context * (context + 1) / 2.0, has_prefill=True)
    else:
        tokens = batch
        shape = BatchShape(num_tokens=batch, num_seqs=batch, num_decodes=batch, decode_ctx_sum=batch * (context + 1),
                           prefill_pairs=0.0, has_prefill=False)
    ops: list[OpCost] = []
    total = 0.0
    for stage in replica.cost.stages:
        graph = stage.uses_graph(shape)
        run_tokens = np.array([float(max(stage.graph_tokens(shape), 1))])
        prefix = f"stage{stage.layout.stage}." if len(replica.cost.stages) > 1 else ""
        for block, block_ops in stage.layout.blocks.items():
            reps = stage.layout.repeat[block]
            for op in block_ops:
                if op.op.kind in ("attention", "sampler") or op.op.name == "post.lm_head":
                    continue
                t, f, b = (float(x[0]) for x in stage._op_time(op, run_tokens))
                ops.append(OpCost(prefix + op.op.name, op.op.kind, reps, reps * t, reps * f, reps * b,
                                  _roofline(stage, f, b, t)))
                if op.after is not None:
                    c = float(stage._comm_time(op, run_tokens)[0])
                    ops.append(OpCost(f"{prefix}{op.op.name}.{op.after.kind}", "collective", reps, reps * c, 0.0,
                                      reps * float(run_tokens[0]) * op.after.bytes_per_token, 0.0))
        if not graph:  # eager: the pass is launch-bound when the host cannot keep the GPU fed
            gpu_linear = stage.linear_time(int(run_tokens[0]), True)
            stall = stage.linear_time(int(run_tokens[0]), False) - gpu_linear
            if stall > 0:
                ops.append(OpCost(prefix + "eager_launch_stall", "host", stage.kernels, stall, 0.0, 0.0, 0.0))
        s_pair, s_ctx, s_seq, s_chunk = stage._attn_coeffs
        attn_t = s_pair * shape.prefill_pairs + s_chunk * (shape.num_seqs - shape.num_decodes) + \
            s_ctx * shape.decode_ctx_sum + s_seq * shape.num_decodes
        layers = len(stage.layout.layers)
        if kind == "prefill":
            m = stage.model
            per_pair = (2.0 * (m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim + m.mla.v_head_dim) if m.mla
                        else 4.0 * m.head_dim)
            q_heads = max(1, m.num_heads // stage.plan.tp)
            attn_f = layers * per_pair * q_heads * shape.prefill_pairs
            attn_b = layers * tokens * m.kv_elems_per_token_per_layer(stage.plan.tp) * stage.precision.kv_bytes * 2
        else:
            attn_f = 0.0
            attn_b = layers * shape.decode_ctx_sum * stage.model.kv_elems_per_token_per_layer(stage.plan.tp) * \
                stage.precision.kv_bytes
        ops.append(OpCost(prefix + "attention", "attention", layers, attn_t, attn_f, attn_b,
                          _roofline(stage, attn_f, attn_b, attn_t)))
        head = stage._head_time(shape.num_seqs)
        if head:
            hf = 2.0 * shape.num_seqs * stage.model.hidden_size * stage.model.vocab_size / stage.plan.tp
            hb = stage.model.hidden_size * stage.model.vocab_size * 2.0 / stage.plan.tp
            ops.append(OpCost(prefix + "lm_head+sampler", "gemm", 1, head, hf, hb, _roofline(stage, hf, hb, head)))
        host = stage.host_time(shape)
        if host:
            ops.append(OpCost(prefix + "host_overhead", "host", 1, host, 0.0, 0.0, 0.0))
        total += stage.iteration_time(shape)
    return IterationBreakdown(kind, batch, tokens, context, total, ops)


def estimate_replica(replica: Replica, *, batch: int, context: int) -> dict:
    """Prefill and decode breakdowns, memory fit and KV capacity of one replica, as a JSON-ready dict."""
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
    }
