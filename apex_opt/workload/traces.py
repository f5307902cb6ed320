"""Strict readers (and writers) of request traces.

Three formats are read, chosen by the file's extension and, for JSON Lines, by the first line's keys
(:func:`read_trace`):

``.jsonl`` / ``.json`` -- the APEX trace format (microsoft/apex_plus), one JSON object a line::

    {"RequestID": "1479fa79...", "StartTimeOffset": 197890289, "ContextTokens": 156, "GeneratedTokens": 67}

  ``StartTimeOffset`` is in nanoseconds on the trace's clock, ``ContextTokens`` the prompt length,
  ``GeneratedTokens`` the requested output length. Other keys are allowed and ignored (real traces
  carry more). ``RequestID`` may be a string or an integer.

  The same extensions also hold the Mooncake trace format (kvcache-ai/Mooncake, FAST'25: the
  ``mooncake_trace.jsonl``, conversation and tool-agent traces), recognised by its keys::

    {"timestamp": 3052, "input_length": 2287, "output_length": 316, "hash_ids": [0, 42, 43, 44, 45]}

  ``timestamp`` is in milliseconds on the trace's clock (arrival = timestamp / 1000 s, absolute),
  ``input_length`` the prompt length, ``output_length`` the output length, and ``hash_ids`` one
  integer per block of ``block_tokens`` (512) prompt tokens: equal ids mean equal prefix blocks.
  The reader turns them into :attr:`~apex_opt.workload.model.Workload.segments`: one segment per id,
  each ``block_tokens`` long except the last, which gets the rest of the prompt (a partial block);
  a prompt longer than its blocks gets one more, unique, segment for the remainder. Request ids are
  the request's index in the file (``"0"``, ``"1"``, ...).

``.csv`` -- a header ``arrival_s,prompt_tokens,output_tokens`` (any column order, optional
  ``request_id`` column, other columns ignored), arrival in seconds. Two optional columns describe a
  shared prefix: ``prefix_id`` (any text; empty: none) and ``prefix_tokens`` (that prefix's length,
  0..prompt_tokens): rows with the same ``prefix_id`` share their first ``prefix_tokens`` tokens, the
  rest of each prompt is unique (both columns, or neither).

Both readers check every request: required fields present, whole numbers where counts are
expected, prompt and output lengths >= 1 (an engine rejects a request for 0 output tokens),
arrival times >= 0 and sorted ascending (the simulator replays them in order), request ids unique.
Blank lines are skipped. The first problem raises :class:`~apex_opt.errors.TraceError` naming the
file, the line, the field, the bad value and what would be valid. A prompt longer than an engine's
``max_model_len`` is *not* a trace error: the simulator counts such a request as rejected, as the
engine would.

Validation is done in bulk with numpy; only when the bulk check fails are the rows walked one by
one to find the first bad line, so a clean 100k-line trace loads in a fraction of a second.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ..errors import TraceError, shorten
from .model import Workload

APEX_FIELDS: tuple[str, ...] = ("RequestID", "StartTimeOffset", "ContextTokens", "GeneratedTokens")
MOONCAKE_FIELDS: tuple[str, ...] = ("timestamp", "input_length", "output_length", "hash_ids")
#: Prompt tokens per hash id in the published Mooncake traces.
MOONCAKE_BLOCK_TOKENS = 512
CSV_COLUMNS: tuple[str, ...] = ("arrival_s", "prompt_tokens", "output_tokens")
CSV_PREFIX_COLUMNS: tuple[str, ...] = ("prefix_id", "prefix_tokens")
CSV_OPTIONAL_COLUMNS: tuple[str, ...] = ("request_id", *CSV_PREFIX_COLUMNS)
JSONL_EXTENSIONS: tuple[str, ...] = (".jsonl", ".json")
CSV_EXTENSIONS: tuple[str, ...] = (".csv",)
TRACE_EXTENSIONS: tuple[str, ...] = JSONL_EXTENSIONS + CSV_EXTENSIONS

_APEX_FORMAT = (
    "each line must be one JSON object with RequestID (string), StartTimeOffset (whole nanoseconds "
    "since the trace start), ContextTokens (prompt tokens) and GeneratedTokens (output tokens), e.g. "
    '{"RequestID": "r0", "StartTimeOffset": 197890289, "ContextTokens": 156, "GeneratedTokens": 67}; '
    "other keys are ignored"
)
_MOONCAKE_FORMAT = (
    "each line must be one JSON object with timestamp (milliseconds since the trace start), input_length "
    "(prompt tokens), output_length (output tokens) and hash_ids (one integer per block of the prompt; equal "
    'ids mean equal prefix blocks), e.g. {"timestamp": 3052, "input_length": 2287, "output_length": 316, '
    '"hash_ids": [0, 42, 43, 44, 45]}; other keys are ignored'
)
_CSV_FORMAT = (
    "the first row must be the header arrival_s,prompt_tokens,output_tokens (optional request_id column), "
    "then one request per row, e.g. 0.25,156,67"
)
_INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------- shared helpers


def _read_text(path: Path) -> str:
    shown = shorten(str(path))
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise TraceError(f"trace file {shown}: cannot be opened ({exc.strerror}); check the path") from None
    if not exists:
        raise TraceError(f"trace file {shown} does not exist; check the path (relative paths start at {Path.cwd()})")
    if is_dir:
        raise TraceError(f"trace path {shown} is a directory; give a .jsonl or .csv file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"trace file {shown}: cannot read the file ({exc.strerror}); check its permissions") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TraceError(
            f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save the trace as UTF-8"
        ) from None


def _show(value: Any) -> str:
    """A value as it appears in a JSON trace, shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _described(value: Any) -> str:
    """``"12" (a string)``, ``12.5 (a decimal number)``, ``null``."""
    return "null" if value is None else f"{_show(value)} ({_kind(value)})"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


_INT_FIELDS = {
    # field -> (lower bound, what it is, example)
    "StartTimeOffset": (0, "nanoseconds >= 0 since the trace start", "197890289"),
    "ContextTokens": (1, "prompt tokens >= 1", "156"),
    "GeneratedTokens": (1, "output tokens >= 1", "67"),
    "prompt_tokens": (1, "prompt tokens >= 1", "156"),
    "output_tokens": (1, "output tokens >= 1", "67"),
    "input_length": (1, "prompt tokens >= 1", "2287"),
    "output_length": (1, "output tokens >= 1", "316"),
}
_ZERO_OUTPUT_HINT = " (an engine rejects a request for 0 output tokens): fix the value or drop the line"


def _range_error(loc: str, field: str, shown: str, value: int) -> TraceError:
    what, example = _INT_FIELDS[field][1:]
    if value == 0 and field in ("GeneratedTokens", "output_tokens", "output_length"):
        return TraceError(f"{loc}: field '{field}' is {shown}; it must be a whole number of {what}" + _ZERO_OUTPUT_HINT)
    return TraceError(f"{loc}: field '{field}' is {shown}; it must be a whole number of {what}, e.g. {example}")


def _order_error(loc: str, field: str, shown: str, prev_shown: str, prev_line: int) -> TraceError:
    return TraceError(
        f"{loc}: field '{field}' is {shown}, earlier than {prev_shown} on line {prev_line}; the requests must be "
        f"sorted by arrival time: sort the file by {field}"
    )


def _dup_error(loc: str, field: str, rid: str, first_line: int) -> TraceError:
    return TraceError(
        f"{loc}: field '{field}' is {_show(rid)}, which line {first_line} already uses; request ids must be unique: "
        "rename or drop one of the two"
    )


def _walk(
    path: Path,
    rows: Sequence[Any],
    linenos: Sequence[int],
    check_row: Callable[[Any, str], tuple[str | None, float]],
    time_field: str,
    id_field: str,
    show_time: Callable[[float], str],
) -> NoReturn:
    """Check rows one by one and raise at the first bad line (slow path, after a bulk check failed)."""
    seen: dict[str, int] = {}
    prev_time: float | None = None
    prev_line = 0
    for row, line in zip(rows, linenos, strict=True):
        loc = f"{path}:{line}"
        rid, time = check_row(row, loc)
        if prev_time is not None and time < prev_time:
            raise _order_error(loc, time_field, show_time(time), show_time(prev_time), prev_line)
        if rid is not None:
            if rid in seen:
                raise _dup_error(loc, id_field, rid, seen[rid])
            seen[rid] = line
        prev_time, prev_line = time, line
    raise TraceError(f"{path}: the trace failed a consistency check no line explains; please report this file")


def _bulk_ok(arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray, arrival_low: float) -> bool:
    if arrival.size and not (np.isfinite(arrival).all() and arrival.min() >= arrival_low):
        return False
    if prompt.size and (prompt.min() < 1 or output.min() < 1):
        return False
    return not (arrival.size > 1 and (np.diff(arrival) < 0).any())


def _empty(path: Path, fmt: str) -> TraceError:
    return TraceError(f"{path}: the trace has no requests (empty or only blank lines); {fmt}")


# --------------------------------------------------------------------------- APEX jsonl


def _near_key(obj: dict[str, Any], field: str) -> str:
    close = difflib.get_close_matches(field, [k for k in obj if isinstance(k, str)], n=1, cutoff=0.6)
    return f" (found '{close[0]}': a misspelling?)" if close else ""


def _check_apex_row(obj: Any, loc: str) -> tuple[str, float]:
    if not isinstance(obj, dict):
        raise TraceError(f"{loc}: expected a JSON object, got {_kind(obj)} {_show(obj)}; {_APEX_FORMAT}")
    for field in APEX_FIELDS:
        if field not in obj:
            if _is_mooncake(obj):
                raise TraceError(
                    f"{loc}: missing field '{field}': the line looks like a Mooncake trace (it has hash_ids); "
                    "read it with read_trace or read_mooncake_jsonl, or write every line in one format"
                )
            raise TraceError(f"{loc}: missing field '{field}'{_near_key(obj, field)}; {_APEX_FORMAT}")
    rid = obj["RequestID"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise TraceError(
            f"{loc}: field 'RequestID' is {_described(rid)}; it must be a non-empty string (or integer), e.g. \"r0\""
        )
    if rid == "":
        raise TraceError(f'{loc}: field \'RequestID\' is ""; it must be a non-empty string (or integer), e.g. "r0"')
    for field in APEX_FIELDS[1:]:
        value = obj[field]
        low, what, example = _INT_FIELDS[field]
        if type(value) is not int:
            raise TraceError(
                f"{loc}: field '{field}' is {_described(value)}; it must be a whole number of {what}, e.g. {example}"
            )
        if value < low or value > _INT64_MAX:
            raise _range_error(loc, field, _show(value), value)
    return str(rid), obj["StartTimeOffset"]


def _is_mooncake(obj: Any) -> bool:
    """A Mooncake trace line (has hash_ids, not the APEX fields)."""
    return isinstance(obj, dict) and "hash_ids" in obj and "StartTimeOffset" not in obj


def _read_jsonl(path: Path, fmt: str | None) -> tuple[list[Any], list[int]]:
    """The JSON objects of a JSON Lines file and their line numbers (blank lines skipped).

    ``fmt``: the format text for error messages; None chooses by the lines read so far.
    """
    text = _read_text(path)
    objs: list[Any] = []
    linenos: list[int] = []
    # the C scanner, about twice as fast as json.loads per line
    scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line or line.isspace():
            continue
        try:
            obj, end = scan(line, 0)
            if end != len(line) and not line[end:].isspace():
                raise ValueError("extra data")
        except (StopIteration, ValueError, RecursionError):
            pass  # leading whitespace, extra data or invalid: json.loads below decides and explains
        else:
            objs.append(obj)
            linenos.append(lineno)
            continue
        try:
            objs.append(json.loads(line))
        except (ValueError, RecursionError) as exc:
            snippet = line.strip()
            snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
            detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
            hint = " (a JSON array is not read: write one object per line)" if snippet.startswith("[") else ""
            if fmt is None:
                mooncake = _is_mooncake(objs[0]) if objs else '"hash_ids"' in line
                fmt = _MOONCAKE_FORMAT if mooncake else _APEX_FORMAT
            raise TraceError(f"{path}:{lineno}: not valid JSON ({detail}){hint} in '{snippet}'; {fmt}") from None
        linenos.append(lineno)
    return objs, linenos


def read_apex_jsonl(path: str | os.PathLike[str], *, name: str | None = None) -> Workload:
    """Read an APEX trace (JSON Lines). ``name`` defaults to the file's stem."""
    path = Path(path)
    objs, linenos = _read_jsonl(path, _APEX_FORMAT)
    return _apex_from_objects(path, objs, linenos, name)


def _apex_from_objects(path: Path, objs: list[Any], linenos: list[int], name: str | None) -> Workload:
    if not objs:
        raise _empty(path, _APEX_FORMAT)
    workload = _apex_bulk(path, objs, name)
    if workload is None:
        _walk(path, objs, linenos, _check_apex_row, "StartTimeOffset", "RequestID", lambda t: str(int(t)))
    return workload


def _apex_bulk(path: Path, objs: list[Any], name: str | None) -> Workload | None:
    """Fast path: the whole trace at once; None when anything is off (then the rows are walked)."""
    try:
        ids = [o["RequestID"] for o in objs]
        times = [o["StartTimeOffset"] for o in objs]
        prompts = [o["ContextTokens"] for o in objs]
        outputs = [o["GeneratedTokens"] for o in objs]
    except (KeyError, TypeError, IndexError):
        return None
    for column in (times, prompts, outputs):
        if not all(type(v) is int for v in column):
            return None
    if not all(type(v) is str for v in ids):
        if not all(type(v) is str or type(v) is int for v in ids):
            return None
        ids = [str(v) for v in ids]
    if not all(ids) or len(set(ids)) != len(ids):
        return None
    try:
        ns = np.array(times, dtype=np.int64)
        prompt = np.array(prompts, dtype=np.int64)
        output = np.array(outputs, dtype=np.int64)
    except OverflowError:
        return None
    if not _bulk_ok(ns, prompt, output, 0):
        return None
    return Workload(name or path.stem, ns / 1e9, prompt, output, tuple(ids), str(path))


# --------------------------------------------------------------------------- Mooncake jsonl


def _check_block_tokens(block_tokens: Any) -> int:
    if isinstance(block_tokens, bool) or not isinstance(block_tokens, (int, np.integer)) or block_tokens < 1:
        raise TraceError(
            f"block_tokens={block_tokens!r}: the tokens per Mooncake hash id must be a whole number >= 1 "
            f"(the published traces use {MOONCAKE_BLOCK_TOKENS})"
        )
    return int(block_tokens)


def _blocks_error(loc: str, length: int, blocks: int, block: int) -> TraceError:
    need = block * (blocks - 1) + 1
    return TraceError(
        f"{loc}: field 'input_length' is {length}, but field 'hash_ids' lists {blocks} blocks of {block} tokens, "
        f"which need at least {need} prompt tokens; fix the line, or set the block size the trace was made with "
        "(block_tokens, or a '#block=N' suffix on the path)"
    )


def _mooncake_row_checker(block: int) -> Callable[[Any, str], tuple[str | None, float]]:
    def check(obj: Any, loc: str) -> tuple[str | None, float]:
        if not isinstance(obj, dict):
            raise TraceError(f"{loc}: expected a JSON object, got {_kind(obj)} {_show(obj)}; {_MOONCAKE_FORMAT}")
        for field in MOONCAKE_FIELDS:
            if field not in obj:
                raise TraceError(f"{loc}: missing field '{field}'{_near_key(obj, field)}; {_MOONCAKE_FORMAT}")
        ts = obj["timestamp"]
        if (
            isinstance(ts, bool)
            or not isinstance(ts, (int, float))
            or not (math.isfinite(ts) and 0 <= ts <= _INT64_MAX)
        ):
            raise TraceError(
                f"{loc}: field 'timestamp' is {_described(ts)}; it must be a number of milliseconds >= 0 since "
                "the trace start, e.g. 3052"
            )
        for field in ("input_length", "output_length"):
            value = obj[field]
            low, what, example = _INT_FIELDS[field]
            if type(value) is not int:
                raise TraceError(
                    f"{loc}: field '{field}' is {_described(value)}; it must be a whole number of {what}, "
                    f"e.g. {example}"
                )
            if value < low or value > _INT64_MAX:
                raise _range_error(loc, field, _show(value), value)
        ids = obj["hash_ids"]
        if not isinstance(ids, list) or not all(type(h) is int for h in ids):
            bad = next((h for h in ids if type(h) is not int), None) if isinstance(ids, list) else None
            which = f": element {_described(bad)} is not" if isinstance(ids, list) else " is not"
            raise TraceError(
                f"{loc}: field 'hash_ids' is {_described(ids)}{which} a list of integers, one per block of "
                f"{block} prompt tokens, e.g. [0, 42, 43]"
            )
        if ids and obj["input_length"] < block * (len(ids) - 1) + 1:
            raise _blocks_error(loc, obj["input_length"], len(ids), block)
        return None, float(ts)

    return check


def read_mooncake_jsonl(
    path: str | os.PathLike[str], *, name: str | None = None, block_tokens: int = MOONCAKE_BLOCK_TOKENS
) -> Workload:
    """Read a Mooncake trace (JSON Lines with ``timestamp``, ``input_length``, ``output_length``,
    ``hash_ids``), with :attr:`~apex_opt.workload.model.Workload.segments` from the hash ids.

    ``block_tokens``: prompt tokens per hash id (512 in the published traces). ``name`` defaults to the
    file's stem; the source is the path, with ``#block=N`` appended when ``block_tokens`` is not 512.
    """
    path = Path(path)
    block = _check_block_tokens(block_tokens)
    objs, linenos = _read_jsonl(path, _MOONCAKE_FORMAT)
    return _mooncake_from_objects(path, objs, linenos, name, block)


def _show_ms(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else repr(float(t))


def _mooncake_from_objects(path: Path, objs: list[Any], linenos: list[int], name: str | None, block: int) -> Workload:
    if not objs:
        raise _empty(path, _MOONCAKE_FORMAT)
    workload = _mooncake_bulk(path, objs, name, block)
    if workload is None:
        _walk(path, objs, linenos, _mooncake_row_checker(block), "timestamp", "", _show_ms)
    return workload


def _mooncake_bulk(path: Path, objs: list[Any], name: str | None, block: int) -> Workload | None:
    """Fast path: the whole trace at once; None when anything is off (then the rows are walked)."""
    try:
        times = [o["timestamp"] for o in objs]
        prompts = [o["input_length"] for o in objs]
        outputs = [o["output_length"] for o in objs]
        hashes = [o["hash_ids"] for o in objs]
    except (KeyError, TypeError, IndexError):
        return None
    if not all(type(v) is int or type(v) is float for v in times):
        return None
    if not all(type(v) is int for v in prompts) or not all(type(v) is int for v in outputs):
        return None
    if not all(type(h) is list for h in hashes) or not all(type(x) is int for h in hashes for x in h):
        return None
    try:
        ms = np.array(times, dtype=np.float64)
        prompt = np.array(prompts, dtype=np.int64)
        output = np.array(outputs, dtype=np.int64)
    except OverflowError:
        return None
    if not _bulk_ok(ms, prompt, output, 0.0) or (ms.size and ms.max() > _INT64_MAX):
        return None
    blocks = np.array([len(h) for h in hashes], dtype=np.int64)
    if ((blocks > 0) & (prompt < block * (blocks - 1) + 1)).any():
        return None
    fresh = max((max(h) for h in hashes if h), default=-1) + 1  # ids for the unhashed tails
    segments: list[tuple[tuple[int, int], ...]] = []
    for length, ids in zip(prompts, hashes, strict=True):
        if not ids:
            segments.append(((fresh, length),))
            fresh += 1
            continue
        pairs = [(h, block) for h in ids[:-1]]
        last = length - block * (len(ids) - 1)
        if last > block:
            pairs += [(ids[-1], block), (fresh, last - block)]
            fresh += 1
        else:
            pairs.append((ids[-1], last))
        segments.append(tuple(pairs))
    source = str(path) if block == MOONCAKE_BLOCK_TOKENS else f"{path}#block={block}"
    ids_ = tuple(str(i) for i in range(len(objs)))
    return Workload(name or path.stem, ms / 1e3, prompt, output, ids_, source, tuple(segments))


# --------------------------------------------------------------------------- CSV


def _csv_header(path: Path, header_line: int, header: list[str]) -> dict[str, int]:
    cells = [c.strip() for c in header]
    index: dict[str, int] = {}
    for i, cell in enumerate(cells):
        if cell in index and cell in CSV_COLUMNS + CSV_OPTIONAL_COLUMNS:
            raise TraceError(f"{path}:{header_line}: column '{cell}' appears twice in the header; keep one")
        index.setdefault(cell, i)
    for column in CSV_COLUMNS:
        if column not in index:
            close = difflib.get_close_matches(column, [c for c in cells if c not in CSV_COLUMNS], n=1, cutoff=0.6)
            found = f" (found '{close[0]}': a misspelling?)" if close else f" (found {','.join(cells)})"
            raise TraceError(f"{path}:{header_line}: missing column '{column}' in the header{found}; {_CSV_FORMAT}")
    present = [c for c in CSV_PREFIX_COLUMNS if c in index]
    if len(present) == 1:
        other = next(c for c in CSV_PREFIX_COLUMNS if c not in index)
        raise TraceError(
            f"{path}:{header_line}: column '{present[0]}' without '{other}'; a shared prefix needs both "
            "prefix_id (which prefix) and prefix_tokens (its length), or neither"
        )
    return index


def _csv_row_checker(cols: dict[str, int]) -> Callable[[list[str], str], tuple[str | None, float]]:
    ia, ip, io_ = cols["arrival_s"], cols["prompt_tokens"], cols["output_tokens"]
    ir = cols.get("request_id")

    def check(row: list[str], loc: str) -> tuple[str | None, float]:
        cell = row[ia]
        try:
            arrival = float(cell)
        except ValueError:
            arrival = math.nan
        if not (math.isfinite(arrival) and arrival >= 0):
            raise TraceError(
                f"{loc}: field 'arrival_s' is {cell!r}; it must be a number of seconds >= 0 on the trace's clock, "
                "e.g. 0.25"
            )
        for field, i in (("prompt_tokens", ip), ("output_tokens", io_)):
            cell = row[i]
            try:
                value = int(cell)
            except ValueError:
                what, example = _INT_FIELDS[field][1:]
                raise TraceError(
                    f"{loc}: field '{field}' is {cell!r}; it must be a whole number of {what}, e.g. {example}"
                ) from None
            if value < 1 or value > _INT64_MAX:
                raise _range_error(loc, field, repr(cell), value)
        rid = None
        if ir is not None:
            rid = row[ir]
            if rid == "":
                raise TraceError(f"{loc}: field 'request_id' is empty; give every row an id, or drop the column")
        return rid, arrival

    return check


def read_csv(path: str | os.PathLike[str], *, name: str | None = None) -> Workload:
    """Read a CSV trace (header ``arrival_s,prompt_tokens,output_tokens[,request_id]``)."""
    path = Path(path)
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    cols: dict[str, int] = {}
    rows: list[list[str]] = []
    linenos: list[int] = []
    try:
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if header is None:
                header, header_line = row, reader.line_num
                cols = _csv_header(path, header_line, header)
                continue
            if len(row) != len(header):
                raise TraceError(
                    f"{path}:{reader.line_num}: the row has {len(row)} values but the header has {len(header)} "
                    f"columns ({','.join(c.strip() for c in header)}); give one value per column"
                )
            rows.append(row)
            linenos.append(reader.line_num)
    except csv.Error as exc:
        raise TraceError(f"{path}:{reader.line_num}: not valid CSV ({exc}); {_CSV_FORMAT}") from None
    if header is None or not rows:
        raise _empty(path, _CSV_FORMAT)

    workload = _csv_bulk(path, rows, cols, name)
    if workload is None:
        _walk(path, rows, linenos, _csv_row_checker(cols), "arrival_s", "request_id", repr)
    if "prefix_id" in cols:
        segments = _csv_segments(path, rows, linenos, cols, workload.prompt_tokens.tolist())
        workload = Workload(
            workload.name,
            workload.arrival_s,
            workload.prompt_tokens,
            workload.output_tokens,
            workload.request_ids,
            workload.source,
            segments,
        )
    return workload


def _csv_segments(
    path: Path, rows: list[list[str]], linenos: list[int], cols: dict[str, int], prompts: list[int]
) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Segments from the prefix_id/prefix_tokens columns: the shared prefix, then a unique rest."""
    iid, itok = cols["prefix_id"], cols["prefix_tokens"]
    ids: dict[str, tuple[int, int, int]] = {}  # prefix_id -> (content id, tokens, first line)
    parsed: list[tuple[str, int]] = []
    for row, line, prompt in zip(rows, linenos, prompts, strict=True):
        loc = f"{path}:{line}"
        pid, cell = row[iid].strip(), row[itok].strip()
        try:
            tokens = int(cell) if cell else 0
        except ValueError:
            tokens = -1
        if not 0 <= tokens <= prompt:
            raise TraceError(
                f"{loc}: field 'prefix_tokens' is {cell!r}; it must be a whole number of shared prefix tokens "
                f"between 0 and the row's prompt_tokens ({prompt}), e.g. 100"
            )
        if tokens and not pid:
            raise TraceError(f"{loc}: field 'prefix_tokens' is {cell!r} but 'prefix_id' is empty; name the prefix")
        if pid and tokens:
            known = ids.get(pid)
            if known is None:
                ids[pid] = (len(ids), tokens, line)
            elif known[1] != tokens:
                raise TraceError(
                    f"{loc}: field 'prefix_tokens' is {tokens} but line {known[2]} gives prefix_id {pid!r} "
                    f"{known[1]} tokens; one prefix has one length: fix one, or give the two a different prefix_id"
                )
        parsed.append((pid, tokens))
    fresh = len(ids)
    segments: list[tuple[tuple[int, int], ...]] = []
    for (pid, tokens), prompt in zip(parsed, prompts, strict=True):
        pairs: list[tuple[int, int]] = [(ids[pid][0], tokens)] if pid and tokens else []
        if prompt > tokens:
            pairs.append((fresh, prompt - tokens))
            fresh += 1
        segments.append(tuple(pairs))
    return tuple(segments)


def _csv_bulk(path: Path, rows: list[list[str]], cols: dict[str, int], name: str | None) -> Workload | None:
    ia, ip, io_ = cols["arrival_s"], cols["prompt_tokens"], cols["output_tokens"]
    try:
        arrival = np.array([float(r[ia]) for r in rows], dtype=np.float64)
        prompt = np.array([int(r[ip]) for r in rows], dtype=np.int64)
        output = np.array([int(r[io_]) for r in rows], dtype=np.int64)
    except (ValueError, OverflowError):
        return None
    if not _bulk_ok(arrival, prompt, output, 0.0):
        return None
    if "request_id" in cols:
        ir = cols["request_id"]
        ids = tuple(r[ir] for r in rows)
        if not all(ids) or len(set(ids)) != len(ids):
            return None
    else:
        ids = tuple(str(i) for i in range(len(rows)))
    return Workload(name or path.stem, arrival, prompt, output, ids, str(path))


# --------------------------------------------------------------------------- dispatch and writers


def read_trace(path: str | os.PathLike[str], *, name: str | None = None, block_tokens: int | None = None) -> Workload:
    """Read a trace file, choosing the format by extension: ``.jsonl``/``.json`` (APEX, or Mooncake when
    the first line has ``hash_ids``) or ``.csv``.

    ``block_tokens``: prompt tokens per Mooncake hash id (default 512); an error for other formats.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in JSONL_EXTENSIONS:
        objs, linenos = _read_jsonl(path, None)
        if objs and _is_mooncake(objs[0]):
            block = _check_block_tokens(MOONCAKE_BLOCK_TOKENS if block_tokens is None else block_tokens)
            return _mooncake_from_objects(path, objs, linenos, name, block)
        _no_blocks(path, block_tokens, "an APEX trace (no hash_ids on its first line)")
        return _apex_from_objects(path, objs, linenos, name)
    if suffix in CSV_EXTENSIONS:
        _no_blocks(path, block_tokens, "a CSV trace")
        return read_csv(path, name=name)
    raise TraceError(
        f"trace file '{path}': unknown format '{suffix or '(no extension)'}'; use .jsonl or .json for the APEX "
        "format (RequestID, StartTimeOffset, ContextTokens, GeneratedTokens) or the Mooncake format (timestamp, "
        "input_length, output_length, hash_ids), or .csv with the header "
        "arrival_s,prompt_tokens,output_tokens[,request_id]"
    )


def _no_blocks(path: Path, block_tokens: int | None, what: str) -> None:
    if block_tokens is not None:
        raise TraceError(
            f"{path}: a block size (block_tokens={block_tokens}) applies only to Mooncake traces (lines with "
            f"hash_ids), and this is {what}; drop the block size"
        )


def write_csv(workload: Workload, path: str | os.PathLike[str]) -> Path:
    """Write ``workload`` as CSV (arrival_s written exactly, so :func:`read_csv` gives it back bit for bit)."""
    path = Path(path)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)  # RFC 4180 line ends: ids holding a bare \r or \n get quoted
    writer.writerow([*CSV_COLUMNS, "request_id"])
    for t, p, o, rid in zip(
        workload.arrival_s.tolist(),
        workload.prompt_tokens.tolist(),
        workload.output_tokens.tolist(),
        workload.request_ids,
        strict=True,
    ):
        writer.writerow([repr(t), p, o, rid])
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return path


def write_apex_jsonl(workload: Workload, path: str | os.PathLike[str]) -> Path:
    """Write ``workload`` in the APEX format (arrival times rounded to whole nanoseconds)."""
    path = Path(path)
    ns = np.rint(workload.arrival_s * 1e9).astype(np.int64).tolist()
    lines = [
        json.dumps({"RequestID": rid, "StartTimeOffset": t, "ContextTokens": p, "GeneratedTokens": o})
        for rid, t, p, o in zip(
            workload.request_ids, ns, workload.prompt_tokens.tolist(), workload.output_tokens.tolist(), strict=True
        )
    ]
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return path


__all__ = [
    "APEX_FIELDS",
    "CSV_COLUMNS",
    "CSV_PREFIX_COLUMNS",
    "MOONCAKE_BLOCK_TOKENS",
    "MOONCAKE_FIELDS",
    "TRACE_EXTENSIONS",
    "read_apex_jsonl",
    "read_csv",
    "read_mooncake_jsonl",
    "read_trace",
    "write_apex_jsonl",
    "write_csv",
]
