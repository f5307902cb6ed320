"""``apex-opt calibrate``: fit the engine and hardware constants your measured runs determine, and write a
calibration profile (``apex_opt.calibration.calibrate``)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click

from ..calibrate import calibrate as run_calibrate
from ..calibration.constants import CONSTANTS
from ..errors import SpecError, shorten
from .options import atomic_output, check_output_file
from .render import console, echo_json, table
from .validate import overrides_given, run_options

_CONSTANT_HELP = "; ".join(f"{c.name}: {c.meaning}" for c in CONSTANTS.values())


@click.command()
@click.option("--measurements", "files", multiple=True, required=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="measured runs, in any format validate reads (repeatable)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="write the calibration profile here (YAML); use it with --calibration FILE")
@click.option("--calibration", "base", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="start from this profile instead of the built-in constants")
@click.option("--fit", "fit", default=None, metavar="NAME,NAME",
              help=f"fit only these constants (default: every one the runs could touch). {_CONSTANT_HELP}")
@click.option("--name", default=None, help="the profile's name [default: the --out file's stem]")
@run_options
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def calibrate(ctx: click.Context, files: tuple[Path, ...], out: Path | None, base: Path | None, fit: str | None,
              name: str | None, seed: int, fmt: str, **options: Any) -> None:
    """Fit the engine and hardware constants that your measured runs determine (host time per iteration and per
    sequence, the API-server path for client-side runs, sustained GPU compute and memory throughput), say which
    were left at their defaults and why, print the error before and after, and write a profile that --calibration
    FILE applies on simulate, solve, estimate, capacity and validate.

    Each run is simulated once per trial value, so a fit takes tens of simulations of every run: give runs of a
    few thousand requests at most.
    """
    if out is not None:
        check_output_file("--out", out)
    overrides = overrides_given(ctx, options)
    wanted = None
    if fit is not None:
        wanted = [w.strip() for w in fit.split(",") if w.strip()]
        if not wanted:
            raise SpecError(f"--fit {shorten(fit)}: name at least one constant, e.g. --fit step_s,per_seq_s")
    progress = None
    if fmt == "table" and sys.stderr.isatty():
        def progress(text: str) -> None:
            click.echo(click.style(f"... {text}", dim=True), err=True)

    report = run_calibrate(files, overrides=overrides, base=base, constants=wanted,
                           name=name or (out.stem if out is not None else "my-cluster"), seed=seed,
                           progress=progress)
    if out is not None:
        with atomic_output(out) as f:
            f.write(report.profile.to_yaml())
    if fmt == "json":
        echo_json({**report.to_dict(), "out": str(out) if out is not None else None})
        return
    con = console()
    con.print(table("fitted", ["constant", "meaning", "before", "after"],
                    [[f.key, f.meaning, f"{f.before:.4g}", f"{f.after:.4g}" + _bound(f.key, f.after)]
                     for f in report.fitted]) if report.fitted else "No constant was fitted.")
    if report.left:
        con.print(table("left at their defaults", ["constant", "value", "why"],
                        [[c.key, f"{c.value:.4g}", c.reason] for c in report.left]))
    fit_metrics = report.profile.report.get("fit_metrics", ())
    for run in report.runs:
        rows = [[metric, f"{measured:,.2f}", _pct(run.error(metric, "before")), _pct(run.error(metric, "after")),
                 "fitted" if metric in fit_metrics else ""] for metric, measured in run.measured.items()]
        con.print(table(f"{run.name} ({run.plan}): measured, and the error before and after",
                        ["metric", "measured", "before", "after", ""], rows))
    eb, ea = report.error_before, report.error_after
    con.print(f"Fitted metrics: mean |error| {_pct(eb['mean_abs'], sign=False)} -> {_pct(ea['mean_abs'], sign=False)}, "
              f"largest {_pct(eb['max_abs'], sign=False)} -> {_pct(ea['max_abs'], sign=False)} "
              f"({report.simulations} simulations).", highlight=False)
    for note in report.notes:
        con.print(f"Note: {note}", highlight=False)
    if out is not None:
        con.print(f"Wrote {out}: use it with --calibration {out}", highlight=False)
    else:
        con.print("Nothing written: give --out FILE to keep the profile.", highlight=False)


def _pct(x: float, sign: bool = True) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x * 100:+.1f}%" if sign else f"{x * 100:.1f}%"


def _bound(key: str, value: float) -> str:
    from ..calibration.constants import parse_key

    parsed = parse_key(key)
    if parsed is None:
        return ""
    c = parsed[0]
    return " (at its bound)" if math.isclose(value, c.lower, abs_tol=1e-12) or math.isclose(value, c.upper) else ""
