"""Shared fixtures and options: --runslow enables @pytest.mark.slow tests; --update-golden rewrites tests/golden;
SHARED points at ../shared/data."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# A Ray instance a test starts must talk over loopback only. On Linux Ray gives its node the address of the route
# out of the machine (and rewrites 127.0.0.1 to it) unless it believes clusters are off, as on macOS; this switch,
# read once when ray is first imported, makes it use 127.0.0.1 for every service it starts (ray_constants.py).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


def run_cli(*args: str) -> tuple[int, str]:
    """``apex-opt ARGS`` in this process: (exit code, output); an exception the CLI did not turn into a message
    is raised, so a traceback fails the test instead of passing as a non-zero exit."""
    from click.testing import CliRunner

    from apex_opt.cli.main import cli

    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/*.json from the current code instead of comparing with them")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True under ``--update-golden``: golden-file tests rewrite their files instead of comparing."""
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data reference folder; the test is skipped cleanly when it is not there."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not beside the repository")
    return SHARED


# ------------------------------------------------------------------------------------------------------ Ray
def process_table() -> dict[int, tuple[int, int, str, str]]:
    """Every process on this (Linux) machine: pid -> (parent pid, session id, state, command line)."""
    table: dict[int, tuple[int, int, str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state ppid pgrp session ...
        table[int(entry)] = (int(fields[1]), int(fields[3]), fields[0], cmdline or stat[stat.index("(") + 1:
                                                                                      stat.rindex(")")])
    return table


def live(pids: set[int] | list[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie waiting for its parent counts as ended)."""
    table = process_table()
    return {pid for pid in pids if pid in table and table[pid][2] not in "ZX"}


def descendants(root: int) -> dict[int, str]:
    """The running processes below ``root`` (children, their children, ...): pid -> command line."""
    table = process_table()
    found: dict[int, str] = {}
    parents = {root}
    while parents:
        children = {pid for pid, (ppid, _, state, _) in table.items() if ppid in parents and state not in "ZX"}
        children -= set(found)
        found.update({pid: table[pid][3] for pid in children})
        parents = children
    return found


def in_sessions(sessions: set[int]) -> dict[int, str]:
    """The running processes of the sessions ``sessions``: pid -> command line."""
    return {pid: cmd for pid, (_, sid, state, cmd) in process_table().items() if sid in sessions and state not in "ZX"}


def end_sessions(sessions: set[int], grace: float = 3.0) -> None:
    """SIGTERM every process of ``sessions``, SIGKILL those left after ``grace`` seconds (exactly the processes
    a fixture started: never ``ray stop``, which stops every Ray instance of this machine's user)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in in_sessions(sessions):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while in_sessions(sessions) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not in_sessions(sessions):
            return


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: the two nodes of :func:`ray_cluster`: loopback addresses that ``ray start`` keeps as given (it replaces
#: 127.0.0.1 and localhost by the machine's outward address as soon as multi-node clusters are enabled)
RAY_HEAD_IP, RAY_SECOND_IP = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A real two-node Ray cluster on loopback, started with ``ray start`` as on two machines: a head on
    127.0.0.2 and a second raylet on 127.0.0.3, one CPU each, in a temporary folder of its own; its address
    ``HOST:PORT``. Every process the two ``ray start`` commands left running is ended afterwards.

    ``ray start`` joins a second node only with multi-node clusters enabled (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1,
    the Linux default this conftest turns off for the driver), and without token authentication
    (RAY_AUTH_MODE=disabled: a head turns it on when ~/.ray/auth_token exists, and a joining node would need the
    same token)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("a two-node Ray cluster on one machine needs Linux (loopback addresses beyond 127.0.0.1)")
    pytest.importorskip("ray")
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not installed")
    temp = tempfile.mkdtemp(prefix="rayc")  # short: Ray's socket paths must stay under 108 characters
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    sessions: set[int] = set()

    def start(*args: str) -> None:
        common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats",
                  f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
                  f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}"]
        with open(os.path.join(temp, f"start-{len(sessions)}.log"), "w+") as log:
            proc = subprocess.Popen([ray_cli, "start", *args, *common], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            sessions.add(proc.pid)  # its session: the Ray processes it starts stay in it
            try:
                code = proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                log.seek(0)
                raise RuntimeError(f"ray start {' '.join(args)} failed ({code}): {log.read()[-3000:]}")

    try:
        start("--head", f"--node-ip-address={RAY_HEAD_IP}", f"--port={port}", "--include-dashboard=false",
              f"--temp-dir={temp}")
        start(f"--address={RAY_HEAD_IP}:{port}", f"--node-ip-address={RAY_SECOND_IP}", f"--temp-dir={temp}")
        yield f"{RAY_HEAD_IP}:{port}"
    finally:
        end_sessions(sessions)
        shutil.rmtree(temp, ignore_errors=True)
