"""Accuracy of the operator model against every row of the measured H100 and A100 layer profiles.

    python benchmarks/gemm_accuracy.py [--by-model] [--by-tp]

For each GPU and operator: rows, median and p90 of |predicted / measured - 1| (measured = the
profile's median CUDA time), then the GEMM operators together and all operators together.
The model is the run-time one (apex_opt.perf.gemm with specs/calibration/<gpu>.json). Exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fit_calibration import PEAKS
from profile_fit import (
    ELEMENTWISE_OPS,
    GEMM_OPS,
    predict_operators,
    read_layer_profiles,
    relative_errors,
    summarize,
)

from apex_opt.perf.gemm import load_gemm_efficiency

GPUS = ("h100-sxm-80gb", "a100-sxm-80gb")


def _line(label: str, err: np.ndarray) -> str:
    n, med, p90 = summarize(err)
    return f"{label:<44} {n:>7} {med:>8.3f} {p90:>8.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--by-model", action="store_true", help="GEMM error per profiled model")
    ap.add_argument("--by-tp", action="store_true", help="GEMM error per tensor-parallel degree")
    args = ap.parse_args(argv)
    header = f"{'GPU / operator':<44} {'rows':>7} {'median':>8} {'p90':>8}"
    print(header)
    print("-" * len(header))
    for gpu in GPUS:
        rows = read_layer_profiles(gpu)
        eff = load_gemm_efficiency(gpu)
        peaks = PEAKS[gpu]
        pred = predict_operators(rows, eff, peak_flops=peaks["bf16_flops"], mem_bandwidth=peaks["mem_bandwidth"])
        err = relative_errors(pred, rows.seconds)
        for op in GEMM_OPS + ELEMENTWISE_OPS:
            print(_line(f"{gpu} / {op}", err[rows.op == op]))
        is_gemm = np.isin(rows.op, GEMM_OPS)
        print(_line(f"{gpu} / GEMM operators", err[is_gemm]))
        print(_line(f"{gpu} / elementwise operators", err[~is_gemm]))
        print(_line(f"{gpu} / all operators", err))
        if args.by_model:
            for model in sorted(set(rows.model)):
                print(_line(f"    GEMM, {model}", err[is_gemm & (rows.model == model)]))
        if args.by_tp:
            for tp in sorted(set(rows.tp)):
                print(_line(f"    GEMM, tp={int(tp)}", err[is_gemm & (rows.tp == tp)]))
        for lo, hi in ((1, 64), (65, 512), (513, 4096), (4097, 1 << 20)):
            band = is_gemm & (rows.num_tokens >= lo) & (rows.num_tokens <= hi)
            if band.any():
                print(_line(f"    GEMM, {lo} <= tokens <= {hi}", err[band]))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
