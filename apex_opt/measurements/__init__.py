"""Measurement files of real serving runs, read into one form for ``apex-opt validate``.

One module per format, registered by name in :data:`READERS`; :func:`read_measurements` picks the format by the
file's keys (or takes ``format=`` by name):

* ``vllm-bench`` (:mod:`.vllm_bench`): the result JSON of ``vllm bench serve --save-result`` (client side);
* ``sglang-bench`` (:mod:`.sglang_bench`): the JSONL ``--output-file`` of ``python -m sglang.bench_serving`` (client
  side; one run per line, every line read);
* ``inference-perf`` (:mod:`.inference_perf`): an inference-perf lifecycle report (``stage_N_lifecycle_metrics.json``
  or ``summary_lifecycle_metrics.json``; client side, seconds);
* ``csv`` (:mod:`.csv_runs`): the plain CSV documented in the README, one row per run.

Every reader returns :class:`Measurement` objects: the plan, engine and workload the file says (what it does not
say comes from the command line) and the measured metrics under the canonical names of :data:`METRICS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError, shorten
from ..plugins import load_plugins

#: canonical metric names (latencies in ms, throughput in requests or tokens per second), in display order
METRICS: tuple[str, ...] = (
    "ttft_ms_mean", "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p95", "ttft_ms_p99",
    "tpot_ms", "tpot_ms_p50", "tpot_ms_p90", "tpot_ms_p95", "tpot_ms_p99",
    "itl_ms_mean", "itl_ms_p50", "itl_ms_p90", "itl_ms_p95", "itl_ms_p99",
    "e2e_ms_mean", "e2e_ms_p50", "e2e_ms_p90", "e2e_ms_p95", "e2e_ms_p99",
    "throughput_req_s", "throughput_output_tok_s",
)

#: the plan fields a measurement may carry (the Plan's names) and the engine switches outside the Plan
PLAN_FIELDS: tuple[str, ...] = ("gpu", "tp", "pp", "dp", "ep", "engine", "max_num_seqs", "max_num_batched_tokens",
                                "max_model_len", "gpu_memory_utilization", "weight_dtype", "kv_dtype",
                                "chunked_prefill", "cuda_graphs", "attention_backend", "dp_attention",
                                "layers_per_stage")


@dataclass
class Measurement:
    """One measured run: what ran (model, plan fields, workload, where it was measured) and what was measured."""

    name: str
    source: str
    format: str
    metrics: dict[str, float]
    model: str | None = None
    plan: dict[str, Any] = field(default_factory=dict)
    prefix_caching: bool | None = None
    workload: str | None = None
    measured_at: str | None = None
    #: fields a synthetic workload can be rebuilt from (rate, requests, mean prompt and output lengths)
    synthetic: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Reader = Callable[[Path], list[Measurement]]
Detector = Callable[[Path, Any], bool]


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    detect: Detector
    read: Reader


#: the formats, by name
READERS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    READERS[fmt.name] = fmt
    return fmt


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SpecError(f"{{measurements=}}{shorten(str(path))}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                        "give the result file of vllm bench serve --save-result, the --output-file of "
                        "sglang.bench_serving, an inference-perf lifecycle report or a CSV",
                        option="measurements") from None


def _load_content(path: Path, text: str) -> Any:
    """The JSON of ``text``; for JSON Lines (several objects, one per line, as sglang.bench_serving appends them)
    the list of the objects of the lines up to the first that does not parse (the reader names that line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            return load_json(path)  # raises the SpecError naming the file and the position
    objects = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            objects.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return objects if objects else load_json(path)


def read_measurements(path: str | Path, format: str | None = None) -> list[Measurement]:
    """The measurements in ``path``, in the format named or the one its keys identify."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{{measurements=}}{shorten(str(path))}: no such file", option="measurements")
    if format is not None:
        if format not in READERS:
            load_plugins()  # installed plug-ins may register it (apex_opt.plugins)
        if format not in READERS:
            raise SpecError(f"measurement format {shorten(format)}: unknown; formats: {', '.join(READERS)}")
        return READERS[format].read(path)
    content: Any = None
    if path.suffix.lower() != ".csv":
        text = path.read_text(encoding="utf-8", errors="replace").lstrip()
        if text.startswith(("{", "[")):
            content = _load_content(path, text)
    for fmt in READERS.values():
        if fmt.detect(path, content):
            return fmt.read(path)
    if load_plugins():  # none of the built-in formats: an installed plug-in's may be
        for fmt in READERS.values():
            if fmt.detect(path, content):
                return fmt.read(path)
    raise SpecError(
        f"{{measurements=}}{shorten(str(path))}: not a measurement format apex-opt reads; formats: "
        + "; ".join(f"{f.name} ({f.description})" for f in READERS.values()), option="measurements")


def number(value: Any) -> float | None:
    """A finite float, or None for missing/empty/non-numeric values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def client_totals(d: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """What the result files of ``vllm bench serve`` and SGLang's ``bench_serving`` share: the throughput metrics
    (``request_throughput``, ``output_throughput``) under the canonical names, and the mean prompt and output
    lengths (``total_*_tokens / completed``, else the per-request ``input_lens``/``output_lens``) that a synthetic
    workload is rebuilt from."""
    metrics: dict[str, float] = {}
    for key, name in (("request_throughput", "throughput_req_s"), ("output_throughput", "throughput_output_tok_s")):
        if (v := number(d.get(key))) is not None:
            metrics[name] = v
    lengths: dict[str, float] = {}
    completed = number(d.get("completed"))
    for key, total_key, lens_key in (("prompt", "total_input_tokens", "input_lens"),
                                     ("output", "total_output_tokens", "output_lens")):
        total = number(d.get(total_key))
        lens = d.get(lens_key)
        if total is not None and completed:
            lengths[key] = total / completed
        elif isinstance(lens, list) and lens:
            lengths[key] = sum(float(x) for x in lens) / len(lens)
    return metrics, lengths


# the readers register themselves on import (detection tries them in this order)
from . import csv_runs, inference_perf, sglang_bench, vllm_bench

__all__ = ["METRICS", "PLAN_FIELDS", "READERS", "Format", "Measurement", "client_totals", "csv_runs", "inference_perf",
           "read_measurements", "register", "sglang_bench", "vllm_bench"]
