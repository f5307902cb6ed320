"""Simulator state: the KV block pool, requests, the decode pool and the inter-token-latency book.

The decode pool is what makes a step cost O(1) in the number of decoding sequences: every decode in the
pool advances by one token per pool step, so a member's length, generated tokens and blocks are affine in the
pool's step counter and are computed on demand. Aggregates (count, context sum, block-boundary phase
histogram, longest context, next completion) are kept up to date on join and leave only.
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque

WAITING, PREFILL, DECODE, DONE = 0, 1, 2, 3


class KVCache:
    """A pool of ``capacity`` KV blocks of ``block_size`` tokens with checked ``take``/``give``.

    >>> kv = KVCache(10, 16)
    >>> kv.take(4); kv.free
    6
    >>> kv.give(5)
    Traceback (most recent call last):
    ...
    RuntimeError: KV cache: giving back 5 blocks would exceed the capacity of 10 (free 6)
    """

    __slots__ = ("block_size", "capacity", "free")

    def __init__(self, capacity: int, block_size: int) -> None:
        if capacity < 1 or block_size < 1:
            raise ValueError(f"KVCache needs capacity >= 1 and block_size >= 1, got {capacity}, {block_size}")
        self.capacity = capacity
        self.block_size = block_size
        self.free = capacity

    def take(self, n: int) -> None:
        if n > self.free or n < 0:
            raise RuntimeError(f"KV cache: cannot take {n} blocks, {self.free} free of {self.capacity}")
        self.free -= n

    def give(self, n: int) -> None:
        if n < 0 or self.free + n > self.capacity:
            raise RuntimeError(
                f"KV cache: giving back {n} blocks would exceed the capacity of {self.capacity} (free {self.free})")
        self.free += n

    @property
    def used(self) -> int:
        return self.capacity - self.free

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)


class Request:
    """Mutable scheduling state of one admitted request (records live in the simulator's arrays)."""

    __slots__ = (
        "base",
        "blocks",
        "cached",
        "cap",
        "computed",
        "ejoin",
        "ends",
        "far",
        "fin",
        "g0",
        "gen",
        "gid",
        "had_first",
        "idx",
        "node",
        "path",
        "prompt",
        "rid",
        "serial",
        "shared",
        "stall_from",
        "state",
        "target",
    )

    def __init__(self, idx: int, rid: str, prompt: int, cap: int) -> None:
        self.idx = idx
        self.rid = rid
        self.prompt = prompt
        self.cap = cap          # tokens it will generate (requested, possibly truncated at the context limit)
        self.state = WAITING
        self.gen = 0            # tokens generated (valid while not in the decode pool)
        self.target = prompt    # tokens to (re)compute in prefill: prompt + generated
        self.computed = 0       # prefill tokens computed so far
        self.blocks = 0         # KV blocks held (valid while not in the decode pool)
        self.base = 0           # pool: tokens in KV == base + pool.E
        self.ejoin = 0          # pool: pool.E at join
        self.g0 = 0             # pool: generated at join
        self.serial = -1        # pool: join serial (lazy heap entries)
        self.gid = -1           # ITL book group
        self.stall_from = -1.0  # stamp of the last token before a preemption
        self.had_first = False  # first token already produced (recompute prefills do not produce a first token)
        self.fin = 0            # pool: E_done at which it will have generated ``cap`` tokens
        self.far = False        # pool (clip tracking): fin - E_done > clip when last checked
        # prefix caching (apex_opt.sim.prefix_cache): content path, cached chain, blocks it takes from the cache
        self.path: list | None = None   # [(content_id, tokens), ...]: prompt segments, then the answer
        self.ends: list | None = None   # cumulative end of each path piece
        self.node = None                # deepest node of the cached chain it references (None: none)
        self.shared = 0                 # blocks of its KV owned by the cache (``blocks`` counts them too)
        self.cached = -1                # prompt tokens hit at its first admission (-1: not admitted yet)

    def __repr__(self) -> str:
        return f"<Request {self.rid} state={self.state} gen={self.gen}/{self.cap}>"


class DecodePool:
    """The decoding sequences of one engine: all advance by one token per pool step.

    ``E`` counts pool steps started (blocks for them allocated), ``E_done`` pool steps completed (tokens
    sampled). A member holds ``base + E`` tokens of KV, ``ceil((base + E) / block_size)`` blocks, and has
    generated ``g0 + E_done - ejoin`` tokens. The step started at ``E`` allocates a new block for every member
    with ``(base + E) % block_size == 0``: ``hist[(-E) % block_size]`` blocks.
    """

    __slots__ = (
        "E",
        "E_done",
        "_farheap",
        "_finheap",
        "_maxheap",
        "_serial",
        "bs",
        "clip",
        "far_count",
        "far_sum",
        "fin_sum",
        "hist",
        "members",
        "overshoot",
        "sum_base",
        "zombies",
    )

    def __init__(self, block_size: int, clip: int = 0) -> None:
        self.bs = block_size
        self.members: dict[int, Request] = {}
        self.sum_base = 0
        self.hist = [0] * block_size
        self.E = 0
        self.E_done = 0
        self._maxheap: list[tuple[int, int, int]] = []
        self._finheap: list[tuple[int, int, int]] = []
        self._serial = 0
        # SGLang reservation: sum over members of clamp(cap - generated, 0, clip), kept incrementally when clip > 0
        self.clip = clip
        self.fin_sum = 0
        self.zombies: dict[int, Request] = {}
        self._farheap: list[tuple[int, int, int]] = []
        self.far_count = 0
        self.far_sum = 0
        self.overshoot = False  # set when the engine speculates (steps may emit several tokens)

    def __len__(self) -> int:
        return len(self.members)

    def add(self, req: Request, kv_tokens: int, generated: int) -> None:
        """Join with ``kv_tokens`` tokens in the cache and ``generated`` tokens sampled (between steps)."""
        base = kv_tokens - self.E
        self._serial += 1
        req.base = base
        req.ejoin = self.E
        req.g0 = generated
        req.serial = self._serial
        req.state = DECODE
        self.members[req.idx] = req
        self.sum_base += base
        self.hist[base % self.bs] += 1
        heapq.heappush(self._maxheap, (-base, self._serial, req.idx))
        fin = self.E + req.cap - generated
        req.fin = fin
        if fin > self.E:
            heapq.heappush(self._finheap, (fin, self._serial, req.idx))
        if self.clip:
            self.fin_sum += fin
            if fin <= self.E_done:
                self.zombies[req.idx] = req
            req.far = fin - self.E_done > self.clip
            if req.far:
                heapq.heappush(self._farheap, (fin, self._serial, req.idx))
                self.far_count += 1
                self.far_sum += fin

    def remove(self, req: Request) -> None:
        del self.members[req.idx]
        self.sum_base -= req.base
        self.hist[req.base % self.bs] -= 1
        req.serial = -1
        if self.clip:
            self.fin_sum -= req.fin
            self.zombies.pop(req.idx, None)
            if req.far:
                req.far = False
                self.far_count -= 1
                self.far_sum -= req.fin

    def reserve_sum(self) -> int:
        """Sum over members of ``clamp(cap - generated, 0, clip)`` (SGLang's ``PrefillAdder`` reservation)."""
        e, clip = self.E_done, self.clip
        heap, members = self._farheap, self.members
        while heap and heap[0][0] - e <= clip:
            fin, serial, idx = heapq.heappop(heap)
            m = members.get(idx)
            if m is not None and m.serial == serial and m.far:
                m.far = False
                self.far_count -= 1
                self.far_sum -= fin
        total = self.fin_sum - len(members) * e
        total -= self.far_sum - self.far_count * (e + clip)
        for z in self.zombies.values():
            total += e - z.fin
        return total

    def generated(self, req: Request) -> int:
        # speculative steps advance the pool by several tokens and may pass a member's last one: its extra
        # accepted tokens are dropped, as the engines stop a request at max_tokens
        g = req.g0 + self.E_done - req.ejoin
        return min(g, req.cap) if self.overshoot else g

    def kv_tokens(self, req: Request) -> int:
        return req.base + self.E

    def blocks(self, req: Request) -> int:
        return -(-(req.base + self.E) // self.bs)

    def crosses(self, req: Request) -> bool:
        """Whether the next pool step allocates a block for ``req``."""
        return (req.base + self.E) % self.bs == 0

    def allocs_next(self) -> int:
        return self.hist[(-self.E) % self.bs]

    def allocs_window(self, first: int, count: int) -> int:
        """Blocks allocated by the ``count`` pool steps starting at step index ``first``."""
        if count <= 0:
            return 0
        full, rest = divmod(count, self.bs)
        total = full * len(self.members)
        bs, hist = self.bs, self.hist
        for i in range(rest):
            total += hist[(-(first + i)) % bs]
        return total

    def max_base(self) -> int:
        heap, members = self._maxheap, self.members
        while heap:
            negbase, serial, idx = heap[0]
            m = members.get(idx)
            if m is not None and m.serial == serial:
                return -negbase
            heapq.heappop(heap)
        return 0

    def next_finish(self) -> int | None:
        """Smallest ``E_done`` at which a member will have generated all its tokens."""
        heap, members = self._finheap, self.members
        while heap:
            fin, serial, idx = heap[0]
            m = members.get(idx)
            if m is not None and m.serial == serial:
                return fin
            heapq.heappop(heap)
        return None

    def pop_finished(self) -> list[Request]:
        """Members that have generated all their tokens by ``E_done`` (they stay members)."""
        out = []
        heap, members = self._finheap, self.members
        while heap and heap[0][0] <= self.E_done:
            _fin, serial, idx = heapq.heappop(heap)
            m = members.get(idx)
            if m is not None and m.serial == serial:
                out.append(m)
                if self.clip:
                    self.zombies[idx] = m
        return out


class SampleBook:
    """Inter-token latency samples of one engine, kept as groups of members sharing their last token stamp.

    After the outputs of a pool step are stamped at ``tau``, every member that ran in it has its last token
    at ``tau`` (the *main* group). Members whose first token is not yet followed by a pool step sit in
    *fresh* groups keyed by the id of the iteration that produced it. Samples are written to shared arrays as
    (value, weight) pairs, and runs of identical decode steps as arithmetic segments.
    """

    __slots__ = ("_gid", "fresh", "main_count", "main_stamp", "segs", "vals", "wts")

    def __init__(self, vals: array, wts: array, segs: array) -> None:
        self.main_stamp = 0.0
        self.main_count = 0
        self.fresh: dict[int, list] = {}
        self._gid = 0
        self.vals = vals
        self.wts = wts
        self.segs = segs

    def new_group(self) -> int:
        self._gid += 1
        self.fresh[self._gid] = [None, 0]
        return self._gid

    def join(self, req: Request, gid: int) -> None:
        req.gid = gid
        self.fresh[gid][1] += 1

    def leave(self, req: Request) -> float:
        """Remove a member; returns the stamp of its last token."""
        g = self.fresh.get(req.gid)
        req.gid = -1
        if g is not None:
            g[1] -= 1
            return g[0] if g[0] is not None else -1.0
        self.main_count -= 1
        return self.main_stamp

    def stamp(self, gid: int, tau: float, pool_ran: bool) -> None:
        """The outputs of the iteration whose output group is ``gid`` are stamped at ``tau``."""
        fresh = self.fresh
        if pool_ran:
            if self.main_count:
                self.vals.append(tau - self.main_stamp)
                self.wts.append(self.main_count)
            count = self.main_count
            for g, (st, c) in fresh.items():
                if c:
                    if g != gid:
                        self.vals.append(tau - st)
                        self.wts.append(c)
                    count += c
            fresh.clear()
            self.main_count = count
            self.main_stamp = tau
        else:
            grp = fresh.get(gid)
            if grp is not None:
                if grp[1]:
                    grp[0] = tau
                else:
                    del fresh[gid]
            for g in [g for g, (_, c) in fresh.items() if c == 0 and g != gid]:
                del fresh[g]

    def run(self, tau0: float, alpha: float, beta: float, j_last: int, weight: int, tau_end: float) -> None:
        """Outputs of a run of pool steps 0..j_last: step 0 stamped at ``tau0``, step j (1 <= j <= j_last) a
        sample ``alpha + beta * j`` after the previous one; the last stamp is ``tau_end``."""
        self.stamp(-1, tau0, True)
        if j_last >= 1:
            self.segs.extend((alpha, beta, 1.0, float(j_last), float(weight)))
        self.main_stamp = tau_end


class StageClock:
    """One pipeline stage of a replica: busy flag, FIFO of waiting micro-batches and accumulated work."""

    __slots__ = ("busy", "busy_s", "bytes", "energy_j", "flops", "queue")

    def __init__(self) -> None:
        self.busy = False
        self.queue: deque[int] = deque()
        self.busy_s = 0.0
        self.energy_j = 0.0
        self.flops = 0.0
        self.bytes = 0.0


__all__ = ["DECODE", "DONE", "PREFILL", "WAITING", "DecodePool", "KVCache", "Request", "SampleBook", "StageClock"]
