"""Routers in front of data-parallel replicas.

* ``round-robin``: smooth weighted round-robin; with equal weights request ``k`` goes to replica ``k mod dp``
  (how the reference DP runs were fed, and SGLang's ``load_balance_method=round_robin``).
* ``least-loaded``: the replica with the fewest outstanding requests per unit weight at arrival; ties go to the
  lowest index.
* ``random``: seeded draw proportional to the weights.
* ``prefix-aware``: SGLang's cache-aware router (``sgl-router``, ``policies/cache_aware.rs``, 0.4-era defaults):
  when the outstanding requests are imbalanced (``max - min > 32`` and ``max > 1.0001 * min``) the least-loaded
  replica; otherwise the replica whose approximate prefix tree matches the longest part of the prompt if the
  matched share exceeds ``cache_threshold`` (0.5), else the replica with the smallest tree. The chosen replica's
  tree then takes the prompt. The trees hold the prompt segments routed to each replica (the router sees
  prompts, not the engines' caches) and drop least-recently-used leaves above ``max_tree_tokens`` per replica
  (sgl-router evicts every 60 s down to ``max_tree_size`` = 2**24 characters, about 2**22 tokens).

``static`` routers do not depend on the simulation state, so their assignment is computed up front.

>>> RoundRobinRouter([1, 1, 1]).precompute(7).tolist()
[0, 1, 2, 0, 1, 2, 0]
>>> RoundRobinRouter([2, 1]).precompute(6).tolist()
[0, 1, 0, 0, 1, 0]
>>> LeastLoadedRouter([1, 1]).pick([3, 2])
1
>>> r = PrefixAwareRouter([1, 1], segments=[((7, 90), (1, 10)), ((7, 90), (2, 10))], prompts=[100, 100])
>>> r.pick([0, 0], 0), r.pick([1, 0], 1)
(0, 0)
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import SpecError

ROUTERS: tuple[str, ...] = ("round-robin", "least-loaded", "random", "prefix-aware")


class Router:
    static = True

    def __init__(self, weights: Sequence[float]) -> None:
        self.weights = [float(w) for w in weights]

    def precompute(self, n: int) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def pick(self, outstanding: Sequence[int], k: int | None = None) -> int:  # pragma: no cover - overridden
        """The replica for request ``k`` given each replica's outstanding requests."""
        raise NotImplementedError


class RoundRobinRouter(Router):
    def precompute(self, n: int) -> np.ndarray:
        dp = len(self.weights)
        if len(set(self.weights)) == 1:
            return np.arange(n, dtype=np.int64) % dp
        total = sum(self.weights)
        current = [0.0] * dp
        out = np.empty(n, dtype=np.int64)
        for k in range(n):
            best = 0
            for i in range(dp):
                current[i] += self.weights[i]
                if current[i] > current[best]:
                    best = i
            current[best] -= total
            out[k] = best
        return out


class RandomRouter(Router):
    def __init__(self, weights: Sequence[float], rng: np.random.Generator) -> None:
        super().__init__(weights)
        self.rng = rng

    def precompute(self, n: int) -> np.ndarray:
        p = np.asarray(self.weights) / sum(self.weights)
        return self.rng.choice(len(self.weights), size=n, p=p).astype(np.int64)


class LeastLoadedRouter(Router):
    static = False

    def pick(self, outstanding: Sequence[int], k: int | None = None) -> int:
        best = 0
        best_load = outstanding[0] / self.weights[0]
        for i in range(1, len(self.weights)):
            load = outstanding[i] / self.weights[i]
            if load < best_load:
                best, best_load = i, load
        return best


class _TreeNode:
    __slots__ = ("children", "cid", "length", "off", "parent", "stamp")

    def __init__(self, parent: _TreeNode | None, cid: Any, off: int, length: int, stamp: int) -> None:
        self.parent = parent
        self.children: dict[tuple[Any, int], _TreeNode] = {}
        self.cid = cid
        self.off = off
        self.length = length
        self.stamp = stamp


class ApproxTree:
    """One replica's approximate prefix tree over content segments: the prompts routed to it (sgl-router's
    ``Tree`` per tenant), LRU leaves dropped above ``max_tokens``."""

    __slots__ = ("_heap", "_serial", "max_tokens", "root", "size")

    def __init__(self, max_tokens: int) -> None:
        self.root = _TreeNode(None, None, 0, 0, 0)
        self.size = 0
        self.max_tokens = max_tokens
        self._heap: list[tuple[int, int, _TreeNode]] = []
        self._serial = 0

    def match(self, path: Sequence[tuple[Any, int]]) -> int:
        """Tokens of ``path`` (``(content_id, tokens)`` pieces) found in the tree."""
        node, pos = self.root, 0
        for cid, n in path:
            off = 0
            while off < n:
                child = node.children.get((cid, off))
                if child is None:
                    return pos
                m = min(child.length, n - off)
                pos += m
                if m < child.length:
                    return pos
                node = child
                off += m
        return pos

    def insert(self, path: Sequence[tuple[Any, int]], stamp: int) -> None:
        node = self.root
        for cid, n in path:
            off = 0
            while off < n:
                key = (cid, off)
                child = node.children.get(key)
                if child is None:
                    child = _TreeNode(node, cid, off, n - off, stamp)
                    node.children[key] = child
                    self.size += n - off
                    self._push(child)
                elif n - off < child.length:  # split: the first n - off tokens become the parent
                    m = n - off
                    first = _TreeNode(node, cid, off, m, stamp)
                    node.children[key] = first
                    child.off += m
                    child.length -= m
                    child.parent = first
                    first.children[(cid, child.off)] = child
                    child = first
                child.stamp = stamp
                if not child.children:
                    self._push(child)
                node = child
                off += child.length
        while self.size > self.max_tokens and self._heap:
            st, _, leaf = heapq.heappop(self._heap)
            if leaf.parent is None or leaf.children or leaf.stamp != st:
                continue
            parent = leaf.parent
            del parent.children[(leaf.cid, leaf.off)]
            leaf.parent = None
            self.size -= leaf.length
            if parent is not self.root and not parent.children:
                self._push(parent)

    def _push(self, node: _TreeNode) -> None:
        self._serial += 1
        heapq.heappush(self._heap, (node.stamp, self._serial, node))


class PrefixAwareRouter(Router):
    """sgl-router's ``cache_aware`` policy over approximate per-replica prefix trees (module docstring).

    ``segments[k]`` are request ``k``'s prompt segments (``(content_id, tokens)`` pairs) or, without them, its
    prompt is one unique segment of ``prompts[k]`` tokens.
    """

    static = False

    def __init__(self, weights: Sequence[float], *, segments: Sequence[Any] | None = None,
                 prompts: Sequence[int] | None = None, cache_threshold: float = 0.5, balance_abs_threshold: int = 32,
                 balance_rel_threshold: float = 1.0001, max_tree_tokens: int = 2**22) -> None:
        super().__init__(weights)
        self.segments = segments
        self.prompts = prompts
        self.cache_threshold = cache_threshold
        self.abs = balance_abs_threshold
        self.rel = balance_rel_threshold
        self.trees = [ApproxTree(max_tree_tokens) for _ in self.weights]
        self.count = 0

    def _path(self, k: int) -> list[tuple[Any, int]]:
        if self.segments is not None:
            return [(cid, int(n)) for cid, n in self.segments[k] if int(n) > 0]
        assert self.prompts is not None
        return [(("prompt", k), int(self.prompts[k]))]

    def pick(self, outstanding: Sequence[int], k: int | None = None) -> int:
        loads = [outstanding[i] / self.weights[i] for i in range(len(self.weights))]
        least = min(range(len(loads)), key=lambda i: (loads[i], i))
        if k is None or (self.segments is None and self.prompts is None):
            return least  # nothing known about the prompt (e.g. as a decode router)
        path = self._path(k)
        hi, lo = max(outstanding), min(outstanding)
        if hi - lo > self.abs and hi > self.rel * lo:
            r = least  # imbalanced: shortest queue
        else:
            total = sum(n for _, n in path)
            best, best_len = least, -1
            for i, tree in enumerate(self.trees):
                m = tree.match(path)
                if m > best_len or (m == best_len and (loads[i], i) < (loads[best], best)):
                    best, best_len = i, m
            if total and best_len / total > self.cache_threshold:
                r = best
            else:
                r = min(range(len(self.trees)), key=lambda i: (self.trees[i].size, i))
        self.count += 1
        self.trees[r].insert(path, self.count)
        return r


def make_router(name: str, weights: Sequence[float], rng: np.random.Generator, *,
                segments: Sequence[Any] | None = None, prompts: Sequence[int] | None = None) -> Router:
    """A router by name; ``segments`` / ``prompts`` (per request) feed the prefix-aware router."""
    if name == "round-robin":
        return RoundRobinRouter(weights)
    if name == "least-loaded":
        return LeastLoadedRouter(weights)
    if name == "random":
        return RandomRouter(weights, rng)
    if name == "prefix-aware":
        return PrefixAwareRouter(weights, segments=segments, prompts=prompts)
    raise SpecError(f"unknown router '{name}'; use one of {', '.join(ROUTERS)}")


__all__ = ["ROUTERS", "ApproxTree", "LeastLoadedRouter", "PrefixAwareRouter", "RandomRouter", "RoundRobinRouter",
           "Router", "make_router"]
