"""Check apex-opt against measured runs: simulate each run's plan on its workload, measured where the run was
measured, and compare every metric the measurement has.

>>> from apex_opt.measurements import Measurement
>>> m = Measurement("demo", "<made up>", "csv", {"ttft_ms_mean": 40.0}, model="llama-3.1-8b",
...                 plan={"gpu": "h100-sxm-80gb", "tp": 1, "engine": "vllm-v1"}, measured_at="engine",
...                 workload="synthetic:rate=2rps,requests=20,prompt=256,output=16,seed=0")
>>> report = validate([m], tolerance=1.0)
>>> report.runs[0].comparisons[0].metric
'ttft_ms_mean'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .calibration.profile import CalibrationProfile, resolve_profile
from .errors import SpecError, shorten
from .measurements import METRICS, PLAN_FIELDS, Measurement, read_measurements
from .schema.plan import Plan
from .schema.slo import SLO
from .schema.speculative import parse_speculative
from .specs import Specs

#: what a measurement needs to be matched to a plan, and how to give each on the command line
REQUIRED = {"model": "--model", "gpu": "--gpu", "tp": "--tp", "engine": "--engine", "workload": "--workload"}
#: --workload value that rebuilds a Poisson workload from the measurement's own fields
REBUILD = "synthetic"


@dataclass(frozen=True)
class Comparison:
    metric: str
    measured: float
    predicted: float
    error: float  # (predicted - measured) / measured
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "measured": self.measured,
                "predicted": None if math.isnan(self.predicted) else self.predicted,
                "error": None if math.isnan(self.error) else self.error, "within_tolerance": self.ok}


@dataclass
class RunValidation:
    name: str
    source: str
    format: str
    model: str
    plan: str
    engine: str
    workload: str
    measured_at: str
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "format": self.format, "model": self.model,
                "plan": self.plan, "engine": self.engine, "workload": self.workload,
                "measured_at": self.measured_at, "ok": self.ok,
                "metrics": [c.to_dict() for c in self.comparisons], "notes": list(self.notes)}


@dataclass
class ValidationReport:
    tolerance: float
    runs: list[RunValidation]

    @property
    def failures(self) -> list[tuple[str, Comparison]]:
        """(run name, comparison) of every metric off by more than the tolerance."""
        return [(r.name, c) for r in self.runs for c in r.comparisons if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "ok": self.ok, "runs": [r.to_dict() for r in self.runs],
                "failures": [{"run": name, "metric": c.metric, "error": c.error} for name, c in self.failures]}


def predicted_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The simulation summary under the canonical measurement names (ms, req/s, tok/s)."""
    out: dict[str, float] = {}
    for metric, sim in (("ttft", "ttft"), ("tpot", "tpot"), ("itl", "itl"), ("e2e", "e2e")):
        mean = f"{metric}_ms" if metric == "tpot" else f"{metric}_ms_mean"
        out[mean] = float(summary.get(f"{sim}_mean_s", math.nan)) * 1e3
        for q in ("p50", "p90", "p95", "p99"):
            out[f"{metric}_ms_{q}"] = float(summary.get(f"{sim}_{q}_s", math.nan)) * 1e3
    out["throughput_req_s"] = float(summary.get("throughput_req_s", math.nan))
    out["throughput_output_tok_s"] = float(summary.get("throughput_output_tok_s", math.nan))
    return out


def _workload(m: Measurement, given: str | None) -> str:
    """The workload reference of ``m``: its own, the one given, or one rebuilt from its fields (``synthetic``)."""
    if given is not None and given.strip().lower() != REBUILD:
        return given
    if m.workload:
        return m.workload
    if given is None:
        if m.synthetic:
            raise SpecError(f"measurement {shorten(m.name)} ({shorten(m.source)}): the file names no workload; give "
                            f"--workload {REBUILD} to rebuild a Poisson workload from its request rate, request count "
                            "and mean prompt and output lengths, or --workload with the trace, catalog name or "
                            "synthetic:... expression the benchmark replayed")
        raise SpecError(f"measurement {shorten(m.name)} ({shorten(m.source)}): no workload; give --workload (a "
                        "catalog name, a trace file or a synthetic:... expression) or a 'workload' column")
    s = m.synthetic
    missing = [k for k in ("rate", "requests", "prompt", "output") if k not in s]
    if missing:
        raise SpecError(f"measurement {shorten(m.name)} ({shorten(m.source)}): --workload {REBUILD} needs the "
                        f"file's request rate, request count and mean prompt and output lengths; it lacks "
                        f"{', '.join(missing)}; give --workload with the workload the benchmark replayed instead")
    if not math.isfinite(s["rate"]) or s["rate"] <= 0:
        raise SpecError(f"measurement {shorten(m.name)} ({shorten(m.source)}): request rate {s['rate']} (all "
                        f"requests at once) cannot be rebuilt as a Poisson workload; give --workload with the "
                        "arrivals the benchmark used, e.g. a trace file")
    return (f"synthetic:rate={s['rate']:g}rps,requests={int(s['requests'])},prompt={max(1, round(s['prompt']))},"
            f"output={max(1, round(s['output']))},lengths=fixed,seed=0")


def resolve(m: Measurement, overrides: Mapping[str, Any]) -> tuple[str, Plan, str, str, bool | None]:
    """The model, plan, workload reference, where it was measured and the prefix-caching switch of ``m``: the
    file's values, overridden by what the command line gives; a SpecError names whatever is still missing."""
    fields = {k: v for k, v in m.plan.items() if v is not None}
    fields.update({k: v for k, v in overrides.items() if k in PLAN_FIELDS and v is not None})
    model = overrides.get("model") or m.model
    given_workload = overrides.get("workload")
    have = {"model": model, **fields, "workload": given_workload or m.workload}
    missing = [k for k in REQUIRED if k != "workload" and have.get(k) is None]
    if missing:
        raise SpecError(f"measurement {shorten(m.name)} ({shorten(m.source)}) cannot be matched to a plan: it does "
                        f"not say {', '.join(missing)}; give "
                        + ", ".join(f"{REQUIRED[k]}" for k in missing) + " on the command line"
                        + (" or fill the column(s) " + ", ".join(missing) + " of the CSV" if m.format == "csv" else
                           f" (a {m.format} file does not record the plan)"))
    if not overrides.get("model") and m.format != "csv":
        from .catalog import get_model

        try:
            get_model(str(model))
        except SpecError:
            raise SpecError(f"measurement {shorten(m.name)} ({shorten(m.source)}) names the model {shorten(model)}, "
                            "which is not a catalog name, a config.json path or a Hugging Face id whose config.json "
                            "could be read; give --model (apex-opt catalog models, or the path of the model's Hugging "
                            "Face config.json)") from None
    workload = _workload(m, given_workload)
    measured_at = overrides.get("measured_at") or m.measured_at or "engine"
    caching = overrides.get("prefix_caching")
    if caching is None:
        caching = m.prefix_caching
    if isinstance(fields.get("gpu"), str):  # --gpu FILE.yaml: the plan names the GPU by the file's name
        from .catalog import gpu_name

        fields["gpu"] = gpu_name(fields["gpu"])
    plan = Plan.parse(fields, source=f"measurement {m.name}", kind="plan")
    speculative = overrides.get("speculative")
    if speculative is not None:  # the server speculated: simulate the same drafts and acceptance
        if isinstance(speculative, str):
            speculative = parse_speculative(speculative)
        plan = plan.model_copy(update={"speculative": speculative})
    return str(model), plan, workload, measured_at, caching


@dataclass(frozen=True)
class MeasuredRun:
    """A measurement matched to what apex-opt simulates: the problem, the plan and the engine switches."""

    measurement: Measurement
    specs: Specs
    plan: Plan
    workload: str
    measured_at: str
    prefix_caching: bool | None

    def predict(self, *, seed: int = 0) -> tuple[dict[str, float], Mapping[str, Any]]:
        """(predicted metrics under the canonical names, the simulation summary) of this run."""
        from .simulate import simulate

        result = simulate(self.specs, self.plan, seed=seed, measured_at=self.measured_at,
                          prefix_caching=self.prefix_caching)
        summary = result.summary()
        return predicted_metrics(summary), summary


def measured_run(m: Measurement, overrides: Mapping[str, Any] | None = None,
                 calibration: CalibrationProfile | None = None) -> MeasuredRun:
    """Match ``m`` to a plan (:func:`resolve`) and load its problem, with ``calibration`` applied."""
    from .specs import load_specs

    model, plan, workload, measured_at, caching = resolve(m, overrides or {})
    per_node = 8
    nodes = max(1, -(-plan.gpus // per_node))
    specs = load_specs(model, gpu=plan.gpu, nodes=nodes, gpus_per_node=per_node, engine=plan.engine,
                       workload=workload, slo=SLO(), calibration=calibration)
    return MeasuredRun(m, specs, plan, workload, measured_at, caching)


def validate_one(m: Measurement, *, tolerance: float, overrides: Mapping[str, Any] | None = None,
                 seed: int = 0, calibration: CalibrationProfile | None = None) -> RunValidation:
    """Simulate the run of ``m`` and compare every metric it has."""
    run = measured_run(m, overrides, calibration)
    model, plan, workload, measured_at = run.specs.model.name, run.plan, run.workload, run.measured_at
    predicted, summary = run.predict(seed=seed)
    comparisons = []
    for key in METRICS:
        if key not in m.metrics:
            continue
        measured, pred = m.metrics[key], predicted.get(key, math.nan)
        error = (pred - measured) / measured if measured else math.nan
        ok = math.isfinite(error) and abs(error) <= tolerance + 1e-12
        comparisons.append(Comparison(key, measured, pred, error, ok))
    notes = list(m.notes)
    if not comparisons:
        notes.append("the measurement has no metric apex-opt can compare")
    if summary.get("saturated"):
        notes.append("the simulated plan is saturated at this load (offered rate above what it serves)")
    return RunValidation(m.name, m.source, m.format, model, plan.label, plan.engine, workload, measured_at,
                         comparisons, notes)


def gather(measurements: Iterable[Measurement | str | Path], command: str = "validate") -> list[Measurement]:
    """Measurement objects from objects and files (:func:`apex_opt.measurements.read_measurements`)."""
    items: list[Measurement] = []
    for item in measurements:
        items.extend([item] if isinstance(item, Measurement) else read_measurements(item))
    if not items:
        raise SpecError(f"no measurements to {command}; give {{measurements=}}FILE", option="measurements")
    return items


def validate(measurements: Iterable[Measurement | str | Path], *, tolerance: float = 0.1,
             overrides: Mapping[str, Any] | None = None, seed: int = 0,
             calibration: str | Path | CalibrationProfile | None = None) -> ValidationReport:
    """Predicted vs measured for every measurement (objects, or files read with
    :func:`apex_opt.measurements.read_measurements`); ``overrides`` (``model``, plan fields, ``engine``,
    ``workload``, ``measured_at``, ``prefix_caching``, ``speculative``: a
    :class:`~apex_opt.schema.speculative.SpeculativeConfig` or its ``METHOD:k=N,acceptance=RATE`` text) fill in or
    replace what the files say; ``calibration`` (a
    profile or its file) is applied over the built-in constants."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance:
        raise SpecError(f"tolerance {shorten(tolerance)}: must be a fraction of at least 0, e.g. 0.1 for 10%")
    profile = resolve_profile(calibration)
    return ValidationReport(float(tolerance), [validate_one(m, tolerance=tolerance, overrides=overrides, seed=seed,
                                                            calibration=profile)
                                               for m in gather(measurements)])


__all__ = ["Comparison", "MeasuredRun", "RunValidation", "ValidationReport", "gather", "measured_run",
           "predicted_metrics", "resolve", "validate"]
