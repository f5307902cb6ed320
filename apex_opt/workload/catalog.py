"""Named workloads of the catalog (``specs/workloads/*.yaml``) and the one entry point
:func:`load_workload`, which takes a catalog name, a trace path or a ``synthetic:`` expression.

A catalog entry is a small YAML file whose stem is the workload's name::

    name: lmsys
    description: LMSYS-Chat conversations ...
    trace: traces/llama/lmsys_05.jsonl      # relative to the YAML file's folder
    tokenizer_family: llama
    rate: 0.5rps                            # nominal rate the trace was drawn at
    provenance: microsoft/apex_plus (MIT)   # optional

The caller passes ``specs_dir`` (the catalog's ``specs/`` folder); nothing here knows where the
repository or the installed package lives.

A trace reference (a path or a catalog name) may end in ``#block=N``: the prompt tokens per hash id
of a Mooncake trace (default 512), e.g. ``--workload traces/mooncake_trace.jsonl#block=256``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from ..bounds import load_yaml
from ..errors import SpecError, TraceError, UnknownNameError
from ..units import Rate
from .model import Workload
from .synthetic import is_synthetic, synthetic_workload
from .traces import TRACE_EXTENSIONS, read_trace

_REF_FORMS = (
    "give a catalog workload name (see 'apex-opt catalog workloads'), a trace file (.jsonl, .json or .csv) "
    "or a synthetic expression such as synthetic:rate=20rps,requests=1000,prompt=1024,output=256"
)

_UNKNOWN_HINT = (
    "A trace file (.jsonl, .json or .csv) or a synthetic expression such as "
    "synthetic:rate=20rps,requests=1000,prompt=1024,output=256 also works."
)


class WorkloadEntry(BaseModel):
    """One ``specs/workloads/<name>.yaml`` file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    trace: str
    tokenizer_family: str
    rate: Rate  # nominal arrival rate of the trace, requests/s
    provenance: str = ""


def workloads_dir(specs_dir: str | os.PathLike[str]) -> Path:
    """The folder of the workload catalog inside ``specs_dir``."""
    return Path(specs_dir) / "workloads"


def _load_entry(path: Path) -> WorkloadEntry:
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), path)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping with name, description, trace, tokenizer_family and rate")
    try:
        entry = WorkloadEntry.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in exc.errors())
        raise SpecError(
            f"{path}: {problems} (valid fields: name, description, trace, tokenizer_family, rate, provenance)"
        ) from None
    if entry.name != path.stem:
        raise SpecError(f"{path}: field 'name' is '{entry.name}' but the file is {path.name}; make them agree")
    return entry


def catalog_entries(specs_dir: str | os.PathLike[str]) -> dict[str, WorkloadEntry]:
    """All catalog entries by name (reads the YAML files only, not the traces)."""
    folder = workloads_dir(specs_dir)
    if not folder.is_dir():
        raise SpecError(f"no workload catalog: '{folder}' is not a folder; pass the specs/ folder as specs_dir")
    entries: dict[str, WorkloadEntry] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        entry = _load_entry(path)
        if entry.name in entries:
            raise SpecError(f"{path}: workload '{entry.name}' is defined twice in {folder}; keep one file")
        entries[entry.name] = entry
    return entries


def workload_names(specs_dir: str | os.PathLike[str]) -> list[str]:
    """Names of the catalog workloads, sorted."""
    return sorted(catalog_entries(specs_dir))


def trace_path(entry: WorkloadEntry, specs_dir: str | os.PathLike[str]) -> Path:
    """The trace file of a catalog entry (its ``trace`` is relative to the workloads folder)."""
    return workloads_dir(specs_dir) / entry.trace


def _load_entry_trace(
    entry: WorkloadEntry, specs_dir: str | os.PathLike[str], block_tokens: int | None = None
) -> Workload:
    path = trace_path(entry, specs_dir)
    if not path.is_file():
        raise TraceError(
            f"{workloads_dir(specs_dir) / (entry.name + '.yaml')}: field 'trace': '{entry.trace}' does not exist "
            f"(looked for {path}); fix the path, relative to the workloads folder"
        )
    workload = read_trace(path, name=entry.name, block_tokens=block_tokens)
    source = entry.name if block_tokens is None else f"{entry.name}#block={block_tokens}"
    return dataclasses.replace(workload, source=source)


_SUFFIX_FORM = "write e.g. 'trace.jsonl#block=256' (block: prompt tokens per hash id of a Mooncake trace)"


def _split_suffix(text: str) -> tuple[str, int | None]:
    """``'x.jsonl#block=256'`` -> ``('x.jsonl', 256)``; no suffix -> ``(text, None)``."""
    if "#" not in text or Path(text).is_file():
        return text, None
    base, _, suffix = text.rpartition("#")
    key, sep, value = suffix.partition("=")
    key, value = key.strip().lower(), value.strip()
    if not base.strip():
        raise SpecError(f"workload '{text}': nothing before the '#' suffix; {_SUFFIX_FORM}")
    if key != "block" or not sep:
        raise SpecError(f"workload '{text}': unknown suffix '#{suffix}'; the only option is #block=N; {_SUFFIX_FORM}")
    try:
        block = int(value)
    except ValueError:
        block = 0
    if block < 1:
        raise SpecError(f"workload '{text}': block={value!r} must be a whole number of tokens >= 1; {_SUFFIX_FORM}")
    return base.strip(), block


def _looks_like_path(ref: str) -> bool:
    return ref.lower().endswith(TRACE_EXTENSIONS) or "/" in ref or os.sep in ref


def load_workload(
    ref: str | os.PathLike[str], *, specs_dir: str | os.PathLike[str], block_tokens: int | None = None
) -> Workload:
    """A workload from a catalog name (``lmsys``), a trace path (``runs/x.jsonl``, ``x.csv``; relative to the
    current directory) or a ``synthetic:`` expression.

    ``block_tokens`` (or a ``#block=N`` suffix on the name or path): prompt tokens per hash id of a Mooncake
    trace, default 512; an error for other traces.

    Raises UnknownNameError for an unknown name (with close matches), TraceError for a missing or malformed
    trace file, SpecError for a malformed synthetic expression or suffix.
    """
    text = os.fspath(ref).strip() if isinstance(ref, os.PathLike) else str(ref).strip()
    if not text:
        raise SpecError(f"empty workload reference; {_REF_FORMS}")
    if is_synthetic(text):
        if block_tokens is not None:
            raise SpecError(f"block_tokens={block_tokens} applies only to Mooncake traces, not to '{text}'")
        return synthetic_workload(text, specs_dir=specs_dir)
    text, block = _split_suffix(text)
    if block is not None and block_tokens is not None and block != block_tokens:
        raise SpecError(
            f"workload '{ref}': the suffix says block={block} but block_tokens={block_tokens}; give the block size once"
        )
    block = block if block is not None else block_tokens
    if isinstance(ref, os.PathLike) or _looks_like_path(text):
        return read_trace(Path(text), block_tokens=block)
    entries = catalog_entries(specs_dir)
    entry = entries.get(text) or entries.get(text.lower())
    if entry is None:
        try:
            is_file = Path(text).is_file()
        except OSError:  # e.g. a name longer than the file system allows: not a file
            is_file = False
        if is_file:  # a trace file without a known extension: let the reader say so
            return read_trace(Path(text), block_tokens=block)
        raise UnknownNameError("workload", text, entries, hint=_UNKNOWN_HINT)
    return _load_entry_trace(entry, specs_dir, block)


def list_workloads(specs_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per catalog workload (loads each trace): for ``apex-opt catalog workloads``."""
    rows = []
    for name, entry in sorted(catalog_entries(specs_dir).items()):
        workload = _load_entry_trace(entry, specs_dir)
        rows.append(
            {
                "name": name,
                "description": entry.description,
                "requests": len(workload),
                "mean_prompt": workload.mean_prompt,
                "mean_output": workload.mean_output,
                "rate": workload.rate,
                "nominal_rate": entry.rate,
                "duration_s": workload.duration_s,
                "tokenizer_family": entry.tokenizer_family,
                "trace": entry.trace,
            }
        )
    return rows


__all__ = [
    "WorkloadEntry",
    "catalog_entries",
    "list_workloads",
    "load_workload",
    "trace_path",
    "workload_names",
    "workloads_dir",
]
