"""``--executor local|ray`` and ``executor=``: where simulations and sweep points run, with identical results.

The Ray tests start one local Ray instance for the module (skipped where Ray is not installed); the error
tests replace the ``ray`` module, so they run everywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.cli.main import cli
from apex_opt.errors import SpecError
from apex_opt.executors import ExecutorError, LocalExecutor, RayExecutor, make_executor, running
from apex_opt.planner.verify import SimOutcome, Verifier
from tests.conftest import REPO, descendants, end_sessions, in_sessions, live

SMALL = "synthetic:rate=4rps,requests=20,prompt=256,output=32,seed=0"
GPU = "h100-sxm-80gb"
PROBLEM = ["--model", "llama-3.1-8b", "--workload", SMALL, "--workers", "2"]


def _square_later(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * x


def _pid(_: int) -> int:
    return os.getpid()


def _started_then_sleep(i: int, folder: str, seconds: float) -> int:
    """A slow job that leaves a file named after itself and its process as it starts."""
    Path(folder, f"{i}.{os.getpid()}").touch()
    time.sleep(seconds)
    return i


def _where(_: int, seconds: float) -> tuple[str, int]:
    """The Ray node and the process this job ran in (after ``seconds``, so that jobs overlap)."""
    import ray

    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id(), os.getpid()


def started(folder: Path) -> set[int]:
    """The processes :func:`_started_then_sleep` jobs started in."""
    return {int(f.name.split(".")[1]) for f in folder.iterdir()}


def within(seconds: float, condition: Callable[[], object]) -> bool:
    """Whether ``condition()`` becomes true within ``seconds`` (polled)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def ray_processes_below(pid: int) -> dict[int, str]:
    """Ray's processes (gcs_server, raylet, workers ...) started by process ``pid``, however deep."""
    return {p: cmd for p, cmd in descendants(pid).items() if "ray::" in cmd or "/ray/" in cmd}


@contextmanager
def ctrl_c_when(ready: Callable[[], object], limit: float = 60.0) -> Iterator[dict[str, float]]:
    """Ctrl-C (SIGINT to this process) as soon as ``ready()`` (at the latest after ``limit`` s); yields a dict that
    gets the time it was sent as ``"at"``. Python's SIGINT handler is installed meanwhile: a shell starts
    background jobs with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    sent: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + limit
        while not ready() and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.05)
        if not stop.is_set():
            sent["at"] = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join()
        signal.signal(signal.SIGINT, previous)


def ctrl_c_when_started(folder: Path, jobs: int) -> Any:
    """Ctrl-C as soon as ``jobs`` :func:`_started_then_sleep` jobs run (see :func:`ctrl_c_when`)."""
    return ctrl_c_when(lambda: len(list(folder.iterdir())) >= jobs)


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
def ray_module() -> Iterator[Any]:
    """The ``ray`` module (the test is skipped where it is not installed), able to send this module's functions
    to Ray's workers, which cannot import it; any session still running is shut down after the module."""
    ray = pytest.importorskip("ray")
    this = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(this)
    try:
        yield ray
    finally:
        ray.cloudpickle.unregister_pickle_by_value(this)
        ray.shutdown()


@pytest.fixture
def ray_session(ray_module: Any) -> Any:
    """One Ray instance (kept for the module unless a test needs none): 2 CPUs, no dashboard, on loopback."""
    if not ray_module.is_initialized():
        ray_module.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                        _node_ip_address="127.0.0.1", logging_level="WARNING")
    return ray_module


@pytest.fixture
def no_ray_session(ray_module: Any) -> Any:
    """No Ray session in this process: the executor starts or joins one itself."""
    ray_module.shutdown()
    return ray_module


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


# ---------------------------------------------------------------------------------------------- Ctrl-C
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="follows processes through /proc")


@linux_only
def test_ctrl_c_on_the_callers_ray_session_cancels_the_jobs_in_flight_and_leaves_the_session(ray_session, tmp_path):
    ex = RayExecutor(workers=2)
    with ctrl_c_when_started(tmp_path, jobs=2) as sent, pytest.raises(KeyboardInterrupt), running(ex):
        ex.map_ordered(_started_then_sleep, [(i, str(tmp_path), 120) for i in range(4)])
    assert time.monotonic() - sent["at"] < 5
    tasks = started(tmp_path)
    assert len(tasks) == 2 and within(10, lambda: not live(tasks))  # ray.cancel(force=True) ended their workers
    assert ray_session.is_initialized()  # the caller's session is left running, and still works
    assert RayExecutor().map_ordered(pow, [(2, 3)]) == [8]


@linux_only
def test_ctrl_c_while_ray_runs_the_jobs_stops_the_ray_instance_it_started_and_leaves_no_process(no_ray_session,
                                                                                                 tmp_path):
    ex = RayExecutor(workers=2)
    with ctrl_c_when_started(tmp_path, jobs=2) as sent, pytest.raises(KeyboardInterrupt), running(ex):
        ex.map_ordered(_started_then_sleep, [(i, str(tmp_path), 120) for i in range(4)])
    assert time.monotonic() - sent["at"] < 10  # measured 2.2 s: 0.8 s to interrupt ray.wait, 1.4 s to shut down
    assert len(started(tmp_path)) == 2 and not live(started(tmp_path))
    assert not no_ray_session.is_initialized()
    assert within(5, lambda: not ray_processes_below(os.getpid())), ray_processes_below(os.getpid())


@linux_only
def test_ctrl_c_while_ray_starts_is_raised_once_it_runs_and_stops_it_too(no_ray_session):
    """Interrupted halfway, ray.init leaves a GCS, a raylet and agents that ray.shutdown does not know of (the
    agents outlive this process): the executor holds Ctrl-C back until Ray is up, then stops it."""
    def gcs_started() -> bool:
        return any("gcs_server" in cmd for cmd in ray_processes_below(os.getpid()).values())

    ex = RayExecutor(workers=2)
    with ctrl_c_when(gcs_started) as sent, pytest.raises(KeyboardInterrupt), running(ex):
        ex.map_ordered(_pid, [(1,), (2,)])
    assert "at" in sent and time.monotonic() - sent["at"] < 20  # measured 3-5 s: the rest of Ray's start-up
    assert not no_ray_session.is_initialized()
    assert within(5, lambda: not ray_processes_below(os.getpid())), ray_processes_below(os.getpid())


@linux_only
def test_a_second_ctrl_c_while_ray_starts_interrupts_at_once(no_ray_session):
    def gcs_started() -> bool:
        return any("gcs_server" in cmd for cmd in ray_processes_below(os.getpid()).values())

    def twice() -> bool:  # the second Ctrl-C 0.2 s after the first
        if not gcs_started():
            return False
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        return True

    try:
        with ctrl_c_when(twice) as sent, pytest.raises(KeyboardInterrupt):
            RayExecutor(workers=2).connect()
        assert time.monotonic() - sent["at"] < 1.5
    finally:  # what the abandoned start-up left: exactly the Ray processes this test started
        for pid in ray_processes_below(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        no_ray_session.shutdown()
    assert within(5, lambda: not ray_processes_below(os.getpid()))


@linux_only
def test_ctrl_c_during_solve_on_ray_exits_130_with_interrupted_and_leaves_no_ray_process():
    """The console script in a terminal: Ctrl-C reaches its whole process group once Ray runs the simulations."""
    pytest.importorskip("ray")
    workload = "synthetic:rate=50rps,requests=20000,prompt=256,output=64,seed=0"  # simulations of several seconds
    # the console script as a terminal starts it: Python's SIGINT handler in place (a shell starts background
    # jobs with SIGINT ignored, which a child inherits), alone in its process group
    script = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "from apex_opt.cli.main import main; main()")
    command = [sys.executable, "-c", script, "solve", "--model", "llama-3.1-8b", "--workload", workload,
               "--verify-requests", "all", "--workers", "2", "--executor", "ray"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    session = {proc.pid}
    try:
        assert within(60, lambda: any("ray::_run_one" in c for c in in_sessions(session).values())), \
            in_sessions(session)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        stopped = time.monotonic() - sent
        assert proc.returncode == 130, err
        assert err.rstrip().endswith("Interrupted.") and "Traceback" not in err
        assert stopped < 15  # measured 2.1 s
        assert within(5, lambda: not in_sessions(session)), in_sessions(session)
    finally:
        proc.kill()
        proc.communicate()
        end_sessions(session)


# ------------------------------------------------------------------------------- a two-node Ray cluster
@pytest.mark.slow
def test_a_two_node_ray_cluster_gives_the_same_verification_and_sweep_results_as_local(no_ray_session, ray_cluster,
                                                                                        specs, plans):
    with Verifier(specs, workers=2) as verifier:
        local = verifier.run(plans)
    with Verifier(specs, workers=2, executor="ray", ray_address=ray_cluster) as verifier:
        on_cluster = verifier.run(plans)
    assert all(o.metrics is not None and o.metrics["num_completed"] == 20 for o in local)
    assert outcomes(on_cluster) == outcomes(local)
    settings: dict[str, Any] = {"plan": {"tp": 1}, "model": "llama-3.1-8b", "workload": SMALL, "workers": 2}
    grid = {"rate": ["2rps", "8rps"], "gpu": [GPU, "a100-sxm-80gb"]}
    assert repr(ax.sweep(grid, executor="ray", ray_address=ray_cluster, **settings)) == repr(ax.sweep(grid,
                                                                                                      **settings))
    assert not no_ray_session.is_initialized()  # disconnected after each


@pytest.mark.slow
def test_jobs_run_on_both_nodes_of_a_cluster_which_apex_opt_leaves_running(no_ray_session, ray_cluster):
    ray = no_ray_session
    with running(RayExecutor(address=ray_cluster)) as ex:
        where = ex.map_ordered(_where, [(i, 1.0) for i in range(6)])  # one CPU a node: six 1 s jobs must spread
        nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    assert {node for node, _ in where} == set(nodes) and sorted(nodes.values()) == ["127.0.0.2", "127.0.0.3"]
    assert not ray.is_initialized()
    ray.init(address=ray_cluster, log_to_driver=False, logging_level="WARNING")  # the cluster still answers
    try:
        assert sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]) == ["127.0.0.2", "127.0.0.3"]
    finally:
        ray.shutdown()


@pytest.mark.slow
@linux_only
def test_ctrl_c_on_a_cluster_cancels_the_jobs_and_leaves_the_cluster_running(no_ray_session, ray_cluster, tmp_path):
    ray = no_ray_session
    ex = RayExecutor(address=ray_cluster)
    with ctrl_c_when_started(tmp_path, jobs=2) as sent, pytest.raises(KeyboardInterrupt), running(ex):
        ex.map_ordered(_started_then_sleep, [(i, str(tmp_path), 120) for i in range(4)])
    assert time.monotonic() - sent["at"] < 10
    tasks = started(tmp_path)
    assert len(tasks) == 2 and within(10, lambda: not live(tasks))
    assert not ray.is_initialized()
    ray.init(address=ray_cluster, log_to_driver=False, logging_level="WARNING")
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        assert ray.get(ray.remote(_where).remote(0, 0.0))[0] in {n["NodeID"] for n in ray.nodes()}  # and works
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_compare_on_a_cluster_prints_what_it_prints_locally(ray_cluster):
    command = [sys.executable, "-m", "apex_opt.cli.main", "compare", "tp=1", "tp=2", *PROBLEM]
    local = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    on_cluster = subprocess.run([*command, "--executor", "ray", "--ray-address", ray_cluster], cwd=REPO,
                                capture_output=True, text=True, timeout=120, check=False)
    assert local.returncode == on_cluster.returncode == 0, on_cluster.stderr
    assert on_cluster.stdout == local.stdout and "TTFT" in local.stdout
    assert "Traceback" not in on_cluster.stderr
