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

Beside this module: :mod:`apex_opt.planner.search` holds the searches a strategy drives (:class:`Proposal`,
:class:`Proposer`, :class:`Optimizer`, :class:`FurtherSearch`), :mod:`apex_opt.planner.run` the state of one run
(:class:`SearchRun`), and :mod:`apex_opt.planner.strategies` the strategy registry and the loading of
``solvers/*.py`` (:func:`register_solver`, :func:`get_solver`, :func:`solver_names`); their names are importable
from here as well.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from ..bounds import PLUGIN_SEARCH_TIME_LIMIT_S, user_code_time_limit
from ..calibration.profile import applying_calibration
from ..errors import ApexOptError, InfeasibleError, SolverError, SpecError, shorten
from ..executors import check_executor
from ..perf.provenance import calibration_notes, calibration_sources
from ..perf.replica import build_replica
from ..schema.plan import Deployment, Plan, with_speculative
from ..schema.speculative import SpeculativeConfig, parse_speculative_option
from ..specs import Specs, with_engine_settings
from .constraints import Constraint, builtin_constraints, check_simulated
from .disagg import DisaggModel, build_disagg_space
from .disagg import deployment as disagg_deployment
from .disagg import predicted as disagg_predicted
from .estimates import Menu, ShapeKey
from .explain import infeasible_message, why_best
from .hetero import HeteroModel, build_hetero_space
from .hetero import deployment as hetero_deployment
from .hetero import predicted as hetero_predicted
from .launch import LaunchSettings, launch_settings
from .model import PlanModel
from .objectives import Objective, _close, gpu_limit, predicted_value, rank_plans
from .prediction import Prediction
from .result import PlanSet, RankedPlan, SolveStats
from .run import SearchRun
from .sampling import VERIFY_REQUESTS
from .search import FurtherSearch, Optimizer, Proposal, Proposer, _predicted
from .space import Candidate, PlanSpace, SearchOptions, build_space
from .statement import ProblemStatement, _check_specs, check_seed, check_time_limit
from .strategies import (
    _STRATEGIES,  # noqa: F401 - re-exported: the registry, read here by tests and older importers
    _load_strategy,  # noqa: F401 - re-exported
    _plugin_failure,
    _plugin_site,
    get_solver,
    register_solver,
    solver_names,
    solvers_dir,
)
from .table import FieldNotModelled
from .verify import Verifier

#: built-in labels that hold for the deployment itself; the rest are analytical estimates
HARD_LABELS = ("gpus", "divisibility", "placement.tp", "memory")
ESTIMATE_LABELS = ("slo.ttft", "slo.tpot", "slo.e2e", "capacity")


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
            out.append(RankedPlan(prop.plan, prop.predicted, m, ok, tuple(notes), source=prop.source,
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
        rej = sorted(rejected, key=lambda p: -float((p.simulated.get("slo_attainment", -1.0) if p.simulated else -1.0) or -1.0))
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


def _slo_miss(m: Mapping[str, Any], slo: Any) -> str:
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


__all__ = ["FurtherSearch", "Optimizer", "Problem", "ProblemStatement", "Proposal", "Proposer", "SearchRun", "get_solver",
           "register_solver", "search_options", "solve", "solver_names", "solvers_dir", "speculative_candidates"]
