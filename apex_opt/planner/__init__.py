"""The planner: plan space, CP-SAT model with labelled constraints, objectives, verification by simulation.

The public names (re-exported by :mod:`apex_opt`): :func:`solve`, :func:`constraint`, :class:`PlanVars`,
:class:`PlanSet`, :class:`RankedPlan` (its cost-model :class:`Prediction`), :func:`Minimize`, :func:`Maximize`, :class:`Problem` (what search
strategies in ``solvers/`` receive: a frozen :class:`ProblemStatement` and the state of one run; its searches are
:class:`Proposer` objects), :func:`load_constraints`,
:class:`SearchOptions`.
"""

from __future__ import annotations

from .constraints import Constraint, constraint, load_constraints
from .model import PlanVars
from .objectives import OBJECTIVE_NAMES, Maximize, Minimize, Objective
from .prediction import Prediction
from .result import PlanSet, RankedPlan, SolveStats
from .solve import Problem, Proposal, Proposer, register_solver, solve, solver_names
from .space import SearchOptions
from .statement import ProblemStatement

__all__ = [
    "OBJECTIVE_NAMES",
    "Constraint",
    "Maximize",
    "Minimize",
    "Objective",
    "PlanSet",
    "PlanVars",
    "Prediction",
    "Problem",
    "ProblemStatement",
    "Proposal",
    "Proposer",
    "RankedPlan",
    "SearchOptions",
    "SolveStats",
    "constraint",
    "load_constraints",
    "register_solver",
    "solve",
    "solver_names",
]
