"""The ``--output-file`` of SGLang's ``python -m sglang.bench_serving``: one JSON object per line, one line appended
per run (JSONL), so a file holds every run written to it.

Keys read (the summary ``bench_serving`` writes; source: ``sglang/bench_serving.py``, ``benchmark()``):
``backend``, ``request_rate`` (``Infinity`` for all-at-once), ``max_concurrency``, ``completed``,
``total_input_tokens``, ``total_output_tokens``, ``request_throughput``, ``output_throughput``, and
``mean_``/``median_``/``p99_`` of ``ttft_ms``, ``tpot_ms``, ``itl_ms`` (also ``p95_itl_ms``) and
``e2e_latency_ms``. With ``--output-details`` a line also has per-request lists: ``input_lens``, ``output_lens``,
``ttfts`` (seconds), ``itls`` (seconds, one list per request) and ``errors``; the percentiles the summary lacks
(p90 and p95 of TTFT, TPOT and e2e, p90 of ITL) are computed from them over the requests without an error, with
numpy's default (linear) percentile as bench_serving uses. A request's e2e latency there is its TTFT plus its
inter-token gaps and its TPOT is those gaps over ``output_len - 1``, as bench_serving defines TPOT.

Latencies are measured at the client. The file names no plan and no workload: they come from the command line
(``--workload synthetic`` rebuilds a Poisson workload from ``request_rate``, the request count (``num_prompts``
when present, else ``completed``) and the mean lengths). The engine is ``sglang-0.4`` when the client spoke
SGLang's own API (``backend`` ``sglang``, ``sglang-native``, ``sglang-oai``, ``sglang-oai-chat``); ``--engine``
replaces it. Any other backend (``vllm``, ``lmdeploy``, ...) benchmarked another server, so the engine is left to
``--engine``, as for a vllm bench serve file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError, shorten
from . import Format, Measurement, client_totals, number, register

#: SGLang's metric names -> the canonical prefix and the mean's canonical name
_METRICS = {"ttft": ("ttft_ms", "ttft_ms_mean"), "tpot": ("tpot_ms", "tpot_ms"), "itl": ("itl_ms", "itl_ms_mean"),
            "e2e_latency": ("e2e_ms", "e2e_ms_mean")}
_PERCENTILES = ("50", "90", "95", "99")
#: the backends that talk to an SGLang server
_SGLANG_BACKENDS = ("sglang", "sglang-native", "sglang-oai", "sglang-oai-chat")
ENGINE = "sglang-0.4"


def _is_run(d: Any) -> bool:
    # The rule that tells a bench_serving line from a vllm bench serve result (both have mean_ttft_ms): SGLang
    # names the end-to-end latency ``*_e2e_latency_ms`` where vLLM writes ``*_e2el_ms``; a line must have that key
    # and one of SGLang's run keys (completed, request_throughput).
    return isinstance(d, dict) and ("mean_e2e_latency_ms" in d or "median_e2e_latency_ms" in d) and \
        ("completed" in d or "request_throughput" in d)


def detect(path: Path, content: Any) -> bool:
    if isinstance(content, list):  # several lines: read_measurements hands the objects of a JSONL file
        return bool(content) and _is_run(content[0])  # the reader names any later line that is no run
    return _is_run(content)


def _lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-empty line; a SpecError names the first line that is no run."""
    out = []
    where = shorten(str(path))
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{{measurements=}}{where}, line {i}: not valid JSON ({exc.msg} at column {exc.colno}); "
                            "sglang.bench_serving --output-file writes one JSON object per line; remove the broken "
                            "line or rerun the benchmark", option="measurements") from None
        if not _is_run(d):
            keys = ", ".join(list(d)[:6]) if isinstance(d, dict) else type(d).__name__
            raise SpecError(f"{{measurements=}}{where}, line {i}: not a bench_serving run (got {shorten(keys)}); "
                            "each line needs the summary keys completed and mean_e2e_latency_ms / mean_ttft_ms as "
                            "sglang.bench_serving writes them", option="measurements")
        out.append((i, d))
    if not out:
        raise SpecError(f"{{measurements=}}{where}: no runs; the file is empty (sglang.bench_serving --output-file "
                        "appends one line per run)", option="measurements")
    return out


def _percentile(values: list[float], q: str) -> float | None:
    return float(np.percentile(values, float(q))) * 1e3 if values else None


def _details(d: dict[str, Any]) -> dict[str, list[float]]:
    """Per-request TTFT, TPOT, e2e (seconds) and every ITL gap from ``--output-details`` lists, failed requests
    left out; {} without the lists."""
    ttfts, itls = d.get("ttfts"), d.get("itls")
    if not isinstance(ttfts, list) or not isinstance(itls, list) or len(itls) != len(ttfts):
        return {}
    errors, outs = d.get("errors"), d.get("output_lens")
    if not isinstance(errors, list):
        errors = [""] * len(ttfts)
    if not isinstance(outs, list):
        outs = [None] * len(ttfts)
    got: dict[str, list[float]] = {"ttft": [], "tpot": [], "itl": [], "e2e_latency": []}
    for ttft, gaps, error, out in zip(ttfts, itls, errors, outs, strict=False):
        t = number(ttft)
        if error or t is None or not isinstance(gaps, list):
            continue
        gaps = [g for g in (number(x) for x in gaps) if g is not None]
        got["ttft"].append(t)
        got["itl"].extend(gaps)
        got["e2e_latency"].append(t + sum(gaps))
        n = number(out)
        if n is not None and n > 1:
            got["tpot"].append(sum(gaps) / (n - 1))
    return got if got["ttft"] else {}


def _measurement(path: Path, line: int, d: dict[str, Any], name: str) -> Measurement:
    metrics: dict[str, float] = {}
    details = _details(d)
    for m, (prefix, mean_key) in _METRICS.items():
        if (v := number(d.get(f"mean_{m}_ms"))) is not None:
            metrics[mean_key] = v
        for q in _PERCENTILES:
            v = number(d.get(f"median_{m}_ms" if q == "50" else f"p{q}_{m}_ms"))
            if v is None:
                v = _percentile(details.get(m, []), q)
            if v is not None:
                metrics[f"{prefix}_p{q}"] = v
    throughput, synthetic = client_totals(d)
    metrics.update(throughput)
    completed = number(d.get("completed"))
    rate = d.get("request_rate")
    if (r := number(rate)) is not None:
        synthetic["rate"] = r
    elif rate == math.inf or str(rate).lower() in ("inf", "infinity"):
        synthetic["rate"] = math.inf
    requests = number(d.get("num_prompts"))
    if requests is None:
        requests = completed
    if requests is not None:
        synthetic["requests"] = requests
    backend = d.get("backend")
    plan = {"engine": ENGINE} if backend in _SGLANG_BACKENDS else {}
    notes = []
    if (cap := number(d.get("max_concurrency"))) is not None:
        notes.append(f"the run capped concurrency at {cap:g} requests (--max-concurrency); apex-opt simulates "
                     "an open-loop client without a cap")
    model = next((d[k] for k in ("model_id", "model") if isinstance(d.get(k), str)), None)
    return Measurement(name=name, source=f"{path}:{line}", format="sglang-bench", metrics=metrics, model=model,
                       plan=plan, measured_at="client", synthetic=synthetic, notes=notes)


def read(path: Path) -> list[Measurement]:
    runs = _lines(Path(path))
    stem = Path(path).stem
    if len(runs) == 1:
        line, d = runs[0]
        return [_measurement(Path(path), line, d, stem)]
    return [_measurement(Path(path), line, d, f"{stem}:{line}") for line, d in runs]


FORMAT = register(Format("sglang-bench", "the JSONL --output-file of python -m sglang.bench_serving", detect, read))
