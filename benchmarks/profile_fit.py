"""Readers of the measured profiles and the least-squares fits behind ``specs/calibration``.

Used by ``benchmarks/fit_calibration.py`` (which writes the calibration files), by the accuracy
benchmarks and by the tests (which put ``benchmarks/`` on ``sys.path``). Nothing in the run-time cost model
imports this module, so it lives here rather than in the apex_opt wheel; scipy is imported only inside the
fitting functions, so reading profiles needs numpy alone.

Shape conventions (per GPU, tensor-parallel degree ``tp``, ``hd = n_embd / n_head``), checked
against the vidur layer profiles (docs/calibration.md):

=================  =========================  ==========================================
operator           GEMM (m, n, k)             bytes moved (elementwise, 2-byte activations)
=================  =========================  ==========================================
attn_pre_proj      (T, (nh + 2 nkv) hd / tp, h)
attn_post_proj     (T, h, h / tp)
mlp_up_proj        (T, 2 f / tp, h) gated (gate and up fused); (T, f / tp, h) otherwise
mlp_down_proj      (T, h, f / tp)
emb  (embedding)                              2 T h * 2   (row gather + write; vocab-parallel)
input_layernorm / post_attention_layernorm    2 T h * 2   (rmsnorm: read + write)
attn_rope (rope)                              2 T (nh + nkv) hd / tp * 2   (q and k in place)
mlp_act (act)                                 3 T f / tp * 2 gated (read gate+up, write); 2 T f / tp * 2 not
add                                           3 T h * 2   (two reads, one write)
=================  =========================  ==========================================
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apex_opt.perf.collectives import CollectiveParams, CustomAllReduceParams, FabricParams, collective_time
from apex_opt.perf.gemm import ElementwiseParams, GemmEfficiency, elementwise_time, gemm_time

GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE_OPS = ("emb", "input_layernorm", "attn_rope", "post_attention_layernorm", "mlp_act", "add")
# profile operator name -> elementwise kind of the cost model
ELEMENTWISE_KIND = {
    "emb": "embedding",
    "input_layernorm": "rmsnorm",
    "post_attention_layernorm": "rmsnorm",
    "attn_rope": "rope",
    "mlp_act": "act",
    "add": "add",
}
COLLECTIVE_KINDS = ("all_reduce", "all_gather", "reduce_scatter", "alltoall", "send_recv")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]  # this file is <checkout>/benchmarks/profile_fit.py


def profiles_root() -> Path:
    """``<checkout>/data/profiles`` (the project's copy of the reference profiles)."""
    return repo_root() / "data" / "profiles"


# ----------------------------------------------------------------------------------------------
# Layer profiles


@dataclass(frozen=True)
class OperatorRows:
    """One row per (profile row, operator): shapes and the measured median time (seconds)."""

    model: np.ndarray  # str
    op: np.ndarray  # str, profile operator name
    num_tokens: np.ndarray
    tp: np.ndarray
    m: np.ndarray
    n: np.ndarray
    k: np.ndarray
    bytes_moved: np.ndarray  # elementwise ops (0 for GEMMs)
    rows: np.ndarray  # rows the elementwise kernel parallelises over (tokens)
    seconds: np.ndarray

    def select(self, mask: np.ndarray) -> OperatorRows:
        return OperatorRows(**{name: getattr(self, name)[mask] for name in self.__dataclass_fields__})

    def __len__(self) -> int:
        return len(self.seconds)


def operator_shapes(
    *, num_tokens: float, tp: int, n_head: int, n_kv_head: int, n_embd: int, n_expanded_embd: int,
    use_gated_mlp: bool, act_bytes: float = 2.0,
) -> dict[str, tuple[float, float, float] | float]:
    """GEMM shapes ``(m, n, k)`` and elementwise bytes of one transformer layer on one GPU."""
    t, h, f = float(num_tokens), float(n_embd), float(n_expanded_embd)
    hd = h / n_head
    up_n = (2.0 if use_gated_mlp else 1.0) * f / tp
    return {
        "attn_pre_proj": (t, (n_head + 2 * n_kv_head) * hd / tp, h),
        "attn_post_proj": (t, h, h / tp),
        "mlp_up_proj": (t, up_n, h),
        "mlp_down_proj": (t, h, f / tp),
        "emb": 2.0 * t * h * act_bytes,
        "input_layernorm": 2.0 * t * h * act_bytes,
        "post_attention_layernorm": 2.0 * t * h * act_bytes,
        "attn_rope": 2.0 * t * (n_head + n_kv_head) * hd / tp * act_bytes,
        "mlp_act": (3.0 if use_gated_mlp else 2.0) * t * f / tp * act_bytes,
        "add": 3.0 * t * h * act_bytes,
    }


def layer_profile_files(gpu: str, root: Path | None = None) -> list[Path]:
    return sorted(((root or profiles_root()) / gpu / "layers_vidur").glob("*.mlp.csv"))


def read_layer_profiles(gpu: str, root: Path | None = None, *, files: Sequence[Path] | None = None,
                        stat: str = "median", gated_fused: bool = True) -> OperatorRows:
    """Every (row, operator) of ``<root>/<gpu>/layers_vidur/*.mlp.csv`` as arrays.

    ``gated_fused=False`` prices a gated MLP's up-projection as one matrix (to test the convention).
    """
    cols: dict[str, list[Any]] = {k: [] for k in OperatorRows.__dataclass_fields__}
    for path in files if files is not None else layer_profile_files(gpu, root):
        model = path.name.split(".mlp")[0]
        with open(path, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                gated = r["use_gated_mlp"].strip().lower() in ("true", "1")
                tp = int(r["num_tensor_parallel_workers"])
                tokens = int(r["num_tokens"])
                shapes = operator_shapes(
                    num_tokens=tokens, tp=tp, n_head=int(r["n_head"]), n_kv_head=int(r["n_kv_head"]),
                    n_embd=int(r["n_embd"]), n_expanded_embd=int(r["n_expanded_embd"]), use_gated_mlp=gated,
                )
                if gated and not gated_fused:
                    m_, n_, k_ = shapes["mlp_up_proj"]  # type: ignore[misc]
                    shapes["mlp_up_proj"] = (m_, n_ / 2.0, k_)
                for op in GEMM_OPS + ELEMENTWISE_OPS:
                    value = r.get(f"time_stats.{op}.{stat}", "")
                    if value in ("", None):
                        continue
                    seconds = float(value) * 1e-3
                    if not math.isfinite(seconds) or seconds <= 0:
                        continue
                    shape = shapes[op]
                    if isinstance(shape, tuple):
                        m, n, k = shape
                        moved = 0.0
                    else:
                        m, n, k = float(tokens), 0.0, 0.0
                        moved = float(shape)
                    cols["model"].append(model)
                    cols["op"].append(op)
                    cols["num_tokens"].append(tokens)
                    cols["tp"].append(tp)
                    cols["m"].append(m)
                    cols["n"].append(n)
                    cols["k"].append(k)
                    cols["bytes_moved"].append(moved)
                    cols["rows"].append(float(tokens))
                    cols["seconds"].append(seconds)
    return OperatorRows(
        model=np.array(cols["model"], dtype=object), op=np.array(cols["op"], dtype=object),
        **{k: np.array(cols[k], dtype=float) for k in ("num_tokens", "tp", "m", "n", "k", "bytes_moved", "rows",
                                                       "seconds")},
    )


def predict_operators(rows: OperatorRows, eff: GemmEfficiency, *, peak_flops: float, mem_bandwidth: float) -> np.ndarray:
    """Model seconds for each row of ``rows`` (bf16 GEMMs and elementwise ops)."""
    out = np.zeros(len(rows))
    for op in np.unique(rows.op):
        mask = rows.op == op
        if op in GEMM_OPS:
            # one call per distinct (n, k): gemm_time is vectorised over m
            for n, k in {(float(a), float(b)) for a, b in zip(rows.n[mask], rows.k[mask], strict=True)}:
                sub = mask & (rows.n == n) & (rows.k == k)
                out[sub] = gemm_time(rows.m[sub], n, k, peak_flops=peak_flops, mem_bandwidth=mem_bandwidth, eff=eff)
        else:
            out[mask] = elementwise_time(rows.bytes_moved[mask], mem_bandwidth=mem_bandwidth, eff=eff,
                                         op=ELEMENTWISE_KIND.get(str(op), "generic"), rows=rows.rows[mask])
    return out


# ----------------------------------------------------------------------------------------------
# Collective profiles


@dataclass(frozen=True)
class CollectiveRows:
    """Measured collective times, one row per (dataset, kind, size, group)."""

    dataset: np.ndarray  # str: "apex" | "vidur_dgx" | "vidur_pairwise_nvlink"
    kind: np.ndarray  # str, one of COLLECTIVE_KINDS
    nbytes: np.ndarray
    n: np.ndarray  # GPUs in the group
    nodes: np.ndarray
    seconds: np.ndarray

    def select(self, mask: np.ndarray) -> CollectiveRows:
        return CollectiveRows(**{name: getattr(self, name)[mask] for name in self.__dataclass_fields__})

    def __len__(self) -> int:
        return len(self.seconds)


_APEX_FILES = {"all_reduce": "all_reduce", "all_gather": "all_gather", "reduce_scatter": "reduce_scatter",
               "alltoall": "alltoall", "sendrecv": "send_recv"}


def _apex_rows(path: Path, kind: str, dtype: str) -> list[tuple[str, str, float, int, int, float]]:
    with open(path, newline="", encoding="utf-8") as fh:
        raw = list(csv.DictReader(fh))
    # v100 reduce_scatter.csv: the 4-node x 1-GPU block (its last 19 rows) has num_gpus_per_node and
    # size(kb) swapped (sizes 1..262144 appear in the GPU column). Restore it; the file is kept verbatim.
    fixed = []
    for i, r in enumerate(raw):
        gpn, size = int(r["num_gpus_per_node"]), int(r["size(kb)"])
        if (kind == "reduce_scatter" and "V100" in r["gpu"] and int(r["num_nodes"]) == 4 and size == 1
                and i >= len(raw) - 19):
            gpn, size = 1, gpn
        fixed.append((r, gpn, size))
    out = []
    for r, gpn, size in fixed:
        if r["dtype"] != dtype:
            continue
        nodes = int(r["num_nodes"])
        nbytes = float(size) * 1024.0
        if nbytes <= 0:  # sizes below 1 KiB were truncated to 0 by the profiler
            continue
        out.append(("apex", kind, nbytes, nodes * gpn, nodes, float(r["time(us)"]) * 1e-6))
    return out


def _vidur_rows(path: Path, kind: str, dataset: str) -> list[tuple[str, str, float, int, int, float]]:
    out = []
    col = "time_stats.all_reduce.median" if kind == "all_reduce" else "time_stats.send_recv.median"
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            n = int(r["num_workers"])
            per_node = int(r["devices_per_node"])
            # vidur's collectives_wrapper records size = elements * 2, i.e. bytes (see docs/calibration.md)
            out.append((dataset, kind, float(r["size"]), n, max(1, n // per_node), float(r[col]) * 1e-3))
    return out


def read_collective_profiles(gpu: str, root: Path | None = None, *, apex_dtype: str = "half") -> CollectiveRows:
    """All collective measurements of ``<root>/<gpu>/collectives_*`` as one table (seconds, bytes)."""
    base = (root or profiles_root()) / gpu
    rows: list[tuple[str, str, float, int, int, float]] = []
    apex = base / "collectives_apex"
    for stem, kind in _APEX_FILES.items():
        if (apex / f"{stem}.csv").is_file():
            rows += _apex_rows(apex / f"{stem}.csv", kind, apex_dtype)
    for dataset in ("dgx", "pairwise_nvlink"):
        folder = base / f"collectives_vidur_{dataset}"
        for kind in ("all_reduce", "send_recv"):
            if (folder / f"{kind}.csv").is_file():
                rows += _vidur_rows(folder / f"{kind}.csv", kind, f"vidur_{dataset}")
    if not rows:
        return CollectiveRows(*(np.array([]) for _ in range(6)))
    cols = list(zip(*rows, strict=True))
    return CollectiveRows(dataset=np.array(cols[0], dtype=object), kind=np.array(cols[1], dtype=object),
                          nbytes=np.array(cols[2], dtype=float), n=np.array(cols[3], dtype=float),
                          nodes=np.array(cols[4], dtype=float), seconds=np.array(cols[5], dtype=float))


# ----------------------------------------------------------------------------------------------
# Error summaries


def relative_errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """|predicted / measured - 1| per row."""
    return np.abs(np.asarray(predicted) / np.asarray(measured) - 1.0)


def summarize(errors: np.ndarray) -> tuple[int, float, float]:
    """(count, median, p90) of relative errors."""
    if len(errors) == 0:
        return 0, float("nan"), float("nan")
    return len(errors), float(np.median(errors)), float(np.percentile(errors, 90))


# ----------------------------------------------------------------------------------------------
# Fitting (scipy imported lazily)


@dataclass(frozen=True)
class Param:
    name: str
    start: float
    low: float
    high: float
    log: bool = False  # optimise log(value)


def _least_squares(params: Sequence[Param], residuals: Callable[[dict[str, float]], np.ndarray]) -> dict[str, float]:
    """Minimise robust (soft-L1, scale 0.1) log-relative residuals over bounded parameters."""
    from scipy.optimize import least_squares

    def unpack(x: np.ndarray) -> dict[str, float]:
        return {p.name: float(math.exp(v) if p.log else v) for p, v in zip(params, x, strict=True)}

    def tr(p: Param, v: float) -> float:
        return math.log(v) if p.log else v

    x0 = np.array([tr(p, p.start) for p in params])
    lo = np.array([tr(p, p.low) for p in params])
    hi = np.array([tr(p, p.high) for p in params])
    result = least_squares(lambda x: residuals(unpack(x)), x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.1,
                           x_scale="jac", max_nfev=4000)
    return unpack(result.x)


GEMM_PARAMS = (
    Param("compute_max", 0.8, 0.2, 1.0),
    Param("m_half", 150.0, 1.0, 1e5, log=True),
    Param("m_exp", 1.0, 0.3, 4.0),
    Param("n_half", 500.0, 1.0, 1e5, log=True),
    Param("n_exp", 1.5, 0.3, 4.0),
    Param("k_half", 300.0, 1.0, 1e5, log=True),
    Param("k_exp", 1.5, 0.3, 4.0),
    Param("mem_max", 0.9, 0.2, 1.0),
    Param("mem_half_bytes", 1e6, 1e3, 1e9, log=True),
    Param("mem_exp", 1.0, 0.3, 4.0),
    Param("overhead_s", 2e-6, 0.0, 20e-6),
)


def fit_gemm(rows: OperatorRows, *, peak_flops: float, mem_bandwidth: float, gpu: str,
             assumptions: dict[str, float]) -> GemmEfficiency:
    """Fit the GEMM roofline efficiencies on the GEMM rows of ``rows``."""
    sub = rows.select(np.isin(rows.op, GEMM_OPS))

    def make(p: dict[str, float]) -> GemmEfficiency:
        return GemmEfficiency.from_dict({**p, **assumptions}, gpu=gpu, source="")

    def residuals(p: dict[str, float]) -> np.ndarray:
        pred = predict_operators(sub, make(p), peak_flops=peak_flops, mem_bandwidth=mem_bandwidth)
        return np.log(pred / sub.seconds)

    return make(_least_squares(GEMM_PARAMS, residuals))


EW_PARAMS = (
    Param("mem_frac", 0.6, 0.02, 1.0),
    Param("overhead_s", 2e-6, 0.0, 30e-6),
    Param("row_bandwidth", 20e9, 1e8, 1e13, log=True),
)


def fit_elementwise(rows: OperatorRows, *, mem_bandwidth: float, gpu: str) -> tuple[ElementwiseParams, ...]:
    """One fit per elementwise kind, plus ``generic`` (all elementwise rows pooled)."""
    fits: list[ElementwiseParams] = []
    groups: dict[str, np.ndarray] = {}
    for op, kind in ELEMENTWISE_KIND.items():
        mask = rows.op == op
        groups[kind] = groups.get(kind, np.zeros(len(rows), bool)) | mask
    groups["generic"] = np.isin(rows.op, list(ELEMENTWISE_KIND))
    for kind, mask in sorted(groups.items()):
        sub = rows.select(mask)
        if len(sub) == 0:
            continue

        def residuals(p: dict[str, float], sub: OperatorRows = sub, kind: str = kind) -> np.ndarray:
            eff = GemmEfficiency(gpu=gpu, source="", compute_max=1, m_half=1, m_exp=1, n_half=1, n_exp=1, k_half=1,
                                 k_exp=1, mem_max=1, mem_half_bytes=1, mem_exp=1, overhead_s=0,
                                 elementwise=(ElementwiseParams(op=kind, **p),))
            pred = elementwise_time(sub.bytes_moved, mem_bandwidth=mem_bandwidth, eff=eff, op=kind, rows=sub.rows)
            return np.log(pred / sub.seconds)

        fits.append(ElementwiseParams(op=kind, **_least_squares(EW_PARAMS, residuals)))
    return tuple(fits)


# --- collectives -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BandwidthContext:
    """Nominal link figures of the system a dataset was measured on (inputs to the fit)."""

    intra_bw: Callable[[int], float]  # per-GPU, per-direction bandwidth for a group of n GPUs in one node
    intra_fabric: Callable[[int], str]
    inter_bw: float | None


def predict_collectives(rows: CollectiveRows, params: CollectiveParams, ctx: BandwidthContext,
                        *, custom_allreduce: bool = False) -> np.ndarray:
    out = np.empty(len(rows))
    for i in range(len(rows)):
        n, nodes = int(rows.n[i]), int(rows.nodes[i])
        g = n // nodes
        out[i] = collective_time(str(rows.kind[i]), float(rows.nbytes[i]), n, nodes=nodes,
                                 intra_bw=ctx.intra_bw(max(g, 2)), inter_bw=ctx.inter_bw, params=params,
                                 custom_allreduce=custom_allreduce, intra_fabric=ctx.intra_fabric(max(g, 2)))
    return out


FABRIC_PARAMS = (
    Param("latency_s", 6e-6, 1e-6, 5e-3, log=True),
    Param("latency_step_s", 0.5e-6, 0.0, 2e-3),
    Param("eff_all_reduce", 0.8, 0.01, 1.0),
    Param("eff_all_gather", 0.8, 0.01, 1.0),
    Param("eff_reduce_scatter", 0.8, 0.01, 1.0),
    Param("eff_alltoall", 0.8, 0.01, 1.0),
    Param("eff_send_recv", 0.8, 0.01, 1.0),
    Param("small_n_penalty", 0.3, 0.0, 1.5),
    Param("ramp_bytes", 1e5, 1e2, 1e9, log=True),
    Param("ramp_exp", 0.6, 0.2, 0.9),
)
NETWORK_EXTRA = (Param("rail_exp", 1.0, 0.0, 1.0),)


def fabric_from_params(p: dict[str, float], base: FabricParams | None = None) -> FabricParams:
    eff = {k: p[f"eff_{k}"] for k in COLLECTIVE_KINDS if f"eff_{k}" in p}
    if base is not None:
        eff = {**dict(base.bw_eff), **eff}
    return FabricParams(
        latency_s=p["latency_s"], latency_step_s=p["latency_step_s"], bw_eff=tuple(sorted(eff.items())),
        small_n_penalty=p.get("small_n_penalty", 0.0), ramp_bytes=p["ramp_bytes"], ramp_exp=p["ramp_exp"],
        rail_exp=p.get("rail_exp", 1.0),
    )


def fit_fabric(rows: CollectiveRows, contexts: dict[str, BandwidthContext], base: CollectiveParams, fabric: str,
               *, kinds_present: Iterable[str] | None = None, fixed: dict[str, float] | None = None,
               bounds: dict[str, tuple[float, float]] | None = None) -> FabricParams:
    """Fit one fabric's parameters with the other fabrics of ``base`` fixed.

    ``contexts`` maps each dataset name to its nominal bandwidths. Collective kinds absent from
    ``rows`` keep ``eff`` from ``base`` (or the fitted all-gather value when base has none).
    """
    present = set(kinds_present if kinds_present is not None else rows.kind)
    spec = [p for p in FABRIC_PARAMS if not p.name.startswith("eff_") or p.name[4:] in present]
    if fabric == "network":
        spec += list(NETWORK_EXTRA)
    fixed = fixed or {}
    spec = [p for p in spec if p.name not in fixed]
    for name, (low, high) in (bounds or {}).items():
        spec = [Param(p.name, min(max(p.start, low), high), low, high, p.log) if p.name == name else p for p in spec]
    datasets = sorted(set(rows.dataset))
    # every (dataset, kind, group size, nodes) series weighs the same, however many sizes it sampled
    weights = {}
    for ds in datasets:
        sub = rows.select(rows.dataset == ds)
        keys = list(zip(sub.kind, sub.n, sub.nodes, strict=True))
        counts: dict[tuple[Any, ...], int] = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        weights[ds] = np.array([1.0 / math.sqrt(counts[key]) for key in keys])

    def build(p: dict[str, float]) -> CollectiveParams:
        p = {**p, **fixed}
        prior = base.fabric(fabric) if fabric in base.fabric_names() else None
        fab = fabric_from_params(p, prior)
        return base.with_fabric(fabric, fab)

    def residuals(p: dict[str, float]) -> np.ndarray:
        params = build(p)
        res = []
        for ds in datasets:
            sub = rows.select(rows.dataset == ds)
            res.append(weights[ds] * np.log(predict_collectives(sub, params, contexts[ds]) / sub.seconds))
        return np.concatenate(res)

    best = {**_least_squares(spec, residuals), **fixed}
    return build(best).fabric(fabric)


CUSTOM_AR_PARAMS = (
    Param("latency_one_shot_s", 8e-6, 1e-6, 50e-6, log=True),
    Param("latency_two_shot_s", 10e-6, 1e-6, 50e-6, log=True),
    Param("bw_eff", 0.5, 0.05, 1.0),
)


def fit_custom_allreduce(sizes: np.ndarray, n: np.ndarray, seconds: np.ndarray, *, intra_bw: float,
                         base: CollectiveParams) -> CustomAllReduceParams:
    """Fit the one-shot/two-shot custom all-reduce curve on (bytes, GPUs, seconds) points."""

    def residuals(p: dict[str, float]) -> np.ndarray:
        params = base.with_custom_allreduce(CustomAllReduceParams(**p))
        pred = np.array([collective_time("all_reduce", float(s), int(g), intra_bw=intra_bw, inter_bw=None,
                                         params=params, custom_allreduce=True)
                         for s, g in zip(sizes, n, strict=True)])
        return np.log(pred / seconds)

    return CustomAllReduceParams(**_least_squares(CUSTOM_AR_PARAMS, residuals))


__all__ = [
    "COLLECTIVE_KINDS",
    "ELEMENTWISE_KIND",
    "ELEMENTWISE_OPS",
    "GEMM_OPS",
    "BandwidthContext",
    "CollectiveRows",
    "OperatorRows",
    "fit_custom_allreduce",
    "fit_elementwise",
    "fit_fabric",
    "fit_gemm",
    "operator_shapes",
    "predict_collectives",
    "predict_operators",
    "profiles_root",
    "read_collective_profiles",
    "read_layer_profiles",
    "relative_errors",
    "summarize",
]
