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

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..metrics import FORMERLY, METRICS, warn_renamed


@dataclass(frozen=True)
class Prediction(Mapping[str, Any]):
    """The cost model's predictions for one plan or deployment (SI units; ``None``: not predicted)."""

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

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Prediction:
        """A prediction from a mapping of its fields (earlier spellings such as ``attainment`` accepted)."""
        if isinstance(values, Prediction):
            return values
        fields: dict[str, Any] = {}
        for key, value in values.items():
            name = key if key in _FIELDS else FORMERLY.get(key, key)
            if name not in _FIELDS:
                raise SpecError(f"predicted: no metric '{key}' in a prediction; its fields are "
                                f"{', '.join(_FIELDS)} (apex_opt.planner.prediction.Prediction)")
            if name == key or name not in values:
                fields[name] = value
        return cls(**fields)

    def replace(self, **changes: Any) -> Prediction:
        """This prediction with ``changes`` to its fields."""
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------------------------------- as a mapping
    def __getitem__(self, key: str) -> Any:
        name = key if key in _FIELDS else FORMERLY.get(key, "")
        value = getattr(self, name) if name in _FIELDS else None
        if value is None:
            raise KeyError(key)
        if name != key:
            warn_renamed(key, name)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name in _FIELDS if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __getattr__(self, name: str) -> Any:  # only called for names that are not fields: earlier spellings
        new = FORMERLY.get(name)
        if new is None or new not in _FIELDS or name.startswith("__"):
            raise AttributeError(f"no metric '{name}' in a prediction; its fields are {', '.join(_FIELDS)}")
        warn_renamed(name, new)
        return getattr(self, new)


_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Prediction))

#: every scalar field is a registered metric (traffic_shares is a table of them, one per GPU kind)
_UNREGISTERED = [name for name in _FIELDS if name not in METRICS and name != "traffic_shares"]
if _UNREGISTERED:  # pragma: no cover - a field added without its registry entry
    raise RuntimeError(f"apex_opt.planner.prediction: {_UNREGISTERED} are not in the metric registry")

__all__ = ["Prediction"]
