"""A grid of problems, one row per point: :func:`sweep` over request rates, SLOs, GPU kinds, models, engines,
workloads or plan and engine settings, on the local process pool or on Ray (``executor="ray"``).

Each point is either one plan simulated (``plan=`` given: the same plan, with the point's settings, at every
point) or a solve (no ``plan``: the point's best verified plan, found by :func:`apex_opt.solve` with
``objective``; much slower, as every point searches the plan space and simulates its candidates). A row holds
the point's axis values, the plan (``plan``, ``gpus``), ``error`` ("" when the point ran) and the point's
simulated metrics under their registry names (:mod:`apex_opt.metrics`). Rows come back in grid order (the last
axis varies fastest), whatever order the workers finish in; every point uses the same seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ApexOptError, SpecError, shorten
from .metrics import METRICS

#: the axes that change the problem, and the row column each is written to
PROBLEM_AXES = {"rate": "rate_req_s", "slo": "slo", "gpu": "gpu", "model": "model", "engine": "engine",
                "workload": "workload"}
#: the axes that change the plan (only with a plan: a solve chooses these itself)
PLAN_AXES = ("tp", "dp", "pp", "ep", "weight_dtype", "kv_dtype", "max_num_seqs", "max_num_batched_tokens",
             "max_model_len", "chunked_prefill", "cuda_graphs", "attention_backend")
#: every axis a grid may have
AXES = (*PROBLEM_AXES, *PLAN_AXES)
#: the most points one sweep runs
MAX_POINTS = 10_000


def expand_grid(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the last axis varying fastest; a single value is a one-value axis.

    >>> expand_grid({"rate": [1, 2], "gpu": ["h100-sxm-80gb", "a100-sxm-80gb"]})[:2]
    [{'rate': 1, 'gpu': 'h100-sxm-80gb'}, {'rate': 1, 'gpu': 'a100-sxm-80gb'}]
    """
    if not isinstance(grid, Mapping) or not grid:
        raise SpecError(f"sweep: the grid {shorten(grid)} is empty; give axes such as {{'rate': ['1rps', '2rps'], "
                        f"'gpu': ['h100-sxm-80gb']}} (axes: {', '.join(AXES)})")
    axes: dict[str, list[Any]] = {}
    for key, values in grid.items():
        name = str(key).strip().lower().replace("-", "_")
        if name not in AXES:
            raise SpecError(f"sweep: unknown axis {shorten(key)}; the axes are {', '.join(AXES)}")
        if name in axes:
            raise SpecError(f"sweep: the axis '{name}' is given twice")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise SpecError(f"sweep: the axis '{name}' has no values; give at least one, or leave it out")
        axes[name] = values
    count = math.prod(len(v) for v in axes.values())
    if count > MAX_POINTS:
        raise SpecError(f"sweep: the grid has {count:,} points, more than {MAX_POINTS:,}; sweep fewer values")
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _point_columns(point: Mapping[str, Any]) -> dict[str, Any]:
    from .units import parse_rate

    out: dict[str, Any] = {}
    for axis, value in point.items():
        if axis == "rate":
            out["rate_req_s"] = parse_rate(value)
        elif axis == "slo":
            out["slo"] = value if isinstance(value, str) else value.describe()
        else:
            out[PROBLEM_AXES.get(axis, axis)] = value
    return out


def _run_point(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: one point's row (an error a user can cause becomes the row's ``error``)."""
    from .schema.plan import Plan
    from .simulate import simulate
    from .specs import load_specs

    point, settings = job["point"], job["settings"]
    row: dict[str, Any] = {**_point_columns(point), "plan": "", "error": ""}
    try:
        problem = {**settings, **{k: v for k, v in point.items() if k in PROBLEM_AXES and k != "rate"}}
        fields: dict[str, Any] | None = None
        if job["plan"] is not None:
            fields = {**job["plan"], **{k: v for k, v in point.items() if k in PLAN_AXES}, "engine": problem["engine"]}
            if problem["cluster"] is None and problem["nodes"] is None:  # a quick-form cluster sized to the plan
                need = math.prod(int(fields.get(k, 1)) for k in ("dp", "pp", "tp"))
                problem["nodes"] = max(1, -(-need // (problem["gpus_per_node"] or 8)))
        specs = load_specs(problem["model"], problem["cluster"], gpu=problem["gpu"], nodes=problem["nodes"],
                           gpus_per_node=problem["gpus_per_node"], engine=problem["engine"],
                           workload=problem["workload"], slo=problem["slo"], calibration=problem["calibration"])
        if "rate" in point:
            specs = dataclasses.replace(specs, workload=specs.workload.with_rate(row["rate_req_s"]))
        if fields is not None:
            fields["engine"] = specs.engine.name  # an engine file's name, not its path
            if problem["gpu"] is not None or fields.get("gpu") not in specs.gpus:
                fields["gpu"] = specs.cluster.gpu  # the point's GPU kind
            plan = Plan.parse({k: v for k, v in fields.items() if v is not None}, source="sweep plan", kind="plan")
            if plan.gpus > specs.cluster.total_gpus:
                raise SpecError(f"plan {plan.label} needs {plan.gpus} GPUs; cluster '{specs.cluster.name}' has "
                                f"{specs.cluster.total_gpus}")
            result = simulate(specs, plan, seed=job["seed"], max_requests=job["max_requests"])
            metrics = result.summary().with_derived(plan.gpus)
            row["plan"] = plan.label
        else:
            from .planner import solve

            found = solve(specs, objective=job["objective"], top_k=1, seed=job["seed"], workers=1,
                          max_requests=job["max_requests"])
            if found.best is None or found.best.simulated is None:
                row["error"] = f"no verified plan ({found.status}): {found.explanation}".strip()
                return row
            metrics = found.best.simulated.with_derived(found.best.plan.gpus)
            row["plan"] = found.best.label
    except ApexOptError as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    row.update({name: metrics[name] for name in METRICS if name in metrics})
    return row


def sweep(grid: Mapping[str, Any], *, plan: Any = None, model: str = "llama-3.1-70b", gpu: str | None = None,
          cluster: str | None = None, nodes: int | None = None, gpus_per_node: int | None = None,
          engine: str = "vllm-0.6", workload: str = "lmsys", slo: Any = None, objective: str = "goodput-per-gpu",
          seed: int = 0, max_requests: int | None = None, workers: int = 2, calibration: str | Path | None = None,
          progress: Callable[[int, int], None] | None = None, executor: str = "local",
          ray_address: str | None = None) -> list[dict[str, Any]]:
    """Run every point of ``grid`` and return one row per point, in grid order.

    Parameters
    ----------
    grid : mapping
        Axis name -> list of values (a single value is a one-value axis). Problem axes: ``rate`` (``"2rps"`` or
        req/s; the workload is rescaled in time to it), ``slo`` (``"ttft=200ms,tpot=50ms"``), ``gpu``, ``model``,
        ``engine``, ``workload``. Plan axes (with ``plan`` only): ``tp``, ``dp``, ``pp``, ``ep``,
        ``weight_dtype``, ``kv_dtype``, ``max_num_seqs``, ``max_num_batched_tokens``, ``max_model_len``,
        ``chunked_prefill``, ``cuda_graphs``, ``attention_backend``.
    plan : Plan, mapping or None
        Simulate this plan at every point (its fields, e.g. ``{"tp": 2}``; the point's GPU kind and engine replace
        its own); None: solve every point and report its best verified plan.
    model, gpu, cluster, nodes, gpus_per_node, engine, workload, slo, calibration
        The settings of every point, as for :func:`apex_opt.load_specs`; an axis replaces its setting. Without
        ``cluster``, each point's cluster is ``nodes`` x ``gpus_per_node`` (8) of its GPU kind, sized to the plan.
    objective
        What a solve point optimises (``--objective`` names); unused with ``plan``.
    seed, max_requests
        As for :func:`apex_opt.simulate`; the same at every point.
    workers : int
        Points run at once, in worker processes (at most the CPUs of this machine; 1: in this process).
    executor, ray_address : str
        Where the points run: ``"local"`` (default) or ``"ray"`` (Ray tasks on the cluster at ``ray_address``,
        else on a Ray instance started here); the rows do not depend on it (:mod:`apex_opt.executors`).
    progress : callable, optional
        Called as ``progress(done, total)`` before the first point and after each point.

    Returns
    -------
    list of dict
        One row per point: its axis values (``rate`` as ``rate_req_s``), ``plan`` (the label), ``error`` ("" when
        the point ran) and the metrics of the registry, named and in units as in ``docs/metrics.md``.

    Raises
    ------
    SpecError
        For an unknown axis, a plan axis without a plan, or contradictory settings (both ``gpu`` and ``cluster``).
        A problem with one point only (an unknown GPU name, a plan too large) is that row's ``error``.

    Examples
    --------
    >>> import apex_opt as ax
    >>> rows = ax.sweep({"rate": ["2rps", "4rps"], "gpu": ["h100-sxm-80gb", "a100-sxm-80gb"]}, plan={"tp": 1},
    ...                 model="llama-3.1-8b", workload="synthetic:rate=1rps,requests=20,prompt=256,output=32",
    ...                 workers=1)
    >>> [(r["rate_req_s"], r["gpu"], r["num_completed"]) for r in rows]  # doctest: +NORMALIZE_WHITESPACE
    [(2.0, 'h100-sxm-80gb', 20), (2.0, 'a100-sxm-80gb', 20), (4.0, 'h100-sxm-80gb', 20),
     (4.0, 'a100-sxm-80gb', 20)]
    """
    from .executors import check_executor, make_executor, running
    from .schema.plan import Plan
    from .simulate import check_seed

    points = expand_grid(grid)
    check_seed(seed)
    check_executor(executor, ray_address)
    if isinstance(plan, Plan):
        plan_fields: dict[str, Any] | None = plan.model_dump(exclude_unset=True)
    elif isinstance(plan, Mapping):
        plan_fields = dict(plan)
    elif plan is None:
        plan_fields = None
    else:
        raise SpecError(f"sweep(plan={shorten(plan)}): give a Plan, a mapping of plan fields such as {{'tp': 2}}, "
                        "or None to solve every point")
    axes = set(points[0])
    if plan_fields is None and axes & set(PLAN_AXES):
        raise SpecError(f"sweep: the axes {', '.join(sorted(axes & set(PLAN_AXES)))} change a plan, and there is "
                        "none: give plan=... (--plan tp=2), or leave them out and let each point's solve choose")
    if cluster is not None and (gpu is not None or "gpu" in axes):
        raise SpecError("sweep: give either a cluster or GPU kinds (gpu=... or a gpu axis), not both")
    if cluster is None and gpu is None and "gpu" not in axes:
        gpu = "h100-sxm-80gb"
    if max_requests is not None and (isinstance(max_requests, bool) or not isinstance(max_requests, int)
                                     or max_requests < 1):
        raise SpecError(f"sweep(max_requests={shorten(max_requests)}): must be a whole number of at least 1")
    from .schema.slo import parse_slo

    for point in points:  # malformed rates and SLOs fail before any work
        _point_columns(point)
        if isinstance(point.get("slo"), str):
            parse_slo(point["slo"])
    settings = {"model": model, "gpu": gpu, "cluster": cluster, "nodes": nodes, "gpus_per_node": gpus_per_node,
                "engine": engine, "workload": workload, "slo": slo,
                "calibration": str(calibration) if isinstance(calibration, Path) else calibration}
    jobs = [{"point": p, "settings": settings, "plan": plan_fields, "seed": seed, "max_requests": max_requests,
             "objective": objective} for p in points]
    if progress:
        progress(0, len(jobs))
    finished = [0]

    def done(_: int) -> None:
        finished[0] += 1
        if progress:
            progress(finished[0], len(jobs))

    # rows by position, whatever order the points finish in; Ctrl-C (or a worker that died) leaves no process
    with running(make_executor(executor, workers=workers, ray_address=ray_address)) as runner:
        rows: list[dict[str, Any]] = runner.map_ordered(_run_point, [(job,) for job in jobs], on_done=done)
    return rows


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns of ``rows`` for a table or a CSV file: the axes, ``plan``, ``error``, then the metrics in
    registry order (each column that some row has)."""
    present: dict[str, None] = {}
    for r in rows:
        present.update(dict.fromkeys(r))
    front = [k for k in present if k not in METRICS]
    return front + [m for m in METRICS if m in present]


__all__ = ["AXES", "PLAN_AXES", "PROBLEM_AXES", "columns", "expand_grid", "sweep"]
