"""``apex-opt``: the command group, and the one place library errors become messages and exit codes."""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import re
import sys
import textwrap
import threading
import time
from typing import Any

import click

from .._version import __version__
from ..errors import ECHO_LIMIT, ApexOptError

#: exit code after Ctrl-C (128 + SIGINT), with the message "Interrupted."
INTERRUPTED = 130
#: seconds the console script waits, at exit, for threads other than daemons to end (:func:`exit_now`)
EXIT_WAIT_S = 10.0


def cap_echoes(message: str) -> str:
    """``message`` with every word longer than :data:`~apex_opt.errors.ECHO_LIMIT` characters shortened."""
    return re.sub(rf"\S{{{ECHO_LIMIT + 1},}}", lambda m: f"{m.group(0)[:ECHO_LIMIT - 8]}... ({len(m.group(0))} "
                  "characters)", message)


#: command name -> the module of apex_opt.cli defining it (a function of the same name); imported when the
#: command runs or is listed, so a command pays only for its own imports (``apex-opt solve`` not for sweep's)
COMMANDS: dict[str, str] = {name: name for name in ("calibrate", "capacity", "catalog", "compare", "estimate",
                                                     "simulate", "solve", "sweep", "validate")}


class ApexGroup(click.Group):
    """A click group that turns :class:`ApexOptError` into a one-paragraph message and exit code 2, and Ctrl-C
    into "Interrupted." and exit code 130 (click's own handling would print "Aborted!" and exit 1). Its commands
    are :data:`COMMANDS`, each imported when first needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {n for n in COMMANDS if self._lazy(n) is not None})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._lazy(cmd_name)

    def _lazy(self, name: str) -> click.Command | None:
        """The command ``name`` from its module (added to the group), or None when this build lacks it."""
        if name not in COMMANDS:
            return None
        module_name = f"apex_opt.cli.{COMMANDS[name]}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command whose module is not part of this build
            if exc.name != module_name:
                raise
            return None
        command: click.Command = getattr(module, name)
        self.add_command(command, name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, click.Abort):
            click.echo("\nInterrupted.", err=True)
            ctx.exit(INTERRUPTED)
        except click.UsageError as exc:  # click's own messages echo the value as given: cap it
            # click declares `message` Final, but it is only read when the error is shown, after this
            exc.message = cap_echoes(exc.message)  # type: ignore[misc]
            raise
        except ApexOptError as exc:
            message = exc.render("cli")  # options as flags (--top-k 3), where str(exc) says top_k=3
            lines = message.splitlines() or [message]
            first = textwrap.fill(lines[0], width=110, subsequent_indent="  ")
            click.echo("Error: " + "\n".join([first, *lines[1:]]), err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=ApexGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "-V", "--version", prog_name="apex-opt", message="%(prog)s %(version)s")
def cli() -> None:
    """Plan, simulate and check LLM deployments on GPU clusters.

    \b
    apex-opt solve                      # the built-in example: llama-3.1-70b on 8x H100, lmsys trace
    apex-opt solve --model llama-3.1-70b --cluster h100x8 --workload lmsys --slo ttft=200ms,tpot=50ms
    apex-opt simulate --model llama-3.1-70b --gpu h100-sxm-80gb --tp 8 --workload lmsys
    apex-opt capacity --model llama-3.1-8b --tp 1 --slo ttft=200ms,tpot=30ms --rate 20rps
    apex-opt estimate --model llama-3.1-70b --gpu h100-sxm-80gb --tp 8 --batch 32 --context 1024
    apex-opt catalog models
    """


def main() -> None:
    """Console-script entry point: runs the command, then ends the process at once (:func:`exit_now`)."""
    gc.freeze()  # the imported modules are never garbage: collections scan only what the command creates
    try:
        cli.main(prog_name="apex-opt", standalone_mode=True)
        code: int | str | None = 0
    except KeyboardInterrupt:  # before or after a command runs
        click.echo("\nInterrupted.", err=True)
        code = INTERRUPTED
    except SystemExit as exc:  # click ends every command this way
        code = exc.code
    exit_now(code)


def exit_now(code: int | str | None) -> None:
    """End the process with exit status ``code`` (as ``sys.exit`` reads it) without tearing down the interpreter.

    By then the command has written its output and closed its files and worker pools; what is left is freeing
    every object of a solved problem (CP-SAT, pandas, pydantic), which took 0.2-0.3 s after the default
    ``apex-opt solve`` (``docs/planner.md``). So: run the ``atexit`` handlers (logging's and Ray's shutdown among
    them), flush the standard streams, and leave. A thread other than a daemon still running (never the case
    after a command returns; a worker pool's manager thread after Ctrl-C terminated its workers) is waited for
    up to :data:`EXIT_WAIT_S` seconds, where the interpreter's own exit would wait for ever.
    """
    if isinstance(code, str):  # sys.exit("message"): printed, status 1
        click.echo(code, err=True)
        code = 1
    status = 0 if code is None else int(code)
    deadline = time.monotonic() + EXIT_WAIT_S
    for thread in threading.enumerate():  # none after a command returns; a worker pool's, after Ctrl-C, perhaps
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(deadline - time.monotonic(), 0.0))
    atexit._run_exitfuncs()  # logging's shutdown is one of them; what they print is flushed below
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (apex-opt solve | head): nothing more can be written
            status = status or 1
    os._exit(status)


if __name__ == "__main__":
    main()
