"""Speculative decode steps of an engine (``SchedulerConfig.speculative``): the tokens each verify step emits.

A speculating engine's decode step drafts ``k`` tokens per sequence and verifies them in one pass of ``k + 1``
query tokens; :class:`SpeculativeDraws` draws how many are accepted, from a random stream of its own (so runs
without speculation are unchanged), and prices the step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .cost import BatchShape
from .engine_state import EngineState
from .recorder import Recorder


class SpeculativeDraws:
    """The acceptance draws of a run's speculative decode steps (seeded from the run's ``seed``)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng([seed, 0x5BEC])
        self.u: list[float] = []  # uniform draws not used yet (drawn 4096 at a time, used from the end)

    def step(self, e: EngineState, shape: BatchShape, stage0: Any, rec: Recorder) -> tuple[BatchShape, float]:
        """A speculative decode step of ``e``'s pool (batch ``shape``): draw the tokens it emits, take their blocks,
        count them in ``rec``, and return the verify batch (``k + 1`` query tokens per decode) and the time of the
        ``k`` draft passes on ``stage0``.

        One draw per step for the whole pool (the pool advances its members together): the mean tokens per
        step is exact, the spread between sequences of one step is not modelled. The policy already allocated
        the first token; the other ``m - 1`` take their blocks here, fewer tokens if the cache runs out.
        """
        surv, frac = e.spec  # type: ignore[misc]
        k = len(surv)
        m = _take_blocks(e, self.tokens(surv))
        rec.spec_steps += 1
        rec.spec_tokens += m
        B = shape.num_decodes
        draft = 0.0
        if frac > 0.0:
            plain = BatchShape(B, B, B, shape.decode_ctx_sum, 0.0, False, shape.max_ctx)
            draft = frac * k * stage0.iteration_time(plain)
        # the k drafted tokens of each decode attend to its context plus the drafts before them
        verify = BatchShape(shape.num_tokens + B * k, shape.num_seqs, B, shape.decode_ctx_sum,
                            shape.prefill_pairs + k * shape.decode_ctx_sum + B * k * (k + 1) / 2,
                            shape.has_prefill, shape.max_ctx + k)
        return verify, draft

    def tokens(self, surv: tuple[float, ...]) -> int:
        """The tokens a verify step emits (1 + the drafts accepted), drawn with ``surv[i - 1]`` = P(at least ``i``
        drafts accepted)."""
        u = self.u
        if not u:
            u.extend(self.rng.random(4096).tolist())
        x = u.pop()
        m = 1
        for c in surv:
            if x >= c:
                break
            m += 1
        return m


def _take_blocks(e: EngineState, m: int) -> int:
    """Take the blocks of the ``m - 1`` tokens after the first of a verify step of ``e``'s pool (fewer tokens if the
    cache would keep less than ``kv_reserve`` blocks free); returns the tokens emitted."""
    pool, kv = e.pool, e.kv
    reserve = e.policy.kv_reserve
    need = pool.allocs_window(pool.E, m - 1)
    while m > 1 and need > kv.free - reserve:
        m -= 1
        need = pool.allocs_window(pool.E, m - 1)
    if m > 1:
        kv.take(need)
        pool.E += m - 1
    return m


__all__ = ["SpeculativeDraws"]
