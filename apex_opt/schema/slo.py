"""Service-level objectives and their grammar.

``ttft=200ms,tpot=50ms`` bounds the means; ``ttft.p99=1s,tpot.p90=60ms,attainment=95%`` bounds
percentiles and sets the share of requests that must meet both per-request thresholds.

>>> s = parse_slo("ttft=200ms,tpot=50ms")
>>> s.ttft, s.ttft_stat, s.tpot, s.attainment
(0.2, 'mean', 0.05, 0.9)
>>> parse_slo("ttft.p99=1s,tpot.p90=60ms,attainment=95%").describe()
'ttft.p99<=1s, tpot.p90<=60.0ms, attainment>=95%'
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, field_validator

from ..errors import SpecError, shorten
from ..units import format_time, parse_fraction, parse_time
from .base import Spec

Stat = Literal["mean", "p50", "p90", "p95", "p99"]
_STATS = ("mean", "p50", "p90", "p95", "p99")
_METRICS = ("ttft", "tpot", "e2e")


class SLO(Spec):
    """Latency bounds (seconds) with the statistic each applies to, and the attainment target.

    A request *attains* when its TTFT <= ``ttft`` and its TPOT <= ``tpot`` (and e2e <= ``e2e`` if set).
    A plan *meets* the SLO when every bounded statistic holds and the attaining share >= ``attainment``.
    """

    ttft: float | None = Field(default=None, gt=0)
    ttft_stat: Stat = "mean"
    tpot: float | None = Field(default=None, gt=0)
    tpot_stat: Stat = "mean"
    e2e: float | None = Field(default=None, gt=0)
    e2e_stat: Stat = "mean"
    attainment: float = Field(default=0.9, ge=0, le=1)
    #: where the bounds are measured: the engine's own timings, or a benchmark client's (API server,
    #: tokenisation and streaming included; ``apex_opt.sim.client``)
    measured_at: Literal["engine", "client"] = "engine"

    @field_validator("ttft", "tpot", "e2e")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and math.isnan(v):
            raise ValueError("must be a number")
        return v

    def describe(self) -> str:
        parts = []
        for metric in _METRICS:
            bound = getattr(self, metric)
            if bound is not None:
                parts.append(f"{metric}.{getattr(self, metric + '_stat')}<={format_time(bound)}".replace(".mean", ""))
        parts.append(f"attainment>={self.attainment * 100:.0f}%")
        return ", ".join(parts) + (" (at the client)" if self.measured_at == "client" else "")

    @property
    def is_empty(self) -> bool:
        return self.ttft is None and self.tpot is None and self.e2e is None


_ITEM = re.compile(r"^\s*([a-z2]+)(?:\.([a-z0-9]+))?\s*=\s*(.+?)\s*$")


def parse_slo(text: str | None) -> SLO:
    """Parse the SLO grammar used by ``--slo`` (see the module docstring)."""
    if text is not None and not isinstance(text, str):
        raise SpecError(f"slo {shorten(text)} is a {type(text).__name__}; give a string such as "
                        "'ttft=200ms,tpot=50ms' or an SLO(...)")
    if text is None or not text.strip():
        return SLO()
    values: dict[str, object] = {}
    seen: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        match = _ITEM.match(item)
        if not match:
            raise SpecError(
                f"{{slo}} item {shorten(item.strip())} is not of the form metric[.stat]=value; "
                "write e.g. ttft=200ms,tpot.p90=50ms,attainment=95%", option="slo"
            )
        metric, stat, raw = match.groups()
        if metric in seen:
            raise SpecError(f"{{slo}} bounds '{metric}' twice ({shorten(seen[metric])} and {shorten(item.strip())}); "
                            f"give one bound per metric, e.g. {seen[metric]}", option="slo")
        seen[metric] = item.strip()
        if metric == "attainment":
            if stat:
                raise SpecError(f"{{slo}} 'attainment' takes no statistic (got {shorten('attainment.' + stat)}); "
                                "write attainment=95%", option="slo")
            values["attainment"] = parse_fraction(raw)
            continue
        if metric not in _METRICS:
            raise SpecError(
                f"{{slo}} metric {shorten(metric)} is unknown; use ttft, tpot, e2e or attainment "
                "(e.g. ttft=200ms,tpot=50ms)", option="slo"
            )
        stat = stat or "mean"
        if stat not in _STATS:
            raise SpecError(f"{{slo}} statistic {shorten(metric + '.' + stat)} is unknown; use one of "
                            f"{', '.join(_STATS)}", option="slo")
        if not re.search(r"[a-zµ]\s*$", raw):
            raise SpecError(f"{{slo}} value {shorten(metric + '=' + raw)} has no unit; write e.g. "
                            f"{metric}={raw if len(raw) <= 20 else '200'}ms", option="slo")
        try:
            seconds = parse_time(raw)
        except SpecError as exc:
            raise SpecError(f"{{slo}} value {shorten(metric + '=' + raw)}: {exc}", option="slo") from None
        if seconds <= 0:
            raise SpecError(f"{{slo}} value {shorten(metric + '=' + raw)} must be positive; write e.g. {metric}=200ms",
                            option="slo")
        values[metric] = seconds
        values[f"{metric}_stat"] = stat
    if "attainment" in values and not any(m in values for m in _METRICS):
        raise SpecError(f"{{slo=}}{shorten(text.strip())} sets an attainment target with no latency bound, so no "
                        "request could miss it; add the bounds it applies to, e.g. "
                        f"ttft=200ms,tpot=50ms,{seen['attainment']}", option="slo")
    try:
        return SLO.parse(values, source="{slo}", kind="SLO")
    except SpecError as exc:  # the option as the caller spells it: slo in Python, --slo on the command line
        raise SpecError(str(exc), option="slo") from None
