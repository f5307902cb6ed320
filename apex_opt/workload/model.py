"""The :class:`Workload`: a request trace held as numpy arrays.

A workload is what the simulator replays and what the planner sizes a deployment for: one
arrival time, one prompt length and one requested output length per request, sorted by
arrival. Arrival times keep the absolute offsets of their source (a trace whose first request
arrives 0.2 s after the trace's clock started keeps ``arrival_s[0] == 0.2``).

Prompt content, for prefix caching, is optional (:attr:`Workload.segments`): each prompt is a
chain of ``(content_id, tokens)`` segments, and two requests share their first ``n`` prompt
tokens exactly when their chains agree (same ids and same lengths, in order) on a prefix
covering ``n`` tokens, like the chained block hashes of a radix-tree or paged prefix cache.
Multi-turn conversations also name the content of each request's answer
(:attr:`Workload.output_ids`), so a follow-up turn can reuse the KV of the previous answer.

The arrays are made read-only on construction, so a workload can be shared between the
planner, the simulator and a cache without copies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SpecError

#: ``kind`` values accepted by :meth:`Workload.percentile`.
PERCENTILE_KINDS: tuple[str, ...] = ("prompt", "output", "total", "interarrival")

#: One request's prompt: ``(content_id, tokens)`` pairs, in order.
Segments = tuple[tuple[int, int], ...]


class _Checked(tuple[Any, ...]):
    """A validated segments tuple carrying its per-request token totals (derived workloads skip the re-check)."""

    totals: np.ndarray

    @classmethod
    def make(cls, items: Any, totals: np.ndarray) -> _Checked:
        out = cls(items)
        out.totals = totals
        return out

    def take(self, n: int) -> _Checked:
        """The first ``n`` entries, still checked."""
        return _Checked.make(self[:n], self.totals[:n])

    def pick(self, index: np.ndarray) -> _Checked:
        """The entries at ``index`` (ascending positions), still checked."""
        return _Checked.make(tuple(self[int(i)] for i in index), self.totals[index])


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _checked_segments(name: str, segments: Any, prompt: np.ndarray, ids: tuple[str, ...]) -> _Checked:
    """``segments`` as a tuple (one entry per request) of tuples of ``(int, int)`` pairs, checked."""
    if isinstance(segments, _Checked) and np.array_equal(segments.totals, prompt):
        return segments
    if isinstance(segments, (str, bytes)) or not hasattr(segments, "__len__"):
        raise SpecError(
            f"Workload '{name}': segments must be a sequence (one entry per request) of (content_id, tokens) "
            f"pairs, got {type(segments).__name__}"
        )
    if len(segments) != prompt.shape[0]:
        raise SpecError(
            f"Workload '{name}': segments has {len(segments)} entries for {prompt.shape[0]} requests; "
            "give one segment list per request"
        )
    out: list[Segments] = []
    prompts = prompt.tolist()
    for i, request in enumerate(segments):
        what = f"Workload '{name}': segments of request {i} (id {ids[i]!r})"
        try:
            pairs = tuple((int(c), int(t)) for c, t in request if _is_int(c) and _is_int(t))
            complete = len(pairs) == len(request)
        except (TypeError, ValueError):
            complete = False
        if not complete:
            raise SpecError(
                f"{what}: {request!r} is not a sequence of (content_id, tokens) pairs of integers, "
                "e.g. ((7, 512), (8, 100))"
            )
        total = 0
        for content, tokens in pairs:
            if tokens < 1:
                raise SpecError(f"{what}: segment ({content}, {tokens}) has {tokens} tokens; each segment needs >= 1")
            total += tokens
        if total != prompts[i]:
            raise SpecError(
                f"{what} cover {total} tokens but prompt_tokens[{i}] = {prompts[i]}; the (content_id, tokens) "
                "pairs of a request must add up to its prompt length exactly"
            )
        out.append(pairs)
    return _Checked.make(out, prompt)


def _checked_output_ids(name: str, output_ids: Any, n: int) -> tuple[int, ...]:
    if isinstance(output_ids, (str, bytes)) or not hasattr(output_ids, "__len__"):
        raise SpecError(f"Workload '{name}': output_ids must be a sequence of integers, one per request")
    if len(output_ids) != n:
        raise SpecError(
            f"Workload '{name}': output_ids has {len(output_ids)} entries for {n} requests; give one per request"
        )
    if not all(_is_int(v) for v in output_ids):
        bad = next(i for i, v in enumerate(output_ids) if not _is_int(v))
        raise SpecError(f"Workload '{name}': output_ids[{bad}] = {output_ids[bad]!r} is not an integer content id")
    return tuple(int(v) for v in output_ids)


def _frozen_array(values: Any, dtype: type, field: str) -> np.ndarray:
    """A read-only 1-D copy of ``values`` (no copy if it already is a read-only array of ``dtype``)."""
    if isinstance(values, np.ndarray) and values.dtype == dtype and not values.flags.writeable:
        array = values
    else:
        try:
            raw = np.asarray(values)
            if dtype is np.int64 and raw.dtype.kind == "f" and raw.size and not np.array_equal(raw, np.round(raw)):
                raise ValueError("token counts must be whole numbers")
            array = np.array(raw, dtype=dtype, copy=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SpecError(f"Workload field '{field}': cannot convert to {np.dtype(dtype).name} ({exc})") from None
        array.flags.writeable = False
    if array.ndim != 1:
        raise SpecError(f"Workload field '{field}': expected a 1-D array, got shape {array.shape}")
    return array


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests sorted by arrival: parallel arrays, one entry per request.

    ``eq=False``: two workloads compare (and hash) by identity, because element-wise array
    comparison has no single truth value; compare arrays explicitly when you need to.

    Optional prompt content (both None unless the source knows it; derived workloads keep it):

    ``segments``
        per request, ``(content_id, tokens)`` pairs that, concatenated, describe the prompt in order;
        the tokens of request ``i``'s pairs add up to ``prompt_tokens[i]``. Content ids are integers,
        distinct for distinct content. Two requests share their first ``n`` prompt tokens exactly when
        their pair lists agree (same ids and same lengths, in order) on a prefix covering ``n`` tokens;
        an id may follow different segments, content identity is always the whole chain. None: no
        information, no sharing assumed.
    ``output_ids``
        per request, the content id of its generated tokens: a later request (a follow-up turn) whose
        segments hold ``(output_ids[j], output_tokens[j])`` right after request ``j``'s own prompt
        segments can reuse the KV of request ``j``'s answer. None when there is no multi-turn; needs
        ``segments``.

    >>> w = Workload.from_arrays("chat", [0.0, 1.0], [150, 130], [20, 20],
    ...                          segments=[((0, 100), (1, 50)), ((0, 100), (2, 30))])
    >>> w.shares_prefixes, w.reusable_prefix_tokens().tolist()
    (True, [0, 100])
    >>> round(w.prefix_summary()["max_prefix_reuse"], 3)  # 100 of 280 prompt tokens
    0.357
    """

    name: str
    arrival_s: np.ndarray  # float64, sorted ascending, seconds on the trace's clock (>= 0)
    prompt_tokens: np.ndarray  # int64 >= 1
    output_tokens: np.ndarray  # int64 >= 1
    request_ids: tuple[str, ...]
    source: str  # file path, catalog name or synthetic expression
    segments: tuple[Segments, ...] | None = None  # per request: (content_id, tokens) pairs covering the prompt
    output_ids: tuple[int, ...] | None = None  # per request: content id of its answer (multi-turn)

    def __post_init__(self) -> None:
        arrival = _frozen_array(self.arrival_s, np.float64, "arrival_s")
        prompt = _frozen_array(self.prompt_tokens, np.int64, "prompt_tokens")
        output = _frozen_array(self.output_tokens, np.int64, "output_tokens")
        ids = tuple(str(r) for r in self.request_ids)
        n = arrival.shape[0]
        if not (prompt.shape[0] == output.shape[0] == len(ids) == n):
            raise SpecError(
                f"Workload '{self.name}': arrays differ in length (arrival_s {n}, prompt_tokens "
                f"{prompt.shape[0]}, output_tokens {output.shape[0]}, request_ids {len(ids)}); "
                "give one entry per request in each"
            )
        if n:
            if not np.isfinite(arrival).all() or arrival[0] < 0:
                raise SpecError(f"Workload '{self.name}': arrival_s must be finite seconds >= 0")
            if n > 1 and (np.diff(arrival) < 0).any():
                i = int(np.flatnonzero(np.diff(arrival) < 0)[0]) + 1
                raise SpecError(
                    f"Workload '{self.name}': arrival_s is not sorted (request {i} arrives at "
                    f"{float(arrival[i])!r}s, before request {i - 1} at {float(arrival[i - 1])!r}s); "
                    "sort requests by arrival"
                )
            for field, array in (("prompt_tokens", prompt), ("output_tokens", output)):
                if array.min() < 1:
                    i = int(np.argmin(array))
                    raise SpecError(
                        f"Workload '{self.name}': {field}[{i}] = {int(array[i])}; token counts must be >= 1"
                    )
        object.__setattr__(self, "arrival_s", arrival)
        object.__setattr__(self, "prompt_tokens", prompt)
        object.__setattr__(self, "output_tokens", output)
        object.__setattr__(self, "request_ids", ids)
        if self.segments is not None:
            object.__setattr__(self, "segments", _checked_segments(self.name, self.segments, prompt, ids))
        if self.output_ids is not None:
            if self.segments is None:
                raise SpecError(
                    f"Workload '{self.name}': output_ids given without segments; answers can only be reused by "
                    "follow-up prompts described by segments"
                )
            object.__setattr__(self, "output_ids", _checked_output_ids(self.name, self.output_ids, n))

    @classmethod
    def from_arrays(
        cls,
        name: str,
        arrival_s: Any,
        prompt_tokens: Any,
        output_tokens: Any,
        request_ids: Any = None,
        source: str = "",
        *,
        segments: Any = None,
        output_ids: Any = None,
    ) -> Workload:
        """Build a workload from array-likes; request ids default to ``"0", "1", ...``."""
        if request_ids is None:
            request_ids = tuple(str(i) for i in range(len(np.asarray(arrival_s))))
        return cls(
            name, arrival_s, prompt_tokens, output_tokens, tuple(request_ids), source or name, segments, output_ids
        )

    # --- size and rate -------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    def __repr__(self) -> str:
        return (
            f"Workload(name={self.name!r}, requests={len(self)}, rate={self.rate:.3g}/s, "
            f"mean_prompt={self.mean_prompt:.1f}, mean_output={self.mean_output:.1f}, source={self.source!r})"
        )

    @property
    def duration_s(self) -> float:
        """Span of the arrivals: last arrival minus first arrival (0 for fewer than 2 requests)."""
        if len(self) < 2:
            return 0.0
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate(self) -> float:
        """Mean arrival rate over the span, in requests/s: ``(n - 1) / duration_s``.

        This is one over the mean inter-arrival gap. 0.0 for fewer than 2 requests;
        ``inf`` when two or more requests all arrive at the same instant.
        """
        n = len(self)
        if n < 2:
            return 0.0
        span = self.duration_s
        return (n - 1) / span if span > 0 else math.inf

    @property
    def mean_prompt(self) -> float:
        return float(self.prompt_tokens.mean()) if len(self) else 0.0

    @property
    def mean_output(self) -> float:
        return float(self.output_tokens.mean()) if len(self) else 0.0

    @property
    def total_tokens(self) -> int:
        """Sum over requests of prompt + output tokens."""
        return int(self.prompt_tokens.sum() + self.output_tokens.sum())

    def percentile(self, kind: str, p: float) -> float:
        """The ``p``-th percentile (0..100, linear interpolation) of one per-request quantity.

        ``kind``: ``prompt``, ``output``, ``total`` (prompt + output tokens) or
        ``interarrival`` (seconds between consecutive arrivals).
        """
        if kind == "prompt":
            values = self.prompt_tokens
        elif kind == "output":
            values = self.output_tokens
        elif kind == "total":
            values = self.prompt_tokens + self.output_tokens
        elif kind == "interarrival":
            values = np.diff(self.arrival_s)
        else:
            raise SpecError(f"unknown percentile kind '{kind}'; valid kinds: {', '.join(PERCENTILE_KINDS)}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 100:
            raise SpecError(f"percentile p = {p!r} must be a number between 0 and 100 (e.g. 99 for p99)")
        if values.shape[0] == 0:
            return math.nan
        return float(np.percentile(values, p))

    # --- derived workloads ---------------------------------------------------------------

    def head(self, n: int) -> Workload:
        """The first ``n`` requests (all of them if ``n >= len(self)``); arrival offsets unchanged."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise SpecError(f"head(n): n = {n!r} must be an integer >= 0")
        n = int(n)
        return Workload(
            self.name,
            self.arrival_s[:n],
            self.prompt_tokens[:n],
            self.output_tokens[:n],
            self.request_ids[:n],
            self.source,
            None if self.segments is None else self.segments.take(n),  # type: ignore[attr-defined]
            None if self.output_ids is None else self.output_ids[:n],
        )

    def subset(self, index: Any) -> Workload:
        """The requests at positions ``index`` (ascending, no repeats), arrival offsets unchanged.

        >>> w = Workload("w", [0.0, 1.0, 2.0, 3.0], [10, 20, 30, 40], [1, 2, 3, 4], ("a", "b", "c", "d"), "test")
        >>> w.subset([1, 3]).prompt_tokens.tolist()
        [20, 40]
        """
        idx = np.asarray(index, dtype=np.int64)
        n = len(self)
        if idx.ndim != 1 or (idx.size and (idx[0] < 0 or idx[-1] >= n or np.any(np.diff(idx) <= 0))):
            raise SpecError(f"subset(index): positions must be ascending, without repeats, within 0..{n - 1}")
        return Workload(
            self.name,
            self.arrival_s[idx],
            self.prompt_tokens[idx],
            self.output_tokens[idx],
            tuple(self.request_ids[int(i)] for i in idx),
            self.source,
            None if self.segments is None else self.segments.pick(idx),  # type: ignore[attr-defined]
            None if self.output_ids is None else tuple(self.output_ids[int(i)] for i in idx),
        )

    def scaled(self, rate_factor: float) -> Workload:
        """The same requests with every arrival time divided by ``rate_factor``.

        ``rate_factor=2`` compresses the trace in time, doubling its rate (and halving the first
        arrival's offset); token counts are unchanged. Planners use this to probe load levels.
        """
        if isinstance(rate_factor, bool) or not isinstance(rate_factor, (int, float, np.floating, np.integer)):
            raise SpecError(f"scaled(rate_factor): {rate_factor!r} is not a number; write e.g. 2.0 for twice the rate")
        factor = float(rate_factor)
        if not (math.isfinite(factor) and factor > 0):
            raise SpecError(
                f"scaled(rate_factor): {rate_factor!r} must be a finite number > 0, e.g. 2.0 for twice the rate"
            )
        return Workload(
            self.name,
            self.arrival_s / factor,
            self.prompt_tokens,
            self.output_tokens,
            self.request_ids,
            self.source,
            self.segments,
            self.output_ids,
        )

    def with_rate(self, rate: float) -> Workload:
        """The same requests rescaled in time so that :attr:`rate` equals ``rate`` (requests/s)."""
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)):
            raise SpecError(f"with_rate(rate): {rate!r} is not a number of requests/s")
        rate = float(rate)
        current = self.rate
        if not (math.isfinite(rate) and rate > 0):
            raise SpecError(f"with_rate(rate): {rate!r} must be a finite number of requests/s > 0")
        if not (math.isfinite(current) and current > 0):
            raise SpecError(f"with_rate: workload '{self.name}' has no finite arrival rate to rescale (rate {current})")
        return self.scaled(rate / current)

    # --- shared prefixes -----------------------------------------------------------------

    @property
    def shares_prefixes(self) -> bool:
        """True when the prompts' content is known (:attr:`segments` is not None)."""
        return self.segments is not None

    def _prefix_walk(self) -> tuple[np.ndarray, int, int]:
        """(reusable tokens per request, distinct segments, distinct prompt tokens)."""
        n = len(self)
        hits = np.zeros(n, dtype=np.int64)
        if self.segments is None:
            return hits, 0, int(self.prompt_tokens.sum())
        nodes: dict[tuple[int, int, int], int] = {}  # (parent node, content id, tokens) -> node
        distinct = distinct_tokens = 0
        outputs = self.output_ids
        out_tokens = self.output_tokens.tolist()
        for i, request in enumerate(self.segments):
            node, reused, known = 0, 0, True
            for content, tokens in request:
                key = (node, content, tokens)
                child = nodes.get(key)
                if child is None:
                    child = len(nodes) + 1
                    nodes[key] = child
                    known = False
                    distinct += 1
                    distinct_tokens += tokens
                elif known:
                    reused += tokens
                node = child
            hits[i] = reused
            if outputs is not None:  # the answer's KV follows the prompt's in the cache
                nodes.setdefault((node, outputs[i], out_tokens[i]), len(nodes) + 1)
        return hits, distinct, distinct_tokens

    def reusable_prefix_tokens(self) -> np.ndarray:
        """Per request, the prompt tokens an infinite prefix cache could serve: the longest run of
        whole leading segments that an earlier request's prompt (or prompt + answer, with
        :attr:`output_ids`) already held. Zeros without :attr:`segments`.
        """
        return self._prefix_walk()[0]

    def prefix_summary(self) -> dict[str, Any]:
        """Prefix-sharing statistics (JSON-serialisable).

        ``distinct_segments``: distinct segment chains (prompt content nodes) over all prompts;
        ``distinct_prompt_tokens``: their tokens; ``max_prefix_reuse``: the fraction of prompt tokens
        that repeat an earlier request's prefix, an upper bound on the prefix-cache hit rate (infinite
        cache, token granularity, answers cached when :attr:`output_ids` is given). Without
        :attr:`segments` no sharing is assumed: reuse 0, every request one distinct segment.
        """
        total = int(self.prompt_tokens.sum())
        if self.segments is None:
            return {
                "distinct_segments": len(self),
                "distinct_prompt_tokens": total,
                "max_prefix_reuse": 0.0,
            }
        hits, distinct, distinct_tokens = self._prefix_walk()
        return {
            "distinct_segments": distinct,
            "distinct_prompt_tokens": distinct_tokens,
            "max_prefix_reuse": float(hits.sum()) / total if total else 0.0,
        }

    def summary(self) -> dict[str, Any]:
        """Plain-Python description (JSON-serialisable): counts, rate, token statistics; with
        :attr:`segments`, also the keys of :meth:`prefix_summary`."""
        n = len(self)
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "requests": n,
            "first_arrival_s": float(self.arrival_s[0]) if n else 0.0,
            "duration_s": self.duration_s,
            "rate_rps": self.rate,
            "mean_prompt": self.mean_prompt,
            "mean_output": self.mean_output,
            "total_tokens": self.total_tokens if n else 0,
        }
        for kind in ("prompt", "output"):
            for p in (50, 90, 99):
                out[f"p{p}_{kind}"] = self.percentile(kind, p) if n else math.nan
            values = self.prompt_tokens if kind == "prompt" else self.output_tokens
            out[f"max_{kind}"] = int(values.max()) if n else 0
        if self.segments is not None:
            out.update(self.prefix_summary())
        return out


def concat_workloads(parts: Sequence[Workload], *, name: str | None = None) -> Workload:
    """The requests of ``parts`` one after the other in time (e.g. consecutive load stages).

    Each part must start at or after the previous part's last arrival (shift a part's clock when
    generating it, e.g. ``start_s`` of :func:`~apex_opt.workload.synthetic.shared_prefix_workload`).
    Request ids are kept when they stay unique, otherwise prefixed with the part's index
    (``"1:17"``). Content ids of prompts are kept, so parts drawn from the same data set share
    their prompts; each part's answer ids (:attr:`Workload.output_ids`) are renumbered to stay
    distinct. A part without segments gets one unique segment per request (no sharing, as None
    means). The name defaults to the parts' names joined with ``+``; the source likewise.
    """
    if not parts:
        raise SpecError("concat_workloads: give at least one workload")
    for k in range(1, len(parts)):
        prev, cur = parts[k - 1], parts[k]
        if len(prev) and len(cur) and cur.arrival_s[0] < prev.arrival_s[-1]:
            raise SpecError(
                f"concat_workloads: part {k} ('{cur.name}') starts at {float(cur.arrival_s[0])!r}s, before part "
                f"{k - 1} ('{prev.name}') ends at {float(prev.arrival_s[-1])!r}s; shift it later (e.g. start_s)"
            )
    ids = [rid for p in parts for rid in p.request_ids]
    if len(set(ids)) != len(ids):
        ids = [f"{k}:{rid}" for k, p in enumerate(parts) for rid in p.request_ids]
    joined_name = name or "+".join(dict.fromkeys(p.name for p in parts))
    source = "+".join(dict.fromkeys(p.source for p in parts))
    segments: list[Segments] | None = None
    output_ids: list[int] | None = None
    if any(p.segments is not None for p in parts):
        used = [c for p in parts if p.segments is not None for req in p.segments for c, _ in req]
        used += [c for p in parts if p.output_ids is not None for c in p.output_ids]
        fresh = max(used, default=-1) + 1
        segments, output_ids = [], []
        with_outputs = any(p.output_ids is not None for p in parts)
        for p in parts:
            if p.segments is None:
                segments.extend(((fresh + i, t),) for i, t in enumerate(p.prompt_tokens.tolist()))
                fresh += len(p)
                output_ids.extend(range(fresh, fresh + len(p)))
                fresh += len(p)
                continue
            remap: dict[int, int] = {}
            if p.output_ids is not None:
                for c in p.output_ids:
                    if c not in remap:
                        remap[c] = fresh
                        fresh += 1
                output_ids.extend(remap[c] for c in p.output_ids)
                segments.extend(tuple((remap.get(c, c), t) for c, t in req) for req in p.segments)
            else:
                output_ids.extend(range(fresh, fresh + len(p)))
                fresh += len(p)
                segments.extend(p.segments)
        if not with_outputs:
            output_ids = None
    return Workload(
        joined_name,
        np.concatenate([p.arrival_s for p in parts]),
        np.concatenate([p.prompt_tokens for p in parts]),
        np.concatenate([p.output_tokens for p in parts]),
        tuple(ids),
        source,
        None if segments is None else tuple(segments),
        None if output_ids is None else tuple(output_ids),
    )


__all__ = ["PERCENTILE_KINDS", "Segments", "Workload", "concat_workloads"]
