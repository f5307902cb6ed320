"""``apex-opt``: the command group, and the one place library errors become messages and exit codes."""

from __future__ import annotations

import re
import sys
import textwrap
from typing import Any

import click

from .._version import __version__
from ..errors import ECHO_LIMIT, ApexOptError

#: exit code after Ctrl-C (128 + SIGINT), with the message "Interrupted."
INTERRUPTED = 130


def cap_echoes(message: str) -> str:
    """``message`` with every word longer than :data:`~apex_opt.errors.ECHO_LIMIT` characters shortened."""
    return re.sub(rf"\S{{{ECHO_LIMIT + 1},}}", lambda m: f"{m.group(0)[:ECHO_LIMIT - 8]}... ({len(m.group(0))} "
                  "characters)", message)


class ApexGroup(click.Group):
    """A click group that turns :class:`ApexOptError` into a one-paragraph message and exit code 2, and Ctrl-C
    into "Interrupted." and exit code 130 (click's own handling would print "Aborted!" and exit 1)."""

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


def _register_commands() -> None:
    from . import catalog as catalog_cmd

    cli.add_command(catalog_cmd.catalog)
    for module_name in ("calibrate", "capacity", "compare", "estimate", "simulate", "solve", "sweep", "validate"):
        try:
            module = __import__(f"apex_opt.cli.{module_name}", fromlist=[module_name])
        except ModuleNotFoundError as exc:  # a command whose module is not part of this build
            if exc.name != f"apex_opt.cli.{module_name}":
                raise
            continue
        cli.add_command(getattr(module, module_name))


_register_commands()


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="apex-opt", standalone_mode=True)
    except KeyboardInterrupt:  # before or after a command runs
        click.echo("\nInterrupted.", err=True)
        sys.exit(INTERRUPTED)


if __name__ == "__main__":
    main()
