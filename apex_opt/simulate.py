"""Simulate a plan on a workload: build the replicas' cost models and scheduler settings, replay, measure.

>>> import apex_opt as ax
>>> specs = ax.load_specs(workload="synthetic:rate=2rps,requests=50,prompt=512,output=64,seed=1")
>>> r = ax.simulate(specs, ax.Plan(gpu="h100-sxm-80gb", tp=8))
>>> r["num_completed"]
50
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .errors import SimulationError, SpecError
from .perf.replica import Replica, build_replica
from .schema.plan import Deployment, Plan
from .sim import ReplicaSpec, SchedulerConfig, SimResult, run_simulation
from .specs import Specs
from .topology.graph import Topology


def scheduler_config(replica: Replica) -> SchedulerConfig:
    """The scheduler settings the engine of ``replica`` runs with (memory model's KV blocks included)."""
    s = replica.settings
    e = s.engine
    blocks = replica.memory.num_kv_blocks
    if blocks < 1:
        raise SimulationError(
            f"plan {replica.plan.label} leaves no memory for the KV cache on {replica.gpu.name} "
            f"(short by {replica.memory.shortfall / 2**30:.1f} GiB per GPU); use more GPUs per replica, "
            "fp8/int4 weights or a smaller max_num_batched_tokens"
        )
    stamp = e.metrics_stamp if s.async_output else "forward"
    if s.family == "sglang":
        return SchedulerConfig.sglang(
            blocks * s.block_size,
            s.max_model_len,
            chunked_prefill=s.chunked_prefill,
            chunked_prefill_size=s.max_num_batched_tokens if s.chunked_prefill else -1,
            max_num_batched_tokens=s.max_num_batched_tokens,
            max_prefill_tokens=e.scheduler.max_prefill_tokens or 16384,
            max_running_requests=replica.plan.max_num_seqs,
            async_output=s.async_output,
            metrics_stamp=stamp,
            new_token_ratio_init=e.scheduler.new_token_ratio_init,
            new_token_ratio_min=e.scheduler.new_token_ratio_min,
            new_token_ratio_decay_steps=e.scheduler.new_token_ratio_decay_steps,
            clip_max_new_tokens=e.scheduler.clip_max_new_tokens,
        )
    return SchedulerConfig(
        family=s.family,  # type: ignore[arg-type]
        num_kv_blocks=blocks,
        max_model_len=s.max_model_len,
        chunked_prefill=s.chunked_prefill,
        max_num_batched_tokens=max(s.max_num_batched_tokens, s.max_num_seqs) if s.family == "vllm-v0"
        else s.max_num_batched_tokens,
        max_num_seqs=s.max_num_seqs,
        block_size=s.block_size,
        watermark=e.scheduler.watermark,
        async_output=s.async_output,
        metrics_stamp=stamp,
    )


def replicas_for(specs: Specs, plan: Plan | Deployment) -> list[tuple[Replica, int]]:
    """Each distinct replica of ``plan`` placed on the cluster, with how many copies run (its dp)."""
    plans = plan.plans if isinstance(plan, Deployment) else (plan,)
    if any(p.role != "both" for p in plans):
        raise SimulationError(
            "disaggregated prefill/decode deployments are not simulated in this version; "
            "simulate the prefill and decode plans as aggregated plans instead"
        )
    topology = Topology.build(specs.cluster, specs.gpus)
    out = []
    used_by_kind: dict[str, int] = {}
    for p in plans:
        if p.gpu not in specs.gpus:
            raise SpecError(f"plan {p.label} runs on '{p.gpu}', which cluster '{specs.cluster.name}' does not have; "
                            f"its GPUs: {', '.join(specs.gpus)}")
        # the first GPU of this kind not used by an earlier plan
        first = next(i for i, slot in enumerate(topology.slots) if slot.kind == p.gpu)
        offset = first + used_by_kind.get(p.gpu, 0)
        available = sum(1 for slot in topology.slots if slot.kind == p.gpu)
        if used_by_kind.get(p.gpu, 0) + p.gpus > available:
            raise SpecError(f"plan {p.label} needs {p.gpus} x {p.gpu} but cluster '{specs.cluster.name}' has "
                            f"{available - used_by_kind.get(p.gpu, 0)} left; lower dp, tp or pp")
        engine = specs.engine if p.engine == specs.engine.name else _engine(p.engine)
        replica = build_replica(specs.model, specs.gpus[p.gpu], p, engine, topology=topology, offset=offset)
        used_by_kind[p.gpu] = used_by_kind.get(p.gpu, 0) + p.gpus
        out.append((replica, p.dp))
    return out


def _engine(name: str):  # type: ignore[no-untyped-def]
    from .catalog import get_engine

    return get_engine(name)


def _capacity(replica: Replica) -> float:
    """Decode tokens per second of one replica at its largest batch: the router's weight for it."""
    b = max(1, min(replica.settings.max_num_seqs, 256))
    stage_times = [st.decode_coeffs(b)[0] + st.decode_coeffs(b)[1] * b * 1024 for st in replica.cost.stages]
    return b / max(sum(stage_times), 1e-9)


def simulate(
    specs: Specs,
    plan: Plan | Deployment,
    *,
    router: str = "round-robin",
    seed: int = 0,
    max_requests: int | None = None,
    progress: Callable[[float], None] | None = None,
    record_log: bool = False,
    skip_ahead: bool = True,
) -> SimResult:
    """Replay ``specs.workload`` through ``plan`` and measure TTFT, TPOT, throughput, SLO attainment, energy, cost.

    Replicas of a :class:`Deployment` with different shapes or GPU kinds are weighted by their decode capacity
    for the router. ``max_requests`` replays only the first N requests of the workload.
    """
    if max_requests is not None and max_requests < 1:
        raise SpecError(f"max_requests {max_requests}: must be at least 1")
    built = replicas_for(specs, plan)
    capacities = [_capacity(r) for r, _ in built]
    top = max(capacities)
    reps: list[ReplicaSpec] = []
    gpu_price_hours = 0.0
    gpus = 0
    for (replica, copies), cap in zip(built, capacities):
        config = scheduler_config(replica)
        weight = 1.0 if len(built) == 1 else cap / top
        for i in range(copies):
            reps.append(ReplicaSpec(replica.cost, config, weight=weight, name=f"{replica.plan.label}#{i}"))
        gpu_price_hours += replica.gpu.price_per_hour * replica.plan.gpus
        gpus += replica.plan.gpus
    workload = specs.workload if max_requests is None else specs.workload.head(max_requests)
    price = gpu_price_hours / gpus if gpus else math.nan
    return run_simulation(reps, workload, router=router, slo=specs.slo, seed=seed, skip_ahead=skip_ahead,
                          progress=progress, record_log=record_log, price_per_gpu_hour=price)
