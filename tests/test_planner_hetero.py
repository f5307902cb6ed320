"""On a heterogeneous cluster the planner chooses what runs where: a replica shape per GPU kind, weighted by
the router, priced by the cost model at the load the router gives each replica, chosen by CP-SAT and verified
by simulation."""

from __future__ import annotations

import itertools

import pytest

from apex_opt import planner
from apex_opt.planner.hetero import build_hetero_space
from apex_opt.planner.solve import Problem
from apex_opt.schema.plan import Deployment
from apex_opt.specs import load_specs

WORKLOAD = "synthetic:rate=20rps,requests=120,prompt=1024,output=128,seed=5"


@pytest.fixture(scope="module")
def mixed():
    """llama-3.1-8b on one H100 node and one A100 node (cluster h100x8-a100x8)."""
    return load_specs("llama-3.1-8b", "h100x8-a100x8", workload=WORKLOAD, slo="ttft=500ms,tpot=40ms")


def test_each_kind_gets_its_own_shapes_priced_at_every_load_level(mixed):
    problem = Problem(mixed, workers=1)
    hspace = build_hetero_space(problem.space)
    assert [k.gpu for k in hspace.kinds] == ["h100-sxm-80gb", "a100-sxm-80gb"]
    assert all(k.shapes for k in hspace.kinds)
    assert list(hspace.phis) == sorted(hspace.phis)
    for kind in hspace.kinds:
        for shape in kind.shapes:
            assert shape.key.tp <= kind.gpus_per_node and shape.weight > 0
            tpots = [e.tpot_s for e in shape.levels]
            assert all(b >= a * 0.999 for a, b in itertools.pairwise(tpots))  # more load, no faster decode
    # the same shape decodes faster on an H100 than on an A100: a higher router weight
    h100 = {(s.key, s.pp): s.weight for s in hspace.kinds[0].shapes}
    a100 = {(s.key, s.pp): s.weight for s in hspace.kinds[1].shapes}
    assert all(h100[k] > a100[k] for k in h100.keys() & a100.keys())


def test_using_every_gpu_takes_a_mix_of_both_kinds(mixed):
    result = planner.solve(mixed, use_all_gpus=True, disaggregation="off", top_k=1, workers=1)
    tried = [p for p in [*result.plans, *result.rejected] if isinstance(p.plan, Deployment)]
    assert tried, result.notes
    for p in tried:
        kinds = {q.gpu: q.gpus for q in p.plan.plans}
        assert kinds == {"h100-sxm-80gb": 8, "a100-sxm-80gb": 8}
        assert p.source == "cpsat:mixed-gpus"
        assert sum(p.predicted["traffic_shares"].values()) == pytest.approx(1.0, abs=1e-3)
    best = result.best
    assert best is not None and best.verified and best.plan.gpus == 16
    cmds = best.launch("llama-3.1-8b")
    assert "# on the h100-sxm-80gb nodes:" in cmds["vllm"] and "# on the a100-sxm-80gb nodes:" in cmds["vllm"]


def test_a_homogeneous_cluster_has_no_mixed_search():
    specs = load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", nodes=1, workload=WORKLOAD)
    problem = Problem(specs, workers=1)
    assert problem.heterogeneous() is None and not problem.extra_notes
