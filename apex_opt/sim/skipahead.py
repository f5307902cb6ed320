"""Closed-form skip-ahead arithmetic: runs of identical pure-decode steps summed instead of simulated.

Step ``j`` of a run takes ``c0 + c1 * (S0 + j*B)`` (:meth:`StageCost.decode_coeffs <apex_opt.sim.cost.StageCost>`),
so the time to the end of step ``j`` is a quadratic in ``j``; :func:`steps_before` inverts it and
:func:`kv_run_integral` integrates the KV blocks the run allocates over its duration.
"""

from __future__ import annotations

import math
from typing import Any

from .events import STAGE_DONE, STAGE_READY


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





QUEUED = -1  # PipelineRounds.position: arrived at the saturated stage, waiting in its queue


class PipelineRounds:
    """Closed-form rounds of a pipelined replica (``pp`` stages) whose ``k`` decoding virtual engines ``order``
    (``v_0 .. v_{k-1}``) are served in that cyclic order at stage ``z``.

    Engine ``v`` runs step ``j`` on stage ``s`` in ``A[v][s] + Bc[v][s] * j`` seconds and sends its activations to
    the next stage in ``sig[v]`` seconds (none after the last stage: the next step is scheduled at once and enters
    stage 0). Job ``n = q*k + i`` is the ``q``-th job of ``v_i`` at stage ``z`` after job 0 (``v_0``'s, started at
    time 0), with step ``s0[i] + q``. Two regimes:

    * ``k >= 2``, stage ``z`` saturated: a job starts at ``z`` when the previous one ends there, and every other
      stage serves each arrival at once. Job ``n`` then starts at ``Z(n) = sum of the z-times of jobs 0..n-1``;
    * ``k == 1`` (``z == 0``): the engine runs alone, each step starting when the previous one leaves the last
      stage.

    Between its jobs at ``z`` an engine goes *round* the other stages (:meth:`ring`). :meth:`slack` is the margin
    by which the regime's conditions hold for the jobs of round ``q``; it is affine in ``q`` for each ``i`` (step
    times are affine in the step), so the conditions hold over rounds ``q0..q1`` if they hold at both ends.
    """

    def __init__(self, pp: int, z: int, A: list[list[float]], Bc: list[list[float]], sig: list[float],
                 order: list[int], s0: list[int]) -> None:
        self.pp, self.z, self.order, self.s0 = pp, z, order, s0
        self.k = k = len(order)
        self.A = [A[v] for v in order]
        self.Bc = [Bc[v] for v in order]
        self.sig = [sig[v] for v in order]
        self._rings: dict[tuple[int, int], tuple[list[tuple[int, int, float, float]], float, float]] = {}
        if k == 1:
            # a step's cycle: every stage and pp - 1 sends
            self.Pa = sum(self.A[0][s] + self.Bc[0][s] * s0[0] for s in range(pp)) + (pp - 1) * self.sig[0]
            self.Pb = sum(self.Bc[0])
        else:
            self.Pa = sum(self.A[i][z] + self.Bc[i][z] * s0[i] for i in range(k))
            self.Pb = sum(self.Bc[i][z] for i in range(k))
        # Z(q*k + i) = q*Pa + Pb*q*(q-1)/2 + za[i] + zb[i]*q: the z-times of v_0 .. v_{i-1} in round q
        self._za = [0.0] * k
        self._zb = [0.0] * k
        for i in range(1, k):
            self._za[i] = self._za[i - 1] + self.A[i - 1][z] + self.Bc[i - 1][z] * s0[i - 1]
            self._zb[i] = self._zb[i - 1] + self.Bc[i - 1][z]

    def d(self, i: int, s: int, step: int) -> float:
        return self.A[i][s] + self.Bc[i][s] * step

    def Z(self, n: int) -> float:
        """Start of job ``n`` at stage ``z`` (``n >= -k``)."""
        q, i = divmod(n, self.k)
        return q * self.Pa + self.Pb * q * (q - 1) / 2 + self._za[i] + self._zb[i] * q

    def ring(self, i: int, q: int) -> tuple[list[tuple[int, int, float, float]], float, float]:
        """Job ``(q, i)``: its visits ``(stage, step, arrival, end)`` from stage ``z`` round to the stage before
        ``z``, the arrival of ``v_i``'s next job at ``z``, and when its next step is scheduled."""
        got = self._rings.get((i, q))
        if got is None:
            got = self._rings[i, q] = self._ring(i, q)
        return got

    def _ring(self, i: int, q: int) -> tuple[list[tuple[int, int, float, float]], float, float]:
        pp, z = self.pp, self.z
        step = self.s0[i] + q
        t = self.Z(q * self.k + i)
        visits = [(z, step, t, t + self.d(i, z, step))]
        t = visits[0][3]
        sig = self.sig[i]
        s = z
        launch = t
        for _ in range(pp - 1):
            if s == pp - 1:
                s, step, arr = 0, step + 1, t
                launch = t
            else:
                s, arr = s + 1, t + sig
            t = arr + self.d(i, s, step)
            visits.append((s, step, arr, t))
        if s == pp - 1:  # z == 0: the next step is scheduled and enters stage 0 at once
            launch = t
            return visits, t, launch
        return visits, t + sig, launch

    def slack(self, q: int, now: float = -math.inf) -> float:
        """Smallest margin of the regime's conditions for the jobs of round ``q`` (negative: violated)."""
        return min(self.conditions(q, now), default=math.inf)

    def conditions(self, q: int, now: float = -math.inf) -> list[float]:
        """The margins of the regime's conditions for the jobs of round ``q``, in an order that does not depend on
        ``q`` (each is affine in ``q``). With ``now``, only what happens after ``now`` counts (and ``v_0``'s job of
        round ``q`` is skipped): the round in progress."""
        k = self.k
        if k == 1:
            return []
        rings = [self.ring(i, q) for i in range(k)]
        prev = self.ring(k - 1, q - 1)
        nxt0 = self.ring(0, q + 1)[1]
        out = []
        for i in range(1 if now > -math.inf else 0, k):
            visits, arr_z, _ = rings[i]
            # saturation: back at z before the job ahead of it there ends
            out.append(self.Z(q * k + i + k) - arr_z)
            # FIFO at z: back before the engine behind it
            out.append((rings[i + 1][1] if i + 1 < k else nxt0) - arr_z)
            # no waiting elsewhere: the job ahead of it on every other stage has left when it arrives
            pv = (rings[i - 1] if i else prev)[0]
            for (_, _, arr, _), (_, _, _, end2) in zip(visits[1:], pv[1:], strict=True):
                if arr > now:  # (what already happened was seen)
                    out.append(arr - end2)
        return out

    def rounds_before(self, span: float) -> int:
        """Largest ``R >= 0`` with ``Z(R * k) < span`` (``span > 0``)."""
        a, b = self.Pa, self.Pb
        if b > 0:
            bq = a - b / 2
            r = int((-bq + math.sqrt(max(bq * bq + 2 * b * span, 0.0))) / b)
        else:
            r = int(span / a) if a > 0 else 1 << 40
        while r > 0 and self.Z(r * self.k) >= span:
            r -= 1
        while self.Z((r + 1) * self.k) < span:
            r += 1
        return r

    def position(self, i: int, q: int, t: float, margin: float) -> tuple[int, int, int, float] | None:
        """Where job ``(q, i)`` of ``v_i`` is once every event up to ``t`` (give or take ``margin / 2``) has happened:
        ``(kind, stage, step, time)`` of its pending ``STAGE_READY`` or ``STAGE_DONE`` event, or ``(QUEUED, z,
        step, arrival)`` once back at ``z``; ``None`` if an event of it falls within ``(t + margin / 2, t + 2 *
        margin]``, too close to ``t`` to tell its order from float rounding."""
        visits, arr_z, _ = self.ring(i, q)
        past, near = t + margin / 2, t + 2 * margin
        for n, (s, step, arr, end) in enumerate(visits):
            if n and s:  # sent from the previous stage: a STAGE_READY event
                if arr > near:
                    return STAGE_READY, s, step, arr
                if arr > past:
                    return None
            if end > near:
                return STAGE_DONE, s, step, end
            if end > past:
                return None
        step = self.s0[i] + q + 1
        if arr_z > near:
            return STAGE_READY, self.z, step, arr_z
        if arr_z > past:
            return None
        return QUEUED, self.z, step, arr_z


__all__ = ["QUEUED", "PipelineRounds", "decode_coeffs", "kv_run_integral", "steps_before"]
