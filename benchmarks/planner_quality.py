"""Planner quality: does CP-SAT + verification find the plan the exhaustive oracle finds, simulating far fewer?

For each case of a grid (models x cluster sizes x traces x SLO levels) it runs

* ``cpsat`` (the default strategy): its verified best and how many plans it simulated;
* ``exhaustive`` (the oracle, how APEX searches): simulates every plan that fits, keeps the best;
* the three ``heuristic`` rules (max TP in a node then DP; fewest GPUs that fit; TP over all GPUs),

all with the same simulator, and reports per case whether cpsat's best equals the oracle's (same simulated
objective within 1%), the share of feasible plans cpsat simulated, and the speedup of cpsat's plan over each
heuristic (ratio of simulated goodput per GPU, as APEX reports its up-to-3.37x).

Simulations are cached on disk (``--cache``) keyed by plan and workload, and the SLO statistics are recomputed
per SLO level from the per-request records, so the three SLO levels share one simulation of each plan.

To keep the grid runnable on a laptop the workloads are cut to their first ``--max-requests`` requests (default
200), pipelines to ``--max-pp`` stages (default 4), and the engine-limit menu to max_num_seqs 256 with the
engine's default or an 8192-token chunked-prefill budget; both solvers search the same space.

    python benchmarks/planner_quality.py                  # the full grid (81 cases)
    python benchmarks/planner_quality.py --quick          # 1 model x 1 cluster x 3 traces x 3 SLOs
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import hashlib
import json
import math
import os
import pickle
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import apex_opt
from apex_opt import planner
from apex_opt.errors import InfeasibleError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
for _name in planner.__all__:  # until the facade re-exports the planner
    if not hasattr(apex_opt, _name):
        setattr(apex_opt, _name, getattr(planner, _name))

from solvers import heuristic

MODELS = ("llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b")
CLUSTERS = ((1, 4), (1, 8), (2, 8))  # (nodes, GPUs per node) of H100-SXM-80GB
TRACES = ("lmsys", "creation", "summarization")
LEVELS = {"tight": 1.5, "medium": 3.0, "loose": 6.0}  # SLO = level x the best predicted TPOT / TTFT


def _cache_dir() -> Path:
    """Where simulations are cached for the run: APEX_OPT_BENCH_CACHE if set (a folder of your own: pickles are
    loaded from it), else a private temporary folder (mode 0700, removed at exit), never a predictable shared path."""
    given = os.environ.get("APEX_OPT_BENCH_CACHE")
    if given:
        return Path(given)
    folder = tempfile.mkdtemp(prefix="apex_opt_planner_bench_")
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
    return Path(folder)


CACHE = _cache_dir()


# ------------------------------------------------------------------------------------------- cached simulator
def _key(specs: apex_opt.Specs, plan: apex_opt.Plan, seed: int) -> str:
    w = specs.workload
    raw = json.dumps([specs.model.name, specs.cluster.name, specs.engine.name, w.name, len(w),
                      float(w.arrival_s[-1]), plan.model_dump(mode="json"), seed], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _slo_fields(cached: dict, slo: apex_opt.SLO) -> dict:
    """The SLO part of a summary, recomputed from per-request records (as apex_opt.sim.metrics does)."""
    ttft, tpot, e2e, done = cached["ttft"], cached["tpot"], cached["e2e"], cached["done"]
    ok = done.copy()
    if slo.ttft is not None:
        ok &= ttft <= slo.ttft
    if slo.tpot is not None:
        ok &= np.where(np.isfinite(tpot), tpot, 0.0) <= slo.tpot
    if slo.e2e is not None:
        ok &= e2e <= slo.e2e
    n = len(done)
    out = {"slo_attainment": float(ok.sum()) / n, "goodput_req_s": float(ok.sum()) / cached["makespan"]}
    met = out["slo_attainment"] >= slo.attainment
    for metric, values in (("ttft", ttft[done]), ("tpot", tpot[done & np.isfinite(tpot)]), ("e2e", e2e[done])):
        bound, stat = getattr(slo, metric), getattr(slo, f"{metric}_stat")
        value = math.nan
        if bound is not None and values.size:
            value = float(values.mean()) if stat == "mean" else float(np.percentile(values, float(stat[1:])))
            met = met and value <= bound
        out[f"slo_{metric}_value_s"] = value
    out["slo_met"] = bool(met)
    return out


def cached_simulate(specs: apex_opt.Specs, plan: apex_opt.Plan, *, seed: int = 0) -> dict:
    """``apex_opt.simulate`` with an on-disk cache shared by every SLO level of a case."""
    path = CACHE / f"{_key(specs, plan, seed)}.pkl"
    if path.is_file():
        cached = pickle.loads(path.read_bytes())
    else:
        result = apex_opt.simulate(dataclasses.replace(specs, slo=None), plan, seed=seed)
        rec = result.records
        cached = {"summary": result.summary(), "ttft": np.asarray(rec.ttft_s), "tpot": np.asarray(rec.tpot_s),
                  "e2e": np.asarray(rec.e2e_s), "done": np.asarray(rec.completed, dtype=bool),
                  "makespan": float(result.summary()["makespan_s"])}
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(cached))
        tmp.replace(path)
    return {**cached["summary"], **_slo_fields(cached, specs.slo)}


# ------------------------------------------------------------------------------------------- one case
def slo_levels(specs: apex_opt.Specs, options: planner.SearchOptions) -> dict[str, str]:
    """SLOs at 1.5x, 3x and 6x the best TPOT and TTFT the cost model predicts for any plan that fits."""
    from apex_opt.planner.space import build_space

    space = build_space(dataclasses.replace(specs, slo=apex_opt.parse_slo("tpot=10s")), options)
    fits = [c.est for c in space.candidates if c.est is not None and c.est.fits]
    tpot = min(e.tpot_s for e in fits)
    ttft = min(e.ttft_s for e in fits)
    return {name: f"ttft={max(ttft * f, 0.02) * 1e3:.0f}ms,tpot={tpot * f * 1e3:.1f}ms" for name, f in LEVELS.items()}


def goodput_per_gpu(entry) -> float:
    return entry.simulated["goodput_req_s"] / entry.plan.gpus if entry and entry.simulated else math.nan


def run_case(specs: apex_opt.Specs, options: planner.SearchOptions, workers: int, top_k: int) -> dict:
    common = {"options": options, "workers": workers, "simulator": cached_simulate}
    row: dict = {}
    start = time.perf_counter()
    try:
        fast = planner.solve(specs, top_k=top_k, **common)
        row["cpsat_best"] = fast.best.plan.label if fast.best else None
        row["cpsat_value"] = goodput_per_gpu(fast.best)
        row["cpsat_simulated"] = fast.stats.plans_simulated
    except InfeasibleError as exc:
        row.update(cpsat_best=None, cpsat_value=math.nan, cpsat_simulated=0, cpsat_error=exc.conflict)
    row["cpsat_s"] = time.perf_counter() - start
    start = time.perf_counter()
    try:
        oracle = planner.solve(specs, top_k=1, solver="exhaustive", **common)
        row["oracle_best"] = oracle.best.plan.label if oracle.best else None
        row["oracle_value"] = goodput_per_gpu(oracle.best)
        row["feasible"] = oracle.stats.feasible_plans
    except InfeasibleError:
        row.update(oracle_best=None, oracle_value=math.nan, feasible=0)
    row["oracle_s"] = time.perf_counter() - start
    a, b = row["cpsat_value"], row["oracle_value"]
    both_none = row["cpsat_best"] is None and row["oracle_best"] is None
    row["agree"] = both_none or (math.isfinite(a) and math.isfinite(b) and a >= b * 0.99)
    row["share"] = row["cpsat_simulated"] / row["feasible"] if row["feasible"] else math.nan
    problem = planner.Problem(specs, **common)
    try:
        picked = heuristic.proposals(problem)
        rules = {k: p for k, p in picked.items() if p is not None}
        results = problem.verify(list(rules.values())) if rules else []
        for (rule, _), entry in zip(rules.items(), results):
            h = goodput_per_gpu(entry)
            row[f"h_{rule}"] = entry.plan.label
            row[f"x_{rule}"] = a / h if h > 0 and math.isfinite(a) else math.nan
    finally:
        problem.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one model and cluster only")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--traces", nargs="*", default=list(TRACES))
    parser.add_argument("--max-requests", type=int, default=200)
    parser.add_argument("--max-pp", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write every case here")
    args = parser.parse_args()
    models = args.models[:1] if args.quick else args.models
    clusters = CLUSTERS[1:2] if args.quick else CLUSTERS
    # aggregated plans only: the exhaustive oracle enumerates single plans (as APEX does)
    options = planner.SearchOptions(max_pp=args.max_pp, max_num_seqs=(256,), budgets=(None, 8192),
                                    disaggregation="off")
    rows = []
    t0 = time.perf_counter()
    print("| model | GPUs | trace | SLO | cpsat best | oracle best | agree | simulated / feasible | "
          "x max-tp-in-node | x fewest-gpus | x tp-all-gpus | cpsat s | oracle s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in models:
        for nodes, per in clusters:
            for trace in args.traces:
                base = apex_opt.load_specs(model, gpu="h100-sxm-80gb", nodes=nodes, gpus_per_node=per,
                                           workload=trace)
                base = dataclasses.replace(base, workload=base.workload.head(args.max_requests))
                for level, slo in slo_levels(base, options).items():
                    specs = dataclasses.replace(base, slo=apex_opt.parse_slo(slo))
                    row = run_case(specs, options, args.workers, args.top_k)
                    row.update(model=model, gpus=nodes * per, trace=trace, level=level, slo=slo)
                    rows.append(row)

                    def x(rule: str, r: dict = row) -> str:
                        v = r.get(f"x_{rule}", math.nan)
                        return f"{v:.2f}" if isinstance(v, float) and math.isfinite(v) else "-"

                    print(f"| {model} | {nodes * per} | {trace} | {level} ({slo}) | {row['cpsat_best']} | "
                          f"{row['oracle_best']} | {'yes' if row['agree'] else 'NO'} | {row['cpsat_simulated']} / "
                          f"{row['feasible']} | {x('max-tp-in-node')} | {x('fewest-gpus')} | {x('tp-all-gpus')} | "
                          f"{row['cpsat_s']:.1f} | {row['oracle_s']:.1f} |", flush=True)
    agree = sum(r["agree"] for r in rows)
    shares = [r["share"] for r in rows if isinstance(r["share"], float) and math.isfinite(r["share"])]
    print()
    print(f"cases: {len(rows)}; cpsat best = oracle best (within 1%): {agree}/{len(rows)} "
          f"({agree / max(len(rows), 1):.0%})")
    if shares:
        print(f"share of feasible plans cpsat simulated: median {statistics.median(shares):.1%}, "
              f"max {max(shares):.1%}, cases <= 20%: {sum(s <= 0.2 for s in shares)}/{len(shares)}")
    for rule in heuristic.RULES:
        xs = [r[f"x_{rule}"] for r in rows if math.isfinite(r.get(f"x_{rule}", math.nan))]
        if xs:
            geo = math.exp(sum(math.log(v) for v in xs) / len(xs))
            print(f"speedup over {rule}: max {max(xs):.2f}x, geometric mean {geo:.2f}x over {len(xs)} cases")
    print(f"wall time {time.perf_counter() - t0:.0f} s on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
