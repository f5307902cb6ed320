"""Aggregated vs disaggregated prefill/decode on llama-3.1-70b, 16x H100 (h100x16), summarization trace.

Replays the summarization trace (1302 requests, mean prompt 2753 / output 171 tokens) at its own rate and
rescaled in time to higher rates, through an aggregated dp2 tp8 deployment and three disaggregated ones, and
prints TTFT, TPOT, SLO attainment and goodput (SLO ttft <= 1 s, tpot <= 50 ms, per request). Results are in
docs/disaggregation.md.

    python benchmarks/disagg_sweep.py            # rates: trace (0.48), 2, 4, 6 req/s
    python benchmarks/disagg_sweep.py 0 8        # 0 = the trace's own rate
"""

from __future__ import annotations

import dataclasses
import sys
import time

import apex_opt as ax
from apex_opt.schema.slo import parse_slo

GPU = "h100-sxm-80gb"


def candidates() -> dict[str, ax.Plan | ax.Deployment]:
    def dep(p: ax.Plan, d: ax.Plan) -> ax.Deployment:
        return ax.Deployment(plans=(p, d))

    return {
        "aggregated dp2 tp8": ax.Plan(gpu=GPU, tp=8, dp=2),
        "1P1D tp8 / tp8": dep(ax.Plan(gpu=GPU, tp=8, role="prefill"), ax.Plan(gpu=GPU, tp=8, role="decode")),
        "2P1D tp4x2 / tp8": dep(ax.Plan(gpu=GPU, tp=4, dp=2, role="prefill"), ax.Plan(gpu=GPU, tp=8, role="decode")),
        "3P1D tp4x3 / tp4": dep(ax.Plan(gpu=GPU, tp=4, dp=3, role="prefill"), ax.Plan(gpu=GPU, tp=4, role="decode")),
    }


def main(rates: list[float]) -> None:
    specs = ax.load_specs("llama-3.1-70b", "h100x16", workload="summarization", slo=parse_slo("ttft=1s,tpot=50ms"))
    print("| rate | deployment | TTFT mean / p99 | TPOT mean / p99 | attainment | goodput | KV transfer mean | sim |")
    print("|---|---|---|---|---|---|---|---|")
    for rate in rates:
        workload = specs.workload if rate == 0 else specs.workload.with_rate(rate)
        run_specs = dataclasses.replace(specs, workload=workload)
        for name, plan in candidates().items():
            t = time.perf_counter()
            r = ax.simulate(run_specs, plan)
            wall = time.perf_counter() - t
            xfer = r.summary().get("kv_transfer_mean_s")
            print(f"| {workload.rate:.2f} req/s | {name} | {r['ttft_mean_s'] * 1e3:,.0f} / {r['ttft_p99_s'] * 1e3:,.0f} ms "
                  f"| {r['tpot_mean_s'] * 1e3:.1f} / {r['tpot_p99_s'] * 1e3:.1f} ms | {r['slo_attainment'] * 100:.1f}% "
                  f"| {r['goodput_req_s']:.2f} req/s | {'-' if xfer is None else f'{xfer * 1e3:.1f} ms'} "
                  f"| {wall:.1f} s |", flush=True)


if __name__ == "__main__":
    main([float(a) for a in sys.argv[1:]] or [0.0, 2.0, 4.0, 6.0])
