"""Pipeline and data parallelism, routers, heterogeneous replicas, the summary, SLOs, energy and progress."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apex_opt.errors import SpecError
from apex_opt.schema.slo import parse_slo
from apex_opt.sim import (
    LinearStageCost,
    ReplicaSpec,
    SchedulerConfig,
    SLOTarget,
    StaticReplicaCost,
    run_simulation,
)
from apex_opt.workload import Workload


def poisson(n: int, rate: float, prompt: int = 200, output: int = 300, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(1 / rate, n))
    return Workload("p", arr - arr[0], rng.integers(prompt // 2, prompt * 3 // 2, n),
                    rng.integers(output // 2, output * 3 // 2, n), tuple(f"q{i}" for i in range(n)), "test")


def v0(blocks: int = 20_000, **kw) -> SchedulerConfig:
    return SchedulerConfig.vllm_v0(num_kv_blocks=blocks, max_model_len=131072, **kw)


DEFAULT_STAGE = LinearStageCost()


def replica(stages=(DEFAULT_STAGE,), cfg=None, **kw) -> ReplicaSpec:
    return ReplicaSpec(StaticReplicaCost(tuple(stages)), cfg or v0(pp=len(stages)), **kw)


# ------------------------------------------------------------------------------------------------ pipeline
def test_pp2_keeps_both_stages_busy_and_nearly_doubles_throughput():
    w = poisson(300, 50.0, output=200)  # a burst: the engines stay loaded
    half = LinearStageCost(a=0.005, b=1e-5, c=5e-9, e=5e-6)
    full = LinearStageCost(a=0.010, b=2e-5, c=1e-8, e=1e-5)
    pp1 = run_simulation([replica((full,), v0(max_num_seqs=32, max_num_batched_tokens=512))], w)
    pp2 = run_simulation([replica((half, half), v0(max_num_seqs=32, max_num_batched_tokens=512, pp=2))], w)
    busy = pp2.per_replica[0]["stage_busy_fraction"]
    assert min(busy) > 0.9
    assert pp2["throughput_output_tok_s"] > 1.6 * pp1["throughput_output_tok_s"]  # ramp and tail of the burst
    assert pp2["num_completed"] == 300


def test_pp_stage_imbalance_leaves_bubbles_on_the_fast_stage():
    w = poisson(200, 50.0, output=200)
    fast = LinearStageCost(a=0.004)
    slow = LinearStageCost(a=0.008)
    res = run_simulation([replica((fast, slow), v0(max_num_seqs=32, pp=2))], w)
    b0, b1 = res.per_replica[0]["stage_busy_fraction"]
    assert b1 > 0.9 and b0 < 0.65


def test_pp_disables_async_output_and_sends_activations():
    """vLLM turns async output processing off with pp > 1; the send time delays the second stage."""
    w = Workload("one", np.array([0.0]), np.array([10]), np.array([2]), ("r0",), "t")
    unit = LinearStageCost(a=1.0, b=0.0, c=0.0, d=0.0, e=0.0)
    cost = StaticReplicaCost((unit, unit), send_latency_s=0.5)
    cfg = SchedulerConfig.vllm_v0(num_kv_blocks=100, max_model_len=1000, pp=2, async_output=True,
                                  metrics_stamp="next-iteration")
    res = run_simulation([ReplicaSpec(cost, cfg)], w, record_log=True)
    # prefill: stage 0 [0, 1), send 0.5, stage 1 [1.5, 2.5); decode: [2.5, 3.5), send, [4, 5)
    assert res.records.first_token_s.tolist() == [2.5]
    assert res.records.finish_s.tolist() == [5.0]


# ------------------------------------------------------------------------------------------------ routers
def test_round_robin_assigns_k_mod_dp():
    w = poisson(50, 5.0)
    res = run_simulation([replica() for _ in range(3)], w, router="round-robin")
    assert res.records.replica.tolist() == [k % 3 for k in range(50)]
    assert sum(r["requests"] for r in res.per_replica) == 50


def test_least_loaded_prefers_the_faster_replica():
    w = poisson(300, 20.0)
    fast = replica((LinearStageCost(a=0.005),))
    slow = replica((LinearStageCost(a=0.05),))
    res = run_simulation([slow, fast], w, router="least-loaded")
    counts = np.bincount(res.records.replica, minlength=2)
    assert counts[1] > 1.5 * counts[0]


def test_random_router_is_seeded_and_weighted():
    w = poisson(400, 20.0)
    reps = [replica(weight=3.0), replica(weight=1.0)]
    a = run_simulation(reps, w, router="random", seed=7).records.replica
    b = run_simulation(reps, w, router="random", seed=7).records.replica
    c = run_simulation(reps, w, router="random", seed=8).records.replica
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert 0.65 < (a == 0).mean() < 0.85


def test_heterogeneous_replicas_mix_engine_families():
    w = poisson(120, 10.0)
    reps = [replica((LinearStageCost(a=0.01),), v0()),
            replica((LinearStageCost(a=0.02),), SchedulerConfig.sglang(num_kv_tokens=200_000, max_model_len=65536)),
            replica((LinearStageCost(a=0.01),), SchedulerConfig.vllm_v1(num_kv_blocks=20_000, max_model_len=131072))]
    res = run_simulation(reps, w)
    assert res["num_completed"] == 120
    assert [r["family"] for r in res.per_replica] == ["vllm-v0", "sglang", "vllm-v1"]


# ------------------------------------------------------------------------------------------------ summary
SUMMARY_KEYS = {
    "num_requests", "num_completed", "num_rejected", "num_truncated", "num_preemptions", "output_tokens",
    "prompt_tokens", "makespan_s", "ttft_ms_mean", "tpot_ms", "itl_ms", "e2e_s_mean",
    "throughput_output_tok_s", "throughput_total_tok_s", "throughput_req_s", "batch_size_mean", "batch_size_max",
    "queue_len_mean", "queue_len_max", "running_mean", "running_max", "kv_util_mean", "kv_util_max", "mfu", "mbu",
    "busy_fraction", "energy_j", "energy_per_output_token_j", "gpus", "gpu_hours", "cost_usd",
    "cost_per_mtok_usd",
    "measured_at", "offered_rate_req_s", "served_rate_req_s", "backlog_growth_req_s", "queue_growth_req_s",
    "saturated",
} | {f"{m}_{s}_s" for m in ("ttft", "tpot", "itl", "e2e") for s in ("mean", "p50", "p90", "p95", "p99")}
SLO_KEYS = {"slo_attainment", "goodput_req_s", "goodput_per_gpu_req_s", "slo_ttft_value_s", "slo_tpot_value_s",
            "slo_e2e_value_s", "slo_met"}


def test_summary_keys_and_consistency():
    w = poisson(200, 8.0)
    res = run_simulation([replica(), replica()], w, price_per_gpu_hour=2.5)
    s = res.summary()
    assert set(s) == SUMMARY_KEYS
    rec = res.records
    span = s["makespan_s"]
    assert s["output_tokens"] == int(rec.generated.sum()) == int(w.output_tokens.sum())
    assert s["throughput_output_tok_s"] == pytest.approx(s["output_tokens"] / span)
    assert s["e2e_mean_s"] == pytest.approx(float(np.mean(rec.finish_s - rec.arrival_s)))
    assert s["ttft_p50_s"] <= s["ttft_p90_s"] <= s["ttft_p99_s"]
    assert s["itl_p50_s"] <= s["itl_p99_s"]
    # reference aggregates: sum of inter-token latencies over tokens, and over tokens - 1
    itl_sum = float((rec.finish_s - rec.first_token_s).sum())
    assert s["tpot_ms"] == pytest.approx(itl_sum / rec.generated.sum() * 1e3)
    assert s["itl_ms"] == pytest.approx(itl_sum / (rec.generated - 1).sum() * 1e3)
    assert s["itl_mean_s"] == pytest.approx(s["itl_ms"] / 1e3)  # no preemptions here: same sum
    assert s["gpu_hours"] == pytest.approx(2 * span / 3600)
    assert s["cost_usd"] == pytest.approx(2.5 * s["gpu_hours"])
    assert s["cost_per_mtok_usd"] == pytest.approx(s["cost_usd"] / s["output_tokens"] * 1e6)
    assert 0 < s["mfu"] < 1 and 0 < s["mbu"] < 1
    assert 1.0 <= s["batch_size_mean"] <= s["batch_size_max"]
    assert set(res.series) == {"t_s", "queue_len", "running", "batch_size"}


def test_energy_is_busy_plus_idle_power():
    w = poisson(50, 2.0)
    stage = LinearStageCost(busy_power=1000.0, idle_watts=100.0)
    res = run_simulation([replica((stage,))], w)
    busy = res.per_replica[0]["busy_fraction"] * res["makespan_s"]
    expected = 1000.0 * busy + 100.0 * (res["makespan_s"] - busy)
    assert res["energy_j"] == pytest.approx(expected, rel=1e-9)
    assert res["energy_per_output_token_j"] == pytest.approx(expected / res["output_tokens"])


def test_slo_attainment_and_goodput():
    w = poisson(200, 8.0)
    base = run_simulation([replica()], w)
    rec = base.records
    ttft_bound = float(np.percentile(rec.ttft_s, 80))
    tpot_bound = float(np.nanpercentile(rec.tpot_s, 90))
    for slo in (SLOTarget(ttft=ttft_bound, tpot=tpot_bound, ttft_stat="p50", attainment=0.5),
                parse_slo(f"ttft.p50={ttft_bound * 1e3:.6f}ms,tpot={tpot_bound * 1e3:.6f}ms,attainment=50%")):
        s = run_simulation([replica()], w, slo=slo).summary()
        ok = (rec.ttft_s <= slo.ttft + 1e-12) & (np.nan_to_num(rec.tpot_s) <= slo.tpot + 1e-12)
        assert s["slo_attainment"] == pytest.approx(ok.mean(), abs=0.01)
        assert s["goodput_req_s"] == pytest.approx(s["slo_attainment"] * 200 / s["makespan_s"], rel=1e-9)
        assert s["slo_met"] is True
        assert set(s) == SUMMARY_KEYS | SLO_KEYS
    strict = run_simulation([replica()], w, slo=SLOTarget(ttft=1e-6, tpot=1.0)).summary()
    assert strict["slo_attainment"] == 0.0 and strict["slo_met"] is False


def test_progress_callback_reaches_one():
    seen: list[float] = []
    run_simulation([replica()], poisson(300, 20.0), progress=seen.append)
    assert seen[-1] == 1.0
    assert seen == sorted(seen) and 20 <= len(seen) <= 110


def test_empty_workload():
    w = Workload("empty", np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), (), "t")
    s = run_simulation([replica()], w).summary()
    assert (s["num_requests"], s["num_completed"], s["output_tokens"]) == (0, 0, 0)
    assert math.isnan(s["ttft_mean_s"])


def test_bad_inputs():
    w = poisson(5, 1.0)
    with pytest.raises(SpecError, match="at least one replica"):
        run_simulation([], w)
    with pytest.raises(SpecError, match="unknown router"):
        run_simulation([replica()], w, router="sticky")
    with pytest.raises(SpecError, match="cannot be split"):
        run_simulation([replica((LinearStageCost(), LinearStageCost()), v0(blocks=1, pp=2))], w)
    with pytest.raises(SpecError, match="weight"):
        replica(weight=0.0)


def test_sglang_retraction_under_kv_pressure():
    """Decode cannot get a slot per request: SGLang retracts the requests with the fewest outputs and raises
    new_token_ratio; every request still completes with all its tokens."""
    w = poisson(60, 50.0, prompt=100, output=400)
    cfg = SchedulerConfig.sglang(num_kv_tokens=3000, max_model_len=4096, new_token_ratio_init=0.05,
                                 new_token_ratio_min=0.01)
    res = run_simulation([replica((LinearStageCost(),), cfg)], w)
    assert res["num_preemptions"] > 0
    assert res["num_completed"] == 60
    assert res.records.generated.tolist() == w.output_tokens.tolist()


def test_request_larger_than_the_sglang_pool_is_rejected():
    """SGLang caps a request at max_req_len = min(context_len, pool) - 1 tokens: a prompt that cannot fit is
    refused up front instead of blocking the queue."""
    w = Workload("one", np.array([0.0, 0.0]), np.array([10, 3]), np.array([5, 2]), ("big", "small"), "t")
    cfg = SchedulerConfig.sglang(num_kv_tokens=8, max_model_len=64)
    res = run_simulation([replica((LinearStageCost(),), cfg)], w)
    assert res.records.reject_reason == ("kv", "")
    assert res.records.generated.tolist() == [0, 2]
