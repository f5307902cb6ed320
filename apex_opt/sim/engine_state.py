"""The state of one engine (a replica, or one of its ``pp`` virtual engines) and the callbacks it reports
through.

:class:`EngineState` holds an engine's queues, KV cache, decode pool, sample book and its iteration in flight;
the scheduling policies (:mod:`apex_opt.sim.policies`) read and change it through its primitives (``admit``,
``preempt``, ``ignore``). What a policy does to a request that the simulation must record or route is reported
through :class:`EngineEvents`, an explicit callback object (the :class:`~apex_opt.sim.engine.Simulation`).
"""

from __future__ import annotations

from array import array
from collections import deque
from typing import Protocol

from .config import ReplicaSpec
from .cost import BatchShape
from .policies import Iteration, SchedulerPolicy, make_policy
from .prefix_cache import PrefixCache
from .state import DECODE, PREFILL, WAITING, DecodePool, KVCache, Request, SampleBook


class EngineEvents(Protocol):
    """What an :class:`EngineState` reports while its policy schedules (the simulation implements it)."""

    def on_cached(self, req: Request, hit: int) -> None:
        """``req``'s first admission found its first ``hit`` prompt tokens in the prefix cache."""
        ...

    def on_preempt(self, e: EngineState, req: Request) -> None:
        """``req`` was preempted (recompute) on ``e``; its blocks are freed."""
        ...

    def on_ignore(self, e: EngineState, req: Request, reason: str) -> None:
        """``req`` left ``e``'s waiting queue without being scheduled (vLLM ``FINISHED_IGNORED``)."""
        ...


class _Pending:
    """Outputs of a finished iteration that await processing (stamping, finishing, freeing)."""

    __slots__ = ("fins", "firsts", "gid", "pool_ran", "rejoins", "t_end")

    def __init__(self, t_end: float, gid: int, pool_ran: bool, firsts: list, rejoins: list, fins: list) -> None:
        self.t_end = t_end
        self.gid = gid
        self.pool_ran = pool_ran
        self.firsts = firsts
        self.rejoins = rejoins
        self.fins = fins


class EngineState:
    """State of one engine (a replica, or one of its ``pp`` virtual engines): queues, KV, decode pool."""

    __slots__ = (
        "arrived",
        "async_",
        "book",
        "cache",
        "cfg",
        "eid",
        "ev",
        "events",
        "held",
        "host",
        "in_flight",
        "it",
        "it_shape",
        "it_steps",
        "kv",
        "kv_int",
        "kv_last",
        "kv_max",
        "kv_t",
        "now",
        "pending",
        "policy",
        "pool",
        "pp",
        "prefilling",
        "qlen",
        "replica",
        "rlen",
        "running",
        "skippable",
        "spec",
        "stamp_next",
        "to_leave",
        "vid",
        "waiting",
        "wake_pending",
    )

    def __init__(self, events: EngineEvents, eid: int, replica: int, vid: int, spec: ReplicaSpec, blocks: int,
                 books: tuple[array, array, array]) -> None:
        cfg = spec.config
        #: where the engine reports what its policy did to a request (the simulation)
        self.events = events
        self.eid = eid
        self.replica = replica
        self.vid = vid
        self.cfg = cfg
        self.pp = spec.pp  # pipeline stages of its replica
        self.policy: SchedulerPolicy = make_policy(cfg, blocks)
        self.kv = KVCache(blocks, cfg.block_size)
        #: the prefix cache (set by the simulation when the engine caches prefixes and the workload has segments)
        self.cache: PrefixCache | None = None
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}
        self.prefilling: dict[int, Request] = {}
        self.pool = DecodePool(cfg.block_size, cfg.clip_max_new_tokens if cfg.behaviour.clip_reserved_new_tokens else 0)
        self.book = SampleBook(*books)
        self.in_flight = False
        self.wake_pending = False
        self.held = 0  # blocks held outside the queues (disaggregation: KV being sent, or reserved to receive)
        self.it: Iteration | None = None
        self.it_shape: BatchShape | None = None
        self.it_steps = 1
        self.pending: _Pending | None = None
        #: pp > 1: the heap entry of its pending stage event (None while queued at a stage or idle)
        self.ev: tuple | None = None
        #: a request joined its waiting queue since its last iteration was scheduled
        self.arrived = False
        self.to_leave: list[Request] = []
        self.now = 0.0
        self.kv_t = 0.0
        self.kv_last = 0
        self.kv_int = 0.0
        self.kv_max = 0
        self.qlen = 0
        self.rlen = 0
        # vLLM disables async output processing with pp > 1 and with speculative decoding (0.6.0
        # ModelConfig.verify_async_output_proc); SGLang 0.4 runs EAGLE without its overlap scheduler
        self.async_ = cfg.async_output and spec.pp == 1 and cfg.speculative is None
        self.stamp_next = self.async_ and cfg.metrics_stamp == "next-iteration"
        self.host = getattr(spec.cost.stages[0], "host_time", None)
        #: runs of identical decode steps may be executed at once (set by the simulation: skip-ahead on, pp = 1,
        #: no speculation; pipelined replicas skip ahead as a whole, see ``Simulation._pipe_run``)
        self.skippable = False
        # speculative decoding: P(at least i drafts accepted), i = 1..k, and the draft pass cost fraction
        sp = cfg.speculative
        self.spec: tuple[tuple[float, ...], float] | None = None
        if sp is not None:
            self.spec = (sp.survival(), sp.draft_fraction())
            self.pool.overshoot = True

    # ------------------------------------------------------------------ primitives used by the policies
    def admit(self, req: Request, blocks: int, hit: int = 0) -> None:
        """``req`` leaves ``waiting`` holding ``blocks`` blocks (those of its first ``hit`` tokens, found in the
        prefix cache by ``cache.lookup``, included: they are locked here and not computed again). The caller
        takes the other ``blocks - req.shared`` blocks from the pool after this call."""
        req.state = PREFILL
        req.blocks = blocks
        req.computed = hit
        if hit:
            self.cache.acquire(req, hit)  # type: ignore[union-attr]
        if req.cached < 0:
            req.cached = hit
            if hit:
                self.events.on_cached(req, hit)
        self.running[req.idx] = req
        self.prefilling[req.idx] = req

    def preempt(self, req: Request) -> int:
        """Recompute preemption: free the request's blocks; it must be re-prefilled over prompt + generated.

        The caller puts it back into ``waiting`` (front for vLLM, back for SGLang). Returns the blocks freed
        (with prefix caching: the blocks that became free, cached ones left unreferenced included). vLLM keeps its
        computed blocks cached (freed in reverse order, hashes kept), SGLang the prompt (``retract_decode``).
        """
        if req.state == DECODE:
            pool = self.pool
            gen = pool.generated(req)
            blocks = pool.blocks(req)
            kv_tokens = pool.kv_tokens(req)
            pool.remove(req)
            self.to_leave.append(req)
            self.policy.on_removed(self)
        else:
            gen = req.gen
            blocks = req.blocks
            kv_tokens = req.computed
            del self.prefilling[req.idx]
        del self.running[req.idx]
        req.gen = gen
        req.target = req.prompt + gen
        req.computed = 0
        req.blocks = 0
        req.state = WAITING
        cache = self.cache
        if cache is None:
            self.kv.give(blocks)
            freed = blocks
        else:
            before = self.kv.free
            if cache.decode_insert:
                cache.advance(req, kv_tokens)
            self.kv.give(blocks - req.shared)
            cache.unlock(req)
            freed = self.kv.free - before
        self.events.on_preempt(self, req)
        return freed

    def ignore(self, req: Request, reason: str) -> None:
        """vLLM ``FINISHED_IGNORED``: the request left ``waiting`` without being scheduled."""
        self.events.on_ignore(self, req, reason)


__all__ = ["EngineEvents", "EngineState"]
