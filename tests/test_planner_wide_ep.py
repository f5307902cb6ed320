"""The planner searches the wide-EP layout (attention data parallel, experts over every GPU of the group) for
MoE models on the engines that run it, and launches it with their flags."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from apex_opt import planner
from apex_opt.catalog import get_engine, get_gpu, get_model
from apex_opt.cli.main import cli
from apex_opt.perf.collectives import load_collective_params
from apex_opt.perf.replica import build_replica
from apex_opt.planner import constraint
from apex_opt.planner.space import build_space
from apex_opt.schema.plan import Plan
from apex_opt.sim.cost import BatchShape
from apex_opt.specs import load_specs
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # profile_fit.py lives with the benchmarks, not in the wheel
from profile_fit import BandwidthContext, predict_collectives, read_collective_profiles, relative_errors

WORKLOAD = "synthetic:rate=8rps,requests=120,prompt=1024,output=256,seed=0"


def _specs(engine: str):
    return load_specs("qwen3-235b-a22b", "h100x16", engine=engine, workload=WORKLOAD, slo="ttft=2s,tpot=100ms")


def test_wide_ep_candidates_exist_for_sglang_and_vllm_v1_only():
    for engine, expected in (("sglang-0.4", True), ("vllm-v1", True), ("vllm-0.6", False)):
        space = build_space(_specs(engine))
        wide = [c for c in space.candidates if c.key.wide_dp > 1]
        assert bool(wide) == expected, engine
        for c in wide:
            plan = c.plan()
            assert plan.dp_attention and c.pp == 1 and c.dp == c.key.wide_dp
            assert plan.ep * plan.expert_tp == plan.tp * plan.dp  # the experts span the whole group


def test_a_rule_on_dp_attention_gets_a_verified_wide_ep_plan_and_its_launch_flags():
    @planner.constraint("wide-ep")
    def wide(v, s):
        return v.dp_attention == 1

    result = planner.solve(_specs("sglang-0.4"), constraints=[wide], quantization="fp8", top_k=1, workers=1)
    best = result.best
    assert best.verified and best.plan.dp_attention and best.plan.dp > 1
    cmds = result.launch_commands()
    assert "--enable-dp-attention" in cmds["sglang"]
    assert f"--tp {best.plan.tp * best.plan.dp} --dp {best.plan.dp}" in cmds["sglang"]
    assert f"--data-parallel-size {best.plan.dp}" in cmds["vllm"] and "--enable-expert-parallel" in cmds["vllm"]


# --------------------------------------------------------------------------------------------------------------
# DeepSeek-V3 on two nodes of 8 x H200: attention data parallel, with and without wide expert parallelism (issue 11)

H200 = "h200-sxm-141gb"
DSV3_PLAN = ["--model", "deepseek-v3", "--gpu", H200, "--tp", "8", "--dp", "2", "--dp-attention",
             "--weight-dtype", "fp8", "--engine", "sglang-0.4"]


def _decode(batch: int, context: int = 2048) -> BatchShape:
    return BatchShape(num_tokens=batch, num_seqs=batch, num_decodes=batch, decode_ctx_sum=batch * context,
                      prefill_pairs=0.0, has_prefill=False, max_ctx=context)


def test_dp_attention_without_ep_simulates_and_estimates():
    runner = CliRunner()
    sim = runner.invoke(cli, ["simulate", *DSV3_PLAN, "--nodes", "2", "--format", "json",
                              "--workload", "synthetic:rate=4rps,requests=6,prompt=512,output=16,seed=0"])
    assert sim.exit_code == 0, sim.output
    summary = json.loads(sim.output)
    assert summary["plan"]["dp_attention"] and summary["plan"]["ep"] == 1
    assert summary["num_completed"] == 6 and summary["tpot_mean_s"] > 0
    est = runner.invoke(cli, ["estimate", *DSV3_PLAN, "--batch", "4", "--context", "512", "--format", "json"])
    assert est.exit_code == 0, est.output
    ops = {op["name"]: op for op in json.loads(est.output)["decode"]["ops"]}
    # every expert split 16 ways: gather both groups' 4 tokens, then reduce the partial sums (two all-reduces)
    gather = ops["moe.expert_down.all_reduce"]
    assert gather["bytes"] == 58 * 4 * 7168 * 2 * 2 * 2  # layers x tokens x hidden x bf16 x dp x calls
    assert gather["time_s"] > 0 and "moe.expert_down.alltoall" not in ops


def test_wide_ep_sends_each_rank_its_tp_share_of_top_k_copies_twice():
    model = get_model("deepseek-v3")
    for tp, dp in ((8, 2), (4, 4)):
        plan = Plan(gpu=H200, engine="sglang-0.4", tp=tp, dp=dp, ep=16, dp_attention=True, weight_dtype="fp8")
        replica = build_replica(model, get_gpu(H200), plan, get_engine("sglang-0.4"))
        down = next(op for op in replica.layouts[0].blocks["moe"] if op.op.name == "moe.expert_down")
        assert (down.after.kind, down.after.size, down.after.calls) == ("alltoall", 16, 2)
        assert down.after.bytes_per_token == 7168 * 2 * 8 / tp  # hidden x bf16 x top_k, split over the tp ranks
        assert down.local_experts == 256 // 16
        # MLA: every rank of an attention group holds its group's whole latent cache (61 x 576 bf16 per token)
        assert replica.memory.stages[0].kv_bytes_per_token == 61 * 576 * 2
    narrow = build_replica(model, get_gpu(H200), Plan(gpu=H200, engine="sglang-0.4", tp=8, weight_dtype="fp8"),
                           get_engine("sglang-0.4"))
    assert replica.memory.weights_per_gpu < 0.6 * narrow.memory.weights_per_gpu  # 16 whole experts, not 1/8 of 256
    assert replica.memory.kv_tokens > 2 * narrow.memory.kv_tokens


def test_wide_ep_all_to_all_matches_a_hand_calculation_from_the_collective_model():
    """16 decodes per attention group, tp8 x dp2 over 2 nodes (rail-optimised 400 Gb/s NICs, NVLink inside).

    Each rank sends S = 16 / 8 tokens x 8 copies x 7168 x 2 B = 229,376 B per call. Collective model, alltoall
    over n = 16 GPUs on N = 2 nodes (g = 8 per node):  t = alpha_net(15 steps) + max(t_intra, t_inter),
    t_intra = (g-1)/n S / B_nvlink,  t_inter = (n-g)/n S / (g^(rail-1) B_net), each B times its fitted efficiency
    and ramp at the per-peer chunk S / n = 14,336 B. Dispatch + combine = 2 calls per MoE layer, 58 MoE layers.
    """
    gpu = get_gpu(H200)
    plan = Plan(gpu=H200, engine="sglang-0.4", tp=8, dp=2, ep=16, dp_attention=True, weight_dtype="fp8")
    replica = build_replica(get_model("deepseek-v3"), gpu, plan, get_engine("sglang-0.4"))
    link = replica.links["ep"]
    assert (link.size, link.nodes, link.intra_bandwidth, link.inter_bandwidth) == (16, 2, 450e9, 50e9)

    params = load_collective_params(H200)
    net, nvlink = params.fabric("network"), params.fabric("nvlink")
    s, n, g = 16 / 8 * 8 * 7168 * 2, 16, 8
    b_net = 50e9 * net.efficiency("alltoall", 2, s / n)
    b_nvl = 450e9 * nvlink.efficiency("alltoall", g, s / n)
    t_intra = (g - 1) / n * s / b_nvl
    t_inter = (n - g) / n * s / (b_net * g**net.rail_exp / g)
    alpha = net.latency_s + net.latency_step_s * (n - 1)
    per_call = alpha + max(t_intra, t_inter)
    assert t_inter > t_intra  # the inter-node half of the traffic sets the pace
    assert per_call == pytest.approx(34.0e-6, rel=0.02)  # 19.5 us floor + 14.5 us on the NICs

    ops = {op.name: op for op in replica.cost.stages[0].operator_times(_decode(16))}
    a2a = ops["moe.expert_down.alltoall"]
    assert a2a.repeat == 58
    assert a2a.time_s == pytest.approx(58 * 2 * per_call, rel=1e-9)
    assert a2a.bytes == 58 * 16 * 2 * 7168 * 2 * 8 / 8


def test_one_node_all_to_all_matches_the_measured_h200_profile():
    """APEX H200 all-to-all rows (data/profiles, 1 node x 2/4/8 GPUs, nccl-tests buffer convention)."""
    rows = read_collective_profiles(H200)
    rows = rows.select((rows.dataset == "apex") & (rows.kind == "alltoall"))
    assert len(rows) >= 50
    pred = predict_collectives(rows, load_collective_params(H200), BandwidthContext(lambda n: 450e9,
                                                                                   lambda n: "nvlink", None))
    err = relative_errors(pred, rows.seconds)
    assert np.median(err) < 0.15 and np.max(err) < 0.3


@constraint("no-attention-dp")
def no_attention_dp(v, s):  # type: ignore[no-untyped-def]
    """Plans without attention data parallel (the narrow ones)."""
    return v.dp_attention == 0


def test_solve_proposes_wide_ep_for_deepseek_v3_on_sglang_when_it_wins():
    """At 8 req/s of 1024 -> 256 tokens on 2 x 8 H200 (fp8 weights), attention data parallel over 4 groups of
    tp2 with 8-way EP serves 0.39 req/s per GPU in simulation, ahead of the best plan the planner verifies without
    it (dp2 tp4 pp2, 0.22: a narrow plan on 8 GPUs misses the 60 ms TPOT once the load is steady)."""
    specs = load_specs("deepseek-v3", gpu=H200, nodes=2, gpus_per_node=8, engine="sglang-0.4",
                       workload="synthetic:rate=8rps,requests=60,prompt=1024,output=256,seed=0", slo="ttft=2s,tpot=60ms")
    result = planner.solve(specs, quantization="fp8", top_k=3, workers=1, disaggregation="off")
    best = result.plans[0]
    assert best.verified and best.plan.dp_attention and best.plan.dp > 1
    assert best.plan.ep == best.plan.tp * best.plan.dp and best.plan.pp == 1
    narrow = planner.solve(specs, quantization="fp8", top_k=1, workers=1, disaggregation="off",
                           constraints=[no_attention_dp]).plans[0]
    assert narrow.verified and not narrow.plan.dp_attention

    def per_gpu(p):
        return p.simulated["goodput_req_s"] / p.plan.gpus

    assert per_gpu(best) > per_gpu(narrow)
