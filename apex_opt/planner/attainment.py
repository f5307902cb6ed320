"""The share of requests whose own TPOT meets the SLO, from the spread of per-request TPOT around the mean
(:func:`tpot_share`; the cost model's :meth:`apex_opt.planner.estimates.Estimator._spread` builds the
:class:`TpotSpread` of a candidate). ``docs/planner.md``, *The spread of per-request TPOT*."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .workload_stats import WorkloadStats


@dataclass(frozen=True)
class TpotSpread:
    """What spreads the per-request TPOT of one candidate around its mean (:func:`tpot_share`)."""

    rate: float  # requests/s reaching one replica
    limit: float  # most sequences a replica (all its virtual engines) runs at once
    #: variance of the prompts' delay per token over one token (s^2): over ``n`` tokens it is this ``/ n``
    prefill_var: float
    #: mean TPOT (s) with this many requests in service, while prompts arrive at ``rate`` (True) or after the
    #: last arrival (False: decode steps only)
    curve: Callable[[float, bool], float]


#: arrival times and points of a request's life the TPOT share averages over (:func:`tpot_share`)
_ARRIVAL_POINTS = 48
_LIFE_POINTS = 12
#: batches at which the TPOT curve is evaluated between the lightest and the busiest request's load
_CURVE_POINTS = 4
#: most fixed-point iterations of the plateau's per-token time and the load it makes (:func:`tpot_share`)
_LIFE_ITERATIONS = 6
#: standard deviations of a request's own TPOT below the bound at which its share counts as 1 (Phi(-4) = 3e-5)
_SHARE_Z = 4.0


def tpot_share(tpot: float, spread: TpotSpread | None, stats: WorkloadStats, bound: float | None,
               slack: float) -> float:
    """Predicted share of requests whose own TPOT is within the SLO's ``bound`` (None: no bound, 1).

    A request's TPOT is the sum of the steps (rounds, when pipelined) it decodes through, over its
    ``n = output - 1`` gaps. Three things spread it around the mean ``tpot`` (:class:`TpotSpread`):

    * **The trace's load profile.** The number of requests in service climbs while the trace's first
      requests arrive, holds, and falls after the last arrival (:meth:`WorkloadStats.concurrency`, whose
      token-weighted mean the estimate's batch is): ``N(s) = rate x mean over outputs o of
      (min(s, duration) - max(0, s - o x T))+``. A request arriving at ``t`` with ``o`` output tokens
      decodes at the mean, over its life ``[t, t + o x T]``, of the TPOT at ``N(s)`` (``spread.curve``: the
      step or round formula of the mean TPOT, with the prompts arriving at the arrival rate, or none after
      the last arrival). The plateau's requests decode slower than the mean and live longer, which raises
      the plateau: ``T`` is the fixed point of the curve at the busiest load (at the last arrival). A trace
      that arrives for ever has the plateau only.
    * **The prompts that arrive during its life.** Each prompt's prefill delays the decodes by ``c`` (a
      chunk in the steps, or a whole prefill step that stalls them); the prompts arriving during ``n``
      tokens are Poisson, ``a = rate x tpot`` per token, and ``a x c`` is the mean delay per token
      (``tpot`` less the TPOT with no prompts). Their count and lengths spread the request's TPOT by a
      variance ``(a c)^2 (1 + cv^2) / (a n)``, ``cv`` the prompt lengths' coefficient of variation: the
      binomial of mixed and pure steps, counted per prompt (a prompt's chunks come together).
    * **The requests it shares the steps with.** Their count is Poisson about the load (variance ``N``);
      over a life ``r`` times the mean one its time average keeps a share ``1 - r/3`` (``r <= 1``) or
      ``(1 - 1/(3r)) / r`` of that variance, and the TPOT follows with the curve's slope ``dT/dN``.

    Both fluctuations feed back: a request decoding slower stays longer and loads the others, so their
    standard deviation is amplified by ``1 / (1 - N dT/dN / T)`` (the elasticity of the curve). The share
    is ``Phi((bound - TPOT(t, o)) / sd(o))`` averaged over arrival times uniform over the trace and the
    output-length deciles. Every term is the cost model's or the workload's; nothing is fitted. Without
    ``spread`` (disaggregated decode replicas) every request decodes at ``tpot``: the share falls
    linearly from 1 to 0 as it goes from the bound to 10% over it.
    """
    if bound is None:
        return 1.0
    if spread is None or tpot > bound * slack:
        # (also a plan the [slo.tpot] constraint refuses: not worth pricing its spread)
        if tpot <= bound:
            return 1.0
        return max(0.0, 1.0 - (tpot - bound) / (0.1 * bound))
    st = stats
    outs = np.asarray(st.output_deciles or (max(round(st.mean_output), 1),), dtype=float)
    gaps = np.maximum(outs - 1.0, 1.0)
    ratio = outs / max(float(outs.mean()), 1.0)
    kept = np.where(ratio <= 1.0, 1.0 - ratio / 3.0, (1.0 - 1.0 / (3.0 * ratio)) / ratio)
    duration = st.duration
    finite = math.isfinite(duration) and duration > 0

    def busiest(per_token: float) -> float:
        """Most requests in service at once (at the last arrival), each decoding for ``o x per_token`` s."""
        alive = np.minimum(outs * per_token, duration) if finite else outs * per_token
        return min(max(spread.rate * float(alive.mean()), 1.0), spread.limit)

    def deviation(load: float, at: float, slope: float) -> np.ndarray:
        """Standard deviation of a request's TPOT per output decile at ``load`` in service, TPOT ``at``."""
        slope = max(slope, 0.0)
        gain = 1.0 / max(1.0 - load * slope / max(at, 1e-12), 0.1)
        var = spread.prefill_var / gaps + slope**2 * load * kept
        return gain * np.sqrt(var)

    heavy = busiest(max(bound, 1.05 * tpot))  # (a load above the mean's: the curve's slope needs two points)
    at_heavy = spread.curve(heavy, True)
    base_load = busiest(max(tpot, 1e-9))
    slope = (at_heavy - tpot) / (heavy - base_load) if heavy > base_load else 0.0
    spread_max = _SHARE_Z * float(deviation(heavy, at_heavy, slope).max())
    if tpot + spread_max <= bound and at_heavy + spread_max <= bound:
        # requests decoding at the bound would load the replica less than it takes to reach it: the fixed
        # point below lies under the bound, and so does every request's TPOT with its slow tail
        return 1.0
    # the requests of the plateau decode slower than the mean, live longer, and so raise the plateau:
    # the per-token time their lives are priced at is the fixed point of the curve at the busiest load
    per_token = max(tpot, 1e-9)
    for _ in range(_LIFE_ITERATIONS):
        nxt = max(spread.curve(busiest(per_token), True), tpot)
        done = abs(nxt - per_token) <= 2e-3 * per_token
        per_token = nxt
        if done:
            break
    top_load = busiest(per_token)
    if per_token + _SHARE_Z * float(deviation(top_load, per_token, slope).max()) <= bound:
        return 1.0  # even the busiest request's slow tail is within the bound
    life = outs * per_token  # seconds each output decile decodes for

    def in_service(s: np.ndarray) -> np.ndarray:
        """Requests in service at times ``s`` (the trapezoid of :meth:`WorkloadStats.concurrency`)."""
        s = s[..., None]
        alive = np.minimum(s, duration) - np.maximum(s - life, 0.0)
        return spread.rate * np.clip(alive, 0.0, None).mean(axis=-1)

    if finite:
        ts = (np.arange(_ARRIVAL_POINTS) + 0.5) / _ARRIVAL_POINTS * duration
        frac = (np.arange(_LIFE_POINTS) + 0.5) / _LIFE_POINTS
        # points[t, o, k]: the k-th point of the life of a request arriving at ts[t] with outs[o] tokens
        points = ts[:, None, None] + life[None, :, None] * frac[None, None, :]
        load = np.clip(in_service(points), 1.0, spread.limit)
        arriving = points < duration
    else:
        load = np.full((1, len(outs), 1), busiest(per_token))
        arriving = np.ones_like(load, dtype=bool)
    peak = max(float(load.max()), top_load)
    lo = float(load.min())
    xs = np.linspace(lo, peak, _CURVE_POINTS) if peak > lo * (1 + 1e-6) else np.array([0.9 * peak, peak])
    on = np.array([spread.curve(float(x), True) for x in xs[:-1]] + [per_token])
    off = np.array([spread.curve(float(x), False) for x in xs]) if not arriving.all() else on
    # a request's TPOT: the mean of the step (round) times over its life
    times = np.where(arriving, np.interp(load, xs, on), np.interp(load, xs, off)).mean(axis=-1)
    seen = load.mean(axis=-1)
    slope = float((on[-1] - on[-2]) / (xs[-1] - xs[-2]))
    sd = deviation(peak, float(on[-1]), slope)[None, :] * np.sqrt(np.clip(seen / peak, 0.0, 1.0))
    z = (bound - times) / np.maximum(sd, 1e-12)
    share = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    return float(share.mean())


__all__ = ["TpotSpread", "tpot_share"]
