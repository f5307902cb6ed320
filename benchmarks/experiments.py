"""Reading the reference serving runs (``data/apex/experiments.csv``) into plans apex-opt can replay.

Each row names the engine, model, dtypes, tp/pp/dp/ep and the engine settings in force; :func:`experiment_plan`
turns it into a :class:`~apex_opt.schema.plan.Plan` with exactly those settings (chunked prefill, token budget,
``max_num_seqs``, ``gpu_memory_utilization``, ``max_model_len``, custom all-reduce, CUDA graphs). Used by
``benchmarks/fidelity.py``, ``benchmarks/fit_serving.py`` and ``tests/test_fidelity.py`` (not part of the
apex_opt package: nothing at run time reads these runs).
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path

from apex_opt.schema.plan import Plan

_MODELS = {
    "models/llama-3.1-70b.json": "llama-3.1-70b",
    "models/mistral-large-2407.json": "mistral-large-2407",
    "models/mixtral-8x22b.json": "mixtral-8x22b",
    "models/mixtral-8x7b.json": "mixtral-8x7b",
}
_GPUS = {"H100-SXM-80GB": "h100-sxm-80gb"}


@dataclass(frozen=True)
class Experiment:
    name: str
    engine: str
    model: str
    gpu: str
    plan: Plan
    served_trace: str
    trace: str
    rate: float
    row: dict[str, str]


def _flag(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on")


def _int_or_none(value: str) -> int | None:
    value = value.strip()
    return int(float(value)) if value else None


def experiment_plan(row: dict[str, str]) -> Experiment:
    """The plan and settings of one experiments.csv row."""
    engine = "sglang-0.4" if row["engine"].strip() == "sglang" else "vllm-0.6"
    gpu = _GPUS[row["gpu"]]
    model = _MODELS[row["model_config"]]
    tp, pp, dp, ep = (int(row[k]) for k in ("tp", "pp", "dp", "ep"))
    weight = "fp8" if row["weight_dtype"].startswith("fp8") else "bf16"
    kv = "fp8" if row["kv_dtype"].startswith("fp8") else "bf16"
    settings = row.get("settings_as_found", "")
    plan = Plan(
        gpu=gpu,
        engine=engine,
        tp=tp,
        pp=pp,
        dp=dp,
        ep=ep,
        weight_dtype=weight,
        kv_dtype=kv,
        chunked_prefill=_flag(row["chunked_prefill"]),
        max_num_batched_tokens=_int_or_none(row["max_num_batched_tokens"]),
        max_num_seqs=_int_or_none(row["max_num_seqs"]),
        gpu_memory_utilization=float(row["gpu_memory_utilization"]) if row["gpu_memory_utilization"].strip() else None,
        max_model_len=_int_or_none(row["max_model_len"]),
        custom_all_reduce=_flag(row["custom_all_reduce"]),
        cuda_graphs=False if "--disable-cuda-graph" in settings or "enforce-eager" in settings else None,
        attention_backend=_attention_backend(settings),
    )
    return Experiment(
        name=row["experiment"],
        engine=engine,
        model=model,
        gpu=gpu,
        plan=plan,
        served_trace=row["served_trace"],
        trace=row["trace"],
        rate=float(row["rate_req_s"]),
        row=row,
    )


def _attention_backend(settings: str) -> str | None:
    """The ``--attention-backend NAME`` flag of a run's settings, if it set one."""
    words = settings.replace(";", " ").split()
    for flag, value in itertools.pairwise(words):
        if flag == "--attention-backend":
            return value
    return None


def read_experiments(path: str | Path) -> list[Experiment]:
    """Every row of an experiments.csv."""
    with open(path, newline="") as f:
        return [experiment_plan(row) for row in csv.DictReader(f)]


def read_measured(path: str | Path) -> dict[str, dict[str, float]]:
    """fidelity_dev.csv: experiment -> {ttft_ms_mean, tpot_ms, itl_ms, e2e_s_mean}."""
    with open(path, newline="") as f:
        return {
            row["experiment"]: {k: float(v) for k, v in row.items() if k not in ("experiment", "n_requests")}
            for row in csv.DictReader(f)
        }
