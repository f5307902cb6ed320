"""Unit tests of the simulator's building blocks: KV pool, decode pool, closed forms, quantiles, routers, config."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apex_opt.errors import SpecError
from apex_opt.sim import BatchShape, LinearStageCost, SchedulerConfig
from apex_opt.sim.engine import Simulation, _kv_run_integral
from apex_opt.sim.metrics import weighted_quantiles
from apex_opt.sim.router import LeastLoadedRouter, RandomRouter, RoundRobinRouter, make_router
from apex_opt.sim.state import DecodePool, KVCache, Request


def test_kv_cache_checks_bounds():
    kv = KVCache(4, 16)
    kv.take(3)
    assert (kv.free, kv.used, kv.blocks_for(17)) == (1, 3, 2)
    with pytest.raises(RuntimeError, match="cannot take"):
        kv.take(2)
    with pytest.raises(RuntimeError, match="exceed the capacity"):
        kv.give(4)
    with pytest.raises(ValueError):
        KVCache(0, 16)


def _pool(bs: int, lengths: list[int], caps: list[int], clip: int = 0, start: int = 0) -> DecodePool:
    pool = DecodePool(bs, clip)
    pool.E = pool.E_done = start  # pool steps taken before these members joined (the phase is relative to E)
    for i, (n, c) in enumerate(zip(lengths, caps, strict=True)):
        req = Request(i, f"r{i}", n, c)
        pool.add(req, n, 1)
    return pool


@settings(max_examples=60, deadline=None, derandomize=True)
@given(bs=st.sampled_from([1, 2, 4, 16]), lengths=st.lists(st.integers(1, 90), min_size=1, max_size=12),
       steps=st.integers(0, 70), first_skip=st.integers(0, 20))
def test_decode_pool_block_growth_matches_brute_force(bs, lengths, steps, first_skip):
    pool = _pool(bs, lengths, [10_000] * len(lengths), start=first_skip)
    before = {i: pool.blocks(m) for i, m in pool.members.items()}
    grow = pool.allocs_window(pool.E, steps)
    brute = sum(-(-(n + steps) // bs) for n in lengths) - sum(before.values())
    assert grow == brute
    # step by step
    total = 0
    for _ in range(steps):
        total += pool.allocs_next()
        pool.E += 1
    assert total == brute
    assert pool.sum_base + len(pool) * pool.E == sum(lengths) + steps * len(lengths)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(bs=st.sampled_from([1, 2, 4, 16]), lengths=st.lists(st.integers(1, 90), min_size=1, max_size=10),
       m=st.integers(0, 80), alpha=st.floats(0.001, 1.0), beta=st.floats(0.0, 0.01))
def test_kv_run_integral_matches_brute_force(bs, lengths, m, alpha, beta):
    pool = _pool(bs, lengths, [10_000] * len(lengths))
    pool.E += 1  # step 0 of the run is already allocated
    first = pool.E
    brute = 0.0
    cum = 0
    for j in range(1, m + 1):
        cum += pool.hist[(-(first + j - 1)) % bs]
        brute += cum * (alpha + beta * j)
    assert _kv_run_integral(pool.hist, bs, first, m, alpha, beta) == pytest.approx(brute, rel=1e-12, abs=1e-9)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(span=st.floats(0.001, 50.0), t0=st.floats(0.001, 2.0), alpha=st.floats(0.001, 1.0),
       beta=st.floats(0.0, 0.01))
def test_steps_before_arrival(span, t0, alpha, beta):
    j = Simulation._steps_before(span, t0, alpha, beta)

    def start(k: int) -> float:  # start time of step k
        return 0.0 if k == 0 else t0 + sum(alpha + beta * i for i in range(1, k))

    assert start(j) < span or j == 0
    assert start(j + 1) >= span * (1 - 1e-12)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(caps=st.lists(st.integers(1, 60), min_size=1, max_size=10), clip=st.integers(1, 30), steps=st.integers(0, 80))
def test_sglang_reservation_sum(caps, clip, steps):
    pool = _pool(1, [5] * len(caps), caps, clip)
    for _ in range(steps):
        pool.E += 1
        pool.E_done = pool.E
        pool.pop_finished()
        brute = sum(min(max(m.cap - pool.generated(m), 0), clip) for m in pool.members.values())
        assert pool.reserve_sum() == brute


def test_weighted_quantiles_match_expanded_sample():
    rng = np.random.default_rng(0)
    vals = rng.uniform(0, 1, 50)
    wts = rng.integers(1, 5, 50).astype(float)
    segs = np.array([[0.2, 0.01, 1, 30, 3], [0.9, 0.0, 1, 10, 2]], float)
    expanded = list(np.repeat(vals, wts.astype(int)))
    for a, b, j0, j1, w in segs:
        for j in range(int(j0), int(j1) + 1):
            expanded += [a + b * j] * int(w)
    expanded = np.sort(expanded)
    qs = (0.5, 0.9, 0.99)
    got = weighted_quantiles(vals, wts, segs.ravel(), qs)
    for q, g in zip(qs, got, strict=True):
        k = int(np.ceil(q * len(expanded))) - 1
        assert g == pytest.approx(expanded[k], abs=1e-9)


def test_round_robin_is_k_mod_dp():
    assert RoundRobinRouter([1.0] * 4).precompute(10).tolist() == [k % 4 for k in range(10)]
    assert RoundRobinRouter([3.0, 1.0]).precompute(8).tolist().count(0) == 6


def test_least_loaded_ties_go_to_lowest_index_and_weights_scale():
    r = LeastLoadedRouter([1.0, 1.0, 1.0])
    assert r.pick([2, 1, 1]) == 1
    assert LeastLoadedRouter([1.0, 2.0]).pick([2, 3]) == 1  # 3/2 < 2/1


def test_random_router_is_seeded():
    a = RandomRouter([1, 1, 1], np.random.default_rng(5)).precompute(50)
    b = RandomRouter([1, 1, 1], np.random.default_rng(5)).precompute(50)
    assert a.tolist() == b.tolist()
    with pytest.raises(SpecError, match="unknown router"):
        make_router("fastest", [1.0], np.random.default_rng(0))


def test_scheduler_config_defaults_and_validation():
    c = SchedulerConfig.vllm_v0(num_kv_blocks=10, max_model_len=131072, pp=2)
    assert (c.chunked_prefill, c.max_num_batched_tokens, c.async_output) == (True, 512, False)
    assert SchedulerConfig.vllm_v0(num_kv_blocks=10, max_model_len=4096).max_num_batched_tokens == 4096
    v1 = SchedulerConfig.vllm_v1(num_kv_blocks=10, max_model_len=4096, large_gpu=False)
    assert (v1.max_num_batched_tokens, v1.max_num_seqs) == (2048, 256)
    sg = SchedulerConfig.sglang(num_kv_tokens=1000, max_model_len=65536)
    assert (sg.block_size, sg.async_output, sg.sglang_max_running(1000)) == (1, True, 500)
    with pytest.raises(SpecError, match="family"):
        SchedulerConfig(family="tgi", num_kv_blocks=1, max_model_len=1)
    with pytest.raises(SpecError, match="max_num_seqs"):
        SchedulerConfig.vllm_v0(num_kv_blocks=10, max_model_len=4096, max_num_batched_tokens=128)
    with pytest.raises(SpecError, match="num_kv_blocks"):
        SchedulerConfig.vllm_v1(num_kv_blocks=0, max_model_len=4096)


def test_linear_stage_cost_decode_coeffs_are_exact():
    s = LinearStageCost(a=0.01, b=2e-5, c=3e-8, e=1e-5)
    for B, ctx in [(1, 10), (7, 1234), (256, 500_000)]:
        c0, c1 = s.decode_coeffs(B)
        t = s.iteration_time(BatchShape(B, B, B, ctx, 0.0, False))
        assert t == pytest.approx(c0 + c1 * ctx, rel=1e-14)
