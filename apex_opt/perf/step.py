"""The time, work and energy of one engine iteration on one pipeline stage of a plan.

An iteration's cost splits into parts whose dependence on the batch is known in closed form:

* **token-linear operators** (GEMMs, norms, rotary, activation, residual adds, router, experts and the
  collectives after them) depend only on the number of tokens ``T`` in the iteration; their summed time is
  tabulated over ``T`` once per stage, in CUDA-graph and in eager form (eager: each kernel costs at least its
  launch time on the host);
* **prefill attention** costs ``4 * q_heads * head_dim`` FLOPs per causal query-key pair, at a fitted fraction of
  the GPU's peak, plus reading the chunk's past KV;
* **decode attention** reads every token of every decoding sequence's KV cache once: bytes linear in
  ``decode_ctx_sum``, at a fitted fraction of HBM bandwidth, plus a per-sequence cost;
* **attention sinks** (gpt-oss) add one exponential and one addition per query token, head and layer (token-linear,
  no KV);
* **LM head and sampler** (last stage) depend on the number of sequences that sample a token;
* **host overhead** of the engine (scheduling, input preparation, TP broadcast), per iteration and per sequence,
  fitted on measured runs (``specs/calibration/serving.yaml``, ``docs/calibration.md``).

So ``iteration_time`` is a handful of table look-ups and multiplications, and for a pure decode batch of ``B``
sequences it is exactly ``c0(B) + c1 * decode_ctx_sum`` (:meth:`StageCost.decode_coeffs`), which the simulator uses
to skip ahead in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..calibration.profile import calibrated_gpu, serving_constants
from ..ir.parallel import ShardedOp, StageLayout, expected_max_share
from ..schema.engine import KernelCount
from ..schema.gpu import DTYPE_BYTES, GPUSpec
from ..schema.model import ModelSpec
from ..schema.plan import Plan
from ..sim.cost import BatchShape
from ..topology.graph import GroupLink
from .collectives import (
    CUSTOM_AR_MAX_BYTES,
    collective_curve,
    collective_time,
    custom_allreduce_applies,
    load_collective_params,
)
from .engine_rules import EngineSettings
from .gemm import elementwise_time, gemm_time, load_gemm_efficiency
from .weights import ONLINE_BYTES, WeightFormat, math_dtype, weight_formats

#: exact tables up to this many tokens; beyond, a grid every _GRID tokens with linear interpolation
_EXACT = 4096
_GRID = 64
#: IR operator kinds -> the fitted elementwise kernels of apex_opt.perf.gemm
_ELEMENTWISE_KIND = {"norm": "rmsnorm", "rope": "rope", "act": "act", "add": "add", "embedding": "embedding"}


@dataclass(frozen=True)
class OperatorTime:
    """One operator (or collective, or host cost) of one iteration on one GPU, summed over its repeats."""

    name: str
    kind: str  # the IR kind, "collective", "attention", "gemm" (LM head), "host"
    repeat: int
    time_s: float
    flops: float
    bytes: float


@dataclass(frozen=True)
class Precision:
    """Numeric formats of a plan: weights, activations (math), KV cache.

    ``weight`` and ``math`` are those of the layers holding most weights (the routed experts of an MoE model);
    ``formats`` gives each kind of linear layer its own (:func:`apex_opt.perf.weights.weight_formats`).
    """

    weight: str
    math: str
    kv: str
    formats: dict[str, WeightFormat] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, plan: Plan, gpu: GPUSpec, model: ModelSpec | None = None) -> Precision:
        if model is None:
            fmt = WeightFormat(plan.weight_dtype, ONLINE_BYTES[plan.weight_dtype], math_dtype(plan.weight_dtype, gpu))
            formats = {"gemm": fmt, "experts": fmt}
        else:
            formats = weight_formats(model, plan, gpu)
        main = formats["experts" if model is not None and model.moe else "gemm"]
        return cls(main.stored, main.math, plan.kv_dtype, formats)

    def of_kind(self, kind: str) -> WeightFormat:
        """The format of the ``gemm`` (dense linear) or ``experts`` layers."""
        return self.formats[kind]

    @property
    def weight_bytes(self) -> float:
        return self.formats["gemm"].bytes_per_weight

    @property
    def act_bytes(self) -> float:
        return self.formats["gemm"].act_bytes

    @property
    def kv_bytes(self) -> float:
        return DTYPE_BYTES[self.kv]


def _fabric(link: GroupLink) -> str:
    """The fabric name the collective model knows for a group's intra-node links."""
    if link.fabric == "network":
        return "pcie" if link.intra_bandwidth < 100e9 else "nvlink"
    return "pcie" if link.fabric == "pcie" else "nvlink"


def serving_calibration() -> dict:
    """The fitted attention, host-overhead and energy parameters in force: specs/calibration/serving.yaml with the
    active calibration profile's constants in place (:mod:`apex_opt.calibration`)."""
    return serving_constants()


def _gpu_entry(table: dict, gpu: GPUSpec) -> dict:
    """A per-GPU calibration entry, falling back to the architecture's, then to ``default``."""
    if gpu.name in table:
        return {**table.get("default", {}), **table[gpu.name]}
    for entry in table.values():
        if isinstance(entry, dict) and entry.get("architecture") == gpu.architecture:
            return {**table.get("default", {}), **entry}
    return dict(table["default"])


class StageCost:
    """Cost of one iteration on one pipeline stage (all its ``tp`` GPUs run in lock step).

    Build it with :func:`apex_opt.perf.replica.build_replica`; it implements the simulator's ``StageCost`` protocol.
    """

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPUSpec,
        plan: Plan,
        layout: StageLayout,
        settings: EngineSettings,
        links: dict[str, GroupLink],
    ) -> None:
        self.model = model
        self.datasheet_gpu = gpu
        self.gpu = calibrated_gpu(gpu)  # sustained clocks and bandwidth of the active calibration profile
        self.plan = plan
        self.layout = layout
        self.settings = settings
        self.links = links
        self.precision = Precision.of(plan, gpu, model)
        cal = serving_calibration()
        self._attn = _gpu_entry(cal["attention"], gpu)
        # an attention backend with kernels of its own (FlashAttention-3 in vLLM V1 on Hopper) overrides the GPU's
        backend = settings.engine.eager_kernels.backend(plan.attention_backend, plan.kv_dtype)
        self._attn.update(self._attn.get("backends", {}).get(backend, {}))
        self._host: dict[str, Any] = dict(cal["engines"].get(settings.engine.overhead_profile or settings.engine.name,
                                              cal["engines"]["default"]))
        self._energy = dict(cal["energy"])
        self._eff = load_gemm_efficiency(gpu.name, gpu.architecture)
        self._coll = load_collective_params(gpu.name, gpu.architecture)
        self.num_layers = len(layout.layers)
        self._tables: dict[bool, np.ndarray] = {}
        self._flop_table: np.ndarray | None = None
        self._byte_table: np.ndarray | None = None
        self._cap = 0
        self._tokens = np.zeros(0)
        self._eager_gpu = np.zeros(0)
        self._decode_cache: dict[tuple[int, int], tuple[float, float]] = {}
        self._head_cache: dict[int, float] = {}
        #: (kind, size, link, custom all-reduce) -> the collective's curve and its values by message size
        self._comm: dict[tuple, tuple[Callable[[float], float], dict[float, float]]] = {}
        self._last_shape: BatchShape | None = None
        self._last_time = 0.0

    # ---------------------------------------------------------------------------------------- operator costs
    def _peak(self) -> float:
        return self.gpu.peak(self.precision.math)

    def _op_time(self, op: ShardedOp, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seconds, FLOPs, bytes) of ``op`` for each token count (vectorised)."""
        p = self.precision
        bw = self.gpu.memory_bandwidth
        kind = op.op.kind
        zeros = np.zeros_like(tokens, dtype=float)
        if kind == "router":
            # a [T, h] x [h, E] GEMM with E of a few hundred at most: bandwidth-bound, priced as streaming
            nbytes = op.n * op.k * 2.0 + tokens * (op.k + op.n) * 2.0
            t = np.asarray(elementwise_time(nbytes, mem_bandwidth=bw, eff=self._eff, op="generic"), dtype=float)
            return t, 2.0 * tokens * op.n * op.k, nbytes
        if kind == "gemm":
            if op.op.name == "post.lm_head":
                return zeros, zeros, zeros  # priced per sampled sequence, see _head_time
            f = p.of_kind("gemm")
            t = gemm_time(tokens, op.n, op.k, peak_flops=self.gpu.peak(f.math), mem_bandwidth=bw, eff=self._eff,
                          weight_bytes_per_elem=f.bytes_per_weight, act_bytes_per_elem=f.act_bytes,
                          out_bytes_per_elem=2.0)
            flops = 2.0 * tokens * op.n * op.k
            nbytes = op.n * op.k * f.bytes_per_weight + tokens * (op.k * f.act_bytes + op.n * 2.0)
            return np.asarray(t, dtype=float), flops, nbytes
        if kind == "experts":
            return self._experts_time(op, tokens)
        if kind == "attention":
            return zeros, zeros, zeros  # priced from BatchShape directly
        if kind == "sampler":
            return zeros, zeros, zeros
        nbytes = tokens * op.elems_per_token * 2.0
        if kind == "add" and self._fused_add:
            # the residual add runs inside the next norm kernel (fused_add_rms_norm): it adds reading and writing
            # the residual stream to that kernel, at the norm kernel's bandwidth, and no kernel of its own
            nbytes = nbytes * 2.0 / 3.0
            return nbytes / (bw * self._eff.elementwise_params("add").mem_frac), zeros, nbytes
        if kind == "embedding":
            nbytes = tokens * self.model.hidden_size * 2.0 * 2
        t = np.asarray(elementwise_time(nbytes, mem_bandwidth=bw, eff=self._eff, op=_ELEMENTWISE_KIND[kind],
                                        rows=tokens), dtype=float)
        return t, zeros, nbytes

    def _experts_time(self, op: ShardedOp, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The routed experts of one rank as one fused grouped GEMM (vLLM fused_moe, SGLang EPMoE).

        The busiest EP rank sets the pace: it runs ``busiest`` token-expert rows (the expected maximum of the
        random routing, times ``expert_skew``), streams the weights of every local expert that receives a token,
        and pays one kernel overhead. Compute efficiency follows the rows per touched expert.
        """
        e = self.model.moe
        assert e is not None
        f = self.precision.of_kind("experts")
        ranks = max(1, self.plan.ep)
        assignments = tokens * e.top_k * (self.plan.dp if self.plan.dp_attention else 1)
        busiest = np.array([expected_max_share(a, ranks, self.plan.expert_skew) for a in assignments])
        local = op.local_experts
        # expected local experts that receive at least one token under uniform routing
        touched = local * (1.0 - np.power(1.0 - 1.0 / e.num_experts, assignments))
        touched = np.clip(np.maximum(touched, np.minimum(1.0, busiest)), 0.0, local)
        rows_per_expert = busiest / np.maximum(touched, 1e-9)
        flops = 2.0 * busiest * op.n * op.k
        weight_bytes = touched * op.n * op.k * f.bytes_per_weight
        nbytes = weight_bytes + busiest * (op.k * f.act_bytes + op.n * 2.0)
        eff_c = self._eff.compute_efficiency(np.maximum(rows_per_expert, 1.0), op.n, op.k)
        if f.act_bytes <= 1.0:
            eff_c = eff_c * self._eff.fp8_compute_scale
        eff_m = self._eff.memory_efficiency(np.maximum(weight_bytes, 1.0) * 2.0 / f.bytes_per_weight)
        t = self._eff.overhead_s + np.maximum(flops / (self.gpu.peak(f.math) * eff_c),
                                              nbytes / (self.gpu.memory_bandwidth * eff_m))
        return np.where(tokens > 0, t, 0.0), flops, nbytes

    def _comm_time(self, op: ShardedOp, tokens: np.ndarray, graph: bool = False) -> np.ndarray:
        c = op.after
        if c is None or c.size <= 1:
            return np.zeros_like(tokens, dtype=float)
        link = self.links[c.group]
        nbytes = tokens * c.bytes_per_token
        if op.op.name == "post.lm_head":
            return np.zeros_like(tokens, dtype=float)
        custom = self.settings.custom_all_reduce and c.kind == "all_reduce"
        return c.calls * self._comm_table(c.kind, c.size, link, custom, nbytes, graph)

    def _comm_table(self, kind: str, size: int, link: GroupLink, custom: bool, nbytes: np.ndarray,
                    graph: bool = False) -> np.ndarray:
        """Collective time for each message size; every op of a stage shares one memo per (kind, size).

        The custom all-reduce curve was fitted on eager calls (a copy into the IPC buffer, then the kernel, each
        launched from the host); inside a CUDA graph the buffer is registered and nothing is launched, so such a
        call is ``custom_allreduce_graph_saving_s`` shorter (``serving.yaml``, ``docs/calibration.md`` section 5).
        """
        key = (kind, size, link, custom)
        if key not in self._comm:
            self._comm[key] = (collective_curve(kind, size, nodes=link.domains, intra_bw=link.intra_bandwidth,
                                                inter_bw=link.inter_bandwidth, params=self._coll,
                                                intra_fabric=_fabric(link), custom_allreduce=custom), {})
        curve, memo = self._comm[key]
        saving = self._graph_saving if graph and custom and \
            custom_allreduce_applies(0.0, size, nodes=link.nodes, intra_fabric=_fabric(link)) else 0.0
        out = np.empty_like(nbytes, dtype=float)
        for i, nb in enumerate(nbytes.tolist()):
            t = memo.get(nb)
            if t is None:
                t = memo[nb] = curve(nb)
            if saving and nb <= CUSTOM_AR_MAX_BYTES:
                t = max(t - saving, 0.5 * t)
            out[i] = t
        return out

    @cached_property
    def _graph_saving(self) -> float:
        entry = _gpu_entry(serving_calibration().get("collectives", {"default": {}}), self.gpu)
        return float(entry.get("custom_allreduce_graph_saving_s", 0.0))

    def _build(self, cap: int) -> None:
        """Tabulate the token-linear part for T in [0, cap] (exact up to _EXACT, then a grid).

        A larger ``cap`` extends the tables: the token points of a smaller one are a prefix of a larger one's, and
        each point's value depends on that point alone, so only the new points are computed.
        """
        exact = np.arange(0, min(cap, _EXACT) + 1, dtype=float)
        grid = np.arange(_EXACT + _GRID, cap + _GRID, _GRID, dtype=float) if cap > _EXACT else np.zeros(0)
        tokens = np.concatenate([exact, grid])
        done = len(self._tokens) if self._cap else 0
        graph, eager, eager_gpu, flops, nbytes = self._tabulate(tokens[done:])
        if done == 0:
            graph[0] = eager[0] = eager_gpu[0] = flops[0] = nbytes[0] = 0.0
        else:
            graph, eager, eager_gpu, flops, nbytes = (
                np.concatenate([old, more]) for old, more in
                zip((self._tables[True], self._tables[False], self._eager_gpu, self._flop_table, self._byte_table),
                    (graph, eager, eager_gpu, flops, nbytes)))
        self._tokens = tokens
        self._tables = {True: graph, False: eager}
        self._eager_gpu = eager_gpu
        self._flop_table = flops
        self._byte_table = nbytes
        self._cap = cap

    def _tabulate(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(graph time, eager time, eager GPU time, FLOPs, bytes) of the token-linear part at each of ``tokens``."""
        t_tokens = np.maximum(tokens, 1.0)
        graph = np.zeros_like(tokens)
        flops = np.zeros_like(tokens)
        nbytes = np.zeros_like(tokens)
        eager_gpu = np.zeros_like(tokens)
        cuda = triton = 0
        for block, ops in self.layout.blocks.items():
            reps = self.layout.repeat[block]
            for op in ops:
                t, f, b = self._op_time(op, t_tokens)
                if self._quantizes(op):
                    t = t + self._quant_time(op, t_tokens)
                graph += reps * (t + self._comm_time(op, t_tokens, graph=True))
                eager_gpu += reps * (t + self._comm_time(op, t_tokens))
                for count in self._op_kernels(op):
                    cuda += reps * count.cuda
                    triton += reps * count.triton
                flops += reps * f
                nbytes += reps * b
        if self.layout.send_bytes_per_token and self.plan.pp > 1:
            send = self._send_time(t_tokens)
            graph += send
            eager_gpu += send
        # eager mode: the host enqueues kernels asynchronously, so the GPU waits only when launching falls behind;
        # a forward pass takes the longer of its GPU time and its host launch time
        launch = cuda * float(self._host.get("eager_launch_s", 8e-6)) + \
            triton * float(self._host.get("triton_launch_s", self._host.get("eager_launch_s", 8e-6)))
        self.kernels = cuda + triton
        self.launch_s = launch
        return graph, np.maximum(eager_gpu, launch), eager_gpu, flops, nbytes

    # ---------------------------------------------------------------------------------------- eager kernels
    @cached_property
    def _fused_add(self) -> bool:
        """The engine fuses the residual add into the norm after it (its inventory launches no add kernel)."""
        count = self.settings.engine.eager_kernels.count("add")
        return count.cuda + count.triton == 0

    def _quantizes(self, op: ShardedOp) -> bool:
        """W8A8 / W4A4 math (fp8, int8, fp4): every quantised GEMM first quantises its input activations (dynamic
        scale)."""
        kind = op.op.kind
        return kind in ("gemm", "experts") and op.op.name != "post.lm_head" and \
            self.precision.of_kind(kind).math in ("fp8", "int8", "fp4")

    def _quant_time(self, op: ShardedOp, tokens: np.ndarray) -> np.ndarray:
        """GPU time of quantising a GEMM's ``tokens x k`` bf16 input to fp8 with a dynamic per-tensor scale: an
        absolute-max reduction over the input, then the scaled conversion (read bf16, write fp8)."""
        rows = tokens * (self.model.moe.top_k if op.op.kind == "experts" and self.model.moe else 1)
        elems = rows * op.k
        reduce = elementwise_time(elems * 2.0, mem_bandwidth=self.gpu.memory_bandwidth, eff=self._eff, rows=rows)
        convert = elementwise_time(elems * 3.0, mem_bandwidth=self.gpu.memory_bandwidth, eff=self._eff, rows=rows)
        return np.asarray(reduce, dtype=float) + np.asarray(convert, dtype=float)

    def _op_kernels(self, op: ShardedOp) -> list[KernelCount]:
        """The kernels ``op`` (and the collective after it) launches in an eager pass, from the engine's inventory."""
        inventory = self.settings.engine.eager_kernels
        kind = op.op.kind
        if kind == "sampler":
            return []
        variant = None
        if kind == "attention":
            variant = inventory.backend(self.plan.attention_backend, self.plan.kv_dtype)
        elif self.plan.ep > 1 and (kind == "experts" or op.op.name.endswith("expert_act")):
            variant = "ep"
        out = [inventory.count(kind, variant)]
        if self._quantizes(op):
            out.append(inventory.count("fp8_quant"))
        if op.after is not None:
            out.extend([inventory.count(op.after.kind)] * op.after.calls)
        return out

    def _send_time(self, tokens: np.ndarray) -> np.ndarray:
        """Sending ``tokens`` tokens' activations to the next pipeline stage."""
        link = self.links["pp"]
        send = collective_curve("send_recv", 2, nodes=link.domains, intra_bw=link.intra_bandwidth,
                                inter_bw=link.inter_bandwidth, params=self._coll, intra_fabric=_fabric(link))
        return np.array([send(float(n) * self.layout.send_bytes_per_token) for n in tokens])

    def linear_time(self, tokens: int, graph: bool) -> float:
        """GPU time of the token-linear operators (and their collectives) for ``tokens`` tokens."""
        if tokens > self._cap:
            self._build(max(tokens, 2 * self._cap, 1024))
        table = self._tables[graph]
        if tokens <= _EXACT:
            return float(table[tokens])
        return float(np.interp(tokens, self._tokens, table))

    def _table_value(self, table: np.ndarray, tokens: int) -> float:
        if tokens <= _EXACT:
            return float(table[tokens])
        return float(np.interp(tokens, self._tokens, table))

    # ---------------------------------------------------------------------------------------- attention
    @cached_property
    def _attn_coeffs(self) -> tuple[float, float, float, float]:
        """(s per prefill pair, s per decode context token, s per decode sequence, s per prefill chunk), every layer
        attending to the whole context: exact while no sequence of the batch is longer than a sliding window."""
        return self._coeffs_over(self.num_layers)

    @cached_property
    def _attn_coeffs_beyond(self) -> tuple[float, float, float, float]:
        """The same once a sequence is longer than the sliding window: only the full-attention layers grow with the
        context; the sliding ones cost a window per token (:attr:`_sliding_token`)."""
        return self._coeffs_over(self._full_layers)

    def _beyond(self, b: BatchShape) -> bool:
        """Whether the batch's longest context exceeds the sliding window (the sliding layers then cap)."""
        return bool(self._sliding_token[0]) and b.max_ctx > (self.model.sliding_window or 0)

    def _coeffs(self, b: BatchShape) -> tuple[float, float, float, float]:
        return self._attn_coeffs_beyond if self._beyond(b) else self._attn_coeffs

    def _coeffs_over(self, layers: int) -> tuple[float, float, float, float]:
        m = self.model
        attn = [op for ops in self.layout.blocks.values() for op in ops if op.op.kind == "attention"]
        if not attn or self.num_layers == 0:
            return 0.0, 0.0, 0.0, 0.0
        q_heads = attn[0].q_heads
        if m.mla:
            qk = m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim
            flops_pair = 2.0 * q_heads * (qk + m.mla.v_head_dim)
        else:
            flops_pair = 4.0 * q_heads * m.head_dim
        peak = self.gpu.peak("bf16")
        s_pair = layers * flops_pair / (peak * float(self._attn["prefill_efficiency"]))
        kv_token = m.kv_elems_per_token_per_layer(self.plan.tp) * self.precision.kv_bytes
        s_ctx = layers * kv_token / (self.gpu.memory_bandwidth * float(self._attn["decode_bw_efficiency"]))
        if m.mla:  # absorbed MLA decode: each query head multiplies the latent cache
            s_ctx = max(s_ctx, layers * 2.0 * q_heads * (2 * m.mla.kv_lora_rank + m.mla.qk_rope_head_dim) /
                        (peak * float(self._attn["prefill_efficiency"])))
        s_seq = self.num_layers * float(self._attn["decode_seq_s"])
        s_chunk = self.num_layers * float(self._attn.get("prefill_chunk_s", 0.0))
        return s_pair, s_ctx, s_seq, s_chunk

    @cached_property
    def _full_layers(self) -> int:
        """Layers of this stage with full (unbounded) attention; the others see a sliding window."""
        return sum(1 for i in self.layout.layers if not self.model.kv_window(i))

    @cached_property
    def _sliding_token(self) -> tuple[float, float, float]:
        """(seconds, FLOPs, KV bytes) per token of the sliding-window layers of this stage.

        A query of a sliding layer attends to at most ``window`` keys, so the layer's attention pairs and the KV it
        reads are capped at ``window`` per token, prefill or decode. Once the batch's longest context exceeds the
        window they are priced as the full window per token (an upper bound for the tokens of shorter sequences);
        below it, as full attention, which is then exact (:attr:`ctx_breakpoints` separates the two regimes).
        """
        m = self.model
        sliding = self.num_layers - self._full_layers
        if not sliding or not m.sliding_window:
            return 0.0, 0.0, 0.0
        q_heads = max(1, m.num_heads // self.plan.tp)
        window = min(m.sliding_window, m.max_position_embeddings)
        flops = sliding * window * 4.0 * q_heads * m.head_dim
        kv = sliding * window * m.kv_elems_per_token_per_layer(self.plan.tp) * self.precision.kv_bytes
        t = max(flops / (self.gpu.peak("bf16") * float(self._attn["prefill_efficiency"])),
                kv / (self.gpu.memory_bandwidth * float(self._attn["decode_bw_efficiency"])))
        return t, flops, kv

    @cached_property
    def _sink_token(self) -> tuple[float, float]:
        """(seconds, FLOPs) per query token of the attention sinks of this stage (gpt-oss; 0 without them).

        A sink is one learned logit per query head that joins the softmax's denominator and attends to no token:
        per query row, head and layer, one exponential and one addition (2 FLOPs, counting the exponential as one),
        on every attention layer, full or sliding, prefill or decode. It reads no KV and adds none, so it is priced
        per token at the attention kernels' fitted prefill rate, like the attention pairs.
        """
        m = self.model
        has_attention = any(op.op.kind == "attention" for ops in self.layout.blocks.values() for op in ops)
        if not m.attention_sinks or not has_attention or self.num_layers == 0:
            return 0.0, 0.0
        q_heads = max(1, m.num_heads // self.plan.tp)
        flops = 2.0 * q_heads * self.num_layers
        return flops / (self.gpu.peak("bf16") * float(self._attn["prefill_efficiency"])), flops

    # ---------------------------------------------------------------------------------------- LM head, host
    def _head_time(self, seqs: int) -> float:
        """LM head GEMM, logits gather and sampling for ``seqs`` sampled sequences (last stage; memoized)."""
        if not self.layout.is_last or seqs <= 0:
            return 0.0
        cached = self._head_cache.get(seqs)
        if cached is None:
            cached = self._head_cache[seqs] = self._head_time_uncached(seqs)
        return cached

    def _head_time_uncached(self, seqs: int) -> float:
        m = self.model
        tp = self.plan.tp
        vocab = math.ceil(m.vocab_size / tp)
        t = float(gemm_time(np.array([float(seqs)]), vocab, m.hidden_size, peak_flops=self.gpu.peak("bf16"),
                            mem_bandwidth=self.gpu.memory_bandwidth, eff=self._eff, weight_bytes_per_elem=2.0,
                            act_bytes_per_elem=2.0, out_bytes_per_elem=4.0)[0])
        if tp > 1:
            link = self.links["tp"]
            t += collective_time("all_gather", seqs * m.vocab_size * 4.0, tp, nodes=link.domains,
                                 intra_bw=link.intra_bandwidth, inter_bw=link.inter_bandwidth, params=self._coll,
                                 intra_fabric=_fabric(link))
        t += float(elementwise_time(np.array([seqs * m.vocab_size * 4.0 * 3]),
                                    mem_bandwidth=self.gpu.memory_bandwidth, eff=self._eff)[0])
        return t

    def host_time(self, b: BatchShape) -> float:
        """Engine host overhead of one iteration (scheduling, input preparation, broadcast, sampling glue)."""
        if not self.layout.is_first:
            return 0.0
        h = self._host
        t = float(h["step_s"]) + float(h["per_seq_s"]) * b.num_seqs
        t += float(h.get("per_tp_rank_s", 0.0)) * (self.plan.tp - 1)
        if b.has_prefill:
            t += float(h.get("prefill_step_s", 0.0)) + float(h.get("per_prefill_token_s", 0.0)) * (
                b.num_tokens - b.num_decodes)
        # an overlapped scheduler (SGLang's) prepares iteration N+1 while the GPU runs N: only part of the host
        # work shows; a fraction rather than max(gpu, host) keeps decode cost exactly affine in the context
        return t * float(h.get("host_exposed", 1.0))

    # ---------------------------------------------------------------------------------------- the protocol
    def uses_graph(self, b: BatchShape) -> bool:
        s = self.settings
        if not s.cuda_graphs:
            return False
        if s.engine.cuda_graphs.mode == "piecewise-tokens":
            limit = s.engine.cuda_graphs.max_tokens or 512
            if s.engine.cuda_graphs.max_tokens_per_seq:
                limit = min(limit, s.engine.cuda_graphs.max_tokens_per_seq * s.max_num_seqs)
            return b.num_tokens <= limit
        if s.graph_max_context is not None and b.max_ctx > s.graph_max_context:
            return False
        return (not b.has_prefill) and b.num_decodes <= s.graph_max_batch

    @property
    def ctx_breakpoints(self) -> tuple[int, ...]:
        """Longest-context thresholds where a decode batch changes cost regime (vLLM 0.6: eager above 8192)."""
        s = self.settings
        points = set()
        if s.cuda_graphs and s.engine.cuda_graphs.mode == "decode-only" and s.graph_max_context is not None:
            points.add(s.graph_max_context)
        if self._sliding_token[0] and self.model.sliding_window:  # sliding layers cap beyond their window
            points.add(self.model.sliding_window)
        return tuple(sorted(points))

    def graph_tokens(self, b: BatchShape) -> int:
        """Tokens the GPU actually runs: decode graphs pad the batch to 1, 2, 4, then multiples of 8."""
        n = b.num_tokens
        if not self.uses_graph(b) or n <= 0:
            return n
        if n <= 2:
            return n
        if n <= 4:
            return 4
        return int(math.ceil(n / 8) * 8)

    def iteration_time(self, b: BatchShape) -> float:
        if b is self._last_shape:  # the simulator asks again for the batch it just priced (pipeline stage 0)
            return self._last_time
        t = self._iteration_time(b)
        self._last_shape, self._last_time = b, t
        return t

    def _iteration_time(self, b: BatchShape) -> float:
        if b.num_tokens <= 0:
            return 0.0
        graph = self.uses_graph(b)
        s_pair, s_ctx, s_seq, s_chunk = self._coeffs(b)
        t = self.linear_time(self.graph_tokens(b), graph)
        prefill_seqs = b.num_seqs - b.num_decodes
        t += s_pair * b.prefill_pairs + s_chunk * prefill_seqs
        t += s_ctx * b.decode_ctx_sum + s_seq * b.num_decodes
        if self._beyond(b):
            t += self._sliding_token[0] * b.num_tokens
        t += self._sink_token[0] * b.num_tokens
        t += self._head_time(b.num_seqs)
        return t + self._host_share(b, graph)

    def _host_share(self, b: BatchShape, graph: bool) -> float:
        """Host time the iteration adds beyond its forward pass.

        Without overlap (vLLM) the host schedules and prepares, then launches: all of it adds. An overlapped
        scheduler (SGLang) prepares the next batch while the GPU runs this one; with CUDA graphs only the fitted
        ``host_exposed`` share shows. An eager pass is itself host-bound (launching kernels), and both kinds of
        host work run on the same interpreter: the pass then takes ``max(GPU time, launches + host work)``.
        """
        host = self.host_time(b)
        exposed = float(self._host.get("host_exposed", 1.0))
        if graph or exposed >= 1.0 or host <= 0.0:
            return host
        full = host / exposed
        self.linear_time(b.num_tokens, False)  # builds the tables
        gpu = self._table_value(self._eager_gpu, b.num_tokens)
        return max(host, max(gpu, self.launch_s + full) - max(gpu, self.launch_s))

    def operator_times(self, b: BatchShape) -> list[OperatorTime]:
        """Where the iteration's time goes, operator by operator; the times add up to :meth:`iteration_time`.

        Token-linear operators (GEMMs, norms, experts) and their collectives at the tokens the GPU runs (padded to
        a CUDA graph size), the eager launch stall when the host cannot feed the GPU, attention, the LM head and
        sampler (last stage) and the engine's host overhead (first stage).
        """
        out: list[OperatorTime] = []
        if b.num_tokens <= 0:
            return out
        graph = self.uses_graph(b)
        run = int(max(self.graph_tokens(b), 1))
        tokens = np.array([float(run)])
        for block, block_ops in self.layout.blocks.items():
            reps = self.layout.repeat[block]
            for op in block_ops:
                t, f, nbytes = (float(x[0]) for x in self._op_time(op, tokens))
                if self._quantizes(op):
                    t += float(self._quant_time(op, tokens)[0])
                if t or f or nbytes:  # attention is costed below, per sequence and context
                    out.append(OperatorTime(op.op.name, op.op.kind, reps, reps * t, reps * f, reps * nbytes))
                if op.after is not None:
                    c = float(self._comm_time(op, tokens, graph=graph)[0])
                    out.append(OperatorTime(f"{op.op.name}.{op.after.kind}", "collective", reps, reps * c, 0.0,
                                            reps * run * op.after.bytes_per_token * op.after.calls))
        if self.plan.pp > 1 and self.layout.send_bytes_per_token:  # activations to the next stage
            out.append(OperatorTime("pp.send_recv", "collective", 1, float(self._send_time(tokens)[0]), 0.0,
                                    run * self.layout.send_bytes_per_token))
        self.linear_time(run, True)  # builds the tables
        if not graph:  # eager: the pass is launch-bound when the host cannot keep the GPU fed
            stall = self.linear_time(run, False) - self._table_value(self._eager_gpu, run)
            if stall > 0:
                out.append(OperatorTime("eager_launch_stall", "host", self.kernels, stall, 0.0, 0.0))
        s_pair, s_ctx, s_seq, s_chunk = self._coeffs(b)
        attn_t = s_pair * b.prefill_pairs + s_chunk * (b.num_seqs - b.num_decodes) + s_ctx * b.decode_ctx_sum + \
            s_seq * b.num_decodes
        m = self.model
        beyond = self._beyond(b)
        layers = self._full_layers if beyond else self.num_layers
        kv_token = m.kv_elems_per_token_per_layer(self.plan.tp) * self.precision.kv_bytes
        per_pair = (2.0 * (m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim + m.mla.v_head_dim) if m.mla
                    else 4.0 * m.head_dim)
        q_heads = max(1, m.num_heads // self.plan.tp)
        prefill_tokens = b.num_tokens - b.num_decodes
        attn_f = layers * per_pair * q_heads * b.prefill_pairs
        attn_b = layers * kv_token * (2.0 * prefill_tokens + b.decode_ctx_sum)
        out.append(OperatorTime("attention", "attention", layers, attn_t, attn_f, attn_b))
        if beyond:  # the sliding-window layers, a window per token
            slide_t, slide_f, slide_b = self._sliding_token
            out.append(OperatorTime("attention.sliding_window", "attention", self.num_layers - layers,
                                    slide_t * b.num_tokens, slide_f * b.num_tokens, slide_b * b.num_tokens))
        sink_t, sink_f = self._sink_token
        if sink_f:  # gpt-oss: one sink logit per head in every softmax row
            out.append(OperatorTime("attention.sinks", "attention", self.num_layers, sink_t * b.num_tokens,
                                    sink_f * b.num_tokens, 0.0))
        head = self._head_time(b.num_seqs)
        if head:
            hf = 2.0 * b.num_seqs * m.hidden_size * m.vocab_size / self.plan.tp
            hb = m.hidden_size * m.vocab_size * 2.0 / self.plan.tp
            out.append(OperatorTime("lm_head+sampler", "gemm", 1, head, hf, hb))
        host = self._host_share(b, graph)
        if host:
            out.append(OperatorTime("host_overhead", "host", 1, host, 0.0, 0.0))
        return out

    def decode_coeffs(self, num_decodes: int, max_ctx: int = 0) -> tuple[float, float]:
        """``(c0, c1)``: a pure decode batch of ``num_decodes`` sequences whose longest context is ``max_ctx``
        takes exactly ``c0 + c1 * decode_ctx_sum`` seconds."""
        regime = sum(1 for bp in self.ctx_breakpoints if max_ctx > bp)
        key = (num_decodes, regime)
        cached = self._decode_cache.get(key)
        if cached is not None:
            return cached
        b = BatchShape(num_tokens=num_decodes, num_seqs=num_decodes, num_decodes=num_decodes, decode_ctx_sum=0,
                       prefill_pairs=0.0, has_prefill=False, max_ctx=max_ctx)
        c0 = self.iteration_time(b)
        c1 = self._coeffs(b)[1]
        self._decode_cache[key] = (c0, c1)
        return c0, c1

    def _work(self, b: BatchShape) -> tuple[float, float, float, float]:
        """Per-iteration work constants of this stage for ``b``'s regime: (attention FLOPs per prefill pair, LM-head
        FLOPs per sampled sequence, KV bytes per decode context token, LM-head bytes). Two regimes (within or
        beyond the sliding window), each computed once: this is on the simulator's per-iteration path."""
        return self._work_beyond if self._beyond(b) else self._work_within

    @cached_property
    def _work_within(self) -> tuple[float, float, float, float]:
        return self._work_in(beyond=False)

    @cached_property
    def _work_beyond(self) -> tuple[float, float, float, float]:
        return self._work_in(beyond=True)

    def _work_in(self, *, beyond: bool) -> tuple[float, float, float, float]:
        m = self.model
        coeffs = self._attn_coeffs_beyond if beyond else self._attn_coeffs
        attn = 0.0
        if coeffs[0]:
            attn = coeffs[0] * self.gpu.peak("bf16") * float(self._attn["prefill_efficiency"])
        last = self.layout.is_last
        head_flops = 2.0 * m.hidden_size * m.vocab_size / self.plan.tp if last else 0.0
        layers = self._full_layers if beyond else self.num_layers
        kv = m.kv_elems_per_token_per_layer(self.plan.tp) * self.precision.kv_bytes * layers
        head_bytes = m.hidden_size * m.vocab_size * 2.0 / self.plan.tp if last else 0.0
        return attn, head_flops, kv, head_bytes

    def _tables_for(self, tokens: int) -> None:
        if tokens > self._cap:
            self._build(max(tokens, 2 * self._cap, 1024))

    def flops(self, b: BatchShape) -> float:
        """FLOPs one GPU of this stage executes in the iteration."""
        if b.num_tokens <= 0:
            return 0.0
        self._tables_for(b.num_tokens)
        assert self._flop_table is not None
        attn, head, _, _ = self._work(b)
        slide = self._sliding_token[1] * b.num_tokens if self._beyond(b) else 0.0
        slide += self._sink_token[1] * b.num_tokens
        return self._table_value(self._flop_table, b.num_tokens) + attn * b.prefill_pairs + head * b.num_seqs + slide

    def bytes(self, b: BatchShape) -> float:
        """HBM bytes one GPU of this stage moves in the iteration."""
        if b.num_tokens <= 0:
            return 0.0
        self._tables_for(b.num_tokens)
        assert self._byte_table is not None
        _, _, kv, head = self._work(b)
        slide = self._sliding_token[2] * b.num_tokens if self._beyond(b) else 0.0
        return self._table_value(self._byte_table, b.num_tokens) + kv * b.decode_ctx_sum + head + slide

    def peak_flops(self) -> float:
        """Datasheet peak FLOP/s of one GPU in the plan's math precision (for MFU)."""
        return self.datasheet_gpu.peak(self.precision.math)

    def peak_bandwidth(self) -> float:
        """Datasheet HBM bytes/s of one GPU (for memory-bandwidth utilisation)."""
        return self.datasheet_gpu.memory_bandwidth

    def idle_power(self) -> float:
        """Watts the stage's GPUs draw while idle."""
        return self.plan.tp * self.gpu.power.idle

    def power(self, b: BatchShape, seconds: float) -> float:
        """Watts the stage's GPUs draw during the iteration: idle plus activity-driven dynamic power."""
        if seconds <= 0:
            return self.idle_power()
        floor, w_c, w_m = self._energy_weights
        u_c = self.flops(b) / (self._peak() * seconds)
        u_m = self.bytes(b) / (self.gpu.memory_bandwidth * seconds)
        # affine in the work (no clamp), so energy over a run of decode steps sums exactly in closed form
        activity = floor + w_c * u_c + w_m * u_m
        p = self.gpu.power
        return self.plan.tp * (p.idle + (p.max - p.idle) * activity)

    @cached_property
    def _energy_weights(self) -> tuple[float, float, float]:
        e = self._energy
        return float(e["busy_floor"]), float(e["compute_weight"]), float(e["memory_weight"])

    def energy(self, b: BatchShape, seconds: float) -> float:
        return self.power(b, seconds) * seconds

    def work(self, b: BatchShape, seconds: float) -> tuple[float, float, float]:
        """``(energy J, FLOPs, bytes)`` of the iteration on this stage, each computed once (what
        :meth:`energy`, :meth:`flops` and :meth:`bytes` give)."""
        flops, nbytes = self.flops(b), self.bytes(b)
        p = self.gpu.power
        if seconds <= 0:
            return self.idle_power() * seconds, flops, nbytes
        floor, w_c, w_m = self._energy_weights
        activity = floor + w_c * flops / (self._peak() * seconds) + w_m * nbytes / (self.gpu.memory_bandwidth * seconds)
        return self.plan.tp * (p.idle + (p.max - p.idle) * activity) * seconds, flops, nbytes


@dataclass(frozen=True)
class PlanReplicaCost:
    """The simulator's :class:`~apex_opt.sim.cost.ReplicaCost` for one replica of a plan: one :class:`StageCost`
    per pipeline stage (the activation sends between stages are priced inside the stages)."""

    stages: tuple[StageCost, ...]

    def send_time(self, num_tokens: int) -> float:
        # the send of activations is folded into each non-last stage's token table
        return 0.0

    @property
    def gpus(self) -> int:
        return sum(s.plan.tp for s in self.stages)
