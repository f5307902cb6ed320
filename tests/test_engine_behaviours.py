"""Engine behaviours are declared fields (``apex_opt.sim.config.EngineBehaviour``), each family's in one table
(``BEHAVIOURS``); the simulator reads the fields, never the family name."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from apex_opt.catalog import get_engine, get_gpu, get_model
from apex_opt.errors import SpecError
from apex_opt.perf.engine_rules import check_limits, resolve_engine, scheduler_config
from apex_opt.schema.engine import EngineSpec
from apex_opt.schema.plan import Plan
from apex_opt.sim import LinearStageCost, ReplicaSpec, SchedulerConfig, StaticReplicaCost
from apex_opt.sim.config import BEHAVIOURS, FAMILIES, EngineBehaviour, PrefixCacheRules
from apex_opt.sim.engine import Simulation
from apex_opt.workload import Workload

SIM = Path(__file__).resolve().parent.parent / "apex_opt" / "sim"
UNIT = LinearStageCost(a=1.0, b=0.0, c=0.0, d=0.0, e=0.0)
VLLM_CACHE = PrefixCacheRules(dedupe=False, insert_at_schedule=True, decode_insert=True, partial_evict=True)
SGLANG_CACHE = PrefixCacheRules(dedupe=True, insert_at_schedule=False, decode_insert=False, partial_evict=False)


def simulate(cfg: SchedulerConfig, prompts: list[int], outputs: list[int], segments=None) -> Simulation:
    """Run ``cfg`` on requests arriving together, checking the internal invariants after every step; the
    result is ``sim.result``."""
    n = len(prompts)
    w = Workload("t", np.zeros(n), np.array(prompts), np.array(outputs), tuple(f"r{i}" for i in range(n)), "test",
                 segments)
    sim = Simulation([ReplicaSpec(StaticReplicaCost((UNIT,)), cfg)], w, record_log=True, debug=True)
    sim.result = sim.run()  # type: ignore[attr-defined]
    return sim


def test_each_familys_behaviour_is_what_the_table_says() -> None:
    assert set(BEHAVIOURS) == set(FAMILIES)
    assert BEHAVIOURS["vllm-v0"] == EngineBehaviour(batched_tokens_cover_seqs=True, clip_reserved_new_tokens=False,
                                                    whole_prompt_blocks_at_schedule=True, prefix_cache=VLLM_CACHE)
    assert BEHAVIOURS["vllm-v1"] == EngineBehaviour(batched_tokens_cover_seqs=True, clip_reserved_new_tokens=False,
                                                    whole_prompt_blocks_at_schedule=False, prefix_cache=VLLM_CACHE)
    assert BEHAVIOURS["sglang"] == EngineBehaviour(batched_tokens_cover_seqs=False, clip_reserved_new_tokens=True,
                                                   whole_prompt_blocks_at_schedule=False, prefix_cache=SGLANG_CACHE)


def test_a_config_without_a_behaviour_gets_its_familys_and_a_new_family_brings_its_own() -> None:
    v0 = SchedulerConfig.vllm_v0(num_kv_blocks=100, max_model_len=4096)
    v1 = SchedulerConfig.vllm_v1(num_kv_blocks=100, max_model_len=4096)
    sg = SchedulerConfig.sglang(num_kv_tokens=1600, max_model_len=4096)
    assert (v0.behaviour, v1.behaviour, sg.behaviour) == (BEHAVIOURS["vllm-v0"], BEHAVIOURS["vllm-v1"],
                                                          BEHAVIOURS["sglang"])
    assert v1.with_(family="vllm-v0").behaviour == BEHAVIOURS["vllm-v0"]
    custom = v1.with_(behaviour=BEHAVIOURS["vllm-v1"].with_(clip_reserved_new_tokens=True))
    assert custom.with_(family="vllm-v0").behaviour == custom.behaviour  # an override is kept


def test_the_token_budget_must_cover_max_num_seqs_only_where_the_behaviour_says_so() -> None:
    with pytest.raises(SpecError, match="max_num_batched_tokens"):
        SchedulerConfig.vllm_v1(num_kv_blocks=100, max_model_len=4096, max_num_batched_tokens=64, max_num_seqs=256)
    lax = BEHAVIOURS["vllm-v1"].with_(batched_tokens_cover_seqs=False)
    cfg = SchedulerConfig.vllm_v1(num_kv_blocks=100, max_model_len=4096, max_num_batched_tokens=64, max_num_seqs=256,
                                  behaviour=lax)
    assert cfg.max_num_batched_tokens == 64
    strict = BEHAVIOURS["sglang"].with_(batched_tokens_cover_seqs=True)
    with pytest.raises(SpecError, match="max_num_batched_tokens"):
        SchedulerConfig.sglang(num_kv_tokens=1600, max_model_len=4096, max_num_batched_tokens=64, max_num_seqs=256,
                               behaviour=strict)


def test_vllm_v1_with_clipped_reservations_keeps_sglangs_reservation_sum_in_its_decode_pool() -> None:
    base = SchedulerConfig.vllm_v1(num_kv_blocks=64, max_model_len=1000, max_num_batched_tokens=256, max_num_seqs=8,
                                   clip_max_new_tokens=5)
    clipped = base.with_(behaviour=BEHAVIOURS["vllm-v1"].with_(clip_reserved_new_tokens=True))
    plain_sim = simulate(base, [40, 30, 20], [12, 3, 9])
    clip_sim = simulate(clipped, [40, 30, 20], [12, 3, 9])  # debug: the pool's clipped sum == brute force each step
    assert plain_sim.engines[0].pool.clip == 0
    assert clip_sim.engines[0].pool.clip == 5
    # vLLM V1's policy does not read the reservation, so the schedule is the same
    assert clip_sim.result.records.finish_s.tolist() == plain_sim.result.records.finish_s.tolist()


def test_the_whole_prompt_invariant_is_checked_where_the_behaviour_declares_it() -> None:
    kw = {"num_kv_blocks": 64, "max_model_len": 1000, "max_num_batched_tokens": 32, "max_num_seqs": 8}
    simulate(SchedulerConfig.vllm_v0(chunked_prefill=True, **kw), [100], [2])  # V0 allocates the whole prompt
    simulate(SchedulerConfig.vllm_v1(**kw), [100], [2])  # V1 allocates chunk by chunk, and says so
    wrong = BEHAVIOURS["vllm-v1"].with_(whole_prompt_blocks_at_schedule=True)
    with pytest.raises(AssertionError):  # a chunked V1 prompt holds the blocks of its first chunk only
        simulate(SchedulerConfig.vllm_v1(behaviour=wrong, **kw), [100], [2])


def test_the_prefix_cache_follows_the_configs_rules_not_its_family() -> None:
    segments = [((7, 64), (1, 8)), ((7, 64), (2, 8))]
    vllm_like = BEHAVIOURS["sglang"].with_(prefix_cache={"dedupe": False, "partial_evict": True})
    sg = SchedulerConfig.sglang(num_kv_tokens=1024, max_model_len=1000)
    for cfg, dedupe, partial in ((sg, True, False), (sg.with_(behaviour=vllm_like), False, True)):
        cache = simulate(cfg, [72, 72], [4, 4], segments).engines[0].cache
        assert cache is not None
        assert (cache.dedupe, cache.at_schedule, cache.decode_insert, cache.partial_evict) == (dedupe, False, False,
                                                                                               partial)


def test_an_engine_spec_may_override_a_behaviour_under_scheduler() -> None:
    model, h100 = get_model("llama-3.1-8b"), get_gpu("h100-sxm-80gb")
    plan = Plan(gpu="h100-sxm-80gb", engine="vllm-v1")
    data = get_engine("vllm-v1").model_dump()
    data["scheduler"]["behaviour"] = {"clip_reserved_new_tokens": True, "prefix_cache": {"dedupe": True}}
    custom = EngineSpec.parse({**data, "name": "vllm-v1-clipped"}, source="test", kind="engine")
    stock = scheduler_config(resolve_engine(get_engine("vllm-v1"), plan, model, h100), 1000)
    cfg = scheduler_config(resolve_engine(custom, plan, model, h100), 1000)
    assert stock.behaviour == BEHAVIOURS["vllm-v1"]
    assert cfg.behaviour == BEHAVIOURS["vllm-v1"].with_(clip_reserved_new_tokens=True, prefix_cache={"dedupe": True})
    assert cfg.family == "vllm-v1" and cfg.with_(behaviour=None) == stock.with_(behaviour=None)


def _with_behaviour(engine: str, **rules: object) -> EngineSpec:
    """A copy of a catalog engine whose simulator rules (``scheduler.behaviour``) differ as given."""
    data = get_engine(engine).model_dump()
    data["scheduler"]["behaviour"] = rules
    return EngineSpec.parse({**data, "name": f"{engine}-custom"}, source="test", kind="engine")


def _with_rules(engine: str, **rules: object) -> EngineSpec:
    """A copy of a catalog engine whose settings rules (the spec's own fields, ``FAMILY_RULES``) differ as given."""
    return EngineSpec.parse({**get_engine(engine).model_dump(), "name": f"{engine}-custom", **rules}, source="test",
                            kind="engine")


def test_the_engine_limit_checks_follow_the_engines_declared_rules_not_its_family() -> None:
    model, h100 = get_model("llama-3.1-8b"), get_gpu("h100-sxm-80gb")
    low = Plan(gpu="h100-sxm-80gb", engine="vllm-v1", max_num_batched_tokens=64, max_num_seqs=128)
    kw = {"budget": 64, "max_seqs": 128, "chunked": True, "max_model_len": 4096}
    with pytest.raises(SpecError, match="below max_num_seqs 128"):
        check_limits(get_engine("vllm-v1"), low, model, h100, **kw)
    check_limits(_with_behaviour("vllm-v1", batched_tokens_cover_seqs=False), low, model, h100, **kw)
    unchunked = {**kw, "budget": 2048, "max_seqs": 64, "chunked": False}
    short = low.model_copy(update={"max_num_batched_tokens": 2048, "max_num_seqs": 64})
    with pytest.raises(SpecError, match="below max_model_len 4096 with chunked prefill off"):
        check_limits(get_engine("vllm-v1"), short, model, h100, **unchunked)
    check_limits(_with_rules("vllm-v1", unchunked_budget_covers_model_len=False), short, model, h100, **unchunked)
    check_limits(get_engine("sglang-0.4"), short.model_copy(update={"engine": "sglang-0.4"}), model, h100, **unchunked)


def test_only_an_engine_that_raises_a_low_budget_itself_gets_it_raised_to_max_num_seqs() -> None:
    model, h100 = get_model("llama-3.1-8b"), get_gpu("h100-sxm-80gb")
    plan = Plan(gpu="h100-sxm-80gb", engine="vllm-0.6", max_num_seqs=256, max_num_batched_tokens=256)
    stock = resolve_engine(get_engine("vllm-0.6"), plan, model, h100)
    kept = resolve_engine(_with_rules("vllm-0.6", budget_raised_to_seqs=False), plan, model, h100)
    low = {"max_num_batched_tokens": 128}
    assert scheduler_config(dataclasses.replace(stock, **low), 1000).max_num_batched_tokens == 256
    with pytest.raises(SpecError, match="must be >= max_num_seqs"):  # not raised: vLLM's own check refuses it
        scheduler_config(dataclasses.replace(kept, **low), 1000)


def test_no_simulator_module_tests_the_family_name_except_to_validate_it_and_look_up_its_policy() -> None:
    names = "|".join(re.escape(f) for f in FAMILIES)
    compare = re.compile(rf"family\s*(==|!=|\bin\b|\bnot in\b)|(==|!=)\s*[\"']({names})[\"']|[\"']({names})[\"']\s*(==|!=)")
    found = []
    for path in sorted(SIM.glob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if compare.search(code) and "not in FAMILIES" not in code:
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, found
