"""Golden results of a few small solves: a refactor that changes what the planner returns fails here.

Each case is a small but different problem (a dense model on vLLM 0.6, vLLM V1 with prefix caching on a
shared-prefix workload, an MoE model on SGLang, a case that disaggregation wins, a mixed H100 + A100 cluster, a
user constraint). ``tests/golden/<case>.json`` holds its ranked result: status, plan labels, sources, verified
flags and the key simulated metrics.

Precision: every float is stored to 7 significant digits and compared with a relative tolerance of 1e-6
(:data:`REL_TOL`). The code is deterministic (fixed seeds, a simulator with a tie-broken event heap, results that
do not depend on ``workers``), so one machine reproduces the numbers bit for bit; what may still move them is the
order of floating-point sums under another numpy or CPU, about 1e-12 relative. A change in behaviour (one token
scheduled in another step, one more preemption) moves a metric of these runs by far more than 1e-6. Counts,
labels and flags are compared exactly.

To regenerate the files on purpose (after a change meant to alter results), run::

    python -m pytest tests/test_golden_solves.py --update-golden

and review ``tests/golden/*.json`` in the diff before committing it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import apex_opt as ax

GOLDEN = Path(__file__).resolve().parent / "golden"
#: relative tolerance of a float against its golden value (module docstring)
REL_TOL = 1e-6
#: significant digits a float is stored with (its rounding error, 5e-7 relative, stays under REL_TOL)
DIGITS = 7
#: simulated metrics kept per plan (those a summary lacks are left out)
METRICS = (
    "num_requests", "num_completed", "num_rejected", "num_preemptions", "output_tokens", "prompt_tokens",
    "makespan_s", "ttft_mean_s", "ttft_p90_s", "tpot_mean_s", "tpot_p90_s", "e2e_mean_s", "e2e_p90_s",
    "throughput_output_tok_s", "goodput_req_s", "goodput_per_gpu_req_s", "slo_attainment", "slo_met",
    "batch_size_mean", "kv_util_max", "energy_j", "cost_per_mtok_usd", "prefix_cache_hit_rate",
    "num_kv_transfers",
)


@ax.constraint("tp-at-least-2")
def tp_at_least_2(v: ax.PlanVars, s: ax.Specs) -> Any:
    """Every replica spans at least two GPUs."""
    return v.tp >= 2


#: case name -> (load_specs keywords, solve keywords); every solve also gets workers=1 (results do not depend on it)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "dense-h100-vllm06": (
        {"model": "llama-3.1-8b", "gpu": "h100-sxm-80gb", "nodes": 1, "gpus_per_node": 4, "engine": "vllm-0.6",
         "workload": "synthetic:rate=4rps,requests=60,prompt=512,output=64,seed=1", "slo": "ttft=300ms,tpot=30ms"},
        {"top_k": 3, "disaggregation": "off"},
    ),
    "prefix-vllm-v1": (
        {"model": "llama-3.1-8b", "gpu": "h100-sxm-80gb", "nodes": 1, "gpus_per_node": 2, "engine": "vllm-v1",
         "workload": "synthetic:rate=8rps,requests=80,shared_prefix=4x5,system_len=1024,question_len=128,"
                     "output=64,seed=2",
         "slo": "ttft=300ms,tpot=30ms"},
        {"top_k": 2, "disaggregation": "off", "prefix_caching": True},
    ),
    "moe-sglang": (
        {"model": "qwen3-30b-a3b", "gpu": "h100-sxm-80gb", "nodes": 1, "gpus_per_node": 4, "engine": "sglang-0.4",
         "workload": "synthetic:rate=4rps,requests=60,prompt=512,output=64,seed=3", "slo": "ttft=500ms,tpot=40ms"},
        {"top_k": 2, "disaggregation": "off"},
    ),
    "disaggregated-wins": (
        {"model": "llama-3.1-8b", "gpu": "h100-sxm-80gb", "nodes": 1, "gpus_per_node": 4,
         "workload": "synthetic:rate=6rps,requests=150,prompt=2048,output=96,seed=4", "slo": "ttft=500ms,tpot=12ms"},
        {"top_k": 2, "disaggregation": "auto"},
    ),
    "mixed-h100x8-a100x8": (
        {"model": "llama-3.1-8b", "cluster": "h100x8-a100x8",
         "workload": "synthetic:rate=20rps,requests=120,prompt=1024,output=128,seed=5", "slo": "ttft=500ms,tpot=40ms"},
        {"top_k": 1, "use_all_gpus": True, "disaggregation": "off"},
    ),
    "user-constraint": (
        {"model": "llama-3.1-8b", "gpu": "h100-sxm-80gb", "nodes": 1, "gpus_per_node": 4,
         "workload": "synthetic:rate=4rps,requests=60,prompt=512,output=64,seed=1", "slo": "ttft=300ms,tpot=30ms"},
        {"top_k": 2, "disaggregation": "off", "constraints": [tp_at_least_2], "objective": "min-tpot"},
    ),
}


def _rounded(value: Any) -> Any:
    """``value`` as stored in a golden file: floats to :data:`DIGITS` significant digits, numpy scalars as Python."""
    if hasattr(value, "item") and not isinstance(value, (list, dict)):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{DIGITS}g}")
    return value


def _inputs(specs_kw: dict[str, Any], solve_kw: dict[str, Any]) -> dict[str, Any]:
    shown = {k: ([c.label for c in v] if k == "constraints" else v) for k, v in solve_kw.items()}
    return {"load_specs": specs_kw, "solve": {**shown, "workers": 1}}


def record(name: str) -> dict[str, Any]:
    """The golden record of case ``name``, computed by the current code."""
    specs_kw, solve_kw = CASES[name]
    result = ax.solve(ax.load_specs(**specs_kw), workers=1, **solve_kw)
    return {
        "case": name,
        "precision": f"floats to {DIGITS} significant digits, compared with relative tolerance {REL_TOL:g}",
        "inputs": _inputs(specs_kw, solve_kw),
        "status": result.status,
        "plans": [{
            "rank": p.rank,
            "label": p.plan.label,
            "source": p.source,
            "verified": p.verified,
            "simulated": {k: _rounded(p.simulated[k]) for k in METRICS if p.simulated and k in p.simulated},
        } for p in result.plans],
        "rejected": [p.plan.label for p in result.rejected],
    }


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where ``actual`` departs from ``expected``: floats beyond :data:`REL_TOL`, anything else exactly."""
    where = path or "(top)"
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{path}.{k}: missing" for k in expected if k not in actual]
        out += [f"{path}.{k}: not in the golden file" for k in actual if k not in expected]
        for k in expected.keys() & actual.keys():
            out += differences(expected[k], actual[k], f"{path}.{k}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} items, golden {len(expected)}: {actual!r} vs {expected!r}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in differences(e, a, f"{path}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, float) and not isinstance(actual, bool):
        if (math.isnan(expected) and math.isnan(actual)) or math.isclose(expected, actual, rel_tol=REL_TOL):
            return []
        return [f"{where}: {actual!r}, golden {expected!r}"]
    if type(expected) is not type(actual) or expected != actual:
        return [f"{where}: {actual!r}, golden {expected!r}"]
    return []


@pytest.mark.parametrize("name", list(CASES))
def test_a_solve_returns_its_golden_ranked_result(name: str, update_golden: bool) -> None:
    path = GOLDEN / f"{name}.json"
    actual = record(name)
    if update_golden:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(actual, indent=1) + "\n")
        return
    assert path.is_file(), f"{path} is missing; write it with: python -m pytest {__file__} --update-golden"
    diffs = differences(json.loads(path.read_text()), actual)
    assert not diffs, (f"{name}: the solve no longer returns its golden result ({path.name}):\n  "
                       + "\n  ".join(sorted(diffs))
                       + "\nIf the change is intended, rewrite with: python -m pytest tests/test_golden_solves.py "
                         "--update-golden")


def test_the_comparison_tolerates_rounding_and_catches_a_changed_value() -> None:
    golden = {"plans": [{"label": "dp1 tp1 pp1", "simulated": {"ttft_mean_s": 0.03601373, "num_completed": 60}}]}
    same = {"plans": [{"label": "dp1 tp1 pp1", "simulated": {"ttft_mean_s": 0.036013733027, "num_completed": 60}}]}
    assert differences(golden, same) == []
    moved = {"plans": [{"label": "dp1 tp1 pp1", "simulated": {"ttft_mean_s": 0.0360138, "num_completed": 60}}]}
    assert differences(golden, moved) == [".plans[0].simulated.ttft_mean_s: 0.0360138, golden 0.03601373"]
    assert differences(golden, {"plans": []})[0].startswith(".plans: 0 items")
