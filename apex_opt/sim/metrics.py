"""Simulation results: per-request records, the summary, SLO attainment and goodput.

Metric semantics follow vLLM 0.6's engine-side metrics (``docs/engines.md`` section 2) and the reference data
(``data/apex/README.md``):

* **TTFT** = first-token stamp - arrival; the stamp is taken when the outputs of the iteration that finished the
  prefill are processed (``SchedulerConfig.metrics_stamp``).
* **ITL** samples are the gaps between consecutive token stamps of a request. A recompute preemption's gap
  (last token before the preemption -> first token after the re-prefill) is not an ITL sample; vLLM logs it as a
  second TTFT sample. ITL percentiles are over all samples (token-weighted).
* **TPOT** per request = (finish - first token) / (output - 1), preemption stalls included.
* **tpot_ms** / **itl_ms** (reference aggregates) = sum of all ITL samples / sum of output tokens, resp. / sum of
  (output tokens - 1).
* **e2e** = finish - arrival. Throughputs, goodput, energy and GPU-hours are over the makespan: first arrival to
  the last finish (or the end of the last engine step, if later).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .summary import SimSummary

STATS: tuple[str, ...] = ("mean", "p50", "p90", "p95", "p99")
_Q = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}


@dataclass(frozen=True)
class SLOTarget:
    """Latency bounds in seconds, the statistic each applies to, and the attainment target.

    Any object with ``ttft``, ``tpot`` (seconds or None), ``ttft_stat``, ``tpot_stat`` ("mean", "p50", "p90",
    "p95", "p99") and ``attainment`` (fraction) is accepted where an SLO is expected (e.g.
    ``apex_opt.schema.slo.SLO``); ``e2e``/``e2e_stat`` are used when present.
    """

    ttft: float | None = None
    tpot: float | None = None
    ttft_stat: str = "mean"
    tpot_stat: str = "mean"
    attainment: float = 0.9
    e2e: float | None = None
    e2e_stat: str = "mean"


def _stat(values: np.ndarray, stat: str) -> float:
    if values.size == 0:
        return math.nan
    if stat == "mean":
        return float(values.mean())
    return float(np.percentile(values, _Q[stat]))


def _describe(prefix: str, values: np.ndarray, out: dict[str, Any]) -> None:
    for s in STATS:
        out[f"{prefix}_{s}_s"] = _stat(values, s)


def weighted_quantiles(vals: np.ndarray, wts: np.ndarray, segs: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Quantiles (in [0, 1]) of a weighted sample: points ``vals`` with weights ``wts`` plus arithmetic segments
    (rows ``alpha, beta, j_from, j_to, weight``: values ``alpha + beta*j`` for integer ``j`` in the range, each
    with the weight). Returns the smallest ``v`` with cumulative weight >= q * total (bisection on ``v``)."""
    segs = segs.reshape(-1, 5) if segs.size else np.zeros((0, 5))
    seg_w = segs[:, 4] * (segs[:, 3] - segs[:, 2] + 1)
    total = float(wts.sum() + seg_w.sum())
    if total <= 0:
        return [math.nan for _ in qs]
    lo_candidates = [vals.min()] if vals.size else []
    hi_candidates = [vals.max()] if vals.size else []
    if segs.size:
        a, b, j0, j1 = segs[:, 0], segs[:, 1], segs[:, 2], segs[:, 3]
        ends = np.concatenate([a + b * j0, a + b * j1])
        lo_candidates.append(ends.min())
        hi_candidates.append(ends.max())
    lo0, hi0 = float(min(lo_candidates)), float(max(hi_candidates))

    def weight_le(v: float) -> float:
        w = float(wts[vals <= v].sum()) if vals.size else 0.0
        if segs.size:
            a, b, j0, j1, sw = segs.T
            with np.errstate(divide="ignore", invalid="ignore"):
                jmax = np.where(b > 0, np.floor((v - a) / np.where(b > 0, b, 1.0)), np.where(a <= v, j1, j0 - 1))
            cnt = np.clip(jmax, j0 - 1, j1) - (j0 - 1)
            w += float((cnt * sw).sum())
        return w

    out = []
    for q in qs:
        target = q * total
        lo, hi = lo0, hi0
        if weight_le(lo) >= target:
            out.append(lo)
            continue
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if mid <= lo or mid >= hi:
                break
            if weight_le(mid) >= target:
                hi = mid
            else:
                lo = mid
        out.append(hi)
    return out


@dataclass(frozen=True, eq=False)
class RequestRecords:
    """Per-request results, one entry per workload request (in workload order).

    Times are seconds on the workload's clock; NaN where the event did not happen (e.g. rejected requests).
    ``generated`` counts tokens produced; ``truncated`` marks requests stopped before their requested output
    (context limit or KV capacity); ``reject_reason`` is "" or one of "prompt_limit", "length", "kv";
    ``stall_s`` sums the gaps caused by recompute preemptions; ``cached_tokens`` counts the prompt tokens found in
    the prefix cache at the request's first admission (0 without prefix caching).

    Disaggregated runs (``apex_opt.sim.disagg``) also fill ``prefill_replica`` and ``decode_replica`` (replica
    indices; ``replica`` is the prefill replica) and ``kv_transfer_start_s`` / ``kv_transfer_end_s`` (when the
    request's KV cache started and finished moving from the prefill to the decode instance). In aggregated runs,
    and for requests that were rejected or finished at the prefill instance (one output token), they are -1 / NaN.
    """

    request_ids: tuple[str, ...]
    replica: np.ndarray
    arrival_s: np.ndarray
    first_scheduled_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    prompt_tokens: np.ndarray
    requested_tokens: np.ndarray
    generated: np.ndarray
    rejected: np.ndarray
    truncated: np.ndarray
    preemptions: np.ndarray
    stall_s: np.ndarray
    reject_reason: tuple[str, ...]
    # filled with -1 / NaN arrays by __post_init__ when not given
    prefill_replica: np.ndarray = None  # type: ignore[assignment]
    decode_replica: np.ndarray = None  # type: ignore[assignment]
    kv_transfer_start_s: np.ndarray = None  # type: ignore[assignment]
    kv_transfer_end_s: np.ndarray = None  # type: ignore[assignment]
    cached_tokens: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.request_ids)
        for name, fill, dtype in (("prefill_replica", -1, np.int64), ("decode_replica", -1, np.int64),
                                  ("cached_tokens", 0, np.int64),
                                  ("kv_transfer_start_s", np.nan, np.float64),
                                  ("kv_transfer_end_s", np.nan, np.float64)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full(n, fill, dtype=dtype))

    def __len__(self) -> int:
        return len(self.request_ids)

    @property
    def completed(self) -> np.ndarray:
        return ~self.rejected & np.isfinite(self.finish_s)

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        """(finish - first token) / (generated - 1); NaN for single-token outputs."""
        n = self.generated.astype(np.float64) - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(n > 0, (self.finish_s - self.first_token_s) / n, np.nan)

    @property
    def kv_transfer_s(self) -> np.ndarray:
        """Duration of each request's KV transfer (NaN where there was none)."""
        return self.kv_transfer_end_s - self.kv_transfer_start_s

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, eq=False)
class SimResult:
    """What :func:`~apex_opt.sim.run_simulation` returns.

    ``records`` holds per-request results; ``summary()`` a flat dict of scalars; ``series`` downsampled time
    series (``t_s``, ``queue_len``, ``running``, ``batch_size``: 256 time bins; queue and running are exact bin
    means, batch size is binned by iteration start) for plotting; ``per_replica`` one dict per replica (requests,
    completed, rejected, output_tokens, preemptions, busy_fraction, stage_busy_fraction, energy_j, family, pp);
    ``log`` the request-level event log when ``record_log=True``: tuples ``(request_id, event, time_s, detail)``
    with event in arrive (detail: replica), reject (reason), prefill (chunk tokens), first_token (None), preempt
    (tokens generated so far), finish (tokens generated); ``iterations`` the iteration log ``(replica, engine,
    start_s, duration_s, steps, prefill_tokens, decodes)``, where ``steps > 1`` is a closed-form run of identical
    decode steps (so the iteration log, unlike the request log, differs with ``skip_ahead``).

    Summary keys
    ------------
    Counts: ``num_requests``, ``num_completed``, ``num_rejected``, ``num_truncated``, ``num_preemptions``,
    ``output_tokens``, ``prompt_tokens``.
    Time: ``makespan_s`` (first arrival -> last finish, or the end of the last engine step if later: under async
    output processing a finished request runs one more step).
    Latency (seconds, completed requests): ``ttft_{mean,p50,p90,p95,p99}_s``, ``tpot_*_s`` (per request),
    ``itl_*_s`` (token-weighted over all inter-token gaps), ``e2e_*_s``; reference aggregates ``ttft_ms_mean``,
    ``tpot_ms``, ``itl_ms``, ``e2e_s_mean``.
    Throughput: ``throughput_output_tok_s``, ``throughput_total_tok_s``, ``throughput_req_s``.
    Prefix caching (when a replica caches prefixes): ``prefix_cache_hit_rate``, prompt tokens found in the cache /
    prompt tokens, over completed requests (0 when the workload has no ``segments``: every prompt is unique).
    Speculative decoding (when a replica speculates): ``spec_tokens_per_step``, tokens emitted per verify step,
    bonus token included.
    Load: ``batch_size_mean`` (sequences per iteration, weighted by iteration time), ``batch_size_max``,
    ``queue_len_mean``/``queue_len_max`` (waiting requests, whole cluster, time-weighted over the makespan),
    ``running_mean``/``running_max``, ``kv_util_mean`` (time-weighted), ``kv_util_max``.
    Hardware: ``mfu``, ``mbu`` (NaN if a stage lacks ``peak_flops``/``peak_bandwidth``), ``busy_fraction``,
    ``energy_j`` (busy + idle), ``energy_per_output_token_j``, ``gpus``, ``gpu_hours``, ``cost_usd`` and
    ``cost_per_mtok_usd`` (USD per million output tokens; NaN without a price).
    SLO (with ``slo``): ``slo_attainment`` (share of all requests with TTFT <= ttft and TPOT <= tpot [and e2e <=
    e2e]), ``goodput_req_s`` (attaining requests / makespan), ``goodput_per_gpu_req_s``, ``slo_ttft_value_s``,
    ``slo_tpot_value_s``,
    ``slo_e2e_value_s`` (the bounded statistics), ``slo_met`` (every bounded statistic within its bound and
    attainment >= target).
    """

    records: RequestRecords
    summary_values: dict[str, Any]
    series: dict[str, np.ndarray] = field(default_factory=dict)
    per_replica: tuple[dict[str, Any], ...] = ()
    log: tuple[tuple, ...] | None = None
    iterations: tuple[tuple, ...] | None = None

    def summary(self) -> SimSummary:
        """The summary as a typed record (:class:`~apex_opt.sim.summary.SimSummary`; see the class docstring for
        the keys), named as in :mod:`apex_opt.metrics`, with the derived ``goodput_per_gpu_req_s`` and
        ``cost_per_mtok_usd`` (earlier spellings such as ``cost`` stay readable for one release, with a
        DeprecationWarning)."""
        return SimSummary.of(self.summary_values).with_derived()

    def __getitem__(self, key: str) -> Any:
        return self.summary()[key]


def slo_fields(slo: Any) -> SLOTarget | None:
    """Normalise any SLO-like object to :class:`SLOTarget` (``None`` stays ``None``)."""
    if slo is None:
        return None
    if all(getattr(slo, bound, None) is None for bound in ("ttft", "tpot", "e2e")):
        return None  # no latency bound: attainment is undefined, not 100%
    if isinstance(slo, SLOTarget):
        return slo
    return SLOTarget(
        ttft=getattr(slo, "ttft", None), tpot=getattr(slo, "tpot", None),
        ttft_stat=getattr(slo, "ttft_stat", "mean"), tpot_stat=getattr(slo, "tpot_stat", "mean"),
        attainment=float(getattr(slo, "attainment", 0.9)),
        e2e=getattr(slo, "e2e", None), e2e_stat=getattr(slo, "e2e_stat", "mean"),
    )


def latency_summary(rec: RequestRecords, itl_vals: np.ndarray, itl_wts: np.ndarray, itl_segs: np.ndarray,
                    makespan: float, slo: SLOTarget | None) -> dict[str, Any]:
    """The latency, throughput and SLO part of the summary."""
    out: dict[str, Any] = {}
    done = rec.completed
    ttft = rec.ttft_s[done]
    e2e = rec.e2e_s[done]
    tpot = rec.tpot_s[done]
    tpot = tpot[np.isfinite(tpot)]
    gen = rec.generated[done]
    out["num_requests"] = len(rec)
    out["num_completed"] = int(done.sum())
    out["num_rejected"] = int(rec.rejected.sum())
    out["num_truncated"] = int(rec.truncated.sum())
    out["num_preemptions"] = int(rec.preemptions.sum())
    out["output_tokens"] = int(rec.generated.sum())
    out["prompt_tokens"] = int(rec.prompt_tokens[done].sum())
    out["makespan_s"] = makespan
    _describe("ttft", ttft, out)
    _describe("tpot", tpot, out)
    _describe("e2e", e2e, out)
    itl_mean = math.nan
    segs = itl_segs.reshape(-1, 5) if itl_segs.size else np.zeros((0, 5))
    seg_w = segs[:, 4] * (segs[:, 3] - segs[:, 2] + 1)
    total_w = float(itl_wts.sum() + seg_w.sum())
    if total_w > 0:
        seg_sum = float((segs[:, 4] * (segs[:, 0] * (segs[:, 3] - segs[:, 2] + 1)
                                       + segs[:, 1] * (segs[:, 3] * (segs[:, 3] + 1) - (segs[:, 2] - 1) * segs[:, 2])
                                       / 2)).sum())
        itl_mean = (float((itl_vals * itl_wts).sum()) + seg_sum) / total_w
    out["itl_mean_s"] = itl_mean
    for s, v in zip(("p50", "p90", "p95", "p99"),
                    weighted_quantiles(itl_vals, itl_wts, itl_segs, (0.5, 0.9, 0.95, 0.99)), strict=True):
        out[f"itl_{s}_s"] = v
    itl_sum = float(((rec.finish_s - rec.first_token_s) - rec.stall_s)[done].sum())
    out["ttft_ms_mean"] = out["ttft_mean_s"] * 1e3
    out["tpot_ms"] = itl_sum / gen.sum() * 1e3 if gen.sum() > 0 else math.nan
    denom = (gen - 1).sum()
    out["itl_ms"] = itl_sum / denom * 1e3 if denom > 0 else math.nan
    out["e2e_s_mean"] = out["e2e_mean_s"]
    span = makespan if makespan > 0 else math.nan
    out["throughput_output_tok_s"] = out["output_tokens"] / span
    out["throughput_total_tok_s"] = (out["output_tokens"] + out["prompt_tokens"]) / span
    out["throughput_req_s"] = out["num_completed"] / span
    out.update(load_balance(rec))
    if slo is not None:
        ok = done.copy()
        tt_all = rec.ttft_s
        tp_all = np.where(np.isfinite(rec.tpot_s), rec.tpot_s, 0.0)
        if slo.ttft is not None:
            ok &= tt_all <= slo.ttft
        if slo.tpot is not None:
            ok &= tp_all <= slo.tpot
        if slo.e2e is not None:
            ok &= rec.e2e_s <= slo.e2e
        attain = float(ok.sum()) / len(rec) if len(rec) else math.nan
        out["slo_attainment"] = attain
        out["goodput_req_s"] = float(ok.sum()) / span
        met = attain >= slo.attainment
        for metric, bound, stat, values in (("ttft", slo.ttft, slo.ttft_stat, ttft),
                                            ("tpot", slo.tpot, slo.tpot_stat, tpot),
                                            ("e2e", slo.e2e, slo.e2e_stat, e2e)):
            value = _stat(values, stat) if bound is not None else math.nan
            out[f"slo_{metric}_value_s"] = value
            if bound is not None and not (value <= bound):
                met = False
        out["slo_met"] = bool(met)
    return out


#: the admission queue must grow at this share of the offered rate (and beyond its noise) to call a run saturated
SATURATION_GROWTH = 0.05


def load_balance(rec: RequestRecords) -> dict[str, Any]:
    """Offered vs served load over the arrival window, and whether requests pile up waiting (saturation).

    ``offered_rate_req_s``: arrivals per second between the first and the last arrival. ``served_rate_req_s``:
    completions per second in that window. ``backlog_growth_req_s``: how fast the requests in the system
    (arrived, not finished) grew over the second half of the window; ``queue_growth_req_s``: the same for the
    requests waiting for admission (arrived, not yet scheduled). A plan that keeps up holds its queue near a
    steady length, while its backlog may still be filling: with outputs that take about as long as the
    trace lasts, Little's ``rate x latency`` is only reached at its end. A plan that cannot keep up runs into its
    batch or KV limit and its queue grows for as long as requests arrive. ``saturated`` is true when the queue
    grows by more than ``SATURATION_GROWTH`` of the offered rate and by more than its own Poisson noise
    (``2 sqrt(queue) + 5`` requests).

    >>> import numpy as np
    >>> n = 200
    >>> arrive = np.arange(n, dtype=float)
    >>> def records(scheduled, finish):
    ...     return RequestRecords(tuple(map(str, range(n))), np.zeros(n, int), arrive, scheduled, scheduled + 0.1,
    ...         finish, np.ones(n, int), np.ones(n, int), np.ones(n, int), np.zeros(n, bool), np.zeros(n, bool),
    ...         np.zeros(n, int), np.zeros(n), ("",) * n)
    >>> load_balance(records(arrive, arrive + 0.5))["saturated"]
    False
    >>> long = load_balance(records(arrive, arrive + 150.0))  # admitted at once, each runs 150 s: still filling
    >>> round(long["backlog_growth_req_s"], 2), long["saturated"]
    (0.5, False)
    >>> slow = load_balance(records(2.0 * arrive, 2.0 * arrive + 1.0))  # served at half the offered rate
    >>> round(slow["served_rate_req_s"], 2), slow["saturated"]
    (0.5, True)
    """
    arrive = rec.arrival_s
    n = len(rec)
    if n < 2 or not float(arrive[-1] - arrive[0]) > 0:
        return {"offered_rate_req_s": math.nan, "served_rate_req_s": math.nan, "backlog_growth_req_s": math.nan,
                "queue_growth_req_s": math.nan, "saturated": False}
    t0, t1 = float(arrive[0]), float(arrive[-1])
    finish = np.where(rec.completed | rec.rejected, rec.finish_s, np.inf)
    finish = np.where(rec.rejected, arrive, finish)  # a rejected request leaves at once
    finish = np.sort(np.nan_to_num(finish, nan=np.inf))
    admitted = np.where(rec.rejected, arrive, rec.first_scheduled_s)
    admitted = np.sort(np.nan_to_num(admitted, nan=np.inf))
    tm = (t0 + t1) / 2

    def left_by(t: float, leave: np.ndarray) -> int:
        return int(np.searchsorted(arrive, t, side="right")) - int(np.searchsorted(leave, t, side="right"))

    growth = (left_by(t1, finish) - left_by(tm, finish)) / (t1 - tm)
    q_mid, q_end = left_by(tm, admitted), left_by(t1, admitted)
    q_growth = (q_end - q_mid) / (t1 - tm)
    offered = (n - 1) / (t1 - t0)
    served = (int(np.searchsorted(finish, t1, side="right"))) / (t1 - t0)
    saturated = q_growth > SATURATION_GROWTH * offered and q_end - q_mid > 2.0 * math.sqrt(max(q_mid, 0)) + 5
    return {"offered_rate_req_s": offered, "served_rate_req_s": served, "backlog_growth_req_s": growth,
            "queue_growth_req_s": q_growth, "saturated": bool(saturated)}


def downsample(t: np.ndarray, v: np.ndarray, t0: float, t1: float, bins: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Time-weighted bin means of a step function with value ``v[i]`` from ``t[i]`` to ``t[i+1]`` (last: ``t1``)."""
    if t.size == 0 or not t1 > t0:
        return np.zeros(0), np.zeros(0)
    edges = np.linspace(t0, t1, bins + 1)
    knots = np.concatenate([t, [t1]])
    cum = np.concatenate([[0.0], np.cumsum(v * np.diff(knots))])
    at = np.interp(edges, knots, cum)
    return 0.5 * (edges[:-1] + edges[1:]), np.diff(at) / np.diff(edges)


def load_summary(out: dict[str, Any], *, bs_time: float, bs_weight: float, bs_max: int, q_int: float,
                 r_int: float, q_max: int, r_max: int, kv_int: float, kv_capacity: int, kv_util_max: float,
                 span: float) -> None:
    """Batch size, queue, running and KV-utilisation keys of the summary from the run's time integrals (each
    integral already extended to the end of the run)."""
    out["batch_size_mean"] = bs_time / bs_weight if bs_weight > 0 else 0.0
    out["batch_size_max"] = int(bs_max)
    out["queue_len_mean"] = q_int / span if span > 0 else 0.0
    out["queue_len_max"] = int(q_max)
    out["running_mean"] = r_int / span if span > 0 else 0.0
    out["running_max"] = int(r_max)
    out["kv_util_mean"] = kv_int / (kv_capacity * span) if span > 0 else 0.0
    out["kv_util_max"] = kv_util_max


def _replica_row(r: int, spec: Any, rec: RequestRecords, busy: float, energy: float, stage_busy: list[float],
                 span: float) -> dict[str, Any]:
    """The ``per_replica`` entry of replica ``r``."""
    sel = rec.replica == r
    return {
        "replica": r, "name": spec.name, "family": spec.config.family, "pp": spec.pp,
        "requests": int(sel.sum()), "completed": int((sel & rec.completed).sum()),
        "rejected": int((sel & rec.rejected).sum()), "output_tokens": int(rec.generated[sel].sum()),
        "preemptions": int(rec.preemptions[sel].sum()),
        "busy_fraction": busy / (spec.pp * span) if span > 0 else 0.0, "energy_j": energy,
        "stage_busy_fraction": tuple(stage_busy[s] / span if span > 0 else 0.0 for s in range(spec.pp)),
    }


def _peaks(stage: Any) -> tuple[float, float] | None:
    """``(peak FLOP/s, peak bytes/s)`` of a stage cost model that reports them, else ``None``."""
    pf = getattr(stage, "peak_flops", None)
    pb = getattr(stage, "peak_bandwidth", None)
    if pf is None or pb is None:
        return None
    return pf(), pb()


def hardware_summary(out: dict[str, Any], replicas: Sequence[Any], stages: Sequence[Sequence[Any]],
                     rec: RequestRecords, span: float, price_per_gpu_hour: float | None) -> list[dict[str, Any]]:
    """MFU, MBU, busy fraction, energy (idle power over the unbusy time added) and cost keys of the summary;
    returns the ``per_replica`` rows. ``stages[r][s]`` holds the accumulated ``busy_s``, ``energy_j``,
    ``flops`` and ``bytes`` of stage ``s`` of replica ``r`` (a :class:`~apex_opt.sim.state.StageClock`)."""
    flops = bytes_ = busy = energy = 0.0
    peak_f = peak_b = 0.0
    have_peaks = True
    stage_count = 0
    gpus = 0
    per_replica = []
    for r, spec in enumerate(replicas):
        gpus += spec.gpus
        rep_busy = 0.0
        rep_energy = 0.0
        for s, stage in enumerate(spec.cost.stages):
            sc = stages[r][s]
            flops += sc.flops
            bytes_ += sc.bytes
            busy += sc.busy_s
            rep_busy += sc.busy_s
            e_j = sc.energy_j + stage.idle_power() * max(span - sc.busy_s, 0.0)
            energy += e_j
            rep_energy += e_j
            stage_count += 1
            peaks = _peaks(stage)
            if peaks is None:
                have_peaks = False
            else:
                peak_f += peaks[0]
                peak_b += peaks[1]
        per_replica.append(_replica_row(r, spec, rec, rep_busy, rep_energy,
                                        [stages[r][s].busy_s for s in range(spec.pp)], span))
    out["mfu"] = flops / (peak_f * span) if have_peaks and peak_f > 0 and span > 0 else math.nan
    out["mbu"] = bytes_ / (peak_b * span) if have_peaks and peak_b > 0 and span > 0 else math.nan
    out["busy_fraction"] = busy / (stage_count * span) if span > 0 else 0.0
    out["energy_j"] = energy
    out["energy_per_output_token_j"] = energy / out["output_tokens"] if out["output_tokens"] else math.nan
    out["gpus"] = gpus
    out["gpu_hours"] = gpus * span / 3600.0
    price = price_per_gpu_hour
    out["cost_usd"] = out["gpu_hours"] * price if price is not None else math.nan
    out["cost_per_mtok_usd"] = out["cost_usd"] / out["output_tokens"] * 1e6 if out["output_tokens"] else math.nan
    return per_replica


def time_series(ser_q: np.ndarray, ser_bs: np.ndarray, t_first: float, t_last: float) -> dict[str, np.ndarray]:
    """The ``series`` of a result: queue length, running requests and batch size over 256 time bins.

    ``ser_q`` holds ``(t, waiting, running)`` change points, ``ser_bs`` ``(start, duration, batch size)`` per
    iteration (both flat, as recorded)."""
    series: dict[str, np.ndarray] = {}
    q = ser_q.reshape(-1, 3) if ser_q.size else np.zeros((0, 3))
    tq = np.concatenate([[t_first], q[:, 0]])
    tt, qv = downsample(tq, np.concatenate([[0.0], q[:, 1]]), t_first, t_last)
    _, rv = downsample(tq, np.concatenate([[0.0], q[:, 2]]), t_first, t_last)
    series["t_s"] = tt
    series["queue_len"] = qv
    series["running"] = rv
    b = ser_bs.reshape(-1, 3) if ser_bs.size else np.zeros((0, 3))
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
    return series


__all__ = ["STATS", "RequestRecords", "SLOTarget", "SimResult", "downsample", "hardware_summary", "latency_summary",
           "load_summary", "slo_fields", "time_series", "weighted_quantiles"]
