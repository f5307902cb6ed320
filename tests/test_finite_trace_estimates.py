"""The cost model prices the workload it is given, including how long it lasts.

Little's law (``batch = rate x lifetime``) holds once a trace has run longer than a request lives. A 10,000-request
trace at 200 req/s lasts 50 s, while a request with 1,024 output tokens at 60-90 ms a token lives longer than that:
the simulation of such a trace never reaches the steady batch, and an estimate that assumes it does rules out plans
the simulation verifies. ``WorkloadStats.concurrency`` gives the batch a decoding token sees over the trace's own
span, which is Little's for long traces.
"""

from __future__ import annotations

import math

import pytest

import apex_opt as ax
from apex_opt.planner.solve import Problem
from apex_opt.planner.workload_stats import WorkloadStats


def stats(duration: float) -> WorkloadStats:
    return WorkloadStats(100, 1.0, 100.0, 100.0, 150.0, 100, (100,), 90.0, 200, duration=duration)


def test_a_trace_much_longer_than_a_request_gives_littles_law():
    assert stats(math.inf).concurrency(4.0, 3.0) == 12.0
    assert stats(10_000.0).concurrency(4.0, 3.0) == pytest.approx(12.0, rel=1e-3)


def test_requests_that_outlive_the_trace_pile_up_only_while_it_arrives():
    # arrivals for 10 s, each request in service for 30 s: up to 40 at once, seen by a token as 40 x (1 - 10/90)
    assert stats(10.0).concurrency(4.0, 30.0) == pytest.approx(40.0 * (1 - 10 / 90))
    # a trace as long as a request's life: two thirds of Little's
    assert stats(30.0).concurrency(4.0, 30.0) == pytest.approx(120.0 * 2 / 3)


def test_the_rate_that_puts_a_batch_in_service_inverts_the_concurrency():
    s = stats(10.0)
    assert s.concurrency(s.rate_for(25.0, 30.0), 30.0) == pytest.approx(25.0)


@pytest.mark.parametrize("requests", [200, 4000])
def test_the_estimated_tpot_follows_the_simulation_of_a_short_trace_and_of_a_long_one(requests):
    # 10 req/s of 512 -> 1024 tokens on one H100: 200 requests arrive in 20 s, a request lives about as long
    specs = ax.load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=1, engine="vllm-v1",
                          workload=f"synthetic:rate=10rps,requests={requests},prompt=512,output=1024,seed=0",
                          slo="ttft=2s,tpot=200ms")
    proposal = Problem(specs, workers=1).proposal(tp=1)
    simulated = ax.simulate(specs, proposal.plan).summary()["tpot_mean_s"]
    # measured: 14.6 vs 11.8 ms for the short trace (Little's steady batch would say about 30 ms), 30.4 vs 27.9
    assert proposal.predicted["tpot_mean_s"] == pytest.approx(simulated, rel=0.3)
