"""The result JSON of ``vllm bench serve --save-result`` (``benchmarks/benchmark_serving.py`` before it moved).

Keys read (whatever of them is present): ``model_id``, ``request_rate``, ``num_prompts``, ``completed``,
``total_input_tokens``, ``total_output_tokens``, ``request_throughput``, ``output_throughput``, and per metric
``ttft``, ``tpot``, ``itl``, ``e2el``: ``mean_<m>_ms``, ``median_<m>_ms``, ``p<q>_<m>_ms`` (the percentiles of
``--metric-percentiles``). With ``--save-detailed`` the per-request ``input_lens`` and ``output_lens`` give the
mean lengths when the totals are absent. Latencies are measured at the client. The file names no plan, engine or
workload: they come from the command line (``--workload synthetic`` rebuilds a Poisson workload from
``request_rate``, ``num_prompts`` and the mean lengths).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import Format, Measurement, client_totals, load_json, number, register

#: vllm's metric names -> the canonical prefix and the mean's canonical name
_METRICS = {"ttft": ("ttft_ms", "ttft_ms_mean"), "tpot": ("tpot_ms", "tpot_ms"), "itl": ("itl_ms", "itl_ms_mean"),
            "e2el": ("e2e_ms", "e2e_ms_mean")}
_PERCENTILES = ("50", "90", "95", "99")


def detect(path: Path, content: Any) -> bool:
    # sglang.bench_serving lines share mean_ttft_ms but name the end-to-end latency mean_e2e_latency_ms (vLLM:
    # mean_e2el_ms): those belong to the sglang-bench reader
    return isinstance(content, dict) and any(f"mean_{m}_ms" in content for m in _METRICS) and \
        ("request_throughput" in content or "num_prompts" in content or "completed" in content) and \
        "mean_e2e_latency_ms" not in content and "median_e2e_latency_ms" not in content


def read(path: Path) -> list[Measurement]:
    d = load_json(path)
    metrics: dict[str, float] = {}
    for m, (prefix, mean_key) in _METRICS.items():
        if (v := number(d.get(f"mean_{m}_ms"))) is not None:
            metrics[mean_key] = v
        for q in _PERCENTILES:
            key = "median" if q == "50" else f"p{q}"
            v = number(d.get(f"{key}_{m}_ms"))
            if v is None and q == "50":
                v = number(d.get(f"p50_{m}_ms"))
            if v is not None:
                metrics[f"{prefix}_p{q}"] = v
    throughput, synthetic = client_totals(d)
    metrics.update(throughput)
    if (rate := number(d.get("request_rate"))) is not None:
        synthetic["rate"] = rate
    elif str(d.get("request_rate", "")).lower() == "inf":
        synthetic["rate"] = float("inf")
    if (n := number(d.get("num_prompts"))) is not None:
        synthetic["requests"] = n
    model = d.get("model_id") if isinstance(d.get("model_id"), str) else None
    name = Path(path).stem
    return [Measurement(name=name, source=str(path), format="vllm-bench", metrics=metrics, model=model,
                        measured_at="client", synthetic=synthetic)]


FORMAT = register(Format("vllm-bench", "the result JSON of vllm bench serve --save-result", detect, read))
