"""The console script ends its process at once after a command (``apex_opt.cli.main.exit_now``): with the command's
exit status, its output flushed, the ``atexit`` handlers run, and no worker process left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from apex_opt.cli import main as cli_main
from tests.conftest import descendants

CONSOLE = [sys.executable, "-c", "from apex_opt.cli.main import main; main()"]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CONSOLE, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_a_command_that_succeeds_exits_0_with_all_its_output() -> None:
    done = _run("catalog", "workloads", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)  # the whole document reached the pipe


def test_a_library_error_exits_2_with_its_message() -> None:
    done = _run("estimate", "--model", "no-such-model", "--gpu", "h100-sxm-80gb", "--tp", "1")
    assert done.returncode == 2
    assert "no-such-model" in done.stderr


def test_a_usage_error_exits_2() -> None:
    done = _run("solve", "--top-k", "0")
    assert done.returncode == 2
    assert "--top-k" in done.stderr


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (2, 2), (130, 130), ("a message", 1)])
def test_the_exit_status_is_read_as_sys_exit_reads_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                                      code: int | str | None, status: int) -> None:
    class Exited(Exception):
        pass

    def fake_exit(value: int) -> None:
        raise Exited(value)

    monkeypatch.setattr(cli_main.os, "_exit", fake_exit)
    monkeypatch.setattr(cli_main.atexit, "_run_exitfuncs", lambda: None)
    with pytest.raises(Exited) as raised:
        cli_main.exit_now(code)
    assert raised.value.args == (status,)
    if isinstance(code, str):
        assert code in capsys.readouterr().err


def test_atexit_handlers_run_before_the_process_ends(tmp_path) -> None:
    marker = tmp_path / "ran"
    program = ("import atexit, pathlib\n"
               f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
               "from apex_opt.cli.main import exit_now\n"
               "exit_now(0)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "yes"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table from /proc")
def test_ctrl_c_during_a_solve_exits_130_and_leaves_no_worker_behind() -> None:
    # a shell starts background jobs with SIGINT ignored, and a child inherits that: the program handles it itself
    program = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); " + CONSOLE[-1]
    proc = subprocess.Popen([sys.executable, "-c", program, "solve", "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # until its simulator pool has started (forked workers, with the parent's command line): the command is
        # running, past its imports (which may start short-lived helpers of their own, such as ldconfig)
        while proc.poll() is None and time.monotonic() < deadline and \
                not any("apex_opt.cli.main" in cmd for cmd in descendants(proc.pid).values()):
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode == 0:
        pytest.skip("the solve finished before Ctrl-C arrived")
    assert proc.returncode == 130, err
    assert "Interrupted." in err
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nobody is left in the group


def test_a_thread_that_never_ends_holds_the_exit_for_a_bounded_time_only() -> None:
    """After Ctrl-C a worker pool's manager thread may outlive its terminated workers; the interpreter's own exit
    would wait for it for ever."""
    program = ("import threading, time\n"
               "from apex_opt.cli import main as m\n"
               "m.EXIT_WAIT_S = 0.5\n"
               "threading.Thread(target=time.sleep, args=(600,)).start()\n"
               "m.exit_now(130)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 130, done.stderr
    assert time.monotonic() - started < 30
