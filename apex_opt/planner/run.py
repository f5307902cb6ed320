"""The state of one run of a search over a problem (:class:`SearchRun`): its clock, notes and simulator pool.

A :class:`~apex_opt.planner.solve.Problem` is a frozen :class:`~apex_opt.planner.statement.ProblemStatement` and
one of these (``problem.run``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .verify import Verifier


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


__all__ = ["SearchRun"]
