"""Event kinds of the simulator's heap; the kind is also the priority at equal times (lower first).

See :mod:`apex_opt.sim.engine` for what each kind does. ``KV_START`` and ``KV_DONE`` belong to the
disaggregated front end (:mod:`apex_opt.sim.disagg`); the core hands kinds it does not know to its front end.
"""

from __future__ import annotations

ARRIVAL, KV_START, KV_DONE, STAGE_DONE, STAGE_READY, WAKE = 0, 1, 2, 3, 4, 5

__all__ = ["ARRIVAL", "KV_DONE", "KV_START", "STAGE_DONE", "STAGE_READY", "WAKE"]
