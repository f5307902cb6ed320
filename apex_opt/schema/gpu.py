"""GPU specs: datasheet figures of one accelerator kind (see specs/gpus/*.yaml and their sources)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ..units import Bandwidth, Bytes, Flops, Seconds, Watts
from .base import Spec

Dtype = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "fp4"]

#: bytes per element of each numeric format apex-opt prices
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "fp4": 0.5,
}


class Link(Spec):
    """A point-to-point or switched link, per GPU and per direction."""

    kind: str
    bandwidth: Bandwidth = Field(description="bytes/s per GPU, one direction, > 0")
    latency: Seconds = Field(default=2e-6, ge=0)

    @field_validator("bandwidth")
    @classmethod
    def _positive_bandwidth(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be positive: bytes/s per GPU in one direction (half a vendor's two-way figure), "
                             "e.g. bandwidth: 450GB/s")
        return v


class Power(Spec):
    idle: Watts = Field(gt=0)
    max: Watts = Field(gt=0)

    @field_validator("max")
    @classmethod
    def _max_above_idle(cls, v: float, info: ValidationInfo) -> float:
        idle = info.data.get("idle")
        if idle is not None and v <= idle:
            raise ValueError(f"max power {v} W must exceed idle power {idle} W")
        return v


class GPUSpec(Spec):
    """One GPU kind.

    >>> from apex_opt.catalog import get_gpu
    >>> g = get_gpu("h100-sxm-80gb")
    >>> round(g.peak("bf16") / 1e12), round(g.memory_bandwidth / 1e12, 2)
    (989, 3.35)
    """

    name: str
    display_name: str = ""
    vendor: Literal["nvidia", "amd", "intel", "other"] = "nvidia"
    architecture: str = ""
    memory: Bytes = Field(description="HBM capacity in bytes, > 0")
    memory_bandwidth: Bandwidth = Field(description="HBM bandwidth in bytes/s, > 0")
    peak_flops: dict[Dtype, Flops]
    intra_node: Link
    host_link: Link | None = None
    power: Power
    price_per_hour: float = Field(ge=0, description="USD per GPU-hour")
    sources: dict[str, str] = Field(default_factory=dict)

    @field_validator("memory", "memory_bandwidth")
    @classmethod
    def _positive_size(cls, v: float, info: ValidationInfo) -> float:
        if v <= 0:
            example = "80GiB" if info.field_name == "memory" else "3.35TB/s"
            raise ValueError(f"must be positive; write the datasheet figure with its unit, e.g. {info.field_name}: "
                             f"{example}")
        return v

    @field_validator("peak_flops")
    @classmethod
    def _has_bf16_or_fp16(cls, v: dict[str, float]) -> dict[str, float]:
        if "bf16" not in v and "fp16" not in v:
            has = ", ".join(v) or "no entries"
            raise ValueError(f"no bf16 or fp16 peak (it has {has}); add the dense (not sparse) 16-bit tensor figure "
                             "from the datasheet, e.g. bf16: 989TFLOPS")
        for k, f in v.items():
            if f <= 0:
                raise ValueError(f"peak_flops.{k} must be positive; write the dense datasheet figure, e.g. "
                                 f"{k}: 989TFLOPS")
        return v

    def supports(self, dtype: str) -> bool:
        """Whether the GPU has tensor-core math in ``dtype`` (int4 weight-only runs in 16-bit math)."""
        return dtype in self.peak_flops or dtype in ("int4",) or (dtype == "bf16" and "fp16" in self.peak_flops)

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for math in ``dtype``; falls back to the 16-bit peak for weight-only formats."""
        if dtype in self.peak_flops:
            return self.peak_flops[dtype]
        if dtype in ("bf16", "int4"):
            return self.peak_flops.get("bf16") or self.peak_flops["fp16"]
        if dtype == "fp16":
            return self.peak_flops.get("fp16") or self.peak_flops["bf16"]
        raise KeyError(dtype)
