"""Verify a plan of many identical replicas by simulating a few of them: exact for every request it simulates.

With the round-robin router and identical replicas (one :class:`~apex_opt.schema.plan.Plan`), request ``k`` goes
to replica ``k mod dp`` whatever the replicas are doing, and replicas share nothing else: each has its own
scheduler, KV cache and prefix cache. Replica ``i`` therefore serves its requests exactly as it would in a
simulation of all ``dp`` replicas when it is simulated alone with them. A verification that needs
``min_requests`` requests to judge a plan (the SLO attainment of ``n`` requests has a standard error of at most
``0.5 / sqrt(n)``: 1.1% at 2,000) simulates the plan's first ``s`` replicas, the fewest whose requests number at
least ``min_requests``, on the requests routed to them. Latencies, shares, per-GPU and per-token metrics are those
of the sample; totals and rates of the whole deployment (:attr:`apex_opt.metrics.Metric.extensive`) are scaled
by ``dp / s``; the cluster-wide maxima (most requests queued at once) are left out, as a sample cannot tell them.

The simulation's cost then follows ``min_requests`` and the load per replica, not the size of the cluster or the
total request rate: this is what bounds a 10k-request verification on 1,024 GPUs (``docs/scale.md``).

Simulated whole, because a sample would not be exact: wide expert parallelism (``dp_attention``: the data-parallel
attention ranks share one expert group across all of them), disaggregated deployments (the decode router picks the
least-loaded instance), speculative decoding (the acceptance draws come from one stream shared by every replica,
in event order), latencies measured at the client (one API server works through the streams of every replica),
and plans whose workload is no larger than the sample would be.

>>> import apex_opt as ax
>>> specs = ax.load_specs(workload="synthetic:rate=80rps,requests=8000,prompt=512,output=64,seed=0")
>>> plan = ax.Plan(tp=1, dp=16, gpu="h100-sxm-80gb", engine="vllm-0.6")
>>> s = replica_sample(plan, specs, 2000)
>>> s.replicas, s.of, len(s.index), s.index[:6].tolist()
(4, 16, 2000, [0, 1, 2, 3, 16, 17])
>>> replica_sample(plan, specs, None) is None, replica_sample(plan, specs, 8000) is None
(True, True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics import CLUSTER_MAXIMA, METRICS
from ..schema.plan import Deployment, Plan
from ..sim.summary import SimSummary
from ..specs import Specs

#: requests a verification simulates at least, by default (``solve(verify_requests=...)``; module docstring)
VERIFY_REQUESTS = 2000


@dataclass(frozen=True)
class ReplicaSample:
    """The first ``replicas`` of a plan's ``of`` replicas, and the positions of the requests routed to them."""

    replicas: int
    of: int
    index: np.ndarray

    @property
    def factor(self) -> float:
        """How many times larger the whole deployment is than the sample."""
        return self.of / self.replicas


def replica_sample(plan: Plan | Deployment, specs: Specs, min_requests: int | None) -> ReplicaSample | None:
    """The replicas to simulate for ``plan`` to cover ``min_requests`` requests, or None to simulate them all."""
    if min_requests is None or not isinstance(plan, Plan) or plan.dp <= 1 or plan.speculative is not None:
        return None
    if plan.dp_attention:  # its dp ranks share the MoE layers: the expert group spans all of them
        return None
    if getattr(specs.slo, "measured_at", "engine") != "engine":
        return None
    n = len(specs.workload)
    replicas = min(plan.dp, math.ceil(min_requests * plan.dp / n)) if n else plan.dp
    if replicas >= plan.dp:
        return None
    index = np.flatnonzero(np.arange(n) % plan.dp < replicas)
    return ReplicaSample(replicas, plan.dp, index)


def sampled(plan: Plan, specs: Specs, sample: ReplicaSample) -> tuple[Plan, Specs]:
    """The plan and the specs the sample is simulated with: ``sample.replicas`` replicas and their requests."""
    return (plan.model_copy(update={"dp": sample.replicas}),
            dataclasses.replace(specs, workload=specs.workload.subset(sample.index)))


def scaled_up(summary: Mapping[str, Any], sample: ReplicaSample) -> SimSummary:
    """A sample's summary as the whole deployment's: extensive metrics times ``sample.factor``, cluster-wide
    maxima left out, and ``replicas_simulated`` recorded."""
    record = SimSummary.of(summary)
    factor = sample.factor
    changes: dict[str, Any] = {}
    for key, value in record.items():
        metric = METRICS.get(key)
        if metric is None or not metric.extensive or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        changes[key] = round(value * factor) if isinstance(value, int) else value * factor
    changes.update(dict.fromkeys(CLUSTER_MAXIMA), replicas_simulated=sample.replicas)
    return record.replace(**changes)


__all__ = ["VERIFY_REQUESTS", "ReplicaSample", "replica_sample", "sampled", "scaled_up"]
