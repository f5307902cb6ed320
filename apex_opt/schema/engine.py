"""Serving-engine specs: the scheduler family and the knobs a plan runs under, with the engine's real defaults.

The rules behind each knob are in ``docs/engines.md`` (vLLM 0.6 V0, vLLM V1, SGLang 0.4, read from their source).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ..units import Bytes, Fraction, Seconds
from .base import Spec

Family = Literal["vllm-v0", "vllm-v1", "sglang"]


class PrefixCacheBehaviour(Spec):
    """Overrides of the family's prefix-cache rules (``apex_opt.sim.config.PrefixCacheRules``); ``None``: the
    family's."""

    dedupe: bool | None = None
    insert_at_schedule: bool | None = None
    decode_insert: bool | None = None
    partial_evict: bool | None = None


class BehaviourOverrides(Spec):
    """Overrides of the family's engine behaviour (``apex_opt.sim.config.EngineBehaviour``, defaults in
    ``apex_opt.sim.config.BEHAVIOURS``); ``None``: the family's."""

    batched_tokens_cover_seqs: bool | None = None
    clip_reserved_new_tokens: bool | None = None
    whole_prompt_blocks_at_schedule: bool | None = None
    prefix_cache: PrefixCacheBehaviour = PrefixCacheBehaviour()

    def changes(self) -> dict[str, Any]:
        """The rules set here (``prefix_cache``: a dict of its set fields), for ``EngineBehaviour.with_``."""
        out: dict[str, Any] = {k: v for k, v in self.model_dump(exclude={"prefix_cache"}).items() if v is not None}
        pc = {k: v for k, v in self.prefix_cache.model_dump().items() if v is not None}
        if pc:
            out["prefix_cache"] = pc
        return out


class SchedulerKnobs(Spec):
    chunked_prefill: Literal["auto", "on", "off"] = "auto"
    #: vLLM 0.6: chunked prefill switches itself on when max_model_len exceeds this
    chunked_prefill_auto_above: int | None = 32768
    #: token budget with chunked prefill on (vLLM 0.6: 512; V1: 8192 on >=70 GiB GPUs; SGLang: chunked_prefill_size)
    chunked_budget: int = Field(default=512, ge=1)
    #: token budget with chunked prefill off: max(max_model_len, this)
    unchunked_budget_floor: int = Field(default=2048, ge=1)
    max_num_seqs: int = Field(default=256, ge=1)
    block_size: int = Field(default=16, ge=1)
    watermark: float = Field(default=0.01, ge=0, lt=1)
    #: SGLang: input tokens per prefill batch
    max_prefill_tokens: int | None = None
    #: SGLang new_token_ratio schedule
    new_token_ratio_init: float = 0.7
    new_token_ratio_min: float = 0.098
    new_token_ratio_decay_steps: int = 600
    #: SGLang: cap on max_new_tokens counted per request in admission
    clip_max_new_tokens: int = 4096
    #: automatic prefix caching: vLLM 0.6 --enable-prefix-caching (off by default), V1 (on by default,
    #: --no-enable-prefix-caching), SGLang's radix cache (on, --disable-radix-cache); apex_opt.sim.prefix_cache
    prefix_caching: bool = False
    #: the simulator's scheduling policy, by the name it is registered under (apex_opt.sim.policies.
    #: register_policy); empty: the policy of the engine's family (vllm-v0, vllm-v1, sglang)
    policy: str = ""
    #: engine behaviour rules that differ from the family's (apex_opt.sim.config.BEHAVIOURS); unset: the family's
    behaviour: BehaviourOverrides = BehaviourOverrides()


class MemoryKnobs(Spec):
    #: vLLM: gpu_memory_utilization; SGLang: mem_fraction_static (by TP size below when not given)
    gpu_memory_utilization: Fraction = 0.9
    #: SGLang's mem_fraction_static by TP size: {min_tp: fraction}
    mem_fraction_by_tp: dict[int, float] | None = None
    #: activation peak the profile run holds: bytes per batched token per hidden element (fitted form in docs)
    profile_activation: Literal["vllm-profile-run", "sglang-static"] = "vllm-profile-run"
    #: fixed non-torch memory per GPU (CUDA context, NCCL buffers) counted by the profile run
    fixed_overhead: Bytes = 1.5 * 2**30


class CudaGraphKnobs(Spec):
    enabled: bool = True
    #: largest decode batch with a captured graph (vLLM 0.6: 256; SGLang: 160)
    max_batch: int = Field(default=256, ge=1)
    #: vLLM 0.6: graphs only when the longest decode context <= this (max_seq_len_to_capture)
    max_context: int | None = 8192
    #: which iterations may use graphs: decode-only (vLLM 0.6, SGLang) or any batch of <= max_tokens tokens (V1)
    mode: Literal["decode-only", "piecewise-tokens"] = "decode-only"
    max_tokens: int | None = None
    #: vLLM >= 0.10: captured sizes stop at min(max_tokens, this x max_num_seqs) (``_set_cudagraph_sizes``)
    max_tokens_per_seq: int | None = None


class KernelCount(Spec):
    """Kernels one operator launches from the host in eager mode, by launcher (they cost differently)."""

    #: ATen and custom CUDA ops (PyTorch dispatch + cudaLaunchKernel)
    cuda: int = Field(default=1, ge=0)
    #: Triton JIT kernels (Triton's Python launcher binds and specialises every argument)
    triton: int = Field(default=0, ge=0)


class EagerKernels(Spec):
    """The engine's kernel inventory for eager passes, read from its source (``docs/calibration.md`` section 6).

    ``ops`` is keyed by IR operator kind (``norm``, ``gemm``, ``rope``, ``attention``, ``act``, ``add``,
    ``router``, ``experts``, ``embedding``), by collective (``all_reduce``, ``all_gather``, ``all_to_all``) or
    by ``kind@variant`` for a code path chosen by the plan: ``attention@triton`` (an attention backend),
    ``experts@ep`` (the expert-parallel MoE layer), ``fp8_quant`` (dynamic activation quantisation before
    each W8A8 GEMM). A kind missing from the table launches one CUDA kernel.
    """

    ops: dict[str, KernelCount] = Field(default_factory=dict)
    #: the attention backend the engine uses unless the plan says otherwise
    attention_backend: str = "flash-attn"
    #: the backend it falls back to for an fp8 KV cache (vLLM 0.6: XFormers, FlashAttention-2 reads no fp8 KV)
    fp8_kv_attention_backend: str | None = None

    def backends(self) -> list[str]:
        """The attention backends this inventory knows: the default, the fp8-KV fallback and every
        ``attention@<name>`` entry."""
        names = {self.attention_backend, *(k.split("@", 1)[1] for k in self.ops if k.startswith("attention@"))}
        if self.fp8_kv_attention_backend:
            names.add(self.fp8_kv_attention_backend)
        return sorted(names)

    def backend(self, plan_backend: str | None, kv_dtype: str) -> str:
        """The attention backend in force for a plan."""
        if plan_backend is not None:
            return plan_backend
        if kv_dtype == "fp8" and self.fp8_kv_attention_backend is not None:
            return self.fp8_kv_attention_backend
        return self.attention_backend

    def count(self, kind: str, variant: str | None = None) -> KernelCount:
        if variant is not None and f"{kind}@{variant}" in self.ops:
            return self.ops[f"{kind}@{variant}"]
        return self.ops.get(kind, KernelCount())


class SmallGPUDefaults(Spec):
    """Defaults an engine picks for itself on a GPU with less memory than ``below`` (a plan's own value wins)."""

    below: Bytes = Field(description="GPU memory under which these defaults apply (vLLM V1: 70 GiB; SGLang 0.4: "
                                     "25 GB)")
    chunked_budget: int | None = Field(default=None, ge=1, description="token budget with chunked prefill on "
                                       "(vLLM V1, SGLang 0.4: 2048); None: scheduler.chunked_budget")
    max_num_seqs: int | None = Field(default=None, ge=1, description="sequence limit (vLLM V1: 256); None: "
                                     "scheduler.max_num_seqs")
    names: tuple[str, ...] = Field(default=(), description="GPU name fragments (lower case) that get these "
                                   "defaults whatever their memory (vLLM V1: 'a100', whose large budget lowers "
                                   "throughput upstream; _set_default_args)")


#: the engine rules a spec that leaves them out gets from its family: what each family's engines do (the
#: fields of :class:`EngineSpec` say which source rule each one is)
FAMILY_RULES: dict[str, dict[str, Any]] = {
    "vllm-v0": {"ep_whole_tp_group": True, "dp_attention": False, "small_gpu": None,
                "graph_batch_within_max_num_seqs": True, "async_output_needs_graphs": True,
                "default_seqs_within_budget": False, "budget_raised_to_seqs": True,
                "unchunked_budget_covers_model_len": True, "prefill_chunks_with_decodes": True,
                "kv_pool_after_activations": True},
    "vllm-v1": {"ep_whole_tp_group": True, "dp_attention": True,
                "small_gpu": {"below": 70 * 2**30, "chunked_budget": 2048, "max_num_seqs": 256, "names": ("a100",)},
                "graph_batch_within_max_num_seqs": False, "async_output_needs_graphs": False,
                "default_seqs_within_budget": True, "budget_raised_to_seqs": False,
                "unchunked_budget_covers_model_len": True, "prefill_chunks_with_decodes": True,
                "kv_pool_after_activations": True},
    "sglang": {"ep_whole_tp_group": True, "dp_attention": True, "small_gpu": {"below": 25e9, "chunked_budget": 2048},
               "graph_batch_within_max_num_seqs": False, "async_output_needs_graphs": False,
               "default_seqs_within_budget": False, "budget_raised_to_seqs": False,
               "unchunked_budget_covers_model_len": False, "prefill_chunks_with_decodes": False,
               "kv_pool_after_activations": False},
}


class EngineSpec(Spec):
    """One serving engine and version with its defaults.

    The engine rules ``ep_whole_tp_group``, ``dp_attention``, ``small_gpu``, ``graph_batch_within_max_num_seqs``,
    ``async_output_needs_graphs``, ``default_seqs_within_budget``, ``budget_raised_to_seqs``,
    ``unchunked_budget_covers_model_len``, ``prefill_chunks_with_decodes`` and ``kv_pool_after_activations`` default
    to what the engine's ``family`` does (:data:`FAMILY_RULES`); a spec may declare its own. (The rules the
    simulator itself follows are ``scheduler.behaviour``.)

    >>> from apex_opt.catalog import get_engine
    >>> e = get_engine("vllm-0.6")
    >>> e.family, e.scheduler.max_num_seqs, e.scheduler.block_size
    ('vllm-v0', 256, 16)
    """

    name: str
    family: Family
    version: str
    description: str = ""
    scheduler: SchedulerKnobs = SchedulerKnobs()
    memory: MemoryKnobs = MemoryKnobs()
    cuda_graphs: CudaGraphKnobs = CudaGraphKnobs()
    #: vLLM async output processing / SGLang overlap scheduler: finished requests run one extra step
    async_output: bool = True
    #: when the engine stamps a token: after the iteration's forward ("forward"), or when its outputs are
    #: processed during the next iteration ("next-iteration", vLLM 0.6 async output processing)
    metrics_stamp: Literal["forward", "next-iteration"] = "next-iteration"
    #: name of the host-overhead calibration in specs/calibration/engines.yaml
    overhead_profile: str = ""
    launch_flags: dict[str, str] = Field(default_factory=dict)
    eager_kernels: EagerKernels = EagerKernels()
    max_step_gap: Seconds = 0.0
    sources: dict[str, str] = Field(default_factory=dict)
    ep_whole_tp_group: bool = Field(default=False, description="expert parallelism only over the whole TP group, "
                                    "ep == tp (vLLM's --enable-expert-parallel; SGLang 0.4's --enable-ep-moe, which "
                                    "sets ep_size = tp_size in ServerArgs.__post_init__); false: any ep dividing tp. "
                                    "Default: the family's (true for vLLM and SGLang 0.4)")
    dp_attention: bool = Field(default=False, description="attention data parallel with the experts over tp x dp "
                               "ranks, the wide-EP layouts the planner may choose (SGLang --enable-dp-attention, "
                               "vLLM V1 --data-parallel-size with expert parallelism). Default: the family's (true "
                               "for SGLang and vLLM V1, false for vLLM 0.6)")
    small_gpu: SmallGPUDefaults | None = Field(default=None, description="the defaults the engine picks on a "
                                               "small GPU (vLLM V1 under 70 GiB: a 2048-token budget and 256 "
                                               "sequences; SGLang 0.4 under 25 GB: a 2048-token chunk); null: none "
                                               "(vLLM 0.6). Default: the family's")
    graph_batch_within_max_num_seqs: bool = Field(default=False, description="CUDA graphs are captured up to "
                                                  "min(cuda_graphs.max_batch, max_num_seqs) (vLLM 0.6 "
                                                  "_get_max_graph_batch_size); false: up to cuda_graphs.max_batch. "
                                                  "Default: the family's (true for vLLM 0.6)")
    async_output_needs_graphs: bool = Field(default=False, description="async output processing is switched off "
                                            "when CUDA graphs are (vLLM 0.6 ModelConfig.verify_async_output_proc "
                                            "under --enforce-eager): outputs are stamped after the forward. Default: "
                                            "the family's (true for vLLM 0.6)")
    default_seqs_within_budget: bool = Field(default=False, description="a default max_num_seqs is lowered to the "
                                             "token budget (vLLM V1 _set_default_args: min(max_num_seqs, "
                                             "max_num_batched_tokens) when the user set no max_num_seqs). Default: "
                                             "the family's (true for vLLM V1)")
    budget_raised_to_seqs: bool = Field(default=False, description="a max_num_batched_tokens below max_num_seqs is "
                                        "raised to it by the engine itself (vLLM 0.6 EngineArgs with chunked "
                                        "prefill); false: refused when batched tokens must cover the sequences, "
                                        "else kept. Default: the family's (true for vLLM 0.6)")
    unchunked_budget_covers_model_len: bool = Field(default=False, description="with chunked prefill off, "
                                                    "max_num_batched_tokens must be at least max_model_len, or the "
                                                    "longest prompt could never be scheduled (vLLM's "
                                                    "SchedulerConfig check). Default: the family's (true for vLLM, "
                                                    "false for SGLang)")
    kv_pool_after_activations: bool = Field(default=True, description="the KV cache gets the memory budget less "
                                            "the weights, the profiled activation peak and fixed overheads (vLLM "
                                            "determine_num_available_blocks, engines.md 1.4); false: nothing is "
                                            "profiled, the pool is the budget less the CUDA context, the weights and "
                                            "fixed overheads (SGLang profile_max_num_token, engines.md 4, 'KV pool'). "
                                            "Default: the family's (false for SGLang)")
    prefill_chunks_with_decodes: bool = Field(default=True, description="a chunk of a prompt runs in the same "
                                              "forward step as the running decodes (vLLM's chunked prefill, 0.6 and "
                                              "V1); false: a chunk is an extend batch of its own and the decodes wait "
                                              "for it (SGLang 0.4 without --enable-mixed-chunk, engines.md 4, 'Batches'). "
                                              "Default: the family's (false for SGLang)")

    @model_validator(mode="before")
    @classmethod
    def _family_rules(cls, data: Any) -> Any:
        """Fill the engine rules the spec leaves out with its family's (:data:`FAMILY_RULES`)."""
        if isinstance(data, dict) and isinstance(data.get("family"), str) and data["family"] in FAMILY_RULES:
            return {**FAMILY_RULES[data["family"]], **data}
        return data

    @property
    def policy(self) -> str:
        """The scheduling policy the simulator runs: ``scheduler.policy``, else the one named after ``family``.

        >>> from apex_opt.catalog import get_engine
        >>> get_engine("sglang-0.4").policy
        'sglang'
        """
        return self.scheduler.policy or self.family
