"""Replay every reference serving run of data/apex/experiments.csv and compare with the measured results.

For each experiment: the plan and engine settings of the row, the requests the engine actually served
(data/apex/served/<experiment>.jsonl), DP replicas fed round-robin by arrival index as in the real runs. Prints
the predicted mean TTFT, TPOT (sum of inter-token latencies / sum of output tokens), ITL and mean e2e latency for
every experiment, and the relative error on the rows whose measured results are in data/apex/fidelity_dev.csv.

    python benchmarks/fidelity.py                 # table
    python benchmarks/fidelity.py --json out.json # also write the predictions
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from apex_opt.catalog import get_engine, get_gpu, get_model
from apex_opt.experiments import Experiment, read_experiments, read_measured
from apex_opt.schema.cluster import ClusterSpec
from apex_opt.schema.slo import SLO
from apex_opt.simulate import simulate
from apex_opt.specs import Specs
from apex_opt.workload import read_trace

DATA = Path(__file__).resolve().parent.parent / "data" / "apex"
METRICS = ("ttft_ms_mean", "tpot_ms", "itl_ms", "e2e_s_mean")


def predict(exp: Experiment, data: Path = DATA) -> dict[str, float]:
    """Simulated reference metrics of one experiment."""
    workload = read_trace(data / exp.served_trace, name=exp.name)
    gpu = get_gpu(exp.gpu)
    specs = Specs(get_model(exp.model), ClusterSpec.homogeneous(exp.gpu, 1, 8), get_engine(exp.engine), workload,
                  SLO(), {exp.gpu: gpu})
    summary = simulate(specs, exp.plan, router="round-robin").summary()
    return {k: float(summary[k]) for k in METRICS} | {"num_completed": summary["num_completed"],
                                                      "num_preemptions": summary["num_preemptions"]}


def run(data: Path = DATA, only: list[str] | None = None) -> tuple[dict[str, dict], dict[str, dict]]:
    """Predictions for every experiment and the measured dev rows."""
    experiments = read_experiments(data / "experiments.csv")
    measured = read_measured(data / "fidelity_dev.csv")
    out = {}
    for exp in experiments:
        if only and exp.name not in only:
            continue
        out[exp.name] = predict(exp, data)
    return out, measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write predictions and errors to this file")
    parser.add_argument("--only", nargs="*", help="experiment names to run")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    predicted, measured = run(only=args.only)
    wall = time.perf_counter() - t0
    print(f"{'experiment':42s} {'TTFT ms':>9s} {'TPOT ms':>8s} {'ITL ms':>8s} {'e2e s':>7s}   errors (TTFT/TPOT/ITL/e2e)")
    errors: dict[str, dict[str, float]] = {}
    for name, p in predicted.items():
        line = f"{name:42s} {p['ttft_ms_mean']:9.1f} {p['tpot_ms']:8.2f} {p['itl_ms']:8.2f} {p['e2e_s_mean']:7.2f}"
        if name in measured:
            m = measured[name]
            errors[name] = {k: (p[k] - m[k]) / m[k] for k in METRICS}
            line += "   " + " / ".join(f"{errors[name][k] * 100:+.1f}%" for k in METRICS)
            line += f"   (measured {m['ttft_ms_mean']:.1f} / {m['tpot_ms']:.2f} / {m['itl_ms']:.2f} / {m['e2e_s_mean']:.2f})"
        print(line)
    if errors:
        for k in METRICS:
            vals = [abs(e[k]) for e in errors.values()]
            print(f"dev rows, |error| on {k}: mean {sum(vals) / len(vals) * 100:.1f}%, max {max(vals) * 100:.1f}%")
    print(f"{len(predicted)} experiments simulated in {wall:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"predicted": predicted, "errors": errors}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
