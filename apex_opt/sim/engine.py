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
arrivals are located by solving the quadratic for the cumulated time (:mod:`apex_opt.sim.skipahead`). Results
equal step-by-step simulation up to float rounding (tested). A speculating replica
(``SchedulerConfig.speculative``) draws the tokens of every verify step and is never skipped ahead.

Skip-ahead on pipelined replicas (pp > 1, :meth:`Simulation._pipe_run`): the virtual engines share the stages,
so the run is taken by the replica as a whole. When an engine launches a pure decode step of its pool that the
policy will repeat and every other virtual engine is idle (nothing queued) or in flight with such a step (and no
request reached it since it was scheduled), each engine gets the length of its run as for pp = 1 (completion,
KV, cost breakpoints, on every stage). The replica's stage events are then *replayed* without the policies, in
the main loop's order (time, kind, sequence), each step of engine ``v`` taking ``A[v][s] + Bc[v][s] * j`` on
stage ``s``; a step leaving the last stage stamps its outputs and schedules the engine's next step at once. The
replay stops at the first event that is not certain: the end of an engine's run, or an event at or after the
next arrival that could reach the replica (with ``cut_early``, also the next event of the rest of the run if the
SLO check could come due meanwhile). Its pending events then replace the engines' events in the heap (those are
dropped when popped). Inside the replay, whole rounds are skipped in closed form
(:class:`~apex_opt.sim.skipahead.PipelineRounds`) in two regimes: ``k >= 2`` engines with the stage carrying the
most work saturated (each engine back at it before the job ahead of it ends, in FIFO order, and no waiting on
any other stage), or a single engine running alone. The conditions of the regime are differences of step
times, affine in the round, so they hold over ``R`` rounds if they hold at the first and the last (with a
margin far above float rounding); the replay's state must match the regime's prediction before a skip, and the
state after ``R`` rounds (each engine's pending event or place in the queue) is computed from it. The outputs
of the rounds are stamped as arithmetic ITL segments (each gap one round's growth longer than the one before),
KV and stage work are summed in closed form. Other regimes (e.g. waiting on two stages) are replayed event by
event. Results equal step-by-step simulation up to float rounding (``tests/test_skipahead_pipeline.py``).
"""

from __future__ import annotations

import bisect
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
from .engine_state import EngineEvents, EngineState, _Pending
from .events import ARRIVAL, KV_DONE, KV_START, STAGE_DONE, STAGE_READY, WAKE
from .frontend import AggregatedFrontEnd, FrontEnd, admission
from .metrics import SimResult, slo_fields
from .policies import Iteration
from .prefix_cache import CachedKV, PrefixCache, request_path
from .recorder import Recorder, SLOWatch, account, account_run
from .skipahead import QUEUED, PipelineRounds, decode_coeffs, kv_run_integral, steps_before
from .state import DECODE, DONE, PREFILL, WAITING, Request, StageClock

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
        self.spec_rng = np.random.default_rng([seed, 0x5BEC])
        self.spec_u: list[float] = []
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
        """Check the workload and keep its arrays (numpy for the records, lists for the loop)."""
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
        self.arr: list[float] = self.arrival.tolist()
        self.prm: list[int] = self.prompt.tolist()
        self.out: list[int] = self.output.tolist()
        # prefix caching: per request, the content segments of its prompt and the id of its answer's content
        self.segments = getattr(workload, "segments", None)
        self.output_ids = getattr(workload, "output_ids", None)
        if self.segments is not None and getattr(self.segments, "totals", None) is None:  # Workload checked them
            _check_segments(self.segments, self.prm, n)
        if self.output_ids is not None and len(self.output_ids) != n:
            raise SpecError(f"workload output_ids has {len(self.output_ids)} entries for {n} requests")

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
            n = self._run_length(e, t, shape, t0, stage0)
        e.it = it
        e.it_shape = shape
        e.it_steps = n
        if pp == 1:
            sc = self.stages[e.replica][0]
            if n > 1:
                total = self._apply_run(e, t, shape, t0, n, stage0, sc)
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
            shape, draft = self._speculate(e, shape, stage0)
        return shape, stage0.iteration_time(shape) + draft

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
        self.rec.spec_steps += 1
        self.rec.spec_tokens += m
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
        if e.cfg.behaviour.whole_prompt_blocks_at_schedule:
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
    def _run_length(self, e: EngineState, t: float, shape: BatchShape, t0: float, stage0: Any) -> int:
        """How many identical pure-decode steps, starting with the one just scheduled, can run unchanged."""
        n = self._decode_limit(e, shape.max_ctx, getattr(stage0, "ctx_breakpoints", ()))
        if n <= 1:
            return 1
        # arrivals: every later step must start before the next arrival that could be admitted
        if not e.policy.arrival_blocked(e):
            a_t = self.frontend.horizon(e)
            if a_t < _INF:
                c0, c1 = decode_coeffs(stage0, len(e.pool), shape.max_ctx)
                alpha = c0 + c1 * shape.decode_ctx_sum
                beta = c1 * len(e.pool)
                n = min(n, steps_before(a_t - t, t0, alpha, beta, n) + 1)
        n = max(n, 1)
        hooks = self._hooks
        if hooks is not None and n > 1:  # e.g. a decode engine waiting for KV transfers
            n = hooks.limit_run(e, t, shape, t0, stage0, n)
        return n

    def _decode_limit(self, e: EngineState, m0: int, bps: Sequence[int]) -> int:
        """How many identical pure-decode steps of ``e``'s pool, starting with the one scheduled last (longest
        context ``m0``), can run before a member finishes, the KV cache runs short or a cost breakpoint in ``bps``
        is crossed (at least 1)."""
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
        if bps:
            nxt = [bp for bp in bps if bp >= m0]
            if nxt:
                n = min(n, min(nxt) - m0 + 1)
        return max(n, 1)

    _coeffs = staticmethod(decode_coeffs)
    _steps_before = staticmethod(steps_before)

    def _apply_run(self, e: EngineState, t: float, shape: BatchShape, t0: float, n: int, stage0: Any,
                   sc: StageClock) -> float:
        """Execute steps 1..n-1 of a run of identical decode steps in closed form; returns the run's duration."""
        pool, kv = e.pool, e.kv
        m = n - 1
        B = shape.num_decodes
        s0 = shape.decode_ctx_sum
        m0 = shape.max_ctx
        c0, c1 = decode_coeffs(stage0, B, m0)
        alpha = c0 + c1 * s0
        beta = c1 * B
        first = pool.E
        grow = pool.allocs_window(first, m)
        kv.take(grow)
        pool.E += m
        used = kv.capacity - kv.free
        e.kv_max = max(e.kv_max, used)
        e.kv_int += kv_run_integral(pool.hist, pool.bs, first, m, alpha, beta)
        sum_t = m * alpha + beta * m * (m + 1) / 2
        total = t0 + sum_t
        b1 = BatchShape(B, B, B, s0 + B, 0.0, False, m0 + 1)
        bm = BatchShape(B, B, B, s0 + m * B, 0.0, False, m0 + m)
        account_run(sc, stage0, shape, t0, m, b1, alpha + beta, bm, alpha + beta * m, total)
        h = (e.host(shape) if e.host is not None else 0.0) if e.stamp_next else 0.0
        tau0 = t + t0 + h
        k = n - 2
        tau_end = tau0 + k * alpha + beta * k * (k + 1) / 2
        e.book.run(tau0, alpha, beta, k, B, tau_end)
        return total

    # ------------------------------------------------------------------------------------ pipelined (pp > 1)
    def _pipe_run(self, e0: EngineState, t: float) -> None:
        """Engine ``e0`` of a pipelined replica just launched a pure decode step of its whole pool at ``t``. If
        every other virtual engine of the replica is idle or in flight with such a step, run the replica's
        pipeline forward, each engine repeating its decode step: the stage events are replayed in their own
        order (time, kind, sequence) as the main loop would, with closed-form step costs and without the
        policies, until an arrival could reach the replica, a member could finish, the KV cache could run short
        or a cost breakpoint could be crossed (the next event of an engine whose run is over). The replayed
        events' effects are booked and the pending ones replace the heap's."""
        r = e0.replica
        group = self.rep_engines[r]
        spec = self.replicas[r]
        pp = spec.pp
        stages = spec.cost.stages
        bps = sorted({bp for st in stages for bp in getattr(st, "ctx_breakpoints", ())})
        act: list[EngineState] = []
        for u in group:
            if not u.in_flight:
                if u.waiting or u.running or u.wake_pending:
                    return
                continue
            it, shape = u.it, u.it_shape
            if (it is None or shape is None or u.arrived or it.chunks or not it.run_pool or it.preempted
                    or not shape.num_decodes or shape.num_tokens != shape.num_decodes or u.pending is not None
                    or u.to_leave or not u.policy.decode_stable(u)):
                return
            act.append(u)
        limits = [self._decode_limit(u, u.it_shape.max_ctx, bps) - 1 for u in act]  # type: ignore[union-attr]
        if max(limits) < 1:
            return
        horizon = self.frontend.horizon(e0)
        if len(act) == pp and all(u.policy.arrival_blocked(u) for u in act):
            horizon = _INF  # every engine runs and none could admit an arrival before its batch changes
        old = [u.ev for u in act if u.ev is not None]
        watch = self.watch
        if watch is not None:
            # cut_early: the SLO verdict is checked at the first event after enough arrivals and completions; if
            # that could happen before the horizon, replay no event past the next one of the rest of the run
            deficit = watch.next_at - (self.next_k + self.rec.done)
            k0 = self.next_k
            k1 = bisect.bisect_left(self.arr, horizon, lo=k0) if horizon < _INF else self.N
            if deficit <= 2 * (k1 - k0) + sum(len(u.running) + len(u.waiting) for u in self.engines
                                              if u.replica != r):
                if deficit <= 0:
                    return
                mine = {ev[2] for ev in old} | self.cancelled
                for ev in heapq.nsmallest(len(mine) + 1, self.heap):
                    if ev[2] not in mine:
                        horizon = min(horizon, ev[0])
                        break
        if horizon <= t:
            return
        base = group[0].eid
        nv = len(group)
        L = [0] * nv
        j = [0] * nv
        Bs = [0] * nv
        sig = [0.0] * nv
        A: list[list[float]] = [[] for _ in range(nv)]
        Bc: list[list[float]] = [[] for _ in range(nv)]
        for u, lim in zip(act, limits, strict=True):
            i = u.eid - base
            shape = u.it_shape
            assert shape is not None
            B = shape.num_decodes
            L[i] = lim
            Bs[i] = B
            sig[i] = spec.cost.send_time(B)
            for st in stages:
                c0, c1 = decode_coeffs(st, B, shape.max_ctx)
                A[i].append(c0 + c1 * shape.decode_ctx_sum)
                Bc[i].append(c1 * B)
        clocks = self.stages[r]
        busy = [sc.busy for sc in clocks]
        queues = [deque(sc.queue) for sc in clocks]
        heap: list[tuple] = list(old)
        heapq.heapify(heap)
        # per engine and stage: (first step begun here, steps begun, their seconds)
        acct_j = [[-1] * pp for _ in range(nv)]
        acct_n = [[0] * pp for _ in range(nv)]
        acct_t = [[0.0] * pp for _ in range(nv)]
        seq = self.seq
        last = pp - 1
        pop, push = heapq.heappop, heapq.heappush
        rec = self.rec
        ser_bs, iter_log = rec.ser_bs, rec.iter_log
        bs_time = bs_weight = 0.0
        stamped = [False] * nv
        done = 0
        # closed-form rounds: at the stage z that carries the most work (k >= 2 engines), or alone (k == 1)
        k = len(act)
        z = 0 if k == 1 else max(range(pp), key=lambda s: sum(A[u.eid - base][s] for u in act))
        zhist: deque[tuple[float, int, int]] = deque(maxlen=k)  # (time, engine, step) of the last k starts at z
        countdown = k
        fails = 0
        # seconds per round at the start (the rounds only get longer): no closed form for a handful of rounds
        per_round = max((sum(A[u.eid - base][z] for u in act) if k > 1
                         else sum(A[act[0].eid - base]) + (pp - 1) * sig[act[0].eid - base]), 1e-300)

        def begin(i: int, s: int, tau: float) -> None:
            nonlocal seq, countdown
            d = A[i][s] + Bc[i][s] * j[i]
            busy[s] = True
            seq += 1
            push(heap, (tau + d, STAGE_DONE, seq, base + i, s))
            if s == z:
                zhist.append((tau, i, j[i]))
                countdown -= 1
            if acct_j[i][s] < 0:
                acct_j[i][s] = j[i]
            acct_n[i][s] += 1
            acct_t[i][s] += d

        def jump(tc: float) -> float:
            """Skip whole rounds in closed form from ``tc`` (just after ``v_0`` started at ``z``); returns the time
            they end at (0: no rounds skipped)."""
            nonlocal seq, bs_time, bs_weight
            tz, i0, _ = zhist[-1]
            order = [i0] + [zhist[m][1] for m in range(k - 1)]
            if len(set(order)) != k or any(queues[s] for s in range(pp) if s != z):
                return 0.0
            s0 = [j[i0]] + [zhist[m][2] + 1 for m in range(k - 1)]
            pr = PipelineRounds(pp, z, A, Bc, sig, order, s0)
            margin = 1e-9 * (1.0 + abs(tz))
            tol = 1e-11 * (1.0 + abs(tz))
            t0 = tc - tz
            for m in range(k - 1):  # the round in progress ran saturated at z
                if abs((zhist[m][0] - tz) - pr.Z(m + 1 - k)) > tol:
                    return 0.0
            # every engine is where the regime puts it
            pend = {ev[3] - base: ev for ev in heap}
            now: list[tuple[int, int, int, float]] = []
            for i, v in enumerate(order):
                p = pr.position(i, 0 if i == 0 else -1, t0, margin)
                if p is None or p[2] != j[v]:
                    return 0.0
                ev = pend.get(v)
                if p[0] == QUEUED:
                    if ev is not None:
                        return 0.0
                elif ev is None or ev[1] != p[0] or ev[4] != p[1] or abs((ev[0] - tz) - p[3]) > tol:
                    return 0.0
                now.append(p)
            if [base + order[i] for i in sorted((i for i in range(k) if now[i][0] == QUEUED),
                                                key=lambda i: now[i][3])] != list(queues[z]):
                return 0.0
            if pr.slack(-1, t0 + margin / 2) <= margin:
                return 0.0
            cond0, cond1 = pr.conditions(0), pr.conditions(1)
            if min(cond0, default=_INF) <= margin:
                return 0.0

            def ends(R: int, mg: float) -> list[tuple[int, int, int, float]] | None:
                t_end = pr.Z(R * k) + t0
                out = []
                for i in range(k):
                    p = pr.position(i, R if i == 0 else R - 1, t_end, mg)
                    if p is None:
                        return None
                    out.append(p)
                return out

            def ok(R: int) -> bool:
                if tz + pr.Z(R * k) + t0 + margin >= horizon or pr.slack(R - 1) <= margin:
                    return False
                pos = ends(R, margin)
                return pos is not None and all(pos[i][2] - j[v] <= L[v] for i, v in enumerate(order))

            # the most rounds that keep every condition: each is affine in the round, the horizon quadratic
            R = min([L[i0]] + [L[v] + 1 for v in order[1:]])  # v_0 schedules a step per round
            for a, b in zip(cond0, cond1, strict=True):
                if b < a:
                    R = min(R, int((a - margin) / (a - b)) + 1)
            if horizon < _INF:
                R = min(R, pr.rounds_before(horizon - tz - t0 - margin))
            if R >= 2 and not ok(R):
                lo, hi = 1, R - 1
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if ok(mid):
                        lo = mid
                    else:
                        hi = mid - 1
                R = lo
            end = ends(R, margin) if R >= 2 else None
            if end is None:
                return 0.0
            # book the rounds: stage work, outputs, KV, batch-size records
            for i, v in enumerate(order):
                u = group[v]
                b0, b1 = (p[2] * pp + p[1] - (p[0] != STAGE_DONE) for p in (now[i], end[i]))
                for s in range(pp):  # the stage visits (step * pp + stage) begun in the rounds
                    x = b0 + 1 + (s - b0 - 1) % pp
                    if x > b1:
                        continue
                    cnt = (b1 - x) // pp + 1
                    ja = x // pp
                    if acct_j[v][s] < 0:
                        acct_j[v][s] = ja
                    acct_n[v][s] += cnt
                    acct_t[v][s] += cnt * A[v][s] + Bc[v][s] * (2 * ja + cnt - 1) * cnt / 2
                c = end[i][2] - j[v]
                if c <= 0:
                    continue
                jn = j[v]
                first = pr.ring(i, jn - s0[i])[2]  # step jn + 1 is scheduled when step jn leaves the last stage
                t_last = pr.ring(i, jn + c - 1 - s0[i])[2]
                beta = pr.Pb  # every gap of the run is one round longer than the one before
                alpha = pr.ring(i, jn + 1 - s0[i])[2] - first - beta if c >= 2 else 0.0
                B = Bs[v]
                u.book.run(tz + first, alpha, beta, c - 1, B, tz + t_last)
                stamped[v] = True
                pool, kv = u.pool, u.kv
                e_first = pool.E
                u.kv_int += (u.kv_last * (tz + t_last - u.kv_t)
                             + kv_run_integral(pool.hist, pool.bs, e_first, c - 1, alpha, beta))
                kv.take(pool.allocs_window(e_first, c))
                pool.E += c
                pool.E_done = pool.E - 1
                u.kv_t = u.now = tz + t_last
                u.kv_last = kv.capacity - kv.free
                u.kv_max = max(u.kv_max, u.kv_last)
                d0 = c * A[v][0] + Bc[v][0] * (2 * jn + c + 1) * c / 2
                bs_time += B * d0
                bs_weight += d0
                ser_bs.extend((tz + first, d0, B))
                if iter_log is not None:
                    iter_log.append((r, u.vid, tz + first, d0, c, 0, B))
                L[v] -= c
                j[v] += c
            # the pipeline as the rounds leave it
            heap.clear()
            for s in range(pp):
                busy[s] = False
                queues[s].clear()
            for i, v in enumerate(order):
                kind, s, _, at = end[i]
                if kind != QUEUED:
                    seq += 1
                    heap.append((tz + at, kind, seq, base + v, s))
                    busy[s] = busy[s] or kind == STAGE_DONE
            heapq.heapify(heap)
            queues[z].extend(base + order[i] for i in sorted((i for i in range(k) if end[i][0] == QUEUED),
                                                             key=lambda i: end[i][3]))
            zhist.clear()
            for i in range(1, k):
                zhist.append((tz + pr.Z(R * k - k + i), order[i], s0[i] + R - 1))
            zhist.append((tz + pr.Z(R * k), i0, s0[0] + R))
            self.rounds += R
            return tz + pr.Z(R * k) + t0

        tc = t
        while heap:
            tau, kind, _, eid, s = heap[0]
            if (countdown <= 0 and len(zhist) == k and tau > tc + 2e-9 * (1.0 + abs(tc))
                    and min(min(L[u.eid - base] for u in act), (horizon - tc) / per_round) >= 4):
                t_end = jump(tc)
                if t_end:
                    fails = 0
                    countdown = k
                    tc = t_end
                    done += 1
                    continue
                fails += 1
                countdown = k << min(fails, 6)
            i = eid - base
            if tau >= horizon or (kind == STAGE_DONE and s == last and L[i] == 0):
                break
            pop(heap)
            done += 1
            tc = tau
            if kind == STAGE_READY:
                if busy[s]:
                    queues[s].append(eid)
                else:
                    begin(i, s, tau)
                continue
            busy[s] = False
            q = queues[s]
            if q:
                begin(q.popleft() - base, s, tau)
            if s < last:
                seq += 1
                push(heap, (tau + sig[i], STAGE_READY, seq, eid, s + 1))
                continue
            # the step's outputs: stamp them, then the next identical step is scheduled and launched at once
            u = group[i]
            pool, book = u.pool, u.book
            pool.E_done = pool.E
            if stamped[i]:
                if book.main_count:
                    book.vals.append(tau - book.main_stamp)
                    book.wts.append(book.main_count)
                book.main_stamp = tau
            else:
                book.stamp(book.new_group(), tau, True)
                stamped[i] = True
            L[i] -= 1
            j[i] += 1
            u.kv.take(pool.allocs_next())
            pool.E += 1
            u.now = tau
            Recorder.kv(tau, u)
            B = Bs[i]
            d0 = A[i][0] + Bc[i][0] * j[i]
            bs_time += B * d0
            bs_weight += d0
            ser_bs.extend((tau, d0, B))
            if iter_log is not None:
                iter_log.append((r, u.vid, tau, d0, 1, 0, B))
            if busy[0]:
                queues[0].append(eid)
            else:
                begin(i, 0, tau)
        if not done:
            return
        self.replayed += done
        # commit: the replayed events' stage work, the stage clocks, and the pending events in the heap
        rec.bs_time += bs_time
        rec.bs_weight += bs_weight
        for u in act:
            i = u.eid - base
            shape = u.it_shape
            assert shape is not None
            B, S, mc = Bs[i], shape.decode_ctx_sum, shape.max_ctx
            if j[i]:
                u.it_shape = BatchShape(B, B, B, S + j[i] * B, 0.0, False, mc + j[i])
            for s in range(pp):
                j0, cnt, total = acct_j[i][s], acct_n[i][s], acct_t[i][s]
                if not cnt:
                    continue
                sc, st = clocks[s], stages[s]
                sc.busy_s += total
                b0 = BatchShape(B, B, B, S + j0 * B, 0.0, False, mc + j0)
                d = A[i][s] + Bc[i][s] * j0
                if cnt == 1:
                    account(sc, st, b0, d)
                else:  # energy and work are affine over the steps (StageCost contract): the trapezoid is exact
                    m = cnt - 1
                    bm = BatchShape(B, B, B, S + (j0 + m) * B, 0.0, False, mc + j0 + m)
                    e_j, fl, by = sc.energy_j, sc.flops, sc.bytes
                    account(sc, st, b0, d)
                    account(sc, st, bm, d + Bc[i][s] * m)
                    sc.energy_j = e_j + (sc.energy_j - e_j) * cnt / 2
                    sc.flops = fl + (sc.flops - fl) * cnt / 2
                    sc.bytes = by + (sc.bytes - by) * cnt / 2
            u.ev = None
        for s, sc in enumerate(clocks):
            sc.busy = busy[s]
            sc.queue.clear()
            sc.queue.extend(queues[s])
        self.cancelled.update(ev[2] for ev in old)
        for tau, kind, _, eid, s in sorted(heap, key=lambda ev: ev[2]):
            self.engines[eid].ev = self._push(tau, kind, eid, s)
        if self.debug:
            for u in act:
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


__all__ = ["ARRIVAL", "KV_DONE", "KV_START", "STAGE_DONE", "STAGE_READY", "WAKE", "EngineEvents", "EngineState",
           "Simulation", "admission"]
