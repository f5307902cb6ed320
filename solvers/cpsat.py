"""The default strategy: CP-SAT proposes plans best first, the simulator verifies them.

Each round asks the solver for as many new plans as verified ones are still missing (``top_k - verified``; never
a number that depends on the worker count, so results are the same with 1 or 2 workers), simulates them in
parallel, keeps those that meet the SLO and every simulated-result constraint, and cuts the rest (and, for a plan
that missed its SLO, the plans of its shape with fewer replicas: ``Optimizer.observe``). It stops with
``top_k`` verified plans, when the space is exhausted, or at the simulation budget.

With ``disaggregation`` ``auto`` (or ``only``) it then asks ``problem.disaggregated()`` for the best prefill/decode
(xPyD) deployments the same way, and on a heterogeneous cluster ``problem.heterogeneous()`` for the best mixed-GPU
ones, and ranks them all with the aggregated plans on the simulated metrics: the verified winner may be any. Those
searches first drop what the plans verified so far put out of reach (``problem.gpu_limit``: with ``goodput-per-gpu``
or ``min-gpus``, a deployment with more GPUs cannot place among the ``top_k`` whatever its simulation says), so
they simulate only deployments that could change the result.

It also refines the winner's layout, once: up to ``REFINE`` plans of that layout with other engine limits that the
cost model predicts within 1% of the winner on every objective level (``problem.siblings``) are simulated, and the
best variant is kept; only the simulator can rank such plans. The first round already includes those of the
solver's best proposal, so that they simulate in parallel with it; when the winner is of that layout (the best
proposal or one of its variants), its layout has been refined and nothing more is simulated.

Written against the public API only: ``problem`` is an ``apex_opt.Problem``.
"""

from __future__ import annotations

import apex_opt as ax

REFINE = 2


def search(problem: ax.Problem) -> ax.PlanSet:
    verified: list = []
    rejected: list = []
    exhausted = False
    refined: set[int] = set()  # the candidate rows of the layout already refined
    infeasible = None  # no single plan at all: the disaggregated or mixed searches may still find some
    if problem.aggregated:
        def refine(first):  # the best proposal's variants simulate in parallel with it
            if first.index is not None:
                refined.update(problem.space_layout(first.index))
            return problem.siblings(first)[:REFINE]

        try:
            exhausted = _verify_best(problem, problem.optimizer(), verified, rejected, refine)
        except ax.InfeasibleError as exc:  # raised with the conflicting labels when no single plan exists
            infeasible, exhausted = exc, True
    for extra in (problem.disaggregated(), problem.heterogeneous()):
        if extra is not None:
            _verify_best(problem, extra, verified, rejected, limit_gpus=extra.limit_gpus)
    if infeasible is not None and not verified and not rejected:
        raise infeasible
    if verified and not problem.simulation_budget_spent:
        winner = problem.rank(verified)[0]
        if winner.index is not None and winner.index not in refined:
            variants = problem.siblings(winner)[: min(REFINE, problem.max_simulations - problem.simulations)]
            for entry in problem.verify(variants):
                (verified if entry.verified else rejected).append(entry)
    return problem.result(verified, rejected, solver="cpsat", exhausted=exhausted)


def _verify_best(problem: ax.Problem, proposer: ax.planner.Proposer, verified: list, rejected: list,
                 refine=None, limit_gpus=None) -> bool:
    """Simulate a search's best proposals, in rounds, until ``top_k`` of them verify; returns whether the search
    ran out of proposals. ``refine(first)`` adds plans to the first round; ``limit_gpus(most, why)``, before each
    round, keeps the search from proposing more GPUs than could place among the ``top_k`` verified so far."""
    found = 0
    while found < problem.top_k and not problem.simulation_budget_spent:
        if limit_gpus is not None and (limit := problem.gpu_limit(verified)) is not None:
            limit_gpus(*limit)
        batch = []
        done = False
        while len(batch) < problem.top_k - found:
            proposal = proposer.next()
            if proposal is None:
                done = True
                break
            batch.append(proposal)
        if not batch:
            return True
        if refine is not None:
            batch += refine(batch[0])
            refine = None
        entries = problem.verify(batch)
        for entry in entries:
            (verified if entry.verified else rejected).append(entry)
            found += entry.verified
        proposer.observe(entries)  # a shape that missed its SLO: its plans with fewer replicas are cut too
        if done:
            return True
    return False
