"""Scheduler settings of one replica (:class:`SchedulerConfig`) and the replica itself (:class:`ReplicaSpec`).

The engine rules behind each knob are in ``docs/engines.md`` (vLLM 0.6.0 V0, vLLM V1, SGLang 0.4). The
constructors :meth:`SchedulerConfig.vllm_v0`, :meth:`SchedulerConfig.vllm_v1` and :meth:`SchedulerConfig.sglang`
fill in each engine's defaults.

>>> c = SchedulerConfig.vllm_v0(num_kv_blocks=1000, max_model_len=131072)
>>> c.chunked_prefill, c.max_num_batched_tokens, c.async_output, c.metrics_stamp
(True, 512, True, 'next-iteration')
>>> SchedulerConfig.vllm_v0(num_kv_blocks=1000, max_model_len=24272).max_num_batched_tokens
24272
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..errors import SpecError
from .cost import ReplicaCost

Family = Literal["vllm-v0", "vllm-v1", "sglang"]
FAMILIES: tuple[str, ...] = ("vllm-v0", "vllm-v1", "sglang")
Role = Literal["both", "prefill", "decode"]
ROLES: tuple[str, ...] = ("both", "prefill", "decode")


@dataclass(frozen=True)
class PrefixCacheRules:
    """How an engine's prefix cache (:mod:`apex_opt.sim.prefix_cache`) keeps blocks; the module docstring and
    ``docs/engines.md`` (sections 3 and 4, prefix caching and the radix cache) give the sources.

    Attributes
    ----------
    dedupe:
        When a request computes content another request already inserted, free its duplicate blocks (SGLang
        ``cache_unfinished_req``); ``False``: keep them private (vLLM).
    insert_at_schedule:
        Computed prompt blocks join the tree when the step is scheduled (vLLM ``mark_blocks_as_computed`` /
        V1 ``cache_blocks``); ``False``: after the forward pass (SGLang).
    decode_insert:
        On a recompute preemption keep the decode blocks cached too (vLLM frees them in reverse order with their
        hashes); ``False``: only the prompt stays in the tree (SGLang ``retract_decode``).
    partial_evict:
        Evict block by block from the tail of a leaf (vLLM's evictor); ``False``: whole leaves (SGLang).
    """

    dedupe: bool
    insert_at_schedule: bool
    decode_insert: bool
    partial_evict: bool


@dataclass(frozen=True)
class EngineBehaviour:
    """Engine rules the simulator follows apart from the scheduling policy; each family's are in
    :data:`BEHAVIOURS` (the one table) and a :class:`SchedulerConfig` may override them (``behaviour=``).

    Attributes
    ----------
    batched_tokens_cover_seqs:
        ``max_num_batched_tokens`` must be at least ``max_num_seqs`` (vLLM's ``SchedulerConfig`` check; the
        budget of ``docs/engines.md`` 1.2/1.3 covers one token per running sequence).
    clip_reserved_new_tokens:
        Admission reserves at most ``clip_max_new_tokens`` future tokens per running request (SGLang's
        ``PrefillAdder``: ``min(max_new - generated, 4096)``, engines.md 4, "Admission"): the decode pool keeps that
        clipped reservation sum.
    whole_prompt_blocks_at_schedule:
        A prompt's KV blocks are all allocated when it is first scheduled (vLLM 0.6 ``can_allocate`` for the whole
        prompt, engines.md 1.2/1.3), not chunk by chunk (V1: incrementally, engines.md 3). The scheduling policy
        does the allocation; the simulator's debug invariants check it.
    prefix_cache:
        The prefix cache's rules (:class:`PrefixCacheRules`).

    How an engine resolves its settings before they reach the simulator (its defaults, the limits it refuses at
    start-up) are fields of its spec instead (:class:`~apex_opt.schema.engine.EngineSpec`, ``FAMILY_RULES``).
    """

    batched_tokens_cover_seqs: bool
    clip_reserved_new_tokens: bool
    whole_prompt_blocks_at_schedule: bool
    prefix_cache: PrefixCacheRules

    def with_(self, **changes: Any) -> EngineBehaviour:
        """A copy with some rules changed; ``prefix_cache`` may be given as a dict of its fields to change."""
        pc = changes.get("prefix_cache")
        if isinstance(pc, Mapping):
            changes["prefix_cache"] = replace(self.prefix_cache, **pc)
        return replace(self, **changes)


_VLLM_PREFIX_CACHE = PrefixCacheRules(dedupe=False, insert_at_schedule=True, decode_insert=True, partial_evict=True)

#: each scheduler family's engine behaviour (the one place it is declared; ``SchedulerConfig.behaviour``)
BEHAVIOURS: dict[str, EngineBehaviour] = {
    "vllm-v0": EngineBehaviour(batched_tokens_cover_seqs=True, clip_reserved_new_tokens=False,
                               whole_prompt_blocks_at_schedule=True, prefix_cache=_VLLM_PREFIX_CACHE),
    "vllm-v1": EngineBehaviour(batched_tokens_cover_seqs=True, clip_reserved_new_tokens=False,
                               whole_prompt_blocks_at_schedule=False, prefix_cache=_VLLM_PREFIX_CACHE),
    "sglang": EngineBehaviour(batched_tokens_cover_seqs=False, clip_reserved_new_tokens=True,
                              whole_prompt_blocks_at_schedule=False,
                              prefix_cache=PrefixCacheRules(dedupe=True, insert_at_schedule=False,
                                                            decode_insert=False, partial_evict=False)),
}


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduling knobs of one replica.

    Attributes
    ----------
    family:
        ``"vllm-v0"`` (vLLM 0.6.0 V0 engine), ``"vllm-v1"`` (V1 engine) or ``"sglang"`` (SGLang 0.4).
    num_kv_blocks:
        KV-cache blocks of the replica (computed by the memory model). With ``pp`` stages every virtual engine
        gets ``num_kv_blocks // pp`` (vLLM 0.6 splits the cache between its ``pp`` virtual engines).
    max_model_len:
        Context limit (SGLang: ``context_length``).
    chunked_prefill:
        vLLM V0: chunked-prefill scheduler (1.3) or the default one (1.2). V1: always on. SGLang: chunking of
        long prompts into ``chunked_prefill_size`` pieces.
    max_num_batched_tokens, max_num_seqs:
        vLLM per-iteration token budget and sequence limit.
    block_size:
        Tokens per KV block (vLLM 16; SGLang's page is 1 token).
    watermark:
        vLLM V0 admission watermark (fraction of all blocks kept free when admitting a prompt).
    async_output:
        vLLM V0 async output processing / SGLang overlap scheduler: a request that finishes at step N is only
        seen as finished during step N+1, so it runs one more step and its KV is freed one step late.
    metrics_stamp:
        When the outputs of step N are time-stamped (TTFT, token times, finish): ``"forward"`` = at the end of
        step N; ``"next-iteration"`` = (with ``async_output``) during step N+1 after its host work, i.e. at the
        start of N+1 plus the stage's ``host_time`` (vLLM 0.6 ``_process_model_outputs`` runs as a callback inside
        N+1's ``execute_model``).
    prefix_caching:
        Automatic prefix caching (vLLM ``--enable-prefix-caching``, on by default in V1; SGLang's radix cache, on
        by default): requests reuse the KV cache of earlier requests with the same prefix and prefill only the
        uncached tokens (:mod:`apex_opt.sim.prefix_cache`). It needs a workload with ``segments``; without them
        every prompt is unique and it has no effect.
    length_policy:
        ``"truncate"``: prompts over the limit are rejected and outputs stop at the context limit (engine
        behaviour). ``"reject"``: also reject requests whose prompt + output exceed ``max_model_len`` (the
        OpenAI server's validation when ``max_tokens`` is given).
    chunked_prefill_size, max_prefill_tokens, new_token_ratio_init, new_token_ratio_min,
    new_token_ratio_decay_steps, schedule_conservativeness, max_running_requests, clip_max_new_tokens,
    retract_decode_steps:
        SGLang knobs (section 4 of engines.md). ``max_running_requests=None`` applies SGLang's default
        ``min(pool // 2, clamp(pool / context_len * 512, 2048, 4096))``.
    speculative:
        Speculative decoding (:class:`~apex_opt.schema.speculative.SpeculativeConfig`), or ``None`` (off): every
        decode step verifies ``k + 1`` tokens per sequence, drafts ``k`` tokens first, and emits a random number
        of them (``docs/simulator.md``, "Speculative decoding").
    policy:
        Name of the scheduling policy in :data:`apex_opt.sim.policies.POLICIES` (``register_policy``); empty:
        the one registered under ``family``. The family's other rules come from ``behaviour`` (the KV block
        accounting and the like), so a registered variant usually subclasses its family's policy.
    behaviour:
        The engine's rules outside the policy (:class:`EngineBehaviour`); not given (``None``): the family's,
        ``BEHAVIOURS[family]``, filled in at construction. The simulator reads these, never ``family``.
    """

    family: Family
    num_kv_blocks: int
    max_model_len: int
    chunked_prefill: bool = True
    max_num_batched_tokens: int = 512
    max_num_seqs: int = 256
    block_size: int = 16
    watermark: float = 0.01
    async_output: bool = False
    metrics_stamp: Literal["forward", "next-iteration"] = "forward"
    length_policy: Literal["truncate", "reject"] = "truncate"
    prefix_caching: bool = False
    # SGLang
    chunked_prefill_size: int = 8192
    max_prefill_tokens: int = 16384
    new_token_ratio_init: float = 0.7
    new_token_ratio_min: float = 0.098
    new_token_ratio_decay_steps: int = 600
    schedule_conservativeness: float = 1.0
    max_running_requests: int | None = None
    clip_max_new_tokens: int = 4096
    retract_decode_steps: int = 20
    #: speculative decoding (:class:`apex_opt.schema.speculative.SpeculativeConfig`); ``None``: off
    speculative: Any = None
    #: scheduling policy by registered name; "": the family's own (``apex_opt.sim.policies.make_policy``)
    policy: str = ""
    #: engine rules outside the policy; None (the default): the family's, ``BEHAVIOURS[family]``, set at post-init
    behaviour: EngineBehaviour = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        def bad(field: str, value: Any, fix: str) -> SpecError:
            return SpecError(f"SchedulerConfig field '{field}': {value!r} {fix}")

        if self.family not in FAMILIES:
            raise bad("family", self.family, f"is not a scheduler family; use one of {', '.join(FAMILIES)}")
        if self.behaviour is None:
            object.__setattr__(self, "behaviour", BEHAVIOURS[self.family])
        elif not isinstance(self.behaviour, EngineBehaviour):
            raise bad("behaviour", self.behaviour, "must be an EngineBehaviour or None (the family's)")
        for name in ("num_kv_blocks", "max_model_len", "max_num_batched_tokens", "max_num_seqs", "block_size",
                     "max_prefill_tokens", "new_token_ratio_decay_steps", "clip_max_new_tokens",
                     "retract_decode_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, value, "must be a positive integer")
        if self.behaviour.batched_tokens_cover_seqs and self.max_num_batched_tokens < self.max_num_seqs:
            raise bad("max_num_batched_tokens", self.max_num_batched_tokens,
                      f"must be >= max_num_seqs ({self.max_num_seqs}), as vLLM requires")
        if not 0.0 <= self.watermark < 1.0:
            raise bad("watermark", self.watermark, "must be a fraction in [0, 1)")
        if self.metrics_stamp not in ("forward", "next-iteration"):
            raise bad("metrics_stamp", self.metrics_stamp, "must be 'forward' or 'next-iteration'")
        if self.length_policy not in ("truncate", "reject"):
            raise bad("length_policy", self.length_policy, "must be 'truncate' or 'reject'")
        if not isinstance(self.prefix_caching, bool):
            raise bad("prefix_caching", self.prefix_caching, "must be True or False")
        if self.chunked_prefill_size == 0 or self.chunked_prefill_size < -1:
            raise bad("chunked_prefill_size", self.chunked_prefill_size, "must be a positive integer or -1 (off)")
        if not 0.0 < self.new_token_ratio_min <= self.new_token_ratio_init:
            raise bad("new_token_ratio_min", self.new_token_ratio_min, "must be in (0, new_token_ratio_init]")
        if self.schedule_conservativeness <= 0:
            raise bad("schedule_conservativeness", self.schedule_conservativeness, "must be positive")
        if self.max_running_requests is not None and self.max_running_requests < 1:
            raise bad("max_running_requests", self.max_running_requests, "must be a positive integer or None")
        if not isinstance(self.policy, str):
            raise bad("policy", self.policy, "must be the name of a registered scheduling policy, or '' for the "
                      "family's own")
        if self.speculative is not None and not callable(getattr(self.speculative, "survival", None)):
            raise bad("speculative", self.speculative, "must be a SpeculativeConfig or None")

    # ------------------------------------------------------------------------------------------ defaults
    @classmethod
    def vllm_v0(cls, num_kv_blocks: int, max_model_len: int, *, chunked_prefill: bool | None = None,
                pp: int = 1, **overrides: Any) -> SchedulerConfig:
        """vLLM 0.6.0 V0 defaults (engines.md 1.1-1.6).

        Chunked prefill switches itself on above a 32k context (budget 512) unless prefix caching is on,
        otherwise the budget is ``max(max_model_len, 2048)``. Async output processing is on, except with
        ``pp > 1``. Prefix caching is off unless ``prefix_caching=True`` is given.
        """
        if chunked_prefill is None:
            chunked_prefill = max_model_len > 32768 and not overrides.get("prefix_caching", False)
        budget = 512 if chunked_prefill else max(max_model_len, 2048)
        kw: dict[str, Any] = {"family": "vllm-v0", "num_kv_blocks": num_kv_blocks, "max_model_len": max_model_len,
                                  "chunked_prefill": chunked_prefill, "max_num_batched_tokens": budget, "max_num_seqs": 256,
                                  "block_size": 16, "watermark": 0.01, "async_output": pp == 1,
                                  "metrics_stamp": "next-iteration"}
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def vllm_v1(cls, num_kv_blocks: int, max_model_len: int, *, large_gpu: bool = True,
                **overrides: Any) -> SchedulerConfig:
        """vLLM V1 (0.8.5) OpenAI-server defaults: 8192 tokens / 1024 seqs on >= 70 GiB GPUs, else 2048 / 256;
        prefix caching on."""
        kw: dict[str, Any] = {"family": "vllm-v1", "num_kv_blocks": num_kv_blocks, "max_model_len": max_model_len,
                                  "chunked_prefill": True, "max_num_batched_tokens": 8192 if large_gpu else 2048,
                                  "max_num_seqs": 1024 if large_gpu else 256, "block_size": 16, "watermark": 0.0,
                                  "async_output": False, "metrics_stamp": "forward", "prefix_caching": True}
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def sglang(cls, num_kv_tokens: int, max_model_len: int, **overrides: Any) -> SchedulerConfig:
        """SGLang 0.4 defaults: page size 1, chunked prefill of 8192 tokens, overlap scheduler on, radix cache on."""
        kw: dict[str, Any] = {"family": "sglang", "num_kv_blocks": num_kv_tokens, "max_model_len": max_model_len,
                                  "chunked_prefill": True, "chunked_prefill_size": 8192, "max_num_batched_tokens": 8192,
                                  "max_num_seqs": 4096, "block_size": 1, "watermark": 0.0, "async_output": True,
                                  "metrics_stamp": "forward", "prefix_caching": True}
        kw.update(overrides)
        return cls(**kw)

    def with_(self, **changes: Any) -> SchedulerConfig:
        """A copy with some fields changed (validated again). A new ``family`` brings its own behaviour unless
        ``behaviour`` is given or this one's was overridden."""
        if "family" in changes and "behaviour" not in changes and self.behaviour == BEHAVIOURS[self.family]:
            changes["behaviour"] = None
        return replace(self, **changes)

    # ------------------------------------------------------------------------------------------ derived
    def kv_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size

    def sglang_max_running(self, blocks: int) -> int:
        """SGLang's ``max_running_requests`` for a pool of ``blocks`` pages (default rule when unset)."""
        if self.max_running_requests is not None:
            return self.max_running_requests
        tokens = blocks * self.block_size
        clamp = min(max(tokens / self.max_model_len * 512, 2048), 4096)
        return max(1, int(min(tokens // 2, clamp)))


@dataclass(frozen=True)
class ReplicaSpec:
    """One data-parallel replica: its cost model, its scheduler settings and its weight for the router.

    ``cost`` is any :class:`~apex_opt.sim.cost.ReplicaCost` (``.stages``, ``.send_time(n)``, optionally
    ``.gpus``). ``weight`` scales the replica's share under weighted routing (round-robin, random) and
    divides its outstanding requests under least-loaded routing.

    ``role`` is ``"both"`` (an aggregated replica: prefill and decode), or, in a disaggregated run
    (:mod:`apex_opt.sim.disagg`), ``"prefill"`` (prefill-only: every request is run as ``max_tokens=1`` and its
    KV cache is sent to a decode instance) or ``"decode"`` (decode-only: requests join its batch with their KV
    cache already present).
    """

    cost: ReplicaCost
    config: SchedulerConfig
    weight: float = 1.0
    name: str = ""
    role: Role = "both"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise SpecError(f"ReplicaSpec field 'role': {self.role!r} is not a role; use one of {', '.join(ROLES)}")
        if not (self.weight > 0):
            raise SpecError(f"ReplicaSpec field 'weight': {self.weight!r} must be positive")
        if not getattr(self.cost, "stages", None):
            raise SpecError("ReplicaSpec field 'cost': the replica cost has no stages")

    @property
    def pp(self) -> int:
        return len(self.cost.stages)

    @property
    def gpus(self) -> int:
        g = getattr(self.cost, "gpus", None)
        return int(g) if g else self.pp


__all__ = ["BEHAVIOURS", "FAMILIES", "ROLES", "EngineBehaviour", "Family", "PrefixCacheRules", "ReplicaSpec", "Role",
           "SchedulerConfig"]
