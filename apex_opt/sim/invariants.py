"""Internal invariants of an engine (debug runs and tests): KV accounting, queues, the ITL sample book."""

from __future__ import annotations

from .engine_state import EngineState
from .state import PREFILL, WAITING


def check_engine(e: EngineState) -> int:
    """Assert the invariants of engine ``e`` (:func:`check_kv`, :func:`check_queues`, :func:`check_pool`); returns
    the blocks in use."""
    check_kv(e)
    check_queues(e)
    check_pool(e)
    return e.kv.capacity - e.kv.free


def check_kv(e: EngineState) -> None:
    """Every KV block in use is accounted for: the decode pool's and the prefills' private blocks, the blocks held
    outside the queues, and the prefix cache's locked blocks (which waiting requests do not share)."""
    pool, kv = e.pool, e.kv
    held = (sum(pool.blocks(m) - m.shared for m in pool.members.values())
            + sum(r.blocks - r.shared for r in e.prefilling.values()) + e.held)
    if e.cache is not None:
        e.cache.check()
        held += e.cache.locked
        assert all(r.shared == 0 and r.node is None for r in e.waiting)
    assert 0 <= kv.free <= kv.capacity, (kv.free, kv.capacity)
    assert held == kv.capacity - kv.free, (held, kv.capacity - kv.free)


def check_queues(e: EngineState) -> None:
    """The queues hold requests in their states, and the prefills the blocks the engine's rules say."""
    assert len(e.running) == len(e.pool) + len(e.prefilling)
    assert all(r.state == WAITING for r in e.waiting)
    assert all(r.state == PREFILL and r.computed < r.target for r in e.prefilling.values())
    if e.cfg.behaviour.whole_prompt_blocks_at_schedule:
        assert all(r.blocks == e.kv.blocks_for(r.target) for r in e.prefilling.values())


def check_pool(e: EngineState) -> None:
    """The decode pool's members are within their caps, the ITL book counts them, and the pool's reserve of
    clipped new tokens is the sum over its members."""
    pool = e.pool
    assert all(pool.generated(m) <= m.cap for m in pool.members.values())
    book = e.book
    assert book.main_count + sum(c for _, c in book.fresh.values()) == len(pool), "ITL book out of sync"
    if pool.clip:
        brute = sum(min(max(m.cap - pool.generated(m), 0), pool.clip) for m in pool.members.values())
        assert pool.reserve_sum() == brute


__all__ = ["check_engine", "check_kv", "check_pool", "check_queues"]
