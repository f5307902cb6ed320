"""The estimated SLO attainment counts the requests whose *own* TPOT is within the bound, not the mean's.

A request's TPOT is its decode time over its output's gaps. The requests of a trace's busiest stretch, those whose
lives see many prompts arrive, and short outputs decode slower than the mean TPOT, so a plan whose mean TPOT is just
under the bound loses requests the old estimate (every request at the mean) counted as met. The Kimi-K2 tp4 pp4
plans of ``docs/scale.md`` were estimated at 100% and simulated below 90%; the model is in
:meth:`apex_opt.planner.estimates.Estimator._tpot_share`.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import apex_opt as ax
from apex_opt.planner.attainment import TpotSpread
from apex_opt.planner.estimates import Estimator, Menu, ShapeKey
from apex_opt.planner.solve import Problem
from apex_opt.planner.workload_stats import WorkloadStats
from apex_opt.schema.slo import parse_slo

LLAMA_8B = ("llama-3.1-8b", "synthetic:rate={rate}rps,requests=600,prompt=1024,output=128,seed=0")
LLAMA_70B = ("llama-3.1-70b", "synthetic:rate={rate}rps,requests=600,prompt=2048,output=256,seed=0")


def _estimate_and_simulate(model: str, workload: str, rate: float, tp: int, pp: int,
                           bound_over_mean: float) -> tuple[float, float, float]:
    """(estimated mean TPOT, estimated attainment, simulated attainment) of ``tp``/``pp`` on one H100 node
    under a TPOT bound ``bound_over_mean`` times the estimated mean TPOT (TTFT bound 5 s: out of the way)."""
    specs = ax.load_specs(model, gpu="h100-sxm-80gb", nodes=1, gpus_per_node=8, engine="vllm-0.6",
                          workload=workload.format(rate=rate), slo="ttft=5s,tpot=200ms")
    problem = Problem(specs, workers=1)
    proposal = problem.proposal(tp=tp, pp=pp)
    mean = proposal.predicted["tpot_mean_s"]
    bound = bound_over_mean * mean
    estimator = copy.copy(problem.space.estimator)
    estimator.slo = parse_slo(f"ttft=5s,tpot={bound * 1e3:.3f}ms")
    split = proposal.plan.layers_per_stage if pp > 1 else None
    est = estimator.estimate(ShapeKey(tp, 1, None, "bf16", "bf16"), Menu(specs.engine.scheduler.max_num_seqs), pp,
                             1, split=tuple(split) if split else None)
    rec = ax.simulate(specs, proposal.plan).records
    tpot = np.where(np.isfinite(rec.tpot_s), rec.tpot_s, 0.0)
    simulated = float(np.mean((tpot <= bound) & (rec.ttft_s <= 5.0)))
    return mean, est.attainment, simulated


def test_a_plan_whose_mean_tpot_is_just_under_the_bound_is_not_estimated_at_full_attainment() -> None:
    # Llama-3.1-8B on one H100 at 10 req/s, TPOT bound 10% above the mean: a third of the requests miss it
    _, estimated, simulated = _estimate_and_simulate(*LLAMA_8B, 10, 1, 1, 1.10)
    assert simulated < 0.9
    assert estimated < 0.9  # the old estimate: 100%


def test_a_lightly_loaded_plan_keeps_full_attainment() -> None:
    # the same plan at 1 req/s under a bound 25% above its mean TPOT: prompts rarely meet a decode
    _, estimated, simulated = _estimate_and_simulate(*LLAMA_8B, 1, 1, 1, 1.25)
    assert simulated >= 0.99
    assert estimated >= 0.99


@pytest.mark.parametrize(("case", "rate", "tp", "pp"), [
    (LLAMA_8B, 10, 1, 2),  # pipelined: the rounds of the virtual engines
    (LLAMA_8B, 20, 2, 2),
    (LLAMA_70B, 2, 4, 2),
    (LLAMA_70B, 2, 2, 2),
])
@pytest.mark.parametrize("bound_over_mean", [1.10, 1.25])
def test_estimated_attainment_tracks_the_simulated_one_near_the_bound(case: tuple[str, str], rate: float, tp: int,
                                                                      pp: int, bound_over_mean: float) -> None:
    _, estimated, simulated = _estimate_and_simulate(*case, rate, tp, pp, bound_over_mean)
    assert abs(estimated - simulated) <= 0.15, (estimated, simulated)


# ------------------------------------------------------------------------------------------- the model alone
def _share(duration: float, bound: float, *, outputs: tuple[int, ...] = (200,), prefill_var: float = 0.0,
           rate: float = 10.0) -> float:
    """The TPOT share of a replica whose step grows linearly with the batch (10 ms + 0.1 ms a sequence) under
    ``rate`` req/s of ``outputs`` tokens arriving for ``duration`` seconds."""
    mean_out = float(np.mean(outputs))
    stats = WorkloadStats(requests=round(rate * duration) if math.isfinite(duration) else 10**6, rate=rate,
                          mean_prompt=1000.0, mean_output=mean_out, ctx_occupancy=1100.0, long_prompt=1000,
                          prompt_deciles=(1000,), quantile=90.0, max_request_tokens=1200, duration=duration,
                          output_deciles=outputs)
    est = Estimator.__new__(Estimator)
    est.stats, est.slo, est.slo_slack = stats, parse_slo(f"tpot={bound * 1e3:.3f}ms"), 1.1

    def curve(batch: float, arriving: bool) -> float:
        return 0.010 + 1e-4 * batch

    # the steady state: T = 10 ms + 0.1 ms x rate x output x T
    tpot = 0.010 / (1.0 - 1e-4 * rate * mean_out)
    if math.isfinite(duration):  # the token-weighted mean batch of a finite trace (WorkloadStats.concurrency)
        for _ in range(50):
            tpot = curve(stats.concurrency(rate, mean_out * tpot), True)
    spread = TpotSpread(rate=rate, limit=1e6, prefill_var=prefill_var, curve=curve)
    return est._tpot_share(tpot, spread)


def test_the_share_falls_as_the_bound_nears_the_mean_and_is_one_far_above_it() -> None:
    shares = [_share(math.inf, b) for b in (0.0125, 0.0130, 0.0140, 0.0200)]  # steady mean TPOT: 12.5 ms
    assert shares == sorted(shares)
    assert 0.3 < shares[0] < 0.7  # at the mean: about half
    assert shares[-1] == 1.0


def test_a_short_trace_loses_its_plateau_requests_though_its_mean_is_under_the_bound() -> None:
    # 60 s of arrivals, requests living ~2.5 s at the plateau: little ramp, the plateau is the mean
    long_trace = _share(600.0, 0.0135)
    # 4 s of arrivals: the mean counts the ramps, the plateau's requests decode at 12.5 ms > the mean
    short_trace = _share(4.0, 0.0120)
    assert long_trace > 0.95
    assert short_trace < 0.9


def test_short_outputs_spread_more_around_the_mean() -> None:
    # the prompts arriving during a life of n tokens spread its TPOT by sqrt(prefill_var / n)
    short = _share(math.inf, 0.0135, outputs=(20,), prefill_var=2e-4 ** 2 * 20, rate=100.0)
    long = _share(math.inf, 0.0135, outputs=(20,), prefill_var=2e-4 ** 2 * 20 / 25, rate=100.0)
    assert short < long
