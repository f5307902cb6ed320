"""Fit the operator and collective cost models on the measured profiles; write specs/calibration/*.json.

    python benchmarks/fit_calibration.py          # writes specs/calibration/<gpu>.json

Needs scipy (fitting only; apex_opt loads the written JSON at run time). Inputs are the profile copies
in data/profiles (see data/profiles/README.md) and the nominal hardware figures below, each with its
source. See docs/calibration.md for the functional forms and the resulting accuracy.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profile_fit import (
    COLLECTIVE_KINDS,
    GEMM_OPS,
    BandwidthContext,
    CollectiveRows,
    fit_custom_allreduce,
    fit_elementwise,
    fit_fabric,
    fit_gemm,
    predict_operators,
    profiles_root,
    read_collective_profiles,
    read_layer_profiles,
    relative_errors,
    summarize,
)

from apex_opt.perf.collectives import CollectiveParams, FabricParams

OUT = ROOT / "specs" / "calibration"

# ------------------------------------------------------------------------------------------------
# Peak figures of the profiled GPUs (dense, no sparsity).
#   H100 SXM5: 989.4 TFLOP/s bf16 dense, 1978.9 fp8, 3.35 TB/s HBM3 -- NVIDIA H100 datasheet.
#   A100 SXM 80GB: 312 TFLOP/s bf16 dense, 2.039 TB/s HBM2e -- NVIDIA A100 datasheet.
#   H200 SXM: 989.4 TFLOP/s bf16 dense, 4.8 TB/s HBM3e -- NVIDIA H200 datasheet.
#   V100: 125 TFLOP/s fp16 tensor (SXM2), 112 (PCIe), 0.9 TB/s HBM2 -- NVIDIA V100 datasheet.
PEAKS = {
    "h100-sxm-80gb": {"bf16_flops": 989.4e12, "fp8_flops": 1978.9e12, "mem_bandwidth": 3.35e12},
    "a100-sxm-80gb": {"bf16_flops": 312e12, "mem_bandwidth": 2.039e12},
    "h200-sxm-141gb": {"bf16_flops": 989.4e12, "fp8_flops": 1978.9e12, "mem_bandwidth": 4.8e12},
    "v100-pcie-16gb": {"fp16_flops": 112e12, "mem_bandwidth": 0.9e12},
}

# Per-GPU, per-direction link bandwidths (bytes/s) of the systems the collectives were measured on.
NVLINK4 = 450e9  # H100/H200 SXM: NVLink 4, 18 links, 900 GB/s bidirectional (NVIDIA H100/H200 datasheets)
NVLINK3 = 300e9  # A100 SXM: NVLink 3, 12 links, 600 GB/s bidirectional (NVIDIA A100 datasheet)
BRIDGE = 300e9  # NVLink bridge of a PCIe A100/H100 pair: 600 GB/s bidirectional (NVIDIA A100 PCIe / H100 NVL)
PCIE3 = 15.75e9  # PCIe 3.0 x16: 8 GT/s x 16 lanes x 128/130 / 8
PCIE4 = 31.5e9  # PCIe 4.0 x16
PCIE5 = 63.0e9  # PCIe 5.0 x16
IB_NDR = 50e9  # 400 Gb/s per GPU: Azure ND H100 v5, "400 Gb/s NVIDIA Quantum-2 CX7 InfiniBand" per GPU
IB_HDR = 25e9  # 200 Gb/s per GPU: Azure NDm A100 v4, one 200 Gb/s HDR InfiniBand link per GPU
ETH_10G = 1.25e9  # APEX V100 cluster: assumed 10 GbE (measured cross-node send/recv peaks at 9.55 Gb/s)
ETH_NC_A100 = 2.5e9  # Azure NC A100 v4: 80,000 Mbps per 4-GPU VM -> 20 Gb/s per GPU (held out, not fitted)


def _const(v: float):
    return lambda n: v


def _pair(bridge: float, pcie: float):
    return lambda n: bridge if n <= 2 else pcie


def _pair_fabric(n: int) -> str:
    return "nvlink" if n <= 2 else "pcie"


# dataset -> nominal figures of the system it was measured on (the vidur clusters are Azure VMs:
# "dgx" = ND A100 v4 / ND H100 v5 with NVSwitch and InfiniBand; "pairwise_nvlink" = NC A100 v4 style,
# NVLink-bridged pairs joined by PCIe; the APEX V100 nodes are PCIe-only).
SYSTEMS: dict[str, dict[str, BandwidthContext]] = {
    "h100-sxm-80gb": {
        "apex": BandwidthContext(_const(NVLINK4), _const("nvlink"), None),
        "vidur_dgx": BandwidthContext(_const(NVLINK4), _const("nvlink"), IB_NDR),
        "vidur_pairwise_nvlink": BandwidthContext(_pair(BRIDGE, PCIE5), _pair_fabric, ETH_NC_A100),
    },
    "a100-sxm-80gb": {
        "vidur_dgx": BandwidthContext(_const(NVLINK3), _const("nvlink"), IB_HDR),
        "vidur_pairwise_nvlink": BandwidthContext(_pair(BRIDGE, PCIE4), _pair_fabric, ETH_NC_A100),
    },
    "h200-sxm-141gb": {"apex": BandwidthContext(_const(NVLINK4), _const("nvlink"), None)},
    "v100-pcie-16gb": {"apex": BandwidthContext(_const(PCIE3), _const("pcie"), ETH_10G)},
}
# (dataset, collective) series not fitted: vidur's pairwise_nvlink send_recv.csv is byte-identical in the A100
# and H100 folders, its 1-node rows exceed the 300 GB/s of an NVLink bridge (~340 GB/s at 48 MB) and the NIC
# of its cross-node rows is unknown. It is still reported by benchmarks/collective_accuracy.py.
HELD_OUT = {("vidur_pairwise_nvlink", "send_recv")}


def held_out(rows: CollectiveRows) -> np.ndarray:
    """Mask of rows that are reported but not fitted."""
    return np.array([(str(d), str(k)) in HELD_OUT for d, k in zip(rows.dataset, rows.kind, strict=True)], dtype=bool)

# Assumptions for precisions without profile data (docs/calibration.md, "Low precision").
ASSUMPTIONS = {
    # fp8 W8A8: efficiency relative to the bf16 curve at the fp8 peak. A public cuBLASLt fp8 cross-check
    # report (URL in docs/calibration.md) measured ~1.6 PFLOP/s (81% of 1979) for cuBLASLt and ~1.17 PFLOP/s
    # for torch._scaled_mm on 8192^3 H100 GEMMs; 0.85 x the bf16 asymptote (~0.79) gives ~0.67 of the fp8
    # peak (~1.33 PFLOP/s), between the two. An estimate, not a fit.
    "hopper": {"fp8_compute_scale": 0.85, "wq_compute_scale": 0.6, "wq_mem_scale": 0.9,
               "wq_scale_bytes_per_elem": 2.0 / 128.0},
    # Ampere has no fp8 tensor cores (vLLM runs fp8 weights as weight-only Marlin); Marlin W4A16
    # reaches close to the ideal 3.87x at small batch (IST-DASLab/marlin README), so wq_mem_scale
    # ~0.9; its compute-bound throughput trails cuBLAS fp16 (dequantization in the main loop).
    "ampere": {"fp8_compute_scale": 0.85, "wq_compute_scale": 0.8, "wq_mem_scale": 0.9,
               "wq_scale_bytes_per_elem": 2.0 / 128.0},
}
# On Hopper, Marlin-style kernels use mma.sync rather than wgmma ("not yet optimized for Hopper",
# Marlin README), hence the lower compute scale there.

# Small-message floors: NCCL needs a few microseconds per launch inside a node; over InfiniBand/Ethernet
# the fitted floor is kept at or above 5 us (published NCCL/IB small-message latencies are ~10 us and up).
INTRA_LATENCY_BOUNDS = {"latency_s": (2e-6, 1e-3)}
NET_LATENCY_BOUNDS = {"latency_s": (5e-6, 5e-3)}

CUSTOM_AR_FILE = profiles_root() / "h100-sxm-80gb" / "custom_allreduce_public" / "vllm_custom_allreduce.csv"


def _fmt(x: float) -> float:
    return float(f"{x:.6g}")


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, float):
        return _fmt(obj)
    return obj


# ------------------------------------------------------------------------------------------------


def fit_operators(gpu: str, family: str) -> dict:
    peaks = PEAKS[gpu]
    rows = read_layer_profiles(gpu)
    gemm = fit_gemm(rows, peak_flops=peaks["bf16_flops"], mem_bandwidth=peaks["mem_bandwidth"], gpu=gpu,
                    assumptions=ASSUMPTIONS[family])
    ew = fit_elementwise(rows, mem_bandwidth=peaks["mem_bandwidth"], gpu=gpu)
    eff = replace(gemm, elementwise=ew)
    pred = predict_operators(rows, eff, peak_flops=peaks["bf16_flops"], mem_bandwidth=peaks["mem_bandwidth"])
    err = relative_errors(pred, rows.seconds)
    is_gemm = np.isin(rows.op, GEMM_OPS)
    n, med, p90 = summarize(err[is_gemm])
    n_ew, med_ew, _ = summarize(err[~is_gemm])
    models = sorted(set(rows.model))
    print(f"{gpu}: GEMM rows {n}, median {med:.3f}, p90 {p90:.3f}; elementwise rows {n_ew}, median {med_ew:.3f}")

    # the gated-MLP convention: is mlp_up_proj one fused (gate, up) GEMM of n = 2 f / tp?
    unfused = read_layer_profiles(gpu, gated_fused=False)
    up = unfused.select(unfused.op == "mlp_up_proj")
    alt = fit_gemm(unfused, peak_flops=peaks["bf16_flops"], mem_bandwidth=peaks["mem_bandwidth"], gpu=gpu,
                   assumptions=ASSUMPTIONS[family])
    e_alt = relative_errors(predict_operators(up, alt, peak_flops=peaks["bf16_flops"],
                                              mem_bandwidth=peaks["mem_bandwidth"]), up.seconds)
    up_fused = err[rows.op == "mlp_up_proj"]
    print(f"  mlp_up_proj median error: fused gate+up {np.median(up_fused):.3f} vs single matrix {np.median(e_alt):.3f}")

    section = eff.to_dict()
    section.pop("gpu")
    section["source"] = (f"fitted on {gpu} vidur layer profiles ({', '.join(models)}; bf16/fp16, tp 1-8, "
                         f"{n} GEMM rows, median abs. rel. error {med:.3f}); peaks {peaks}")
    return section


def _rows_for(rows: CollectiveRows, mask) -> CollectiveRows:
    return rows.select(np.asarray(mask, dtype=bool))


def fit_collectives(custom_ar_only: bool = False) -> dict[str, dict]:
    data = {gpu: read_collective_profiles(gpu) for gpu in SYSTEMS}
    empty = CollectiveParams(gpu="", source="", fabrics=())

    def intra(rows: CollectiveRows, ctx: dict[str, BandwidthContext], fabric: str) -> CollectiveRows:
        keep = np.zeros(len(rows), bool)
        skip = held_out(rows)
        for i in range(len(rows)):
            if rows.nodes[i] != 1 or rows.dataset[i] not in ctx or skip[i]:
                continue
            keep[i] = ctx[str(rows.dataset[i])].intra_fabric(int(rows.n[i])) == fabric
        return _rows_for(rows, keep)

    def cross(rows: CollectiveRows) -> CollectiveRows:
        return _rows_for(rows, (rows.nodes > 1) & ~held_out(rows))

    out: dict[str, CollectiveParams] = {}
    notes: dict[str, list[str]] = {g: [] for g in SYSTEMS}

    # --- PCIe shape per collective kind: only the V100 nodes measured all five kinds on PCIe ---------
    v = data["v100-pcie-16gb"]
    vctx = SYSTEMS["v100-pcie-16gb"]
    pcie_v100 = fit_fabric(intra(v, vctx, "pcie"), vctx, empty, "pcie", fixed={"small_n_penalty": 0.0},
                           bounds=INTRA_LATENCY_BOUNDS)
    v_ratio = {k: e / dict(pcie_v100.bw_eff)["all_reduce"] for k, e in pcie_v100.bw_eff}

    def with_pcie_kinds(fab: FabricParams) -> FabricParams:
        ar = dict(fab.bw_eff)["all_reduce"]
        return replace(fab, bw_eff=tuple(sorted({k: min(1.0, ar * r) for k, r in v_ratio.items()}.items())))

    # --- H100: NVSwitch from APEX (5 kinds) + vidur dgx; PCIe 5 from vidur pairwise 4-GPU groups -----
    h = data["h100-sxm-80gb"]
    ctx = SYSTEMS["h100-sxm-80gb"]
    nv_rows = intra(h, ctx, "nvlink")
    nvlink_h100 = fit_fabric(nv_rows, ctx, empty, "nvlink", bounds=INTRA_LATENCY_BOUNDS)
    p = empty.with_fabric("nvlink", nvlink_h100)
    pcie_h100 = with_pcie_kinds(fit_fabric(intra(h, ctx, "pcie"), ctx, p, "pcie", fixed={"small_n_penalty": 0.0},
                                           bounds=INTRA_LATENCY_BOUNDS))
    p = p.with_fabric("pcie", pcie_h100)
    notes["h100-sxm-80gb"] += [f"nvlink: APEX nccl-tests-style + vidur dgx, 1 node, {len(nv_rows)} rows at 450 GB/s",
                               ("pcie: vidur pairwise_nvlink 4-GPU all_reduce at PCIe 5 x16 (63 GB/s); other kinds "
                                "scaled by the V100 PCIe ratios")]

    # --- A100: NVSwitch/bridge from vidur; PCIe 4 from pairwise 4-GPU; network from dgx 2-node rows ----
    a = data["a100-sxm-80gb"]
    actx = SYSTEMS["a100-sxm-80gb"]
    nv_a = intra(a, actx, "nvlink")
    nvlink_a100 = fit_fabric(nv_a, actx, empty, "nvlink", kinds_present=("all_reduce", "send_recv"),
                             bounds=INTRA_LATENCY_BOUNDS)
    # kinds without A100 data: transfer the H100 ratio eff_kind / eff_all_reduce
    h_eff = dict(nvlink_h100.bw_eff)
    a_eff = dict(nvlink_a100.bw_eff)
    for kind in ("all_gather", "reduce_scatter", "alltoall"):
        a_eff[kind] = min(1.0, a_eff["all_reduce"] * h_eff[kind] / h_eff["all_reduce"])
    nvlink_a100 = replace(nvlink_a100, bw_eff=tuple(sorted(a_eff.items())))
    pa = empty.with_fabric("nvlink", nvlink_a100)
    pcie_a100 = with_pcie_kinds(fit_fabric(intra(a, actx, "pcie"), actx, pa, "pcie", fixed={"small_n_penalty": 0.0},
                                           bounds=INTRA_LATENCY_BOUNDS))
    pa = pa.with_fabric("pcie", pcie_a100)
    x_a = cross(a)
    net_a100 = fit_fabric(x_a, actx, pa, "network", kinds_present=("all_reduce", "send_recv"),
                          fixed={"small_n_penalty": 0.0}, bounds=NET_LATENCY_BOUNDS)
    na = dict(net_a100.bw_eff)
    for kind in ("all_gather", "reduce_scatter", "alltoall"):
        na[kind] = na["all_reduce"]
    net_a100 = replace(net_a100, bw_eff=tuple(sorted(na.items())))
    pa = pa.with_fabric("network", net_a100)
    notes["a100-sxm-80gb"] += [
        (f"nvlink: vidur dgx 1-node + pairwise 2-GPU all_reduce rows ({len(nv_a)}) at 300 GB/s; all_gather/reduce_scatter/"
         "alltoall efficiencies transferred from the H100 fit (ratio to all_reduce)"),
        ("pcie: vidur pairwise_nvlink 4-GPU all_reduce at PCIe 4 x16 (31.5 GB/s); other kinds scaled by the V100 "
         "PCIe ratios"),
        f"network: vidur dgx 2-node rows ({len(x_a)}: all_reduce 2/4/8/16 GPUs, send_recv) at 200 Gb/s HDR per GPU",
    ]

    # --- H100 network: only cross-node send_recv was measured ------------------------------------
    x_h = cross(h)
    net_h100 = fit_fabric(x_h, ctx, p, "network", kinds_present=("send_recv",),
                          fixed={"small_n_penalty": 0.0, "rail_exp": 1.0,
                                 "latency_step_s": net_a100.latency_step_s}, bounds=NET_LATENCY_BOUNDS)
    eff_sr = dict(net_h100.bw_eff)["send_recv"]
    net_h100 = replace(net_h100, bw_eff=tuple(sorted({k: eff_sr for k in COLLECTIVE_KINDS}.items())))
    p = p.with_fabric("network", net_h100)
    notes["h100-sxm-80gb"].append(
        f"network: vidur dgx 2-node send_recv ({len(x_h)} rows) at 400 Gb/s NDR per GPU; the other kinds take the "
        "send_recv efficiency, rail_exp = 1 (rail-optimised, one NIC per GPU) and the A100 fit's latency growth")

    # --- vLLM custom all-reduce (public H100 figures) ---------------------------------------------
    with open(CUSTOM_AR_FILE, newline="", encoding="utf-8") as fh:
        car_rows = list(csv.DictReader(fh))
    sizes = np.array([float(r["size_bytes"]) for r in car_rows])
    gpus = np.array([int(r["num_gpus"]) for r in car_rows])
    secs = np.array([float(r["time_us"]) * 1e-6 for r in car_rows])
    car = fit_custom_allreduce(sizes, gpus, secs, intra_bw=NVLINK4, base=p)
    car_note = ("custom_allreduce: vLLM custom all-reduce on H100 (eager mode, includes launch), 18 points "
                "published in sgl-project/sglang PR #2904")
    p = p.with_custom_allreduce(car)
    pa = pa.with_custom_allreduce(car)
    notes["h100-sxm-80gb"].append(car_note)
    notes["a100-sxm-80gb"].append(car_note + " (H100 fit reused; bandwidth term scales with intra_bw)")
    out["h100-sxm-80gb"] = p
    out["a100-sxm-80gb"] = pa

    # --- H200: own NVSwitch fit; PCIe / network / custom AR from H100 ----------------------------
    h2 = data["h200-sxm-141gb"]
    h2ctx = SYSTEMS["h200-sxm-141gb"]
    nv_h200 = fit_fabric(intra(h2, h2ctx, "nvlink"), h2ctx, p, "nvlink", bounds=INTRA_LATENCY_BOUNDS)
    out["h200-sxm-141gb"] = p.with_fabric("nvlink", nv_h200)
    notes["h200-sxm-141gb"] += ["nvlink: APEX H200 1-node rows (5 kinds) at 450 GB/s",
                                "pcie, network, custom_allreduce: H100 fits (no H200 data)"]

    # --- V100 PCIe: own PCIe 3 fit; network from the APEX multi-node rows (10 GbE assumed) ----------
    pv = pa.with_fabric("pcie", pcie_v100)
    x_v = cross(v)
    pv = pv.with_fabric("network", fit_fabric(x_v, vctx, pv, "network", fixed={"small_n_penalty": 0.0},
                                              bounds=NET_LATENCY_BOUNDS))
    out["v100-pcie-16gb"] = pv
    notes["v100-pcie-16gb"] += ["pcie: APEX V100 1-node rows (2 and 4 GPUs, 5 kinds) at PCIe 3 x16 (15.75 GB/s)",
                                f"network: APEX V100 2- and 4-node rows ({len(x_v)}) at an assumed 10 GbE per node",
                                "nvlink, custom_allreduce: A100/H100 fits (V100 PCIe has no NVLink)"]

    return {gpu: {**params.to_dict(), "source": "; ".join(notes[gpu])} for gpu, params in out.items()}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    gemm = {
        "h100-sxm-80gb": fit_operators("h100-sxm-80gb", "hopper"),
        "a100-sxm-80gb": fit_operators("a100-sxm-80gb", "ampere"),
    }
    gemm["h200-sxm-141gb"] = {**gemm["h100-sxm-80gb"],
                              "source": "H100 fit reused (same Hopper SM; no H200 layer profile): "
                                        + gemm["h100-sxm-80gb"]["source"]}
    gemm["v100-pcie-16gb"] = {**gemm["a100-sxm-80gb"], **ASSUMPTIONS["ampere"],
                              "source": "A100 fit reused (no V100 layer profile; fractions of the V100 peaks): "
                                        + gemm["a100-sxm-80gb"]["source"]}
    coll = fit_collectives()
    for gpu in SYSTEMS:
        doc = {
            "gpu": gpu,
            "generated_by": "benchmarks/fit_calibration.py",
            "peaks_used_in_fit": PEAKS[gpu],
            "gemm": gemm[gpu],
            "collectives": coll[gpu],
        }
        path = OUT / f"{gpu}.json"
        path.write_text(json.dumps(_clean(doc), indent=2, sort_keys=False) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
