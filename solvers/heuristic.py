"""What a practitioner does by hand, verified by the same simulator (the baseline the planner is measured against).

Three rules, each with the engine's default limits and bf16 weights:

* ``max-tp-in-node``: the largest tensor parallelism inside one node, then data parallelism over the rest of the
  cluster (pipeline stages only if a node cannot hold the model);
* ``fewest-gpus``: the fewest GPUs that hold the model and the workload's longest request (TP first, inside a
  node, then pipeline stages), one replica;
* ``tp-all-gpus``: tensor parallelism over every GPU of the cluster.

All three are simulated and ranked by the objective; ``plan.source`` names the rule. Plans that miss the SLO are
reported in ``rejected``.

Written against the public API only: ``problem`` is an ``apex_opt.Problem``.
"""

from __future__ import annotations

import apex_opt as ax

RULES = ("max-tp-in-node", "fewest-gpus", "tp-all-gpus")


def _powers_of_two(limit: int) -> list[int]:
    out, x = [], 1
    while x <= limit:
        out.append(x)
        x *= 2
    return out


def _divides(specs: ax.Specs, tp: int) -> bool:
    m = specs.model
    if m.num_heads % tp or m.intermediate_size % tp:
        return False
    return m.mla is not None or tp <= m.num_kv_heads or tp % m.num_kv_heads == 0


def _first_fitting(problem: ax.Problem, shapes: list[tuple[int, int]], dp_of, rule: str):
    for tp, pp in shapes:
        if tp * pp > problem.space.total_gpus or pp > problem.specs.model.num_layers or not _divides(problem.specs, tp):
            continue
        proposal = problem.proposal(tp=tp, pp=pp, dp=dp_of(tp, pp), source=rule)
        if problem.fits(proposal):
            return proposal
    return None


def proposals(problem: ax.Problem) -> dict[str, object]:
    """The plan each rule picks (None when the rule finds no plan that fits)."""
    n = problem.space.total_gpus
    node = min(problem.space.gpus_per_node, n)
    tps_in_node = [t for t in _powers_of_two(node) if _divides(problem.specs, t)]
    top_tp = tps_in_node[-1] if tps_in_node else 1
    pps = _powers_of_two(n)
    out = {}
    out["max-tp-in-node"] = _first_fitting(problem, [(top_tp, pp) for pp in pps], lambda tp, pp: n // (tp * pp),
                                           "max-tp-in-node")
    fewest = sorted(((tp, pp) for tp in tps_in_node for pp in pps), key=lambda s: (s[0] * s[1], s[1]))
    out["fewest-gpus"] = _first_fitting(problem, fewest, lambda tp, pp: 1, "fewest-gpus")
    tp_all = max((t for t in _powers_of_two(n) if _divides(problem.specs, t)), default=1)
    out["tp-all-gpus"] = _first_fitting(problem, [(tp_all, 1)], lambda tp, pp: 1, "tp-all-gpus")
    return out


def search(problem: ax.Problem) -> ax.PlanSet:
    picked = proposals(problem)
    unique = {}
    for rule in RULES:
        p = picked[rule]
        if p is not None and p.plan not in unique:
            unique[p.plan] = p
    if not unique:
        raise ax.InfeasibleError(f"no heuristic plan for {problem.specs.model.name} fits "
                                 f"{problem.space.total_gpus} x {problem.space.gpu_name}", ("memory",))
    results = problem.verify(list(unique.values()))
    verified = [r for r in results if r.verified]
    rejected = [r for r in results if not r.verified]
    return problem.result(verified, rejected, solver="heuristic", exhausted=True, keep=len(RULES))
