"""The front door, :func:`solve`, and :class:`Problem`, what every search strategy works with.

``solve(specs, objective=..., constraints=[...], top_k=3, solver="cpsat")`` builds a :class:`Problem` (the plan
space with the cost model's predictions, the labelled constraints, the objective, a simulator pool) and hands
it to a *strategy*: a function ``search(problem) -> PlanSet``. Strategies live outside the package, in
``solvers/<name>.py`` (``cpsat``, ``exhaustive``, ``heuristic``), written against the public API only; ``solver``
names one of them, a path to a ``.py`` file defining ``search``, or is the function itself.

What a strategy uses:

* ``problem.optimizer()``: the CP-SAT model; ``.next()`` returns the next-best :class:`Proposal` (no-good cuts
  between calls) or None; raises :class:`~apex_opt.errors.InfeasibleError` naming the conflicting labels when no
  plan satisfies the constraints at all;
* ``problem.feasible()``: every candidate meeting the hard constraints (GPU count, divisibility, placement,
  memory and the user's), without the analytical SLO bounds: what an exhaustive search simulates;
* ``problem.proposal(tp=..., pp=..., dp=...)``: a plan of your own (engine defaults), with predictions;
* ``problem.siblings(entry)``: same layout, other engine limits, predicted within 1% (only simulation ranks them);
* ``problem.verify(proposals)``: simulate in parallel, return :class:`RankedPlan` entries marked verified or not;
* ``problem.rank(entries)``: order entries by the objective on simulated metrics;
* ``problem.result(verified, rejected, ...)``: rank and package a :class:`PlanSet`.

A problem is a frozen :class:`~apex_opt.planner.statement.ProblemStatement` (``problem.statement``: specs,
objective, constraints, ``top_k``, ... read as ``problem.specs``, ``problem.top_k``) and a :class:`SearchRun`
(``problem.run``: the clock, notes, simulator pool and simulation count of this search). The plan space and the
constraint tables derived from the statement are cached on the problem.
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import importlib.util
import inspect
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from ..bounds import PLUGIN_SEARCH_TIME_LIMIT_S, user_code_time_limit
from ..calibration.profile import applying_calibration
from ..errors import ApexOptError, InfeasibleError, SolverError, SpecError, options_named, shorten
from ..executors import check_executor
from ..perf.provenance import calibration_notes, calibration_sources
from ..perf.replica import build_replica
from ..plugins import load_plugins
from ..resources import find_resource
from ..schema.plan import Deployment, Plan, with_speculative
from ..schema.speculative import SpeculativeConfig, parse_speculative_option
from ..specs import Specs, with_engine_settings
from .constraints import OPTIONS, Constraint, builtin_constraints, check_simulated
from .disagg import DisaggModel, build_disagg_space
from .disagg import deployment as disagg_deployment
from .disagg import predicted as disagg_predicted
from .estimates import Menu, ShapeKey
from .explain import infeasible_message, why_best
from .hetero import HeteroModel, build_hetero_space
from .hetero import deployment as hetero_deployment
from .hetero import predicted as hetero_predicted
from .launch import LaunchSettings, launch_settings
from .model import PlanModel, Solution, objective_key
from .objectives import Objective, _close, gpu_limit, predicted_value, rank_plans
from .prediction import Prediction
from .result import PlanSet, RankedPlan, SolveStats
from .sampling import VERIFY_REQUESTS
from .space import Candidate, PlanSpace, SearchOptions, build_space
from .statement import ProblemStatement, _check_specs, check_seed, check_time_limit
from .table import FieldNotModelled
from .verify import Verifier

#: built-in labels that hold for the deployment itself; the rest are analytical estimates
HARD_LABELS = ("gpus", "divisibility", "placement.tp", "memory")
ESTIMATE_LABELS = ("slo.ttft", "slo.tpot", "slo.e2e", "capacity")


@dataclass(frozen=True)
class Proposal:
    """A plan a strategy wants verified, with the cost model's predictions."""

    plan: Plan | Deployment
    predicted: Prediction
    index: int | None = None  # candidate index in the plan space (None: a plan from outside it)
    source: str = ""


class Proposer(Protocol):
    """What every search of a problem offers a strategy: proposals best first, and what it learns from their
    simulations. :class:`Optimizer` (single plans) and :class:`FurtherSearch` (disaggregated pairs, mixed-GPU plans)
    are the two; a strategy drives them with one loop (``solvers/cpsat.py``)."""

    def next(self) -> Proposal | None:
        """The best proposal not made before, or None when none is left."""
        ...

    def observe(self, entries: Sequence[RankedPlan]) -> int:
        """Learn from simulated proposals; returns how many candidates that ruled out."""
        ...


class Optimizer:
    """CP-SAT search over a problem's space: :meth:`next` yields plans best first (a :class:`Proposer`).

    The solver works on the most promising candidates first. Candidates are ordered by a lower bound of the
    objective's levels (exact for every level read from the tables; for TPOT as the primary, the slower of the
    whole pipeline's time and the mean stage's), and CP-SAT solves over a prefix of that order: the first
    ``first_rows`` candidates and every candidate tied with the last of them. A solution is the optimum of the
    whole space once every candidate whose bound does not exceed the solution's own levels lies in the prefix;
    until then the prefix doubles and CP-SAT solves again. A prefix with no feasible plan also doubles. On a
    large cluster this keeps the element tables CP-SAT expands to a few hundred rows instead of thousands,
    with the same answer (a function objective, whose levels have no bound, searches every candidate at once).
    """

    def __init__(self, problem: Problem, *, first_rows: int = 128) -> None:
        self.problem = problem
        self.count = 0
        self.seconds = 0.0
        self.cuts: list[int] = []
        # candidates failing a split-independent constraint are never searched (PlanModel.table_labels)
        rows = problem.search_rows
        checker = problem._checker
        L = problem.specs.model.num_layers
        keys = {i: objective_key(checker.row(i), problem.objective, L) for i in rows}
        bounds = {i: k for i, k in keys.items() if k is not None}
        self.keys: list[tuple[int, ...]] | None
        if len(bounds) < len(keys):
            self.order, self.keys = rows, None
            self.size = len(rows)
        else:
            self.order = sorted(rows, key=lambda i: (bounds[i], i))
            self.keys = [bounds[i] for i in self.order]
            self.size = self._through_ties(min(first_rows, len(rows)))
        self.model: PlanModel | None = None

    def _through_ties(self, n: int) -> int:
        """``n`` extended over every candidate whose bound equals the ``n``-th's."""
        if self.keys is None or n <= 0 or n >= len(self.order):
            return min(max(n, 0), len(self.order))
        return bisect.bisect_right(self.keys, self.keys[n - 1])

    def _model(self) -> PlanModel:
        if self.model is None or len(self.model.rows) != self.size:
            p = self.problem
            self.model = PlanModel(p.space, p.all_constraints, seed=p.seed, time_limit=p.time_limit,
                                   rows=self.order[: self.size])
            self.model.cut(self.cuts)
        return self.model

    def _best(self) -> Solution | None:
        """The optimum over the whole space, growing the searched prefix until it is proven (class docstring)."""
        p = self.problem
        while True:
            model = self._model()
            sol = model.best(p.objective, p.remaining_time())
            if self.keys is None or self.size >= len(self.order):
                return sol
            if sol is None:
                self.size = self._through_ties(2 * self.size)
                continue
            row = model.row(sol.index)
            actual = objective_key(row, p.objective, p.specs.model.num_layers, sol.split)
            assert actual is not None  # only a function objective has no key, and then self.keys is None
            covered = bisect.bisect_right(self.keys, actual)
            if covered <= self.size:
                return sol
            self.size = self._through_ties(max(covered, 2 * self.size))

    def next(self) -> Proposal | None:
        """The best plan not proposed before (None when none is left); its layout is cut from later solves."""
        start = time.perf_counter()
        if not self.order:
            raise self.problem.infeasible()
        sol = self._best()
        if sol is None:
            self.seconds += time.perf_counter() - start
            if self.count == 0:
                raise self.problem.infeasible()
            return None
        layout = self.problem.space_layout(sol.index)
        self.cuts.extend(layout)
        self._model().cut(layout)
        self.count += 1
        self.seconds += time.perf_counter() - start
        self.problem.run.search_seconds += time.perf_counter() - start
        return self.problem.proposal_of(sol.index, sol.split, source="cpsat")

    def observe(self, entries: Sequence[RankedPlan]) -> int:
        """Learn from simulated proposals: one that missed its SLO in simulation rules out the plans of its shape
        and engine limits with fewer replicas (each of them carries more of the load per replica), which are cut
        from later solves. Returns how many candidates were cut.

        Fewer identical replicas behind the same router give each one a larger share of the same arrivals, so
        latencies can only grow; without this cut the search would walk down the replica ladder of a shape that
        is too slow, one simulation per rung (on Kimi-K2 at 200 req/s, 21 simulations of the same few shapes).
        """
        space = self.problem.space
        cut: list[int] = []
        for entry in entries:
            metrics = entry.simulated or {}
            if entry.verified or entry.index is None or metrics.get("slo_met", True):
                continue
            c = space.candidates[entry.index]
            cut += [d.index for d in space.candidates
                    if d.key == c.key and d.pp == c.pp and d.menu == c.menu and d.dp < c.dp]
        if cut:
            self.cuts.extend(cut)
            if self.model is not None:
                self.model.cut(cut)
        return len(cut)


class FurtherSearch:
    """A CP-SAT search beside the main one (disaggregated pairs, mixed-GPU plans), a :class:`Proposer`: :meth:`next`
    yields :class:`Proposal` objects best first, with a note (or, when ``refuse`` is set, an
    :class:`~apex_opt.errors.InfeasibleError`) when its model holds no plan at all."""

    def __init__(self, problem: Problem, model: Any, propose: Callable[[Any], Proposal], what: str, empty: str,
                 refuse: str = "") -> None:
        self.problem = problem
        self.model = model
        self.propose = propose
        self.what = what  # what it proposes, for notes ("disaggregated plans")
        self.empty = f"{what}: {empty}"
        self.refuse = refuse
        self.count = 0
        self.most, self.limited = 0, ""  # the GPU limit (limit_gpus) and why; "": none

    def limit_gpus(self, most: int, why: str) -> None:
        """Propose nothing with more than ``most`` GPUs from now on, for the reason ``why`` (``Problem.gpu_limit``:
        such a deployment could not place among the best); the result's notes say so."""
        self.model.limit_gpus(most)
        self.most, self.limited = most, why

    def next(self) -> Proposal | None:
        """The best choice not proposed before, or None when none is left."""
        start = time.perf_counter()
        found = self.model.next()
        self.problem.run.search_seconds += time.perf_counter() - start
        if found is None:
            if self.limited:
                self.problem.run.notes.append(f"{self.what} with more than {self.most} GPUs were not simulated: "
                                              f"{self.limited}")
            elif self.count == 0:
                # the model's own explanation: its labelled constraints in conflict and what would fit without each
                why, labels = self.model.explain() if hasattr(self.model, "explain") else ("", ())
                message = f"{self.empty}\n{why}" if why else self.empty
                if self.refuse:
                    text = f"{self.refuse}: {message}"
                    raise InfeasibleError(text, ("disaggregation", *labels),
                                          option=("disaggregation", *options_named(text, OPTIONS)))
                self.problem.run.notes.append(message)
            return None
        self.count += 1
        return self.propose(found)

    def observe(self, entries: Sequence[RankedPlan]) -> int:
        """Nothing to learn: each proposal's own layout is already cut, and a deployment of several plans has no
        replica ladder to cut (returns 0)."""
        return 0


@dataclass
class SearchRun:
    """The state of one run of a search over a problem: how its simulations run, what it has done so far.

    Everything that changes while a strategy works (the clock, the search time, the notes, the simulator pool and
    its count of simulations) lives here, never in the :class:`ProblemStatement`.
    """

    workers: int = 2
    executor: str = "local"
    ray_address: str | None = None
    simulator: Callable[..., Any] | None = None
    progress: Callable[[str], None] | None = None
    simulation_progress: Callable[[int, int], None] | None = None
    started: float = field(default_factory=time.perf_counter)
    #: seconds the CP-SAT searches took so far
    search_seconds: float = 0.0
    #: what the searches so far had to say (which ran, which were left out and why)
    notes: list[str] = field(default_factory=list)
    #: whether a strategy asked for the disaggregated search (a result says when one planned without it)
    disagg_asked: bool = False
    #: the simulator pool, started by the first verification
    verifier: Verifier | None = None


class Problem:
    """One planning problem (see the module docstring): a frozen :class:`ProblemStatement` (``problem.statement``;
    its fields read as ``problem.specs``, ``problem.top_k``, ...) and the state of one search of it
    (``problem.run``, a :class:`SearchRun`).

    ``Problem(specs, objective=..., ...)`` builds the statement (:meth:`ProblemStatement.of`);
    ``Problem(statement, workers=..., progress=...)`` searches one already built.
    """

    def __init__(self, specs: Specs | ProblemStatement, *, objective: Any = "goodput-per-gpu",
                 constraints: Iterable[Any] = (), top_k: int = 3, options: SearchOptions | None = None,
                 max_requests: int | None = None, seed: int = 0, workers: int = 2, time_limit: float | None = None,
                 max_simulations: int | None = None, simulator: Callable[..., Any] | None = None,
                 progress: Callable[[str], None] | None = None,
                 simulation_progress: Callable[[int, int], None] | None = None,
                 speculative: Sequence[SpeculativeConfig | None] = (), executor: str = "local",
                 ray_address: str | None = None, verify_requests: int | None = VERIFY_REQUESTS) -> None:
        if not isinstance(specs, ProblemStatement):
            _check_specs(specs, "Problem")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise SpecError(f"{{workers=}}{shorten(workers)}: must be a whole number of at least 1 (parallel "
                            "simulation processes; results do not depend on it); write e.g. {workers=}2",
                            option="workers")
        check_executor(executor, ray_address)  # before the search: a missing Ray or a bad address fails now
        inputs = {"objective": objective, "constraints": constraints, "top_k": top_k, "options": options,
                  "max_requests": max_requests, "seed": seed, "time_limit": time_limit,
                  "max_simulations": max_simulations, "speculative": speculative, "verify_requests": verify_requests}
        if isinstance(specs, ProblemStatement):
            given = [name for name, value in inputs.items() if not _is_default(value, _STATEMENT_DEFAULTS[name])]
            if given:
                raise SpecError(f"Problem(statement, {given[0]}=...): the statement already holds "
                                f"{', '.join(given)}; give them to ProblemStatement.of(...) (or "
                                "dataclasses.replace the statement)", option=given[0])
            self.statement = specs
        else:
            self.statement = ProblemStatement.of(specs, **inputs)
        self.run = SearchRun(workers=workers, executor=executor, ray_address=ray_address, simulator=simulator,
                             progress=progress, simulation_progress=simulation_progress)

    # ------------------------------------------------------------------------------------------- the statement
    # read-only: a search changes its run, never what the problem is
    @property
    def specs(self) -> Specs:
        return self.statement.specs

    @property
    def objective(self) -> Objective:
        return self.statement.objective

    @property
    def constraints(self) -> tuple[Constraint, ...]:
        """The constraints on the plan (the CP-SAT model holds them)."""
        return self.statement.constraints

    @property
    def sim_constraints(self) -> tuple[Constraint, ...]:
        """The constraints on simulated metrics."""
        return self.statement.sim_constraints

    @property
    def top_k(self) -> int:
        return self.statement.top_k

    @property
    def options(self) -> SearchOptions:
        return self.statement.options

    @property
    def seed(self) -> int:
        return self.statement.seed

    @property
    def speculative(self) -> tuple[SpeculativeConfig | None, ...]:
        """Speculative decoding settings every proposal is simulated with (None: without)."""
        return self.statement.speculative

    @property
    def verify_requests(self) -> int | None:
        """A plan's identical replicas are simulated as far as they cover this many requests (None: all)."""
        return self.statement.verify_requests

    @property
    def max_simulations(self) -> int:
        return self.statement.simulation_budget

    @property
    def time_limit(self) -> float | None:
        return self.statement.time_limit

    # ------------------------------------------------------------------------------------------- the run
    @property
    def workers(self) -> int:
        return self.run.workers

    @property
    def executor(self) -> str:
        return self.run.executor

    @property
    def ray_address(self) -> str | None:
        return self.run.ray_address

    @property
    def simulator(self) -> Callable[..., Any] | None:
        return self.run.simulator

    @property
    def progress(self) -> Callable[[str], None] | None:
        return self.run.progress

    @property
    def simulation_progress(self) -> Callable[[int, int], None] | None:
        return self.run.simulation_progress

    @property
    def started(self) -> float:
        return self.run.started

    @property
    def search_seconds(self) -> float:
        return self.run.search_seconds

    @property
    def extra_notes(self) -> list[str]:
        """The notes of the searches so far (:attr:`notes` adds what the problem itself implies)."""
        return self.run.notes

    # ------------------------------------------------------------------------------------------- space
    @cached_property
    def space(self) -> PlanSpace:
        self._say(f"estimating plans of {self.specs.model.name} on {self.specs.cluster.name}")
        space = build_space(self.specs, self.options)
        if not space.candidates:
            raise InfeasibleError(infeasible_message(space, []), ())
        return space

    @cached_property
    def builtins(self) -> list[Constraint]:
        return builtin_constraints(self.space)

    @property
    def all_constraints(self) -> list[Constraint]:
        return [*self.builtins, *self.constraints]

    @cached_property
    def _checker(self) -> PlanModel:
        """A model used only to evaluate constraints on candidates (canonical split, no solve)."""
        return PlanModel(self.space, self.all_constraints, split="fixed", seed=self.seed)

    @cached_property
    def violations(self) -> list[list[str]]:
        """For each candidate, the labels it violates (canonical split)."""
        checker = self._checker
        return [checker.violated(i) for i in range(len(self.space.candidates))]

    @cached_property
    def search_rows(self) -> list[int]:
        """Candidates that meet every constraint their layer split cannot change (what CP-SAT searches)."""
        table = set(self._checker.table_labels())
        return [i for i, bad in enumerate(self.violations) if not table.intersection(bad)]

    def hard_labels(self) -> list[str]:
        return [c.label for c in self.all_constraints if c.label not in ESTIMATE_LABELS]

    def space_layout(self, index: int) -> list[int]:
        """Candidates with the same layout as ``index`` (differing only in engine limits)."""
        c = self.space.candidates[index]
        return [d.index for d in self.space.candidates
                if d.key == c.key and d.pp == c.pp and d.dp == c.dp]

    # ------------------------------------------------------------------------------------------- strategies' tools
    def optimizer(self) -> Optimizer:
        return Optimizer(self)

    def feasible(self) -> list[Proposal]:
        """Every candidate that meets the hard constraints (no analytical SLO bounds), canonical split."""
        estimates = set(ESTIMATE_LABELS)
        out = []
        for c, bad in zip(self.space.candidates, self.violations):
            if not [b for b in bad if b not in estimates]:
                out.append(self.proposal_of(c.index, None, source="feasible"))
        return out

    def infeasible(self, *, hard_only: bool = False) -> InfeasibleError:
        """The error for a problem no plan satisfies, naming a minimal set of conflicting labels."""
        constraints = self.all_constraints
        if hard_only:
            constraints = [c for c in constraints if c.label not in ESTIMATE_LABELS]
        labels = self._conflict(constraints)
        by_label = {c.label: c for c in constraints}
        conflict = [by_label[n] for n in labels]
        err = InfeasibleError(infeasible_message(self.space, conflict, hard_only=hard_only), tuple(labels))
        err.explanation = str(err)  # type: ignore[attr-defined]
        return err

    def _conflict(self, constraints: Sequence[Constraint]) -> list[str]:
        """A minimal set of the labels of ``constraints`` that together rule out every plan ([] if none does).

        A deletion filter (the labels tried one by one, derived bounds first), each trial decided in Python where it can be:
        a label that reads table columns only holds or fails for a candidate whatever its layer split
        (:meth:`PlanModel.table_labels`), so the candidates left by a trial's table labels are known from
        :attr:`violations`; none left rules the trial out, and one that meets every label of the trial at its
        canonical split admits it. Only the rest asks CP-SAT, over those candidates alone. On 256 GPUs an
        explanation thus takes seconds, not minutes over every candidate's element tables.
        """
        names = [c.label for c in constraints]
        table = set(self._checker.table_labels())
        violations = self.violations
        by_label = {c.label: c for c in constraints}

        def admits(trial: list[str]) -> bool:
            keep, split_labels = set(trial), [n for n in trial if n not in table]
            rows = [i for i, bad in enumerate(violations) if not keep.intersection(b for b in bad if b in table)]
            if not rows:
                return False
            if not split_labels or any(not keep.intersection(violations[i]) for i in rows):
                return True
            model = PlanModel(self.space, [by_label[n] for n in trial], seed=self.seed, time_limit=self.time_limit,
                              rows=rows)
            return model.feasible()

        if admits(names):
            return []
        first = ("capacity", "slo.e2e", "slo.ttft", "slo.tpot")
        last = ("placement.tp", "memory", "divisibility", "gpus")

        def priority(n: str) -> tuple[int, int]:
            return (0, first.index(n)) if n in first else (2, last.index(n)) if n in last else (1, 0)

        needed = sorted(names, key=priority)
        for name in list(needed):
            trial = [n for n in needed if n != name]
            if not admits(trial):
                needed = trial
        return sorted(needed, key=names.index)

    def proposal_of(self, index: int, split: tuple[int, ...] | None, source: str = "") -> Proposal:
        c = self.space.candidates[index]
        est = c.est
        if split is not None and est is not None and tuple(split) != est.split:
            est = self.space.estimator.estimate(c.key, c.menu, c.pp, c.dp, split=tuple(split))
        else:
            split = est.split if est else None
        plan = self.space.plan(c, split)
        return Proposal(plan, _predicted(est, c.gpus), index, source)

    def proposal(self, *, tp: int, pp: int = 1, dp: int = 1, ep: int = 1, weight_dtype: str = "bf16",
                 kv_dtype: str = "bf16", max_num_seqs: int | None = None, budget: int | None = None,
                 source: str = "") -> Proposal:
        """A plan of your own choosing (engine defaults unless given), with the cost model's predictions."""
        sp = self.space
        moe_tp = tp // ep if ep > 1 else None
        key = ShapeKey(tp, ep, moe_tp, weight_dtype, kv_dtype)
        menu = Menu(max_num_seqs or self.specs.engine.scheduler.max_num_seqs, budget)
        if tp * pp * dp > sp.total_gpus:
            raise SpecError(f"plan dp{dp} tp{tp} pp{pp} needs {tp * pp * dp} GPUs; the cluster has {sp.total_gpus}")
        est = sp.estimator.estimate(key, menu, pp, dp)
        cand = Candidate(-1, key, menu, pp, dp, 1, True, est)
        plan = sp.plan(cand, est.split)
        if max_num_seqs is None:
            plan = Plan(**{**plan.model_dump(), "max_num_seqs": None})
        return Proposal(plan, _predicted(est, plan.gpus), None, source)

    @property
    def aggregated(self) -> bool:
        """Whether single plans on one GPU kind are searched (not with ``disaggregation="only"``, nor when every
        GPU of a mixed cluster must be used: one kind cannot)."""
        return self.options.disaggregation != "only" and not self._every_gpu_of_mixed_cluster

    @property
    def _every_gpu_of_mixed_cluster(self) -> bool:
        return self.specs.cluster.is_heterogeneous and self.options.use_all_gpus

    @property
    def notes(self) -> list[str]:
        """What the searches so far have to say (which ran, which were left out and why)."""
        head = []
        if self._every_gpu_of_mixed_cluster and self.options.disaggregation != "only":
            head.append("every GPU of a mixed cluster asked for: only mixed-GPU plans and disaggregated pairs across "
                        "the kinds can use them all")
        return head + self.extra_notes

    def disaggregated(self) -> FurtherSearch | None:
        """CP-SAT over prefill/decode (xPyD) pairs, or None (with a note in the result) when they are not searched.

        Searched when ``options.disaggregation`` is ``auto`` or ``only`` (see :mod:`apex_opt.planner.disagg`).
        Raises :class:`~apex_opt.errors.InfeasibleError` with ``only`` when no pair can be built.
        """
        mode = self.options.disaggregation
        self.run.disagg_asked = True
        if mode == "off":
            return None
        why = self._single_plan_rules("disaggregated") or (
            "a disaggregated plan needs at least 2 GPUs" if self.specs.cluster.total_gpus < 2 else "")
        if not why:
            dspace = build_disagg_space(self.space)
            self.run.notes.append(f"disaggregated search: {len(dspace.prefill)} prefill x {len(dspace.decode)} "
                                    f"decode replica sets ({dspace.build_time_s:.1f} s to estimate)")
            if dspace.prefill and dspace.decode:
                sp = self.space
                try:
                    model = DisaggModel(sp, dspace, self.objective, constraints=self.constraints, seed=self.seed,
                                        time_limit=self.time_limit)
                except FieldNotModelled as exc:
                    self._not_modelled("disaggregated", exc, mode == "only")
                    return None
                return FurtherSearch(
                    self, model, lambda pair: Proposal(disagg_deployment(sp, *pair), disagg_predicted(sp, *pair), None,
                                                       source="cpsat:disaggregated"),
                    "disaggregated plans", "no prefill/decode pair meets the analytical bounds together: GPUs, prefill "
                    "TTFT (slo.ttft), decode TPOT (slo.tpot), both roles' capacity for the arrival rate"
                    f"{self._and_user_constraints}; loosen the SLO or add GPUs", refuse="{disaggregation=}only" if mode == "only" else "")
            why = "no prefill or no decode replica shape fits memory inside one node"
        if mode == "only":
            raise InfeasibleError(f"{{disaggregation=}}only: {why}. Use {{disaggregation=}}auto or off.",
                                  ("disaggregation",), option="disaggregation")
        self.run.notes.append(f"disaggregated plans not searched: {why}")
        return None

    @property
    def _and_user_constraints(self) -> str:
        return " and the plan constraints" if self.constraints else ""

    def _not_modelled(self, what: str, exc: FieldNotModelled, refuse: bool) -> None:
        """Leave a search out (or refuse, for ``disaggregation="only"``) whose model cannot price a field a user
        constraint reads."""
        why = f"constraint '{exc.label}' reads {exc}"
        if refuse:
            raise InfeasibleError(f"{{disaggregation=}}only: {why}. Write the constraint on the fields that search "
                                  "prices, or use {disaggregation=}auto or off.", ("disaggregation", exc.label),
                                  option="disaggregation")
        self.run.notes.append(f"{what} plans not searched: {why}")

    def _single_plan_rules(self, what: str) -> str:
        """Why user rules keep ``what`` plans (several plans at once) out of the search, or ""."""
        if self.objective.metric is None:
            return f"a function objective is defined on one plan's PlanVars; {what} plans need a metric objective"
        return ""

    def heterogeneous(self) -> FurtherSearch | None:
        """CP-SAT over what runs where on a heterogeneous cluster (one plan per GPU kind), or None with a note.

        None on a homogeneous cluster; see :mod:`apex_opt.planner.hetero`.
        """
        if not self.specs.cluster.is_heterogeneous:
            return None
        why = self._single_plan_rules("mixed-GPU")
        if not why:
            hspace = build_hetero_space(self.space)
            shapes = ", ".join(f"{len(k.shapes)} on {k.gpu}" for k in hspace.kinds)
            self.run.notes.append(f"mixed-GPU search: replica shapes {shapes} at {len(hspace.phis)} load levels "
                                    f"({hspace.build_time_s:.1f} s to estimate)")
            if any(k.shapes for k in hspace.kinds):
                sp = self.space
                try:
                    model = HeteroModel(sp, hspace, self.objective, constraints=self.constraints, seed=self.seed,
                                        time_limit=self.time_limit)
                except FieldNotModelled as exc:
                    self._not_modelled("mixed-GPU", exc, False)
                    return None
                return FurtherSearch(
                    self, model, lambda mix: Proposal(hetero_deployment(sp, mix), hetero_predicted(sp, hspace, mix),
                                                      None, source="cpsat:mixed-gpus"),
                    "mixed-GPU plans", "no combination of the GPU kinds meets the TTFT and TPOT bounds and carries the "
                    f"arrival rate{self._and_user_constraints}")
            why = "no GPU kind holds a replica of the model"
        self.run.notes.append(f"mixed-GPU plans not searched: {why}")
        return None

    def siblings(self, entry: RankedPlan | Proposal) -> list[Proposal]:
        """Plans of the same layout with other engine limits that the cost model cannot tell apart from ``entry``.

        They meet every constraint and are predicted within 1% of ``entry`` on every objective level; only the
        simulator can rank them (e.g. chunked-prefill budgets on a trace of short prompts). Already simulated
        plans are left out.
        """
        if entry.index is None:
            return []
        levels = [m for m, _ in self.objective.levels if m is not None]
        mine = [predicted_value(m, entry.predicted) for m in levels]
        out = []
        me = self.space.candidates[entry.index].menu
        # other chunked-prefill budgets first (they change the schedule most), then other max_num_seqs
        layout = sorted(self.space_layout(entry.index),
                        key=lambda i: (self.space.candidates[i].menu.max_num_seqs != me.max_num_seqs, i))
        for i in layout:
            if i == entry.index or self.violations[i]:
                continue
            prop = self.proposal_of(i, None, source=f"{entry.source or 'search'}:limits")
            if self.verifier.simulated(prop.plan):
                continue
            theirs = [predicted_value(m, prop.predicted) for m in levels]
            if all(_close(a, b) for a, b in zip(mine, theirs)):
                out.append(prop)
        return out

    def rank(self, entries: Sequence[RankedPlan]) -> list[RankedPlan]:
        """``entries`` best first by the objective on simulated metrics (ties within 1%; see rank_plans)."""
        return rank_plans(self.objective, list(entries), self.specs.engine.scheduler.max_num_seqs)

    def gpu_limit(self, verified: Sequence[RankedPlan]) -> tuple[int, str] | None:
        """``(gpus, why)``: a deployment simulated whole with more GPUs than this cannot place among the ``top_k``
        of the result once ``verified`` are (:func:`~apex_opt.planner.objectives.gpu_limit`); None without such a
        bound (the objective is not ``goodput-per-gpu`` or ``min-gpus``, or fewer than ``top_k`` layouts verified)."""
        return gpu_limit(self.objective, verified, self.top_k, self.specs.workload, self.specs.slo, _layout)

    def fits(self, proposal: Proposal) -> bool:
        """Whether the plan's replica fits GPU memory with room for the workload's longest request (cost model)."""
        return proposal.predicted.fits

    @property
    def verifier(self) -> Verifier:
        """The run's simulator pool (started on first use)."""
        run = self.run
        if run.verifier is None:
            run.verifier = Verifier(self.specs, workers=run.workers, seed=self.seed, simulator=run.simulator,
                                    progress=run.progress, simulation_progress=run.simulation_progress,
                                    executor=run.executor, ray_address=run.ray_address,
                                    sample_requests=self.verify_requests)
        return run.verifier

    @property
    def simulations(self) -> int:
        return self.verifier.count if self.run.verifier is not None else 0

    @property
    def simulation_budget_spent(self) -> bool:
        return self.simulations >= self.max_simulations

    def remaining_time(self) -> float | None:
        if self.time_limit is None:
            return None
        return max(self.time_limit - (time.perf_counter() - self.started), 0.05)

    def verify(self, proposals: Sequence[Proposal]) -> list[RankedPlan]:
        """Simulate ``proposals`` (in parallel) and judge each: SLO met and simulated constraints hold.

        With speculative settings to search (``Problem(speculative=...)``) each proposal is simulated once per
        setting; the variants share a layout, so :meth:`result` keeps the best of them."""
        if self.speculative:  # pipelined plans cannot speculate in the simulator: they are tried as they are
            proposals = [dataclasses.replace(p, plan=with_speculative(p.plan, sp))
                         for p in proposals for sp in (self.speculative if _single_stage(p.plan) else (None,))]
        outcomes = self.verifier.run([p.plan for p in proposals])
        out = []
        slo = self.specs.slo
        for prop, outcome in zip(proposals, outcomes):
            notes: list[str] = []
            if outcome.metrics is None:
                out.append(RankedPlan(prop.plan, prop.predicted, None, False, (f"simulation failed: {outcome.error}",),
                                      source=prop.source, index=prop.index))
                continue
            m = outcome.metrics
            ok = True
            if not slo.is_empty and not m.get("slo_met", True):
                ok = False
                notes.append(_slo_miss(m, slo))
            for c in self.sim_constraints:
                if not check_simulated(c, m, self.specs):
                    ok = False
                    notes.append(f"[{c.label}] does not hold in simulation ({c.location})")
            out.append(RankedPlan(prop.plan, prop.predicted, dict(m), ok, tuple(notes), source=prop.source,
                                  index=prop.index))
        return out

    # ------------------------------------------------------------------------------------------- results
    def result(self, verified: Sequence[RankedPlan], rejected: Sequence[RankedPlan] = (), *, solver: str = "",
               exhausted: bool = False, keep: int | None = None) -> PlanSet:
        """Rank ``verified`` by the objective on simulated metrics and package a :class:`PlanSet`."""
        keep = self.top_k if keep is None else keep
        if not verified and not rejected and not self.aggregated:
            raise InfeasibleError("no plan meets the analytical bounds: " + "; ".join(self.notes),
                                  ("disaggregation" if self.options.disaggregation == "only" else "gpus",))
        ranked = rank_plans(self.objective, list(verified), self.specs.engine.scheduler.max_num_seqs)
        seen: set[tuple] = set()
        distinct = []
        for p in ranked:  # the best of each layout: plans differing only in engine limits are one plan
            layout = _layout(p.plan)
            if layout not in seen:
                seen.add(layout)
                distinct.append(p)
        ranked = distinct[:keep]
        ranked = [dataclasses.replace(p, rank=i + 1, predicted=self._with_memory(p),
                                      launch_settings=self._launch_settings(p)) for i, p in enumerate(ranked)]
        rej = sorted(rejected, key=lambda p: -float((p.simulated or {}).get("slo_attainment", -1.0) or -1.0))
        if ranked:
            status = "optimal" if len(ranked) >= keep else ("exhausted" if exhausted else "budget")
        else:
            status = "unverified"
        stats = self.stats(len(verified), len(rejected))
        explanation = why_best(ranked, self.objective, simulated=stats.plans_simulated,
                               candidates=stats.candidates)
        notes = list(self.space.notes) + self.notes
        if self.options.disaggregation != "off" and not self.run.disagg_asked and solver != "cpsat":
            notes.append(f"disaggregated plans are searched by the cpsat solver; the {solver} solver planned "
                         "aggregated ones only")
        if status == "budget":
            notes.append(f"stopped at the simulation budget ({self.max_simulations}); raise max_simulations for more")
        sampled = [p for p in (*ranked, *rej) if p.simulated and "replicas_simulated" in p.simulated]
        if sampled:
            notes.append(f"{len(sampled)} plan{'s' if len(sampled) != 1 else ''} of many identical replicas "
                         f"{'were' if len(sampled) != 1 else 'was'} verified on the replicas that cover "
                         f"{self.verify_requests} of the {len(self.specs.workload)} requests (exact for those "
                         "requests, totals scaled to the plan; verify_requests=None or --verify-requests all "
                         "simulates every replica)")
        notes += calibration_notes(self.specs.gpus.values())
        return PlanSet(status, tuple(ranked), self.objective, solver, stats, tuple(rej), explanation,
                       self.describe(), tuple(notes), calibration=calibration_sources(self.specs.gpus.values()))

    def _launch_settings(self, p: RankedPlan) -> LaunchSettings:
        """The launch lines' context caps (KV tokens of one replica, per engine) and the checkpoint's facts."""
        if isinstance(p.plan, Deployment):
            return LaunchSettings.of_model(self.specs.model)
        return launch_settings(self.specs.model, self.specs.gpus[p.plan.gpu], p.plan, self.specs.engine,
                               topology=self.space.topology)

    def _with_memory(self, p: RankedPlan) -> Prediction:
        """Add the memory model's exact headroom and KV capacity for a reported plan."""
        if isinstance(p.plan, Deployment):
            return p.predicted
        try:
            replica = build_replica(self.specs.model, self.specs.gpus[p.plan.gpu], p.plan, self.specs.engine,
                                    topology=self.space.topology)
        except Exception:  # noqa: BLE001 - a report detail must not fail the solve
            return p.predicted
        # free memory per GPU once the engine is up: after weights, reserves, the KV cache, the CUDA context and the
        # CUDA-graph pool, on the tightest stage (the engine sizes the KV cache to fill its budget, so this is
        # about (1 - gpu_memory_utilization) of the GPU less the graphs)
        return p.predicted.replace(memory_headroom_bytes=min(s.headroom - s.graphs for s in replica.memory.stages),
                                   kv_tokens=replica.memory.kv_tokens,
                                   weights_per_gpu_bytes=replica.memory.weights_per_gpu)

    def stats(self, verified: int = 0, cut: int = 0) -> SolveStats:
        space = self.space
        n = len(space.candidates)
        estimates = set(ESTIMATE_LABELS)
        hard_ok = sum(1 for bad in self.violations if not [b for b in bad if b not in estimates])
        all_ok = sum(1 for bad in self.violations if not bad)
        return SolveStats(
            candidates=n,
            feasible_plans=hard_ok,
            proven_infeasible=n - all_ok,
            estimated_feasible=all_ok,
            plans_simulated=self.simulations,
            plans_verified=verified,
            plans_cut=cut,
            solve_time_s=time.perf_counter() - self.started,
            space_time_s=space.build_time_s,
            search_time_s=self.search_seconds,
            simulation_time_s=self.run.verifier.seconds if self.run.verifier else 0.0,
        )

    def describe(self) -> dict[str, Any]:
        """The problem as a result reports it (:meth:`ProblemStatement.describe`)."""
        return self.statement.describe(self.space)

    def close(self) -> None:
        if self.run.verifier is not None:
            self.run.verifier.close()

    def _say(self, text: str) -> None:
        if self.progress:
            self.progress(text)


#: what ``Problem(statement, ...)`` must leave as they are: the statement already holds them
_STATEMENT_DEFAULTS = {name: p.default for name, p in inspect.signature(ProblemStatement.of).parameters.items()
                       if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _is_default(value: Any, default: Any) -> bool:
    """Whether a keyword of ``Problem`` was left as it is (an empty list counts as the default ``()``)."""
    if isinstance(value, (list, tuple)) and isinstance(default, tuple):
        return not value and not default
    return value is default or value == default


def _single_stage(plan: Plan | Deployment) -> bool:
    return all(p.pp == 1 for p in plan.plans) if isinstance(plan, Deployment) else plan.pp == 1


def _layout(plan: Plan | Deployment) -> tuple:
    if isinstance(plan, Deployment):
        return tuple((p.role, *_layout(p)) for p in plan.plans)
    return (plan.dp, plan.pp, plan.tp, plan.ep, plan.expert_tp, plan.weight_dtype, plan.kv_dtype)


def _predicted(est: Any, gpus: int) -> Prediction:
    if est is None:
        return Prediction(fits=False)
    return Prediction(
        fits=est.fits,
        gpus=gpus,
        ttft_mean_s=est.ttft_s,
        ttft_tail_s=est.ttft_tail_s,
        tpot_mean_s=est.tpot_s,
        slo_attainment=est.attainment,
        goodput_req_s=est.goodput_rps,
        goodput_per_gpu_req_s=est.goodput_rps / gpus,
        capacity_req_s=est.capacity_rps,
        throughput_output_tok_s=est.throughput_tok_s,
        energy_per_output_token_j=est.energy_per_token_j,
        cost_per_mtok_usd=est.cost_per_mtok_usd,
        batch=est.batch,
        kv_tokens=est.kv_tokens,
        kv_needed=est.kv_needed,
    )


def _slo_miss(m: dict[str, Any], slo: Any) -> str:
    from ..units import format_time

    cut = m.get("cut_at_s")
    if isinstance(cut, (int, float)) and math.isfinite(cut):  # the run stopped once its verdict was decided
        missed, att = m.get("num_slo_missed", 0), m.get("slo_attainment", math.nan)
        return (f"SLO missed in simulation: cut at {format_time(cut)} of simulated time, when {missed:,} requests "
                f"had already missed it (attainment at most {att:.2%} < {slo.attainment:.0%})")
    parts = []
    att = m.get("slo_attainment")
    if isinstance(att, (int, float)) and math.isfinite(att) and att < slo.attainment:
        parts.append(f"attainment {att:.1%} < {slo.attainment:.0%}")
    for metric in ("ttft", "tpot", "e2e"):
        bound = getattr(slo, metric)
        value = m.get(f"slo_{metric}_value_s")
        if bound is not None and isinstance(value, (int, float)) and not value <= bound:
            stat = getattr(slo, f"{metric}_stat")
            parts.append(f"{metric}.{stat} {format_time(value)} > {format_time(bound)}")
    return "SLO missed in simulation: " + ("; ".join(parts) if parts else "slo_met is false")


# ------------------------------------------------------------------------------------------- strategies
_STRATEGIES: dict[str, Callable[[Problem], PlanSet]] = {}


def register_solver(name: str, search: Callable[[Problem], PlanSet]) -> None:
    """Register a search strategy under ``name`` (``solve(solver=name)``, ``--solver name``)."""
    if name in _STRATEGIES and _STRATEGIES[name] is not search:
        raise SpecError(f"a solver named '{name}' is already registered; choose another name")
    _STRATEGIES[name] = search


def solvers_dir() -> Path | None:
    """The folder of the bundled strategies: ``apex_opt/_solvers`` (wheel) or ``<repo>/solvers`` (checkout);
    ``None`` when neither is there (:func:`apex_opt.resources.find_resource`)."""
    return find_resource("solvers")


def solver_names() -> list[str]:
    folder = solvers_dir()
    found = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")} if folder else set()
    return sorted(found | set(_STRATEGIES))


def _load_strategy(path: Path) -> Callable[[Problem], PlanSet]:
    name = f"apex_opt_solver_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"{{solver=}}{path}: not a Python file", option="solver")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise SpecError(f"{{solver=}}{path}:{exc.lineno}: syntax error: {exc.msg}; fix the file",
                        option="solver") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plug-in's own failure becomes a message
        raise SolverError(f"{{solver=}}{path}: loading the plug-in failed at {_plugin_site(exc, path)}: "
                          f"{_plugin_failure(exc)}; fix the file", option="solver") from None
    search = getattr(module, "search", None)
    if not callable(search):
        raise SpecError(f"{{solver=}}{path}: the file defines no function search(problem)", option="solver")
    return search


def _plugin_failure(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({shorten(exc.code)}) (a plug-in returns its result; it must not exit)"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _plugin_site(exc: BaseException, path: Path | None = None) -> str:
    """``file:line`` of the innermost frame in the plug-in's file (or the innermost frame)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if path is not None and Path(f.filename) == Path(path)] or frames[-1:]
    return f"{Path(mine[-1].filename).name}:{mine[-1].lineno}" if mine else str(path or "?")


def _run_plugin(name: str, strategy: Callable[[Problem], PlanSet], problem: Problem) -> PlanSet:
    """Call a user's ``search(problem)``; what it raises (or a sys.exit) becomes a :class:`SolverError`."""
    path = getattr(getattr(strategy, "__code__", None), "co_filename", None)
    try:
        with user_code_time_limit(f"{{solver=}}{name}: search(problem)", PLUGIN_SEARCH_TIME_LIMIT_S, error=SolverError,
                                  fix="look for a loop that never ends in the plug-in, or use {solver=}cpsat",
                                  option="solver"):
            result = strategy(problem)
    except (ApexOptError, KeyboardInterrupt):
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plug-in's own failure becomes a message
        site = _plugin_site(exc, Path(path) if path else None)
        raise SolverError(f"{{solver=}}{name}: search(problem) failed at {site}: {_plugin_failure(exc)}; fix the "
                          "plug-in, or use {solver=}cpsat", option="solver") from None
    if not isinstance(result, PlanSet):
        raise SolverError(f"{{solver=}}{name}: search(problem) returned {type(result).__name__} "
                          f"{shorten(result)}, not a PlanSet; end search() with return problem.result(verified, rejected)",
                          option="solver")
    return result


def get_solver(solver: str | Callable[[Problem], PlanSet]) -> tuple[str, Callable[[Problem], PlanSet]]:
    """(name, strategy) from a registered name, a bundled ``solvers/<name>.py``, a ``.py`` path or a function."""
    if callable(solver):
        return getattr(solver, "__name__", "custom"), solver
    if not isinstance(solver, str):
        raise SpecError(f"{{solver=}}{shorten(solver)}: got a value of type {type(solver).__name__}; give a name "
                        "(cpsat, exhaustive, heuristic), a .py file defining search(problem), or such a function",
                        option="solver")
    if solver in _STRATEGIES or (not solver.endswith(".py") and load_plugins() and solver in _STRATEGIES):
        return solver, _STRATEGIES[solver]
    path = Path(solver)
    if solver.endswith(".py"):
        if not path.is_file():
            raise SpecError(f"{{solver=}}{solver}: no such file", option="solver")
        return path.stem, _load_strategy(path)
    folder = solvers_dir()
    if folder is not None and (folder / f"{solver}.py").is_file():
        search = _load_strategy(folder / f"{solver}.py")
        _STRATEGIES[solver] = search
        return solver, search
    names = solver_names()
    if not names:
        raise SpecError(f"{{solver=}}{solver}: the bundled strategies (solvers/) are not installed next to apex_opt; "
                        "pass a .py file defining search(problem)", option="solver")
    raise SpecError(f"{{solver=}}'{solver}' is unknown; use one of {', '.join(names)} or a .py file", option="solver")


@applying_calibration
def speculative_candidates(speculative: SpeculativeConfig | str | Sequence[SpeculativeConfig | None] | None,
                           ) -> tuple[SpeculativeConfig | None, ...]:
    """The speculative settings a solve simulates every plan with (``()``: plans as they are).

    >>> [None if s is None else s.num_tokens for s in speculative_candidates("mtp:k=auto,acceptance=0.8")]
    [None, 1, 2, 3, 4, 5]
    >>> speculative_candidates("eagle:k=3,acceptance=0.7")[0].label
    'eagle-k3'
    """
    if speculative is None:
        return ()
    if isinstance(speculative, SpeculativeConfig):
        return (speculative,)
    if isinstance(speculative, str):
        found = parse_speculative_option(speculative)
        return found if len(found) == 1 else (None, *found)
    return tuple(speculative)


def search_options(options: SearchOptions | None, fields: dict[str, Any]) -> SearchOptions:
    """``options`` (default ``SearchOptions()``) with ``fields`` changed; a name that is not a field of
    :class:`SearchOptions` raises :class:`SpecError` listing them.

    >>> search_options(None, {"quantization": "fp8"}).quantization
    'fp8'
    """
    known = [f.name for f in dataclasses.fields(SearchOptions)]
    unknown = [k for k in fields if k not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise SpecError(f"solve({unknown[0]}=...): not an option of solve; {hint}the search options are "
                        f"{', '.join(known)} (fields of SearchOptions), and solve's own keywords are objective, "
                        "constraints, top_k, solver, options, max_requests, seed, workers, time_limit, "
                        "max_simulations, simulator, progress, prefix_caching, simulation_progress, speculative, "
                        "executor, ray_address and verify_requests")
    if options is not None and not isinstance(options, SearchOptions):
        raise SpecError(f"solve(options={shorten(options)}): give a SearchOptions, e.g. "
                        "ax.SearchOptions(quantization=\"fp8\"), or its fields as keywords")
    base = options if options is not None else SearchOptions()
    return dataclasses.replace(base, **fields) if fields else base


def solve(specs: Specs, *, objective: Any = "goodput-per-gpu", constraints: Iterable[Any] = (), top_k: int = 3,
          solver: str | Callable[[Problem], PlanSet] = "cpsat", options: SearchOptions | None = None,
          max_requests: int | None = None, seed: int = 0, workers: int = 2, time_limit: float | None = None,
          max_simulations: int | None = None, simulator: Callable[..., Any] | None = None,
          progress: Callable[[str], None] | None = None, prefix_caching: bool | None = None,
          simulation_progress: Callable[[int, int], None] | None = None,
          speculative: SpeculativeConfig | str | Sequence[SpeculativeConfig | None] | None = None,
          executor: str = "local", ray_address: str | None = None,
          verify_requests: int | None = VERIFY_REQUESTS, **search: Any) -> PlanSet:
    """Find the ``top_k`` best deployments of ``specs`` and verify them by simulation.

    Parameters
    ----------
    specs:
        Model, cluster, engine, workload and SLO (:func:`apex_opt.load_specs`).
    objective:
        ``"goodput-per-gpu"`` (default), ``"throughput"``, ``"min-gpus"``, ``"min-energy"``, ``"min-cost"``,
        ``"min-tpot"``, ``"min-ttft"``, or ``Minimize(...)`` / ``Maximize(...)``.
    constraints:
        ``@constraint`` functions or paths of ``.py`` files holding them.
    top_k:
        How many verified plans to return.
    solver:
        ``"cpsat"`` (default), ``"exhaustive"``, ``"heuristic"``, a ``.py`` file or a ``search(problem)`` function.
    options, **search:
        What the search may choose from (:class:`~apex_opt.planner.space.SearchOptions`), as an object or as its
        fields given as keywords, which change ``options`` (default: ``SearchOptions()``) field by field:
        ``quantization`` (weight formats allowed besides bf16: ``none``, ``fp8``, ``int4``, ``any``), ``kv_dtype``
        (``bf16``, ``fp8``, ``any``), ``use_all_gpus`` (exactly the cluster's GPUs; default: at most),
        ``tp_across_nodes``, ``disaggregation`` (``auto``, the default: also prefill/decode-disaggregated xPyD
        plans, ranked with the aggregated ones on simulated metrics, so the planner picks the mode and the ratio;
        ``off`` or ``only``), ``max_pp``, ``max_num_seqs`` and ``budgets`` (the engine-limit menus), ``slo_slack``,
        ``headroom``, ``dense_dp``, ``dp_step``. An unknown keyword raises :class:`SpecError` naming the fields.
    max_requests:
        Plan and simulate on the first N requests of the workload only (speed).
    verify_requests:
        Requests a verification simulates at least (default 2,000). A plan of ``dp`` identical replicas behind the
        round-robin router is simulated on its first replicas only, as many as cover this many requests, with the
        requests routed to them: exact for each of those requests, and its totals and rates scaled to the whole
        plan (``replicas_simulated`` in its metrics; :mod:`apex_opt.planner.sampling`). ``None`` simulates every
        replica.
    seed, workers:
        Simulation seed and parallel processes; results do not depend on ``workers``.
    executor, ray_address:
        Where the simulations run: ``"local"`` (default, ``workers`` processes on this machine) or ``"ray"`` (Ray
        tasks, ``pip install 'apex-opt[ray]'``): on the cluster at ``ray_address`` (``"HOST:PORT"``), else on a
        Ray instance started on this machine with ``workers`` CPUs. Results do not depend on it.
    time_limit:
        Seconds for the CP-SAT search.
    prefix_caching:
        Turn the engine's automatic prefix caching on or off in every plan (default: the engine's); it matters
        for workloads that describe shared prompt prefixes (``Workload.segments``).
    speculative:
        Speculative decoding for every plan: a :class:`~apex_opt.schema.speculative.SpeculativeConfig`, a string
        ``"eagle:k=3,acceptance=0.7"``, or with ``k=auto`` (or a sequence of settings, ``None`` meaning off) the
        settings to search: each plan is simulated with each and the best per layout is kept. ``k=auto`` tries
        k = 1..5 and no speculation. The simulation budget scales with the number of settings.
    progress:
        Called with a line of text at each stage (e.g. ``"simulating 8 plans: ..."``).
    simulation_progress:
        Called with ``(finished, started)`` simulation counts when a batch of simulations starts and as each one
        finishes (``apex-opt solve`` draws its progress bar from it); ``started`` grows with each batch.

    Returns
    -------
    PlanSet
        Verified plans, best first, with predictions, simulated metrics and launch commands.

    Raises
    ------
    InfeasibleError
        No plan satisfies the constraints; the message lists the labels that together rule out every plan.
    ConstraintError
        A constraint function is malformed (the message names its label and file:line).
    """
    if not isinstance(specs, Specs):
        raise SpecError(f"solve(specs={shorten(specs)}): specs must be the Specs that load_specs(...) returns, not a "
                        f"{type(specs).__name__}; write ax.solve(ax.load_specs(\"llama-3.1-8b\", \"h100x8\"))")
    check_seed(seed)  # before the solver plug-in is loaded (the statement checks them again)
    check_time_limit(time_limit)
    if prefix_caching is not None:
        specs = with_engine_settings(specs, prefix_caching=prefix_caching)
    candidates = speculative_candidates(speculative)
    opts = search_options(options, search)
    name, strategy = get_solver(solver)
    problem = Problem(specs, objective=objective, constraints=constraints, top_k=top_k, options=opts,
                      max_requests=max_requests, seed=seed, workers=workers, time_limit=time_limit,
                      max_simulations=max_simulations, simulator=simulator, progress=progress,
                      simulation_progress=simulation_progress, speculative=candidates, executor=executor,
                      ray_address=ray_address, verify_requests=verify_requests)
    user_plugin = callable(solver) or str(solver).endswith(".py")
    try:
        result = _run_plugin(name, strategy, problem) if user_plugin else strategy(problem)
    finally:
        problem.close()
    if not result.solver:
        result = dataclasses.replace(result, solver=name)
    return result


__all__ = ["FurtherSearch", "Optimizer", "Problem", "ProblemStatement", "Proposal", "Proposer", "SearchRun", "get_solver", "register_solver", "solve", "solver_names"]
