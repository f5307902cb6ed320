"""What a simulation measured: one typed record, named as the metric registry names it.

``SimResult.summary()`` returns a :class:`SimSummary`, and so does every simulated plan of a solve
(:attr:`apex_opt.planner.result.RankedPlan.simulated`), a comparison's plans and a capacity search's trials. Its
fields are the registered metrics (:mod:`apex_opt.metrics`, ``docs/metrics.md``) a simulation can report, every
one outside the registry's *prediction* group, in SI units; a field the simulation did not report (no SLO, no
prefix caching, an aggregated plan's KV transfers, ...) is ``None``. Besides the metrics it records
``measured_at``: where the latencies were stamped (``"engine"`` or ``"client"``), a description of the run rather
than a quantity.

It also reads as a mapping of the fields it has, in the order the simulator reports them (the form of the JSON
output), and compares equal to a dict of the same items:

>>> s = SimSummary(num_requests=10, ttft_mean_s=0.12, slo_met=True)
>>> s.ttft_mean_s, s["num_requests"], "tpot_mean_s" in s, s.tpot_mean_s is None
(0.12, 10, False, True)
>>> dict(s)
{'num_requests': 10, 'ttft_mean_s': 0.12, 'slo_met': True}
>>> s == {"num_requests": 10, "ttft_mean_s": 0.12, "slo_met": True}
True
>>> s.replace(ttft_mean_s=0.2).ttft_mean_s
0.2
>>> SimSummary.of({"ttft_mean_s": 0.1, "speed": 3})
Traceback (most recent call last):
...
apex_opt.errors.SpecError: simulated: no metric 'speed' in a simulation summary; its fields are num_requests, ...

Earlier spellings (``goodput_rps``, ``cost``, ...: :data:`apex_opt.metrics.FORMERLY`) stay readable for one
release, with a ``DeprecationWarning``, and are accepted by :meth:`SimSummary.of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..metrics import METRICS, MetricRecord, derived_metrics


# Field order is the order the simulator reports its keys (apex_opt.sim.metrics.latency_summary, load_balance,
# the SLO keys; the recorder's prefix-cache, measured_at and speculation keys; load_summary; hardware_summary;
# the disaggregated KV-transfer keys; a cut run's keys; then the derived metrics and a sampled verification's
# replicas_simulated), so that iterating a summary, its JSON and its tables keep the order they always had
# (tests/test_simulated_record.py checks it against real runs).
@dataclass(frozen=True, eq=False)
class SimSummary(MetricRecord):
    """What one simulation measured (SI units; ``None``: not reported)."""

    _what: ClassVar[str] = "a simulation summary"
    _given_as: ClassVar[str] = "simulated"

    # counts and time
    num_requests: int | None = None
    num_completed: int | None = None
    num_rejected: int | None = None
    num_truncated: int | None = None
    num_preemptions: int | None = None
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    makespan_s: float | None = None
    # latency
    ttft_mean_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    ttft_p95_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_mean_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p90_s: float | None = None
    tpot_p95_s: float | None = None
    tpot_p99_s: float | None = None
    e2e_mean_s: float | None = None
    e2e_p50_s: float | None = None
    e2e_p90_s: float | None = None
    e2e_p95_s: float | None = None
    e2e_p99_s: float | None = None
    itl_mean_s: float | None = None
    itl_p50_s: float | None = None
    itl_p90_s: float | None = None
    itl_p95_s: float | None = None
    itl_p99_s: float | None = None
    # the reference aggregates (the units of the measured data)
    ttft_ms_mean: float | None = None
    tpot_ms: float | None = None
    itl_ms: float | None = None
    e2e_s_mean: float | None = None
    # throughput and offered/served load
    throughput_output_tok_s: float | None = None
    throughput_total_tok_s: float | None = None
    throughput_req_s: float | None = None
    offered_rate_req_s: float | None = None
    served_rate_req_s: float | None = None
    backlog_growth_req_s: float | None = None
    queue_growth_req_s: float | None = None
    saturated: bool | None = None
    # SLO
    slo_attainment: float | None = None
    goodput_req_s: float | None = None
    slo_ttft_value_s: float | None = None
    slo_tpot_value_s: float | None = None
    slo_e2e_value_s: float | None = None
    slo_met: bool | None = None
    # prefix caching, where the latencies were stamped, speculation
    prefix_cache_hit_rate: float | None = None
    #: not a metric: "engine" or "client", where the run's latencies were stamped
    measured_at: str | None = None
    spec_tokens_per_step: float | None = None
    # load
    batch_size_mean: float | None = None
    batch_size_max: int | None = None
    queue_len_mean: float | None = None
    queue_len_max: int | None = None
    running_mean: float | None = None
    running_max: int | None = None
    kv_util_mean: float | None = None
    kv_util_max: float | None = None
    # hardware, energy and cost
    mfu: float | None = None
    mbu: float | None = None
    busy_fraction: float | None = None
    energy_j: float | None = None
    energy_per_output_token_j: float | None = None
    gpus: int | None = None
    gpu_hours: float | None = None
    cost_usd: float | None = None
    cost_per_mtok_usd: float | None = None
    # disaggregated serving
    num_kv_transfers: int | None = None
    kv_transfer_bytes: float | None = None
    kv_transfer_mean_s: float | None = None
    kv_transfer_p50_s: float | None = None
    kv_transfer_p99_s: float | None = None
    kv_transfer_wait_mean_s: float | None = None
    # a run cut once its SLO verdict was decided
    cut_at_s: float | None = None
    num_slo_missed: int | None = None
    # derived from the others and the plan
    goodput_per_gpu_req_s: float | None = None
    # a verification that simulated a sample of identical replicas (apex_opt.planner.sampling)
    replicas_simulated: int | None = None
    # what a capacity search finds by simulation (apex_opt.capacity), and the plan's price
    capacity_req_s: float | None = None
    per_replica_capacity_req_s: float | None = None
    cost_per_hour_usd: float | None = None

    def with_derived(self, gpus: int | None = None) -> SimSummary:
        """This summary with the metrics derived from others filled in where missing: ``gpus`` (given),
        ``goodput_per_gpu_req_s`` and ``cost_per_mtok_usd`` (:func:`apex_opt.metrics.derived_metrics`)."""
        changes = derived_metrics(self, gpus)
        return self.replace(**changes) if changes else self


_FIELDS = SimSummary.field_names()
#: fields that describe the run rather than measure it (not in the metric registry)
DESCRIPTIVE: tuple[str, ...] = ("measured_at",)

#: every field but the descriptive ones is a registered metric outside the prediction group, and every such metric
#: is a field (tests/test_simulated_record.py checks it too)
_DRIFT = ({n for n in _FIELDS if n not in DESCRIPTIVE}
          ^ {n for n, m in METRICS.items() if m.group != "prediction"})
if _DRIFT:  # pragma: no cover - a field added without its registry entry, or a metric without its field
    raise RuntimeError(f"apex_opt.sim.summary: {sorted(_DRIFT)} differ between SimSummary and the metric registry")

__all__ = ["DESCRIPTIVE", "SimSummary"]
