"""Planner speed: wall time of ``apex-opt solve`` end to end (process start, search and simulations included).

Targets (docs/planner.md): llama-3.1-70b on 8x H100 with the lmsys trace under 5 s; a 70B model on 8 nodes x 8
GPUs (cluster h100x64) under 15 s, on a 2-core machine.

    python benchmarks/planner_speed.py            # 3 runs of each case; prints a markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CASES = [
    ("70B, 8x H100, lmsys (the default example)", []),
    ("70B, 8x H100, lmsys, --use-all-gpus", ["--use-all-gpus"]),
    ("70B, 64x H100 (h100x64), lmsys", ["--cluster", "h100x64"]),
    ("70B, 64x H100 (h100x64), lmsys, --use-all-gpus", ["--cluster", "h100x64", "--use-all-gpus"]),
    ("mixtral-8x7b, 16x H100, summarization", ["--model", "mixtral-8x7b", "--cluster", "h100x16",
                                               "--workload", "summarization"]),
]


def run(args: list[str]) -> tuple[float, dict]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "apex_opt.cli.main", "solve", "--format", "json", *args],
                         capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"apex-opt solve {' '.join(args)} failed:\n{out.stderr or out.stdout}")
    return wall, json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"| case | wall s (median of {args.repeat}) | space s | search s | simulation s | candidates | simulated "
          "| best |")
    print("|---|---|---|---|---|---|---|---|")
    for name, extra in CASES:
        walls = []
        data: dict = {}
        for _ in range(args.repeat):
            wall, data = run(extra)
            walls.append(wall)
        st = data["stats"]
        best = data["plans"][0]["label"] if data["plans"] else "-"
        print(f"| {name} | {statistics.median(walls):.2f} | {st['space_time_s']:.2f} | {st['search_time_s']:.2f} | "
              f"{st['simulation_time_s']:.2f} | {data['candidates']} | {data['plans_simulated']} | {best} |",
              flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}")


if __name__ == "__main__":
    main()
