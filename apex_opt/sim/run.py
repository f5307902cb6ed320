"""The simulator's entry point, :func:`run_simulation`: an aggregated or a disaggregated run.

It picks the front end (:class:`~apex_opt.sim.frontend.AggregatedFrontEnd`, or
:class:`~apex_opt.sim.disagg.DisaggFrontEnd` when the replicas have prefill and decode roles) for the core
:class:`~apex_opt.sim.engine.Simulation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import SpecError
from .config import ReplicaSpec
from .disagg import DisaggSimulation
from .engine import Simulation
from .metrics import SimResult


def run_simulation(
    replicas: Sequence[ReplicaSpec],
    workload: Any,
    *,
    router: str = "round-robin",
    slo: Any = None,
    seed: int = 0,
    skip_ahead: bool = True,
    progress: Callable[[float], None] | None = None,
    record_log: bool = False,
    price_per_gpu_hour: float | None = None,
    kv_transfer: Any = None,
    decode_router: str = "least-loaded",
    client: Any = None,
    cut_early: bool = False,
) -> SimResult:
    """Replay ``workload`` on data-parallel ``replicas`` behind a router and measure it.

    Parameters
    ----------
    replicas:
        One :class:`ReplicaSpec` per data-parallel replica (cost model + scheduler settings + router weight);
        replicas may differ (heterogeneous clusters).
    workload:
        Anything with ``arrival_s`` (sorted seconds), ``prompt_tokens``, ``output_tokens`` and ``request_ids``
        (e.g. :class:`apex_opt.workload.Workload`); optional ``segments`` and ``output_ids`` describe shared
        prompt prefixes for the replicas with ``prefix_caching`` (:mod:`apex_opt.sim.prefix_cache`).
    router:
        ``"round-robin"`` (request k -> replica k mod dp with equal weights; smooth weighted otherwise),
        ``"least-loaded"`` (fewest outstanding requests per unit weight at arrival, ties to the lowest index) or
        ``"random"`` (seeded, proportional to weight) or ``"prefix-aware"`` (SGLang's cache-aware router over
        the prompts' segments, :class:`~apex_opt.sim.router.PrefixAwareRouter`).
    slo:
        An SLO (``apex_opt.schema.slo.SLO``, :class:`~apex_opt.sim.metrics.SLOTarget` or alike) for attainment,
        goodput and ``slo_met``.
    seed:
        Seeds the only randomness (the random router, via ``numpy.random.default_rng(seed)``, and the accepted
        draft counts of speculating replicas, from their own stream ``default_rng([seed, 0x5BEC])``).
    skip_ahead:
        Execute runs of identical decode steps in closed form (same results, much faster).
    progress:
        Called with the fraction of requests finished (about every 1 %, and 1.0 at the end).
    record_log:
        Keep the request event log and the iteration log in the result.
    price_per_gpu_hour:
        For the ``cost`` summary key.
    kv_transfer:
        Disaggregated runs (replicas with ``role="prefill"`` and ``role="decode"``, see
        :mod:`apex_opt.sim.disagg`): the KV-cache transfer cost, one :class:`~apex_opt.sim.disagg.KVTransfer` for
        every (prefill, decode) pair, a mapping ``(prefill index, decode index) -> KVTransfer`` (replica indices
        in ``replicas``) or a callable of the pair. ``router`` then routes arrivals over the prefill replicas.
    decode_router:
        Disaggregated runs: how a prefilled request picks its decode replica (same choices as ``router``).
    client:
        A :class:`~apex_opt.sim.client.ClientPath`: report latencies as a benchmark client measures them (API
        server, tokenisation and streaming included); ``None`` (default) reports the engine's own timings.
    cut_early:
        With an ``slo``: stop the run as soon as more requests have missed it for certain than its attainment
        target allows (:class:`~apex_opt.sim.recorder.SLOWatch`): the verdict can no longer change. The summary
        then says when (``cut_at_s``), how many had missed (``num_slo_missed``) and the attainment the run could
        reach at most (``slo_attainment``); its other metrics cover what had happened by then. A planner's
        verification uses it; a run that is to be read whole does not.

    Returns
    -------
    SimResult

    Raises
    ------
    SpecError
        Malformed workload, replicas or router name.
    SimulationError
        The engine cannot make progress (e.g. a KV cache too small for a single request).

    Examples
    --------
    >>> from apex_opt.sim import LinearStageCost, ReplicaSpec, SchedulerConfig, StaticReplicaCost
    >>> from types import SimpleNamespace
    >>> import numpy as np
    >>> w = SimpleNamespace(arrival_s=np.array([0.0, 0.5]), prompt_tokens=np.array([100, 200]),
    ...                     output_tokens=np.array([10, 20]), request_ids=("a", "b"))
    >>> rep = ReplicaSpec(StaticReplicaCost((LinearStageCost(),)),
    ...                   SchedulerConfig.vllm_v0(num_kv_blocks=1000, max_model_len=4096))
    >>> res = run_simulation([rep], w)
    >>> res["num_completed"], res["output_tokens"]
    (2, 30)
    """
    kw: dict[str, Any] = {"router": router, "slo": slo, "seed": seed, "skip_ahead": skip_ahead, "progress": progress,
                          "record_log": record_log, "price_per_gpu_hour": price_per_gpu_hour, "client": client,
                          "cut_early": cut_early}
    if any(s.role != "both" for s in replicas):
        if kv_transfer is None:
            raise SpecError("a disaggregated run (prefill and decode replicas) needs kv_transfer=..., the cost of "
                            "moving a request's KV cache, e.g. LinearKVTransfer(latency_s=0.001, s_per_token=2e-6)")
        return DisaggSimulation(replicas, workload, kv_transfer=kv_transfer, decode_router=decode_router, **kw).run()
    if kv_transfer is not None:
        raise SpecError("kv_transfer applies to disaggregated runs only; give the replicas role='prefill' or "
                        "role='decode'")
    return Simulation(replicas, workload, **kw).run()


__all__ = ["run_simulation"]
