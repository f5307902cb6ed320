"""The oracle: simulate every feasible plan and keep the best (how APEX searches).

"Feasible" means the hard constraints only (GPU count, divisibility, placement, memory and the user's plan
constraints): the analytical SLO bounds are not trusted, every plan that fits is simulated.

Written against the public API only: ``problem`` is an ``apex_opt.Problem``.
"""

from __future__ import annotations

import apex_opt as ax


def search(problem: ax.Problem) -> ax.PlanSet:
    proposals = problem.feasible()
    if not proposals:
        raise problem.infeasible(hard_only=True)
    results = problem.verify(proposals)
    verified = [r for r in results if r.verified]
    rejected = [r for r in results if not r.verified]
    return problem.result(verified, rejected, solver="exhaustive", exhausted=True)
