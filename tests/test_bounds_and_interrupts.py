"""Bounds checked before work is built, time limits on user code, Ctrl-C and atomic output files (issue 13)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import stat
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt import bounds
from apex_opt.catalog import read_structured
from apex_opt.cli import estimate as estimate_cmd
from apex_opt.cli import simulate as simulate_cmd
from apex_opt.cli import solve as solve_cmd
from apex_opt.cli.main import cli
from apex_opt.cli.options import atomic_output
from apex_opt.errors import ConstraintError, SpecError
from apex_opt.planner.constraints import check_simulated, constraint, plan_expressions
from apex_opt.planner.model import PlanModel, solve_once
from apex_opt.planner.verify import Verifier, usable_workers
from apex_opt.sim.engine import Simulation
from apex_opt.workload import Workload
from apex_opt.workload.synthetic import parse_synthetic

REPO = Path(__file__).resolve().parent.parent
SMALL = "synthetic:rate=4rps,requests=8,prompt=128,output=16"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def quick(seconds: float = 1.0):  # type: ignore[no-untyped-def]
    """Assert the body of a ``with`` ran in under ``seconds``."""

    class Clock:
        def __enter__(self) -> None:
            self.start = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            if exc[0] is None:
                assert time.perf_counter() - self.start < seconds

    return Clock()


# ------------------------------------------------------------------------------------------- arrivals
def test_a_synthetic_rate_that_puts_arrivals_ages_away_is_refused_with_the_rate_that_would_work():
    with pytest.raises(SpecError) as err:
        parse_synthetic("synthetic:rate=1e-300rps,requests=10,prompt=100,output=10")
    text = str(err.value)
    assert "rate=1e-300rps" in text and "one year" in text and "raise the rate to at least 3.17e-07rps" in text
    parse_synthetic("synthetic:rate=3.2e-7rps,requests=10,prompt=100,output=10")  # the suggested rate works


def test_a_synthetic_duration_or_start_beyond_a_year_is_refused():
    with pytest.raises(SpecError, match=r"duration=40000000s spans more than the one year .* at most 31536000s"):
        parse_synthetic("synthetic:rate=1rps,duration=40000000s,prompt=100,output=10")
    with pytest.raises(SpecError, match=r"start=40000000s is beyond the one year"):
        parse_synthetic("synthetic:rate=1rps,requests=5,start=40000000s,prompt=100,output=10")


def test_simulate_with_a_far_future_rate_exits_2_at_once():
    with quick():
        result = invoke("simulate", "--model", "llama-3.1-8b", "--workload",
                        "synthetic:rate=1e-300rps,requests=10,prompt=100,output=10")
    assert result.exit_code == 2 and "one year" in result.output


def test_the_decode_skip_ahead_ends_at_once_when_the_next_arrival_is_ages_away():
    with quick(0.1):
        assert Simulation._steps_before(1e30, 0.01, 0.01, 1e-9, 500) == 500
        assert Simulation._steps_before(1e300, 0.01, 0.01, 0.0) == 1 << 62


def test_the_decode_skip_ahead_still_finds_the_exact_last_step_before_an_arrival():
    def d(j: int, t0: float, alpha: float, beta: float) -> float:
        return t0 + (j - 1) * alpha + beta * (j - 1) * j / 2

    for span, t0, alpha, beta in [(1.0, 0.01, 0.02, 1e-4), (0.5, 0.03, 0.01, 0.0), (7.3, 0.2, 0.05, 3e-3)]:
        brute = max(j for j in range(1, 100_000) if d(j, t0, alpha, beta) < span)
        assert Simulation._steps_before(span, t0, alpha, beta) == brute
        assert Simulation._steps_before(span, t0, alpha, beta, 3) == min(brute, 3)


def test_a_trace_whose_arrivals_are_ages_apart_is_simulated_to_the_end():
    specs = ax.load_specs("llama-3.1-8b", "h100x8", workload="synthetic:rate=4rps,requests=6,prompt=256,output=300")
    w = specs.workload
    far = Workload("far", np.array([0.0, 0.1, 0.2, 1e30, 1e30 + 1, 2e30]), w.prompt_tokens, w.output_tokens,
                   w.request_ids, "far")
    with quick():
        result = ax.simulate(dataclasses.replace(specs, workload=far), ax.Plan(gpu="h100-sxm-80gb", tp=1))
    assert result["num_completed"] == 6


# ------------------------------------------------------------------------------------------- YAML
def _alias_bomb(path: Path, levels: int = 9) -> Path:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    path.write_text("\n".join(lines) + "\nname: bomb\n")
    return path


def test_a_yaml_alias_bomb_is_refused_without_rendering_the_expanded_value(tmp_path):
    bomb = _alias_bomb(tmp_path / "bomb.yaml")
    with quick(), pytest.raises(SpecError) as err:
        read_structured(bomb)
    text = str(err.value)
    assert "bomb.yaml" in text and "100,000 values" in text and "lol" not in text and len(text) < 300


def test_a_yaml_alias_that_refers_to_itself_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: &x [*x]\n")
    with pytest.raises(SpecError, match="refer to"):
        read_structured(path)


def test_a_yaml_file_with_a_few_aliases_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {gpu: h100-sxm-80gb, count: 1}\nnodes: [*b, *b]\n")
    assert read_structured(path)["nodes"] == [{"gpu": "h100-sxm-80gb", "count": 1}] * 2


def test_a_cluster_file_that_is_an_alias_bomb_exits_2(tmp_path):
    bomb = _alias_bomb(tmp_path / "bomb.yaml")
    with quick(2.0):
        result = invoke("simulate", "--cluster", str(bomb))
    assert result.exit_code == 2 and "aliases" in result.output and "lol" not in result.output


# ------------------------------------------------------------------------------------------- GPUs, nodes, tp
def test_a_tp_of_twenty_digits_exits_2_naming_the_gpu_bound():
    for command in ("simulate", "estimate"):
        with quick():
            result = invoke(command, "--model", "llama-3.1-8b", "--tp", "99999999999999999999")
        assert result.exit_code == 2, result.output
        assert "tp: must be at most 65,536" in result.output


def test_a_plan_over_the_gpu_bound_is_refused_by_its_product():
    with pytest.raises(SpecError, match=r"dp x pp x tp = 10000 x 8 x 8 = 640,000 GPUs.*65,536"):
        ax.Plan(gpu="h100-sxm-80gb", tp=8, pp=8, dp=10000)


def test_a_hundred_million_nodes_exit_2_before_any_graph_is_built():
    with quick():
        result = invoke("simulate", "--model", "llama-3.1-8b", "--nodes", "100000000")
    assert result.exit_code == 2
    assert "65,536 apex-opt supports; use a count of at most 8,192" in result.output


def test_a_cluster_file_with_a_billion_nodes_exits_2(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: big\nnodes:\n  - gpu: h100-sxm-80gb\n    count: 1000000000\n    gpus_per_node: 8\n")
    with quick():
        result = invoke("solve", "--cluster", str(path))
    assert result.exit_code == 2
    assert "nodes[0].count 1,000,000,000 x 8 GPUs per node makes 8,000,000,000 GPUs" in result.output


# ------------------------------------------------------------------------------------------- estimate
def test_estimate_refuses_a_batch_of_a_billion_before_allocating():
    with quick():
        result = invoke("estimate", "--model", "llama-3.1-8b", "--batch", "1000000000")
    assert result.exit_code == 2 and "--batch 1,000,000,000 is more than the 65,536" in result.output


def test_estimate_refuses_a_context_beyond_the_models_window():
    with quick():
        result = invoke("estimate", "--model", "llama-3.1-8b", "--context", "100000000")
    assert result.exit_code == 2
    assert "context window of 131,072 tokens" in result.output and "--context 131072 or less" in result.output


def test_estimate_refuses_too_many_prompt_tokens_in_one_iteration_and_says_what_batch_fits():
    result = invoke("estimate", "--model", "llama-3.1-8b", "--batch", "4096", "--context", "131072")
    assert result.exit_code == 2 and "use at most --batch 512 at this context" in result.output


def test_the_python_api_estimate_raises_the_same_spec_error():
    specs = ax.load_specs("llama-3.1-8b", "h100x8", workload=SMALL)
    with pytest.raises(SpecError, match="65,536"):
        ax.estimate(specs, ax.Plan(gpu="h100-sxm-80gb"), batch=10**9)


# ------------------------------------------------------------------------------------------- workers
def test_workers_are_capped_at_the_cpus_and_the_plans_to_simulate():
    cpus = os.cpu_count() or 1
    assert usable_workers(48, 8) == min(8, cpus)
    assert usable_workers(48, 1) == 1
    assert Verifier(None, workers=48).workers == min(48, cpus)  # type: ignore[arg-type]


def test_asking_for_more_workers_than_can_help_says_so_and_asking_for_few_says_nothing(capsys):
    solve_cmd.note_workers(48, 8)
    assert "Note: --workers 48:" in capsys.readouterr().err
    solve_cmd.note_workers(1, 8)
    assert capsys.readouterr().err == ""


def _sleepy_simulator(specs, plan, seed=0):  # type: ignore[no-untyped-def]
    time.sleep(30)


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or os.name != "posix", reason="needs two CPUs and fork")
def test_ctrl_c_while_plans_are_simulated_terminates_the_worker_processes():
    specs = ax.load_specs("llama-3.1-8b", "h100x8", workload=SMALL)
    plans = [ax.Plan(gpu="h100-sxm-80gb", tp=1), ax.Plan(gpu="h100-sxm-80gb", tp=2)]
    verifier = Verifier(specs, workers=2, simulator=_sleepy_simulator)

    def interrupt(signum, frame):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.4)
    workers = []
    try:
        with pytest.raises(KeyboardInterrupt):
            pool = verifier._executor(2)
            pool.submit(int)  # start the processes, then run the batch
            workers = list(pool._processes.values())
            verifier.run(plans)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert workers and not any(p.is_alive() for p in workers)
    assert verifier._pool is None


# ------------------------------------------------------------------------------------------- user constraints
def test_a_user_constraint_that_loops_forever_is_stopped_and_named(monkeypatch):
    monkeypatch.setattr(bounds, "USER_CODE_TIME_LIMIT_S", 0.2)

    @constraint("forever")
    def forever(v, s):  # type: ignore[no-untyped-def]
        while True:
            pass

    with quick(), pytest.raises(ConstraintError) as err:
        plan_expressions(forever, None, None)
    text = str(err.value)
    assert "constraint 'forever'" in text and "more than 0.2 s" in text and "test_bounds_and_interrupts.py:" in text


def test_a_simulated_constraint_that_loops_forever_is_stopped_too(monkeypatch):
    monkeypatch.setattr(bounds, "USER_CODE_TIME_LIMIT_S", 0.2)

    @constraint("slow", on="simulated")
    def slow(r, s):  # type: ignore[no-untyped-def]
        while True:
            pass

    with quick(), pytest.raises(ConstraintError, match="simulated constraint 'slow'.*was stopped"):
        check_simulated(slow, {}, None)


def test_a_constraint_file_that_loops_while_loading_is_stopped(monkeypatch, tmp_path):
    monkeypatch.setattr(bounds, "USER_CODE_TIME_LIMIT_S", 0.2)
    path = tmp_path / "spin.py"
    path.write_text("while True:\n    pass\n")
    with quick(), pytest.raises(ConstraintError, match=r"loading constraints=spin.py .* stopped at spin.py:\d"):
        ax.load_constraints(path)


def test_the_time_limit_puts_back_the_alarm_handler_it_found():
    before = signal.getsignal(signal.SIGALRM)
    with bounds.user_code_time_limit("x", 5.0):
        assert signal.getsignal(signal.SIGALRM) is not before
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


# ------------------------------------------------------------------------------------------- Ctrl-C
def _interrupt(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt


@pytest.mark.parametrize(("command", "module", "name"), [
    ("simulate", simulate_cmd, "run"),
    ("estimate", estimate_cmd, "estimate_replica"),
    ("solve", solve_cmd, "run_solve"),
])
def test_ctrl_c_in_any_command_exits_130_with_interrupted(monkeypatch, command, module, name):
    monkeypatch.setattr(module, name, _interrupt)
    result = invoke(command, "--model", "llama-3.1-8b", *(["--workload", SMALL] if command != "estimate" else []))
    assert result.exit_code == 130
    assert "Interrupted." in result.output and "Aborted!" not in result.output


def test_ctrl_c_while_listing_the_catalog_exits_130(monkeypatch):
    from apex_opt.cli import catalog as catalog_cmd

    monkeypatch.setattr(catalog_cmd, "_models", _interrupt)
    result = invoke("catalog", "models")
    assert result.exit_code == 130 and "Interrupted." in result.output


def test_a_click_abort_is_reported_as_an_interrupt_too(monkeypatch):
    def abort(*args, **kwargs):  # type: ignore[no-untyped-def]
        import click

        raise click.Abort

    monkeypatch.setattr(estimate_cmd, "estimate_replica", abort)
    result = invoke("estimate", "--model", "llama-3.1-8b")
    assert result.exit_code == 130 and "Interrupted." in result.output


def test_cp_sat_is_told_to_leave_sigint_to_python():
    from ortools.sat.python import cp_model

    model = cp_model.CpModel()
    x = model.new_int_var(0, 3, "x")
    model.maximize(x)
    solver = solve_once(model, seed=0, time_limit=None, what="test")
    assert solver is not None and solver.parameters.catch_sigint_signal is False
    planner_solver = PlanModel._solver(SimpleNamespace(seed=0, time_limit=None))  # type: ignore[arg-type]
    assert planner_solver.parameters.catch_sigint_signal is False


# ------------------------------------------------------------------------------------------- output files
def test_requests_out_into_a_missing_folder_exits_2_before_the_simulation_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(simulate_cmd, "run", lambda *a, **k: pytest.fail("the simulation ran"))
    result = invoke("simulate", "--model", "llama-3.1-8b", "--workload", SMALL,
                    "--requests-out", str(tmp_path / "missing" / "r.jsonl"))
    assert result.exit_code == 2
    assert "does not exist; create it first" in result.output


def test_requests_out_is_written_whole_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "r.jsonl"
    result = invoke("simulate", "--model", "llama-3.1-8b", "--workload", SMALL, "--requests-out", str(out))
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 8
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]


def test_an_interrupted_write_leaves_the_earlier_file_whole_and_no_partial_one(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("earlier\n")
    with pytest.raises(KeyboardInterrupt), atomic_output(out) as f:
        f.write("partial")
        raise KeyboardInterrupt
    assert out.read_text() == "earlier\n" and [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]
    with atomic_output(tmp_path / "new.jsonl") as f:
        f.write("whole\n")
    assert (tmp_path / "new.jsonl").read_text() == "whole\n"
    assert stat.S_IMODE((tmp_path / "new.jsonl").stat().st_mode) & 0o644 == 0o644


def test_the_planner_quality_benchmark_caches_in_a_private_temporary_folder(monkeypatch):
    monkeypatch.delenv("APEX_OPT_BENCH_CACHE", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("planner_quality_under_test", REPO / "benchmarks" /
                                                  "planner_quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cache = Path(module.CACHE)
    assert cache != Path("/tmp/apex_opt_planner_bench") and cache.is_dir()
    assert Path(tempfile.gettempdir()) in cache.parents
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    cache.rmdir()


def test_ctrl_c_stops_a_cp_sat_search_at_once():
    import _thread
    import itertools
    import threading
    import time

    from ortools.sat.python import cp_model

    from apex_opt.planner.model import interruptible_solve

    # a 12-mark Golomb ruler: one CP-SAT worker cannot prove the optimum (85) in 5 s, let alone in the 0.3 s
    # before the interrupt (a search that finished first would make this test pass or fail by machine speed)
    model = cp_model.CpModel()
    marks = [model.new_int_var(0, 200, f"m{i}") for i in range(12)]
    model.add(marks[0] == 0)
    for a, b in itertools.pairwise(marks):
        model.add(a < b)
    gaps = []
    for i, j in itertools.combinations(range(12), 2):
        gap = model.new_int_var(1, 200, f"d{i}_{j}")
        model.add(gap == marks[j] - marks[i])
        gaps.append(gap)
    model.add_all_different(gaps)
    model.minimize(marks[-1])
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = 30
    solver.parameters.num_workers = 1
    solver.parameters.catch_sigint_signal = False
    # a shell starts background jobs with SIGINT ignored, and interrupt_main does nothing then: handle it here
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.3, _thread.interrupt_main).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            interruptible_solve(solver, model)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 5  # not the 30 s time limit


def test_a_problem_from_something_other_than_specs_is_refused():
    from apex_opt.planner.solve import Problem

    with pytest.raises(ax.SpecError, match=r"Problem\(specs='x'\): specs must be the Specs"):
        Problem("x")


def test_a_solver_plug_in_that_never_returns_is_stopped_with_its_line(tmp_path, monkeypatch):
    import importlib

    solve_module = importlib.import_module("apex_opt.planner.solve")
    plugin = tmp_path / "forever.py"
    plugin.write_text("def search(problem):\n    while True:\n        pass\n")
    monkeypatch.setattr(solve_module, "PLUGIN_SEARCH_TIME_LIMIT_S", 0.3)
    specs = ax.load_specs("llama-3.1-8b", "h100x8", workload="synthetic:rate=1rps,requests=5,prompt=100,output=5")
    with pytest.raises(ax.SolverError, match=r"search\(problem\) ran for more than 0.3 s and was stopped at "
                                             r"forever.py:\d.*solver=cpsat"):
        ax.solve(specs, solver=str(plugin), workers=1)
