"""An inference-perf lifecycle report (kubernetes-sigs/inference-perf): ``stage_N_lifecycle_metrics.json`` for one
load stage or ``summary_lifecycle_metrics.json`` for the run.

Keys read: ``load_summary`` (``count``, ``requested_rate``/``target_request_rate``, ``send_duration``),
``successes.latency.<metric>`` with ``mean``, ``p50`` (or ``median``), ``p90``, ``p95``, ``p99`` in seconds for
``time_to_first_token``, ``time_per_output_token``, ``inter_token_latency`` and ``request_latency``,
``successes.prompt_len``/``output_len`` (``mean``) and ``successes.throughput.requests_per_sec`` /
``output_tokens_per_sec``. inference-perf times at the client. The report names no plan, engine or workload:
they come from the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import Format, Measurement, load_json, number, register

_LATENCIES = {"time_to_first_token": ("ttft_ms", "ttft_ms_mean"), "time_per_output_token": ("tpot_ms", "tpot_ms"),
              "inter_token_latency": ("itl_ms", "itl_ms_mean"), "request_latency": ("e2e_ms", "e2e_ms_mean")}


def detect(path: Path, content: Any) -> bool:
    return isinstance(content, dict) and isinstance(content.get("successes"), dict) and \
        ("load_summary" in content or "failures" in content)


def read(path: Path) -> list[Measurement]:
    d = load_json(path)
    ok = d.get("successes") or {}
    latency = ok.get("latency") or {}
    metrics: dict[str, float] = {}
    for key, (prefix, mean_key) in _LATENCIES.items():
        stats = latency.get(key)
        if not isinstance(stats, dict):
            continue
        if (v := number(stats.get("mean"))) is not None:
            metrics[mean_key] = v * 1e3
        for q in ("50", "90", "95", "99"):
            v = number(stats.get(f"p{q}", stats.get("median") if q == "50" else None))
            if v is not None:
                metrics[f"{prefix}_p{q}"] = v * 1e3
    throughput = ok.get("throughput") or {}
    if (v := number(throughput.get("requests_per_sec"))) is not None:
        metrics["throughput_req_s"] = v
    if (v := number(throughput.get("output_tokens_per_sec"))) is not None:
        metrics["throughput_output_tok_s"] = v
    load = d.get("load_summary") or {}
    synthetic: dict[str, float] = {}
    for key, value in (("rate", load.get("requested_rate", load.get("target_request_rate"))),
                       ("requests", load.get("count")),
                       ("prompt", (ok.get("prompt_len") or {}).get("mean")),
                       ("output", (ok.get("output_len") or {}).get("mean"))):
        if (v := number(value)) is not None:
            synthetic[key] = v
    return [Measurement(name=Path(path).stem, source=str(path), format="inference-perf", metrics=metrics,
                        measured_at="client", synthetic=synthetic)]


FORMAT = register(Format("inference-perf", "an inference-perf lifecycle report (stage_N_lifecycle_metrics.json)",
                         detect, read))
