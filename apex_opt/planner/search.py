"""The searches a strategy drives: a :class:`Proposer` yields :class:`Proposal` objects best first and learns from
their simulations.

:class:`Optimizer` is the CP-SAT search over a problem's plan space (single plans); :class:`FurtherSearch` drives a
search beside it (prefill/decode-disaggregated pairs, mixed-GPU plans). Both work for a
:class:`~apex_opt.planner.solve.Problem`, which makes them (``problem.optimizer()``, ``problem.disaggregated()``,
``problem.heterogeneous()``).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InfeasibleError, options_named
from ..schema.plan import Deployment, Plan
from .constraints import OPTIONS
from .model import PlanModel, Solution, objective_key
from .prediction import Prediction
from .result import RankedPlan

if TYPE_CHECKING:
    from .solve import Problem


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
            metrics: Mapping[str, Any] = entry.simulated or {}
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



__all__ = ["FurtherSearch", "Optimizer", "Proposal", "Proposer"]
