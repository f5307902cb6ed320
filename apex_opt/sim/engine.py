"""The event-driven, iteration-level serving simulator.

One :class:`Simulation` owns one event heap ordered by ``(time, priority, seq)``; all state lives in it and in
its :class:`EngineState` objects (one per engine: ``pp`` virtual engines per replica, as vLLM 0.6 runs one
scheduler per pipeline micro-batch slot, each with ``num_kv_blocks // pp`` blocks). There is no module-level
mutable state, so reruns are identical and simulations can run in parallel processes.

Event priorities at equal times (lower first):

* ``ARRIVAL`` (0): a request reaches the router, which assigns a replica (and the replica's virtual engine with
  the fewest unfinished requests, as vLLM 0.6 ``add_request`` does). A request arriving exactly when an
  iteration ends is therefore seen by the next schedule.
* ``KV_START`` (1), ``KV_DONE`` (2): disaggregated runs only (:mod:`apex_opt.sim.disagg`). ``KV_START`` logs
  that the bytes of a KV-cache transfer start moving (the transfer was booked when the decode instance allocated
  its blocks; no state changes). ``KV_DONE``: the transfer completes, the prefill instance frees the request's
  blocks and the request joins the decode instance's batch at its next iteration; like an arrival, an iteration
  ending at the same instant (on either side) already sees it.
* ``STAGE_DONE`` (3): a stage finishes a micro-batch; after the last stage the engine processes the outputs and
  schedules its next iteration at once.
* ``STAGE_READY`` (4): a micro-batch's activations reach the next stage (after ``send_time``); stages serve
  micro-batches first come, first served, one at a time, so bubbles and stage imbalance emerge.
* ``WAKE`` (5): an idle engine that received a request schedules (after all arrivals at that instant).

Host overhead is part of stage 0's ``iteration_time`` (the cost model's job); output processing overlaps the
next iteration under async output processing and is otherwise free.

Closed-form skip-ahead (pp = 1): when a scheduled iteration is a pure decode step of the whole decode pool that
the policy will repeat unchanged (no arrival that could be admitted, no completion, no preemption risk, no
cost-regime breakpoint), the run of ``n`` identical steps is executed at once: step ``j`` takes
``c0 + c1 * (S0 + j*B)`` (``StageCost.decode_coeffs``), KV blocks grow by the phase histogram of the pool,
arrivals are located by solving the quadratic for the cumulated time. Results equal step-by-step simulation up
to float rounding (tested). A speculating replica (``SchedulerConfig.speculative``) draws the tokens of every
verify step and is never skipped ahead.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import SimulationError, SpecError
from .config import ReplicaSpec
from .cost import BatchShape
from .metrics import RequestRecords, SimResult, downsample, latency_summary, slo_fields
from .policies import Iteration, SchedulerPolicy, make_policy
from .prefix_cache import CachedKV, PrefixCache, request_path
from .router import make_router
from .state import DECODE, DONE, PREFILL, WAITING, DecodePool, KVCache, Request, SampleBook, StageClock

ARRIVAL, KV_START, KV_DONE, STAGE_DONE, STAGE_READY, WAKE = 0, 1, 2, 3, 4, 5
_INF = math.inf
_IGNORED = -2.0  # Request.stall_from marker: ignored before its last token stamp was known


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
        "async_",
        "book",
        "cache",
        "cfg",
        "eid",
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
        "prefilling",
        "qlen",
        "replica",
        "rlen",
        "running",
        "sim",
        "spec",
        "stamp_next",
        "to_leave",
        "vid",
        "waiting",
        "wake_pending",
    )

    def __init__(self, sim: Simulation, eid: int, replica: int, vid: int, spec: ReplicaSpec, blocks: int,
                 books: tuple[array, array, array]) -> None:
        cfg = spec.config
        self.sim = sim
        self.eid = eid
        self.replica = replica
        self.vid = vid
        self.cfg = cfg
        self.policy: SchedulerPolicy = make_policy(cfg, blocks)
        self.kv = KVCache(blocks, cfg.block_size)
        #: the prefix cache (set by the simulation when the engine caches prefixes and the workload has segments)
        self.cache: PrefixCache | None = None
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}
        self.prefilling: dict[int, Request] = {}
        self.pool = DecodePool(cfg.block_size, cfg.clip_max_new_tokens if cfg.family == "sglang" else 0)
        self.book = SampleBook(*books)
        self.in_flight = False
        self.wake_pending = False
        self.held = 0  # blocks held outside the queues (disaggregation: KV being sent, or reserved to receive)
        self.it: Iteration | None = None
        self.it_shape: BatchShape | None = None
        self.it_steps = 1
        self.pending: _Pending | None = None
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
                self.sim.r_cached[req.idx] = hit
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
        self.sim._on_preempt(self, req)
        return freed

    def ignore(self, req: Request, reason: str) -> None:
        """vLLM ``FINISHED_IGNORED``: the request left ``waiting`` without being scheduled."""
        self.sim._on_ignore(self, req, reason)


class Simulation:
    """One run: replicas, workload, router and the event heap. Use :func:`run_simulation`."""

    #: prefill/decode replicas are handled by the subclass ``apex_opt.sim.disagg.DisaggSimulation``
    disaggregated = False

    def __init__(self, replicas: Sequence[ReplicaSpec], workload: Any, *, router: str = "round-robin",
                 slo: Any = None, seed: int = 0, skip_ahead: bool = True,
                 progress: Callable[[float], None] | None = None, record_log: bool = False,
                 price_per_gpu_hour: float | None = None, debug: bool = False, client: Any = None) -> None:
        if not replicas:
            raise SpecError("run_simulation needs at least one replica")
        self.replicas = list(replicas)
        if not self.disaggregated and any(s.role != "both" for s in self.replicas):
            raise SpecError("prefill/decode replicas need a disaggregated run: call run_simulation(..., "
                            "kv_transfer=...) with 'prefill' and 'decode' replicas")
        self.arrival = np.asarray(workload.arrival_s, dtype=np.float64)
        self.prompt = np.asarray(workload.prompt_tokens, dtype=np.int64)
        self.output = np.asarray(workload.output_tokens, dtype=np.int64)
        self.ids = tuple(str(r) for r in workload.request_ids)
        n = self.N = int(self.arrival.shape[0])
        if not (self.prompt.shape[0] == self.output.shape[0] == len(self.ids) == n):
            raise SpecError("workload arrays differ in length")
        if n and ((self.prompt < 1).any() or (self.output < 1).any()):
            raise SpecError("workload token counts must be >= 1")
        if n > 1 and (np.diff(self.arrival) < 0).any():
            raise SpecError("workload arrival_s must be sorted")
        self._arr = self.arrival.tolist()
        self._prm = self.prompt.tolist()
        self._out = self.output.tolist()
        # prefix caching: per request, the content segments of its prompt and the id of its answer's content
        self.segments = getattr(workload, "segments", None)
        self.output_ids = getattr(workload, "output_ids", None)
        if self.segments is not None and getattr(self.segments, "totals", None) is None:  # Workload checked them
            _check_segments(self.segments, self._prm, n)
        if self.output_ids is not None and len(self.output_ids) != n:
            raise SpecError(f"workload output_ids has {len(self.output_ids)} entries for {n} requests")
        self.caching = any(s.config.prefix_caching for s in replicas)
        self.slo = slo_fields(slo)
        self.skip = skip_ahead
        self.progress = progress
        self.record_log = record_log
        self.price = price_per_gpu_hour
        self.client = client  # a ClientPath: latencies as a benchmark client times them (None: engine-side)
        self.rng = np.random.default_rng(seed)
        # speculative acceptance draws: their own stream, so runs without speculation are unchanged
        self.spec_rng = np.random.default_rng([seed, 0x5BEC])
        self.spec_u: list[float] = []
        self.spec_steps = 0
        self.spec_tokens = 0
        for r, spec in enumerate(self.replicas):
            if spec.config.speculative is not None and spec.pp > 1:
                raise SpecError(f"replica {r}: speculative decoding is modelled for pp = 1 only (got pp={spec.pp})")
        # records
        self.r_replica = np.full(n, -1, dtype=np.int64)
        self.r_first_sched = np.full(n, np.nan)
        self.r_first_token = np.full(n, np.nan)
        self.r_finish = np.full(n, np.nan)
        self.r_generated = np.zeros(n, dtype=np.int64)
        self.r_preempt = np.zeros(n, dtype=np.int64)
        self.r_stall = np.zeros(n)
        self.r_cached = np.zeros(n, dtype=np.int64)
        self.r_rejected = np.zeros(n, dtype=bool)
        self.r_truncated = np.zeros(n, dtype=bool)
        self.r_reason: dict[int, str] = {}
        self.log: list[tuple] | None = [] if record_log else None
        self.iter_log: list[tuple] | None = [] if record_log else None
        # ITL samples shared by all engines
        self.itl_vals = array("d")
        self.itl_wts = array("d")
        self.itl_segs = array("d")
        books = (self.itl_vals, self.itl_wts, self.itl_segs)
        # engines and stages
        self.engines: list[EngineState] = []
        self.rep_engines: list[list[EngineState]] = []
        self.stages: list[list[StageClock]] = []
        for r, spec in enumerate(self.replicas):
            pp = spec.pp
            blocks = spec.config.num_kv_blocks // pp
            if blocks < 1:
                raise SpecError(f"replica {r}: {spec.config.num_kv_blocks} KV blocks cannot be split over pp={pp} "
                                "virtual engines")
            group = []
            for v in range(pp):
                e = EngineState(self, len(self.engines), r, v, spec, blocks, books)
                if self.segments is not None and spec.config.prefix_caching:
                    e.kv = CachedKV(blocks, spec.config.block_size)
                    e.cache = PrefixCache(e.kv, spec.config.family)
                self.engines.append(e)
                group.append(e)
            self.rep_engines.append(group)
            self.stages.append([StageClock() for _ in range(pp)])
        self._paths = any(e.cache is not None for e in self.engines)
        self._make_router(router, n)
        self.outstanding = [0] * len(self.replicas)
        # event heap
        self.heap: list[tuple] = []
        self.seq = 0
        self.next_k = 0
        # cluster-level counters (time-weighted)
        self.n_wait = 0
        self.n_run = 0
        self.cnt_t = 0.0
        self.q_int = 0.0
        self.r_int = 0.0
        self.q_max = 0
        self.r_max = 0
        self.ser_q = array("d")  # (t, waiting, running) change points
        self.bs_time = 0.0
        self.bs_weight = 0.0
        self.bs_max = 0
        self.ser_bs = array("d")  # (t, duration, batch size) per iteration
        self.done = 0
        self.next_tick = 0.0
        self.debug = debug
        self.max_kv_seen = [0] * len(self.engines)

    def _make_router(self, router: str, n: int) -> None:
        """The arrival router over the replicas (static routers: the whole assignment up front)."""
        self.router = make_router(router, [s.weight for s in self.replicas], self.rng, segments=self.segments,
                                  prompts=self._prm)
        self.assign = self.router.precompute(n) if self.router.static else None
        if self.assign is not None:
            self.rep_times = [self.arrival[self.assign == r].tolist() for r in range(len(self.replicas))]
            self.rep_ptr = [0] * len(self.replicas)

    # ========================================================================================= the loop
    def _push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, kind, self.seq, a, b))

    def run(self) -> SimResult:
        if self.N:
            self._push(self._arr[0], ARRIVAL, 0)
            self.cnt_t = self._arr[0]
        heap = self.heap
        pop = heapq.heappop
        engines = self.engines
        while heap:
            t, kind, _, a, b = pop(heap)
            if kind == STAGE_DONE:
                self._on_stage_done(t, engines[a], b)
            elif kind == ARRIVAL:
                self._on_arrival(t, a)
            elif kind == STAGE_READY:
                self._stage_ready(t, engines[a], b)
            elif kind == WAKE:
                e = engines[a]
                e.wake_pending = False
                if not e.in_flight:
                    self._start(e, t)
            else:
                self._on_event(t, kind, a, b)
        for e in engines:
            if e.waiting or e.running or e.in_flight:  # pragma: no cover - internal consistency
                raise SimulationError(f"engine {e.eid} stopped with {len(e.waiting)} waiting and {len(e.running)} "
                                      "running requests")
        if self.progress is not None:
            self.progress(1.0)
        return self._result()

    def _on_event(self, t: float, kind: int, a: int, b: int) -> None:
        """Event kinds beyond the aggregated engine's (``KV_DONE``, ``KV_START``: see ``apex_opt.sim.disagg``)."""
        raise SimulationError(f"unexpected event kind {kind} at t={t}")  # pragma: no cover - internal

    # ========================================================================================= arrivals
    def _advance_arrivals(self, k: int) -> None:
        """Schedule the arrival after request ``k``."""
        if k + 1 < self.N:
            self._push(self._arr[k + 1], ARRIVAL, k + 1)
        self.next_k = k + 1

    def _route(self, k: int) -> int:
        """The replica request ``k`` goes to: a fixed assignment, or the router over all replicas."""
        if self.assign is not None:
            r = int(self.assign[k])
            self.rep_ptr[r] += 1
            return r
        return self.router.pick(self.outstanding, k)

    def _least_busy(self, group: list[EngineState]) -> EngineState:
        """vLLM 0.6 ``add_request``: the virtual engine with the fewest unfinished requests."""
        e = group[0]
        best = len(e.waiting) + len(e.running)
        for g in group[1:]:
            load = len(g.waiting) + len(g.running)
            if load < best:
                e, best = g, load
        return e

    def _admit(self, e: EngineState, k: int) -> tuple[str, int, int]:
        """``(rejection reason or "", output cap, max_tokens to run on e)`` for arrival ``k`` at engine ``e``."""
        reason, cap = admission(e, self._prm[k], self._out[k])
        return reason, cap, cap

    def _on_arrival(self, t: float, k: int) -> None:
        self._advance_arrivals(k)
        r = self._route(k)
        self.r_replica[k] = r
        e = self._least_busy(self.rep_engines[r])
        rid = self.ids[k]
        if self.log is not None:
            self.log.append((rid, "arrive", t, r))
        reason, cap, max_tokens = self._admit(e, k)
        if reason:
            self._reject(k, t, reason)
            return
        req = Request(k, rid, self._prm[k], max_tokens)
        if self._paths:
            assert self.segments is not None  # _paths: some engine caches prefixes, which needs segments
            out_id = self.output_ids[k] if self.output_ids is not None else ("answer", k)
            req.path, req.ends = request_path(self.segments[k], out_id, self._out[k])
        if cap < self._out[k]:
            self.r_truncated[k] = True
        e.waiting.append(req)
        self.outstanding[r] += 1
        self._counts(t, e)
        if not e.in_flight and not e.wake_pending:
            e.wake_pending = True
            self._push(t, WAKE, e.eid)

    def _reject(self, k: int, t: float, reason: str) -> None:
        self.r_rejected[k] = True
        self.r_reason[k] = reason
        if self.log is not None:
            self.log.append((self.ids[k], "reject", t, reason))
        self._tick()

    def _tick(self) -> None:
        self.done += 1
        if self.progress is not None and self.done >= self.next_tick:
            self.progress(self.done / self.N)
            self.next_tick = self.done + max(1.0, self.N / 100.0)

    def _horizon(self, e: EngineState) -> float:
        """Time of the next arrival that could reach engine ``e``."""
        if self.assign is not None:
            r = e.replica
            p = self.rep_ptr[r]
            times = self.rep_times[r]
            return times[p] if p < len(times) else _INF
        return self._arr[self.next_k] if self.next_k < self.N else _INF

    # ========================================================================================= counters
    def _counts(self, t: float, e: EngineState) -> None:
        dq = len(e.waiting) - e.qlen
        dr = len(e.running) - e.rlen
        if dq or dr:
            dt = t - self.cnt_t
            self.q_int += self.n_wait * dt
            self.r_int += self.n_run * dt
            self.cnt_t = t
            e.qlen += dq
            e.rlen += dr
            self.n_wait += dq
            self.n_run += dr
            self.q_max = max(self.q_max, self.n_wait)
            self.r_max = max(self.r_max, self.n_run)
            self.ser_q.extend((t, self.n_wait, self.n_run))

    def _kv(self, t: float, e: EngineState) -> None:
        e.kv_int += e.kv_last * (t - e.kv_t)
        e.kv_t = t
        used = e.kv.capacity - e.kv.free
        e.kv_last = used
        e.kv_max = max(e.kv_max, used)

    # ========================================================================================= iterations
    def _shape(self, e: EngineState, it: Iteration) -> BatchShape:
        pool = e.pool
        tokens = seqs = decodes = ctx = maxc = 0
        pairs = 0.0
        if it.run_pool:
            decodes = len(pool)
            ctx = pool.sum_base + decodes * pool.E
            maxc = pool.max_base() + pool.E
        for _, c, p in it.chunks:
            tokens += c
            pairs += c * (p + (c + 1) / 2)
            maxc = max(maxc, p + c)
        seqs = decodes + len(it.chunks)
        return BatchShape(tokens + decodes, seqs, decodes, ctx, pairs, bool(it.chunks), maxc)

    def _start(self, e: EngineState, t: float) -> None:
        """Schedule and launch the next iteration of engine ``e`` at time ``t``."""
        e.now = t
        it = e.policy.schedule(e)
        if it is None and (e.waiting or e.running):
            # e.g. vLLM 0.6 put a preempted request back after its admission walk: the engine steps again
            it = e.policy.schedule(e)
        pend = e.pending
        e.pending = None
        if it is None:
            if pend is not None:
                self._process(e, pend, pend.t_end)
            self._leave(e)
            e.in_flight = False
            e.it = None
            e.policy.on_idle(e)
            self._counts(t, e)
            self._kv(t, e)
            if (e.running or e.waiting) and not e.held and not (e.cache is not None and e.cache.locked):
                what = e.waiting[0].rid if e.waiting else next(iter(e.running.values())).rid
                raise SimulationError(
                    f"engine {e.eid} ({e.cfg.family}) has work it cannot schedule (request {what}); its KV cache or "
                    "token budget is too small for the request")
            if self.debug:
                self._check(e)
            return
        e.in_flight = True
        cache = e.cache
        if cache is not None and cache.at_schedule:  # vLLM 0.6 mark_blocks_as_computed (V1 did it while scheduling)
            for req, c, before in it.chunks:
                cache.advance(req, before + c)
        shape = self._shape(e, it)
        spec = self.replicas[e.replica]
        stage0 = spec.cost.stages[0]
        draft = 0.0
        if e.spec is not None and it.run_pool and shape.num_decodes:
            shape, draft = self._speculate(e, shape, stage0)
        t0 = stage0.iteration_time(shape) + draft
        if pend is not None:
            if e.stamp_next:
                tau = t + (e.host(shape) if e.host is not None else 0.0)
            else:
                tau = pend.t_end
            self._process(e, pend, tau)
        self._leave(e)
        if self.log is not None:
            for req, c, _ in it.chunks:
                self.log.append((req.rid, "prefill", t, c))
        for req, _, _ in it.chunks:
            if self.r_first_sched[req.idx] != self.r_first_sched[req.idx]:
                self.r_first_sched[req.idx] = t
        self._counts(t, e)
        self._kv(t, e)
        n = 1
        if (self.skip and spec.pp == 1 and e.spec is None and it.run_pool and not it.chunks and not it.preempted
                and (pend is None or not pend.fins) and shape.num_decodes and e.policy.decode_stable(e)):
            n = self._run_length(e, t, shape, t0, stage0)
        e.it = it
        e.it_shape = shape
        e.it_steps = n
        nseq = shape.num_seqs
        if spec.pp == 1:
            sc = self.stages[e.replica][0]
            if n > 1:
                total = self._apply_run(e, t, shape, t0, n, stage0, sc)
            else:
                total = t0
                sc.busy_s += t0
                self._account(sc, stage0, shape, t0)
            self.bs_time += nseq * total
            self.bs_weight += total
            self.ser_bs.extend((t, total, nseq))
            if self.iter_log is not None:
                self.iter_log.append((e.replica, e.vid, t, total, n, shape.num_tokens - shape.num_decodes,
                                      shape.num_decodes))
            self._push(t + total, STAGE_DONE, e.eid, 0)
        else:
            self.bs_time += nseq * t0
            self.bs_weight += t0
            self.ser_bs.extend((t, t0, nseq))
            if self.iter_log is not None:
                self.iter_log.append((e.replica, e.vid, t, t0, 1, shape.num_tokens - shape.num_decodes,
                                      shape.num_decodes))
            self._stage_ready(t, e, 0)
        self.bs_max = max(self.bs_max, nseq)
        if self.debug:
            self._check(e)

    def _speculate(self, e: EngineState, shape: BatchShape, stage0: Any) -> tuple[BatchShape, float]:
        """A speculative decode step of the pool: draw the tokens it emits, take their blocks, and return the
        verify batch (``k + 1`` query tokens per decode) and the time of the ``k`` draft passes.

        One draw per step for the whole pool (the pool advances its members together): the mean tokens per
        step is exact, the spread between sequences of one step is not modelled. The policy already allocated
        the first token; the other ``m - 1`` take their blocks here, fewer tokens if the cache runs out.
        """
        surv, frac = e.spec  # type: ignore[misc]
        k = len(surv)
        u = self.spec_u
        if not u:
            u.extend(self.spec_rng.random(4096).tolist())
        x = u.pop()
        m = 1
        for c in surv:
            if x >= c:
                break
            m += 1
        pool, kv = e.pool, e.kv
        reserve = e.policy.kv_reserve
        need = pool.allocs_window(pool.E, m - 1)
        while m > 1 and need > kv.free - reserve:
            m -= 1
            need = pool.allocs_window(pool.E, m - 1)
        if m > 1:
            kv.take(need)
            pool.E += m - 1
        self.spec_steps += 1
        self.spec_tokens += m
        B = shape.num_decodes
        draft = 0.0
        if frac > 0.0:
            plain = BatchShape(B, B, B, shape.decode_ctx_sum, 0.0, False, shape.max_ctx)
            draft = frac * k * stage0.iteration_time(plain)
        # the k drafted tokens of each decode attend to its context plus the drafts before them
        verify = BatchShape(shape.num_tokens + B * k, shape.num_seqs, B, shape.decode_ctx_sum,
                            shape.prefill_pairs + k * shape.decode_ctx_sum + B * k * (k + 1) / 2,
                            shape.has_prefill, shape.max_ctx + k)
        return verify, draft

    def _check(self, e: EngineState) -> None:
        """Internal invariants (tests): KV accounting, queues, ITL book."""
        pool, kv = e.pool, e.kv
        held = (sum(pool.blocks(m) - m.shared for m in pool.members.values())
                + sum(r.blocks - r.shared for r in e.prefilling.values()) + e.held)
        if e.cache is not None:
            e.cache.check()
            held += e.cache.locked
            assert all(r.shared == 0 and r.node is None for r in e.waiting)
        assert 0 <= kv.free <= kv.capacity, (kv.free, kv.capacity)
        assert held == kv.capacity - kv.free, (held, kv.capacity - kv.free)
        assert len(e.running) == len(pool) + len(e.prefilling)
        assert all(r.state == WAITING for r in e.waiting)
        assert all(r.state == PREFILL and r.computed < r.target for r in e.prefilling.values())
        assert all(pool.generated(m) <= m.cap for m in pool.members.values())
        book = e.book
        assert book.main_count + sum(c for _, c in book.fresh.values()) == len(pool), "ITL book out of sync"
        if e.cfg.family == "vllm-v0":
            assert all(r.blocks == kv.blocks_for(r.target) for r in e.prefilling.values())
        if pool.clip:
            brute = sum(min(max(m.cap - pool.generated(m), 0), pool.clip) for m in pool.members.values())
            assert pool.reserve_sum() == brute
        self.max_kv_seen[e.eid] = max(self.max_kv_seen[e.eid], kv.capacity - kv.free)

    # ------------------------------------------------------------------------------------ pipeline stages
    def _stage_ready(self, t: float, e: EngineState, s: int) -> None:
        sc = self.stages[e.replica][s]
        if sc.busy:
            sc.queue.append(e.eid)
        else:
            self._stage_begin(t, e, s, sc)

    @staticmethod
    def _account(sc: StageClock, stage: Any, shape: BatchShape, seconds: float) -> None:
        """Add one iteration's energy, FLOPs and bytes to the stage's totals."""
        work = getattr(stage, "work", None)
        if work is not None:
            energy, flops, nbytes = work(shape, seconds)
        else:  # a StageCost protocol implementation without the combined call
            energy, flops, nbytes = stage.energy(shape, seconds), stage.flops(shape), stage.bytes(shape)
        sc.energy_j += energy
        sc.flops += flops
        sc.bytes += nbytes

    def _stage_begin(self, t: float, e: EngineState, s: int, sc: StageClock) -> None:
        stage = self.replicas[e.replica].cost.stages[s]
        shape = e.it_shape
        assert shape is not None
        d = stage.iteration_time(shape)
        sc.busy = True
        sc.busy_s += d
        self._account(sc, stage, shape, d)
        self._push(t + d, STAGE_DONE, e.eid, s)

    def _on_stage_done(self, t: float, e: EngineState, s: int) -> None:
        spec = self.replicas[e.replica]
        if spec.pp == 1:
            self._finish(e, t)
            return
        sc = self.stages[e.replica][s]
        sc.busy = False
        if sc.queue:
            nxt = self.engines[sc.queue.popleft()]
            self._stage_begin(t, nxt, s, sc)
        if s + 1 < spec.pp:
            assert e.it_shape is not None
            self._push(t + spec.cost.send_time(e.it_shape.num_tokens), STAGE_READY, e.eid, s + 1)
        else:
            self._finish(e, t)

    # ------------------------------------------------------------------------------------ outputs
    def _finish(self, e: EngineState, t: float) -> None:
        """The iteration of ``e`` left the last stage at ``t``: sample tokens, then schedule the next one."""
        it = e.it
        assert it is not None
        pool, book = e.pool, e.book
        pool.E_done = pool.E
        gid = book.new_group()
        firsts: list[Request] = []
        rejoins: list[Request] = []
        fins: list[Request] = []
        async_ = e.async_
        cache = e.cache
        if cache is not None and cache.at_schedule:
            cache = None
        for req, c, before in it.chunks:
            req.computed = before + c
            if cache is not None:  # SGLang cache_unfinished_req: the computed tokens join the radix tree
                cache.advance(req, req.computed)
            if req.computed >= req.target:
                del e.prefilling[req.idx]
                req.gen += 1
                if req.had_first:
                    rejoins.append(req)
                else:
                    req.had_first = True
                    firsts.append(req)
                done = req.gen >= req.cap
                if done and not async_:
                    fins.append(req)
                    continue
                pool.add(req, req.target, req.gen)
                book.join(req, gid)
                if done:
                    fins.append(req)
        if it.run_pool:
            fins.extend(pool.pop_finished())
        pend = _Pending(t, gid, it.run_pool, firsts, rejoins, fins)
        if async_:
            e.pending = pend
        else:
            self._process(e, pend, t)
        e.in_flight = False
        self._start(e, t)

    def _process(self, e: EngineState, pend: _Pending, tau: float) -> None:
        """Stamp the outputs of an iteration at ``tau``: ITL samples, first tokens, completions."""
        e.book.stamp(pend.gid, tau, pend.pool_ran)
        log = self.log
        for req in pend.firsts:
            self.r_first_token[req.idx] = tau
            if log is not None:
                log.append((req.rid, "first_token", tau, None))
        for req in pend.rejoins:
            if req.stall_from >= 0.0:
                self.r_stall[req.idx] += tau - req.stall_from
                req.stall_from = -1.0
        for req in pend.fins:
            self._complete(e, req, tau)

    def _complete(self, e: EngineState, req: Request, tau: float) -> None:
        if req.state == DONE:  # pragma: no cover - defensive
            return
        blocks = self._detach(e, req)
        e.kv.give(blocks)
        if e.cache is not None:
            e.cache.unlock(req)
        req.state = DONE
        self.r_finish[req.idx] = tau
        self.r_generated[req.idx] = req.cap
        self.outstanding[e.replica] -= 1
        if self.log is not None:
            self.log.append((req.rid, "finish", tau, req.cap))
        self._tick()

    def _detach(self, e: EngineState, req: Request) -> int:
        """Take a request that produced its last token out of the engine's batch; returns the blocks it held
        privately. With prefix caching its prompt and answer join the cache first (``cache_finished_req``; vLLM
        caches the full blocks) and stay referenced by it until ``cache.unlock``."""
        if req.state == DECODE:
            blocks = e.pool.blocks(req)
            kv_tokens = e.pool.kv_tokens(req)
            e.pool.remove(req)
            e.book.leave(req)
            e.policy.on_removed(e)
        elif req.state == PREFILL:
            blocks = req.blocks
            kv_tokens = req.computed
            e.prefilling.pop(req.idx, None)
            e.policy.on_prefill_finished(e)
        else:  # preempted after its last token was sampled, before it was seen as finished
            blocks = kv_tokens = 0
            e.waiting.remove(req)
        e.running.pop(req.idx, None)
        if e.cache is not None and blocks:
            e.cache.advance(req, kv_tokens)
            blocks -= req.shared
        return blocks

    def _leave(self, e: EngineState) -> None:
        """Preempted decode members leave the ITL book once the outputs they took part in are stamped."""
        if e.to_leave:
            for req in e.to_leave:
                stamp = e.book.leave(req)
                if req.state != DONE:
                    req.stall_from = stamp
                elif req.stall_from == _IGNORED and stamp >= 0.0:  # ignored in the step that preempted it
                    self.r_stall[req.idx] += self.r_finish[req.idx] - stamp
            e.to_leave.clear()

    def _on_preempt(self, e: EngineState, req: Request) -> None:
        self.r_preempt[req.idx] += 1
        if self.log is not None:
            self.log.append((req.rid, "preempt", e.now, req.gen))

    def _on_ignore(self, e: EngineState, req: Request, reason: str) -> None:
        if req.gen == 0:
            self.outstanding[e.replica] -= 1
            self._reject(req.idx, e.now, reason)
            req.state = DONE
            return
        # a recomputed request whose prompt + output no longer fits: finished early with what it generated;
        # the wait since its last token is a stall, not an inter-token gap
        if req.stall_from >= 0.0:
            self.r_stall[req.idx] += e.now - req.stall_from
        elif req in e.to_leave:
            req.stall_from = _IGNORED
        req.state = DONE
        self.r_truncated[req.idx] = True
        self.r_finish[req.idx] = e.now
        self.r_generated[req.idx] = req.gen
        self.outstanding[e.replica] -= 1
        if self.log is not None:
            self.log.append((req.rid, "finish", e.now, req.gen))
        self._tick()

    # ========================================================================================= skip-ahead
    def _run_length(self, e: EngineState, t: float, shape: BatchShape, t0: float, stage0: Any) -> int:
        """How many identical pure-decode steps, starting with the one just scheduled, can run unchanged."""
        pool = e.pool
        fin = pool.next_finish()
        if fin is None:  # pragma: no cover - every member has a finish entry
            return 1
        n = fin - pool.E_done
        if n <= 1:
            return 1
        # KV: every later step must keep kv_reserve blocks free after its allocations
        B = len(pool)
        x = e.kv.free - e.policy.kv_reserve
        if e.cache is not None and e.policy.hit_sensitive(e):
            x -= e.cache.evictable  # no eviction inside the run
        if x < 0:
            return 1
        full, rem = divmod(x, B)
        m = full * pool.bs
        first = pool.E
        bs, hist = pool.bs, pool.hist
        acc = 0
        r = 0
        while r < bs:
            a = hist[(-(first + r)) % bs]
            if acc + a > rem:
                break
            acc += a
            r += 1
        n = min(n, m + r + 1)
        # cost regime breakpoints (e.g. CUDA-graph context limit)
        bps = getattr(stage0, "ctx_breakpoints", ())
        if bps:
            m0 = shape.max_ctx
            nxt = [bp for bp in bps if bp >= m0]
            if nxt:
                n = min(n, min(nxt) - m0 + 1)
        if n <= 1:
            return 1
        # arrivals: every later step must start before the next arrival that could be admitted
        if not e.policy.arrival_blocked(e):
            a_t = self._horizon(e)
            if a_t < _INF:
                c0, c1 = self._coeffs(stage0, B, shape.max_ctx)
                alpha = c0 + c1 * shape.decode_ctx_sum
                beta = c1 * B
                n = min(n, self._steps_before(a_t - t, t0, alpha, beta, n) + 1)
        return max(n, 1)

    @staticmethod
    def _coeffs(stage: Any, num_decodes: int, max_ctx: int) -> tuple[float, float]:
        if getattr(stage, "ctx_breakpoints", ()):
            return stage.decode_coeffs(num_decodes, max_ctx=max_ctx)
        return stage.decode_coeffs(num_decodes)

    @staticmethod
    def _steps_before(span: float, t0: float, alpha: float, beta: float, cap: int = 1 << 62) -> int:
        """Largest j >= 0 with D(j) < span, where D(0) = 0 and D(j) = t0 + sum_{i=1}^{j-1} (alpha + beta*i), or
        ``cap`` if that is smaller (callers need no more steps than a run has)."""
        if t0 >= span:
            return 0

        def d(j: int) -> float:
            return t0 + (j - 1) * alpha + beta * (j - 1) * j / 2

        # beta/2 j^2 + (alpha - beta/2) j + (t0 - alpha - span) < 0
        bq = alpha - beta / 2
        cq = t0 - alpha - span
        if beta > 0:
            disc = bq * bq - 2 * beta * cq
            j = int((-bq + math.sqrt(max(disc, 0.0))) / beta) if disc > 0 else 1
        else:
            j = int((span - t0 + alpha) / alpha) if alpha > 0 else 1 << 62
        j = max(1, min(j, cap))
        # the closed form is off by a step or two from rounding; far off only when span dwarfs the step times
        # (an arrival ages away), where floating point cannot tell steps apart: then bisect, within [1, cap]
        for _ in range(4):
            if j > 1 and d(j) >= span:
                j -= 1
            elif j < cap and d(j + 1) < span:
                j += 1
            else:
                return j
        lo, hi = 1, cap  # d(lo) < span (d(1) = t0); the answer is at most hi
        if d(hi) < span:
            return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if d(mid) < span:
                lo = mid
            else:
                hi = mid
        return lo

    def _apply_run(self, e: EngineState, t: float, shape: BatchShape, t0: float, n: int, stage0: Any,
                   sc: StageClock) -> float:
        """Execute steps 1..n-1 of a run of identical decode steps in closed form; returns the run's duration."""
        pool, kv = e.pool, e.kv
        m = n - 1
        B = shape.num_decodes
        s0 = shape.decode_ctx_sum
        m0 = shape.max_ctx
        c0, c1 = self._coeffs(stage0, B, m0)
        alpha = c0 + c1 * s0
        beta = c1 * B
        first = pool.E
        grow = pool.allocs_window(first, m)
        kv.take(grow)
        pool.E += m
        used = kv.capacity - kv.free
        e.kv_max = max(e.kv_max, used)
        e.kv_int += _kv_run_integral(pool.hist, pool.bs, first, m, alpha, beta)
        sum_t = m * alpha + beta * m * (m + 1) / 2
        total = t0 + sum_t
        b1 = BatchShape(B, B, B, s0 + B, 0.0, False, m0 + 1)
        bm = BatchShape(B, B, B, s0 + m * B, 0.0, False, m0 + m)
        t1 = alpha + beta
        tm = alpha + beta * m
        sc.busy_s += total
        sc.energy_j += stage0.energy(shape, t0) + m * (stage0.energy(b1, t1) + stage0.energy(bm, tm)) / 2
        sc.flops += stage0.flops(shape) + m * (stage0.flops(b1) + stage0.flops(bm)) / 2
        sc.bytes += stage0.bytes(shape) + m * (stage0.bytes(b1) + stage0.bytes(bm)) / 2
        h = (e.host(shape) if e.host is not None else 0.0) if e.stamp_next else 0.0
        tau0 = t + t0 + h
        k = n - 2
        tau_end = tau0 + k * alpha + beta * k * (k + 1) / 2
        e.book.run(tau0, alpha, beta, k, B, tau_end)
        return total

    # ========================================================================================= results
    def _result(self) -> SimResult:
        n = self.N
        rec = RequestRecords(
            request_ids=self.ids, replica=self.r_replica, arrival_s=self.arrival.copy(),
            first_scheduled_s=self.r_first_sched, first_token_s=self.r_first_token, finish_s=self.r_finish,
            prompt_tokens=self.prompt.copy(), requested_tokens=self.output.copy(), generated=self.r_generated,
            rejected=self.r_rejected, truncated=self.r_truncated, preemptions=self.r_preempt, stall_s=self.r_stall,
            reject_reason=tuple(self.r_reason.get(i, "") for i in range(n)), cached_tokens=self.r_cached,
        )
        for a in rec.to_dict().values():
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
        if self.client is not None:
            rec = self.client.view(rec)
        t_first = float(self.arrival[0]) if n else 0.0
        fin = self.r_finish[np.isfinite(self.r_finish)]
        t_last = float(fin.max()) if fin.size else t_first
        t_last = max(t_last, max((e.kv_t for e in self.engines), default=t_last))
        span = max(t_last - t_first, 0.0)
        vals = np.frombuffer(self.itl_vals, dtype=np.float64) if len(self.itl_vals) else np.zeros(0)
        wts = np.frombuffer(self.itl_wts, dtype=np.float64) if len(self.itl_wts) else np.zeros(0)
        segs = np.frombuffer(self.itl_segs, dtype=np.float64) if len(self.itl_segs) else np.zeros(0)
        out = latency_summary(rec, vals, wts, segs, span, self.slo)
        if self.caching:
            done = rec.completed
            prompt = int(rec.prompt_tokens[done].sum())
            out["prefix_cache_hit_rate"] = int(rec.cached_tokens[done].sum()) / prompt if prompt else 0.0
        out["measured_at"] = "engine" if self.client is None else "client"
        if any(e.spec is not None for e in self.engines):
            out["spec_tokens_per_step"] = self.spec_tokens / self.spec_steps if self.spec_steps else math.nan
        # load
        out["batch_size_mean"] = self.bs_time / self.bs_weight if self.bs_weight > 0 else 0.0
        out["batch_size_max"] = int(self.bs_max)
        q_int = self.q_int + self.n_wait * (t_last - self.cnt_t)
        r_int = self.r_int + self.n_run * (t_last - self.cnt_t)
        out["queue_len_mean"] = q_int / span if span > 0 else 0.0
        out["queue_len_max"] = int(self.q_max)
        out["running_mean"] = r_int / span if span > 0 else 0.0
        out["running_max"] = int(self.r_max)
        cap_total = sum(e.kv.capacity for e in self.engines)
        kv_int = sum(e.kv_int + e.kv_last * (t_last - e.kv_t) for e in self.engines)
        out["kv_util_mean"] = kv_int / (cap_total * span) if span > 0 else 0.0
        out["kv_util_max"] = max((e.kv_max / e.kv.capacity for e in self.engines), default=0.0)
        # hardware
        flops = bytes_ = busy = energy = 0.0
        peak_f = peak_b = 0.0
        have_peaks = True
        stage_count = 0
        gpus = 0
        per_replica = []
        for r, spec in enumerate(self.replicas):
            gpus += spec.gpus
            rep_busy = 0.0
            rep_energy = 0.0
            for s, stage in enumerate(spec.cost.stages):
                sc = self.stages[r][s]
                flops += sc.flops
                bytes_ += sc.bytes
                busy += sc.busy_s
                rep_busy += sc.busy_s
                idle = max(span - sc.busy_s, 0.0)
                e_j = sc.energy_j + stage.idle_power() * idle
                energy += e_j
                rep_energy += e_j
                stage_count += 1
                pf = getattr(stage, "peak_flops", None)
                pb = getattr(stage, "peak_bandwidth", None)
                if pf is None or pb is None:
                    have_peaks = False
                else:
                    peak_f += pf()
                    peak_b += pb()
            sel = rec.replica == r
            per_replica.append({
                "replica": r, "name": spec.name, "family": spec.config.family, "pp": spec.pp,
                "requests": int(sel.sum()), "completed": int((sel & rec.completed).sum()),
                "rejected": int((sel & rec.rejected).sum()), "output_tokens": int(rec.generated[sel].sum()),
                "preemptions": int(rec.preemptions[sel].sum()),
                "busy_fraction": rep_busy / (spec.pp * span) if span > 0 else 0.0, "energy_j": rep_energy,
                "stage_busy_fraction": tuple(self.stages[r][s].busy_s / span if span > 0 else 0.0
                                             for s in range(spec.pp)),
            })
        out["mfu"] = flops / (peak_f * span) if have_peaks and peak_f > 0 and span > 0 else math.nan
        out["mbu"] = bytes_ / (peak_b * span) if have_peaks and peak_b > 0 and span > 0 else math.nan
        out["busy_fraction"] = busy / (stage_count * span) if span > 0 else 0.0
        out["energy_j"] = energy
        out["energy_per_output_token_j"] = energy / out["output_tokens"] if out["output_tokens"] else math.nan
        out["gpus"] = gpus
        out["gpu_hours"] = gpus * span / 3600.0
        out["cost_usd"] = out["gpu_hours"] * self.price if self.price is not None else math.nan
        out["cost_per_mtok_usd"] = out["cost_usd"] / out["output_tokens"] * 1e6 if out["output_tokens"] else math.nan
        # series
        series: dict[str, np.ndarray] = {}
        if span > 0:
            q = np.frombuffer(self.ser_q, dtype=np.float64).reshape(-1, 3) if len(self.ser_q) else np.zeros((0, 3))
            tq = np.concatenate([[t_first], q[:, 0]])
            tt, qv = downsample(tq, np.concatenate([[0.0], q[:, 1]]), t_first, t_last)
            _, rv = downsample(tq, np.concatenate([[0.0], q[:, 2]]), t_first, t_last)
            series["t_s"] = tt
            series["queue_len"] = qv
            series["running"] = rv
            b = np.frombuffer(self.ser_bs, dtype=np.float64).reshape(-1, 3) if len(self.ser_bs) else np.zeros((0, 3))
            edges = np.linspace(t_first, t_last, tt.size + 1)
            w = np.zeros(tt.size)
            acc = np.zeros(tt.size)
            if b.size:
                starts, durs, sizes = b[:, 0], b[:, 1], b[:, 2]
                cum_lo = np.searchsorted(edges, starts, side="right") - 1
                idx = np.clip(cum_lo, 0, tt.size - 1)
                np.add.at(w, idx, durs)
                np.add.at(acc, idx, durs * sizes)
            with np.errstate(invalid="ignore", divide="ignore"):
                series["batch_size"] = np.where(w > 0, acc / np.where(w > 0, w, 1.0), 0.0)
        return SimResult(records=rec, summary_values=out, series=series, per_replica=tuple(per_replica),
                         log=tuple(self.log) if self.log is not None else None,
                         iterations=tuple(self.iter_log) if self.iter_log is not None else None)


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


def _check_segments(segments: Any, prompts: list[int], n: int) -> None:
    """Every request's segments are (content id, tokens) pairs adding up to its prompt."""
    if len(segments) != n:
        raise SpecError(f"workload segments has {len(segments)} entries for {n} requests; give one tuple of "
                        "(content_id, tokens) pairs per request")
    for k in range(n):
        total = 0
        for seg in segments[k]:
            if len(seg) != 2 or int(seg[1]) < 0:
                raise SpecError(f"workload segments[{k}]: {seg!r} is not a (content_id, tokens) pair")
            total += int(seg[1])
        if total != prompts[k]:
            raise SpecError(f"workload segments[{k}] cover {total} tokens but the prompt has {prompts[k]}; their "
                            "token counts must add up to prompt_tokens")


def _kv_run_integral(hist: list[int], bs: int, first: int, m: int, alpha: float, beta: float) -> float:
    """sum_{j=1}^{m} C(j) * (alpha + beta*j), C(j) = blocks allocated by steps 1..j of a run (step i allocates
    hist[(-(first + i - 1)) % bs])."""
    if m <= 0:
        return 0.0
    total = 0.0
    base = (m + 1) * alpha + beta * m * (m + 1) / 2
    for i0 in range(1, min(bs, m) + 1):
        a = hist[(-(first + i0 - 1)) % bs]
        if not a:
            continue
        k = (m - i0) // bs + 1
        s1 = k * i0 + bs * k * (k - 1) // 2
        s2 = k * i0 * i0 + i0 * bs * k * (k - 1) + bs * bs * (k - 1) * k * (2 * k - 1) // 6
        total += a * (k * base - alpha * s1 - beta * (s2 - s1) / 2)
    return total


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
                          "record_log": record_log, "price_per_gpu_hour": price_per_gpu_hour, "client": client}
    if any(s.role != "both" for s in replicas):
        if kv_transfer is None:
            raise SpecError("a disaggregated run (prefill and decode replicas) needs kv_transfer=..., the cost of "
                            "moving a request's KV cache, e.g. LinearKVTransfer(latency_s=0.001, s_per_token=2e-6)")
        from .disagg import DisaggSimulation

        return DisaggSimulation(replicas, workload, kv_transfer=kv_transfer, decode_router=decode_router, **kw).run()
    if kv_transfer is not None:
        raise SpecError("kv_transfer applies to disaggregated runs only; give the replicas role='prefill' or "
                        "role='decode'")
    return Simulation(replicas, workload, **kw).run()


__all__ = ["ARRIVAL", "KV_DONE", "KV_START", "STAGE_DONE", "STAGE_READY", "WAKE", "EngineState", "Simulation",
           "run_simulation"]
