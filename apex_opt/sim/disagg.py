"""Disaggregated prefill and decode (xPyD): prefill instances, KV-cache transfers, decode instances.

A disaggregated run has replicas of two roles (:attr:`ReplicaSpec.role`):

* **prefill** instances run every request as ``max_tokens=1``: the engine's own scheduler (vLLM 0.6 / V1 /
  SGLang, unchanged) prefills it and samples the first token, which is the TTFT event. The request then keeps
  its KV blocks on the prefill instance until its KV cache has been sent.
* **decode** instances never prefill a new request: the KV cache arrives over the network and the request
  joins the decode batch directly, with ``prompt`` tokens in its cache and one token generated.

Life of a request (engines.md has the aggregated rules; ``docs/disaggregation.md`` the sources):

1. *arrive*: the router (round-robin, least-loaded, random) picks a prefill replica. Length rules are checked
   on both sides: the prompt against the prefill engine, prompt + output against the decode engines.
2. *prefill* / *first_token*: as in an aggregated engine. When the prefill engine retires the request (at the
   stamp of its first token) it is handed off: a decode router (least-loaded by default) picks a decode replica
   (and, with ``pp > 1``, its least busy virtual engine) and the request waits in that engine's **transfer
   queue**. A request with a single output token finishes at the prefill instance and is not transferred.
3. The decode engine **allocates** the blocks of the prompt's KV cache for the head of its transfer queue, first
   come first served, at its iteration boundaries (SGLang's ``DecodePreallocQueue``, vLLM V1's scheduler
   allocating blocks for a remote prefill), while ``free - need >= watermark`` (vLLM 0.6's admission watermark,
   0 for V1 and SGLang), its batch is below ``max_num_seqs`` (SGLang: ``max_running_requests``) counting the
   requests already allocated, and no preempted request waits for recomputation there.
4. *transfer_start* / *transfer_end*: the KV cache moves over the links between the two instances; the transfer
   time is the :class:`KVTransfer` of the (prefill, decode) replica pair. **Contention**: each instance has one
   KV channel (all its GPUs' links together, every TP rank sending its shard in parallel); transfers are
   serialised FIFO on the sender's and on the receiver's channel, in the order the decode engines allocated them
   (``start = max(allocation, first-token stamp, sender free, receiver free)``). On ``transfer_end`` the prefill
   engine frees the request's blocks.
5. *decode_admit*: at the decode engine's next iteration boundary the request joins the decode batch (the
   blocks allocated in step 3 become its cache); then *finish* as usual. Decode-side recompute preemption works
   as in an aggregated engine (the request is re-prefilled on the decode instance).

The gap from the first token (prefill instance) to the first decode token counts as an inter-token latency
sample (users see it), so TPOT includes the transfer and the decode-side wait.

Event kinds and their priorities at equal times are those of :mod:`apex_opt.sim.engine` (``KV_START`` logs the
start of a transfer; ``KV_DONE`` completes it right after arrivals, before iteration ends).

Closed-form skip-ahead stays exact: a run of identical decode steps on a decode engine stops before the first
step that could see a change: a known transfer end into the engine, or, while its transfer queue could accept
a request, the next event of the prefill side (the earliest moment a hand-off could happen).

>>> import numpy as np
>>> from types import SimpleNamespace
>>> from apex_opt.sim import LinearStageCost, ReplicaSpec, SchedulerConfig, StaticReplicaCost, run_simulation
>>> w = SimpleNamespace(arrival_s=np.array([0.0, 0.5]), prompt_tokens=np.array([100, 200]),
...                     output_tokens=np.array([10, 20]), request_ids=("a", "b"))
>>> cfg = SchedulerConfig.vllm_v1(num_kv_blocks=1000, max_model_len=4096)
>>> cost = StaticReplicaCost((LinearStageCost(),))
>>> reps = [ReplicaSpec(cost, cfg, role="prefill"), ReplicaSpec(cost, cfg, role="decode")]
>>> res = run_simulation(reps, w, kv_transfer=LinearKVTransfer(latency_s=0.01, s_per_token=1e-5))
>>> res["num_completed"], res["output_tokens"], res["num_kv_transfers"]
(2, 30, 2)
>>> res.records.decode_replica.tolist()
[1, 1]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import SimulationError, SpecError
from .config import ReplicaSpec
from .cost import BatchShape
from .engine import KV_DONE, KV_START, STAGE_DONE, STAGE_READY, WAKE, EngineState, Simulation, admission
from .metrics import SimResult
from .router import make_router
from .state import DONE, Request

_INF = math.inf
#: ``Request.state`` of a request handed off by its prefill instance and not yet in a decode batch
TRANSFER = 4


@runtime_checkable
class KVTransfer(Protocol):
    """Cost of moving one request's KV cache from a prefill replica to a decode replica."""

    def time(self, tokens: int) -> float:
        """Seconds to move the KV cache of ``tokens`` prompt tokens (no contention)."""
        ...

    def bytes(self, tokens: int) -> float:
        """Bytes of KV cache moved for ``tokens`` prompt tokens (reported in the summary)."""
        ...


@dataclass(frozen=True)
class LinearKVTransfer:
    """``time = latency_s + s_per_token * tokens``: a fixed-cost or alpha-beta test double of :class:`KVTransfer`.

    >>> LinearKVTransfer(latency_s=0.5).time(1000), LinearKVTransfer(s_per_token=1e-3).time(10)
    (0.5, 0.01)
    """

    latency_s: float = 0.0
    s_per_token: float = 0.0
    bytes_per_token: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.s_per_token < 0 or self.bytes_per_token < 0:
            raise SpecError(f"LinearKVTransfer: times and sizes must be >= 0, got {self}")

    def time(self, tokens: int) -> float:
        return self.latency_s + self.s_per_token * tokens

    def bytes(self, tokens: int) -> float:
        return self.bytes_per_token * tokens


TransferModel = KVTransfer | Mapping[tuple[int, int], KVTransfer] | Callable[[int, int], KVTransfer]


class DisaggSimulation(Simulation):
    """A :class:`~apex_opt.sim.engine.Simulation` over prefill and decode replicas. Use ``run_simulation``."""

    disaggregated = True

    def __init__(self, replicas: Sequence[ReplicaSpec], workload: Any, *, kv_transfer: TransferModel,
                 router: str = "round-robin", decode_router: str = "least-loaded", **kw: Any) -> None:
        roles = [s.role for s in replicas]
        self.P = [i for i, r in enumerate(roles) if r == "prefill"]
        self.D = [i for i, r in enumerate(roles) if r == "decode"]
        if not self.P or not self.D or len(self.P) + len(self.D) != len(roles):
            raise SpecError("a disaggregated run needs at least one 'prefill' and one 'decode' replica and no "
                            f"'both' replica; got roles {roles}")
        super().__init__(replicas, workload, router=router, **kw)
        n = self.N
        self.is_prefill = [self.replicas[e.replica].role == "prefill" for e in self.engines]
        # transfer costs per (prefill replica, decode replica)
        self.links: dict[tuple[int, int], KVTransfer] = {}
        for p in self.P:
            for d in self.D:
                link = _resolve(kv_transfer, p, d)
                if not (hasattr(link, "time") and hasattr(link, "bytes")):
                    raise SpecError(f"kv_transfer for replicas ({p}, {d}): {link!r} has no time(tokens) and "
                                    "bytes(tokens); use a LinearKVTransfer or apex_opt.perf.kv_transfer")
                self.links[(p, d)] = link
        # decode router (static ones are indexed by hand-off order)
        self.d_router = make_router(decode_router, [self.replicas[d].weight for d in self.D], self.rng)
        self.d_assign = (np.asarray(self.D, dtype=np.int64)[self.d_router.precompute(n)].tolist()
                         if self.d_router.static else None)
        self.d_next = 0
        # per decode engine: transfer queue, allocated (in flight or arrived) requests, arrived ones, book joins
        self.kvq: dict[int, deque[Request]] = {}
        self.inbound: dict[int, dict[int, tuple[Request, int]]] = {}
        self.ready: dict[int, list[Request]] = {}
        self.joins: dict[int, list[Request]] = {}
        self.margin: dict[int, int] = {}
        self.seq_limit: dict[int, int] = {}
        for e in self.engines:
            if self.is_prefill[e.eid]:
                continue
            self.kvq[e.eid] = deque()
            self.inbound[e.eid] = {}
            self.ready[e.eid] = []
            self.joins[e.eid] = []
            pol = e.policy
            self.margin[e.eid] = int(getattr(pol, "watermark_blocks", 0))
            self.seq_limit[e.eid] = int(getattr(pol, "max_running", e.cfg.max_num_seqs))
        self.sending: dict[int, tuple[EngineState, int]] = {}  # request -> (prefill engine, blocks held)
        self.known_end: dict[int, dict[int, float]] = {eid: {} for eid in self.kvq}
        self.send_free = [0.0] * len(self.replicas)
        self.recv_free = [0.0] * len(self.replicas)
        self.dcap = [0] * n
        self.elig: dict[int, tuple[int, ...]] = {}
        self.r_decode = np.full(n, -1, dtype=np.int64)
        self.r_handoff = np.full(n, np.nan)
        self.r_xs = np.full(n, np.nan)
        self.r_xe = np.full(n, np.nan)
        self.r_bytes = np.zeros(n)

    # ========================================================================================= routing
    def _make_router(self, router: str, n: int) -> None:
        P = self.P
        self.router = make_router(router, [self.replicas[p].weight for p in P], self.rng, segments=self.segments,
                                  prompts=self._prm)
        self.assign = np.asarray(P, dtype=np.int64)[self.router.precompute(n)] if self.router.static else None
        if self.assign is not None:
            self.rep_times = [self.arrival[self.assign == r].tolist() for r in range(len(self.replicas))]
            self.rep_ptr = [0] * len(self.replicas)

    def _route(self, k: int) -> int:
        """Arrivals go to prefill instances only."""
        if self.assign is not None:
            return super()._route(k)
        return self.P[self.router.pick([self.outstanding[p] for p in self.P], k)]

    def _admit(self, e: EngineState, k: int) -> tuple[str, int, int]:
        """The prompt against the prefill engine (run as ``max_tokens=1``), prompt + output against the decode
        engines; the output cap is the best decode engine's, and only the decode engines that give it stay
        eligible."""
        prompt, out = self._prm[k], self._out[k]
        reason = admission(e, prompt, 1, check_length=False)[0]
        dcap = 0
        if not reason:
            best: list[int] = []
            first_reason = ""
            for d in self.D:
                de = self.rep_engines[d][0]
                why, cap = admission(de, prompt, out)
                if why:
                    first_reason = first_reason or why
                    continue
                if cap > dcap:
                    dcap, best = cap, [d]
                elif cap == dcap:
                    best.append(d)
            if not best:
                reason = first_reason
            elif len(best) < len(self.D):
                self.elig[k] = tuple(best)
        if not reason:
            self.dcap[k] = dcap
        return reason, dcap, 1

    def _least_busy(self, group: list[EngineState]) -> EngineState:
        """vLLM 0.6 ``add_request``: the virtual engine with the fewest unfinished requests."""
        e = group[0]
        if len(group) > 1:
            best = self._load(e)
            for g in group[1:]:
                load = self._load(g)
                if load < best:
                    e, best = g, load
        return e

    def _load(self, e: EngineState) -> int:
        load = len(e.waiting) + len(e.running)
        if e.eid in self.kvq:
            load += len(self.kvq[e.eid]) + len(self.inbound[e.eid])
        return load

    def _route_decode(self, k: int) -> int:
        elig = self.elig.get(k)
        if elig is not None:  # heterogeneous decode replicas: only those that hold the whole request
            return min(elig, key=lambda d: (self.outstanding[d] / self.replicas[d].weight, d))
        if self.d_assign is not None:
            d = self.d_assign[self.d_next]
            self.d_next += 1
            return d
        return self.D[self.d_router.pick([self.outstanding[d] for d in self.D])]

    # ========================================================================================= hand-off
    def _complete(self, e: EngineState, req: Request, tau: float) -> None:
        k = req.idx
        if not self.is_prefill[e.eid] or req.state == DONE or self.dcap[k] <= 1:
            super()._complete(e, req, tau)  # decode finish, or one output token: done at the prefill instance
            return
        blocks = self._detach(e, req)  # private blocks; a cached prompt stays referenced until the transfer ends
        e.held += blocks
        self.sending[k] = (e, blocks)
        req.state = TRANSFER
        self.outstanding[e.replica] -= 1
        self.r_handoff[k] = tau
        d = self._route_decode(k)
        de = self._least_busy(self.rep_engines[d])
        self.r_decode[k] = d
        self.outstanding[d] += 1
        self.kvq[de.eid].append(req)
        if not de.in_flight and not de.wake_pending:
            de.wake_pending = True
            self._push(tau, WAKE, de.eid)

    def _can_reserve(self, e: EngineState) -> bool:
        """Whether the decode engine allocates blocks for the head of its transfer queue now."""
        q = self.kvq[e.eid]
        if not q or e.waiting or e.prefilling:  # a recomputed request still prefilling will take more blocks
            return False
        need = e.kv.blocks_for(q[0].prompt)
        return (e.kv.free - need >= self.margin[e.eid]
                and len(e.running) + len(self.inbound[e.eid]) < self.seq_limit[e.eid])

    def _reserve(self, e: EngineState, t: float) -> None:
        q = self.kvq[e.eid]
        inbound = self.inbound[e.eid]
        took = False
        d = e.replica
        while self._can_reserve(e):
            req = q.popleft()
            need = e.kv.blocks_for(req.prompt)
            e.kv.take(need)
            e.held += need
            inbound[req.idx] = (req, need)
            k = req.idx
            p = int(self.r_replica[k])
            link = self.links[(p, d)]
            start = max(t, float(self.r_handoff[k]), self.send_free[p], self.recv_free[d])
            end = start + link.time(req.prompt)
            self.send_free[p] = end
            self.recv_free[d] = end
            self.r_xs[k] = start
            self.r_xe[k] = end
            self.r_bytes[k] = link.bytes(req.prompt)
            self.known_end[e.eid][k] = end
            self._push(start, KV_START, k, d)
            self._push(end, KV_DONE, k, e.eid)
            took = True
        if took:
            self._kv(t, e)

    def _on_event(self, t: float, kind: int, a: int, b: int) -> None:
        if kind == KV_DONE:
            self._kv_done(t, a, self.engines[b])
        elif kind == KV_START:
            if self.log is not None:
                self.log.append((self.ids[a], "transfer_start", t, b))
        else:  # pragma: no cover - internal
            super()._on_event(t, kind, a, b)

    def _kv_done(self, t: float, k: int, de: EngineState) -> None:
        pe, blocks = self.sending.pop(k)
        pe.kv.give(blocks)
        pe.held -= blocks
        req, _ = self.inbound[de.eid][k]
        if pe.cache is not None:
            pe.cache.unlock(req)
        self._kv(t, pe)
        pe.policy.on_kv_released(pe)
        if not pe.in_flight and not pe.wake_pending and (pe.waiting or pe.running):
            pe.wake_pending = True
            self._push(t, WAKE, pe.eid)
        del self.known_end[de.eid][k]
        self.ready[de.eid].append(req)
        if self.log is not None:
            self.log.append((req.rid, "transfer_end", t, de.replica))
        if not de.in_flight and not de.wake_pending:
            de.wake_pending = True
            self._push(t, WAKE, de.eid)

    # ========================================================================================= decode side
    def _start(self, e: EngineState, t: float) -> None:
        if self.is_prefill[e.eid]:
            super()._start(e, t)
            return
        ready = self.ready[e.eid]
        if ready:
            self._join(e, t, ready)
        super()._start(e, t)
        if self.kvq[e.eid]:
            self._reserve(e, t)

    def _join(self, e: EngineState, t: float, ready: list[Request]) -> None:
        """Requests whose KV cache arrived join the decode batch (they run in the iteration scheduled now)."""
        inbound = self.inbound[e.eid]
        joins = self.joins[e.eid]
        for req in ready:
            _, need = inbound.pop(req.idx)
            e.held -= need
            req.cap = self.dcap[req.idx]
            req.gen = 1
            req.target = req.computed = req.prompt
            req.blocks = 0
            req.had_first = True
            req.stall_from = -1.0
            e.running[req.idx] = req
            e.pool.add(req, req.prompt, 1)
            joins.append(req)
            if self.log is not None:
                self.log.append((req.rid, "decode_admit", t, e.replica))
        ready.clear()

    def _leave(self, e: EngineState) -> None:
        super()._leave(e)
        joins = self.joins.get(e.eid)
        if joins:
            # after the outputs of the previous iteration were stamped (the joiners took no part in it): each
            # joiner's last token is its first token, stamped on the prefill instance
            book = e.book
            for req in joins:
                gid = book.new_group()
                book.fresh[gid][0] = float(self.r_first_token[req.idx])
                book.join(req, gid)
            joins.clear()

    def _horizon(self, e: EngineState) -> float:
        if not self.is_prefill[e.eid]:
            return _INF  # no arrivals; transfers are handled in _run_length
        return super()._horizon(e)

    def _run_length(self, e: EngineState, t: float, shape: BatchShape, t0: float, stage0: Any) -> int:
        n = super()._run_length(e, t, shape, t0, stage0)
        if n <= 1 or self.is_prefill[e.eid]:
            return n
        h = min(self.known_end[e.eid].values(), default=_INF)
        blocked = bool(e.waiting) or (bool(self.kvq[e.eid]) and not self._can_reserve(e))
        if not blocked:
            if self.kvq[e.eid]:
                return 1  # it allocates for a transfer right after this step is scheduled
            h = min(h, self._handoff_bound())
        if h < _INF:
            c0, c1 = self._coeffs(stage0, len(e.pool), shape.max_ctx)
            alpha = c0 + c1 * shape.decode_ctx_sum
            beta = c1 * len(e.pool)
            n = min(n, self._steps_before(h - t, t0, alpha, beta, n) + 1)
        return max(n, 1)

    def _handoff_bound(self) -> float:
        """Earliest time a prefill instance could hand a request off: its next event (decode-side iteration
        events and transfer-start logs cannot cause one)."""
        best = _INF
        is_prefill = self.is_prefill
        for t, kind, _, a, _ in self.heap:
            if t >= best or kind == KV_START:
                continue
            if kind in (STAGE_DONE, STAGE_READY, WAKE) and not is_prefill[a]:
                continue
            best = t
        return best

    # ========================================================================================= results
    def _result(self) -> SimResult:
        left = [k for q in self.kvq.values() for k in q] + list(self.sending)
        if left or any(self.inbound.values()):  # pragma: no cover - internal consistency
            raise SimulationError(f"disaggregated run ended with {len(left)} requests still in transfer")
        res = super()._result()
        rec = res.records
        arrays: dict[str, Any] = {"prefill_replica": rec.replica.copy(), "decode_replica": self.r_decode,
                  "kv_transfer_start_s": self.r_xs, "kv_transfer_end_s": self.r_xe}
        for a in arrays.values():
            a.flags.writeable = False
        rec = replace(rec, **arrays)
        out = dict(res.summary_values)
        moved = np.isfinite(self.r_xe)
        dur = (self.r_xe - self.r_xs)[moved]
        wait = (self.r_xs - self.r_handoff)[moved]
        out["num_kv_transfers"] = int(moved.sum())
        out["kv_transfer_bytes"] = float(self.r_bytes.sum())
        out["kv_transfer_mean_s"] = float(dur.mean()) if dur.size else math.nan
        out["kv_transfer_p50_s"] = float(np.percentile(dur, 50)) if dur.size else math.nan
        out["kv_transfer_p99_s"] = float(np.percentile(dur, 99)) if dur.size else math.nan
        out["kv_transfer_wait_mean_s"] = float(wait.mean()) if wait.size else math.nan
        per = []
        for info in res.per_replica:
            r = info["replica"]
            role = self.replicas[r].role
            info = {**info, "role": role}
            if role == "decode":
                sel = self.r_decode == r
                info.update(requests=int(sel.sum()), completed=int((sel & rec.completed).sum()), rejected=0,
                            output_tokens=int(np.maximum(rec.generated[sel] - 1, 0).sum()),
                            preemptions=int(rec.preemptions[sel].sum()))
            else:
                sel = rec.replica == r
                info.update(completed=int((sel & np.isfinite(rec.first_token_s)).sum()),
                            output_tokens=int((sel & np.isfinite(rec.first_token_s)).sum()))
            per.append(info)
        return replace(res, records=rec, summary_values=out, per_replica=tuple(per))


def _resolve(model: TransferModel, p: int, d: int) -> KVTransfer:
    if isinstance(model, Mapping):
        try:
            return model[(p, d)]
        except KeyError:
            raise SpecError(f"kv_transfer has no entry for (prefill replica {p}, decode replica {d})") from None
    if hasattr(model, "time") and hasattr(model, "bytes"):
        return model
    if callable(model):
        return model(p, d)
    raise SpecError(f"kv_transfer {model!r}: give a KVTransfer, a mapping (p, d) -> KVTransfer or a callable")


__all__ = ["TRANSFER", "DisaggSimulation", "KVTransfer", "LinearKVTransfer"]
