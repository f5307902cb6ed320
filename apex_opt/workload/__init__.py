"""Workloads: the :class:`Workload` arrays, trace readers (APEX jsonl, CSV), seeded synthetic
generators and the named workloads of the catalog.

>>> from apex_opt.workload import load_workload
>>> w = load_workload("synthetic:rate=2rps,requests=100,prompt=512,output=128", specs_dir="specs")
>>> len(w), w.prompt_tokens.dtype.name
(100, 'int64')
"""

from __future__ import annotations

from .catalog import (
    WorkloadEntry,
    catalog_entries,
    list_workloads,
    load_workload,
    trace_path,
    workload_names,
    workloads_dir,
)
from .model import PERCENTILE_KINDS, Workload
from .synthetic import (
    SyntheticSpec,
    generate_synthetic,
    is_synthetic,
    parse_synthetic,
    synthetic_workload,
)
from .traces import (
    APEX_FIELDS,
    CSV_COLUMNS,
    TRACE_EXTENSIONS,
    read_apex_jsonl,
    read_csv,
    read_trace,
    write_apex_jsonl,
    write_csv,
)

__all__ = [
    "APEX_FIELDS",
    "CSV_COLUMNS",
    "PERCENTILE_KINDS",
    "TRACE_EXTENSIONS",
    "SyntheticSpec",
    "Workload",
    "WorkloadEntry",
    "catalog_entries",
    "generate_synthetic",
    "is_synthetic",
    "list_workloads",
    "load_workload",
    "parse_synthetic",
    "read_apex_jsonl",
    "read_csv",
    "read_trace",
    "synthetic_workload",
    "trace_path",
    "workload_names",
    "workloads_dir",
    "write_apex_jsonl",
    "write_csv",
]
