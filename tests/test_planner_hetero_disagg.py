"""On a cluster of two GPU kinds, the disaggregated search also pairs prefill on one kind with decode on the other.

Each role is priced on its own GPU, the KV transfer over the link between the two node groups, each kind's GPUs
bound both roles' replicas on it, and the pairs are verified by simulation like every other plan.
"""

from __future__ import annotations

import pytest

from apex_opt import planner
from apex_opt.errors import InfeasibleError
from apex_opt.planner import disagg
from apex_opt.planner.disagg import DisaggModel, build_disagg_space
from apex_opt.planner.objectives import objective_function
from apex_opt.planner.space import SearchOptions, build_space
from apex_opt.schema.plan import Deployment
from apex_opt.specs import load_specs

H100, A100 = "h100-sxm-80gb", "a100-sxm-80gb"
LONG_PROMPTS = "synthetic:rate=4rps,requests=40,prompt=2048,output=96,seed=4"


@pytest.fixture(scope="module")
def mixed():
    """llama-3.1-8b on one H100 node and one A100 node; a TTFT bound only H100 prefill meets on one GPU."""
    return load_specs("llama-3.1-8b", "h100x8-a100x8", workload=LONG_PROMPTS, slo="ttft=150ms,tpot=20ms")


@pytest.fixture(scope="module")
def cheapest(mixed):
    return planner.solve(mixed, objective="min-cost", disaggregation="only", top_k=1, workers=1)


def _kinds(d: Deployment) -> tuple[str, ...]:
    return tuple(p.gpu for p in d.plans)


def test_prefill_and_decode_may_run_on_different_gpu_kinds(mixed, cheapest):
    dspace = build_disagg_space(build_space(mixed))
    for role in ("prefill", "decode"):
        pairs = {(r.gpu, r.partner) for r in getattr(dspace, role)}
        assert pairs == {(H100, H100), (H100, A100), (A100, H100), (A100, A100)}
    crossed = [p for p in cheapest.plans if isinstance(p.plan, Deployment) and len(set(_kinds(p.plan))) == 2]
    assert crossed and crossed[0].verified and crossed[0].source == "cpsat:disaggregated"
    assert crossed[0].simulated["num_kv_transfers"] == crossed[0].simulated["num_completed"]


def test_each_kind_is_bounded_by_the_cluster(mixed):
    space = build_space(mixed)
    dspace = build_disagg_space(space)
    assert dspace.kinds == {H100: 8, A100: 8}
    assert any(r.est.gpus == 8 for r in dspace.prefill if r.gpu == H100)  # a role alone may fill its kind
    model = DisaggModel(space, dspace, objective_function("goodput-per-gpu"))
    whole = [(i,) for i, r in enumerate(dspace.prefill) if r.gpu == H100 and r.est.gpus == 8]
    model.model.add_allowed_assignments([model.ip], whole)  # every H100 prefills: decode can only go to the A100s
    pairs = [pair for pair in (model.next() for _ in range(8)) if pair is not None]
    assert pairs and all(d.gpu == A100 and d.est.gpus <= 8 for _, d in pairs)
    # using all 16 GPUs takes 8 of each kind: both roles on one kind would need 16 of it
    every = build_space(mixed, SearchOptions(use_all_gpus=True))
    model = DisaggModel(every, build_disagg_space(every), objective_function("goodput-per-gpu"))
    pairs = [pair for pair in (model.next() for _ in range(4)) if pair is not None]
    assert pairs and all(p.gpu != d.gpu and p.est.gpus == d.est.gpus == 8 for p, d in pairs)


def test_a_cross_kind_pair_wins_on_cost_when_only_h100s_prefill_fast_enough(mixed, cheapest):
    """A single A100 prefills a 2k prompt too slowly for the 150 ms TTFT bound; an A100 decodes within 20 ms TPOT
    at 60% of an H100's price. The cheapest pair is therefore H100 prefill + A100 decode, not two H100s."""
    space = build_space(mixed)
    dspace = build_disagg_space(space)
    one = [r for r in dspace.prefill if r.key.tp == 1 and r.dp == 1 and r.pp == 1]
    assert all(r.est.ttft_tail_s > 0.150 for r in one if r.gpu == A100)
    assert any(r.est.ttft_tail_s <= 0.150 for r in one if r.gpu == H100)
    best = cheapest.best
    assert isinstance(best.plan, Deployment) and best.verified
    assert _kinds(best.plan) == (H100, A100)
    assert [p.role for p in best.plan.plans] == ["prefill", "decode"]
    assert best.plan.gpus == 2
    # the same shapes with decode on an H100 instead: also within the SLO, but dearer
    p = next(r for r in one if r.gpu == H100 and r.partner == H100 and r.est.ttft_tail_s <= 0.150)
    d = next(r for r in dspace.decode if r.gpu == H100 and r.partner == H100 and r.est.gpus == 1
             and r.est.tpot_s <= 0.020)
    assert disagg.predicted(space, p, d)["cost_per_mtok_usd"] > best.predicted["cost_per_mtok_usd"]


def _explained(mixed, prefill, decode):
    """An explaining model of the mixed pair search restricted to the prefill and decode rows the predicates pick."""
    space = build_space(mixed)
    dspace = build_disagg_space(space)
    model = DisaggModel(space, dspace, objective_function("goodput-per-gpu"), explain=True)
    model.model.add_allowed_assignments([model.ip], [(i,) for i, r in enumerate(dspace.prefill) if prefill(r)])
    model.model.add_allowed_assignments([model.id], [(i,) for i, r in enumerate(dspace.decode) if decode(r)])
    return model


def test_a_pair_whose_kinds_and_partners_disagree_is_explained_by_the_pairing_label(mixed):
    # every prefill row fills all 8 H100s (priced towards A100 decode), every decode row is on the H100s
    model = _explained(mixed, lambda r: r.gpu == H100 and r.est.gpus == 8, lambda r: r.gpu == H100)
    text, labels = model.explain()
    assert labels == ("pairing",)
    assert "[pairing]" in text and "This constraint alone rules out every pair" in text
    assert "without [pairing]: still no pair" in text  # the H100s cannot hold both roles either


def test_both_roles_over_one_kinds_gpus_are_explained_by_that_kinds_label_and_what_fits_without_it(mixed):
    # 4 H100s prefill and at least 5 H100s decode, each priced beside the other on the H100 node: 9 of 8 GPUs
    model = _explained(mixed, lambda r: r.gpu == r.partner == H100 and r.est.gpus == 4,
                       lambda r: r.gpu == r.partner == H100 and r.est.gpus >= 5)
    text, labels = model.explain()
    assert labels == (f"gpus.{H100}",)
    assert f"[gpus.{H100}]" in text and f"prefill + decode GPUs on {H100} within its 8" in text
    fit = next(line for line in text.splitlines() if line.startswith(f"  without [gpus.{H100}]: "))
    assert "prefill dp1 tp4" in fit and "9 GPUs (on h100-sxm-80gb)" in fit  # the pair it would choose, 9 H100s


def test_an_infeasible_mixed_disaggregated_search_names_its_labels_like_the_aggregated_model():
    """Only H100s prefill within 66 ms and decode within 8 ms (the SLO with the 1.1 slack), but every GPU must be
    used: the refusal names the cross-kind constraint and says which pair fits when the TTFT bound is relaxed."""
    specs = load_specs("llama-3.1-8b", "h100x8-a100x8", workload=LONG_PROMPTS, slo="ttft=60ms,tpot=7.3ms")
    with pytest.raises(InfeasibleError) as err:
        planner.solve(specs, disaggregation="only", use_all_gpus=True, top_k=1, workers=1)
    assert err.value.conflict[0] == "disaggregation" and "pairing" in err.value.conflict
    text = str(err.value)
    assert "These constraints together rule out every pair:" in text
    for label in err.value.conflict[1:]:
        assert f"  [{label}]" in text and f"without [{label}]: " in text
    assert f"without [slo.ttft]: 1P1D prefill dp1 tp8 pp1 [{A100}] + decode dp1 tp8 pp1 [{H100}]: 16 GPUs" in text
