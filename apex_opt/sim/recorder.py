"""What a simulation run records, and the result it turns into.

The :class:`Recorder` owns everything that is measured rather than simulated: the per-request records (first
schedule, first token, finish, tokens, preemptions, stalls, rejections), the request and iteration logs, the
inter-token-latency sample arrays the engines' :class:`~apex_opt.sim.state.SampleBook` objects write into, the
time-weighted cluster counters (waiting, running, batch size, each engine's KV use) with their series, the
speculative-decoding counts and the progress ticks. The core (:class:`~apex_opt.sim.engine.Simulation`) and the
front ends write into it as events happen; :meth:`Recorder.result` assembles the :class:`SimResult` at the end
with the functions of :mod:`apex_opt.sim.metrics` (the work, energy and busy time of each pipeline stage are
accumulated on its :class:`~apex_opt.sim.state.StageClock`, see :func:`account`).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .cost import BatchShape
from .metrics import (
    RequestRecords,
    SimResult,
    SLOTarget,
    hardware_summary,
    latency_summary,
    load_summary,
    time_series,
)
from .state import StageClock


class Recorder:
    """Records and counters of one run (see the module docstring)."""

    def __init__(self, ids: tuple[str, ...], *, record_log: bool = False,
                 progress: Callable[[float], None] | None = None) -> None:
        n = self.N = len(ids)
        self.ids = ids
        self.progress = progress
        # per-request records
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
        # ITL samples shared by all engines (their SampleBooks write here)
        self.itl_vals = array("d")
        self.itl_wts = array("d")
        self.itl_segs = array("d")
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
        # speculative decoding: verify steps and tokens they emitted
        self.spec_steps = 0
        self.spec_tokens = 0
        # progress
        self.done = 0
        self.next_tick = 0.0

    @property
    def books(self) -> tuple[array, array, array]:
        """The ITL sample arrays, for the engines' :class:`~apex_opt.sim.state.SampleBook`."""
        return self.itl_vals, self.itl_wts, self.itl_segs

    # ------------------------------------------------------------------------------------ during the run
    def counts(self, t: float, e: Any) -> None:
        """Engine ``e``'s queues may have changed at ``t``: update the waiting/running integrals and series."""
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

    @staticmethod
    def kv(t: float, e: Any) -> None:
        """Engine ``e``'s KV use may have changed at ``t``: update its time integral and peak."""
        e.kv_int += e.kv_last * (t - e.kv_t)
        e.kv_t = t
        used = e.kv.capacity - e.kv.free
        e.kv_last = used
        e.kv_max = max(e.kv_max, used)

    def launched(self, e: Any, t: float, it: Any) -> None:
        """Engine ``e`` launched iteration ``it`` (an :class:`~apex_opt.sim.policies.Iteration`) at ``t``: the
        prefill log entries, first schedules, queue and KV counters."""
        if self.log is not None:
            for req, c, _ in it.chunks:
                self.log.append((req.rid, "prefill", t, c))
        first = self.r_first_sched
        for req, _, _ in it.chunks:
            if first[req.idx] != first[req.idx]:
                first[req.idx] = t
        self.counts(t, e)
        self.kv(t, e)

    def iteration(self, e: Any, t: float, seconds: float, steps: int, shape: BatchShape) -> None:
        """Engine ``e`` launched an iteration (``steps`` identical decode steps run at once) at ``t`` that keeps
        its first stage ``seconds`` busy."""
        nseq = shape.num_seqs
        self.bs_time += nseq * seconds
        self.bs_weight += seconds
        self.ser_bs.extend((t, seconds, nseq))
        if self.iter_log is not None:
            self.iter_log.append((e.replica, e.vid, t, seconds, steps, shape.num_tokens - shape.num_decodes,
                                  shape.num_decodes))
        self.bs_max = max(self.bs_max, nseq)

    def reject(self, k: int, t: float, reason: str) -> None:
        """Request ``k`` is rejected (``reason``) at ``t``."""
        self.r_rejected[k] = True
        self.r_reason[k] = reason
        if self.log is not None:
            self.log.append((self.ids[k], "reject", t, reason))
        self.tick()

    def tick(self) -> None:
        """One more request left the system (finished or rejected): report progress about every 1 %."""
        self.done += 1
        if self.progress is not None and self.done >= self.next_tick:
            self.progress(self.done / self.N)
            self.next_tick = self.done + max(1.0, self.N / 100.0)

    # ------------------------------------------------------------------------------------ the result
    def records(self, arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray) -> RequestRecords:
        """The per-request records (read-only arrays), as the engine saw them."""
        n = self.N
        rec = RequestRecords(
            request_ids=self.ids, replica=self.r_replica, arrival_s=arrival.copy(),
            first_scheduled_s=self.r_first_sched, first_token_s=self.r_first_token, finish_s=self.r_finish,
            prompt_tokens=prompt.copy(), requested_tokens=output.copy(), generated=self.r_generated,
            rejected=self.r_rejected, truncated=self.r_truncated, preemptions=self.r_preempt, stall_s=self.r_stall,
            reject_reason=tuple(self.r_reason.get(i, "") for i in range(n)), cached_tokens=self.r_cached,
        )
        for a in rec.to_dict().values():
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
        return rec

    def span(self, arrival: np.ndarray, engines: Sequence[Any]) -> tuple[float, float]:
        """``(first arrival, end)`` of the run: the end is the last finish or the last KV change, if later."""
        t_first = float(arrival[0]) if self.N else 0.0
        fin = self.r_finish[np.isfinite(self.r_finish)]
        t_last = float(fin.max()) if fin.size else t_first
        t_last = max(t_last, max((e.kv_t for e in engines), default=t_last))
        return t_first, t_last

    def load(self, out: dict[str, Any], engines: Sequence[Any], t_last: float, span: float) -> None:
        """The batch size, queue, running and KV keys of the summary."""
        cap_total = sum(e.kv.capacity for e in engines)
        kv_int = sum(e.kv_int + e.kv_last * (t_last - e.kv_t) for e in engines)
        load_summary(out, bs_time=self.bs_time, bs_weight=self.bs_weight, bs_max=self.bs_max,
                     q_int=self.q_int + self.n_wait * (t_last - self.cnt_t),
                     r_int=self.r_int + self.n_run * (t_last - self.cnt_t), q_max=self.q_max, r_max=self.r_max,
                     kv_int=kv_int, kv_capacity=cap_total,
                     kv_util_max=max((e.kv_max / e.kv.capacity for e in engines), default=0.0), span=span)

    def result(self, workload: Any, replicas: Sequence[Any], engines: Sequence[Any],
               stages: Sequence[Sequence[StageClock]], *, slo: SLOTarget | None, client: Any = None,
               price_per_gpu_hour: float | None = None, caching: bool = False) -> SimResult:
        """The :class:`SimResult` of the run. ``workload`` has the ``arrival``, ``prompt`` and ``output`` arrays
        (the simulation); ``client`` (a :class:`~apex_opt.sim.client.ClientPath`) turns engine-side timings
        into what a benchmark client measures."""
        rec = self.records(workload.arrival, workload.prompt, workload.output)
        if client is not None:
            rec = client.view(rec)
        t_first, t_last = self.span(workload.arrival, engines)
        span = max(t_last - t_first, 0.0)
        out = latency_summary(rec, _floats(self.itl_vals), _floats(self.itl_wts), _floats(self.itl_segs), span, slo)
        if caching:
            done = rec.completed
            prompt = int(rec.prompt_tokens[done].sum())
            out["prefix_cache_hit_rate"] = int(rec.cached_tokens[done].sum()) / prompt if prompt else 0.0
        out["measured_at"] = "engine" if client is None else "client"
        if any(e.spec is not None for e in engines):
            out["spec_tokens_per_step"] = self.spec_tokens / self.spec_steps if self.spec_steps else math.nan
        self.load(out, engines, t_last, span)
        per_replica = hardware_summary(out, replicas, stages, rec, span, price_per_gpu_hour)
        series = time_series(_floats(self.ser_q), _floats(self.ser_bs), t_first, t_last) if span > 0 else {}
        return SimResult(records=rec, summary_values=out, series=series, per_replica=tuple(per_replica),
                         log=tuple(self.log) if self.log is not None else None,
                         iterations=tuple(self.iter_log) if self.iter_log is not None else None)


class SLOWatch:
    """Counts the requests that have missed the SLO for certain as a run goes, to cut the run once its verdict is
    decided: when more have missed than the attainment target allows, the rest cannot bring it back.

    A request has missed for certain when a bound it is judged on is already exceeded: rejected; a first token
    later than ``ttft`` after arrival, or none yet and more than ``ttft`` waited; more than ``tpot`` per token
    since its first token, counted over the most tokens it can still produce (its requested output); finished
    later than ``e2e``, or not finished and older than that. A latency measured at the client only adds to these
    engine-side times, so a miss at the engine is a miss at the client too. The check is vectorised over the
    records and runs each time ``stride`` more arrivals and completions have happened (1/128 of twice the workload,
    so about 128 checks per run).

    >>> import numpy as np
    >>> from apex_opt.sim.metrics import SLOTarget
    >>> w = SLOWatch(SLOTarget(ttft=1.0, tpot=None, attainment=0.9), 20)
    >>> w.allowed
    2
    """

    def __init__(self, slo: SLOTarget, n: int) -> None:
        self.slo = slo
        self.N = n
        #: misses the attainment target allows: attainment = met / N >= target  <=>  misses <= N - ceil(target N)
        self.allowed = n - math.ceil(slo.attainment * n - 1e-9)
        self.stride = max(1, (2 * n) // 128)
        self.next_at = self.stride
        self.missed = 0
        self.cut_at: float | None = None

    def decided(self, t: float, rec: Recorder, arrival: np.ndarray, output: np.ndarray, arrived: int) -> bool:
        """Whether, at ``t`` with ``arrived`` requests arrived, more requests have missed than allowed."""
        self.next_at += self.stride
        slo = self.slo
        n = arrived
        first, finish = rec.r_first_token[:n], rec.r_finish[:n]
        age = t - arrival[:n]
        miss = rec.r_rejected[:n].copy()
        if slo.ttft is not None:
            miss |= np.where(np.isnan(first), age > slo.ttft, first - arrival[:n] > slo.ttft)
        if slo.tpot is not None:
            gaps = np.maximum(np.where(np.isnan(finish), output[:n], rec.r_generated[:n]) - 1, 1)
            since = np.where(np.isnan(finish), t, finish) - first
            several = np.where(np.isnan(finish), output[:n] > 1, rec.r_generated[:n] > 1)
            miss |= np.isfinite(first) & several & (since / gaps > slo.tpot)
        if slo.e2e is not None:
            miss |= np.where(np.isnan(finish), age > slo.e2e, finish - arrival[:n] > slo.e2e)
        self.missed = int(miss.sum())
        if self.missed > self.allowed:
            self.cut_at = t
            return True
        return False

    def fields(self) -> dict[str, Any]:
        """The summary keys of a cut run: when, how many had missed, and the attainment it can reach at most."""
        return {"cut_at_s": self.cut_at, "num_slo_missed": self.missed,
                "slo_attainment": (self.N - self.missed) / self.N if self.N else math.nan, "slo_met": False}

    #: keys a cut run cannot tell: the served rate and the backlog's growth need the arrival window's end
    UNKNOWN_WHEN_CUT = ("served_rate_req_s", "backlog_growth_req_s", "queue_growth_req_s", "saturated")


def _floats(a: array) -> np.ndarray:
    """A recorded ``array("d")`` as a numpy array (a view; empty: a new empty array)."""
    return np.frombuffer(a, dtype=np.float64) if len(a) else np.zeros(0)


def account(sc: StageClock, stage: Any, shape: BatchShape, seconds: float) -> None:
    """Add one iteration's energy, FLOPs and bytes to stage clock ``sc``."""
    work = getattr(stage, "work", None)
    if work is not None:
        energy, flops, nbytes = work(shape, seconds)
    else:  # a StageCost protocol implementation without the combined call
        energy, flops, nbytes = stage.energy(shape, seconds), stage.flops(shape), stage.bytes(shape)
    sc.energy_j += energy
    sc.flops += flops
    sc.bytes += nbytes


def account_run(sc: StageClock, stage: Any, shape: BatchShape, t0: float, m: int, b1: BatchShape, t1: float,
                bm: BatchShape, tm: float, total: float) -> None:
    """Add a closed-form run of identical decode steps to ``sc``: the first step (``shape``, ``t0`` s), then
    ``m`` steps whose energy and work are integrated by the trapezoid between step 1 (``b1``, ``t1``) and step
    ``m`` (``bm``, ``tm``); ``total`` seconds in all. Exact for costs affine in the step index."""
    sc.busy_s += total
    sc.energy_j += stage.energy(shape, t0) + m * (stage.energy(b1, t1) + stage.energy(bm, tm)) / 2
    sc.flops += stage.flops(shape) + m * (stage.flops(b1) + stage.flops(bm)) / 2
    sc.bytes += stage.bytes(shape) + m * (stage.bytes(b1) + stage.bytes(bm)) / 2


__all__ = ["Recorder", "account", "account_run"]
