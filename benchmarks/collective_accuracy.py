"""Accuracy of the collective model against every measured collective row in data/profiles.

    python benchmarks/collective_accuracy.py [--detail]

Prints the median and p90 absolute relative error per GPU, dataset, placement (1 node / multi-node)
and collective kind, with the nominal link bandwidths of benchmarks/fit_calibration.py. NCCL rows only
(the vidur and APEX profiles are NCCL); the custom all-reduce curve is checked against its public points.
Exits 0.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fit_calibration import CUSTOM_AR_FILE, NVLINK4, SYSTEMS, held_out
from profile_fit import predict_collectives, read_collective_profiles, relative_errors, summarize

from apex_opt.perf.collectives import collective_time, load_collective_params


def _line(label: str, err: np.ndarray) -> str:
    n, med, p90 = summarize(err)
    return f"{label:<76} {n:>6} {med:>8.3f} {p90:>8.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detail", action="store_true", help="also break down by group size")
    args = ap.parse_args(argv)
    header = f"{'GPU / dataset / placement / collective':<76} {'rows':>6} {'median':>8} {'p90':>8}"
    print(header)
    print("-" * len(header))
    fitted_all: list[np.ndarray] = []
    for gpu, contexts in SYSTEMS.items():
        rows = read_collective_profiles(gpu)
        params = load_collective_params(gpu)
        gpu_err: list[np.ndarray] = []
        for dataset in sorted(set(rows.dataset)):
            ctx = contexts[str(dataset)]
            sub = rows.select(rows.dataset == dataset)
            err = relative_errors(predict_collectives(sub, params, ctx), sub.seconds)
            held = held_out(sub)
            for multi in (False, True):
                place = sub.nodes > 1 if multi else sub.nodes == 1
                if not place.any():
                    continue
                tag = f"{gpu} / {dataset} / {'multi-node' if multi else '1 node'}"
                for kind in sorted(set(sub.kind[place])):
                    mask = place & (sub.kind == kind)
                    note = " (not fitted)" if held[mask].all() else ""
                    print(_line(f"{tag} / {kind}{note}", err[mask]))
                    if args.detail:
                        for n in sorted(set(sub.n[mask])):
                            m2 = mask & (sub.n == n)
                            nodes = int(sub.nodes[m2][0])
                            print(_line(f"    n={int(n)} over {nodes} node(s)", err[m2]))
                gpu_err.append(err[place & ~held])
        if gpu_err:
            e = np.concatenate(gpu_err)
            fitted_all.append(e)
            print(_line(f"{gpu} / all fitted series", e))
        print()
    print(_line("ALL GPUs, all fitted series", np.concatenate(fitted_all)))

    # custom all-reduce curve vs the public vLLM figures it was fitted on
    with open(CUSTOM_AR_FILE, newline="", encoding="utf-8") as fh:
        pts = list(csv.DictReader(fh))
    params = load_collective_params("h100-sxm-80gb")
    pred = np.array([collective_time("all_reduce", float(r["size_bytes"]), int(r["num_gpus"]), intra_bw=NVLINK4,
                                     inter_bw=None, params=params, custom_allreduce=True) for r in pts])
    meas = np.array([float(r["time_us"]) * 1e-6 for r in pts])
    print(_line("vLLM custom all-reduce (H100, public points, fitted)", relative_errors(pred, meas)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
