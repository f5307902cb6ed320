"""``apex-opt compare PLAN PLAN ...``: several plans on one workload, side by side."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from ..calibration.profile import resolve_profile
from ..compare import compare as run
from ..errors import SpecError, shorten
from ..metrics import METRICS, Metric, canonical_name
from ..perf.provenance import calibration_notes, calibration_sources
from ..schema.plan import Plan
from ..schema.slo import SLO
from ..specs import Specs
from .options import SLOType, calibration_option, executor_options
from .render import console, echo_json, table
from .simulate import PLAN_FORM, PLAN_KEYS, build_deployment, deployment_options, parse_role_spec


def build_plans(ctx: click.Context, specs_text: tuple[str, ...], *, slo: SLO | None,
                **deployment: Any) -> tuple[Specs, list[Plan]]:
    """The specs and one plan per PLAN text: the plan options (--tp, --weight-dtype, --engine, ...) are where every
    PLAN starts, its keys override them. The quick-form cluster is sized to the largest plan."""
    if deployment.get("prefill_spec") is not None or deployment.get("decode_spec") is not None:
        raise SpecError("compare takes aggregated plans as PLAN arguments; --prefill/--decode describe one "
                        "disaggregated deployment: simulate it with apex-opt simulate --prefill ... --decode ...")
    if not specs_text:
        raise SpecError(f"compare needs at least one PLAN, e.g. apex-opt compare tp=1 tp=2,dp=1 (form: {PLAN_FORM})")
    fields = [parse_role_spec("PLAN", text, keys=PLAN_KEYS, form=PLAN_FORM) for text in specs_text]
    shape = {k: deployment[k] for k in ("tp", "pp", "dp", "ep")}
    if deployment.get("cluster") is None and deployment.get("nodes") is None:
        per_node = deployment.get("gpus_per_node") or 8
        gpus = max(int(f.get("dp", shape["dp"])) * int(f.get("pp", shape["pp"])) * int(f.get("tp", shape["tp"]))
                   for f in fields)
        deployment["nodes"] = max(1, -(-gpus // per_node))
        deployment["gpus_per_node"] = per_node
    specs, base = build_deployment(ctx, slo=slo, **deployment)
    assert isinstance(base, Plan)  # no --prefill/--decode here
    plans = []
    for text, f in zip(specs_text, fields, strict=True):
        plan = Plan.parse({**base.model_dump(exclude_unset=False), **f}, source=f"PLAN {shorten(text)}", kind="plan")
        if plan.gpu not in specs.gpus:
            raise SpecError(f"PLAN {shorten(text)}: gpu={shorten(plan.gpu)} is not a GPU of the cluster (its GPUs: "
                            f"{', '.join(specs.gpus)}); give --cluster with that GPU, or drop gpu=")
        if plan.gpus > specs.cluster.total_gpus:
            raise SpecError(f"PLAN {shorten(text)} needs {plan.gpus} GPUs; cluster '{specs.cluster.name}' has "
                            f"{specs.cluster.total_gpus}. Lower its dp/tp/pp or add --nodes")
        plans.append(plan)
    return specs, plans


def best_cells(metric: Metric, values: list[Any]) -> set[int]:
    """The columns holding the best value of a row (none when every column has it, or the metric has no sense)."""
    numbers = [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]
    finite = [x for x in numbers if x is not None]
    if metric.sense == 0 or len(finite) < 2 or len(set(finite)) == 1:
        return set()
    best = max(finite) if metric.sense > 0 else min(finite)
    return {i for i, x in enumerate(numbers) if x == best}


@click.command()
@click.argument("plan_specs", metavar="PLAN...", nargs=-1)
@deployment_options
@click.option("--slo", type=SLOType(), default=None, help="e.g. ttft=200ms,tpot.p90=50ms,attainment=95%")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max-requests", type=click.IntRange(min=1), default=None, help="replay only the first N requests")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="simulations run at once (at most the CPUs of this machine)")
@executor_options
@click.option("--metric", "metric_names", multiple=True, metavar="NAME",
              help="rows to show, by registry name (docs/metrics.md); repeat for more (default: the usual rows)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@calibration_option
@click.pass_context
def compare(ctx: click.Context, plan_specs: tuple[str, ...], slo: SLO | None, seed: int, max_requests: int | None,
            workers: int, metric_names: tuple[str, ...], fmt: str, measured_at: str, calibration: Path | None,
            prefix_caching: bool | None, executor: str = "local", ray_address: str | None = None,
            **deployment: Any) -> None:
    """Simulate several plans on one workload and show them side by side: one column per PLAN, one row per metric.

    Each PLAN is written like --prefill's spec, with engine settings allowed too, e.g. tp=4,dp=2 or
    tp=4,pp=2,weight_dtype=fp8,engine=vllm-v1. The plan options (--tp, --weight-dtype, --engine, ...) set what
    every PLAN starts from; its keys override them. The best value of each row is marked with *.

    \b
    apex-opt compare tp=1,dp=2 tp=2 --model llama-3.1-8b --workload synthetic:rate=8rps,requests=200
    apex-opt compare tp=8 tp=4,dp=2 tp=4,dp=2,weight_dtype=fp8 --slo ttft=300ms,tpot=50ms --format json
    """
    for name in metric_names:  # before any simulation
        if canonical_name(name) not in METRICS:
            raise SpecError(f"--metric {shorten(name)}: not a registered metric; see docs/metrics.md, e.g. --metric "
                            "ttft_p99_s --metric cost_per_mtok_usd")
    specs, plans = build_plans(ctx, plan_specs, slo=slo, **deployment)
    specs = dataclasses.replace(specs, calibration=resolve_profile(calibration))
    if prefix_caching is not None:
        from ..simulate import with_engine_settings

        specs = with_engine_settings(specs, prefix_caching=prefix_caching)
    result = run(specs, plans, seed=seed, workers=workers, max_requests=max_requests, measured_at=measured_at,
                 executor=executor, ray_address=ray_address)
    if fmt == "json":
        data = result.to_dict()
        for entry, text in zip(data["plans"], plan_specs, strict=True):
            entry["spec"] = text
        echo_json({"model": specs.model.name, "cluster": specs.cluster.name, "workload": specs.workload.name,
                   "engine": specs.engine.name, "slo": specs.slo.describe() if not specs.slo.is_empty else None,
                   **data, "calibration": calibration_sources(specs.gpus.values(), specs.calibration),
                   "notes": calibration_notes(specs.gpus.values(), specs.calibration)})
        if all(m is None for m in result.metrics):
            ctx.exit(1)
        return
    rows = []
    for m, values in result.rows(list(metric_names) or None):
        marked = best_cells(m, values)
        cells = [m.format(v) + ("*" if i in marked else "") for i, v in enumerate(values)]
        rows.append([f"{m.label} ({m.unit})" if "/" in m.unit and m.fmt != "usd" else m.label, *cells])
    slo_text = f", SLO {specs.slo.describe()}" if not specs.slo.is_empty else ""
    out = console()
    out.print(table(escape(f"{specs.model.name} on {specs.cluster.name} ({specs.engine.name}), workload "
                           f"{specs.workload.name}{slo_text}"),
                    ["metric", *(escape(f"{text}\n{label}") for text, label in zip(plan_specs, result.labels,
                                                                                   strict=True))], rows))
    for label, error in zip(result.labels, result.errors, strict=True):
        if error:
            out.print(f"not simulated: {escape(label)}: {escape(error)}", highlight=False)
    for note in calibration_notes(specs.gpus.values(), specs.calibration):
        out.print(f"note: {escape(note)}", highlight=False)
    if all(m is None for m in result.metrics):
        ctx.exit(1)
