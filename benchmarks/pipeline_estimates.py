"""How far the planner's cost model is from the simulator on pipelined (pp > 1) plans, beside pp = 1 plans.

The planner proposes plans by their estimates and the simulator verifies them; where the two disagree, CP-SAT
proposes plans that the simulation rejects (optimistic) or never proposes plans that would pass (pessimistic).
Each row is one plan on one node of 8 H100s at one synthetic load, vLLM 0.6 (the engine the planner's pipeline
terms were written for): the estimate's mean TPOT and TTFT next to a whole simulation's. Rows whose simulation
saturates (mean TTFT over 2 s) are marked; there only "saturated" is a meaningful comparison. The last two columns
are the share of requests whose own TPOT is within a bound 10% above the estimated mean TPOT (TTFT within 2 s):
estimated (``Estimator._tpot_share``, the spread of per-request TPOT) and simulated.

    python benchmarks/pipeline_estimates.py            # about 2 minutes
    python benchmarks/pipeline_estimates.py --engine vllm-v1
"""

from __future__ import annotations

import argparse
import copy

import numpy as np

import apex_opt as ax
from apex_opt.planner.estimates import Menu, ShapeKey
from apex_opt.planner.search import Proposal
from apex_opt.planner.solve import Problem
from apex_opt.schema.slo import parse_slo
from apex_opt.sim.metrics import RequestRecords

#: the TPOT bound of the attainment columns, over the estimated mean TPOT
BOUND_OVER_MEAN = 1.10

#: (model, workload with {rate}, rates in req/s, shapes as (tp, pp, dp))
CASES = [
    ("llama-3.1-70b", "synthetic:rate={rate}rps,requests=1500,prompt=2048,output=256,seed=0", (2, 4),
     ((4, 2, 1), (2, 2, 1), (8, 1, 1), (4, 1, 1))),
    ("llama-3.1-8b", "synthetic:rate={rate}rps,requests=2000,prompt=1024,output=128,seed=0", (10, 20, 30),
     ((1, 2, 1), (2, 2, 1), (1, 1, 1))),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="vllm-0.6")
    args = parser.parse_args()
    print("| model | req/s | plan | TPOT est ms | TPOT sim ms | error | TTFT est ms | TTFT sim ms | "
          f"within {BOUND_OVER_MEAN:.2f} x TPOT est: est | sim |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, workload, rates, shapes in CASES:
        for rate in rates:
            specs = ax.load_specs(model, gpu="h100-sxm-80gb", nodes=1, gpus_per_node=8, engine=args.engine,
                                  workload=workload.format(rate=rate), slo="ttft=2s,tpot=200ms")
            problem = Problem(specs, workers=1)
            for tp, pp, dp in shapes:
                proposal = problem.proposal(tp=tp, pp=pp, dp=dp)
                result = ax.simulate(specs, proposal.plan)
                sim = result.summary()
                est = proposal.predicted
                err = est["tpot_mean_s"] / sim["tpot_mean_s"] - 1
                saturated = " (saturated)" if sim["ttft_mean_s"] > 2.0 else ""
                bound = BOUND_OVER_MEAN * est["tpot_mean_s"]
                att_est, att_sim = _attainment(problem, proposal, tp, pp, dp, bound), _share(result.records, bound)
                print(f"| {model} | {rate} | tp{tp} pp{pp} dp{dp} | {est['tpot_mean_s'] * 1e3:.1f} | "
                      f"{sim['tpot_mean_s'] * 1e3:.1f} | {err:+.0%}{saturated} | {est['ttft_mean_s'] * 1e3:.0f} | "
                      f"{sim['ttft_mean_s'] * 1e3:.0f} | {att_est:.0%} | {att_sim:.0%} |")


def _attainment(problem: Problem, proposal: Proposal, tp: int, pp: int, dp: int, bound: float) -> float:
    """The estimated attainment of the proposal under ``ttft=2s`` and a TPOT bound of ``bound`` seconds."""
    estimator = copy.copy(problem.space.estimator)
    estimator.slo = parse_slo(f"ttft=2s,tpot={bound * 1e3:.3f}ms")
    plan = proposal.plan
    assert isinstance(plan, ax.Plan)  # an aggregated plan of one shape
    key = ShapeKey(tp, plan.ep, plan.moe_tp, plan.weight_dtype, plan.kv_dtype)
    menu = Menu(plan.max_num_seqs or problem.specs.engine.scheduler.max_num_seqs, plan.max_num_batched_tokens)
    split = tuple(plan.layers_per_stage) if pp > 1 and plan.layers_per_stage else None
    return estimator.estimate(key, menu, pp, dp, split=split).attainment


def _share(records: RequestRecords, bound: float) -> float:
    """The simulated share of requests with TTFT <= 2 s and their own TPOT <= ``bound``."""
    tpot = np.where(np.isfinite(records.tpot_s), records.tpot_s, 0.0)
    return float(np.mean((tpot <= bound) & (records.ttft_s <= 2.0)))


if __name__ == "__main__":
    main()
