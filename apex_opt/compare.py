"""Several plans on one workload, side by side: :func:`compare` simulates each on the local worker pool.

Every plan replays the same workload with the same seed, so the differences between the columns are the plans'
alone. The metrics are named as in :mod:`apex_opt.metrics`; :meth:`Comparison.best` picks the plan with the best
value of one of them (lower or higher, as the registry says).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import SpecError, shorten
from .metrics import METRICS, Metric, canonical_name, compared
from .schema.plan import Deployment, Plan
from .sim.summary import SimSummary
from .simulate import check_seed, check_simulate_args
from .simulate import simulate as _simulate
from .specs import Specs


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` returns: one column per plan, in the order given.

    ``labels``: a unique name per plan (its label, made unique with ``#2``, ``#3`` when two plans share one).
    ``metrics``: each plan's simulated summary (:class:`~apex_opt.sim.summary.SimSummary`), or None when its
    simulation failed, with the reason in ``errors`` ("" where it ran).
    """

    plans: tuple[Plan | Deployment, ...]
    labels: tuple[str, ...]
    metrics: tuple[SimSummary | None, ...]
    errors: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.plans)

    def __iter__(self) -> Iterator[tuple[str, SimSummary | None]]:
        return iter(zip(self.labels, self.metrics, strict=True))

    def __getitem__(self, key: int | str) -> SimSummary | None:
        """A plan's metrics by position or label."""
        if isinstance(key, str):
            if key not in self.labels:
                raise KeyError(f"no plan labelled '{key}'; the plans: {', '.join(self.labels)}")
            key = self.labels.index(key)
        return self.metrics[key]

    def best(self, metric: str) -> str | None:
        """The label of the plan with the best value of ``metric`` (None when no plan has a finite value).

        Ties go to the earlier plan. SpecError for a metric that is not in the registry or has no better sense.
        """
        m = _metric(metric)
        if m.sense == 0:
            raise SpecError(f"compare: '{m.name}' has no better value (it describes the run); pick a metric such as "
                            "ttft_p99_s or goodput_req_s")
        best: tuple[float, str] | None = None
        for label, values in self:
            v = _number(values.get(m.name) if values is not None else None)
            if math.isfinite(v) and (best is None or m.better(v, best[0])):
                best = (v, label)
        return best[1] if best else None

    def rows(self, metrics: Sequence[str] | None = None) -> list[tuple[Metric, list[Any]]]:
        """``(metric, [value per plan])`` for each metric (default: the registry's comparison rows that some plan
        reports), for tables."""
        chosen = compared(metrics) if metrics is not None else compared()
        out = []
        for m in chosen:
            values = [None if v is None else v.get(m.name) for v in self.metrics]
            if metrics is None and all(x is None for x in values):
                continue  # e.g. SLO rows without an SLO
            out.append((m, values))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``plans`` (label, plan, error or the metrics by registry name) and ``best`` (label per metric
        with a better sense, among the comparison rows)."""
        plans = []
        for plan, label, values, error in zip(self.plans, self.labels, self.metrics, self.errors, strict=True):
            entry: dict[str, Any] = {"label": label, "gpus": plan.gpus, "plan": plan.model_dump(mode="json")}
            if values is None:
                entry["error"] = error
            else:
                entry.update(values)
            plans.append(entry)
        best = {m.name: self.best(m.name) for m, _ in self.rows() if m.sense != 0}
        return {"plans": plans, "best": best}

    def __repr__(self) -> str:
        return f"<Comparison of {len(self)} plans: {', '.join(self.labels)}>"


def _metric(name: str) -> Metric:
    key = canonical_name(name)
    if key not in METRICS:
        raise SpecError(f"compare: unknown metric {shorten(name)}; the metrics are listed in docs/metrics.md, e.g. "
                        "ttft_p99_s, goodput_req_s, cost_per_mtok_usd")
    return METRICS[key]


def _number(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def unique_labels(plans: Sequence[Plan | Deployment]) -> tuple[str, ...]:
    """Each plan's label, with ``#2``, ``#3`` added to repeats (plans that differ only in engine settings)."""
    seen: dict[str, int] = {}
    out = []
    for p in plans:
        seen[p.label] = seen.get(p.label, 0) + 1
        out.append(p.label if seen[p.label] == 1 else f"{p.label} #{seen[p.label]}")
    return tuple(out)


def compare(specs: Specs, plans: Sequence[Plan | Deployment], *, seed: int = 0, workers: int = 2,
            max_requests: int | None = None, measured_at: str | None = None, executor: str = "local",
            ray_address: str | None = None) -> Comparison:
    """Simulate each of ``plans`` on ``specs.workload`` (same seed) and return them side by side.

    Parameters
    ----------
    specs : Specs
        Model, cluster, engine, workload and SLO, as :func:`apex_opt.load_specs` returns them (a calibration
        profile in ``specs.calibration`` applies to every plan).
    plans : sequence of Plan or Deployment
        At least one; each must fit the cluster.
    seed, max_requests, measured_at
        As for :func:`apex_opt.simulate`.
    workers : int
        Simulations run at once, in worker processes (at most the CPUs of this machine; 1: in this process).
    executor, ray_address : str
        Where they run: ``"local"`` (default) or ``"ray"`` (Ray tasks on the cluster at ``ray_address``, else on a
        Ray instance started here); results do not depend on it (:mod:`apex_opt.executors`).

    Returns
    -------
    Comparison
        One column per plan, in the order given; a plan whose simulation failed keeps its column, with the reason.

    Raises
    ------
    SpecError
        For an empty list, something that is not a plan, or a plan larger than the cluster.

    Examples
    --------
    >>> import apex_opt as ax
    >>> specs = ax.load_specs("llama-3.1-8b", "h100x8", slo="ttft=500ms,tpot=50ms",
    ...                       workload="synthetic:rate=4rps,requests=20,prompt=256,output=32,seed=0")
    >>> c = ax.compare(specs, [ax.Plan(gpu="h100-sxm-80gb", tp=1), ax.Plan(gpu="h100-sxm-80gb", tp=2)], workers=1)
    >>> c.labels, c["dp1 tp2 pp1"]["num_completed"]
    (('dp1 tp1 pp1', 'dp1 tp2 pp1'), 20)
    >>> c.best("tpot_mean_s")
    'dp1 tp2 pp1'
    """
    if isinstance(plans, (Plan, Deployment)) or not isinstance(plans, Sequence) or not plans:
        raise SpecError(f"compare(plans={shorten(plans)}): give a list of at least one Plan or Deployment, e.g. "
                        f"[ax.Plan(gpu=\"{getattr(getattr(specs, 'cluster', None), 'gpu', 'h100-sxm-80gb')}\", tp=1), "
                        "ax.Plan(..., tp=2)]")
    for plan in plans:
        check_simulate_args(specs, plan, seed=seed, fn="compare")
        if plan.gpus > specs.cluster.total_gpus:
            raise SpecError(f"compare: plan {plan.label} needs {plan.gpus} GPUs; cluster '{specs.cluster.name}' has "
                            f"{specs.cluster.total_gpus}; use a larger cluster or a smaller plan")
    check_seed(seed)
    from .planner.verify import Verifier

    simulator = functools.partial(_simulate, max_requests=max_requests, measured_at=measured_at)
    with Verifier(specs, workers=workers, seed=seed, simulator=simulator, executor=executor,
                  ray_address=ray_address) as verifier:
        outcomes = verifier.run(list(plans))
    return Comparison(plans=tuple(plans), labels=unique_labels(plans),
                      metrics=tuple(o.metrics for o in outcomes), errors=tuple(o.error for o in outcomes))


__all__ = ["Comparison", "compare", "unique_labels"]
