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
from typing import Any

from .calibration.profile import applying_calibration
from .errors import SimulationError, SpecError, shorten
from .perf.engine_rules import scheduler_config as engine_scheduler_config
from .perf.replica import Replica, build_replica
from .perf.step import serving_calibration
from .schema.engine import EngineSpec
from .schema.plan import Deployment, Plan, with_speculative
from .schema.speculative import SpeculativeConfig
from .sim import ReplicaSpec, SchedulerConfig, SimResult, run_simulation
from .sim.client import MEASURED_AT, ClientPath
from .specs import Specs, with_engine_settings
from .topology.graph import Topology


def scheduler_config(replica: Replica) -> SchedulerConfig:
    """The scheduler settings the engine of ``replica`` runs with (memory model's KV blocks included; the mapping
    itself is :func:`apex_opt.perf.engine_rules.scheduler_config`)."""
    blocks = replica.memory.num_kv_blocks
    if blocks < 1:
        raise SimulationError(
            f"plan {replica.plan.label} leaves no memory for the KV cache on {replica.gpu.name} "
            f"(short by {replica.memory.shortfall / 2**30:.1f} GiB per GPU); use more GPUs per replica, "
            "fp8/int4 weights or a smaller max_num_batched_tokens"
        )
    return engine_scheduler_config(replica.settings, blocks, max_running_requests=replica.plan.max_num_seqs,
                                   speculative=_speculative(replica))


def _speculative(replica: Replica) -> SpeculativeConfig | None:
    """The plan's speculative decoding with its draft cost resolved against the model (one target layer per
    draft pass for EAGLE and MTP unless ``draft_cost`` is given)."""
    sp = replica.plan.speculative
    if sp is None or sp.draft_cost is not None:
        return sp
    return sp.model_copy(update={"draft_cost": sp.draft_fraction(replica.model.num_layers)})


def replicas_for(specs: Specs, plan: Plan | Deployment) -> list[tuple[Replica, int]]:
    """Each distinct replica of ``plan`` placed on the cluster, with how many copies run (its dp)."""
    _, placed = place_replicas(specs, plan)
    return [(replica, copies) for replica, copies, _ in placed]


def place_replicas(specs: Specs, plan: Plan | Deployment) -> tuple[Topology, list[tuple[Replica, int, int]]]:
    """The cluster topology and each plan's replica with its copies (dp) and the index of its first GPU.

    Plans are placed one after another on the GPUs of their kind (a disaggregated deployment lists its prefill
    plans first, so prefill instances take the first GPUs); copy ``i`` of a replica of ``g`` GPUs starts at GPU
    ``offset + i * g``.
    """
    plans = plan.plans if isinstance(plan, Deployment) else (plan,)
    plans = tuple(sorted(plans, key=lambda p: p.role == "decode"))  # prefill instances first (stable)
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
        out.append((replica, p.dp, offset))
    return topology, out


def _engine(name: str) -> EngineSpec:
    from .catalog import get_engine

    return get_engine(name)


def router_weight(replica: Replica) -> float:
    """Decode tokens per second of one replica at its largest batch: the router's weight for it (the planner
    uses the same weight to know each replica's share of a heterogeneous deployment's traffic)."""
    b = max(1, min(replica.settings.max_num_seqs, 256))
    stage_times = [st.decode_coeffs(b)[0] + st.decode_coeffs(b)[1] * b * 1024 for st in replica.cost.stages]
    return b / max(sum(stage_times), 1e-9)


def _prefill_capacity(replica: Replica) -> float:
    """Prompt tokens per second of one replica prefilling 4096-token chunks: the prefill router's weight."""
    from .sim.cost import BatchShape

    c = 4096
    shape = BatchShape(c, 1, 0, 0, c * (c + 1) / 2, True, c)
    return c / max(max(st.iteration_time(shape) for st in replica.cost.stages), 1e-9)


def kv_transfers(specs: Specs, topology: Topology, placed: list[tuple[Replica, int, int]],
                 indices: list[list[int]]) -> dict[tuple[int, int], Any]:
    """The KV transfer cost of every (prefill copy, decode copy) pair, keyed by the copies' replica indices."""
    from .perf.collectives import load_collective_params
    from .perf.kv_transfer import kv_transfer_cost

    out: dict[tuple[int, int], Any] = {}
    params: dict[str, Any] = {}
    for (pr, pcopies, poff), pidx in zip(placed, indices, strict=True):
        if pr.plan.role != "prefill":
            continue
        coll = params.setdefault(pr.gpu.name, load_collective_params(pr.gpu.name, pr.gpu.architecture))
        for (dr, dcopies, doff), didx in zip(placed, indices, strict=True):
            if dr.plan.role != "decode":
                continue
            for i in range(pcopies):
                for j in range(dcopies):
                    out[(pidx[i], didx[j])] = kv_transfer_cost(
                        specs.model, pr.gpu, pr.plan, poff + i * pr.plan.gpus_per_replica, dr.plan,
                        doff + j * dr.plan.gpus_per_replica, topology, params=coll)
    return out


@applying_calibration
def simulate(
    specs: Specs,
    plan: Plan | Deployment,
    *,
    router: str = "round-robin",
    decode_router: str = "least-loaded",
    seed: int = 0,
    max_requests: int | None = None,
    progress: Callable[[float], None] | None = None,
    record_log: bool = False,
    skip_ahead: bool = True,
    measured_at: str | None = None,
    prefix_caching: bool | None = None,
    speculative: SpeculativeConfig | str | None = None,
    cut_early: bool = False,
) -> SimResult:
    """Replay ``specs.workload`` through ``plan`` and measure TTFT, TPOT, throughput, SLO attainment, energy, cost.

    Replicas of a :class:`Deployment` with different shapes or GPU kinds are weighted by their decode capacity
    for the router. ``max_requests`` replays only the first N requests of the workload. ``measured_at="client"``
    reports TTFT and end-to-end latency as a benchmark client measures them (API server, tokenisation and
    streaming included: :mod:`apex_opt.sim.client`); the default is where the SLO is measured
    (``specs.slo.measured_at``, the engine unless said otherwise). ``prefix_caching`` turns the engine's
    automatic prefix caching on or off (default: the engine's, ``specs.engine.scheduler.prefix_caching``); it
    matters for workloads with ``segments`` (:mod:`apex_opt.sim.prefix_cache`). ``speculative`` (a
    :class:`~apex_opt.schema.speculative.SpeculativeConfig` or ``"eagle:k=3,acceptance=0.7"``) turns speculative
    decoding on for every plan; a plan's own ``Plan.speculative`` is used otherwise. ``cut_early`` stops the
    run once more requests have missed the SLO than its attainment target allows (``cut_at_s`` in the summary;
    :func:`~apex_opt.sim.run_simulation`): what the planner's verification uses.

    A disaggregated deployment (``Deployment(plans=(Plan(role="prefill", ...), Plan(role="decode", ...)))``)
    places its prefill plans' GPUs first, then the decode plans', prices the KV-cache transfer of every
    (prefill, decode) replica pair from the topology (:mod:`apex_opt.perf.kv_transfer`) and runs the
    disaggregated simulator (:mod:`apex_opt.sim.disagg`): ``router`` spreads arrivals over the prefill
    replicas (weighted by prefill capacity when the prefill plans differ), ``decode_router`` picks the decode
    replica of each prefilled request (weighted by decode capacity when the decode plans differ).

    >>> import apex_opt as ax
    >>> specs = ax.load_specs(workload="synthetic:rate=2rps,requests=20,prompt=512,output=64,seed=1")
    >>> d = ax.Deployment(plans=(ax.Plan(gpu="h100-sxm-80gb", tp=4, role="prefill"),
    ...                          ax.Plan(gpu="h100-sxm-80gb", tp=4, role="decode")))
    >>> r = ax.simulate(specs, d)
    >>> r["num_completed"], r["num_kv_transfers"], r.per_replica[1]["role"]
    (20, 20, 'decode')
    """
    check_simulate_args(specs, plan, seed=seed)
    if max_requests is not None and (isinstance(max_requests, bool) or not isinstance(max_requests, int)
                                     or max_requests < 1):
        raise SpecError(f"{{max_requests=}}{shorten(max_requests)}: must be a whole number of at least 1",
                        option="max_requests")
    measured_at = measured_at or specs.slo.measured_at
    if measured_at not in MEASURED_AT:
        raise SpecError(f"{{measured_at=}}{shorten(measured_at)}: must be one of {', '.join(MEASURED_AT)} (engine: "
                        "the engine's own timings; client: as a benchmark client such as vllm bench serve measures)",
                        option="measured_at")
    if prefix_caching is not None:
        specs = with_engine_settings(specs, prefix_caching=prefix_caching)
    if speculative is not None:
        plan = with_speculative(plan, speculative)
    topology, placed = place_replicas(specs, plan)
    disagg = any(r.plan.role != "both" for r, _, _ in placed)
    capacities = [_prefill_capacity(r) if r.plan.role == "prefill" else router_weight(r) for r, _, _ in placed]
    reps: list[ReplicaSpec] = []
    indices: list[list[int]] = []
    gpu_price_hours = 0.0
    gpus = 0
    for (replica, copies, _), cap in zip(placed, capacities, strict=True):
        config = scheduler_config(replica)
        role = replica.plan.role
        peers = [c for (r, _, _), c in zip(placed, capacities, strict=True) if r.plan.role == role]
        weight = 1.0 if len(peers) == 1 else cap / max(peers)
        indices.append(list(range(len(reps), len(reps) + copies)))
        for i in range(copies):
            reps.append(ReplicaSpec(replica.cost, config, weight=weight, name=f"{replica.plan.label}#{i}", role=role))
        gpu_price_hours += replica.gpu.price_per_hour * replica.plan.gpus
        gpus += replica.plan.gpus
    workload = specs.workload if max_requests is None else specs.workload.head(max_requests)
    price = gpu_price_hours / gpus if gpus else math.nan
    extra: dict[str, Any] = {}
    if disagg:
        extra = {"kv_transfer": kv_transfers(specs, topology, placed, indices), "decode_router": decode_router}
    if measured_at == "client":
        extra["client"] = client_path(placed[0][0].settings.engine)
    return run_simulation(reps, workload, router=router, slo=specs.slo, seed=seed, skip_ahead=skip_ahead,
                          progress=progress, record_log=record_log, price_per_gpu_hour=price, cut_early=cut_early,
                          **extra)


def check_seed(seed: Any, option: str = "seed") -> None:
    """A seed is a whole number >= 0 (numpy's generators take no negative seeds); ``option``: its keyword."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"{{{option}=}}{shorten(seed)}: must be a whole number of at least 0 (it seeds numpy's "
                        f"random generator); write e.g. {{{option}=}}0", option=option)


def check_simulate_args(specs: Any, plan: Any, *, seed: Any = 0, fn: str = "simulate") -> None:
    """The types :func:`simulate` takes, checked before any work (a wrong one is a :class:`SpecError`)."""
    if not isinstance(specs, Specs):
        raise SpecError(f"{fn}(specs={shorten(specs)}): specs must be the Specs that load_specs(...) returns, "
                        f"not a {type(specs).__name__}; write ax.{fn}(ax.load_specs(...), ax.Plan(...))")
    if not isinstance(plan, (Plan, Deployment)):
        raise SpecError(f"{fn}(plan={shorten(plan)}): the plan must be a Plan or a Deployment, not a "
                        f"{type(plan).__name__}; write e.g. ax.Plan(gpu=\"{specs.cluster.gpu}\", tp=2)")
    check_seed(seed)


def client_path(engine: EngineSpec) -> ClientPath:
    """The API-server and streaming path of ``engine`` as fitted in ``serving.yaml`` (``engines.<name>.client``)."""
    cal = serving_calibration()["engines"]
    entry = cal.get(engine.overhead_profile or engine.name, cal["default"]).get("client") or \
        cal["default"].get("client", {})
    return ClientPath.from_calibration(entry)
