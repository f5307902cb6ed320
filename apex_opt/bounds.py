"""Limits checked before work is built, so that no input can make apex-opt hang or allocate without bound.

Each limit is far beyond any real deployment and is named, with its value, in the error that enforces it:

* :data:`MAX_GPUS`: GPUs in a cluster or a plan (and each of tp, pp, dp, ep), checked before any per-GPU graph;
* :data:`MAX_BATCH` and :data:`MAX_ITERATION_TOKENS`: ``estimate``'s batch and tokens in one iteration;
* :data:`MAX_ARRIVAL_SPAN_S`: the time span of a synthetic workload's arrivals;
* :data:`MAX_YAML_NODES`: values a YAML document holds once its aliases are expanded (a "billion laughs" file);
* :data:`USER_CODE_TIME_LIMIT_S`: seconds one call of a user constraint may run (:func:`user_code_time_limit`);
* :data:`PLUGIN_SEARCH_TIME_LIMIT_S`: seconds a user's ``--solver`` plug-in may search.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .errors import ConstraintError, SpecError

#: GPUs in one cluster or one plan; also the bound of each parallel degree (tp, pp, dp, ep)
MAX_GPUS = 65_536
#: sequences in one ``estimate`` iteration
MAX_BATCH = 65_536
#: tokens in one ``estimate`` prefill iteration (batch x context)
MAX_ITERATION_TOKENS = 1 << 26
#: span of a synthetic workload's arrivals (start + requests / rate, or start + duration): one year
MAX_ARRIVAL_SPAN_S = 365 * 86_400.0
#: values (scalars, lists, mappings) in one YAML document after its aliases are expanded
MAX_YAML_NODES = 100_000
#: seconds one call of a user constraint function may take
USER_CODE_TIME_LIMIT_S = 30.0
#: seconds a user's ``--solver`` plug-in may search (its own constraints and simulations included)
PLUGIN_SEARCH_TIME_LIMIT_S = 600.0


def format_count(n: int) -> str:
    """``n`` with thousands separators, or its first digits and its length when it is absurdly long."""
    text = str(n)
    return f"{n:,}" if len(text) <= 24 else f"{text[:20]}... ({len(text)} digits)"


def check_count(what: str, value: int, limit: int, fix: str, *, option: str | tuple[str, ...] | None = None) -> None:
    """Raise :class:`SpecError` ``"<what> <value> is more than the <limit> apex-opt supports; <fix>"``; ``option``:
    the parameters ``what`` and ``fix`` name through placeholders (``{batch}``)."""
    if value > limit:
        raise SpecError(f"{what} {format_count(value)} is more than the {limit:,} apex-opt supports; {fix}",
                        option=option)


# ------------------------------------------------------------------------------------------- YAML
def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Values under ``root`` with every alias expanded, counted up to ``limit`` + 1 (a cycle counts as over)."""
    memo: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in memo:
            continue
        children: list[yaml.Node]
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        else:
            children = []
        if not done:
            if key in active:  # an alias inside its own anchor: infinite
                return limit + 1
            active.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in memo)
            continue
        total = 1
        for c in children:
            if id(c) not in memo:  # still open: a recursive alias
                return limit + 1
            total += memo[id(c)]
            if total > limit:
                return limit + 1
        memo[key] = total
        active.discard(key)
    return memo.get(id(root), 1)


#: libyaml's parser where PyYAML was built with it (the wheels are), about 9x faster than the pure-Python one on
#: the catalog; both read the same YAML 1.1 safe subset into the same values
_SAFE_LOADER: type[yaml.SafeLoader | yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str, source: str | Path = "<input>", *, limit: int | None = None) -> Any:
    """``yaml.safe_load(text)``, refusing a document whose aliases expand to more than ``limit`` values.

    Aliases (``*name``) load as shared references, but whatever walks the result (validation, messages) sees
    every copy: ten levels of ten aliases are 10**10 values. The error never shows the expanded value.
    """
    limit = MAX_YAML_NODES if limit is None else limit
    loader = _SAFE_LOADER(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise SpecError(f"{source}: the YAML is nested too deeply; flatten it (a spec is a few levels deep)") \
                from None
        if node is None:
            return None
        if _expanded_size(node, limit) > limit:
            raise SpecError(f"{source}: the YAML's aliases (*name) expand to more than {limit:,} values, or refer to "
                            "themselves; write the values out instead of nesting aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


# ------------------------------------------------------------------------------------------- user code
class _UserCodeTimeout(BaseException):
    """Raised inside user code when its time is up (a BaseException, so ``except Exception`` cannot swallow it)."""


@contextmanager
def user_code_time_limit(what: str, seconds: float | None = None, *, error: type[Exception] = ConstraintError,
                         fix: str = "a constraint must return at once: look for a loop that never ends there",
                         option: str | tuple[str, ...] | None = None) -> Iterator[None]:
    """Run the ``with`` body (a call into user code) for at most ``seconds``, else raise ``error`` (by default
    :class:`ConstraintError`) naming ``what``, where it was stopped, and ``fix``. ``option``: the parameters
    ``what`` and ``fix`` name through placeholders (``{solver=}``), given to an :class:`ApexOptError` ``error``.

    Enforced with ``SIGALRM`` on POSIX in the main thread, when no other alarm is pending; elsewhere the body
    runs unbounded.
    """
    limit = USER_CODE_TIME_LIMIT_S if seconds is None else seconds
    usable = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
              and limit > 0 and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    where: list[str] = []

    def on_alarm(signum: int, frame: Any) -> None:
        if frame is not None:
            where.append(f" at {Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
        raise _UserCodeTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    except _UserCodeTimeout:
        message = f"{what} ran for more than {limit:g} s and was stopped{''.join(where[:1])}; {fix}"
        if option is None:
            raise error(message) from None
        raise error(message, option=option) from None  # type: ignore[call-arg]  # an ApexOptError
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


__all__ = [
    "MAX_ARRIVAL_SPAN_S",
    "MAX_BATCH",
    "MAX_GPUS",
    "MAX_ITERATION_TOKENS",
    "MAX_YAML_NODES",
    "USER_CODE_TIME_LIMIT_S",
    "check_count",
    "format_count",
    "load_yaml",
    "user_code_time_limit",
]
