"""The default strategy (``solvers/cpsat.py``) as a loop over a problem's public surface: which plans it sends to
the simulator, and in which rounds.

A fake problem stands in for :class:`apex_opt.Problem`: candidate rows belong to layouts (plans differing only in
engine limits), every simulation verifies, and a plan's simulated score is a number of the test's choosing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

SOLVER = Path(__file__).resolve().parents[1] / "solvers" / "cpsat.py"


def _strategy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cpsat_strategy_under_test", SOLVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Entry:
    """A proposal, and once simulated, a verified plan (the strategy reads only these fields)."""

    index: int
    plan: str
    verified: bool = False
    score: float = 0.0


@dataclass
class Proposals:
    """The optimizer: rows best first."""

    rows: list[int]

    def next(self) -> Entry | None:
        if not self.rows:
            return None
        row = self.rows.pop(0)
        return Entry(row, f"row{row}")

    def observe(self, entries: list[Entry]) -> int:
        return 0


@dataclass
class FakeProblem:
    layouts: dict[int, str]  # row -> layout name
    order: list[int]  # the optimizer's proposals, best first
    score: dict[int, float]  # simulated score of each row: higher wins
    top_k: int = 1
    max_simulations: int = 50
    rounds: list[list[int]] = field(default_factory=list)
    aggregated: bool = True

    @property
    def simulations(self) -> int:
        return sum(len(r) for r in self.rounds)

    @property
    def simulation_budget_spent(self) -> bool:
        return self.simulations >= self.max_simulations

    def optimizer(self) -> Proposals:
        return Proposals(list(self.order))

    def disaggregated(self) -> None:
        return None

    def heterogeneous(self) -> None:
        return None

    def space_layout(self, index: int) -> list[int]:
        return [i for i, name in self.layouts.items() if name == self.layouts[index]]

    def siblings(self, entry: Entry) -> list[Entry]:
        done = {i for r in self.rounds for i in r}
        return [Entry(i, f"row{i}") for i in self.space_layout(entry.index) if i != entry.index and i not in done]

    def verify(self, proposals: list[Entry]) -> list[Entry]:
        self.rounds.append([p.index for p in proposals])
        return [Entry(p.index, f"row{p.index}", True, self.score[p.index]) for p in proposals]

    def rank(self, entries: list[Entry]) -> list[Entry]:
        return sorted(entries, key=lambda e: -e.score)

    def gpu_limit(self, verified: list[Entry]) -> None:
        return None

    def result(self, verified: list[Entry], rejected: list[Entry], **_: object) -> list[Entry]:
        return self.rank(verified)


#: rows 0-3 are layout A, rows 4-7 layout B; the optimizer proposes A's row 0 first, then B's row 4
LAYOUTS = {0: "A", 1: "A", 2: "A", 3: "A", 4: "B", 5: "B", 6: "B", 7: "B"}


def _solve(score: dict[int, float], top_k: int = 1) -> FakeProblem:
    problem = FakeProblem(LAYOUTS, order=[0, 4, 1, 5], score=score, top_k=top_k)
    _strategy().search(problem)
    return problem


def test_the_best_proposals_variants_simulate_in_the_first_round_beside_it() -> None:
    problem = _solve({i: 1.0 for i in LAYOUTS} | {0: 2.0})
    assert problem.rounds[0] == [0, 1, 2]


def test_a_winner_that_is_the_best_proposal_ends_the_search() -> None:
    problem = _solve({i: 1.0 for i in LAYOUTS} | {0: 2.0})
    assert problem.rounds == [[0, 1, 2]]


def test_a_winner_among_the_variants_of_the_best_proposal_is_not_refined_again() -> None:
    """Its layout was refined in the first round: row 3 (another variant of A) is not simulated."""
    problem = _solve({i: 1.0 for i in LAYOUTS} | {2: 2.0})
    assert problem.rounds == [[0, 1, 2]]


def test_a_winner_of_another_layout_has_its_variants_simulated_after_the_search() -> None:
    problem = _solve({i: 1.0 for i in LAYOUTS} | {4: 3.0}, top_k=2)
    assert problem.rounds[0] == [0, 4, 1, 2]
    assert problem.rounds[-1] == [5, 6]


@pytest.mark.parametrize("budget", [5, 6])
def test_the_refinement_after_the_search_stays_within_the_simulation_budget(budget: int) -> None:
    """Four simulations in the first round leave room for budget - 4 of the winner's variants."""
    problem = FakeProblem(LAYOUTS, order=[0, 4, 1, 5], score={i: 1.0 for i in LAYOUTS} | {4: 3.0}, top_k=2,
                          max_simulations=budget)
    _strategy().search(problem)
    assert problem.rounds[-1] == [5, 6][: budget - 4]
