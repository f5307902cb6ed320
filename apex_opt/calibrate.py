"""``apex-opt calibrate``: fit the engine and hardware constants that a user's measured runs determine.

Each measured run (any format :mod:`apex_opt.measurements` reads) is matched to its plan and simulated; the
residuals are the log ratios of predicted to measured means and medians (TTFT, TPOT, ITL, end-to-end). The
candidate constants are those the runs could touch:

* per engine (its calibration entry): the host time of an iteration (``step_s``), per running sequence
  (``per_seq_s``) and of a prefilling iteration (``prefill_step_s``); the eager launch cost
  (``eager_launch_s``) when a run has CUDA graphs off; the API-server path (``client.request_s``,
  ``client.output_lag_steps``, ``client.per_stream_s``) when a run was measured at a benchmark client;
* per GPU kind: sustained tensor-core throughput (``compute_scale``) and HBM bandwidth (``memory_scale``)
  relative to the datasheet (clocks, power caps).

:func:`apex_opt.calibration.fit.fit_constants` keeps the ones the runs determine, fits them and says why every
other one was left at its default. Tail percentiles (p90, p99) and throughput are reported, not fitted: they
follow from the means and the arrival process.

>>> from apex_opt.measurements import Measurement
>>> m = Measurement("demo", "<made up>", "csv", {"ttft_ms_mean": 30.0, "tpot_ms": 9.0}, model="llama-3.1-8b",
...                 plan={"gpu": "h100-sxm-80gb", "tp": 1, "engine": "vllm-v1"}, measured_at="engine",
...                 workload="synthetic:rate=2rps,requests=20,prompt=256,output=16,lengths=fixed,seed=0")
>>> report = calibrate([m], constants=["step_s"])
>>> [f.key for f in report.fitted], round(report.error_after["mean_abs"], 2) < round(report.error_before["mean_abs"], 2)
(['engines.vllm-v1.step_s'], True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .calibration.constants import CONSTANTS, constant_key, default_value, parse_key
from .calibration.fit import FitOutcome, Unknown, fit_constants
from .calibration.profile import CalibrationProfile, active, resolve_profile, serving_constants
from .errors import SpecError, shorten
from .measurements import METRICS, Measurement
from .validate import MeasuredRun, gather, measured_run

#: the metrics the residuals use (means and medians); the others are reported
FIT_METRICS: tuple[str, ...] = ("ttft_ms_mean", "ttft_ms_p50", "tpot_ms", "tpot_ms_p50", "itl_ms_mean",
                                "itl_ms_p50", "e2e_ms_mean", "e2e_ms_p50")
#: the observation each fitted metric belongs to: time to first token, time between tokens, whole request
FAMILY = {k: "ttft" if k.startswith("ttft") else "e2e" if k.startswith("e2e") else "step" for k in FIT_METRICS}


@dataclass(frozen=True)
class FittedConstant:
    key: str
    meaning: str
    before: float
    after: float

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "meaning": self.meaning, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class LeftConstant:
    key: str
    meaning: str
    value: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "meaning": self.meaning, "value": self.value, "reason": self.reason}


@dataclass
class RunErrors:
    """One run's measured metrics with the predictions before and after the fit."""

    name: str
    plan: str
    measured: dict[str, float]
    before: dict[str, float]
    after: dict[str, float]

    def error(self, metric: str, when: str) -> float:
        pred = (self.before if when == "before" else self.after).get(metric, math.nan)
        meas = self.measured[metric]
        return (pred - meas) / meas if meas else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "plan": self.plan, "metrics": [
            {"metric": k, "measured": v, "before": _num(self.before.get(k)), "after": _num(self.after.get(k)),
             "error_before": _num(self.error(k, "before")), "error_after": _num(self.error(k, "after")),
             "fitted": k in FIT_METRICS} for k, v in self.measured.items()]}


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass
class CalibrationReport:
    """What ``apex-opt calibrate`` found: the profile to write, and why it holds what it holds."""

    profile: CalibrationProfile
    fitted: list[FittedConstant]
    left: list[LeftConstant]
    runs: list[RunErrors]
    error_before: dict[str, float]
    error_after: dict[str, float]
    simulations: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.name, "constants": dict(self.profile.constants),
                "fitted": [f.to_dict() for f in self.fitted], "left_at_default": [c.to_dict() for c in self.left],
                "error_before": self.error_before, "error_after": self.error_after,
                "runs": [r.to_dict() for r in self.runs], "simulations": self.simulations, "notes": self.notes}


def _summary(runs: Sequence[RunErrors], when: str) -> dict[str, float]:
    """Mean and largest absolute relative error over the fitted metrics, and over all metrics."""
    fitted = [abs(r.error(k, when)) for r in runs for k in r.measured if k in FIT_METRICS]
    every = [abs(r.error(k, when)) for r in runs for k in r.measured]
    fitted = [e for e in fitted if math.isfinite(e)]
    every = [e for e in every if math.isfinite(e)]
    return {"mean_abs": float(np.mean(fitted)) if fitted else math.nan,
            "max_abs": float(np.max(fitted)) if fitted else math.nan,
            "mean_abs_all_metrics": float(np.mean(every)) if every else math.nan,
            "max_abs_all_metrics": float(np.max(every)) if every else math.nan}


def _load_notes(runs: Sequence[MeasuredRun]) -> list[str]:
    """A note for each plan whose runs are all at about one request rate: what grows with load is then fitted
    from one load (the development runs showed such fits carry poorly to another rate: docs/calibration.md)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        groups.setdefault((run.specs.model.name, run.plan.label), []).append(run.specs.workload.rate)
    notes = []
    for (model, plan), all_rates in groups.items():
        rates = [r for r in all_rates if math.isfinite(r) and r > 0]  # all-at-once runs have no rate
        if rates and max(rates) <= 1.25 * min(rates):
            notes.append(f"every run of {model} on {plan} is at about {min(rates):.3g} req/s: constants whose "
                         "effect grows with load (per-sequence and prefill-step host time, the client's per-stream "
                         "work) are fitted from that one load; add a run at half or twice the rate before planning "
                         "far from it")
    return notes


def candidate_keys(runs: Sequence[MeasuredRun]) -> list[str]:
    """The constants these runs could touch (see the module docstring), in a stable order."""
    keys: list[str] = []
    for run in runs:
        engine = run.specs.engine.overhead_profile or run.specs.engine.name
        eager = not run.specs.engine.cuda_graphs.enabled or run.measurement.plan.get("cuda_graphs") is False
        for c in CONSTANTS.values():
            if c.scope == "engine" and (c.needs == "" or (c.needs == "client" and run.measured_at == "client")
                                        or (c.needs == "eager" and eager)):
                keys.append(constant_key(c.name, engine=engine))
        for gpu in sorted({p.gpu for p in getattr(run.plan, "plans", (run.plan,))}):
            keys += [constant_key(name, gpu=gpu) for name in ("compute_scale", "memory_scale")]
    return list(dict.fromkeys(keys))


def _select(candidates: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """The candidates named by ``wanted`` (constant names such as ``step_s`` or full keys); all when None."""
    if wanted is None:
        return list(candidates)
    out = []
    for w in wanted:
        hits = [k for k in candidates if k == w or parse_key(k) is not None and parse_key(k)[0].name == w]  # type: ignore[index]
        if not hits:
            names = ", ".join(dict.fromkeys(parse_key(k)[0].name for k in candidates))  # type: ignore[index]
            raise SpecError(f"{{constants=}}{shorten(w)}: not a constant these runs can determine; they can fit "
                            f"{names} (apex-opt calibrate --help says what each means)", option="constants")
        out += hits
    return list(dict.fromkeys(out))


def calibrate(measurements: Iterable[Measurement | str | Path], *, overrides: Mapping[str, Any] | None = None,
              base: str | Path | CalibrationProfile | None = None, constants: Sequence[str] | None = None,
              name: str = "my-cluster", seed: int = 0,
              progress: Callable[[str], None] | None = None) -> CalibrationReport:
    """Fit the constants the measured runs determine, over ``base`` (a profile, or the built-in fit).

    ``overrides`` fill in or replace what the files say (as in :func:`apex_opt.validate.validate`);
    ``constants`` restricts the fit to these constant names or keys (default: every candidate).
    """
    say = progress or (lambda _msg: None)
    start = resolve_profile(base) or CalibrationProfile(name=name)
    runs = [measured_run(m, overrides) for m in gather(measurements, "calibrate")]
    usable = [r for r in runs if any(k in r.measurement.metrics for k in FIT_METRICS)]
    if not usable:
        raise SpecError("none of the measurements has a mean or median TTFT, TPOT, ITL or end-to-end latency to "
                        "fit; give runs with at least one of " + ", ".join(FIT_METRICS))
    keys = _select(candidate_keys(usable), constants)
    with active(start):
        serving = serving_constants()
    unknowns = []
    for key in keys:
        c, _ = parse_key(key)  # type: ignore[misc]
        value = float(start.constants.get(key, default_value(key, serving)))
        unknowns.append(Unknown(key, min(max(value, c.lower), c.upper), c.lower, c.upper, c.typical, c.spread))
    cache: dict[tuple[float, ...], list[dict[str, float]]] = {}

    def predictions(values: Mapping[str, float]) -> list[dict[str, float]]:
        token = tuple(float(values[k]) for k in keys)
        if token not in cache:
            profile = start.with_constants(values)
            cache[token] = [dataclasses.replace(run, specs=dataclasses.replace(run.specs, calibration=profile))
                            .predict(seed=seed)[0] for run in usable]
        return cache[token]

    def residuals(values: Mapping[str, float]) -> np.ndarray:
        out = []
        for run, predicted in zip(usable, predictions(values), strict=True):
            present = [k for k in FIT_METRICS if run.measurement.metrics.get(k, 0.0) > 0]
            for k in present:
                p = predicted.get(k, math.nan)
                # the mean and median of one latency (and TPOT and ITL) are one observation, not two: weighted so
                # that each family of a run counts once, whatever the file happens to report
                weight = 1.0 / math.sqrt(sum(FAMILY[j] == FAMILY[k] for j in present))
                out.append(weight * math.log(p / run.measurement.metrics[k]) if p > 0 else math.nan)
        return np.array(out, dtype=float)

    say(f"fitting up to {len(keys)} constants on {len(usable)} run(s)")
    outcome: FitOutcome = fit_constants(unknowns, residuals, progress=say)
    fitted_values = {u.key: u.start for u in unknowns} | outcome.values
    before = predictions({u.key: u.start for u in unknowns})
    after = predictions(fitted_values)
    run_errors = [RunErrors(r.measurement.name, r.plan.label, {k: v for k, v in r.measurement.metrics.items()
                                                                if k in METRICS},
                            b, a) for r, b, a in zip(usable, before, after, strict=True)]
    fitted = [FittedConstant(k, parse_key(k)[0].meaning, next(u.start for u in unknowns if u.key == k), v)  # type: ignore[index]
              for k, v in outcome.values.items()]
    left = [LeftConstant(k, parse_key(k)[0].meaning, next(u.start for u in unknowns if u.key == k), why)  # type: ignore[index]
            for k, why in outcome.left.items()]
    report_before, report_after = _summary(run_errors, "before"), _summary(run_errors, "after")
    notes = _load_notes(usable)
    skipped = [r.measurement.name for r in runs if r not in usable]
    if skipped:
        notes.append("no latency mean or median to fit in " + ", ".join(skipped) + " (reported only)")
    if report_after["mean_abs"] > report_before["mean_abs"] + 1e-9:
        notes.append("the fit did not lower the error; the profile keeps the starting constants")
        fitted_values = {u.key: u.start for u in unknowns}
        fitted = []
    constants_out = dict(start.constants)
    constants_out.update({f.key: f.after for f in fitted})
    profile = CalibrationProfile(name=name, constants=constants_out, report={
        "measurements": sorted({r.measurement.source for r in runs}),
        "fitted": {f.key: {"value": f.after, "default": f.before, "meaning": f.meaning} for f in fitted},
        "left_at_default": {c.key: c.reason for c in left},
        "error_before": report_before, "error_after": report_after,
        "fit_metrics": [k for k in FIT_METRICS if any(k in r.measurement.metrics for r in usable)],
    })
    return CalibrationReport(profile, fitted, left, run_errors, report_before, report_after, len(cache), notes)


__all__ = ["FIT_METRICS", "CalibrationReport", "FittedConstant", "LeftConstant", "RunErrors", "calibrate",
           "candidate_keys"]
