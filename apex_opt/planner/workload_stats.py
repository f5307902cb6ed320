"""The few numbers of a workload the planner's cost model uses (:class:`WorkloadStats`): its rate and mean lengths,
the prompt and output quantiles, how long it lasts, and the batch a decoding token sees over that span."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from ..errors import SpecError
from ..schema.slo import SLO
from ..workload import Workload


@dataclass(frozen=True)
class WorkloadStats:
    """The few numbers of a workload the analytical bounds use."""

    requests: int
    rate: float  # requests/s
    mean_prompt: float
    mean_output: float
    #: time-average context of a decoding sequence (output-weighted mean of prompt + output/2)
    ctx_occupancy: float
    #: prompt length at the SLO attainment quantile ("the workload's long prompts")
    long_prompt: int
    #: prompt lengths at the 5th, 15th, ..., 95th percentiles (the mean TTFT averages over them)
    prompt_deciles: tuple[int, ...]
    quantile: float  # that quantile, in percent
    max_request_tokens: int  # longest prompt + output
    #: every prompt length, sorted (the share of requests within a TTFT bound is read off it)
    prompts_sorted: tuple[int, ...] = ()
    #: seconds from the first arrival to the last (inf: a workload that arrives for ever)
    duration: float = math.inf
    #: output lengths at the 5th, 15th, ..., 95th percentiles (the TPOT share averages over them; empty: the mean)
    output_deciles: tuple[int, ...] = ()

    def concurrency(self, rate: float, lifetime: float) -> float:
        """Requests in service that a decoding token sees on average, when ``rate`` requests/s arrive over
        :attr:`duration` seconds and each is served for ``lifetime`` seconds.

        In service at time ``t`` are those arrived in the last ``lifetime`` seconds: the count climbs for
        ``a = min(duration, lifetime)`` seconds to ``rate * a``, holds until ``b = max(duration, lifetime)``, and falls
        back to zero in ``a`` more. Tokens come out in proportion to that count, so the count a token sees is its
        mean weighted by itself, ``rate * a * (1 - a / (3 b))``: Little's ``rate * lifetime`` for a trace that lasts
        much longer than a request, and less when requests outlive the trace (they pile up only while it
        arrives; a simulation of the trace never reaches the steady batch).

        >>> stats = WorkloadStats(100, 1.0, 100.0, 100.0, 150.0, 100, (100,), 90.0, 200, duration=10.0)
        >>> stats.concurrency(1.0, 1.0), round(stats.concurrency(1.0, 30.0), 3)  # 1 - 1/30; 10 x (1 - 10/90)
        (0.9666666666666667, 8.889)
        """
        a, b = min(self.duration, lifetime), max(self.duration, lifetime)
        if not (a > 0 and math.isfinite(a)):
            return rate * lifetime if a > 0 else 0.0
        return rate * a * (1.0 - a / (3.0 * b))

    def rate_for(self, batch: float, lifetime: float) -> float:
        """The arrival rate at which :meth:`concurrency` is ``batch`` (its inverse in the rate)."""
        per_rate = self.concurrency(1.0, lifetime)
        return batch / per_rate if per_rate > 0 else math.inf

    def share_at_most(self, prompt: int) -> float:
        """Share of requests whose prompt has at most ``prompt`` tokens."""
        return bisect.bisect_right(self.prompts_sorted, prompt) / max(len(self.prompts_sorted), 1)

    @classmethod
    def of(cls, workload: Workload, slo: SLO | None = None) -> WorkloadStats:
        n = len(workload)
        if n == 0:
            raise SpecError(f"workload '{workload.name}' has no requests; the planner needs at least one")
        rate = workload.rate
        span = float(workload.arrival_s[-1] - workload.arrival_s[0]) if n > 1 else 0.0
        if not math.isfinite(rate) or rate <= 0:
            # one request, or all at once: size for the whole trace arriving within a second
            rate = float(max(n, 1))
        # the arrivals' span as the rate counts it: n requests at `rate` arrive over n / rate seconds
        duration = n / rate if span > 0 else 1.0
        prompt = workload.prompt_tokens.astype(float)
        output = workload.output_tokens.astype(float)
        occupancy = float(np.sum(output * (prompt + output / 2.0)) / max(np.sum(output), 1.0))
        q = 90.0 if slo is None else min(99.9, max(50.0, slo.attainment * 100.0))
        return cls(
            requests=n,
            rate=float(rate),
            mean_prompt=float(prompt.mean()),
            mean_output=float(output.mean()),
            ctx_occupancy=occupancy,
            long_prompt=math.ceil(workload.percentile("prompt", q)),
            prompt_deciles=tuple(max(round(workload.percentile("prompt", p)), 1) for p in range(5, 100, 10)),
            quantile=q,
            max_request_tokens=int((workload.prompt_tokens + workload.output_tokens).max()),
            prompts_sorted=tuple(int(x) for x in np.sort(workload.prompt_tokens)),
            duration=duration,
            output_deciles=tuple(max(round(workload.percentile("output", p)), 1) for p in range(5, 100, 10)),
        )


__all__ = ["WorkloadStats"]
