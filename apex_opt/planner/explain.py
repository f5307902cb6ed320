"""Words for results: why no plan exists (the labelled constraints in conflict), and why the winner wins."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import Message, options_named
from ..metrics import METRICS
from ..units import format_time
from .constraints import OPTIONS, Constraint
from .objectives import Objective, _close, predicted_value, simulated_value


def infeasible_message(space: Any, conflict: Sequence[Constraint], *, hard_only: bool = False) -> str:
    """The error text of an infeasible problem, cvxpy style: what, which constraints, how to relax.

    A :class:`~apex_opt.errors.Message` naming the options it mentions (the suggested fix's first), so that an
    :class:`~apex_opt.errors.InfeasibleError` of it reads ``slo=tpot=20ms`` in Python and, as below, ``--slo
    tpot=20ms`` on the command line::

        no plan for llama-3.1-70b on 8 x h100-sxm-80gb satisfies all constraints.
        These constraints together rule out every plan:
          [memory]          weights + KV cache fit in 80 GiB per GPU
          [slo.tpot]        TPOT <= 5.0ms at the workload's expected batch
        Try relaxing one of them (e.g. --slo tpot=20ms) or adding GPUs.
    """
    specs = space.specs
    head = (f"no plan for {specs.model.name} on {space.total_gpus} x {space.gpu_name} satisfies all constraints.")
    if not conflict:
        return head + "\nThe plan space itself is empty (no tensor/pipeline shape fits the cluster)."
    width = max(18, max(len(c.label) for c in conflict) + 4)
    lines = [head, "These constraints together rule out every plan:" if len(conflict) > 1
             else "This constraint alone rules out every plan:"]
    for c in conflict:
        lines.append(f"  {('[' + c.label + ']').ljust(width)}{c.describe(space)}")
    hint = _hint(space, conflict)
    more = "" if "GPU" in hint else " or adding GPUs"
    lines.append(f"Try relaxing {'one of them' if len(conflict) > 1 else 'it'} (e.g. {hint}){more}.")
    text = "\n".join(lines)
    return Message(text, dict.fromkeys(options_named(hint, OPTIONS) + options_named(text, OPTIONS)))


def side_infeasible_message(what: str, conflict: Sequence[tuple[str, str]],
                            fits: Sequence[tuple[Sequence[str], str | None]]) -> str:
    """The labelled constraints of a side search (disaggregated pairs, mixed-GPU plans) that together rule out
    every ``what``, in the layout of :func:`infeasible_message`, then what the search would choose with each
    one of them dropped, or a set of them (``None``: still nothing)::

        These constraints together rule out every pair:
          [gpus]              both roles together use every GPU of the cluster (16, --use-all-gpus)
          [gpus.h100-sxm-80gb]  prefill + decode GPUs on h100-sxm-80gb within its 8
        What would fit with one of them relaxed:
          without [gpus]: 1P1D prefill dp1 tp1 pp1 + decode dp1 tp1 pp1: 2 GPUs (on h100-sxm-80gb), ...
    """
    if not conflict:
        return ""
    width = max(18, max(len(label) for label, _ in conflict) + 4)
    lines = [f"These constraints together rule out every {what}:" if len(conflict) > 1
             else f"This constraint alone rules out every {what}:"]
    lines += [f"  {('[' + label + ']').ljust(width)}{text}" for label, text in conflict]
    lines.append("What would fit with one of them relaxed:" if len(conflict) > 1 else "What would fit without it:")
    for labels, found in fits:
        alone = "it alone" if len(labels) == 1 else "all of them"
        names = " + ".join(f"[{n}]" for n in labels)
        lines.append(f"  without {names}: {found or f'still no {what} (relaxing {alone} is not enough)'}")
    return "\n".join(lines)


def _hint(space: Any, conflict: Sequence[Constraint]) -> str:
    order = ("slo.tpot", "slo.ttft", "slo.e2e", "memory", "placement.tp", "capacity", "gpus")
    builtins = {c.label: c for c in conflict if c.builtin}
    for label in order:
        c = builtins.get(label)
        if c is not None and c.relax:
            hint = c.relax(space) if callable(c.relax) else c.relax
            if hint:  # None: relaxing this one alone would not help (e.g. the bound is already that loose)
                return hint
    user = [c for c in conflict if not c.builtin]
    if user:
        return f"remove or loosen [{user[0].label}] ({user[0].location})"
    return "a looser {slo}"


# ------------------------------------------------------------------------------------------- formatting
def format_metric(metric: str, value: float) -> str:
    """``value`` of a registered metric with its unit, for a sentence (``0.5 req/s per GPU``, ``$0.31/Mtok``,
    ``12.0ms``): the registry's table format (:meth:`apex_opt.metrics.Metric.format`) and unit."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    m = METRICS.get(metric)
    if m is None:
        return f"{value:.3g}"
    text = m.format(value)
    if m.fmt == "time":
        return text
    if m.fmt == "usd":
        return text + m.unit.removeprefix("USD")  # $0.31/Mtok, $1.20/h
    return f"{text} {m.unit}"


def _value(entry: Any, metric: str) -> float:
    if entry.simulated:
        v = simulated_value(metric, entry.simulated, entry.plan.gpus)
        if math.isfinite(v):
            return v
    return predicted_value(metric, entry.predicted)


def why_best(plans: Sequence[Any], objective: Objective, *, simulated: int = 0, candidates: int = 0) -> str:
    """One sentence on why the first plan wins (against the runner-up, on the first level that separates them)."""
    if not plans:
        return ""
    best = plans[0]
    levels = [(m, s) for m, s in objective.levels if m is not None]
    sim = best.simulated or {}
    slo_part = ""
    if sim:
        att = sim.get("slo_attainment")
        parts = []
        if isinstance(att, (int, float)) and math.isfinite(att):
            parts.append(f"meets the SLO for {att:.1%} of requests")
        parts.append(f"TTFT {format_time(sim.get('ttft_mean_s', math.nan))}, "
                     f"TPOT {format_time(sim.get('tpot_mean_s', math.nan))} in simulation")
        slo_part = "; " + ", ".join(parts)
    if len(plans) == 1:
        scope = f"the only plan verified of {simulated} simulated" if simulated else "the only plan"
        first = levels[0][0] if levels else None
        value = f" ({format_metric(first, _value(best, first))})" if first else ""
        return f"{best.plan.label} is {scope}{value}{slo_part}."
    runner = plans[1]
    if not levels:
        return f"{best.plan.label} wins on {objective.name} (solver order), ahead of {runner.plan.label}{slo_part}."
    for k, (metric, sense) in enumerate(levels):
        a, b = _value(best, metric), _value(runner, metric)
        if not (math.isfinite(a) and math.isfinite(b)) or _close(-sense * a, -sense * b):
            continue
        label = METRICS[metric].label
        ratio = (a / b if sense > 0 else b / a) if a > 0 and b > 0 else math.nan
        times = f" ({ratio:.2f}x)" if math.isfinite(ratio) and ratio >= 1.05 else ""
        versus = f"{format_metric(metric, a)} vs {format_metric(metric, b)} for {runner.plan.label}{times}"
        if k == 0:
            return f"{best.plan.label} wins on {label}: {versus}{slo_part}."
        tied = METRICS[levels[0][0]].label
        return f"{best.plan.label} ties {runner.plan.label} on {tied} (within 1%) and wins on {label}: {versus}{slo_part}."
    return (f"{best.plan.label} ties {runner.plan.label} within 1% on every objective level and is preferred for its "
            f"precision, engine defaults or solver order{slo_part}.")


__all__ = ["format_metric", "infeasible_message", "side_infeasible_message", "why_best"]
