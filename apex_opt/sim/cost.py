"""The cost model as the simulator sees it: :class:`BatchShape`, :class:`StageCost`, :class:`ReplicaCost`.

A replica is ``pp`` pipeline stages. One engine iteration on one stage is described by a :class:`BatchShape`;
the stage's :class:`StageCost` prices it. ``apex_opt.perf`` implements these protocols from the model, GPU and
plan; :class:`LinearStageCost` is a small exact test double for tests and benchmarks.

Contract details the simulator relies on
----------------------------------------
* ``iteration_time`` includes the engine's host overhead (scheduling, input preparation, TP broadcast). The
  simulator adds no time of its own: put host overhead into the **first** stage's ``iteration_time`` (and
  report the part spent before the forward is launched with the optional ``host_time``).
* For a pure decode batch (``num_tokens == num_seqs == num_decodes``, ``prefill_pairs == 0``) of ``B``
  sequences, ``iteration_time == c0 + c1 * decode_ctx_sum`` **exactly**, with ``(c0, c1) = decode_coeffs(B)``.
  The simulator uses this to skip over runs of identical decode steps in closed form.
* Over such a run (fixed ``B``, ``decode_ctx_sum`` growing by ``B`` per step) ``energy``, ``flops`` and
  ``bytes`` must be affine in ``decode_ctx_sum`` (the skip sums them with the trapezoid rule, exact for affine
  functions), and ``host_time`` must not depend on ``decode_ctx_sum``.
* If the cost regime of a decode batch changes with its longest context (vLLM 0.6 runs a decode batch eagerly
  once a sequence is longer than ``max_seq_len_to_capture`` = 8192), declare the thresholds in an attribute
  ``ctx_breakpoints`` (e.g. ``(8192,)``) and accept ``decode_coeffs(B, max_ctx=...)``; the simulator never
  skips across a breakpoint and passes the batch's longest context.

Optional members (looked up with ``getattr``): ``host_time(b)``, ``ctx_breakpoints``, ``peak_flops()`` and
``peak_bandwidth()`` (same unit as ``flops``/``bytes``: per GPU or per stage, consistently), used for MFU and
memory-bandwidth utilisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What one engine iteration computes on one stage.

    Attributes
    ----------
    num_tokens:
        Prefill tokens scheduled this iteration plus the number of decodes.
    num_seqs:
        Sequences in the iteration (prefill chunks + decodes, including a finished request that runs one extra
        step under async output processing).
    num_decodes:
        Decoding sequences (one token each).
    decode_ctx_sum:
        Sum over decodes of the context each attends to (tokens already in the KV cache + 1).
    prefill_pairs:
        Sum over prefill chunks of ``c * (p + (c + 1) / 2)``: causal query-key pairs of a chunk of ``c`` tokens
        after ``p`` tokens already in the cache.
    has_prefill:
        Whether any prefill chunk is in the batch (mixed and prefill batches run eagerly in vLLM 0.6 and SGLang).
    max_ctx:
        Longest context of any sequence in the batch, including this iteration's tokens.
    """

    num_tokens: int
    num_seqs: int
    num_decodes: int
    decode_ctx_sum: int
    prefill_pairs: float
    has_prefill: bool
    max_ctx: int = 0


class StageCost(Protocol):
    """Prices one iteration on one pipeline stage (see the module docstring for the exactness contract)."""

    def iteration_time(self, b: BatchShape) -> float:
        """Seconds for the iteration on this stage, host overhead included (first stage)."""
        ...

    def decode_coeffs(self, num_decodes: int) -> tuple[float, float]:
        """``(c0, c1)`` with ``iteration_time(pure decode batch) == c0 + c1 * decode_ctx_sum`` exactly."""
        ...

    def energy(self, b: BatchShape, seconds: float) -> float:
        """Joules the stage's GPUs spend on the iteration (which takes ``seconds``)."""
        ...

    def idle_power(self) -> float:
        """Watts the stage's GPUs draw while idle."""
        ...

    def flops(self, b: BatchShape) -> float:
        """Floating-point operations of the iteration (per GPU or per stage, as ``peak_flops``)."""
        ...

    def bytes(self, b: BatchShape) -> float:
        """Bytes moved to/from HBM by the iteration (per GPU or per stage, as ``peak_bandwidth``)."""
        ...


class ReplicaCost(Protocol):
    """The stages of one replica and the activation send between consecutive stages."""

    @property
    def stages(self) -> Sequence[StageCost]:
        """The pipeline stages, first to last (read-only, so frozen dataclasses implement it)."""
        ...

    def send_time(self, num_tokens: int) -> float:
        """Seconds to send the activations of ``num_tokens`` tokens from one stage to the next."""
        ...


@dataclass(frozen=True)
class StaticReplicaCost:
    """A :class:`ReplicaCost` with a fixed per-send latency and per-token send time.

    ``gpus`` is the number of GPUs of the replica (for GPU-hours and cost); by default one per stage.
    """

    stages: tuple[StageCost, ...]
    send_latency_s: float = 0.0
    send_s_per_token: float = 0.0
    gpus: int = 0

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a replica needs at least one stage")
        if self.gpus <= 0:
            object.__setattr__(self, "gpus", len(self.stages))

    def send_time(self, num_tokens: int) -> float:
        return self.send_latency_s + self.send_s_per_token * num_tokens


@dataclass(frozen=True)
class LinearStageCost:
    """Exact linear test double of :class:`StageCost`.

    ``iteration_time = a + b*num_tokens + c*decode_ctx_sum + d*prefill_pairs + e*num_seqs``; energy is
    ``busy_power * seconds``; FLOPs are ``flops_per_token * num_tokens + flops_per_pair * (decode_ctx_sum +
    prefill_pairs)``; bytes are ``weight_bytes + kv_bytes_per_token * (decode_ctx_sum + prefill tokens)``.

    >>> s = LinearStageCost(a=0.01, b=0.001, c=0.0, d=0.0, e=0.0)
    >>> s.iteration_time(BatchShape(4, 4, 4, 40, 0.0, False))
    0.014
    >>> s.decode_coeffs(4)
    (0.014, 0.0)
    """

    a: float = 0.010
    b: float = 2e-5
    c: float = 1e-8
    d: float = 1e-9
    e: float = 1e-5
    busy_power: float = 5600.0
    idle_watts: float = 800.0
    flops_per_token: float = 1.4e11
    flops_per_pair: float = 2.6e5
    weight_bytes: float = 1.4e11
    kv_bytes_per_token: float = 3.2e5
    peak_flops_value: float = 8 * 989e12
    peak_bandwidth_value: float = 8 * 3.35e12
    host_s: float = 0.0
    ctx_breakpoints: tuple[int, ...] = field(default=())

    def iteration_time(self, b: BatchShape) -> float:
        return (self.a + self.b * b.num_tokens + self.c * b.decode_ctx_sum + self.d * b.prefill_pairs
                + self.e * b.num_seqs)

    def decode_coeffs(self, num_decodes: int, max_ctx: int = 0) -> tuple[float, float]:
        return self.a + (self.b + self.e) * num_decodes, self.c

    def energy(self, b: BatchShape, seconds: float) -> float:
        return self.busy_power * seconds

    def idle_power(self) -> float:
        return self.idle_watts

    def flops(self, b: BatchShape) -> float:
        return self.flops_per_token * b.num_tokens + self.flops_per_pair * (b.decode_ctx_sum + b.prefill_pairs)

    def bytes(self, b: BatchShape) -> float:
        prefill_tokens = b.num_tokens - b.num_decodes
        return self.weight_bytes + self.kv_bytes_per_token * (b.decode_ctx_sum + prefill_tokens)

    def host_time(self, b: BatchShape) -> float:
        return self.host_s

    def peak_flops(self) -> float:
        return self.peak_flops_value

    def peak_bandwidth(self) -> float:
        return self.peak_bandwidth_value


__all__ = ["BatchShape", "LinearStageCost", "ReplicaCost", "StageCost", "StaticReplicaCost"]
