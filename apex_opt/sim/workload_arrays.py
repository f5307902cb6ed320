"""The workload as the simulator reads it: checked arrays (numpy for the records, lists for the event loop)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SpecError


class WorkloadArrays:
    """A workload's requests, checked: ``N`` requests with their ``ids``, ``arrival`` times (sorted), ``prompt``
    and ``output`` token counts (>= 1) as numpy arrays, and as lists ``arr``, ``prm``, ``out``; with prefix
    caching, per request, the content ``segments`` of its prompt and the id of its answer's content
    (``output_ids``), or None. Raises ``SpecError`` for a workload the simulator cannot replay."""

    def __init__(self, workload: Any) -> None:
        self.arrival = np.asarray(workload.arrival_s, dtype=np.float64)
        self.prompt = np.asarray(workload.prompt_tokens, dtype=np.int64)
        self.output = np.asarray(workload.output_tokens, dtype=np.int64)
        self.ids = tuple(str(r) for r in workload.request_ids)
        n = self.N = int(self.arrival.shape[0])
        self._check_arrays()
        self.arr: list[float] = self.arrival.tolist()
        self.prm: list[int] = self.prompt.tolist()
        self.out: list[int] = self.output.tolist()
        # prefix caching: per request, the content segments of its prompt and the id of its answer's content
        self.segments = getattr(workload, "segments", None)
        self.output_ids = getattr(workload, "output_ids", None)
        if self.segments is not None and getattr(self.segments, "totals", None) is None:  # Workload checked them
            check_segments(self.segments, self.prm, n)
        if self.output_ids is not None and len(self.output_ids) != n:
            raise SpecError(f"workload output_ids has {len(self.output_ids)} entries for {n} requests")

    def _check_arrays(self) -> None:
        """The arrays have one entry per request, token counts are >= 1 and arrivals are sorted."""
        n = self.N
        if not (self.prompt.shape[0] == self.output.shape[0] == len(self.ids) == n):
            raise SpecError("workload arrays differ in length")
        if n and ((self.prompt < 1).any() or (self.output < 1).any()):
            raise SpecError("workload token counts must be >= 1")
        if n > 1 and (np.diff(self.arrival) < 0).any():
            raise SpecError("workload arrival_s must be sorted")


def check_segments(segments: Any, prompts: list[int], n: int) -> None:
    """Every request's segments are (content id, tokens) pairs adding up to its prompt."""
    if len(segments) != n:
        raise SpecError(f"workload segments has {len(segments)} entries for {n} requests; give one tuple of "
                        "(content_id, tokens) pairs per request")
    for k in range(n):
        total = 0
        for seg in segments[k]:
            if len(seg) != 2 or int(seg[1]) < 0:
                raise SpecError(f"workload segments[{k}]: {seg!r} is not a (content_id, tokens) pair")
            total += int(seg[1])
        if total != prompts[k]:
            raise SpecError(f"workload segments[{k}] cover {total} tokens but the prompt has {prompts[k]}; their "
                            "token counts must add up to prompt_tokens")


__all__ = ["WorkloadArrays", "check_segments"]
