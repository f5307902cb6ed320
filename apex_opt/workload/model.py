"""The :class:`Workload`: a request trace held as numpy arrays.

A workload is what the simulator replays and what the planner sizes a deployment for: one
arrival time, one prompt length and one requested output length per request, sorted by
arrival. Arrival times keep the absolute offsets of their source (a trace whose first request
arrives 0.2 s after the trace's clock started keeps ``arrival_s[0] == 0.2``).

The arrays are made read-only on construction, so a workload can be shared between the
planner, the simulator and a cache without copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SpecError

#: ``kind`` values accepted by :meth:`Workload.percentile`.
PERCENTILE_KINDS: tuple[str, ...] = ("prompt", "output", "total", "interarrival")


def _frozen_array(values: Any, dtype: type, field: str) -> np.ndarray:
    """A read-only 1-D copy of ``values`` (no copy if it already is a read-only array of ``dtype``)."""
    if isinstance(values, np.ndarray) and values.dtype == dtype and not values.flags.writeable:
        array = values
    else:
        try:
            raw = np.asarray(values)
            if dtype is np.int64 and raw.dtype.kind == "f" and raw.size and not np.array_equal(raw, np.round(raw)):
                raise ValueError("token counts must be whole numbers")
            array = np.array(raw, dtype=dtype, copy=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SpecError(f"Workload field '{field}': cannot convert to {np.dtype(dtype).name} ({exc})") from None
        array.flags.writeable = False
    if array.ndim != 1:
        raise SpecError(f"Workload field '{field}': expected a 1-D array, got shape {array.shape}")
    return array


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests sorted by arrival: parallel arrays, one entry per request.

    ``eq=False``: two workloads compare (and hash) by identity, because element-wise array
    comparison has no single truth value; compare arrays explicitly when you need to.
    """

    name: str
    arrival_s: np.ndarray  # float64, sorted ascending, seconds on the trace's clock (>= 0)
    prompt_tokens: np.ndarray  # int64 >= 1
    output_tokens: np.ndarray  # int64 >= 1
    request_ids: tuple[str, ...]
    source: str  # file path, catalog name or synthetic expression

    def __post_init__(self) -> None:
        arrival = _frozen_array(self.arrival_s, np.float64, "arrival_s")
        prompt = _frozen_array(self.prompt_tokens, np.int64, "prompt_tokens")
        output = _frozen_array(self.output_tokens, np.int64, "output_tokens")
        ids = tuple(str(r) for r in self.request_ids)
        n = arrival.shape[0]
        if not (prompt.shape[0] == output.shape[0] == len(ids) == n):
            raise SpecError(
                f"Workload '{self.name}': arrays differ in length (arrival_s {n}, prompt_tokens "
                f"{prompt.shape[0]}, output_tokens {output.shape[0]}, request_ids {len(ids)}); "
                "give one entry per request in each"
            )
        if n:
            if not np.isfinite(arrival).all() or arrival[0] < 0:
                raise SpecError(f"Workload '{self.name}': arrival_s must be finite seconds >= 0")
            if n > 1 and (np.diff(arrival) < 0).any():
                i = int(np.flatnonzero(np.diff(arrival) < 0)[0]) + 1
                raise SpecError(
                    f"Workload '{self.name}': arrival_s is not sorted (request {i} arrives at "
                    f"{float(arrival[i])!r}s, before request {i - 1} at {float(arrival[i - 1])!r}s); "
                    "sort requests by arrival"
                )
            for field, array in (("prompt_tokens", prompt), ("output_tokens", output)):
                if array.min() < 1:
                    i = int(np.argmin(array))
                    raise SpecError(
                        f"Workload '{self.name}': {field}[{i}] = {int(array[i])}; token counts must be >= 1"
                    )
        object.__setattr__(self, "arrival_s", arrival)
        object.__setattr__(self, "prompt_tokens", prompt)
        object.__setattr__(self, "output_tokens", output)
        object.__setattr__(self, "request_ids", ids)

    @classmethod
    def from_arrays(
        cls,
        name: str,
        arrival_s: Any,
        prompt_tokens: Any,
        output_tokens: Any,
        request_ids: Any = None,
        source: str = "",
    ) -> Workload:
        """Build a workload from array-likes; request ids default to ``"0", "1", ...``."""
        if request_ids is None:
            request_ids = tuple(str(i) for i in range(len(np.asarray(arrival_s))))
        return cls(name, arrival_s, prompt_tokens, output_tokens, tuple(request_ids), source or name)

    # --- size and rate -------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    def __repr__(self) -> str:
        return (
            f"Workload(name={self.name!r}, requests={len(self)}, rate={self.rate:.3g}/s, "
            f"mean_prompt={self.mean_prompt:.1f}, mean_output={self.mean_output:.1f}, source={self.source!r})"
        )

    @property
    def duration_s(self) -> float:
        """Span of the arrivals: last arrival minus first arrival (0 for fewer than 2 requests)."""
        if len(self) < 2:
            return 0.0
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate(self) -> float:
        """Mean arrival rate over the span, in requests/s: ``(n - 1) / duration_s``.

        This is one over the mean inter-arrival gap. 0.0 for fewer than 2 requests;
        ``inf`` when two or more requests all arrive at the same instant.
        """
        n = len(self)
        if n < 2:
            return 0.0
        span = self.duration_s
        return (n - 1) / span if span > 0 else math.inf

    @property
    def mean_prompt(self) -> float:
        return float(self.prompt_tokens.mean()) if len(self) else 0.0

    @property
    def mean_output(self) -> float:
        return float(self.output_tokens.mean()) if len(self) else 0.0

    @property
    def total_tokens(self) -> int:
        """Sum over requests of prompt + output tokens."""
        return int(self.prompt_tokens.sum() + self.output_tokens.sum())

    def percentile(self, kind: str, p: float) -> float:
        """The ``p``-th percentile (0..100, linear interpolation) of one per-request quantity.

        ``kind``: ``prompt``, ``output``, ``total`` (prompt + output tokens) or
        ``interarrival`` (seconds between consecutive arrivals).
        """
        if kind == "prompt":
            values = self.prompt_tokens
        elif kind == "output":
            values = self.output_tokens
        elif kind == "total":
            values = self.prompt_tokens + self.output_tokens
        elif kind == "interarrival":
            values = np.diff(self.arrival_s)
        else:
            raise SpecError(f"unknown percentile kind '{kind}'; valid kinds: {', '.join(PERCENTILE_KINDS)}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
            raise SpecError(f"percentile p = {p!r} must be a number between 0 and 100 (e.g. 99 for p99)")
        if values.shape[0] == 0:
            return math.nan
        return float(np.percentile(values, p))

    # --- derived workloads ---------------------------------------------------------------

    def head(self, n: int) -> Workload:
        """The first ``n`` requests (all of them if ``n >= len(self)``); arrival offsets unchanged."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise SpecError(f"head(n): n = {n!r} must be an integer >= 0")
        n = int(n)
        return Workload(
            self.name,
            self.arrival_s[:n],
            self.prompt_tokens[:n],
            self.output_tokens[:n],
            self.request_ids[:n],
            self.source,
        )

    def scaled(self, rate_factor: float) -> Workload:
        """The same requests with every arrival time divided by ``rate_factor``.

        ``rate_factor=2`` compresses the trace in time, doubling its rate (and halving the first
        arrival's offset); token counts are unchanged. Planners use this to probe load levels.
        """
        if isinstance(rate_factor, bool) or not isinstance(rate_factor, (int, float, np.floating, np.integer)):
            raise SpecError(f"scaled(rate_factor): {rate_factor!r} is not a number; write e.g. 2.0 for twice the rate")
        factor = float(rate_factor)
        if not (math.isfinite(factor) and factor > 0):
            raise SpecError(
                f"scaled(rate_factor): {rate_factor!r} must be a finite number > 0, e.g. 2.0 for twice the rate"
            )
        return Workload(
            self.name,
            self.arrival_s / factor,
            self.prompt_tokens,
            self.output_tokens,
            self.request_ids,
            self.source,
        )

    def with_rate(self, rate: float) -> Workload:
        """The same requests rescaled in time so that :attr:`rate` equals ``rate`` (requests/s)."""
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)):
            raise SpecError(f"with_rate(rate): {rate!r} is not a number of requests/s")
        rate = float(rate)
        current = self.rate
        if not (math.isfinite(rate) and rate > 0):
            raise SpecError(f"with_rate(rate): {rate!r} must be a finite number of requests/s > 0")
        if not (math.isfinite(current) and current > 0):
            raise SpecError(f"with_rate: workload '{self.name}' has no finite arrival rate to rescale (rate {current})")
        return self.scaled(rate / current)

    def summary(self) -> dict[str, Any]:
        """Plain-Python description (JSON-serialisable): counts, rate, token statistics."""
        n = len(self)
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "requests": n,
            "first_arrival_s": float(self.arrival_s[0]) if n else 0.0,
            "duration_s": self.duration_s,
            "rate_rps": self.rate,
            "mean_prompt": self.mean_prompt,
            "mean_output": self.mean_output,
            "total_tokens": self.total_tokens if n else 0,
        }
        for kind in ("prompt", "output"):
            for p in (50, 90, 99):
                out[f"p{p}_{kind}"] = self.percentile(kind, p) if n else math.nan
            values = self.prompt_tokens if kind == "prompt" else self.output_tokens
            out[f"max_{kind}"] = int(values.max()) if n else 0
        return out


__all__ = ["PERCENTILE_KINDS", "Workload"]
