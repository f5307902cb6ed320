"""Disaggregated prefill/decode: invariants over random workloads, a hand-checked event log, the topology's
transfer cost, the front door and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apex_opt.errors import SpecError
from apex_opt.sim import (
    FAMILIES,
    ROUTERS,
    LinearKVTransfer,
    LinearStageCost,
    ReplicaSpec,
    SchedulerConfig,
    StaticReplicaCost,
    run_simulation,
)
from apex_opt.sim.disagg import DisaggSimulation
from apex_opt.workload import Workload

# "ugly" scales keep event times from coinciding exactly (see test_sim_properties)
GAP = 0.0731953
STEP = 0.0123457
XFER = 0.0171717


def _config(draw, pp: int) -> SchedulerConfig:
    family = draw(st.sampled_from(FAMILIES))
    budget = draw(st.integers(4, 64))
    seqs = draw(st.integers(1, min(8, budget)))
    common = {"max_model_len": draw(st.integers(8, 140)), "async_output": draw(st.booleans()),
              "metrics_stamp": draw(st.sampled_from(["forward", "next-iteration"])),
              "length_policy": draw(st.sampled_from(["truncate", "truncate", "reject"]))}
    if family == "sglang":
        return SchedulerConfig.sglang(
            num_kv_tokens=draw(st.integers(12, 400)) * pp, chunked_prefill_size=draw(st.sampled_from([-1, budget])),
            max_prefill_tokens=draw(st.integers(4, 80)),
            max_running_requests=draw(st.one_of(st.none(), st.integers(1, 8))), **common)
    return SchedulerConfig(
        family=family, num_kv_blocks=draw(st.integers(3, 80)) * pp, block_size=draw(st.sampled_from([1, 2, 4, 16])),
        chunked_prefill=draw(st.booleans()), max_num_batched_tokens=budget, max_num_seqs=seqs,
        watermark=draw(st.sampled_from([0.0, 0.01, 0.1])), **common)


def _replica(draw, role: str) -> ReplicaSpec:
    pp = draw(st.integers(1, 2))
    stages = tuple(LinearStageCost(a=STEP * draw(st.integers(1, 30)), b=draw(st.sampled_from([0.0, 1.37e-4])),
                                   c=draw(st.sampled_from([0.0, 2.9e-6])), d=draw(st.sampled_from([0.0, 3.1e-7])),
                                   host_s=draw(st.sampled_from([0.0, 0.00137])))
                   for _ in range(pp))
    return ReplicaSpec(StaticReplicaCost(stages, send_latency_s=draw(st.sampled_from([0.0, 0.0021]))),
                       _config(draw, pp), role=role)


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 14))
    w = Workload("prop", np.cumsum(np.array(draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))) * GAP),
                 np.array(draw(st.lists(st.integers(1, 70), min_size=n, max_size=n))),
                 np.array(draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))),
                 tuple(f"r{i}" for i in range(n)), "hypothesis")
    reps = [_replica(draw, "prefill") for _ in range(draw(st.integers(1, 2)))]
    reps += [_replica(draw, "decode") for _ in range(draw(st.integers(1, 2)))]
    if draw(st.booleans()):
        reps.reverse()  # roles need not come in order
    links = {}
    for p in (i for i, r in enumerate(reps) if r.role == "prefill"):
        for d in (i for i, r in enumerate(reps) if r.role == "decode"):
            links[(p, d)] = LinearKVTransfer(latency_s=XFER * draw(st.integers(0, 20)),
                                             s_per_token=draw(st.sampled_from([0.0, 3.7e-4])), bytes_per_token=1e3)
    return w, reps, links, draw(st.sampled_from(ROUTERS)), draw(st.sampled_from(ROUTERS))


def run(scenario, skip=True, seed=0):
    w, reps, links, router, drouter = scenario
    sim = DisaggSimulation(reps, w, kv_transfer=links, router=router, decode_router=drouter, seed=seed,
                           skip_ahead=skip, debug=True, record_log=True)
    return sim, sim.run()


def events(res) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for rid, kind, t, _ in res.log:
        out.setdefault(rid, {}).setdefault(kind, []).append(t)
    return out


SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


@SETTINGS
@given(scenarios())
def test_disaggregated_invariants(scenario):
    w, reps, *_ = scenario
    sim, res = run(scenario)
    rec = res.records
    done = rec.completed
    # no request is lost; tokens are conserved
    assert np.all(done ^ rec.rejected)
    gen, req = rec.generated, rec.requested_tokens
    assert np.all(np.where(rec.truncated, gen < req, gen == req)[done])
    assert np.all(gen[rec.rejected] == 0)
    # KV: everything freed, never over capacity (debug checked blocks after every iteration), nothing in transfer
    for e in sim.engines:
        assert e.kv.free == e.kv.capacity and e.held == 0
        assert not e.running and not e.waiting and not len(e.pool)
        assert sim.max_kv_seen[e.eid] <= e.kv.capacity
    # every completed request with more than one token was transferred exactly once, the others never
    ev = events(res)
    moved = done & (gen > 1)
    for i, rid in enumerate(rec.request_ids):
        e = ev[rid]
        count = 1 if moved[i] else 0
        for kind in ("transfer_start", "transfer_end", "decode_admit"):
            assert len(e.get(kind, [])) == count, (rid, kind, e)
        if moved[i]:
            assert reps[rec.prefill_replica[i]].role == "prefill" and reps[rec.decode_replica[i]].role == "decode"
            t0, t1 = rec.kv_transfer_start_s[i], rec.kv_transfer_end_s[i]
            assert e["transfer_start"] == [t0] and e["transfer_end"] == [t1]
            # transfer after the prefill's first token, decode after the transfer
            assert rec.first_token_s[i] <= t0 <= t1 <= e["decode_admit"][0] < rec.finish_s[i]
        else:
            assert rec.decode_replica[i] == -1 and math.isnan(rec.kv_transfer_start_s[i])
    assert res["num_kv_transfers"] == int(moved.sum())
    assert res["kv_transfer_bytes"] == pytest.approx(1e3 * float(rec.prompt_tokens[moved].sum()))
    # latency bookkeeping: ITL samples add up to the token spans minus preemption stalls
    vals = np.frombuffer(sim.itl_vals) if len(sim.itl_vals) else np.zeros(0)
    wts = np.frombuffer(sim.itl_wts) if len(sim.itl_wts) else np.zeros(0)
    segs = np.frombuffer(sim.itl_segs).reshape(-1, 5) if len(sim.itl_segs) else np.zeros((0, 5))
    seg_sum = sum(w_ * sum(al + be * j for j in range(int(j0), int(j1) + 1)) for al, be, j0, j1, w_ in segs)
    span = ((rec.finish_s - rec.first_token_s) - rec.stall_s)[done].sum()
    assert math.isclose(float((vals * wts).sum()) + seg_sum, span, rel_tol=1e-9, abs_tol=1e-9)
    s = res.summary()
    assert s["num_completed"] + s["num_rejected"] == len(w.arrival_s)
    assert s["output_tokens"] == int(gen.sum())


def _same(r1, r2) -> None:
    a, b = r1.records, r2.records
    for name in ("replica", "decode_replica", "generated", "rejected", "truncated", "preemptions"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    for name in ("first_token_s", "finish_s", "stall_s", "kv_transfer_start_s", "kv_transfer_end_s"):
        assert np.allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-9, equal_nan=True), name
    assert [e[:2] for e in r1.log] == [e[:2] for e in r2.log]


@settings(max_examples=100, deadline=None, derandomize=True)
@given(scenarios(), st.integers(0, 3))
def test_same_seed_same_result_and_skip_ahead_exact(scenario, seed):
    _, r1 = run(scenario, seed=seed)
    _, r2 = run(scenario, seed=seed)
    assert r1.log == r2.log and r1.summary().keys() == r2.summary().keys()
    _same(r1, r2)
    _, off = run(scenario, skip=False, seed=seed)
    _same(r1, off)


# ------------------------------------------------------------------------------------------------ by hand
UNIT = LinearStageCost(a=1.0, b=0.0, c=0.0, d=0.0, e=0.0)


def test_event_log_by_hand():
    """Every iteration takes 1 s, every transfer 0.5 s (vLLM V1 rules, forward stamps).

    r0 (prompt 10, 3 tokens) is prefilled in [0, 1): first token at 1, hand-off; the idle decode engine allocates
    at once, the transfer runs [1, 1.5), r0 joins the decode batch at 1.5 and decodes tokens 2 and 3 in [1.5, 2.5)
    and [2.5, 3.5). r1 (prompt 4, 2 tokens) arrives at 0.5, is prefilled in [1, 2) and handed off at 2, while the
    decode engine is busy: it allocates at its next boundary (2.5), the transfer runs [2.5, 3), r1 joins at the
    boundary 3.5 and finishes at 4.5."""
    w = Workload("t", np.array([0.0, 0.5]), np.array([10, 4]), np.array([3, 2]), ("r0", "r1"), "t")
    cfg = SchedulerConfig.vllm_v1(num_kv_blocks=64, max_model_len=1000, block_size=4, max_num_batched_tokens=16,
                                  max_num_seqs=4)
    reps = [ReplicaSpec(StaticReplicaCost((UNIT,)), cfg, role="prefill"),
            ReplicaSpec(StaticReplicaCost((UNIT,)), cfg, role="decode")]
    for skip in (False, True):
        res = run_simulation(reps, w, kv_transfer=LinearKVTransfer(latency_s=0.5, bytes_per_token=100.0),
                             record_log=True, skip_ahead=skip)
        assert res.log == (
            ("r0", "arrive", 0.0, 0),
            ("r0", "prefill", 0.0, 10),
            ("r1", "arrive", 0.5, 0),
            ("r0", "first_token", 1.0, None),
            ("r1", "prefill", 1.0, 4),
            ("r0", "transfer_start", 1.0, 1),
            ("r0", "transfer_end", 1.5, 1),
            ("r0", "decode_admit", 1.5, 1),
            ("r1", "first_token", 2.0, None),
            ("r1", "transfer_start", 2.5, 1),
            ("r1", "transfer_end", 3.0, 1),
            ("r0", "finish", 3.5, 3),
            ("r1", "decode_admit", 3.5, 1),
            ("r1", "finish", 4.5, 2),
        )
        rec = res.records
        assert rec.ttft_s.tolist() == [1.0, 1.5]
        assert rec.tpot_s.tolist() == [1.25, 2.5]  # the transfer and the decode-side wait are in TPOT
        assert rec.kv_transfer_start_s.tolist() == [1.0, 2.5] and rec.kv_transfer_end_s.tolist() == [1.5, 3.0]
        assert rec.prefill_replica.tolist() == [0, 0] and rec.decode_replica.tolist() == [1, 1]
        s = res.summary()
        assert s["kv_transfer_mean_s"] == 0.5 and s["kv_transfer_bytes"] == 1400.0
        assert s["kv_transfer_wait_mean_s"] == 0.25  # r1 waited 0.5 s for the decode engine's boundary
        assert [r["role"] for r in res.per_replica] == ["prefill", "decode"]
        assert [r["output_tokens"] for r in res.per_replica] == [2, 3]


def test_link_contention_and_decode_memory_backpressure():
    """Two prefill instances send to one decode instance: transfers queue on the decode instance's channel. A
    decode KV cache that holds one request at a time makes the second transfer wait for the first to finish,
    while its prefill instance keeps the blocks."""
    w = Workload("t", np.array([0.0, 0.0]), np.array([8, 8]), np.array([4, 4]), ("a", "b"), "t")
    pcfg = SchedulerConfig.vllm_v1(num_kv_blocks=64, max_model_len=1000, block_size=4, max_num_batched_tokens=16,
                                   max_num_seqs=4)
    cost = StaticReplicaCost((UNIT,))
    reps = [ReplicaSpec(cost, pcfg, role="prefill"), ReplicaSpec(cost, pcfg, role="prefill"),
            ReplicaSpec(cost, pcfg, role="decode")]
    res = run_simulation(reps, w, kv_transfer=LinearKVTransfer(latency_s=2.0), record_log=True)
    rec = res.records
    assert rec.replica.tolist() == [0, 1]
    assert rec.kv_transfer_start_s.tolist() == [1.0, 3.0]  # b waits for a on the decode instance's links
    # decode KV of 3 blocks of 4 tokens: a (8 prompt + 4 out = 3 blocks) blocks b's allocation until it finishes
    small = pcfg.with_(num_kv_blocks=3)
    reps = [ReplicaSpec(cost, pcfg, role="prefill"), ReplicaSpec(cost, small, role="decode")]
    res = run_simulation(reps, w, kv_transfer=LinearKVTransfer(latency_s=0.5), record_log=True)
    rec = res.records
    assert rec.finish_s[0] <= rec.kv_transfer_start_s[1]
    assert res["num_completed"] == 2 and res["num_preemptions"] == 0


def test_single_token_requests_finish_at_the_prefill_instance():
    w = Workload("t", np.array([0.0]), np.array([5]), np.array([1]), ("one",), "t")
    cfg = SchedulerConfig.vllm_v1(num_kv_blocks=16, max_model_len=100)
    reps = [ReplicaSpec(StaticReplicaCost((UNIT,)), cfg, role="prefill"),
            ReplicaSpec(StaticReplicaCost((UNIT,)), cfg, role="decode")]
    res = run_simulation(reps, w, kv_transfer=LinearKVTransfer(latency_s=1.0), record_log=True)
    assert [e[1] for e in res.log] == ["arrive", "prefill", "first_token", "finish"]
    assert res["num_kv_transfers"] == 0 and math.isnan(res["kv_transfer_mean_s"])


def test_decode_side_length_rules_reject_at_arrival():
    w = Workload("t", np.array([0.0, 0.0]), np.array([50, 5]), np.array([80, 5]), ("long", "ok"), "t")
    pcfg = SchedulerConfig.vllm_v1(num_kv_blocks=64, max_model_len=1000)
    dcfg = SchedulerConfig.vllm_v1(num_kv_blocks=64, max_model_len=100, length_policy="reject")
    reps = [ReplicaSpec(StaticReplicaCost((UNIT,)), pcfg, role="prefill"),
            ReplicaSpec(StaticReplicaCost((UNIT,)), dcfg, role="decode")]
    res = run_simulation(reps, w, kv_transfer=LinearKVTransfer())
    assert res.records.reject_reason == ("length", "")


def test_aggregated_records_have_no_transfer_and_bad_inputs():
    w = Workload("t", np.array([0.0]), np.array([5]), np.array([3]), ("a",), "t")
    cfg = SchedulerConfig.vllm_v1(num_kv_blocks=16, max_model_len=100)
    agg = run_simulation([ReplicaSpec(StaticReplicaCost((UNIT,)), cfg)], w)
    assert agg.records.decode_replica.tolist() == [-1] and np.isnan(agg.records.kv_transfer_end_s).all()
    assert "kv_transfer_mean_s" not in agg.summary()
    p = ReplicaSpec(StaticReplicaCost((UNIT,)), cfg, role="prefill")
    d = ReplicaSpec(StaticReplicaCost((UNIT,)), cfg, role="decode")
    with pytest.raises(SpecError, match="kv_transfer"):
        run_simulation([p, d], w)
    with pytest.raises(SpecError, match="at least one 'prefill' and one 'decode'"):
        run_simulation([p, p], w, kv_transfer=LinearKVTransfer())
    with pytest.raises(SpecError, match="disaggregated runs only"):
        run_simulation([ReplicaSpec(StaticReplicaCost((UNIT,)), cfg)], w, kv_transfer=LinearKVTransfer())
    with pytest.raises(SpecError, match="role"):
        ReplicaSpec(StaticReplicaCost((UNIT,)), cfg, role="prefil")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ topology
def test_cross_node_transfer_is_slower_than_intra_node():
    from apex_opt.catalog import get_cluster, get_gpu, get_model
    from apex_opt.perf.kv_transfer import kv_transfer_cost
    from apex_opt.schema.plan import Plan
    from apex_opt.topology.graph import Topology

    topo = Topology.build(get_cluster("h100x16"))
    model, gpu = get_model("llama-3.1-70b"), get_gpu("h100-sxm-80gb")
    p4 = Plan(gpu=gpu.name, tp=4, role="prefill")
    d4 = Plan(gpu=gpu.name, tp=4, role="decode")
    near = kv_transfer_cost(model, gpu, p4, 0, d4, 4, topo)   # GPUs 0-3 -> 4-7: NVSwitch
    far = kv_transfer_cost(model, gpu, p4, 0, d4, 8, topo)    # GPUs 0-3 -> 8-11: 400 Gb/s NICs
    assert (near.fabric, near.nodes, far.fabric, far.nodes) == ("nvlink", 1, "network", 2)
    for tokens in (16, 1024, 8192):
        assert near.time(tokens) < far.time(tokens)
    # 80 layers x 8 KV heads x 128 x K,V x 2 bytes; each of the 4 ranks sends a quarter, in parallel
    assert near.bytes(1000) == 1000 * 80 * 8 * 128 * 2 * 2
    assert far.link_bytes_per_token == far.bytes_per_token / 4
    # network time ~ bytes per NIC / 50 GB/s, within the fitted efficiency
    assert 1.0 < far.time(8192) / (8192 * far.link_bytes_per_token / 50e9) < 2.0
    # a decode replica with fewer ranks receives more per GPU; fp8 KV halves the bytes
    d2 = Plan(gpu=gpu.name, tp=2, role="decode")
    assert kv_transfer_cost(model, gpu, p4, 0, d2, 8, topo).link_bytes_per_token == far.link_bytes_per_token * 2
    p8 = Plan(gpu=gpu.name, tp=4, kv_dtype="fp8", role="prefill")
    assert kv_transfer_cost(model, gpu, p8, 0, d4, 8, topo).bytes(10) == far.bytes(10) / 2


def test_front_door_places_prefill_first_and_prices_transfers():
    import apex_opt as ax

    specs = ax.load_specs("llama-3.1-70b", "h100x16",
                          workload="synthetic:rate=4rps,requests=30,prompt=2048,output=64,seed=3")
    g = "h100-sxm-80gb"
    # decode listed first: prefill still takes the first GPUs (node 0), so every transfer crosses nodes
    dep = ax.Deployment(plans=(ax.Plan(gpu=g, tp=8, role="decode"), ax.Plan(gpu=g, tp=4, dp=2, role="prefill")))
    res = ax.simulate(specs, dep, record_log=True)
    assert [r["role"] for r in res.per_replica] == ["prefill", "prefill", "decode"]
    rec = res.records
    assert res["num_completed"] == 30 and res["num_kv_transfers"] == 30
    assert set(rec.replica.tolist()) == {0, 1} and set(rec.decode_replica.tolist()) == {2}
    assert res["gpus"] == 16
    # tp4 prefill on GPUs 0-3 and tp4 decode on GPUs 4-7 share a node: NVSwitch, faster
    near_specs = ax.load_specs("llama-3.1-70b", "h100x16",
                               workload="synthetic:rate=4rps,requests=30,prompt=2048,output=64,seed=3")
    near = ax.simulate(near_specs, ax.Deployment(plans=(ax.Plan(gpu=g, tp=4, role="prefill"),
                                                        ax.Plan(gpu=g, tp=4, role="decode"))))
    assert near["kv_transfer_mean_s"] < res["kv_transfer_mean_s"]
    # heterogeneous aggregated deployments still run
    both = ax.simulate(specs, ax.Deployment(plans=(ax.Plan(gpu=g, tp=8), ax.Plan(gpu=g, tp=4, dp=2))))
    assert both["num_completed"] == 30 and "num_kv_transfers" not in both.summary()


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_prefill_decode(tmp_path):
    from click.testing import CliRunner

    from apex_opt.cli.main import cli

    runner = CliRunner()
    base = ["simulate", "--model", "llama-3.1-70b", "--gpu", "h100-sxm-80gb", "--nodes", "2",
            "--workload", "summarization", "--max-requests", "12"]
    out = tmp_path / "req.jsonl"
    r = runner.invoke(cli, [*base, "--prefill", "tp=4,dp=2", "--decode", "tp=8,dp=1", "--format", "json",
                            "--requests-out", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["num_completed"] == 12 and data["num_kv_transfers"] == 12 and data["gpus"] == 16
    assert [p["role"] for p in data["plan"]["plans"]] == ["prefill", "decode"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(row["decode_replica"] == 2 and row["kv_transfer_end_s"] >= row["kv_transfer_start_s"]
               for row in rows)
    r = runner.invoke(cli, [*base, "--prefill", "tp=4,dp=2", "--decode", "tp=8"])
    assert r.exit_code == 0, r.output
    assert "KV transfer" in r.output and "prefill dp2 tp4" in r.output and "decode dp1 tp8" in r.output
    # errors: both shapes, a bad spec, a lone --prefill
    r = runner.invoke(cli, [*base, "--prefill", "tp=4", "--decode", "tp=4", "--tp", "8", "--dp", "2"])
    assert r.exit_code == 2 and "--tp/--dp" in r.output and "--prefill/--decode" in r.output
    r = runner.invoke(cli, [*base, "--prefill", "tp=4,dp=two", "--decode", "tp=4"])
    assert r.exit_code == 2
    assert "--prefill 'tp=4,dp=two'" in r.output and "tp=4,dp=2[,pp=1,ep=1,gpu=NAME]" in r.output
    r = runner.invoke(cli, [*base, "--prefill", "tp=4"])
    assert r.exit_code == 2 and "--prefill needs --decode" in r.output
