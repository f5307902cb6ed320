"""``apex-opt solve``: exit codes, pinned error text, JSON keys, constraint files and packs."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import apex_opt
from apex_opt import planner
from apex_opt.cli.main import cli

REPO = Path(__file__).resolve().parent.parent
FAST = ["--max-requests", "120", "--workers", "1"]


@pytest.fixture(autouse=True)
def facade(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until apex_opt/__init__.py re-exports the planner, make `import apex_opt as ax` see it (no-op after)."""
    for name in planner.__all__:
        if not hasattr(apex_opt, name):
            monkeypatch.setattr(apex_opt, name, getattr(planner, name), raising=False)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["solve", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_no_options_runs_the_built_in_example_and_prints_a_verified_plan():
    code, out = run()
    assert code == 0, out
    assert "llama-3.1-70b on 8 x h100-sxm-80gb, lmsys (1024 requests" in out
    assert "Why:" in out and "meets the SLO" in out
    assert "vllm serve meta-llama/Llama-3.1-70B-Instruct --tensor-parallel-size" in out
    assert "python -m sglang.launch_server --model-path meta-llama/Llama-3.1-70B-Instruct --tp" in out
    assert re.search(r"\d+ simulated \(\d+ verified, \d+ cut\)", out)


def test_an_infeasible_problem_exits_2_and_lists_the_conflicting_constraints():
    code, out = run("--slo", "ttft=200ms,tpot=1ms", *FAST)
    assert code == 2
    lines = out.splitlines()
    assert lines[:3] == [
        "Error: no plan for llama-3.1-70b on 8 x h100-sxm-80gb satisfies all constraints.",
        "This constraint alone rules out every plan:",
        "  [slo.tpot]        TPOT <= 1ms at the workload's expected batch",
    ]
    assert lines[3].startswith("Try relaxing it (e.g. --slo tpot=")


def test_a_user_constraint_joins_the_explanation_with_file_and_line(tmp_path):
    rules = tmp_path / "rules.py"
    rules.write_text(textwrap.dedent("""\
        import apex_opt as ax


        @ax.constraint("one-gpu")
        def one_gpu(v, s):
            return v.gpus == 1
        """))
    code, out = run("--constraints", str(rules), *FAST)
    assert code == 2
    assert "These constraints together rule out every plan:" in out
    assert "  [memory]          weights + KV cache fit in 80 GiB per GPU" in out
    assert "  [one-gpu]         user constraint (rules.py:5)" in out
    assert "Try relaxing one of them (e.g. --quantization fp8) or adding GPUs." in out


def test_bad_constraint_code_exits_2_naming_label_and_location(tmp_path):
    rules = tmp_path / "rules.py"
    rules.write_text(textwrap.dedent("""\
        import apex_opt as ax

        @ax.constraint("always")
        def always(v, s):
            return s.cluster.gpus_per_node <= 8
        """))
    code, out = run("--constraints", str(rules), *FAST)
    assert code == 2
    assert out.startswith("Error: constraint 'always' (rules.py:4) returned bool True; compare PlanVars fields")


def test_json_output_has_the_documented_keys():
    code, out = run("--format", "json", "--top-k", "2", *FAST)
    assert code == 0
    data = json.loads(out)
    assert data["status"] == "optimal"
    for key in ("plans", "feasible_plans", "plans_simulated", "solve_time_s", "candidates", "proven_infeasible",
                "launch", "explanation", "problem"):
        assert key in data
    assert len(data["plans"]) == 2
    plan = data["plans"][0]
    for key in ("dp", "pp", "tp", "ep", "gpus", "layers_per_stage", "weight_dtype", "kv_dtype", "predicted",
                "simulated"):
        assert key in plan
    assert plan["dp"] * plan["pp"] * plan["tp"] == plan["gpus"]
    assert data["problem"]["requests"] == 120


def test_constraint_packs_load_from_solvers_packs():
    code, out = run("--constraints", str(REPO / "solvers/packs/no_pipeline.py"), "--constraints",
                    str(REPO / "solvers/packs/single_node.py"), "--format", "json", "--use-all-gpus", *FAST)
    assert code == 0, out
    data = json.loads(out)
    assert data["problem"]["constraints"] == ["no-pipeline", "single-node"]
    assert all(p["pp"] == 1 and p["gpus"] == 8 for p in data["plans"])


def test_simulated_constraint_packs_cut_plans(monkeypatch):
    monkeypatch.setenv("APEX_OPT_P99_TTFT", "0.000001")
    code, out = run("--constraints", str(REPO / "solvers/packs/p99_latency.py"), "--max-simulations", "3", *FAST)
    assert code == 2
    assert "met the SLO" in out and "[p99-ttft] does not hold in simulation" in out


def test_other_solvers_and_options():
    code, out = run("--solver", "heuristic", "--format", "json", *FAST)
    assert code == 0
    assert json.loads(out)["solver"] == "heuristic"
    code, out = run("--solver", "magic", *FAST)
    assert code == 2 and "--solver 'magic' is unknown; use one of cpsat, exhaustive, heuristic" in out
    code, out = run("--gpu", "h100-sxm-80gb", "--nodes", "1", "--gpus-per-node", "2", "--model", "llama-3.1-8b",
                    "--objective", "min-tpot", "--format", "json", *FAST)
    assert code == 0
    assert json.loads(out)["problem"]["gpus"] == 2
    code, out = run("--objective", "fastest")
    assert code == 2 and "Invalid value for '--objective'" in out
    code, out = run("--slo", "tpot=50")
    assert code == 2 and "has no unit" in out
