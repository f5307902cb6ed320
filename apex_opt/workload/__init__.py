"""Workloads: the :class:`Workload` arrays (with optional prompt content for prefix caching), trace
readers (APEX and Mooncake jsonl, CSV), seeded synthetic generators (including inference-perf's shared
prefixes) and the named workloads of the catalog.

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
from .model import PERCENTILE_KINDS, Segments, Workload, concat_workloads
from .synthetic import (
    SyntheticSpec,
    generate_synthetic,
    is_synthetic,
    parse_synthetic,
    shared_prefix_workload,
    synthetic_workload,
)
from .traces import (
    APEX_FIELDS,
    CSV_COLUMNS,
    CSV_PREFIX_COLUMNS,
    MOONCAKE_BLOCK_TOKENS,
    MOONCAKE_FIELDS,
    TRACE_EXTENSIONS,
    read_apex_jsonl,
    read_csv,
    read_mooncake_jsonl,
    read_trace,
    write_apex_jsonl,
    write_csv,
)

__all__ = [
    "APEX_FIELDS",
    "CSV_COLUMNS",
    "CSV_PREFIX_COLUMNS",
    "MOONCAKE_BLOCK_TOKENS",
    "MOONCAKE_FIELDS",
    "PERCENTILE_KINDS",
    "TRACE_EXTENSIONS",
    "Segments",
    "SyntheticSpec",
    "Workload",
    "WorkloadEntry",
    "catalog_entries",
    "concat_workloads",
    "generate_synthetic",
    "is_synthetic",
    "list_workloads",
    "load_workload",
    "parse_synthetic",
    "read_apex_jsonl",
    "read_csv",
    "read_mooncake_jsonl",
    "read_trace",
    "shared_prefix_workload",
    "synthetic_workload",
    "trace_path",
    "workload_names",
    "workloads_dir",
    "write_apex_jsonl",
    "write_csv",
]
