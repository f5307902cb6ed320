"""Verify plans by simulation, in parallel processes, with results independent of the number of workers.

Each plan is simulated on the (possibly truncated) workload in a worker process; only the summary dict travels
back. Results are collected by position, never by completion order, and every simulation uses the same seed,
so ``workers=1`` and ``workers=2`` give identical rankings.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Self

from ..errors import ApexOptError
from ..metrics import MetricValues, with_derived
from ..schema.plan import Deployment, Plan
from ..specs import Specs

#: simulate(specs, plan, seed=...) -> object with .summary() (or a dict); module-level for pickling
Simulator = Callable[..., Any]


class SimMetrics(MetricValues):
    """A simulation summary with attribute access (``r.ttft_p99_s``), named as in :mod:`apex_opt.metrics`.

    Besides the simulator's own keys it always holds ``gpus``, ``goodput_per_gpu_req_s`` (with an SLO) and
    ``cost_per_mtok_usd``. The planner's earlier names (``goodput_rps``, ``throughput_tok_s``,
    ``energy_per_token_j``, ``cost``, ...) stay readable for one release, with a DeprecationWarning.
    """


def normalize_summary(summary: dict[str, Any], plan: Plan | Deployment) -> SimMetrics:
    """A simulator summary as :class:`SimMetrics`: registry names, plus the metrics derived from the plan."""
    return SimMetrics(with_derived(summary, plan.gpus))


def usable_workers(requested: int, plans: int | None = None) -> int:
    """Worker processes that can help: at most ``requested``, the CPUs of this machine and the ``plans`` to run."""
    n = min(max(1, int(requested)), os.cpu_count() or 1)
    return max(1, min(n, plans)) if plans is not None else n


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C reaches the whole process group; the parent terminates its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def process_pool(size: int) -> ProcessPoolExecutor:
    """``size`` worker processes (forked where the platform allows) that leave Ctrl-C to their parent."""
    method = "fork" if "fork" in mp.get_all_start_methods() and os.name == "posix" else "spawn"
    return ProcessPoolExecutor(max_workers=size, mp_context=mp.get_context(method), initializer=_ignore_sigint)


def terminate_pool(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool``'s worker processes now, work in flight included (on Ctrl-C): SIGTERM, then SIGKILL."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=2.0)
        if proc.is_alive():  # SIGTERM not honoured in time (a worker still starting up): SIGKILL
            proc.kill()
            proc.join(timeout=5.0)
    if manager is not None:  # it reaps the workers too: once it is done, every exit status is recorded
        manager.join(timeout=5.0)


def _default_simulator() -> Simulator:
    from ..simulate import simulate

    return simulate


def _run_one(simulator: Simulator | None, specs: Specs, plan: Plan | Deployment, seed: int) -> tuple[str, Any]:
    """Worker: ('ok', summary dict) or ('error', message) for an error a user can cause."""
    sim = simulator or _default_simulator()
    try:
        result = sim(specs, plan, seed=seed)
    except ApexOptError as exc:
        return "error", f"{type(exc).__name__}: {exc}"
    summary = result.summary() if hasattr(result, "summary") else dict(result)
    return "ok", summary


@dataclass(frozen=True)
class SimOutcome:
    plan: Plan | Deployment
    metrics: SimMetrics | None
    error: str = ""


class Verifier:
    """Runs simulations for one problem; ``workers`` processes (1: in this process)."""

    def __init__(self, specs: Specs, *, workers: int = 2, seed: int = 0, simulator: Simulator | None = None,
                 progress: Callable[[str], None] | None = None,
                 simulation_progress: Callable[[int, int], None] | None = None) -> None:
        self.specs = specs
        self.workers = usable_workers(workers)  # never more processes than CPUs
        self.seed = seed
        self.simulator = simulator
        self.progress = progress
        #: called with (simulations finished, simulations started) when a batch starts and as each one finishes
        self.simulation_progress = simulation_progress
        self.count = 0
        self.seconds = 0.0
        self._pool: ProcessPoolExecutor | None = None
        self._pool_size = 0
        self._cache: dict[str, SimOutcome] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut the worker processes down: wait for them normally, terminate them while an exception (Ctrl-C)
        is on its way out."""
        if sys.exc_info()[0] is not None:
            self.terminate()
        elif self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def terminate(self) -> None:
        """Stop the worker processes now, simulations in flight included (on Ctrl-C)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            terminate_pool(pool)

    def _executor(self, size: int) -> ProcessPoolExecutor:
        if self._pool is not None and self._pool_size < size:  # a larger batch than the pool was made for
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._pool is None:
            self._pool = process_pool(size)
            self._pool_size = size
        return self._pool

    def simulated(self, plan: Plan | Deployment) -> bool:
        """Whether ``plan`` was simulated already (its outcome is cached)."""
        return plan.model_dump_json() in self._cache

    def _ticker(self, batch: int) -> Callable[[], None]:
        """Report a batch of ``batch`` simulations starting; the function returned reports one finishing."""
        report = self.simulation_progress
        if report is None:
            return lambda: None
        done = [self.count]
        report(done[0], self.count + batch)

        def tick() -> None:
            done[0] += 1
            report(done[0], self.count + batch)

        return tick

    def run(self, plans: Sequence[Plan | Deployment]) -> list[SimOutcome]:
        """Simulate ``plans`` (in parallel when workers > 1); outcomes in the order of ``plans``."""
        import time

        start = time.perf_counter()
        todo = [p for p in plans if p.model_dump_json() not in self._cache]
        unique: dict[str, Plan | Deployment] = {p.model_dump_json(): p for p in todo}
        if unique:
            if self.progress:
                self.progress(f"simulating {len(unique)} plan{'s' if len(unique) != 1 else ''}: "
                              + ", ".join(p.label for p in unique.values()))
            keys = list(unique)
            tick = self._ticker(len(keys))
            if self.workers == 1 or len(keys) == 1:
                raw = []
                for k in keys:
                    raw.append(_run_one(self.simulator, self.specs, unique[k], self.seed))
                    tick()
            else:
                pool = self._executor(usable_workers(self.workers, len(keys)))
                try:
                    futures = [pool.submit(_run_one, self.simulator, self.specs, unique[k], self.seed) for k in keys]
                    for _ in as_completed(futures):  # only to report progress: results are taken in order below
                        tick()
                    raw = [f.result() for f in futures]
                except BaseException:  # Ctrl-C (or a worker that died): leave no process behind
                    self.terminate()
                    raise
            for k, (status, payload) in zip(keys, raw):
                plan = unique[k]
                if status == "ok":
                    self._cache[k] = SimOutcome(plan, normalize_summary(payload, plan))
                else:
                    self._cache[k] = SimOutcome(plan, None, payload)
                self.count += 1
        self.seconds += time.perf_counter() - start
        return [self._cache[p.model_dump_json()] for p in plans]


__all__ = ["SimMetrics", "SimOutcome", "Verifier", "normalize_summary", "process_pool", "terminate_pool",
           "usable_workers"]
