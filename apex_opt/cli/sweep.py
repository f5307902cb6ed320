"""``apex-opt sweep``: a grid of rates, SLOs, GPU kinds, models or engine settings, one row per point."""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from ..errors import SpecError, shorten
from ..metrics import METRICS
from ..planner.objectives import OBJECTIVE_NAMES
from ..sweep import AXES, PLAN_AXES, columns
from ..sweep import sweep as run
from .options import atomic_output, calibration_option, check_output_file, executor_options
from .render import echo_json, table
from .simulate import PLAN_FORM, PLAN_KEYS, parse_role_spec

#: metrics the table shows (the CSV and JSON hold every one)
TABLE_METRICS = ("ttft_p99_s", "tpot_p99_s", "throughput_output_tok_s", "slo_attainment", "goodput_req_s",
                 "energy_per_output_token_j", "cost_per_mtok_usd")
#: what --plot draws unless --plot-y says otherwise
PLOT_METRICS = ("ttft_p99_s", "tpot_p99_s", "throughput_output_tok_s", "cost_per_mtok_usd")
#: keys of a --grid file besides the axes
FILE_KEYS = ("plan",)


def _split(values: Sequence[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _scalar(text: str) -> Any:
    """``4`` -> 4, ``true`` -> True, anything else stays text (plan settings from --vary)."""
    lowered = text.lower()
    if lowered in ("true", "on", "yes"):
        return True
    if lowered in ("false", "off", "no"):
        return False
    try:
        return int(text)
    except ValueError:
        return text


def read_grid(path: Path) -> tuple[dict[str, Any], Any]:
    """The axes and the plan (or None) of a --grid YAML file: axis names as keys, a list (or one value) each,
    and optionally ``plan`` (a spec such as ``tp=2`` or a mapping of plan fields)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"--grid {shorten(str(path))}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"--grid {shorten(str(path))}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise SpecError(f"--grid {shorten(str(path))}: expected a mapping of axes to values, e.g.\n  rate: [1rps, "
                        "2rps]\n  gpu: [h100-sxm-80gb, a100-sxm-80gb]\n  plan: tp=2")
    unknown = [str(k) for k in data if str(k).replace("-", "_") not in (*AXES, *FILE_KEYS)]
    if unknown:
        raise SpecError(f"--grid {shorten(str(path))}: unknown key{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(shorten, unknown))}; the keys are {', '.join((*AXES, *FILE_KEYS))}")
    plan = data.pop("plan", None)
    return {str(k).replace("-", "_"): v for k, v in data.items()}, plan


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """``rows`` to a .csv file (or .parquet with pyarrow), one column per key (missing and NaN values: empty)."""
    names = columns(rows)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            raise SpecError(f"--out {shorten(str(path))}: writing Parquet needs pyarrow, which is not installed; "
                            "pip install pyarrow, or write a .csv file") from None
        clean = [{k: _cell(r.get(k)) for k in names} for r in rows]
        tmp = path.with_name(f".{path.name}.tmp")  # renamed into place at the end: never a partial file
        try:
            pq.write_table(pa.Table.from_pylist(clean), str(tmp))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    if suffix != ".csv":
        raise SpecError(f"--out {shorten(str(path))}: give a .csv or .parquet file name")
    with atomic_output(path) as f:
        writer = csv.DictWriter(f, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if _cell(r.get(k)) is None else r[k] for k in names})


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cell(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def _progress(enabled: bool) -> tuple[Any, Callable[[int, int], None] | None]:
    if not enabled:
        return None, None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("points"),
                        TimeElapsedColumn(), TextColumn("elapsed,"), TimeRemainingColumn(), TextColumn("left"),
                        transient=True, console=Console(stderr=True))
    task = progress.add_task("sweep", total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


def plot_rows(rows: list[dict[str, Any]], path: Path, axes: list[str], x: str | None, y: Sequence[str],
              group: str | None) -> None:
    """Call :func:`apex_opt.plots.plot_sweep` with defaults from the swept columns: x the rate (else the first
    axis with several values), group the next such axis."""
    try:
        from ..plots import plot_sweep
    except ModuleNotFoundError as exc:
        if exc.name not in ("apex_opt.plots", "matplotlib"):
            raise
        missing = "matplotlib (pip install 'apex-opt[plot]')" if exc.name == "matplotlib" else "apex_opt.plots"
        raise SpecError(f"--plot {shorten(str(path))}: plotting needs {missing}"
                        ", which is not installed; the rows are complete without it (use --out)") from None
    varied = [a for a in axes if len({repr(r.get(a)) for r in rows}) > 1] or axes
    x = x or ("rate_req_s" if "rate_req_s" in varied else varied[0])
    if group is None:
        group = next((a for a in varied if a != x), None)
    y = list(y) or [m for m in PLOT_METRICS if any(m in r for r in rows)]
    plot_sweep(rows, path, x=x, y=y, group=group)


@click.command()
@click.option("--grid", "grid_file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="YAML file of axes (rate: [1rps, 2rps], gpu: [...], ...) and optionally plan: tp=2; flags "
                   "given here replace the file's axis of the same name")
@click.option("--rate", "rates", multiple=True, metavar="R,R,...", help="request rates, e.g. 1rps,2rps,4rps")
@click.option("--slo", "slos", multiple=True, metavar="SLO",
              help="an SLO point, e.g. ttft=200ms,tpot=50ms; repeat for more")
@click.option("--gpu", "gpus", multiple=True, metavar="NAME,...", help="GPU kinds, e.g. h100-sxm-80gb,a100-sxm-80gb")
@click.option("--model", "models", multiple=True, metavar="NAME,...", help="models [default: llama-3.1-70b]")
@click.option("--engine", "engines", multiple=True, metavar="NAME,...", help="engines: catalog names or engine YAML files [default: vllm-0.6]")
@click.option("--workload", "workloads", multiple=True, metavar="WORKLOAD",
              help="catalog name, trace or synthetic:... expression [default: lmsys]; repeat for more")
@click.option("--vary", "varied", multiple=True, metavar="KEY=V,V,...",
              help=f"a plan or engine setting to sweep, with --plan: one of {', '.join(PLAN_AXES)}, e.g. "
                   "--vary max_num_seqs=64,128,256")
@click.option("--plan", "plan_spec", default=None, metavar="SPEC",
              help=f"simulate this plan at every point, {PLAN_FORM}; without it every point is a solve that "
                   "reports its best verified plan (much slower)")
@click.option("--objective", type=click.Choice(list(OBJECTIVE_NAMES)), default="goodput-per-gpu", show_default=True,
              help="what each solve optimises (without --plan)")
@click.option("--cluster", default=None, help="catalog cluster or cluster YAML (instead of GPU kinds)")
@click.option("--nodes", type=click.IntRange(min=1), default=None, help="nodes of each point's quick-form cluster")
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=None, help="GPUs per node (quick form)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max-requests", type=click.IntRange(min=1), default=None, help="replay only the first N requests")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="points run at once (at most the CPUs of this machine)")
@executor_options
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="write the rows to FILE.csv (or FILE.parquet, with pyarrow)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="what to print on stdout")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="draw the metrics against the swept rate (or first axis), a line per GPU kind (or next axis)")
@click.option("--plot-x", default=None, metavar="COLUMN", help="the x axis of --plot (default: rate_req_s)")
@click.option("--plot-y", multiple=True, metavar="METRIC",
              help=f"a panel of --plot; repeat for more (default: {', '.join(PLOT_METRICS)})")
@click.option("--plot-group", default=None, metavar="COLUMN", help="one line per value of this column")
@calibration_option
@click.pass_context
def sweep(ctx: click.Context, grid_file: Path | None, rates: tuple[str, ...], slos: tuple[str, ...],
          gpus: tuple[str, ...], models: tuple[str, ...], engines: tuple[str, ...], workloads: tuple[str, ...],
          varied: tuple[str, ...], plan_spec: str | None, objective: str, cluster: str | None, nodes: int | None,
          gpus_per_node: int | None, seed: int, max_requests: int | None, workers: int, out_file: Path | None,
          fmt: str, plot_file: Path | None, plot_x: str | None, plot_y: tuple[str, ...], plot_group: str | None,
          calibration: Path | None, executor: str = "local", ray_address: str | None = None) -> None:
    """Run a grid of problems and write one row per point, with the metrics of docs/metrics.md as columns.

    Each point is one plan simulated (--plan tp=2: the same plan, with the point's GPU kind, engine and --vary
    settings) or, without --plan, a solve whose best verified plan is reported (much slower: every point searches
    and simulates). Points run in parallel on --workers processes; rows come in grid order (the last axis varies
    fastest). A point that fails (an unknown GPU, a plan too large) keeps its row, with the reason in "error".

    \b
    apex-opt sweep --plan tp=2 --rate 1rps,2rps,4rps --gpu h100-sxm-80gb,a100-sxm-80gb --out sweep.csv
    apex-opt sweep --plan tp=1 --model llama-3.1-8b --vary max_num_seqs=32,64,128 --rate 8rps,16rps
    apex-opt sweep --grid sweep.yaml --out sweep.parquet --plot sweep.png
    """
    _check_outputs(out_file, plot_file)
    grid, plan = _grid_from_flags(grid_file, plan_spec, varied, rate=_split(rates), slo=list(slos), gpu=_split(gpus),
                                  model=_split(models), engine=_split(engines), workload=list(workloads))
    rows = _run(grid, plan=plan, cluster=cluster, nodes=nodes, gpus_per_node=gpus_per_node, objective=objective,
                seed=seed, max_requests=max_requests, workers=workers, calibration=calibration, executor=executor,
                ray_address=ray_address)
    if out_file is not None:
        write_rows(rows, out_file)
    axes = [c for c in columns(rows) if c not in METRICS and c not in ("plan", "error")]
    if plot_file is not None:
        plot_rows(rows, plot_file, axes, plot_x, plot_y, plot_group)
    _render(rows, axes, fmt)
    _say_written(out_file, plot_file)
    if rows and all(r["error"] for r in rows):
        ctx.exit(1)


def _check_outputs(out_file: Path | None, plot_file: Path | None) -> None:
    """Fail before the sweep on an --out or --plot path that cannot be written, or an --out format this
    environment cannot write."""
    for option, path in (("--out", out_file), ("--plot", plot_file)):
        if path is not None:
            check_output_file(option, path)
    if out_file is None:
        return
    if out_file.suffix.lower() not in (".csv", ".parquet"):
        raise SpecError(f"--out {shorten(str(out_file))}: give a .csv or .parquet file name")
    if out_file.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ModuleNotFoundError:
            raise SpecError(f"--out {shorten(str(out_file))}: writing Parquet needs pyarrow, which is not installed; "
                            "pip install pyarrow, or write a .csv file") from None


def _vary_axis(item: str) -> tuple[str, list[Any]]:
    """One --vary KEY=V,V,... as an axis name and its values."""
    key, sep, values = item.partition("=")
    key = key.strip().lower().replace("-", "_")
    if not sep or not values.strip():
        raise SpecError(f"--vary {shorten(item)}: write KEY=V,V,..., e.g. --vary max_num_seqs=64,128")
    if key not in PLAN_AXES:
        raise SpecError(f"--vary {shorten(item)}: '{key}' is not a plan or engine setting; use one of "
                        f"{', '.join(PLAN_AXES)} (rates, SLOs, GPUs, models and engines have their own flags)")
    return key, [_scalar(v) for v in _split([values])]


def _grid_from_flags(grid_file: Path | None, plan_spec: str | None, varied: Sequence[str],
                     **flags: list[Any]) -> tuple[dict[str, Any], Any]:
    """The grid (the --grid file's axes, replaced by the axes given as flags and --vary) and the plan (--plan,
    else the file's), or SpecError."""
    grid, plan = read_grid(grid_file) if grid_file is not None else ({}, None)
    for item in varied:
        key, values = _vary_axis(item)
        flags[key] = values
    grid.update({k: v for k, v in flags.items() if v})
    if plan_spec is not None:
        plan = parse_role_spec("--plan", plan_spec, keys=PLAN_KEYS, form=PLAN_FORM)
    elif isinstance(plan, str):
        plan = parse_role_spec("plan", plan, keys=PLAN_KEYS, form=PLAN_FORM)
    if not grid:
        raise SpecError("sweep needs at least one axis: e.g. --rate 1rps,2rps,4rps, --gpu h100-sxm-80gb,"
                        "a100-sxm-80gb, --slo ... (repeat) or --grid FILE.yaml")
    return grid, plan


def _run(grid: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
    """:func:`apex_opt.sweep.sweep`, with a progress bar on stderr when it is a terminal."""
    progress, update = _progress(sys.stderr.isatty())
    if progress is None:
        return run(grid, progress=update, **kw)
    with progress:
        return run(grid, progress=update, **kw)


def _render(rows: list[dict[str, Any]], axes: list[str], fmt: str) -> None:
    """The rows on stdout: a JSON document or a table."""
    if fmt == "json":
        echo_json({"points": len(rows), "failed": sum(1 for r in rows if r["error"]), "rows": rows})
    else:
        _render_table(rows, axes)


def _render_table(rows: list[dict[str, Any]], axes: list[str]) -> None:
    """The rows as a table on stdout (the axes that change and the table metrics), then the failed points."""
    shown = [m for m in TABLE_METRICS if any(m in r for r in rows)]
    changing = [a for a in axes if len({repr(r.get(a)) for r in rows}) > 1]
    body = [_table_row(r, changing, shown) for r in rows]
    out = Console(width=max(160, Console().width), soft_wrap=False)
    out.print(table(escape(_table_title(rows, axes, changing)),
                    [*changing, "plan", *(METRICS[m].label for m in shown)], body))
    _print_failures(out, rows, axes)


def _print_failures(out: Console, rows: list[dict[str, Any]], axes: list[str]) -> None:
    """A line per failed point: its axis values and the reason."""
    for r in rows:
        if r["error"]:
            point = ", ".join(f"{a}={r.get(a)}" for a in axes)
            out.print(f"failed: {escape(point)}: {escape(r['error'])}", highlight=False)


def _table_row(row: dict[str, Any], changing: list[str], shown: list[str]) -> list[str]:
    return [*(escape(_text(row.get(a))) for a in changing), escape(row["plan"]),
            *(METRICS[m].format(row.get(m)) for m in shown)]


def _table_title(rows: list[dict[str, Any]], axes: list[str], changing: list[str]) -> str:
    """The number of points and the axes that keep one value, e.g. ``sweep: 2 points; model llama-3.1-8b``."""
    same = [f"{a} {rows[0].get(a)}" for a in axes if a not in changing] if rows else []
    return f"sweep: {len(rows)} points" + (f"; {', '.join(same)}" if same else "")


def _say_written(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            click.echo(f"Wrote {path}", err=True)
