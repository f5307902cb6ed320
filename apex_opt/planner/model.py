"""The CP-SAT model of a plan space: decision variables, cost tables, labelled constraints, objective.

Decisions
    ``index`` picks one candidate of the :class:`~apex_opt.planner.space.PlanSpace` (replica shape, engine limits,
    dp); every quantity the cost model predicts for it enters as an ``AddElement`` table keyed by ``index`` (built
    lazily, when a constraint or the objective first reads it), so the solver optimises the numbers the cost model
    computes. With ``pp > 1`` the layers of each stage are real integer variables ``v.layers[i]``
    (``sum == num_layers``, 0 past the last stage); each stage's decode time is
    ``layers[i] * layer_ns + extra_ns[i]`` (``add_multiplication_equality``; the first stage carries the engine's
    host work and the embedding, the last the LM head and sampler; the times are already scaled by the number
    of busy virtual engines each stage serves per round) and TPOT is the slowest stage or, at low load, the
    whole pipeline's time, whichever is longer (``add_max_equality``). Each stage's memory bounds its layer count: ``layers[i] <= max_layers[i]`` (weights +
    reserves + the KV cache the expected concurrency needs, with the embedding on the first stage and the LM
    head on the last).

Units
    Times are integer nanoseconds inside the model (``v.tpot_ns``), exposed rounded up as ``v.tpot_us`` and
    ``v.tpot_ms``; rates in micro-requests/s, energy in microjoules, cost in milli-USD, throughput in
    milli-tokens/s (:data:`UNITS`).

Constraints
    Every labelled constraint is a hard constraint (fast solves). Which labels together rule out every plan is
    found by :meth:`apex_opt.planner.solve.Problem.infeasible`: a deletion filter that decides most trials from
    each candidate's violated labels (:meth:`PlanModel.violated`) and solves a model over the candidates a
    trial leaves for the rest.

Objective
    The objective's levels (primary, then its tie breaks) are combined into one weighted sum whose weights
    provably dominate: each table metric enters as its rank among the distinct values the table holds (exact
    order, small range; tie breaks on a 1% log scale, so that near-equal values tie as in the verified ranking),
    TPOT as microseconds when it is the primary, and each weight exceeds the range of everything after it (when
    64-bit weights cannot hold every level, they are split into groups solved one after the other, each group's
    optimum fixed through an assumed enforcement literal). Top-k plans come from no-good cuts on the layout.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ortools.sat.python import cp_model

from ..errors import ConstraintError, SolverError
from ..metrics import METRICS
from ..specs import Specs
from .constraints import Constraint, plan_expressions
from .objectives import TIE_TOLERANCE, Objective, precision_penalty
from .space import Candidate, PlanSpace, scale
from .table import lower as _lo
from .table import replica_fields
from .table import upper as _hi

#: solver units of the scaled quantities (value in SI = int * unit)
UNITS = {
    "time": 1e-9,  # ns
    "rate": 1e-6,  # micro-requests/s
    "throughput": 1e-3,  # milli-tokens/s
    "energy": 1e-6,  # microjoules
    "cost": 1e-3,  # milli-USD
}
_BIG = 10**13
_COLUMNS = ("tp", "pp", "dp", "ep", "moe_tp", "dp_attention", "gpus", "max_num_seqs", "budget", "weight_bits", "kv_bits", "tp_nodes",
            "ttft_ns", "ttft_tail_ns", "goodput_per_gpu", "throughput", "energy_per_token", "cost_per_mtok",
            "capacity")
#: the implicit level after the tie breaks: the predicted TTFT of the trace's longest prompt
_TTFT_MAX = "ttft_max"
#: the objective metric whose table column depends on the layer split (read at each row's canonical split)
_TPOT = "tpot_mean_s"


def _column(metric: str) -> str:
    """The table column of an objective level: the registry metric's ``PlanVars`` field (:mod:`apex_opt.metrics`,
    ``solver``), or ``ttft_max_ns`` for the implicit longest-prompt level."""
    if metric == _TTFT_MAX:
        return "ttft_max_ns"
    solver = METRICS[metric].solver
    if solver is None:  # pragma: no cover - Minimize/Maximize accept modelled metrics only
        raise SolverError(f"metric '{metric}' has no planner variable")
    return solver[0]


class PlanVars:
    """The decisions a constraint function ``f(v, s)`` sees, as CP-SAT integer variables.

    ======================  ==========================================================================
    ``v.tp, v.pp, v.dp``    tensor-, pipeline-, data-parallel degrees
    ``v.ep, v.moe_tp``      expert-parallel ranks and the TP degree inside each expert (MoE; else 1 and 0)
    ``v.dp_attention``      1 for the wide-EP layout (attention data parallel over ``dp``, experts over all)
    ``v.gpus``              GPUs the plan uses (``dp * pp * tp``)
    ``v.max_num_seqs``      the engine's running-sequence limit
    ``v.budget``            chunked-prefill token budget (0: the engine's default)
    ``v.weight_bits``       16, 8 (fp8) or 4 (int4); ``v.kv_bits``: 16 or 8
    ``v.tp_nodes``          NVLink domains a tensor-parallel group spans (nodes, unless the cluster sets
                            ``nvlink_domain``; 1 inside one domain)
    ``v.layers``            layers on each pipeline stage (stages past ``pp`` hold 0)
    ``v.ttft_ms, v.tpot_ms``  predicted mean TTFT / TPOT in whole milliseconds, rounded up (``_us``:
                            microseconds, ``_ns``: nanoseconds)
    ``v.ttft_tail_ms``      predicted TTFT of the workload's long prompt (the SLO attainment quantile)
    ``v.goodput_per_gpu``   predicted goodput per GPU, micro-requests/s
    ``v.throughput``        predicted sustainable output, milli-tokens/s
    ``v.energy_per_token``  predicted microjoules per output token
    ``v.cost_per_mtok``     predicted milli-USD per million output tokens
    ``v.capacity``          predicted sustainable request rate of the whole plan, micro-requests/s
    ======================  ==========================================================================

    ``v.product('tp', 'pp')`` is an IntVar equal to the product (``add_multiplication_equality``): CP-SAT takes
    linear expressions only, so write ``v.product('tp', 'pp') <= 8``, not ``v.tp * v.pp <= 8``.
    ``v.space`` is the :class:`~apex_opt.planner.space.PlanSpace` (read-only context).

    The same constraint applies to the disaggregated and mixed-GPU searches, called once per plan of a deployment
    with a :class:`~apex_opt.planner.table.DeploymentVars` of the same fields (the plan's own decisions, the
    deployment's predictions); ``v.prefill`` and ``v.decode`` name a side of a disaggregated pair, and are this
    plan here.
    """

    FIELDS = (*_COLUMNS, "tpot_ns", "ttft_us", "tpot_us", "ttft_ms", "tpot_ms", "ttft_tail_us", "ttft_tail_ms")

    # set by PlanModel for the built-in `memory` and `divisibility` constraints (declared only: until set,
    # reading them raises AttributeError through __getattr__)
    _max_layers: tuple[Any, ...]
    _divisible: cp_model.IntVar

    def __init__(self, owner: PlanModel) -> None:
        self._owner = owner
        self.space = owner.space
        self.layers: tuple[cp_model.IntVar, ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in PlanVars.FIELDS:
            raise AttributeError(f"PlanVars has no field '{name}'; fields: {', '.join(PlanVars.FIELDS)}, layers")
        var = self._owner._field(name)
        object.__setattr__(self, name, var)
        return var

    @property
    def prefill(self) -> PlanVars:
        """The plan that prefills: this one (``v.prefill.tp`` reads a disaggregated pair's prefill side)."""
        return self

    @property
    def decode(self) -> PlanVars:
        """The plan that decodes: this one (``v.decode.tp`` reads a disaggregated pair's decode side)."""
        return self

    def product(self, *names: str) -> cp_model.IntVar:
        """An IntVar equal to the product of the named fields, e.g. ``v.product('tp', 'pp')``."""
        return self._owner._product(names)

    def __repr__(self) -> str:
        return f"<PlanVars over {len(self.space)} candidates: {', '.join(PlanVars.FIELDS[:11])}, ...>"


@dataclass(frozen=True)
class Solution:
    """One plan the solver picked: the candidate and its layer split."""

    index: int
    split: tuple[int, ...]
    objective: int


@dataclass
class LabelledConstraint:
    label: str
    constraint: Constraint
    exprs: list


class PlanModel:
    """CP-SAT model of a :class:`PlanSpace` with labelled constraints (see the module docstring).

    ``split="free"``: per-stage layer counts are solver variables (optimisation). ``split="fixed"``: each
    candidate keeps the canonical split the estimator computed.
    """

    def __init__(self, space: PlanSpace, constraints: Sequence[Constraint], *, split: str = "free", seed: int = 0,
                 time_limit: float | None = None, rows: Sequence[int] | None = None) -> None:
        self.rows = list(range(len(space.candidates))) if rows is None else list(rows)
        if not self.rows:
            raise SolverError("the plan space is empty")
        self.space = space
        self.specs: Specs = space.specs
        self.split = split
        self.seed = seed
        self.time_limit = time_limit
        self.model = cp_model.CpModel()
        self.labels: dict[str, LabelledConstraint] = {}
        self.cuts: list[int] = []
        self._fixes: list[Any] = []  # lexicographic fixings of earlier best() calls (inactive unless assumed)
        self._cands = [space.candidates[i] for i in self.rows]
        self._pos = {c: k for k, c in enumerate(self.rows)}  # candidate index -> position in the tables
        self._rows = [_row(c, space) for c in self._cands]
        self._columns: dict[str, tuple[cp_model.IntVar, list[int]]] = {}
        self._known: dict[int, Callable[[int], int]] = {}  # var index -> value at table position k (canonical split)
        self._split_vars: set[int] = set()  # variables that depend on the layer split
        self._products: dict[tuple[str, ...], cp_model.IntVar] = {}
        self._ranks: dict[tuple[str, int, bool], tuple[cp_model.IntVar, int]] = {}
        self.index = self.model.new_int_var(0, len(self.rows) - 1, "index")  # a position in `rows`
        self._known[self.index.index] = self.rows.__getitem__
        self.v = PlanVars(self)
        self._build_stages()
        for c in constraints:
            self._add_labelled(c)

    # ------------------------------------------------------------------------------------------- tables
    def _column(self, name: str, values: list[int]) -> cp_model.IntVar:
        if name in self._columns:
            return self._columns[name][0]
        lo, hi = min(values), max(values)
        var = self.model.new_int_var(lo, hi, name)
        if lo != hi:
            self.model.add_element(self.index, values, var)
        self._columns[name] = (var, values)
        self._known[var.index] = values.__getitem__
        return var

    def _field(self, name: str) -> cp_model.IntVar:
        if name in _COLUMNS:
            return self._column(name, [r[name] for r in self._rows])
        metric, unit = name.rsplit("_", 1)
        div = {"us": 1000, "ms": 1_000_000}[unit]
        ns = getattr(self.v, f"{metric}_ns")
        hi = -(-_hi(ns) // div)
        out = self.model.new_int_var(0, hi, name)
        self.model.add_division_equality(out, ns + (div - 1), div)
        source = self._known[ns.index]
        self._known[out.index] = lambda i: -(-source(i) // div)
        if ns.index in self._split_vars:
            self._split_vars.add(out.index)
        return out

    def _product(self, names: tuple[str, ...]) -> cp_model.IntVar:
        if len(names) < 2:
            raise ConstraintError("v.product(...) needs at least two field names, e.g. v.product('tp', 'pp')")
        if names in self._products:
            return self._products[names]
        factors = []
        hi = 1
        for name in names:
            if name not in PlanVars.FIELDS:
                raise ConstraintError(f"v.product: unknown field '{name}'; use one of {', '.join(PlanVars.FIELDS)}")
            var = getattr(self.v, name)
            factors.append(var)
            hi *= max(abs(_lo(var)), abs(_hi(var)), 1)
        if hi > 2**62:
            raise ConstraintError(f"v.product{names}: the product may overflow 64-bit integers")
        out = self.model.new_int_var(-hi, hi, "*".join(names))
        self.model.add_multiplication_equality(out, factors)
        getters = [self._known[f.index] for f in factors]

        def value(i: int) -> int:
            p = 1
            for g in getters:
                p *= g(i)
            return p

        self._known[out.index] = value
        if any(f.index in self._split_vars for f in factors):
            self._split_vars.add(out.index)
        self._products[names] = out
        return out

    def table_labels(self) -> list[str]:
        """Labels whose expressions read table columns only (``v.tp``, ``v.gpus``, ``v.ttft_ns``, ...).

        Such a label holds or fails for a candidate whatever its layer split, so the search may leave out the
        candidates that fail it (``rows=``) and still solve exactly the same problem; the labels that read the
        split (``memory``, ``slo.tpot``) stay with the solver.
        """
        return [name for name, lc in self.labels.items()
                if not any(x.index in self._split_vars for e in lc.exprs for x in e.vars)]

    def _build_stages(self) -> None:
        """Layer variables, per-stage time and the bottleneck (TPOT); see the module docstring.

        A stage's extra time and memory cap depend only on its role (first, middle, last; a single stage is
        the first), so the tables hold one column per role and stage ``i`` picks its role from ``pp``: it is
        active when ``pp > i``, a middle stage when stage ``i + 1`` is active too, else the last. Sixteen stages
        thus cost nine table columns, not forty-eight.
        """
        m = self.model
        rows = self._rows
        L = self.specs.model.num_layers
        P = self.space.max_pp
        layer_ns = self._column("layer_ns", [r["layer_ns"] for r in rows])
        pp = self._column("pp", [r["pp"] for r in rows])
        role_extra = {role: self._column(f"extra_ns_{role}", [r["extra_ns"][k] for r in rows])
                      for role, k in (("first", 0), ("middle", 1), ("last", 2))}
        role_cap = {role: self._column(f"max_layers_{role}", [r["max_layers"][k] for r in rows])
                    for role, k in (("first", 0), ("middle", 1), ("last", 2))}
        active: list[Any] = [None]  # stage 0 is always active
        for i in range(1, P):
            a = m.new_bool_var(f"active{i}")
            m.add(pp >= i + 1).only_enforce_if(a)
            m.add(pp <= i).only_enforce_if(~a)
            self._known[a.index] = [1 if r["pp"] > i else 0 for r in rows].__getitem__
            active.append(a)
        self._max_layers = []
        stage_ns = []
        layers = []
        for i in range(P):
            split_i = [r["split"][i] for r in rows]
            if self.split == "fixed" or P == 1:
                li = self._column(f"layers{i}", split_i)
            else:
                li = m.new_int_var(1 if i == 0 else 0, L, f"layers{i}")
                if i:
                    m.add(li >= active[i])
                    m.add(li <= L * active[i])
                self._known[li.index] = split_i.__getitem__
            self._split_vars.add(li.index)
            layers.append(li)
            if i == 0:
                extra, cap = role_extra["first"], role_cap["first"]
            else:
                extra = self._by_role(i, active, role_extra, f"extra_ns{i}")
                cap = self._by_role(i, active, role_cap, f"max_layers{i}")
                self._known[extra.index] = [r["stage_extra"][i] for r in rows].__getitem__
                self._known[cap.index] = [r["stage_cap"][i] for r in rows].__getitem__
            self._max_layers.append(cap)
            prod = self._times_layers(li, layer_ns, f"layer_time{i}")
            hi = L * _hi(layer_ns) + _hi(extra)
            t = m.new_int_var(0, hi, f"stage_ns{i}")
            m.add(t == prod + extra)
            stage_ns.append(t)
        m.add(sum(layers) == L)
        self.v.layers = tuple(layers)
        # a token passes every stage in turn: TPOT is the bottleneck (scaled by the busy virtual engines) or the
        # whole pipeline's time, whichever is longer (`pipeline_ns` does not depend on the split)
        bottleneck = m.new_int_var(0, max(_hi(t) for t in stage_ns) // 10_000 + 1, "bottleneck_10us")
        for t in stage_ns:  # the slowest stage in 10-microsecond steps (rounded up): the last tie break
            m.add(10_000 * bottleneck >= t)
        self._bottleneck = bottleneck
        stage_ns.append(self._column("pipeline_ns", [r["pipeline_ns"] for r in rows]))
        tpot_hi = max(_hi(t) for t in stage_ns)
        tpot = m.new_int_var(0, tpot_hi, "tpot_ns")
        m.add_max_equality(tpot, stage_ns)
        object.__setattr__(self.v, "tpot_ns", tpot)
        self._known[tpot.index] = [r["tpot_ns"] for r in rows].__getitem__
        self._split_vars.add(tpot.index)
        self.v._max_layers = tuple(self._max_layers)  # read by the built-in `memory` constraint
        self.v._divisible = self._column("divisible", [r["divisible"] for r in rows])

    def _by_role(self, i: int, active: list[Any], by_role: dict[str, Any], name: str) -> cp_model.IntVar:
        """Stage ``i``'s value (``i >= 1``): the middle role's if stage ``i + 1`` is active, else the last's; 0 idle."""
        m = self.model
        mid, last = by_role["middle"], by_role["last"]
        out = m.new_int_var(0, max(_hi(mid), _hi(last)), name)
        m.add(out == 0).only_enforce_if(~active[i])
        if i + 1 < len(active):
            m.add(out == mid).only_enforce_if(active[i + 1])
            m.add(out == last).only_enforce_if([active[i], ~active[i + 1]])
        else:
            m.add(out == last).only_enforce_if(active[i])
        return out

    def _times_layers(self, layers: cp_model.IntVar, per_layer: cp_model.IntVar, name: str) -> Any:
        """``layers * per_layer`` as a linear expression over the bits of ``layers``.

        ``add_multiplication_equality`` would make CP-SAT's presolve multiply the two domains, and ``per_layer``
        takes one value per candidate (thousands on a large cluster): that product alone took seconds. Here
        ``layers = sum 2^b bit_b`` and each ``bit_b * per_layer`` is a variable equal to ``per_layer`` or 0 under
        the bit, all linear.
        """
        m = self.model
        if _hi(layers) == _lo(layers):
            return _lo(layers) * per_layer
        hi = _hi(per_layer)
        bits = []
        terms = []
        for b in range(max(_hi(layers), 1).bit_length()):
            bit = m.new_bool_var(f"{name}_bit{b}")
            z = m.new_int_var(0, hi, f"{name}_z{b}")
            m.add(z == per_layer).only_enforce_if(bit)
            m.add(z == 0).only_enforce_if(~bit)
            bits.append(bit)
            terms.append((1 << b) * z)
        m.add(layers == sum((1 << b) * bit for b, bit in enumerate(bits)))
        return sum(terms)

    # ------------------------------------------------------------------------------------------- constraints
    def _add_labelled(self, c: Constraint) -> None:
        if c.label in self.labels:
            raise ConstraintError(f"two constraints are labelled '{c.label}'; labels must be unique")
        exprs = plan_expressions(c, self.v, self.specs)
        lc = LabelledConstraint(c.label, c, exprs)
        self.labels[c.label] = lc
        for e in exprs:
            self.model.add(e)

    def holds(self, label: str, index: int) -> bool:
        """Whether a labelled constraint holds for candidate ``index`` with its canonical split (no solve)."""
        k = self._pos[index]
        for e in self.labels[label].exprs:
            try:
                total = int(e.offset) + sum(int(c) * self._known[x.index](k) for c, x in zip(e.coeffs, e.vars))
            except KeyError:
                return self._holds_by_solving(label, index)
            if not e.bounds.contains(total):
                return False
        return True

    def _holds_by_solving(self, label: str, index: int) -> bool:
        trial = PlanModel(self.space, [self.labels[label].constraint], split="fixed", seed=self.seed, rows=[index])
        return trial.feasible()

    def violated(self, index: int, labels: Sequence[str] | None = None) -> list[str]:
        """The labels candidate ``index`` violates (canonical split), in the order they were added."""
        return [name for name in (labels or self.labels) if not self.holds(name, index)]

    # ------------------------------------------------------------------------------------------- solving
    def _solver(self, time_limit: float | None = None) -> cp_model.CpSolver:
        solver = cp_model.CpSolver()
        p = solver.parameters
        p.num_workers = 1
        p.random_seed = self.seed
        p.catch_sigint_signal = False  # leave Ctrl-C to Python: "Interrupted.", exit 130, workers terminated
        p.cp_model_probing_level = 0  # the element tables make probing slow and it buys nothing here
        p.linearization_level = 0
        limit = time_limit if time_limit is not None else self.time_limit
        if limit is not None:
            p.max_time_in_seconds = max(float(limit), 0.01)
        return solver

    def _check(self, status: Any) -> None:
        if status == cp_model.MODEL_INVALID:
            raise SolverError(f"CP-SAT rejected the model: {self.model.validate()}")

    def feasible(self) -> bool:
        """Whether some plan satisfies every label and the cuts so far."""
        self.model.clear_objective()
        status = interruptible_solve(self._solver(), self.model)
        self._check(status)
        if status == cp_model.UNKNOWN:
            raise SolverError("CP-SAT reached the time limit before deciding feasibility; raise {time_limit}",
                              option="time_limit")
        return status in (cp_model.OPTIMAL, cp_model.FEASIBLE)

    # ------------------------------------------------------------------------------------------- objective
    def _rank(self, metric: str, sense: int, bucket: bool = False) -> tuple[cp_model.IntVar, int]:
        """A column holding each candidate's rank on ``metric`` (0 = best), and the largest rank.

        ``bucket=True`` ranks values on a log scale with 1% steps, so that values within about 1% tie (tie-break
        levels, as in the verified ranking); TPOT is read at each candidate's canonical layer split.
        """
        key = (metric, sense, bucket)
        if key in self._ranks:
            return self._ranks[key]
        column = _column(metric)
        values = [r[column] for r in self._rows]
        if bucket:
            values = [_bucket(x) for x in values]
        distinct = sorted(set(values), reverse=sense > 0)
        where = {x: k for k, x in enumerate(distinct)}
        name = f"rank_{column}_{'max' if sense > 0 else 'min'}{'_1pct' if bucket else ''}"
        self._ranks[key] = (self._column(name, [where[x] for x in values]), len(distinct) - 1)
        return self._ranks[key]

    def _term(self, metric: str | None, sense: int, objective: Objective, primary: bool) -> tuple[Any, int, int]:
        """(expression to minimise, lower bound, upper bound) of one objective level."""
        if metric is None:
            expr = function_objective(objective, self.v, self.specs)
            lo, hi = _bounds(expr)
            return (-expr, -hi, -lo) if sense > 0 else (expr, lo, hi)
        if metric == _TPOT and primary:
            var = self.v.tpot_us
            lo, hi = _lo(var), _hi(var)
            return (-var, -hi, -lo) if sense > 0 else (var, lo, hi)
        rank, top = self._rank(metric, sense, bucket=not primary)
        return rank, 0, top

    def objective_terms(self, objective: Objective) -> list[tuple[Any, int, int]]:
        """(expression to minimise, lower bound, upper bound) of every level, most important first.

        Levels: the primary (exact), each tie break (within 1%), the longest prompt's TTFT (within 1%), full
        precision and engine defaults, and last the slowest pipeline stage's time, which makes the solver
        balance the stages' layers.
        """
        terms = [self._term(metric, sense, objective, k == 0) for k, (metric, sense) in enumerate(objective.levels)]
        # implicit levels: the longest prompt's TTFT (a chunked-prefill budget that serves the trace's tail
        # better), then full precision and the engine's default limits, then balanced pipeline stages
        tail_rank, tail_top = self._rank(_TTFT_MAX, -1, bucket=True)
        terms.append((tail_rank, 0, tail_top))
        values = [r["penalty"] for r in self._rows]
        terms.append((self._column("penalty", values), min(values), max(values)))
        if self.space.max_pp > 1:
            terms.append((self._bottleneck, _lo(self._bottleneck), _hi(self._bottleneck)))
        return terms

    def row(self, index: int) -> dict[str, Any]:
        """The integer table row of candidate ``index``."""
        return self._rows[self._pos[index]]

    def objective_groups(self, objective: Objective) -> list[Any]:
        """The levels combined into as few weighted sums as 64-bit weights allow (usually one).

        Within a group each level's weight exceeds the range of all later levels of the group, so minimising
        the sum is minimising the levels lexicographically; groups are optimised one after the other.
        """
        groups: list[list[tuple[Any, int, int]]] = [[]]
        span = 1
        for term in self.objective_terms(objective):
            width = term[2] - term[1] + 1
            if groups[-1] and span * width > 2**62:
                groups.append([])
                span = 1
            if width > 2**62:
                raise SolverError(f"objective {objective.name}: a level's range is too wide for 64-bit integers; "
                                  "bound the function objective's variables")
            groups[-1].append(term)
            span *= width
        out = []
        for group in groups:
            total = 0
            weight = 1
            for expr, lo, _hi_ in reversed(group):
                total = total + weight * (expr - lo)
                weight *= _hi_ - lo + 1
            out.append(total)
        return out

    def objective_expr(self, objective: Objective) -> Any:
        """One linear expression whose minimum is the lexicographic optimum (when the levels fit one group)."""
        return self.objective_groups(objective)[0]

    def best(self, objective: Objective, time_limit: float | None = None) -> Solution | None:
        """The best plan under the constraints and cuts (None: no plan left).

        One solve per group of levels (:meth:`objective_groups`); a group's optimum is fixed for the next ones
        through an enforcement literal assumed only during this call.
        """
        fixes: list[Any] = []
        solver = None
        for k, expr in enumerate(self.objective_groups(objective)):
            self.model.minimize(expr)
            self.model.clear_assumptions()
            if fixes:
                self.model.add_assumptions(fixes)
            solver = self._solver(time_limit)
            status = interruptible_solve(solver, self.model)
            self._check(status)
            if status == cp_model.INFEASIBLE:
                if k:
                    raise SolverError("the lexicographic re-solve became infeasible")
                return None
            if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                raise SolverError("CP-SAT found no plan within the time limit; raise {time_limit}",
                                  option="time_limit")
            lit = self.model.new_bool_var(f"fix{len(self._fixes)}")
            self._fixes.append(lit)
            self.model.add(expr == int(solver.objective_value)).only_enforce_if(lit)
            fixes.append(lit)
        self.model.clear_assumptions()
        assert solver is not None
        index = self.rows[int(solver.value(self.index))]
        split = tuple(int(solver.value(x)) for x in self.v.layers)
        return Solution(index, split[: self.space.candidates[index].pp], int(solver.objective_value))

    def cut(self, indices: Sequence[int]) -> None:
        """Exclude candidates from later solves (no-good cuts)."""
        for i in indices:
            if i not in self.cuts:
                self.cuts.append(i)
                if i in self._pos:
                    self.model.add(self.index != self._pos[i])


def interruptible_solve(solver: cp_model.CpSolver, model: cp_model.CpModel) -> Any:
    """``solver.solve(model)`` that Ctrl-C stops at once: the search runs in a thread (CP-SAT releases the GIL)
    while this thread waits in short slices, so the interrupt reaches Python, stops the search and propagates."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(solver.solve(model))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, which re-raises it
            failure.append(exc)

    worker = threading.Thread(target=run, name="cp-sat", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.05)
    except KeyboardInterrupt:
        solver.stop_search()
        worker.join()
        raise
    if failure:
        raise failure[0]
    return result[0]


def solve_once(model: cp_model.CpModel, *, seed: int, time_limit: float | None, what: str) -> cp_model.CpSolver | None:
    """Solve ``model`` on one worker with ``seed``: the solver holding the optimum, or None when it is infeasible.

    Raises :class:`~apex_opt.errors.SolverError` naming ``what`` when the time limit ends the search first.
    """
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.catch_sigint_signal = False  # leave Ctrl-C to Python
    if time_limit is not None:
        solver.parameters.max_time_in_seconds = max(time_limit, 0.01)
    status = interruptible_solve(solver, model)
    if status == cp_model.INFEASIBLE:
        return None
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise SolverError(f"CP-SAT found no {what} within the time limit; raise {{time_limit}}", option="time_limit")
    return solver


class SideLabels:
    """The labelled constraints of a search beside the main one (disaggregated pairs, mixed-GPU plans).

    Hard constraints in a search; with ``explain=True`` each label gets one enforcement literal (shared by every
    expression of that label), so that an infeasible model can name a minimal set of labels in conflict
    (:meth:`conflict`, a deletion filter as in :meth:`apex_opt.planner.solve.Problem.infeasible`) and what the model would choose with one
    of them dropped (:meth:`solve`).
    """

    def __init__(self, model: cp_model.CpModel, *, explain: bool, seed: int = 0,
                 time_limit: float | None = None) -> None:
        self.model, self.explain, self.seed, self.time_limit = model, explain, seed, time_limit
        self.literals: dict[str, cp_model.IntVar] = {}
        self.text: dict[str, str] = {}  # label -> one line for explanations

    def add(self, label: str, expr: Any, text: str, enforce: Any = None) -> None:
        """Add ``expr`` under ``label`` (``text``: its line in explanations); ``enforce``: a literal it holds under
        (a plan that may be absent from the deployment)."""
        ct = self.model.add(expr)
        self.text.setdefault(label, text)
        lits = [] if enforce is None else [enforce]
        if self.explain:
            lit = self.literals.get(label)
            if lit is None:
                lit = self.literals[label] = self.model.new_bool_var(f"[{label}]")
            lits.append(lit)
        if lits:
            ct.only_enforce_if(lits)

    def solve(self, labels: Sequence[str], what: str) -> cp_model.CpSolver | None:
        """The solver holding the model's optimum with only ``labels`` enforced, or None when that is infeasible."""
        self.model.clear_assumptions()
        self.model.add_assumptions([self.literals[n] for n in labels])
        try:
            return solve_once(self.model, seed=self.seed, time_limit=self.time_limit, what=what)
        finally:
            self.model.clear_assumptions()

    def conflict(self, what: str, drop_first: Sequence[str] = (), keep_last: Sequence[str] = ()) -> list[str]:
        """A minimal set of labels that together rule out every choice ([] if some choice meets them all).

        The deletion filter tries the labels named (or prefixed, ``capacity`` for ``capacity.decode``) in
        ``drop_first`` first (derived bounds), then the others in the order they were added, then those in
        ``keep_last`` (the structural ones), so that the explanation keeps a structural label when it suffices."""
        if not self.explain:
            raise ValueError("conflict() needs explain=True")
        names = list(self.literals)
        if self.solve(names, what) is not None:
            return []

        def named(n: str, prefixes: Sequence[str]) -> int | None:
            return next((i for i, p in enumerate(prefixes) if n == p or n.startswith(p + ".")), None)

        def late(n: str) -> int:
            a, b = named(n, drop_first), named(n, keep_last)
            return a if a is not None else len(drop_first) + (0 if b is None else 1 + b)

        needed = names
        for name in sorted(names, key=late):
            trial = [n for n in needed if n != name]
            if self.solve(trial, what) is None:
                needed = trial
        return needed

    def relaxations(self, conflict: Sequence[str], what: str,
                    describe: Callable[[cp_model.CpSolver], str | None]) -> list[tuple[tuple[str, ...], str | None]]:
        """For each label of ``conflict``, what the model chooses with every other label enforced (``describe``
        of its solver; None: still nothing); when no single label suffices, also with the whole conflict dropped."""
        out: list[tuple[tuple[str, ...], str | None]] = []
        for name in conflict:
            solver = self.solve([n for n in self.literals if n != name], what)
            out.append(((name,), None if solver is None else describe(solver)))
        if len(conflict) > 1 and all(found is None for _, found in out):
            solver = self.solve([n for n in self.literals if n not in conflict], what)
            out.append((tuple(conflict), None if solver is None else describe(solver)))
        return out


def _bucket(x: int) -> int:
    """A value's 1% step on a log scale: values within about 1% share a bucket (tie-break levels)."""
    return math.floor(math.log(max(x, 1)) / math.log(1 + TIE_TOLERANCE))


def objective_key(row: dict[str, Any], objective: Objective, num_layers: int,
                  split: Sequence[int] | None = None) -> tuple[int, ...] | None:
    """The objective's levels for one table row, in the order and units :meth:`PlanModel.objective_terms` uses.

    Smaller is better, level by level. ``split`` gives the actual layers per stage; without it the split-dependent
    level (TPOT as the primary) is a lower bound over every split: the slower of the whole pipeline's time and
    the mean stage's. The last implicit level (the slowest stage) is left out. None for a function objective.
    """
    key = []
    for k, (metric, sense) in enumerate(objective.levels):
        if metric is None:
            return None
        if metric == _TPOT and k == 0:
            x = -(-_tpot_ns(row, num_layers, split) // 1000)
        else:
            x = row[_column(metric)]
            if k > 0:
                x = _bucket(x)
        key.append(-x if sense > 0 else x)
    key.append(_bucket(row["ttft_max_ns"]))
    key.append(row["penalty"])
    return tuple(key)


def _tpot_ns(row: dict[str, Any], num_layers: int, split: Sequence[int] | None) -> int:
    """TPOT of a row with ``split`` (None: a lower bound over every split)."""
    pp = row["pp"]
    extras = row["stage_extra"][:pp]
    if pp == 1:
        return max(row["pipeline_ns"], extras[0])
    if split is None:
        mean = -(-(num_layers * row["layer_ns"] + sum(extras)) // pp)
        return max(row["pipeline_ns"], mean)
    return max(row["pipeline_ns"], *(n * row["layer_ns"] + e for n, e in zip(split, extras)))


def function_objective(objective: Objective, v: PlanVars, specs: Specs) -> Any:
    """The linear expression of a function objective, checked like a constraint's."""
    assert objective.fn is not None
    try:
        expr = objective.fn(v, specs)
    except Exception as exc:
        raise ConstraintError(f"objective {objective.name} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(expr, (bool, cp_model.BoundedLinearExpression)) or expr is None:
        raise ConstraintError(f"objective {objective.name} returned {expr!r}; return a linear expression such as "
                              "v.gpus or 2 * v.tpot_us + v.ttft_us")
    return expr


def _bounds(expr: Any) -> tuple[int, int]:
    """Lower and upper bound of a linear expression from its variables' domains."""
    if isinstance(expr, int):
        return expr, expr
    flat = expr <= 0
    lo = hi = int(flat.offset)
    for c, x in zip(flat.coeffs, flat.vars):
        a, b = _lo(x) * int(c), _hi(x) * int(c)
        lo += min(a, b)
        hi += max(a, b)
    return lo, hi


def penalty(c: Candidate, default_seqs: int) -> int:
    """Small integer preferring, on exact ties, full precision weights and KV, then the engine's default limits."""
    return precision_penalty(c.key.weight_dtype, c.key.kv_dtype, c.menu.budget is not None,
                             c.menu.max_num_seqs != default_seqs)


def _row(c: Candidate, space: PlanSpace) -> dict[str, Any]:
    """The integer table row of one candidate."""
    L = space.specs.model.num_layers
    P = space.max_pp
    key = c.key
    row: dict[str, Any] = {
        **replica_fields(key, pp=c.pp, dp=c.dp, max_num_seqs=c.menu.max_num_seqs, budget=c.menu.budget,
                         tp_nodes=c.tp_nodes),
        "gpus": c.gpus,
        "divisible": 1 if c.divisible else 0,
        "penalty": penalty(c, space.specs.engine.scheduler.max_num_seqs),
    }
    e = c.est
    if e is None:  # a row that breaks divisibility: neutral values (only `divisibility` rules it out)
        base, extra = divmod(L, c.pp)
        split = [base + (1 if i < extra else 0) for i in range(c.pp)]
        row.update(ttft_ns=0, ttft_tail_ns=0, ttft_max_ns=0, goodput_per_gpu=0, throughput=0, energy_per_token=0,
                   cost_per_mtok=0, capacity=_BIG, layer_ns=0, stage_extra=[0] * P, pipeline_ns=0,
                   stage_cap=[L if i < c.pp else 0 for i in range(P)],
                   split=split + [0] * (P - c.pp), tpot_ns=0)
        return _with_roles(row, c.pp)
    t = UNITS["time"]
    row.update(
        ttft_ns=scale(e.ttft_s, t, _BIG),
        ttft_tail_ns=scale(e.ttft_tail_s, t, _BIG),
        ttft_max_ns=scale(e.ttft_max_s, t, _BIG),
        goodput_per_gpu=scale(e.goodput_rps / c.gpus, UNITS["rate"], _BIG),
        throughput=scale(e.throughput_tok_s, UNITS["throughput"], _BIG),
        energy_per_token=scale(e.energy_per_token_j, UNITS["energy"], _BIG),
        cost_per_mtok=scale(e.cost_per_mtok_usd, UNITS["cost"], _BIG),
        capacity=scale(e.capacity_rps, UNITS["rate"], _BIG),
        split=list(e.split) + [0] * (P - c.pp),
        stage_cap=[min(e.max_layers[i], L) if i < c.pp else 0 for i in range(P)],
    )
    if c.pp == 1:
        row["layer_ns"] = 0
        row["stage_extra"] = [scale(e.tpot_s, t, _BIG)] + [0] * (P - 1)
        row["pipeline_ns"] = 0
    else:
        row["layer_ns"] = scale(e.layer_s, t, _BIG)
        row["stage_extra"] = [scale(x, t, _BIG) for x in e.stage_extra_s] + [0] * (P - c.pp)
        row["pipeline_ns"] = scale(e.pipeline_sum_s, t, _BIG)
    stages = (n * row["layer_ns"] + x for n, x in zip(row["split"], row["stage_extra"]))
    row["tpot_ns"] = max(row["pipeline_ns"], *stages)
    return _with_roles(row, c.pp)


def _with_roles(row: dict[str, Any], pp: int) -> dict[str, Any]:
    """Add the per-role columns (first, middle, last) the model's stages read; unused roles hold 0."""
    def roles(per_stage: list[int]) -> list[int]:
        return [per_stage[0], per_stage[1] if pp > 2 else 0, per_stage[pp - 1] if pp > 1 else 0]

    row["extra_ns"] = roles(row["stage_extra"])
    row["max_layers"] = roles(row["stage_cap"])
    return row


__all__ = ["UNITS", "LabelledConstraint", "PlanModel", "PlanVars", "SideLabels", "Solution", "objective_key",
           "solve_once"]
