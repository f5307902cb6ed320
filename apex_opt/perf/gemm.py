"""Operator cost model: a roofline per GEMM with fitted, shape-dependent efficiencies.

A GEMM ``(m x k) @ (k x n)`` (``m`` = tokens, ``k`` = input features, ``n`` = output features per GPU)
takes::

    t = overhead + max(flops / (peak_flops * eff_c(m, n, k)),  bytes / (mem_bandwidth * eff_m(W)))

    flops  = 2 m n k
    bytes  = n k * weight_bytes + m k * act_bytes + m n * out_bytes
    eff_c  = compute_max * S(m; m_half, m_exp) * S(n; n_half, n_exp) * S(k; k_half, k_exp)
    eff_m  = mem_max * S(n k * 2; mem_half_bytes, mem_exp)      (bf16 size of the weight matrix)
    S(x; h, a) = 1 / (1 + (h / x) ** a)        (a smooth step from 0 to 1, half-way at x = h)

so small ``m`` is memory-bound (weights stream from HBM once) and large ``m`` compute-bound. The
parameters are fitted per GPU by ``benchmarks/fit_calibration.py`` on measured vLLM/vidur layer
profiles (see docs/calibration.md) and only *loaded* here, from ``specs/calibration/<gpu>.json``.

Low-precision GEMMs reuse the bf16 fit (there is no fp8/int4 profile data), with stated
assumptions carried in the calibration file:

* **fp8 W8A8** (``act_bytes_per_elem <= 1``): the caller passes the fp8 peak; the compute efficiency
  is scaled by ``fp8_compute_scale`` (fp8 kernels reach a smaller fraction of their higher peak).
* **weight-only quantization** (``weight_bytes_per_elem < act_bytes_per_elem``, e.g. int4 W4A16 or
  fp8 weights on Ampere): math runs at the activation precision (the caller passes that peak); the
  weights stream at their packed size plus group scales (``wq_scale_bytes_per_elem``) at
  ``wq_mem_scale`` of the bandwidth efficiency; the compute runs at ``wq_compute_scale`` of the
  large-batch efficiency, with ``m`` tiled by ``wq_tile_m`` rows (Marlin-style kernels: 16).

Elementwise operators (norms, rotary, activation, residual add, embedding lookup) are memory-bound::

    t = overhead + bytes / (mem_bandwidth * mem_frac) + (bytes / rows) / row_bandwidth

where the last term is the time one thread block needs for one row (vLLM launches one block per
token, so at a handful of tokens a few SMs do all the work).

Everything here is plain floats (or numpy arrays for ``m``/``bytes``): no spec classes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..resources import resource_dir

__all__ = [
    "ARCHITECTURE_FITS",
    "MEASURED_ARCHITECTURES",
    "CalibrationChoice",
    "ElementwiseParams",
    "GemmEfficiency",
    "architecture_of",
    "calibration_dir",
    "choose_calibration",
    "elementwise_time",
    "gemm_time",
    "load_gemm_efficiency",
    "resolve_calibration",
]


def _step(x: Any, half: float, exp: float) -> Any:
    """Smooth step S(x) = 1 / (1 + (half / x) ** exp), in (0, 1); vectorised."""
    x = np.maximum(np.asarray(x, dtype=float), 1e-30)
    return 1.0 / (1.0 + (half / x) ** exp)


@dataclass(frozen=True)
class ElementwiseParams:
    """Fitted cost of one memory-bound operator kind (see the module docstring)."""

    op: str
    mem_frac: float  # fraction of the HBM bandwidth reached on large inputs
    overhead_s: float  # fixed kernel time
    row_bandwidth: float  # bytes/s one thread block moves (bounds the time at few rows)


@dataclass(frozen=True)
class GemmEfficiency:
    """Fitted GEMM and elementwise efficiency parameters for one GPU.

    Load with :func:`load_gemm_efficiency`; ``source`` says what the numbers were fitted on (or which
    fit was borrowed for a GPU without profiles).
    """

    gpu: str
    source: str
    compute_max: float
    m_half: float
    m_exp: float
    n_half: float
    n_exp: float
    k_half: float
    k_exp: float
    mem_max: float
    mem_half_bytes: float
    mem_exp: float
    overhead_s: float
    fp8_compute_scale: float = 0.85
    wq_compute_scale: float = 0.7
    wq_mem_scale: float = 0.9
    wq_scale_bytes_per_elem: float = 2.0 / 128.0
    wq_tile_m: float = 16.0
    elementwise: tuple[ElementwiseParams, ...] = field(default=())

    def compute_efficiency(self, m: Any, n: Any, k: Any) -> Any:
        """Fraction of peak FLOP/s reached by a bf16/fp16 GEMM of this shape (vectorised)."""
        return (
            self.compute_max
            * _step(m, self.m_half, self.m_exp)
            * _step(n, self.n_half, self.n_exp)
            * _step(k, self.k_half, self.k_exp)
        )

    def memory_efficiency(self, weight_bytes: Any) -> Any:
        """Fraction of HBM bandwidth reached while streaming ``weight_bytes`` of weights."""
        return self.mem_max * _step(weight_bytes, self.mem_half_bytes, self.mem_exp)

    def elementwise_params(self, op: str) -> ElementwiseParams:
        """The fit for ``op`` (``embedding``, ``rmsnorm``, ``rope``, ``act``, ``add``), else ``generic``."""
        by_name = {e.op: e for e in self.elementwise}
        if op in by_name:
            return by_name[op]
        if "generic" in by_name:
            return by_name["generic"]
        raise KeyError(f"calibration for {self.gpu} has no elementwise fit for '{op}' and no 'generic' fit")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, gpu: str | None = None, source: str | None = None) -> GemmEfficiency:
        names = {f.name for f in fields(cls)} - {"elementwise", "gpu", "source"}
        kwargs = {k: float(v) for k, v in data.items() if k in names}
        ew = tuple(
            ElementwiseParams(op=op, mem_frac=float(p["mem_frac"]), overhead_s=float(p["overhead_s"]),
                              row_bandwidth=float(p["row_bandwidth"]))
            for op, p in sorted(dict(data.get("elementwise", {})).items())
        )
        return cls(gpu=gpu or str(data.get("gpu", "")), source=source or str(data.get("source", "")),
                   elementwise=ew, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "elementwise"}
        out["elementwise"] = {
            e.op: {"mem_frac": e.mem_frac, "overhead_s": e.overhead_s, "row_bandwidth": e.row_bandwidth}
            for e in self.elementwise
        }
        return out


def gemm_time(
    m: Any,
    n: float,
    k: float,
    *,
    peak_flops: float,
    mem_bandwidth: float,
    eff: GemmEfficiency,
    weight_bytes_per_elem: float = 2.0,
    act_bytes_per_elem: float = 2.0,
    out_bytes_per_elem: float = 2.0,
) -> Any:
    """Seconds for one GEMM ``(m x k) @ (k x n)`` on one GPU; ``m`` may be a numpy array.

    Parameters
    ----------
    m, n, k : token count, output features and input features (per GPU, i.e. after sharding).
    peak_flops : dense peak of the math precision (bf16 peak for bf16 and weight-only int4; fp8 peak
        for W8A8), FLOP/s.
    mem_bandwidth : HBM bandwidth, bytes/s.
    eff : fitted parameters (:func:`load_gemm_efficiency`).
    weight_bytes_per_elem, act_bytes_per_elem, out_bytes_per_elem : storage sizes; 2 for bf16,
        1 for fp8, 0.5 for int4 weights (group scales are added by the model).

    Returns
    -------
    float or numpy array of seconds (0 where ``m <= 0``).

    Examples
    --------
    >>> e = load_gemm_efficiency("h100-sxm-80gb")
    >>> t1 = gemm_time(1, 8192, 8192, peak_flops=989.4e12, mem_bandwidth=3.35e12, eff=e)
    >>> t4k = gemm_time(4096, 8192, 8192, peak_flops=989.4e12, mem_bandwidth=3.35e12, eff=e)
    >>> t1 < t4k
    True
    """
    m_arr = np.asarray(m, dtype=float)
    if peak_flops <= 0 or mem_bandwidth <= 0:
        raise ValueError(f"peak_flops and mem_bandwidth must be positive (got {peak_flops}, {mem_bandwidth})")
    if n <= 0 or k <= 0:
        raise ValueError(f"GEMM dimensions must be positive (got n={n}, k={k})")
    weight_only = weight_bytes_per_elem < act_bytes_per_elem
    w_bytes = n * k * weight_bytes_per_elem
    if weight_only:
        w_bytes += n * k * eff.wq_scale_bytes_per_elem
    m_pos = np.maximum(m_arr, 1.0)
    flops = 2.0 * m_pos * n * k
    moved = w_bytes + m_pos * k * act_bytes_per_elem + m_pos * n * out_bytes_per_elem

    # the memory efficiency is a property of the transfer size; evaluate it at the bf16 size of
    # the same matrix so a quantized matrix is not penalised for being smaller
    eff_m = eff.memory_efficiency(n * k * 2.0)
    if weight_only:
        # mixed-precision kernels (Marlin-style) tile m by 16 rows: below that the tensor cores idle in
        # proportion, above it they run at the large-batch efficiency (the fitted m-curve describes
        # cuBLAS's large tiles and would hide a compute floor under the 4x smaller weight read)
        tile = eff.wq_tile_m
        eff_c = (eff.compute_efficiency(np.full_like(m_pos, 1e9), n, k) * eff.wq_compute_scale
                 * m_pos / (tile * np.ceil(m_pos / tile)))
        eff_m = eff_m * eff.wq_mem_scale
    else:
        eff_c = eff.compute_efficiency(m_pos, n, k)
    if act_bytes_per_elem <= 1.0:
        eff_c = eff_c * eff.fp8_compute_scale
    t = eff.overhead_s + np.maximum(flops / (peak_flops * eff_c), moved / (mem_bandwidth * eff_m))
    t = np.where(m_arr > 0, t, 0.0)
    return float(t) if np.ndim(t) == 0 else t


def elementwise_time(
    bytes_moved: Any,
    *,
    mem_bandwidth: float,
    eff: GemmEfficiency,
    op: str = "generic",
    rows: Any = None,
) -> Any:
    """Seconds for a memory-bound operator moving ``bytes_moved`` bytes (read + written).

    ``op`` selects the fitted kind (``embedding``, ``rmsnorm``, ``rope``, ``act``, ``add``; anything else
    uses ``generic``). ``rows`` is the number of independent rows (tokens) the kernel parallelises over;
    without it the per-row term is left out (right for large inputs).

    >>> e = load_gemm_efficiency("h100-sxm-80gb")
    >>> small = elementwise_time(2 * 4096 * 2, mem_bandwidth=3.35e12, eff=e, op="rmsnorm", rows=1)
    >>> big = elementwise_time(2 * 4096 * 4096 * 2, mem_bandwidth=3.35e12, eff=e, op="rmsnorm", rows=4096)
    >>> 0 < small < big
    True
    """
    p = eff.elementwise_params(op)
    b = np.asarray(bytes_moved, dtype=float)
    t = p.overhead_s + b / (mem_bandwidth * p.mem_frac)
    if rows is not None:
        r = np.maximum(np.asarray(rows, dtype=float), 1.0)
        t = t + (b / r) / p.row_bandwidth
    t = np.where(b > 0, t, 0.0)
    return float(t) if np.ndim(t) == 0 else t


# ----------------------------------------------------------------------------------------------
# Loading calibration files


def calibration_dir() -> Path:
    """Directory of the fitted calibration files.

    ``$APEX_OPT_CALIBRATION_DIR`` if set, else ``apex_opt/_specs/calibration`` (installed wheel),
    else ``<checkout>/specs/calibration`` (:func:`apex_opt.resources.resource_dir`).
    """
    return resource_dir("calibration")


# The calibration source rule (docs/calibration.md, "Which calibration each GPU uses"). A GPU with its own
# fitted file is "measured". A GPU without one is priced by the roofline of its *own* datasheet peaks with
# the fitted efficiencies (fractions of peak) of the measured GPU named for its architecture below: that is
# "borrowed" when the fit was measured on the same architecture (same SM, tensor cores and kernels, so the
# fractions carry over), and "roofline" when no GPU of the architecture was measured (the fractions are a
# stand-in from the nearest measured generation, a rough estimate).

#: the architecture each measured fit in specs/calibration was measured on
MEASURED_ARCHITECTURES: dict[str, str] = {
    "h100-sxm-80gb": "hopper",
    "h200-sxm-141gb": "hopper",
    "a100-sxm-80gb": "ampere",
    "v100-pcie-16gb": "volta",
}

#: architecture -> (measured fit whose efficiencies a GPU without its own fit uses, why that one)
ARCHITECTURE_FITS: dict[str, tuple[str, str]] = {
    "hopper": ("h100-sxm-80gb", "same architecture, hopper"),
    "ampere": ("a100-sxm-80gb", "same architecture, ampere"),
    "volta": ("v100-pcie-16gb", "same architecture, volta"),
    # stand-ins: Ada's SM descends from Ampere's; Hopper is the measured generation nearest to Blackwell; no
    # AMD GPU was measured, so CDNA 3 takes the H100 efficiencies as a rough stand-in
    "ada-lovelace": ("a100-sxm-80gb", "no ada-lovelace GPU measured"),
    "blackwell": ("h100-sxm-80gb", "no blackwell GPU measured"),
    "cdna3": ("h100-sxm-80gb", "no cdna3 GPU measured"),
}
_DEFAULT_FALLBACK = "h100-sxm-80gb"

# the architecture of a GPU known only by name (callers without a GPU spec), from its family prefix
_ARCHITECTURE_BY_PREFIX: tuple[tuple[tuple[str, ...], str], ...] = (
    (("h100", "h200", "h800", "h20", "gh200"), "hopper"),
    (("b100", "b200", "b300", "gb200", "gb300", "rtx-pro-6000"), "blackwell"),
    (("a100", "a800", "a30", "a10", "a40"), "ampere"),
    (("l40", "l4", "rtx-4090", "rtx-6000-ada"), "ada-lovelace"),
    (("v100",), "volta"),
    (("mi300", "mi325", "mi350", "mi355", "mi250"), "cdna3"),
)


@dataclass(frozen=True)
class CalibrationChoice:
    """Which fitted file prices a GPU, and why: ``kind`` is ``measured``, ``borrowed`` or ``roofline``."""

    gpu: str
    kind: str
    fit: str  # the GPU whose file is used (``gpu`` itself when measured)
    reason: str  # empty when measured
    path: Path

    def describe(self) -> str:
        """``measured``, ``borrowed from <fit> (<why>)`` or ``roofline (<why>)``, as results print it."""
        if self.kind == "measured":
            return "measured"
        if self.kind == "borrowed":
            return f"borrowed from {self.fit} ({self.reason})"
        return f"roofline ({self.reason}: {self.fit} efficiencies on {self.gpu}'s own peaks)"


def architecture_of(gpu_name: str, architecture: str = "") -> str:
    """``architecture`` when given, else the one the GPU's name family implies ('' when unknown)."""
    if architecture:
        return architecture.strip().lower()
    key = gpu_name.strip().lower()
    for prefixes, arch in _ARCHITECTURE_BY_PREFIX:
        if key.startswith(prefixes):
            return arch
    return ""


def choose_calibration(gpu_name: str, architecture: str = "") -> CalibrationChoice:
    """Apply the calibration source rule to one GPU (see the comment above :data:`MEASURED_ARCHITECTURES`).

    >>> choose_calibration("h100-sxm-80gb").describe()
    'measured'
    >>> choose_calibration("my-h100-250w", "hopper").describe()
    'borrowed from h100-sxm-80gb (same architecture, hopper)'
    >>> choose_calibration("b200", "blackwell").kind
    'roofline'
    """
    directory = calibration_dir()
    key = gpu_name.strip().lower()
    exact = directory / f"{key}.json"
    if exact.is_file():
        return CalibrationChoice(gpu_name, "measured", key, "", exact)
    arch = architecture_of(gpu_name, architecture)
    if arch in ARCHITECTURE_FITS:
        target, why = ARCHITECTURE_FITS[arch]
        kind = "borrowed" if MEASURED_ARCHITECTURES.get(target) == arch else "roofline"
    else:
        target = _DEFAULT_FALLBACK
        why = f"no {arch} GPU measured, no stand-in named" if arch else "architecture unknown"
        kind = "roofline"
    return CalibrationChoice(gpu_name, kind, target, why, directory / f"{target}.json")


def resolve_calibration(gpu_name: str, architecture: str = "") -> tuple[Path, str]:
    """``(file, note)`` of the calibration used for ``gpu_name``; ``note`` is empty on an exact match.

    The GPU's own file (``specs/calibration/<gpu_name>.json``) if there is one, else the fit
    :func:`choose_calibration` names for its architecture (from the name family when ``architecture`` is '').
    """
    choice = choose_calibration(gpu_name, architecture)
    if choice.kind == "measured":
        return choice.path, ""
    return choice.path, f"fallback for {gpu_name}: {choice.describe()}"


@functools.lru_cache(maxsize=64)
def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def load_gemm_efficiency(gpu_name: str, architecture: str = "") -> GemmEfficiency:
    """Fitted GEMM/elementwise parameters for ``gpu_name`` (e.g. ``"h100-sxm-80gb"``).

    GPUs without profiles reuse the fit :func:`choose_calibration` names for their ``architecture``
    (B200 and MI300X the H100 fit, L40S the A100 fit); the returned ``source`` says so.

    >>> load_gemm_efficiency("b200").source.startswith("fallback for b200")
    True
    """
    section, gpu, source = calibration_section(gpu_name, "gemm", architecture)
    return GemmEfficiency.from_dict(section, gpu=gpu, source=source)


def calibration_section(gpu_name: str, key: str, architecture: str = "") -> tuple[dict[str, Any], str, str]:
    """One section (``gemm`` or ``collectives``) of a GPU's fitted calibration file, the GPU it was fitted on,
    and its source note (saying so when the GPU reuses another GPU's fit)."""
    path, note = resolve_calibration(gpu_name, architecture)
    if not path.is_file():
        raise FileNotFoundError(f"no calibration file {path}; run benchmarks/fit_calibration.py")
    data = _read_json(str(path))
    section = data[key]
    source = str(section.get("source", ""))
    if note:
        source = f"{note}; {source}"
    return section, str(data.get("gpu", path.stem)), source
