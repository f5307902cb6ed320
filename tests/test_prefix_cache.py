"""Automatic prefix caching in the simulator (``apex_opt.sim.prefix_cache``), as vLLM and SGLang do it.

Most cases cost exactly 1 s per iteration (``LinearStageCost(a=1)``) so the logs can be checked by hand; the
simulations run with ``debug=True``, which checks the KV accounting (held + free == capacity, cached blocks
counted once) and the radix tree after every iteration.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from apex_opt.sim import LinearStageCost, ReplicaSpec, SchedulerConfig, StaticReplicaCost
from apex_opt.sim.engine import Simulation
from apex_opt.sim.prefix_cache import CachedKV, PrefixCache, request_path
from apex_opt.workload import Workload

UNIT = LinearStageCost(a=1.0, b=0.0, c=0.0, d=0.0, e=0.0)


def wl(arrivals, prompts, outputs, segments, output_ids=None) -> Workload:
    return Workload("t", np.array(arrivals, float), np.array(prompts), np.array(outputs),
                    tuple(f"r{i}" for i in range(len(arrivals))), "test", segments, output_ids)


def run(cfg: SchedulerConfig, w, stage=UNIT, *, skip_ahead: bool = False, replicas: int = 1,
        router: str = "round-robin"):
    reps = [ReplicaSpec(StaticReplicaCost((stage,)), cfg)] * replicas
    sim = Simulation(reps, w, router=router, record_log=True, debug=True, skip_ahead=skip_ahead)
    res = sim.run()
    for e in sim.engines:  # everything released at the end; the cached blocks are all evictable
        assert e.kv.free == e.kv.capacity
        if e.cache is not None:
            assert e.cache.locked == 0
    return sim, res


def v1(**kw) -> SchedulerConfig:
    base = {"num_kv_blocks": 64, "max_model_len": 1000, "max_num_batched_tokens": 256, "max_num_seqs": 8}
    return SchedulerConfig.vllm_v1(**{**base, **kw})


def sglang(**kw) -> SchedulerConfig:
    return SchedulerConfig.sglang(**{"num_kv_tokens": 1024, "max_model_len": 1000, **kw})


def v0(**kw) -> SchedulerConfig:
    base = {"num_kv_blocks": 64, "max_model_len": 1000, "chunked_prefill": True, "max_num_batched_tokens": 256,
            "max_num_seqs": 8, "async_output": False, "metrics_stamp": "forward", "prefix_caching": True}
    return SchedulerConfig.vllm_v0(**{**base, **kw})


FAMILIES = {"vllm-v1": v1, "sglang": sglang, "vllm-v0": v0}


def prefills(res, rid: str) -> list[int]:
    return [e[3] for e in res.log if e[0] == rid and e[1] == "prefill"]


# ------------------------------------------------------------------------------------------------ hits
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_later_request_hits_the_shared_system_prompt_and_prefills_only_the_rest(family):
    """r1 shares r0's 80-token system prompt (5 blocks of 16: whole blocks for vLLM too), so it prefills only
    its own 20 tokens."""
    w = wl([0, 5], [100, 100], [2, 2], [((1, 80), (2, 20)), ((1, 80), (3, 20))])
    _, res = run(FAMILIES[family](), w)
    assert res.records.cached_tokens.tolist() == [0, 80]
    assert prefills(res, "r0") == [100] and prefills(res, "r1") == [20]
    assert res["prefix_cache_hit_rate"] == pytest.approx(80 / 200)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_only_uncached_tokens_cost_prefill_time_so_ttft_drops(family):
    stage = LinearStageCost(a=0.01, b=1e-3, c=0.0, d=0.0, e=0.0)  # 1 ms per computed token
    segs = tuple(((7, 960), (100 + i, 40)) for i in range(4))
    w = wl([0, 10, 20, 30], [1000] * 4, [3] * 4, segs)
    cfg = FAMILIES[family](num_kv_blocks=200, max_model_len=4000) if family != "sglang" else \
        sglang(num_kv_tokens=4000, max_model_len=4000)
    _, on = run(cfg, w, stage)
    _, off = run(cfg.with_(prefix_caching=False), w, stage)
    assert "prefix_cache_hit_rate" not in off.summary() and off["num_completed"] == 4
    assert on.records.cached_tokens.tolist() == [0, 960, 960, 960]
    ttft_on, ttft_off = on.records.ttft_s, off.records.ttft_s
    assert ttft_on[0] == pytest.approx(ttft_off[0])
    # the hits compute 40 tokens instead of 1000 (vLLM 0.6 charges the budget only for uncached tokens too)
    assert np.all(ttft_on[1:] < 0.2 * ttft_off[1:])


def test_shared_blocks_count_once_in_kv_use():
    """r1 joins while r0 decodes; its 64-token prefix (4 blocks) is r0's, held once. At the peak r0 holds 7 blocks
    (99 tokens) and r1 6 (96 tokens): 13 without caching, 13 - 4 = 9 with it."""
    w = wl([0, 2.5], [80, 80], [20, 20], [((1, 64), (2, 16)), ((1, 64), (3, 16))])
    sim_on, on = run(v1(), w)
    sim_off, off = run(v1(prefix_caching=False), w)
    assert on.records.cached_tokens.tolist() == [0, 64]
    assert sim_off.max_kv_seen == [13] and sim_on.max_kv_seen == [9]
    assert on["kv_util_max"] == pytest.approx(9 / 64) and off["kv_util_max"] == pytest.approx(13 / 64)


# ------------------------------------------------------------------------------------------------ granularity
@pytest.mark.parametrize(("family", "prompt", "shared_hit", "same_prompt_hit"), [
    ("vllm-v1", 70, 64, 64),   # full 16-token blocks only
    ("vllm-v1", 64, 64, 48),   # a fully cached prompt recomputes its last block (hit <= prompt - 1, in blocks)
    ("vllm-v0", 70, 64, 64),
    ("sglang", 70, 70, 69),    # token-granular radix cache; one token is always computed
    ("sglang", 64, 64, 63),
])
def test_hits_are_rounded_to_blocks_and_leave_at_least_one_token_to_compute(family, prompt, shared_hit,
                                                                              same_prompt_hit):
    shared = wl([0, 5], [prompt + 10] * 2, [2, 2], [((1, prompt), (2, 10)), ((1, prompt), (3, 10))])
    same = wl([0, 5], [prompt] * 2, [2, 2], [((1, prompt),), ((1, prompt),)])
    assert run(FAMILIES[family](), shared)[1].records.cached_tokens.tolist() == [0, shared_hit]
    assert run(FAMILIES[family](), same)[1].records.cached_tokens.tolist() == [0, same_prompt_hit]


# ------------------------------------------------------------------------------------------------ multi-turn
@pytest.mark.parametrize(("cfg", "hit"), [
    (v1(), 96),                              # r0's KV: 80 + 19 tokens (the last answer token has none): 6 blocks
    (sglang(), 100),                         # the overlap scheduler's extra step computed the last token's KV
    (sglang(async_output=False), 99),
])
def test_a_follow_up_turn_reuses_the_previous_answer(cfg, hit):
    w = wl([0, 40], [80, 110], [20, 5], [((1, 50), (2, 30)), ((1, 50), (2, 30), (900, 20), (3, 10))],
           output_ids=(900, 901))
    _, res = run(cfg, w)
    assert res.records.cached_tokens.tolist() == [0, hit]
    assert prefills(res, "r1") == [110 - hit]


def test_a_turn_whose_answer_is_not_cached_hits_only_the_prompt():
    """Without output_ids every answer is private content: the follow-up hits r0's prompt only."""
    w = wl([0, 40], [80, 110], [20, 5], [((1, 50), (2, 30)), ((1, 50), (2, 30), (900, 20), (3, 10))])
    assert run(sglang(), w)[1].records.cached_tokens.tolist() == [0, 80]


# ------------------------------------------------------------------------------------------------ preemption
def test_a_preempted_request_hits_its_own_cached_blocks_when_readmitted():
    """vLLM keeps a preempted request's full blocks cached: r1 (40-token prompt, 8 tokens generated, 47 tokens of
    KV = 11 blocks of 4) comes back with 44 tokens cached and recomputes 4 of its 48, not all 48."""
    w = wl([0, 0.5], [40, 40], [12, 30], [((10, 40),), ((11, 40),)])
    cfg = v1(num_kv_blocks=24, block_size=4, max_num_batched_tokens=64)
    _, on = run(cfg, w)
    _, off = run(cfg.with_(prefix_caching=False), w)
    assert [e for e in on.log if e[0] == "r1" and e[1] in ("prefill", "preempt")] == [
        ("r1", "prefill", 1.0, 40), ("r1", "preempt", 9.0, 8), ("r1", "prefill", 12.0, 4)]
    assert prefills(off, "r1") == [40, 48]
    assert on.records.cached_tokens.tolist() == [0, 0]  # the record keeps the first admission's hit


# ------------------------------------------------------------------------------------------------ eviction
def fake(segments, out_tokens=1, out_id=None) -> SimpleNamespace:
    path, ends = request_path(segments, out_id if out_id is not None else object(), out_tokens)
    return SimpleNamespace(path=path, ends=ends, target=ends[-2] if len(ends) > 1 else 0, node=None, shared=0)


def cache_with(family: str, capacity: int = 10) -> tuple[CachedKV, PrefixCache]:
    kv = CachedKV(capacity, 1)
    return kv, PrefixCache(kv, family)


def compute(kv: CachedKV, cache: PrefixCache, req, release: bool = True) -> None:
    """``req`` computes its prompt from scratch, the tokens join the tree, and (``release``) it finishes."""
    kv.take(req.target)
    cache.advance(req, req.target)
    kv.give(req.target - req.shared)
    if release:
        cache.unlock(req)


@pytest.mark.parametrize("family", ["sglang", "vllm-v1"])
def test_least_recently_used_leaves_are_evicted_and_referenced_nodes_never(family):
    kv, cache = cache_with(family)
    a, b, c = fake([(1, 3)]), fake([(2, 3)]), fake([(3, 2)])
    compute(kv, cache, a)
    compute(kv, cache, b)
    compute(kv, cache, c, release=False)  # still running: referenced
    assert (kv.free, cache.evictable, cache.locked) == (8, 6, 2)  # cached blocks nobody uses count as free
    kv.take(4)  # 2 plainly free: 2 more must come from the cache, oldest first
    probe_a, probe_b = fake([(1, 3)], 1), fake([(2, 3)], 1)
    probe_a.target = probe_b.target = 4
    if family == "sglang":  # whole leaves: all of a goes
        assert cache.lookup(probe_a) == (0, 0) and cache.lookup(probe_b) == (3, 3)
    else:  # vLLM: block by block, the tail of the least recently used leaf first
        assert cache.lookup(probe_a) == (1, 1) and cache.lookup(probe_b) == (3, 3)
    kv.take(kv.free)  # everything else: b goes too, c stays
    assert cache.evictable == 0 and cache.locked == 2 and cache.lookup(probe_b) == (0, 0)
    with pytest.raises(RuntimeError, match="cannot take 1 blocks"):
        kv.take(1)
    cache.check()


def test_a_hit_locks_the_matched_nodes_so_they_stop_counting_as_free():
    kv, cache = cache_with("sglang")
    compute(kv, cache, fake([(1, 4), (2, 2)]))
    r = fake([(1, 4), (3, 3)])
    assert cache.lookup(r) == (4, 4)  # 4 evictable tokens would be locked
    cache.acquire(r, 4)
    assert (kv.free, cache.evictable, cache.locked, r.shared) == (6, 2, 4, 4)
    cache.check()


def test_the_hit_rate_falls_as_the_cache_shrinks():
    """80 requests, each one of 6 system prompts (160 tokens) plus its own 20, spread out in time: a big cache
    serves ~82% of the prompt tokens, a cache that holds about one request ~20%."""
    rng = np.random.default_rng(0)
    n = 80
    fam = rng.integers(0, 6, n)
    segs = tuple(((int(f), 160), (1000 + i, 20)) for i, f in enumerate(fam))
    w = wl(np.arange(n) * 3.0, [180] * n, [4] * n, segs)
    for make in (lambda tokens: v1(num_kv_blocks=tokens // 16), lambda tokens: sglang(num_kv_tokens=tokens)):
        rates = [run(make(tokens), w)[1]["prefix_cache_hit_rate"] for tokens in (4000, 960, 640, 400, 200)]
        assert rates[0] == pytest.approx(1 - (6 * 180 + (n - 6) * 20) / (n * 180))  # only first sights miss
        assert all(x >= y for x, y in itertools.pairwise(rates)) and rates[-1] < 0.5 * rates[0]


# ------------------------------------------------------------------------------------------------ routing
def test_the_prefix_aware_router_keeps_requests_with_the_same_prefix_on_one_replica():
    """Two system prompts arriving in pairs (0, 0, 1, 1, ...): round-robin splits every pair over both replicas,
    so each replica computes both prompts; the prefix-aware router sends each prompt to one replica (the first
    sight of a prompt goes to the replica with the smallest tree)."""
    n = 40
    fam = [(i // 2) % 2 for i in range(n)]
    segs = tuple(((f, 256), (1000 + i, 20)) for i, f in enumerate(fam))
    w = wl(np.arange(n) * 0.5, [276] * n, [8] * n, segs)
    _, aware = run(v1(num_kv_blocks=400), w, replicas=2, router="prefix-aware")
    _, rr = run(v1(num_kv_blocks=400), w, replicas=2, router="round-robin")
    assert aware.records.replica.tolist() == fam
    assert aware["prefix_cache_hit_rate"] == pytest.approx((n - 2) * 256 / (n * 276))
    assert rr["prefix_cache_hit_rate"] == pytest.approx((n - 4) * 256 / (n * 276))


# ------------------------------------------------------------------------------------------------ determinism
def mixed_workload(seed: int, n: int = 60) -> Workload:
    """Shared system prompts, follow-up turns and unique prompts, arriving fast enough to preempt."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(0.05, n))
    segs: list[tuple] = []
    prompts, outputs, out_ids = [], [], []
    for i in range(n):
        if segs and rng.random() < 0.4:
            j = int(rng.integers(0, len(segs)))
            base = list(segs[j]) + [(out_ids[j], outputs[j])]
        else:
            f = int(rng.integers(0, 3))
            base = [(f, (50, 90, 33)[f])]
        seg = tuple(base + [(10_000 + i, int(rng.integers(1, 60)))])
        if sum(t for _, t in seg) > 400:
            seg = ((20_000 + i, 50),)
        segs.append(seg)
        prompts.append(sum(t for _, t in seg))
        outputs.append(int(rng.integers(1, 40)))
        out_ids.append(30_000 + i)
    return wl(arrival, prompts, outputs, tuple(segs), tuple(out_ids))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_results_are_deterministic_and_the_skip_ahead_exact(family, seed):
    w = mixed_workload(seed)
    stage = LinearStageCost(a=0.01, b=1e-3, c=1e-5, d=1e-7, e=1e-4)
    cfg = {"vllm-v1": v1(num_kv_blocks=150, block_size=4, max_num_batched_tokens=64),
           "sglang": sglang(num_kv_tokens=600, chunked_prefill_size=64, max_prefill_tokens=128),
           "vllm-v0": v0(num_kv_blocks=150, block_size=4, max_num_batched_tokens=64)}[family]
    _, a = run(cfg, w, stage, skip_ahead=True)
    _, b = run(cfg, w, stage, skip_ahead=True)
    _, c = run(cfg, w, stage, skip_ahead=False)
    sa, sb = a.summary(), b.summary()
    assert a.log == b.log and sa.keys() == sb.keys()
    assert all(sa[k] == sb[k] or (sa[k] != sa[k] and sb[k] != sb[k]) for k in sa)
    assert a.records.cached_tokens.tolist() == c.records.cached_tokens.tolist()
    assert np.allclose(a.records.finish_s, c.records.finish_s, rtol=1e-9, atol=1e-9)
    assert [e[:2] for e in a.log] == [e[:2] for e in c.log]
    assert a["prefix_cache_hit_rate"] > 0.3


@pytest.mark.parametrize("make", [v1, sglang])
def test_without_segments_caching_changes_nothing(make):
    rng = np.random.default_rng(3)
    n = 200
    w = Workload("t", np.cumsum(rng.exponential(0.05, n)), rng.integers(10, 300, n), rng.integers(1, 60, n),
                 tuple(map(str, range(n))), "test")
    cfg = make(num_kv_blocks=120) if make is v1 else make(num_kv_tokens=2000)
    _, on = run(cfg, w, LinearStageCost())
    _, off = run(cfg.with_(prefix_caching=False), w, LinearStageCost())
    assert on.log == off.log
    for name in ("first_token_s", "finish_s", "preemptions", "generated"):
        assert getattr(on.records, name).tobytes() == getattr(off.records, name).tobytes()
    assert on["prefix_cache_hit_rate"] == 0.0 and "prefix_cache_hit_rate" not in off.summary()


# ------------------------------------------------------------------------------------------------ front doors
def test_engines_declare_their_prefix_caching_default_and_simulate_can_override_it():
    import apex_opt as ax
    from apex_opt.simulate import replicas_for, scheduler_config
    from apex_opt.specs import with_engine_settings

    defaults = {name: ax.load_specs(engine=name).engine.scheduler.prefix_caching
                for name in ("vllm-0.6", "vllm-v1", "sglang-0.4")}
    assert defaults == {"vllm-0.6": False, "vllm-v1": True, "sglang-0.4": True}
    specs = ax.load_specs(engine="vllm-0.6", workload="mooncake-sample")
    plan = ax.Plan(gpu="h100-sxm-80gb", tp=8)
    assert "prefix_cache_hit_rate" not in ax.simulate(specs, plan).summary()
    on = ax.simulate(specs, plan, prefix_caching=True)
    assert on["prefix_cache_hit_rate"] > 0.3
    # vLLM 0.6 does not switch chunked prefill on by itself when prefix caching is on
    (replica, _), = replicas_for(with_engine_settings(specs, prefix_caching=True), plan)
    cfg = scheduler_config(replica)
    assert cfg.prefix_caching and not cfg.chunked_prefill
    assert scheduler_config(replicas_for(specs, plan)[0][0]).chunked_prefill
