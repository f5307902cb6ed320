"""MoE and MLA memory, and the cost of expert all-to-all and cross-node collectives through the topology,
against the measured collective profiles copied into data/profiles."""

import csv

import numpy as np
import pytest

from apex_opt.catalog import get_cluster, get_engine, get_gpu, get_model
from apex_opt.perf.collectives import collective_time, load_collective_params
from apex_opt.perf.replica import build_replica
from apex_opt.schema.plan import Plan
from apex_opt.topology import Topology
from tests.conftest import REPO

PROFILES = REPO / "data" / "profiles"


def _collective(kind: str, nbytes: float, topo: Topology, members, gpu: str) -> float:
    link = topo.group_link(members)
    return collective_time(kind, nbytes, len(members), nodes=link.nodes, intra_bw=link.intra_bandwidth,
                           inter_bw=link.inter_bandwidth, params=load_collective_params(gpu))


def test_deepseek_v3_mla_cache_is_70kb_per_token_replicated_on_every_tp_rank():
    # 61 layers x (512 latent + 64 rotary key) x 2 bytes = 70,272 bytes: the figure DeepSeek publishes (~70 KB)
    replica = build_replica(get_model("deepseek-v3"), get_gpu("h200-sxm-141gb"),
                            Plan(gpu="h200-sxm-141gb", tp=8, weight_dtype="fp8"), get_engine("vllm-0.6"))
    assert replica.memory.stages[0].kv_bytes_per_token == 61 * 576 * 2
    fp8_kv = build_replica(get_model("deepseek-v3"), get_gpu("h200-sxm-141gb"),
                           Plan(gpu="h200-sxm-141gb", tp=8, weight_dtype="fp8", kv_dtype="fp8"), get_engine("vllm-0.6"))
    assert fp8_kv.memory.stages[0].kv_bytes_per_token == 61 * 576
    assert fp8_kv.memory.kv_tokens > 1.9 * replica.memory.kv_tokens


def test_deepseek_v3_fp8_weights_fill_about_84_gb_of_each_of_8_gpus():
    replica = build_replica(get_model("deepseek-v3"), get_gpu("h200-sxm-141gb"),
                            Plan(gpu="h200-sxm-141gb", tp=8, weight_dtype="fp8"), get_engine("vllm-0.6"))
    # 671B parameters, fp8 linear layers, bf16 embedding/head/norms, split 8 ways
    assert replica.memory.weights_per_gpu == pytest.approx(671e9 / 8, rel=0.03)
    assert replica.memory.fits
    h100 = build_replica(get_model("deepseek-v3"), get_gpu("h100-sxm-80gb"),
                         Plan(gpu="h100-sxm-80gb", tp=8, weight_dtype="fp8"), get_engine("vllm-0.6"))
    assert not h100.memory.fits and h100.memory.shortfall > 0


def test_expert_parallel_ranks_hold_whole_experts_and_the_same_total():
    model, gpu, engine = get_model("mixtral-8x22b"), get_gpu("h100-sxm-80gb"), get_engine("sglang-0.4")
    tp = build_replica(model, gpu, Plan(gpu=gpu.name, tp=8), engine)
    ep = build_replica(model, gpu, Plan(gpu=gpu.name, tp=8, ep=8), engine)
    experts = [op for op in ep.layouts[0].blocks["moe"] if op.op.kind == "experts"]
    assert all(op.local_experts == 1 for op in experts)
    assert ep.memory.weights_per_gpu == pytest.approx(tp.memory.weights_per_gpu, rel=1e-6)


def test_wide_ep_dispatches_and_combines_with_all_to_all_over_the_whole_group():
    plan = Plan(gpu="h100-sxm-80gb", tp=8, dp=4, ep=32, dp_attention=True, weight_dtype="fp8")
    topo = Topology.build(get_cluster("h100x64"))
    replica = build_replica(get_model("deepseek-v3"), get_gpu("h100-sxm-80gb"), plan, get_engine("vllm-0.6"),
                            topology=topo)
    down = next(op for op in replica.layouts[0].blocks["moe"] if op.op.name == "moe.expert_down")
    assert (down.after.kind, down.after.size) == ("alltoall", 32)
    assert replica.links["ep"].nodes == 4


def test_all_to_all_inside_a_node_matches_the_measured_h100_profile():
    topo = Topology.build(get_cluster("h100x8"))
    errors = []
    with open(PROFILES / "h100-sxm-80gb" / "collectives_apex" / "alltoall.csv") as f:
        for row in csv.DictReader(f):
            kb = float(row["size(kb)"])
            if row["dtype"] != "half" or kb < 64:
                continue
            measured = float(row["time(us)"]) * 1e-6
            n = int(row["num_gpus_per_node"])
            errors.append(abs(_collective("alltoall", kb * 1024, topo, range(n), "h100-sxm-80gb") - measured) / measured)
    assert len(errors) >= 30
    assert np.median(errors) < 0.12


def test_all_reduce_across_two_nodes_matches_the_measured_a100_profile_and_costs_more_than_one_node():
    topo = Topology.build(get_cluster("a100x32"))
    errors = []
    with open(PROFILES / "a100-sxm-80gb" / "collectives_vidur_dgx" / "all_reduce.csv") as f:
        for row in csv.DictReader(f):
            nbytes = float(row["size"])
            if row["num_workers"] != "16" or nbytes < 1e6:
                continue
            measured = float(row["time_stats.all_reduce.median"]) * 1e-3
            errors.append(abs(_collective("all_reduce", nbytes, topo, range(16), "a100-sxm-80gb") - measured) / measured)
    assert len(errors) > 100
    assert np.median(errors) < 0.15
    one_node = _collective("all_reduce", 64e6, topo, range(8), "a100-sxm-80gb")
    two_nodes = _collective("all_reduce", 64e6, topo, range(16), "a100-sxm-80gb")
    assert two_nodes > 2 * one_node


def test_a_tensor_parallel_group_across_nodes_slows_decode():
    model, gpu, engine = get_model("llama-3.1-70b"), get_gpu("h100-sxm-80gb"), get_engine("vllm-0.6")
    topo = Topology.build(get_cluster("h100x16"))
    inside = build_replica(model, gpu, Plan(gpu=gpu.name, tp=8), engine, topology=topo)
    across = build_replica(model, gpu, Plan(gpu=gpu.name, tp=8), engine, topology=topo, offset=4)
    assert (inside.links["tp"].nodes, across.links["tp"].nodes) == (1, 2)
    assert across.cost.stages[0].decode_coeffs(32)[0] > inside.cost.stages[0].decode_coeffs(32)[0] + 2e-3
