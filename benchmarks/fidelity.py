"""Replay every development serving run and compare with the measured results.

1. APEX runs (data/apex/experiments.csv: vLLM 0.6 and SGLang 0.4 on 8x H100, engine-side metrics): the plan and
   engine settings of the row, the requests the engine actually served (data/apex/served/<experiment>.jsonl), DP
   replicas fed round-robin by arrival index as in the real runs. Prints the predicted mean TTFT, TPOT (sum of
   inter-token latencies / sum of output tokens), ITL and mean e2e latency for every experiment, and the relative
   error on the rows whose measured results are in data/apex/fidelity_dev.csv.
2. vLLM V1 runs (data/vllm_v1/dev_runs.csv: client-side metrics, shared-prefix traffic, prefix caching on): each
   server's load stages are replayed back to back from the row's columns alone (a ``synthetic:shared_prefix``
   workload per stage), measured at the client, and each stage is compared on mean TTFT, TPOT
   ((e2e - TTFT) / (output - 1), as the data defines it) and mean e2e.

    python benchmarks/fidelity.py                 # both tables
    python benchmarks/fidelity.py --json out.json # also write the predictions
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from experiments import Experiment, read_experiments, read_measured

from apex_opt.catalog import get_engine, get_gpu, get_model
from apex_opt.schema.cluster import ClusterSpec
from apex_opt.schema.plan import Plan
from apex_opt.schema.slo import SLO
from apex_opt.sim.client import open_streams
from apex_opt.simulate import simulate
from apex_opt.specs import Specs
from apex_opt.workload import load_workload, read_trace
from apex_opt.workload.model import concat_workloads

DATA = Path(__file__).resolve().parent.parent / "data" / "apex"
V1_DATA = Path(__file__).resolve().parent.parent / "data" / "vllm_v1"
METRICS = ("ttft_ms_mean", "tpot_ms", "itl_ms", "e2e_s_mean")
V1_METRICS = ("ttft_ms_mean", "tpot_ms", "e2e_ms_mean")


def predict(exp: Experiment, data: Path = DATA) -> dict[str, float]:
    """Simulated reference metrics of one experiment."""
    workload = read_trace(data / exp.served_trace, name=exp.name)
    gpu = get_gpu(exp.gpu)
    specs = Specs(get_model(exp.model), ClusterSpec.homogeneous(exp.gpu, 1, 8), get_engine(exp.engine), workload,
                  SLO(), {exp.gpu: gpu})
    summary = simulate(specs, exp.plan, router="round-robin").summary()
    return {k: float(summary[k]) for k in METRICS} | {"num_completed": summary["num_completed"],
                                                      "num_preemptions": summary["num_preemptions"]}


def read_v1_runs(path: Path = V1_DATA / "dev_runs.csv") -> dict[str, list[dict[str, str]]]:
    """The vLLM V1 rows grouped by server run (one row per load stage, in stage order)."""
    servers: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            servers[row["run"].rsplit("_stage", 1)[0]].append(row)
    return {k: sorted(v, key=lambda r: int(r["stage"])) for k, v in servers.items()}


def stage_expression(row: dict[str, str], start_s: float) -> str:
    """The row's load stage as a shared-prefix synthetic workload: its columns only."""
    system, question = int(row["system_prompt_len"]), int(row["question_len"])
    extra = [float(row[k]) - system - question for k in ("prompt_tokens_mean", "prompt_tokens_min",
                                                         "prompt_tokens_max")]
    return (f"synthetic:rate={row['stage_rate_rps']}rps,duration={row['stage_duration_s']}s,start={start_s:g}s,"
            f"shared_prefix={row['system_prompts']}x{row['users_per_system_prompt']},system_len={system},"
            f"question_len={question},template={extra[0]:.1f},template_min={extra[1]:.0f},"
            f"template_max={extra[2]:.0f},output={row['output_tokens']},lengths=fixed,"
            f"seed={row['stage']},data_seed=0")


def v1_plan(row: dict[str, str]) -> Plan:
    return Plan(gpu=row["gpu"], engine="vllm-v1", tp=int(row["tp"]), max_num_seqs=int(row["max_num_seqs"]),
                max_num_batched_tokens=int(row["max_num_batched_tokens"]), max_model_len=int(row["max_model_len"]),
                gpu_memory_utilization=float(row["gpu_memory_utilization"]))


def predict_v1(rows: list[dict[str, str]], v1_data: Path = V1_DATA, measured_at: str = "client") -> dict[str, dict]:
    """Replay one server's load stages back to back (one engine, its prefix cache warm from the earlier stages)
    and measure each stage at the client (``measured_at="engine"``: the engine's own timings)."""
    first = rows[0]
    stages, start = [], 0.0
    for row in rows:
        stages.append(load_workload(stage_expression(row, start), specs_dir="specs"))
        start += float(row["stage_duration_s"])
    workload = concat_workloads(stages, name=first["run"].rsplit("_stage", 1)[0])
    model = get_model(str(v1_data.parent / "apex" / first["model_config"]))
    plan = v1_plan(first)
    specs = Specs(model, ClusterSpec.homogeneous(plan.gpu, 1, 8), get_engine("vllm-v1"), workload, SLO(),
                  {plan.gpu: get_gpu(plan.gpu)})
    result = simulate(specs, plan, measured_at=measured_at)
    rec = result.records
    out: dict[str, dict[str, float]] = {}
    begin = 0.0
    for row in rows:
        end = begin + float(row["stage_duration_s"])
        mask = (rec.arrival_s >= begin) & (rec.arrival_s < end) & rec.completed
        ttft = float(np.mean(rec.ttft_s[mask])) * 1e3
        e2e = float(np.mean(rec.e2e_s[mask])) * 1e3
        out[row["run"]] = {"ttft_ms_mean": ttft, "e2e_ms_mean": e2e,
                           "tpot_engine_ms": float(np.nanmean(rec.tpot_s[mask])) * 1e3,
                           "open_streams": float(np.mean(open_streams(rec)[mask])),
                           "tpot_ms": (e2e - ttft) / (int(row["output_tokens"]) - 1),
                           "num_completed": int(mask.sum()), "prefix_cache_hit_rate":
                               result.summary().get("prefix_cache_hit_rate"), "saturated": result["saturated"]}
        begin = end
    return out


def run_v1(v1_data: Path = V1_DATA, only: list[str] | None = None) -> tuple[dict[str, dict], dict[str, dict]]:
    """Predictions and measurements for every vLLM V1 stage row."""
    predicted: dict[str, dict] = {}
    measured: dict[str, dict] = {}
    for server, rows in read_v1_runs(v1_data / "dev_runs.csv").items():
        if only and server not in only and not any(r["run"] in only for r in rows):
            continue
        predicted.update(predict_v1(rows, v1_data))
        for row in rows:
            measured[row["run"]] = {"ttft_ms_mean": float(row["ttft_ms_mean"]), "tpot_ms": float(row["tpot_ms"]),
                                    "e2e_ms_mean": float(row["e2e_ms_mean"])}
    return predicted, measured


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
    parser.add_argument("--markdown", type=Path, help="write the result tables (as in docs/fidelity.md) here")
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
    t0 = time.perf_counter()
    v1_pred, v1_meas = run_v1(only=args.only)
    wall = time.perf_counter() - t0
    print()
    print(f"{'vLLM V1 stage (client-side)':58s} {'TTFT ms':>8s} {'TPOT ms':>8s} {'e2e ms':>8s}  hit   errors "
          "(TTFT/TPOT/e2e)")
    v1_errors: dict[str, dict[str, float]] = {}
    for name, p in v1_pred.items():
        m = v1_meas[name]
        v1_errors[name] = {k: (p[k] - m[k]) / m[k] for k in V1_METRICS}
        hit = p["prefix_cache_hit_rate"]
        print(f"{name:58s} {p['ttft_ms_mean']:8.1f} {p['tpot_ms']:8.2f} {p['e2e_ms_mean']:8.0f} "
              f"{(hit or 0) * 100:4.0f}%  " + " / ".join(f"{v1_errors[name][k] * 100:+.1f}%" for k in V1_METRICS)
              + f"   (measured {m['ttft_ms_mean']:.1f} / {m['tpot_ms']:.2f} / {m['e2e_ms_mean']:.0f})"
              + ("  SATURATED" if p["saturated"] else ""))
    for k in V1_METRICS:
        vals = [abs(e[k]) for e in v1_errors.values()]
        if vals:
            print(f"vLLM V1 rows, |error| on {k}: mean {sum(vals) / len(vals) * 100:.1f}%, max {max(vals) * 100:.1f}%")
    print(f"{len(v1_pred)} vLLM V1 stages simulated in {wall:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"predicted": predicted, "errors": errors, "v1_predicted": v1_pred,
                                         "v1_errors": v1_errors}, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(predicted, measured, errors, v1_pred, v1_meas, v1_errors))
    return 0


def markdown(predicted: dict, measured: dict, errors: dict, v1_pred: dict, v1_meas: dict, v1_errors: dict) -> str:
    """The dev-row tables and the prediction table of docs/fidelity.md."""
    pct = "{:+.1f}%".format
    out = [("| experiment | TTFT ms measured / simulated | error | TPOT ms measured / simulated | error | ITL error "
            "| e2e s measured / simulated | error |"), "|---|---|---|---|---|---|---|---|"]
    for name, e in errors.items():
        p, m = predicted[name], measured[name]
        out.append(f"| {name} | {m['ttft_ms_mean']:.1f} / {p['ttft_ms_mean']:.1f} | {pct(e['ttft_ms_mean'] * 100)} | "
                   f"{m['tpot_ms']:.2f} / {p['tpot_ms']:.2f} | {pct(e['tpot_ms'] * 100)} | {pct(e['itl_ms'] * 100)} "
                   f"| {m['e2e_s_mean']:.2f} / {p['e2e_s_mean']:.2f} | {pct(e['e2e_s_mean'] * 100)} |")
    out += ["", ("| vLLM V1 stage (client side) | TTFT ms measured / simulated | error | TPOT ms measured / simulated "
                 "| error | e2e ms measured / simulated | error | prefix-cache hit rate |"), "|---|---|---|---|---|---|---|---|"]
    for name, e in v1_errors.items():
        p, m = v1_pred[name], v1_meas[name]
        out.append(f"| {name} | {m['ttft_ms_mean']:.1f} / {p['ttft_ms_mean']:.1f} | {pct(e['ttft_ms_mean'] * 100)} | "
                   f"{m['tpot_ms']:.2f} / {p['tpot_ms']:.2f} | {pct(e['tpot_ms'] * 100)} | {m['e2e_ms_mean']:.0f} / "
                   f"{p['e2e_ms_mean']:.0f} | {pct(e['e2e_ms_mean'] * 100)} | {p['prefix_cache_hit_rate'] * 100:.1f}% |")
    out += ["", "| experiment | TTFT ms | TPOT ms | ITL ms | e2e s |", "|---|---|---|---|---|"]
    for name, p in predicted.items():
        out.append(f"| {name} | {p['ttft_ms_mean']:.1f} | {p['tpot_ms']:.2f} | {p['itl_ms']:.2f} | "
                   f"{p['e2e_s_mean']:.2f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
