"""The base of every spec: strict (unknown fields are errors) and frozen (hashable cache keys)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import SpecError, shorten

if TYPE_CHECKING:  # pydantic exports its metaclass only from a private module; name it for the checker alone
    from pydantic._internal._model_construction import ModelMetaclass as _ModelMeta
else:
    _ModelMeta = type(BaseModel)


class _SpecMeta(_ModelMeta):
    """Keyword construction (``Plan(gpu=..., tp=2)``) raises :class:`SpecError`, as :meth:`Spec.parse` does.

    Only direct calls pass here; pydantic's own validation (``model_validate``, nested specs) does not.
    """

    def __call__(cls, *args: Any, **data: Any) -> Any:
        name = cls.__name__
        if args:
            model_fields = cast("type[Spec]", cls).model_fields  # cls is a Spec subclass, not the metaclass itself
            fields = ", ".join(list(model_fields)[:4])
            raise SpecError(f"{name}() takes its fields by name ({fields}, ...), got {len(args)} positional "
                            f"value(s) starting with {shorten(args[0])}; write e.g. "
                            f"{name}({next(iter(model_fields), 'field')}=...)")
        try:
            return super().__call__(**data)
        except ValidationError as exc:
            raise SpecError(render_validation_error(exc, source=f"{name}(...)", kind=name)) from None


class Spec(BaseModel, metaclass=_SpecMeta):
    """A strict, frozen pydantic model. Build it with :meth:`parse` to get apex-opt errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @classmethod
    def parse(cls, data: Any, *, source: str | Path = "<input>", kind: str | None = None) -> Self:
        """Validate ``data``; a problem becomes one :class:`SpecError` naming the source, field and value."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(render_validation_error(exc, source=str(source), kind=kind or cls.__name__)) from None


def render_validation_error(exc: ValidationError, *, source: str, kind: str) -> str:
    """Render pydantic errors as ``file: N problem(s) in the <kind> spec`` plus one line per field."""
    problems = exc.errors(include_url=False)
    lines = [f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the {kind} spec"]
    for err in problems[:10]:
        loc = ".".join(str(p) for p in err["loc"])[:200] or "(top level)"
        msg = err["msg"]
        msg = msg.removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "missing required field"
        value = err.get("input")
        if err["type"] in ("missing",) or isinstance(value, dict):
            shown = ""
        elif not err["loc"] and isinstance(value, (str, list)):  # a whole file that is not a mapping: not echoed
            size = f"{len(value)} characters" if isinstance(value, str) else f"{len(value)} items"
            shown = (f" (got a {type(value).__name__} of {size}, not a mapping of fields; check that this is the "
                     f"right file)")
        else:
            shown = f" (got {shorten(value)})"
        lines.append(f"  {loc}: {msg}{shown}")
    if len(problems) > 10:
        lines.append(f"  ... and {len(problems) - 10} more")
    return "\n".join(lines)
