"""Closed-form skip-ahead arithmetic: runs of identical pure-decode steps summed instead of simulated.

Step ``j`` of a run takes ``c0 + c1 * (S0 + j*B)`` (:meth:`StageCost.decode_coeffs <apex_opt.sim.cost.StageCost>`),
so the time to the end of step ``j`` is a quadratic in ``j``; :func:`steps_before` inverts it and
:func:`kv_run_integral` integrates the KV blocks the run allocates over its duration.
"""

from __future__ import annotations

import math
from typing import Any


def decode_coeffs(stage: Any, num_decodes: int, max_ctx: int) -> tuple[float, float]:
    """``(c0, c1)`` of a decode step of ``num_decodes`` sequences (the cost regime of ``max_ctx``, if any)."""
    if getattr(stage, "ctx_breakpoints", ()):
        return stage.decode_coeffs(num_decodes, max_ctx=max_ctx)
    return stage.decode_coeffs(num_decodes)


def steps_before(span: float, t0: float, alpha: float, beta: float, cap: int = 1 << 62) -> int:
    """Largest j >= 0 with D(j) < span, where D(0) = 0 and D(j) = t0 + sum_{i=1}^{j-1} (alpha + beta*i), or
    ``cap`` if that is smaller (callers need no more steps than a run has)."""
    if t0 >= span:
        return 0

    def d(j: int) -> float:
        return t0 + (j - 1) * alpha + beta * (j - 1) * j / 2

    # beta/2 j^2 + (alpha - beta/2) j + (t0 - alpha - span) < 0
    bq = alpha - beta / 2
    cq = t0 - alpha - span
    if beta > 0:
        disc = bq * bq - 2 * beta * cq
        j = int((-bq + math.sqrt(max(disc, 0.0))) / beta) if disc > 0 else 1
    else:
        j = int((span - t0 + alpha) / alpha) if alpha > 0 else 1 << 62
    j = max(1, min(j, cap))
    # the closed form is off by a step or two from rounding; far off only when span dwarfs the step times
    # (an arrival ages away), where floating point cannot tell steps apart: then bisect, within [1, cap]
    for _ in range(4):
        if j > 1 and d(j) >= span:
            j -= 1
        elif j < cap and d(j + 1) < span:
            j += 1
        else:
            return j
    lo, hi = 1, cap  # d(lo) < span (d(1) = t0); the answer is at most hi
    if d(hi) < span:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if d(mid) < span:
            lo = mid
        else:
            hi = mid
    return lo


def kv_run_integral(hist: list[int], bs: int, first: int, m: int, alpha: float, beta: float) -> float:
    """sum_{j=1}^{m} C(j) * (alpha + beta*j), C(j) = blocks allocated by steps 1..j of a run (step i allocates
    hist[(-(first + i - 1)) % bs])."""
    if m <= 0:
        return 0.0
    total = 0.0
    base = (m + 1) * alpha + beta * m * (m + 1) / 2
    for i0 in range(1, min(bs, m) + 1):
        a = hist[(-(first + i0 - 1)) % bs]
        if not a:
            continue
        k = (m - i0) // bs + 1
        s1 = k * i0 + bs * k * (k - 1) // 2
        s2 = k * i0 * i0 + i0 * bs * k * (k - 1) + bs * bs * (k - 1) * k * (2 * k - 1) // 6
        total += a * (k * base - alpha * s1 - beta * (s2 - s1) / 2)
    return total


__all__ = ["decode_coeffs", "kv_run_integral", "steps_before"]
