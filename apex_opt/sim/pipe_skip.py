"""Skip-ahead on pipelined replicas (pp > 1): a replica's run of decode-only rounds taken in one go.

The virtual engines of a pipelined replica share its stages, so a run of identical decode steps is taken by the
replica as a whole (:func:`replay_replica`, called by :class:`~apex_opt.sim.engine.Simulation` when an engine
launches a pure decode step of its pool). When that step is one the policy will repeat and every other virtual
engine is idle (nothing queued) or in flight with such a step (and no request reached it since it was
scheduled), each engine gets the length of its run as for pp = 1 (completion, KV, cost breakpoints, on every
stage: :func:`~apex_opt.sim.decode_runs.decode_limit`).

The replica's stage events are then *replayed* without the policies (:class:`PipeReplay`), in the main loop's
order (time, kind, sequence), each step of engine ``v`` taking ``A[v][s] + Bc[v][s] * j`` on stage ``s``; a step
leaving the last stage stamps its outputs and schedules the engine's next step at once. The replay stops at the
first event that is not certain: the end of an engine's run, or an event at or after the next arrival that could
reach the replica (with ``cut_early``, also the next event of the rest of the run if the SLO check could come due
meanwhile: :func:`replay_horizon`). Its pending events then replace the engines' events in the heap (the
simulation drops those when popped).

Inside the replay, whole rounds are skipped in closed form (:class:`RoundSkip` over
:class:`~apex_opt.sim.skipahead.PipelineRounds`) in two regimes: ``k >= 2`` engines with the stage carrying the
most work saturated (each engine back at it before the job ahead of it ends, in FIFO order, and no waiting on any
other stage), or a single engine running alone. The conditions of the regime are differences of step times,
affine in the round, so they hold over ``R`` rounds if they hold at the first and the last (with a margin far
above float rounding); the replay's state must match the regime's prediction before a skip, and the state after
``R`` rounds (each engine's pending event or place in the queue) is computed from it. The outputs of the rounds
are stamped as arithmetic ITL segments (each gap one round's growth longer than the one before), KV and stage work
are summed in closed form. Other regimes (e.g. waiting on two stages) are replayed event by event. Results equal
step-by-step simulation up to float rounding (``tests/test_skipahead_pipeline.py``).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from typing import Protocol

from .config import ReplicaSpec
from .cost import BatchShape
from .decode_runs import decode_limit
from .engine_state import EngineState
from .events import STAGE_DONE, STAGE_READY
from .frontend import Core, FrontEnd
from .policies import Iteration
from .recorder import Recorder, account
from .skipahead import QUEUED, PipelineRounds, decode_coeffs, kv_run_integral
from .state import StageClock

_INF = math.inf

#: where a job of an engine is (:meth:`PipelineRounds.position`): ``(kind, stage, step, time)``
Position = tuple[int, int, int, float]


class PipeCore(Core, Protocol):
    """The services of the simulation core the pipelined skip-ahead uses (:class:`~apex_opt.sim.engine.Simulation`)."""

    frontend: FrontEnd
    stages: list[list[StageClock]]  # the stage clocks of each replica
    cancelled: set[int]  # seqs of heap events a skip-ahead replaced
    seq: int  # the last event sequence number


# ============================================================================================ entry
def replay_replica(core: PipeCore, e0: EngineState, t: float) -> PipeReplay | None:
    """Engine ``e0`` of a pipelined replica just launched a pure decode step of its whole pool at ``t``. If every
    other virtual engine of the replica is idle or in flight with such a step, run the replica's pipeline forward,
    each engine repeating its decode step, until an arrival could reach the replica, a member could finish, the KV
    cache could run short or a cost breakpoint could be crossed (the next event of an engine whose run is over).

    Returns the committed replay (its ``old`` events are to be dropped from the heap, its ``heap`` events pushed
    in their place), or None if nothing was replayed (nothing changed)."""
    r = e0.replica
    act = steady_engines(core.rep_engines[r])
    if act is None:
        return None
    spec = core.replicas[r]
    limits = run_limits(spec, act)
    if max(limits) < 1:
        return None
    horizon = arrival_horizon(core, e0, spec.pp, act)
    old = [u.ev for u in act if u.ev is not None]
    horizon = replay_horizon(core, r, old, horizon)
    if horizon <= t:
        return None
    replay = PipeReplay(core, r, act, limits, old, horizon)
    replay.run(t)
    if not replay.done:
        return None
    replay.commit()
    return replay


def steady_engines(group: list[EngineState]) -> list[EngineState] | None:
    """The virtual engines of a replica (``group``) in flight with a decode step their policy will repeat, or None
    if one of them is not: in flight with another iteration, or idle with work (or a wake-up) pending."""
    act: list[EngineState] = []
    for u in group:
        if not u.in_flight:
            if u.waiting or u.running or u.wake_pending:
                return None
            continue
        if not repeats_decode(u):
            return None
        act.append(u)
    return act


def repeats_decode(u: EngineState) -> bool:
    """Engine ``u``'s iteration in flight is a pure decode step of its whole pool, nothing reached the engine since
    it was scheduled, its outputs and preempted members are all processed, and its policy will repeat it."""
    it, shape = u.it, u.it_shape
    if it is None or shape is None or u.arrived or not pure_decode(it, shape):
        return False
    return u.pending is None and not u.to_leave and u.policy.decode_stable(u)


def pure_decode(it: Iteration, shape: BatchShape) -> bool:
    """Iteration ``it`` (batch ``shape``) decodes the whole pool and nothing else: no prefill chunk, no
    preemption, one token per sequence."""
    if it.chunks or not it.run_pool or it.preempted:
        return False
    return bool(shape.num_decodes) and shape.num_tokens == shape.num_decodes


def run_limits(spec: ReplicaSpec, act: list[EngineState]) -> list[int]:
    """Per engine of ``act``: how many more identical decode steps it may run after the one in flight
    (:func:`~apex_opt.sim.decode_runs.decode_limit`, with the cost breakpoints of every stage of ``spec``)."""
    bps = sorted({bp for st in spec.cost.stages for bp in getattr(st, "ctx_breakpoints", ())})
    return [decode_limit(u, u.it_shape.max_ctx, bps) - 1 for u in act]  # type: ignore[union-attr]


def arrival_horizon(core: PipeCore, e0: EngineState, pp: int, act: list[EngineState]) -> float:
    """The next arrival that could reach ``e0``'s replica (``pp`` virtual engines, ``act`` of them decoding);
    ``inf`` if every engine runs and none could admit an arrival before its batch changes."""
    horizon = core.frontend.horizon(e0)
    if len(act) == pp and all(u.policy.arrival_blocked(u) for u in act):
        horizon = _INF
    return horizon


def replay_horizon(core: PipeCore, r: int, old: list[tuple], horizon: float) -> float:
    """The time the replay of replica ``r`` must stop before: ``horizon`` (the next arrival that could reach it),
    or with ``cut_early`` the next event of the rest of the run if the SLO verdict, checked at the first event after
    enough arrivals and completions, could come due before ``horizon`` (``-inf``: it is due, replay nothing).
    ``old`` are the replica's pending heap events."""
    watch = core.watch
    if watch is None:
        return horizon
    deficit = watch.next_at - (core.next_k + core.rec.done)
    k0 = core.next_k
    k1 = bisect.bisect_left(core.arr, horizon, lo=k0) if horizon < _INF else core.N
    if deficit > 2 * (k1 - k0) + sum(len(u.running) + len(u.waiting) for u in core.engines if u.replica != r):
        return horizon
    if deficit <= 0:
        return -_INF
    mine = {ev[2] for ev in old} | core.cancelled
    for ev in heapq.nsmallest(len(mine) + 1, core.heap):
        if ev[2] not in mine:
            return min(horizon, ev[0])
    return horizon


# ============================================================================================ the replay
class PipeReplay:
    """The replay of a pipelined replica's stage events while its engines ``act`` repeat their decode steps.

    Engine ``i`` (its index in the replica) runs step ``j[i]`` (0: the step in flight) on stage ``s`` in
    ``A[i][s] + Bc[i][s] * j[i]`` seconds, sends its activations in ``sig[i]`` seconds and may run ``L[i]`` more
    steps. The replay works on copies of the stage clocks' state (``busy``, ``queues``) and on its own event
    ``heap`` (seeded with the engines' pending events ``old``); it books outputs, KV and batch-size records as it
    goes, and the stage work and stage clocks at :meth:`commit`.
    """

    def __init__(self, core: PipeCore, r: int, act: list[EngineState], limits: list[int], old: list[tuple],
                 horizon: float) -> None:
        spec = core.replicas[r]
        self.r = r
        self.group = group = core.rep_engines[r]
        self.act = act
        self.old = old
        self.horizon = horizon
        self.pp = pp = spec.pp
        self.last = pp - 1
        self.stages = spec.cost.stages
        self.base = group[0].eid
        self._coefficients(spec, limits)
        self.clocks = clocks = core.stages[r]
        self.busy = [sc.busy for sc in clocks]
        self.queues = [deque(sc.queue) for sc in clocks]
        self.heap: list[tuple] = list(old)
        heapq.heapify(self.heap)
        nv = len(group)
        # per engine and stage: (first step begun here, steps begun, their seconds)
        self.acct_j = [[-1] * pp for _ in range(nv)]
        self.acct_n = [[0] * pp for _ in range(nv)]
        self.acct_t = [[0.0] * pp for _ in range(nv)]
        self.seq = core.seq
        self.rec: Recorder = core.rec
        self.bs_time = self.bs_weight = 0.0
        self.stamped = [False] * nv
        self.done = 0  # events replayed (a skip of rounds counts as one)
        self.rounds = 0  # rounds skipped in closed form
        self._closed_form_setup()

    def _coefficients(self, spec: ReplicaSpec, limits: list[int]) -> None:
        """Per engine of the replica: its run limit ``L``, batch ``Bs``, send time ``sig`` and per-stage step costs
        ``A + Bc * j`` (engines not in ``act`` keep empty rows)."""
        nv = len(self.group)
        self.L = [0] * nv
        self.j = [0] * nv
        self.Bs = [0] * nv
        self.sig = [0.0] * nv
        self.A: list[list[float]] = [[] for _ in range(nv)]
        self.Bc: list[list[float]] = [[] for _ in range(nv)]
        for u, lim in zip(self.act, limits, strict=True):
            i = u.eid - self.base
            shape = u.it_shape
            assert shape is not None
            B = shape.num_decodes
            self.L[i] = lim
            self.Bs[i] = B
            self.sig[i] = spec.cost.send_time(B)
            for st in self.stages:
                c0, c1 = decode_coeffs(st, B, shape.max_ctx)
                self.A[i].append(c0 + c1 * shape.decode_ctx_sum)
                self.Bc[i].append(c1 * B)

    def _closed_form_setup(self) -> None:
        """The closed-form rounds' state: ``k`` engines, the stage ``z`` carrying the most work (0 for one engine),
        the last ``k`` starts at ``z``, the countdown to the next attempt and the seconds per round at the start."""
        act, base, A, pp = self.act, self.base, self.A, self.pp
        self.k = k = len(act)
        self.z = z = 0 if k == 1 else max(range(pp), key=lambda s: sum(A[u.eid - base][s] for u in act))
        #: (time, engine, step) of the last k starts at z
        self.zhist: deque[tuple[float, int, int]] = deque(maxlen=k)
        self.countdown = k
        self.fails = 0
        # seconds per round at the start (the rounds only get longer): no closed form for a handful of rounds
        i0 = act[0].eid - base
        self.per_round = max((sum(A[u.eid - base][z] for u in act) if k > 1
                              else sum(A[i0]) + (pp - 1) * self.sig[i0]), 1e-300)

    # ---------------------------------------------------------------------------------------- event by event
    def run(self, t: float) -> None:
        """Replay the events from ``t`` in the main loop's order until the first that is not certain (at or after
        the horizon, or the next step of an engine whose run is over), skipping whole rounds when a closed-form
        regime holds."""
        heap = self.heap
        tc = t
        while heap:
            tau, kind, _, eid, s = heap[0]
            if self._jump_due(tau, tc):
                t_end = self._try_jump(tc)
                if t_end:
                    tc = t_end
                    continue
            i = eid - self.base
            if tau >= self.horizon or (kind == STAGE_DONE and s == self.last and self.L[i] == 0):
                break
            heapq.heappop(heap)
            self.done += 1
            tc = tau
            self._event(tau, kind, i, s)

    def _event(self, tau: float, kind: int, i: int, s: int) -> None:
        """Engine ``i``'s ``STAGE_READY`` or ``STAGE_DONE`` event at stage ``s`` at ``tau``, as the main loop would
        handle it (the stage serves its queue first come, first served)."""
        eid = self.base + i
        busy, queues = self.busy, self.queues
        if kind == STAGE_READY:
            if busy[s]:
                queues[s].append(eid)
            else:
                self._begin(i, s, tau)
            return
        busy[s] = False
        q = queues[s]
        if q:
            self._begin(q.popleft() - self.base, s, tau)
        if s < self.last:
            self.seq += 1
            heapq.heappush(self.heap, (tau + self.sig[i], STAGE_READY, self.seq, eid, s + 1))
            return
        self._output(i, tau)

    def _begin(self, i: int, s: int, tau: float) -> None:
        """Stage ``s`` begins engine ``i``'s current step at ``tau``: its ``STAGE_DONE`` event, the starts at ``z``
        and the stage's work."""
        j = self.j[i]
        d = self.A[i][s] + self.Bc[i][s] * j
        self.busy[s] = True
        self.seq += 1
        heapq.heappush(self.heap, (tau + d, STAGE_DONE, self.seq, self.base + i, s))
        if s == self.z:
            self.zhist.append((tau, i, j))
            self.countdown -= 1
        if self.acct_j[i][s] < 0:
            self.acct_j[i][s] = j
        self.acct_n[i][s] += 1
        self.acct_t[i][s] += d

    def _output(self, i: int, tau: float) -> None:
        """Engine ``i``'s step left the last stage at ``tau``: stamp its outputs, then its next identical step is
        scheduled and launched at once (KV blocks, batch-size records, stage 0)."""
        u = self.group[i]
        pool, book = u.pool, u.book
        pool.E_done = pool.E
        if self.stamped[i]:
            if book.main_count:
                book.vals.append(tau - book.main_stamp)
                book.wts.append(book.main_count)
            book.main_stamp = tau
        else:
            book.stamp(book.new_group(), tau, True)
            self.stamped[i] = True
        self.L[i] -= 1
        self.j[i] += 1
        u.kv.take(pool.allocs_next())
        pool.E += 1
        u.now = tau
        Recorder.kv(tau, u)
        B = self.Bs[i]
        d0 = self.A[i][0] + self.Bc[i][0] * self.j[i]
        self._record_batch(u, tau, d0, 1, B)
        if self.busy[0]:
            self.queues[0].append(self.base + i)
        else:
            self._begin(i, 0, tau)

    def _record_batch(self, u: EngineState, tau: float, d0: float, steps: int, B: int) -> None:
        """``steps`` decode steps of ``B`` sequences of engine ``u`` launched at ``tau``, ``d0`` seconds on stage 0:
        the batch-size time average, series and iteration log."""
        self.bs_time += B * d0
        self.bs_weight += d0
        self.rec.ser_bs.extend((tau, d0, B))
        iter_log = self.rec.iter_log
        if iter_log is not None:
            iter_log.append((self.r, u.vid, tau, d0, steps, 0, B))

    # ---------------------------------------------------------------------------------------- closed-form rounds
    def _jump_due(self, tau: float, tc: float) -> bool:
        """Whether to try a skip of rounds at ``tc`` (next event at ``tau``): ``k`` starts at ``z`` since the last
        try, ``v_0`` just started there, and at least a handful of rounds left before a run ends or the horizon."""
        return (self.countdown <= 0 and len(self.zhist) == self.k and tau > tc + 2e-9 * (1.0 + abs(tc))
                and min(min(self.L[u.eid - self.base] for u in self.act), (self.horizon - tc) / self.per_round) >= 4)

    def _try_jump(self, tc: float) -> float:
        """Skip whole rounds in closed form from ``tc`` if a regime holds; returns the time they end at (0: none,
        and the next try waits exponentially longer)."""
        t_end = self._jump(tc)
        if t_end:
            self.fails = 0
            self.countdown = self.k
            self.done += 1
        else:
            self.fails += 1
            self.countdown = self.k << min(self.fails, 6)
        return t_end

    def _jump(self, tc: float) -> float:
        """Skip whole rounds in closed form from ``tc`` (just after ``v_0`` started at ``z``); returns the time they
        end at (0: no rounds skipped)."""
        rs = RoundSkip.at(self, tc)
        if rs is None:
            return 0.0
        R = rs.max_rounds()
        end = rs.ends(R, rs.margin) if R >= 2 else None
        if end is None:
            return 0.0
        for i, v in enumerate(rs.order):
            self._book_stage_visits(v, rs.now[i], end[i])
            c = end[i][2] - self.j[v]
            if c > 0:
                self._book_steps(rs, i, v, c)
        self._place(rs, end, R)
        self.rounds += R
        return rs.tz + rs.pr.Z(R * self.k) + rs.t0

    def _book_stage_visits(self, v: int, now: Position, end: Position) -> None:
        """The stage work of engine ``v`` in the skipped rounds: its stage visits (``step * pp + stage``) begun
        after position ``now`` up to position ``end``."""
        pp = self.pp
        b0, b1 = (p[2] * pp + p[1] - (p[0] != STAGE_DONE) for p in (now, end))
        for s in range(pp):
            x = b0 + 1 + (s - b0 - 1) % pp
            if x > b1:
                continue
            cnt = (b1 - x) // pp + 1
            ja = x // pp
            if self.acct_j[v][s] < 0:
                self.acct_j[v][s] = ja
            self.acct_n[v][s] += cnt
            self.acct_t[v][s] += cnt * self.A[v][s] + self.Bc[v][s] * (2 * ja + cnt - 1) * cnt / 2

    def _book_steps(self, rs: RoundSkip, i: int, v: int, c: int) -> None:
        """The ``c`` steps engine ``v`` (``v_i``) completes in the skipped rounds: its outputs as an arithmetic ITL
        segment, its KV blocks and their time integral, its batch-size records and its run's progress."""
        pr, tz = rs.pr, rs.tz
        u = self.group[v]
        jn = self.j[v]
        first = pr.ring(i, jn - rs.s0[i])[2]  # step jn + 1 is scheduled when step jn leaves the last stage
        t_last = pr.ring(i, jn + c - 1 - rs.s0[i])[2]
        beta = pr.Pb  # every gap of the run is one round longer than the one before
        alpha = pr.ring(i, jn + 1 - rs.s0[i])[2] - first - beta if c >= 2 else 0.0
        B = self.Bs[v]
        u.book.run(tz + first, alpha, beta, c - 1, B, tz + t_last)
        self.stamped[v] = True
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
        d0 = c * self.A[v][0] + self.Bc[v][0] * (2 * jn + c + 1) * c / 2
        self._record_batch(u, tz + first, d0, c, B)
        self.L[v] -= c
        self.j[v] += c

    def _place(self, rs: RoundSkip, end: list[Position], R: int) -> None:
        """The pipeline as ``R`` skipped rounds leave it: each engine's pending event (``end``) or place in the
        queue at ``z``, and the last ``k`` starts at ``z``."""
        heap, busy, queues, order, k, tz = self.heap, self.busy, self.queues, rs.order, self.k, rs.tz
        heap.clear()
        for s in range(self.pp):
            busy[s] = False
            queues[s].clear()
        for i, v in enumerate(order):
            kind, s, _, at = end[i]
            if kind != QUEUED:
                self.seq += 1
                heap.append((tz + at, kind, self.seq, self.base + v, s))
                busy[s] = busy[s] or kind == STAGE_DONE
        heapq.heapify(heap)
        queues[self.z].extend(self.base + order[i] for i in rs.queued(end))
        zhist, pr, s0 = self.zhist, rs.pr, rs.s0
        zhist.clear()
        for i in range(1, k):
            zhist.append((tz + pr.Z(R * k - k + i), order[i], s0[i] + R - 1))
        zhist.append((tz + pr.Z(R * k), order[0], s0[0] + R))

    # ---------------------------------------------------------------------------------------- commit
    def commit(self) -> None:
        """Book what the replay did that it kept aside: the batch-size averages, each engine's current step and
        stage work, and the stage clocks' state. The pending events (``heap``) are the caller's to push."""
        rec = self.rec
        rec.bs_time += self.bs_time
        rec.bs_weight += self.bs_weight
        for u in self.act:
            i = u.eid - self.base
            shape = u.it_shape
            assert shape is not None
            B, S, mc = self.Bs[i], shape.decode_ctx_sum, shape.max_ctx
            j = self.j[i]
            if j:
                u.it_shape = BatchShape(B, B, B, S + j * B, 0.0, False, mc + j)
            for s in range(self.pp):
                if self.acct_n[i][s]:
                    self._account(i, s, B, S, mc)
            u.ev = None
        for s, sc in enumerate(self.clocks):
            sc.busy = self.busy[s]
            sc.queue.clear()
            sc.queue.extend(self.queues[s])

    def _account(self, i: int, s: int, B: int, S: int, mc: int) -> None:
        """Add the steps engine ``i`` (``B`` decodes, context sum ``S`` and longest context ``mc`` at step 0) ran on
        stage ``s`` to its clock: busy time, and energy and work (affine over the steps, by the StageCost contract,
        so the trapezoid between the first and the last is exact)."""
        j0, cnt, total = self.acct_j[i][s], self.acct_n[i][s], self.acct_t[i][s]
        sc, st = self.clocks[s], self.stages[s]
        sc.busy_s += total
        b0 = BatchShape(B, B, B, S + j0 * B, 0.0, False, mc + j0)
        d = self.A[i][s] + self.Bc[i][s] * j0
        if cnt == 1:
            account(sc, st, b0, d)
            return
        m = cnt - 1
        bm = BatchShape(B, B, B, S + (j0 + m) * B, 0.0, False, mc + j0 + m)
        e_j, fl, by = sc.energy_j, sc.flops, sc.bytes
        account(sc, st, b0, d)
        account(sc, st, bm, d + self.Bc[i][s] * m)
        sc.energy_j = e_j + (sc.energy_j - e_j) * cnt / 2
        sc.flops = fl + (sc.flops - fl) * cnt / 2
        sc.bytes = by + (sc.bytes - by) * cnt / 2


class RoundSkip:
    """A skip of whole rounds about to be taken by a :class:`PipeReplay` at ``tz + t0``: the regime's
    :class:`~apex_opt.sim.skipahead.PipelineRounds` (times relative to ``tz``, when ``v_0`` last started at ``z``),
    the engines in their cyclic ``order`` at ``z`` with the steps ``s0`` of their jobs of round 0, and where each
    engine is ``now``. Build it with :meth:`at`, which checks that the replay's state is the regime's."""

    def __init__(self, replay: PipeReplay, tc: float, order: list[int], s0: list[int]) -> None:
        self.replay = rp = replay
        self.tz = tz = rp.zhist[-1][0]
        self.order, self.s0 = order, s0
        self.pr = PipelineRounds(rp.pp, rp.z, rp.A, rp.Bc, rp.sig, order, s0)
        self.margin = 1e-9 * (1.0 + abs(tz))
        self.tol = 1e-11 * (1.0 + abs(tz))
        self.t0 = tc - tz
        self.now: list[Position] = []
        self.cond0: list[float] = []
        self.cond1: list[float] = []

    @classmethod
    def at(cls, replay: PipeReplay, tc: float) -> RoundSkip | None:
        """The skip the replay could take at ``tc`` (just after ``v_0`` started at ``z``), or None if its state is
        not a closed-form regime's: the last ``k`` starts at ``z`` not of ``k`` distinct engines, a queue at another
        stage, the round in progress not saturated at ``z``, an engine not where the regime puts it, or a condition
        of the regime without margin now."""
        order = cls._cyclic_order(replay)
        if order is None:
            return None
        zhist, k = replay.zhist, replay.k
        s0 = [replay.j[order[0]]] + [zhist[m][2] + 1 for m in range(k - 1)]
        rs = cls(replay, tc, order, s0)
        return rs if rs._holds() else None

    @staticmethod
    def _cyclic_order(replay: PipeReplay) -> list[int] | None:
        """The engines in their cyclic order at ``z`` (``v_0`` the one that just started there), or None if the last
        ``k`` starts at ``z`` are not of ``k`` distinct engines or another stage has a queue."""
        zhist, k = replay.zhist, replay.k
        order = [zhist[-1][1]] + [zhist[m][1] for m in range(k - 1)]
        if len(set(order)) != k or any(replay.queues[s] for s in range(replay.pp) if s != replay.z):
            return None
        return order

    def _holds(self) -> bool:
        """Whether the replay's state is the regime's (saturated so far, every engine where the regime puts it, the
        queue at ``z`` in order) and the regime's conditions hold with margin now and in round 0 (sets ``cond0``,
        ``cond1``: the margins of rounds 0 and 1)."""
        if not (self._saturated() and self._located() and self._queue_matches()):
            return False
        if self.pr.slack(-1, self.t0 + self.margin / 2) <= self.margin:
            return False
        self.cond0, self.cond1 = self.pr.conditions(0), self.pr.conditions(1)
        return not (min(self.cond0, default=_INF) <= self.margin)

    def _saturated(self) -> bool:
        """The round in progress ran saturated at ``z``: the last ``k - 1`` starts there are the regime's."""
        zhist, k, pr = self.replay.zhist, self.replay.k, self.pr
        return not any(abs((zhist[m][0] - self.tz) - pr.Z(m + 1 - k)) > self.tol for m in range(k - 1))

    def _located(self) -> bool:
        """Every engine is where the regime puts it now: its pending event in the replay's heap (kind, stage and
        time), or none if queued at ``z``; sets ``now``."""
        rp = self.replay
        pend = {ev[3] - rp.base: ev for ev in rp.heap}
        for i, v in enumerate(self.order):
            p = self.pr.position(i, 0 if i == 0 else -1, self.t0, self.margin)
            if p is None or p[2] != rp.j[v] or not self._matches(p, pend.get(v)):
                return False
            self.now.append(p)
        return True

    def _matches(self, p: Position, ev: tuple | None) -> bool:
        """Whether pending event ``ev`` (None: none) is the one of position ``p``."""
        if p[0] == QUEUED:
            return ev is None
        return not (ev is None or ev[1] != p[0] or ev[4] != p[1] or abs((ev[0] - self.tz) - p[3]) > self.tol)

    def _queue_matches(self) -> bool:
        """The queue at ``z`` holds the engines the regime puts there, in the order they arrived."""
        rp = self.replay
        return [rp.base + self.order[i] for i in self.queued(self.now)] == list(rp.queues[rp.z])

    def queued(self, pos: list[Position]) -> list[int]:
        """The indices ``i`` of the engines queued at ``z`` in positions ``pos``, in the order they arrived."""
        return sorted((i for i in range(self.replay.k) if pos[i][0] == QUEUED), key=lambda i: pos[i][3])

    def ends(self, R: int, mg: float) -> list[Position] | None:
        """Where every engine is after ``R`` rounds (None if an event falls too close to that time to tell)."""
        t_end = self.pr.Z(R * self.replay.k) + self.t0
        out = []
        for i in range(self.replay.k):
            p = self.pr.position(i, R if i == 0 else R - 1, t_end, mg)
            if p is None:
                return None
            out.append(p)
        return out

    def fits(self, R: int) -> bool:
        """Whether ``R`` rounds end before the horizon, keep the regime's conditions and stay within every run."""
        rp, margin = self.replay, self.margin
        if self.tz + self.pr.Z(R * rp.k) + self.t0 + margin >= rp.horizon or self.pr.slack(R - 1) <= margin:
            return False
        pos = self.ends(R, margin)
        return pos is not None and all(pos[i][2] - rp.j[v] <= rp.L[v] for i, v in enumerate(self.order))

    def round_cap(self) -> int:
        """An upper bound on the rounds: ``v_0`` schedules a step per round (the others one fewer in the last), the
        conditions are affine in the round, the horizon quadratic."""
        rp, margin = self.replay, self.margin
        L, order = rp.L, self.order
        R = min([L[order[0]]] + [L[v] + 1 for v in order[1:]])
        for a, b in zip(self.cond0, self.cond1, strict=True):
            if b < a:
                R = min(R, int((a - margin) / (a - b)) + 1)
        if rp.horizon < _INF:
            R = min(R, self.pr.rounds_before(rp.horizon - self.tz - self.t0 - margin))
        return R

    def max_rounds(self) -> int:
        """The most rounds that keep every condition (:meth:`round_cap`, bisected down if it does not fit)."""
        R = self.round_cap()
        if R < 2 or self.fits(R):
            return R
        lo, hi = 1, R - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo


__all__ = ["PipeCore", "PipeReplay", "RoundSkip", "arrival_horizon", "pure_decode", "repeats_decode", "replay_horizon",
           "replay_replica", "run_limits", "steady_engines"]
