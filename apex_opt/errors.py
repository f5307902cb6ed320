"""The one exception hierarchy of apex-opt.

Every error a user can cause derives from :class:`ApexOptError`. The CLI turns an
``ApexOptError`` into a one-paragraph message and exit code 2 in one place
(``apex_opt.cli.main``); anything else is a bug and keeps its traceback.

Messages name the field, the value and a fix, e.g.::

    specs/gpus/x.yaml: field 'memory': '80 GB' is not a size; write e.g. 80GiB or 80GB
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Self

#: longest echo of a user's value in a message (a path to a large file must not print the file)
ECHO_LIMIT = 80


def shorten(value: object, limit: int = ECHO_LIMIT) -> str:
    """``value`` as text for a message, cut to about ``limit`` characters with the length left out.

    >>> shorten("x" * 200)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (200 characters)"
    >>> shorten(42), shorten("ok")
    ('42', "'ok'")
    """
    if isinstance(value, str):
        flat = " ".join(value.split()) if len(value) <= 10 * limit else " ".join(value[: 10 * limit].split())
        if len(value) <= limit - 2 and flat == value:
            return repr(value)
        if len(flat) <= limit - 2 and len(value) <= limit:
            return repr(flat)
        return f"{flat[: limit - 8]!r}... ({len(value)} characters)"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: CLI flags of the Python keywords whose flag is not ``"--" + keyword.replace("_", "-")`` (``calibrate(constants=)``
#: is ``apex-opt calibrate --fit``)
FLAGS: dict[str, str] = {"target_rate": "--rate", "constants": "--fit"}


def spell_option(name: str, form: str = "python", *, value: bool = False) -> str:
    """How a message names the parameter ``name`` (its Python keyword) in ``form`` ``"python"`` or ``"cli"``.

    With ``value`` the text is followed by a value: ``top_k=`` in Python, ``--top-k `` on the command line.

    >>> spell_option("top_k"), spell_option("top_k", "cli"), spell_option("target_rate", "cli", value=True)
    ('top_k', '--top-k', '--rate ')
    """
    if form == "cli":
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        return flag + " " if value else flag
    return name + "=" if value else name


def _placeholders(name: str) -> tuple[str, ...]:
    return "{" + name + "=}", "{" + name + "=True}", "{" + name + "}"


def fill_options(text: str, options: Iterable[str], form: str = "python") -> str:
    """``text`` with the placeholders of ``options`` spelled for ``form`` (``"python"`` or ``"cli"``).

    ``{top_k=}`` comes before a value (``top_k=``, ``--top-k ``), ``{top_k}`` names the option alone and
    ``{use_all_gpus=True}`` turns a switch on (``use_all_gpus=True`` in Python, the flag ``--use-all-gpus`` on the
    command line). Placeholders of other names stay as written.

    >>> fill_options("drop {use_all_gpus=True} or raise {top_k}", ("use_all_gpus", "top_k"), "cli")
    'drop --use-all-gpus or raise --top-k'
    """
    for name in options:
        value, switch, alone = _placeholders(name)
        text = text.replace(value, spell_option(name, form, value=True))
        text = text.replace(switch, spell_option(name, form) if form == "cli" else name + "=True")
        text = text.replace(alone, spell_option(name, form))
    return text


def options_named(text: str, names: Iterable[str]) -> tuple[str, ...]:
    """The names of ``names`` whose placeholders (:func:`fill_options`) occur in ``text``, in the order given.

    >>> options_named("e.g. {slo=}tpot=20ms ({use_all_gpus=True})", ("top_k", "slo", "use_all_gpus"))
    ('slo', 'use_all_gpus')
    """
    return tuple(n for n in dict.fromkeys(names) if any(p in text for p in _placeholders(n)))


class Message(str):
    """Message text that carries the options its placeholders name, for text composed in one place and raised in
    another: ``InfeasibleError(Message(text, ("slo",)))`` takes ``options`` from it as if given ``option=``.

    >>> str(InfeasibleError(Message("relax {slo=}tpot=20ms", ("slo",))))
    'relax slo=tpot=20ms'
    """

    options: tuple[str, ...]

    def __new__(cls, text: str, options: str | Iterable[str] = ()) -> Self:
        self = super().__new__(cls, text)
        self.options = (options,) if isinstance(options, str) else tuple(options)
        return self

    def __reduce__(self) -> tuple[object, ...]:
        return Message, (str(self), self.options)


class ApexOptError(Exception):
    """Base class of every error apex-opt raises on purpose.

    An error about a parameter may carry ``option``, the parameter's Python keyword (e.g. ``"top_k"``, or a
    tuple of them), and write its message with placeholders the renderer fills in: ``{top_k=}`` before a value,
    ``{top_k}`` alone and ``{use_all_gpus=True}`` for a switch turned on (:func:`fill_options`); a
    :class:`Message` as the text brings its own options. ``str(exc)`` (and :meth:`render`) gives the Python form,
    ``top_k=0``; the CLI shows ``render("cli")``, ``--top-k 0`` (:func:`spell_option`). Only the names in
    ``options`` are replaced, so a brace in an echoed value stays as it is.

    >>> e = SpecError("{top_k=}0: must be at least 1; write e.g. {top_k=}3", option="top_k")
    >>> str(e), e.render("cli"), e.option
    ('top_k=0: must be at least 1; write e.g. top_k=3', '--top-k 0: must be at least 1; write e.g. --top-k 3', 'top_k')
    """

    exit_code: int = 2
    #: the parameters the message names through placeholders (Python keywords); the first is :attr:`option`
    options: tuple[str, ...] = ()

    def __init__(self, *args: object, option: str | tuple[str, ...] | None = None) -> None:
        super().__init__(*args)
        if option is not None:
            self.options = (option,) if isinstance(option, str) else tuple(option)
        elif args and isinstance(args[0], Message):  # text composed elsewhere that names its own options
            self.options = args[0].options

    @property
    def option(self) -> str | None:
        """The Python keyword of the parameter to fix (None: the error is not about one parameter)."""
        return self.options[0] if self.options else None

    def render(self, form: str = "python") -> str:
        """The message with its options spelled for ``form``: ``"python"`` (keywords) or ``"cli"`` (flags)."""
        return fill_options(super().__str__(), self.options, form)

    def __str__(self) -> str:
        return self.render()


class SpecError(ApexOptError, ValueError):
    """A spec, a unit string, an SLO or a command-line value is malformed."""


class UnknownNameError(SpecError, KeyError):
    """A catalog name (model, GPU, cluster, engine, workload) does not exist.

    The message lists the closest known names; ``hint`` may name options with placeholders (``{gpu=}NAME``) of
    ``option``, as any :class:`ApexOptError`.
    """

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "", *,
                 option: str | tuple[str, ...] | None = None) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        if not close:
            close = [k for k in known if name.lower() in k.lower() or k.lower() in name.lower()][:3]
        shown = f"'{name}'" if len(name) <= ECHO_LIMIT and name.isprintable() else shorten(name)
        msg = f"unknown {kind} {shown}"
        if close:
            msg += "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        else:
            msg += "."
        msg += f" Known {kind}s: {', '.join(known)}." if len(known) <= 12 else f" See 'apex-opt catalog {kind}s'."
        if hint:
            msg += " " + hint
        super().__init__(msg, option=option)
        self.kind = kind
        self.name = name
        self.close_matches = close

    def render(self, form: str = "python") -> str:
        return fill_options(str(self.args[0]), self.options, form)  # KeyError's own str would quote the message

    def __str__(self) -> str:
        return self.render()


class TraceError(SpecError):
    """A workload trace has a malformed line (the message names file, line and field)."""


class ConstraintError(ApexOptError):
    """A user constraint function is malformed (returns a bool, is non-linear, raises)."""


class InfeasibleError(ApexOptError):
    """No plan satisfies the constraints; ``conflict`` lists the labels that together rule out every plan."""

    def __init__(self, message: str, conflict: tuple[str, ...] = (), *,
                 option: str | tuple[str, ...] | None = None) -> None:
        super().__init__(message, option=option)
        self.conflict = conflict


class DoesNotFitError(InfeasibleError):
    """A plan's weights and reserves do not fit in GPU memory (the message says by how much)."""


class SolverError(ApexOptError):
    """The constraint solver failed in a way that is not infeasibility (time limit with no plan, model invalid)."""


class SimulationError(ApexOptError):
    """A simulation cannot run as asked (e.g. a plan the engine could not start)."""


__all__ = [
    "ECHO_LIMIT",
    "FLAGS",
    "ApexOptError",
    "ConstraintError",
    "DoesNotFitError",
    "InfeasibleError",
    "Message",
    "SimulationError",
    "SolverError",
    "SpecError",
    "TraceError",
    "UnknownNameError",
    "fill_options",
    "options_named",
    "shorten",
    "spell_option",
]
