"""Plan tables as CP-SAT variables, and what a constraint function sees in a search over several plans.

Every search of the planner picks rows of tables: the aggregated search one row of the plan space
(:class:`~apex_opt.planner.model.PlanModel`, which adds the layer split), the disaggregated search one prefill row
and one decode row (:mod:`apex_opt.planner.disagg`), the mixed-GPU search one row per GPU kind, or none
(:mod:`apex_opt.planner.hetero`). A :class:`Table` is one such choice: an index variable and the columns read from
its rows, each built (one ``AddElement``) when something first reads it. Every table names a replica's decisions
the same way (:data:`REPLICA_FIELDS`, :func:`replica_fields`).

A user's plan constraint ``f(v, s)`` applies to every search. In a search over several plans it is called once
per plan of the deployment, with a :class:`DeploymentVars` view:

* the plan's own decisions (``v.tp``, ``v.dp``, ``v.max_num_seqs``, ``v.layers``, ...), so ``v.tp <= 4`` holds
  for the prefill and the decode replicas alike, and for every GPU kind a mixed plan uses;
* the deployment's predictions (``v.gpus``: all its GPUs; ``v.ttft_ms``: the prefill side's, or the worst kind's;
  ``v.tpot_ms``: the decode side's, or the worst kind's; ``v.capacity``, ``v.cost_per_mtok``, ...), in the units
  of :class:`~apex_opt.planner.model.PlanVars`;
* each role's plan by name, ``v.prefill.tp`` and ``v.decode.tp`` (on an aggregated plan, and on every plan of a
  mixed deployment, both are the plan itself: it prefills and decodes).

Each expression is enforced only when its plan is part of the deployment (a GPU kind a mixed plan leaves unused
is not held to it), under the constraint's label, so that an infeasible search names it. A field a search does
not price (the mixed-GPU search has no energy column) raises :class:`FieldNotModelled`, and the planner leaves
that search out with a note naming the constraint and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ortools.sat.python import cp_model

from ..errors import ConstraintError
from .constraints import Constraint, plan_expressions
from .estimates import ShapeKey
from .space import DTYPE_BITS

#: a replica's decisions, named alike in every table
REPLICA_FIELDS = ("tp", "pp", "dp", "ep", "moe_tp", "dp_attention", "max_num_seqs", "budget", "weight_bits",
                  "kv_bits", "tp_nodes")
#: a deployment's predictions (solver units: ns, micro-requests/s, milli-tokens/s, microjoules, milli-USD)
DEPLOYMENT_FIELDS = ("gpus", "ttft_ns", "ttft_tail_ns", "tpot_ns", "goodput_per_gpu", "throughput",
                     "energy_per_token", "cost_per_mtok", "capacity")
#: fields derived from a nanosecond field, rounded up
_DERIVED = {"us": 1000, "ms": 1_000_000}


def replica_fields(key: ShapeKey, *, pp: int, dp: int, max_num_seqs: int, budget: int | None,
                   tp_nodes: int = 1) -> dict[str, int]:
    """A replica's decisions as the integers every table holds (:data:`REPLICA_FIELDS`).

    >>> from apex_opt.planner.estimates import ShapeKey
    >>> replica_fields(ShapeKey(4, 1, None, "fp8", "bf16"), pp=1, dp=2, max_num_seqs=256, budget=None)["weight_bits"]
    8
    """
    return {
        "tp": key.tp,
        "pp": pp,
        "dp": dp,
        "ep": key.ep,
        "moe_tp": key.moe_tp or 0,
        "dp_attention": 1 if key.wide_dp > 1 else 0,
        "max_num_seqs": max_num_seqs,
        "budget": budget or 0,
        "weight_bits": DTYPE_BITS[key.weight_dtype],
        "kv_bits": DTYPE_BITS[key.kv_dtype],
        "tp_nodes": tp_nodes,
    }


class FieldNotModelled(ConstraintError):
    """A constraint read a field the search it was applied to does not price."""

    def __init__(self, field: str, what: str, priced: Sequence[str]) -> None:
        super().__init__(f"v.{field}, which the {what} search does not price (it prices {', '.join(priced)})")
        self.field, self.what, self.priced = field, what, tuple(priced)
        self.label = ""  # the constraint that read it (set by add_constraints)


class Table:
    """One choice among ``rows``: an index variable and columns built when first read.

    ``fields`` maps a column name to its value on a row. A row of ``None`` is "nothing here" (a GPU kind a mixed
    plan leaves unused): its columns hold 0 and :attr:`used` is false on it.
    """

    def __init__(self, model: cp_model.CpModel, name: str, rows: Sequence[Any],
                 fields: Mapping[str, Callable[[Any], int]]) -> None:
        if not rows:
            raise ValueError(f"table {name} has no rows")
        self.model, self.name, self.rows, self.fields = model, name, list(rows), dict(fields)
        self.index = model.new_int_var(0, len(self.rows) - 1, name)
        self._columns: dict[str, cp_model.IntVar] = {}

    @property
    def used(self) -> cp_model.IntVar | None:
        """A literal true when the picked row is a plan, for tables with a "nothing here" row (else None)."""
        if not any(r is None for r in self.rows):
            return None
        return self.column_of("used", [0 if r is None else 1 for r in self.rows])

    def column(self, name: str) -> cp_model.IntVar:
        """The column ``name`` (one of :attr:`fields`), built on first read."""
        if name not in self._columns:
            fn = self.fields[name]
            self.column_of(name, [0 if r is None else int(fn(r)) for r in self.rows])
        return self._columns[name]

    def column_of(self, name: str, values: Sequence[int]) -> cp_model.IntVar:
        """A column of given values (the table's index picks one), cached under ``name``."""
        if name in self._columns:
            return self._columns[name]
        lo, hi = min(values), max(values)
        var = self.model.new_int_var(lo, hi, f"{name}_{self.name}")
        if lo != hi:
            self.model.add_element(self.index, list(values), var)
        self._columns[name] = var
        return var

    def value(self, solver: cp_model.CpSolver) -> Any:
        """The row the solver picked."""
        return self.rows[int(solver.value(self.index))]


class DeploymentVars:
    """What a constraint ``f(v, s)`` sees for one plan of a deployment (see the module docstring).

    ``table`` holds the plan's rows (its :data:`REPLICA_FIELDS` and ``layers0``, ``layers1``, ...);
    ``deployment`` maps each priced :data:`DEPLOYMENT_FIELDS` name to a variable or to a function building it;
    ``roles`` names the views ``v.prefill`` and ``v.decode`` (default: this view); ``what`` names the search in
    errors. The ``_us`` and ``_ms`` forms of the time fields are derived, rounded up, as on ``PlanVars``.
    """

    FIELDS = (*REPLICA_FIELDS, *DEPLOYMENT_FIELDS, "ttft_us", "tpot_us", "ttft_ms", "tpot_ms", "ttft_tail_us",
              "ttft_tail_ms")

    def __init__(self, table: Table, deployment: dict[str, Any], *, space: Any, what: str, max_pp: int,
                 roles: dict[str, DeploymentVars] | None = None) -> None:
        self._table, self._deployment, self._what = table, deployment, what
        self._roles = roles if roles is not None else {}
        self._products: dict[tuple[str, ...], cp_model.IntVar] = {}
        self.space = space
        self.used = table.used
        self.layers = tuple(table.column(f"layers{i}") for i in range(max_pp))

    @property
    def prefill(self) -> DeploymentVars:
        """The prefilling plan's view (this plan, unless the deployment is disaggregated)."""
        return self._roles.get("prefill", self)

    @property
    def decode(self) -> DeploymentVars:
        """The decoding plan's view (this plan, unless the deployment is disaggregated)."""
        return self._roles.get("decode", self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in DeploymentVars.FIELDS:
            raise AttributeError(f"{type(self).__name__} has no field '{name}'; fields: "
                                 f"{', '.join(DeploymentVars.FIELDS)}, layers, prefill, decode")
        if name in REPLICA_FIELDS:
            var = self._table.column(name)
        elif name in DEPLOYMENT_FIELDS:
            var = self._deployment_field(name)
        else:
            metric, unit = name.rsplit("_", 1)
            var = self._deployment_field(f"{metric}_ns", derived=unit)
        object.__setattr__(self, name, var)
        return var

    def _deployment_field(self, name: str, derived: str | None = None) -> cp_model.IntVar:
        key = name if derived is None else f"{name[:-3]}_{derived}"
        found = self._deployment.get(key)
        if found is None:
            base = self._deployment.get(name)
            if base is None:
                raise FieldNotModelled(name if derived is None else key, self._what,
                                       [f for f in DEPLOYMENT_FIELDS if f in self._deployment])
            if callable(base):
                base = self._deployment[name] = base()
            if derived is None:
                return base
            div = _DERIVED[derived]
            m = self._table.model
            hi = -(-upper(base) // div)
            found = m.new_int_var(0, max(hi, 0), key)
            m.add_division_equality(found, base + (div - 1), div)
            self._deployment[key] = found
        elif callable(found):
            found = self._deployment[key] = found()
        return found

    def product(self, *names: str) -> cp_model.IntVar:
        """An IntVar equal to the product of the named fields, e.g. ``v.product('tp', 'pp')``."""
        if len(names) < 2:
            raise ConstraintError("v.product(...) needs at least two field names, e.g. v.product('tp', 'pp')")
        if names not in self._products:
            factors = [getattr(self, n) for n in names]
            hi = 1
            for f in factors:
                hi *= max(abs(lower(f)), abs(upper(f)), 1)
            if hi > 2**62:
                raise ConstraintError(f"v.product{names}: the product may overflow 64-bit integers")
            m = self._table.model
            out = m.new_int_var(-hi, hi, "*".join(names))
            m.add_multiplication_equality(out, factors)
            self._products[names] = out
        return self._products[names]

    def __repr__(self) -> str:
        return f"<DeploymentVars of the {self._what} search: {', '.join(REPLICA_FIELDS[:6])}, ..., prefill, decode>"


def add_constraints(labels: Any, constraints: Sequence[Constraint], views: Sequence[DeploymentVars],
                    space: Any) -> None:
    """Apply plan constraints to every plan of a deployment, each under its own label (``labels`` is a
    :class:`~apex_opt.planner.model.SideLabels`). Raises :class:`FieldNotModelled` for a field the search does not
    price, and :class:`~apex_opt.errors.ConstraintError` for constraint code that is wrong anywhere."""
    for c in constraints:
        text = c.describe(space)
        for view in views:
            try:
                exprs = plan_expressions(c, view, space.specs)
            except FieldNotModelled as exc:
                exc.label = c.label
                raise
            for expr in exprs:
                labels.add(c.label, expr, text, enforce=view.used)


def lower(var: Any) -> int:
    """Lower bound of a variable."""
    return int(next(iter(var.proto.domain)))


def upper(var: Any) -> int:
    """Upper bound of a variable (the proto's repeated field does not support negative indexing)."""
    return int(list(var.proto.domain)[-1])


__all__ = ["DEPLOYMENT_FIELDS", "REPLICA_FIELDS", "DeploymentVars", "FieldNotModelled", "Table", "add_constraints",
           "replica_fields"]
