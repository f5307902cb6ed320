"""The Transformer IR: a networkx graph of a model's operators with their shape formulas.

Repeated layers are represented once: the graph holds a ``pre`` block (embedding), one block per distinct layer
kind (``dense`` and/or ``moe``) with a ``repeat`` count, and a ``post`` block (final norm, LM head, sampler).
Each node is an :class:`Op` whose fields are *unsharded* per-token shapes; :mod:`apex_opt.ir.parallel` maps them
onto devices for a plan and inserts the communication the plan implies.

>>> from apex_opt.catalog import get_model
>>> g = build_ir(get_model("mixtral-8x7b"))
>>> [n for n in g.nodes if g.nodes[n]["op"].block == "moe"][:4]
['moe.input_norm', 'moe.qkv_proj', 'moe.rope', 'moe.attention']
>>> g.graph["repeat"]
{'pre': 1, 'moe': 32, 'post': 1}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import networkx as nx

from ..schema.model import ModelSpec

OpKind = Literal["embedding", "norm", "gemm", "rope", "attention", "act", "add", "router", "experts", "sampler"]


@dataclass(frozen=True)
class Op:
    """One operator, unsharded.

    GEMMs compute ``[tokens, k] x [k, n]``; ``weights`` counts the parameters the op holds. Elementwise ops move
    ``elems_per_token`` elements per token (read + write). ``tp_split`` says how tensor parallelism shards the op:
    ``"col"`` splits n, ``"row"`` splits k (its output is a partial sum: an all-reduce follows), ``"heads"``
    splits attention heads, ``"none"`` replicates it.
    """

    name: str
    kind: OpKind
    block: str
    n: int = 0
    k: int = 0
    weights: int = 0
    elems_per_token: float = 0.0
    tp_split: Literal["col", "row", "heads", "none", "vocab"] = "none"
    #: tokens this op processes per input token (top_k for routed experts)
    token_factor: float = 1.0
    #: experts this op holds (routed experts block)
    experts: int = 0
    #: follows an op whose output is partial under TP: needs an all-reduce (TP) or combine (EP) after it
    reduces: bool = False


def _attention_ops(m: ModelSpec, b: str) -> list[Op]:
    h = m.hidden_size
    ops = [Op(f"{b}.input_norm", "norm", b, elems_per_token=2 * h, weights=h)]
    if m.mla:
        a = m.mla
        qk = a.qk_nope_head_dim + a.qk_rope_head_dim
        if a.q_lora_rank:
            ops.append(Op(f"{b}.q_a_proj", "gemm", b, n=a.q_lora_rank, k=h, weights=h * a.q_lora_rank))
            ops.append(Op(f"{b}.q_b_proj", "gemm", b, n=m.num_heads * qk, k=a.q_lora_rank,
                          weights=a.q_lora_rank * m.num_heads * qk, tp_split="col"))
        else:
            ops.append(Op(f"{b}.q_proj", "gemm", b, n=m.num_heads * qk, k=h, weights=h * m.num_heads * qk,
                          tp_split="col"))
        kv_a = a.kv_lora_rank + a.qk_rope_head_dim
        ops.append(Op(f"{b}.kv_a_proj", "gemm", b, n=kv_a, k=h, weights=h * kv_a))
        kv_b = m.num_heads * (a.qk_nope_head_dim + a.v_head_dim)
        ops.append(Op(f"{b}.kv_b_proj", "gemm", b, n=kv_b, k=a.kv_lora_rank, weights=a.kv_lora_rank * kv_b,
                      tp_split="col"))
    else:
        qkv = (m.num_heads + 2 * m.num_kv_heads) * m.head_dim
        ops.append(Op(f"{b}.qkv_proj", "gemm", b, n=qkv, k=h, weights=h * qkv, tp_split="col"))
    # rotary reads and writes the query and key heads (MLA: only the rotary slice of q and the shared key)
    rope_elems = (2 * m.num_heads * m.mla.qk_rope_head_dim + 2 * m.mla.qk_rope_head_dim if m.mla
                  else 2 * (m.num_heads + m.num_kv_heads) * m.head_dim)
    ops.append(Op(f"{b}.rope", "rope", b, elems_per_token=rope_elems, tp_split="heads"))
    ops.append(Op(f"{b}.attention", "attention", b, tp_split="heads"))
    ops.append(Op(f"{b}.o_proj", "gemm", b, n=h, k=m.attn_out_dim, weights=m.attn_out_dim * h, tp_split="row",
                  reduces=True))
    ops.append(Op(f"{b}.attn_add", "add", b, elems_per_token=3 * h))
    ops.append(Op(f"{b}.post_norm", "norm", b, elems_per_token=2 * h, weights=h))
    return ops


def _mlp_ops(m: ModelSpec, b: str, inter: int, prefix: str = "mlp", token_factor: float = 1.0,
             experts: int = 0) -> list[Op]:
    h = m.hidden_size
    up = (2 if m.gated_mlp else 1) * inter
    count = max(experts, 1)
    kind: OpKind = "experts" if experts else "gemm"
    return [
        Op(f"{b}.{prefix}_up", kind, b, n=up, k=h, weights=h * up * count, tp_split="col",
           token_factor=token_factor, experts=experts),
        Op(f"{b}.{prefix}_act", "act", b, elems_per_token=(up + inter) * token_factor, tp_split="col"),
        Op(f"{b}.{prefix}_down", kind, b, n=h, k=inter, weights=inter * h * count, tp_split="row",
           token_factor=token_factor, experts=experts, reduces=True),
    ]


def build_ir(m: ModelSpec) -> nx.DiGraph:
    """The operator graph of ``m``: ``pre``, one block per layer kind (with ``repeat``), ``post``."""
    g = nx.DiGraph(model=m.name)
    h = m.hidden_size
    blocks: list[tuple[str, list[Op]]] = [
        ("pre", [Op("pre.embedding", "embedding", "pre", elems_per_token=h, weights=m.vocab_size * h,
                    tp_split="vocab", reduces=True)])
    ]
    repeat = {"pre": 1}
    if m.num_dense_layers:
        blocks.append(("dense", _attention_ops(m, "dense") + _mlp_ops(m, "dense", m.intermediate_size)))
        repeat["dense"] = m.num_dense_layers
    if m.moe:
        e = m.moe
        ops = _attention_ops(m, "moe")
        ops.append(Op("moe.router", "router", "moe", n=e.num_experts, k=h, weights=h * e.num_experts))
        ops += _mlp_ops(m, "moe", e.expert_intermediate_size, "expert", token_factor=e.top_k, experts=e.num_experts)
        if e.shared_intermediate_size:
            ops += _mlp_ops(m, "moe", e.shared_intermediate_size, "shared")
        ops.append(Op("moe.moe_add", "add", "moe", elems_per_token=3 * h))
        blocks.append(("moe", ops))
        repeat["moe"] = m.num_moe_layers
    if not m.moe:
        blocks[-1][1].append(Op("dense.mlp_add", "add", "dense", elems_per_token=3 * h))
    elif m.num_dense_layers:
        blocks[1][1].append(Op("dense.mlp_add", "add", "dense", elems_per_token=3 * h))
    lm_weights = 0 if m.tie_word_embeddings else m.vocab_size * h
    blocks.append(
        (
            "post",
            [
                Op("post.final_norm", "norm", "post", elems_per_token=2 * h, weights=h),
                Op("post.lm_head", "gemm", "post", n=m.vocab_size, k=h, weights=lm_weights, tp_split="col"),
                Op("post.sampler", "sampler", "post", elems_per_token=2 * m.vocab_size),
            ],
        )
    )
    repeat["post"] = 1
    previous = None
    for _, ops in blocks:
        for op in ops:
            g.add_node(op.name, op=op)
            if previous is not None:
                g.add_edge(previous, op.name)
            previous = op.name
    g.graph["repeat"] = repeat
    g.graph["blocks"] = [name for name, _ in blocks]
    return g


def block_ops(g: nx.DiGraph, block: str) -> list[Op]:
    """The operators of one block, in execution order."""
    return [g.nodes[n]["op"] for n in nx.topological_sort(g) if g.nodes[n]["op"].block == block]
