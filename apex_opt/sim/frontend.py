"""Front ends of the simulator: what stands between the arriving requests and the engines.

The core (:class:`~apex_opt.sim.engine.Simulation`) replays the arrivals, runs the engines' iterations and
records what happens; a front end decides where a request goes and what happens to it at the edges of an
engine. It implements the :class:`FrontEnd` protocol:

* **routing and admission** (every run): which replica, and which of its virtual engines, an arrival goes to
  (:meth:`~FrontEnd.route`), whether that engine takes it and how many tokens it may generate
  (:meth:`~FrontEnd.admit`), and the per-replica count of outstanding requests the load-aware routers read
  (:meth:`~FrontEnd.accepted`, :meth:`~FrontEnd.released`);
* the **horizon** of an engine (:meth:`~FrontEnd.horizon`): the next arrival that could reach it, which bounds
  a closed-form skip-ahead run;
* **engine hooks** (called only when ``engine_hooks`` is true, so that an aggregated run pays nothing for
  them): a request that produced its last token may be handed off instead of finishing
  (:meth:`~FrontEnd.hand_off`), work around an engine's iteration start (:meth:`~FrontEnd.before_start`,
  :meth:`~FrontEnd.after_start`) and after the preempted members of its batch left its sample book
  (:meth:`~FrontEnd.after_leave`), and a further bound on a skip-ahead run (:meth:`~FrontEnd.limit_run`);
* its own **event kinds** (:meth:`~FrontEnd.on_event`): the core hands it every event it does not handle;
* the **result** (:meth:`~FrontEnd.finalize`): its own records and summary keys added.

:class:`AggregatedFrontEnd` is the plain data-parallel front end (a router over replicas that prefill and
decode); :class:`~apex_opt.sim.disagg.DisaggFrontEnd` hands requests from prefill to decode instances.

A front end is bound to one simulation (:meth:`~FrontEnd.bind`) and uses only the services listed by
:class:`Core`: the workload arrays, the replicas and engines, the random stream, the next arrival, the event heap,
the :class:`~apex_opt.sim.recorder.Recorder`, and ``push``, ``wake`` and ``detach``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..errors import SimulationError, SpecError
from .config import ReplicaSpec
from .cost import BatchShape
from .engine_state import EngineState
from .metrics import SimResult
from .recorder import Recorder, SLOWatch
from .router import make_router
from .state import Request

_INF = math.inf


class Core(Protocol):
    """The services of the simulation core a front end may use (:class:`~apex_opt.sim.engine.Simulation`)."""

    N: int  # requests in the workload
    ids: tuple[str, ...]
    arrival: np.ndarray  # arrival times (numpy)
    arr: list[float]  # arrival times
    prm: list[int]  # prompt tokens
    out: list[int]  # requested output tokens
    segments: Any  # prompt segments (prefix caching) or None
    replicas: list[ReplicaSpec]
    engines: list[EngineState]
    rep_engines: list[list[EngineState]]  # the virtual engines of each replica
    rng: np.random.Generator  # the run's random stream (routers)
    next_k: int  # the next arrival not yet seen
    heap: list[tuple]  # pending events (t, kind, seq, a, b)
    rec: Recorder
    watch: SLOWatch | None  # with cut_early and an SLO: decides when the run stops (its cut_at once it has)

    def push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        """Schedule an event of ``kind`` at ``t`` with arguments ``a``, ``b``."""
        ...

    def wake(self, e: EngineState, t: float) -> None:
        """Engine ``e`` has new work at ``t``."""
        ...

    def detach(self, e: EngineState, req: Request) -> int:
        """Take ``req`` (its last token produced) out of ``e``'s batch; returns the blocks it held privately."""
        ...


class FrontEnd(Protocol):
    """Routing, admission and hand-off around the engines of a :class:`~apex_opt.sim.engine.Simulation`."""

    #: whether the core calls the engine hooks (``hand_off``, ``before_start``, ``after_start``,
    #: ``after_leave``, ``limit_run``)
    engine_hooks: bool
    #: prefill and decode run on different replicas
    disaggregated: bool

    def check_replicas(self, replicas: Sequence[ReplicaSpec]) -> None:
        """Raise ``SpecError`` if this front end cannot serve these replicas (called first)."""
        ...

    def bind(self, sim: Core) -> None:
        """Attach to ``sim`` (its engines exist) and build the routers."""
        ...

    def route(self, k: int) -> EngineState:
        """The engine arrival ``k`` goes to."""
        ...

    def admit(self, e: EngineState, k: int) -> tuple[str, int, int]:
        """``(rejection reason or "", output cap, max_tokens to run on e)`` for arrival ``k`` at engine ``e``."""
        ...

    def accepted(self, e: EngineState) -> None:
        """A request was queued at engine ``e``."""
        ...

    def released(self, e: EngineState) -> None:
        """A request left engine ``e`` for good (finished, or dropped by the scheduler)."""
        ...

    def horizon(self, e: EngineState) -> float:
        """Time of the next arrival that could reach engine ``e`` (``inf``: none)."""
        ...

    def hand_off(self, e: EngineState, req: Request, tau: float) -> bool:
        """``req`` produced its last token on ``e`` (stamped at ``tau``): return True if the front end takes
        it elsewhere (the core then does not finish it)."""
        ...

    def before_start(self, e: EngineState, t: float) -> None:
        """Engine ``e`` is about to schedule an iteration at ``t``."""
        ...

    def after_start(self, e: EngineState, t: float) -> None:
        """Engine ``e`` scheduled (and launched, or went idle) at ``t``."""
        ...

    def after_leave(self, e: EngineState) -> None:
        """The outputs of ``e``'s previous iteration are stamped and its preempted members left its book."""
        ...

    def limit_run(self, e: EngineState, t: float, shape: BatchShape, t0: float, stage0: Any, n: int) -> int:
        """Bound ``n > 1``, the length of a run of identical decode steps ``e`` would execute at once."""
        ...

    def on_event(self, t: float, kind: int, a: int, b: int) -> None:
        """An event of a kind the core does not handle."""
        ...

    def finalize(self, res: SimResult) -> SimResult:
        """The run's result, with what the front end recorded added."""
        ...


def admission(e: EngineState, prompt: int, out: int, check_length: bool = True) -> tuple[str, int]:
    """Whether engine ``e`` takes a request: ``(rejection reason or "", output tokens it may generate)``.

    Prompts over the engine's limit are rejected (``prompt_limit``); with ``length_policy="reject"`` so are
    requests whose prompt plus output exceed ``max_model_len`` (``length``); outputs are capped by the context
    limit and by what one sequence alone can hold in the KV cache (``kv`` when not even the prompt fits).
    """
    pol = e.policy
    if prompt > pol.prompt_limit():
        return "prompt_limit", 0
    if check_length and e.cfg.length_policy == "reject" and prompt + out > e.cfg.max_model_len:
        return "length", 0
    kv_lim = pol.kv_token_limit()
    cap = min(out, pol.output_limit(prompt), kv_lim - prompt)
    if cap < 1:
        return ("kv" if prompt >= kv_lim else "prompt_limit"), cap
    return "", cap


def least_busy(group: list[EngineState]) -> EngineState:
    """vLLM 0.6 ``add_request``: the virtual engine with the fewest unfinished requests."""
    e = group[0]
    best = len(e.waiting) + len(e.running)
    for g in group[1:]:
        load = len(g.waiting) + len(g.running)
        if load < best:
            e, best = g, load
    return e


class ArrivalRouter:
    """The router of the arrivals over ``targets`` (replica indices; all replicas if ``None``).

    A static router's whole assignment is computed up front; then each replica's arrival times are known too,
    which gives the exact :meth:`horizon` of each replica.
    """

    def __init__(self, name: str, sim: Core, targets: list[int] | None = None) -> None:
        self.sim = sim
        self.targets = targets
        nrep = len(sim.replicas)
        weights = [s.weight for s in sim.replicas] if targets is None else [sim.replicas[p].weight for p in targets]
        self.router = make_router(name, weights, sim.rng, segments=sim.segments, prompts=sim.prm)
        n = sim.N
        assign = None
        if self.router.static:
            assign = self.router.precompute(n)
            if targets is not None:
                assign = np.asarray(targets, dtype=np.int64)[assign]
        self.assign = assign
        if assign is not None:
            self.rep_times = [sim.arrival[assign == r].tolist() for r in range(nrep)]
            self.rep_ptr = [0] * nrep

    def pick(self, k: int, outstanding: list[int]) -> int:
        """The replica arrival ``k`` goes to (``outstanding``: requests per replica, for load-aware routers)."""
        if self.assign is not None:
            r = int(self.assign[k])
            self.rep_ptr[r] += 1
            return r
        targets = self.targets
        if targets is None:
            return self.router.pick(outstanding, k)
        return targets[self.router.pick([outstanding[p] for p in targets], k)]

    def horizon(self, r: int) -> float:
        """Time of the next arrival that could reach replica ``r``."""
        if self.assign is not None:
            p = self.rep_ptr[r]
            times = self.rep_times[r]
            return times[p] if p < len(times) else _INF
        sim = self.sim
        k = sim.next_k
        return sim.arr[k] if k < sim.N else _INF


class AggregatedFrontEnd:
    """Data parallelism: a router over replicas that both prefill and decode; no hand-off."""

    engine_hooks = False
    disaggregated = False

    def __init__(self, router: str = "round-robin") -> None:
        self.router_name = router
        self.outstanding: list[int] = []

    def check_replicas(self, replicas: Sequence[ReplicaSpec]) -> None:
        if any(s.role != "both" for s in replicas):
            raise SpecError("prefill/decode replicas need a disaggregated run: call run_simulation(..., "
                            "kv_transfer=...) with 'prefill' and 'decode' replicas")

    def bind(self, sim: Core) -> None:
        self.sim = sim
        self.arrivals = ArrivalRouter(self.router_name, sim)
        self.outstanding = [0] * len(sim.replicas)

    def route(self, k: int) -> EngineState:
        return least_busy(self.sim.rep_engines[self.arrivals.pick(k, self.outstanding)])

    def admit(self, e: EngineState, k: int) -> tuple[str, int, int]:
        sim = self.sim
        reason, cap = admission(e, sim.prm[k], sim.out[k])
        return reason, cap, cap

    def accepted(self, e: EngineState) -> None:
        self.outstanding[e.replica] += 1

    def released(self, e: EngineState) -> None:
        self.outstanding[e.replica] -= 1

    def horizon(self, e: EngineState) -> float:
        return self.arrivals.horizon(e.replica)

    # engine hooks: never called (engine_hooks is False)
    def hand_off(self, e: EngineState, req: Request, tau: float) -> bool:  # pragma: no cover - not called
        return False

    def before_start(self, e: EngineState, t: float) -> None:  # pragma: no cover - not called
        pass

    def after_start(self, e: EngineState, t: float) -> None:  # pragma: no cover - not called
        pass

    def after_leave(self, e: EngineState) -> None:  # pragma: no cover - not called
        pass

    def limit_run(self, e: EngineState, t: float, shape: BatchShape, t0: float, stage0: Any,
                  n: int) -> int:  # pragma: no cover - not called
        return n

    def on_event(self, t: float, kind: int, a: int, b: int) -> None:  # pragma: no cover - internal
        """No event kinds of its own."""
        raise SimulationError(f"unexpected event kind {kind} at t={t}")

    def finalize(self, res: SimResult) -> SimResult:
        return res


__all__ = ["AggregatedFrontEnd", "ArrivalRouter", "Core", "FrontEnd", "admission", "least_busy"]
