"""The metric registry: one name, unit, meaning and sense for every quantity apex-opt reports.

``simulate``, ``solve`` (``predicted`` and ``simulated``), ``capacity``, ``compare`` and ``sweep`` name their
metrics as registered here, in SI units: seconds, requests per second, output tokens per second, joules per
output token, USD, and USD per million output tokens. Tables may format a value (``1.2 ms``, ``$0.31``), but the
JSON, the CSV columns and the Python dicts carry the registered name and unit.

Every key has a unit suffix, so a name reads as its unit: ``_s`` seconds, ``_req_s`` requests per second,
``_tok_s`` tokens per second, ``_j`` joules, ``_usd`` US dollars, ``_per_mtok_usd`` USD per million output
tokens. Counts start with ``num_``; fractions (``slo_attainment``, ``mfu``) are in [0, 1].

The planner's CP-SAT model works on integers: :attr:`Metric.solver` says which ``PlanVars`` field holds a
metric and at what scale (e.g. ``energy_per_output_token_j`` is ``v.energy_per_token`` in microjoules). The
planner's objectives (:mod:`apex_opt.planner.objectives`) are read from here: :attr:`Metric.objective` is the
``--objective`` name, :attr:`Metric.sense` its direction and :attr:`Metric.solver` the variable it optimises, and
``Objective.metric`` is the registered name.

Names used before this registry (``goodput_rps``, ``energy_per_token_j``, ``cost``, ...) are listed as
:attr:`Metric.formerly`. They stay readable for one release, with a ``DeprecationWarning``, from the typed records
that ``simulate(...).summary()`` and ``RankedPlan.simulated`` (:class:`apex_opt.sim.summary.SimSummary`) and
``RankedPlan.predicted`` (:class:`apex_opt.planner.prediction.Prediction`) return, and from :class:`MetricValues` (a
plain dict keyed by registered names); they are no longer written to JSON. Both records have one field per
registered metric of their kind (a simulation reports every metric outside the *prediction* group).

>>> from apex_opt.metrics import METRICS, canonical_name
>>> m = METRICS["energy_per_output_token_j"]
>>> m.unit, m.sense, m.objective, m.solver
('J/token', -1, 'min-energy', ('energy_per_token', 1e-06, 'µJ'))
>>> canonical_name("goodput_rps")
'goodput_req_s'

``python benchmarks/metrics_doc.py --write`` regenerates the reference page ``docs/metrics.md`` from
:func:`markdown`; ``tests/test_metrics_vocabulary.py`` fails when the page is out of date.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from .errors import SpecError

#: lower is better, higher is better, neither (a count or a setting that describes the run)
LOWER, HIGHER, NEITHER = -1, +1, 0


@dataclass(frozen=True)
class Metric:
    """One reported quantity.

    ``name``: the key in JSON, dicts and CSV columns. ``unit``: its SI unit as a short text. ``meaning``: one
    sentence. ``sense``: :data:`LOWER` or :data:`HIGHER` is better, or :data:`NEITHER`. ``label`` and ``fmt``:
    how tables show it (``fmt``: ``"time"``, ``"percent"``, ``"usd"``, or a :func:`format` spec).
    ``group``: the section of the reference page. ``objective``: the ``solve --objective`` that optimises it,
    if any. ``solver``: ``(PlanVars field, scale, unit)`` of the planner's integer model (the value in SI units
    is the integer times the scale). ``formerly``: earlier spellings, readable for one release.
    ``compare``: shown as a row of ``apex-opt compare``'s table. ``extensive``: a total or a rate of the whole
    deployment, which grows with its replicas (a verification that simulates a sample of identical replicas scales
    it up by replicas / sampled; latencies, shares and per-GPU or per-token values need no scaling).
    """

    name: str
    unit: str
    meaning: str
    sense: int
    label: str
    fmt: str = ".3g"
    group: str = ""
    objective: str | None = None
    solver: tuple[str, float, str] | None = None
    formerly: tuple[str, ...] = ()
    compare: bool = False
    extensive: bool = False

    def format(self, value: Any) -> str:
        """``value`` as a table shows it (``-`` when missing or not finite)."""
        if isinstance(value, bool):
            return "yes" if value else "no"
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return "-"
        if self.fmt == "time":
            from .units import format_time

            return format_time(value)
        if self.fmt == "percent":
            return f"{value * 100:.1f}%"
        if self.fmt == "usd":
            return f"${value:,.2f}" if abs(value) >= 0.01 else f"${value:.3g}"
        if self.fmt.endswith("d"):
            value = round(value)
        return format(value, self.fmt)

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b`` (False for a metric with no sense)."""
        return (a - b) * self.sense > 0


def _latency(kind: str, what: str, formerly: dict[str, tuple[str, ...]] | None = None,
             solver: Callable[[str], tuple[str, float, str] | None] | None = None,
             objective: str | None = None) -> list[Metric]:
    out = []
    for stat, text in (("mean", "mean"), ("p50", "median"), ("p90", "90th percentile"),
                       ("p95", "95th percentile"), ("p99", "99th percentile")):
        name = f"{kind}_{stat}_s"
        out.append(Metric(
            name, "s", f"{text} {what}", LOWER, f"{kind.upper() if kind != 'e2e' else 'e2e'} {stat}", "time",
            "latency", objective if stat == "mean" else None, solver(stat) if solver else None,
            (formerly or {}).get(stat, ()), compare=stat in ("mean", "p90", "p99")))
    return out


_ALL: tuple[Metric, ...] = (
    *_latency("ttft", "time to first token of completed requests (arrival to first token)",
              {"mean": ("ttft_s",)}, lambda s: ("ttft_ns", 1e-9, "ns") if s == "mean" else None, "min-ttft"),
    *_latency("tpot", "time per output token of completed requests, (finish - first token) / (output - 1)",
              {"mean": ("tpot_s",)}, lambda s: ("tpot_ns", 1e-9, "ns") if s == "mean" else None, "min-tpot"),
    *_latency("itl", "inter-token latency, over every gap between consecutive tokens (token-weighted)"),
    *_latency("e2e", "end-to-end latency of completed requests (arrival to last token)"),
    Metric("throughput_req_s", "req/s", "completed requests per second of the makespan", HIGHER, "throughput",
           ".3g", "throughput", formerly=("requests_per_s",), compare=True),
    Metric("throughput_output_tok_s", "tok/s", "output tokens per second of the makespan (predicted: the "
           "sustainable rate)", HIGHER, "output throughput", ",.0f", "throughput", "throughput",
           ("throughput", 1e-3, "milli-tokens/s"), ("throughput_tok_s",), compare=True),
    Metric("throughput_total_tok_s", "tok/s", "prompt and output tokens per second of the makespan", HIGHER,
           "total throughput", ",.0f", "throughput"),
    Metric("capacity_req_s", "req/s", "highest request rate the plan sustains under the SLO (solve: "
           "predicted; capacity: found by simulation)", HIGHER, "capacity", ".3g", "throughput",
           formerly=("capacity_rps",)),
    Metric("per_replica_capacity_req_s", "req/s", "capacity divided by the plan's data-parallel replicas", HIGHER,
           "capacity/replica", ".3g", "throughput"),
    Metric("slo_attainment", "fraction", "share of all requests that met every latency bound of the SLO", HIGHER,
           "SLO attainment", "percent", "slo", formerly=("attainment",), compare=True),
    Metric("slo_ttft_value_s", "s", "the TTFT statistic the SLO bounds (e.g. the p90 for ttft.p90=...)", LOWER,
           "SLO TTFT", "time", "slo"),
    Metric("slo_tpot_value_s", "s", "the TPOT statistic the SLO bounds", LOWER, "SLO TPOT", "time", "slo"),
    Metric("slo_e2e_value_s", "s", "the e2e latency statistic the SLO bounds", LOWER, "SLO e2e", "time", "slo"),
    Metric("slo_met", "bool", "every bounded statistic within its bound and attainment at least the target",
           HIGHER, "SLO met", "", "slo", compare=True),
    Metric("goodput_req_s", "req/s", "requests per second that met the SLO", HIGHER, "goodput", ".3g", "slo",
           formerly=("goodput_rps",), compare=True),
    Metric("goodput_per_gpu_req_s", "req/s per GPU", "goodput divided by the GPUs of the plan", HIGHER,
           "goodput/GPU", ".3g", "slo", "goodput-per-gpu", ("goodput_per_gpu", 1e-6, "micro-requests/s"),
           ("goodput_per_gpu",), compare=True),
    Metric("offered_rate_req_s", "req/s", "arrivals per second between the first and the last arrival", NEITHER,
           "offered rate", ".3g", "load"),
    Metric("served_rate_req_s", "req/s", "completions per second over the arrival window", HIGHER,
           "served rate", ".3g", "load"),
    Metric("backlog_growth_req_s", "req/s", "growth of the requests in the system over the second half of the "
           "arrival window", LOWER, "backlog growth", ".3g", "load"),
    Metric("queue_growth_req_s", "req/s", "growth of the requests waiting for admission over the second half of "
           "the arrival window", LOWER, "queue growth", ".3g", "load"),
    Metric("saturated", "bool", "requests waiting for admission kept piling up while requests arrived (the plan "
           "cannot keep up)", LOWER, "saturated", "", "load", compare=True),
    Metric("kv_util_mean", "fraction", "time-weighted mean share of the KV cache in use", NEITHER, "KV use",
           "percent", "load", compare=True),
    Metric("kv_util_max", "fraction", "largest share of the KV cache in use", NEITHER, "KV use max", "percent",
           "load"),
    Metric("batch_size_mean", "sequences", "sequences per iteration, weighted by iteration time", NEITHER,
           "batch size", ".1f", "load"),
    Metric("batch_size_max", "sequences", "largest batch of an iteration", NEITHER, "batch size max", "d", "load"),
    Metric("queue_len_mean", "requests", "waiting requests, whole cluster, time-weighted mean", LOWER, "queue",
           ".1f", "load"),
    Metric("queue_len_max", "requests", "most waiting requests at once", LOWER, "queue max", "d", "load"),
    Metric("running_mean", "sequences", "running sequences, whole cluster, time-weighted mean", NEITHER,
           "running", ".1f", "load"),
    Metric("running_max", "sequences", "most running sequences at once", NEITHER, "running max", "d", "load"),
    Metric("prefix_cache_hit_rate", "fraction", "prompt tokens found in the prefix cache / prompt tokens "
           "(completed requests; with prefix caching)", HIGHER, "prefix cache hits", "percent", "load"),
    Metric("spec_tokens_per_step", "tokens", "tokens emitted per speculative verify step, bonus token included "
           "(with speculative decoding)", HIGHER, "spec tokens/step", ".2f", "load"),
    Metric("num_requests", "requests", "requests in the workload (as replayed)", NEITHER, "requests", ",d",
           "counts"),
    Metric("num_completed", "requests", "requests that finished", HIGHER, "completed", ",d", "counts",
           compare=True),
    Metric("num_rejected", "requests", "requests the engine turned away", LOWER, "rejected", ",d", "counts",
           formerly=("rejected",), compare=True),
    Metric("num_preemptions", "preemptions", "recompute preemptions (KV cache full)", LOWER, "preemptions", ",d",
           "counts", formerly=("preemptions",), compare=True),
    Metric("num_truncated", "requests", "requests stopped before their requested output (context or KV limit)",
           LOWER, "truncated", ",d", "counts"),
    Metric("output_tokens", "tokens", "output tokens generated", NEITHER, "output tokens", ",d", "counts"),
    Metric("prompt_tokens", "tokens", "prompt tokens of completed requests", NEITHER, "prompt tokens", ",d",
           "counts"),
    Metric("makespan_s", "s", "first arrival to the last finish", NEITHER, "makespan", "time", "counts"),
    Metric("cut_at_s", "s", "solve: when the verifying simulation was cut, its SLO verdict decided (more requests "
           "had missed than the attainment target allows; absent: run to the end)", NEITHER, "cut at", "time",
           "slo"),
    Metric("num_slo_missed", "requests", "requests that had missed the SLO for certain when the run was cut",
           LOWER, "missed when cut", ",d", "slo"),
    Metric("replicas_simulated", "replicas", "solve: identical replicas the verification simulated, with the "
           "requests routed to them (absent: every replica; apex_opt.planner.sampling)", NEITHER,
           "replicas simulated", "d", "counts"),
    Metric("mfu", "fraction", "model FLOPs utilisation, over the makespan", HIGHER, "MFU", "percent",
           "hardware"),
    Metric("mbu", "fraction", "memory-bandwidth utilisation, over the makespan", HIGHER, "MBU", "percent",
           "hardware"),
    Metric("busy_fraction", "fraction", "share of the makespan the GPUs were computing", HIGHER, "busy",
           "percent", "hardware"),
    Metric("num_kv_transfers", "transfers", "disaggregated: KV caches sent from prefill to decode instances",
           NEITHER, "KV transfers", ",d", "disagg"),
    Metric("kv_transfer_bytes", "bytes", "disaggregated: bytes of KV cache sent", NEITHER, "KV bytes", ",.0f",
           "disagg"),
    Metric("kv_transfer_mean_s", "s", "disaggregated: mean duration of a KV transfer", LOWER, "KV transfer",
           "time", "disagg"),
    Metric("kv_transfer_p50_s", "s", "disaggregated: median duration of a KV transfer", LOWER,
           "KV transfer p50", "time", "disagg"),
    Metric("kv_transfer_p99_s", "s", "disaggregated: 99th percentile duration of a KV transfer", LOWER,
           "KV transfer p99", "time", "disagg"),
    Metric("kv_transfer_wait_mean_s", "s", "disaggregated: mean wait for decode memory and links before a "
           "transfer", LOWER, "KV wait", "time", "disagg"),
    Metric("gpus", "GPUs", "GPUs the plan uses", LOWER, "GPUs", "d", "cost", "min-gpus", ("gpus", 1.0, "GPUs"),
           compare=True),
    Metric("energy_j", "J", "energy of the run, busy and idle draw", LOWER, "energy", ",.0f", "cost"),
    Metric("energy_per_output_token_j", "J/token", "energy per output token", LOWER, "energy/token", ".3g",
           "cost", "min-energy", ("energy_per_token", 1e-6, "µJ"), ("energy_per_token_j",), compare=True),
    Metric("gpu_hours", "GPU-hours", "GPUs times the makespan, in hours", LOWER, "GPU-hours", ".3g", "cost"),
    Metric("cost_usd", "USD", "GPU-hours times the GPUs' price per hour", LOWER, "cost", "usd", "cost",
           formerly=("cost",)),
    Metric("cost_per_hour_usd", "USD/h", "price per hour of the plan's GPUs", LOWER, "$/hour", "usd", "cost"),
    Metric("cost_per_mtok_usd", "USD/Mtok", "USD per million output tokens", LOWER, "$/Mtok", "usd", "cost",
           "min-cost", ("cost_per_mtok", 1e-3, "milli-USD"), compare=True),
    # the aggregates of the reference measurements (data/apex/README.md), in their units: kept for fidelity checks
    Metric("ttft_ms_mean", "ms", "mean TTFT in milliseconds, as the reference data records it (= ttft_mean_s "
           "x 1000)", LOWER, "TTFT mean (ms)", ".3g", "reference"),
    Metric("tpot_ms", "ms", "sum of inter-token gaps / output tokens, in milliseconds (reference data)", LOWER,
           "TPOT (ms)", ".3g", "reference"),
    Metric("itl_ms", "ms", "sum of inter-token gaps / (output tokens - 1), in milliseconds (reference data)",
           LOWER, "ITL (ms)", ".3g", "reference"),
    Metric("e2e_s_mean", "s", "mean e2e latency (= e2e_mean_s), as the reference data names it", LOWER,
           "e2e mean", "time", "reference"),
    # what only the planner's cost model states (solve's ``predicted``: apex_opt.planner.prediction.Prediction)
    Metric("ttft_tail_s", "s", "TTFT of the workload's long prompt (its length at the SLO's attainment quantile) "
           "after the mean wait", LOWER, "TTFT tail", "time", "prediction"),
    Metric("batch", "sequences", "sequences in service at once in one replica (Little's law over a request's "
           "lifetime and the trace's span)", NEITHER, "batch", ".1f", "prediction"),
    Metric("kv_tokens", "tokens", "KV cache capacity of one replica", NEITHER, "KV tokens", ",d", "prediction"),
    Metric("kv_needed", "tokens", "KV cache the workload's longest request needs", NEITHER, "KV needed", ",d",
           "prediction"),
    Metric("fits", "bool", "a replica fits GPU memory with room for the workload's longest request", HIGHER,
           "fits", "", "prediction"),
    Metric("memory_headroom_bytes", "bytes", "free memory per GPU once the engine is up (after weights, reserves, "
           "the KV cache and CUDA graphs), on the tightest pipeline stage", NEITHER, "free after KV", ",.0f",
           "prediction"),
    Metric("weights_per_gpu_bytes", "bytes", "weight bytes per GPU on the heaviest pipeline stage", NEITHER,
           "weights/GPU", ",.0f", "prediction"),
    Metric("prefill_utilisation", "fraction", "disaggregated: share of the time a prefill replica is busy",
           NEITHER, "prefill busy", "percent", "prediction"),
)

#: every registered metric by name, in reference-page order
#: totals and rates of the whole deployment (:attr:`Metric.extensive`); the cluster-wide maxima (``queue_len_max``,
#: ``running_max``) are not among them: a sample of replicas cannot tell them
_EXTENSIVE = frozenset({
    "throughput_req_s", "throughput_output_tok_s", "throughput_total_tok_s", "goodput_req_s", "offered_rate_req_s",
    "served_rate_req_s", "backlog_growth_req_s", "queue_growth_req_s", "queue_len_mean", "running_mean", "num_requests", "num_completed",
    "num_rejected", "num_preemptions", "num_truncated", "output_tokens", "prompt_tokens", "num_kv_transfers",
    "kv_transfer_bytes", "gpus", "energy_j", "gpu_hours", "cost_usd", "cost_per_hour_usd", "num_slo_missed",
})
_ALL = tuple(dataclasses.replace(m, extensive=True) if m.name in _EXTENSIVE else m for m in _ALL)
#: the cluster-wide maxima a replica sample cannot tell (dropped from a sampled summary)
CLUSTER_MAXIMA = ("queue_len_max", "running_max")
METRICS: dict[str, Metric] = {m.name: m for m in _ALL}
#: an earlier spelling -> the registered name
FORMERLY: dict[str, str] = {old: m.name for m in _ALL for old in m.formerly}
#: the sections of the reference page, in order
GROUPS = {"latency": "Latency", "throughput": "Throughput and capacity", "slo": "SLO", "load": "Load",
          "counts": "Counts", "hardware": "Hardware", "cost": "GPUs, energy and cost",
          "disagg": "Disaggregated serving",
          "prediction": "Predictions only (the planner's cost model)",
          "reference": "Reference aggregates (the units of the measured data, for fidelity checks only)"}

if len(METRICS) != len(_ALL) or set(FORMERLY) & set(METRICS):  # pragma: no cover - a registry typo
    raise RuntimeError("apex_opt.metrics: a name is registered twice or an old spelling is a current name")


def canonical_name(key: str) -> str:
    """The registered name of ``key`` (``key`` itself when it is not an earlier spelling)."""
    return FORMERLY.get(key, key)


def warn_renamed(old: str, new: str) -> None:
    """Warn that metric ``old`` was read under its earlier spelling (for the caller of the function calling this)."""
    warnings.warn(f"metric '{old}' is now named '{new}' (see docs/metrics.md); the old name is readable until the "
                  "next release", DeprecationWarning, stacklevel=3)


class MetricRecord(Mapping[str, Any]):
    """Base of the typed records of registered metrics (:class:`~apex_opt.planner.prediction.Prediction`,
    :class:`~apex_opt.sim.summary.SimSummary`): a subclass is a frozen dataclass (``eq=False``) whose fields are
    metrics, ``None`` when not reported.

    A record reads as a mapping of the fields it has, in field order (the form of the JSON output), and compares
    equal to a dict of the same items; an earlier spelling (:data:`FORMERLY`) is readable by key or attribute with a
    ``DeprecationWarning`` and accepted by :meth:`of`, but ``in`` is true for present fields only.
    """

    #: how messages name one record, and the parameter a mapping of it is given as
    _what: ClassVar[str] = "record"
    _given_as: ClassVar[str] = "values"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The record's fields, in order."""
        names = _RECORD_FIELDS.get(cls)
        if names is None:
            names = _RECORD_FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        return names

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Self:
        """A record from a mapping of its fields (an earlier spelling accepted; a registered name wins over its
        earlier spelling). A key that is no field is a :class:`~apex_opt.errors.SpecError` naming it."""
        if isinstance(values, cls):
            return values
        names = cls.field_names()
        fields: dict[str, Any] = {}
        for key, value in values.items():
            name = key if key in names else FORMERLY.get(key, key)
            if name not in names:
                raise SpecError(f"{cls._given_as}: no metric '{key}' in {cls._what}; its fields are "
                                f"{', '.join(names)} ({cls.__module__}.{cls.__name__})")
            if name == key or name not in values:
                fields[name] = value
        return cls(**fields)

    def replace(self, **changes: Any) -> Self:
        """This record with ``changes`` to its fields (``None``: not reported)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def __getitem__(self, key: str) -> Any:
        names = self.field_names()
        name = key if key in names else FORMERLY.get(key, "")
        value = getattr(self, name) if name in names else None
        if value is None:
            raise KeyError(key)
        if name != key:
            warn_renamed(key, name)
        return value

    def __contains__(self, key: object) -> bool:  # a present field only; an earlier spelling is read, never held
        return isinstance(key, str) and key in self.field_names() and getattr(self, key) is not None

    def __iter__(self) -> Iterator[str]:
        return (name for name in self.field_names() if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __eq__(self, other: object) -> bool:  # as the dict it reads as (NaN values compare as dicts compare them)
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self) == dict(other)

    __hash__ = None  # type: ignore[assignment]  # a mapping, like the dict it stands for

    def __getattr__(self, name: str) -> Any:  # only called for names that are not fields: earlier spellings
        new = FORMERLY.get(name)
        if new is None or name.startswith("__") or new not in self.field_names():
            raise AttributeError(f"no metric '{name}' in {self._what}; its fields are "
                                 f"{', '.join(self.field_names())}")
        warn_renamed(name, new)
        return getattr(self, new)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.items())})"


_RECORD_FIELDS: dict[type, tuple[str, ...]] = {}


class MetricValues(dict):
    """A dict of metric values keyed by registered names, with attribute access (``r.ttft_p99_s``).

    An earlier spelling (:data:`FORMERLY`) is still readable, with a ``DeprecationWarning``, for one release:

    >>> import warnings
    >>> v = MetricValues({"goodput_req_s": 2.0})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     v["goodput_rps"], v.goodput_rps, caught[0].category.__name__
    (2.0, 2.0, 'DeprecationWarning')
    """

    def __missing__(self, key: str) -> Any:
        new = FORMERLY.get(key)
        if new is None or not dict.__contains__(self, new):
            raise KeyError(key)
        warn_renamed(key, new)
        return dict.__getitem__(self, new)

    def get(self, key: str, default: Any = None) -> Any:  # dict.get skips __missing__
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        new = FORMERLY.get(key)
        if new is not None and dict.__contains__(self, new):
            warn_renamed(key, new)
            return dict.__getitem__(self, new)
        return default

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no metric '{name}'; available: {', '.join(sorted(self))}") from None

    def __reduce__(self) -> tuple[type[MetricValues], tuple[dict[str, Any]]]:
        return (type(self), (dict(self),))


def renamed(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every earlier spelling replaced by its registered name (a registered key wins)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        new = FORMERLY.get(key, key)
        if new == key or new not in values:
            out[new] = value
    return out


def derived_metrics(values: Mapping[str, Any], gpus: int | None = None) -> dict[str, Any]:
    """The metrics a simulated summary ``values`` lacks that follow from the others: ``gpus`` (given),
    ``goodput_per_gpu_req_s`` (goodput over the GPUs) and ``cost_per_mtok_usd`` (cost over the output tokens)."""
    out: dict[str, Any] = {}
    if gpus is not None and "gpus" not in values:
        out["gpus"] = gpus
    n = values["gpus"] if "gpus" in values else out.get("gpus")
    if "goodput_per_gpu_req_s" not in values and "goodput_req_s" in values and n:
        out["goodput_per_gpu_req_s"] = values["goodput_req_s"] / n
    if "cost_per_mtok_usd" not in values and "cost_usd" in values:
        tokens = values.get("output_tokens") or 0
        out["cost_per_mtok_usd"] = values["cost_usd"] / tokens * 1e6 if tokens else math.nan
    return out


def with_derived(values: Mapping[str, Any], gpus: int | None = None) -> MetricValues:
    """``values`` (a simulated summary) as a plain :class:`MetricValues` dict with the metrics derived from others
    filled in (:func:`derived_metrics`). ``SimResult.summary()`` is a typed record with its own
    ``with_derived``; this is for a dict that mixes metrics with other columns."""
    out = MetricValues(renamed(values))
    out.update(derived_metrics(out, gpus))
    return out


def compared(names: Iterable[str] | None = None) -> list[Metric]:
    """The metrics ``compare`` shows as rows (``names``: these instead, in this order; KeyError if unknown)."""
    if names is None:
        return [m for m in _ALL if m.compare]
    return [METRICS[canonical_name(n)] for n in names]


def markdown() -> str:
    """The reference page ``docs/metrics.md``, generated from the registry."""
    sense = {LOWER: "lower", HIGHER: "higher", NEITHER: "-"}
    lines = [
        "# Metrics",
        "",
        "<!-- Generated from apex_opt/metrics.py by `python benchmarks/metrics_doc.py --write`; do not edit. -->",
        "",
        "Every command and library function names its metrics as listed here, in SI units (JSON, CSV columns,",
        "Python dicts): `simulate`, `solve` (`predicted` and `simulated`), `capacity`, `compare` and `sweep`.",
        "Tables may format the values. *Better* says whether lower or higher is better; *objective* names the",
        "`solve --objective` that optimises the metric, and *solver* the `PlanVars` field of the planner's",
        "integer model with its unit (the value in SI units is the integer times the scale in brackets).",
        "",
    ]
    for group, title in GROUPS.items():
        lines += [f"## {title}", "", "| name | unit | meaning | better | objective | solver |",
                  "|---|---|---|---|---|---|"]
        for m in _ALL:
            if m.group != group:
                continue
            solver = f"`v.{m.solver[0]}` in {m.solver[2]} (x {m.solver[1]:g})" if m.solver else ""
            objective = f"`{m.objective}`" if m.objective else ""
            lines.append(f"| `{m.name}` | {m.unit} | {m.meaning} | {sense[m.sense]} | {objective} | {solver} |")
        lines.append("")
    lines += ["## Earlier names", "",
              "These spellings were used before the registry. They stay readable for one release from the records",
              "that `simulate(...).summary()`, `SimResult[...]`, `RankedPlan.predicted` and `RankedPlan.simulated`",
              "return (with a `DeprecationWarning`), and are no longer written to JSON.", "",
              "| earlier name | name |", "|---|---|"]
    lines += [f"| `{old}` | `{new}` |" for old, new in sorted(FORMERLY.items())]
    return "\n".join(lines) + "\n"


__all__ = ["CLUSTER_MAXIMA", "FORMERLY", "HIGHER", "LOWER", "METRICS", "NEITHER", "Metric", "MetricRecord", "MetricValues", "canonical_name",
           "compared", "derived_metrics", "markdown", "renamed", "warn_renamed", "with_derived"]
