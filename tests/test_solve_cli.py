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
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
FAST = ["--max-requests", "120", "--workers", "1"]


@pytest.fixture(autouse=True)
def facade(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until apex_opt/__init__.py re-exports the planner, make `import apex_opt as ax` see it (no-op after)."""
    for name in planner.__all__:
        if not hasattr(apex_opt, name):
            monkeypatch.setattr(apex_opt, name, getattr(planner, name), raising=False)


def run(*args: str) -> tuple[int, str]:
    return run_cli("solve", *args)


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
    for p in data["plans"]:  # single plans, and each instance of a disaggregated pair
        assert p["gpus"] == 8 and all(i["pp"] == 1 for i in p.get("instances", [p]))


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


# ------------------------------------------------------------------ table headers, free memory, progress, version
SMALL = ["--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--nodes", "1", "--gpus-per-node", "2",
         "--disaggregation", "off", *FAST]


def test_the_table_says_dollars_are_per_million_output_tokens_and_memory_is_free_after_kv():
    code, out = run(*SMALL)
    assert code == 0, out
    header = next(line for line in out.splitlines() if "plan" in line and "GPUs" in line)
    assert "$/Mtok out" in header and "free after KV" in header and "headroom" not in header


def test_free_after_kv_is_the_gpu_memory_left_after_weights_reserves_kv_cache_context_and_graphs():
    from apex_opt.perf.memory import CUDA_CONTEXT_BYTES
    from apex_opt.perf.replica import build_replica
    from apex_opt.schema.plan import Plan

    code, out = run(*SMALL, "--format", "json")
    assert code == 0, out
    best = json.loads(out)["plans"][0]
    fields = {k: best[k] for k in ("gpu", "engine", "dp", "tp", "pp", "ep", "max_num_seqs", "max_num_batched_tokens",
                                   "chunked_prefill", "weight_dtype", "kv_dtype")}
    specs = apex_opt.load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=2)
    stages = build_replica(specs.model, specs.gpu, Plan(**fields), specs.engine).memory.stages
    free = min(s.total - s.weights - s.activation - s.fixed - s.kv_cache - CUDA_CONTEXT_BYTES - s.graphs
               for s in stages)
    assert best["predicted"]["memory_headroom_bytes"] == pytest.approx(free)
    assert 0 < free < 0.1 * specs.gpu.memory  # about (1 - gpu_memory_utilization) of the GPU, less the graphs


def test_solve_draws_a_progress_bar_with_counts_and_time_left_when_stderr_is_a_terminal(monkeypatch):
    from apex_opt.cli import solve as solve_cmd

    monkeypatch.setattr(solve_cmd, "stderr_is_terminal", lambda: True)
    code, out = run(*SMALL)
    assert code == 0, out
    assert "... simulating " in out and "verifying plans by simulation" in out
    counts = [tuple(map(int, m)) for m in re.findall(r"(\d+)/(\d+) .{0,20}elapsed", re.sub(r"\x1b\[[0-9;]*m", "", out))]
    assert counts and counts[-1][0] == counts[-1][1] > 0
    assert "left" in out


def test_solve_draws_no_progress_bar_when_stderr_is_not_a_terminal_or_the_output_is_json(monkeypatch):
    from apex_opt.cli import solve as solve_cmd

    code, out = run(*SMALL)
    assert code == 0 and "verifying plans" not in out and "... simulating" not in out
    monkeypatch.setattr(solve_cmd, "stderr_is_terminal", lambda: True)
    code, out = run(*SMALL, "--format", "json")
    assert code == 0 and "verifying plans" not in out
    json.loads(out)


def test_the_library_reports_simulation_counts_and_still_sends_stage_lines_to_a_text_callback():
    lines: list[str] = []
    counts: list[tuple[int, int]] = []
    specs = apex_opt.load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, gpus_per_node=2)
    result = apex_opt.solve(specs, max_requests=120, workers=1, disaggregation="off", progress=lines.append,
                            simulation_progress=lambda done, started: counts.append((done, started)))
    assert any(line.startswith("simulating ") for line in lines)
    assert all(0 <= done <= started for done, started in counts)
    assert [done for done, _ in counts] == sorted(done for done, _ in counts)
    assert counts[-1] == (result.stats.plans_simulated, result.stats.plans_simulated)


def test_apex_opt_version_prints_the_package_version():
    from importlib.metadata import version

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"apex-opt {apex_opt.__version__}\n"
    assert apex_opt.__version__ == version("apex-opt")


def test_a_source_checkout_without_install_reads_its_version_from_pyproject():
    import tomllib

    from apex_opt._version import _source_version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert _source_version() == f"{project['version']}+source"
