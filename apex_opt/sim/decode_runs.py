"""Runs of identical pure-decode steps of one engine: how many can run unchanged, and executing one at once.

When an engine's scheduled iteration is a pure decode step of its whole decode pool that its policy will repeat
unchanged, the run of ``n`` identical steps is taken at once (closed-form skip-ahead, pp = 1; pipelined replicas
take such runs as a whole, :mod:`apex_opt.sim.pipe_skip`). :func:`decode_limit` bounds a run by the engine's own
state (a member finishing, the KV cache running short, a cost breakpoint), :func:`run_length` also by the next
arrival and the front end, and :func:`apply_run` books steps ``1 .. n-1`` of a run in closed form (the arithmetic
is :mod:`apex_opt.sim.skipahead`'s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .cost import BatchShape
from .engine_state import EngineState
from .frontend import FrontEnd
from .recorder import account_run
from .skipahead import decode_coeffs, kv_run_integral, steps_before
from .state import StageClock

_INF = math.inf


def decode_limit(e: EngineState, m0: int, bps: Sequence[int]) -> int:
    """How many identical pure-decode steps of ``e``'s pool, starting with the one scheduled last (longest context
    ``m0``), can run before a member finishes, the KV cache runs short or a cost breakpoint in ``bps`` is crossed
    (at least 1)."""
    pool = e.pool
    fin = pool.next_finish()
    if fin is None:  # pragma: no cover - every member has a finish entry
        return 1
    n = fin - pool.E_done
    if n <= 1:
        return 1
    x = _kv_room(e)
    if x < 0:
        return 1
    n = min(n, _kv_steps(e, x) + 1)
    # cost regime breakpoints (e.g. CUDA-graph context limit)
    if bps:
        nxt = [bp for bp in bps if bp >= m0]
        if nxt:
            n = min(n, min(nxt) - m0 + 1)
    return max(n, 1)


def _kv_room(e: EngineState) -> int:
    """The blocks the later steps of a run of ``e`` may take: every step must keep ``kv_reserve`` blocks free
    after its allocations, and with a hit-sensitive prefix cache nothing may be evicted inside the run."""
    x = e.kv.free - e.policy.kv_reserve
    if e.cache is not None and e.policy.hit_sensitive(e):
        x -= e.cache.evictable  # no eviction inside the run
    return x


def _kv_steps(e: EngineState, x: int) -> int:
    """How many decode steps of ``e``'s pool, after the one scheduled last, allocate at most ``x`` blocks (the
    pool allocates ``len(pool)`` blocks per ``block_size`` steps, spread by its phase histogram)."""
    pool = e.pool
    full, rem = divmod(x, len(pool))
    m = full * pool.bs
    first = pool.E
    bs, hist = pool.bs, pool.hist
    acc = 0
    r = 0
    while r < bs:
        a = hist[(-(first + r)) % bs]
        if acc + a > rem:
            break
        acc += a
        r += 1
    return m + r


def run_length(e: EngineState, t: float, shape: BatchShape, t0: float, stage0: Any, frontend: FrontEnd,
               hooks: FrontEnd | None) -> int:
    """How many identical pure-decode steps of ``e``, starting with the one just scheduled at ``t`` (``shape``,
    ``t0`` seconds on ``stage0``), can run unchanged: :func:`decode_limit`, every later step starting before the
    next arrival that could be admitted (``frontend.horizon``), and the front end's own bound (``hooks``)."""
    n = decode_limit(e, shape.max_ctx, getattr(stage0, "ctx_breakpoints", ()))
    if n <= 1:
        return 1
    # arrivals: every later step must start before the next arrival that could be admitted
    if not e.policy.arrival_blocked(e):
        a_t = frontend.horizon(e)
        if a_t < _INF:
            c0, c1 = decode_coeffs(stage0, len(e.pool), shape.max_ctx)
            alpha = c0 + c1 * shape.decode_ctx_sum
            beta = c1 * len(e.pool)
            n = min(n, steps_before(a_t - t, t0, alpha, beta, n) + 1)
    n = max(n, 1)
    if hooks is not None and n > 1:  # e.g. a decode engine waiting for KV transfers
        n = hooks.limit_run(e, t, shape, t0, stage0, n)
    return n


def apply_run(e: EngineState, t: float, shape: BatchShape, t0: float, n: int, stage0: Any, sc: StageClock) -> float:
    """Execute steps ``1 .. n-1`` of a run of identical decode steps of ``e`` (step 0, ``shape``, launched at
    ``t`` for ``t0`` seconds on ``stage0``) in closed form: KV blocks, stage work on ``sc`` and the ITL samples of
    the run; returns the run's duration."""
    pool, kv = e.pool, e.kv
    m = n - 1
    B = shape.num_decodes
    s0 = shape.decode_ctx_sum
    m0 = shape.max_ctx
    c0, c1 = decode_coeffs(stage0, B, m0)
    alpha = c0 + c1 * s0
    beta = c1 * B
    first = pool.E
    grow = pool.allocs_window(first, m)
    kv.take(grow)
    pool.E += m
    used = kv.capacity - kv.free
    e.kv_max = max(e.kv_max, used)
    e.kv_int += kv_run_integral(pool.hist, pool.bs, first, m, alpha, beta)
    sum_t = m * alpha + beta * m * (m + 1) / 2
    total = t0 + sum_t
    b1 = BatchShape(B, B, B, s0 + B, 0.0, False, m0 + 1)
    bm = BatchShape(B, B, B, s0 + m * B, 0.0, False, m0 + m)
    account_run(sc, stage0, shape, t0, m, b1, alpha + beta, bm, alpha + beta * m, total)
    h = (e.host(shape) if e.host is not None else 0.0) if e.stamp_next else 0.0
    tau0 = t + t0 + h
    k = n - 2
    tau_end = tau0 + k * alpha + beta * k * (k + 1) / 2
    e.book.run(tau0, alpha, beta, k, B, tau_end)
    return total


__all__ = ["apply_run", "decode_limit", "run_length"]
