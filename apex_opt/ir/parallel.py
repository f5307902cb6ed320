"""Parallel templates: map the IR onto the devices of one pipeline stage of a plan, inserting communication.

The templates follow what vLLM and SGLang do:

* **Tensor parallel** (Megatron style): QKV and MLP-up projections split by columns (heads / intermediate),
  the output and MLP-down projections by rows, each row-split projection followed by an all-reduce of the
  hidden states. KV heads are replicated when ``tp`` exceeds their number. MLA's low-rank ``q_a``/``kv_a``
  projections and the router are replicated (vLLM ``ReplicatedLinear``). The embedding is vocab-parallel (an
  all-reduce follows); the LM head splits the vocabulary and gathers the logits.
* **MoE, expert TP** (``ep == 1``): every expert is split ``tp`` ways like an MLP; one all-reduce after.
* **MoE, expert parallel inside the TP group** (``ep == tp``, SGLang ``--enable-ep-moe``, vLLM
  ``--enable-expert-parallel``): each rank holds ``E/ep`` whole experts, sees every token (attention output is
  replicated by the all-reduce), runs only the tokens routed to its experts, and the partial outputs are summed by
  the same all-reduce as TP-MoE. No all-to-all.
* **Wide EP** (``dp_attention``, ``ep == tp x dp``): attention is data parallel (each of the ``dp`` attention
  groups of ``tp`` ranks runs its own batch), the MoE spans all ``tp x dp`` ranks. The ``T`` tokens of an attention
  group are replicated on its ``tp`` ranks, so each rank dispatches its ``T / tp`` share: one all-to-all sends
  ``top_k`` copies of each token to the ranks of its experts (no per-node deduplication, as NCCL or a plain
  all-to-all does; DeepEP's internode kernels send a token once per node) and a second one combines the results
  back. The attention output all-reduce stays: a reduce-scatter before the dispatch and an all-gather after the
  combine move the same bytes.
* **DP attention without EP** (``dp_attention``, ``ep == 1``): every expert is split over all ``tp x dp`` ranks
  (``moe_tp = tp x dp``); every rank gathers the tokens of all ``dp`` groups before the MoE and the partial sums are
  reduced after it. Both are priced as all-reduces of the gathered ``dp x T`` tokens over the group, as SGLang's
  ``dp_gather`` (an all-reduce of a zero-padded global buffer) and its MoE all-reduce do [inferred from the code,
  not run].
* **Pipeline parallel**: consecutive layers per stage (``layers_per_stage``, uneven allowed), the embedding on the
  first stage and the LM head on the last; activations go to the next stage by send/recv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..schema.model import ModelSpec
from ..schema.plan import Plan
from .graph import Op, block_ops, build_ir


@dataclass(frozen=True)
class Collective:
    """Communication an op implies, per token of the iteration."""

    kind: str  # all_reduce | all_gather | alltoall | send_recv
    group: str  # tp | ep | pp
    size: int  # ranks in the group
    bytes_per_token: float
    #: back-to-back calls of this collective (2 for a dispatch plus a combine)
    calls: int = 1


@dataclass(frozen=True)
class ShardedOp:
    """One operator as one GPU of a stage runs it."""

    op: Op
    n: int = 0
    k: int = 0
    weight_elems: float = 0.0
    elems_per_token: float = 0.0
    #: heads of attention on this rank (query heads, KV heads)
    q_heads: int = 0
    kv_heads: int = 0
    #: routed experts held by this rank; token share is top_k * tokens / ep (times the expected imbalance)
    local_experts: int = 0
    expert_token_share: float = 0.0
    after: Collective | None = None


@dataclass(frozen=True)
class StageLayout:
    """What one GPU of one pipeline stage holds and runs."""

    stage: int
    num_stages: int
    layers: tuple[int, ...]  # global layer indices on this stage
    blocks: dict[str, list[ShardedOp]] = field(default_factory=dict)
    repeat: dict[str, int] = field(default_factory=dict)
    send_bytes_per_token: float = 0.0  # activations sent to the next stage

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.num_stages - 1


def default_layer_split(num_layers: int, pp: int) -> tuple[int, ...]:
    """Even split with the remainder on the middle stages (the first and last also hold embedding / LM head).

    >>> default_layer_split(80, 3)
    (27, 27, 26)
    """
    if pp < 1 or pp > num_layers:
        raise ValueError(f"pp={pp} must be between 1 and the number of layers ({num_layers})")
    base, extra = divmod(num_layers, pp)
    split = [base] * pp
    order = sorted(range(pp), key=lambda i: (i in (0, pp - 1), abs(i - (pp - 1) / 2)))
    for i in order[:extra]:
        split[i] += 1
    return tuple(split)


def expected_max_share(assignments: float, ranks: int, skew: float = 1.0) -> float:
    """Expected tokens on the busiest of ``ranks`` EP ranks when ``assignments`` token-expert pairs are routed.

    Random routing gives a multinomial load whose maximum is about ``mu + sqrt(2 mu ln ranks)`` (Gaussian
    extreme-value approximation); ``skew`` >= 1 scales the mean for a known routing bias.
    """
    if ranks <= 1:
        return assignments
    mu = assignments / ranks * skew
    return mu + math.sqrt(2.0 * max(mu, 0.0) * math.log(ranks))


def stage_layouts(model: ModelSpec, plan: Plan, *, act_bytes: float = 2.0) -> list[StageLayout]:
    """The per-GPU layout of every pipeline stage of ``plan``."""
    g = build_ir(model)
    split = plan.layers_per_stage or default_layer_split(model.num_layers, plan.pp)
    if sum(split) != model.num_layers:
        raise ValueError(f"layers_per_stage {split} sums to {sum(split)}, not the model's {model.num_layers} layers")
    moe_set = set(model.moe_layers)
    layouts = []
    start = 0
    for s, count in enumerate(split):
        layers = tuple(range(start, start + count))
        start += count
        n_moe = sum(1 for i in layers if i in moe_set)
        repeat = {"dense": count - n_moe, "moe": n_moe}
        blocks: dict[str, list[ShardedOp]] = {}
        if s == 0:
            blocks["pre"] = [_shard(op, model, plan, act_bytes) for op in block_ops(g, "pre")]
            repeat["pre"] = 1
        for kind in ("dense", "moe"):
            if repeat[kind]:
                blocks[kind] = [_shard(op, model, plan, act_bytes) for op in block_ops(g, kind)]
        if s == len(split) - 1:
            blocks["post"] = [_shard(op, model, plan, act_bytes) for op in block_ops(g, "post")]
            repeat["post"] = 1
        send = model.hidden_size * act_bytes if s < len(split) - 1 else 0.0
        layouts.append(StageLayout(s, len(split), layers, blocks, {k: v for k, v in repeat.items() if v}, send))
    return layouts


def _shard(op: Op, m: ModelSpec, p: Plan, act_bytes: float) -> ShardedOp:
    tp = p.tp
    h = m.hidden_size
    allreduce = Collective("all_reduce", "tp", tp, h * act_bytes) if tp > 1 else None
    if op.kind == "attention":
        kv = 1 if m.mla else max(1, m.num_kv_heads // tp)
        return ShardedOp(op, q_heads=max(1, m.num_heads // tp), kv_heads=kv)
    if op.kind == "experts":
        e = m.moe
        assert e is not None
        wide = p.dp_attention and p.dp > 1
        span = tp * (p.dp if wide else 1)
        ep = p.ep
        moe_tp = p.expert_tp
        local = max(1, e.num_experts // ep)
        n = op.n // moe_tp if op.tp_split == "col" else op.n
        k = op.k // moe_tp if op.tp_split == "row" else op.k
        after = None
        if op.reduces:
            if wide and ep > 1:  # dispatch and combine: top_k copies of this rank's 1/tp share of each token
                after = Collective("alltoall", "ep", span, h * act_bytes * e.top_k / tp, calls=2)
            elif wide:  # experts split over every rank: gather every group's tokens, reduce the partial sums
                after = Collective("all_reduce", "ep", span, h * act_bytes * p.dp, calls=2)
            elif tp > 1:
                after = Collective("all_reduce", "tp", tp, h * act_bytes)
        return ShardedOp(op, n=n, k=k, weight_elems=n * k * local, local_experts=local,
                         expert_token_share=e.top_k / ep, after=after)
    if op.kind == "gemm":
        if op.name == "post.lm_head":
            n = math.ceil(op.n / tp)
            gather = Collective("all_gather", "tp", tp, op.n * 4.0) if tp > 1 else None
            return ShardedOp(op, n=n, k=op.k, weight_elems=n * op.k, after=gather)
        if op.tp_split == "col":
            if op.name.endswith("qkv_proj"):
                n = (max(1, m.num_heads // tp) + 2 * max(1, m.num_kv_heads // tp)) * m.head_dim
            else:
                n = math.ceil(op.n / tp)
            return ShardedOp(op, n=n, k=op.k, weight_elems=n * op.k)
        if op.tp_split == "row":
            k = math.ceil(op.k / tp)
            return ShardedOp(op, n=op.n, k=k, weight_elems=op.n * k, after=allreduce if op.reduces else None)
        return ShardedOp(op, n=op.n, k=op.k, weight_elems=op.n * op.k)
    if op.kind == "router":
        return ShardedOp(op, n=op.n, k=op.k, weight_elems=op.weights)
    if op.kind == "embedding":
        return ShardedOp(op, weight_elems=math.ceil(op.weights / tp), elems_per_token=op.elems_per_token,
                         after=allreduce)
    if op.kind == "sampler":
        return ShardedOp(op, elems_per_token=op.elems_per_token)
    per_token = op.elems_per_token / tp if op.tp_split in ("col", "heads") else op.elems_per_token
    return ShardedOp(op, weight_elems=op.weights, elems_per_token=per_token)
