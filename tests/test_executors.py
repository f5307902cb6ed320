"""``--executor local|ray`` and ``executor=``: where simulations and sweep points run, with identical results.

The Ray tests start one local Ray instance for the module (skipped where Ray is not installed); the error
tests replace the ``ray`` module, so they run everywhere.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.cli.main import cli
from apex_opt.errors import SpecError
from apex_opt.executors import ExecutorError, LocalExecutor, RayExecutor, make_executor, running
from apex_opt.planner.verify import SimOutcome, Verifier

SMALL = "synthetic:rate=4rps,requests=20,prompt=256,output=32,seed=0"
GPU = "h100-sxm-80gb"
PROBLEM = ["--model", "llama-3.1-8b", "--workload", SMALL, "--workers", "2"]


def _square_later(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * x


def _pid(_: int) -> int:
    return os.getpid()


def flat(text: str) -> str:
    """``text`` on one line (the CLI wraps its error paragraph)."""
    return " ".join(text.split())


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def outcomes(found: list[SimOutcome]) -> list[tuple[str, str, str]]:
    """Each outcome as exact text: plan, every metric's repr (NaN included) and the error."""
    return [(o.plan.label, repr(sorted(dict(o.metrics or {}).items())), o.error) for o in found]


@pytest.fixture(scope="module")
def specs() -> ax.Specs:
    return ax.load_specs("llama-3.1-8b", "h100x8", workload=SMALL, slo="ttft=500ms,tpot=50ms")


@pytest.fixture(scope="module")
def plans() -> list[ax.Plan]:
    return [ax.Plan(gpu=GPU, tp=1), ax.Plan(gpu=GPU, tp=2), ax.Plan(gpu=GPU, tp=1, dp=2)]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """One Ray instance for the module: 2 CPUs, no dashboard, the driver on loopback."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", logging_level="WARNING")
    this = sys.modules[__name__]  # Ray's workers cannot import this test module: send its functions by value
    ray.cloudpickle.register_pickle_by_value(this)
    try:
        yield ray
    finally:
        ray.cloudpickle.unregister_pickle_by_value(this)
        ray.shutdown()


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import ray`` fails, as where the extra is not installed."""
    monkeypatch.setitem(sys.modules, "ray", None)


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A ``ray`` module with no session, whose ``init`` records its calls (Ray must not be reached)."""
    calls: list[dict[str, Any]] = []
    fake = types.SimpleNamespace(__version__="2.60.0", is_initialized=lambda: False, calls=calls,
                                 init=lambda **kw: calls.append(kw), shutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "ray", fake)
    return fake


# ------------------------------------------------------------------------------------------------- local
def test_the_local_executor_returns_results_in_submission_order_whatever_order_they_finish_in():
    finished: list[int] = []
    with running(make_executor("local", workers=2)) as ex:
        got = ex.map_ordered(_square_later, [(1, 0.6), (2, 0.0), (3, 0.0)], on_done=finished.append)
    assert got == [1, 4, 9]
    assert sorted(finished) == [0, 1, 2] and finished[-1] == 0  # the slow first job finished last


def test_one_local_worker_runs_the_jobs_in_this_process():
    ex = LocalExecutor(workers=1)
    assert ex.map_ordered(_pid, [(1,), (2,)]) == [os.getpid(), os.getpid()]
    assert ex._pool is None


# --------------------------------------------------------------------------------------------------- ray
def test_the_ray_executor_gives_bit_identical_verification_results_to_the_local_one(ray_session, specs, plans):
    with Verifier(specs, workers=2) as verifier:
        local = verifier.run(plans)
    with Verifier(specs, workers=2, executor="ray") as verifier:
        on_ray = verifier.run(plans)
    assert all(o.metrics is not None and o.metrics["num_completed"] == 20 for o in local)
    assert outcomes(on_ray) == outcomes(local)
    assert ray_session.is_initialized()  # the caller's session is used, and left running


def test_a_sweep_on_ray_gives_the_same_rows_in_the_same_order_as_on_local_processes(ray_session):
    settings: dict[str, Any] = {"plan": {"tp": 1}, "model": "llama-3.1-8b", "workload": SMALL, "workers": 2}
    grid = {"rate": ["2rps", "8rps"], "gpu": [GPU, "a100-sxm-80gb"]}
    local = ax.sweep(grid, **settings)
    on_ray = ax.sweep(grid, executor="ray", **settings)
    assert repr(on_ray) == repr(local)
    assert [(r["rate_req_s"], r["gpu"]) for r in on_ray] == [(2.0, GPU), (2.0, "a100-sxm-80gb"), (8.0, GPU),
                                                            (8.0, "a100-sxm-80gb")]


def test_the_ray_executor_reports_each_job_as_it_finishes_and_keeps_the_order(ray_session):
    finished: list[int] = []
    ex = RayExecutor(workers=2)
    got = ex.map_ordered(_square_later, [(1, 0.5), (2, 0.0), (3, 0.0)], on_done=finished.append)
    ex.close()
    assert got == [1, 4, 9] and sorted(finished) == [0, 1, 2]
    assert ray_session.is_initialized()


# ---------------------------------------------------------------------------------------------- errors
def test_a_missing_ray_says_how_to_install_it_before_any_simulation(no_ray, specs):
    with pytest.raises(ExecutorError) as err:
        Verifier(specs, executor="ray")
    assert "pip install 'apex-opt[ray]'" in str(err.value) and "executor='local'" in str(err.value)
    with pytest.raises(ExecutorError, match=r"apex-opt\[ray\]"):
        ax.solve(specs, executor="ray")


def test_a_missing_ray_on_the_command_line_is_exit_code_2_with_the_flag_to_use(no_ray):
    result = CliRunner().invoke(cli, ["compare", "tp=1", "tp=2", *PROBLEM, "--executor", "ray"])
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "--executor 'ray' needs Ray" in text and "pip install 'apex-opt[ray]'" in text
    assert "--executor 'local'" in text and "Traceback" not in text


def test_the_command_line_rejects_an_unknown_executor_with_exit_code_2():
    for command in (["solve"], ["compare", "tp=1"], ["sweep", "--plan", "tp=1", "--rate", "1rps"]):
        result = CliRunner().invoke(cli, [*command, "--executor", "nope"])
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--executor'" in result.output and "'local', 'ray'" in result.output


def test_an_unknown_executor_or_an_address_without_ray_names_the_field_and_the_fix(specs):
    with pytest.raises(SpecError, match=r"executor='dask': unknown executor; use one of local, ray"):
        ax.solve(specs, executor="dask")
    with pytest.raises(SpecError, match=r"ray_address='10.0.0.5:6379': a Ray address needs executor='ray'"):
        ax.sweep({"rate": ["1rps"]}, plan={"tp": 1}, ray_address="10.0.0.5:6379")
    result = CliRunner().invoke(cli, ["compare", "tp=1", *PROBLEM, "--ray-address", "10.0.0.5"])
    assert result.exit_code == 2
    assert "--ray-address '10.0.0.5': not a Ray address; write HOST:PORT" in flat(result.output)


def test_an_unreachable_ray_address_fails_at_once_with_one_paragraph_naming_it(fake_ray):
    address = f"127.0.0.1:{free_port()}"
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["compare", "tp=1", "tp=2", *PROBLEM, "--executor", "ray",
                                      "--ray-address", address])
    assert time.perf_counter() - start < 30
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert f"Error: --ray-address '{address}': no Ray cluster answers there" in text
    assert "ray start --head" in text and "leave --ray-address out" in text and "Traceback" not in text
    assert fake_ray.calls == []  # Ray itself was never asked to connect (it would retry for minutes)


def test_an_address_that_does_not_answer_in_time_fails_within_the_connect_timeout(fake_ray):
    ex = RayExecutor(address="192.0.2.123:6379", connect_timeout=0.5)  # TEST-NET-1: nothing answers
    start = time.perf_counter()
    with pytest.raises(ExecutorError, match=r"ray_address='192.0.2.123:6379': no Ray cluster answers there"):
        ex.map_ordered(_pid, [(1,)])
    assert time.perf_counter() - start < 5


def test_an_address_that_accepts_connections_but_is_no_ray_head_fails_within_the_join_timeout(fake_ray):
    with socket.socket() as listener:  # accepts TCP connections, answers nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        fake_ray.init = lambda **kw: time.sleep(60)  # Ray retrying for minutes
        ex = RayExecutor(address=address, join_timeout=0.5)
        start = time.perf_counter()
        with pytest.raises(ExecutorError) as err:
            ex.map_ordered(_pid, [(1,)])
    assert time.perf_counter() - start < 5
    assert f"ray_address='{address}': no Ray cluster answers there (it accepts connections" in str(err.value)
