"""The plain CSV of measured runs (README, "Check it against your cluster"): one row per run.

Columns (all optional; what a row leaves empty comes from the command line):

* ``name``: a label for the run (default: the file and row number);
* the plan: ``model``, ``gpu``, ``tp``, ``pp``, ``dp``, ``ep``, ``engine``; engine settings ``max_num_seqs``,
  ``max_num_batched_tokens``, ``max_model_len``, ``gpu_memory_utilization``, ``prefix_caching`` (on/off);
* ``workload``: any ``--workload`` reference (a catalog name, a trace path relative to the CSV, ``synthetic:...``);
* ``measured_at``: ``engine`` or ``client``;
* measured metrics: ``ttft_ms_mean``, ``ttft_ms_p50``, ``ttft_ms_p90``, ``ttft_ms_p99``, ``tpot_ms``, ``itl_ms_mean``,
  ``e2e_ms_mean``, ``e2e_ms_p99``, ``throughput_req_s`` (any subset; every name of
  :data:`apex_opt.measurements.METRICS` is read).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..errors import SpecError, shorten
from . import METRICS, Format, Measurement, number, register

_INTS = ("tp", "pp", "dp", "ep", "max_num_seqs", "max_num_batched_tokens", "max_model_len")
_ON = {"on", "true", "yes", "1", "enabled"}
_OFF = {"off", "false", "no", "0", "disabled"}


def detect(path: Path, content: Any) -> bool:
    return path.suffix.lower() == ".csv"


def _resolve(value: str, folder: Path) -> str:
    """A path relative to the CSV's folder when a file by that name is there; the value as given otherwise."""
    if value and not value.startswith("synthetic:") and not Path(value).is_absolute():
        candidate = folder / value
        if candidate.exists():
            return str(candidate)
    return value


def read(path: Path) -> list[Measurement]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SpecError(f"{{measurements=}}{shorten(str(path))}: no rows; give a header line and one row per run "
                        "(columns in the README, 'Check it against your cluster')", option="measurements")
    out = []
    for i, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        where = f"{path}, line {i}"
        plan: dict[str, Any] = {}
        for key in ("gpu", "engine", "weight_dtype", "kv_dtype"):
            if row.get(key):
                plan[key] = row[key]
        for key in _INTS:
            if row.get(key):
                try:
                    plan[key] = int(float(row[key]))
                except ValueError:
                    raise SpecError(f"{where}: column '{key}' {shorten(row[key])} is not a whole number") from None
        if row.get("gpu_memory_utilization"):
            value = number(row["gpu_memory_utilization"])
            if value is None:
                raise SpecError(f"{where}: column 'gpu_memory_utilization' {shorten(row['gpu_memory_utilization'])} "
                                "is not a number; write e.g. 0.9")
            plan["gpu_memory_utilization"] = value
        caching = None
        if row.get("prefix_caching"):
            word = row["prefix_caching"].split()[0].lower()
            if word not in _ON | _OFF:
                raise SpecError(f"{where}: column 'prefix_caching' {shorten(row['prefix_caching'])}: write on or off")
            caching = word in _ON
        metrics: dict[str, float] = {}
        for key in METRICS:
            if row.get(key):
                value = number(row[key])
                if value is None:
                    raise SpecError(f"{where}: column '{key}' {shorten(row[key])} is not a number")
                metrics[key] = value
        measured_at = row.get("measured_at") or None
        if measured_at is not None and measured_at not in ("engine", "client"):
            raise SpecError(f"{where}: column 'measured_at' {shorten(measured_at)}: write engine or client")
        model = _resolve(row["model"], path.parent) if row.get("model") else None
        workload = _resolve(row["workload"], path.parent) if row.get("workload") else None
        out.append(Measurement(name=row.get("name") or f"{path.stem}:{i}", source=f"{path}:{i}", format="csv",
                               metrics=metrics, model=model, plan=plan, prefix_caching=caching, workload=workload,
                               measured_at=measured_at))
    return out


FORMAT = register(Format("csv", "the plain CSV of the README, one row per run", detect, read))
