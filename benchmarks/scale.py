"""Planning at scale: trillion-parameter MoE models on 256 and 1024 GPUs, and planning time from 8 to 1024 GPUs.

Target (issue 5): plan kimi-k2 and deepseek-v3 on 256 and 1024 H100/H200 GPUs with a 10k-request synthetic
workload in under 60 s wall and under 2 GB of memory on a 2-core machine, verification of the top plans
included; the planning time must grow gently with the cluster size. The curve runs the same model at 5 req/s,
a load one node can carry, on 1 to 128 nodes: the problem is the same, only the cluster (and so the plan space)
grows.

Every case is one ``apex-opt solve --format json`` process, timed end to end (interpreter start, plan space,
CP-SAT search, simulations). Memory is the peak of the summed resident set of the process and its simulation
workers, sampled every 50 ms from /proc (Linux), and the largest single process's ``ru_maxrss``.

    python benchmarks/scale.py                 # the 256/1024-GPU table and the 8..1024 curve (about 8 min)
    python benchmarks/scale.py --only targets  # just the table
    python benchmarks/scale.py --only curve --plot docs/scale_curve.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

WORKLOAD = "synthetic:rate=50rps,requests=10000,prompt=1024,output=256,seed=0"
#: the curve's load must fit its smallest cluster (one node of 8 H200s cannot carry 50 req/s within the SLO)
CURVE_WORKLOAD = "synthetic:rate=5rps,requests=10000,prompt=1024,output=256,seed=0"
SLO = "ttft=2s,tpot=100ms"
COMMON = ["--workload", WORKLOAD, "--slo", SLO, "--quantization", "fp8"]
CURVE = ["--workload", CURVE_WORKLOAD, "--slo", SLO, "--quantization", "fp8"]
TARGETS = [(model, cluster) for model in ("deepseek-v3", "kimi-k2")
           for cluster in ("h100x256", "h200x256", "h100x1024", "h200x1024")]
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
    """One solve: wall seconds, peak summed RSS (bytes), largest process RSS (bytes) and the JSON result."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "apex_opt.cli.main", "solve", "--format", "json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _rss(proc.pid))
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"apex-opt solve {' '.join(args)} failed:\n{err or out}")
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"wall_s": wall, "peak_rss": peak, "largest_rss": max(largest, before * 1024), "result": json.loads(out)}


def _row(name: str, gpus: int, r: dict) -> str:
    data = r["result"]
    st = data["stats"]
    best = data["plans"][0]["label"] if data["plans"] else "-"
    return (f"| {name} | {gpus} | {r['wall_s']:.1f} | {r['peak_rss'] / 2**20:.0f} | {st['space_time_s']:.1f} | "
            f"{st['search_time_s']:.2f} | {st['simulation_time_s']:.1f} | {data['candidates']} | "
            f"{data['plans_simulated']} | {best} |")


HEADER = ("| case | GPUs | wall s | peak MiB | space s | search s | simulation s | candidates | simulated | best |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def targets() -> list[dict]:
    print("### 256 and 1024 GPUs (target: < 60 s, < 2 GB)\n")
    print(HEADER)
    out = []
    for model, cluster in TARGETS:
        r = run(["--model", model, "--cluster", cluster, *COMMON])
        gpus = int(cluster.split("x")[1])
        print(_row(f"{model} on {cluster}", gpus, r), flush=True)
        out.append({"model": model, "cluster": cluster, "gpus": gpus, **{k: v for k, v in r.items() if k != "result"}})
    return out


def curve(model: str) -> list[dict]:
    print(f"\n### Planning time against cluster size ({model}, H200, 8 GPUs a node, {CURVE_WORKLOAD})\n")
    print(HEADER)
    out = []
    for nodes in CURVE_NODES:
        r = run(["--model", model, "--gpu", "h200-sxm-141gb", "--nodes", str(nodes), *CURVE])
        print(_row(f"{model}, {nodes} node(s)", nodes * 8, r), flush=True)
        st = r["result"]["stats"]
        out.append({"gpus": nodes * 8, "wall_s": r["wall_s"], "space_s": st["space_time_s"],
                    "search_s": st["search_time_s"], "simulation_s": st["simulation_time_s"],
                    "candidates": r["result"]["candidates"], "peak_rss": r["peak_rss"]})
    return out


def plot(points: list[dict], path: str, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpus = [p["gpus"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(gpus, [p["wall_s"] for p in points], "o-", label="wall (end to end)")
    ax.plot(gpus, [p["space_s"] for p in points], "s--", label="plan space (cost model)")
    ax.plot(gpus, [p["simulation_s"] for p in points], "^--", label="verification (simulation)")
    ax.plot(gpus, [p["search_s"] for p in points], "v--", label="CP-SAT search")
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
    parser.add_argument("--plot", help="write the curve as a PNG here")
    parser.add_argument("--json", help="write every measurement as JSON here")
    args = parser.parse_args()
    record: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                               f"Python {platform.python_version()}, {platform.system()} {platform.release()}"}
    if args.only in (None, "targets"):
        record["targets"] = targets()
    if args.only in (None, "curve"):
        record["curve"] = curve(args.curve_model)
        if args.plot:
            plot(record["curve"], args.plot, args.curve_model)
    print(f"\n{record['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
