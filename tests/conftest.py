"""Shared fixtures and options: --runslow enables @pytest.mark.slow tests; --update-golden rewrites tests/golden;
SHARED points at ../shared/data."""

from __future__ import annotations

import os
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
