"""``apex-opt capacity``: the highest request rate a plan sustains under the SLO, found by simulation, and the
GPUs and dollars a target rate takes (a thin layer over :func:`apex_opt.capacity.capacity`)."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ..calibration.profile import resolve_profile
from ..capacity import MAX_SIMULATIONS, NO_SLO
from ..capacity import capacity as run
from ..errors import SpecError
from ..schema.plan import Plan
from ..schema.slo import SLO
from ..specs import with_engine_settings
from ..units import format_time, parse_fraction, parse_rate
from .options import SLOType, calibration_option
from .render import console, echo_json, table
from .simulate import build_deployment, deployment_options


def _parsed(parse: Callable[[str], float]) -> Callable[[click.Context, click.Parameter, str | None], float | None]:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
        if value is None:
            return None
        try:
            return parse(value)
        except SpecError as exc:
            raise click.BadParameter(exc.render("cli"), ctx, param) from None
    return convert


@click.command()
@deployment_options
@click.option("--slo", type=SLOType(), default=None,
              help="the SLO a rate must meet (required), e.g. ttft=200ms,tpot=50ms or ttft.p99=1s,attainment=95%")
@click.option("--precision", default="2%", show_default=True, callback=_parsed(parse_fraction),
              help="stop when the capacity is known within this relative width")
@click.option("--rate", "target_rate", default=None, metavar="RATE", callback=_parsed(parse_rate),
              help="target load, e.g. 5rps: how many replicas of the plan, GPUs and $/hour it takes")
@click.option("--max-rate", default=None, metavar="RATE", callback=_parsed(parse_rate),
              help="search no higher than this rate")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@calibration_option
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.png", help="also draw TTFT and TPOT versus offered load of every rate simulated there")
@click.pass_context
def capacity(ctx: click.Context, slo: SLO | None, precision: float, target_rate: float | None,
             max_rate: float | None, seed: int, fmt: str, measured_at: str, prefix_caching: bool | None,
             calibration: Path | None, plot_file: Path | None = None, **deployment: Any) -> None:
    """The highest request rate a plan sustains under the SLO, found by simulation: the workload is replayed at
    rescaled rates (same lengths and arrival pattern), bracketed by doubling or halving, then bisected to
    --precision (at most 30 simulations). With --rate, the replicas of the plan, GPUs, $/hour and $/Mtok (per
    million output tokens) that rate takes.

    \b
    apex-opt capacity --model llama-3.1-8b --tp 1 --slo ttft=200ms,tpot=30ms --rate 20rps \\
        --workload synthetic:rate=4rps,requests=200,prompt=1024,output=128,seed=0
    """
    specs, plan = build_deployment(ctx, slo=slo, **deployment)
    if specs.slo.is_empty:  # the library's message names load_specs(slo=); here the fix is the flag
        raise SpecError(NO_SLO + "{slo=}ttft=200ms,tpot=50ms", option="slo")
    specs = dataclasses.replace(specs, calibration=resolve_profile(calibration))
    if prefix_caching is not None:
        specs = with_engine_settings(specs, prefix_caching=prefix_caching)
    if plot_file is not None:  # a bad --plot path fails now, not after the search
        from ..plots import check_path

        check_path(plot_file)
    with _progress_bar() as progress:
        result = run(specs, plan, precision=precision, max_rate=max_rate, seed=seed, measured_at=measured_at,
                     target_rate=target_rate, progress=progress)
    if plot_file is not None:
        from ..plots import plot_capacity

        plot_capacity(result, plot_file)
        click.echo(f"Wrote {plot_file}", err=True)
    if fmt == "json":
        echo_json({"model": specs.model.name, "cluster": specs.cluster.name, "workload": specs.workload.name,
                   "engine": specs.engine.name, "slo": specs.slo.describe(), "plan": plan.model_dump(mode="json"),
                   **result.to_dict()})
        return
    s, r = result.summary, result
    slo_ = specs.slo
    stat = {"ttft": slo_.ttft_stat if slo_.ttft is not None else "p99",
            "tpot": slo_.tpot_stat if slo_.tpot is not None else "p99"}
    at_least = "≥ " if r.stopped == "max_rate" else ""
    row = [plan.label if isinstance(plan, Plan) else "deployment", r.gpus, f"{at_least}{r.rate:.2f}", f"{r.per_replica_rate:.2f}",
           format_time(s[f"ttft_{stat['ttft']}_s"]), format_time(s[f"tpot_{stat['tpot']}_s"]),
           f"{s['slo_attainment'] * 100:.1f}%", f"{s['goodput_req_s']:.2f}", f"${r.cost_per_hour_usd:,.2f}",
           f"${r.cost_per_mtok_usd:,.2f}"]
    columns = ["plan", "GPUs", "req/s", "per replica", f"TTFT {stat['ttft']}", f"TPOT {stat['tpot']}", "attained",
               "goodput", "$/hour", "$/Mtok out"]
    out = console()
    out.print(table(f"{specs.model.name} on {specs.gpu.name if len(specs.gpus) == 1 else ', '.join(specs.gpus)} "
                    f"({specs.engine.name}), workload {specs.workload.name}, SLO {slo_.describe()}"
                    + ("" if isinstance(plan, Plan) else f"; deployment {plan.label}"), columns, [row]))
    width = f"within {r.precision * 100:.1f}% (next rate tried {r.upper:.2f} req/s fails)" if r.upper else \
        "a lower bound"
    out.print(f"capacity     {r.rate:.2f} req/s, {width}; {r.simulations} simulations", highlight=False)
    if r.target is not None:
        t = r.target
        unit = f"tp{plan.tp} pp{plan.pp}" if isinstance(plan, Plan) else "the deployment"
        out.print(f"target       {t.rate:g} req/s takes {t.replicas} x {unit} ({t.gpus} GPUs), "
                  f"${t.cost_per_hour_usd:,.2f}/hour, ${t.cost_per_mtok_usd:,.2f} per million output tokens",
                  highlight=False)
    for note in r.notes:
        out.print(f"note         {note}", highlight=False)


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr (simulations run out of the most the search may take, time left at that pace)
    when stderr is a terminal; else None. The search usually stops well before the most, so the time left is an
    upper bound and the bar jumps to the end when it does."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("simulating rates"), BarColumn(), MofNCompleteColumn(), TextColumn("simulations, at most"),
                  TimeRemainingColumn(), TextColumn("left"), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("capacity", total=MAX_SIMULATIONS)

        def advance(done: int, most: int) -> None:
            bar.update(task, completed=done, total=most)

        yield advance
