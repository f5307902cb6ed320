"""Execution plans: how a model is laid out on GPUs and which engine limits it runs under.

A :class:`Plan` is ``dp`` identical replicas, each ``pp`` pipeline stages of ``tp`` GPUs. For MoE models the
expert layers use ``ep`` expert-parallel ranks, each holding ``num_experts / ep`` whole experts split ``moe_tp``
ways; ``moe_tp * ep`` equals the GPUs one MoE layer spans: ``tp`` (experts inside a replica's TP group, as
SGLang's ``--enable-ep-moe`` and vLLM's ``--enable-expert-parallel`` do), or ``tp * dp`` with ``dp_attention``
(the "wide EP" layout: attention data-parallel, experts shared by all replicas).

A :class:`Deployment` is one or more plans side by side: replicas of different shapes on different GPU kinds
(heterogeneous clusters) or prefill and decode instances (disaggregated serving).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from ..bounds import MAX_GPUS
from .base import Spec
from .speculative import SpeculativeConfig, parse_speculative

WeightDtype = Literal["bf16", "fp16", "fp8", "int8", "int4", "fp4"]
KVDtype = Literal["bf16", "fp16", "fp8"]
Role = Literal["both", "prefill", "decode"]


class Plan(Spec):
    """One replica shape, repeated ``dp`` times.

    >>> p = Plan(gpu="h100-sxm-80gb", tp=4, dp=2)
    >>> p.gpus, p.label
    (8, 'dp2 tp4 pp1')
    """

    gpu: str
    engine: str = "vllm-0.6"
    dp: int = Field(default=1, ge=1)
    pp: int = Field(default=1, ge=1)
    tp: int = Field(default=1, ge=1)
    ep: int = Field(default=1, ge=1)
    moe_tp: int | None = Field(default=None, ge=1)
    dp_attention: bool = False
    layers_per_stage: tuple[int, ...] | None = None
    weight_dtype: WeightDtype = "bf16"
    kv_dtype: KVDtype = "bf16"
    max_num_seqs: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    chunked_prefill: bool | None = None
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    #: vLLM custom all-reduce kernel (``--disable-custom-all-reduce`` sets False); None = engine default
    custom_all_reduce: bool | None = None
    #: CUDA graphs for decode (``--enforce-eager`` / ``--disable-cuda-graph`` set False); None = engine default
    cuda_graphs: bool | None = None
    #: attention kernels (SGLang ``--attention-backend``: ``flashinfer``, ``triton``); None = engine default
    attention_backend: str | None = None
    #: expected routing skew on the busiest expert-parallel rank (1.0 = uniform random routing)
    expert_skew: float = Field(default=1.0, ge=1.0)
    role: Role = "both"
    #: speculative decoding (vLLM ``--speculative-config``, SGLang ``--speculative-algorithm``); None = off
    speculative: SpeculativeConfig | None = None

    @model_serializer(mode="wrap")
    def _drop_unset_speculative(self, handler: SerializerFunctionWrapHandler) -> Any:
        # plans without speculation serialise as before (JSON outputs, golden files, verification cache keys)
        data = handler(self)
        if isinstance(data, dict) and data.get("speculative", 0) is None:
            del data["speculative"]
        return data

    @field_validator("dp", "pp", "tp", "ep", "moe_tp")
    @classmethod
    def _bounded_degree(cls, value: int | None) -> int | None:
        if value is not None and value > MAX_GPUS:
            raise ValueError(f"must be at most {MAX_GPUS:,} (the GPUs apex-opt supports); use a degree that divides "
                             "the model's heads and layers, e.g. 1, 2, 4 or 8")
        return value

    @model_validator(mode="after")
    def _shape(self) -> Plan:
        if self.gpus > MAX_GPUS:
            raise ValueError(f"dp x pp x tp = {self.dp} x {self.pp} x {self.tp} = {self.gpus:,} GPUs, more than the "
                             f"{MAX_GPUS:,} apex-opt supports; lower dp, pp or tp")
        if self.layers_per_stage is not None:
            if len(self.layers_per_stage) != self.pp:
                raise ValueError(f"layers_per_stage has {len(self.layers_per_stage)} entries for pp={self.pp}; "
                                 f"give one layer count per pipeline stage ({self.pp})")
            if any(n < 1 for n in self.layers_per_stage):
                raise ValueError(f"layers_per_stage {','.join(map(str, self.layers_per_stage))[:80]}: every "
                                 "pipeline stage needs at least one layer")
        span = self.tp * (self.dp if self.dp_attention else 1)
        moe_tp = self.moe_tp if self.moe_tp is not None else max(1, span // self.ep)
        if self.ep > 1 and moe_tp * self.ep != span:
            raise ValueError(
                f"moe_tp ({moe_tp}) x ep ({self.ep}) must equal the GPUs an MoE layer spans "
                f"({'tp x dp' if self.dp_attention else 'tp'} = {span})"
            )
        return self

    @property
    def gpus(self) -> int:
        return self.dp * self.pp * self.tp

    @property
    def gpus_per_replica(self) -> int:
        return self.pp * self.tp

    @property
    def expert_tp(self) -> int:
        """Tensor-parallel degree inside each expert."""
        if self.moe_tp is not None:
            return self.moe_tp
        span = self.tp * (self.dp if self.dp_attention else 1)
        return max(1, span // self.ep)

    @property
    def label(self) -> str:
        parts = [f"dp{self.dp}", f"tp{self.tp}", f"pp{self.pp}"]
        if self.ep > 1:
            parts.append(f"ep{self.ep}" + ("-dpattn" if self.dp_attention else ""))
        if self.weight_dtype not in ("bf16", "fp16"):
            parts.append(f"w{self.weight_dtype}")
        if self.kv_dtype == "fp8":
            parts.append("kv-fp8")
        if self.speculative is not None:
            parts.append(self.speculative.label)
        if self.role != "both":
            parts.insert(0, self.role)
        return " ".join(parts)


class Deployment(Spec):
    """Plans running side by side on one cluster (heterogeneous replicas or disaggregated prefill/decode)."""

    plans: tuple[Plan, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _roles(self) -> Deployment:
        roles = {p.role for p in self.plans}
        if roles != {"both"} and roles != {"prefill", "decode"}:
            raise ValueError("a deployment is all 'both' plans, or 'prefill' plus 'decode' plans (disaggregated)")
        return self

    @property
    def disaggregated(self) -> bool:
        return any(p.role == "prefill" for p in self.plans)

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.plans)

    @property
    def label(self) -> str:
        """``2P1D prefill dp2 tp4 pp1 + decode dp1 tp8 pp1`` (disaggregated) or ``dp2 tp4 pp1 [h100] + ...``."""
        if self.disaggregated:
            x = sum(p.dp for p in self.plans if p.role == "prefill")
            y = sum(p.dp for p in self.plans if p.role == "decode")
            kinds = {p.gpu for p in self.plans}
            parts = [p.label + (f" [{p.gpu}]" if len(kinds) > 1 else "") for p in self.plans]
            return f"{x}P{y}D " + " + ".join(parts)
        return " + ".join(f"{p.label} [{p.gpu}]" for p in self.plans)


def with_speculative(plan: Plan | Deployment, speculative: SpeculativeConfig | str | None) -> Plan | Deployment:
    """``plan`` (every plan of a deployment) with speculative decoding set (``None``: off); a string is parsed
    as ``METHOD:k=N,acceptance=RATE``.

    >>> with_speculative(Plan(gpu="h100-sxm-80gb", tp=2), "eagle:k=3,acceptance=0.7").label
    'dp1 tp2 pp1 eagle-k3'
    """
    if isinstance(speculative, str):
        speculative = parse_speculative(speculative)
    if isinstance(plan, Deployment):
        return plan.model_copy(update={"plans": tuple(p.model_copy(update={"speculative": speculative})
                                                      for p in plan.plans)})
    return plan.model_copy(update={"speculative": speculative})
