"""Simulator speed: wall time and peak memory of representative runs (run by hand; results go to docs/).

    python benchmarks/sim_speed.py            # every case, each in a fresh process (clean peak RSS)
    python benchmarks/sim_speed.py --case creation-v0

Targets (2-core machine, ``LinearStageCost``): the 512-request creation trace (~586k output tokens, mean output
~1130) through one replica in < 1 s; a 100k-request synthetic trace in < 60 s and < 1 GB.

The creation trace is the project's copy (specs/workloads/traces/llama/creation_05.jsonl). The ``*-real`` cases
use the real cost model (llama-3.1-70b on 8x H100, vLLM 0.6, through ``apex_opt.simulate``) instead of the linear
test double, so they include building the cost tables.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from apex_opt.sim import LinearStageCost, ReplicaSpec, SchedulerConfig, StaticReplicaCost, run_simulation

CREATION = REPO / "specs" / "workloads" / "traces" / "llama" / "creation_05.jsonl"

# roughly Llama-3.1-70B on 8 x H100: ~12 ms per decode step at small batch, 20 us per token, 10 ns per context
STAGE = LinearStageCost(a=0.012, b=2e-5, c=1e-8, d=1e-9, e=1e-5)


def creation_trace() -> tuple[SimpleNamespace, str]:
    if CREATION.is_file():
        rows = [json.loads(line) for line in CREATION.read_text().splitlines() if line.strip()]
        return SimpleNamespace(
            arrival_s=np.array([r["StartTimeOffset"] / 1e9 for r in rows]),
            prompt_tokens=np.array([r["ContextTokens"] for r in rows]),
            output_tokens=np.array([r["GeneratedTokens"] for r in rows]),
            request_ids=tuple(str(r["RequestID"]) for r in rows)), str(CREATION.name)
    return synthetic(512, 0.5, prompt=300, output=1130, seed=5), "synthetic stand-in (trace not found)"


def synthetic(n: int, rate: float, *, prompt: float, output: float, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate, n))
    arrival -= arrival[0]
    p = np.maximum(1, rng.lognormal(np.log(prompt) - 0.125, 0.5, n)).astype(np.int64)
    o = np.maximum(1, rng.lognormal(np.log(output) - 0.18, 0.6, n)).astype(np.int64)
    return SimpleNamespace(arrival_s=arrival, prompt_tokens=p, output_tokens=o,
                           request_ids=tuple(f"s{i}" for i in range(n)))


def v0(blocks: int = 20_000, max_model_len: int = 131072, pp: int = 1) -> SchedulerConfig:
    return SchedulerConfig.vllm_v0(num_kv_blocks=blocks, max_model_len=max_model_len, pp=pp)


def one(cfg: SchedulerConfig, stages=(STAGE,)) -> list[ReplicaSpec]:
    return [ReplicaSpec(StaticReplicaCost(tuple(stages)), cfg)]


def real(workload_ref: str, **plan: object):  # type: ignore[no-untyped-def]
    """A case through apex_opt.simulate with the real cost model (llama-3.1-70b, 8x H100, vLLM 0.6)."""
    import apex_opt as ax

    specs = ax.load_specs("llama-3.1-70b", "h100x8", workload=workload_ref, slo="ttft=200ms,tpot=50ms")
    return specs, ax.Plan(gpu="h100-sxm-80gb", **plan)


def cases() -> dict[str, tuple]:
    """name -> (workload factory, replicas factory, run kwargs, repeats)."""
    big = lambda: synthetic(100_000, 10.0, prompt=500, output=300, seed=1)
    return {
        "creation-v0": (creation_trace, lambda: one(v0()), {}, 5),
        "creation-v0-noskip": (creation_trace, lambda: one(v0()), {"skip_ahead": False}, 1),
        "creation-v0-nochunk": (creation_trace, lambda: one(v0(max_model_len=24272)), {}, 5),
        "creation-v1": (creation_trace, lambda: one(SchedulerConfig.vllm_v1(num_kv_blocks=20_000,
                                                                            max_model_len=131072)), {}, 5),
        "creation-sglang": (creation_trace, lambda: one(SchedulerConfig.sglang(num_kv_tokens=320_000,
                                                                               max_model_len=65536)), {}, 5),
        "creation-v0-pp2": (creation_trace, lambda: one(v0(pp=2), (STAGE, STAGE)), {}, 1),
        "creation-v0-kv-pressure": (creation_trace, lambda: one(v0(blocks=400)), {}, 3),
        "synthetic100k-v0": (big, lambda: one(v0(blocks=40_000)), {}, 1),
        "synthetic100k-v1": (big, lambda: one(SchedulerConfig.vllm_v1(num_kv_blocks=40_000,
                                                                      max_model_len=131072)), {}, 1),
        "synthetic100k-sglang": (big, lambda: one(SchedulerConfig.sglang(num_kv_tokens=640_000,
                                                                         max_model_len=65536)), {}, 1),
        "synthetic100k-v0-overload": (lambda: synthetic(100_000, 25.0, prompt=500, output=300, seed=1),
                                      lambda: one(v0(blocks=4_000)), {}, 1),
        "synthetic100k-v0-dp4": (lambda: synthetic(100_000, 40.0, prompt=500, output=300, seed=1),
                                 lambda: [one(v0(blocks=40_000))[0]] * 4, {"router": "least-loaded"}, 1),
        "creation-real-tp8": (lambda: real("creation", tp=8), None, {}, 5),
        "lmsys-real-tp8": (lambda: real("lmsys", tp=8), None, {}, 5),
        "synthetic100k-real-dp2-tp4": (
            lambda: real("synthetic:rate=8rps,requests=100000,prompt=500,output=300,seed=1", tp=4, dp=2),
            None, {}, 1),
    }


def run_real(name: str, make, repeats: int) -> dict:  # type: ignore[no-untyped-def]
    import apex_opt as ax

    times = []
    res = None
    for _ in range(repeats):
        t = time.perf_counter()
        specs, plan = make()  # builds the cost tables anew each time: part of the measured wall time
        res = ax.simulate(specs, plan)
        times.append(time.perf_counter() - t)
    assert res is not None
    w = specs.workload
    return {
        "case": name, "source": w.name, "requests": len(w), "output_tokens": int(np.sum(w.output_tokens)),
        "best_s": min(times), "median_s": float(np.median(times)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "completed": res["num_completed"], "preemptions": res["num_preemptions"],
        "batch_size_mean": round(res["batch_size_mean"], 1), "e2e_mean_s": round(res["e2e_mean_s"], 2),
    }


def run_case(name: str) -> dict:
    make_w, make_r, kwargs, repeats = cases()[name]
    if make_r is None:
        return run_real(name, make_w, repeats)
    w = make_w()
    source = w[1] if isinstance(w, tuple) else f"synthetic {len(w.arrival_s)} requests"
    w = w[0] if isinstance(w, tuple) else w
    reps = make_r()
    times = []
    res = None
    for _ in range(repeats):
        t = time.perf_counter()
        res = run_simulation(reps, w, **kwargs)
        times.append(time.perf_counter() - t)
    assert res is not None
    return {
        "case": name, "source": source, "requests": len(w.arrival_s), "output_tokens": int(np.sum(w.output_tokens)),
        "best_s": min(times), "median_s": float(np.median(times)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "completed": res["num_completed"], "preemptions": res["num_preemptions"],
        "batch_size_mean": round(res["batch_size_mean"], 1), "e2e_mean_s": round(res["e2e_mean_s"], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=sorted(cases()), help="run one case in this process and print JSON")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    print(f"{'case':28} {'requests':>8} {'out tokens':>11} {'best s':>8} {'peak MB':>8} {'bs mean':>8} "
          f"{'preempt':>8}")
    for name in cases():
        out = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True,
                             check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{name:28} {r['requests']:>8} {r['output_tokens']:>11} {r['best_s']:>8.3f} {r['peak_rss_mb']:>8.0f} "
              f"{r['batch_size_mean']:>8} {r['preemptions']:>8}")
    print("source of the creation cases:", json.loads(subprocess.run(
        [sys.executable, __file__, "--case", "creation-v0"], capture_output=True, text=True,
        check=True).stdout.strip().splitlines()[-1])["source"])


if __name__ == "__main__":
    main()
