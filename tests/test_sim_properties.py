"""Property tests of the simulator over random small workloads and configurations (all families, pp, dp).

* every request finishes or is rejected, tokens are conserved (generated == requested unless truncated);
* KV accounting is exact at every iteration (``debug=True`` checks blocks held == blocks used, 0 <= free <=
  capacity) and everything is freed at the end;
* event times are ordered, ITL samples add up to the per-request token spans;
* same seed -> identical results; skip-ahead on/off -> identical results (float rounding).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apex_opt.sim import (
    FAMILIES,
    ROUTERS,
    LinearStageCost,
    ReplicaSpec,
    SchedulerConfig,
    StaticReplicaCost,
    run_simulation,
)
from apex_opt.sim.engine import Simulation
from apex_opt.workload import Workload

# "ugly" scales keep arrival times and step ends from coinciding exactly, so that the order of simultaneous
# events cannot differ between the closed-form and the step-by-step arithmetic
GAP = 0.0731953
STEP = 0.0123457


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 14))
    gaps = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 70), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    w = Workload("prop", np.cumsum(np.array(gaps) * GAP), np.array(prompts), np.array(outputs),
                 tuple(f"r{i}" for i in range(n)), "hypothesis")
    pp = draw(st.integers(1, 2))
    dp = draw(st.integers(1, 2))
    replicas = []
    for _ in range(dp):
        family = draw(st.sampled_from(FAMILIES))
        budget = draw(st.integers(4, 64))
        seqs = draw(st.integers(1, min(8, budget)))
        max_len = draw(st.integers(8, 140))
        common = {"max_model_len": max_len, "async_output": draw(st.booleans()),
                      "metrics_stamp": draw(st.sampled_from(["forward", "next-iteration"])),
                      "length_policy": draw(st.sampled_from(["truncate", "truncate", "reject"]))}
        if family == "sglang":
            cfg = SchedulerConfig.sglang(
                num_kv_tokens=draw(st.integers(12, 400)) * pp, chunked_prefill_size=draw(st.sampled_from([-1, budget])),
                max_prefill_tokens=draw(st.integers(4, 80)),
                max_running_requests=draw(st.one_of(st.none(), st.integers(1, 8))),
                new_token_ratio_init=draw(st.sampled_from([0.7, 0.3, 1.0])), new_token_ratio_min=0.098,
                new_token_ratio_decay_steps=draw(st.sampled_from([600, 5])), **common)
        else:
            cfg = SchedulerConfig(
                family=family, num_kv_blocks=draw(st.integers(3, 80)) * pp,
                block_size=draw(st.sampled_from([1, 2, 4, 16])), chunked_prefill=draw(st.booleans()),
                max_num_batched_tokens=budget, max_num_seqs=seqs, watermark=draw(st.sampled_from([0.0, 0.01, 0.1])),
                **common)
        stages = tuple(
            LinearStageCost(a=STEP * draw(st.integers(1, 30)), b=draw(st.sampled_from([0.0, 1.37e-4])),
                            c=draw(st.sampled_from([0.0, 2.9e-6])), d=draw(st.sampled_from([0.0, 3.1e-7])),
                            e=draw(st.sampled_from([0.0, 7.3e-5])), host_s=draw(st.sampled_from([0.0, 0.00137])))
            for _ in range(pp))
        replicas.append(ReplicaSpec(StaticReplicaCost(stages, send_latency_s=draw(st.sampled_from([0.0, 0.0021]))),
                                    cfg))
    router = draw(st.sampled_from(ROUTERS))
    return w, replicas, router


def run(w, replicas, router, skip=True, seed=0):
    sim = Simulation(replicas, w, router=router, seed=seed, skip_ahead=skip, debug=True, record_log=True)
    res = sim.run()
    return sim, res


SETTINGS = settings(max_examples=250, deadline=None, derandomize=True)


@SETTINGS
@given(scenarios())
def test_requests_finish_tokens_conserved_kv_consistent(scenario):
    w, replicas, router = scenario
    sim, res = run(w, replicas, router)
    rec = res.records
    done = rec.completed
    assert np.all(done ^ rec.rejected), "every request finishes or is rejected, not both"
    gen, req = rec.generated, rec.requested_tokens
    assert np.all(gen[done] >= 1)
    assert np.all(np.where(rec.truncated, gen < req, gen == req)[done])
    assert np.all(gen[rec.rejected] == 0)
    # KV: everything freed, never over capacity (debug checks ran after every iteration)
    for e in sim.engines:
        assert e.kv.free == e.kv.capacity
        assert not e.running and not e.waiting and not len(e.pool)
        assert sim.max_kv_seen[e.eid] <= e.kv.capacity
    # times are ordered
    a, fs, ft, fin = rec.arrival_s[done], rec.first_scheduled_s[done], rec.first_token_s[done], rec.finish_s[done]
    assert np.all(a <= fs) and np.all(fs < ft) and np.all(ft <= fin)
    # ITL samples add up to the token spans minus preemption stalls
    vals = np.frombuffer(sim.itl_vals) if len(sim.itl_vals) else np.zeros(0)
    wts = np.frombuffer(sim.itl_wts) if len(sim.itl_wts) else np.zeros(0)
    segs = np.frombuffer(sim.itl_segs).reshape(-1, 5) if len(sim.itl_segs) else np.zeros((0, 5))
    seg_sum = sum(w_ * sum(al + be * j for j in range(int(j0), int(j1) + 1)) for al, be, j0, j1, w_ in segs)
    span = ((rec.finish_s - rec.first_token_s) - rec.stall_s)[done].sum()
    assert math.isclose(float((vals * wts).sum()) + seg_sum, span, rel_tol=1e-9, abs_tol=1e-9)
    assert np.all(vals >= -1e-12)
    s = res.summary()
    assert s["num_completed"] + s["num_rejected"] == len(w.arrival_s)
    assert 0.0 <= s["kv_util_mean"] <= s["kv_util_max"] + 1e-12 <= 1.0 + 1e-12
    assert s["output_tokens"] == int(gen.sum())


def _close(x, y) -> bool:
    if isinstance(x, float) or isinstance(y, float):
        if math.isnan(x) and math.isnan(y):
            return True
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
    return x == y


def assert_same(r1, r2):
    a, b = r1.records, r2.records
    for name in ("replica", "generated", "rejected", "truncated", "preemptions"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    for name in ("first_scheduled_s", "first_token_s", "finish_s", "stall_s"):
        x, y = getattr(a, name), getattr(b, name)
        assert np.allclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True), name
    s1, s2 = r1.summary(), r2.summary()
    assert s1.keys() == s2.keys()
    bad = {k: (s1[k], s2[k]) for k in s1 if not _close(s1[k], s2[k])}
    assert not bad
    # the request-level logs agree event for event
    assert len(r1.log) == len(r2.log)
    for e1, e2 in zip(r1.log, r2.log, strict=True):
        assert e1[0] == e2[0] and e1[1] == e2[1] and e1[3] == e2[3] and math.isclose(e1[2], e2[2], abs_tol=1e-9)


@SETTINGS
@given(scenarios())
def test_skip_ahead_on_off_identical(scenario):
    w, replicas, router = scenario
    _, on = run(w, replicas, router, skip=True)
    _, off = run(w, replicas, router, skip=False)
    assert_same(on, off)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(scenarios(), st.integers(0, 3))
def test_same_seed_same_result(scenario, seed):
    w, replicas, router = scenario
    _, r1 = run(w, replicas, router, seed=seed)
    _, r2 = run(w, replicas, router, seed=seed)
    assert_same(r1, r2)
    assert r1.log == r2.log


def _long_decode_workload(n: int, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(0.7, n))
    return Workload("long", arr - arr[0], rng.integers(20, 400, n), rng.integers(50, 900, n),
                    tuple(f"q{i}" for i in range(n)), "test")


def test_skip_ahead_identical_on_long_runs_with_preemption():
    """Longer runs where the skip covers thousands of steps, block growth, arrivals and preemption."""
    w = _long_decode_workload(120, 3)
    stage = LinearStageCost(a=0.0137, b=2.1e-5, c=1.3e-7, e=1.1e-5, host_s=0.0011)
    for cfg in (SchedulerConfig.vllm_v0(num_kv_blocks=300, max_model_len=131072),
                SchedulerConfig.vllm_v0(num_kv_blocks=300, max_model_len=8192),
                SchedulerConfig.vllm_v1(num_kv_blocks=300, max_model_len=131072, max_num_batched_tokens=512,
                                        max_num_seqs=64),
                SchedulerConfig.sglang(num_kv_tokens=4800, max_model_len=8192)):
        reps = [ReplicaSpec(StaticReplicaCost((stage,)), cfg)]
        _, on = run(w, reps, "round-robin", skip=True)
        _, off = run(w, reps, "round-robin", skip=False)
        assert on["num_completed"] == 120
        assert_same(on, off)
    assert on.iterations is not None and max(it[4] for it in on.iterations) > 50  # long skips happened


class EagerPast300(LinearStageCost):
    """A stage whose decode steps leave their CUDA graphs (4 ms more) once a context passes 300 tokens."""

    def iteration_time(self, b):
        eager = 0.004 if (not b.has_prefill and b.max_ctx > 300) else 0.0
        return super().iteration_time(b) + eager

    def decode_coeffs(self, num_decodes, max_ctx=0):
        c0, c1 = super().decode_coeffs(num_decodes)
        return c0 + (0.004 if max_ctx > 300 else 0.0), c1


def test_skip_ahead_respects_cost_breakpoints():
    """A cost regime change at a context length (vLLM's 8192-token CUDA-graph limit) is never skipped over."""
    w = _long_decode_workload(30, 5)
    stage = EagerPast300(a=0.0137, c=1.3e-7, ctx_breakpoints=(300,))
    reps = [ReplicaSpec(StaticReplicaCost((stage,)), SchedulerConfig.vllm_v0(num_kv_blocks=5000,
                                                                             max_model_len=131072))]
    _, on = run(w, reps, "round-robin", skip=True)
    _, off = run(w, reps, "round-robin", skip=False)
    assert_same(on, off)


@pytest.mark.shared
def test_skip_ahead_identical_on_the_creation_trace(shared_data):
    """The 512-request creation trace (~586k output tokens) under vLLM 0.6 chunked prefill, as measured."""
    from apex_opt.workload import read_apex_jsonl

    w = read_apex_jsonl(shared_data / "traces" / "llama" / "creation_05.jsonl")
    stage = LinearStageCost(a=0.012, b=2e-5, c=1e-8, d=1e-9, e=1e-5, host_s=0.002)
    reps = [ReplicaSpec(StaticReplicaCost((stage,)), SchedulerConfig.vllm_v0(num_kv_blocks=20_000,
                                                                             max_model_len=131072))]
    on = run_simulation(reps, w, record_log=True)
    off = run_simulation(reps, w, record_log=True, skip_ahead=False)
    assert on["num_completed"] == 512 and on["output_tokens"] == int(w.output_tokens.sum())
    assert_same(on, off)
    assert len(on.iterations) < len(off.iterations) / 10
