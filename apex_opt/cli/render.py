"""Shared output helpers for the commands: JSON on stdout, rich tables on a terminal."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import click
from rich.console import Console
from rich.table import Table


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):  # a dict, or a typed record that reads as one (SimSummary, Prediction)
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _clean(value.item())
    return value


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON (NaN and infinities become null)."""
    click.echo(json.dumps(_clean(data), indent=2, sort_keys=False))


def console() -> Console:
    return Console(width=max(100, Console().width), soft_wrap=False)


def table(title: str, columns: list[str], rows: list[list[Any]], *, justify_numbers: bool = True) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for i, col in enumerate(columns):
        t.add_column(col, justify="right" if (justify_numbers and i > 0) else "left", no_wrap=i == 0)
    for row in rows:
        t.add_row(*[str(c) for c in row])
    return t
