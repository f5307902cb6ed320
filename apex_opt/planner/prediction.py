"""What the planner's cost model predicts for a plan: one typed record, named as the metric registry names it.

Every proposal a search makes (:class:`apex_opt.planner.search.Proposal`) and every plan it returns
(:class:`apex_opt.planner.result.RankedPlan`) carries a :class:`Prediction`. Its fields are registered metrics
(:mod:`apex_opt.metrics`, ``docs/metrics.md``) in SI units, so a predicted value and the simulated one share a
name (``tpot_mean_s``, ``slo_attainment``, ...); what only the cost model states (``ttft_tail_s``, ``kv_tokens``,
``fits``, ...) is registered too, in the registry's *prediction* group. A field the cost model did not predict
for a plan is ``None``.

It also reads as a mapping of the fields it has, the form of the JSON output (``"predicted": {...}``):

>>> p = Prediction(fits=True, gpus=2, tpot_mean_s=0.031, goodput_req_s=0.5)
>>> p.tpot_mean_s, p["goodput_req_s"], "ttft_mean_s" in p
(0.031, 0.5, False)
>>> dict(p)
{'fits': True, 'gpus': 2, 'tpot_mean_s': 0.031, 'goodput_req_s': 0.5}
>>> Prediction.of({"fits": True, "speed": 3})
Traceback (most recent call last):
...
apex_opt.errors.SpecError: predicted: no metric 'speed' in a prediction; its fields are fits, gpus, ttft_mean_s, ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..metrics import METRICS, MetricRecord


@dataclass(frozen=True, eq=False)
class Prediction(MetricRecord):
    """The cost model's predictions for one plan or deployment (SI units; ``None``: not predicted)."""

    _what: ClassVar[str] = "a prediction"
    _given_as: ClassVar[str] = "predicted"

    fits: bool = False
    gpus: int | None = None
    ttft_mean_s: float | None = None
    ttft_tail_s: float | None = None
    tpot_mean_s: float | None = None
    slo_attainment: float | None = None
    goodput_req_s: float | None = None
    goodput_per_gpu_req_s: float | None = None
    capacity_req_s: float | None = None
    throughput_output_tok_s: float | None = None
    energy_per_output_token_j: float | None = None
    cost_per_mtok_usd: float | None = None
    batch: float | None = None
    kv_tokens: int | None = None
    kv_needed: int | None = None
    memory_headroom_bytes: float | None = None
    weights_per_gpu_bytes: float | None = None
    prefill_utilisation: float | None = None
    #: mixed-GPU plans: the share of the traffic each GPU kind's replicas take (their router weights)
    traffic_shares: Mapping[str, float] | None = None


_FIELDS = Prediction.field_names()

#: every scalar field is a registered metric (traffic_shares is a table of them, one per GPU kind)
_UNREGISTERED = [name for name in _FIELDS if name not in METRICS and name != "traffic_shares"]
if _UNREGISTERED:  # pragma: no cover - a field added without its registry entry
    raise RuntimeError(f"apex_opt.planner.prediction: {_UNREGISTERED} are not in the metric registry")

__all__ = ["Prediction"]
