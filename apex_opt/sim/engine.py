"""The event-driven, iteration-level serving simulator: the core loop and the engines.

One :class:`Simulation` owns one event heap ordered by ``(time, priority, seq)`` and its :class:`EngineState`
objects (one per engine: ``pp`` virtual engines per replica, as vLLM 0.6 runs one scheduler per pipeline
micro-batch slot, each with ``num_kv_blocks // pp`` blocks). It is composed of three parts:

* the **core** (this module): the heap, the dispatch of events, the engines' iterations (schedule with the
  policy, cost, pipeline stages, outputs, closed-form skip-ahead);
* a **front end** (:mod:`apex_opt.sim.frontend`), injected: routing and admission of arrivals, and for
  disaggregated runs the hand-off from prefill to decode instances (:class:`~apex_opt.sim.disagg.DisaggFrontEnd`);
* a **recorder** (:class:`~apex_opt.sim.recorder.Recorder`): records, logs, counters, series; it builds the
  result with :mod:`apex_opt.sim.metrics`.

Engines report what their policy does to a request (preemption, a request dropped, a prefix-cache hit) through
explicit callbacks (:class:`EngineEvents`, implemented by the simulation). There is no module-level mutable
state, so reruns are identical and simulations can run in parallel processes.

Event priorities at equal times (lower first; :mod:`apex_opt.sim.events`):

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
arrivals are located by solving the quadratic for the cumulated time (:mod:`apex_opt.sim.decode_runs`,
:mod:`apex_opt.sim.skipahead`). Results equal step-by-step simulation up to float rounding (tested). A
speculating replica (``SchedulerConfig.speculative``, :mod:`apex_opt.sim.speculation`) draws the tokens of every
verify step and is never skipped ahead.

Skip-ahead on pipelined replicas (pp > 1, :mod:`apex_opt.sim.pipe_skip`): the virtual engines share the stages,
so a run of decode steps is taken by the replica as a whole. When every virtual engine is idle or in flight with
a decode step its policy will repeat, the replica's stage events are replayed without the policies (whole rounds
skipped in closed form when one stage is saturated or a single engine runs alone) up to the first event that is
not certain; the replay's pending events then replace the engines' events in the heap (those are dropped when
popped). Results equal step-by-step simulation up to float rounding (``tests/test_skipahead_pipeline.py``).
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import SimulationError, SpecError
from .config import ReplicaSpec
from .cost import BatchShape
from .decode_runs import apply_run, run_length
from .engine_state import EngineEvents, EngineState, _Pending
from .events import ARRIVAL, KV_DONE, KV_START, STAGE_DONE, STAGE_READY, WAKE
from .frontend import AggregatedFrontEnd, FrontEnd, admission
from .invariants import check_engine
from .metrics import SimResult, slo_fields
from .pipe_skip import replay_replica
from .policies import Iteration
from .prefix_cache import CachedKV, PrefixCache, request_path
from .recorder import Recorder, SLOWatch, account
from .skipahead import decode_coeffs, kv_run_integral, steps_before
from .speculation import SpeculativeDraws
from .state import DECODE, DONE, PREFILL, Request, StageClock
from .workload_arrays import WorkloadArrays

_INF = math.inf
_IGNORED = -2.0  # Request.stall_from marker: ignored before its last token stamp was known
_kv_run_integral = kv_run_integral  # the name the tests know


class Simulation:
    """One run: the core loop over replicas, a workload, a front end and a recorder. Use :func:`run_simulation`.

    ``frontend`` (default: an :class:`~apex_opt.sim.frontend.AggregatedFrontEnd` with ``router``) routes and
    admits the arrivals; :class:`~apex_opt.sim.disagg.DisaggFrontEnd` runs prefill and decode replicas.
    """

    def __init__(self, replicas: Sequence[ReplicaSpec], workload: Any, *, router: str = "round-robin",
                 slo: Any = None, seed: int = 0, skip_ahead: bool = True,
                 progress: Callable[[float], None] | None = None, record_log: bool = False,
                 price_per_gpu_hour: float | None = None, debug: bool = False, client: Any = None,
                 frontend: FrontEnd | None = None, cut_early: bool = False) -> None:
        self.frontend: FrontEnd = frontend if frontend is not None else AggregatedFrontEnd(router)
        self.frontend.check_replicas(replicas)
        if not replicas:
            raise SpecError("run_simulation needs at least one replica")
        self.replicas = list(replicas)
        self._load_workload(workload)
        self.caching = any(s.config.prefix_caching for s in replicas)
        self.slo = slo_fields(slo)
        self.skip = skip_ahead
        self.progress = progress
        self.record_log = record_log
        self.price = price_per_gpu_hour
        self.client = client  # a ClientPath: latencies as a benchmark client times them (None: engine-side)
        self.rng = np.random.default_rng(seed)
        # speculative acceptance draws: their own stream, so runs without speculation are unchanged
        self.speculation = SpeculativeDraws(seed)
        for r, spec in enumerate(self.replicas):
            if spec.config.speculative is not None and spec.pp > 1:
                raise SpecError(f"replica {r}: speculative decoding is modelled for pp = 1 only (got pp={spec.pp})")
        self.rec = Recorder(self.ids, record_log=record_log, progress=progress)
        #: with cut_early and an SLO: stop once more requests have missed it than its attainment target allows
        self.watch = SLOWatch(self.slo, self.N) if cut_early and self.slo is not None and self.N else None
        self._build_engines()
        # event heap
        self.heap: list[tuple] = []
        self.seq = 0
        self.next_k = 0
        self.debug = debug
        self.max_kv_seen = [0] * len(self.engines)
        self._hooks: FrontEnd | None = self.frontend if self.frontend.engine_hooks else None
        #: seqs of heap events a pipelined skip-ahead replaced (dropped when popped)
        self.cancelled: set[int] = set()
        self.replayed = 0  # stage events a pipelined skip-ahead replayed (tests)
        self.rounds = 0  # rounds it skipped in closed form (tests)
        #: per replica: whether a pipelined (pp > 1) replica may skip ahead over rounds of decode steps
        self.pipe_skip = [self.skip and s.pp > 1 and s.config.speculative is None and self._hooks is None
                          for s in self.replicas]
        self.frontend.bind(self)

    def _load_workload(self, workload: Any) -> None:
        """Check the workload and keep its arrays (:class:`~apex_opt.sim.workload_arrays.WorkloadArrays`)."""
        w = WorkloadArrays(workload)
        self.arrival, self.prompt, self.output, self.ids, self.N = w.arrival, w.prompt, w.output, w.ids, w.N
        self.arr, self.prm, self.out = w.arr, w.prm, w.out
        self.segments, self.output_ids = w.segments, w.output_ids

    def _build_engines(self) -> None:
        """``pp`` virtual engines and ``pp`` stage clocks per replica."""
        books = self.rec.books
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
                e.skippable = self.skip and pp == 1 and e.spec is None
                if self.segments is not None and spec.config.prefix_caching:
                    e.kv = CachedKV(blocks, spec.config.block_size)
                    e.cache = PrefixCache(e.kv, spec.config.behaviour.prefix_cache)
                self.engines.append(e)
                group.append(e)
            self.rep_engines.append(group)
            self.stages.append([StageClock() for _ in range(pp)])
        self._paths = any(e.cache is not None for e in self.engines)

    @property
    def disaggregated(self) -> bool:
        return self.frontend.disaggregated

    # the ITL sample arrays (read by tests)
    @property
    def itl_vals(self) -> array:
        return self.rec.itl_vals

    @property
    def itl_wts(self) -> array:
        return self.rec.itl_wts

    @property
    def itl_segs(self) -> array:
        return self.rec.itl_segs

    # ========================================================================================= the loop
    def _push(self, t: float, kind: int, a: int = 0, b: int = 0) -> tuple:
        self.seq += 1
        ev = (t, kind, self.seq, a, b)
        heapq.heappush(self.heap, ev)
        return ev

    def push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        """Schedule an event of ``kind`` at ``t`` with arguments ``a``, ``b`` (for front ends)."""
        self._push(t, kind, a, b)

    def wake(self, e: EngineState, t: float) -> None:
        """Engine ``e`` has new work at ``t``: if idle, it schedules after the arrivals at ``t``."""
        if not e.in_flight and not e.wake_pending:
            e.wake_pending = True
            self._push(t, WAKE, e.eid)

    def run(self) -> SimResult:
        if self.N:
            self._push(self.arr[0], ARRIVAL, 0)
            self.rec.cnt_t = self.arr[0]
        heap = self.heap
        pop = heapq.heappop
        engines = self.engines
        on_event = self.frontend.on_event
        watch, rec = self.watch, self.rec
        cancelled = self.cancelled
        while heap:
            t, kind, seq, a, b = pop(heap)
            if cancelled and seq in cancelled:  # replaced by a pipelined skip-ahead
                cancelled.discard(seq)
                continue
            if watch is not None and self.next_k + rec.done >= watch.next_at and \
                    watch.decided(t, rec, self.arrival, self.output, self.next_k):
                return self._result()
            if kind == STAGE_DONE:
                e = engines[a]
                if e.pp == 1:  # the iteration is done
                    self._finish(e, t)
                else:
                    self._on_stage_done(t, e, b)
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
                on_event(t, kind, a, b)
        for e in engines:
            if e.waiting or e.running or e.in_flight:  # pragma: no cover - internal consistency
                raise SimulationError(f"engine {e.eid} stopped with {len(e.waiting)} waiting and {len(e.running)} "
                                      "running requests")
        if self.progress is not None:
            self.progress(1.0)
        return self._result()

    # ========================================================================================= arrivals
    def _advance_arrivals(self, k: int) -> None:
        """Schedule the arrival after request ``k``."""
        if k + 1 < self.N:
            self._push(self.arr[k + 1], ARRIVAL, k + 1)
        self.next_k = k + 1

    def _on_arrival(self, t: float, k: int) -> None:
        """Request ``k`` arrives: the front end routes and admits it; it joins its engine's waiting queue."""
        self._advance_arrivals(k)
        fe, rec = self.frontend, self.rec
        e = fe.route(k)
        rec.r_replica[k] = e.replica
        rid = self.ids[k]
        if rec.log is not None:
            rec.log.append((rid, "arrive", t, e.replica))
        reason, cap, max_tokens = fe.admit(e, k)
        if reason:
            rec.reject(k, t, reason)
            return
        req = Request(k, rid, self.prm[k], max_tokens)
        if self._paths:
            assert self.segments is not None  # _paths: some engine caches prefixes, which needs segments
            out_id = self.output_ids[k] if self.output_ids is not None else ("answer", k)
            req.path, req.ends = request_path(self.segments[k], out_id, self.out[k])
        if cap < self.out[k]:
            rec.r_truncated[k] = True
        e.waiting.append(req)
        e.arrived = True
        fe.accepted(e)
        rec.counts(t, e)
        self.wake(e, t)

    def _horizon(self, e: EngineState) -> float:
        """Time of the next arrival that could reach engine ``e``."""
        return self.frontend.horizon(e)

    # ========================================================================================= iterations
    def _start(self, e: EngineState, t: float) -> None:
        """Schedule and launch the next iteration of engine ``e`` at time ``t`` (or let it go idle)."""
        hooks = self._hooks
        if hooks is not None:
            hooks.before_start(e, t)
        e.now = t
        it = e.policy.schedule(e)
        if it is None and (e.waiting or e.running):
            # e.g. vLLM 0.6 put a preempted request back after its admission walk: the engine steps again
            it = e.policy.schedule(e)
        pend = e.pending
        e.pending = None
        if it is None:
            self._idle(e, t, pend)
        else:
            self._launch(e, t, it, pend)
        if hooks is not None:
            hooks.after_start(e, t)

    def _idle(self, e: EngineState, t: float, pend: _Pending | None) -> None:
        """Nothing to schedule: stamp the last outputs and go idle until a wake-up."""
        if pend is not None:
            self._process(e, pend, pend.t_end)
        self._leave(e)
        e.in_flight = False
        e.it = None
        e.policy.on_idle(e)
        self.rec.counts(t, e)
        self.rec.kv(t, e)
        if (e.running or e.waiting) and not e.held and not (e.cache is not None and e.cache.locked):
            what = e.waiting[0].rid if e.waiting else next(iter(e.running.values())).rid
            raise SimulationError(
                f"engine {e.eid} ({e.cfg.family}) has work it cannot schedule (request {what}); its KV cache or "
                "token budget is too small for the request")
        if self.debug:
            self._check(e)

    def _launch(self, e: EngineState, t: float, it: Iteration, pend: _Pending | None) -> None:
        """Launch iteration ``it`` of ``e`` at ``t``: cost it, stamp the previous outputs, book it, and start its
        first stage (a skip-ahead run of ``n`` identical decode steps when possible)."""
        e.in_flight = True
        e.arrived = False
        pp = e.pp
        stage0 = self.replicas[e.replica].cost.stages[0]
        shape, t0 = self._cost(e, it, stage0)
        if pend is not None:
            if e.stamp_next:  # stamped when the next iteration's host work is done
                tau = t + (e.host(shape) if e.host is not None else 0.0)
            else:
                tau = pend.t_end
            self._process(e, pend, tau)
        self._leave(e)
        rec = self.rec
        rec.launched(e, t, it)
        n = 1
        steady = (it.run_pool and not it.chunks and not it.preempted and (pend is None or not pend.fins)
                  and shape.num_decodes and e.policy.decode_stable(e))
        if steady and e.skippable:
            n = run_length(e, t, shape, t0, stage0, self.frontend, self._hooks)
        e.it = it
        e.it_shape = shape
        e.it_steps = n
        if pp == 1:
            sc = self.stages[e.replica][0]
            if n > 1:
                total = apply_run(e, t, shape, t0, n, stage0, sc)
            else:
                total = t0
                sc.busy_s += t0
                account(sc, stage0, shape, t0)
            rec.iteration(e, t, total, n, shape)
            self._push(t + total, STAGE_DONE, e.eid, 0)
        else:
            rec.iteration(e, t, t0, 1, shape)
            self._stage_ready(t, e, 0)
            if steady and self.pipe_skip[e.replica]:
                self._pipe_run(e, t)
        if self.debug:
            self._check(e)

    def _cost(self, e: EngineState, it: Iteration, stage0: Any) -> tuple[BatchShape, float]:
        """The batch of ``it`` and the time of its first stage (draft passes of a speculative step included)."""
        cache = e.cache
        if cache is not None and cache.at_schedule:  # vLLM 0.6 mark_blocks_as_computed (V1 did it while scheduling)
            for req, c, before in it.chunks:
                cache.advance(req, before + c)
        # the batch: the decode pool (if it runs) and the prefill chunks
        pool = e.pool
        tokens = decodes = ctx = maxc = 0
        pairs = 0.0
        if it.run_pool:
            decodes = len(pool)
            ctx = pool.sum_base + decodes * pool.E
            maxc = pool.max_base() + pool.E
        for _, c, p in it.chunks:
            tokens += c
            pairs += c * (p + (c + 1) / 2)
            maxc = max(maxc, p + c)
        shape = BatchShape(tokens + decodes, decodes + len(it.chunks), decodes, ctx, pairs, bool(it.chunks), maxc)
        draft = 0.0
        if e.spec is not None and it.run_pool and shape.num_decodes:
            shape, draft = self.speculation.step(e, shape, stage0, self.rec)
        return shape, stage0.iteration_time(shape) + draft

    def _check(self, e: EngineState) -> None:
        """Internal invariants (tests): :func:`~apex_opt.sim.invariants.check_engine`, and the peak KV use seen."""
        self.max_kv_seen[e.eid] = max(self.max_kv_seen[e.eid], check_engine(e))

    # ------------------------------------------------------------------------------------ pipeline stages
    def _stage_ready(self, t: float, e: EngineState, s: int) -> None:
        sc = self.stages[e.replica][s]
        if sc.busy:
            sc.queue.append(e.eid)
            e.ev = None
        else:
            self._stage_begin(t, e, s, sc)

    def _stage_begin(self, t: float, e: EngineState, s: int, sc: StageClock) -> None:
        stage = self.replicas[e.replica].cost.stages[s]
        shape = e.it_shape
        assert shape is not None
        d = stage.iteration_time(shape)
        sc.busy = True
        sc.busy_s += d
        account(sc, stage, shape, d)
        e.ev = self._push(t + d, STAGE_DONE, e.eid, s)

    def _on_stage_done(self, t: float, e: EngineState, s: int) -> None:
        """Stage ``s`` of a pipelined (pp > 1) replica finished ``e``'s micro-batch at ``t``."""
        spec = self.replicas[e.replica]
        sc = self.stages[e.replica][s]
        sc.busy = False
        if sc.queue:
            nxt = self.engines[sc.queue.popleft()]
            self._stage_begin(t, nxt, s, sc)
        if s + 1 < spec.pp:
            assert e.it_shape is not None
            e.ev = self._push(t + spec.cost.send_time(e.it_shape.num_tokens), STAGE_READY, e.eid, s + 1)
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
        rec = self.rec
        log = rec.log
        for req in pend.firsts:
            rec.r_first_token[req.idx] = tau
            if log is not None:
                log.append((req.rid, "first_token", tau, None))
        for req in pend.rejoins:
            if req.stall_from >= 0.0:
                rec.r_stall[req.idx] += tau - req.stall_from
                req.stall_from = -1.0
        for req in pend.fins:
            self._complete(e, req, tau)

    def _complete(self, e: EngineState, req: Request, tau: float) -> None:
        """``req`` produced its last token on ``e``, stamped at ``tau``: it finishes (or is handed off)."""
        if req.state == DONE:  # pragma: no cover - defensive
            return
        hooks = self._hooks
        if hooks is not None and hooks.hand_off(e, req, tau):
            return
        blocks = self.detach(e, req)
        e.kv.give(blocks)
        if e.cache is not None:
            e.cache.unlock(req)
        req.state = DONE
        rec = self.rec
        rec.r_finish[req.idx] = tau
        rec.r_generated[req.idx] = req.cap
        self.frontend.released(e)
        if rec.log is not None:
            rec.log.append((req.rid, "finish", tau, req.cap))
        rec.tick()

    def detach(self, e: EngineState, req: Request) -> int:
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
                    self.rec.r_stall[req.idx] += self.rec.r_finish[req.idx] - stamp
            e.to_leave.clear()
        hooks = self._hooks
        if hooks is not None:
            hooks.after_leave(e)

    # ------------------------------------------------------------------------------------ EngineEvents
    def on_cached(self, req: Request, hit: int) -> None:
        self.rec.r_cached[req.idx] = hit

    def on_preempt(self, e: EngineState, req: Request) -> None:
        rec = self.rec
        rec.r_preempt[req.idx] += 1
        if rec.log is not None:
            rec.log.append((req.rid, "preempt", e.now, req.gen))

    def on_ignore(self, e: EngineState, req: Request, reason: str) -> None:
        rec = self.rec
        if req.gen == 0:
            self.frontend.released(e)
            rec.reject(req.idx, e.now, reason)
            req.state = DONE
            return
        # a recomputed request whose prompt + output no longer fits: finished early with what it generated;
        # the wait since its last token is a stall, not an inter-token gap
        if req.stall_from >= 0.0:
            rec.r_stall[req.idx] += e.now - req.stall_from
        elif req in e.to_leave:
            req.stall_from = _IGNORED
        req.state = DONE
        rec.r_truncated[req.idx] = True
        rec.r_finish[req.idx] = e.now
        rec.r_generated[req.idx] = req.gen
        self.frontend.released(e)
        if rec.log is not None:
            rec.log.append((req.rid, "finish", e.now, req.gen))
        rec.tick()

    # ========================================================================================= skip-ahead
    _coeffs = staticmethod(decode_coeffs)
    _steps_before = staticmethod(steps_before)

    def _pipe_run(self, e0: EngineState, t: float) -> None:
        """Pipelined skip-ahead (:func:`~apex_opt.sim.pipe_skip.replay_replica`): ``e0``'s replica replays its
        stage events while its engines repeat their decode steps; the replayed events' effects are booked and the
        replay's pending events replace the engines' events in the heap (those are dropped when popped)."""
        replay = replay_replica(self, e0, t)
        if replay is None:
            return
        self.replayed += replay.done
        self.rounds += replay.rounds
        self.cancelled.update(ev[2] for ev in replay.old)
        for tau, kind, _, eid, s in sorted(replay.heap, key=lambda ev: ev[2]):
            self.engines[eid].ev = self._push(tau, kind, eid, s)
        if self.debug:
            for u in replay.act:
                self._check(u)

    # ========================================================================================= results
    def _result(self) -> SimResult:
        res = self.rec.result(self, self.replicas, self.engines, self.stages, slo=self.slo, client=self.client,
                              price_per_gpu_hour=self.price, caching=self.caching)
        res = self.frontend.finalize(res)
        if self.watch is not None and self.watch.cut_at is not None:
            res.summary_values.update(self.watch.fields())
            for key in SLOWatch.UNKNOWN_WHEN_CUT:
                res.summary_values.pop(key, None)
        return res


__all__ = ["ARRIVAL", "KV_DONE", "KV_START", "STAGE_DONE", "STAGE_READY", "WAKE", "EngineEvents", "EngineState",
           "Simulation", "admission"]
