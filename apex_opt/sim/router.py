"""Routers in front of data-parallel replicas.

* ``round-robin``: smooth weighted round-robin; with equal weights request ``k`` goes to replica ``k mod dp``
  (how the reference DP runs were fed, and SGLang's ``load_balance_method=round_robin``).
* ``least-loaded``: the replica with the fewest outstanding requests per unit weight at arrival; ties go to the
  lowest index.
* ``random``: seeded draw proportional to the weights.

``static`` routers do not depend on the simulation state, so their assignment is computed up front.

>>> RoundRobinRouter([1, 1, 1]).precompute(7).tolist()
[0, 1, 2, 0, 1, 2, 0]
>>> RoundRobinRouter([2, 1]).precompute(6).tolist()
[0, 1, 0, 0, 1, 0]
>>> LeastLoadedRouter([1, 1]).pick([3, 2])
1
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import SpecError

ROUTERS: tuple[str, ...] = ("round-robin", "least-loaded", "random")


class Router:
    static = True

    def __init__(self, weights: Sequence[float]) -> None:
        self.weights = [float(w) for w in weights]

    def precompute(self, n: int) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def pick(self, outstanding: Sequence[int]) -> int:  # pragma: no cover - overridden
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

    def pick(self, outstanding: Sequence[int]) -> int:
        best = 0
        best_load = outstanding[0] / self.weights[0]
        for i in range(1, len(self.weights)):
            load = outstanding[i] / self.weights[i]
            if load < best_load:
                best, best_load = i, load
        return best


def make_router(name: str, weights: Sequence[float], rng: np.random.Generator) -> Router:
    if name == "round-robin":
        return RoundRobinRouter(weights)
    if name == "least-loaded":
        return LeastLoadedRouter(weights)
    if name == "random":
        return RandomRouter(weights, rng)
    raise SpecError(f"unknown router '{name}'; use one of {', '.join(ROUTERS)}")


__all__ = ["ROUTERS", "LeastLoadedRouter", "RandomRouter", "RoundRobinRouter", "Router", "make_router"]
