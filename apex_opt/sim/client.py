"""What a benchmark client sees: the engine's latencies plus the API server and network path around it.

Engine-side metrics (vLLM's Prometheus histograms, SGLang's logs) start when the engine process receives the
request and stop when it produces the token. Benchmark clients (``vllm bench serve``, inference-perf, aiperf)
time from sending the HTTP request to receiving the streamed chunk, so every request also pays:

* on the way in: HTTP parsing, the chat template and tokenisation of the prompt in the API server, and the
  hand-off to the engine process (ZMQ in vLLM V1 and SGLang): ``request_s + per_prompt_token_s * prompt``;
* on the way out: detokenisation, the server-sent-event chunk and the network: ``response_s`` per streamed
  chunk, which adds once to the first token and once to the last.

* the frontend's output pipeline (the engine process's output thread, the API server's output handler and
  detokeniser) delivers a token ``output_lag_steps`` decode steps after the engine produced it.

So the client's TTFT and end-to-end latency are the engine's plus ``request_s + per_prompt_token_s * prompt +
response_s + output_lag_steps * TPOT``; inter-token gaps are unchanged. The constants are per engine, in ``specs/calibration/serving.yaml``
(``engines.<name>.client``), fitted on client-side runs (``docs/calibration.md`` section 7).

>>> import numpy as np
>>> path = ClientPath(request_s=0.004, per_prompt_token_s=1e-6, response_s=0.002)
>>> round(float(path.delay(np.array([1000]))[0]), 6)
0.007
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from .metrics import RequestRecords

#: where latencies are measured: at the engine (vLLM/SGLang metrics) or at a benchmark client
MeasuredAt = Literal["engine", "client"]
MEASURED_AT: tuple[str, ...] = ("engine", "client")


@dataclass(frozen=True)
class ClientPath:
    """The fixed path between a benchmark client and the engine (seconds)."""

    request_s: float = 0.0
    per_prompt_token_s: float = 0.0
    response_s: float = 0.0
    #: decode steps the frontend's output pipeline lags the engine (EngineCore output thread, frontend output
    #: handler, detokeniser, SSE): a token reaches the client this many of its request's inter-token gaps late
    output_lag_steps: float = 0.0
    #: the API server's work per streaming request per step (detokenise, format and write a chunk): a step's
    #: outputs reach their clients after the server has worked through every stream open at that moment
    per_stream_s: float = 0.0

    def delay(self, prompt_tokens: npt.ArrayLike) -> np.ndarray:
        """Seconds the client adds to each request's TTFT and end-to-end latency."""
        return self.request_s + self.per_prompt_token_s * np.asarray(prompt_tokens, dtype=np.float64) + \
            self.response_s

    def view(self, rec: RequestRecords) -> RequestRecords:
        """The records as the client times them: first token and finish later by :meth:`delay` plus the output
        pipeline's lag of ``output_lag_steps`` of the request's own inter-token gaps."""
        d = self.delay(rec.prompt_tokens)
        if self.output_lag_steps:
            d = d + self.output_lag_steps * np.nan_to_num(rec.tpot_s, nan=0.0)
        if self.per_stream_s:
            d = d + self.per_stream_s * open_streams(rec)
        out = dataclasses.replace(rec, first_token_s=rec.first_token_s + d, finish_s=rec.finish_s + d)
        for a in out.to_dict().values():
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
        return out

    @classmethod
    def from_calibration(cls, entry: dict) -> ClientPath:
        """The ``client`` entry of an engine in ``serving.yaml``."""
        return cls(float(entry.get("request_s", 0.0)), float(entry.get("per_prompt_token_s", 0.0)),
                   float(entry.get("response_s", 0.0)), float(entry.get("output_lag_steps", 0.0)),
                   float(entry.get("per_stream_s", 0.0)))


def open_streams(rec: RequestRecords) -> np.ndarray:
    """Per request, how many requests were streaming tokens (first token out, not finished) when its first token
    came out, itself included (0 for a request that produced none).

    >>> import numpy as np
    >>> from apex_opt.sim.metrics import RequestRecords
    >>> n = 3
    >>> rec = RequestRecords(("a", "b", "c"), np.zeros(n, int), np.zeros(n), np.zeros(n), np.array([1.0, 2.0, 5.0]),
    ...     np.array([3.0, 4.0, 6.0]), np.ones(n, int), np.ones(n, int), np.ones(n, int), np.zeros(n, bool),
    ...     np.zeros(n, bool), np.zeros(n, int), np.zeros(n), ("",) * n)
    >>> open_streams(rec).tolist()
    [1.0, 2.0, 1.0]
    """
    first = rec.first_token_s
    ok = np.isfinite(first)
    starts = np.sort(first[ok])
    ends = np.sort(np.nan_to_num(rec.finish_s[ok], nan=np.inf))
    out = np.zeros(len(first))
    out[ok] = (np.searchsorted(starts, first[ok], side="right") - np.searchsorted(ends, first[ok], side="right"))
    return out


__all__ = ["MEASURED_AT", "ClientPath", "MeasuredAt"]
