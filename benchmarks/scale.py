"""Planning at scale: trillion-parameter MoE models on 256 and 1024 GPUs, and planning time from 8 to 1024 GPUs.

Targets (issues 5 and 11): a 10k-request verification of DeepSeek-V3 on 256 and Kimi-K2 on 1024 H100 and H200
GPUs, at 50 to 400 req/s with prompts of 1-8k tokens and outputs of 256-1k, in under 60 s wall and 2 GB on a
2-core machine, verification of the top plans included, whether or not a plan meets the SLO; and a planning
time that grows gently with the cluster: the curve runs DeepSeek-V3 at 5 and 50 req/s on 1 to 128 nodes of 8
H200s (the problem stays the same, only the cluster and so the plan space grows).

Every case is one ``apex-opt solve --format json`` process, timed end to end (interpreter start, plan space,
CP-SAT search, simulations). Memory is the peak of the summed resident set of the process and its simulation
workers, sampled every 50 ms from /proc (Linux), and the largest single process's ``ru_maxrss``.

    python benchmarks/scale.py                 # the 256/1024-GPU table and the 8..1024 curve (about 25 min)
    python benchmarks/scale.py --only targets  # just the table
    python benchmarks/scale.py --only curve --plot docs/scale_curve.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the issue's grid: each model on its cluster size, H100 and H200, loads from 50 to 400 req/s with prompts of
#: 1-8k tokens and outputs of 256-1k (one load per row; every row a 10k-request verification)
LOADS = ((50, 1024, 256), (100, 2048, 512), (200, 4096, 1024), (400, 8192, 256))
SLO = "ttft=2s,tpot=100ms"
TARGETS = [(model, f"{gpu}x{gpus}") for model, gpus in (("deepseek-v3", 256), ("kimi-k2", 1024))
           for gpu in ("h100", "h200")]
#: the curve's loads must fit its smallest cluster: one node of 8 H200s carries 5 req/s of these within the SLO
CURVE_RATES = (5, 50)
CURVE_NODES = (1, 2, 4, 8, 16, 32, 64, 128)  # x 8 H200 GPUs: 8 .. 1024


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                for child in fh.read().split():
                    out.extend(_tree(int(child)))
    except OSError:
        pass
    return out


def _rss(pid: int) -> int:
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * page
        except OSError:
            pass
    return total


def run(args: list[str]) -> dict:
    """One solve: wall seconds, peak summed RSS (bytes), largest process RSS (bytes) and the JSON result.

    A solve whose plans all miss the SLO in simulation (exit 1, JSON status ``unverified``) or that has no plan
    to simulate (exit 2, explained on stderr) gave an answer too: kept with its time and memory (``outcome``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    # the output goes to files: a JSON result larger than a pipe's buffer would block the solve while we poll
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen([sys.executable, "-m", "apex_opt.cli.main", "solve", "--format", "json", *args],
                                stdout=out_f, stderr=err_f, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _rss(proc.pid))
            time.sleep(0.05)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    wall = time.perf_counter() - start
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    record = {"wall_s": wall, "peak_rss": peak, "largest_rss": max(largest, before * 1024)}
    if out.lstrip().startswith("{"):  # exit 0 (verified) or 1 (no plan met the SLO in simulation)
        data = json.loads(out)
        return {**record, "result": data, "outcome": data["status"]}
    if proc.returncode == 2 and err.startswith("Error: no plan"):  # infeasible before any simulation
        return {**record, "result": None, "outcome": err.splitlines()[0].removeprefix("Error: ")}
    raise SystemExit(f"apex-opt solve {' '.join(args)} failed:\n{err or out}")


def _stats(r: dict) -> dict:
    """Phase times and counts of one run (a run without a verified plan reports them in its explanation)."""
    data = r["result"]
    if data is None:
        return {"space_time_s": math.nan, "search_time_s": math.nan, "simulation_time_s": math.nan,
                "candidates": "-", "simulated": "-", "cut": "-",
                "best": "infeasible (no plan within the estimated bounds)"}
    st = data["stats"]
    best = data["plans"][0]["label"] if data["plans"] else "none met the SLO"
    return {**st, "candidates": data["candidates"], "simulated": data["plans_simulated"],
            "cut": st.get("plans_cut", 0), "best": best}


def _row(name: str, gpus: int, r: dict) -> str:
    st = _stats(r)

    def num(value: float, fmt: str) -> str:  # a phase an infeasible run never reached: "-"
        return format(value, fmt) if math.isfinite(value) else "-"

    return (f"| {name} | {gpus} | {r['wall_s']:.1f} | {r['peak_rss'] / 2**20:.0f} | "
            f"{num(st['space_time_s'], '.1f')} | {num(st['search_time_s'], '.2f')} | "
            f"{num(st['simulation_time_s'], '.1f')} | {st['candidates']} | {st['simulated']} | {st['cut']} | "
            f"{st['best']} |")


HEADER = ("| case | GPUs | wall s | peak MiB | space s | search s | simulation s | candidates | simulated | cut "
          "| best |\n|---|---|---|---|---|---|---|---|---|---|---|")


def _workload(rate: int, prompt: int, output: int) -> list[str]:
    return ["--workload", f"synthetic:rate={rate}rps,requests=10000,prompt={prompt},output={output},seed=0",
            "--slo", SLO, "--quantization", "fp8"]


def targets(engine: str) -> list[dict]:
    print(f"### The grid on {engine} (target: < 60 s, < 2 GB each)\n")
    print(HEADER)
    out = []
    for model, cluster in TARGETS:
        gpus = int(cluster.split("x")[1])
        for rate, prompt, output in LOADS:
            r = run(["--model", model, "--cluster", cluster, "--engine", engine, *_workload(rate, prompt, output)])
            print(_row(f"{model} on {cluster}, {rate} req/s, {prompt}/{output}", gpus, r), flush=True)
            out.append({"model": model, "cluster": cluster, "gpus": gpus, "rate": rate, "prompt": prompt,
                        "output": output, **{k: v for k, v in r.items() if k != "result"}, **_stats(r)})
    return out


def curve(model: str, engine: str) -> list[dict]:
    out = []
    for rate in CURVE_RATES:
        print(f"\n### Planning time against cluster size ({model}, H200, 8 GPUs a node, {engine}, {rate} req/s, "
              "1024/256 tokens)\n")
        print(HEADER)
        for nodes in CURVE_NODES:
            r = run(["--model", model, "--gpu", "h200-sxm-141gb", "--nodes", str(nodes), "--engine", engine,
                     *_workload(rate, 1024, 256)])
            print(_row(f"{model}, {nodes} node(s), {rate} req/s", nodes * 8, r), flush=True)
            out.append({"rate": rate, "gpus": nodes * 8, "wall_s": r["wall_s"], "peak_rss": r["peak_rss"],
                        "outcome": r["outcome"], **_stats(r)})
    return out


def plot(points: list[dict], path: str, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for rate, marker in zip(CURVE_RATES, "os"):
        pts = [p for p in points if p["rate"] == rate]
        gpus = [p["gpus"] for p in pts]
        ax.plot(gpus, [p["wall_s"] for p in pts], marker + "-", label=f"wall, {rate} req/s")
        ax.plot(gpus, [p["space_time_s"] for p in pts], marker + ":", label=f"plan space, {rate} req/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("GPUs (H200, 8 per node)")
    ax.set_ylabel("seconds")
    ax.set_title(f"apex-opt solve, {model}, 10k requests")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("targets", "curve"), help="run one part only")
    parser.add_argument("--curve-model", default="deepseek-v3")
    parser.add_argument("--engine", default="vllm-v1", help="engine of every solve (default: vllm-v1)")
    parser.add_argument("--plot", help="write the curve as a PNG here")
    parser.add_argument("--json", help="write every measurement as JSON here")
    args = parser.parse_args()
    record: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                               f"Python {platform.python_version()}, {platform.system()} {platform.release()}"}
    if args.only in (None, "targets"):
        record["targets"] = targets(args.engine)
    if args.only in (None, "curve"):
        record["curve"] = curve(args.curve_model, args.engine)
        if args.plot:
            plot(record["curve"], args.plot, args.curve_model)
    print(f"\n{record['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
