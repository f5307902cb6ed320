"""Parameter counts of a model, per component, from its normalised spec.

The counts follow the checkpoints' tensors: embeddings, LM head (unless tied), per-layer attention projections
(GQA: q, k, v, o; MLA: q_a/q_b (or q), kv_a_proj_with_mqa, kv_b, o plus the two LoRA norms), norms, dense MLPs and
MoE blocks (router, routed experts, shared experts). *Active* parameters count only ``top_k`` routed experts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..schema.model import ModelSpec


def attention_params(m: ModelSpec) -> int:
    """Parameters of one attention block (projections, their biases and q/k norms; not the input norm)."""
    h = m.hidden_size
    if m.mla:
        a = m.mla
        qk = a.qk_nope_head_dim + a.qk_rope_head_dim
        if a.q_lora_rank:
            q = h * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * m.num_heads * qk
        else:
            q = h * m.num_heads * qk
        kv = h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
        kv += a.kv_lora_rank * m.num_heads * (a.qk_nope_head_dim + a.v_head_dim)
        o = m.num_heads * a.v_head_dim * h
        return q + kv + o
    q = h * m.num_heads * m.head_dim
    kv = 2 * h * m.num_kv_heads * m.head_dim
    o = m.num_heads * m.head_dim * h
    bias = (m.num_heads + 2 * m.num_kv_heads) * m.head_dim if m.attention_bias else 0
    qk_norm = 2 * m.head_dim if m.qk_norm else 0
    return q + kv + o + bias + qk_norm


def mlp_params(hidden: int, inter: int, gated: bool) -> int:
    """A (gated) MLP: up (and gate) projections plus the down projection."""
    return (3 if gated else 2) * hidden * inter


def expert_params(m: ModelSpec) -> int:
    """One routed expert."""
    assert m.moe is not None
    return mlp_params(m.hidden_size, m.moe.expert_intermediate_size, m.gated_mlp)


def moe_block_params(m: ModelSpec, *, active: bool) -> int:
    """One MoE block: router, routed experts (all, or top_k when ``active``), shared experts and their gate."""
    assert m.moe is not None
    e = m.moe
    router = m.hidden_size * e.num_experts + (e.num_experts if e.router_bias else 0)
    routed = (e.top_k if active else e.num_experts) * expert_params(m)
    shared = mlp_params(m.hidden_size, e.shared_intermediate_size, m.gated_mlp) if e.shared_intermediate_size else 0
    gate = m.hidden_size if e.shared_expert_gate else 0
    return router + routed + shared + gate


def count_parameters(m: ModelSpec) -> dict[str, int]:
    """Total and active parameter counts with a per-component breakdown.

    >>> from apex_opt.catalog import get_model
    >>> c = get_model("llama-3.1-8b").parameter_counts
    >>> round(c["total"] / 1e9, 2)
    8.03
    """
    h = m.hidden_size
    embed = m.vocab_size * h
    lm_head = 0 if m.tie_word_embeddings else m.vocab_size * h
    norms = 2 * h * m.num_layers + h
    attn = attention_params(m) * m.num_layers
    dense_mlp = mlp_params(h, m.intermediate_size, m.gated_mlp) * m.num_dense_layers
    moe_total = moe_block_params(m, active=False) * m.num_moe_layers if m.moe else 0
    moe_active = moe_block_params(m, active=True) * m.num_moe_layers if m.moe else 0
    common = embed + lm_head + norms + attn + dense_mlp
    return {
        "embedding": embed,
        "lm_head": lm_head,
        "norms": norms,
        "attention": attn,
        "dense_mlp": dense_mlp,
        "moe": moe_total,
        "moe_active": moe_active,
        "total": common + moe_total,
        "active": common + moe_active,
        "active_excl_embedding": common + moe_active - embed,
    }
