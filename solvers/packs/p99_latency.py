"""Tail-latency bounds checked on the simulation: p99 TTFT and p99 TPOT.

``P99_TTFT_S`` and ``P99_TPOT_S`` (environment variables ``APEX_OPT_P99_TTFT`` and ``APEX_OPT_P99_TPOT``, seconds)
set the bounds. Plans whose simulated tails exceed them are cut after simulation, like an SLO miss.

    apex-opt solve --constraints solvers/packs/p99_latency.py
"""

import os

import apex_opt as ax

P99_TTFT_S = float(os.environ.get("APEX_OPT_P99_TTFT", "1.0"))
P99_TPOT_S = float(os.environ.get("APEX_OPT_P99_TPOT", "0.1"))


@ax.constraint("p99-ttft", on="simulated")
def p99_ttft(r, s):
    """simulated p99 TTFT within the bound"""
    return r.ttft_p99_s <= P99_TTFT_S


@ax.constraint("p99-tpot", on="simulated")
def p99_tpot(r, s):
    """simulated p99 TPOT within the bound"""
    return r.tpot_p99_s <= P99_TPOT_S
