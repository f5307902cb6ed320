"""On a heterogeneous cluster the planner chooses what runs where: a replica shape per GPU kind, weighted by
the router, priced by the cost model at the load the router gives each replica, chosen by CP-SAT and verified
by simulation."""

from __future__ import annotations

import itertools

import pytest

from apex_opt import planner
from apex_opt.errors import InfeasibleError
from apex_opt.planner.hetero import build_hetero_space
from apex_opt.planner.solve import Problem
from apex_opt.planner.space import SearchOptions, build_space, group_cluster
from apex_opt.schema.cluster import ClusterSpec
from apex_opt.schema.plan import Deployment
from apex_opt.specs import load_specs
from apex_opt.topology import Topology

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


def test_an_infeasible_mixed_gpu_search_names_its_labelled_constraints():
    """Every GPU used at a 9 ms TPOT bound (9.9 ms with the slack): no mix of the two kinds meets it at the load
    level its router weight implies; the refusal names the labels, like the aggregated model's explanation."""
    specs = load_specs("llama-3.1-8b", "h100x8-a100x8", workload=WORKLOAD, slo="ttft=500ms,tpot=9ms")
    with pytest.raises(InfeasibleError) as err:
        planner.solve(specs, use_all_gpus=True, disaggregation="off", top_k=1, workers=1)
    text = str(err.value)
    assert "mixed-GPU plans: no combination" in text
    assert "These constraints together rule out every mixed-GPU plan:" in text
    assert "  [slo.tpot]" in text and "every used kind's TPOT <= 9.9ms" in text and "  [load]" in text
    assert "without [slo.tpot]: " in text and "without [load]: " in text


@planner.constraint("tp-2")
def tp_2(v, s):
    return v.tp == 2


def test_a_plan_constraint_holds_for_every_kind_a_mix_uses(mixed):
    result = planner.solve(mixed, constraints=[tp_2], use_all_gpus=True, disaggregation="off", top_k=2, workers=1)
    assert result.plans
    for p in result.plans:
        assert isinstance(p.plan, Deployment) and [q.tp for q in p.plan.plans] == [2] * len(p.plan.plans)


def test_a_kind_a_mix_leaves_unused_is_not_held_to_a_plan_constraint(mixed):
    """Eight tp1 replicas within 8 GPUs fit on one kind only; the kind left out (its row "nothing here": no tp, no
    dp) must not be held to the constraint, or no mix would be left."""
    @planner.constraint("eight-single-gpu-replicas")
    def eight_single_gpu_replicas(v, s):
        return [v.tp == 1, v.dp == 8, v.gpus <= 8]

    problem = Problem(mixed, constraints=[eight_single_gpu_replicas], options=SearchOptions(disaggregation="off"),
                      workers=1)
    search = problem.heterogeneous()
    assert search is not None
    proposal = search.next()
    assert proposal is not None
    assert [(q.tp, q.dp) for q in proposal.plan.plans] == [(1, 8)]


def test_a_field_the_mixed_search_does_not_price_leaves_it_out_with_a_note(mixed):
    @planner.constraint("energy-cap")
    def energy_cap(v, s):
        return v.energy_per_token <= 10**9

    problem = Problem(mixed, constraints=[energy_cap], options=SearchOptions(disaggregation="off"), workers=1)
    assert problem.heterogeneous() is None
    note = " ".join(problem.extra_notes)
    assert "mixed-GPU plans not searched: constraint 'energy-cap' reads v.energy_per_token" in note
    assert "it prices gpus" in note


def _trays_and_a_node(domain):
    """4 GB200 trays of 4 GPUs beside one 8-GPU H100 node; ``domain``: the cluster's nvlink_domain (None: unset)."""
    spec = {"name": "gb200x16-h100x8", "network": {"bandwidth_per_gpu": "400Gb/s"},
            "nodes": [{"gpu": "gb200", "count": 4, "gpus_per_node": 4, "fabric": "nvswitch"},
                      {"gpu": "h100-sxm-80gb", "count": 1, "gpus_per_node": 8, "fabric": "nvswitch"}]}
    if domain is not None:
        spec["nvlink_domain"] = domain
    return ClusterSpec.parse(spec, source="test", kind="cluster")


@pytest.mark.parametrize("domain", [None, 16])
def test_mixed_gpu_shapes_cross_trays_only_inside_an_nvlink_domain_as_in_the_aggregated_search(domain):
    cluster = _trays_and_a_node(domain)
    specs = load_specs("llama-3.1-8b", cluster, workload=WORKLOAD, slo="ttft=500ms,tpot=40ms")
    space = build_space(specs)
    trays = build_hetero_space(space).kinds[0]
    assert trays.gpu == "gb200" and trays.domain_gpus == (domain or 4)
    mixed = {s.key.tp for s in trays.shapes}
    aggregated = {c.key.tp for c in space.candidates if c.tp_nodes == 1}  # what placement.tp admits on the trays
    assert mixed == aggregated == ({1, 2, 4, 8, 16} if domain else {1, 2, 4})
    # the kind's shapes are priced on its own group with the domain kept: tp8 over two trays runs on NVLink
    link = Topology.build(group_cluster(cluster, 0), specs.gpus).group_link(range(8))
    assert link.fabric == ("nvswitch" if domain else "network")
    # --tp-across-nodes lifts the rule in both searches alike
    across = build_space(specs, SearchOptions(tp_across_nodes=True))
    assert {s.key.tp for s in build_hetero_space(across).kinds[0].shapes} >= {8, 16}
