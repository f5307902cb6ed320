"""Model specs, normalised from Hugging Face ``config.json`` files.

One :class:`ModelSpec` describes a decoder-only transformer: dense or mixture-of-experts, with grouped-query
(GQA/MHA) or multi-head latent attention (MLA, DeepSeek-V3 and Kimi-K2). HF configs carry many fields apex-opt does
not need; :func:`model_from_hf_config` reads the ones that shape compute and memory and fails with the field name
when a required one is missing or malformed.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

from pydantic import Field, model_validator

from ..errors import SpecError, shorten
from .base import Spec


class MLASpec(Spec):
    """Multi-head latent attention dimensions (DeepSeek-V2/V3 naming)."""

    q_lora_rank: int | None = Field(default=None, ge=1)
    kv_lora_rank: int = Field(ge=1)
    qk_nope_head_dim: int = Field(ge=1)
    qk_rope_head_dim: int = Field(ge=1)
    v_head_dim: int = Field(ge=1)


class MoESpec(Spec):
    """Mixture-of-experts feed-forward: ``num_experts`` routed experts, ``top_k`` per token, plus shared ones."""

    num_experts: int = Field(ge=2)
    top_k: int = Field(ge=1)
    expert_intermediate_size: int = Field(ge=1)
    num_shared_experts: int = Field(default=0, ge=0)
    shared_intermediate_size: int = Field(default=0, ge=0, description="total width of the shared experts")
    shared_expert_gate: bool = False
    router_bias: bool = False

    @model_validator(mode="after")
    def _top_k_at_most_experts(self) -> MoESpec:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k {self.top_k} exceeds num_experts {self.num_experts}")
        return self


class ModelSpec(Spec):
    """A decoder-only transformer, normalised.

    >>> from apex_opt.catalog import get_model
    >>> m = get_model("llama-3.1-70b")
    >>> m.num_layers, m.num_kv_heads, m.head_dim, m.is_moe
    (80, 8, 128, False)
    """

    name: str
    architecture: str = Field(description="HF model_type, e.g. llama, mixtral, deepseek_v3")
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    intermediate_size: int = Field(ge=1, description="width of the dense (non-MoE) MLP")
    vocab_size: int = Field(ge=1)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = Field(ge=1)
    gated_mlp: bool = True
    attention_bias: bool = False
    qk_norm: bool = False
    torch_dtype: str = "bfloat16"
    mla: MLASpec | None = None
    moe: MoESpec | None = None
    moe_layers: tuple[int, ...] = Field(default=(), description="indices of the layers whose MLP is an MoE")
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.mla is None and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}"
            )
        if self.moe is None and self.moe_layers:
            raise ValueError("moe_layers given for a model without an MoE block")
        if any(not 0 <= i < self.num_layers for i in self.moe_layers):
            raise ValueError("moe_layers holds an index outside 0..num_layers-1")
        return self

    # --- derived facts -------------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def is_mla(self) -> bool:
        return self.mla is not None

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - len(self.moe_layers)

    @property
    def q_dim(self) -> int:
        """Width of the attention query (all heads)."""
        if self.mla:
            return self.num_heads * (self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim)
        return self.num_heads * self.head_dim

    @property
    def attn_out_dim(self) -> int:
        """Width of the attention output fed to the output projection."""
        return self.num_heads * (self.mla.v_head_dim if self.mla else self.head_dim)

    def kv_elems_per_token_per_layer(self, tp: int = 1) -> int:
        """KV-cache elements one token needs in one layer on one tensor-parallel rank.

        GQA stores K and V for each KV head, split over TP ranks (replicated when tp > kv heads).
        MLA stores one compressed latent (kv_lora_rank) plus the shared rotary key (qk_rope_head_dim),
        replicated on every TP rank, as vLLM and SGLang do.
        """
        if self.mla:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        heads_per_rank = max(1, self.num_kv_heads // tp)
        return 2 * heads_per_rank * self.head_dim

    @cached_property
    def parameter_counts(self) -> dict[str, int]:
        from ..ir.params import count_parameters

        return count_parameters(self)

    @property
    def total_params(self) -> int:
        return self.parameter_counts["total"]

    @property
    def active_params(self) -> int:
        return self.parameter_counts["active"]


# ------------------------------------------------------------------------------------------------------------------
# HF config -> ModelSpec

_MOE_EXPERT_KEYS = ("num_local_experts", "n_routed_experts", "num_experts")


def _req(cfg: dict[str, Any], key: str, source: str, *alts: str) -> Any:
    for k in (key, *alts):
        if k in cfg and cfg[k] is not None:
            return _whole(cfg, k, source)
    names = " or ".join(repr(k) for k in (key, *alts))
    raise SpecError(f"{source}: the model config has no field {names}; it is required to size the model")


#: the largest value apex-opt accepts for a size field of an HF config (far above any real model; a bigger one
#: is a typo and would make apex-opt build enormous graphs)
_LIMITS: dict[str, int] = {
    "num_hidden_layers": 2048, "n_layer": 2048, "num_layers": 2048,
    "num_attention_heads": 4096, "n_head": 4096, "num_key_value_heads": 4096,
    "hidden_size": 1 << 18, "n_embd": 1 << 18, "d_model": 1 << 18,
    "head_dim": 1 << 14, "vocab_size": 1 << 24, "intermediate_size": 1 << 21, "n_inner": 1 << 21,
    "moe_intermediate_size": 1 << 21, "shared_expert_intermediate_size": 1 << 21,
    "max_position_embeddings": 1 << 27, "n_positions": 1 << 27,
    "num_local_experts": 1 << 16, "n_routed_experts": 1 << 16, "num_experts": 1 << 16,
    "num_experts_per_tok": 1 << 16, "moe_top_k": 1 << 16, "num_selected_experts": 1 << 16,
    "n_shared_experts": 1 << 10, "first_k_dense_replace": 2048, "moe_layer_freq": 2048,
    "decoder_sparse_step": 2048, "kv_lora_rank": 1 << 16, "q_lora_rank": 1 << 16,
    "qk_nope_head_dim": 1 << 14, "qk_rope_head_dim": 1 << 14, "v_head_dim": 1 << 14,
}
_EXAMPLES = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
             "vocab_size": 32000, "intermediate_size": 14336, "head_dim": 128, "max_position_embeddings": 8192}
#: fields that may be 0
_ZERO_OK = ("n_shared_experts", "first_k_dense_replace")


def _whole(cfg: dict[str, Any], key: str, source: str) -> int:
    """``cfg[key]`` as a whole number within its limits, or a :class:`SpecError` naming the field and value."""
    value = cfg[key]
    lo, hi = (0 if key in _ZERO_OK else 1), _LIMITS.get(key, 1 << 40)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{source}: field '{key}' is {shorten(value)} ({type(value).__name__}); it must be a whole "
                        f"number (e.g. \"{key}\": {_EXAMPLES.get(key, 8)}) as in the model's config.json")
    if not lo <= value <= hi:
        raise SpecError(f"{source}: field '{key}' is {value}; it must be between {lo} and {hi:,}; fix the value "
                        "(copy it from the model's config.json)")
    return value


def _opt(cfg: dict[str, Any], key: str, source: str) -> int | None:
    """An optional whole-number field: None when missing or null."""
    return _whole(cfg, key, source) if cfg.get(key) is not None else None


def model_from_hf_config(cfg: dict[str, Any], *, name: str, source: str = "<config>") -> ModelSpec:
    """Normalise a Hugging Face ``config.json`` dict into a :class:`ModelSpec`.

    Supports the Llama/Mistral/Qwen2 (dense GQA), Mixtral, Qwen2-MoE/Qwen3-MoE, DeepSeek-V2/V3 and Kimi-K2 families;
    other decoder-only configs with the standard field names load as dense GQA models.
    """
    if not isinstance(cfg, dict):
        raise SpecError(f"{source}: a model config must be a JSON object, got {type(cfg).__name__}")
    if "text_config" in cfg and "hidden_size" not in cfg:
        if not isinstance(cfg["text_config"], dict):
            raise SpecError(f"{source}: field 'text_config' is {shorten(cfg['text_config'])}; it must be an object "
                            "holding the language model's fields (hidden_size, num_hidden_layers, ...)")
        cfg = {**cfg["text_config"], "model_type": cfg.get("model_type", "")}
    model_type = str(cfg.get("model_type", "")).lower()
    hidden = _req(cfg, "hidden_size", source, "n_embd", "d_model")
    layers = _req(cfg, "num_hidden_layers", source, "n_layer", "num_layers")
    heads = _req(cfg, "num_attention_heads", source, "n_head")
    kv_heads = _opt(cfg, "num_key_value_heads", source) or heads
    head_dim = _opt(cfg, "head_dim", source)
    if head_dim is None and not cfg.get("kv_lora_rank") and hidden % heads:
        raise SpecError(f"{source}: field 'hidden_size' {hidden} is not divisible by num_attention_heads "
                        f"{heads}, and the config gives no head_dim; fix one of them or add \"head_dim\"")
    head_dim = head_dim or hidden // heads
    vocab = _req(cfg, "vocab_size", source)
    inter = _opt(cfg, "intermediate_size", source) or _opt(cfg, "n_inner", source) or 4 * hidden
    for key in ("max_position_embeddings", "n_positions", "moe_intermediate_size", "shared_expert_intermediate_size",
                "first_k_dense_replace", "moe_layer_freq", "decoder_sparse_step", "n_shared_experts", "kv_lora_rank",
                "q_lora_rank"):
        _opt(cfg, key, source)

    mla = None
    if cfg.get("kv_lora_rank"):
        mla = {
            "q_lora_rank": cfg.get("q_lora_rank"),
            "kv_lora_rank": cfg["kv_lora_rank"],
            "qk_nope_head_dim": _req(cfg, "qk_nope_head_dim", source),
            "qk_rope_head_dim": _req(cfg, "qk_rope_head_dim", source),
            "v_head_dim": _req(cfg, "v_head_dim", source),
        }
        head_dim = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]

    moe = None
    moe_layers: list[int] = []
    expert_key = next((k for k in _MOE_EXPERT_KEYS if cfg.get(k) is not None), None)
    n_experts = None
    if expert_key is not None:
        n_experts = _whole(cfg, expert_key, source) if cfg[expert_key] != 0 or isinstance(cfg[expert_key], bool) \
            else 0
        if n_experts < 2:
            raise SpecError(f"{source}: field '{expert_key}' is {n_experts}; a mixture-of-experts model has at least "
                            f"2 experts; for a dense model remove \"{expert_key}\" from the config")
    if n_experts and n_experts > 1:
        top_k = _req(cfg, "num_experts_per_tok", source, "moe_top_k", "num_selected_experts")
        expert_inter = cfg.get("moe_intermediate_size") or inter
        n_shared = int(cfg.get("n_shared_experts") or 0)
        shared_inter = n_shared * expert_inter
        shared_gate = False
        if cfg.get("shared_expert_intermediate_size"):  # Qwen2-MoE: one wide shared expert with a sigmoid gate
            n_shared = 1
            shared_inter = int(cfg["shared_expert_intermediate_size"])
            shared_gate = True
        moe = {
            "num_experts": int(n_experts),
            "top_k": int(top_k),
            "expert_intermediate_size": int(expert_inter),
            "num_shared_experts": n_shared,
            "shared_intermediate_size": int(shared_inter),
            "shared_expert_gate": shared_gate,
            "router_bias": str(cfg.get("topk_method", "")) == "noaux_tc",
        }
        first_dense = int(cfg.get("first_k_dense_replace") or 0)
        freq = int(cfg.get("moe_layer_freq") or cfg.get("decoder_sparse_step") or 1)
        dense_only = cfg.get("mlp_only_layers") or []
        if not isinstance(dense_only, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in dense_only):
            raise SpecError(f"{source}: field 'mlp_only_layers' is {shorten(dense_only)}; it must be a list of layer "
                            "indices, e.g. [0, 1]")
        dense_only = set(dense_only)
        for i in range(int(layers)):
            if i < first_dense or i in dense_only:
                continue
            if "decoder_sparse_step" in cfg and (i + 1) % freq:
                continue
            if "moe_layer_freq" in cfg and i % freq:
                continue
            moe_layers.append(i)

    data = {
        "name": name,
        "architecture": model_type or "unknown",
        "hidden_size": hidden,
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate_size": inter,
        "vocab_size": vocab,
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "max_position_embeddings": cfg.get("max_position_embeddings") or cfg.get("n_positions") or 4096,
        "gated_mlp": str(cfg.get("hidden_act", cfg.get("activation_function", "silu"))).lower()
        in ("silu", "swiglu", "gelu_pytorch_tanh_gated", "geglu")
        or model_type in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "qwen2_moe", "deepseek_v3"),
        "attention_bias": bool(cfg.get("attention_bias", model_type in ("qwen2", "qwen2_moe"))),
        "qk_norm": model_type in ("qwen3", "qwen3_moe"),
        "torch_dtype": str(cfg.get("torch_dtype") or "bfloat16"),
        "mla": mla,
        "moe": moe,
        "moe_layers": tuple(moe_layers),
        "source": source,
    }
    return ModelSpec.parse(data, source=source, kind="model")


AttentionKind = Literal["gqa", "mla"]
