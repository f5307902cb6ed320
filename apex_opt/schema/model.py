"""Model specs, normalised from Hugging Face ``config.json`` files.

One :class:`ModelSpec` describes a decoder-only transformer: dense or mixture-of-experts, with grouped-query
(GQA/MHA) or multi-head latent attention (MLA, DeepSeek-V3 and Kimi-K2), full or sliding-window attention layers,
and the stored format of an already-quantized checkpoint. HF configs carry many fields apex-opt does
not need; :func:`model_from_hf_config` reads the ones that shape compute and memory and fails with the field name
when a required one is missing or malformed.
"""

from __future__ import annotations

from collections.abc import Iterable
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


QuantDtype = Literal["fp8", "int8", "int4", "fp4"]


class CheckpointQuantSpec(Spec):
    """How an already-quantized checkpoint stores its weights, read from ``config.json``'s ``quantization_config``.

    Each weight takes ``bits``; every ``group_size`` weights share ``scale_bits`` of scale (and zero point), so
    ``bytes_per_weight = (bits + scale_bits / group_size) / 8``: MXFP4 (4 + 8/32) / 8 = 0.53125, NVFP4
    (4 + 8/16) / 8 = 0.5625, fp8 with 128x128 blocks (8 + 32/16384) / 8, AWQ int4 group 128 (4 + 20/128) / 8.
    ``scope`` says which weights are stored so: ``linear`` (every linear layer but the embedding, LM head and
    router) or ``experts`` (only the routed experts, as gpt-oss's MXFP4 keeps attention in bf16).

    >>> CheckpointQuantSpec(method="mxfp4", dtype="fp4", bits=4, group_size=32, scale_bits=8).bytes_per_weight
    0.53125
    """

    method: str = Field(description="quant_method of the config (fp8, mxfp4, modelopt, awq, gptq, ...)")
    dtype: QuantDtype = Field(description="element format of the stored weights")
    bits: int = Field(ge=1, le=16)
    group_size: int | None = Field(default=None, ge=1, description="weights sharing one scale; None: one scale "
                                   "per output channel or tensor (negligible)")
    scale_bits: int = Field(default=0, ge=0, description="bits stored per group: the scale plus any zero point")
    scope: Literal["linear", "experts"] = "linear"
    activations: QuantDtype | None = Field(default=None, description="activations quantized too (w8a8, fp8, "
                                           "fp4): the math may run in this format; None: weight-only")
    not_converted: tuple[str, ...] = Field(default=(), description="modules_to_not_convert / ignore patterns")

    @property
    def bytes_per_weight(self) -> float:
        return (self.bits + (self.scale_bits / self.group_size if self.group_size else 0.0)) / 8


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
    trust_remote_code: bool = Field(default=False, description="the HF config loads code from the model repo "
                                    "(auto_map, or a model_type transformers does not ship)")
    checkpoint_quantization: str | None = Field(default=None, description="quant_method of the config's "
                                                "quantization_config: the checkpoint is already quantized")
    checkpoint_weights: CheckpointQuantSpec | None = Field(default=None, description="the stored format of the "
                                                           "quantized checkpoint's weights (bytes, scope, math)")
    sliding_window: int | None = Field(default=None, ge=1, description="tokens a sliding-window (or chunked) "
                                       "attention layer sees, and at most holds in its KV cache per sequence")
    sliding_layers: tuple[int, ...] = Field(default=(), description="indices of the sliding-window layers")
    attention_sinks: bool = Field(default=False, description="learned per-head sink logits (gpt-oss)")
    mla: MLASpec | None = None
    moe: MoESpec | None = None
    moe_layers: tuple[int, ...] = Field(default=(), description="indices of the layers whose MLP is an MoE")
    source: str = ""
    hf_repo: str = Field(default="", description="Hugging Face repository served (launch commands), e.g. "
                         "meta-llama/Llama-3.1-70B-Instruct; --model accepts it in any case")
    hf_aliases: tuple[str, ...] = Field(default=(), description="other Hugging Face ids of the same architecture "
                                        "(e.g. the base model) that --model also maps to this model")

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
        if any(not 0 <= i < self.num_layers for i in self.sliding_layers):
            raise ValueError("sliding_layers holds an index outside 0..num_layers-1")
        if self.sliding_layers and self.sliding_window is None:
            raise ValueError("sliding_layers given without a sliding_window")
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

    def kv_window(self, layer: int) -> int | None:
        """Tokens of KV one sequence can hold in ``layer``: the window for a sliding layer, else None (unbounded)."""
        return self.sliding_window if layer in self.sliding_layers else None

    def kv_elems_per_sequence(self, context: int, tp: int = 1, layers: Iterable[int] | None = None) -> int:
        """KV-cache elements one sequence of ``context`` tokens holds on one TP rank, over ``layers`` (all by
        default): a full-attention layer holds every token, a sliding-window layer at most ``sliding_window``."""
        per_layer = self.kv_elems_per_token_per_layer(tp)
        chosen = range(self.num_layers) if layers is None else layers
        return sum(per_layer * min(context, self.kv_window(i) or context) for i in chosen)

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
    "sliding_window": 1 << 27, "attention_chunk_size": 1 << 27, "intermediate_size_mlp": 1 << 21,
    "interleave_moe_layer_step": 2048, "experts_per_token": 1 << 16,
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


#: model types whose config and modelling code come from the model repo, not from transformers (Kimi-K2; DeepSeek-V3
#: before transformers 4.51)
_REMOTE_CODE_TYPES = ("kimi_k2", "deepseek_v3")


def _checkpoint_quantization(cfg: dict[str, Any]) -> str | None:
    """``quant_method`` of an HF ``quantization_config`` (``fp8`` for DeepSeek-V3), or None for a 16-bit checkpoint."""
    q = cfg.get("quantization_config")
    method = q.get("quant_method") if isinstance(q, dict) else None
    return str(method).lower() if method else None


#: quant_method values apex-opt reads (see :func:`_checkpoint_weights`)
_QUANT_METHODS = ("fp8", "fbgemm_fp8", "mxfp4", "nvfp4", "modelopt", "modelopt_fp4", "awq", "gptq",
                  "compressed-tensors")


def _quant_scope(excluded: Any) -> tuple[Literal["linear", "experts"], tuple[str, ...]]:
    """Which weights a checkpoint quantizes, from its exclusion list: attention excluded means experts only."""
    names = tuple(str(x) for x in excluded) if isinstance(excluded, list) else ()
    attention_kept = any("attn" in x or "attention" in x for x in names)
    return ("experts" if attention_kept else "linear"), names


def _checkpoint_weights(cfg: dict[str, Any], source: str) -> dict[str, Any] | None:
    """The stored weight format of a quantized checkpoint (:class:`CheckpointQuantSpec` fields), or None."""
    q = cfg.get("quantization_config")
    if not isinstance(q, dict) or not q.get("quant_method"):
        return None
    method = str(q["quant_method"]).lower()
    scope, excluded = _quant_scope(q.get("modules_to_not_convert") or q.get("ignore") or q.get("exclude_modules"))
    spec: dict[str, Any] = {"method": method, "scope": scope, "not_converted": excluded}
    if method in ("fp8", "fbgemm_fp8"):  # fbgemm_fp8: Llama-4 Maverick FP8, per-channel scales
        block = _block(q, "weight_block_size", source)
        group = block[0] * block[1] if block else None
        return {**spec, "dtype": "fp8", "bits": 8, "group_size": group, "scale_bits": 32 if group else 0,
                "activations": "fp8"}
    if method == "mxfp4":  # OCP microscaling: 32 fp4 (e2m1) weights share one 8-bit power-of-two scale
        return {**spec, "dtype": "fp4", "bits": 4, "group_size": 32, "scale_bits": 8, "activations": None}
    algo = str(q.get("quant_algo", "")).upper()
    if method in ("nvfp4", "modelopt_fp4") or (method == "modelopt" and algo == "NVFP4"):
        # 16 fp4 weights share one fp8 (e4m3) scale, plus one fp32 scale per tensor (negligible)
        group = q.get("group_size") or 16
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise SpecError(f"{source}: quantization_config.group_size is {shorten(group)}; it must be a positive whole "
                            "number (NVFP4: \"group_size\": 16)")
        return {**spec, "dtype": "fp4", "bits": 4, "group_size": group, "scale_bits": 8,
                "activations": "fp4"}
    if method == "modelopt" and algo == "FP8":
        return {**spec, "dtype": "fp8", "bits": 8, "activations": "fp8"}
    if method in ("awq", "gptq"):
        bits = q.get("bits", q.get("w_bit", 4))
        if bits not in (4, 8):
            raise SpecError(f"{source}: quantization_config.bits is {shorten(bits)}; apex-opt prices {method} "
                            "checkpoints of 4 or 8 bits (e.g. \"bits\": 4)")
        group = q.get("group_size", q.get("q_group_size", 128))
        group = int(group) if isinstance(group, int) and group > 0 else None  # -1: one scale per channel
        # an fp16 scale and a packed zero point of ``bits`` bits per group (AWQ qzeros, GPTQ qzeros)
        return {**spec, "dtype": "int4" if bits == 4 else "int8", "bits": bits, "group_size": group,
                "scale_bits": 16 + bits if group else 0, "activations": None}
    if method == "compressed-tensors":
        return _compressed_tensors(q, spec, source)
    raise SpecError(f"{source}: quantization_config.quant_method is '{method}', a format apex-opt cannot size; "
                    f"supported: {', '.join(_QUANT_METHODS)}. Use a 16-bit or one of those checkpoints")


def _block(q: dict[str, Any], key: str, source: str) -> tuple[int, int] | None:
    """A ``[rows, cols]`` quantization block of two positive whole numbers, or None when the key is absent."""
    block = q.get(key)
    if block is None:
        return None
    if not isinstance(block, list) or len(block) != 2 or \
            any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in block):
        raise SpecError(f"{source}: quantization_config.{key} is {shorten(block)}; it must be two positive whole "
                        f"numbers, e.g. \"{key}\": [128, 128]")
    return block[0], block[1]


def _compressed_tensors(q: dict[str, Any], spec: dict[str, Any], source: str) -> dict[str, Any]:
    """llm-compressor's ``compressed-tensors`` scheme: the first config group's weight (and activation) args."""
    groups = q.get("config_groups")
    first = next(iter(groups.values()), None) if isinstance(groups, dict) and groups else None
    weights = first.get("weights") if isinstance(first, dict) else None
    if not isinstance(weights, dict) or not isinstance(weights.get("num_bits"), int):
        raise SpecError(f"{source}: quantization_config.config_groups has no group with weights.num_bits; a "
                        "compressed-tensors config needs e.g. {\"group_0\": {\"weights\": {\"num_bits\": 8, "
                        "\"type\": \"int\", ...}}}")
    bits = weights["num_bits"]
    is_float = str(weights.get("type", "int")) == "float"
    dtype = {(8, True): "fp8", (8, False): "int8", (4, True): "fp4", (4, False): "int4"}.get((bits, is_float))
    if dtype is None:
        raise SpecError(f"{source}: compressed-tensors weights of {bits} bits ({weights.get('type')}) are not "
                        "priced; apex-opt reads 8-bit (int, float) and 4-bit (int, float) weights")
    strategy = str(weights.get("strategy", "channel"))
    group = None
    scale_bits = 0
    if strategy == "group" and isinstance(weights.get("group_size"), int):
        group = weights["group_size"]
        scale_bits = 8 if dtype == "fp4" else 16  # nvfp4: e4m3 scales; int4 w4a16: bf16 scales
    elif strategy == "block" and weights.get("block_structure") is not None:
        block = _block(weights, "block_structure", source)
        group = block[0] * block[1] if block else None
        scale_bits = 32 if block else 0
    acts = first.get("input_activations") if isinstance(first, dict) else None
    activations = dtype if isinstance(acts, dict) and acts.get("num_bits") == bits else None
    return {**spec, "dtype": dtype, "bits": bits, "group_size": group, "scale_bits": scale_bits,
            "activations": activations}


#: model types whose config fields apex-opt reads with their meaning known (any other type must spell out the
#: shapes: see :data:`_SHAPE_FIELDS`)
_KNOWN_TYPES = (
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "deepseek_v2", "deepseek_v3",
    "kimi_k2", "gpt_oss", "llama4", "llama4_text", "glm4_moe",
)
#: fields an unknown model type must give, since apex-opt cannot know its defaults
_SHAPE_FIELDS = (("num_key_value_heads",), ("head_dim",), ("intermediate_size", "moe_intermediate_size"))


def _check_model_type(cfg: dict[str, Any], model_type: str, source: str) -> None:
    """An unknown ``model_type`` loads only when its fields fully determine the shapes; else name the field."""
    if model_type in _KNOWN_TYPES:
        return
    for keys in _SHAPE_FIELDS:
        if not any(cfg.get(k) is not None for k in keys):
            kind = f"model_type '{model_type}'" if model_type else "a config without a model_type"
            names = " or ".join(repr(k) for k in keys)
            raise SpecError(f"{source}: {kind} is not one apex-opt knows, and the config has no field {names}, so "
                            f"its shapes are not determined; add {names} (copy it from the model's modelling "
                            f"code), or set model_type to a known family ({', '.join(_KNOWN_TYPES[:6])}, ...)")


def _sliding(cfg: dict[str, Any], model_type: str, layers: int, source: str) -> tuple[int | None, list[int]]:
    """(window, indices of sliding-window layers): gpt-oss/Gemma ``layer_types``, Gemma-2/3 interleaving, Qwen2
    ``use_sliding_window`` with ``max_window_layers``, Llama-4 chunked attention (a chunk bounds the KV too)."""
    window = _opt(cfg, "sliding_window", source)
    types = cfg.get("layer_types")
    if isinstance(types, list) and any(t == "sliding_attention" for t in types):
        if window is None:
            raise SpecError(f"{source}: layer_types names sliding_attention layers but the config has no field "
                            "'sliding_window'; add it (tokens each sliding layer sees, e.g. \"sliding_window\": 128)")
        return window, [i for i, t in enumerate(types[:layers]) if t == "sliding_attention"]
    if model_type in ("llama4", "llama4_text") and cfg.get("attention_chunk_size"):
        chunk = _whole(cfg, "attention_chunk_size", source)
        rope = cfg.get("no_rope_layers")
        if not isinstance(rope, list) or len(rope) != layers:  # transformers' default: every 4th layer is NoPE
            step = int(cfg.get("no_rope_layer_interval") or 4)
            rope = [int((i + 1) % step != 0) for i in range(layers)]
        return chunk, [i for i, r in enumerate(rope) if r]
    if window is None or cfg.get("use_sliding_window") is False:
        return None, []
    if model_type == "gemma2":
        return window, [i for i in range(layers) if i % 2 == 0]
    if model_type in ("gemma3", "gemma3_text"):
        pattern = int(cfg.get("sliding_window_pattern") or 6)
        return window, [i for i in range(layers) if (i + 1) % pattern]
    if model_type in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"):
        if not cfg.get("use_sliding_window"):
            return None, []
        first = int(cfg.get("max_window_layers") or 0)
        return window, list(range(first, layers))
    if model_type in ("mistral", "mixtral") and window < int(cfg.get("max_position_embeddings") or 1 << 30):
        return window, list(range(layers))
    return None, []


def model_from_hf_config(cfg: dict[str, Any], *, name: str, source: str = "<config>") -> ModelSpec:
    """Normalise a Hugging Face ``config.json`` dict into a :class:`ModelSpec`.

    Supports the Llama/Mistral/Qwen2/Qwen3 (dense GQA), Mixtral, Qwen2-MoE/Qwen3-MoE, DeepSeek-V2/V3, Kimi-K2,
    GLM-4.5, Llama-4 (shared expert, interleaved MoE layers, chunked attention) and gpt-oss (sliding-window layers,
    attention sinks) families, and reads the checkpoint's ``quantization_config`` (:class:`CheckpointQuantSpec`).
    A config of another ``model_type`` loads as a dense or MoE GQA model only when it spells out the shapes
    (``num_key_value_heads``, ``head_dim``, the MLP width); otherwise a :class:`SpecError` names the missing field.
    """
    if not isinstance(cfg, dict):
        raise SpecError(f"{source}: a model config must be a JSON object, got {type(cfg).__name__}")
    if "text_config" in cfg and "hidden_size" not in cfg:
        if not isinstance(cfg["text_config"], dict):
            raise SpecError(f"{source}: field 'text_config' is {shorten(cfg['text_config'])}; it must be an object "
                            "holding the language model's fields (hidden_size, num_hidden_layers, ...)")
        # a multimodal wrapper (Llama-4): the language model's fields, plus the checkpoint-wide keys kept outside
        outer: dict[str, Any] = {k: cfg[k] for k in ("quantization_config", "auto_map", "hf_repo", "hf_aliases")
                                 if k in cfg}
        cfg = {**cfg["text_config"], **outer, "model_type": cfg.get("model_type", "")}
    model_type = str(cfg.get("model_type", "")).lower()
    hidden = _req(cfg, "hidden_size", source, "n_embd", "d_model")
    layers = _req(cfg, "num_hidden_layers", source, "n_layer", "num_layers")
    heads = _req(cfg, "num_attention_heads", source, "n_head")
    _req(cfg, "vocab_size", source)
    _check_model_type(cfg, model_type, source)
    kv_heads = _opt(cfg, "num_key_value_heads", source) or heads
    head_dim = _opt(cfg, "head_dim", source)
    if head_dim is None and not cfg.get("kv_lora_rank") and hidden % heads:
        raise SpecError(f"{source}: field 'hidden_size' {hidden} is not divisible by num_attention_heads "
                        f"{heads}, and the config gives no head_dim; fix one of them or add \"head_dim\"")
    head_dim = head_dim or hidden // heads
    vocab = _req(cfg, "vocab_size", source)
    inter = _opt(cfg, "intermediate_size", source) or _opt(cfg, "n_inner", source) or 4 * hidden
    llama4 = model_type in ("llama4", "llama4_text")
    if llama4:  # intermediate_size is the expert (and shared expert) width; dense layers use intermediate_size_mlp
        inter = _opt(cfg, "intermediate_size_mlp", source) or inter
    for key in ("max_position_embeddings", "n_positions", "moe_intermediate_size", "shared_expert_intermediate_size",
                "first_k_dense_replace", "moe_layer_freq", "decoder_sparse_step", "n_shared_experts", "kv_lora_rank",
                "q_lora_rank", "interleave_moe_layer_step", "intermediate_size_mlp"):
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
        top_k = _req(cfg, "num_experts_per_tok", source, "moe_top_k", "num_selected_experts", "experts_per_token")
        expert_inter = cfg.get("moe_intermediate_size") or (_req(cfg, "intermediate_size", source) if llama4 else inter)
        n_shared = int(cfg.get("n_shared_experts") or 0)
        if llama4:  # every Llama-4 MoE layer adds one always-on shared expert as wide as a routed one
            n_shared = 1
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
            # DeepSeek-V3's e_score_correction_bias (GLM-4.5 has it too); gpt-oss's router is a biased linear
            "router_bias": str(cfg.get("topk_method", "")) == "noaux_tc" or model_type in ("glm4_moe", "gpt_oss"),
        }
        first_dense = int(cfg.get("first_k_dense_replace") or 0)
        freq = int(cfg.get("moe_layer_freq") or cfg.get("decoder_sparse_step") or 1)
        dense_only = cfg.get("mlp_only_layers") or []
        if not isinstance(dense_only, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in dense_only):
            raise SpecError(f"{source}: field 'mlp_only_layers' is {shorten(dense_only)}; it must be a list of layer "
                            "indices, e.g. [0, 1]")
        dense_only = set(dense_only)
        step = int(cfg.get("interleave_moe_layer_step") or 1)  # Llama-4: layers step-1, 2*step-1, ... are MoE
        for i in range(int(layers)):
            if i < first_dense or i in dense_only or (i + 1) % step:
                continue
            if "decoder_sparse_step" in cfg and (i + 1) % freq:
                continue
            if "moe_layer_freq" in cfg and i % freq:
                continue
            moe_layers.append(i)

    window, sliding_layers = _sliding(cfg, model_type, int(layers), source)
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
        or model_type in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "qwen2_moe", "deepseek_v3",
                          "gpt_oss", "llama4", "llama4_text", "glm4_moe", "gemma2", "gemma3", "gemma3_text"),
        "attention_bias": bool(cfg.get("attention_bias", model_type in ("qwen2", "qwen2_moe"))),
        # Llama-4's qk norm is a weightless L2 norm; GLM-4.5 has RMSNorm weights when use_qk_norm is set
        "qk_norm": model_type in ("qwen3", "qwen3_moe") or (model_type == "glm4_moe" and bool(cfg.get("use_qk_norm"))),
        "torch_dtype": str(cfg.get("torch_dtype") or "bfloat16"),
        "trust_remote_code": bool(cfg.get("auto_map")) or model_type in _REMOTE_CODE_TYPES,
        "checkpoint_quantization": _checkpoint_quantization(cfg),
        "checkpoint_weights": _checkpoint_weights(cfg, source),
        "sliding_window": window,
        "sliding_layers": tuple(sliding_layers),
        "attention_sinks": model_type == "gpt_oss",
        "mla": mla,
        "moe": moe,
        "moe_layers": tuple(moe_layers),
        "source": source,
        # apex-opt's own keys in a catalog file (an HF config.json has neither)
        "hf_repo": cfg.get("hf_repo", ""),
        "hf_aliases": cfg.get("hf_aliases", ()),
    }
    return ModelSpec.parse(data, source=source, kind="model")


AttentionKind = Literal["gqa", "mla"]
