"""The engine's own rules for a plan: which knobs are in force once defaults and auto-switches are applied.

vLLM 0.6 turns chunked prefill on by itself when ``max_model_len > 32768`` (then the budget is 512 tokens);
without it the budget is ``max(max_model_len, 2048)``. vLLM V1 and SGLang size their defaults by GPU memory.
The custom all-reduce kernel is used only for TP sizes 2/4/6/8 inside one NVLink node. See docs/engines.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..schema.engine import EngineSpec
from ..schema.gpu import GPUSpec
from ..schema.model import ModelSpec
from ..schema.plan import Plan
from ..sim.config import BEHAVIOURS, EngineBehaviour, SchedulerConfig


@dataclass(frozen=True)
class EngineSettings:
    """The knobs in force for one plan on one engine."""

    engine: EngineSpec
    family: str
    chunked_prefill: bool
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int
    block_size: int
    gpu_memory_utilization: float
    custom_all_reduce: bool
    cuda_graphs: bool
    graph_max_batch: int
    graph_max_context: int | None
    async_output: bool


def resolve_engine(engine: EngineSpec, plan: Plan, model: ModelSpec, gpu: GPUSpec, *,
                   nodes_per_tp_group: int = 1, nvlink: bool = True) -> EngineSettings:
    """Apply ``engine``'s defaults and automatic switches to ``plan``."""
    known = engine.eager_kernels.backends()
    if plan.attention_backend is not None and plan.attention_backend not in known:
        raise SpecError(f"{{attention_backend=}}'{plan.attention_backend}' is not one {engine.name} has kernels "
                        f"for; use one of {', '.join(known)}, or leave it out for the default "
                        f"({engine.eager_kernels.attention_backend})", option="attention_backend")
    s = engine.scheduler
    if plan.max_model_len is not None and plan.max_model_len > model.max_position_embeddings:
        raise SpecError(f"{{max_model_len=}}{plan.max_model_len} exceeds the context limit of {model.name} "
                        f"({model.max_position_embeddings} tokens, max_position_embeddings in its config); the "
                        f"engine refuses it: use at most {model.max_position_embeddings}, or leave it out",
                        option="max_model_len")
    max_model_len = plan.max_model_len or model.max_position_embeddings
    if plan.chunked_prefill is not None:
        chunked = plan.chunked_prefill
    elif s.chunked_prefill == "auto":  # vLLM 0.6 create_engine_config: not with prefix caching on
        chunked = (s.chunked_prefill_auto_above is not None and max_model_len > s.chunked_prefill_auto_above
                   and not s.prefix_caching)
    else:
        chunked = s.chunked_prefill == "on"
    budget_default = s.chunked_budget
    max_seqs_default = s.max_num_seqs
    small = engine.small_gpu  # vLLM V1 under 70 GiB or on an A100, SGLang 0.4 under 25 GB pick smaller defaults
    if small is not None and (gpu.memory < small.below or any(n in gpu.name.lower() for n in small.names)):
        budget_default = small.chunked_budget or budget_default
        max_seqs_default = small.max_num_seqs or max_seqs_default
    if plan.max_num_batched_tokens is not None:
        budget = plan.max_num_batched_tokens
    elif chunked:
        budget = budget_default
    else:
        budget = max(max_model_len, s.unchunked_budget_floor)
    max_seqs = plan.max_num_seqs or max_seqs_default
    if plan.max_num_seqs is None and engine.default_seqs_within_budget:
        max_seqs = min(max_seqs, budget)  # vLLM V1 lowers its default to the token budget
    check_limits(engine, plan, model, gpu, budget=budget, max_seqs=max_seqs, chunked=chunked,
                 max_model_len=max_model_len)
    util = plan.gpu_memory_utilization
    if util is None:
        util = engine.memory.gpu_memory_utilization
        if engine.memory.mem_fraction_by_tp:
            table = sorted(engine.memory.mem_fraction_by_tp.items())
            util = table[0][1]
            for min_tp, frac in table:
                if plan.tp >= min_tp:
                    util = frac
    tp = plan.tp
    # vLLM and SGLang 0.4 (which reuses vLLM's kernel) enable the custom all-reduce unless told not to
    custom_ar = plan.custom_all_reduce if plan.custom_all_reduce is not None else True
    custom_ar = custom_ar and tp in (2, 4, 6, 8) and nodes_per_tp_group == 1 and nvlink
    graphs = engine.cuda_graphs.enabled if plan.cuda_graphs is None else plan.cuda_graphs
    graph_max_batch = min(engine.cuda_graphs.max_batch, max_seqs) if engine.graph_batch_within_max_num_seqs else \
        engine.cuda_graphs.max_batch
    return EngineSettings(
        engine=engine,
        family=engine.family,
        chunked_prefill=chunked,
        max_num_batched_tokens=budget,
        max_num_seqs=max_seqs,
        max_model_len=max_model_len,
        block_size=s.block_size,
        gpu_memory_utilization=util,
        custom_all_reduce=custom_ar,
        cuda_graphs=graphs,
        graph_max_batch=graph_max_batch,
        graph_max_context=engine.cuda_graphs.max_context,
        # vLLM 0.6 turns async output processing off with pipeline parallelism and under --enforce-eager
        async_output=engine.async_output and plan.pp == 1 and (graphs or not engine.async_output_needs_graphs),
    )


def scheduler_config(settings: EngineSettings, num_kv_blocks: int, *, max_running_requests: int | None = None,
                     speculative: Any = None) -> SchedulerConfig:
    """The simulator's scheduler settings for an engine whose knobs are resolved: the one place an engine spec
    (through :func:`resolve_engine`) becomes a :class:`~apex_opt.sim.config.SchedulerConfig`.

    Parameters
    ----------
    settings:
        The knobs in force for the plan (:func:`resolve_engine`); ``settings.engine`` supplies the rest of the
        engine spec: the scheduling policy (``scheduler.policy``), the watermark, SGLang's admission knobs,
        prefix caching and when tokens are stamped.
    num_kv_blocks:
        KV-cache blocks of the replica from the memory model (SGLang: pages of ``block_size`` tokens).
    max_running_requests:
        SGLang's running-request cap (the plan's ``max_num_seqs``; ``None``: SGLang's own rule).
    speculative:
        A :class:`~apex_opt.schema.speculative.SpeculativeConfig`, or ``None`` (off).

    Returns
    -------
    SchedulerConfig
        For SGLang its defaults (:meth:`SchedulerConfig.sglang`) with the resolved budget as the chunk size
        (``-1`` with chunked prefill off); for vLLM the resolved knobs, where V0's budget is raised to at least
        ``max_num_seqs`` as vLLM 0.6 requires.
    """
    e = settings.engine
    knobs = e.scheduler
    stamp = e.metrics_stamp if settings.async_output else "forward"
    behaviour = engine_behaviour(e)
    if settings.family == "sglang":
        return SchedulerConfig.sglang(
            num_kv_blocks * settings.block_size,
            settings.max_model_len,
            chunked_prefill=settings.chunked_prefill,
            chunked_prefill_size=settings.max_num_batched_tokens if settings.chunked_prefill else -1,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            max_prefill_tokens=knobs.max_prefill_tokens or 16384,
            max_running_requests=max_running_requests,
            async_output=settings.async_output,
            metrics_stamp=stamp,
            new_token_ratio_init=knobs.new_token_ratio_init,
            new_token_ratio_min=knobs.new_token_ratio_min,
            new_token_ratio_decay_steps=knobs.new_token_ratio_decay_steps,
            clip_max_new_tokens=knobs.clip_max_new_tokens,
            prefix_caching=knobs.prefix_caching,
            speculative=speculative,
            policy=knobs.policy,
            behaviour=behaviour,
        )
    budget = settings.max_num_batched_tokens
    return SchedulerConfig(
        family=settings.family,  # type: ignore[arg-type]
        num_kv_blocks=num_kv_blocks,
        max_model_len=settings.max_model_len,
        chunked_prefill=settings.chunked_prefill,
        max_num_batched_tokens=max(budget, settings.max_num_seqs) if e.budget_raised_to_seqs else budget,
        max_num_seqs=settings.max_num_seqs,
        block_size=settings.block_size,
        watermark=knobs.watermark,
        async_output=settings.async_output,
        metrics_stamp=stamp,
        prefix_caching=knobs.prefix_caching,
        speculative=speculative,
        policy=knobs.policy,
        behaviour=behaviour,
    )


def engine_behaviour(engine: EngineSpec) -> EngineBehaviour:
    """The engine's behaviour rules: its family's (``apex_opt.sim.config.BEHAVIOURS``) with the spec's
    ``scheduler.behaviour`` overrides."""
    return BEHAVIOURS[engine.family].with_(**engine.scheduler.behaviour.changes())


def check_limits(engine: EngineSpec, plan: Plan, model: ModelSpec, gpu: GPUSpec, *, budget: int, max_seqs: int,
                 chunked: bool, max_model_len: int) -> None:
    """Refuse the token budget and sequence limit a plan sets when the engine would refuse them at start-up
    (vLLM ``SchedulerConfig._verify_args``) or could never hold them in memory."""
    if plan.max_num_seqs is not None:
        sampler = plan.max_num_seqs * model.vocab_size * 12.0  # fp32 logits, probabilities, log-probabilities
        if sampler > gpu.memory:
            most = max(1, int(gpu.memory // (model.vocab_size * 12.0)) // 2)
            raise SpecError(f"{{max_num_seqs=}}{plan.max_num_seqs}: sampling that many sequences over {model.name}'s "
                            f"{model.vocab_size:,}-token vocabulary needs {sampler / 2**30:,.0f} GiB, more than a "
                            f"{gpu.name} holds ({gpu.memory / 2**30:.0f} GiB); use at most about {most} (engines "
                            f"default to {engine.scheduler.max_num_seqs})", option="max_num_seqs")
    if plan.max_num_batched_tokens is None:
        return
    b = plan.max_num_batched_tokens
    if b < engine.scheduler.block_size:
        raise SpecError(f"{{max_num_batched_tokens=}}{b} is below the engine's KV block size "
                        f"({engine.scheduler.block_size} tokens), so no prompt block could be scheduled; use at "
                        f"least {max(engine.scheduler.block_size, max_seqs)} (default: the engine's)",
                        option="max_num_batched_tokens")
    if engine_behaviour(engine).batched_tokens_cover_seqs and b < max_seqs:
        raise SpecError(f"{{max_num_batched_tokens=}}{b} is below max_num_seqs {max_seqs}: {engine.name} refuses "
                        f"a token budget smaller than the sequences it may batch (each running sequence needs a "
                        f"token per step); use at least {max_seqs}, or lower {{max_num_seqs}}",
                        option=("max_num_batched_tokens", "max_num_seqs"))
    if engine.unchunked_budget_covers_model_len and not chunked and b < max_model_len:
        raise SpecError(f"{{max_num_batched_tokens=}}{b} is below max_model_len {max_model_len} with chunked prefill "
                        f"off: {engine.name} refuses it (the longest prompt could never be scheduled); turn on "
                        f"{{chunked_prefill}}, raise the budget to {max_model_len}, or lower {{max_model_len}}",
                        option=("max_num_batched_tokens", "chunked_prefill", "max_model_len"))
