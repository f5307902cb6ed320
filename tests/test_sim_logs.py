"""Hand-checked event logs of tiny cases, one or more per scheduler family.

Every iteration costs exactly 1 s (``LinearStageCost(a=1)``), so the logs can be checked by hand against the
engine rules of docs/engines.md. Entries are ``(request, event, time, detail)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.sim import LinearStageCost, ReplicaSpec, SchedulerConfig, StaticReplicaCost
from apex_opt.sim.engine import Simulation
from apex_opt.workload import Workload

UNIT = LinearStageCost(a=1.0, b=0.0, c=0.0, d=0.0, e=0.0)


def wl(arrivals, prompts, outputs) -> Workload:
    return Workload("t", np.array(arrivals, float), np.array(prompts), np.array(outputs),
                    tuple(f"r{i}" for i in range(len(arrivals))), "test")


def simulate(cfg: SchedulerConfig, w: Workload, stage=UNIT, skip_ahead: bool = False):
    rep = ReplicaSpec(StaticReplicaCost((stage,)), cfg)
    return Simulation([rep], w, record_log=True, debug=True, skip_ahead=skip_ahead).run()


def decodes(res) -> list[tuple[float, int, int]]:
    """(start, prefill tokens, decodes) per iteration."""
    return [(it[2], it[5], it[6]) for it in res.iterations]


def v0(**kw) -> SchedulerConfig:
    base = {"num_kv_blocks": 64, "max_model_len": 1000, "chunked_prefill": True, "max_num_batched_tokens": 8,
                "max_num_seqs": 4, "block_size": 4, "async_output": False, "metrics_stamp": "forward"}
    base.update(kw)
    return SchedulerConfig.vllm_v0(**base)


@pytest.mark.parametrize("skip", [False, True])
def test_vllm_v0_chunked_async_output(skip):
    """r0's 10-token prompt is chunked 8 + 2; r1 shares the second iteration. Async output processing stamps
    outputs during the next iteration (start + host 0.25 s) and every request runs one extra step."""
    stage = LinearStageCost(a=1.0, b=0.0, c=0.0, d=0.0, e=0.0, host_s=0.25)
    res = simulate(v0(async_output=True, metrics_stamp="next-iteration"), wl([0, 0.5], [10, 4], [3, 2]), stage,
                   skip_ahead=skip)
    assert res.log == (
        ("r0", "arrive", 0.0, 0),
        ("r0", "prefill", 0.0, 8),
        ("r1", "arrive", 0.5, 0),
        ("r0", "prefill", 1.0, 2),
        ("r1", "prefill", 1.0, 4),
        ("r0", "first_token", 2.25, None),
        ("r1", "first_token", 2.25, None),
        ("r1", "finish", 3.25, 2),
        ("r0", "finish", 4.25, 3),
    )
    # r1 finished at step [2, 3) but runs [3, 4) too; r0 likewise runs [4, 5)
    assert decodes(res) == [(0.0, 8, 0), (1.0, 6, 0), (2.0, 0, 2), (3.0, 0, 2), (4.0, 0, 1)]
    assert res.records.ttft_s.tolist() == [2.25, 1.75]


def test_vllm_v0_chunked_sync():
    res = simulate(v0(), wl([0, 0.5], [10, 4], [3, 2]))
    assert res.log == (
        ("r0", "arrive", 0.0, 0),
        ("r0", "prefill", 0.0, 8),
        ("r1", "arrive", 0.5, 0),
        ("r0", "prefill", 1.0, 2),
        ("r1", "prefill", 1.0, 4),
        ("r0", "first_token", 2.0, None),
        ("r1", "first_token", 2.0, None),
        ("r1", "finish", 3.0, 2),
        ("r0", "finish", 4.0, 3),
    )
    assert decodes(res) == [(0.0, 8, 0), (1.0, 6, 0), (2.0, 0, 2), (3.0, 0, 1)]


def test_vllm_v0_chunked_mixes_decode_and_prefill():
    """A new prompt joins the running decode in one mixed iteration (decodes first)."""
    res = simulate(v0(), wl([0, 1.5], [4, 4], [4, 2]))
    assert decodes(res) == [(0.0, 4, 0), (1.0, 0, 1), (2.0, 4, 1), (3.0, 0, 2)]
    assert [e for e in res.log if e[1] in ("first_token", "finish")] == [
        ("r0", "first_token", 1.0, None), ("r1", "first_token", 3.0, None),
        ("r0", "finish", 4.0, 4), ("r1", "finish", 4.0, 2)]


def test_vllm_v0_default_scheduler_prefill_only_iterations():
    """Without chunked prefill a waiting prompt gets a prefill-only iteration; running decodes wait."""
    cfg = v0(max_model_len=16, chunked_prefill=False, max_num_batched_tokens=16)
    res = simulate(cfg, wl([0, 0.5], [10, 4], [3, 2]))
    assert res.log == (
        ("r0", "arrive", 0.0, 0),
        ("r0", "prefill", 0.0, 10),
        ("r1", "arrive", 0.5, 0),
        ("r0", "first_token", 1.0, None),
        ("r1", "prefill", 1.0, 4),
        ("r1", "first_token", 2.0, None),
        ("r1", "finish", 3.0, 2),
        ("r0", "finish", 4.0, 3),
    )
    assert decodes(res) == [(0.0, 10, 0), (1.0, 4, 0), (2.0, 0, 2), (3.0, 0, 1)]


def test_vllm_v0_default_head_of_line_blocking_by_token_budget():
    """Prefills of one iteration are bounded by the token budget; FCFS stops at the first that does not fit."""
    cfg = v0(max_model_len=16, chunked_prefill=False, max_num_batched_tokens=16)
    res = simulate(cfg, wl([0, 0, 0], [10, 8, 2], [1, 1, 1]))
    assert decodes(res) == [(0.0, 10, 0), (1.0, 10, 0)]  # r1 (8) does not fit after r0 (10): r2 waits too


def test_vllm_v0_preemption_recompute():
    """6 blocks of 2 tokens. At t=2 no block is free: vLLM 0.6 (BlockSpaceManagerV1) needs one free block per
    running group, so it preempts the last admitted (r1) although neither decode needs a new block. r1 waits at
    the front until r0 finishes, then is re-prefilled over prompt + its 2 tokens (6 tokens)."""
    res = simulate(v0(num_kv_blocks=6, block_size=2), wl([0, 0], [4, 4], [6, 6]))
    assert res.log == (
        ("r0", "arrive", 0.0, 0),
        ("r1", "arrive", 0.0, 0),
        ("r0", "prefill", 0.0, 4),
        ("r1", "prefill", 0.0, 4),
        ("r0", "first_token", 1.0, None),
        ("r1", "first_token", 1.0, None),
        ("r1", "preempt", 2.0, 2),
        ("r0", "finish", 6.0, 6),
        ("r1", "prefill", 6.0, 6),
        ("r1", "finish", 10.0, 6),
    )
    rec = res.records
    assert rec.preemptions.tolist() == [0, 1]
    assert rec.stall_s.tolist() == [0.0, 5.0]  # last token stamped at 2.0, next one at 7.0
    assert rec.generated.tolist() == [6, 6]
    assert res["num_preemptions"] == 1


def test_vllm_v1_preemption_only_when_allocation_fails():
    """V1 allocates blocks incrementally and preempts only when a request's new block cannot be allocated:
    at t=3 (token 7 needs a 4th block). No admission in that step; r1 re-prefills its 7 tokens at t=6."""
    cfg = SchedulerConfig.vllm_v1(num_kv_blocks=6, max_model_len=1000, max_num_batched_tokens=8, max_num_seqs=4,
                                  block_size=2)
    res = simulate(cfg, wl([0, 0], [4, 4], [6, 6]))
    assert res.log == (
        ("r0", "arrive", 0.0, 0),
        ("r1", "arrive", 0.0, 0),
        ("r0", "prefill", 0.0, 4),
        ("r1", "prefill", 0.0, 4),
        ("r0", "first_token", 1.0, None),
        ("r1", "first_token", 1.0, None),
        ("r1", "preempt", 3.0, 3),
        ("r0", "finish", 6.0, 6),
        ("r1", "prefill", 6.0, 7),
        ("r1", "finish", 9.0, 6),
    )
    assert res.records.stall_s.tolist() == [0.0, 4.0]


def test_vllm_v1_chunks_long_prompt_with_one_budget():
    cfg = SchedulerConfig.vllm_v1(num_kv_blocks=64, max_model_len=1000, max_num_batched_tokens=8, max_num_seqs=4,
                                  block_size=4)
    res = simulate(cfg, wl([0, 0.5], [10, 4], [3, 2]))
    assert [e for e in res.log if e[1] == "prefill"] == [
        ("r0", "prefill", 0.0, 8), ("r0", "prefill", 1.0, 2), ("r1", "prefill", 1.0, 4)]
    assert decodes(res) == [(0.0, 8, 0), (1.0, 6, 0), (2.0, 0, 2), (3.0, 0, 1)]


def test_vllm_v1_admits_first_chunk_where_v0_reserves_whole_prompt():
    """8 blocks of 4 tokens, r0 holds 5. A 16-token prompt needs 4 blocks for v0 (whole-prompt reservation):
    it waits. V1 allocates only its first chunk (budget 8 - 1 decode = 7 tokens: 2 blocks) and starts it."""
    w = wl([0, 1.5], [16, 16], [8, 1])
    v0_res = simulate(v0(num_kv_blocks=8, max_num_batched_tokens=16, watermark=0.0), w)
    v1_cfg = SchedulerConfig.vllm_v1(num_kv_blocks=8, max_model_len=1000, max_num_batched_tokens=8,
                                     max_num_seqs=4, block_size=4)
    v1_res = simulate(v1_cfg, w)
    assert next(e for e in v0_res.log if e[0] == "r1" and e[1] == "prefill")[2] > 2.0
    assert next(e for e in v1_res.log if e[0] == "r1" and e[1] == "prefill") == ("r1", "prefill", 2.0, 7)


def test_sglang_prefill_batches_pause_decodes():
    """SGLang runs a prefill (extend) batch whenever one can be formed: r0's decode waits at t=2. The overlap
    scheduler stamps at the end of each forward but lets finished requests run one more decode step."""
    cfg = SchedulerConfig.sglang(num_kv_tokens=256, max_model_len=64, chunked_prefill_size=8)
    res = simulate(cfg, wl([0, 1.5], [4, 4], [4, 2]))
    assert res.log == (
        ("r0", "arrive", 0.0, 0),
        ("r0", "prefill", 0.0, 4),
        ("r0", "first_token", 1.0, None),
        ("r1", "arrive", 1.5, 0),
        ("r1", "prefill", 2.0, 4),
        ("r1", "first_token", 3.0, None),
        ("r1", "finish", 4.0, 2),
        ("r0", "finish", 5.0, 4),
    )
    assert decodes(res) == [(0.0, 4, 0), (1.0, 0, 1), (2.0, 4, 0), (3.0, 0, 2), (4.0, 0, 2), (5.0, 0, 1)]


def test_sglang_chunked_prefill_one_partial_request():
    """A 20-token prompt with chunked_prefill_size=8: chunks 8, 8, 4; r1 joins the last prefill batch."""
    cfg = SchedulerConfig.sglang(num_kv_tokens=256, max_model_len=64, chunked_prefill_size=8)
    res = simulate(cfg, wl([0, 0.5], [20, 3], [2, 2]))
    assert [e for e in res.log if e[1] == "prefill"] == [
        ("r0", "prefill", 0.0, 8), ("r0", "prefill", 1.0, 8), ("r0", "prefill", 2.0, 4), ("r1", "prefill", 2.0, 3)]


def test_sglang_admission_reserves_new_tokens():
    """PrefillAdder: rem_total = free - sum(min(max_new - generated, 4096) * new_token_ratio) over running,
    and a new request costs prompt + max_new (not discounted). 40 tokens: r0 (4 + 30) runs; r1 (4 + 30) does
    not fit next to r0's reservation (0.7 * 29 = 20.3) and waits until r0 finished."""
    cfg = SchedulerConfig.sglang(num_kv_tokens=40, max_model_len=64, chunked_prefill_size=8)
    res = simulate(cfg, wl([0, 0.5], [4, 4], [30, 30]))
    first_r1 = next(e for e in res.log if e[0] == "r1" and e[1] == "prefill")
    finish_r0 = next(e for e in res.log if e[0] == "r0" and e[1] == "finish")
    assert first_r1[2] > finish_r0[2]
    assert res["num_preemptions"] == 0


def test_rejection_and_truncation():
    """r0's prompt exceeds max_model_len: rejected. r1 would pass the context: vLLM 0.6 stops it once its
    length exceeds max_model_len (20 + 1 - 8 = 13 tokens). r2 finishes with its prefill (one token)."""
    res = simulate(v0(max_model_len=20), wl([0, 0, 0], [21, 8, 4], [2, 20, 1]))
    assert res.log[:2] == (("r0", "arrive", 0.0, 0), ("r0", "reject", 0.0, "prompt_limit"))
    rec = res.records
    assert rec.rejected.tolist() == [True, False, False]
    assert rec.truncated.tolist() == [False, True, False]
    assert rec.generated.tolist() == [0, 13, 1]
    assert rec.reject_reason == ("prompt_limit", "", "")
    assert ("r2", "finish", 2.0, 1) in res.log
    s = res.summary()
    assert (s["num_rejected"], s["num_truncated"], s["num_completed"]) == (1, 1, 2)


def test_rejection_when_prompt_can_never_fit_the_kv_cache():
    res = simulate(v0(num_kv_blocks=2, block_size=4), wl([0], [9], [1]))
    assert res.records.reject_reason == ("kv",)


def test_reject_length_policy():
    """With length_policy='reject' (OpenAI server validation) prompt + output > max_model_len is rejected."""
    res = simulate(v0(max_model_len=20, length_policy="reject"), wl([0, 0], [8, 8], [13, 12]))
    assert res.records.reject_reason == ("length", "")
