"""Labelled constraints: built-in and user rules share one decorator, :func:`constraint`.

A *plan* constraint is a plain function ``(v: PlanVars, s: Specs)`` returning a CP-SAT bounded linear expression,
a list of them, or ``[]``; Python ``if`` on spec data chooses what to return, expressions on ``v`` constrain the
decisions::

    @constraint("tp-inside-node")
    def tp_inside_node(v, s):
        return v.tp <= s.cluster.gpus_per_node

Each becomes ``model.add(expr).only_enforce_if(lit)`` with one literal ``lit`` per label, passed to CP-SAT as an
assumption, so an infeasible model names the labels that together rule out every plan.

A *simulated* constraint, ``@constraint("p99-ttft", on="simulated")``, receives the simulation summary (a dict
with attribute access: ``r.ttft_p99_s``) and the specs, and returns a bool; plans it rejects are cut after
simulation, like an SLO miss.

Bad constraint code is refused when the model is built, with the label and ``file:line``:
a function that returns a plain ``bool`` (it compared spec values only), a non-linear expression
(``v.tp * v.pp``: use ``v.product('tp', 'pp')``), or one that raises.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import linecache
import math
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ortools.sat.python import cp_model

from ..bounds import user_code_time_limit
from ..errors import ConstraintError

Kind = Literal["plan", "simulated"]
_LOADED = itertools.count()


@dataclass(frozen=True)
class Constraint:
    """A labelled rule: the function, where it was written, and what it constrains."""

    label: str
    fn: Callable[..., Any]
    on: Kind = "plan"
    description: str | Callable[..., str] | None = None
    builtin: bool = False
    #: how to relax it, for infeasibility messages (built-ins only): a callable (space) -> str or a string; it and
    #: ``description`` name options with placeholders (``{slo=}tpot=20ms``) of :data:`OPTIONS`
    relax: str | Callable[..., str | None] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def location(self) -> str:
        """``file.py:line`` of the function's definition."""
        return _location(self.fn)

    def describe(self, space: Any = None) -> str:
        """One line for explanations: the built-in's text, or "user constraint (file.py:4)"."""
        if callable(self.description):
            try:
                return self.description(space)
            except Exception:  # noqa: BLE001 - a description must never hide the real error
                return self.label
        if self.description:
            return self.description
        doc = (inspect.getdoc(self.fn) or "").strip().splitlines()
        head = f"{doc[0]} " if doc and not self.builtin else ""
        kind = "simulated-result constraint" if self.on == "simulated" else "user constraint"
        return f"{head}{kind} ({self.location})" if not self.builtin else (doc[0] if doc else self.label)

    def __repr__(self) -> str:
        return f"<Constraint {self.label!r} on={self.on} at {self.location}>"


def constraint(label: str, *, on: Kind = "plan", description: str | None = None) -> Callable[[Callable], Constraint]:
    """Decorate a function as a labelled constraint.

    Parameters
    ----------
    label:
        The name shown in explanations and errors (``[label]``); unique within one solve.
    on:
        ``"plan"`` (default): ``fn(v, s)`` returns CP-SAT expressions on :class:`PlanVars`.
        ``"simulated"``: ``fn(result, s)`` returns a bool on the simulated metrics; failing plans are cut.
    description:
        Optional text for explanations (default: the first docstring line and the location).

    Raises
    ------
    ConstraintError
        The label is empty or ``on`` is unknown.
    """
    if not isinstance(label, str) or not label.strip():
        raise ConstraintError(f"@constraint needs a non-empty label, got {label!r}")
    if on not in ("plan", "simulated"):
        raise ConstraintError(f"@constraint('{label}', on={on!r}): on must be 'plan' or 'simulated'")

    def wrap(fn: Callable) -> Constraint:
        if isinstance(fn, Constraint):
            fn = fn.fn
        if not callable(fn):
            raise ConstraintError(f"@constraint('{label}') decorates {fn!r}, which is not a function")
        return Constraint(label.strip(), fn, on, description)

    return wrap


def _location(fn: Callable) -> str:
    code = getattr(fn, "__code__", None)
    if code is None:
        return getattr(fn, "__qualname__", repr(fn))
    return f"{Path(code.co_filename).name}:{_def_line(code)}"


def _def_line(code: Any) -> int:
    """The ``def`` line (``co_firstlineno`` points at the first decorator)."""
    line = code.co_firstlineno
    for offset in range(20):
        text = linecache.getline(code.co_filename, line + offset).lstrip()
        if text.startswith(("def ", "async def ")):
            return line + offset
        if not text.startswith("@") and text and offset:
            break
    return line


def _raise_site(exc: BaseException, fn: Callable) -> str:
    """``file.py:line`` of the innermost frame of the user's file in ``exc``'s traceback."""
    code = getattr(fn, "__code__", None)
    frames = traceback.extract_tb(exc.__traceback__)
    if code is not None:
        mine = [f for f in frames if f.filename == code.co_filename]
        if mine:
            return f"{Path(mine[-1].filename).name}:{mine[-1].lineno}"
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else _location(fn)


# ------------------------------------------------------------------------------------------- evaluation
def _call_user(c: Constraint, where: str, args: tuple, returns: str) -> Any:
    """Call a user constraint under the time limit; ``sys.exit`` inside it becomes a :class:`ConstraintError`."""
    try:
        with user_code_time_limit(where):
            return c.fn(*args)
    except SystemExit as exc:
        raise ConstraintError(f"{where} called sys.exit({exc.code!r:.40}) at {_raise_site(exc, c.fn)}; a "
                              f"{'simulated ' if where.startswith('simulated') else ''}constraint {returns} and "
                              "must not exit") from None


def plan_expressions(c: Constraint, v: Any, specs: Any) -> list[cp_model.BoundedLinearExpression]:
    """Call a plan constraint and check what it returns (see the module docstring for the rules)."""
    where = f"constraint '{c.label}' ({c.location})"
    try:
        out = _call_user(c, where, (v, specs), "returns an expression (e.g. v.tp <= 8)")
    except ConstraintError:
        raise
    except Exception as exc:
        site = _raise_site(exc, c.fn)
        msg = f"{where} raised {type(exc).__name__} at {site}: {exc}"
        text = str(exc)
        if "as a Boolean" in text:
            msg = (f"{where} uses a solver expression as a Python bool at {site} (e.g. `if v.tp > 2:`, `and`, "
                   "min/max); return the comparison itself, and branch with `if` on spec values only")
        elif (isinstance(exc, TypeError) and ("incompatible function arguments" in text
                                              or "unsupported operand" in text)) or (
                isinstance(exc, NotImplementedError) and "linear expression is not supported" in text):
            msg = (f"{where} builds a non-linear expression at {site} (CP-SAT takes linear expressions only: "
                   "sums of variables times constants); for a product of two decisions use v.product('tp', 'pp')")
        raise ConstraintError(msg) from exc
    items = list(out) if isinstance(out, (list, tuple)) else [out]
    exprs = []
    for item in items:
        if item is None and not isinstance(out, (list, tuple)):
            raise ConstraintError(f"{where} returned None; return an expression on PlanVars (e.g. v.tp <= 8), "
                                  "a list of them, or [] for no constraint")
        if isinstance(item, bool) or type(item).__name__ == "bool_":
            raise ConstraintError(f"{where} returned bool {bool(item)}; compare PlanVars fields (v.tp, v.gpus, ...), "
                                  "not spec values, or return [] when the rule does not apply")
        if isinstance(item, cp_model.BoundedLinearExpression):
            exprs.append(item)
            continue
        raise ConstraintError(f"{where} returned {type(item).__name__} {item!r}; return a comparison such as "
                              "v.tp <= 8 (a CP-SAT bounded linear expression), a list of them, or []")
    return exprs


def check_simulated(c: Constraint, metrics: Any, specs: Any) -> bool:
    """Call a simulated-result constraint; it must return a bool."""
    where = f"simulated constraint '{c.label}' ({c.location})"
    try:
        out = _call_user(c, where, (metrics, specs), "returns a bool")
    except ConstraintError:
        raise
    except Exception as exc:
        raise ConstraintError(f"{where} raised {type(exc).__name__} at {_raise_site(exc, c.fn)}: {exc}") from exc
    if isinstance(out, bool) or type(out).__name__ == "bool_":
        return bool(out)
    raise ConstraintError(f"{where} returned {type(out).__name__} {out!r}; a simulated constraint returns a bool "
                          "(e.g. r.ttft_p99_s <= 1.0)")


# ------------------------------------------------------------------------------------------- loading
def load_constraints(path: str | Path) -> list[Constraint]:
    """Every ``@constraint`` in a Python file, in the order they are defined.

    Raises
    ------
    ConstraintError
        The file is missing, does not import (its error is shown with file:line) or defines no constraint.
    """
    if not isinstance(path, (str, Path)):
        raise ConstraintError(f"{{constraints=}}{str(path)[:80]!r}: got a value of type {type(path).__name__}; give "
                              "the path of a .py file of @constraint functions", option="constraints")
    path = Path(path)
    if not path.is_file():
        raise ConstraintError(f"{{constraints=}}{str(path)[:200]}: no such file; check the path", option="constraints")
    name = f"apex_opt_user_constraints_{next(_LOADED)}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConstraintError(f"{{constraints=}}{path}: not a Python file", option="constraints")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with user_code_time_limit(f"loading {{constraints=}}{path.name}", option="constraints"):
            spec.loader.exec_module(module)
    except ConstraintError:
        sys.modules.pop(name, None)
        raise
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise ConstraintError(f"{path.name}:{exc.lineno}: syntax error: {exc.msg}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        sys.modules.pop(name, None)
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        line = frames[-1].lineno if frames else 1
        raise ConstraintError(f"{path.name}:{line}: loading the constraints failed: {type(exc).__name__}: {exc}") \
            from None
    found = [obj for obj in vars(module).values() if isinstance(obj, Constraint)]
    if not found:
        raise ConstraintError(f"{{constraints=}}{path}: no function decorated with @constraint(...) "
                              "(write `@ax.constraint(\"label\")` above a function of (v, s))", option="constraints")
    found.sort(key=lambda c: getattr(getattr(c.fn, "__code__", None), "co_firstlineno", 0))
    return found


def normalize(constraints: Iterable[Any] | None) -> list[Constraint]:
    """Constraint objects from what ``solve(constraints=...)`` accepts: Constraints, file paths, lists of them."""
    out: list[Constraint] = []
    for item in constraints or ():
        if isinstance(item, Constraint):
            out.append(item)
        elif isinstance(item, (str, Path)):
            out.extend(load_constraints(item))
        elif isinstance(item, (list, tuple)):
            out.extend(normalize(item))
        elif callable(item):
            name = getattr(item, "__name__", "constraint")
            raise ConstraintError(f"{name} ({_location(item)}) is not labelled; decorate it with "
                                  f"@ax.constraint(\"{name.replace('_', '-')}\")")
        else:
            raise ConstraintError(f"constraints=[...] holds {item!r}; give @constraint functions or .py files")
    labels: dict[str, Constraint] = {}
    for c in out:
        if c.label in labels and labels[c.label].fn is not c.fn:
            raise ConstraintError(f"two constraints are labelled '{c.label}' ({labels[c.label].location} and "
                                  f"{c.location}); labels must be unique")
        labels[c.label] = c
    return list(labels.values())


def split_kinds(constraints: Sequence[Constraint]) -> tuple[list[Constraint], list[Constraint]]:
    plan = [c for c in constraints if c.on == "plan"]
    simulated = [c for c in constraints if c.on == "simulated"]
    return plan, simulated


__all__ = [
    "Constraint",
    "check_simulated",
    "constraint",
    "load_constraints",
    "normalize",
    "plan_expressions",
    "split_kinds",
]


# ------------------------------------------------------------------------------------------- built-ins
def _slo_time(seconds: float) -> str:
    from ..units import format_time

    return format_time(seconds).replace(".0ms", "ms").replace(".0us", "us")


#: the parameters (``solve``/``load_specs`` keywords) the built-ins' texts and relaxations name with placeholders
#: (``{slo=}tpot=20ms``: ``slo=tpot=20ms`` in Python, ``--slo tpot=20ms`` on the command line), the fix first
OPTIONS = ("slo", "quantization", "kv_dtype", "tp_across_nodes", "use_all_gpus")

#: bytes per weight of each --quantization choice, best first
_WEIGHT_BYTES = (("none", 2.0), ("fp8", 1.0), ("int4", 0.5))


def memory_fix(params: int, gpu: Any, gpus: int, quantization: str, kv_dtype: str) -> str:
    """What would make the plans fit in memory.

    When the cluster could hold the weights (memory rules plans out only together with other constraints), the
    next smaller format or KV dtype. When even every GPU together cannot, how far off the problem is: the weights
    of each format against what the GPUs hold (``gpu_memory_utilization`` 0.9 of each GPU less ~1.5 GiB for context
    and buffers), a format only where it would leave a fifth for the KV cache, else the GPUs each format needs.

    The text names the options with placeholders (``{quantization=}int4``: ``quantization=int4`` in Python,
    ``--quantization int4`` on the command line; :func:`apex_opt.errors.fill_options`).

    >>> from types import SimpleNamespace as NS
    >>> print(memory_fix(405_000_000_000, NS(name="l40s", memory=48 * 2**30), 2, "none", "bf16"))
    more GPUs: the weights alone need 754 GiB in bf16 (377 GiB in fp8, 189 GiB in int4), 2 x l40s hold 83 GiB; \
that takes at least 23 l40s in bf16, 12 with {quantization=}fp8, 6 with {quantization=}int4
    >>> print(memory_fix(405_000_000_000, NS(name="h100", memory=80 * 2**30), 4, "none", "bf16"))
    {quantization=}int4: the weights then need 189 GiB of the 282 GiB the GPUs hold
    """
    usable = max(gpu.memory * 0.9 - 1.5 * 2**30, 1.0)
    sizes = [(q, params * b) for q, b in _WEIGHT_BYTES]
    in_force = {"none": 0, "fp8": 1, "int8": 1, "int4": 2, "fp4": 2, "any": 2}.get(quantization, 0)
    current = sizes[in_force][1]
    if current <= usable * gpus:
        if in_force == 0:
            return "{quantization=}fp8"
        return "{kv_dtype=}fp8" if kv_dtype == "bf16" else "more GPUs"
    for q, w in sizes[in_force + 1:]:
        if w <= 0.8 * usable * gpus:
            return f"{{quantization=}}{q}: the weights then need {_gib(w)} of the {_gib(usable * gpus)} the GPUs hold"
    need = [(q, max(1, math.ceil(w / (0.8 * usable)))) for q, w in sizes]
    formats = ", ".join(f"{_gib(w)} in {q}" for q, w in sizes[1:])
    counts = ", ".join(f"{n} with {{quantization=}}{q}" for q, n in need[1:])
    return (f"more GPUs: the weights alone need {_gib(sizes[0][1])} in bf16 ({formats}), {gpus} x {gpu.name} hold "
            f"{_gib(usable * gpus)}; that takes at least {need[0][1]} {gpu.name} in bf16, {counts}")


def _gib(x: float) -> str:
    return f"{x / 2**30:.0f} GiB"


def _builtin(label: str, description: Callable[[Any], str],
             relax: Callable[[Any], str | None] | str | None = None) -> Callable[[Callable[..., Any]], Constraint]:
    """A built-in constraint: the same :class:`Constraint` as a user's, with a description for explanations."""

    def wrap(fn: Callable) -> Constraint:
        return Constraint(label, fn, "plan", description, builtin=True, relax=relax)

    return wrap


def builtin_constraints(space: Any) -> list[Constraint]:
    """The built-in constraints of a problem, in the order explanations list them."""

    specs = space.specs
    opts = space.options
    slo = specs.slo
    out: list[Constraint] = []

    def gpus_text(sp: Any) -> str:
        if sp.options.use_all_gpus:
            return f"use all {sp.total_gpus} GPUs of the cluster ({{use_all_gpus=True}})"
        return f"use at most the cluster's {sp.total_gpus} GPUs"

    @_builtin("gpus", gpus_text, lambda sp: "drop {use_all_gpus=True}" if sp.options.use_all_gpus else "add GPUs")
    def gpus(v: Any, s: Any) -> Any:
        return v.gpus == v.space.total_gpus if v.space.options.use_all_gpus else v.gpus <= v.space.total_gpus

    out.append(gpus)

    @_builtin("divisibility", lambda sp: "tp, ep split heads, KV heads, experts and MLP widths evenly; pp <= layers")
    def divisibility(v: Any, s: Any) -> Any:
        return v._divisible == 1

    out.append(divisibility)

    if not opts.tp_across_nodes:
        @_builtin("placement.tp",
                  lambda sp: f"each tensor-parallel group inside one NVLink domain ({sp.domain_gpus} GPUs)",
                  "{tp_across_nodes=True}")
        def placement_tp(v: Any, s: Any) -> Any:
            return v.tp_nodes == 1

        out.append(placement_tp)

    def memory_text(sp: Any) -> str:
        return f"weights + KV cache fit in {_gib(sp.estimator.gpu.memory)} per GPU"

    def memory_relax(sp: Any) -> str:
        q = sp.specs.model.checkpoint_weights
        if q is not None:  # a quantized checkpoint is served as stored: --quantization changes nothing
            gpu = sp.estimator.gpu
            usable = max(gpu.memory * 0.9 - 1.5 * 2**30, 1.0) * sp.total_gpus
            weights = sp.specs.model.total_params * q.bytes_per_weight  # a lower bound: 16-bit parts count less
            if weights <= 0.8 * usable and sp.options.kv_dtype == "bf16":
                return "{kv_dtype=}fp8"
            return (f"more GPUs: the {q.method} checkpoint's weights need at least {_gib(weights)} as stored, "
                    f"{sp.total_gpus} x {gpu.name} hold {_gib(usable)} ({{quantization}} does not apply to it)")
        return memory_fix(sp.specs.model.total_params, sp.estimator.gpu, sp.total_gpus, sp.options.quantization,
                          sp.options.kv_dtype)

    @_builtin("memory", memory_text, memory_relax)
    def memory(v: Any, s: Any) -> Any:
        return [layers <= cap for layers, cap in zip(v.layers, v._max_layers)]

    out.append(memory)

    if slo.ttft is not None:
        limit_ns = int(slo.ttft * opts.slo_slack * 1e9)

        def ttft_text(sp: Any) -> str:
            return (f"TTFT <= {_slo_time(sp.specs.slo.ttft)} for the workload's p{sp.stats.quantile:g} prompt "
                    f"({sp.stats.long_prompt} tokens)")

        @_builtin("slo.ttft", ttft_text, lambda sp: _suggest(sp, "ttft"))
        def slo_ttft(v: Any, s: Any) -> Any:
            return v.ttft_tail_ns <= limit_ns

        out.append(slo_ttft)

    if slo.tpot is not None:
        tpot_ns = int(slo.tpot * opts.slo_slack * 1e9)

        @_builtin("slo.tpot",
                  lambda sp: f"TPOT <= {_slo_time(sp.specs.slo.tpot)} at the workload's expected batch",
                  lambda sp: _suggest(sp, "tpot"))
        def slo_tpot(v: Any, s: Any) -> Any:
            return v.tpot_ns <= tpot_ns

        out.append(slo_tpot)

    if slo.e2e is not None:
        e2e_ns = int(slo.e2e * opts.slo_slack * 1e9)
        mean_out = max(round(space.stats.mean_output) - 1, 0)

        @_builtin("slo.e2e", lambda sp: f"TTFT + mean output x TPOT <= {_slo_time(sp.specs.slo.e2e)}",
                  lambda sp: f"{{slo=}}e2e={_slo_time(2 * sp.specs.slo.e2e)}")
        def slo_e2e(v: Any, s: Any) -> Any:
            return v.ttft_ns + mean_out * v.tpot_ns <= e2e_ns

        out.append(slo_e2e)

    need = math.ceil(space.stats.rate * (1 + opts.headroom) * 1e6)

    @_builtin("capacity",
              lambda sp: f"serves the workload's {sp.stats.rate:.3g} req/s with {sp.options.headroom:.0%} headroom",
              "more GPUs or a looser TPOT SLO")
    def capacity(v: Any, s: Any) -> Any:
        return v.capacity >= need

    out.append(capacity)
    return out


def _suggest(space: Any, metric: str) -> str | None:
    """A relaxed SLO value that some candidate fitting in memory would meet (rounded up to a round number);
    None when that is no looser than the bound in force (the SLO is not what rules the plans out)."""

    best = math.inf
    for c in space.candidates:
        e = c.est
        if e is None or not e.fits or c.gpus > space.total_gpus:
            continue
        value = (e.ttft_tail_s if metric == "ttft" else e.tpot_s) / space.options.slo_slack
        best = min(best, value)
    if not math.isfinite(best):
        return f"a looser {{slo}} {metric}"
    nice = _round_up(best * 1.05)
    bound = getattr(space.specs.slo, metric, None)
    if bound is not None and nice <= bound:
        return None
    return f"{{slo=}}{metric}={_slo_time(nice)}"


def _round_up(seconds: float) -> float:
    """The next of 1, 2, 5 x 10^k (in seconds) at or above ``seconds``."""
    exp = math.floor(math.log10(seconds))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= seconds:
            return m * 10**exp
    return 10 ** (exp + 1)
