"""The base of every spec: strict (unknown fields are errors) and frozen (hashable cache keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import SpecError

T = TypeVar("T", bound="Spec")


class Spec(BaseModel):
    """A strict, frozen pydantic model. Build it with :meth:`parse` to get apex-opt errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def parse(cls: type[T], data: Any, *, source: str | Path = "<input>", kind: str | None = None) -> T:
        """Validate ``data``; a problem becomes one :class:`SpecError` naming the source, field and value."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(render_validation_error(exc, source=str(source), kind=kind or cls.__name__)) from None


def render_validation_error(exc: ValidationError, *, source: str, kind: str) -> str:
    """Render pydantic errors as ``file: N problem(s) in the <kind> spec`` plus one line per field."""
    problems = exc.errors(include_url=False)
    lines = [f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the {kind} spec"]
    for err in problems:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "missing required field"
        value = err.get("input")
        shown = "" if err["type"] in ("missing",) or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)
