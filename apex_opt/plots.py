"""Pictures of solves, capacity searches and sweeps, written as PNG files (matplotlib, headless).

* :func:`plot_solve`: energy per output token and cost per million output tokens against TTFT and TPOT for the
  simulated plans of a :class:`~apex_opt.planner.result.PlanSet`, with the Pareto fronts, the recommended plan
  and the SLO bounds (``apex-opt solve --plot FILE.png``);
* :func:`plot_capacity`: TTFT and TPOT against offered load for every rate a capacity search simulated, with the
  SLO bounds and the capacity found (``apex-opt capacity --plot FILE.png``);
* :func:`plot_sweep`: one panel per metric, one line per group, from a list of row dicts (``apex-opt sweep``).

Figures are built on :class:`matplotlib.figure.Figure` without pyplot, so nothing depends on a display or on
pyplot's global state, and every picture has a fixed pixel size (``figsize`` x :data:`DPI`).

Metric names (the registry in :mod:`apex_opt.metrics`, docs/metrics.md) are read only through the accessors below
(:func:`ttft`, :func:`tpot`, ...), so renaming a summary key is a one-line change here.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SpecError, shorten

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .capacity import CapacityResult
    from .planner.result import PlanSet, RankedPlan
    from .schema.slo import SLO

#: pixels per inch of every saved picture
DPI = 100
#: a positive axis whose values span more than this ratio is drawn on a log scale
LOG_SPAN = 30.0
#: the statistic drawn for a latency the SLO does not bound
DEFAULT_STAT = "p99"


# --- metric accessors: the only place that knows summary key names ---------------------------------------------


def _first(d: Mapping[str, Any] | None, *names: str) -> float:
    """The first finite number among ``names`` in ``d`` (NaN when none is)."""
    for name in names:
        v = (d or {}).get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return math.nan


def ttft(d: Mapping[str, Any] | None, stat: str = "mean") -> float:
    """Time to first token (s) at ``stat`` (mean, p50, p90, p95, p99) of a simulated summary."""
    return _first(d, f"ttft_{stat}_s")


def tpot(d: Mapping[str, Any] | None, stat: str = "mean") -> float:
    """Time per output token (s) at ``stat`` of a simulated summary."""
    return _first(d, f"tpot_{stat}_s")


def energy_per_output_token(d: Mapping[str, Any] | None) -> float:
    """Joules per output token of a simulated summary."""
    return _first(d, "energy_per_output_token_j")


def cost_per_mtok(d: Mapping[str, Any] | None) -> float:
    """USD per million output tokens of a simulated summary."""
    return _first(d, "cost_per_mtok_usd")


# --- shared helpers --------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:  # the optional "plot" extra
        raise SpecError("plots need matplotlib, which is not installed in this environment; "
                        "pip install 'apex-opt[plot]' (or 'matplotlib>=3.8'); the results are complete without "
                        "the picture") from None
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def check_path(path: str | Path) -> Path:
    """``path`` as a Path when a picture can be written there (a .png in an existing folder), else a SpecError;
    the CLI checks ``--plot`` with it before a long solve or search.

    >>> check_path("plan.svg")
    Traceback (most recent call last):
    ...
    apex_opt.errors.SpecError: plot file 'plan.svg' is not a .png; give a name such as plan.png
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise SpecError(f"plot file {shorten(str(path))} is not a .png; give a name such as plan.png")
    if not path.parent.is_dir():
        raise SpecError(f"cannot write plot {shorten(str(path))}: folder {shorten(str(path.parent))} does not exist")
    if importlib.util.find_spec("matplotlib") is None:
        raise SpecError(f"plot file {shorten(str(path))}: plots need matplotlib, which is not installed in this "
                        "environment; pip install 'apex-opt[plot]' (or 'matplotlib>=3.8'), or leave out the plot")
    return path


def _save(fig: Figure, path: str | Path) -> Path:
    path = check_path(path)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _scale(axis: Axes, which: str, values: Iterable[float]) -> None:
    """A log scale on ``which`` ("x" or "y") when the positive ``values`` span more than :data:`LOG_SPAN`."""
    vs = [v for v in values if math.isfinite(v)]
    if vs and min(vs) > 0 and max(vs) / min(vs) > LOG_SPAN:
        (axis.set_xscale if which == "x" else axis.set_yscale)("log")


def _pareto(points: Sequence[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """The points no other point beats on both coordinates (both minimised), in increasing x.

    >>> [p[2] for p in _pareto([(1, 5, "a"), (2, 3, "b"), (3, 4, "c"), (4, 1, "d")])]
    ['a', 'b', 'd']
    """
    front: list[tuple[float, float, Any]] = []
    for x, y, tag in sorted(points, key=lambda p: (p[0], p[1])):
        if not front or y < front[-1][1]:
            front.append((x, y, tag))
    return front


def _empty(axis: Axes, text: str) -> None:
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes, color="0.4", wrap=True)
    axis.set_xticks([])
    axis.set_yticks([])


def _stat_name(stat: str) -> str:
    return "mean" if stat == "mean" else stat


def _solve_slo(result: PlanSet) -> SLO:
    """The SLO of a solve, read back from ``result.problem["slo"]`` (``SLO.describe()`` text)."""
    from .schema.slo import SLO, parse_slo

    text = str(result.problem.get("slo") or "").replace("(at the client)", "")
    text = re.sub(r"\s+", "", text).replace("<=", "=").replace(">=", "=")
    try:
        return parse_slo(text)
    except SpecError:
        return SLO()


# --- solve ---------------------------------------------------------------------------------------------------


def plot_solve(result: PlanSet, path: str | Path, *, slo: SLO | None = None) -> Path:
    """Write the energy and cost versus latency picture of a solve to ``path`` (a .png, 1100 x 800 pixels).

    Four panels: energy per output token (J) and cost ($ per million output tokens) against TPOT and TTFT, at the
    statistic the SLO bounds (the mean when it bounds none). Each point is a simulated plan: verified plans in
    colour, with their Pareto front (no other verified plan is both faster and cheaper) joined and labelled;
    simulated plans that missed the SLO in grey; the recommended plan (rank 1) as a star. Dashed lines are the
    SLO bounds.

    Parameters
    ----------
    result : PlanSet
        What :func:`apex_opt.solve` returned.
    path : str or Path
        A .png file in an existing folder.
    slo : SLO, optional
        The SLO to draw; by default read back from ``result.problem["slo"]``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    SpecError
        When ``path`` is not a .png in an existing folder, or matplotlib is missing.

    Examples
    --------
    >>> import apex_opt as ax, tempfile, os
    >>> from apex_opt.plots import plot_solve
    >>> specs = ax.load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=4, slo="ttft=500ms,tpot=50ms",
    ...                       workload="synthetic:rate=2rps,requests=30,prompt=256,output=32,seed=0")
    >>> png = plot_solve(ax.solve(specs, top_k=2, workers=1), os.path.join(tempfile.mkdtemp(), "solve.png"))
    >>> png.stat().st_size > 0
    True
    """
    slo = slo if slo is not None else _solve_slo(result)
    stats = {"ttft": slo.ttft_stat if slo.ttft is not None else "mean",
             "tpot": slo.tpot_stat if slo.tpot is not None else "mean"}
    verified = [p for p in result.plans if p.simulated]
    missed = [p for p in result.rejected if p.simulated]
    best = result.best if result.best is not None and result.best.simulated else None

    fig = _figure(11, 8)
    axes = fig.subplots(2, 2)
    rows = (("energy per output token (J)", energy_per_output_token),
            ("cost ($ per million output tokens)", cost_per_mtok))
    cols = (("tpot", "TPOT", tpot, slo.tpot), ("ttft", "TTFT", ttft, slo.ttft))
    for i, (ylabel, yof) in enumerate(rows):
        for j, (key, name, xof, bound) in enumerate(cols):
            axis = axes[i][j]
            stat = stats[key]

            def point(p: RankedPlan, xof: Any = xof, yof: Any = yof, stat: str = stat) -> tuple[float, float]:
                return xof(p.simulated, stat) * 1e3, yof(p.simulated)

            good = [(*point(p), p) for p in verified if all(map(math.isfinite, point(p)))]
            bad = [(*point(p), p) for p in missed if all(map(math.isfinite, point(p)))]
            axis.set_xlabel(f"{name} {_stat_name(stat)} (ms)")
            axis.set_ylabel(ylabel)
            if not good and not bad:
                _empty(axis, "no simulated plan has this metric")
                continue
            if bad:
                axis.scatter([q[0] for q in bad], [q[1] for q in bad], marker="x", color="0.6",
                             label="simulated, missed the SLO")
            if good:
                axis.scatter([q[0] for q in good], [q[1] for q in good], color="C0", label="verified")
                front = _pareto(good)
                axis.plot([q[0] for q in front], [q[1] for q in front], "-", color="C0", alpha=0.6,
                          label="Pareto front")
                for x, y, p in good:  # ranks, not labels: xPyD labels are long (the key is under the panels)
                    axis.annotate(f"#{p.rank}", (x, y), textcoords="offset points", fontsize=8, xytext=(6, 3))
            if best is not None:
                bx, by = point(best)
                if math.isfinite(bx) and math.isfinite(by):
                    axis.scatter([bx], [by], marker="*", s=220, color="C3", zorder=5, edgecolor="k",
                                 label=f"recommended: {best.label}")
            if bound is not None:
                axis.axvline(bound * 1e3, color="C3", linestyle="--", linewidth=1, label="SLO bound")
            xs = [q[0] for q in good + bad]
            ys = [q[1] for q in good + bad]
            _scale(axis, "x", xs + ([bound * 1e3] if bound is not None else []))
            _scale(axis, "y", ys)
            axis.grid(True, alpha=0.3)
    # one legend below the four panels, so it hides no point, with the key from ranks to plans (xPyD labels are long)
    handles: dict[str, Any] = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    from matplotlib.lines import Line2D

    for p in verified:
        handles[f"#{p.rank} {p.label} ({p.plan.gpus} GPUs)"] = Line2D([], [], linestyle="none")
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", fontsize=8, handlelength=1.5,
                   ncols=3 if max(map(len, handles)) <= 45 else 2)
    prob = result.problem
    title = (f"{prob.get('model', '?')} on {prob.get('gpus', '?')} x {prob.get('gpu', '?')}, "
             f"workload {_short(prob.get('workload', '?'))}\nSLO {prob.get('slo', 'none')}; {len(verified)} "
             f"verified and {len(missed)} rejected simulated plans; objective {result.objective.name}")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _short(text: Any, limit: int = 60) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- capacity --------------------------------------------------------------------------------------------------


def plot_capacity(result: CapacityResult, path: str | Path) -> Path:
    """Write the latency versus offered load picture of a capacity search to ``path`` (a .png, 1400 x 480 pixels).

    Three panels against the request rate of every simulation the search ran: TTFT and TPOT at the statistic the
    SLO bounds (p99 for one it does not bound), and the share of requests meeting the SLO. Rates that passed are
    dots, rates that failed crosses (a rate can fail with both latencies inside their bounds: on attainment, or
    because the queue grows). Dashed lines are the SLO bounds and the attainment target, the vertical line the
    capacity found.

    Raises
    ------
    SpecError
        When ``path`` is not a .png in an existing folder, or matplotlib is missing.

    Examples
    --------
    >>> import apex_opt as ax, tempfile, os
    >>> from apex_opt.plots import plot_capacity
    >>> specs = ax.load_specs("llama-3.1-8b", "h100x8", slo="ttft=200ms,tpot=30ms",
    ...                       workload="synthetic:rate=4rps,requests=60,prompt=512,output=64,seed=0")
    >>> c = ax.capacity(specs, ax.Plan(gpu="h100-sxm-80gb", tp=1), precision=0.1)
    >>> plot_capacity(c, os.path.join(tempfile.mkdtemp(), "capacity.png")).stat().st_size > 0
    True
    """
    from .schema.slo import SLO

    slo = result.slo if result.slo is not None else SLO()
    trials = sorted(result.trials, key=lambda t: t.rate)
    fig = _figure(14, 4.8)
    axes = fig.subplots(1, 3)
    panels = (
        ("TTFT", lambda t, stat: ttft(t.summary, stat) * 1e3, slo.ttft, slo.ttft_stat if slo.ttft is not None
         else DEFAULT_STAT, "ms"),
        ("TPOT", lambda t, stat: tpot(t.summary, stat) * 1e3, slo.tpot, slo.tpot_stat if slo.tpot is not None
         else DEFAULT_STAT, "ms"),
        ("requests meeting the SLO", lambda t, stat: t.attainment * 100, slo.attainment, "", "%"),
    )
    for axis, (name, of, bound, stat, unit) in zip(axes, panels, strict=True):
        pts = [(t.rate, of(t, stat), t.passed) for t in trials]
        pts = [p for p in pts if math.isfinite(p[1])]
        axis.set_xlabel("offered load (req/s)")
        axis.set_ylabel(f"{name} {_stat_name(stat)} ({unit})" if stat else f"{name} ({unit})")
        if not pts:
            _empty(axis, f"no simulation reported {name}")
            continue
        axis.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="C0", alpha=0.5)
        ok = [p for p in pts if p[2]]
        fail = [p for p in pts if not p[2]]
        if ok:
            axis.scatter([p[0] for p in ok], [p[1] for p in ok], color="C0", zorder=3, label="rate passes")
        if fail:
            axis.scatter([p[0] for p in fail], [p[1] for p in fail], marker="x", s=50, color="C3", zorder=3,
                         label="rate fails (a bound, the attainment, or the queue grows)")
        limit = bound * 100 if unit == "%" and bound is not None else (bound * 1e3 if bound is not None else None)
        if limit is not None:
            axis.axhline(limit, color="C3", linestyle="--", linewidth=1, label="SLO bound or attainment target")
        at_least = "≥ " if result.stopped == "max_rate" else ""
        axis.axvline(result.rate, color="C2", linewidth=1.5, label=f"capacity {at_least}{result.rate:.3g} req/s")
        _scale(axis, "x", [p[0] for p in pts])
        if unit == "ms":
            _scale(axis, "y", [p[1] for p in pts] + ([limit] if limit is not None else []))
        axis.grid(True, alpha=0.3)
    handles: dict[str, Any] = {}  # one legend below the panels, so it hides no point or line
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(f"capacity of {result.label} ({result.gpus} GPUs) under SLO {slo.describe()}: "
                 f"{result.simulations} simulations, stopped on {result.stopped}", fontsize=10)
    return _save(fig, path)


# --- sweep -----------------------------------------------------------------------------------------------------

#: key suffix -> unit shown on the axis (longest suffixes first)
_UNITS = (("_per_mtok_usd", "$ per million output tokens"), ("_per_hour_usd", "$/hour"), ("_req_s", "req/s"),
          ("_tok_s", "tok/s"), ("_rps", "req/s"), ("_usd", "$"), ("_bytes", "bytes"), ("_gib", "GiB"), ("_ktok", "thousand tokens"), ("_j", "J"),
          ("_pct", "%"), ("_s", "s"))


def _axis_label(key: str, values: Sequence[float]) -> tuple[str, float]:
    """An axis label with the unit for a metric key, and the factor to multiply values by (s -> ms when small,
    fractions -> %): the registry's label and unit (:mod:`apex_opt.metrics`) for a registered name, else the
    key's words and the unit its suffix names.

    >>> _axis_label("step_p99_s", [0.02, 0.03])
    ('step p99 (ms)', 1000.0)
    >>> _axis_label("replica_capacity_req_s", [3.0])
    ('replica capacity (req/s)', 1.0)
    """
    finite = [abs(v) for v in values if math.isfinite(v)]
    from .metrics import METRICS

    metric = METRICS.get(key)
    if metric is not None and not key.endswith(("_per_mtok_usd", "_per_hour_usd")):  # those read better spelled out
        if metric.unit == "s":
            return (f"{metric.label} (ms)", 1e3) if finite and max(finite) < 1 else (f"{metric.label} (s)", 1.0)
        if metric.fmt == "percent":
            return f"{metric.label} (%)", 100.0
        if not metric.unit or metric.unit in metric.label or metric.unit == "bool":
            return metric.label, 1.0
        return f"{metric.label} ({metric.unit})", 1.0
    for suffix, unit in _UNITS:
        if key.endswith(suffix) and len(key) > len(suffix):
            name = key[: -len(suffix)].replace("_", " ")
            if unit == "s" and finite and max(finite) < 1:
                return f"{name} (ms)", 1e3
            return f"{name} ({unit})", 1.0
    return key.replace("_", " "), 1.0


def _plain_log_ticks(which: Any, values: Sequence[float] | None) -> None:
    """Plain numbers (0.25, 1, 8) on a log axis instead of powers of ten; ticks at ``values`` when given."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    if values is not None:
        which.set_major_locator(FixedLocator(list(values)))
    which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    which.set_minor_formatter(NullFormatter())


def _number(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def plot_sweep(rows: list[dict[str, Any]], path: str | Path, *, x: str, y: Sequence[str],
               group: str | None = None) -> Path:
    """Write one panel per metric in ``y`` against ``x``, one line per value of ``group``, to ``path`` (a .png).

    ``rows``: one dict per sweep point (e.g. ``{"prompt": 1024, "gpu": "h100", "capacity_req_s": 12.5}``). A
    numeric ``x`` is drawn in order (on a log scale when it spans decades); any other ``x`` as categories in first-
    seen order. Rows without a number for a metric are left out of that panel. Up to three panels a row, each
    4.2 x 3.4 inches at :data:`DPI`.

    Raises
    ------
    SpecError
        When ``rows`` is empty, ``y`` is empty, ``x``, a ``y`` metric or ``group`` is in no row, or ``path`` is not a
        .png in an existing folder.

    Examples
    --------
    >>> import tempfile, os
    >>> from apex_opt.plots import plot_sweep
    >>> rows = [{"rate": r, "gpu": g, "tpot_p99_s": r / k / 1000} for g, k in (("h100", 2), ("a100", 1))
    ...         for r in (1, 2, 4)]
    >>> plot_sweep(rows, os.path.join(tempfile.mkdtemp(), "s.png"), x="rate", y=["tpot_p99_s"], group="gpu").suffix
    '.png'
    """
    if isinstance(y, str):
        y = [y]
    if not rows:
        raise SpecError("plot_sweep: no rows to plot; give one dict per sweep point")
    if not y:
        raise SpecError(f"plot_sweep: no metrics to plot; give y=[...] from {', '.join(sorted(rows[0]))}")
    known = sorted({k for r in rows for k in r})
    for name, key in (("x", x), *(("y", k) for k in y), *((("group", group),) if group is not None else ())):
        if not any(key in r for r in rows):
            raise SpecError(f"plot_sweep({name}={shorten(key)}): no row has it; the rows have {', '.join(known)}")
    numeric_x = all(math.isfinite(_number(r.get(x))) for r in rows if x in r)
    categories: list[Any] = []
    if not numeric_x:
        for r in rows:
            if x in r and r[x] not in categories:
                categories.append(r[x])
    groups: list[Any] = []
    for r in rows:
        g = r.get(group) if group is not None else None
        if g not in groups:
            groups.append(g)

    def xpos(r: Mapping[str, Any]) -> float:
        return _number(r[x]) if numeric_x else float(categories.index(r[x]))

    ncols = 2 if len(y) == 4 else min(3, len(y))
    nrows = math.ceil(len(y) / ncols)
    fig = _figure(4.2 * ncols, 3.4 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    xlabel, xfactor = _axis_label(x, [_number(r.get(x)) for r in rows]) if numeric_x else (x.replace("_", " "), 1.0)
    for k, metric in enumerate(y):
        axis = axes[k // ncols][k % ncols]
        ylabel, yfactor = _axis_label(metric, [_number(r.get(metric)) for r in rows])
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        drawn: list[float] = []
        for n, g in enumerate(groups):
            pts = sorted((xpos(r), _number(r.get(metric))) for r in rows
                         if x in r and (group is None or r.get(group) == g))
            pts = [(a * xfactor, b * yfactor) for a, b in pts if math.isfinite(a) and math.isfinite(b)]
            if not pts:
                continue
            drawn += [b for _, b in pts]
            axis.plot([a for a, _ in pts], [b for _, b in pts], "o-" if numeric_x else "o", color=f"C{n % 10}",
                      markersize=4 if numeric_x else 7, label=f"{group} = {g}" if group is not None else None)
        if not drawn:
            _empty(axis, f"no row has a number for {metric}")
            continue
        if numeric_x:
            xs = sorted({xpos(r) * xfactor for r in rows if x in r and math.isfinite(xpos(r))})
            _scale(axis, "x", xs)
            if axis.get_xscale() == "log":  # label the swept values themselves, in plain numbers
                _plain_log_ticks(axis.xaxis, xs if len(xs) <= 10 else None)
        else:
            axis.set_xticks(range(len(categories)), [str(c) for c in categories],
                            rotation=30 if sum(len(str(c)) for c in categories) > 40 else 0)
        _scale(axis, "y", drawn)
        if axis.get_yscale() == "log":
            _plain_log_ticks(axis.yaxis, None)
        axis.grid(True, alpha=0.3)
        if group is not None and k == 0:
            axis.legend(fontsize=8, loc="best")
    for k in range(len(y), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    return _save(fig, path)


__all__ = ["DPI", "check_path", "cost_per_mtok", "energy_per_output_token", "plot_capacity", "plot_solve", "plot_sweep", "tpot",
           "ttft"]
