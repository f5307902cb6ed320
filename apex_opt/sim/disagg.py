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

Structure: disaggregation is a front end (:class:`DisaggFrontEnd`, the :class:`~apex_opt.sim.frontend.FrontEnd`
protocol) injected into the same core :class:`~apex_opt.sim.engine.Simulation` that runs aggregated replicas:
it routes arrivals to prefill instances, takes a finished prefill over (``hand_off``), keeps the transfer
queues, allocates and books transfers after a decode engine's schedule (``after_start``), joins arrived
requests before it (``before_start``, ``after_leave``), bounds skip-ahead runs on decode engines
(``limit_run``) and handles its own event kinds (``on_event``). :class:`DisaggSimulation` is a
:class:`~apex_opt.sim.engine.Simulation` with this front end.

Event kinds and their priorities at equal times are those of :mod:`apex_opt.sim.events` (``KV_START`` logs the
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
from .engine import Simulation
from .engine_state import EngineState
from .events import KV_DONE, KV_START, STAGE_DONE, STAGE_READY, WAKE
from .frontend import ArrivalRouter, Core, admission
from .metrics import SimResult
from .router import make_router
from .skipahead import decode_coeffs, steps_before
from .state import Request

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


class DisaggFrontEnd:
    """The front end of a disaggregated run (the :class:`~apex_opt.sim.frontend.FrontEnd` protocol): arrivals
    go to prefill instances, prefilled requests move to decode instances through transfer queues and KV-cache
    transfers. ``kv_transfer`` as for ``run_simulation``; ``router`` routes arrivals over the prefill replicas,
    ``decode_router`` picks the decode replica of a prefilled request."""

    engine_hooks = True
    disaggregated = True

    def __init__(self, kv_transfer: TransferModel, *, router: str = "round-robin",
                 decode_router: str = "least-loaded") -> None:
        self.kv_transfer = kv_transfer
        self.router_name = router
        self.decode_router = decode_router
        self.P: list[int] = []
        self.D: list[int] = []

    def check_replicas(self, replicas: Sequence[ReplicaSpec]) -> None:
        roles = [s.role for s in replicas]
        self.P = [i for i, r in enumerate(roles) if r == "prefill"]
        self.D = [i for i, r in enumerate(roles) if r == "decode"]
        if not self.P or not self.D or len(self.P) + len(self.D) != len(roles):
            raise SpecError("a disaggregated run needs at least one 'prefill' and one 'decode' replica and no "
                            f"'both' replica; got roles {roles}")

    def bind(self, sim: Core) -> None:
        self.sim = sim
        self.rec = sim.rec
        self.arrivals = ArrivalRouter(self.router_name, sim, self.P)
        self.outstanding = [0] * len(sim.replicas)
        n = sim.N
        replicas = sim.replicas
        self.is_prefill = [replicas[e.replica].role == "prefill" for e in sim.engines]
        # transfer costs per (prefill replica, decode replica)
        self.links: dict[tuple[int, int], KVTransfer] = {}
        for p in self.P:
            for d in self.D:
                link = _resolve(self.kv_transfer, p, d)
                if not (hasattr(link, "time") and hasattr(link, "bytes")):
                    raise SpecError(f"kv_transfer for replicas ({p}, {d}): {link!r} has no time(tokens) and "
                                    "bytes(tokens); use a LinearKVTransfer or apex_opt.perf.kv_transfer")
                self.links[(p, d)] = link
        # decode router (static ones are indexed by hand-off order)
        self.d_router = make_router(self.decode_router, [replicas[d].weight for d in self.D], sim.rng)
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
        for e in sim.engines:
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
        self.send_free = [0.0] * len(replicas)
        self.recv_free = [0.0] * len(replicas)
        self.dcap = [0] * n
        self.elig: dict[int, tuple[int, ...]] = {}
        # records of the transfers
        self.r_decode = np.full(n, -1, dtype=np.int64)
        self.r_handoff = np.full(n, np.nan)
        self.r_xs = np.full(n, np.nan)
        self.r_xe = np.full(n, np.nan)
        self.r_bytes = np.zeros(n)

    # ========================================================================================= routing
    def route(self, k: int) -> EngineState:
        """Arrivals go to prefill instances only."""
        return self._least_busy(self.sim.rep_engines[self.arrivals.pick(k, self.outstanding)])

    def admit(self, e: EngineState, k: int) -> tuple[str, int, int]:
        """The prompt against the prefill engine (run as ``max_tokens=1``), prompt + output against the decode
        engines; the output cap is the best decode engine's, and only the decode engines that give it stay
        eligible."""
        sim = self.sim
        prompt, out = sim.prm[k], sim.out[k]
        reason = admission(e, prompt, 1, check_length=False)[0]
        dcap = 0
        if not reason:
            best: list[int] = []
            first_reason = ""
            for d in self.D:
                de = sim.rep_engines[d][0]
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

    def accepted(self, e: EngineState) -> None:
        self.outstanding[e.replica] += 1

    def released(self, e: EngineState) -> None:
        self.outstanding[e.replica] -= 1

    def horizon(self, e: EngineState) -> float:
        if not self.is_prefill[e.eid]:
            return _INF  # no arrivals; transfers are handled in limit_run
        return self.arrivals.horizon(e.replica)

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
            replicas = self.sim.replicas
            return min(elig, key=lambda d: (self.outstanding[d] / replicas[d].weight, d))
        if self.d_assign is not None:
            d = self.d_assign[self.d_next]
            self.d_next += 1
            return d
        return self.D[self.d_router.pick([self.outstanding[d] for d in self.D])]

    # ========================================================================================= hand-off
    def hand_off(self, e: EngineState, req: Request, tau: float) -> bool:
        """A prefill instance retires ``req`` at ``tau`` (its first token): unless it needs a single output
        token, it moves to the transfer queue of a decode engine; its blocks stay held until the transfer ends."""
        k = req.idx
        if not self.is_prefill[e.eid] or self.dcap[k] <= 1:
            return False  # decode finish, or one output token: done at the prefill instance
        sim = self.sim
        blocks = sim.detach(e, req)  # private blocks; a cached prompt stays referenced until the transfer ends
        e.held += blocks
        self.sending[k] = (e, blocks)
        req.state = TRANSFER
        self.outstanding[e.replica] -= 1
        self.r_handoff[k] = tau
        d = self._route_decode(k)
        de = self._least_busy(sim.rep_engines[d])
        self.r_decode[k] = d
        self.outstanding[d] += 1
        self.kvq[de.eid].append(req)
        sim.wake(de, tau)
        return True

    def _can_reserve(self, e: EngineState) -> bool:
        """Whether the decode engine allocates blocks for the head of its transfer queue now."""
        q = self.kvq[e.eid]
        if not q or e.waiting or e.prefilling:  # a recomputed request still prefilling will take more blocks
            return False
        need = e.kv.blocks_for(q[0].prompt)
        return (e.kv.free - need >= self.margin[e.eid]
                and len(e.running) + len(self.inbound[e.eid]) < self.seq_limit[e.eid])

    def _reserve(self, e: EngineState, t: float) -> None:
        """Allocate blocks for the head of ``e``'s transfer queue while it can, and book the transfers."""
        q = self.kvq[e.eid]
        inbound = self.inbound[e.eid]
        took = False
        d = e.replica
        r_replica = self.rec.r_replica
        push = self.sim.push
        while self._can_reserve(e):
            req = q.popleft()
            need = e.kv.blocks_for(req.prompt)
            e.kv.take(need)
            e.held += need
            inbound[req.idx] = (req, need)
            k = req.idx
            p = int(r_replica[k])
            link = self.links[(p, d)]
            start = max(t, float(self.r_handoff[k]), self.send_free[p], self.recv_free[d])
            end = start + link.time(req.prompt)
            self.send_free[p] = end
            self.recv_free[d] = end
            self.r_xs[k] = start
            self.r_xe[k] = end
            self.r_bytes[k] = link.bytes(req.prompt)
            self.known_end[e.eid][k] = end
            push(start, KV_START, k, d)
            push(end, KV_DONE, k, e.eid)
            took = True
        if took:
            self.rec.kv(t, e)

    def on_event(self, t: float, kind: int, a: int, b: int) -> None:
        if kind == KV_DONE:
            self._kv_done(t, a, self.sim.engines[b])
        elif kind == KV_START:
            if self.rec.log is not None:
                self.rec.log.append((self.sim.ids[a], "transfer_start", t, b))
        else:  # pragma: no cover - internal
            raise SimulationError(f"unexpected event kind {kind} at t={t}")

    def _kv_done(self, t: float, k: int, de: EngineState) -> None:
        """The KV cache of request ``k`` reached decode engine ``de``: the prefill engine frees its blocks."""
        pe, blocks = self.sending.pop(k)
        pe.kv.give(blocks)
        pe.held -= blocks
        req, _ = self.inbound[de.eid][k]
        if pe.cache is not None:
            pe.cache.unlock(req)
        self.rec.kv(t, pe)
        pe.policy.on_kv_released(pe)
        if pe.waiting or pe.running:
            self.sim.wake(pe, t)
        del self.known_end[de.eid][k]
        self.ready[de.eid].append(req)
        if self.rec.log is not None:
            self.rec.log.append((req.rid, "transfer_end", t, de.replica))
        self.sim.wake(de, t)

    # ========================================================================================= decode side
    def before_start(self, e: EngineState, t: float) -> None:
        if not self.is_prefill[e.eid]:
            ready = self.ready[e.eid]
            if ready:
                self._join(e, t, ready)

    def after_start(self, e: EngineState, t: float) -> None:
        if not self.is_prefill[e.eid] and self.kvq[e.eid]:
            self._reserve(e, t)

    def _join(self, e: EngineState, t: float, ready: list[Request]) -> None:
        """Requests whose KV cache arrived join the decode batch (they run in the iteration scheduled now)."""
        inbound = self.inbound[e.eid]
        joins = self.joins[e.eid]
        log = self.rec.log
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
            if log is not None:
                log.append((req.rid, "decode_admit", t, e.replica))
        ready.clear()

    def after_leave(self, e: EngineState) -> None:
        joins = self.joins.get(e.eid)
        if joins:
            # after the outputs of the previous iteration were stamped (the joiners took no part in it): each
            # joiner's last token is its first token, stamped on the prefill instance
            book = e.book
            first_token = self.rec.r_first_token
            for req in joins:
                gid = book.new_group()
                book.fresh[gid][0] = float(first_token[req.idx])
                book.join(req, gid)
            joins.clear()

    def limit_run(self, e: EngineState, t: float, shape: BatchShape, t0: float, stage0: Any, n: int) -> int:
        """A decode engine's run stops before a known transfer end into it and, while its transfer queue could
        accept a request, before the prefill side's next event."""
        if self.is_prefill[e.eid]:
            return n
        h = min(self.known_end[e.eid].values(), default=_INF)
        blocked = bool(e.waiting) or (bool(self.kvq[e.eid]) and not self._can_reserve(e))
        if not blocked:
            if self.kvq[e.eid]:
                return 1  # it allocates for a transfer right after this step is scheduled
            h = min(h, self._handoff_bound())
        if h < _INF:
            c0, c1 = decode_coeffs(stage0, len(e.pool), shape.max_ctx)
            alpha = c0 + c1 * shape.decode_ctx_sum
            beta = c1 * len(e.pool)
            n = min(n, steps_before(h - t, t0, alpha, beta, n) + 1)
        return max(n, 1)

    def _handoff_bound(self) -> float:
        """Earliest time a prefill instance could hand a request off: its next event (decode-side iteration
        events and transfer-start logs cannot cause one)."""
        best = _INF
        is_prefill = self.is_prefill
        for t, kind, _, a, _ in self.sim.heap:
            if t >= best or kind == KV_START:
                continue
            if kind in (STAGE_DONE, STAGE_READY, WAKE) and not is_prefill[a]:
                continue
            best = t
        return best

    # ========================================================================================= results
    def finalize(self, res: SimResult) -> SimResult:
        """The transfer records and summary keys; per-replica rows with their role (a decode replica counts the
        requests it decoded and the tokens after the first, a prefill replica the first tokens)."""
        left = [k for q in self.kvq.values() for k in q] + list(self.sending)
        watch = self.sim.watch
        cut = watch is not None and watch.cut_at is not None  # a run cut early leaves caches on the wire
        if not cut and (left or any(self.inbound.values())):  # pragma: no cover - internal consistency
            raise SimulationError(f"disaggregated run ended with {len(left)} requests still in transfer")
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
            role = self.sim.replicas[r].role
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


class DisaggSimulation(Simulation):
    """A :class:`~apex_opt.sim.engine.Simulation` with a :class:`DisaggFrontEnd` (nothing overridden). Use
    ``run_simulation``."""

    def __init__(self, replicas: Sequence[ReplicaSpec], workload: Any, *, kv_transfer: TransferModel,
                 router: str = "round-robin", decode_router: str = "least-loaded", **kw: Any) -> None:
        super().__init__(replicas, workload, router=router,
                         frontend=DisaggFrontEnd(kv_transfer, router=router, decode_router=decode_router), **kw)


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


__all__ = ["TRANSFER", "DisaggFrontEnd", "DisaggSimulation", "KVTransfer", "LinearKVTransfer"]
