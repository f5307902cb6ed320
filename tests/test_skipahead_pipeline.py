"""Skip-ahead on pipelined replicas (pp > 1) gives the results of step-by-step simulation (float rounding).

A pipelined replica runs ``pp`` virtual engines whose micro-batches share the stages; once every engine decodes
its whole pool with nothing to admit, finish or preempt, the simulator replays the stage events without the
policies and skips whole rounds in closed form when one stage is saturated (or a single engine runs alone).
These tests compare every summary field, the per-request records and the request log with ``skip_ahead=False``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import apex_opt as ax
from apex_opt.sim import FAMILIES, LinearStageCost, ReplicaSpec, SchedulerConfig, StaticReplicaCost
from apex_opt.sim.engine import Simulation
from apex_opt.workload import Workload
from tests.test_sim_properties import EagerPast300, assert_same


def _workload(n: int, rate: float, prompt: tuple[int, int], output: tuple[int, int], seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(1.0 / rate, n))
    return Workload("pipe", arr - arr[0], rng.integers(*prompt, n), rng.integers(*output, n),
                    tuple(f"q{i}" for i in range(n)), "test")


def _stages(pp: int, host: float = 0.0011, skew: float = 1.0) -> tuple[LinearStageCost, ...]:
    """``pp`` stages with "ugly" constants; the first one carries the host overhead (``skew`` scales it)."""
    return tuple(LinearStageCost(a=(0.0137 if s == 0 else 0.0091 + 0.0007 * s) * (skew if s == 0 else 1.0),
                                 b=2.1e-5, c=1.3e-7, e=1.1e-5, host_s=host if s == 0 else 0.0)
                 for s in range(pp))


def _run(replicas: list[ReplicaSpec], w: Workload, skip: bool, router: str = "round-robin"):
    sim = Simulation(replicas, w, router=router, skip_ahead=skip, debug=True, record_log=True)
    return sim, sim.run()


def _same_with_and_without_skip(replicas: list[ReplicaSpec], w: Workload, router: str = "round-robin"):
    sim, on = _run(replicas, w, True, router)
    _, off = _run(replicas, w, False, router)
    assert_same(on, off)
    return sim, on


def _vllm(pp: int, blocks: int, **kw) -> SchedulerConfig:
    return SchedulerConfig.vllm_v0(num_kv_blocks=blocks * pp, max_model_len=131072, pp=pp, **kw)


@pytest.mark.parametrize("pp", [2, 3, 4])
@pytest.mark.parametrize("rate", [0.4, 3.0], ids=["low-load", "high-load"])
def test_a_pipelined_vllm_replica_skips_ahead_with_step_by_step_results(pp, rate):
    w = _workload(150, rate, (20, 300), (50, 600), seed=pp)
    sim, _ = _same_with_and_without_skip([ReplicaSpec(StaticReplicaCost(_stages(pp), send_latency_s=0.00043),
                                                      _vllm(pp, 4000))], w)
    assert sim.replayed > 1000  # the pipeline was replayed, not stepped
    assert sim.rounds > 500  # and whole rounds were skipped in closed form


@pytest.mark.parametrize("pp", [2, 3])
def test_equal_stages_and_a_slow_last_stage_skip_ahead_exactly(pp):
    """No stage dominates (equal stages, no host overhead), or a later stage is the bottleneck."""
    w = _workload(100, 2.0, (20, 200), (80, 500), seed=7)
    equal = tuple(LinearStageCost(a=0.0113, b=2.1e-5, c=1.3e-7, e=1.1e-5) for _ in range(pp))
    slow_last = equal[:-1] + (LinearStageCost(a=0.0211, b=2.1e-5, c=1.3e-7, e=1.1e-5),)
    for stages in (equal, slow_last):
        sim, _ = _same_with_and_without_skip([ReplicaSpec(StaticReplicaCost(stages), _vllm(pp, 4000))], w)
        assert sim.replayed > 0
    assert sim.rounds > 0  # the slow last stage is saturated: rounds skipped in closed form


def test_a_lone_engine_of_a_pipelined_replica_skips_its_steps_in_closed_form():
    """One request at a time: a single virtual engine runs alone through the stages."""
    w = _workload(20, 0.01, (20, 300), (100, 800), seed=13)
    sim, _ = _same_with_and_without_skip([ReplicaSpec(StaticReplicaCost(_stages(3), send_latency_s=0.00043),
                                                      _vllm(3, 2000))], w)
    assert sim.rounds > 1000


@pytest.mark.parametrize("pp", [2, 4])
def test_a_pipelined_replica_under_kv_pressure_preempts_as_step_by_step(pp):
    w = _workload(120, 3.0, (20, 400), (50, 900), seed=3)
    sim, on = _same_with_and_without_skip([ReplicaSpec(StaticReplicaCost(_stages(pp)), _vllm(pp, 150))], w)
    assert on["num_preemptions"] > 0
    assert sim.replayed > 0


def test_long_outputs_on_a_pipelined_replica_skip_thousands_of_rounds_exactly():
    w = _workload(12, 0.05, (100, 2000), (3000, 6000), seed=11)
    sim, on = _same_with_and_without_skip([ReplicaSpec(StaticReplicaCost(_stages(2)), _vllm(2, 5000))], w)
    assert on["num_completed"] == 12 and sim.rounds > 5000


def test_cost_breakpoints_are_never_skipped_over_on_a_pipelined_replica():
    w = _workload(30, 0.5, (20, 200), (100, 500), seed=5)
    stages = (EagerPast300(a=0.0137, c=1.3e-7, ctx_breakpoints=(300,)),
              EagerPast300(a=0.0091, c=1.3e-7, ctx_breakpoints=(300,)))
    _same_with_and_without_skip([ReplicaSpec(StaticReplicaCost(stages), _vllm(2, 5000))], w)


@pytest.mark.parametrize("family", ["vllm-v1", "sglang"])
@pytest.mark.parametrize("pp", [2, 3])
def test_vllm_v1_and_sglang_pipelined_replicas_skip_ahead_exactly(family, pp):
    w = _workload(100, 1.5, (20, 300), (50, 600), seed=pp + 20)
    if family == "vllm-v1":
        cfg = SchedulerConfig.vllm_v1(num_kv_blocks=600 * pp, max_model_len=131072, max_num_batched_tokens=512,
                                      max_num_seqs=64, async_output=False)
    else:
        cfg = SchedulerConfig.sglang(num_kv_tokens=9000 * pp, max_model_len=8192, async_output=False)
    sim, _ = _same_with_and_without_skip([ReplicaSpec(StaticReplicaCost(_stages(pp)), cfg)], w)
    assert sim.replayed > 0


def test_prefix_caching_on_a_shared_prefix_workload_skips_ahead_exactly():
    rng = np.random.default_rng(4)
    n = 80
    own = rng.integers(5, 120, n)
    segments = tuple(((1, 64), (100 + i, int(own[i]))) for i in range(n))  # a shared system prompt
    arr = np.cumsum(rng.exponential(0.6, n))
    w = Workload("shared", arr - arr[0], 64 + own, rng.integers(40, 400, n), tuple(f"s{i}" for i in range(n)),
                 "test", segments)
    for cfg in (_vllm(2, 400, prefix_caching=True),
                SchedulerConfig.sglang(num_kv_tokens=6000 * 2, max_model_len=8192, async_output=False)):
        _same_with_and_without_skip([ReplicaSpec(StaticReplicaCost(_stages(2)), cfg)], w)


@pytest.mark.parametrize("router", ["round-robin", "least-loaded", "random"])
def test_pipelined_and_plain_replicas_side_by_side_skip_ahead_exactly(router):
    w = _workload(160, 2.5, (20, 300), (50, 500), seed=9)
    reps = [ReplicaSpec(StaticReplicaCost(_stages(2)), _vllm(2, 3000)),
            ReplicaSpec(StaticReplicaCost(_stages(1)), _vllm(1, 3000)),
            ReplicaSpec(StaticReplicaCost(_stages(3)), _vllm(3, 3000))]
    _same_with_and_without_skip(reps, w, router)


@pytest.mark.parametrize("plan", [{"tp": 2, "pp": 2}, {"tp": 1, "pp": 2, "dp": 2}], ids=["tp2-pp2", "tp1-pp2-dp2"])
def test_the_default_example_gives_the_same_result_with_and_without_skip_ahead(plan):
    specs = ax.load_specs()
    p = ax.Plan(gpu="h100-sxm-80gb", **plan)
    on = ax.simulate(specs, p, cut_early=True, record_log=True)
    off = ax.simulate(specs, p, cut_early=True, record_log=True, skip_ahead=False)
    assert_same(on, off)


@st.composite
def pipelines(draw):
    """A random pipelined replica (any family, pp 2-4, stage costs and sends) and a decode-heavy workload."""
    n = draw(st.integers(1, 24))
    gaps = draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    w = Workload("prop", np.cumsum(np.array(gaps) * 0.0731953), np.array(draw(st.lists(st.integers(1, 90), min_size=n,
                 max_size=n))), np.array(draw(st.lists(st.integers(1, 400), min_size=n, max_size=n))),
                 tuple(f"r{i}" for i in range(n)), "hypothesis")
    pp = draw(st.integers(2, 4))
    family = draw(st.sampled_from(FAMILIES))
    if family == "sglang":
        cfg = SchedulerConfig.sglang(num_kv_tokens=draw(st.integers(60, 3000)) * pp, max_model_len=600,
                                     async_output=False, max_running_requests=draw(st.one_of(st.none(),
                                                                                               st.integers(1, 8))))
    else:
        cfg = SchedulerConfig(family=family, num_kv_blocks=draw(st.integers(8, 300)) * pp,
                              block_size=draw(st.sampled_from([1, 4, 16])), chunked_prefill=draw(st.booleans()),
                              max_num_batched_tokens=64, max_num_seqs=draw(st.integers(1, 8)), max_model_len=600,
                              watermark=draw(st.sampled_from([0.0, 0.01])), async_output=False)
    stages = tuple(LinearStageCost(a=0.0123457 * draw(st.integers(1, 6)), b=1.37e-4,
                                   c=draw(st.sampled_from([0.0, 2.9e-6, 4.1e-5])), e=7.3e-5,
                                   host_s=0.00137 if s == 0 else 0.0) for s in range(pp))
    send = draw(st.sampled_from([0.0, 0.0021]))
    return w, [ReplicaSpec(StaticReplicaCost(stages, send_latency_s=send), cfg)]


@settings(max_examples=80, deadline=None, derandomize=True)
@given(pipelines())
def test_random_pipelines_skip_ahead_with_step_by_step_results(scenario):
    w, replicas = scenario
    _same_with_and_without_skip(replicas, w)
