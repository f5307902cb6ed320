"""Automatic prefix caching: a radix tree over the content segments of the prompts, as the engines keep it.

vLLM V1 (``v1/core/kv_cache_manager.py``, ``block_pool.py``), vLLM 0.6 with ``--enable-prefix-caching``
(``core/block_manager_v1.py``, ``core/evictor_v1.py``) and SGLang 0.4 (``mem_cache/radix_cache.py``) keep the KV
cache of finished and preempted requests, index it by content and hand it to later requests with the same
prefix; only the uncached tokens are prefilled. Workloads describe content by segments: request ``i``'s prompt is
a sequence of ``(content_id, tokens)`` pairs (``Workload.segments``), and its answer carries
``Workload.output_ids[i]``. Two requests share their first ``n`` tokens when their segment lists agree on a
prefix covering ``n`` tokens; a content stream shared by two requests shares its leading tokens whatever their
lengths (a radix tree over tokens).

The tree
--------
A :class:`Node` holds tokens ``[off, off + length)`` of content stream ``cid``, placed at positions
``[start, start + length)`` of every sequence through it. With ``B`` tokens per KV block it owns the full blocks
whose last token lies in it, ``(start + length) // B - start // B`` (``B = 16`` for vLLM: only full blocks are
cached and hit; ``B = 1`` for SGLang's token-granular radix cache), so the blocks of a chain ending at token
``p`` add up to ``p // B``. Children are keyed by ``(cid, off)`` of their first token; a match or an insertion that
ends inside a node splits it (``RadixCache._split_node``).

Reference counts follow SGLang's ``lock_ref``: a request holds one reference on every node of its chain (root to
its deepest node). Nodes with no reference are *evictable*: their blocks count as free (``KVCache.free`` =
plainly free + evictable, as vLLM's free-block queue and SGLang's ``available + evictable`` do), and taking more
blocks than are plainly free evicts least-recently-used evictable leaves first (a parent only after its
children). vLLM evicts block by block (the tail blocks of a leaf), SGLang whole leaves.

Life of a request (:class:`~apex_opt.sim.engine.EngineState` calls these):

* :meth:`PrefixCache.lookup` at admission: the tokens already cached, capped so at least one token is computed
  (vLLM V1 ``get_computed_blocks``: ``num_tokens - 1``, rounded down to a block; SGLang
  ``adjust_max_prefix_ids``: ``input_len - 1``), and the blocks of the hit that are evictable now (they stop being
  free once locked; V1 ``allocate_slots`` subtracts them from the free blocks). :meth:`PrefixCache.acquire`
  locks the hit; the request starts with ``computed = hit`` and allocates only the uncached blocks.
* :meth:`PrefixCache.advance` as the prompt is computed: the computed tokens (vLLM: full blocks, at scheduling
  time, ``cache_blocks`` / ``mark_blocks_as_computed``; SGLang: after the forward pass, ``cache_unfinished_req``)
  become nodes owned by the cache and referenced by the request. Where another request inserted the same content
  first, SGLang frees the duplicate (``cache_unfinished_req``); vLLM keeps it private.
* On finish the whole sequence (prompt and answer) is inserted (``cache_finished_req``; vLLM caches full decode
  blocks too) and the chain is unlocked (:meth:`PrefixCache.unlock`); on a recompute preemption vLLM keeps the
  computed blocks cached (freed in reverse order, hashes kept), SGLang the prompt only (``retract_decode``).

Every operation walks one request's segments: O(segments) per admission, no per-token or per-block work.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from typing import Any

from .config import BEHAVIOURS, PrefixCacheRules
from .state import KVCache


class Node:
    """Tokens ``[off, off + length)`` of content ``cid`` at sequence positions ``[start, start + length)``."""

    __slots__ = ("blocks", "children", "cid", "hkey", "length", "off", "parent", "ref", "stamp", "start")

    def __init__(self, parent: Node | None, cid: Any, off: int, length: int, start: int, blocks: int) -> None:
        self.parent = parent
        self.children: dict[tuple[Any, int], Node] = {}
        self.cid = cid
        self.off = off
        self.length = length
        self.start = start
        self.blocks = blocks
        self.ref = 0
        self.stamp = 0
        self.hkey = 0

    @property
    def end(self) -> int:
        return self.start + self.length

    def __repr__(self) -> str:
        return (f"<Node {self.cid!r}[{self.off}:{self.off + self.length}] at [{self.start}, {self.end}) "
                f"blocks={self.blocks} ref={self.ref}>")


class CachedKV(KVCache):
    """A :class:`KVCache` whose ``free`` includes the prefix cache's evictable blocks; ``take`` evicts them
    (least recently used first) when the plainly free blocks do not suffice."""

    __slots__ = ("cache",)

    def __init__(self, capacity: int, block_size: int) -> None:
        super().__init__(capacity, block_size)
        self.cache: PrefixCache | None = None

    def take(self, n: int) -> None:
        if n > self.free or n < 0:
            raise RuntimeError(f"KV cache: cannot take {n} blocks, {self.free} free of {self.capacity}")
        self.free -= n
        cache = self.cache
        if cache is not None and cache.evictable > self.free:
            cache.evict(cache.evictable - self.free)


class PrefixCache:
    """The radix tree of one engine's KV pool (see the module docstring).

    ``kv`` must be a :class:`CachedKV`; the cache registers itself with it. ``rules`` are the engine's
    (:class:`~apex_opt.sim.config.PrefixCacheRules`, ``SchedulerConfig.behaviour.prefix_cache``); a family name
    stands for that family's (``BEHAVIOURS[family].prefix_cache``). Counters: ``evictable`` (blocks of
    unreferenced nodes, part of ``kv.free``) and ``locked`` (blocks of referenced nodes, held).
    """

    __slots__ = ("B", "_clock", "_hkey", "at_schedule", "decode_insert", "dedupe", "evictable", "heap", "kv",
                 "locked", "partial_evict", "root")

    def __init__(self, kv: CachedKV, rules: PrefixCacheRules | str) -> None:
        self.kv = kv
        kv.cache = self
        self.B = kv.block_size
        if isinstance(rules, str):
            rules = BEHAVIOURS[rules].prefix_cache
        self.dedupe = rules.dedupe
        self.at_schedule = rules.insert_at_schedule
        self.decode_insert = rules.decode_insert
        self.partial_evict = rules.partial_evict
        self.root = Node(None, None, 0, 0, 0, 0)
        self.root.ref = 1
        self.evictable = 0
        self.locked = 0
        self.heap: list[tuple[int, int, Node]] = []
        self._clock = 0
        self._hkey = 0

    # ------------------------------------------------------------------------------------------ lookups
    def limit(self, target: int) -> int:
        """Most tokens of a ``target``-token sequence that may come from the cache (one is always computed)."""
        lim = target - 1
        return lim - lim % self.B

    def lookup(self, req: Any) -> tuple[int, int]:
        """``(hit tokens, evictable blocks the hit would lock)`` for ``req`` (no side effects)."""
        limit = self.limit(req.target)
        if limit <= 0:
            return 0, 0
        B = self.B
        node = self.root
        pos = off = i = 0
        path = req.path
        npath = len(path)
        visited = []
        while pos < limit and i < npath:
            cid, n = path[i]
            child = node.children.get((cid, off))
            if child is None:
                break
            m = min(child.length, n - off, limit - pos)
            visited.append(child)
            pos += m
            if m < child.length:
                break
            node = child
            off += m
            if off == n:
                i += 1
                off = 0
        hb = pos // B
        extra = 0
        for nd in visited:
            if nd.ref:
                continue
            s = nd.start // B
            e = min((nd.start + nd.length) // B, hb)
            if e > s:
                extra += e - s
        return hb * B, extra

    def acquire(self, req: Any, hit: int) -> None:
        """Lock the chain of cached nodes covering ``req``'s first ``hit`` tokens (from :meth:`lookup`)."""
        B = self.B
        hb = hit // B
        node = self.root
        pos = off = i = 0
        path = req.path
        stamp = self._tick()
        while pos < hit:
            cid, n = path[i]
            child = node.children[(cid, off)]
            if n - off < child.length or (child.start + child.length) // B > hb:
                if child.start >= hit:
                    break
                child = self._split(child, hit - child.start)
            self._ref(child, stamp)
            node = child
            pos = child.start + child.length
            off += child.length
            if off == n:
                i += 1
                off = 0
        req.node = node if node is not self.root else None
        req.shared = hb

    # ------------------------------------------------------------------------------------------ updates
    def advance(self, req: Any, upto: int) -> None:
        """``req`` has computed (vLLM: scheduled) its first ``upto`` tokens: extend its chain over them (full
        blocks for vLLM), converting its private blocks into cached ones (or, where another request cached the
        same content first, freeing them under SGLang and keeping them private under vLLM)."""
        B = self.B
        if B > 1:
            upto -= upto % B
        ends = req.ends
        upto = min(upto, ends[-1])
        node = req.node if req.node is not None else self.root
        pos = node.start + node.length
        if upto <= pos:
            return
        path = req.path
        i = bisect_right(ends, pos)
        off = pos - (ends[i - 1] if i else 0)
        stamp = self._tick()
        kv = self.kv
        shared = req.shared
        while pos < upto:
            cid, n = path[i]
            take = n - off
            take = min(take, upto - pos)
            key = (cid, off)
            child = node.children.get(key)
            if child is not None:
                if take < child.length:
                    child = self._split(child, take)
                self._ref(child, stamp)
                if self.dedupe:
                    kv.give(child.blocks)
                    shared += child.blocks
            else:
                blocks = (pos + take) // B - pos // B
                child = Node(node, cid, off, take, pos, blocks)
                child.ref = 1
                child.stamp = stamp
                node.children[key] = child
                self.locked += blocks
                shared += blocks
            node = child
            pos += child.length
            off += child.length
            if off == n:
                i += 1
                off = 0
        req.node = node
        req.shared = shared

    def unlock(self, req: Any) -> None:
        """Drop ``req``'s references; nodes nobody references become evictable (their blocks free)."""
        node = req.node
        req.node = None
        req.shared = 0
        if node is None:
            return
        stamp = self._tick()
        kv = self.kv
        root = self.root
        while node is not root:
            node.ref -= 1
            node.stamp = stamp
            if node.ref == 0:
                b = node.blocks
                self.evictable += b
                self.locked -= b
                kv.free += b
                if not node.children:
                    self._push(node)
            node = node.parent

    def evict(self, need: int) -> None:
        """Make ``need`` evictable blocks plainly free: least recently used leaves first (vLLM: the tail blocks
        of a leaf, block by block; SGLang: whole leaves)."""
        heap = self.heap
        B = self.B
        root = self.root
        while need > 0:
            if not heap:  # pragma: no cover - internal consistency
                raise RuntimeError(f"prefix cache: {need} blocks to evict but no evictable leaf "
                                   f"(evictable {self.evictable})")
            _, hkey, node = heapq.heappop(heap)
            if node.hkey != hkey or node.ref or node.children or node.parent is None:
                continue  # stale entry
            b = node.blocks
            if self.partial_evict and b > need:
                keep = b - need
                node.length = (node.start // B + keep) * B - node.start
                node.blocks = keep
                self.evictable -= need
                self._push(node)
                return
            parent = node.parent
            del parent.children[(node.cid, node.off)]
            node.parent = None
            self.evictable -= b
            need -= b
            if parent is not root and parent.ref == 0 and not parent.children:
                self._push(parent)

    # ------------------------------------------------------------------------------------------ helpers
    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _push(self, node: Node) -> None:
        self._hkey += 1
        node.hkey = self._hkey
        heapq.heappush(self.heap, (node.stamp, self._hkey, node))

    def _ref(self, node: Node, stamp: int) -> None:
        if node.ref == 0:
            b = node.blocks
            self.evictable -= b
            self.locked += b
            self.kv.free -= b
        node.ref += 1
        node.stamp = stamp

    def _split(self, child: Node, m: int) -> Node:
        """Split ``child`` after its first ``m`` tokens; returns the new node holding them (the parent of the
        rest), with the same references (``RadixCache._split_node``)."""
        B = self.B
        parent = child.parent
        assert parent is not None
        first = Node(parent, child.cid, child.off, m, child.start, (child.start + m) // B - child.start // B)
        first.ref = child.ref
        first.stamp = child.stamp
        parent.children[(child.cid, child.off)] = first
        child.off += m
        child.start += m
        child.length -= m
        child.blocks -= first.blocks
        child.parent = first
        first.children[(child.cid, child.off)] = child
        return first

    # ------------------------------------------------------------------------------------------ checks
    def nodes(self) -> list[Node]:
        out = []
        stack = list(self.root.children.values())
        while stack:
            nd = stack.pop()
            out.append(nd)
            stack.extend(nd.children.values())
        return out

    def check(self) -> None:
        """Internal invariants (tests): counters, block ownership, reference monotonicity."""
        B = self.B
        ev = lk = 0
        for nd in self.nodes():
            assert nd.blocks == (nd.start + nd.length) // B - nd.start // B, nd
            assert nd.length > 0, nd
            parent = nd.parent
            assert parent is not None
            assert parent.children.get((nd.cid, nd.off)) is nd, nd
            assert nd.start == parent.start + parent.length, (nd, parent)
            if parent is not self.root:
                assert parent.ref >= nd.ref, (parent, nd)
            if nd.ref:
                lk += nd.blocks
            else:
                ev += nd.blocks
        assert ev == self.evictable, (ev, self.evictable)
        assert lk == self.locked, (lk, self.locked)
        assert self.evictable <= self.kv.free, (self.evictable, self.kv.free)


def request_path(prompt_segments: Any, out_id: Any, out_tokens: int) -> tuple[list[tuple[Any, int]], list[int]]:
    """A request's content path (its prompt segments, then its answer) and the cumulative end of each piece."""
    path: list[tuple[Any, int]] = []
    ends: list[int] = []
    pos = 0
    for cid, n in prompt_segments:
        n = int(n)
        if n <= 0:
            continue
        path.append((cid, n))
        pos += n
        ends.append(pos)
    path.append((out_id, int(out_tokens)))
    ends.append(pos + int(out_tokens))
    return path, ends


__all__ = ["CachedKV", "Node", "PrefixCache", "request_path"]
