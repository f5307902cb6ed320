"""Weight formats of a plan: bytes per stored weight and the precision the math runs in, per kind of layer.

Two things set a linear layer's format. A checkpoint that is already quantized (its ``quantization_config``,
:class:`~apex_opt.schema.model.CheckpointQuantSpec`) is served as stored: its quantized layers (every linear layer,
or only the routed experts) keep their format whatever the plan asks. The plan's ``weight_dtype`` (``--quantization``
on solve) applies to the other linear layers, quantized when the engine loads them. The embedding, the LM head, the
router and the norms stay 16-bit.

The math runs in the weights' format only where the GPU has a tensor-core peak for it (``peak_flops`` in its
spec): fp4 on B200, fp8 on H100, int8 where an int8 peak is listed and the activations are quantized too.
Elsewhere the kernels dequantize the weights and multiply in bf16 (Marlin-style weight-only kernels), so the
weights still move at their stored size but the FLOPs run at the 16-bit peak.

>>> from apex_opt.catalog import get_gpu, get_model
>>> from apex_opt.schema.plan import Plan
>>> f = weight_formats(get_model("deepseek-v3"), Plan(gpu="h100-sxm-80gb"), get_gpu("h100-sxm-80gb"))
>>> f["experts"].stored, f["experts"].math, round(f["experts"].bytes_per_weight, 5)
('fp8', 'fp8', 1.00024)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..schema.gpu import DTYPE_BYTES, GPUSpec
from ..schema.model import ModelSpec
from ..schema.plan import Plan

#: bytes per weight of a format the engine quantizes to at load time, scales included: int4 AWQ-style group-128
#: fp16 scales ((4 + 16/128) / 8), fp4 NVFP4 group-16 e4m3 scales ((4 + 8/16) / 8); fp8 and int8 per channel
ONLINE_BYTES: dict[str, float] = {
    "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": (4 + 16 / 128) / 8, "fp4": (4 + 8 / 16) / 8,
}
#: formats whose plan-level quantization also quantizes the activations (W8A8, W4A4); int4 is weight-only
_ACTIVATION_FORMATS = ("fp8", "int8", "fp4")


@dataclass(frozen=True)
class WeightFormat:
    """How one kind of linear layer is stored and computed."""

    stored: str  # bf16, fp16, fp8, int8, int4, fp4
    bytes_per_weight: float
    math: str  # the precision of the tensor-core math: bf16, fp16, fp8, int8, fp4

    @property
    def act_bytes(self) -> float:
        """Bytes per activation element the GEMM reads (quantized activations in low-precision math)."""
        return DTYPE_BYTES[self.math] if self.math in _ACTIVATION_FORMATS else 2.0


def math_dtype(stored: str, gpu: GPUSpec, activations: bool = True) -> str:
    """The math precision of weights stored as ``stored``: their own where the GPU has a peak for it (and the
    activations are quantized too), else bf16 after dequantization.

    >>> from apex_opt.catalog import get_gpu
    >>> math_dtype("fp4", get_gpu("b200")), math_dtype("fp4", get_gpu("h100-sxm-80gb"))
    ('fp4', 'bf16')
    """
    if stored in ("bf16", "fp16"):
        return stored if stored in gpu.peak_flops else "bf16"
    if activations and stored in _ACTIVATION_FORMATS and stored in gpu.peak_flops:
        return stored
    return "bf16"


def weight_formats(model: ModelSpec, plan: Plan, gpu: GPUSpec) -> dict[str, WeightFormat]:
    """The format of the dense linear layers (``"gemm"``) and of the routed experts (``"experts"``)."""
    online = WeightFormat(plan.weight_dtype, ONLINE_BYTES[plan.weight_dtype], math_dtype(plan.weight_dtype, gpu))
    q = model.checkpoint_weights
    if q is None:
        return {"gemm": online, "experts": online}
    stored = WeightFormat(q.dtype, q.bytes_per_weight, math_dtype(q.dtype, gpu, activations=True)
                          if q.activations or q.dtype == "fp4" else "bf16")
    return {"gemm": stored if q.scope == "linear" else online, "experts": stored}
