"""``apex-opt validate``: predicted vs measured for runs of your own (``apex_opt.validate``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..units import parse_fraction
from ..validate import validate as run_validate
from .options import (
    calibration_option,
    engine_options,
    limit_options,
    parse_layers,
    plan_options,
    speculative_option,
)
from .render import console, echo_json, table

#: options whose value is passed only when the user gave it (the files' own values otherwise)
_OVERRIDES = ("model", "gpu", "tp", "pp", "dp", "ep", "dp_attention", "layers_per_stage", "weight_dtype", "kv_dtype",
              "engine", "workload", "chunked_prefill", "max_num_batched_tokens", "max_num_seqs",
              "gpu_memory_utilization", "max_model_len", "cuda_graphs", "attention_backend", "prefix_caching",
              "measured_at")


def run_options(func: Callable) -> Callable:
    """What a measured run was (model, GPU, plan, workload, engine settings) when its file does not say: shared by
    ``validate`` and ``calibrate``; the values given replace the files' (:data:`_OVERRIDES`)."""
    options: list[Callable[[Callable], Callable]] = [
        click.option("--model", default=None,
                     help="catalog name, Hugging Face id or HF config.json (when the file does not say)"),
        click.option("--gpu", default=None,
                     help="GPU kind, a catalog name or a GPU YAML file (when the file does not say)"),
        plan_options,
        click.option("--workload", default=None,
                     help="the workload the benchmark replayed (catalog name, trace, synthetic:...); 'synthetic' "
                          "rebuilds a Poisson workload from a benchmark file's rate, request count and mean lengths"),
        limit_options,
        engine_options,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def overrides_given(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The :func:`run_options` the user gave on the command line (the files' own values stand for the rest)."""
    source = click.core.ParameterSource
    out: dict[str, Any] = {}
    for name in _OVERRIDES:
        if ctx.get_parameter_source(name) in (source.COMMANDLINE, source.ENVIRONMENT):
            value = options[name]
            out[name] = parse_layers(value) if name == "layers_per_stage" else value
    return out


@click.command()
@click.option("--measurements", "files", multiple=True, required=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="a vllm bench serve --save-result JSON, an sglang.bench_serving --output-file (JSONL), an "
                   "inference-perf lifecycle report or the README's CSV "
                   "(repeatable)")
@run_options
@click.option("--tolerance", default="10%", show_default=True,
              help="largest relative error accepted on any metric (exit 1 past it), e.g. 10% or 0.1")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@calibration_option
@speculative_option(search=False)
@click.pass_context
def validate(ctx: click.Context, files: tuple[Path, ...], tolerance: str, seed: int, fmt: str,
             calibration: Path | None, speculative: tuple[Any, ...] | None = None, **options: Any) -> None:
    """Simulate the plan of each measured run on its workload and print predicted vs measured (TTFT, TPOT/ITL,
    e2e: mean and the percentiles present; throughput) with relative errors; exit 1 when any metric is off by more
    than --tolerance.

    A measurement file must say, or the command line must give, the model, GPU, tp, engine and workload of the
    run; command-line values replace the files'. --speculative simulates the run with speculative decoding (the
    server's settings: the validate line ``apex-opt solve`` prints for a speculating plan carries them).
    """
    overrides = overrides_given(ctx, options)
    if speculative is not None:
        if len(speculative) > 1:
            raise click.BadParameter("k=auto is for solve; give the k the server ran with, e.g. k=3",
                                     param_hint="'--speculative'")
        overrides["speculative"] = speculative[0]
    report = run_validate(files, tolerance=parse_fraction(tolerance), overrides=overrides, seed=seed,
                          calibration=calibration)
    if fmt == "json":
        echo_json(report.to_dict())
    else:
        out = console()
        for run in report.runs:
            rows = [[c.metric, _fmt(c.measured), _fmt(c.predicted),
                     "n/a" if math.isnan(c.error) else f"{c.error * 100:+.1f}%", "ok" if c.ok else "OFF"]
                    for c in run.comparisons]
            out.print(table(f"{run.name}: {run.model} on {run.plan} ({run.engine}), workload {run.workload}, "
                            f"measured at the {run.measured_at}", ["metric", "measured", "predicted", "error", ""],
                            rows))
            for note in run.notes:
                out.print(f"Note: {note}", highlight=False)
        failures = report.failures
        if failures:
            out.print(f"{len(failures)} metric(s) off by more than {report.tolerance * 100:g}%: " +
                      ", ".join(f"{name} {c.metric} ({c.error * 100:+.1f}%)" if not math.isnan(c.error)
                                else f"{name} {c.metric} (not predicted)" for name, c in failures), highlight=False)
        else:
            n = sum(len(r.comparisons) for r in report.runs)
            out.print(f"All {n} metrics of {len(report.runs)} run(s) within {report.tolerance * 100:g}%.",
                      highlight=False)
    if not report.ok:
        ctx.exit(1)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.2f}"
